"""Compiled plugin chains and their runners: kernel.chain."""

from __future__ import annotations

import logging
import types
import weakref
from typing import Any

import pytest

from kernel.chain import (
    EMPTY_CHAIN,
    Chain,
    PluginConf,
    Step,
    compile_chain,
    merge_plugins,
    run_request_phase,
    run_response_phase,
    run_response_phase_async,
)
from kernel.plugins.manager import PluginRegistry
from plugin_sdk import Response, hookimpl


class Ctx:
    """The smallest stand-in for the kernel's request context that the runners need."""

    def __init__(self, **var: Any) -> None:
        self.var: dict[str, Any] = dict(var)
        self.calls: list[tuple[str, str, Any]] = []


def plugin(name: str, priority: int, phases: dict[str, Any] | None = None,
           schema: dict[str, Any] | None = None) -> types.ModuleType:
    """A plugin module whose hooks record ``(plugin, phase, conf)`` in ``ctx.calls``.

    ``phases`` maps a phase to: ``None`` (record only), a Response to return, an exception
    to raise, or ``"async"`` for an async recording hook.
    """
    mod = types.ModuleType(f"chain_test_{name}")
    mod.name = name  # type: ignore[attr-defined]
    mod.priority = priority  # type: ignore[attr-defined]
    mod.schema = schema or {  # type: ignore[attr-defined]
        "type": "object",
        "properties": {"flag": {"type": "boolean", "default": True}},
    }
    for phase, behaviour in (phases or {"rewrite": None}).items():
        setattr(mod, phase, _hook(name, phase, behaviour))
    return mod


def _hook(name: str, phase: str, behaviour: Any) -> Any:
    if behaviour == "async":
        async def ahook(ctx: Ctx, conf: Any) -> None:
            ctx.calls.append((name, phase, conf))

        ahook.__name__ = phase
        return hookimpl(ahook)

    def hook(ctx: Ctx, conf: Any) -> Any:
        ctx.calls.append((name, phase, conf))
        if isinstance(behaviour, BaseException):
            raise behaviour
        return behaviour

    hook.__name__ = phase
    return hookimpl(hook)


def order(ctx: Ctx) -> list[str]:
    return [f"{p}.{phase}" for p, phase, _ in ctx.calls]


# -- merge_plugins ---------------------------------------------------------------------------------


def test_merge_plugins_precedence() -> None:
    service = {"a": {"from": "service"}, "b": {"from": "service"}, "c": {"from": "service"}}
    plugin_config = {"b": {"from": "pc"}, "d": {"from": "pc"}}
    route = {"c": {"from": "route"}, "d": {"from": "route"}, "e": {"from": "route"}}
    merged = merge_plugins(service, plugin_config, route)
    assert merged == {
        "a": {"from": "service"},
        "b": {"from": "pc"},  # plugin_config (merged into the route) replaces the service's
        "c": {"from": "route"},
        "d": {"from": "route"},  # the route's own conf wins over its plugin_config
        "e": {"from": "route"},
    }
    assert merged["a"] is service["a"]  # shared, not copied
    assert merge_plugins(None, None, None) == {}
    assert merge_plugins(None, None, route) == route
    assert merge_plugins(service, None, {}) == service


# -- compile_chain ---------------------------------------------------------------------------------


@pytest.fixture
def registry() -> PluginRegistry:
    return PluginRegistry(
        [
            plugin("auth", 2500, {"rewrite": None}),
            plugin("fault", 11000, {"rewrite": None}),
            plugin("limit", 1003, {"access": None, "log": None}),
            plugin("echo", 412, {"header_filter": None, "body_filter": None}),
            plugin("tie-b", 10, {"rewrite": None}),
            plugin("tie-a", 10, {"rewrite": None}),
        ]
    )


def test_compile_orders_by_priority_and_phase(registry: PluginRegistry) -> None:
    chain, errors = compile_chain(
        {"limit": {}, "tie-b": {}, "echo": {}, "auth": {}, "fault": {}, "tie-a": {}}, registry
    )
    assert errors == []
    assert [s.plugin for s in chain.rewrite] == ["fault", "auth", "tie-a", "tie-b"]
    assert [s.plugin for s in chain.access] == ["limit"]
    assert chain.before_proxy == ()
    assert [s.plugin for s in chain.header_filter] == ["echo"]
    assert [s.plugin for s in chain.body_filter] == ["echo"]
    assert [s.plugin for s in chain.log] == ["limit"]
    assert chain.plugins == ("fault", "auth", "limit", "echo", "tie-a", "tie-b")
    assert not chain.empty and not chain.has_filters
    assert all(s.phase == "rewrite" for s in chain.rewrite)
    assert [s.priority for s in chain.rewrite] == [11000, 2500, 10, 10]


def test_meta_priority_reorders_only_that_instance(registry: PluginRegistry) -> None:
    chain, errors = compile_chain(
        {"fault": {"_meta": {"priority": 1}}, "auth": {}, "tie-a": {"_meta": {"priority": 20000}}},
        registry,
    )
    assert errors == []
    assert [s.plugin for s in chain.rewrite] == ["tie-a", "auth", "fault"]
    assert registry.get("fault").priority == 11000  # type: ignore[union-attr]


def test_disabled_and_unknown_plugins_are_dropped(registry: PluginRegistry) -> None:
    chain, errors = compile_chain(
        {
            "fault": {"_meta": {"disable": True}, "flag": "invalid but disabled"},
            "not-enabled": {"anything": 1},
            "auth": {"_meta": {"disable": False}},
        },
        registry,
    )
    assert errors == []
    assert chain.plugins == ("auth",)


def test_empty_chain(registry: PluginRegistry) -> None:
    assert compile_chain({}, registry) == (EMPTY_CHAIN, [])
    assert compile_chain(None, registry) == (EMPTY_CHAIN, [])
    chain, _ = compile_chain({"fault": {"_meta": {"disable": True}}}, registry)
    assert chain.empty and chain.plugins == ()


def test_invalid_confs_are_reported_and_skipped(registry: PluginRegistry) -> None:
    chain, errors = compile_chain(
        {"fault": {"flag": "yes"}, "auth": ["not", "an", "object"], "limit": {}}, registry
    )
    assert chain.plugins == ("limit",)
    assert errors == [
        'failed to check the configuration of plugin fault err: property "flag" validation '
        "failed: wrong type: expected boolean, got string",
        'invalid plugin conf ["not", "an", "object"] for plugin [auth]',
    ]


def test_hook_conf_is_a_validated_copy_with_defaults(registry: PluginRegistry) -> None:
    conf = {"_meta": {"priority": 5}}
    chain, _ = compile_chain({"fault": conf}, registry)
    hook_conf = chain.rewrite[0].conf
    assert hook_conf == {"_meta": {"priority": 5}, "flag": True}
    assert isinstance(hook_conf, PluginConf) and isinstance(hook_conf, dict)
    assert conf == {"_meta": {"priority": 5}}, "stored config is not modified"
    assert chain.confs == {"fault": hook_conf}
    weakref.ref(hook_conf)  # weak-referenceable, for plugin_sdk.ConfCache


def test_memo_validates_a_shared_conf_once(registry: PluginRegistry) -> None:
    shared = {"flag": False}
    memo: dict[Any, Any] = {}
    one, _ = compile_chain({"fault": shared, "auth": {}}, registry, memo)
    two, _ = compile_chain({"fault": shared}, registry, memo)
    assert one.rewrite[0].conf is two.rewrite[0].conf
    three, _ = compile_chain({"fault": shared}, registry)
    assert three.rewrite[0].conf is not one.rewrite[0].conf
    assert three.rewrite[0].conf == one.rewrite[0].conf


def test_filter_and_error_response_are_compiled(registry: PluginRegistry) -> None:
    chain, errors = compile_chain(
        {
            "fault": {"_meta": {"filter": [["arg_v", "==", "1"]], "error_response": "nope"}},
            "auth": {"_meta": {"filter": [["arg_v", "bad-op", "1"]]}},
        },
        registry,
    )
    fault, auth = chain.rewrite
    assert fault.filter is not None and fault.error_response == "nope"
    assert fault.filter({"arg_v": "1"}) is True and fault.filter({}) is False
    assert chain.has_filters
    # A filter that does not compile is reported; the plugin runs unconditionally.
    assert auth.filter is None
    assert errors == ["plugin [auth]: failed to compile _meta.filter: invalid operator 'bad-op'"]


# -- runners ---------------------------------------------------------------------------------------


async def test_request_phase_sync_and_async_steps() -> None:
    registry = PluginRegistry(
        [plugin("a", 30, {"rewrite": "async"}), plugin("b", 20, {"rewrite": None}),
         plugin("c", 10, {"rewrite": "async"})]
    )
    chain, _ = compile_chain({"a": {}, "b": {}, "c": {}}, registry)
    ctx = Ctx()
    assert await run_request_phase(chain.rewrite, ctx) is None
    assert order(ctx) == ["a.rewrite", "b.rewrite", "c.rewrite"]
    assert ctx.calls[0][2] == {"flag": True}


async def test_first_response_short_circuits() -> None:
    stop = Response(401, {"message": "Missing API key in request"})
    registry = PluginRegistry(
        [plugin("first", 30), plugin("auth", 20, {"rewrite": stop}), plugin("late", 10)]
    )
    chain, _ = compile_chain({"first": {}, "auth": {}, "late": {}}, registry)
    ctx = Ctx()
    assert await run_request_phase(chain.rewrite, ctx) is stop
    assert order(ctx) == ["first.rewrite", "auth.rewrite"]


@pytest.mark.parametrize(
    ("status", "error_response", "expected_body"),
    [
        (403, {"msg": "custom"}, {"msg": "custom"}),
        (500, "plain text", "plain text"),
        (400, "x", "x"),
        (302, "ignored below 400", None),
        (200, "ignored below 400", None),
    ],
)
async def test_error_response_replaces_the_body(
    status: int, error_response: Any, expected_body: Any
) -> None:
    original = Response(status, None, {"X-Keep": "1"})
    registry = PluginRegistry([plugin("deny", 1, {"access": original})])
    chain, _ = compile_chain({"deny": {"_meta": {"error_response": error_response}}}, registry)
    res = await run_request_phase(chain.access, Ctx())
    assert res is not None and res.status == status
    assert res.body == expected_body
    assert res.headers == {"X-Keep": "1"}
    assert original.body is None, "the plugin's own Response object is not modified"


async def test_request_phase_exception_is_a_500(caplog: pytest.LogCaptureFixture) -> None:
    registry = PluginRegistry(
        [plugin("boom", 20, {"access": RuntimeError("kaput")}),
         plugin("after", 10, {"access": None})]
    )
    chain, _ = compile_chain({"boom": {}, "after": {}}, registry)
    ctx = Ctx()
    with caplog.at_level(logging.ERROR, logger="kernel.chain"):
        res = await run_request_phase(chain.access, ctx)
    assert res is not None and res.status == 500 and res.body is None
    assert order(ctx) == ["boom.access"]
    assert "plugin [boom] failed in phase access" in caplog.text
    assert "kaput" in caplog.text


async def test_non_response_return_values_are_ignored(caplog: pytest.LogCaptureFixture) -> None:
    registry = PluginRegistry([plugin("odd", 2, {"rewrite": 403}), plugin("next", 1)])
    chain, _ = compile_chain({"odd": {}, "next": {}}, registry)
    ctx = Ctx()
    assert await run_request_phase(chain.rewrite, ctx) is None
    assert order(ctx) == ["odd.rewrite", "next.rewrite"]
    assert "return a plugin_sdk.Response" in caplog.text


async def test_log_phase_isolates_exceptions(caplog: pytest.LogCaptureFixture) -> None:
    registry = PluginRegistry(
        [plugin("a", 30, {"log": None}), plugin("b", 20, {"log": ValueError("bad log")}),
         plugin("c", 10, {"log": "async"})]
    )
    chain, _ = compile_chain({"a": {}, "b": {}, "c": {}}, registry)
    assert chain.log_async and not chain.header_filter_async
    ctx = Ctx()
    with caplog.at_level(logging.ERROR, logger="kernel.chain"):
        await run_response_phase_async(chain.log, ctx)
    assert order(ctx) == ["a.log", "b.log", "c.log"]
    assert "plugin [b] failed in phase log" in caplog.text


def test_sync_response_phase(caplog: pytest.LogCaptureFixture) -> None:
    registry = PluginRegistry(
        [plugin("a", 30, {"header_filter": TypeError("x")}),
         plugin("b", 20, {"header_filter": None}),
         plugin("c", 10, {"header_filter": "async"})]
    )
    chain, _ = compile_chain({"a": {}, "b": {}, "c": {}}, registry)
    assert chain.header_filter_async
    ctx = Ctx()
    with caplog.at_level(logging.ERROR, logger="kernel.chain"):
        run_response_phase(chain.header_filter, ctx)
    # The async hook cannot run here: it is skipped (its coroutine closed) and logged.
    assert order(ctx) == ["a.header_filter", "b.header_filter"]
    assert "plugin [a] failed in phase header_filter" in caplog.text
    assert "async header_filter hook skipped" in caplog.text


# -- _meta.filter ----------------------------------------------------------------------------------


async def test_filter_skips_every_phase_of_the_plugin() -> None:
    registry = PluginRegistry(
        [plugin("lim", 20, {"access": None, "log": None}), plugin("other", 10, {"access": None})]
    )
    chain, _ = compile_chain(
        {"lim": {"_meta": {"filter": [["arg_k", "==", "v"]]}}, "other": {}}, registry
    )
    ctx = Ctx(arg_k="nope")
    resolved = chain.for_request(ctx.var)
    assert not resolved.has_filters
    await run_request_phase(resolved.access, ctx)
    run_response_phase(resolved.log, ctx)
    assert order(ctx) == ["other.access"]

    ctx = Ctx(arg_k="v")
    resolved = chain.for_request(ctx.var)
    assert all(s.filter is None for s in resolved.access + resolved.log)
    await run_request_phase(resolved.access, ctx)
    run_response_phase(resolved.log, ctx)
    assert order(ctx) == ["lim.access", "other.access", "lim.log"]


async def test_filter_is_decided_once_per_request() -> None:
    registry = PluginRegistry([plugin("lim", 20, {"access": None, "log": None})])
    chain, _ = compile_chain({"lim": {"_meta": {"filter": [["uri", "==", "/a"]]}}}, registry)
    ctx = Ctx(uri="/a")
    resolved = chain.for_request(ctx.var)
    await run_request_phase(resolved.access, ctx)
    ctx.var["uri"] = "/rewritten"  # a later change does not flip the decision mid-request
    run_response_phase(resolved.log, ctx)
    assert order(ctx) == ["lim.access", "lim.log"]


async def test_runner_evaluates_filters_of_unresolved_chains() -> None:
    registry = PluginRegistry([plugin("p", 1, {"rewrite": None})])
    chain, _ = compile_chain({"p": {"_meta": {"filter": [["arg_k", "==", "v"]]}}}, registry)
    ctx = Ctx()
    await run_request_phase(chain.rewrite, ctx)
    assert ctx.calls == []
    ctx = Ctx(arg_k="v")
    await run_request_phase(chain.rewrite, ctx)
    assert order(ctx) == ["p.rewrite"]


async def test_raising_filter_lets_the_plugin_run() -> None:
    def broken(_: Any) -> bool:
        raise RuntimeError("filter failed")

    calls: list[str] = []
    step = Step(plugin="p", func=lambda ctx, conf: calls.append("ran"), conf={},
                is_async=False, filter=broken, phase="rewrite")
    chain = Chain(rewrite=(step,), plugins=("p",), empty=False, has_filters=True)
    resolved = chain.for_request({})
    assert resolved.rewrite[0].filter is None
    await run_request_phase(chain.rewrite, Ctx())
    assert calls == ["ran"]


def test_for_request_without_filters_is_free(registry: PluginRegistry) -> None:
    chain, _ = compile_chain({"auth": {}}, registry)
    assert chain.for_request({}) is chain


# -- plugin_sdk.ConfCache with the kernel's conf objects -------------------------------------------


def test_conf_cache_plain_dicts_are_bounded() -> None:
    from plugin_sdk import ConfCache

    builds: list[Any] = []

    def build(conf: Any) -> int:
        builds.append(conf)
        return len(builds)

    cache: ConfCache[int] = ConfCache(build, maxsize=2)
    a, b, c = {"n": 1}, {"n": 1}, {"n": 3}
    assert cache(a) == 1 and cache(a) == 1
    assert cache(b) == 2, "equal content, different object: built separately"
    assert cache(c) == 3 and len(cache) == 2  # `a` (oldest) evicted
    assert cache(b) == 2
    assert cache(a) == 4
    cache.clear()
    assert len(cache) == 0


def test_conf_cache_entries_die_with_plugin_confs() -> None:
    import gc

    from plugin_sdk import ConfCache

    cache: ConfCache[str] = ConfCache(lambda conf: conf["v"] * 2, maxsize=1)
    confs = [PluginConf(v=str(i)) for i in range(5)]
    assert [cache(c) for c in confs] == ["00", "11", "22", "33", "44"]
    assert len(cache) == 5, "weak entries are not bounded by maxsize"
    del confs
    gc.collect()
    assert len(cache) == 0


def test_phases_for_limits_a_conf_to_the_phases_it_needs() -> None:
    mod = plugin("picky", 10, {"rewrite": None, "access": None, "log": None},
                 schema={"type": "object", "properties": {"when": {"type": "string"}}})
    mod.phases_for = lambda conf: (conf["when"],)  # type: ignore[attr-defined]
    registry = PluginRegistry([mod])
    chain, errors = compile_chain({"picky": {"when": "access"}}, registry)
    assert not errors
    assert [s.phase for s in chain.access] == ["access"]
    assert chain.rewrite == () and chain.log == ()
    chain, _ = compile_chain({"picky": {"when": "log"}}, registry)
    assert (chain.rewrite, chain.access, [s.phase for s in chain.log]) == ((), (), ["log"])
