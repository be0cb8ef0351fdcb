"""Building the gateway state: defaults, merging, and reuse of what did not change."""

from __future__ import annotations

from typing import Any

import pytest

from kernel.plugins.loader import load_registry
from kernel.plugins.manager import PluginRegistry
from kernel.state import SnapshotValidator, build_state
from kernel.store.base import Snapshot, SnapshotDelta, freeze_collections, item_key


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    reg, errors = load_registry(["fault-injection", "proxy-rewrite"], [], {})
    assert not errors
    return reg


def snap(**collections: Any) -> Snapshot:
    return Snapshot("t", freeze_collections(collections))


def up(port: int) -> dict[str, Any]:
    return {"type": "roundrobin", "nodes": {f"127.0.0.1:{port}": 1}}


def test_unchanged_routes_and_upstreams_are_reused(registry: PluginRegistry) -> None:
    routes = [{"id": str(i), "uri": f"/r{i}", "upstream_id": "u"} for i in range(50)]
    first = build_state(snap(routes=routes, upstreams=[{"id": "u", **up(1)}]), registry)
    changed = [dict(r) for r in routes]  # re-parsed: equal values, new objects
    changed[7] = {"id": "7", "uri": "/seven", "upstream_id": "u"}
    second = build_state(
        snap(routes=changed, upstreams=[{"id": "u", **up(1)}]), registry, previous=first.cache
    )
    assert second.routes["3"] is first.routes["3"]
    assert second.routes["7"] is not first.routes["7"]
    assert second.upstreams["u"] is first.upstreams["u"]
    assert second.router.match("/seven", "GET", None, None, "127.0.0.1", {}) is not None
    assert second.router.match("/r7", "GET", None, None, "127.0.0.1", {}) is None
    assert second.router.match("/r8", "GET", None, None, "127.0.0.1", {}) is not None


def test_dependency_change_recompiles_dependents(registry: PluginRegistry) -> None:
    routes = [
        {"id": "a", "uri": "/a", "service_id": "s"},
        {"id": "b", "uri": "/b", "upstream": up(3)},
    ]
    first = build_state(snap(routes=routes, services=[{"id": "s", "upstream": up(1)}]), registry)
    second = build_state(
        snap(routes=routes, services=[{"id": "s", "upstream": up(2)}]), registry,
        previous=first.cache,
    )
    assert second.routes["a"] is not first.routes["a"]
    assert second.routes["a"].upstream.nodes[0].port == 2  # type: ignore[union-attr]
    assert second.routes["b"] is first.routes["b"]


def test_upstream_change_gives_a_new_runtime(registry: PluginRegistry) -> None:
    first = build_state(snap(upstreams=[{"id": "u", **up(1)}],
                             routes=[{"id": "r", "uri": "/", "upstream_id": "u"}]), registry)
    second = build_state(snap(upstreams=[{"id": "u", **up(2)}],
                              routes=[{"id": "r", "uri": "/", "upstream_id": "u"}]), registry,
                         previous=first.cache)
    assert second.upstreams["u"] is not first.upstreams["u"]
    assert second.routes["r"].upstream is second.upstreams["u"]


def test_validator_reports_index_paths_and_rechecks_changed_items(registry: PluginRegistry) -> None:
    validate = SnapshotValidator()
    good = {"id": "1", "uri": "/a", "upstream": up(1)}
    bad = {"id": "2", "uri": "/b", "methods": ["FETCH"], "upstream": up(1)}
    problems = validate(snap(routes=[good, bad]), registry)
    assert [p.path for p in problems] == ["routes[1].methods"]
    problems = validate(snap(routes=[bad, good]), registry)
    assert [p.path for p in problems] == ["routes[0].methods"]
    fixed = dict(bad, methods=["GET"])
    assert validate(snap(routes=[fixed, good]), registry) == []


def test_credentials_are_validated_as_credentials(registry: PluginRegistry) -> None:
    validate = SnapshotValidator()
    consumer = {"username": "jack"}
    credential = {"id": "jack/credentials/c1", "plugins": {}}
    assert validate(snap(consumers=[consumer, credential]), registry) == []
    bad = {"id": "jack/credentials/c2", "plugins": {}, "username": "x"}
    problems = validate(snap(consumers=[consumer, bad]), registry)
    assert [p.path for p in problems] == ["consumers[1]"]


def test_rebuild_with_a_changed_route_on_a_shared_path(registry: PluginRegistry) -> None:
    routes = [
        {"id": "low", "uri": "/same", "priority": 1, "upstream": up(1)},
        {"id": "high", "uri": "/same", "priority": 2, "upstream": up(2)},
        {"id": "other", "uri": "/other/*", "upstream": up(3)},
    ]
    first = build_state(snap(routes=routes), registry)
    m = first.router.match("/same", "GET", None, None, "127.0.0.1", {})
    assert m is not None and m.spec.id == "high"
    flipped = [dict(routes[0], priority=3), routes[1], routes[2]]
    second = build_state(snap(routes=flipped), registry, previous=first.cache)
    m = second.router.match("/same", "GET", None, None, "127.0.0.1", {})
    assert m is not None and m.spec.id == "low"
    m = second.router.match("/other/x", "GET", None, None, "127.0.0.1", {})
    assert m is not None and m.spec.id == "other"
    removed = [routes[1], routes[2]]
    third = build_state(snap(routes=removed), registry, previous=second.cache)
    m = third.router.match("/same", "GET", None, None, "127.0.0.1", {})
    assert m is not None and m.spec.id == "high"


def _view(state: Any) -> dict[str, Any]:
    """What the request path sees of each route: its upstream nodes, failure, plugins."""
    out: dict[str, Any] = {}
    for rid, route in state.routes.items():
        up = route.upstream
        out[rid] = (
            None if up is None else sorted(str(n) for n in up.conf.get("nodes") or {}),
            route.fail_status,
            tuple(route.chain.plugins),
        )
    probes = {}
    for path in ("/r/0", "/r/1", "/r/2", "/r/3", "/s/x", "/p", "/none"):
        m = state.router.match(path, "GET", None, None, "127.0.0.1", {})
        probes[path] = None if m is None else m.spec.id
    return {"routes": out, "probes": probes}


@pytest.mark.parametrize("with_delta", [False, True])
def test_incremental_builds_equal_full_builds(registry: PluginRegistry, with_delta: bool) -> None:
    """Each step changes one thing a route depends on; the state built from the previous one
    must look exactly like a state built from nothing."""
    upstreams = [{"id": "u", **up(1)}]
    services = [{"id": "s", "upstream_id": "u"}]
    configs: list[dict[str, Any]] = []
    routes = [
        {"id": "0", "uri": "/r/0", "upstream_id": "u"},
        {"id": "1", "uri": "/r/1", "service_id": "s"},
        {"id": "2", "uri": "/r/2", "service_id": "missing"},
        {"id": "3", "uri": "/r/3", "plugin_config_id": "pc", "upstream": up(3)},
        {"id": "4", "uri": "/s/*", "upstream": up(4)},
    ]
    globals_: list[dict[str, Any]] = []
    fault = {"fault-injection": {"abort": {"http_status": 418}}}
    steps = [
        lambda: upstreams.__setitem__(0, {"id": "u", **up(2)}),
        lambda: services.__setitem__(0, {"id": "s", "upstream": up(5)}),
        lambda: services.append({"id": "missing", "upstream_id": "u"}),
        lambda: configs.append({"id": "pc", "plugins": fault}),
        lambda: routes.append({"id": "5", "uri": "/p", "upstream_id": "u"}),
        lambda: routes.pop(0),
        lambda: globals_.append({"id": "g", "plugins": fault}),
        lambda: upstreams.clear(),
        lambda: routes.__setitem__(0, {"id": "1", "uri": "/r/1", "upstream": up(6)}),
        lambda: configs.clear(),
    ]
    state = None
    before: Snapshot | None = None
    for n, step in enumerate(steps):
        step()
        collections = dict(upstreams=list(upstreams), services=list(services),
                           plugin_configs=list(configs), routes=list(routes),
                           global_rules=list(globals_))  # fmt: skip
        delta = None
        if with_delta and before is not None:
            delta = SnapshotDelta(before.version, _delta(before, collections))
        s = Snapshot(str(n), freeze_collections(collections), None, delta)
        state = build_state(s, registry, previous=None if state is None else state.cache)
        fresh = build_state(s, registry)
        assert _view(state) == _view(fresh)
        before = s


def _delta(
    before: Snapshot, after: dict[str, list[dict[str, Any]]]
) -> dict[str, dict[str, dict[str, Any] | None]]:
    out: dict[str, dict[str, dict[str, Any] | None]] = {}
    for name, items in after.items():
        old = {item_key(name, i): i for i in before.items(name)}
        new = {item_key(name, i): i for i in items}
        changed: dict[str, dict[str, Any] | None] = {k: None for k in old.keys() - new.keys()}
        changed.update((k, v) for k, v in new.items() if old.get(k) is not v)
        if changed:
            out[name] = changed
    return out


def test_validator_keeps_reporting_unchanged_bad_items(registry: PluginRegistry) -> None:
    validate = SnapshotValidator()
    good = {"id": "1", "uri": "/a", "upstream": up(1)}
    bad = {"id": "2", "uri": "/b", "methods": ["FETCH"], "upstream": up(1)}
    assert [p.path for p in validate(snap(routes=[good, bad]), registry)] == ["routes[1].methods"]
    other = {"id": "3", "uri": "/c", "upstream": up(1)}
    # another item arrives: the bad one is not re-checked but still reported, at its new index
    problems = validate(snap(routes=[other, good, bad]), registry)
    assert [p.path for p in problems] == ["routes[2].methods"]
    assert validate(snap(routes=[other, good]), registry) == []
    assert validate(snap(routes=[other, good]), registry) == []


@pytest.mark.parametrize("extra", [0, 100], ids=["few-items", "with-a-removal"])
def test_reordered_items_reorder_equal_priority_routes(registry: PluginRegistry,
                                                       extra: int) -> None:
    """The same item objects in another order (a hand edit moving lines) change which of two
    equal-priority routes on one path wins: load order decides ties."""
    first = {"id": "a", "uri": "/t", "upstream": up(1)}
    second = {"id": "b", "uri": "/t", "upstream": up(2)}
    others = [{"id": f"o{i}", "uri": f"/o/{i}", "upstream": up(3)} for i in range(extra)]
    state = build_state(snap(routes=[first, second, *others]), registry)
    assert state.router.match("/t", "GET", None, None, "127.0.0.1", {}).spec.id == "a"  # type: ignore[union-attr]
    reordered = [second, first, *others[:-1]] if extra else [second, first]
    state = build_state(snap(routes=reordered), registry, previous=state.cache)
    assert state.router.match("/t", "GET", None, None, "127.0.0.1", {}).spec.id == "b"  # type: ignore[union-attr]


def test_plugin_metadata_is_validated_and_resolved_once_per_build(tmp_path: Any) -> None:
    (tmp_path / "meta.py").write_text(
        "from plugin_sdk import hookimpl\n"
        "name = 'meta'\nversion = '1'\npriority = 1\nschema = {'type': 'object'}\n"
        "metadata_schema = {'type': 'object', 'properties': {\n"
        "    'n': {'type': 'integer'}, 'greeting': {'type': 'string', 'default': 'hi'}}}\n"
        "@hookimpl\ndef access(ctx, conf):\n    pass\n"
    )
    reg, errors = load_registry(["meta"], [tmp_path], {})
    assert not errors
    bad = snap(plugin_metadata=[{"id": "meta", "n": "two"}])
    problems = SnapshotValidator()(bad, reg)
    assert [p.path for p in problems] == ["plugin_metadata[0]"]
    assert "invalid plugin_metadata of plugin [meta]" in problems[0].message
    other = {"id": "not-loaded", "anything": 1}  # kept, unused, on a node without the plugin
    good = snap(plugin_metadata=[{"id": "meta", "n": 2}, other])
    assert SnapshotValidator()(good, reg) == []
    state = build_state(good, reg)
    assert dict(state.plugin_metadata["meta"]) == {"n": 2, "greeting": "hi"}
    assert "not-loaded" not in state.plugin_metadata
    again = build_state(snap(plugin_metadata=list(good.items("plugin_metadata"))), reg,
                        previous=state.cache)  # fmt: skip
    assert again.plugin_metadata["meta"] is state.plugin_metadata["meta"]
    gone = build_state(snap(), reg, previous=again.cache)
    assert gone.plugin_metadata == {}


def test_a_cache_seeds_one_build_and_a_second_build_from_it_starts_afresh(
    registry: PluginRegistry,
) -> None:
    routes = [{"id": str(i), "uri": f"/r{i}", "upstream": up(1)} for i in range(20)]
    first = build_state(snap(routes=routes), registry)
    changed = [*routes[:5], {"id": "5", "uri": "/five", "upstream": up(1)}, *routes[6:]]
    second = build_state(snap(routes=changed), registry, previous=first.cache)
    assert first.cache.consumed and not second.cache.consumed
    # the first state still serves what it served (its cache's tables moved on)
    assert first.router.match("/r5", "GET", None, None, "127.0.0.1", {}) is not None
    assert first.router.match("/five", "GET", None, None, "127.0.0.1", {}) is None
    assert set(first.routes) == {str(i) for i in range(20)}
    # building from the consumed cache again gives the same as building from nothing
    other = [*routes[:3], {"id": "3", "uri": "/three", "upstream": up(1)}, *routes[4:]]
    again = build_state(snap(routes=other), registry, previous=first.cache)
    fresh = build_state(snap(routes=other), registry)
    assert _view(again) == _view(fresh)
