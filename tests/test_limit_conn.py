"""limit-conn (spec §7.13): concurrent requests per key against a slow upstream (rejections,
burst delays, the count going back down in the log phase, also when the client went away),
rules, which confs stay on the callback path, the adaptive delay, and the redis policy against
a real redis-server (two gateways sharing one count)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import builtin_plugins.limit_conn as limit_conn
from kernel.plugins.manager import PluginInfo, PluginRegistry, check_conf
from plugin_sdk import shared_counters
from plugin_sdk.testing import ConfigRejected, GatewayHarness
from tests.support.gateway import wait_until
from tests.support.redis import RedisServer

pytestmark = pytest.mark.sixgate(plugins=["limit-conn"])

SLOW = 0.6  # seconds the upstream takes on /slow


@pytest.fixture(autouse=True)
def _fresh_counts() -> None:
    shared_counters("plugin-limit-conn").clear()


@pytest.fixture(scope="module")
def info() -> PluginInfo:
    found = PluginRegistry([limit_conn]).get("limit-conn")
    assert found is not None
    return found


def slow_route(sixgate: GatewayHarness, conf: dict[str, Any], **kw: Any) -> str:
    assert sixgate.upstream is not None
    sixgate.upstream.respond(200, "slow", path="/slow", delay=SLOW)
    return sixgate.add_route("/slow", plugins={"limit-conn": conf}, **kw)


def together(gets: list[Callable[[], Any]]) -> list[tuple[Any, float]]:
    """Run the calls at once; each one's result and how long it took."""
    def one(call: Callable[[], Any]) -> tuple[Any, float]:
        start = time.monotonic()
        result = call()
        return result, time.monotonic() - start

    with ThreadPoolExecutor(len(gets)) as pool:
        futures = []
        for call in gets:
            futures.append(pool.submit(one, call))
            time.sleep(0.05)  # in this order
        return [f.result() for f in futures]


def conf(**extra: Any) -> dict[str, Any]:
    return {"conn": 1, "burst": 0, "default_conn_delay": 0.1, "key": "remote_addr", **extra}


# -- schema ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("bad", "message"), [
    ({"conn": 1, "burst": 0, "key": "remote_addr"},
     "value should match only one schema, but matches none"),
    ({"conn": 0, "burst": 0, "default_conn_delay": 0.1, "key": "remote_addr"},
     'property "conn" validation failed: value should match only one schema, but matches none'),
    ({"conn": 1, "burst": -1, "default_conn_delay": 0.1, "key": "remote_addr"},
     'property "burst" validation failed: value should match only one schema, but matches '
     'none'),
    ({"conn": 1, "burst": 0, "default_conn_delay": 0, "key": "remote_addr"},
     'property "default_conn_delay" validation failed: expected 0 to be greater than 0'),
    ({**conf(), "policy": "redis"}, "then clause did not match"),
])
def test_schema_errors(info: PluginInfo, bad: dict[str, Any], message: str) -> None:
    assert check_conf(info, bad) == message


def test_valid_confs(info: PluginInfo) -> None:
    for good in (conf(), conf(conn="$http_x_conn", burst="1"),
                 {"default_conn_delay": 1, "rules": [{"conn": 1, "burst": 0, "key": "$uri"}]},
                 conf(policy="redis", redis_host="127.0.0.1")):
        assert check_conf(info, good) is None, good


def test_admin_refuses_an_invalid_conf(sixgate: GatewayHarness) -> None:
    with pytest.raises(ConfigRejected) as err:
        sixgate.add_route("/x", plugins={"limit-conn": {"conn": 1}})
    assert ("failed to check the configuration of plugin limit-conn err: value should match "
            "only one schema, but matches none") in str(err.value)


# -- behaviour ---------------------------------------------------------------------------------


def test_one_at_a_time_the_second_is_rejected_and_the_count_goes_back(
    sixgate: GatewayHarness,
) -> None:
    rid = slow_route(sixgate, conf(rejected_code=429, rejected_msg="busy"))
    assert sixgate.gateway.state.routes[rid].direct  # burst 0: plain hooks
    got = together([lambda: sixgate.get("/slow"), lambda: sixgate.get("/slow")])
    assert [r.status for r, _ in got] == [200, 429]
    assert got[1][0].json() == {"error_msg": "busy"} and got[1][1] < SLOW / 2
    # both finished: the count is back at zero, one request at a time passes again
    assert [r.status for r, _ in together([lambda: sixgate.get("/slow")] * 2)] == [200, 429]


def test_burst_requests_wait_and_the_rest_are_rejected(sixgate: GatewayHarness) -> None:
    rid = slow_route(sixgate, conf(burst=1, default_conn_delay=0.3,
                                   only_use_default_delay=True))
    assert sixgate.gateway.state.routes[rid].chain.access[0].is_async  # may delay
    got = together([lambda: sixgate.get("/slow")] * 3)
    assert [r.status for r, _ in got] == [200, 200, 503]
    assert got[1][1] >= SLOW + 0.25  # waited 0.3 s, then the upstream's time
    assert got[2][1] < SLOW / 2


def test_different_keys_do_not_share_a_count(sixgate: GatewayHarness) -> None:
    slow_route(sixgate, conf(key="http_x_user"))
    got = together([lambda: sixgate.get("/slow", headers={"X-User": "a"}),
                    lambda: sixgate.get("/slow", headers={"X-User": "b"}),
                    lambda: sixgate.get("/slow", headers={"X-User": "a"})])
    assert [r.status for r, _ in got] == [200, 200, 503]


def test_a_client_that_goes_away_gives_its_slot_back(sixgate: GatewayHarness) -> None:
    slow_route(sixgate, conf())
    with socket.create_connection(("127.0.0.1", sixgate.port)) as s:
        s.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.1)
    # the request goes on upstream; while it runs, the slot is taken
    assert sixgate.get("/slow").status == 503
    wait_until(lambda: sixgate.get("/slow").status == 200, timeout=5, interval=0.2)


def test_a_request_that_another_plugin_ends_gives_its_slot_back(
    sixgate_factory: Callable[..., GatewayHarness],
) -> None:
    gw = sixgate_factory(plugins=["limit-conn", "fault-injection"])
    gw.add_route("/abort", plugins={
        "limit-conn": conf(),
        "fault-injection": {"abort": {"http_status": 403, "vars": [[["arg_deny", "==", "1"]]]}},
    })
    assert [gw.get("/abort?deny=1").status for _ in range(3)] == [403, 403, 403]
    assert gw.get("/abort").status == 200


def test_rules_and_variable_limits(sixgate: GatewayHarness) -> None:
    slow_route(sixgate, id="rules", conf={"default_conn_delay": 0.1, "rules": [
        {"conn": 2, "burst": 0, "key": "$remote_addr"},
        {"conn": 1, "burst": 0, "key": "$http_x_user"},
    ]})
    got = together([lambda: sixgate.get("/slow", headers={"X-User": "a"}),
                    lambda: sixgate.get("/slow", headers={"X-User": "a"}),
                    lambda: sixgate.get("/slow")])
    assert [r.status for r, _ in got] == [200, 503, 200]
    slow_route(sixgate, conf(conn="$http_x_conn"), id="rules")
    got = together([lambda: sixgate.get("/slow", headers={"X-Conn": "2"})] * 3)
    assert [r.status for r, _ in got] == [200, 200, 503]
    r = sixgate.get("/slow")  # no X-Conn: not a number
    assert r.status == 500


def test_unit_delay_follows_the_latency(info: PluginInfo) -> None:
    from kernel.plugins.manager import prepare_conf

    def compiled(**extra: Any) -> Any:
        filled, err = prepare_conf(info, conf(**extra))
        assert err is None and filled is not None
        return limit_conn._compile(filled)

    c = compiled(burst=3, default_conn_delay=1)
    rule = c.rules[0]
    assert limit_conn._delay(c, rule, 1, 1) == 0
    assert limit_conn._delay(c, rule, 3, 1) == 2.0  # floor((3 - 1) / 1) * 1
    c.unit_delay[rule.tag] = 0.5
    assert limit_conn._delay(c, rule, 3, 1) == 1.0
    fixed = compiled(burst=3, default_conn_delay=1, only_use_default_delay=True)
    fixed.unit_delay[rule.tag] = 0.5
    assert limit_conn._delay(fixed, fixed.rules[0], 3, 1) == 2.0


def test_the_delay_adapts_through_the_log_phase(sixgate: GatewayHarness) -> None:
    slow_route(sixgate, conf(burst=1, default_conn_delay=2))
    assert sixgate.get("/slow").status == 200
    # the log phase runs once the response is sent: (latency + 2) / 2
    unit = wait_until(lambda: next((c.unit_delay[""] for c in _compiled_confs()
                                    if "" in c.unit_delay), None), timeout=3)
    assert (SLOW + 2) / 2 - 0.01 < unit < (SLOW + 2) / 2 + 0.2


def _compiled_confs() -> list[Any]:
    return [entry[1] for entry in list(limit_conn._compiled._entries.values())
            if entry[1].default_delay == 2]


def test_counts_survive_a_plugin_reload(sixgate: GatewayHarness) -> None:
    slow_route(sixgate, conf())

    def reload_then_get() -> Any:
        time.sleep(0.1)
        assert sixgate.reload_plugins().ok
        return sixgate.get("/slow")

    got = together([lambda: sixgate.get("/slow"), reload_then_get])
    assert [r.status for r, _ in got] == [200, 503]
    assert sixgate.get("/slow").status == 200


# -- redis -----------------------------------------------------------------------------------


def redis_conf(server: RedisServer, **extra: Any) -> dict[str, Any]:
    return conf(policy="redis", redis_host="127.0.0.1", redis_port=server.port, **extra)


def test_redis_count(sixgate: GatewayHarness, redis_server: RedisServer) -> None:
    redis_server.flush()
    rid = slow_route(sixgate, redis_conf(redis_server), id="rc")
    chain = sixgate.gateway.state.routes[rid].chain
    assert [s.func.__name__ for s in chain.access + chain.log] == ["access_redis", "log_redis"]

    def look() -> list[Any]:
        time.sleep(SLOW / 3)
        with redis_server.client() as c:
            keys = sorted(c.keys("plugin-limit-conn*"))
            return [keys, [c.zcard(k) for k in keys], [c.ttl(k) for k in keys]]

    got = together([lambda: sixgate.get("/slow"), lambda: sixgate.get("/slow"), look])
    assert [r.status for r, _ in got[:2]] == [200, 503]
    keys, members, ttls = got[2][0]
    assert len(keys) == 1 and keys[0].startswith("plugin-limit-conn:route:rc:")
    assert members == [1] and 3500 < ttls[0] <= 3600  # the request in flight
    assert redis_server.keys("plugin-limit-conn*") == []  # it left: the set is gone
    assert sixgate.get("/slow").status == 200


def test_two_gateways_share_one_redis_count(
    sixgate_factory: Callable[..., GatewayHarness], redis_server: RedisServer,
) -> None:
    redis_server.flush()
    a = sixgate_factory(plugins=["limit-conn"])
    b = sixgate_factory(plugins=["limit-conn"])
    for gw in (a, b):
        slow_route(gw, redis_conf(redis_server, conn=2), id="shared")
    got = together([lambda: a.get("/slow"), lambda: b.get("/slow"), lambda: a.get("/slow"),
                    lambda: b.get("/slow")])
    assert [r.status for r, _ in got] == [200, 200, 503, 503]


def test_redis_errors_500_unless_degradation(sixgate: GatewayHarness) -> None:
    dead = RedisServer()
    bad = conf(policy="redis", redis_host="127.0.0.1", redis_port=dead.port, redis_timeout=200)
    sixgate.add_route("/down", plugins={"limit-conn": bad}, id="down")
    assert sixgate.get("/down").status == 500
    assert "failed to limit conn" in sixgate.logs()
    sixgate.add_route("/down", plugins={"limit-conn": {**bad, "allow_degradation": True}},
                      id="down")
    assert [sixgate.get("/down").status for _ in range(2)] == [200, 200]
    dead.cleanup()
