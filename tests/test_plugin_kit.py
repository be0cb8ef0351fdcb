"""plugin_sdk.testing, the plugin test kit, used as a plugin author uses it (pytest11 fixtures)."""

from __future__ import annotations

import asyncio
import textwrap
import time

import pytest

import builtin_plugins.proxy_rewrite as proxy_rewrite
from plugin_sdk import Response
from plugin_sdk.testing import (
    ConfigRejected,
    GatewayHarness,
    MockUpstream,
    make_context,
    run_phase,
    run_phase_async,
)

COUNTER = textwrap.dedent('''
    from plugin_sdk import Response, hookimpl

    name = "counter"
    version = "1.0"
    priority = 20
    schema = {"type": "object", "properties": {"step": {"type": "integer", "default": 1}}}
    ATTRS = {}

    def init(attrs):
        ATTRS.update(attrs)

    @hookimpl
    def access(ctx, conf):
        ctx.upstream.set_header("X-Step", str(conf["step"]))
        ctx.upstream.set_header("X-Label", ATTRS.get("label", "none"))

    @hookimpl
    def header_filter(ctx, conf):
        ctx.response.headers.set("X-Counted", "yes")
''')


def test_routes_requests_and_upstream_assertions(sixgate: GatewayHarness) -> None:
    sixgate.add_route("/hello", plugins={"proxy-rewrite": {"uri": "/echo",
                                                            "headers": {"set": {"X-A": "1"}}}})
    r = sixgate.get("/hello?x=1", headers={"X-Client": "c"})
    assert r.status == 200 and r.json()["path"] == "/echo"
    req = sixgate.upstream.assert_received(method="GET", path="/echo", query="x=1",
                                           headers={"X-A": "1", "X-Client": "c", "X-B": None},
                                           count=1)
    assert req.headers["host"].startswith("127.0.0.1")
    with pytest.raises(AssertionError, match="path '/echo' != '/nope'"):
        sixgate.upstream.assert_received(path="/nope")
    # a plugin answer never reaches the upstream
    sixgate.upstream.clear()
    sixgate.add_route("/abort", plugins={"fault-injection": {"abort": {"http_status": 403}}})
    assert sixgate.get("/abort").status == 403
    sixgate.upstream.assert_not_received()
    assert sixgate.get("/missing").status == 404


def test_upstream_answers_and_request_bodies(sixgate: GatewayHarness) -> None:
    sixgate.upstream.respond(201, {"made": True}, {"X-Up": "u"}, path="/make")
    sixgate.add_route("/make")
    r = sixgate.post("/make", json_body={"a": 1})
    assert (r.status, r.json(), r.headers["X-Up"]) == (201, {"made": True}, "u")
    assert sixgate.upstream.last.json == {"a": 1}
    assert sixgate.upstream.last.headers["content-type"] == "application/json"


def test_invalid_confs_are_rejected_and_nothing_changes(sixgate: GatewayHarness) -> None:
    sixgate.add_route("/a", id="a", plugins={"fault-injection": {"abort": {"http_status": 200,
                                                                          "body": "one"}}})
    with pytest.raises(ConfigRejected, match=r"plugins\.fault-injection"):
        sixgate.add_route("/a", id="a",
                          plugins={"fault-injection": {"abort": {"http_status": 100}}})
    assert sixgate.get("/a").text == "one"
    with pytest.raises(ConfigRejected, match="unknown plugin"):
        sixgate.add_route("/b", plugins={"no-such-plugin": {}})


def test_global_rules(sixgate: GatewayHarness) -> None:
    sixgate.add_route("/r")
    sixgate.add_global_rule({"fault-injection": {"abort": {
        "http_status": 418, "vars": [[["arg_brew", "==", "tea"]]]}}})
    assert sixgate.get("/r?brew=tea").status == 418
    assert sixgate.get("/r").status == 200


@pytest.mark.sixgate(plugins=["counter"], plugin_attr={"counter": {"label": "from-attr"}})
def test_marker_options_and_a_plugin_written_by_the_test(sixgate: GatewayHarness) -> None:
    assert sixgate.plugin_status()["plugins"] == []  # "counter" is not written yet
    assert sixgate.edit_plugin("counter.py", COUNTER).ok
    sixgate.add_route("/c", plugins={"counter": {"step": 3}})
    r = sixgate.get("/c")
    assert r.headers["X-Counted"] == "yes"
    sixgate.upstream.assert_received(headers={"X-Step": "3", "X-Label": "from-attr"})
    rows = sixgate.plugin_status()["plugins"]
    assert [(p["name"], p["version"]) for p in rows] == [("counter", "1.0")]


def test_write_plugin_enables_it_and_edits_reload_live(sixgate: GatewayHarness) -> None:
    result = sixgate.write_plugin("counter.py", COUNTER)
    assert result.ok and result.trigger == "admin"
    sixgate.add_route("/c", plugins={"counter": {}})
    sixgate.get("/c")
    sixgate.upstream.assert_received(headers={"X-Step": "1"})
    started = time.monotonic()
    result = sixgate.edit_plugin("counter.py", replace=('str(conf["step"])', '"edited"'))
    assert result.ok and result.trigger == "file"
    sixgate.get("/c")
    sixgate.upstream.assert_received(headers={"X-Step": "edited"})
    assert time.monotonic() - started < 1.0


def test_two_gateways_from_the_factory(sixgate_factory, sixgate_upstream: MockUpstream) -> None:
    a = sixgate_factory()
    b = sixgate_factory(plugins=["proxy-rewrite"])
    a.add_route("/x", plugins={"fault-injection": {"abort": {"http_status": 202}}})
    assert a.get("/x").status == 202
    with pytest.raises(ConfigRejected):
        b.add_route("/x", plugins={"fault-injection": {"abort": {"http_status": 202}}})
    b.add_route("/y")
    assert b.get("/y").status == 200
    assert a.port != b.port and sixgate_upstream.last.path == "/y"


# -- one phase on a built context -----------------------------------------------------------------


def test_make_context_is_the_kernel_context() -> None:
    ctx = make_context("post", "/a%20b?x=1&y=2", headers={"X-Ver": "v2", "Cookie": "k=v"},
                       body="payload", client_ip="10.1.2.3", route={"id": "r1"})
    assert ctx.request.method == "POST" and ctx.request.path == "/a b"
    assert ctx.var["uri"] == "/a b" and ctx.var["arg_y"] == "2"
    assert ctx.var["http_x_ver"] == "v2" and ctx.var["cookie_k"] == "v"
    assert ctx.var["remote_addr"] == "10.1.2.3" and ctx.var["route_id"] == "r1"
    assert ctx.var["host"] == "localhost"
    assert asyncio.run(ctx.request.body()) == b"payload"


def test_run_phase_validates_the_conf_and_fills_defaults() -> None:
    ctx = make_context("GET", "/old?q=1")
    assert run_phase(proxy_rewrite, "rewrite", {"uri": "/new"}, ctx) is None
    assert ctx.upstream.uri == "/new?q=1"
    with pytest.raises(ConfigRejected, match="proxy-rewrite"):
        run_phase(proxy_rewrite, "rewrite", {"method": "FETCH"})
    with pytest.raises(ValueError, match="no access hook"):
        run_phase(proxy_rewrite, "access", {})


def test_run_phase_by_name_runs_async_hooks() -> None:
    res = run_phase("fault-injection", "rewrite", {"abort": {"http_status": 403, "body": "no"}})
    assert isinstance(res, Response) and (res.status, res.body) == (403, "no")


async def test_run_phase_async_in_an_async_test() -> None:
    res = await run_phase_async("fault-injection", "rewrite", {"abort": {"http_status": 401}})
    assert res.status == 401
    with pytest.raises(RuntimeError, match="run_phase_async"):
        run_phase("fault-injection", "rewrite", {"abort": {"http_status": 401}})


def test_run_phase_on_the_harness_uses_the_loaded_plugin(sixgate: GatewayHarness) -> None:
    sixgate.write_plugin("counter.py", COUNTER)
    ctx = make_context(status=200)
    assert sixgate.run_phase("counter", "header_filter", {}, ctx) is None
    assert ctx.response.headers["X-Counted"] == "yes"
