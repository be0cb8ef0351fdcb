"""plugin_sdk.log_entry on real kernel contexts (spec §9.2 default entry, §9.3 log_format,
include_req_body / include_resp_body and their ``_expr``)."""

from __future__ import annotations

import json
import socket
import time
import types
from typing import Any

import pytest

from plugin_sdk import hookimpl
from plugin_sdk.consumer import Consumer
from plugin_sdk.log_entry import (
    LOGGER_PROPERTIES,
    MAX_FORMAT_DEPTH,
    METADATA_PROPERTIES,
    check_log_conf,
    collect_response_body,
    compile_log_format,
    custom_log_entry,
    default_log_entry,
    encode_entry,
    get_log_entry,
    include_request_body,
    include_response_body,
    latency_details,
    parse_query,
    read_request_body,
)
from plugin_sdk.testing import ConfigRejected, make_context, run_phase


def _logger_module() -> types.ModuleType:
    """A minimal logger built on log_entry, the way http-logger & co. use it."""
    mod = types.ModuleType("demo_logger")
    mod.name = "demo-logger"  # type: ignore[attr-defined]
    mod.version = "0.1"  # type: ignore[attr-defined]
    mod.priority = 1  # type: ignore[attr-defined]
    mod.schema = {"type": "object", "properties": dict(LOGGER_PROPERTIES)}  # type: ignore[attr-defined]
    mod.metadata_schema = {  # type: ignore[attr-defined]
        "type": "object", "properties": dict(METADATA_PROPERTIES)}

    def check_schema(conf: dict[str, Any]) -> str | None:
        return check_log_conf(conf)

    @hookimpl
    async def access(ctx: Any, conf: Any) -> None:
        await read_request_body(ctx, conf)

    @hookimpl
    def body_filter(ctx: Any, conf: Any) -> None:
        collect_response_body(ctx, conf)

    @hookimpl
    def log(ctx: Any, conf: Any) -> None:
        ctx.shared["entry"] = get_log_entry(ctx, conf)

    mod.check_schema = check_schema  # type: ignore[attr-defined]
    mod.access = access  # type: ignore[attr-defined]
    mod.body_filter = body_filter  # type: ignore[attr-defined]
    mod.log = log  # type: ignore[attr-defined]
    return mod


LOGGER = _logger_module()


def entry_of(ctx: Any, conf: dict[str, Any] | None = None) -> dict[str, Any]:
    run_phase(LOGGER, "log", conf or {}, ctx=ctx)
    entry: dict[str, Any] = ctx.shared["entry"]
    return entry


def stream(ctx: Any, conf: dict[str, Any], chunks: list[bytes]) -> None:
    """Run body_filter over ``chunks`` then the final empty eof call, as the kernel does."""
    for chunk in chunks:
        ctx.response.chunk, ctx.response.eof = chunk, False
        run_phase(LOGGER, "body_filter", conf, ctx=ctx)
    ctx.response.chunk, ctx.response.eof = b"", True
    run_phase(LOGGER, "body_filter", conf, ctx=ctx)


# -- default entry (§9.2) ------------------------------------------------------------------------


def test_default_entry_fields_from_a_kernel_context() -> None:
    ctx = make_context(
        "POST", "/hello?log_body=no&flag&a=1&a=2&sp=a+b%21",
        headers=[("Host", "Example.com:9080"), ("User-Agent", "t/1"), ("X-Multi", "1"),
                 ("x-multi", "2"), ("Content-Type", "text/plain")],
        body=b"hello body", route={"id": "7", "uri": "/hello"}, status=201,
        response_headers={"Content-Type": "text/plain", "X-Up": "yes"},
    )
    before = time.time() * 1000
    entry = entry_of(ctx)
    req = entry["request"]
    assert req["url"] == "http://example.com:9080/hello?log_body=no&flag&a=1&a=2&sp=a+b%21"
    assert req["uri"] == "/hello?log_body=no&flag&a=1&a=2&sp=a+b%21"
    assert req["method"] == "POST"
    assert req["headers"] == {"host": "Example.com:9080", "user-agent": "t/1",
                              "x-multi": ["1", "2"], "content-type": "text/plain"}
    assert req["querystring"] == {"log_body": "no", "flag": True, "a": ["1", "2"],
                                  "sp": "a b!"}
    assert "size" in req and "body" not in req  # include_req_body is off
    resp = entry["response"]
    assert resp["status"] == 201
    assert resp["headers"] == {"content-type": "text/plain", "x-up": "yes"}
    assert "body" not in resp
    assert entry["server"]["hostname"] == socket.gethostname()
    assert isinstance(entry["server"]["version"], str) and entry["server"]["version"]
    assert entry["route_id"] == "7"
    assert entry["service_id"] == ""
    assert entry["client_ip"] == "127.0.0.1"
    assert "consumer" not in entry
    assert "upstream" not in entry and "upstream_latency" not in entry  # never proxied
    assert isinstance(entry["start_time"], int)
    assert before - 5000 < entry["start_time"] <= time.time() * 1000
    assert entry["latency"] >= 0 and entry["apisix_latency"] == entry["latency"]
    json.loads(encode_entry(entry))


def test_default_entry_service_consumer_and_unmatched() -> None:
    ctx = make_context("GET", "/x", route={"id": 3, "uri": "/x", "service_id": 12},
                       consumer=Consumer(username="jack"))
    entry = entry_of(ctx)
    assert entry["route_id"] == "3" and entry["service_id"] == "12"
    assert entry["consumer"] == {"username": "jack"}

    # no route matched (a global rule logging a 404): service_id is $host, no route_id
    entry = entry_of(make_context("GET", "/nope", host="api.test", status=404))
    assert entry["service_id"] == "api.test"
    assert "route_id" not in entry
    assert entry["response"]["status"] == 404


def test_default_entry_bodies_are_given_by_the_caller() -> None:
    ctx = make_context("POST", "/", body=b"ignored")
    entry = default_log_entry(ctx, request_body="req", response_body="resp")
    assert entry["request"]["body"] == "req" and entry["response"]["body"] == "resp"
    entry = default_log_entry(ctx)
    assert "body" not in entry["request"] and "body" not in entry["response"]


def test_latency_details_subtract_upstream_time() -> None:
    ctx = make_context("GET", "/")
    time.sleep(0.06)
    ctx.var["upstream_response_time"] = "0.050"
    latency, upstream, apisix = latency_details(ctx)
    assert latency >= 60 and upstream == pytest.approx(50)
    assert apisix == pytest.approx(latency - 50)
    # retries: nginx lists each try; the tries add up. apisix_latency never goes below 0.
    ctx.var["upstream_response_time"] = "30.000, 40.000"
    latency, upstream, apisix = latency_details(ctx)
    assert upstream == pytest.approx(70000) and apisix == 0
    entry = entry_of(ctx)
    assert entry["upstream_latency"] == 70000 and entry["apisix_latency"] == 0


def test_parse_query_like_get_uri_args() -> None:
    assert parse_query("") == {}
    assert parse_query("a=1&b&a=2&c=&&d=%2F+x") == {"a": ["1", "2"], "b": True, "c": "",
                                                     "d": "/ x"}


def test_encode_entry_is_compact_utf8_json() -> None:
    line = encode_entry({"a": "é", "b": [1, 2], "c": {"d": None}, "e": object()})
    assert line.startswith(b'{"a":"\xc3\xa9","b":[1,2],"c":{"d":null},"e":"<object')
    assert b"\n" not in encode_entry({"x": "multi\nline"})


# -- log_format (§9.3) ---------------------------------------------------------------------------


def test_log_format_resolves_whole_variables_only() -> None:
    fmt = compile_log_format({
        "host": "$host", "client_ip": "$remote_addr", "literal": "plain text",
        "num": 5, "flag": False, "list": ["$host"], "none": None,
        "missing": "$http_x_not_sent", "combo": "$host:$server_port",
        "arg": "$arg_name", "hdr": "$http_x_tenant",
    })
    ctx = make_context("GET", "/p?name=jack", host="h.test", headers={"X-Tenant": "t1"})
    out = fmt.render(ctx.var)
    assert out == {"host": "h.test", "client_ip": "127.0.0.1", "literal": "plain text",
                   "num": 5, "flag": False, "list": ["$host"], "none": None,
                   "arg": "jack", "hdr": "t1"}
    assert not fmt.needs_request_body


def test_log_format_nested_objects_and_depth_limit() -> None:
    deep: dict[str, Any] = {"leaf": "$request_method"}
    for level in range(MAX_FORMAT_DEPTH + 1, 1, -1):
        deep = {f"l{level}": deep, "m": "$request_method"}
    fmt = compile_log_format({"top": "$uri", **deep})
    out = fmt.render(make_context("PUT", "/n").var)
    assert out["top"] == "/n" and out["m"] == "PUT"
    node = out
    for level in range(2, MAX_FORMAT_DEPTH + 1):
        node = node[f"l{level}"]
        assert node["m"] == "PUT"
    assert node[f"l{MAX_FORMAT_DEPTH + 1}"] == {}  # the sixth level is cut off


def test_request_body_in_log_format() -> None:
    fmt = compile_log_format({"b": "$request_body", "n": {"b": "$request_body"}})
    assert fmt.needs_request_body
    assert fmt.render({}, "payload") == {"b": "payload", "n": {"b": "payload"}}
    assert fmt.render({}) == {"n": {}}


def test_custom_entry_always_carries_route_and_service_ids() -> None:
    fmt = compile_log_format({"host": "$host", "route_id": "x", "service_id": "literal"})
    entry = custom_log_entry(make_context("GET", "/", route={"id": "1", "uri": "/"}), fmt)
    assert entry == {"host": "localhost", "route_id": "1"}  # as APISIX: nil service_id
    entry = custom_log_entry(
        make_context("GET", "/", route={"id": "1", "uri": "/", "service_id": "s"}), fmt)
    assert entry == {"host": "localhost", "route_id": "1", "service_id": "s"}
    entry = custom_log_entry(make_context("GET", "/"), fmt)  # no route: as rendered
    assert entry == {"host": "localhost", "route_id": "x", "service_id": "literal"}


def test_conf_format_wins_over_metadata_format() -> None:
    meta = {"demo-logger": {"log_format": {"from": "metadata", "h": "$host"}}}
    route = {"id": "r", "uri": "/"}
    ctx = make_context("GET", "/", route=route, plugin_metadata=meta)
    assert entry_of(ctx) == {"from": "metadata", "h": "localhost", "route_id": "r"}
    ctx = make_context("GET", "/", route=route, plugin_metadata=meta)
    assert entry_of(ctx, {"log_format": {"from": "conf"}}) == {"from": "conf", "route_id": "r"}
    # an empty metadata format does not count: the default entry
    ctx = make_context("GET", "/", route=route,
                       plugin_metadata={"demo-logger": {"log_format": {}}})
    assert "request" in entry_of(ctx)
    # ... while an empty conf format is a (nearly empty) custom entry
    assert entry_of(make_context("GET", "/", route=route), {"log_format": {}}) == {
        "route_id": "r"}


def test_log_format_extra_adds_without_overwriting() -> None:
    route = {"id": "r", "uri": "/"}
    ctx = make_context("GET", "/", route=route, headers={"X-Tenant": "acme"})
    entry = entry_of(ctx, {"log_format_extra": {"tenant": "$http_x_tenant", "route_id": "no",
                                                "gone": "$http_x_none"}})
    assert entry["tenant"] == "acme" and entry["route_id"] == "r" and "gone" not in entry
    assert "request" in entry
    # the metadata's extra applies when the conf has none; the conf's wins otherwise
    meta = {"demo-logger": {"log_format_extra": {"from": "metadata"}}}
    ctx = make_context("GET", "/", route=route, plugin_metadata=meta)
    assert entry_of(ctx)["from"] == "metadata"
    ctx = make_context("GET", "/", route=route, plugin_metadata=meta)
    assert entry_of(ctx, {"log_format_extra": {"from": "conf"}})["from"] == "conf"
    # with a custom format too
    ctx = make_context("GET", "/", route=route)
    assert entry_of(ctx, {"log_format": {"a": "1"}, "log_format_extra": {"b": "2", "a": "x"}}) \
        == {"a": "1", "b": "2", "route_id": "r"}


# -- request body --------------------------------------------------------------------------------


def test_request_body_only_with_include_req_body() -> None:
    ctx = make_context("POST", "/", body=b"abc")
    run_phase(LOGGER, "access", {}, ctx=ctx)
    assert "body" not in entry_of(ctx)["request"]

    conf: dict[str, Any] = {"include_req_body": True}
    ctx = make_context("POST", "/", body=b"abc")
    run_phase(LOGGER, "access", conf, ctx=ctx)
    assert entry_of(ctx, conf)["request"]["body"] == "abc"

    conf = {"include_req_body": True, "max_req_body_bytes": 2}
    ctx = make_context("POST", "/", body=b"abcdef")
    run_phase(LOGGER, "access", conf, ctx=ctx)
    assert entry_of(ctx, conf)["request"]["body"] == "ab"

    # an empty body is no body
    ctx = make_context("GET", "/")
    run_phase(LOGGER, "access", {"include_req_body": True}, ctx=ctx)
    assert "body" not in entry_of(ctx, {"include_req_body": True})["request"]


def test_include_req_body_expr_decides_per_request() -> None:
    conf = {"include_req_body": True, "include_req_body_expr": [["arg_log_body", "==", "yes"]]}
    yes = make_context("POST", "/?log_body=yes", body=b"secret")
    no = make_context("POST", "/?log_body=no", body=b"secret")
    assert include_request_body(yes, conf) and not include_request_body(no, conf)
    assert not include_request_body(yes, {"include_req_body_expr": [["arg_log_body", "==",
                                                                     "yes"]]})
    for ctx in (yes, no):
        run_phase(LOGGER, "access", conf, ctx=ctx)
    assert entry_of(yes, conf)["request"]["body"] == "secret"
    assert "body" not in entry_of(no, conf)["request"]


def test_request_body_variable_reads_the_body_without_include() -> None:
    conf = {"log_format": {"body": "$request_body"}, "max_req_body_bytes": 4}
    ctx = make_context("POST", "/", body=b"0123456789")
    run_phase(LOGGER, "access", conf, ctx=ctx)
    assert entry_of(ctx, conf) == {"body": "0123"}
    # the metadata's format counts as well
    meta = {"demo-logger": {"log_format": {"body": "$request_body"}}}
    ctx = make_context("POST", "/", body=b"xyz", plugin_metadata=meta)
    run_phase(LOGGER, "access", {}, ctx=ctx)
    assert entry_of(ctx) == {"body": "xyz"}


# -- response body -------------------------------------------------------------------------------


def test_response_body_collected_bounded_and_set_as_variable() -> None:
    conf = {"include_resp_body": True, "max_resp_body_bytes": 10}
    ctx = make_context("GET", "/")
    stream(ctx, conf, [b"hello ", b"world, ", b"and more"])
    assert ctx.var["resp_body"] == "hello worl"
    assert entry_of(ctx, conf)["response"]["body"] == "hello worl"
    # the chunks themselves are untouched
    ctx = make_context("GET", "/")
    ctx.response.chunk, ctx.response.eof = b"abc", False
    run_phase(LOGGER, "body_filter", conf, ctx=ctx)
    assert ctx.response.chunk == b"abc"


def test_response_body_off_and_expr() -> None:
    ctx = make_context("GET", "/")
    stream(ctx, {}, [b"data"])
    assert ctx.var["resp_body"] is None and "body" not in entry_of(ctx)["response"]

    conf = {"include_resp_body": True, "include_resp_body_expr": [["status", "==", 500]]}
    ok = make_context("GET", "/", status=200)
    bad = make_context("GET", "/", status=500)
    assert include_response_body(bad, conf) and not include_response_body(ok, conf)
    stream(ok, conf, [b"fine"])
    stream(bad, conf, [b"boom"])
    assert "body" not in entry_of(ok, conf)["response"]
    assert entry_of(bad, conf)["response"]["body"] == "boom"


def test_response_body_without_eof_keeps_what_arrived() -> None:
    conf = {"include_resp_body": True}
    ctx = make_context("GET", "/")
    ctx.response.chunk, ctx.response.eof = b"partial", False
    run_phase(LOGGER, "body_filter", conf, ctx=ctx)
    assert entry_of(ctx, conf)["response"]["body"] == "partial"


def test_binary_response_body_is_logged_as_text() -> None:
    conf = {"include_resp_body": True}
    ctx = make_context("GET", "/")
    stream(ctx, conf, [b"\x1f\x8b\x08\x00ok"])
    body = entry_of(ctx, conf)["response"]["body"]
    assert body.endswith("ok") and "\ufffd" in body
    json.loads(encode_entry(entry_of(ctx, conf)))


# -- checks --------------------------------------------------------------------------------------


def test_check_log_conf_messages() -> None:
    assert check_log_conf({}) is None
    assert check_log_conf({"include_req_body_expr": [["arg_a", "==", "1"]]}) is None
    assert check_log_conf({"include_req_body_expr": [["arg_a", "=", "1"]]}) == (
        "failed to validate the 'include_req_body_expr' expression: invalid operator '='")
    assert check_log_conf({"include_resp_body_expr": [["arg_a", "=", "1"]]}) == (
        "failed to validate the 'include_resp_body_expr' expression: invalid operator '='")
    with pytest.raises(ConfigRejected, match="failed to validate the 'include_req_body_expr'"):
        run_phase(LOGGER, "log", {"include_req_body_expr": [["status", "~~", "("]]})
    with pytest.raises(ConfigRejected, match="expect array to have at least 1 items"):
        run_phase(LOGGER, "log", {"include_resp_body_expr": []})
