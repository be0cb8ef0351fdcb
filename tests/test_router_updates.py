"""``Router.updated``: a router derived from a few changed routes matches exactly like a router
built from scratch over the same routes in the same load order."""

from __future__ import annotations

import random
from typing import Any

import pytest

from kernel.router import Match, Router, RouteSpec
from plugin_sdk.expr import compile_expr

KINDS = ["radixtree_host_uri", "radixtree_uri", "radixtree_uri_with_parameter"]
URIS = ["/a", "/a/*", "/a/b", "/a/b/*", "/a*", "/*", "/c/:id", "/c/*rest", "/d/x.json", "/"]
HOSTS = [None, ("foo.com",), ("*.foo.com",), ("bar.com", "*.bar.com"), ("FOO.com",)]
PROBES = [
    (uri, method, host)
    for uri in ["/a", "/a/", "/a/b", "/a/b/c", "/ab", "/c/1", "/c/1/2", "/d/x.json", "/", "/z"]
    for method in ["GET", "POST"]
    for host in [None, "foo.com", "x.foo.com", "bar.com", "y.bar.com", "other.org"]
]
VARS = compile_expr([["arg_k", "==", "v"]])


def random_spec(rng: random.Random, rid: str) -> RouteSpec:
    return RouteSpec(
        id=rid,
        uris=tuple(rng.sample(URIS, rng.choice([1, 1, 2]))),
        methods=rng.choice([None, None, frozenset({"GET"}), frozenset({"POST"})]),
        hosts=rng.choice(HOSTS),
        priority=rng.choice([0, 0, 0, 1, -1]),
        vars=rng.choice([None, None, VARS]),
    )


def outcome(router: Router) -> list[Any]:
    out: list[Any] = []
    for uri, method, host in PROBES:
        for var in ({}, {"arg_k": "v"}):
            m: Match | None = router.match(uri, method, host, host, "127.0.0.1", var)
            out.append(None if m is None else (m.spec.id, m.params, m.matched_uri,
                                               m.matched_host))  # fmt: skip
    return out


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", range(12))
def test_updates_match_like_a_full_build(kind: str, seed: int) -> None:
    rng = random.Random(seed)
    table: dict[str, RouteSpec] = {}  # load order: updates keep their place, new ones go last
    for i in range(rng.randint(0, 12)):
        table[str(i)] = random_spec(rng, str(i))
    router = Router(list(table.values()), kind)
    next_id = len(table)
    for _step in range(25):
        changes: dict[str, RouteSpec | None] = {}
        for _ in range(rng.randint(1, 4)):
            op = rng.random()
            if op < 0.4 or not table:
                rid = str(next_id)
                next_id += 1
                changes[rid] = random_spec(rng, rid)
            elif op < 0.7:
                rid = rng.choice(list(table))
                changes[rid] = random_spec(rng, rid)
            else:
                rid = rng.choice(list(table))
                changes[rid] = None
        for rid, spec in changes.items():
            if spec is None:
                table.pop(rid, None)
            else:
                table[rid] = spec
        before = outcome(router)
        updated = router.updated(changes)
        assert outcome(router) == before, "the old router must not change"
        fresh = Router(list(table.values()), kind)
        assert outcome(updated) == outcome(fresh)
        for label, group in fresh._groups.items():  # same walk strategy as a full build
            assert group.tree is not None and updated._groups[label].tree is not None
            assert updated._groups[label].tree.shape == group.tree.shape
            assert updated._groups[label].tree.walk == group.tree.walk
        assert fresh._groups.keys() == updated._groups.keys()
        assert len(updated) == len(table)
        router = updated


@pytest.mark.parametrize("kind", KINDS)
def test_update_shares_untouched_host_trees(kind: str) -> None:
    a = RouteSpec(id="a", uris=("/x",), hosts=("a.com",))
    b = RouteSpec(id="b", uris=("/y",), hosts=("b.com",))
    router = Router([a, b], kind)
    b2 = RouteSpec(id="b", uris=("/z",), hosts=("b.com",))
    updated = router.updated({"b": b2})
    assert updated.match("/x", "GET", "a.com", "a.com", "127.0.0.1", {}).spec is a  # type: ignore[union-attr]
    assert updated.match("/y", "GET", "b.com", "b.com", "127.0.0.1", {}) is None
    assert updated.match("/z", "GET", "b.com", "b.com", "127.0.0.1", {}).spec is b2  # type: ignore[union-attr]
    assert router.match("/y", "GET", "b.com", "b.com", "127.0.0.1", {}).spec is b  # type: ignore[union-attr]
    if kind == "radixtree_host_uri":
        assert updated._groups["a.com"] is router._groups["a.com"]


def test_equal_priority_ties_keep_load_order_across_updates() -> None:
    first = RouteSpec(id="1", uris=("/t",))
    second = RouteSpec(id="2", uris=("/t",))
    router = Router([first, second])
    again = RouteSpec(id="1", uris=("/t",), methods=None)
    updated = router.updated({"1": again})  # an update keeps its place: still first
    assert updated.match("/t", "GET", None, None, "127.0.0.1", {}).spec is again  # type: ignore[union-attr]
    gone = updated.updated({"1": None}).updated({"1": first})  # re-created: now last
    assert gone.match("/t", "GET", None, None, "127.0.0.1", {}).spec is second  # type: ignore[union-attr]


def test_duplicate_ids_refuse_updates() -> None:
    router = Router([RouteSpec(id="1", uris=("/a",)), RouteSpec(id="1", uris=("/b",))])
    with pytest.raises(ValueError):
        router.updated({"1": None})
