"""response-rewrite (spec §7.6, case 50): status, body, headers, vars and filters, on proxied
responses and on responses the gateway generates, through a real gateway."""

from __future__ import annotations

import base64
import gzip

import pytest

from kernel.plugins.manager import PluginRegistry, check_conf
from plugin_sdk.testing import ConfigRejected, GatewayHarness

pytestmark = pytest.mark.sixgate(plugins=["response-rewrite", "fault-injection"])


def _check(conf: dict) -> str | None:
    import builtin_plugins.response_rewrite as rr

    info = PluginRegistry([rr]).get("response-rewrite")
    assert info is not None
    return check_conf(info, conf)


def test_case_50_headers_and_body(sixgate: GatewayHarness) -> None:
    sixgate.add_route("/hello", {"response-rewrite": {
        "headers": {"X-Server-id": 3, "X-Server-status": "on", "Content-Type": ""},
        "body": "new body\n",
    }})
    res = sixgate.get("/hello")
    assert res.status == 200 and res.text == "new body\n"
    assert res.headers["X-Server-id"] == "3" and res.headers["X-Server-status"] == "on"
    assert "Content-Type" not in res.headers


def test_case_50_vars_on_the_response_status(sixgate: GatewayHarness) -> None:
    conf = {"body": "new body3\n", "status_code": 403, "vars": [["status", "==", 500]]}
    sixgate.add_route("/server_error", {"response-rewrite": conf})
    sixgate.add_route("/hello", {"response-rewrite": conf})
    sixgate.upstream.respond(500, "boom", path="/server_error")
    res = sixgate.get("/server_error")
    assert (res.status, res.text) == (403, "new body3\n")
    res = sixgate.get("/hello")
    assert res.status == 200 and res.json()["path"] == "/hello"  # untouched: the echo


def test_vars_on_upstream_headers(sixgate: GatewayHarness) -> None:
    sixgate.upstream.respond(200, "x", {"X-Flag": "yes"}, path="/a")
    sixgate.add_route("/*", {"response-rewrite": {
        "vars": [["upstream_http_x_flag", "==", "yes"]], "headers": {"set": {"X-Seen": "1"}}}})
    assert sixgate.get("/a").headers.get("X-Seen") == "1"
    assert sixgate.get("/b").headers.get("X-Seen") is None


def test_body_base64_and_status(sixgate: GatewayHarness) -> None:
    sixgate.add_route("/hello", {"response-rewrite": {
        "body": base64.b64encode(b"\x00binary\xff").decode(), "body_base64": True,
        "status_code": 201}})
    res = sixgate.get("/hello")
    assert res.status == 201 and res.body == b"\x00binary\xff"
    # the upstream's Content-Length no longer applies: the new body is sent chunked
    assert "Content-Length" not in res.headers
    assert res.headers["Transfer-Encoding"] == "chunked"


def test_headers_add_set_remove_with_vars(sixgate: GatewayHarness) -> None:
    sixgate.upstream.respond(200, "ok", {"X-Drop": "1", "X-Keep": "1", "X-Multi": "a"})
    sixgate.add_route("/hello", {"response-rewrite": {"headers": {
        "add": ["X-Multi: b", "X-Method: $request_method"],
        "set": {"X-Keep": "$uri", "X-Status": "$status"},
        "remove": ["X-Drop"],
    }}})
    res = sixgate.get("/hello")
    assert res.text == "ok"
    assert res.headers.getall("X-Multi") == ["a", "b"]
    assert res.headers["X-Method"] == "GET" and res.headers["X-Keep"] == "/hello"
    assert res.headers["X-Status"] == "200"
    assert "X-Drop" not in res.headers


def test_filters_once_and_global(sixgate: GatewayHarness) -> None:
    sixgate.upstream.respond(200, "hello hello world", {"Content-Type": "text/plain"})
    sixgate.add_route("/once", {"response-rewrite": {
        "filters": [{"regex": "hello", "replace": "bye"}]}})
    sixgate.add_route("/global", {"response-rewrite": {
        "filters": [{"regex": "(h)ello", "scope": "global", "replace": "${1}i"},
                    {"regex": "WORLD", "replace": "[$0]", "options": "jo" + "i"}]}})
    assert sixgate.get("/once").text == "bye hello world"
    assert sixgate.get("/global").text == "hi hi [world]"


def test_filters_decode_gzip_first(sixgate: GatewayHarness) -> None:
    sixgate.upstream.respond(200, gzip.compress(b"secret=42; other=1"),
                             {"Content-Encoding": "gzip", "ETag": '"v1"'})
    sixgate.add_route("/hello", {"response-rewrite": {
        "filters": [{"regex": r"secret=\d+", "replace": "secret=***"}]}})
    res = sixgate.get("/hello")
    assert res.text == "secret=***; other=1"
    assert "Content-Encoding" not in res.headers and "ETag" not in res.headers


def test_a_body_larger_than_the_limit_passes_unchanged(sixgate: GatewayHarness) -> None:
    big = "a" * 5000 + "needle"
    sixgate.upstream.respond(200, big)
    sixgate.add_route("/hello", {"response-rewrite": {
        "filters": [{"regex": "needle", "replace": "pin"}], "max_resp_body_size": 1000}})
    assert sixgate.get("/hello").text == big


def test_gateway_generated_responses_are_rewritten(sixgate: GatewayHarness) -> None:
    sixgate.add_route("/hello", {
        "fault-injection": {"abort": {"http_status": 401, "body": "denied"}},
        "response-rewrite": {"body": '{"code":"unauthorized"}\n',
                             "headers": {"set": {"Content-Type": "application/json"}}},
    })
    res = sixgate.get("/hello")
    assert res.status == 401 and res.json() == {"code": "unauthorized"}
    assert res.headers["Content-Type"] == "application/json"
    sixgate.upstream.assert_not_received()
    # An nginx error page (no upstream node answering) is rewritten too.
    sixgate.add_route("/down", {"response-rewrite": {"status_code": 503, "body": "later\n"}},
                      upstream={"type": "roundrobin", "nodes": {"127.0.0.1:1": 1}})
    res = sixgate.get("/down")
    assert (res.status, res.text) == (503, "later\n")


def test_schema_errors() -> None:
    assert _check({"body": "x", "filters": [{"regex": "a", "replace": "b"}]}) is not None
    assert _check({"body_base64": True, "body": "not base64!"}) == "invalid base64 content"
    assert _check({"body_base64": True}) == "invalid base64 content"
    err = _check({"filters": [{"regex": "(", "replace": "b"}]})
    assert err is not None and err.startswith('regex "(" validation failed: ')
    assert _check({"vars": [["status", "=", 500]]}) is not None
    assert _check({"status_code": 100}) is not None
    assert _check({"filters": []}) is not None
    assert _check({"filters": [{"regex": "a"}]}) is not None
    assert _check({"headers": {"add": ["no-colon"]}}) is not None
    assert _check({"status_code": 200, "headers": {"X-A": "1"}}) is None


def test_the_gateway_refuses_an_invalid_conf(sixgate: GatewayHarness) -> None:
    with pytest.raises(ConfigRejected, match="invalid base64 content"):
        sixgate.add_route("/hello", {"response-rewrite": {"body": "%%", "body_base64": True}})
