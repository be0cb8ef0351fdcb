"""serverless-pre-function / serverless-post-function (spec §7.5, §11 case 55).

Python and Lua functions in every phase through a real in-process gateway (plugin_sdk.testing)
with a recording upstream, the ``ngx``/``apisix.core`` API the Lua functions get, schema errors
at write time (plugin check and the Admin API), and the APISIX FAQ's http -> https snippet.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

import builtin_plugins.serverless as sl
import builtin_plugins.serverless_post_function as post
import builtin_plugins.serverless_pre_function as pre
from kernel.admin import AdminContext, create_admin_app
from kernel.config import Config
from kernel.plugins.loader import load_registry
from kernel.plugins.manager import PluginInfo, PluginRegistry, check_conf
from plugin_sdk import Response
from plugin_sdk.testing import (
    ConfigRejected,
    GatewayHarness,
    MockUpstream,
    make_context,
    run_phase,
)
from tests.support.memory_store import MemoryResourceStore

PRE = "serverless-pre-function"
POST = "serverless-post-function"

FAQ_HTTP_TO_HTTPS = (
    'return function(conf, ctx) local scheme = ngx.var.scheme; if scheme == "http" and '
    'ngx.var.host == "foo.com" then ngx.header["Location"] = "https://foo.com" .. '
    "ngx.var.request_uri; ngx.exit(ngx.HTTP_MOVED_PERMANENTLY); end; end"
)


# -- one gateway for the module ------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream() -> Iterator[MockUpstream]:
    up = MockUpstream().start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, upstream: MockUpstream
) -> Iterator[GatewayHarness]:
    gw = GatewayHarness(tmp_path_factory.mktemp("serverless"), upstream, plugins=[PRE, POST])
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture
def gw(gateway: GatewayHarness, upstream: MockUpstream) -> GatewayHarness:
    """The module's gateway with no routes and a fresh upstream (JSON echo answers)."""
    upstream.clear()
    upstream._answers.clear()
    gateway.apply({"routes": []})
    return gateway


def route(gw: GatewayHarness, plugins: dict[str, Any], uri: str = "/*", **fields: Any) -> None:
    gw.add_route(uri, plugins, id="1", **fields)


def lua(body: str, args: str = "conf, ctx") -> str:
    return f"return function({args}) {body} end"


def logs_with(gw: GatewayHarness, *texts: str, timeout: float = 5.0) -> str:
    """The gateway's logs once they contain every text (log hooks run after the response)."""
    deadline = time.monotonic() + timeout
    while True:
        logs = gw.logs()
        if all(t in logs for t in texts) or time.monotonic() > deadline:
            return logs
        time.sleep(0.01)


# -- the module contract -----------------------------------------------------------------------


def test_module_contract() -> None:
    registry = PluginRegistry([pre, post])
    for module, prio in ((pre, 10000), (post, -2000)):
        info = registry.get(module.name)
        assert info is not None and info.priority == prio
        assert set(info.phases) == {
            "rewrite", "access", "before_proxy", "header_filter", "body_filter", "log"
        }
        assert info.phases["body_filter"][1] is False  # the kernel runs body filters sync
    assert pre.schema is sl.schema and sl.schema["properties"]["phase"]["default"] == "access"
    assert sl.schema["required"] == ["functions"]


@pytest.mark.parametrize(
    ("source", "python"),
    [
        ("def f(conf, ctx):\n    return 1", True),
        ("  async def f(conf, ctx): pass", True),
        ("lambda conf, ctx: None", True),
        ("# a comment\nlambda conf, ctx: None", True),
        ("# comment\nimport json\ndef f(conf, ctx): pass", True),
        ("from x import y\ndef f(a, b): pass", True),
        ("@decorator\ndef f(a, b): pass", True),
        ("return function(conf, ctx) end", False),
        ("-- lua comment\nreturn function() end", False),
        ("local def = 1 return function() end", False),
        ("lambda = 1 return function() end", False),
    ],
)
def test_python_or_lua(source: str, python: bool) -> None:
    assert sl.is_python(source) is python


# -- schema errors at write time ---------------------------------------------------------------


@pytest.fixture(scope="module")
def info() -> PluginInfo:
    registry, errors = load_registry([PRE, POST], [], {})
    assert not errors
    found = registry.get(PRE)
    assert found is not None
    return found


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({}, 'property "functions" is required'),
        ({"functions": []}, 'property "functions" validation failed: expect array to have at '
                            "least 1 items"),
        ({"functions": [1]}, 'property "functions" validation failed: failed to validate item 1'),
        (
            {"phase": "abc", "functions": [lua("")]},
            'property "phase" validation failed: matches none of the enum values',
        ),
        (
            {"functions": ["return function( end"]},
            'failed to loadstring: [string "return function( end"]:1: ',
        ),
        ({"functions": ["return 1"]}, "only accept Lua function, the input code type is number"),
        ({"functions": ["local a = 1"]}, "only accept Lua function, the input code type is nil"),
        ({"functions": ["error('top')"]}, 'pcall error: [string "error(\'top\')"]:1: top'),
        (
            {"functions": [lua(""), "def f(conf, ctx):\n    return (\n"]},
            "failed to compile python function functions[1]: ",
        ),
        (
            {"functions": ["def f(conf, ctx): pass\ndef g(conf, ctx): pass"]},
            "failed to compile python function functions[0]: the source must define exactly "
            "one top-level function, found 2",
        ),
        (
            {"functions": ["def f(conf): pass"]},
            "failed to compile python function functions[0]: the function must accept "
            "(conf, ctx): too many positional arguments",
        ),
        (
            {"functions": ["import no_such_module_here\ndef f(conf, ctx): pass"]},
            "failed to compile python function functions[0]: ModuleNotFoundError: ",
        ),
        (
            {"phase": "body_filter", "functions": ["async def f(conf, ctx): pass"]},
            "failed to compile python function functions[0]: async functions cannot run in "
            "phase body_filter",
        ),
    ],
)
def test_schema_errors(info: PluginInfo, conf: dict[str, Any], message: str) -> None:
    err = check_conf(info, conf)
    assert err is not None and err.startswith(message), err


def test_valid_confs(info: PluginInfo) -> None:
    for conf in (
        {"functions": [lua("return 200")]},
        {"functions": ["# c\nlambda conf, ctx: None", "async def f(conf, ctx, *rest): pass"]},
        {"phase": "log", "functions": ["import json\n\ndef f(conf, ctx):\n    pass"]},
        {"phase": "body_filter", "functions": ["def f(conf, ctx=None): pass"]},
    ):
        assert check_conf(info, conf) is None, conf


async def test_admin_api_refuses_bad_code(tmp_path: Path) -> None:
    registry, errors = load_registry([PRE, POST], [], {})
    assert not errors

    async def reload() -> None:
        return None

    config = Config(
        data={"deployment": {"admin": {"admin_key_required": False,
                                       "allow_admin": ["127.0.0.0/24"]}}},
        path=tmp_path / "config.yaml", conf_dir=tmp_path,
    )
    app = create_admin_app(AdminContext(
        store=MemoryResourceStore(), registry=lambda: registry, reload_plugins=reload,
        config=config,
    ))
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        async def put(plugins: dict[str, Any]) -> tuple[int, Any]:
            body = {"uri": "/hello", "plugins": plugins,
                    "upstream": {"type": "roundrobin", "nodes": {"127.0.0.1:1980": 1}}}
            async with client.put("/apisix/admin/routes/1", data=json.dumps(body)) as resp:
                return resp.status, await resp.json()

        status, body = await put({PRE: {"functions": ["return function( end"]}})
        assert status == 400
        assert body["error_msg"].startswith(
            f"failed to check the configuration of plugin {PRE} err: failed to loadstring: "
            '[string "return function( end"]:1:'
        )
        status, body = await put({POST: {"functions": ["return 'x'"]}})
        assert (status, body) == (400, {"error_msg": (
            f"failed to check the configuration of plugin {POST} err: only accept Lua "
            "function, the input code type is string")})
        status, body = await put({POST: {"phase": "abc", "functions": [lua("")]}})
        assert status == 400 and body["error_msg"].endswith(
            'property "phase" validation failed: matches none of the enum values')
        status, body = await put({PRE: {"functions": ["def f(conf, ctx) pass"]}})
        assert status == 400 and "failed to compile python function functions[0]: " in (
            body["error_msg"])
        status, body = await put({PRE: {"phase": "rewrite", "functions": [FAQ_HTTP_TO_HTTPS]}})
        assert status == 201, body
        assert body["value"]["plugins"][PRE]["functions"] == [FAQ_HTTP_TO_HTTPS]
    finally:
        await client.close()


def test_gateway_refuses_bad_code(gw: GatewayHarness) -> None:
    with pytest.raises(ConfigRejected, match="only accept Lua function, the input code type "
                                             "is boolean"):
        route(gw, {PRE: {"functions": ["return true"]}})


# -- the APISIX FAQ snippet and spec case 55 ------------------------------------------------------


def test_faq_http_to_https_redirect(gw: GatewayHarness, upstream: MockUpstream) -> None:
    route(gw, {PRE: {"phase": "rewrite", "functions": [FAQ_HTTP_TO_HTTPS]}}, uri="/hello",
          hosts=["foo.com", "bar.com"])
    r = gw.get("/hello?x=1", headers={"Host": "foo.com"})
    assert r.status == 301
    assert r.headers["Location"] == "https://foo.com/hello?x=1"
    assert "301 Moved Permanently" in r.text
    upstream.assert_not_received()
    # Another host of the same route is proxied as usual.
    r = gw.get("/hello?x=1", headers={"Host": "bar.com"})
    assert r.status == 200 and "Location" not in r.headers
    upstream.assert_received(path="/hello", query="x=1", count=1)


def test_spec_case_55_post_function_exit(gw: GatewayHarness, upstream: MockUpstream) -> None:
    route(gw, {POST: {"functions": ["return function() ngx.exit(201) end"]}}, uri="/hello")
    r = gw.get("/hello")
    assert r.status == 201 and r.body == b""
    upstream.assert_not_received()


# -- request phases: ending the request ----------------------------------------------------------


@pytest.mark.parametrize("phase", ["rewrite", "access", "before_proxy"])
def test_lua_return_code_and_body(gw: GatewayHarness, upstream: MockUpstream, phase: str) -> None:
    route(gw, {PRE: {"phase": phase, "functions": [
        lua('if ngx.var.arg_deny then return 403, {message = "no " .. ngx.var.arg_deny} end'),
    ]}})
    r = gw.get("/a?deny=you")
    assert (r.status, r.body) == (403, b'{"message":"no you"}\n')
    upstream.assert_not_received()
    assert gw.get("/a").status == 200
    upstream.assert_received(path="/a", count=1)


@pytest.mark.parametrize("phase", ["rewrite", "access", "before_proxy"])
def test_python_return_response(gw: GatewayHarness, upstream: MockUpstream, phase: str) -> None:
    route(gw, {POST: {"phase": phase, "functions": [
        "def deny(conf, ctx):\n"
        "    if ctx.var['arg_deny']:\n"
        "        return Response(403, {'phase': conf['phase']}, {'X-Denied': 'yes'})\n",
    ]}})
    r = gw.get("/a?deny=1")
    assert (r.status, r.json(), r.headers["X-Denied"]) == (403, {"phase": phase}, "yes")
    upstream.assert_not_received()
    assert gw.get("/a").status == 200


def test_python_return_forms(gw: GatewayHarness, upstream: MockUpstream) -> None:
    route(gw, {PRE: {"functions": [
        "lambda conf, ctx: 204 if ctx.var['arg_form'] == 'int' else None",
        "lambda conf, ctx: (409, 'tuple ' + ctx.var['uri']) if ctx.var['arg_form'] else None",
        "async def last(conf, ctx):\n"
        "    import asyncio\n"
        "    await asyncio.sleep(0)\n"
        "    if ctx.var['arg_async']:\n"
        "        return 202, {'async': True}\n",
    ]}})
    assert gw.get("/p?form=int").status == 204
    r = gw.get("/p?form=tuple")
    assert (r.status, r.body) == (409, b"tuple /p")
    r = gw.get("/p?async=1")
    assert (r.status, r.json()) == (202, {"async": True})
    upstream.assert_not_received()
    assert gw.get("/p").status == 200


def test_python_bad_return_is_500(gw: GatewayHarness) -> None:
    route(gw, {PRE: {"functions": ["lambda conf, ctx: 'oops'"]}})
    assert gw.get("/x").status == 500
    assert "a serverless function returned str" in gw.logs()


def test_ngx_say_status_and_headers(gw: GatewayHarness, upstream: MockUpstream) -> None:
    route(gw, {PRE: {"functions": [lua(
        'ngx.header["X-Who"] = ngx.var.arg_who; ngx.header.x_list = {"a", "b"}; '
        'ngx.status = ngx.HTTP_ACCEPTED; ngx.print("hello ", ngx.var.arg_who); '
        'ngx.say(", ", 1, " ", true, " ", nil, {"!", "!"})'
    )]}})
    r = gw.get("/say?who=bob")
    assert r.status == 202
    assert r.body == b"hello bob, 1 true nil!!\n"
    assert r.headers["X-Who"] == "bob" and r.headers.getall("x-list") == ["a", "b"]
    upstream.assert_not_received()


def test_ngx_say_then_exit_keeps_the_sent_status(gw: GatewayHarness) -> None:
    # As OpenResty: ngx.say sends the head (status 200 unless ngx.status was set first).
    route(gw, {PRE: {"functions": [lua('ngx.say("late"); ngx.exit(403)')]}})
    r = gw.get("/x")
    assert (r.status, r.body) == (200, b"late\n")


def test_core_response_exit_and_require(gw: GatewayHarness, upstream: MockUpstream) -> None:
    route(gw, {PRE: {"phase": "rewrite", "functions": [
        'local core = require("apisix.core")\n'
        "return function(conf, ctx)\n"
        '  core.log.warn("checking ", ctx.var.uri)\n'
        '  if ctx.var.arg_text then return core.response.exit(401, "text body") end\n'
        '  core.response.set_header("X-Core", "1")\n'
        '  return core.response.exit(401, {error_msg = "unauthorized", route = ctx.route_id})\n'
        "end",
    ]}})
    r = gw.get("/core")
    assert r.status == 401 and r.headers["X-Core"] == "1"
    assert r.json() == {"error_msg": "unauthorized", "route": "1"}
    assert r.body.endswith(b"}\n")
    r = gw.get("/core?text=1")
    assert (r.status, r.body) == (401, b"text body")
    upstream.assert_not_received()
    assert "[serverless-pre-function] checking /core" in gw.logs()


def test_ngx_redirect(gw: GatewayHarness) -> None:
    route(gw, {PRE: {"functions": [
        lua('if ngx.var.arg_to then return ngx.redirect(ngx.var.arg_to) end'),
        lua('ngx.redirect("/permanent", ngx.HTTP_PERMANENT_REDIRECT)'),
    ]}})
    r = gw.get("/r?to=/elsewhere")
    assert (r.status, r.headers["Location"]) == (302, "/elsewhere")
    r = gw.get("/r")
    assert (r.status, r.headers["Location"]) == (308, "/permanent")


def test_exit_ok_stops_the_list_and_proxies(gw: GatewayHarness, upstream: MockUpstream) -> None:
    route(gw, {PRE: {"functions": [
        lua('ngx.req.set_header("X-First", "1"); ngx.exit(ngx.OK)'),
        lua("return 500"),
    ]}})
    r = gw.get("/ok")
    assert r.status == 200
    upstream.assert_received(headers={"X-First": "1"})


# -- request phases: changing the request -----------------------------------------------------


def test_lua_changes_the_upstream_request(gw: GatewayHarness, upstream: MockUpstream) -> None:
    route(gw, {PRE: {"phase": "rewrite", "functions": [lua(
        'ngx.req.set_header("X-Method", ngx.req.get_method()); '
        'ngx.req.set_header("X-Multi", {"1", "2"}); '
        'ngx.req.clear_header("X-Drop"); '
        'ngx.var.upstream_uri = "/rewritten?from=" .. ngx.var.uri'
    )]}})
    r = gw.get("/orig?q=1", headers={"X-Drop": "x", "X-Keep": "k"})
    assert r.status == 200
    got = upstream.assert_received(path="/rewritten", query="from=/orig",
                                   headers={"X-Method": "GET", "X-Drop": None, "X-Keep": "k"})
    assert got.headers.getall("X-Multi") == ["1", "2"]


def test_ngx_req_getters(gw: GatewayHarness) -> None:
    route(gw, {PRE: {"functions": [lua(
        "local h = ngx.req.get_headers(); local a = ngx.req.get_uri_args(); "
        'ngx.say(h["x-one"], "|", h.X_One, "|", h["X-ONE"], "|", #h["x-two"], "|", '
        'a.a[1], a.a[2], "|", tostring(a.flag), "|", a["sp ace"], "|", '
        "ngx.req.get_method(), \"|\", ngx.req.http_version(), \"|\", "
        'ngx.var.http_x_one, "|", ngx.var.arg_a, "|", tostring(ngx.var.nope), "|", '
        'ngx.var.request_uri)'
    )]}})
    r = gw.request("POST", "/g?a=1&a=2&flag&sp%20ace=x%2By",
                   headers={"X-One": "uno", "X-Two": "a"})
    assert r.status == 200
    assert r.text == "uno|uno|uno|1|12|true|x+y|POST|1.1|uno|1|nil|/g?a=1&a=2&flag&sp%20ace=x%2By\n"


def test_request_body_in_lua(gw: GatewayHarness, upstream: MockUpstream) -> None:
    route(gw, {PRE: {"functions": [lua(
        "ngx.req.read_body(); local body = ngx.req.get_body_data(); "
        'if body == "stop" then return 400, "body: " .. body end'
    )]}})
    assert gw.post("/b", body="stop").text == "body: stop"
    assert gw.post("/b", body="go").status == 200
    upstream.assert_received(body="go", count=1)


def test_vars_ctx_and_order_between_pre_and_post(
    gw: GatewayHarness, upstream: MockUpstream
) -> None:
    # pre (10000) runs before post (-2000) in the same phase; ngx.ctx, the Lua ctx table and
    # ctx.var carry values between them and between phases.
    route(gw, {
        PRE: {"phase": "access", "functions": [
            lua('ngx.ctx.seen = "pre"; ctx.mine = 7; ngx.var.my_var = "v1"'),
            "def f(conf, ctx):\n    ctx.var['py_var'] = ctx.var['my_var'] + '+py'\n",
        ]},
        POST: {"phase": "access", "functions": [lua(
            'ngx.req.set_header("X-Seen", ngx.ctx.seen .. "," .. ctx.mine .. "," '
            '.. ngx.var.py_var .. "," .. tostring(ctx.var.route_id))'
        )]},
    })
    assert gw.get("/order").status == 200
    upstream.assert_received(headers={"X-Seen": "pre,7,v1+py,1"})


def test_conf_is_passed_to_lua_and_python(gw: GatewayHarness) -> None:
    route(gw, {POST: {"phase": "rewrite", "functions": [
        lua('if ngx.var.arg_lua then return 200, conf.phase .. #conf.functions end'),
        "lambda conf, ctx: (200, conf['phase'] + str(len(conf['functions'])))",
    ]}})
    assert gw.get("/c?lua=1").text == "rewrite2"
    assert gw.get("/c").text == "rewrite2"


def test_headers_set_in_request_phases_reach_the_proxied_response(
    gw: GatewayHarness, upstream: MockUpstream
) -> None:
    route(gw, {
        PRE: {"phase": "rewrite", "functions": [lua('ngx.header["X-Lua"] = "from rewrite"')]},
        POST: {"phase": "access", "functions": [
            "def f(conf, ctx):\n    ctx.response.headers.set('X-Py', 'from access')\n",
        ]},
    })
    r = gw.get("/carry")
    assert r.status == 200 and r.json()["path"] == "/carry"
    assert (r.headers["X-Lua"], r.headers["X-Py"]) == ("from rewrite", "from access")


# -- response phases ------------------------------------------------------------------------------


def test_header_filter_lua_and_python(gw: GatewayHarness, upstream: MockUpstream) -> None:
    upstream.respond(200, "hello world", {"X-Up": "1", "Content-Type": "text/plain"})
    route(gw, {
        PRE: {"phase": "header_filter", "functions": [lua(
            'ngx.status = 203; ngx.header["X-Type"] = ngx.header["Content-Type"]; '
            "ngx.header.x_up = nil; ngx.header.x_from_lua = tostring(ngx.status)"
        )]},
        POST: {"phase": "header_filter", "functions": [
            "def f(conf, ctx):\n"
            "    ctx.response.headers.set('X-Py-Status', str(ctx.response.status))\n"
            "    ctx.response.status = ctx.response.status + 3\n",
        ]},
    })
    r = gw.get("/hf")
    assert r.status == 206 and r.body == b"hello world"
    assert r.headers["X-Type"] == "text/plain" and "X-Up" not in r.headers
    assert r.headers["x-from-lua"] == "203" and r.headers["X-Py-Status"] == "203"


def test_header_filter_runs_for_generated_responses(gw: GatewayHarness) -> None:
    route(gw, {
        PRE: {"phase": "rewrite", "functions": [lua("return 418, 'teapot'")]},
        POST: {"phase": "header_filter", "functions": [lua('ngx.header["X-After"] = ngx.status')]},
    })
    r = gw.get("/gen")
    assert (r.status, r.body, r.headers["X-After"]) == (418, b"teapot", "418")


def test_body_filter_lua_and_python(gw: GatewayHarness, upstream: MockUpstream) -> None:
    upstream.respond(200, "hello world")
    route(gw, {
        PRE: {"phase": "body_filter", "functions": [
            lua("if ngx.arg[1] ~= '' then ngx.arg[1] = string.upper(ngx.arg[1]) end"),
        ]},
        POST: {"phase": "body_filter", "functions": [
            "def f(conf, ctx):\n"
            "    r = ctx.response\n"
            "    r.chunk = r.chunk.replace(b'WORLD', b'serverless')\n"
            "    if r.eof:\n"
            "        r.chunk += b'!'\n",
        ]},
    })
    r = gw.get("/bf")
    assert (r.status, r.body) == (200, b"HELLO serverless!")


def test_body_filter_truncates_after_eof_flag() -> None:
    conf = {"phase": "body_filter", "functions": [lua(
        'ngx.arg[1] = "[" .. ngx.arg[1] .. "]"; if ngx.arg[1] == "[b]" then ngx.arg[2] = true end'
    )]}
    ctx = make_context()
    out = []
    for chunk in (b"a", b"b", b"c", b""):
        ctx.response.chunk, ctx.response.eof = chunk, chunk == b""
        run_phase(post, "body_filter", conf, ctx)
        out.append(ctx.response.chunk)
    assert out == [b"[a]", b"[b]", b"", b""]


def test_log_phase_sees_the_final_vars(gw: GatewayHarness, upstream: MockUpstream) -> None:
    upstream.respond(404, "nope")
    route(gw, {
        PRE: {"phase": "log", "functions": [lua(
            'ngx.log(ngx.WARN, "lua log: status=", ngx.var.status, " uri=", ngx.var.uri, '
            '" up=", ngx.var.upstream_status, " sent=", ngx.status)'
        )]},
        POST: {"phase": "log", "functions": [
            "async def f(conf, ctx):\n"
            "    ctx.log.warning('py log: status=%s', ctx.var['status'])\n",
        ]},
    })
    assert gw.get("/logged").status == 404
    lua_line = "[serverless-pre-function] lua log: status=404 uri=/logged up=404 sent=404"
    py_line = "[serverless-post-function] py log: status=404"
    logs = logs_with(gw, lua_line, py_line)
    assert lua_line in logs and py_line in logs


def test_response_phase_limits_are_enforced(gw: GatewayHarness, upstream: MockUpstream) -> None:
    route(gw, {POST: {"phase": "log", "functions": [
        lua('ngx.say("too late")'),
    ]}, PRE: {"phase": "body_filter", "functions": [lua('ngx.header["X-Late"] = "1"')]}})
    r = gw.get("/late")
    assert r.status == 200 and "X-Late" not in r.headers
    disabled = "API disabled in the context of log_by_lua*"
    late = "attempt to set ngx.header.X-Late after sending out response headers"
    logs = logs_with(gw, disabled, late)
    assert disabled in logs and late in logs


# -- errors and isolation --------------------------------------------------------------------------


def test_lua_runtime_error_is_a_500_with_the_lua_message(
    gw: GatewayHarness, upstream: MockUpstream
) -> None:
    route(gw, {PRE: {"functions": [lua("local t = nil; return t.field")]}})
    assert gw.get("/boom").status == 500
    upstream.assert_not_received()
    logs = gw.logs()
    assert "LuaFunctionError" in logs and "attempt to index" in logs and "local 't'" in logs
    assert "in function 'xpcall'" not in logs  # the runner's own frames are left out


def test_lua_error_surfaces_as_python_exception() -> None:
    conf = {"functions": [lua('error("custom failure")')]}
    with pytest.raises(sl.LuaFunctionError, match=r'^\[string "return function.*"\]:1: custom '
                                                  r"failure"):
        run_phase(pre, "access", conf)
    conf = {"functions": [lua("return 'not a status'")]}
    with pytest.raises(TypeError, match="non-numeric status"):
        run_phase(pre, "access", conf)


def test_python_runtime_error_is_a_500(gw: GatewayHarness) -> None:
    route(gw, {PRE: {"functions": ["def f(conf, ctx):\n    return 1 / 0\n"]}})
    assert gw.get("/zero").status == 500
    assert "ZeroDivisionError" in gw.logs()


def test_lua_has_no_python_and_no_attribute_access() -> None:
    probe = lua(
        "local cb\n"
        "for i = 1, 10 do local n, v = debug.getupvalue(ngx.say, i); "
        'if n == "cb" then cb = v end end\n'
        "local ok, err = pcall(function() return cb.var_get.__self__ end)\n"
        "return 200, table.concat({type(python), type(package.loaded.python), "
        "type(cb.var_get), tostring(ok), tostring(err):match('not allowed') or '?'}, ',')"
    )
    res = run_phase(pre, "access", {"functions": [probe]})
    assert isinstance(res, Response)
    assert (res.status, res.body) == (200, b"nil,nil,userdata,false,not allowed")


def test_lua_globals_are_per_function() -> None:
    writer = {"functions": [lua("counter = (counter or 0) + 1; return 200, tostring(counter)")]}
    reader = {"functions": [lua("return 200, tostring(counter)")]}
    assert run_phase(pre, "access", writer).body == b"1"
    assert run_phase(pre, "access", reader).body == b"nil"


def test_functions_are_compiled_once_per_conf(gw: GatewayHarness) -> None:
    # A chunk's top level runs when the conf is compiled, not per request.
    route(gw, {PRE: {"functions": [
        "local n = 0\n"
        "return function() if ngx.var.arg_py then return end n = n + 1 return 200, n .. '' end",
        "import itertools\ncount = itertools.count(1)\n"
        "def f(conf, ctx):\n    return 200, str(next(count))\n",
    ]}})
    assert [gw.get("/n").text for _ in range(3)] == ["1", "2", "3"]
    assert [gw.get("/n?py=1").text for _ in range(2)] == ["1", "2"]


def test_lua_utilities_and_core_json() -> None:
    res = run_phase(pre, "access", {"functions": [lua(
        'local core = require("apisix.core") '
        "local t = core.json.decode('{\"a\":[1,2],\"b\":{\"c\":\"d\"}}') "
        "local bad, err = core.json.decode('{nope') "
        "return 200, table.concat({ngx.encode_base64('hi'), ngx.decode_base64('aGk='), "
        "ngx.md5('a'), ngx.escape_uri('a b/c'), ngx.unescape_uri('a%20b'), "
        "tostring(ngx.time() > 1e9), tostring(ngx.now() > 1e9), t.b.c, tostring(t.a[2]), "
        "core.json.encode({x = {1, 2}, y = 'z'}), tostring(bad), tostring(err ~= nil)}, '|')"
    )]})
    assert isinstance(res, Response) and res.status == 200
    assert isinstance(res.body, bytes)
    parts = res.body.decode().split("|")
    assert parts[:9] == ["aGk=", "hi", "0cc175b9c0f1b6a831c399e269772661", "a%20b%2Fc", "a b",
                         "true", "true", "d", "2"]
    assert json.loads(parts[9]) == {"x": [1, 2], "y": "z"}
    assert parts[10:] == ["nil", "true"]
