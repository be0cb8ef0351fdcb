"""limit-req (spec §7.12, §11 case 47): the leaky bucket (rejections, delays, nodelay, leaking
over time), keys, per-route buckets, which confs stay on the callback path, plugin reloads,
and the redis policy against a real redis-server (two gateways sharing one bucket)."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import builtin_plugins.limit_req as limit_req
from kernel.plugins.manager import PluginInfo, PluginRegistry, check_conf
from plugin_sdk import shared_counters
from plugin_sdk.testing import ConfigRejected, GatewayHarness
from tests.support.redis import RedisServer

pytestmark = pytest.mark.sixgate(plugins=["limit-req"])


@pytest.fixture(autouse=True)
def _fresh_buckets() -> None:
    shared_counters("plugin-limit-req").clear()


@pytest.fixture(scope="module")
def info() -> PluginInfo:
    found = PluginRegistry([limit_req]).get("limit-req")
    assert found is not None
    return found


def statuses(sixgate: GatewayHarness, path: str, n: int, **kw: Any) -> list[int]:
    return [sixgate.get(path, **kw).status for _ in range(n)]


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    start = time.monotonic()
    result = call()
    return result, time.monotonic() - start


# -- schema ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("conf", "message"), [
    ({"burst": 1, "key": "remote_addr"}, 'property "rate" is required'),
    ({"rate": 1, "key": "remote_addr"}, 'property "burst" is required'),
    ({"rate": 1, "burst": 1}, 'property "key" is required'),
    ({"rate": 0, "burst": 1, "key": "remote_addr"},
     'property "rate" validation failed: expected 0 to be greater than 0'),
    ({"rate": 1, "burst": -1, "key": "remote_addr"},
     'property "burst" validation failed: expected -1 to be at least 0'),
    ({"rate": 1, "burst": 1, "key": "k", "key_type": "constant"},
     'property "key_type" validation failed: matches none of the enum values'),
    ({"rate": 1, "burst": 1, "key": "k", "policy": "redis"}, "then clause did not match"),
    ({"rate": 1, "burst": 1, "key": "k", "rejected_code": 199},
     'property "rejected_code" validation failed: expected 199 to be at least 200'),
])
def test_schema_errors(info: PluginInfo, conf: dict[str, Any], message: str) -> None:
    assert check_conf(info, conf) == message


def test_admin_refuses_an_invalid_conf(sixgate: GatewayHarness) -> None:
    with pytest.raises(ConfigRejected) as err:
        sixgate.add_route("/hello", plugins={"limit-req": {"burst": 1, "key": "remote_addr"}})
    assert ('failed to check the configuration of plugin limit-req err: '
            'property "rate" is required') in str(err.value)


# -- behaviour ---------------------------------------------------------------------------------


def test_rate_4_burst_2_delays_instead_of_rejecting(sixgate: GatewayHarness) -> None:
    rid = sixgate.add_route("/hello", plugins={"limit-req": {
        "rate": 4, "burst": 2, "rejected_code": 503, "key": "remote_addr"}})
    got, took = timed(lambda: statuses(sixgate, "/hello", 4))
    assert got == [200, 200, 200, 200]
    assert took >= 0.6  # requests 2-4 each waited about 1/rate
    route = sixgate.gateway.state.routes[rid]
    assert route.direct is False and route.chain.access[0].is_async


def test_rate_0_1_burst_0_1_rejects(sixgate: GatewayHarness) -> None:
    sixgate.add_route("/hello", plugins={"limit-req": {
        "rate": 0.1, "burst": 0.1, "rejected_code": 503, "key": "remote_addr"}})
    assert statuses(sixgate, "/hello", 4) == [200, 503, 503, 503]
    assert sixgate.upstream is not None and len(sixgate.upstream.requests) == 1


def test_sync_hook_for_confs_that_never_wait(sixgate: GatewayHarness) -> None:
    nodelay = sixgate.add_route("/n", plugins={"limit-req": {
        "rate": 1, "burst": 2, "key": "remote_addr", "nodelay": True}})
    no_burst = sixgate.add_route("/z", plugins={"limit-req": {
        "rate": 1, "burst": 0, "key": "remote_addr"}})
    routes = sixgate.gateway.state.routes
    assert routes[nodelay].direct and routes[no_burst].direct
    got, took = timed(lambda: statuses(sixgate, "/n", 4))
    assert got == [200, 200, 200, 503] and took < 0.5
    assert statuses(sixgate, "/z", 2) == [200, 503]


def test_disabled_and_rejected_msg(sixgate: GatewayHarness) -> None:
    sixgate.add_route("/off", plugins={"limit-req": {
        "rate": 0.1, "burst": 0, "key": "remote_addr", "_meta": {"disable": True}}})
    assert statuses(sixgate, "/off", 3) == [200, 200, 200]
    sixgate.add_route("/msg", plugins={"limit-req": {
        "rate": 0.1, "burst": 0, "key": "remote_addr", "rejected_code": 429,
        "rejected_msg": "too many"}})
    assert sixgate.get("/msg").status == 200
    r = sixgate.get("/msg")
    assert r.status == 429 and r.json() == {"error_msg": "too many"}
    r = sixgate.get("/msg")
    assert "X-RateLimit-Limit" not in r.headers


def test_the_bucket_leaks_at_rate(sixgate: GatewayHarness) -> None:
    sixgate.add_route("/leak", plugins={"limit-req": {"rate": 10, "burst": 0,
                                                      "key": "remote_addr"}})
    assert statuses(sixgate, "/leak", 2) == [200, 503]
    time.sleep(0.15)
    assert statuses(sixgate, "/leak", 2) == [200, 503]


def test_concurrent_requests_wait_in_turn_or_are_rejected(sixgate: GatewayHarness) -> None:
    sixgate.add_route("/c", plugins={"limit-req": {"rate": 5, "burst": 2,
                                                   "key": "remote_addr"}})

    def one(_: int) -> tuple[int, float]:
        return timed(lambda: sixgate.get("/c").status)

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(one, range(6)))
    assert sorted(s for s, _ in results) == [200, 200, 200, 503, 503, 503]
    waits = sorted(t for s, t in results if s == 200)
    assert waits[-1] >= 0.35  # excess 2 at 5 r/s: 0.4 s
    assert max(t for s, t in results if s == 503) < 0.3  # rejections do not wait


def test_keys_and_per_route_buckets(sixgate: GatewayHarness) -> None:
    conf = {"rate": 0.1, "burst": 0, "key": "http_x_user"}
    sixgate.add_route("/k1", plugins={"limit-req": conf}, id="k1")
    sixgate.add_route("/k2", plugins={"limit-req": conf}, id="k2")
    assert statuses(sixgate, "/k1", 2, headers={"X-User": "a"}) == [200, 503]
    assert statuses(sixgate, "/k1", 2, headers={"X-User": "b"}) == [200, 503]
    assert statuses(sixgate, "/k1", 2) == [200, 503]  # no X-User: remote_addr
    assert statuses(sixgate, "/k2", 2, headers={"X-User": "a"}) == [200, 503]
    sixgate.add_route("/combo", plugins={"limit-req": {
        "rate": 0.1, "burst": 0, "key_type": "var_combination", "key": "$http_x_a-$http_x_b"}})
    assert statuses(sixgate, "/combo", 2, headers={"X-A": "1"}) == [200, 503]
    assert statuses(sixgate, "/combo", 1, headers={"X-A": "1", "X-B": "2"}) == [200]


def test_buckets_survive_a_plugin_reload(sixgate: GatewayHarness) -> None:
    sixgate.add_route("/r", plugins={"limit-req": {"rate": 0.1, "burst": 1,
                                                   "key": "remote_addr", "nodelay": True}})
    assert statuses(sixgate, "/r", 1) == [200]
    assert sixgate.reload_plugins().ok
    assert statuses(sixgate, "/r", 2) == [200, 503]


def test_leak_function() -> None:
    leak = limit_req._leak
    assert leak(None, 100.0, 2.0, 1.0) == ((0.0, 100.0), 0.0)
    assert leak((0.0, 100.0), 100.0, 2.0, 1.0) == ((1.0, 100.0), 1.0)
    assert leak((1.0, 100.0), 100.0, 2.0, 1.0) == (None, -1.0)  # 2 > burst 1
    assert leak((1.0, 100.0), 100.5, 2.0, 1.0) == ((1.0, 100.5), 1.0)
    assert leak((1.0, 100.0), 110.0, 2.0, 1.0) == ((0.0, 110.0), 0.0)


# -- redis -----------------------------------------------------------------------------------


def redis_conf(server: RedisServer, **extra: Any) -> dict[str, Any]:
    return {"rate": 0.1, "burst": 0.1, "key": "remote_addr", "policy": "redis",
            "redis_host": "127.0.0.1", "redis_port": server.port, **extra}


def test_redis_bucket(sixgate: GatewayHarness, redis_server: RedisServer) -> None:
    redis_server.flush()
    sixgate.add_route("/r", plugins={"limit-req": redis_conf(redis_server)}, id="r")
    assert statuses(sixgate, "/r", 4) == [200, 503, 503, 503]
    keys = redis_server.keys("plugin-limit-req*")
    assert len(keys) == 1 and keys[0].startswith("plugin-limit-req:route:r:")
    with redis_server.client() as c:
        state = c.hgetall(keys[0])
        assert float(state["excess"]) == 0 and float(state["last"]) > 1e9
        assert 0 < c.pttl(keys[0]) <= 12000
    assert shared_counters("plugin-limit-req").get(keys[0]) is None


def test_redis_delays(sixgate: GatewayHarness, redis_server: RedisServer) -> None:
    redis_server.flush()
    sixgate.add_route("/d", plugins={"limit-req": redis_conf(redis_server, rate=4, burst=2)})
    got, took = timed(lambda: statuses(sixgate, "/d", 4))
    assert got == [200] * 4 and took >= 0.6


def test_two_gateways_share_one_redis_bucket(
    sixgate_factory: Callable[..., GatewayHarness], redis_server: RedisServer,
) -> None:
    redis_server.flush()
    a = sixgate_factory(plugins=["limit-req"])
    b = sixgate_factory(plugins=["limit-req"])
    for gw in (a, b):
        gw.add_route("/s", plugins={"limit-req": redis_conf(redis_server, burst=1,
                                                            nodelay=True)}, id="s")
    assert [a.get("/s").status, b.get("/s").status, a.get("/s").status,
            b.get("/s").status] == [200, 200, 503, 503]


def test_redis_errors_500_unless_degradation(sixgate: GatewayHarness) -> None:
    dead = RedisServer()
    conf = {"rate": 1, "burst": 0, "key": "remote_addr", "policy": "redis",
            "redis_host": "127.0.0.1", "redis_port": dead.port, "redis_timeout": 200}
    sixgate.add_route("/down", plugins={"limit-req": conf}, id="down")
    r = sixgate.get("/down")
    assert r.status == 500 and "500 Internal Server Error" in r.text
    assert "failed to limit req" in sixgate.logs()
    sixgate.add_route("/down", plugins={"limit-req": {**conf, "allow_degradation": True}},
                      id="down")
    assert statuses(sixgate, "/down", 2) == [200, 200]
    dead.cleanup()
