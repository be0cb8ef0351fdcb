"""echo (spec §7.20, §11 case 51): body replacement and wrapping, response headers, the headers
a changed body drops, and the schema — through the SDK test kit's gateway (real sockets, a
recording upstream and a streaming one) and on the request context."""

from __future__ import annotations

from typing import Any

import pytest

import builtin_plugins.echo as echo
from kernel.plugins.manager import PluginInfo, PluginRegistry, check_conf
from plugin_sdk.testing import GatewayHarness, MockUpstream, make_context, run_phase
from tests.support.upstream import Upstream

pytestmark = pytest.mark.sixgate(plugins=["echo", "fault-injection"])

BEFORE = "before the body modification "
AFTER = " after the body modification."


def streaming(up: Upstream) -> dict[str, Any]:
    return {"type": "roundrobin", "nodes": {f"127.0.0.1:{up.port}": 1}}


@pytest.fixture(scope="module")
def info() -> PluginInfo:
    found = PluginRegistry([echo]).get("echo")
    assert found is not None
    return found


# -- schema ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("conf", "message"), [
    ({}, "expect object to have at least 1 properties"),
    ({"headers": {"X-A": "1"}},
     'object matches none of the required: ["before_body"] or ["body"] or ["after_body"]'),
    ({"body": 1}, 'property "body" validation failed: wrong type: expected string, got number'),
    ({"before_body": True},
     'property "before_body" validation failed: wrong type: expected string, got boolean'),
    ({"body": "x", "headers": {}},
     'property "headers" validation failed: expect object to have at least 1 properties'),
    ({"body": "x", "headers": "X-A: 1"},
     'property "headers" validation failed: wrong type: expected object, got string'),
])
def test_schema_errors(info: PluginInfo, conf: dict[str, Any], message: str) -> None:
    assert check_conf(info, conf) == message


def test_valid_confs(info: PluginInfo) -> None:
    for conf in ({"body": ""}, {"before_body": "a"}, {"after_body": "b"},
                 {"body": "x", "headers": {"X-A": 1}}):
        assert check_conf(info, conf) is None, conf


# -- bodies through a real gateway ----------------------------------------------------------------


def test_before_body_and_after_wrap_the_replaced_body(sixgate: GatewayHarness,
    sixgate_upstream: MockUpstream) -> None:
    sixgate_upstream.respond(body="hello world\n", headers={"Content-Type": "text/plain"})
    sixgate.add_route("/hello", {"echo": {"before_body": BEFORE, "body": "hello upstream",
                                          "after_body": AFTER}})
    r = sixgate.get("/hello")
    assert r.status == 200
    assert r.text == "before the body modification hello upstream after the body modification."
    assert "Content-Length" not in r.headers
    assert r.headers["Content-Type"] == "text/plain"
    sixgate_upstream.assert_received(path="/hello", count=1)  # still proxied


def test_before_body_only(sixgate: GatewayHarness, sixgate_upstream: MockUpstream) -> None:
    sixgate_upstream.respond(body="hello world")
    sixgate.add_route("/hello", {"echo": {"before_body": BEFORE}})
    assert sixgate.get("/hello").text == "before the body modification hello world"


def test_after_body_only(sixgate: GatewayHarness, sixgate_upstream: MockUpstream) -> None:
    sixgate_upstream.respond(body="hello world")
    sixgate.add_route("/hello", {"echo": {"after_body": AFTER}})
    assert sixgate.get("/hello").text == "hello world after the body modification."


def test_empty_upstream_body(sixgate: GatewayHarness, sixgate_upstream: MockUpstream) -> None:
    sixgate_upstream.respond(body="")
    sixgate.add_route("/hello", {"echo": {"before_body": "[", "after_body": "]"}})
    assert sixgate.get("/hello").text == "[]"


def test_streamed_upstream_body(sixgate: GatewayHarness, upstream: Upstream) -> None:
    """Several upstream chunks: before_body once in front, after_body once at the end."""
    sixgate.add_route("/stream", {"echo": {"before_body": "<", "after_body": ">"}}, id="1",
                      upstream=streaming(upstream))
    assert sixgate.get("/stream?chunks=3&size=4&delay=0.02").text == "<000011112222>"
    # body: the first chunk becomes it; the later chunks are dropped
    sixgate.add_route("/stream", {"echo": {"body": "replaced", "after_body": "!"}}, id="1",
                      upstream=streaming(upstream))
    r = sixgate.get("/stream?chunks=3&size=4&delay=0.02")
    assert r.status == 200 and r.text == "replaced!"


def test_large_upstream_body_is_replaced(sixgate: GatewayHarness, upstream: Upstream) -> None:
    sixgate.add_route("/big", {"echo": {"body": "small"}}, upstream=streaming(upstream))
    r = sixgate.get("/big?size=300000")
    assert r.text == "small"


def test_generated_responses_are_changed_too(sixgate: GatewayHarness,
    sixgate_upstream: MockUpstream) -> None:
    sixgate.add_route("/hello", {"echo": {"after_body": "!"},
                                 "fault-injection": {"abort": {"http_status": 403,
                                                               "body": "blocked"}}})
    r = sixgate.get("/hello")
    assert (r.status, r.text) == (403, "blocked!")
    sixgate_upstream.assert_not_received()


# -- headers ------------------------------------------------------------------------------------


def test_headers_are_set_and_body_headers_dropped(sixgate: GatewayHarness,
    sixgate_upstream: MockUpstream) -> None:
    sixgate_upstream.respond(body="hello", headers={
        "ETag": '"abc"', "Last-Modified": "Wed, 21 Oct 2015 07:28:00 GMT",
        "X-Up": "upstream", "X-Keep": "kept", "Content-Type": "text/plain",
    })
    sixgate.add_route("/hello", {"echo": {"body": "new", "headers": {
        "X-Up": "echo", "X-Num": 3, "X-Float": 2.5, "Content-Type": "text/x-echo"}}})
    r = sixgate.get("/hello")
    assert r.text == "new"
    assert r.headers.getall("X-Up") == ["echo"]
    assert r.headers["X-Num"] == "3"
    assert r.headers["X-Float"] == "2.5"
    assert r.headers["X-Keep"] == "kept"
    assert r.headers["Content-Type"] == "text/x-echo"
    for dropped in ("ETag", "Last-Modified", "Content-Length"):
        assert dropped not in r.headers, dropped


def test_content_encoding_is_dropped_with_a_changed_body() -> None:
    ctx = make_context(response_headers={"Content-Encoding": "gzip", "Content-Length": "10",
                                         "ETag": "x", "Last-Modified": "y", "Vary": "z"})
    run_phase(echo, "header_filter", {"after_body": "!"}, ctx)
    assert [name for name, _ in ctx.response.headers.items()] == ["Vary"]


def test_bad_header_values_set_no_header() -> None:
    ctx = make_context(response_headers={"X-A": "up"})
    run_phase(echo, "header_filter", {"body": "x", "headers": {"X-A": "echo", "X-B": True}}, ctx)
    assert ctx.response.headers.get("X-A") == "up"
    assert "X-B" not in ctx.response.headers


# -- the body filter, chunk by chunk --------------------------------------------------------------


def feed(conf: dict[str, Any], chunks: list[bytes]) -> list[bytes]:
    """Run body_filter over ``chunks`` (then the final empty eof call, as the kernel does)."""
    ctx = make_context()
    out = []
    for i, chunk in enumerate([*chunks, b""]):
        ctx.response.chunk, ctx.response.eof = chunk, i == len(chunks)
        run_phase(echo, "body_filter", conf, ctx)
        out.append(ctx.response.chunk)
    return out


def test_body_filter_chunks() -> None:
    assert feed({"before_body": "<", "after_body": ">"}, [b"a", b"b"]) == [b"<a", b"b", b">"]
    assert feed({"body": "X"}, [b"a", b"b"]) == [b"X", b"", b""]
    assert feed({"before_body": "<", "body": "X", "after_body": ">"}, [b"a"]) == [b"<X>", b""]
    assert feed({"before_body": "<", "after_body": ">"}, []) == [b"<>"]
    assert feed({"after_body": "é"}, [b"a"]) == [b"a", "é".encode()]
