"""Upstream health checks (spec §5.6, §8 /v1/healthcheck): kernel/upstream/health.py.

End-to-end tests run a real in-process gateway (plugin_sdk.testing.GatewayHarness) in front of
real upstream servers (tests.support.upstream.Upstream), with probe intervals scaled by
``health.TIME_SCALE`` (the schema allows whole seconds only: ``interval: 1`` is 0.1 s here).
Unit tests drive the checker's counters and the health-aware pickers directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web

from kernel import schemas
from kernel.upstream import health
from kernel.upstream.connection import PoolSettings
from kernel.upstream.health import (
    HEALTHY,
    MOSTLY_HEALTHY,
    MOSTLY_UNHEALTHY,
    UNHEALTHY,
    HealthChecker,
    HealthManager,
    HealthPicker,
    health_picker,
)
from kernel.upstream.nodes import Node
from kernel.upstream.runtime import UpstreamRuntime
from plugin_sdk.testing import ConfigRejected, GatewayHarness
from tests.support.upstream import Upstream, free_port

SCALE = 0.1  # interval 1 (s) -> 0.1 s


# ------------------------------------------------------------------------------ fixtures


class FailingUpstream(Upstream):
    """An :class:`Upstream` answering ``fail`` (a status) to everything while it is set."""

    def __init__(self, port: int | None = None) -> None:
        super().__init__(port)
        self.fail: int | None = None

    async def _any(self, request: web.Request) -> web.StreamResponse:
        if self.fail is not None:
            await self._record(request)
            return web.Response(status=self.fail, text=f"failing {self.port}\n")
        return await super()._any(request)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayHarness]:
    saved = health.TIME_SCALE
    health.TIME_SCALE = SCALE
    harness = GatewayHarness(tmp_path_factory.mktemp("hc"), plugins=[]).start()
    yield harness
    harness.stop()
    health.TIME_SCALE = saved


@pytest.fixture
def ups() -> Iterator[Callable[..., Upstream]]:
    started: list[Upstream] = []

    def make(port: int | None = None, failing: bool = False) -> Upstream:
        up = (FailingUpstream(port) if failing else Upstream(port)).start()
        started.append(up)
        return up

    yield make
    for up in started:
        with contextlib.suppress(RuntimeError):  # stopped by the test already
            up.stop()


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.02)


def report(gw: GatewayHarness) -> list[dict[str, Any]]:
    async def get() -> list[dict[str, Any]]:
        return health.report(gw.gateway.state)

    return gw.call(get())


def node_status(gw: GatewayHarness, name: str, port: int) -> str | None:
    for entry in report(gw):
        if entry["name"] == name:
            for node in entry["nodes"]:
                if node["port"] == port:
                    return str(node["status"])
    return None


def live_tasks(gw: GatewayHarness) -> list[asyncio.Task[Any]]:
    async def get() -> list[asyncio.Task[Any]]:
        for _ in range(100):  # let cancelled checkers finish their probes' cancellation
            tasks = [t for t in asyncio.all_tasks()
                     if t.get_name().startswith("sixgate-healthcheck") and not t.done()]
            if not any(t.cancelling() for t in tasks):
                return tasks
            await asyncio.sleep(0.01)
        return tasks

    return gw.call(get())


def checkers(gw: GatewayHarness) -> list[HealthChecker]:
    return gw.gateway.health.checkers()


def served_port(gw: GatewayHarness) -> int | str:
    r = gw.get("/server_port")
    return int(r.text) if r.status == 200 else f"status {r.status}"


def addr(up: Upstream | int) -> str:
    return f"127.0.0.1:{up if isinstance(up, int) else up.port}"


def upstream_doc(nodes: list[Any], checks: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "upstreams": [{"id": "u1", "nodes": {addr(n): 1 for n in nodes}, "checks": checks,
                       **extra}],
        "routes": [{"id": "r1", "uri": "/*", "upstream_id": "u1"}],
    }


# ------------------------------------------------------------------------------ active checks


def test_active_http_takes_a_killed_node_out_and_brings_it_back(gw, ups):
    a, b = ups(), ups()
    gw.apply(upstream_doc([a, b], {"active": {
        "http_path": "/hello",
        "healthy": {"interval": 1, "successes": 1},
        "unhealthy": {"interval": 1, "tcp_failures": 2, "http_failures": 2},
    }}, retries=0))  # no retries: a request picking a dead node would get a 502
    assert {served_port(gw) for _ in range(8)} == {a.port, b.port}
    assert wait_for(lambda: a.hits.get("/hello"), what="a probe of a") >= 1

    a.stop()
    killed = time.monotonic()
    wait_for(lambda: node_status(gw, "/apisix/upstreams/u1", a.port) == UNHEALTHY,
             what="a unhealthy")
    # within interval x tcp_failures (0.2 s here), with slack for a loaded machine
    assert time.monotonic() - killed < 0.2 + 2.5
    assert [served_port(gw) for _ in range(10)] == [b.port] * 10
    assert node_status(gw, "/apisix/upstreams/u1", b.port) == HEALTHY

    ups(port=a.port)  # the same node comes back
    wait_for(lambda: node_status(gw, "/apisix/upstreams/u1", a.port) == HEALTHY,
             what="a healthy again")
    assert {served_port(gw) for _ in range(10)} == {a.port, b.port}
    logs = gw.logs()
    assert f"target '127.0.0.1(127.0.0.1:{a.port})' changed from mostly_healthy to unhealthy" \
        in logs
    assert "(upstream#/apisix/upstreams/u1)" in logs


def test_active_tcp_check(gw, ups):
    alive = ups(failing=True)
    alive.fail = 500  # answers 500: fine for a TCP check
    dead = free_port()
    gw.apply(upstream_doc([alive, dead], {"active": {
        "type": "tcp", "unhealthy": {"interval": 1, "tcp_failures": 2},
    }}))
    wait_for(lambda: node_status(gw, "/apisix/upstreams/u1", dead) == UNHEALTHY,
             what="dead unhealthy")
    entry = report(gw)[0]
    assert entry["type"] == "tcp"
    by_port = {n["port"]: n for n in entry["nodes"]}
    assert by_port[dead]["counter"] == {"success": 0, "http_failure": 0, "tcp_failure": 2,
                                        "timeout_failure": 0}
    assert by_port[alive.port]["status"] == HEALTHY
    assert not alive.hits  # a TCP probe sends no request
    r = [gw.get("/hello") for _ in range(6)]
    assert [x.status for x in r] == [500] * 6  # all on the live node, 500s passed through


def test_http_probe_sees_path_host_headers_and_port_override(gw, ups):
    traffic, probe = ups(), ups()
    gw.apply(upstream_doc([traffic], {"active": {
        "http_path": "/probe?x=1",
        "host": "probe.example.com",
        "port": probe.port,
        "req_headers": ["X-Probe: yes", "User-Agent: sixgate-hc"],
        "healthy": {"interval": 1},
    }}))
    wait_for(lambda: probe.hits.get("/probe"), what="a probe")
    req = next(r for r in probe.requests if r["path"] == "/probe")
    headers = dict(req["headers"])
    assert req["method"] == "GET"
    assert req["query"] == "x=1"
    assert headers["Host"] == "probe.example.com"
    assert headers["X-Probe"] == "yes"
    assert headers["User-Agent"] == "sixgate-hc"
    assert headers["Connection"] == "close"
    assert "/probe" not in traffic.hits
    (entry,) = report(gw)
    assert entry["nodes"] == [{
        "ip": "127.0.0.1", "port": probe.port, "hostname": "probe.example.com",
        "status": "healthy",
        "counter": {"success": 0, "http_failure": 0, "tcp_failure": 0, "timeout_failure": 0},
    }]


def test_all_nodes_unhealthy_still_get_traffic(gw, ups):
    a, b = ups(), ups()
    gw.apply(upstream_doc([a, b], {"active": {
        "http_path": "/status/404",  # 404 is an unhealthy status by default
        "unhealthy": {"interval": 1, "http_failures": 1},
    }}))
    def both_down() -> bool:
        return all(node_status(gw, "/apisix/upstreams/u1", p) == UNHEALTHY
                   for p in (a.port, b.port))

    wait_for(both_down, what="both unhealthy")
    assert {served_port(gw) for _ in range(10)} == {a.port, b.port}


# ------------------------------------------------------------------------------ passive checks

_QUIET_ACTIVE = {"type": "tcp", "healthy": {"interval": 100}, "unhealthy": {"interval": 100}}
"""Active checks that stay out of the way (10 s between probes here)."""


def test_passive_http_statuses_move_traffic_off_a_failing_node(gw, ups):
    good, bad = ups(), ups(failing=True)
    bad.fail = 500
    gw.apply(upstream_doc([good, bad], {
        "active": _QUIET_ACTIVE,
        "passive": {"unhealthy": {"http_statuses": [500], "http_failures": 2}},
    }, retries=0))
    statuses = Counter(gw.get("/server_port").status for _ in range(10))
    assert statuses[500] == 2  # the 2nd 500 took the node out
    assert node_status(gw, "/apisix/upstreams/u1", bad.port) == UNHEALTHY
    seen = dict(bad.hits)
    assert [served_port(gw) for _ in range(10)] == [good.port] * 10
    assert bad.hits == seen  # no request reached it any more
    by_port = {n["port"]: n for n in report(gw)[0]["nodes"]}
    assert by_port[bad.port]["counter"]["http_failure"] == 2
    assert by_port[good.port]["status"] == HEALTHY


def test_passive_connect_failures(gw, ups):
    good = ups()
    dead = free_port()
    gw.apply(upstream_doc([good, dead], {
        "active": _QUIET_ACTIVE,
        "passive": {"unhealthy": {"tcp_failures": 1}},
    }, retries=1))
    for _ in range(6):
        assert served_port(gw) == good.port  # the dead node's try is retried on the good one
    by_port = {n["port"]: n for n in report(gw)[0]["nodes"]}
    assert by_port[dead]["status"] == UNHEALTHY
    assert by_port[dead]["counter"]["tcp_failure"] == 1  # counted once, then skipped


def test_no_passive_conf_means_no_passive_judgement(gw, ups):
    good, bad = ups(), ups(failing=True)
    bad.fail = 500
    gw.apply(upstream_doc([good, bad], {"active": _QUIET_ACTIVE}))
    statuses = Counter(gw.get("/server_port").status for _ in range(10))
    assert statuses[500] == 5
    assert node_status(gw, "/apisix/upstreams/u1", bad.port) == HEALTHY


# ------------------------------------------------------------------------------ lifecycle


def test_checker_lifecycle(gw, ups):
    a, b = ups(), ups()
    checks = {"active": {"http_path": "/hello", "healthy": {"interval": 1}}}
    gw.apply(upstream_doc([a, b], checks))
    (first,) = checkers(gw)
    assert first.running and first.name == "/apisix/upstreams/u1"
    assert len(live_tasks(gw)) == 1

    # unrelated route change: the upstream runtime and its checker stay
    doc = upstream_doc([a, b], checks)
    doc["routes"][0]["uri"] = "/other/*"
    gw.apply(doc)
    assert checkers(gw) == [first] and first.running

    # checks changed: a new checker, the old task cancelled
    gw.apply(upstream_doc([a, b], {"active": {"http_path": "/status/200"}}))
    (second,) = checkers(gw)
    assert second is not first and second.running
    wait_for(lambda: first.task is not None and first.task.done(), 2, "first stopped")
    assert len(live_tasks(gw)) == 1
    assert report(gw)[0]["name"] == "/apisix/upstreams/u1"

    # upstream (and route) deleted: no checker left
    gw.apply({"routes": []})
    assert checkers(gw) == []
    wait_for(lambda: second.task is not None and second.task.done(), 2, "second stopped")
    assert live_tasks(gw) == []
    assert report(gw) == []


def test_replaced_upstream_keeps_health_when_checks_are_unchanged(gw, ups):
    good, bad = ups(), ups(failing=True)
    bad.fail = 500
    checks = {"active": _QUIET_ACTIVE,
              "passive": {"unhealthy": {"http_statuses": [500], "http_failures": 1}}}
    gw.apply(upstream_doc([good, bad], checks, retries=0))
    wait_for(lambda: gw.get("/server_port").status == 500, what="a 500")
    assert node_status(gw, "/apisix/upstreams/u1", bad.port) == UNHEALTHY
    (old,) = checkers(gw)

    gw.apply(upstream_doc([good, bad], checks, retries=0, desc="edited"))
    (new,) = checkers(gw)
    assert new is not old
    wait_for(lambda: old.task is not None and old.task.done(), 2, "old stopped")
    assert node_status(gw, "/apisix/upstreams/u1", bad.port) == UNHEALTHY  # carried over
    assert [served_port(gw) for _ in range(6)] == [good.port] * 6

    # other checks: a fresh start
    other = {**checks, "passive": {"unhealthy": {"http_statuses": [500, 503],
                                                 "http_failures": 1}}}
    gw.apply(upstream_doc([good, bad], other, retries=0))
    assert node_status(gw, "/apisix/upstreams/u1", bad.port) == HEALTHY


def test_one_checker_per_upstream_not_per_route(gw, ups):
    a, b = ups(), ups()
    up = {"nodes": {addr(a): 1, addr(b): 1},
          "checks": {"active": {"type": "tcp", "healthy": {"interval": 1}}}}
    gw.apply({
        "services": [{"id": "s1", "upstream": up}],
        "upstreams": [{"id": "u1", **up}],
        "routes": [
            {"id": "r1", "uri": "/r1", "upstream": up},
            {"id": "r2", "uri": "/r2", "upstream": up},
            {"id": "r3", "uri": "/r3", "service_id": "s1"},
            {"id": "r4", "uri": "/r4", "service_id": "s1"},
            {"id": "r5", "uri": "/r5", "upstream_id": "u1"},
            {"id": "r6", "uri": "/r6", "upstream_id": "u1"},
            {"id": "r7", "uri": "/r7", "upstream": {"nodes": {addr(a): 1}}},
        ],
    })
    names = [e["name"] for e in report(gw)]
    assert names == ["/apisix/routes/r1", "/apisix/routes/r2", "/apisix/services/s1",
                     "/apisix/upstreams/u1"]
    assert len(checkers(gw)) == 4
    assert len(live_tasks(gw)) == 4
    assert gw.gateway.state.routes["r7"].upstream.checker is None
    for path in ("/r1", "/r3", "/r5", "/r7"):
        assert gw.get(path).status == 200
    assert len(live_tasks(gw)) == 4  # requests create no checkers


def test_service_upstream_checker_follows_its_routes(gw, ups):
    a = ups()
    service = {"id": "s1", "upstream": {"nodes": {addr(a): 1},
                                        "checks": {"active": {"type": "tcp"}}}}
    gw.apply({"services": [service],
              "routes": [{"id": "r1", "uri": "/*", "service_id": "s1"}]})
    (checker,) = checkers(gw)
    assert checker.name == "/apisix/services/s1" and checker.running
    gw.apply({"services": [service], "routes": []})  # no route uses the service any more
    assert checkers(gw) == [] and live_tasks(gw) == []
    gw.apply({"services": [service],
              "routes": [{"id": "r2", "uri": "/*", "service_id": "s1"}]})
    (again,) = checkers(gw)
    assert again is checker  # the build cache kept the service's upstream runtime
    assert again.running and len(live_tasks(gw)) == 1
    assert gw.get("/hello").status == 200


def test_no_checker_without_checks(gw, ups):
    a, b = ups(), ups()
    gw.apply({"upstreams": [{"id": "u1", "nodes": {addr(a): 1, addr(b): 1}}],
              "routes": [{"id": "r1", "uri": "/*", "upstream_id": "u1"}]})
    runtime = gw.gateway.state.upstreams["u1"]
    assert runtime.checker is None
    assert not isinstance(runtime.picker, HealthPicker)
    assert checkers(gw) == [] and live_tasks(gw) == [] and report(gw) == []


def test_report_for_single_resources(gw, ups):
    a = ups()
    gw.apply({
        "upstreams": [{"id": "u1", "nodes": {addr(a): 1},
                       "checks": {"active": {"type": "tcp"}}},
                      {"id": "u2", "nodes": {addr(a): 1}}],
        "routes": [{"id": "r1", "uri": "/*", "upstream_id": "u1"},
                   {"id": "r2", "uri": "/x", "upstream": {
                       "nodes": {addr(a): 1}, "checks": {"active": {}}}}],
    })
    state = gw.gateway.state
    status, body = health.report_for(state, "upstreams", "u1")
    assert status == 200 and body["name"] == "/apisix/upstreams/u1" and body["type"] == "tcp"
    assert body["nodes"][0]["port"] == a.port
    status, body = health.report_for(state, "routes", "r2")
    assert status == 200 and body["type"] == "http"
    assert health.report_for(state, "routes", "r1") == (
        404, {"error_msg": "no checker for routes[r1]"})
    assert health.report_for(state, "upstreams", "u2") == (
        404, {"error_msg": "no checker for upstreams[u2]"})
    assert health.report_for(state, "routes", "r9") == (
        404, {"error_msg": "routes[r9] not found"})
    assert health.report_for(state, "nope", "1") == (
        400, {"error_msg": "invalid src type nope"})
    assert health.report_for(state, "routes", None) == (
        404, {"error_msg": "missing src id for src type routes"})


def test_gateway_stop_cancels_checkers(tmp_path: Path, ups):
    a = ups()
    harness = GatewayHarness(tmp_path, plugins=[]).start()
    try:
        harness.apply(upstream_doc([a], {"active": {"type": "tcp"}}))
        (checker,) = checkers(harness)
        assert checker.running
    finally:
        harness.stop()
    assert checker.task is not None and checker.task.done()


def test_disable_upstream_healthcheck(tmp_path: Path, ups):
    a = ups()
    harness = GatewayHarness(tmp_path, plugins=[],
                             config={"apisix": {"disable_upstream_healthcheck": True}}).start()
    try:
        harness.apply(upstream_doc([a, free_port()], {"active": {"type": "tcp"}}))
        (checker,) = checkers(harness)
        assert not checker.running and live_tasks(harness) == []
        assert {harness.get("/hello").status for _ in range(4)} == {200}  # retried, not judged
        assert all(n["status"] == HEALTHY for n in report(harness)[0]["nodes"])
    finally:
        harness.stop()


# ------------------------------------------------------------------------------ schema


@pytest.mark.parametrize(("checks", "message"), [
    ({"passive": {}},
     'object matches none of the required: ["active"] or ["active","passive"]'),
    ({"active": {"type": "udp"}}, 'property "type" validation failed'),
    ({"active": {"healthy": {"successes": 0}}}, "expected 0 to be at least 1"),
    ({"active": {"unhealthy": {"tcp_failures": 255}}}, "expected 255 to be at most 254"),
    ({"active": {"healthy": {"interval": 0.5}}}, "expected integer, got number"),
    ({"active": {"unhealthy": {"http_statuses": [600]}}}, "expected 600 to be at most 599"),
    ({"active": {"healthy": {"http_statuses": []}}}, "expect array to have at least 1 items"),
    ({"active": {"port": 70000}}, "expected 70000 to be at most 65535"),
    ({"active": {}, "passive": {"healthy": {"successes": -1}}},
     "expected -1 to be at least 0"),
    ({"active": {}, "other": {}}, "additional properties forbidden, found other"),
])
def test_bad_checks_are_rejected(checks, message):
    with pytest.raises(schemas.ValidationError) as err:
        schemas.validate_resource("upstream", {"nodes": {"127.0.0.1:80": 1}, "checks": checks})
    assert message in err.value.message
    assert err.value.message.startswith(
        'invalid configuration: property "checks" validation failed')


def test_bad_checks_refused_by_the_gateway(gw):
    with pytest.raises(ConfigRejected, match="object matches none of the required"):
        gw.apply({"upstreams": [{"id": "u1", "nodes": {"127.0.0.1:80": 1},
                                 "checks": {"passive": {}}}], "routes": []})
    passive_zero = {"active": {}, "passive": {"healthy": {"successes": 0},
                                              "unhealthy": {"timeouts": 0}}}
    schemas.validate_resource("upstream", {"nodes": {"127.0.0.1:80": 1},
                                           "checks": passive_zero})


# ------------------------------------------------------------------------------ units


def _nodes(*ports: int, priority: int = 0) -> list[Node]:
    return [Node("127.0.0.1", p, 1, priority) for p in ports]


def _checker(nodes: list[Node], **checks: Any) -> HealthChecker:
    checks.setdefault("active", {})
    return HealthChecker({"checks": checks}, nodes, "/apisix/upstreams/t")


def test_counters_follow_lua_resty_healthcheck():
    n = _nodes(1)
    c = _checker(n, passive={"unhealthy": {"http_failures": 3, "tcp_failures": 2},
                             "healthy": {"successes": 2}})
    t = c.targets[("127.0.0.1", 1)]
    c.report_status(n[0], 200)  # successes are not counted on a healthy target
    assert (t.status, t.counters) == (HEALTHY, [0, 0, 0, 0])
    c.report_status(n[0], 500)
    assert (t.status, t.counters) == (MOSTLY_HEALTHY, [0, 1, 0, 0])
    assert c.is_healthy(n[0]) and c.version == 0
    c.report_failure(n[0], 502)
    assert (t.status, t.counters) == (MOSTLY_HEALTHY, [0, 1, 1, 0])
    c.report_status(n[0], 200)  # a success resets the failure counters
    assert (t.status, t.counters) == (MOSTLY_HEALTHY, [1, 0, 0, 0])
    c.report_failure(n[0], 502)
    c.report_failure(n[0], 502)
    assert (t.status, t.counters) == (UNHEALTHY, [0, 0, 2, 0])
    assert not c.is_healthy(n[0]) and c.version == 1
    c.report_failure(n[0], 502)  # failures are not counted on an unhealthy target
    assert t.counters == [0, 0, 2, 0]
    c.report_status(n[0], 404)  # neither list: ignored
    c.report_failure(n[0], 400)  # not the node's fault: ignored
    assert t.counters == [0, 0, 2, 0]
    c.report_status(n[0], 201)
    assert (t.status, t.counters) == (MOSTLY_UNHEALTHY, [1, 0, 0, 0])
    assert not c.is_healthy(n[0])
    c.report_status(n[0], 200)
    assert (t.status, t.counters) == (HEALTHY, [2, 0, 0, 0])
    assert c.is_healthy(n[0]) and c.version == 2
    c.report_failure(n[0], 504)  # timeouts: 7 by default
    assert (t.status, t.counters) == (MOSTLY_HEALTHY, [0, 0, 0, 1])


def test_zero_limits_disable_counters():
    n = _nodes(1)
    c = _checker(n, passive={"unhealthy": {"http_failures": 0, "timeouts": 0}})
    for _ in range(10):
        c.report_status(n[0], 500)
        c.report_failure(n[0], 504)
    assert c.targets[("127.0.0.1", 1)].counters == [0, 0, 0, 0]


def _mark_down(c: HealthChecker, *nodes: Node) -> None:
    for node in nodes:
        t = c.targets[(node.host, node.port)]
        t.status = UNHEALTHY
    c._refresh_down()


@pytest.mark.parametrize("typ", ["roundrobin", "least_conn", "ewma", "chash"])
def test_every_balancer_skips_unhealthy_nodes(typ):
    nodes = _nodes(1, 2, 3)
    conf = {"type": typ, "hash_on": "vars", "key": "arg_k", "checks": {"active": {}}}
    c = _checker(nodes)
    picker = health_picker(conf, nodes, c)
    assert isinstance(picker, HealthPicker)

    def picks(n: int = 60) -> set[int]:
        out = set()
        for i in range(n):
            node = picker.pick({"arg_k": str(i), "remote_addr": "1.2.3.4"})
            assert node is not None
            picker.done(node, 0.001)
            out.add(node.port)
        return out

    assert picks() == {1, 2, 3}
    _mark_down(c, nodes[1])
    assert picks() == {1, 3}
    _mark_down(c, nodes[0])
    assert picks() == {3}
    _mark_down(c, nodes[2])  # all unhealthy: all are used
    assert picks() == {1, 2, 3}
    for t in c.targets.values():
        t.status = HEALTHY
    c._refresh_down()
    assert picks() == {1, 2, 3}


def test_unhealthy_nodes_and_tried_nodes_together():
    nodes = _nodes(1, 2, 3)
    c = _checker(nodes)
    picker = health_picker({"type": "roundrobin"}, nodes, c)
    _mark_down(c, nodes[0])
    first = picker.pick({}, None)
    assert first is not None
    second = picker.pick({}, {first})
    assert second is not None and {first.port, second.port} == {2, 3}
    assert picker.pick({}, {first, second}) is None  # healthy ones exist, all tried


def test_chash_keeps_keys_of_healthy_nodes():
    nodes = _nodes(1, 2, 3)
    conf = {"type": "chash", "hash_on": "vars", "key": "arg_k"}
    c = _checker(nodes)
    picker = health_picker(conf, nodes, c)
    before = {str(i): picker.pick({"arg_k": str(i)}) for i in range(200)}
    _mark_down(c, nodes[0])
    after = {k: picker.pick({"arg_k": k}) for k in before}
    for key, node in before.items():
        assert node is not None
        if node is not nodes[0]:
            assert after[key] is node  # consistent hashing: only the down node's keys move
        else:
            assert after[key] is not nodes[0]


def test_priority_groups_fall_back_when_the_high_group_is_down():
    high, low = _nodes(1, 2, priority=10), _nodes(3, priority=0)
    nodes = high + low
    c = _checker(nodes)
    picker = health_picker({"type": "roundrobin"}, nodes, c)
    assert {picker.pick({}).port for _ in range(20)} == {1, 2}  # type: ignore[union-attr]
    _mark_down(c, *high)
    assert {picker.pick({}).port for _ in range(20)} == {3}  # type: ignore[union-attr]


def test_picker_is_rebuilt_only_when_health_changes(monkeypatch):
    nodes = _nodes(1, 2, 3)
    c = _checker(nodes)
    built = []
    real = health.make_picker

    def counting(*args: Any, **kw: Any) -> Any:
        built.append(args)
        return real(*args, **kw)

    monkeypatch.setattr(health, "make_picker", counting)
    picker = health_picker({"type": "roundrobin"}, nodes, c)
    for _ in range(100):
        picker.pick({})
    assert len(built) == 1
    _mark_down(c, nodes[0])
    for _ in range(100):
        picker.pick({})
    assert len(built) == 2
    c.report_status(nodes[1], 500)  # no passive conf: nothing changes
    for _ in range(100):
        picker.pick({})
    assert len(built) == 2


def test_single_node_and_no_checker_keep_the_plain_picker():
    one = _nodes(1)
    assert not isinstance(health_picker({}, one, _checker(one)), HealthPicker)
    two = _nodes(1, 2)
    assert not isinstance(health_picker({}, two, None), HealthPicker)


def test_runtime_builds_checker_and_health_picker():
    conf = schemas.with_defaults("upstream", {
        "nodes": {"127.0.0.1:1": 1, "127.0.0.1:2": 1},
        "checks": {"active": {"type": "tcp"}, "passive": {}},
    })
    rt = UpstreamRuntime(conf, PoolSettings(), "u1")
    assert rt.checker is not None and isinstance(rt.picker, HealthPicker)
    assert list(rt.checker.targets) == [("127.0.0.1", 1), ("127.0.0.1", 2)]
    assert rt.checker.running is False  # started by the gateway on swap, not on build


def test_domain_nodes_are_registered_when_resolved():
    conf = schemas.with_defaults("upstream", {
        "nodes": {"localhost:1": 1, "localhost:2": 1}, "pass_host": "node",
        "checks": {"active": {}},
    })
    rt = UpstreamRuntime(conf, PoolSettings(), "u1")
    assert rt.checker is not None and rt.checker.targets == {}
    resolved = [Node("127.0.0.1", 1, 1, domain="localhost"),
                Node("127.0.0.1", 2, 1, domain="localhost")]
    rt.checker.set_nodes(resolved)
    t = rt.checker.targets[("127.0.0.1", 1)]
    assert (t.hostname, t.host_header) == ("127.0.0.1", "localhost")


def test_disabled_health_checks_start_nothing():
    async def main() -> None:
        conf = schemas.with_defaults("upstream", {
            "nodes": {"127.0.0.1:1": 1, "127.0.0.1:2": 1},
            "checks": {"active": {}, "passive": {}},
        })
        rt = UpstreamRuntime(conf, PoolSettings(), "u1")
        manager = HealthManager(enabled=False)
        manager.sync(SimpleNamespace(routes={}, upstreams={"u1": rt}))  # type: ignore[arg-type]
        assert rt.checker is not None and not rt.checker.running
        rt.checker.report_status(rt.nodes[0], 500)
        assert rt.checker.targets[("127.0.0.1", 1)].counters == [0, 0, 0, 0]
        await manager.stop()

    asyncio.run(main())


def test_sync_without_a_running_loop_defers_the_start():
    conf = schemas.with_defaults("upstream", {
        "nodes": {"127.0.0.1:1": 1, "127.0.0.1:2": 1}, "checks": {"active": {}},
    })
    rt = UpstreamRuntime(conf, PoolSettings(), "u1")
    state = SimpleNamespace(routes={}, upstreams={"u1": rt})
    manager = HealthManager()
    manager.sync(state)  # type: ignore[arg-type]
    assert rt.checker is not None and rt.checker.task is None

    async def main() -> None:
        manager.sync(state)  # type: ignore[arg-type]
        assert rt.checker is not None and rt.checker.running
        await manager.stop()
        assert rt.checker.task is not None and rt.checker.task.done()

    asyncio.run(main())


def _self_signed(tmp_path: Path) -> ssl.SSLContext:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "probe.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("probe.test")]), False)
            .sign(key, hashes.SHA256()))
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    return ctx


def test_https_probes(tmp_path: Path):
    async def main() -> None:
        seen: list[bytes] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=_self_signed(tmp_path))
        port = server.sockets[0].getsockname()[1]
        nodes = [Node("127.0.0.1", port, 1)]
        try:
            # the default verifies the certificate: an untrusted one is a TCP failure
            strict = _checker(nodes, active={"type": "https", "host": "probe.test",
                                             "unhealthy": {"tcp_failures": 1}})
            await strict._probe(strict.targets[("127.0.0.1", port)])
            assert strict.targets[("127.0.0.1", port)].counters == [0, 0, 1, 0]
            assert strict.down and not seen
            lax = _checker(nodes, active={"type": "https", "host": "probe.test",
                                          "https_verify_certificate": False,
                                          "unhealthy": {"http_failures": 1,
                                                        "http_statuses": [503]}})
            await lax._probe(lax.targets[("127.0.0.1", port)])
            assert lax.targets[("127.0.0.1", port)].status == UNHEALTHY
            assert seen and seen[0].startswith(b"GET / HTTP/1.1\r\n")
            assert b"\r\nHost: probe.test\r\n" in seen[0]
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())


def test_probe_against_a_socket_that_never_answers_is_a_timeout():
    async def main() -> None:
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # accepts (the kernel does), never answers
        port = silent.getsockname()[1]
        try:
            nodes = [Node("127.0.0.1", port, 1)]
            c = _checker(nodes, active={"timeout": 0.1, "unhealthy": {"timeouts": 2}})
            t = c.targets[("127.0.0.1", port)]
            await c._probe(t)
            assert (t.status, t.counters) == (MOSTLY_HEALTHY, [0, 0, 0, 1])
            await c._probe(t)
            assert t.status == UNHEALTHY
        finally:
            silent.close()

    asyncio.run(main())
