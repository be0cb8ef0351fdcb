"""file-logger through a real in-process gateway (spec §7.21, §9.2, §9.3, §11 case 57)."""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import builtin_plugins.file_logger as file_logger
from plugin_sdk.testing import ConfigRejected, GatewayHarness
from tests.support.served import ServedApp

pytestmark = pytest.mark.sixgate(plugins=["file-logger", "proxy-rewrite"])

REPO = Path(__file__).resolve().parents[1]


def read_entries(path: Path, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The JSON lines of ``path`` once it holds at least ``count`` of them (the log phase
    runs after the response is sent, and the writer thread writes a moment later)."""
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while True:
        file_logger.flush()
        if path.exists():
            lines = path.read_text().splitlines()
            if len(lines) >= count:
                return [json.loads(line) for line in lines]
        if time.monotonic() > deadline:
            raise AssertionError(f"{path}: {len(lines)} line(s), expected {count}")
        time.sleep(0.01)


def settle() -> None:
    """Let log phases of answered requests run and their lines reach the disk."""
    time.sleep(0.1)
    file_logger.flush()


# -- the entry -----------------------------------------------------------------------------------


def test_default_entry_through_the_gateway(sixgate: GatewayHarness, tmp_path: Path) -> None:
    log = tmp_path / "file.log"
    upstream = sixgate.upstream
    assert upstream is not None
    upstream.respond(200, "hello world\n", {"Content-Type": "text/plain"}, delay=0.1)
    rid = sixgate.add_route("/hello", {"file-logger": {"path": str(log)}}, id="1")
    r = sixgate.post("/hello?log_body=no&a=1&a=2&flag", body="hello body",
                     headers={"Content-Type": "text/plain", "User-Agent": "t/1",
                              "X-Multi": "b"})
    assert r.status == 200 and r.text == "hello world\n"
    [entry] = read_entries(log, 1)
    req, resp = entry["request"], entry["response"]
    assert req["url"] == f"http://127.0.0.1:{sixgate.port}/hello?log_body=no&a=1&a=2&flag"
    assert req["uri"] == "/hello?log_body=no&a=1&a=2&flag"
    assert req["method"] == "POST"
    assert req["headers"]["host"] == f"127.0.0.1:{sixgate.port}"
    assert req["headers"]["user-agent"] == "t/1" and req["headers"]["x-multi"] == "b"
    assert req["headers"]["content-length"] == "10"
    assert req["querystring"] == {"log_body": "no", "a": ["1", "2"], "flag": True}
    assert isinstance(req["size"], int) and req["size"] > len("hello body")
    assert "body" not in req
    assert resp["status"] == 200
    assert resp["headers"]["content-type"] == "text/plain"
    assert isinstance(resp["size"], int) and resp["size"] > len("hello world\n")
    assert "body" not in resp
    assert entry["server"]["hostname"] == socket.gethostname()
    assert entry["server"]["version"]
    assert entry["upstream"] == f"127.0.0.1:{upstream.port}"
    assert entry["route_id"] == rid == "1"
    assert entry["service_id"] == ""
    assert entry["client_ip"] == "127.0.0.1"
    assert "consumer" not in entry
    now = time.time() * 1000
    assert now - 10_000 < entry["start_time"] <= now
    # the upstream took 100 ms: it shows in latency and upstream_latency
    assert entry["latency"] >= 100
    # ($upstream_response_time has millisecond resolution: it may round above latency)
    assert 80 <= entry["upstream_latency"] <= entry["latency"] + 1
    assert entry["apisix_latency"] == pytest.approx(
        max(entry["latency"] - entry["upstream_latency"], 0), abs=0.01)


def test_service_id_and_unmatched_requests(sixgate: GatewayHarness, tmp_path: Path) -> None:
    log = tmp_path / "svc.log"
    upstream = sixgate.upstream
    assert upstream is not None
    sixgate.apply({
        "services": [{"id": "s1", "upstream": upstream.node}],
        "routes": [{"id": "r1", "uri": "/svc", "service_id": "s1",
                    "plugins": {"file-logger": {"path": str(log)}}}],
        "global_rules": [{"id": "g1", "plugins": {"file-logger": {"path": str(log)}}}],
    })
    assert sixgate.get("/svc").status == 200
    entries = read_entries(log, 2)  # the global rule and the route both log
    assert [(e["route_id"], e["service_id"]) for e in entries] == [("r1", "s1")] * 2
    assert sixgate.get("/nowhere").status == 404
    entry = read_entries(log, 3)[2]
    assert "route_id" not in entry and entry["service_id"] == "127.0.0.1"
    assert entry["response"]["status"] == 404 and "upstream" not in entry


def test_log_format_from_the_route(sixgate: GatewayHarness, tmp_path: Path) -> None:
    log = tmp_path / "fmt.log"
    fmt = {"host": "$host", "client_ip": "$remote_addr", "literal": "text",
           "joined": "$host:$server_port", "unset": "$http_x_none",
           "nested": {"method": "$request_method", "status": "$status"}}
    sixgate.add_route("/hello", {"file-logger": {"path": str(log), "log_format": fmt}}, id="2")
    sixgate.get("/hello", headers={"Host": "Example.COM"})
    [entry] = read_entries(log, 1)
    assert entry == {"host": "example.com", "client_ip": "127.0.0.1", "literal": "text",
                     "nested": {"method": "GET", "status": 200}, "route_id": "2"}


def test_log_format_from_plugin_metadata(sixgate: GatewayHarness, tmp_path: Path) -> None:
    log = tmp_path / "meta.log"
    sixgate.set_plugin_metadata("file-logger", {"log_format": {
        "host": "$host", "@timestamp": "$time_iso8601", "client_ip": "$remote_addr"}})
    sixgate.add_route("/hello", {"file-logger": {"path": str(log)}}, id="1")
    sixgate.add_route("/own", {"file-logger": {"path": str(log),
                                               "log_format": {"mine": "$uri"}}}, id="2")
    sixgate.get("/hello")
    sixgate.get("/own")
    first, second = read_entries(log, 2)
    assert set(first) == {"host", "@timestamp", "client_ip", "route_id"}
    assert first["host"] == "127.0.0.1" and first["route_id"] == "1"
    assert first["@timestamp"][:4].isdigit() and "T" in first["@timestamp"]
    assert second == {"mine": "/own", "route_id": "2"}  # the conf's format wins
    # metadata changes apply without touching the route
    sixgate.set_plugin_metadata("file-logger", None)
    sixgate.get("/hello")
    assert "request" in read_entries(log, 3)[2]


def test_path_and_extra_from_metadata(sixgate: GatewayHarness, tmp_path: Path) -> None:
    log = tmp_path / "extra.log"
    sixgate.set_plugin_metadata("file-logger", {"log_format_extra": {"tenant": "$arg_t"}})
    sixgate.add_route("/hello", {"file-logger": {"path": str(log)}})
    sixgate.get("/hello?t=acme")
    [entry] = read_entries(log, 1)
    assert entry["tenant"] == "acme" and "request" in entry


def test_a_route_without_path_uses_the_metadata_path(sixgate: GatewayHarness,
                                                    tmp_path: Path) -> None:
    log = tmp_path / "from-metadata.log"
    with pytest.raises(ConfigRejected, match="is not set in either the plugin conf"):
        sixgate.add_route("/hello", {"file-logger": {}})
    sixgate.set_plugin_metadata("file-logger", {"path": str(log)})
    sixgate.add_route("/hello", {"file-logger": {}})
    sixgate.get("/hello?via=metadata")
    [entry] = read_entries(log, 1)
    assert entry["request"]["uri"] == "/hello?via=metadata"


def test_match_decides_what_is_logged(sixgate: GatewayHarness, tmp_path: Path) -> None:
    log = tmp_path / "match.log"
    sixgate.add_route("/hello", {"file-logger": {
        "path": str(log), "log_format": {"name": "$arg_name"},
        "match": [[["arg_name", "==", "jack"]], [["arg_name", "==", "rose"],
                                                  ["status", "==", 200]]]}})
    for who in ("tom", "jack", "bob", "rose"):
        assert sixgate.get(f"/hello?name={who}").status == 200
    entries = read_entries(log, 2)
    settle()
    entries = read_entries(log, 2)
    assert [e["name"] for e in entries] == ["jack", "rose"]


def test_request_and_response_bodies(sixgate: GatewayHarness, tmp_path: Path) -> None:
    log = tmp_path / "body.log"
    upstream = sixgate.upstream
    assert upstream is not None
    big = b"0123456789" * 20000  # 200 kB, streamed in several chunks
    upstream.respond(200, big, {"Content-Type": "text/plain"})
    sixgate.add_route("/hello", {"file-logger": {
        "path": str(log), "include_req_body": True, "max_req_body_bytes": 6,
        "include_resp_body": True, "max_resp_body_bytes": 15,
        "include_resp_body_expr": [["arg_resp", "==", "yes"]]}})
    r = sixgate.post("/hello?resp=yes", body="request payload")
    assert r.status == 200 and r.body == big  # the client gets everything
    upstream.assert_received(body="request payload")  # and so does the upstream
    r = sixgate.post("/hello?resp=no", body="other")
    assert r.body == big
    first, second = read_entries(log, 2)
    assert first["request"]["body"] == "reques"
    assert first["response"]["body"] == "012345678901234"
    assert second["request"]["body"] == "other"
    assert "body" not in second["response"]


def test_include_req_body_expr(sixgate: GatewayHarness, tmp_path: Path) -> None:
    log = tmp_path / "req.log"
    sixgate.add_route("/hello", {"file-logger": {
        "path": str(log), "include_req_body": True,
        "include_req_body_expr": [["arg_log_body", "==", "yes"]]}})
    sixgate.post("/hello?log_body=no", body="not logged")
    sixgate.post("/hello?log_body=yes", body="logged")
    first, second = read_entries(log, 2)
    assert "body" not in first["request"]
    assert second["request"]["body"] == "logged"


# -- FAQ: compressed upstream bodies --------------------------------------------------------------


class GzipUpstream(ServedApp):
    """An upstream that gzips ``hello world`` when the request accepts gzip."""

    def __init__(self) -> None:
        self.accept_encodings: list[str | None] = []

    async def _hello(self, request: Any) -> Any:
        from aiohttp import web

        accept = request.headers.get("Accept-Encoding")
        self.accept_encodings.append(accept)
        body = b"hello world\n"
        headers = {"Content-Type": "text/plain"}
        if accept and "gzip" in accept:
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, headers=headers)

    def routes(self, app: Any) -> None:
        app.router.add_get("/hello", self._hello)


@pytest.fixture
def gzip_upstream() -> Iterator[GzipUpstream]:
    up = GzipUpstream().start()
    yield up
    up.stop()


def test_accept_encoding_identity_keeps_logged_bodies_readable(
    sixgate: GatewayHarness, tmp_path: Path, gzip_upstream: GzipUpstream
) -> None:
    log = tmp_path / "gz.log"
    node = {"type": "roundrobin", "nodes": {f"127.0.0.1:{gzip_upstream.port}": 1}}
    logger = {"path": str(log), "include_resp_body": True}
    sixgate.add_route("/hello", {"file-logger": logger}, upstream=node, id="plain",
                      hosts=["gz.test"])
    sixgate.add_route("/hello", {
        "file-logger": logger,
        "proxy-rewrite": {"headers": {"set": {"accept-encoding": "identity"}}},
    }, upstream=node, id="identity", hosts=["id.test"])

    r = sixgate.get("/hello", headers={"Host": "gz.test", "Accept-Encoding": "gzip"})
    assert r.headers.get("Content-Encoding") == "gzip"
    assert gzip.decompress(r.body) == b"hello world\n"
    r = sixgate.get("/hello", headers={"Host": "id.test", "Accept-Encoding": "gzip"})
    assert r.headers.get("Content-Encoding") is None and r.body == b"hello world\n"
    assert gzip_upstream.accept_encodings == ["gzip", "identity"]

    compressed, plain = read_entries(log, 2)
    assert compressed["route_id"] == "plain" and plain["route_id"] == "identity"
    assert "hello world" not in compressed["response"]["body"]  # gzip bytes, unreadable
    assert plain["response"]["body"] == "hello world\n"


# -- the file --------------------------------------------------------------------------------


def test_rotated_file_is_reopened(
    sixgate: GatewayHarness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(file_logger, "REOPEN_CHECK_INTERVAL", 0.05)
    log = tmp_path / "rotate.log"
    sixgate.add_route("/hello", {"file-logger": {"path": str(log),
                                                 "log_format": {"n": "$arg_n"}}})
    sixgate.get("/hello?n=0")
    read_entries(log, 1)
    rotated = tmp_path / "rotate.log.1"
    log.rename(rotated)  # logrotate: move away (the next lines must create a new file)
    n = 1
    deadline = time.monotonic() + 5
    while not log.exists():
        assert time.monotonic() < deadline, "the log file was not recreated"
        sixgate.get(f"/hello?n={n}")
        n += 1
        time.sleep(0.02)
        file_logger.flush()
    sixgate.get(f"/hello?n={n}")
    settle()
    old = [json.loads(line) for line in rotated.read_text().splitlines()]
    new = [json.loads(line) for line in log.read_text().splitlines()]
    assert old[0]["n"] == "0"
    assert new[-1]["n"] == str(n)
    assert [int(e["n"]) for e in old + new] == list(range(n + 1))  # nothing lost or doubled
    # and once more after a delete (logrotate's copytruncate-less "remove")
    log.unlink()
    deadline = time.monotonic() + 5
    while not log.exists():
        assert time.monotonic() < deadline
        sixgate.get("/hello?n=x")
        time.sleep(0.02)
        file_logger.flush()


def test_concurrent_requests_write_whole_lines(sixgate: GatewayHarness, tmp_path: Path) -> None:
    log = tmp_path / "busy.log"
    sixgate.add_route("/hello", {"file-logger": {"path": str(log), "include_req_body": True}})
    sixgate.add_route("/other", {"file-logger": {"path": str(log)}})  # same file, 2nd route

    def call(i: int) -> int:
        path = "/hello" if i % 2 else "/other"
        return sixgate.post(f"{path}?i={i}", body=f"{i:04d}" * 2000).status

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(call, range(60))) == {200}
    entries = read_entries(log, 60)
    settle()
    entries = read_entries(log, 60)
    assert len(entries) == 60
    assert sorted(int(e["request"]["querystring"]["i"]) for e in entries) == list(range(60))
    for e in entries:
        i = int(e["request"]["querystring"]["i"])
        if i % 2:
            assert e["request"]["body"] == f"{i:04d}" * 2000
        else:
            assert "body" not in e["request"]
    # one writer (one descriptor) serves both routes
    writers, _ = file_logger._registry()
    assert str(log) in writers


_CHILD = """
import sys, json, time
from builtin_plugins.file_logger import _Writer
path, tag = sys.argv[1], sys.argv[2]
w = _Writer(path, 0.01, 1 << 30)
for i in range(300):
    w.write(json.dumps({"tag": tag, "i": i, "pad": tag * (20000 + i)}).encode() + b"\\n")
w.close(30)
"""


def test_worker_processes_never_interleave_lines(tmp_path: Path) -> None:
    log = tmp_path / "procs.log"
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, str(log), tag], cwd=REPO)
             for tag in ("a", "b", "c")]
    for p in procs:
        assert p.wait(60) == 0
    lines = log.read_bytes().split(b"\n")
    assert lines[-1] == b""
    seen: dict[str, list[int]] = {"a": [], "b": [], "c": []}
    for line in lines[:-1]:
        entry = json.loads(line)  # a torn or interleaved line would not parse
        assert entry["pad"] == entry["tag"] * (20000 + entry["i"])
        seen[entry["tag"]].append(entry["i"])
    assert seen == {t: list(range(300)) for t in "abc"}


def test_forked_worker_gets_its_own_writer(tmp_path: Path) -> None:
    log = tmp_path / "fork.log"
    file_logger.write_line(str(log), b'{"who":"parent"}\n')  # a writer (and thread) here
    assert file_logger.flush()
    pid = os.fork()
    if pid == 0:  # the child: the parent's writer thread does not exist here
        code = 1
        try:
            file_logger.write_line(str(log), b'{"who":"child"}\n')
            code = 0 if file_logger.flush(5) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    file_logger.write_line(str(log), b'{"who":"parent again"}\n')
    assert file_logger.flush()
    assert [json.loads(x)["who"] for x in log.read_text().splitlines()] == [
        "parent", "child", "parent again"]

def test_unwritable_path_never_fails_the_request(sixgate: GatewayHarness,
                                                 tmp_path: Path) -> None:
    bad = tmp_path / "missing-dir" / "x.log"
    sixgate.add_route("/hello", {"file-logger": {"path": str(bad)}})
    assert sixgate.get("/hello").status == 200
    settle()
    assert "failed to write file: " + str(bad) in sixgate.logs()
    assert not bad.exists()
    # once the directory exists, lines get through
    bad.parent.mkdir()
    assert sixgate.get("/hello").status == 200
    read_entries(bad, 1)


def test_destroy_flushes_and_next_line_reopens(sixgate: GatewayHarness, tmp_path: Path) -> None:
    log = tmp_path / "reload.log"
    sixgate.add_route("/hello", {"file-logger": {"path": str(log)}})
    sixgate.get("/hello")
    read_entries(log, 1)
    writers, _ = file_logger._registry()
    old = writers[str(log)]
    result = sixgate.reload_plugins()  # destroy() of the live generation, init() of the next
    assert result.ok, result.errors
    assert old.closed and str(log) not in writers
    sixgate.get("/hello")
    assert len(read_entries(log, 2)) == 2
    assert not writers[str(log)].closed


def test_relative_path_is_taken_from_the_working_directory(
    sixgate: GatewayHarness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    sixgate.add_route("/hello", {"file-logger": {"path": "logs-rel.log"}})
    sixgate.get("/hello")
    read_entries(tmp_path / "logs-rel.log", 1)


# -- schema --------------------------------------------------------------------------------------


def _rejected(sixgate: GatewayHarness, conf: dict[str, Any]) -> str:
    with pytest.raises(ConfigRejected) as info:
        sixgate.add_route("/bad", {"file-logger": conf})
    return str(info.value)


@pytest.mark.parametrize(("conf", "message"), [
    ({}, 'property "path" is not set in either the plugin conf or the metadata'),
    ({"path": 1}, 'property "path" validation failed: wrong type: expected string, got number'),
    ({"path": "f", "log_format": "x"},
     'property "log_format" validation failed: wrong type: expected object, got string'),
    ({"path": "f", "include_req_body": "yes"},
     'property "include_req_body" validation failed: wrong type: expected boolean, got string'),
    ({"path": "f", "include_resp_body_expr": []},
     'property "include_resp_body_expr" validation failed: expect array to have at least 1 '
     'items'),
    ({"path": "f", "max_req_body_bytes": 0},
     'property "max_req_body_bytes" validation failed: expected 0 to be at least 1'),
    ({"path": "f", "match": [["arg_a", "==", "1"]] * 21},
     'property "match" validation failed: expect array to have at most 20 items'),
    ({"path": "f", "match": [[["arg_a", "=", "1"]]]},
     "failed to validate the 'match' expression: invalid operator '='"),
    ({"path": "f", "include_req_body_expr": [["arg_a", "=", "1"]]},
     "failed to validate the 'include_req_body_expr' expression: invalid operator '='"),
])
def test_schema_errors(sixgate: GatewayHarness, conf: dict[str, Any], message: str) -> None:
    text = _rejected(sixgate, conf)
    assert f"failed to check the configuration of plugin file-logger err: {message}" in text


def test_schema_and_metadata_schema(sixgate: GatewayHarness) -> None:
    assert file_logger.priority == 399 and file_logger.name == "file-logger"
    props = file_logger.schema["properties"]
    assert set(props) == {"path", "log_format", "log_format_extra", "include_req_body",
                          "include_req_body_expr", "include_resp_body",
                          "include_resp_body_expr", "max_req_body_bytes",
                          "max_resp_body_bytes", "match"}
    assert props["max_req_body_bytes"]["default"] == props["max_resp_body_bytes"]["default"] \
        == 524288
    assert set(file_logger.metadata_schema["properties"]) == {"path", "log_format",
                                                             "log_format_extra"}
    with pytest.raises(ConfigRejected, match='property "log_format" validation failed: '
                                             "wrong type: expected object, got string"):
        sixgate.set_plugin_metadata("file-logger", {"log_format": "x"})
    # a conf without path passes when the caller knows the metadata holds one
    assert file_logger.check_schema({}, "route", {"path": "/tmp/x"}) is None
    assert file_logger.check_schema({}, "route", {}) == file_logger.PATH_NOT_SET


def test_writes_do_not_run_on_the_event_loop(sixgate: GatewayHarness, tmp_path: Path) -> None:
    """The log hook only queues: the file is written by the writer's own thread."""
    log = tmp_path / "thread.log"
    sixgate.add_route("/hello", {"file-logger": {"path": str(log)}})
    calls: list[str] = []
    real_write = os.write

    def spy(fd: int, data: Any) -> int:
        calls.append(threading.current_thread().name)
        return real_write(fd, data)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(file_logger.os, "write", spy)
        for _ in range(3):
            sixgate.get("/hello")
        read_entries(log, 3)
    assert "sixgate-file-logger" in calls
    assert "sixgate-test-gateway" not in calls  # the gateway's event loop thread

