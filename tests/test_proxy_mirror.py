"""proxy-mirror (spec §7.7): schema messages; what a mirror receives (method, headers, body,
Host, path for each ``path``/``path_concat_mode``); sampling; a slow, dead or saturated mirror
never delaying or failing the client's request; timeouts from ``plugin_attr``; retries; https
mirrors -- through a real gateway (the SDK test kit) with a second recording upstream as the
mirror."""

from __future__ import annotations

import datetime
import http.client
import logging
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import builtin_plugins.proxy_mirror as proxy_mirror
from kernel.plugins.manager import PluginInfo, PluginRegistry, check_conf, prepare_conf
from plugin_sdk.testing import ConfigRejected, GatewayHarness, MockUpstream, make_context, run_phase
from tests.support.served import ServedApp
from tests.support.upstream import free_port

PLUGINS = ["proxy-mirror", "proxy-rewrite", "fault-injection"]
pytestmark = pytest.mark.sixgate(plugins=PLUGINS)

_HOST_PATTERN = r"^(http(s)?|grpc(s)?):\/\/([\da-zA-Z.-]+|\[[\da-fA-F:]+\])(:\d+)?$"


@pytest.fixture(scope="module")
def info() -> PluginInfo:
    found = PluginRegistry([proxy_mirror]).get("proxy-mirror")
    assert found is not None
    return found


@pytest.fixture
def mirror() -> Iterator[MockUpstream]:
    up = MockUpstream().start()
    yield up
    up.stop()


def _wait(check: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"condition not met within {timeout}s")


def _received(up: MockUpstream, count: int, timeout: float = 5.0) -> None:
    """Wait until ``up`` got ``count`` requests, then check it gets no more (briefly)."""
    _wait(lambda: len(up.requests) >= count, timeout)
    time.sleep(0.05)
    assert len(up.requests) == count, [r.raw_path for r in up.requests]


def _mirror_conf(up: MockUpstream, **conf: Any) -> dict[str, Any]:
    return {"proxy-mirror": {"host": f"http://127.0.0.1:{up.port}", **conf}}


# -- schema ------------------------------------------------------------------------------------


def _pattern_error(prop: str, pattern: str, value: str) -> str:
    return (f'property "{prop}" validation failed: failed to match pattern "{pattern}" with '
            f'"{value}"')


@pytest.mark.parametrize(("conf", "message"), [
    ({}, 'property "host" is required'),
    ({"path": "/a"}, 'property "host" is required'),
    ({"host": 1}, 'property "host" validation failed: wrong type: expected string, got number'),
    ({"host": "http://127.0.0.1:1999/"},
     _pattern_error("host", _HOST_PATTERN, "http://127.0.0.1:1999/")),
    ({"host": "http://a.com/mirror"}, _pattern_error("host", _HOST_PATTERN, "http://a.com/mirror")),
    ({"host": "127.0.0.1:1999"}, _pattern_error("host", _HOST_PATTERN, "127.0.0.1:1999")),
    ({"host": "ftp://a.com"}, _pattern_error("host", _HOST_PATTERN, "ftp://a.com")),
    ({"host": "http://a.com", "path": "a"}, _pattern_error("path", "^/[^?&]+$", "a")),
    ({"host": "http://a.com", "path": "/"}, _pattern_error("path", "^/[^?&]+$", "/")),
    ({"host": "http://a.com", "path": "/a?b=1"}, _pattern_error("path", "^/[^?&]+$", "/a?b=1")),
    ({"host": "http://a.com", "path": "/a&b"}, _pattern_error("path", "^/[^?&]+$", "/a&b")),
    ({"host": "http://a.com", "path_concat_mode": "append"},
     'property "path_concat_mode" validation failed: matches none of the enum values'),
    ({"host": "http://a.com", "sample_ratio": 0},
     'property "sample_ratio" validation failed: expected 0 to be at least 1e-05'),
    ({"host": "http://a.com", "sample_ratio": 1.5},
     'property "sample_ratio" validation failed: expected 1.5 to be at most 1'),
    ({"host": "http://a.com", "sample_ratio": "0.5"},
     'property "sample_ratio" validation failed: wrong type: expected number, got string'),
])
def test_schema_errors(info: PluginInfo, conf: dict[str, Any], message: str) -> None:
    assert check_conf(info, conf) == message


def test_valid_confs_and_defaults(info: PluginInfo) -> None:
    for conf in ({"host": "http://127.0.0.1:1999"}, {"host": "https://mirror.example.com"},
                 {"host": "http://[::1]:8080"}, {"host": "grpcs://a.com:50051"},
                 {"host": "http://a.com", "path": "/a/b", "path_concat_mode": "prefix",
                  "sample_ratio": 0.00001}):
        assert check_conf(info, conf) is None, conf
    assert prepare_conf(info, {"host": "http://a.com"}) == (
        {"host": "http://a.com", "path_concat_mode": "replace", "sample_ratio": 1}, None)


def test_gateway_refuses_bad_conf(sixgate: GatewayHarness) -> None:
    with pytest.raises(ConfigRejected, match="failed to match pattern"):
        sixgate.add_route("/hello", {"proxy-mirror": {"host": "http://a.com/path"}})


# -- what the mirror receives ----------------------------------------------------------------------


def test_copy_of_the_request(sixgate: GatewayHarness, mirror: MockUpstream) -> None:
    sixgate.add_route("/hello", _mirror_conf(mirror))
    r = sixgate.post("/hello?a=1&b=x%20y", body=b'{"k": "v"}',
                     headers={"Content-Type": "application/json", "X-Custom": "c1",
                              "Cookie": "s=1"})
    assert r.status == 200
    assert sixgate.upstream is not None
    up = sixgate.upstream.last
    _received(mirror, 1)
    got = mirror.last
    assert (got.method, got.raw_path, got.body) == ("POST", "/hello?a=1&b=x%20y", b'{"k": "v"}')
    assert got.headers["Host"] == up.headers["Host"]
    for name, value in (("Content-Type", "application/json"), ("X-Custom", "c1"),
                        ("Cookie", "s=1"), ("Content-Length", "10")):
        assert got.headers.get(name) == value, name
    # the proxy headers the gateway adds upstream are not added to the copy
    assert got.headers.get("X-Real-IP") is None and got.headers.get("X-Forwarded-For") is None
    # the upstream still gets the body
    assert up.body == b'{"k": "v"}' and up.headers["Content-Length"] == "10"


@pytest.mark.parametrize(("conf", "request_path", "mirrored"), [
    ({}, "/hello?a=1", "/hello?a=1"),
    ({}, "/hello", "/hello"),
    ({"path": "/mirror"}, "/hello?a=1&b=2", "/mirror?a=1&b=2"),
    ({"path": "/mirror", "path_concat_mode": "replace"}, "/hello", "/mirror"),
    ({"path": "/pre/fix", "path_concat_mode": "prefix"}, "/hello?a=1", "/pre/fix/hello?a=1"),
    ({"path": "/pre", "path_concat_mode": "prefix"}, "/hello", "/pre/hello"),
    # $uri is normalized and decoded, then encoded again
    ({}, "/hello/./x/../a%20b", "/hello/a%20b"),
    ({"path": "/pre", "path_concat_mode": "prefix"}, "/hello/%7Ex", "/pre/hello/~x"),
])
def test_mirror_paths(sixgate: GatewayHarness, mirror: MockUpstream, conf: dict[str, Any],
                      request_path: str, mirrored: str) -> None:
    sixgate.add_route("/hello*", _mirror_conf(mirror, **conf))
    assert sixgate.get(request_path).status == 200
    _received(mirror, 1)
    assert mirror.last.raw_path == mirrored
    assert mirror.last.method == "GET" and mirror.last.body == b""


def test_host_and_uri_with_proxy_rewrite(sixgate: GatewayHarness, mirror: MockUpstream,
                                         sixgate_upstream: MockUpstream) -> None:
    """``Host`` is the one sent upstream (here set by proxy-rewrite); the path is fixed in
    proxy-mirror's rewrite (priority 1010), before proxy-rewrite (1008) changes it, as in
    APISIX. Later plugins see ``$upstream_mirror_uri``."""
    host = f"http://127.0.0.1:{mirror.port}"
    sixgate.add_route("/hello", {
        **_mirror_conf(mirror),
        "proxy-rewrite": {"host": "backend.example", "uri": "/changed",
                          "headers": {"set": {"X-Mirror": "$upstream_mirror_uri"}}},
    })
    assert sixgate.get("/hello?q=1").status == 200
    up = sixgate_upstream.last
    assert (up.raw_path, up.headers["Host"]) == ("/changed?q=1", "backend.example")
    assert up.headers["X-Mirror"] == f"{host}/hello?q=1"
    _received(mirror, 1)
    assert (mirror.last.raw_path, mirror.last.headers["Host"]) == ("/hello?q=1", "backend.example")


@pytest.mark.parametrize(("pass_host", "expected"), [("node", None), ("rewrite", "up.example")])
def test_host_follows_pass_host(sixgate: GatewayHarness, mirror: MockUpstream,
                                sixgate_upstream: MockUpstream, pass_host: str,
                                expected: str | None) -> None:
    upstream: dict[str, Any] = {**sixgate_upstream.node, "pass_host": pass_host}
    if pass_host == "rewrite":
        upstream["upstream_host"] = expected
    sixgate.add_route("/hello", _mirror_conf(mirror), upstream=upstream)
    assert sixgate.get("/hello", headers={"Host": "client.example"}).status == 200
    sent = sixgate_upstream.last.headers["Host"]
    assert sent == (expected or f"127.0.0.1:{sixgate_upstream.port}")
    _received(mirror, 1)
    assert mirror.last.headers["Host"] == sent


def test_chunked_request_body(sixgate: GatewayHarness, mirror: MockUpstream,
                              sixgate_upstream: MockUpstream) -> None:
    sixgate.add_route("/upload", _mirror_conf(mirror))
    chunks = [b"a" * 70000, b"b" * 5, b"c" * 1000]
    conn = http.client.HTTPConnection("127.0.0.1", sixgate.port, timeout=10)
    try:
        conn.request("PUT", "/upload", body=iter(chunks), encode_chunked=True,
                     headers={"Transfer-Encoding": "chunked", "X-Upload": "1"})
        assert conn.getresponse().status == 200
    finally:
        conn.close()
    body = b"".join(chunks)
    assert sixgate_upstream.last.body == body
    _received(mirror, 1)
    got = mirror.last
    assert (got.method, got.body, got.headers["X-Upload"]) == ("PUT", body, "1")
    assert got.headers.get("Transfer-Encoding") is None  # framed by the mirror's client


def test_bodyless_request_stays_bodyless(sixgate: GatewayHarness, mirror: MockUpstream,
                                         sixgate_upstream: MockUpstream) -> None:
    """Only requests with a body are buffered: a GET reaches the upstream and the mirror
    without a ``Content-Length``."""
    sixgate.add_route("/hello", _mirror_conf(mirror))
    assert sixgate.get("/hello").status == 200
    assert sixgate_upstream.last.headers.get("Content-Length") is None
    _received(mirror, 1)
    assert mirror.last.headers.get("Content-Length") is None


def test_mirror_response_is_ignored(sixgate: GatewayHarness, mirror: MockUpstream) -> None:
    mirror.respond(503, "mirror down", {"X-From-Mirror": "1"})
    sixgate.add_route("/hello", _mirror_conf(mirror))
    r = sixgate.get("/hello")
    assert r.status == 200 and r.headers.get("X-From-Mirror") is None
    assert r.json()["path"] == "/hello"  # the upstream's answer
    _received(mirror, 1)


def test_request_ended_before_proxying_is_not_mirrored(sixgate: GatewayHarness,
                                                       mirror: MockUpstream) -> None:
    sixgate.add_route("/hello", {**_mirror_conf(mirror),
                                 "fault-injection": {"abort": {"http_status": 403}}})
    assert sixgate.get("/hello").status == 403
    time.sleep(0.1)
    mirror.assert_not_received()


# -- sampling ------------------------------------------------------------------------------------


def test_sample_ratio_one_mirrors_every_request(sixgate: GatewayHarness,
                                                 mirror: MockUpstream) -> None:
    sixgate.add_route("/hello", _mirror_conf(mirror, sample_ratio=1))
    for i in range(30):
        assert sixgate.get(f"/hello?i={i}").status == 200
    _received(mirror, 30)
    assert sorted(int(r.query[2:]) for r in mirror.requests) == list(range(30))


def test_tiny_sample_ratio_mirrors_almost_nothing(sixgate: GatewayHarness,
                                                   mirror: MockUpstream) -> None:
    sixgate.add_route("/hello", _mirror_conf(mirror, sample_ratio=0.00001))
    for _ in range(100):
        assert sixgate.get("/hello").status == 200
    assert len(sixgate.upstream.requests) == 100  # type: ignore[union-attr]
    time.sleep(0.1)
    assert len(mirror.requests) <= 1  # P(2 or more of 100) ~ 5e-7


def test_half_sample_ratio(sixgate: GatewayHarness, mirror: MockUpstream) -> None:
    sixgate.add_route("/hello", _mirror_conf(mirror, sample_ratio=0.5))
    for _ in range(120):
        assert sixgate.get("/hello").status == 200
    time.sleep(0.2)
    assert 25 <= len(mirror.requests) <= 95  # mean 60, sd ~5.5


# -- the client is never held up ----------------------------------------------------------------


def _timed_get(sixgate: GatewayHarness, path: str) -> float:
    start = time.monotonic()
    r = sixgate.get(path)
    assert r.status == 200 and r.json()["path"] == path.split("?")[0]
    return time.monotonic() - start


def test_slow_mirror_does_not_slow_the_client(sixgate: GatewayHarness,
                                              mirror: MockUpstream) -> None:
    mirror.respond(200, "slow", delay=1.0)
    sixgate.add_route("/hello", _mirror_conf(mirror))
    start = time.monotonic()
    latencies = [_timed_get(sixgate, "/hello") for _ in range(5)]
    assert max(latencies) < 0.5, latencies  # each copy takes 1 s
    assert time.monotonic() - start < 2.5
    _received(mirror, 5)  # every copy arrived (the mirror records before it sleeps)


def test_dead_mirror_does_not_fail_the_client(sixgate: GatewayHarness) -> None:
    port = free_port()
    sixgate.add_route("/hello", {"proxy-mirror": {"host": f"http://127.0.0.1:{port}"}})
    for _ in range(3):
        assert _timed_get(sixgate, "/hello") < 0.5
    _wait(lambda: sixgate.logs().count(f"mirror request to http://127.0.0.1:{port}/hello "
                                       "failed") == 3)


def test_unresolvable_mirror_does_not_fail_the_client(sixgate: GatewayHarness) -> None:
    sixgate.add_route("/hello", {"proxy-mirror": {"host": "http://mirror.invalid:1999"}})
    assert _timed_get(sixgate, "/hello") < 0.5
    _wait(lambda: "mirror request to http://mirror.invalid:1999/hello failed" in sixgate.logs())


@pytest.mark.sixgate(plugins=PLUGINS, plugin_attr={
    "proxy-mirror": {"timeout": {"connect": "1s", "send": "1s", "read": "300ms"}}})
def test_timeouts_from_plugin_attr(sixgate: GatewayHarness, mirror: MockUpstream) -> None:
    mirror.respond(200, "slow", delay=1.0)
    sixgate.add_route("/hello", _mirror_conf(mirror))
    start = time.monotonic()
    assert _timed_get(sixgate, "/hello") < 0.5
    # the mirror answers after 1 s: with the 60 s default the copy would succeed then
    _wait(lambda: "mirror request to" in sixgate.logs(), timeout=3.0)
    assert time.monotonic() - start < 1.0
    assert (f"mirror request to http://127.0.0.1:{mirror.port}/hello failed: Timeout on "
            "reading data from socket") in sixgate.logs()
    assert proxy_mirror.stats()["inflight"] == 0


@pytest.mark.sixgate(plugins=PLUGINS, plugin_attr={"proxy-mirror": {"max_inflight": 2}})
def test_saturated_mirror_drops_copies(sixgate: GatewayHarness, mirror: MockUpstream) -> None:
    mirror.respond(200, "slow", delay=1.0)
    sixgate.add_route("/hello", _mirror_conf(mirror))
    logging.getLogger("sixgate.plugin.proxy-mirror").setLevel(logging.DEBUG)
    try:
        dropped = proxy_mirror.stats()["dropped"]
        latencies = [_timed_get(sixgate, f"/hello?i={i}") for i in range(6)]
    finally:
        logging.getLogger("sixgate.plugin.proxy-mirror").setLevel(logging.NOTSET)
    assert max(latencies) < 0.5, latencies
    _received(mirror, 2)
    assert [r.query for r in mirror.requests] == ["i=0", "i=1"]
    assert proxy_mirror.stats()["dropped"] - dropped == 4
    assert sixgate.logs().count("dropped: 2 mirror requests in flight") == 4
    # once the slow copies are answered, new ones go out again
    _wait(lambda: proxy_mirror.stats()["inflight"] == 0, timeout=3.0)
    mirror.respond(200, "fast")
    assert _timed_get(sixgate, "/hello?i=6") < 0.5
    _received(mirror, 3)


def test_retries_mirror_once(sixgate: GatewayHarness, mirror: MockUpstream,
                             sixgate_upstream: MockUpstream) -> None:
    """before_proxy runs again for a retry; the copy is sent once per request."""
    nodes = {f"127.0.0.1:{free_port()}": 1, f"127.0.0.1:{sixgate_upstream.port}": 1}
    sixgate.add_route("/hello", _mirror_conf(mirror),
                      upstream={"type": "roundrobin", "nodes": nodes, "retries": 1})
    for _ in range(6):
        assert sixgate.get("/hello").status == 200
    assert "retrying" in sixgate.logs()
    _received(mirror, 6)


def test_grpc_host_is_not_mirrored(sixgate: GatewayHarness, mirror: MockUpstream) -> None:
    sixgate.add_route("/hello", {"proxy-mirror": {"host": f"grpc://127.0.0.1:{mirror.port}"}})
    for _ in range(3):
        assert sixgate.get("/hello").status == 200
    time.sleep(0.1)
    mirror.assert_not_received()
    assert sixgate.logs().count("gRPC mirrors are not supported") == 1


# -- https mirror ----------------------------------------------------------------------------------


class _TlsMirror(ServedApp):
    """A recording HTTPS server with a self-signed certificate."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.requests: list[tuple[str, str, str | None, bytes]] = []
        self.ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ssl_context.load_cert_chain(cert, key)

    async def _handle(self, request: Any) -> Any:
        from aiohttp import web

        body = await request.read()
        self.requests.append((request.method, request.raw_path, request.headers.get("Host"),
                              body))
        return web.Response(text="ok")

    def routes(self, app: Any) -> None:
        app.router.add_route("*", "/{tail:.*}", self._handle)


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mirror.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "mirror.crt", tmp_path / "mirror.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_https_mirror(sixgate: GatewayHarness, tmp_path: Path) -> None:
    pytest.importorskip("cryptography")
    tls = _TlsMirror(*_self_signed(tmp_path)).start()
    try:
        sixgate.add_route("/hello", {"proxy-mirror": {"host": f"https://127.0.0.1:{tls.port}",
                                                      "path": "/m"}})
        assert sixgate.post("/hello?x=1", body="over tls").status == 200
        _wait(lambda: tls.requests)
        method, path, host, body = tls.requests[0]
        assert (method, path, body) == ("POST", "/m?x=1", b"over tls")
        assert host == f"127.0.0.1:{sixgate.port}"
    finally:
        tls.stop()


# -- units -----------------------------------------------------------------------------------------


def test_rewrite_on_a_context() -> None:
    ctx = make_context("GET", "/a%20b?x=1")
    conf = {"host": "http://m.example:81", "path": "/p", "path_concat_mode": "prefix"}
    assert run_phase(proxy_mirror, "rewrite", conf, ctx) is None
    assert ctx.var["upstream_mirror_uri"] == "http://m.example:81/p/a%20b?x=1"
    assert ctx.var["upstream_mirror_host"] == "http://m.example:81"
    assert ctx.plugin_data["url"] == "http://m.example:81/p/a%20b?x=1"
    # a target set by a plugin that ran earlier is used as it is
    ctx = make_context("GET", "/a?x=1")
    ctx.upstream.uri = "/earlier?y=2"
    run_phase(proxy_mirror, "rewrite", {"host": "https://[::1]:8443"}, ctx)
    assert ctx.var["upstream_mirror_uri"] == "https://[::1]:8443/earlier?y=2"


@pytest.mark.parametrize(("value", "seconds"), [
    (60, 60.0), (0.5, 0.5), ("60s", 60.0), ("500ms", 0.5), ("1m30s", 90.0), ("2", 2.0),
    (" 1h ", 3600.0),
])
def test_parse_duration(value: Any, seconds: float) -> None:
    assert proxy_mirror.parse_duration(value) == seconds


@pytest.mark.parametrize("attrs", [
    {"timeout": {"read": "soon"}}, {"timeout": {"connect": -1}}, {"timeout": "60s"},
    {"timeout": {"send": True}}, {"max_inflight": -1}, {"max_inflight": "8"},
])
def test_bad_plugin_attr_is_refused(attrs: dict[str, Any]) -> None:
    try:
        with pytest.raises(ValueError):
            proxy_mirror.init(attrs)
    finally:
        proxy_mirror.destroy()


@pytest.mark.sixgate(plugins=PLUGINS,
                     plugin_attr={"proxy-mirror": {"timeout": {"read": "never"}}})
def test_gateway_reports_bad_plugin_attr(sixgate: GatewayHarness) -> None:
    assert "failed to init plugin [proxy-mirror]: ValueError: invalid duration: 'never'" in (
        sixgate.logs() + "\n".join(sixgate.plugin_status().get("errors", [])))
