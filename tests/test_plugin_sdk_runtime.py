"""The plugin SDK's per-request and per-worker facilities, end to end through the test kit:
ctx.plugin_data / ctx.shared, the bound ctx.log, kernel-owned shared dicts that survive hot
reloads, the shared outbound HTTP client, ctx.plugin_metadata, the matched route/service."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import plugin_sdk
from kernel.direct import DirectExchange
from kernel.plugins.runtime import RUNTIME, SharedDictStore
from plugin_sdk import PluginError, shared_dict
from plugin_sdk.testing import (
    ConfigRejected,
    GatewayHarness,
    MockUpstream,
    make_context,
    run_phase,
)
from tests.support.gateway import REPO


def _src(text: str) -> str:
    return textwrap.dedent(text).lstrip()


def _wait_for(predicate: Any, timeout: float = 3.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.01)


# -- 1. ctx.plugin_data (private per plugin) and ctx.shared (one dict per request) ------------

STORE_A = _src('''
    from plugin_sdk import hookimpl, shared_dict

    name = "store-a"
    version = "1"
    priority = 30
    schema = {"type": "object"}
    seen = shared_dict("test.store-a.seen")

    @hookimpl
    def rewrite(ctx, conf):
        ctx.plugin_data["n"] = 1
        ctx.shared["from_a"] = "a"

    @hookimpl
    def access(ctx, conf):
        ctx.plugin_data["n"] += 1
        ctx.upstream.set_header("X-A-N", str(ctx.plugin_data["n"]))

    @hookimpl
    def header_filter(ctx, conf):
        ctx.response.headers.set("X-A-Final", str(ctx.plugin_data["n"]))
        ctx.response.headers.set("X-A-Sees-B", repr(ctx.plugin_data.get("b")))

    @hookimpl
    def log(ctx, conf):
        seen.set(ctx.var["arg_id"], [ctx.plugin_data["n"], ctx.shared.get("from_b")])
''')

STORE_B = _src('''
    from plugin_sdk import hookimpl

    name = "store-b"
    version = "1"
    priority = 20
    schema = {"type": "object"}

    @hookimpl
    def access(ctx, conf):
        ctx.plugin_data["b"] = "mine"
        ctx.upstream.set_header("X-B-Sees-A", repr(ctx.plugin_data.get("n")))
        ctx.upstream.set_header("X-Shared", ctx.shared.get("from_a", "none"))
        ctx.shared["from_b"] = "b"
''')

PROBE = _src('''
    from plugin_sdk import hookimpl, shared_dict

    name = "probe"
    version = "1"
    priority = 5
    schema = {"type": "object"}
    out = shared_dict("test.probe")

    @hookimpl
    def access(ctx, conf):
        pass

    @hookimpl
    def log(ctx, conf):
        # what the request context had to allocate for this request (kernel internals)
        out.set(ctx.var["arg_id"], sorted(k for k in vars(ctx) if k.startswith("_")))
''')


@pytest.mark.parametrize("b_async", [False, True], ids=["callback-path", "task-path"])
def test_plugin_data_is_private_and_shared_is_common(sixgate: GatewayHarness, b_async: bool,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    direct = []
    start = DirectExchange.start

    def counting_start(self: DirectExchange, *args: Any) -> None:
        direct.append(1)
        start(self, *args)

    monkeypatch.setattr(DirectExchange, "start", counting_start)
    seen = shared_dict("test.store-a.seen")
    seen.clear()
    assert sixgate.write_plugin("store_a.py", STORE_A).ok
    source_b = STORE_B.replace("def access", "async def access") if b_async else STORE_B
    assert sixgate.write_plugin("store_b.py", source_b).ok
    sixgate.add_route("/store", plugins={"store-a": {}, "store-b": {}})
    for i in range(4):  # the first request opens the upstream connection, later ones reuse it
        r = sixgate.get(f"/store?id={i}")
        assert r.status == 200
        assert (r.headers["X-A-Final"], r.headers["X-A-Sees-B"]) == ("2", "None")
        sixgate.upstream.assert_received(headers={"X-A-N": "2", "X-B-Sees-A": "None",
                                                  "X-Shared": "a"})
        # log runs after the response: same private dict, and what store-b shared
        assert _wait_for(lambda i=i: seen.get(str(i))) == [2, "b"]
    # sync plugins ran on the callback path (kernel/direct.py), async ones on the task path
    assert bool(direct) is not b_async


def test_unused_facilities_allocate_nothing(sixgate: GatewayHarness) -> None:
    out = shared_dict("test.probe")
    out.clear()
    assert sixgate.write_plugin("probe.py", PROBE).ok
    sixgate.add_route("/probe", plugins={"probe": {}})
    for i in range(3):
        assert sixgate.get(f"/probe?id={i}").status == 200
        made = _wait_for(lambda i=i: out.get(str(i)))
        assert made is not None
        for lazy in ("_plugin_slots", "_shared"):
            assert lazy not in made, (lazy, made)


def test_plugin_data_with_run_phase() -> None:
    mod_a, mod_b = _module(STORE_A, "kit_store_a"), _module(STORE_B, "kit_store_b")
    ctx = make_context("GET", "/?id=x")
    run_phase(mod_a, "rewrite", {}, ctx)
    run_phase(mod_b, "access", {}, ctx)
    run_phase(mod_a, "access", {}, ctx)
    assert ctx.upstream.set["x-b-sees-a"][1] == ["None"]
    assert ctx.upstream.set["x-a-n"][1] == ["2"]
    assert ctx.shared == {"from_a": "a", "from_b": "b"}
    untouched = make_context()
    assert run_phase(mod_a, "header_filter", {}, ctx) is None
    assert ctx.response.headers.get("X-A-Final") == "2"
    assert "_plugin_slots" not in vars(untouched) and "_shared" not in vars(untouched)


def _module(source: str, modname: str) -> ModuleType:
    mod = ModuleType(modname)
    exec(compile(source, f"<{modname}>", "exec"), mod.__dict__)
    return mod


# -- 2. ctx.log: bound to the plugin and the request -----------------------------------------

LOGGER = _src('''
    from plugin_sdk import hookimpl

    name = "log-a"
    version = "1"
    priority = 10
    schema = {"type": "object"}

    @hookimpl
    def access(ctx, conf):
        ctx.log.warning("checked %s", ctx.var["uri"])
        ctx.upstream.set_header("X-Rid", ctx.var["request_id"])
        ctx.upstream.set_header("X-Same-Logger", str(ctx.log is ctx.log))
''')


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_ctx_log_names_the_plugin_and_the_request(sixgate: GatewayHarness) -> None:
    assert sixgate.write_plugin("log_a.py", LOGGER).ok
    sixgate.add_route("/log", plugins={"log-a": {}})
    handler = _Records()
    logging.getLogger("sixgate.plugin.log-a").addHandler(handler)
    try:
        rids = []
        for _ in range(2):
            assert sixgate.get("/log").status == 200
            req = sixgate.upstream.assert_received(headers={"X-Same-Logger": "True"})
            rids.append(req.headers["X-Rid"])
    finally:
        logging.getLogger("sixgate.plugin.log-a").removeHandler(handler)
    assert rids[0] != rids[1] and len(rids[0]) == 32
    for rid in rids:
        line = f"WARNING sixgate.plugin.log-a: [log-a] checked /log, request_id: {rid}"
        assert line in sixgate.logs()
    assert [(r.plugin, r.request_id) for r in handler.records] == [  # type: ignore[attr-defined]
        ("log-a", rids[0]), ("log-a", rids[1])]


def test_ctx_log_with_run_phase(caplog: pytest.LogCaptureFixture) -> None:
    ctx = make_context("GET", "/x")
    with caplog.at_level(logging.INFO, logger="sixgate.plugin.log-a"):
        run_phase(_module(LOGGER, "kit_log_a"), "access", {}, ctx)
    rid = ctx.var["request_id"]
    assert caplog.messages == [f"[log-a] checked /x, request_id: {rid}"]
    assert caplog.records[0].plugin == "log-a"  # type: ignore[attr-defined]


# -- 3. kernel-owned shared dicts survive plugin reloads -----------------------------------

HITS = _src('''
    from plugin_sdk import Response, hookimpl, shared_dict

    name = "hits"
    version = "1"
    priority = 10
    schema = {"type": "object"}
    hits = shared_dict("test.hits")
    local = {"n": 0}          # a module global: starts afresh with every reload

    @hookimpl
    def access(ctx, conf):
        local["n"] += 1
        total = hits.incr("total")
        return Response(200, {"total": total, "local": local["n"], "version": "v1"})
''')


def test_a_counter_keeps_counting_across_reloads(sixgate: GatewayHarness) -> None:
    shared_dict("test.hits").clear()
    assert sixgate.write_plugin("hits.py", HITS).ok
    sixgate.add_route("/hits", plugins={"hits": {}})
    assert sixgate.get("/hits").json() == {"total": 1, "local": 1, "version": "v1"}
    assert sixgate.get("/hits").json() == {"total": 2, "local": 2, "version": "v1"}
    # file-watch reload: a new module, the same kernel-owned dict
    assert sixgate.edit_plugin("hits.py", replace=('"v1"', '"v2"')).ok
    assert sixgate.get("/hits").json() == {"total": 3, "local": 1, "version": "v2"}
    # PUT /apisix/admin/plugins/reload (re-reads config.yaml, rescans, reloads)
    assert sixgate.reload_plugins().ok
    assert sixgate.get("/hits").json()["total"] == 4
    assert shared_dict("test.hits").get("total") == 4
    assert "test.hits" in RUNTIME.shared_dict_names()


def test_shared_dict_operations_and_ttl() -> None:
    now = [100.0]
    store = SharedDictStore("t", clock=lambda: now[0])
    assert store.get("k", "dflt") == "dflt"
    store.set("k", {"any": "object"})
    assert store.get("k") == {"any": "object"} and store.ttl("k") is None
    assert store.add("k", 1) is False and store.add("new", 1, ttl=5) is True
    assert store.incr("c", 2, init=10, ttl=10) == 12
    now[0] += 4
    assert store.incr("c") == 13 and store.ttl("c") == pytest.approx(6)
    assert sorted(store.keys()) == ["c", "k", "new"] and len(store) == 3
    now[0] += 1.5  # "new" expired
    assert store.get("new") is None and sorted(store.keys()) == ["c", "k"]
    assert store.add("new", 2) is True and store.get("new") == 2
    now[0] += 5  # "c" expired: the next incr starts a new window
    assert store.incr("c", init=0, ttl=10) == 1
    with pytest.raises(TypeError, match="not a number"):
        store.incr("k")
    with pytest.raises(KeyError):
        store.ttl("absent")
    with pytest.raises(ValueError):
        store.set("x", 1, ttl=0)
    assert store.delete("k") is True and store.delete("k") is False
    store.clear()
    assert len(store) == 0


def test_shared_dict_handle_is_the_kernel_dict() -> None:
    handle = shared_dict("test.handle")
    handle.clear()
    assert handle.incr("n", ttl=30) == 1 and "n" in handle and len(handle) == 1
    assert list(handle) == ["n"] and 0 < (handle.ttl("n") or 0) <= 30
    assert RUNTIME.shared_dict("test.handle").get("n") == 1
    assert shared_dict("test.handle").get("n") == 1  # any handle with the name
    assert isinstance(handle, plugin_sdk.SharedDict) and repr(handle) == \
        "<SharedDict 'test.handle'>"
    with pytest.raises(ValueError):
        shared_dict("")


def test_without_a_kernel_the_sdk_says_so() -> None:
    code = (
        "import plugin_sdk\n"
        "h = plugin_sdk.shared_dict('x')\n"  # a handle is fine at import time
        "try:\n"
        "    h.get('k')\n"
        "except plugin_sdk.PluginError as e:\n"
        "    print('refused:', e)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("refused: no sixgate kernel in this process")
    assert issubclass(PluginError, Exception)


# -- 4. the outbound HTTP client ---------------------------------------------------------------

OUTBOUND = _src('''
    from plugin_sdk import Response, hookimpl, http_client

    name = "outbound"
    version = "1"
    priority = 10
    schema = {"type": "object", "properties": {"url": {"type": "string"}}, "required": ["url"]}
    SESSIONS = []

    @hookimpl
    async def access(ctx, conf):
        session = http_client()
        SESSIONS.append(session)
        async with session.get(conf["url"], params={"q": ctx.var["arg_q"]}) as r:
            if r.status != 200:
                return Response(502, {"side": r.status})
            data = await r.json()
        ctx.upstream.set_header("X-Side-Query", data["query"])
''')


def test_http_client_is_one_kernel_session_closed_at_shutdown(
    tmp_path: Path, sixgate_upstream: MockUpstream
) -> None:
    side = MockUpstream().start()
    harness = GatewayHarness(tmp_path / "gw", sixgate_upstream).start()
    try:
        assert harness.write_plugin("outbound.py", OUTBOUND).ok
        harness.add_route("/out", plugins={"outbound": {"url": f"http://{side.host}:{side.port}/check"}})
        for q in ("a", "b", "c"):
            assert harness.get(f"/out?q={q}").status == 200
            side.assert_received(method="GET", path="/check", query=f"q={q}")
            sixgate_upstream.assert_received(path="/out", headers={"X-Side-Query": f"q={q}"})
        assert side.assert_received(count=3).headers["User-Agent"].startswith("sixgate/")
        side.respond(403, "no", path="/check")
        r = harness.get("/out?q=d")
        assert r.status == 502 and r.json() == {"side": 403}
        info = harness.gateway.registry.get("outbound")
        sessions = info.module.SESSIONS
        assert len(sessions) == 4 and len({id(s) for s in sessions}) == 1  # never per request
        assert not sessions[0].closed
    finally:
        harness.stop()
        side.stop()
    assert sessions[0].closed  # the gateway closed it when it stopped


def test_http_client_needs_the_event_loop() -> None:
    with pytest.raises(RuntimeError, match="event loop"):
        plugin_sdk.http_client()


# -- 5. ctx.plugin_metadata ------------------------------------------------------------------

META = _src('''
    import json
    from plugin_sdk import hookimpl

    name = "meta"
    version = "1"
    priority = 10
    schema = {"type": "object"}
    metadata_schema = {
        "type": "object",
        "properties": {"greeting": {"type": "string", "default": "hello"},
                       "n": {"type": "integer"}},
        "additionalProperties": False,
    }
    SEEN = []

    @hookimpl
    def access(ctx, conf):
        md = ctx.plugin_metadata
        SEEN.append(md)
        ctx.upstream.set_header("X-Meta", "none" if md is None else json.dumps(dict(md),
                                                                             sort_keys=True))
        try:
            md["x"] = 1
        except TypeError:
            ctx.upstream.set_header("X-Read-Only", "yes")
''')

OTHER = _src('''
    from plugin_sdk import hookimpl

    name = "meta-other"
    version = "1"
    priority = 5
    schema = {"type": "object"}

    @hookimpl
    def access(ctx, conf):
        ctx.upstream.set_header("X-Other-Meta", repr(ctx.plugin_metadata))
''')


def _meta_header(sixgate: GatewayHarness) -> Any:
    assert sixgate.get("/meta").status == 200
    value = sixgate.upstream.last.headers["X-Meta"]
    assert sixgate.upstream.last.headers["X-Other-Meta"] == "None"
    return None if value == "none" else json.loads(value)


def test_plugin_metadata_is_validated_filled_and_follows_changes(
    sixgate: GatewayHarness,
) -> None:
    assert sixgate.write_plugin("meta.py", META).ok
    assert sixgate.write_plugin("meta_other.py", OTHER).ok
    sixgate.add_route("/meta", plugins={"meta": {}, "meta-other": {}})
    assert _meta_header(sixgate) is None
    sixgate.set_plugin_metadata("meta", {"n": 2})
    assert _meta_header(sixgate) == {"greeting": "hello", "n": 2}
    assert sixgate.upstream.last.headers["X-Read-Only"] == "yes"
    assert _meta_header(sixgate) == {"greeting": "hello", "n": 2}
    seen = sixgate.gateway.registry.get("meta").module.SEEN
    assert seen[-1] is seen[-2]  # resolved once for the config generation, not per request
    sixgate.set_plugin_metadata("meta", {"greeting": "hi"})
    assert _meta_header(sixgate) == {"greeting": "hi"}
    with pytest.raises(ConfigRejected, match="invalid configuration"):
        sixgate.set_plugin_metadata("meta", {"n": "two"})
    with pytest.raises(ConfigRejected, match="invalid plugin name"):
        sixgate.set_plugin_metadata("no-such-plugin", {})
    assert _meta_header(sixgate) == {"greeting": "hi"}
    # a reload with a new metadata_schema: the metadata is resolved again with its defaults
    assert sixgate.edit_plugin("meta.py", replace=('"hello"', '"bonjour"')).ok
    sixgate.set_plugin_metadata("meta", {"n": 3})
    assert _meta_header(sixgate) == {"greeting": "bonjour", "n": 3}
    sixgate.set_plugin_metadata("meta", None)
    assert _meta_header(sixgate) is None


def test_plugin_metadata_with_run_phase() -> None:
    mod = _module(META, "kit_meta")
    ctx = make_context(plugin_metadata={"meta": {"n": 1}})
    run_phase(mod, "access", {}, ctx)
    assert ctx.upstream.set["x-meta"][1] == ['{"greeting": "hello", "n": 1}']
    ctx = make_context()
    run_phase(mod, "access", {}, ctx)
    assert ctx.upstream.set["x-meta"][1] == ["none"]
    with pytest.raises(ConfigRejected, match="plugin_metadata"):
        run_phase(mod, "access", {}, plugin_metadata={"meta": {"nope": 1}})


# -- 6. the matched route and service --------------------------------------------------------

WHO = _src('''
    from plugin_sdk import hookimpl

    name = "who"
    version = "1"
    priority = 10
    schema = {"type": "object"}

    @hookimpl
    def access(ctx, conf):
        ctx.upstream.set_header("X-Route", str(ctx.route["id"]))
        ctx.upstream.set_header("X-Route-Uri", ctx.route["uri"])
        ctx.upstream.set_header("X-Service", str(ctx.service["id"]) if ctx.service else "none")
        ctx.upstream.set_header("X-Consumer", repr(ctx.consumer))
        ctx.upstream.set_header("X-Plugin", ctx.plugin_name)
''')


def test_matched_route_and_service_on_ctx(sixgate: GatewayHarness) -> None:
    assert sixgate.write_plugin("who.py", WHO).ok
    assert sixgate.upstream is not None
    sixgate.apply({
        "services": [{"id": "svc1", "upstream": sixgate.upstream.node,
                      "plugins": {"who": {}}}],
        "routes": [{"id": "with-svc", "uri": "/svc/*", "service_id": "svc1"},
                   {"id": "alone", "uri": "/alone", "plugins": {"who": {}},
                    "upstream": sixgate.upstream.node}],
    })
    assert sixgate.get("/svc/x").status == 200
    sixgate.upstream.assert_received(headers={"X-Route": "with-svc", "X-Route-Uri": "/svc/*",
                                              "X-Service": "svc1", "X-Consumer": "None",
                                              "X-Plugin": "who"})
    assert sixgate.get("/alone").status == 200
    sixgate.upstream.assert_received(headers={"X-Route": "alone", "X-Service": "none"})
