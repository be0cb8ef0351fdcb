"""http-logger through a real in-process gateway and a real collector (spec §7.22, §9.2, §9.3),
and the batch processor it uses (plugin_sdk.batch)."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

import builtin_plugins.file_logger as file_logger
import builtin_plugins.http_logger as http_logger
from plugin_sdk.batch import BatchProcessor, BatchSendError, PendingCounter, drain
from plugin_sdk.testing import ConfigRejected, GatewayHarness, MockUpstream, run_phase
from tests.support.served import ServedApp
from tests.support.tls import CA, load_pair

pytestmark = pytest.mark.sixgate(plugins=["http-logger", "file-logger"])


# -- the collector -------------------------------------------------------------------------------


@dataclass
class Post:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class Collector(ServedApp):
    """A real HTTP(S) log collector (aiohttp, own thread) recording every POST.

    ``fail_next``: that many next requests get ``500 collector down``; ``delay``: seconds
    before answering; ``hang``: never answer."""

    thread_name = "test-collector"

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = self.ssl_context = tls
        self.posts: list[Post] = []
        self.fail_next = 0
        self.delay = 0.0
        self._cond = threading.Condition()

    @property
    def uri(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}/logs"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        with self._cond:
            self.posts.append(Post(request.path, dict(request.headers), body, time.monotonic()))
            self._cond.notify_all()
            fail = self.fail_next > 0
            if fail:
                self.fail_next -= 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if fail:
            return web.Response(status=500, text="collector down")
        return web.Response(text="ok")

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Post]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.posts) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"collector got {len(self.posts)} POST(s), "
                                         f"expected {count}")
                self._cond.wait(left)
            return list(self.posts)

    def entries(self) -> list[Any]:
        out: list[Any] = []
        for post in list(self.posts):
            data = post.json
            out.extend(data if isinstance(data, list) else [data])
        return out

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self._handle)


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector().start()
    yield c
    c.stop()


def logger_conf(collector: Collector, **conf: Any) -> dict[str, Any]:
    return {"uri": collector.uri, **conf}


def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


# -- the entries ---------------------------------------------------------------------------------


def test_default_entry_is_the_file_loggers(sixgate: GatewayHarness, collector: Collector,
                                           tmp_path: Path) -> None:
    log = tmp_path / "file.log"
    sixgate.upstream.respond(200, "hello world\n", {"Content-Type": "text/plain"})  # type: ignore[union-attr]
    sixgate.add_route("/hello", {
        "http-logger": logger_conf(collector, batch_max_size=1),
        "file-logger": {"path": str(log)},
    }, id="1")
    r = sixgate.post("/hello?log_body=no&a=1&a=2", body="hello body",
                     headers={"Content-Type": "text/plain", "User-Agent": "t/1"})
    assert r.status == 200
    [post] = collector.wait_for(1)
    assert post.path == "/logs"
    assert post.headers["Content-Type"] == "application/json"
    assert "Authorization" not in post.headers
    entry = post.json
    assert isinstance(entry, dict)  # batch_max_size 1: one object, not an array
    wait_until(lambda: file_logger.flush() and log.exists() and log.read_text() != "")
    reference = json.loads(log.read_text().splitlines()[0])
    # the same entry as file-logger's (spec §9.2) but for the timings of each log call
    for key in ("latency", "apisix_latency"):
        assert isinstance(entry.pop(key), int | float)
        reference.pop(key)
    assert entry == reference
    req = entry["request"]
    assert req["url"] == f"http://127.0.0.1:{sixgate.port}/hello?log_body=no&a=1&a=2"
    assert req["method"] == "POST"
    assert req["querystring"] == {"log_body": "no", "a": ["1", "2"]}
    assert req["headers"]["user-agent"] == "t/1"
    assert "body" not in req and "body" not in entry["response"]
    assert entry["response"]["status"] == 200
    assert entry["route_id"] == "1" and entry["service_id"] == ""
    assert entry["client_ip"] == "127.0.0.1"
    assert entry["upstream"] == f"127.0.0.1:{sixgate.upstream.port}"  # type: ignore[union-attr]


def test_log_format_conf_and_metadata(sixgate: GatewayHarness, collector: Collector) -> None:
    sixgate.add_route("/conf", {"http-logger": logger_conf(
        collector, batch_max_size=1,
        log_format={"host": "$host", "client_ip": "$remote_addr", "method": "$request_method",
                    "literal": "x", "missing": "$no_such_var"})}, id="c1")
    sixgate.add_route("/meta", {"http-logger": logger_conf(collector, batch_max_size=1)},
                      id="m1")
    sixgate.set_plugin_metadata("http-logger", {"log_format": {
        "uri": "$uri", "status": "$status", "@timestamp": "$time_iso8601"}})
    sixgate.get("/conf")
    [post] = collector.wait_for(1)
    assert post.json == {"host": "127.0.0.1", "client_ip": "127.0.0.1", "method": "GET",
                         "literal": "x", "route_id": "c1"}
    sixgate.get("/meta?x=1")
    entry = collector.wait_for(2)[1].json
    assert entry.pop("@timestamp")
    assert entry == {"uri": "/meta", "status": 200, "route_id": "m1"}


def test_bodies_and_no_matched_route(sixgate: GatewayHarness, collector: Collector) -> None:
    sixgate.upstream.respond(201, "created!", {"Content-Type": "text/plain"})  # type: ignore[union-attr]
    sixgate.add_route("/body", {"http-logger": logger_conf(
        collector, batch_max_size=1, include_req_body=True, include_resp_body=True,
        include_resp_body_expr=[["status", "==", 201]])})
    sixgate.post("/body", body="ping")
    entry = collector.wait_for(1)[0].json
    assert entry["request"]["body"] == "ping"
    assert entry["response"]["body"] == "created!"
    # a global rule logs requests no route matched: route_id "no-matched"
    sixgate.add_global_rule({"http-logger": logger_conf(collector, batch_max_size=1)})
    assert sixgate.get("/nowhere").status == 404
    entries = [p.json for p in collector.wait_for(2)]
    assert entries[1]["route_id"] == "no-matched"
    assert entries[1]["service_id"] == "127.0.0.1"  # $host when nothing matched
    assert entries[1]["response"]["status"] == 404


# -- batching ------------------------------------------------------------------------------------


def test_batch_max_size_flush(sixgate: GatewayHarness, collector: Collector) -> None:
    sixgate.add_route("/b", {"http-logger": logger_conf(
        collector, batch_max_size=3, inactive_timeout=30, buffer_duration=60)})
    for i in range(2):
        sixgate.get(f"/b?n={i}")
    time.sleep(0.3)
    assert collector.posts == []  # 2 < batch_max_size, inactive_timeout far away
    sixgate.get("/b?n=2")
    [post] = collector.wait_for(1, timeout=2)
    batch = post.json
    assert isinstance(batch, list) and len(batch) == 3  # json: an array
    assert [e["request"]["querystring"]["n"] for e in batch] == ["0", "1", "2"]
    assert post.headers["Content-Type"] == "application/json"


def test_inactive_timeout_flush(sixgate: GatewayHarness, collector: Collector) -> None:
    sixgate.add_route("/i", {"http-logger": logger_conf(
        collector, batch_max_size=100, inactive_timeout=1)})
    sixgate.get("/i?n=0")
    sixgate.get("/i?n=1")
    sent = time.monotonic()
    [post] = collector.wait_for(1, timeout=4)
    assert 0.8 <= post.at - sent <= 2.5
    assert [e["request"]["querystring"]["n"] for e in post.json] == ["0", "1"]


def test_concat_method_new_line_and_auth_header(sixgate: GatewayHarness,
                                                collector: Collector) -> None:
    sixgate.add_route("/n", {"http-logger": logger_conf(
        collector, batch_max_size=2, concat_method="new_line",
        auth_header="Bearer s3cret")})
    sixgate.get("/n?n=0")
    sixgate.get("/n?n=1")
    [post] = collector.wait_for(1)
    assert post.headers["Content-Type"] == "text/plain"
    assert post.headers["Authorization"] == "Bearer s3cret"
    lines = post.body.split(b"\n")
    assert len(lines) == 2
    assert [json.loads(line)["request"]["querystring"]["n"] for line in lines] == ["0", "1"]


def test_retries_until_the_collector_recovers(sixgate: GatewayHarness,
                                              collector: Collector) -> None:
    collector.fail_next = 2
    sixgate.add_route("/r", {"http-logger": logger_conf(
        collector, batch_max_size=1, max_retry_count=2, retry_delay=0)})
    sixgate.get("/r?n=0")
    posts = collector.wait_for(3)
    assert len({p.body for p in posts}) == 1  # the same batch three times
    assert json.loads(posts[0].body)["request"]["querystring"] == {"n": "0"}
    wait_until(lambda: "failed to process entries" in sixgate.logs())
    logs = sixgate.logs()
    assert logs.count("Batch Processor[http logger] failed to process entries: server "
                      f"returned status code[500] host[127.0.0.1] port[{collector.port}] "
                      "body[collector down]") == 2
    assert "dropping the entries" not in logs


def test_gives_up_after_max_retry_count(sixgate: GatewayHarness, collector: Collector) -> None:
    collector.fail_next = 10
    sixgate.add_route("/r", {"http-logger": logger_conf(
        collector, batch_max_size=1, max_retry_count=1, retry_delay=1, name="my logger")})
    sixgate.get("/r")
    posts = collector.wait_for(2)
    assert posts[1].at - posts[0].at >= 0.9  # retry_delay
    wait_until(lambda: "dropping the entries" in sixgate.logs())
    assert ("Batch Processor[my logger] exceeded the max_retry_count[2] dropping the entries"
            in sixgate.logs())
    time.sleep(0.3)
    assert len(collector.posts) == 2


def test_unreachable_collector(sixgate: GatewayHarness) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    sixgate.add_route("/u", {"http-logger": {"uri": f"http://127.0.0.1:{port}/x",
                                             "batch_max_size": 1}})
    assert sixgate.get("/u").status == 200
    wait_until(lambda: "dropping the entries" in sixgate.logs())
    assert (f"Batch Processor[http logger] failed to process entries: failed to connect to "
            f"host[127.0.0.1] port[{port}]") in sixgate.logs()


def test_requests_never_wait_for_a_slow_collector(sixgate: GatewayHarness,
                                                  collector: Collector) -> None:
    collector.delay = 1.0
    sixgate.add_route("/s", {"http-logger": logger_conf(collector, batch_max_size=1,
                                                        timeout=5)})
    started = time.monotonic()
    for _ in range(5):
        assert sixgate.get("/s").status == 200
    assert time.monotonic() - started < 0.8  # the collector takes 1 s per POST
    collector.wait_for(5, timeout=3)  # the five batches are sent side by side
    assert time.monotonic() - started < 1.0


def test_queue_bound_and_flush_at_stop(tmp_path: Path, sixgate_upstream: MockUpstream,
                                       collector: Collector) -> None:
    gw = GatewayHarness(tmp_path / "gw", sixgate_upstream, plugins=["http-logger"],
                        plugin_attr={"http-logger": {"max_pending_entries": 3}}).start()
    try:
        gw.add_route("/q", {"http-logger": logger_conf(
            collector, batch_max_size=100, inactive_timeout=60)})
        for i in range(5):
            assert gw.get(f"/q?n={i}").status == 200  # never refused, never slowed
        time.sleep(0.2)
        assert collector.posts == []
        assert "max pending entries limit exceeded. discarding entry." in gw.logs()
    finally:
        gw.stop()  # destroy() + drain: the three buffered entries go out now
    [post] = collector.wait_for(1, timeout=1)
    assert [e["request"]["querystring"]["n"] for e in post.json] == ["0", "1", "2"]


def test_conf_bound_wins(sixgate: GatewayHarness, collector: Collector) -> None:
    collector.delay = 1.0
    sixgate.add_route("/q", {"http-logger": logger_conf(
        collector, batch_max_size=1, max_pending_entries=2)})
    for _ in range(4):
        sixgate.get("/q")
    collector.wait_for(2)
    time.sleep(1.3)
    assert len(collector.posts) == 2
    assert "max_pending_entries: 2" in sixgate.logs()


def test_plugin_reload_flushes(sixgate: GatewayHarness, collector: Collector) -> None:
    sixgate.add_route("/p", {"http-logger": logger_conf(
        collector, batch_max_size=100, inactive_timeout=60)})
    sixgate.get("/p?n=0")
    sixgate.get("/p?n=1")
    time.sleep(0.1)
    assert collector.posts == []
    assert sixgate.reload_plugins().ok
    [post] = collector.wait_for(1, timeout=2)
    assert len(post.json) == 2
    sixgate.get("/p?n=2")  # the new generation keeps logging
    time.sleep(0.1)
    assert len(collector.posts) == 1


def test_https_collector_and_ssl_verify(sixgate: GatewayHarness) -> None:
    ca = CA()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    load_pair(ctx, ca.issue("127.0.0.1"))
    tls = Collector(tls=ctx).start()
    try:
        sixgate.add_route("/t", {"http-logger": {"uri": tls.uri, "batch_max_size": 1}})
        sixgate.add_route("/v", {"http-logger": {"uri": tls.uri, "batch_max_size": 1,
                                                 "ssl_verify": True}})
        sixgate.get("/t")
        assert tls.wait_for(1)[0].json["request"]["uri"] == "/t"
        sixgate.get("/v")  # the test CA is not trusted: refused, dropped
        wait_until(lambda: "dropping the entries" in sixgate.logs())
        assert "certificate verify failed" in sixgate.logs().lower()
        assert len(tls.posts) == 1
    finally:
        tls.stop()


# -- schema --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("conf", "message"), [
    ({}, 'property "uri" is required'),
    ({"uri": "127.0.0.1:1980/log"},
     'property "uri" validation failed: failed to match pattern '
     '"^[^\\/]+:\\/\\/([\\da-zA-Z.-]+|\\[[\\da-fA-F:]+\\])(:\\d+)?" with "127.0.0.1:1980/log"'),
    ({"uri": "http://x", "concat_method": "csv"},
     'property "concat_method" validation failed: matches none of the enum values'),
    ({"uri": "http://x", "timeout": 0},
     'property "timeout" validation failed: expected 0 to be at least 1'),
    ({"uri": "http://x", "batch_max_size": 0},
     'property "batch_max_size" validation failed: expected 0 to be at least 1'),
    ({"uri": "http://x", "inactive_timeout": 0.5},
     'property "inactive_timeout" validation failed: wrong type: expected integer, got number'),
    ({"uri": "http://x", "include_resp_body_expr": [["status", "~=~", 1]]},
     "failed to validate the 'include_resp_body_expr' expression: invalid operator '~=~'"),
])
def test_schema_errors(conf: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigRejected) as err:
        run_phase(http_logger, "body_filter", conf)
    assert str(err.value) == (
        f"failed to check the configuration of plugin http-logger err: {message}")


def test_defaults() -> None:
    from kernel.plugins.manager import PluginRegistry, prepare_conf

    info = PluginRegistry([http_logger]).get("http-logger")
    assert info is not None
    assert info.encrypt_fields == ("auth_header",)
    filled, err = prepare_conf(info, {"uri": "https://127.0.0.1:8443/logs"})
    assert err is None and filled is not None
    assert {k: filled[k] for k in ("timeout", "concat_method", "ssl_verify", "name",
                                   "batch_max_size", "inactive_timeout", "buffer_duration",
                                   "max_retry_count", "retry_delay", "include_req_body",
                                   "include_resp_body")} == {
        "timeout": 3, "concat_method": "json", "ssl_verify": False, "name": "http logger",
        "batch_max_size": 1000, "inactive_timeout": 5, "buffer_duration": 60,
        "max_retry_count": 0, "retry_delay": 1, "include_req_body": False,
        "include_resp_body": False}


# -- the batch processor alone (plugin_sdk.batch) ------------------------------------------------


class Sink:
    def __init__(self, fail: int = 0, sent_on_fail: int = 0) -> None:
        self.batches: list[list[int]] = []
        self.fail = fail
        self.sent_on_fail = sent_on_fail
        self.at: list[float] = []

    async def __call__(self, entries: list[int], batch_max_size: int) -> None:
        self.batches.append(entries)
        self.at.append(asyncio.get_running_loop().time())
        if self.fail:
            self.fail -= 1
            raise BatchSendError("nope", sent=self.sent_on_fail)


async def test_buffer_duration_bounds_a_busy_buffer() -> None:
    sink = Sink()
    p: BatchProcessor[int] = BatchProcessor(sink, batch_max_size=1000, inactive_timeout=0.1,
                                            buffer_duration=0.35)
    loop = asyncio.get_running_loop()
    start = loop.time()
    i = 0
    while not sink.batches and loop.time() - start < 2:
        p.push(i)  # an entry every 20 ms: never inactive for 0.1 s
        i += 1
        await asyncio.sleep(0.02)
    assert sink.batches, "no flush"
    # the timer looks every inactive_timeout; the buffer went out within one look of 0.35 s
    assert 0.3 <= sink.at[0] - start <= 0.55
    assert sink.batches[0] == list(range(len(sink.batches[0])))


async def test_partial_failure_retries_the_rest() -> None:
    sink = Sink(fail=1, sent_on_fail=2)
    counter = PendingCounter()
    p: BatchProcessor[int] = BatchProcessor(sink, batch_max_size=4, max_retry_count=1,
                                            retry_delay=0, counter=counter)
    for i in range(4):
        assert p.push(i)
    assert counter.value == 4
    await p.flush()
    assert sink.batches == [[0, 1, 2, 3], [2, 3]]
    assert counter.value == 0 and p.idle


async def test_bound_is_shared_and_released() -> None:
    counter = PendingCounter()
    sink = Sink()
    a: BatchProcessor[int] = BatchProcessor(sink, batch_max_size=10, inactive_timeout=60,
                                            max_pending_entries=3, counter=counter)
    b: BatchProcessor[int] = BatchProcessor(sink, batch_max_size=10, inactive_timeout=60,
                                            max_pending_entries=3, counter=counter)
    assert a.push(1) and a.push(2) and b.push(3)
    assert not b.push(4) and not a.push(5)
    assert a.dropped == 1 and b.dropped == 1
    await a.flush()
    assert b.push(6)
    await drain(1.0)  # sends b's buffer too
    assert sorted(x for batch in sink.batches for x in batch) == [1, 2, 3, 6]
    assert counter.value == 0


async def test_close_sends_now_and_later_entries_at_once() -> None:
    sink = Sink()
    p: BatchProcessor[int] = BatchProcessor(sink, batch_max_size=10, inactive_timeout=60)
    p.push(1)
    p.push(2)
    p.close()
    await asyncio.sleep(0.01)
    assert sink.batches == [[1, 2]]
    p.push(3)
    await asyncio.sleep(0.01)
    assert sink.batches == [[1, 2], [3]]


async def test_drain_gives_up_after_its_timeout(caplog: pytest.LogCaptureFixture) -> None:
    async def never(entries: list[int], size: int) -> None:
        await asyncio.sleep(60)

    counter = PendingCounter()
    p: BatchProcessor[int] = BatchProcessor(never, name="stuck", batch_max_size=1,
                                            counter=counter)
    p.push(1)
    started = time.monotonic()
    await drain(0.2)
    assert time.monotonic() - started < 1
    assert counter.value == 0 and p.idle
    assert "Batch Processor[stuck] stopped before its entries were sent" in caplog.text
