"""The data plane's HTTP/1.1 server is strict: smuggling shapes, limits, slow clients."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from tests.support.gateway import GatewayProcess
from tests.support.upstream import Upstream


@pytest.fixture(scope="module")
def strict_gw(tmp_path_factory: pytest.TempPathFactory, shared_upstreams: Any) -> Any:
    a, _ = shared_upstreams
    g = GatewayProcess(tmp_path_factory.mktemp("strict"), {"nginx_config": {"http": {
        "client_header_timeout": "1s", "keepalive_timeout": "2s",
        "max_header_count": 20, "max_header_size": 1024, "max_headers_size": 4096,
        "max_request_line": 2048,
    }}})
    g.start({"routes": [{"id": 1, "uri": "/*", "upstream": {
        "type": "roundrobin", "nodes": {f"127.0.0.1:{a.port}": 1}}}]})
    yield g
    g.stop()


def status_of(raw: bytes) -> int:
    assert raw.startswith(b"HTTP/1.1 "), raw[:100]
    return int(raw[9:12])


def test_content_length_with_transfer_encoding_is_refused(strict_gw: GatewayProcess) -> None:
    raw = strict_gw.raw(
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    assert status_of(raw) == 400
    assert b"smuggled" not in raw and raw.count(b"HTTP/1.1") == 1


def test_duplicate_content_length_is_refused(strict_gw: GatewayProcess) -> None:
    raw = strict_gw.raw(
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"
    )
    assert status_of(raw) == 400


def test_unknown_transfer_encoding_is_refused(strict_gw: GatewayProcess) -> None:
    raw = strict_gw.raw(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n")
    assert status_of(raw) in (400, 501)


def test_obsolete_line_folding_and_bad_chars_are_refused(strict_gw: GatewayProcess) -> None:
    assert status_of(strict_gw.raw(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n  b\r\n\r\n")) == 400
    assert status_of(strict_gw.raw(b"GET / HTTP/1.1\r\nHost : a\r\n\r\n")) == 400
    assert status_of(strict_gw.raw(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n")) == 400


def test_missing_or_duplicate_host(strict_gw: GatewayProcess) -> None:
    assert status_of(strict_gw.raw(b"GET / HTTP/1.1\r\n\r\n")) == 400
    assert status_of(strict_gw.raw(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")) == 400


def test_header_limits(strict_gw: GatewayProcess) -> None:
    big = b"X-Big: " + b"a" * 2000 + b"\r\n"
    assert status_of(strict_gw.raw(b"GET / HTTP/1.1\r\nHost: a\r\n" + big + b"\r\n")) == 431
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(30))
    assert status_of(strict_gw.raw(b"GET / HTTP/1.1\r\nHost: a\r\n" + many + b"\r\n")) == 431
    total = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 900) for i in range(6))
    assert status_of(strict_gw.raw(b"GET / HTTP/1.1\r\nHost: a\r\n" + total + b"\r\n")) == 431


def test_request_line_limit(strict_gw: GatewayProcess) -> None:
    raw = strict_gw.raw(b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status_of(raw) == 414


def test_path_escaping_root_is_refused(strict_gw: GatewayProcess) -> None:
    assert status_of(strict_gw.raw(b"GET /../etc/passwd HTTP/1.1\r\nHost: a\r\n\r\n")) == 400


def test_slow_headers_are_cut_off(strict_gw: GatewayProcess) -> None:
    with socket.create_connection(("127.0.0.1", strict_gw.port), 5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n")
        started = time.monotonic()
        data = s.recv(1000)
        while data and not data.endswith(b"</html>\r\n"):
            more = s.recv(1000)
            if not more:
                break
            data += more
        elapsed = time.monotonic() - started
    assert status_of(data) == 408
    assert 0.8 < elapsed < 3.5


def test_slowloris_trickle_is_bounded(strict_gw: GatewayProcess) -> None:
    with socket.create_connection(("127.0.0.1", strict_gw.port), 5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n")
        started = time.monotonic()
        closed = False
        while time.monotonic() - started < 4:
            try:
                s.sendall(b"X: y\r\n")
            except OSError:
                closed = True
                break
            s.settimeout(0.3)
            try:
                if s.recv(1000) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
        assert closed or time.monotonic() - started < 4


def test_idle_keepalive_connection_is_closed(strict_gw: GatewayProcess) -> None:
    with socket.create_connection(("127.0.0.1", strict_gw.port), 6) as s:
        s.sendall(b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n")
        data = b""
        while not data.endswith(b"hello world\n"):
            data += s.recv(1000)
        started = time.monotonic()
        assert s.recv(1000) == b""
        assert 1.5 < time.monotonic() - started < 4.5


def test_pipelined_requests_answered_in_order(strict_gw: GatewayProcess, shared_upstreams: Any) -> None:
    a, _ = shared_upstreams
    requests = b"".join(
        b"GET /mysleep?seconds=%s HTTP/1.1\r\nHost: a\r\n\r\nGET /n%d HTTP/1.1\r\nHost: a\r\n\r\n"
        % (b"0.2" if i == 0 else b"0", i) for i in range(3)
    )
    with socket.create_connection(("127.0.0.1", strict_gw.port), 5) as s:
        s.sendall(requests + b"GET /last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    bodies = [part.split(b"\r\n\r\n", 1)[1] for part in data.split(b"HTTP/1.1 200 OK")[1:]]
    assert len(bodies) == 7
    assert bodies[1] == f"{a.port} /n0\n".encode()
    assert bodies[3] == f"{a.port} /n1\n".encode()
    assert bodies[6] == f"{a.port} /last\n".encode()


def test_client_disconnect_mid_response_is_quiet(strict_gw: GatewayProcess) -> None:
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", strict_gw.port), 5) as s:
            s.sendall(b"GET /big?size=20000000 HTTP/1.1\r\nHost: a\r\n\r\n")
            s.recv(1000)
        # and a disconnect while the upstream is still thinking
        with socket.create_connection(("127.0.0.1", strict_gw.port), 5) as s:
            s.sendall(b"GET /mysleep?seconds=0.3 HTTP/1.1\r\nHost: a\r\n\r\n")
    time.sleep(0.6)
    assert strict_gw.get("/hello").status == 200
    assert "Traceback" not in strict_gw.logs()


def test_http10_client(strict_gw: GatewayProcess) -> None:
    raw = strict_gw.raw(b"GET /stream?chunks=2&size=2 HTTP/1.0\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200")
    assert raw.endswith(b"\r\n\r\n0011")
    assert b"Transfer-Encoding" not in raw


