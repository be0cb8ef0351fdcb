"""kernel.upstream.balancer: pickers (spec §5.3)."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from typing import Any

import pytest

from kernel.upstream import balancer
from kernel.upstream.balancer import make_picker
from kernel.upstream.nodes import Node, normalize_nodes


def rr() -> dict[str, Any]:
    return {"type": "roundrobin"}


def nodes_of(spec: dict[str, int]) -> list[Node]:
    return normalize_nodes(spec)


def picks(picker: Any, count: int, var: Any = None, **kw: Any) -> list[str]:
    out = []
    for _ in range(count):
        node = picker.pick(var if var is not None else {}, **kw)
        assert node is not None
        out.append(node.addr)
    return out


def is_rotation(seq: list[str], expected: list[str]) -> bool:
    doubled = expected + expected
    return any(doubled[i : i + len(expected)] == seq for i in range(len(expected)))


def max_run(seq: list[str]) -> int:
    cyc = seq + seq  # count runs across the cycle boundary too
    best = run = 1
    for a, b in itertools.pairwise(cyc):
        run = run + 1 if a == b else 1
        best = max(best, run)
    return min(best, len(seq))


# --------------------------------------------------------------------------- roundrobin


def test_roundrobin_weights_exact() -> None:
    nodes = nodes_of({"127.0.0.1:1": 5, "127.0.0.2:1": 1})
    counts = Counter(picks(make_picker(rr(), nodes), 600))
    assert counts == {"127.0.0.1:1": 500, "127.0.0.2:1": 100}


def test_roundrobin_interleaved_cycle() -> None:
    # current weight steps 4,3,2,1: A | A B | A B | A B
    nodes = nodes_of({"a:1": 4, "b:1": 3})
    seq = picks(make_picker(rr(), nodes), 7)
    assert is_rotation(seq, ["a:1", "a:1", "b:1", "a:1", "b:1", "a:1", "b:1"])
    assert max_run(seq) == 2
    nodes = nodes_of({"a:1": 2, "b:1": 2, "c:1": 1})
    seq = picks(make_picker(rr(), nodes), 5)
    assert is_rotation(seq, ["a:1", "b:1", "a:1", "b:1", "c:1"])
    assert max_run(seq) == 1


def test_roundrobin_gcd_stepping() -> None:
    nodes = nodes_of({"a:1": 100, "b:1": 200})
    picker = make_picker(rr(), nodes)
    seq = picks(picker, 300)
    assert Counter(seq) == {"a:1": 100, "b:1": 200}
    assert seq[:3] == seq[3:6]  # period sum/gcd = 3, not 300


def test_roundrobin_equal_weights_rotate() -> None:
    nodes = nodes_of({"a:1": 1, "b:1": 1, "c:1": 1})
    seq = picks(make_picker(rr(), nodes), 9)
    assert seq[:3] == seq[3:6] == seq[6:]
    assert sorted(seq[:3]) == ["a:1", "b:1", "c:1"]


def test_roundrobin_random_start_per_picker() -> None:
    nodes = nodes_of({"a:1": 1, "b:1": 1, "c:1": 1})
    firsts = {make_picker(rr(), nodes).pick({}).addr for _ in range(60)}  # type: ignore[union-attr]
    assert len(firsts) > 1


def test_roundrobin_weight_zero() -> None:
    nodes = nodes_of({"a:1": 0, "b:1": 1, "c:1": 2})
    counts = Counter(picks(make_picker(rr(), nodes), 300))
    assert counts == {"b:1": 100, "c:1": 200}
    # all zero: balanced as equal weights
    counts = Counter(picks(make_picker(rr(), nodes_of({"a:1": 0, "b:1": 0})), 10))
    assert counts == {"a:1": 5, "b:1": 5}


def test_roundrobin_tried_exclusion() -> None:
    nodes = nodes_of({"a:1": 5, "b:1": 1, "c:1": 1})
    a, b, c = nodes
    picker = make_picker(rr(), nodes)
    for _ in range(50):
        assert picker.pick({}, {a}) in (b, c)
        assert picker.pick({}, {a, b}) is c
    assert picker.pick({}, {a, b, c}) is None
    assert picker.pick({}, set()) is not None


def test_roundrobin_smooth_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(balancer, "MAX_RR_CYCLE", 2)
    nodes = nodes_of({"a:1": 5, "b:1": 1})
    picker = make_picker(rr(), nodes)
    assert type(picker).__name__ == "_SmoothRoundRobin"
    seq = picks(picker, 600)
    assert Counter(seq) == {"a:1": 500, "b:1": 100}
    nodes = nodes_of({"a:1": 2, "b:1": 2, "c:1": 1})
    seq = picks(make_picker(rr(), nodes), 500)
    assert Counter(seq) == {"a:1": 200, "b:1": 200, "c:1": 100}
    assert max_run(seq[:5]) == 1  # smooth: no repeats within a cycle
    a, b, c = nodes
    p = make_picker(rr(), nodes)
    assert {p.pick({}, {a, b}) for _ in range(5)} == {c}
    assert p.pick({}, {a, b, c}) is None


# --------------------------------------------------------------------------- common


def test_single_node_fast_path() -> None:
    (node,) = nodes_of({"127.0.0.1:1980": 1})
    for typ in ("roundrobin", "chash", "ewma"):
        picker = make_picker({"type": typ, "hash_on": "vars", "key": "uri"}, [node])
        assert picker.pick({}) is node
        assert picker.pick({}, {node}) is node  # APISIX retries the one node
    lc = make_picker({"type": "least_conn"}, [node])
    assert lc.pick({}) is node
    assert node.active == 1
    assert lc.pick({}, {node}) is None
    lc.done(node, 0.1)
    assert node.active == 0


def test_empty_nodes() -> None:
    assert make_picker(rr(), []).pick({}) is None


def test_unknown_type() -> None:
    with pytest.raises(ValueError, match="invalid balancer type"):
        make_picker({"type": "random"}, nodes_of({"a:1": 1}))
    with pytest.raises(ValueError):
        make_picker({"type": "chash", "hash_on": "nope", "key": "uri"}, nodes_of({"a:1": 1}))
    with pytest.raises(ValueError):
        make_picker({"type": "chash", "hash_on": "vars"}, nodes_of({"a:1": 1, "b:1": 1}))


@pytest.mark.parametrize("typ", ["roundrobin", "chash", "least_conn", "ewma"])
def test_priority_fallback(typ: str) -> None:
    nodes = normalize_nodes(
        [
            {"host": "10.0.0.1", "port": 1, "weight": 1, "priority": 1},
            {"host": "10.0.0.2", "port": 1, "weight": 1, "priority": 1},
            {"host": "10.0.0.3", "port": 1, "weight": 1, "priority": 0},
            {"host": "10.0.0.4", "port": 1, "weight": 1, "priority": -1},
        ]
    )
    a, b, c, d = nodes
    up = {"type": typ, "hash_on": "vars", "key": "uri"}
    picker = make_picker(up, nodes)
    var = {"uri": "/x", "remote_addr": "1.1.1.1"}
    for _ in range(20):
        n = picker.pick(var)
        assert n in (a, b)
        picker.done(n, 0.01)
    n = picker.pick(var, {a})
    assert n is b
    picker.done(n, 0.01)
    assert picker.pick(var, {a, b}) is c
    picker.done(c, 0.01)
    assert picker.pick(var, {a, b, c}) is d
    picker.done(d, 0.01)
    assert picker.pick(var, {a, b, c, d}) is None


@pytest.mark.parametrize("typ", ["roundrobin", "chash", "least_conn", "ewma"])
def test_health(typ: str) -> None:
    nodes = nodes_of({"10.0.0.1:1": 1, "10.0.0.2:1": 1, "10.0.0.3:1": 1})
    a, b, c = nodes
    up = {"type": typ, "hash_on": "vars", "key": "uri"}
    down: set[Node] = {a}
    picker = make_picker(up, nodes, lambda n: n not in down)
    for i in range(30):
        n = picker.pick({"uri": f"/{i}"})
        assert n in (b, c)
        picker.done(n, 0.01)
    # healthy ones all tried: nothing left (unhealthy are not retried)
    assert picker.pick({"uri": "/"}, {b, c}) is None
    # every node unhealthy: all are used
    down = {a, b, c}
    seen = set()
    for i in range(60):
        n = picker.pick({"uri": f"/{i}"})
        assert n is not None
        seen.add(n)
        picker.done(n, 0.01)
    assert seen <= {a, b, c} and len(seen) >= (1 if typ == "chash" else 2)
    assert picker.pick({"uri": "/"}, {a, b, c}) is None


def test_health_priority_group_unhealthy() -> None:
    nodes = normalize_nodes(
        [
            {"host": "10.0.0.1", "port": 1, "weight": 1, "priority": 1},
            {"host": "10.0.0.2", "port": 1, "weight": 1, "priority": 0},
        ]
    )
    hi, lo = nodes
    picker = make_picker(rr(), nodes, lambda n: n is not hi)
    assert {picker.pick({}) for _ in range(10)} == {lo}


# --------------------------------------------------------------------------- chash


def chash(hash_on: str = "vars", key: str | None = "uri") -> dict[str, Any]:
    up: dict[str, Any] = {"type": "chash", "hash_on": hash_on}
    if key is not None:
        up["key"] = key
    return up


def three() -> list[Node]:
    return nodes_of({"127.0.0.1:1980": 1, "127.0.0.2:1980": 1, "127.0.0.3:1980": 1})


def test_chash_sticky_per_key() -> None:
    picker = make_picker(chash(), three())
    mapping = {}
    for i in range(300):
        key = f"/api/{i}"
        first = picker.pick({"uri": key})
        assert all(picker.pick({"uri": key}) is first for _ in range(3))
        mapping[key] = first
    counts = Counter(n.addr for n in mapping.values() if n)
    assert len(counts) == 3
    assert min(counts.values()) > 40  # spread over all nodes


def test_chash_same_ring_for_same_config() -> None:
    p1 = make_picker(chash(), three())
    p2 = make_picker(chash(), three())
    for i in range(200):
        var = {"uri": f"/{i}"}
        assert p1.pick(var).addr == p2.pick(var).addr  # type: ignore[union-attr]


def test_chash_minimal_remapping_on_add() -> None:
    before = make_picker(chash(), three())
    bigger = nodes_of(
        {"127.0.0.1:1980": 1, "127.0.0.2:1980": 1, "127.0.0.3:1980": 1, "127.0.0.4:1980": 1}
    )
    after = make_picker(chash(), bigger)
    moved = 0
    for i in range(2000):
        var = {"uri": f"/k{i}"}
        old, new = before.pick(var).addr, after.pick(var).addr  # type: ignore[union-attr]
        if old != new:
            assert new == "127.0.0.4:1980"  # keys only move to the new node
            moved += 1
    assert 300 < moved < 700  # about a quarter


def test_chash_weights_and_gcd() -> None:
    nodes = nodes_of({"127.0.0.1:1": 3, "127.0.0.2:1": 1})
    picker = make_picker(chash(), nodes)
    counts = Counter(picker.pick({"uri": f"/{i}"}).addr for i in range(4000))  # type: ignore[union-attr]
    assert 0.65 < counts["127.0.0.1:1"] / 4000 < 0.85
    # weights divided by their gcd: 2:2 is the same ring as 1:1
    p11 = make_picker(chash(), nodes_of({"127.0.0.1:1": 1, "127.0.0.2:1": 1}))
    p22 = make_picker(chash(), nodes_of({"127.0.0.1:1": 2, "127.0.0.2:1": 2}))
    for i in range(300):
        var = {"uri": f"/{i}"}
        assert p11.pick(var).addr == p22.pick(var).addr  # type: ignore[union-attr]


def test_chash_weight_zero_never_chosen() -> None:
    nodes = nodes_of({"127.0.0.1:1": 0, "127.0.0.2:1": 1, "127.0.0.3:1": 1})
    picker = make_picker(chash(), nodes)
    assert all(
        picker.pick({"uri": f"/{i}"}).addr != "127.0.0.1:1"  # type: ignore[union-attr]
        for i in range(500)
    )


@pytest.mark.parametrize(
    ("hash_on", "key", "var_name"),
    [
        ("vars", "arg_id", "arg_id"),
        ("header", "X-User-ID", "http_x_user_id"),
        ("cookie", "sid", "cookie_sid"),
        ("consumer", None, "consumer_name"),
    ],
)
def test_chash_hash_on(hash_on: str, key: str | None, var_name: str) -> None:
    nodes = three()
    picker = make_picker(chash(hash_on, key), nodes)
    reference = make_picker(chash("vars", "remote_addr"), nodes)
    for i in range(100):
        value = f"v{i}"
        got = picker.pick({var_name: value, "remote_addr": "9.9.9.9"})
        assert got is reference.pick({"remote_addr": value})


def test_chash_missing_key_uses_remote_addr() -> None:
    nodes = three()
    picker = make_picker(chash("header", "X-Missing"), nodes)
    reference = make_picker(chash("vars", "uri"), nodes)
    for i in range(100):
        addr = f"10.0.0.{i}"
        assert picker.pick({"remote_addr": addr}) is reference.pick({"uri": addr})
    # non-string values hash by their text
    assert picker.pick({"http_x_missing": 42}) is reference.pick({"uri": "42"})


def test_chash_retry_walks_to_next_distinct_node() -> None:
    nodes = three()
    picker = make_picker(chash(), nodes)
    for i in range(100):
        var = {"uri": f"/r{i}"}
        first = picker.pick(var)
        assert first is not None
        second = picker.pick(var, {first})
        assert second is not None and second is not first
        assert picker.pick(var, {first}) is second  # deterministic walk
        third = picker.pick(var, {first, second})
        assert third is not None and third not in (first, second)
        assert picker.pick(var, {first, second, third}) is None


def test_chash_vars_combinations() -> None:
    pytest.importorskip("plugin_sdk.template")
    nodes = three()
    picker = make_picker(chash("vars_combinations", "$remote_addr$uri"), nodes)
    reference = make_picker(chash("vars", "uri"), nodes)
    for i in range(50):
        var = {"remote_addr": "1.2.3.4", "uri": f"/c{i}"}
        assert picker.pick(var) is reference.pick({"uri": f"1.2.3.4/c{i}"})


# --------------------------------------------------------------------------- least_conn


def test_least_conn_prefers_idle_node() -> None:
    nodes = nodes_of({"a:1": 1, "b:1": 1})
    a, b = nodes
    picker = make_picker({"type": "least_conn"}, nodes)
    first = picker.pick({})
    second = picker.pick({})
    assert {first, second} == {a, b}
    assert a.active == b.active == 1
    picker.done(a, 0.1)
    assert a.active == 0
    assert picker.pick({}) is a  # the idle one
    a.active = 5
    assert all(picker.pick({}) is b for _ in range(4))  # b: 1 -> 5, still <= a's (5+1)
    assert b.active == 5


def test_least_conn_weights_and_release() -> None:
    nodes = nodes_of({"a:1": 2, "b:1": 1})
    a, b = nodes
    picker = make_picker({"type": "least_conn"}, nodes)
    for _ in range(300):
        picker.pick({})
    assert (a.active, b.active) == (200, 100)
    for _ in range(250):
        picker.done(a, None)
    assert a.active == 0  # never below zero
    # equal load: ties alternate instead of sticking to one node
    c, d = nodes_of({"c:1": 1, "d:1": 1})
    p2 = make_picker({"type": "least_conn"}, [c, d])
    seq = []
    for _ in range(10):
        n = p2.pick({})
        assert n is not None
        seq.append(n)
        p2.done(n, 0.01)
    assert Counter(seq) == {c: 5, d: 5}


def test_least_conn_tried() -> None:
    nodes = nodes_of({"a:1": 1, "b:1": 1})
    a, b = nodes
    picker = make_picker({"type": "least_conn"}, nodes)
    b.active = 10
    assert picker.pick({}, {a}) is b
    assert picker.pick({}, {a, b}) is None


# --------------------------------------------------------------------------- ewma


def test_ewma_prefers_fast_node() -> None:
    nodes = nodes_of({"fast:1": 1, "slow:1": 1})
    fast, slow = nodes
    picker = make_picker({"type": "ewma"}, nodes)
    picker.done(fast, 0.01)
    picker.done(slow, 0.5)
    assert all(picker.pick({}) is fast for _ in range(100))
    assert picker.pick({}, {fast}) is slow


def test_ewma_two_choices_never_picks_slowest() -> None:
    nodes = nodes_of({"a:1": 1, "b:1": 1, "c:1": 1})
    a, b, c = nodes
    picker = make_picker({"type": "ewma"}, nodes)
    picker.done(a, 0.01)
    picker.done(b, 0.02)
    picker.done(c, 1.0)
    counts = Counter(picker.pick({}) for _ in range(600))
    assert counts[c] == 0  # it loses every comparison it is drawn into
    assert counts[a] > counts[b] > 0


def test_ewma_unmeasured_node_is_probed() -> None:
    nodes = nodes_of({"a:1": 1, "b:1": 1})
    a, b = nodes
    picker = make_picker({"type": "ewma"}, nodes)
    picker.done(a, 0.05)
    assert picker.pick({}) is b


def test_ewma_decay(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(balancer.time, "monotonic", lambda: clock[0])
    (node,) = nodes_of({"a:1": 1})
    balancer._ewma_done(node, 1.0)
    assert node.ewma == 1.0  # first sample taken as is
    clock[0] = 110.0  # one decay constant later
    balancer._ewma_done(node, 0.0)
    assert node.ewma == pytest.approx(math.exp(-1))
    assert balancer._ewma_score(node, 120.0) == pytest.approx(math.exp(-2))
    balancer._ewma_done(node, None)  # no sample: unchanged
    assert node.ewma == pytest.approx(math.exp(-1))


def test_chash_ring_size_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(balancer, "MAX_CHASH_POINTS", 1600)
    nodes = nodes_of({"127.0.0.1:1": 30, "127.0.0.2:1": 10})  # gcd 10: 3:1, 640 points
    small = make_picker(chash(), nodes)
    assert small._points == 640  # type: ignore[attr-defined]
    nodes = nodes_of({"127.0.0.1:1": 31, "127.0.0.2:1": 10})  # 6560 points uncapped
    capped = make_picker(chash(), nodes)
    assert capped._points <= 1601  # type: ignore[attr-defined]
    counts = Counter(capped.pick({"uri": f"/{i}"}).addr for i in range(4000))  # type: ignore[union-attr]
    assert 0.65 < counts["127.0.0.1:1"] / 4000 < 0.85
