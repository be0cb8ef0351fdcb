"""gzip through a real in-process gateway (spec §7.23)."""

from __future__ import annotations

import gzip
import socket
import zlib
from collections.abc import Iterator

import pytest

import builtin_plugins.gzip as gzip_plugin
from plugin_sdk.testing import ConfigRejected, GatewayHarness, HttpResult, run_phase
from tests.support.upstream import Upstream

pytestmark = pytest.mark.sixgate(plugins=["gzip", "echo", "fault-injection"])

HTML = "<html><body>" + "hello gzip " * 20 + "</body></html>"
ACCEPT = {"Accept-Encoding": "gzip, deflate, br"}


@pytest.fixture
def streaming() -> Iterator[Upstream]:
    up = Upstream().start()
    yield up
    up.stop()


def html_route(sixgate: GatewayHarness, conf: dict[str, object] | None = None,
               body: str = HTML, headers: dict[str, str] | None = None) -> None:
    sixgate.upstream.respond(  # type: ignore[union-attr]
        200, body, {"Content-Type": "text/html; charset=utf-8", **(headers or {})})
    sixgate.add_route("/page", {"gzip": conf or {}}, id="page")


def assert_plain(r: HttpResult, body: str | bytes) -> None:
    assert "Content-Encoding" not in r.headers
    assert r.body == (body.encode() if isinstance(body, str) else body)


def gunzip(r: HttpResult, streamed: bool = True) -> bytes:
    """The body of a gzipped response; a proxied one streams (chunked, no Content-Length), a
    generated one has the compressed length."""
    assert r.headers["Content-Encoding"] == "gzip"
    if streamed:
        assert "Content-Length" not in r.headers
        assert r.headers["Transfer-Encoding"] == "chunked"
    else:
        assert r.headers["Content-Length"] == str(len(r.body))
    assert r.body[:2] == b"\x1f\x8b"  # a gzip member
    return gzip.decompress(r.body)


def raw_get(port: int, path: str, version: str, headers: dict[str, str]) -> tuple[bytes, bytes]:
    """One request with an exact request line (http.client always says HTTP/1.1)."""
    lines = [f"GET {path} HTTP/{version}", f"Host: 127.0.0.1:{port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


# -- compressed ----------------------------------------------------------------------------------


def test_compressed_when_accepted_and_type_matches(sixgate: GatewayHarness) -> None:
    html_route(sixgate, headers={"ETag": '"abc"', "Accept-Ranges": "bytes"})
    r = sixgate.get("/page", headers=ACCEPT)
    assert r.status == 200
    assert gunzip(r) == HTML.encode()
    assert len(r.body) < len(HTML)
    assert r.headers["ETag"] == 'W/"abc"'  # weak, as nginx makes it
    assert "Accept-Ranges" not in r.headers
    assert "Vary" not in r.headers  # only with vary: true
    # the upstream got the client's Accept-Encoding unchanged
    sixgate.upstream.assert_received(headers={"Accept-Encoding": "gzip, deflate, br"})  # type: ignore[union-attr]


@pytest.mark.parametrize("accept", ["gzip", "GZIP", "br;q=1.0, gzip;q=0.5", "deflate,gzip"])
def test_accept_encoding_forms(sixgate: GatewayHarness, accept: str) -> None:
    html_route(sixgate)
    assert gunzip(sixgate.get("/page", headers={"Accept-Encoding": accept})) == HTML.encode()


def test_types_star_and_parameters(sixgate: GatewayHarness) -> None:
    body = '{"k": "' + "v" * 200 + '"}'
    sixgate.upstream.respond(200, body, {"Content-Type": "Application/JSON ; charset=utf-8"})  # type: ignore[union-attr]
    sixgate.add_route("/json", {"gzip": {"types": ["application/json"]}})
    sixgate.add_route("/any", {"gzip": {"types": "*"}})
    assert gunzip(sixgate.get("/json", headers=ACCEPT)) == body.encode()
    assert gunzip(sixgate.get("/any", headers=ACCEPT)) == body.encode()


@pytest.mark.parametrize(("level", "xfl"), [(1, 4), (9, 2)])
def test_comp_level(sixgate: GatewayHarness, level: int, xfl: int) -> None:
    html_route(sixgate, {"comp_level": level})
    r = sixgate.get("/page", headers=ACCEPT)
    assert gunzip(r) == HTML.encode()
    assert r.body[8] == xfl  # gzip header XFL: 2 = best compression, 4 = fastest


def test_streamed_upstream_body(sixgate: GatewayHarness, streaming: Upstream) -> None:
    # chunked upstream body (no Content-Length), written in 6 parts 20 ms apart
    sixgate.add_route("/stream", {"gzip": {"types": ["application/octet-stream"]}},
                      upstream={"type": "roundrobin", "nodes": {f"127.0.0.1:{streaming.port}": 1}})
    r = sixgate.get("/stream?chunks=6&size=5000&delay=0.02", headers=ACCEPT)
    assert r.status == 200
    expected = b"".join(str(i).encode() * 5000 for i in range(6))
    assert gunzip(r) == expected
    assert len(r.body) < 1000


def test_big_body(sixgate: GatewayHarness, streaming: Upstream) -> None:
    sixgate.add_route("/big", {"gzip": {"types": "*", "comp_level": 6}},
                      upstream={"type": "roundrobin", "nodes": {f"127.0.0.1:{streaming.port}": 1}})
    r = sixgate.get("/big?size=3000000", headers=ACCEPT)
    assert gunzip(r) == b"x" * 3000000


def test_generated_response(sixgate: GatewayHarness) -> None:
    body = "Fault Injection! " * 10
    sixgate.add_route("/fault", {
        "gzip": {"types": ["text/plain"]},
        "fault-injection": {"abort": {"http_status": 403, "body": body}},
    })
    r = sixgate.get("/fault", headers=ACCEPT)
    assert r.status == 403
    assert gunzip(r, streamed=False) == body.encode()
    sixgate.upstream.assert_not_received()  # type: ignore[union-attr]


# -- left alone ----------------------------------------------------------------------------------


def test_not_when_too_small(sixgate: GatewayHarness) -> None:
    html_route(sixgate, body="<p>short</p>")  # 12 bytes < min_length 20
    assert_plain(sixgate.get("/page", headers=ACCEPT), "<p>short</p>")
    html_route(sixgate, {"min_length": 500})
    assert_plain(sixgate.get("/page", headers=ACCEPT), HTML)
    html_route(sixgate, {"min_length": len(HTML)})  # the limit itself is enough
    assert gunzip(sixgate.get("/page", headers=ACCEPT)) == HTML.encode()


def test_not_for_other_types(sixgate: GatewayHarness) -> None:
    sixgate.upstream.respond(200, HTML, {"Content-Type": "text/plain"})  # type: ignore[union-attr]
    sixgate.add_route("/page", {"gzip": {}}, id="page")  # types: ["text/html"]
    assert_plain(sixgate.get("/page", headers=ACCEPT), HTML)
    sixgate.upstream.respond(200, HTML.encode(), {"Content-Type": ""})  # type: ignore[union-attr]
    sixgate.add_route("/page", {"gzip": {"types": "*"}}, id="page")
    assert_plain(sixgate.get("/page", headers=ACCEPT), HTML)  # no Content-Type: no gzip


def test_not_when_already_encoded(sixgate: GatewayHarness) -> None:
    payload = zlib.compress(HTML.encode())
    sixgate.upstream.respond(200, payload, {"Content-Type": "text/html",  # type: ignore[union-attr]
                                            "Content-Encoding": "deflate"})
    sixgate.add_route("/page", {"gzip": {}})
    r = sixgate.get("/page", headers=ACCEPT)
    assert r.headers.getall("Content-Encoding") == ["deflate"]
    assert r.body == payload


@pytest.mark.parametrize("headers", [
    {}, {"Accept-Encoding": "br, deflate"}, {"Accept-Encoding": "gzip;q=0"},
    {"Accept-Encoding": "gzip; q=0.000, br"}, {"Accept-Encoding": "x-gzip-not"},
    {"Accept-Encoding": "gzip", "Via": "1.1 proxy"},
])
def test_not_when_not_accepted(sixgate: GatewayHarness, headers: dict[str, str]) -> None:
    html_route(sixgate, {"vary": True})
    r = sixgate.get("/page", headers=headers)
    assert_plain(r, HTML)
    # vary is added for every response gzip could have compressed, as nginx's gzip_vary
    assert r.headers["Vary"] == "Accept-Encoding"


def test_vary(sixgate: GatewayHarness) -> None:
    html_route(sixgate, {"vary": True}, headers={"Vary": "Origin"})
    r = sixgate.get("/page", headers=ACCEPT)
    assert gunzip(r) == HTML.encode()
    assert r.headers.getall("Vary") == ["Origin", "Accept-Encoding"]
    html_route(sixgate, {"vary": False})
    assert "Vary" not in sixgate.get("/page", headers=ACCEPT).headers


def test_statuses_and_head(sixgate: GatewayHarness) -> None:
    sixgate.upstream.respond(404, HTML, {"Content-Type": "text/html"})  # type: ignore[union-attr]
    sixgate.add_route("/page", {"gzip": {}})
    r = sixgate.get("/page", headers=ACCEPT)
    assert r.status == 404 and gunzip(r) == HTML.encode()
    sixgate.upstream.respond(500, HTML, {"Content-Type": "text/html"})  # type: ignore[union-attr]
    r = sixgate.get("/page", headers=ACCEPT)
    assert r.status == 500
    assert_plain(r, HTML)
    sixgate.upstream.respond(200, HTML, {"Content-Type": "text/html"})  # type: ignore[union-attr]
    r = sixgate.request("HEAD", "/page", headers=ACCEPT)
    assert r.status == 200 and "Content-Encoding" not in r.headers and r.body == b""


def test_http_version(sixgate: GatewayHarness) -> None:
    html_route(sixgate)  # http_version 1.1
    head, body = raw_get(sixgate.port, "/page", "1.0", {"Accept-Encoding": "gzip"})
    assert b"Content-Encoding" not in head and body == HTML.encode()
    head, body = raw_get(sixgate.port, "/page", "1.1", {"Accept-Encoding": "gzip"})
    assert b"\r\nContent-Encoding: gzip" in head
    html_route(sixgate, {"http_version": 1.0})
    head, body = raw_get(sixgate.port, "/page", "1.0", {"Accept-Encoding": "gzip"})
    assert head.startswith(b"HTTP/1.1 200") and b"\r\nContent-Encoding: gzip" in head
    # HTTP/1.0 has no chunked encoding: the body runs to the end of the connection
    assert b"Transfer-Encoding" not in head
    assert gzip.decompress(body) == HTML.encode()


def test_later_plugin_dropping_the_encoding_turns_compression_off(
    sixgate: GatewayHarness,
) -> None:
    # echo (412) runs after gzip (995) and drops Content-Encoding as it changes the body
    sixgate.upstream.respond(200, HTML, {"Content-Type": "text/html"})  # type: ignore[union-attr]
    sixgate.add_route("/page", {"gzip": {}, "echo": {"before_body": "<!-- hi -->"}})
    r = sixgate.get("/page", headers=ACCEPT)
    assert_plain(r, "<!-- hi -->" + HTML)


def test_global_and_route_compress_once(sixgate: GatewayHarness) -> None:
    sixgate.add_global_rule({"gzip": {"types": "*"}})
    html_route(sixgate, {"comp_level": 9})
    r = sixgate.get("/page", headers=ACCEPT)
    assert gunzip(r) == HTML.encode()  # one gzip layer, not two


# -- schema --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("conf", "message"), [
    ({"comp_level": 10}, 'property "comp_level" validation failed: expected 10 to be at most 9'),
    ({"comp_level": 0}, 'property "comp_level" validation failed: expected 0 to be at least 1'),
    ({"min_length": 0}, 'property "min_length" validation failed: expected 0 to be at least 1'),
    ({"http_version": 2}, 'property "http_version" validation failed: matches none of the enum '
                          'values'),
    ({"types": "text/html"}, 'property "types" validation failed: object matches none of the '
                             'required'),
    ({"types": []}, 'property "types" validation failed: object matches none of the required'),
    ({"vary": "yes"}, 'property "vary" validation failed: wrong type: expected boolean, got '
                      'string'),
])
def test_schema_errors(conf: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigRejected) as err:
        run_phase(gzip_plugin, "header_filter", conf)
    assert str(err.value) == f"failed to check the configuration of plugin gzip err: {message}"


def test_defaults() -> None:
    from kernel.plugins.manager import PluginRegistry, prepare_conf

    info = PluginRegistry([gzip_plugin]).get("gzip")
    assert info is not None
    filled, err = prepare_conf(info, {})
    assert err is None and filled is not None
    assert {k: filled[k] for k in ("types", "min_length", "comp_level", "http_version",
                                   "buffers")} == {
        "types": ["text/html"], "min_length": 20, "comp_level": 1, "http_version": 1.1,
        "buffers": {"number": 32, "size": 4096}}
    assert "vary" not in filled


@pytest.mark.parametrize(("value", "ok"), [
    (None, False), ("", False), ("gzip", True), ("gzip;q=0", False), ("gzip;q=0.001", True),
    ("identity, gzip ;q=1", True), ("gzipx", False), ("gzip;q=abc", False),
])
def test_accepts_gzip(value: str | None, ok: bool) -> None:
    assert gzip_plugin.accepts_gzip(value) is ok
