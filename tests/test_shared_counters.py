"""Node-wide shared counters (kernel/counters.py, plugin_sdk.counters): table semantics, a full
table, real concurrent processes, a lock holder killed mid-update, plugin reloads, and
``sixgate start`` with two workers counting into the same counters."""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import kernel.plugins.runtime  # noqa: F401  (installs the kernel runtime into the SDK)
from kernel.counter_table import _LIVE
from kernel.counters import (
    DEFAULT_SIZES,
    DEFAULT_ZONE,
    NODE_COUNTERS,
    SLOT_SIZE,
    CounterTable,
    CounterZone,
    NodeCounters,
    zone_sizes,
)
from plugin_sdk.counters import SharedCounters, shared_counters
from plugin_sdk.testing import GatewayHarness
from tests.support.gateway import REPO, GatewayProcess, child_pids, wait_until

ROBUST = pytest.param(True, id="robust-mutex")
SEMAPHORE = pytest.param(False, id="semaphore")


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def table(slots: int = 1024, segments: int = 1, clock: Clock | None = None,
          robust: bool | None = None, name: str = "t") -> CounterTable:
    zone = CounterZone("test", slots=slots, segments=segments, robust=robust)
    return zone.table(name, clock=clock or Clock())


def live_slots(zone: CounterZone) -> int:
    return sum(zone.mm[zone.slots_off + i * SLOT_SIZE] == _LIVE for i in range(zone.capacity))


# -- semantics ------------------------------------------------------------------------------


@pytest.mark.parametrize("robust", [ROBUST, SEMAPHORE])
def test_incr_get_set_add_delete_ttl(robust: bool) -> None:
    clock = Clock()
    t = table(clock=clock, robust=robust)
    assert t.get("k") is None and t.get("k", -1) == -1
    assert t.incr("k") == 1 and t.incr("k") == 2 and t.incr("k", 3) == 5
    assert isinstance(t.get("k"), int) and t.ttl("k") is None
    # limit-count: incr(key, -cost, init=limit, ttl=window) is a fixed window
    assert t.incr("win", -1, 10, ttl=60) == 9
    clock.now += 59
    assert t.incr("win", -1, 10, ttl=60) == 8 and t.ttl("win") == pytest.approx(1)
    clock.now += 1  # the window ends: the next incr starts a new one
    assert t.get("win") is None
    assert t.incr("win", -1, 10, ttl=60) == 9 and t.ttl("win") == pytest.approx(60)
    # incr_ttl: the same, with the seconds left (limit-count's remaining and reset)
    clock.now += 20
    assert t.incr_ttl("win", -1, 10, ttl=60) == (8, pytest.approx(40))
    clock.now += 40
    assert t.incr_ttl("win", -2, 10, ttl=60) == (8, pytest.approx(60))
    assert t.incr_ttl("forever", 2) == (2, None) and t.incr_ttl("forever", 0.5) == (2.5, None)
    # floats, and an int counter turned float by a float delta
    assert t.incr("f", 0.5) == 0.5 and t.incr("k", 0.5) == 5.5 and t.incr("k") == 6.5
    t.set("s", 7)
    assert t.get("s") == 7 and isinstance(t.get("s"), int)
    t.set("s", 2.25, ttl=5)
    assert t.get("s") == 2.25 and t.ttl("s") == pytest.approx(5)
    assert t.add("s", 1) is False and t.add("new", 1, ttl=1) is True and t.get("new") == 1
    clock.now += 1
    assert t.add("new", 2) is True and t.get("new") == 2 and t.ttl("new") is None
    assert t.delete("new") is True and t.delete("new") is False and t.get("new") is None
    with pytest.raises(KeyError):
        t.ttl("absent")
    with pytest.raises(TypeError):
        t.set("x", "1")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        t.set("x", True)
    with pytest.raises(TypeError):
        t.incr("fresh", 1, "0")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        t.incr("fresh", ttl=0)
    with pytest.raises(ValueError):
        t.set("x", 1, ttl=-1)
    assert t.get("fresh") is None and t.get("x") is None  # nothing half-written
    assert t.incr("big", 2**52) == 2**52 and t.incr("big", 2**52 - 1) == 2**53 - 1  # exact


def test_update_is_a_read_modify_write_with_two_numbers() -> None:
    clock = Clock()
    t = table(clock=clock)

    def leak(state: tuple[float, float] | None, now: float, rate: float,
             burst: float) -> tuple[tuple[float, float] | None, float | None]:
        if state is None:
            excess = 0.0
        else:
            excess = max(state[0] - rate * (now - state[1]) + 1, 0.0)
            if excess > burst:
                return None, None
        return (excess, now), excess

    # rate 2/s, burst 1: two immediate requests pass (the second delayed), the third not
    assert t.update("b", leak, 100.0, 2.0, 1.0, ttl=10) == 0.0
    assert t.update("b", leak, 100.0, 2.0, 1.0, ttl=10) == 1.0
    assert t.update("b", leak, 100.0, 2.0, 1.0, ttl=10) is None
    assert t.update("b", leak, 100.5, 2.0, 1.0, ttl=10) == 1.0  # 0.5 s leaked one
    assert t.get("b") == 1.0  # the value is the first number
    # ttl: every write sets it afresh; without ttl an entry keeps its expiry
    clock.now += 4
    t.update("b", lambda s: ((s[0], s[1]), None), ttl=10)
    assert t.ttl("b") == pytest.approx(10)
    t.update("b", lambda s: ((9.0, 9.0), None))
    assert t.ttl("b") == pytest.approx(10) and t.get("b") == 9.0
    assert t.update("none", lambda s: ((1.0, 2.0), s)) is None
    assert t.ttl("none") is None
    assert t.update("none", lambda s: (None, s)) == (1.0, 2.0)
    # an error in fn changes nothing and releases the lock
    with pytest.raises(ZeroDivisionError):
        t.update("none", lambda s: ((1 / 0, 0.0), None))
    assert t.update("none", lambda s: (None, s)) == (1.0, 2.0)
    assert t.incr("none") == 2.0  # incr works on the same entry (a float after update)


def test_using_the_counters_inside_update_raises_instead_of_deadlocking() -> None:
    t = table()
    with pytest.raises(RuntimeError, match="deadlock"):
        t.update("k", lambda s: (None, t.incr("k")))
    assert t.incr("k") == 1  # the lock was released


def test_a_busy_lock_makes_the_caller_wait_for_it() -> None:
    t = table()
    lock = t.zone.locks[1]  # the only segment's lock, held here as another worker would
    assert t.zone.acquire(lock) == 0
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(t.incr("k")), daemon=True)
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive() and got == []  # blocked (with the GIL released: we run)
    t.zone.release(lock)
    waiter.join(5)
    assert got == [1]


def test_zone_limits() -> None:
    with pytest.raises(ValueError, match="power of two"):
        CounterZone("bad", slots=64, segments=3)
    zone = CounterZone("names", slots=64, segments=1)
    numbers = [zone.namespace(f"name{i}") for i in range(127)]
    assert numbers == list(range(1, 128)) and zone.namespace("name5") == 6
    with pytest.raises(RuntimeError, match="already holds 127 names"):
        zone.namespace("one-too-many")
    with pytest.raises(ValueError, match="must map names to sizes"):
        zone_sizes({"lua_shared_dict": ["plugin-limit-count"]})


def test_long_and_unicode_keys() -> None:
    t = table()
    long_a, long_b = "a" * 200 + "1", "a" * 200 + "2"  # stored as digests
    exact = "é" * 44  # 88 bytes: stored as is
    assert t.incr(long_a) == 1 and t.incr(long_b, 5) == 5 and t.incr(long_a) == 2
    assert t.incr(exact) == 1 and t.incr(exact[:-1]) == 1 and t.incr("") == 1
    assert (t.get(long_a), t.get(long_b), t.get(exact), t.get("")) == (2, 5, 1, 1)
    assert t.delete(long_b) and t.get(long_b) is None and t.get(long_a) == 2


def test_many_keys_deletes_and_slot_accounting() -> None:
    t = table(slots=8192, segments=4)
    zone = t.zone
    keys = [f"route:{i % 50}:10.0.{i // 256}.{i % 256}" for i in range(4000)]  # 49% full
    for i, key in enumerate(keys):
        assert t.incr(key, i, ttl=3600) == i
    assert all(t.get(key) == i for i, key in enumerate(keys))
    assert zone.used_slots() == 4000 == live_slots(zone)
    for key in keys[::2]:
        assert t.delete(key)
    assert all(t.get(key) == (None if i % 2 == 0 else i) for i, key in enumerate(keys))
    assert zone.used_slots() == 2000 == live_slots(zone)
    for key in keys[::2]:
        assert t.add(key, -1)
    assert all(t.get(key) == (-1 if i % 2 == 0 else i) for i, key in enumerate(keys))
    assert zone.used_slots() == 4000 and not zone.warned_full
    assert zone.free_space_bytes() == (8192 - 4000) * SLOT_SIZE == zone.capacity_bytes - 4000 * 128
    t.clear()
    assert zone.used_slots() == 0 and t.get(keys[1]) is None and t.incr(keys[1]) == 1


@pytest.mark.parametrize(("slots", "segments", "nkeys"), [(1024, 2, 150), (128, 1, 40)])
def test_random_operations_match_a_model(slots: int, segments: int, nkeys: int) -> None:
    """Random incr/set/add/delete/update/clock steps against a dict: probing, backward-shift
    removal (wrapping around the segment), expiry and slot reuse never lose or confuse a key."""
    clock = Clock()
    t = table(slots=slots, segments=segments, clock=clock)
    model: dict[str, tuple[float, float]] = {}  # key -> (value, expires or 0)
    rng = random.Random(7)
    keys = [f"k{i}" for i in range(nkeys)] + ["long" * 30 + str(i) for i in range(10)]

    def live(key: str) -> float | None:
        entry = model.get(key)
        if entry is None or (entry[1] and entry[1] <= clock.now):
            model.pop(key, None)
            return None
        return entry[0]

    for _ in range(15000):
        key = rng.choice(keys)
        op = rng.random()
        ttl = rng.choice([None, 0.5, 3.0])
        if op < 0.35:
            current = live(key)
            if current is None:
                model[key] = (5 + 1, clock.now + ttl if ttl else 0.0)
            else:
                model[key] = (current + 1, model[key][1])
            if rng.random() < 0.5:
                assert t.incr(key, 1, 5, ttl) == model[key][0]
            else:
                value, left = t.incr_ttl(key, 1, 5, ttl)
                expires = model[key][1]
                assert value == model[key][0]
                assert left == (pytest.approx(expires - clock.now) if expires else None)
        elif op < 0.5:
            model[key] = (3, clock.now + ttl if ttl else 0.0)
            t.set(key, 3, ttl)
        elif op < 0.6:
            added = live(key) is None
            if added:
                model[key] = (4, clock.now + ttl if ttl else 0.0)
            assert t.add(key, 4, ttl) is added
        elif op < 0.75:
            assert t.delete(key) is (live(key) is not None)
            model.pop(key, None)
        elif op < 0.85:
            current = live(key)
            if current is not None:
                model[key] = (current * 2, clock.now + 3.0)
            got = t.update(key, lambda s: ((s[0] * 2, 0.0) if s else None, s), ttl=3.0)
            assert (got and got[0]) == current if current is not None else got is None
        elif op < 0.97:
            assert t.get(key) == live(key)
        else:
            clock.now += rng.choice([0.2, 1.0, 4.0])
    assert all(t.get(key) == live(key) for key in keys)
    assert not t.zone.warned_full
    assert t.zone.used_slots() == live_slots(t.zone)


def test_a_full_table_evicts_the_entries_that_expire_soonest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    t = table(slots=64, segments=1, clock=clock)
    with caplog.at_level(logging.ERROR, logger="sixgate.plugins"):
        for i in range(200):  # key i expires at 100 + i seconds
            assert t.incr(f"k{i}", ttl=100 + i) == 1
            assert t.get(f"k{i}") == 1  # the newest entry is always there
    present = [i for i in range(200) if t.get(f"k{i}") is not None]
    assert present == list(range(136, 200))  # the 64 that expire last
    assert t.zone.used_slots() == 64
    full = [r for r in caplog.records if "is full" in r.getMessage()]
    assert len(full) == 1 and "lua_shared_dict.test" in full[0].getMessage()


def test_expired_entries_are_reused_without_evicting(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    t = table(slots=64, segments=1, clock=clock)
    for i in range(60):
        t.set(f"old{i}", i, ttl=1)
    clock.now += 2
    with caplog.at_level(logging.ERROR, logger="sixgate.plugins"):
        for i in range(60):
            assert t.incr(f"new{i}", ttl=1) == 1
    assert not t.zone.warned_full and not caplog.records
    assert all(t.get(f"new{i}") == 1 and t.get(f"old{i}") is None for i in range(60))


def test_names_share_a_zone_in_separate_namespaces_and_configured_names_have_their_own() -> None:
    sizes = zone_sizes({"lua_shared_dict": {"plugin-limit-count": "64k", "mine": 100000},
                        "custom_lua_shared_dict": {"extra": "1m"}})
    assert sizes["plugin-limit-count"] == 65536 and sizes["mine"] == 100000
    assert sizes["extra"] == 1024 * 1024 and sizes["plugin-limit-req"] == DEFAULT_SIZES[
        "plugin-limit-req"] and sizes[DEFAULT_ZONE] == 10 * 1024 * 1024
    with pytest.raises(ValueError, match=r"lua_shared_dict\.mine"):
        zone_sizes({"lua_shared_dict": {"mine": "lots"}})
    node = NodeCounters()
    node.prepare({"mine": 128 * 1024})
    assert sorted(z.name for z in node.zones()) == sorted([DEFAULT_ZONE, "mine"])
    a, b, mine = node.table("a"), node.table("b"), node.table("mine")
    assert a.zone is b.zone and a.zone.name == DEFAULT_ZONE and a.ns != b.ns
    assert mine.zone.name == "mine" and mine.capacity < 1024 and node.table("a") is a
    assert a.incr("k") == 1 and b.incr("k", 5) == 5 and mine.incr("k", 9) == 9
    assert (a.get("k"), b.get("k"), mine.get("k")) == (1, 5, 9)
    a.clear()
    assert a.get("k") is None and b.get("k") == 5
    assert a.zone.namespace("b") == b.ns  # the registry lives in the shared header


def test_the_sdk_handle_reaches_the_node_counters() -> None:
    handle = shared_counters("test.sdk-handle")
    handle.clear()
    assert isinstance(handle, SharedCounters)
    assert repr(handle) == "<SharedCounters 'test.sdk-handle'>"
    assert handle.incr("n", ttl=30) == 1 and "n" in handle and "m" not in handle
    value, left = handle.incr_ttl("n")
    assert value == 2 and left is not None and 0 < left <= 30 and handle.incr("n", -1) == 1
    assert NODE_COUNTERS.table("test.sdk-handle").get("n") == 1
    assert 0 < (handle.ttl("n") or 0) <= 30 and handle.capacity > 1000
    handle.set("s", 2)
    assert handle.add("s", 3) is False and handle.get("s") == 2 and handle.delete("s")
    assert handle.update("n", lambda s: ((s[0] + 1, 0.0), s[0])) == 1.0 and handle.get("n") == 2
    with pytest.raises(ValueError):
        shared_counters("")


# -- processes ------------------------------------------------------------------------------


def in_children(count: int, work: Callable[[int], list[Any]], tmp: Path,
                timeout: float = 30.0) -> list[list[Any]]:
    """Fork ``count`` processes that start together and run ``work(i)``; their results."""
    go_r, go_w = os.pipe()
    pids = []
    for i in range(count):
        pid = os.fork()
        if pid == 0:  # the child: wait for the start, work, report, leave
            code = 1
            try:
                os.close(go_w)
                os.read(go_r, 1)
                (tmp / f"child{i}.txt").write_text(repr(work(i)))
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    os.close(go_r)
    os.close(go_w)  # go
    deadline = time.monotonic() + timeout
    pending = set(pids)
    while pending:
        for pid in list(pending):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                pending.discard(pid)
                assert os.waitstatus_to_exitcode(status) == 0
        if pending and time.monotonic() > deadline:
            for pid in pending:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            raise AssertionError(f"{len(pending)} child process(es) hung")
        time.sleep(0.005)
    return [eval((tmp / f"child{i}.txt").read_text()) for i in range(count)]


@pytest.mark.parametrize("robust", [ROBUST, SEMAPHORE])
def test_concurrent_processes_get_exact_totals_and_unique_values(
    tmp_path: Path, robust: bool
) -> None:
    zone = CounterZone("procs", slots=4096, segments=1, robust=robust)  # one lock: contention
    t = zone.table("t")
    per_child, children = 3000, 4

    def work(i: int) -> list[Any]:
        seen = []
        for n in range(per_child):
            seen.append(t.incr("seq"))
            t.incr(f"mine{i}")
            t.incr(f"shared{n % 7}", 2, ttl=600)
            t.update("pair", lambda s: ((s[0] + 1, s[1] + 2) if s else (1.0, 2.0), None))
        return seen

    results = in_children(children, work, tmp_path)
    total = per_child * children
    values = sorted(v for seen in results for v in seen)
    assert values == list(range(1, total + 1))  # no lost update, no duplicate
    assert all(seen == sorted(seen) for seen in results)
    assert t.get("seq") == total
    assert [t.get(f"mine{i}") for i in range(children)] == [per_child] * children
    assert sum(t.get(f"shared{k}") for k in range(7)) == 2 * total
    assert t.update("pair", lambda s: (None, s)) == (float(total), 2.0 * total)


def test_a_process_killed_holding_a_lock_does_not_stall_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    zone = CounterZone("dead", slots=64, segments=1)
    t = zone.table("t")
    assert t.incr("k") == 1
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # take the segment lock, say so, and wait to be killed
        try:
            lock = zone.locks[1]
            assert zone.acquire(lock) == 0
            os.write(ready_w, b"1")
            time.sleep(60)
        finally:
            os._exit(1)
    os.close(ready_w)
    assert os.read(ready_r, 1) == b"1"
    os.close(ready_r)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    got: list[Any] = []
    with caplog.at_level(logging.WARNING, logger="sixgate.plugins"):
        worker = threading.Thread(target=lambda: got.append(t.incr("k")), daemon=True)
        worker.start()
        worker.join(5)
    assert got == [2], "the lock of the killed process was not recovered"
    assert "died holding a lock" in caplog.text
    assert t.incr("k") == 3  # and it works normally afterwards


# -- plugins: hot reload (in-process harness) and `sixgate start` with two workers ----------

COUNTER = textwrap.dedent('''
    import os

    from plugin_sdk import Response, hookimpl
    from plugin_sdk.counters import shared_counters

    name = "node-count"
    version = "1"
    priority = 10
    schema = {"type": "object", "properties": {"key": {"type": "string"}},
              "required": ["key"]}
    counts = shared_counters("test.node-count")

    @hookimpl
    def access(ctx, conf):
        n = counts.incr(conf["key"])
        return Response(200, "v1", {"X-Count": str(n), "X-Pid": str(os.getpid())})
''').lstrip()


def test_counts_survive_a_plugin_reload(sixgate: GatewayHarness) -> None:
    shared_counters("test.node-count").clear()
    assert sixgate.write_plugin("node_count.py", COUNTER).ok
    sixgate.add_route("/c", plugins={"node-count": {"key": "reload"}})
    assert [sixgate.get("/c").headers["X-Count"] for _ in range(3)] == ["1", "2", "3"]
    assert sixgate.edit_plugin("node_count.py", replace=('"v1"', '"v2"')).ok
    r = sixgate.get("/c")
    assert (r.text, r.headers["X-Count"]) == ("v2", "4")
    assert shared_counters("test.node-count").get("reload") == 4



def test_two_workers_count_into_the_same_counters(tmp_path: Path, upstream: Any) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "node_count.py").write_text(COUNTER)
    g = GatewayProcess(tmp_path / "gw", {
        "apisix": {"plugin_dirs": [str(plugins)]},
        "plugins": ["node-count"],
        "nginx_config": {"worker_processes": 2,
                         "http": {"lua_shared_dict": {"test.node-count": "256k"}}},
    })
    node = {"type": "roundrobin", "nodes": {f"127.0.0.1:{upstream.port}": 1}}
    g.start({"routes": [
        {"id": 1, "uri": "/count", "plugins": {"node-count": {"key": "count"}},
         "upstream": node},
        {"id": 2, "uri": "/warm", "plugins": {"node-count": {"key": "warm"}}, "upstream": node},
    ]})

    def serving(expected: set[int]) -> bool:
        pids = {g.get("/warm").headers.get("x-pid") for _ in range(16)}
        return {str(p) for p in expected} <= pids

    def burst(n: int) -> list[tuple[int, str]]:
        with ThreadPoolExecutor(4) as pool:
            rs = list(pool.map(lambda _: g.get("/count"), range(n)))
        assert all(r.status == 200 for r in rs), rs
        return [(int(r.headers["x-count"]), r.headers["x-pid"]) for r in rs]

    try:
        assert g.proc is not None
        supervisor = g.proc.pid
        workers = wait_until(lambda: len(kids := child_pids(supervisor)) == 2 and kids, 10)
        wait_until(lambda: serving(set(workers)), 15)  # both workers accept connections
        first = burst(120)
        assert sorted(n for n, _ in first) == list(range(1, 121))  # no gap, no duplicate
        assert {pid for _, pid in first} == {str(p) for p in workers}
        # a worker killed and restarted maps the same counters
        os.kill(workers[0], signal.SIGKILL)
        kids = wait_until(lambda: len(k := child_pids(supervisor)) == 2
                          and workers[0] not in k and k, 10)
        wait_until(lambda: serving(set(kids)), 15)
        second = burst(60)
        assert sorted(n for n, _ in second) == list(range(121, 181))
        assert {pid for _, pid in second} == {str(p) for p in kids}
        assert g.stop() == 0
    finally:
        g.stop()


def test_sixgate_start_refuses_a_bad_zone_size(tmp_path: Path) -> None:
    g = GatewayProcess(tmp_path, {"nginx_config": {"http": {"lua_shared_dict": {"x": "big"}}}})
    done = subprocess.run(
        [sys.executable, "-m", "kernel.cli", "start", "-c", str(g.conf / "config.yaml")],
        cwd=REPO, capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == 1 and "nginx_config.http.lua_shared_dict.x" in done.stderr
