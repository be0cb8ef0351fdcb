"""limit-count (spec §7.11, §11 cases 33 and 46): schema and messages, fixed and sliding
windows, keys, per-route and per-revision counters, groups, rules, quota headers, the
callback path, plugin reloads; the redis and redis-cluster policies against a real
redis-server (two gateways sharing one Redis); and ``sixgate start`` with two workers counting
into one node-wide counter."""

from __future__ import annotations

import os
import signal
import textwrap
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import builtin_plugins.limit_count as limit_count
from kernel.plugins.manager import PluginInfo, PluginRegistry, check_conf
from plugin_sdk import shared_counters
from plugin_sdk.testing import ConfigRejected, GatewayHarness
from tests.support.gateway import GatewayProcess, wait_until
from tests.support.redis import RedisServer
from tests.support.upstream import Upstream

pytestmark = pytest.mark.sixgate(plugins=["limit-count", "fault-injection"])

ERR = "failed to check the configuration of plugin limit-count err: "


@pytest.fixture(autouse=True)
def _fresh_counters() -> None:
    # in-process gateways of one pytest process share the node's counters
    shared_counters("plugin-limit-count").clear()


@pytest.fixture(scope="module")
def info() -> PluginInfo:
    found = PluginRegistry([limit_count]).get("limit-count")
    assert found is not None
    return found


def statuses(sixgate: GatewayHarness, path: str, n: int, **kw: Any) -> list[int]:
    return [sixgate.get(path, **kw).status for _ in range(n)]


# -- schema ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("conf", "message"), [
    ({"time_window": 60}, "value should match only one schema, but matches none"),
    ({"count": -1, "time_window": 60},
     'property "count" validation failed: value should match only one schema, but matches none'),
    ({"count": 2, "time_window": 60, "rules": [{"count": 1, "time_window": 1, "key": "$uri"}]},
     "count/time_window and rules cannot be specified at the same time"),
    ({"count": 2, "time_window": 60, "rejected_code": 600},
     'property "rejected_code" validation failed: expected 600 to be at most 599'),
    ({"count": 2, "time_window": 60, "key_type": "cookie"},
     'property "key_type" validation failed: matches none of the enum values'),
    ({"count": 2, "time_window": 60, "rejected_msg": ""},
     'property "rejected_msg" validation failed: string too short, expected at least 1, got 0'),
    ({"count": 2, "time_window": 60, "policy": "redis"}, "then clause did not match"),
    ({"count": 2, "time_window": 60, "policy": "redis-sentinel"},
     "policy redis-sentinel is not supported by sixgate (use redis or redis-cluster)"),
    ({"count": 2, "time_window": 60, "policy": "redis-cluster", "redis_cluster_name": "c",
      "redis_cluster_nodes": ["nohostport"]},
     "invalid redis_cluster_nodes entry 'nohostport': expected host:port"),
])
def test_schema_errors(info: PluginInfo, conf: dict[str, Any], message: str) -> None:
    assert check_conf(info, conf) == message


def test_valid_confs_and_defaults(info: PluginInfo) -> None:
    for conf in ({"count": 1, "time_window": 1}, {"count": "$http_x_n", "time_window": "60"},
                 {"rules": [{"count": 1, "time_window": 1, "key": "$http_x"}]},
                 {"count": 1, "time_window": 1, "policy": "redis", "redis_host": "127.0.0.1"},
                 {"count": 1, "time_window": 1, "window_type": "sliding"}):
        assert check_conf(info, conf) is None, conf
    from kernel.plugins.manager import prepare_conf

    filled, _ = prepare_conf(info, {"count": 1, "time_window": 1, "policy": "redis",
                                    "redis_host": "r1"})
    assert filled is not None
    assert {k: filled[k] for k in ("window_type", "key", "key_type", "rejected_code",
                                   "allow_degradation", "show_limit_quota_header",
                                   "redis_port", "redis_database", "redis_timeout")} == {
        "window_type": "fixed", "key": "remote_addr", "key_type": "var", "rejected_code": 503,
        "allow_degradation": False, "show_limit_quota_header": True, "redis_port": 6379,
        "redis_database": 0, "redis_timeout": 1000}


def test_group_confs_must_match(info: PluginInfo) -> None:
    group = f"g-schema-{os.getpid()}"
    base = {"count": 2, "time_window": 60, "group": group}
    assert check_conf(info, base) is None
    assert check_conf(info, dict(base)) is None
    assert check_conf(info, {**base, "count": 3}) == "group conf mismatched"


def test_admin_missing_count_is_refused(sixgate: GatewayHarness) -> None:
    with pytest.raises(ConfigRejected) as err:
        sixgate.add_route("/hello", plugins={"limit-count": {"time_window": 60}})
    assert ERR + "value should match only one schema, but matches none" in str(err.value)


# -- behaviour through a gateway -----------------------------------------------------------------


def test_count_two_then_503_with_quota_headers(sixgate: GatewayHarness) -> None:
    sixgate.add_route("/hello", plugins={"limit-count": {
        "count": 2, "time_window": 60, "rejected_code": 503, "key": "remote_addr"}})
    rs = [sixgate.get("/hello") for _ in range(4)]
    assert [r.status for r in rs] == [200, 200, 503, 503]
    assert [r.headers.get("X-RateLimit-Limit") for r in rs] == ["2"] * 4
    assert [r.headers.get("X-RateLimit-Remaining") for r in rs] == ["1", "0", "0", "0"]
    assert all(50 < int(r.headers["X-RateLimit-Reset"]) <= 60 for r in rs)
    assert "503 Service Temporarily Unavailable" in rs[2].text  # nginx's page
    assert sixgate.upstream is not None and len(sixgate.upstream.requests) == 2


@pytest.mark.sixgate(plugins=["limit-count", "response-rewrite", "prometheus"])
def test_quota_headers_replace_the_upstreams_and_header_filters_see_them(
    sixgate: GatewayHarness,
) -> None:
    """The headers are set from ``access`` (no header_filter): on a route forwarding the
    upstream's head as is they replace the upstream's own; a later header filter
    (response-rewrite) sees them in ``ctx.response.headers``; a log hook reads them."""
    assert sixgate.upstream is not None
    sixgate.upstream.respond(200, "ok", headers={"X-RateLimit-Limit": "99", "X-Other": "1"})
    rid = sixgate.add_route("/raw", plugins={"limit-count": {"count": 2, "time_window": 60},
                                             "prometheus": {}})
    assert sixgate.gateway.state.routes[rid].chain.header_filter == ()
    r = sixgate.get("/raw")
    assert r.status == 200 and r.headers["X-Other"] == "1"
    assert r.headers.getall("X-RateLimit-Limit") == ["2"]
    assert r.headers["X-RateLimit-Remaining"] == "1"
    sixgate.add_route("/rw", plugins={
        "limit-count": {"count": 2, "time_window": 60},
        "response-rewrite": {"headers": {"remove": ["X-RateLimit-Reset"]}}})
    r = sixgate.get("/rw")
    assert r.headers.getall("X-RateLimit-Limit") == ["2"]
    assert "X-RateLimit-Reset" not in r.headers and "X-RateLimit-Remaining" in r.headers


def test_count_three_rejected_msg_and_code(sixgate: GatewayHarness) -> None:
    sixgate.add_route("/hello", plugins={"limit-count": {
        "count": 3, "time_window": 60, "rejected_code": 429, "rejected_msg": "slow down"}})
    rs = [sixgate.get("/hello") for _ in range(4)]
    assert [r.status for r in rs] == [200, 200, 200, 429]
    assert rs[3].json() == {"error_msg": "slow down"}


def test_a_route_is_served_on_the_callback_path_unless_the_conf_uses_redis(
    sixgate: GatewayHarness,
) -> None:
    local = sixgate.add_route("/a", plugins={"limit-count": {"count": 5, "time_window": 60}})
    redis = sixgate.add_route("/b", plugins={"limit-count": {
        "count": 5, "time_window": 60, "policy": "redis", "redis_host": "127.0.0.1"}})
    routes = sixgate.gateway.state.routes
    assert routes[local].direct is True
    assert routes[redis].direct is False
    chain = routes[redis].chain
    assert [s.func.__name__ for s in chain.access] == ["access_redis"]
    assert [s.is_async for s in chain.access] == [True]


def test_window_ends_and_counts_start_again(sixgate: GatewayHarness) -> None:
    sixgate.add_route("/w", plugins={"limit-count": {"count": 1, "time_window": 1}})
    assert statuses(sixgate, "/w", 2) == [200, 503]
    wait_until(lambda: sixgate.get("/w").status == 200, timeout=3, interval=0.1)


def test_keys_var_var_combination_constant_and_fallback(sixgate: GatewayHarness) -> None:
    sixgate.add_route("/var", plugins={"limit-count": {
        "count": 1, "time_window": 60, "key": "http_x_user"}})
    assert statuses(sixgate, "/var", 2, headers={"X-User": "a"}) == [200, 503]
    assert statuses(sixgate, "/var", 2, headers={"X-User": "b"}) == [200, 503]
    # no X-User: the client address is the key (one more counter)
    assert statuses(sixgate, "/var", 2) == [200, 503]

    sixgate.add_route("/combo", plugins={"limit-count": {
        "count": 1, "time_window": 60, "key_type": "var_combination",
        "key": "$http_x_a $http_x_b"}})
    assert statuses(sixgate, "/combo", 2, headers={"X-A": "1", "X-B": "2"}) == [200, 503]
    assert statuses(sixgate, "/combo", 1, headers={"X-A": "1", "X-B": "3"}) == [200]
    assert statuses(sixgate, "/combo", 2) == [200, 503]  # nothing resolved: remote_addr

    sixgate.add_route("/const", plugins={"limit-count": {
        "count": 2, "time_window": 60, "key_type": "constant", "key": "everyone"}})
    assert sixgate.get("/const", headers={"X-User": "a"}).status == 200
    assert sixgate.get("/const", headers={"X-User": "b"}).status == 200
    assert sixgate.get("/const", headers={"X-User": "c"}).status == 503


def test_each_route_and_each_conf_revision_count_separately(sixgate: GatewayHarness) -> None:
    conf = {"count": 1, "time_window": 60}
    sixgate.add_route("/one", plugins={"limit-count": conf}, id="one")
    sixgate.add_route("/two", plugins={"limit-count": conf}, id="two")
    assert statuses(sixgate, "/one", 2) == [200, 503]
    assert statuses(sixgate, "/two", 2) == [200, 503]
    # an unrelated change (another route) keeps the counters
    sixgate.add_route("/three", id="three")
    assert statuses(sixgate, "/one", 1) == [503]
    # a new revision of the conf counts afresh
    sixgate.add_route("/one", plugins={"limit-count": {**conf, "count": 2}}, id="one")
    assert statuses(sixgate, "/one", 3) == [200, 200, 503]


def test_service_conf_counts_per_route_and_disable(sixgate: GatewayHarness) -> None:
    """Spec §11 case 33: a service's limit-count applies to its routes (headers included);
    ``_meta.disable`` on the route turns it off."""
    doc = {
        "services": [{"id": "1", "upstream": sixgate.upstream.node,  # type: ignore[union-attr]
                      "plugins": {"limit-count": {"count": 2, "time_window": 60}}}],
        "routes": [
            {"id": "a", "uri": "/a", "service_id": "1"},
            {"id": "b", "uri": "/b", "service_id": "1", "plugins": {}},
            {"id": "c", "uri": "/c", "service_id": "1", "plugins": {"limit-count": {
                "count": 2, "time_window": 60, "_meta": {"disable": True}}}},
        ],
    }
    sixgate.apply(doc)
    r = sixgate.get("/a")
    assert r.status == 200
    assert (r.headers["X-RateLimit-Limit"], r.headers["X-RateLimit-Remaining"]) == ("2", "1")
    assert statuses(sixgate, "/a", 2) == [200, 503]
    assert statuses(sixgate, "/b", 3) == [200, 200, 503]  # its own counter
    rs = [sixgate.get("/c") for _ in range(3)]
    assert [r.status for r in rs] == [200] * 3
    assert "X-RateLimit-Limit" not in rs[0].headers


def test_a_global_rule_counts_across_routes(sixgate: GatewayHarness) -> None:
    sixgate.add_route("/x")
    sixgate.add_route("/y")
    sixgate.add_global_rule({"limit-count": {"count": 3, "time_window": 60}})
    assert statuses(sixgate, "/x", 2) + statuses(sixgate, "/y", 2) == [200, 200, 200, 503]


def test_group_shares_one_counter_between_routes(sixgate: GatewayHarness) -> None:
    conf = {"count": 3, "time_window": 60, "group": f"g-routes-{os.getpid()}"}
    sixgate.add_route("/g1", plugins={"limit-count": conf})
    sixgate.add_route("/g2", plugins={"limit-count": dict(conf)})
    assert statuses(sixgate, "/g1", 2) + statuses(sixgate, "/g2", 2) == [200, 200, 200, 503]
    with pytest.raises(ConfigRejected) as err:
        sixgate.add_route("/g3", plugins={"limit-count": {**conf, "count": 4}})
    assert ERR + "group conf mismatched" in str(err.value)


def test_quota_headers_off_and_names_from_plugin_metadata(sixgate: GatewayHarness) -> None:
    sixgate.add_route("/off", plugins={"limit-count": {
        "count": 1, "time_window": 60, "show_limit_quota_header": False}})
    rs = [sixgate.get("/off") for _ in range(2)]
    assert [r.status for r in rs] == [200, 503]
    assert not any("RateLimit" in name for r in rs for name, _ in r.headers.items())

    sixgate.set_plugin_metadata("limit-count", {"limit_header": "X-Limit-Quota",
                                                "remaining_header": "X-Limit-Left"})
    sixgate.add_route("/meta", plugins={"limit-count": {"count": 2, "time_window": 30}})
    r = sixgate.get("/meta")
    assert (r.headers["X-Limit-Quota"], r.headers["X-Limit-Left"]) == ("2", "1")
    assert r.headers["X-RateLimit-Reset"] == "30" and "X-RateLimit-Limit" not in r.headers


def test_rules_each_with_its_own_limit_and_headers(sixgate: GatewayHarness) -> None:
    sixgate.add_route("/rules", plugins={"limit-count": {"rules": [
        {"count": 3, "time_window": 60, "key": "$http_x_user"},
        {"count": 1, "time_window": 60, "key": "$http_x_vip", "header_prefix": "vip"},
    ]}})
    r = sixgate.get("/rules", headers={"X-User": "u"})
    assert r.status == 200
    assert (r.headers["X-1-RateLimit-Limit"], r.headers["X-1-RateLimit-Remaining"]) == ("3", "2")
    assert "X-vip-RateLimit-Limit" not in r.headers  # no X-Vip: the rule does not apply
    r = sixgate.get("/rules", headers={"X-User": "u", "X-Vip": "v"})
    assert r.status == 200 and r.headers["X-vip-RateLimit-Remaining"] == "0"
    r = sixgate.get("/rules", headers={"X-User": "u", "X-Vip": "v"})
    assert r.status == 503 and r.headers["X-vip-RateLimit-Remaining"] == "0"
    assert sixgate.get("/rules", headers={"X-User": "u"}).status == 503  # rule 1: 3 used
    assert sixgate.get("/rules").status == 200  # no rule applies


def test_count_and_window_from_variables_and_degradation(sixgate: GatewayHarness) -> None:
    sixgate.add_route("/dyn", plugins={"limit-count": {
        "count": "$http_x_limit", "time_window": "60", "key": "http_x_user"}}, id="dyn")
    h = {"X-Limit": "2", "X-User": "dyn"}
    rs = [sixgate.get("/dyn", headers=h) for _ in range(3)]
    assert [r.status for r in rs] == [200, 200, 503]
    assert rs[0].headers["X-RateLimit-Limit"] == "2"
    r = sixgate.get("/dyn", headers={"X-User": "other"})  # no X-Limit: not a number
    assert r.status == 500 and r.json() == {"error_msg": "failed to limit count"}
    assert "failed to limit count" in sixgate.logs()
    sixgate.add_route("/dyn", plugins={"limit-count": {
        "count": "$http_x_limit", "time_window": 60, "allow_degradation": True}}, id="dyn")
    assert statuses(sixgate, "/dyn", 2) == [200, 200]


def test_sliding_window_weighs_the_previous_window(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(limit_count, "_clock", lambda: now[0])
    count = limit_count._count_local

    def run(n: int) -> list[bool]:
        return [count("slide-test", 4, 10, True)[0] >= 0 for _ in range(n)]

    assert run(5) == [True] * 4 + [False]  # window [1000, 1010): 4 of 4
    now[0] = 1012.5  # a quarter into the next: 75% of 4 = 3 still count
    assert run(2) == [True, False]
    now[0] = 1017.5  # three quarters in: 25% of 4 = 1, plus the 1 of this window
    assert run(3) == [True, True, False]
    remaining, reset = count("slide-other", 4, 10, True)
    assert (remaining, reset) == (3, pytest.approx(2.5))


def test_sliding_window_through_a_gateway(sixgate: GatewayHarness) -> None:
    sixgate.add_route("/slide", plugins={"limit-count": {
        "count": 2, "time_window": 60, "window_type": "sliding"}})
    rs = [sixgate.get("/slide") for _ in range(3)]
    assert [r.status for r in rs] == [200, 200, 503]
    assert [r.headers["X-RateLimit-Remaining"] for r in rs] == ["1", "0", "0"]


def test_counts_survive_a_plugin_reload(sixgate: GatewayHarness) -> None:
    sixgate.add_route("/reload", plugins={"limit-count": {"count": 3, "time_window": 60}})
    assert statuses(sixgate, "/reload", 2) == [200, 200]
    before = sixgate.gateway.plugin_status.last.generation
    result = sixgate.reload_plugins()  # PUT /apisix/admin/plugins/reload
    assert result.ok and result.generation > before, result.errors
    assert statuses(sixgate, "/reload", 2) == [200, 503]


@pytest.mark.sixgate(plugins=["fault-injection"])
def test_counts_survive_an_edit_of_the_plugin_source(sixgate: GatewayHarness) -> None:
    """The plugin module imported again (its source edited): the counters stay. (A copy
    under another name: the built-in's own file is not edited by tests.)"""
    source = Path(limit_count.__file__).read_text()
    source = source.replace('name = "limit-count"', 'name = "limit-count-copy"')
    assert sixgate.write_plugin("limit_count_copy.py", source).ok
    sixgate.add_route("/edit", plugins={"limit-count-copy": {"count": 3, "time_window": 60}})
    assert statuses(sixgate, "/edit", 2) == [200, 200]
    old = sixgate.gateway.registry.get("limit-count-copy").module
    result = sixgate.edit_plugin("limit_count_copy.py",
                                 replace=('version = "0.1"', 'version = "0.2"'))
    assert result.ok, result.errors
    new = sixgate.gateway.registry.get("limit-count-copy").module
    assert new is not old and new.version == "0.2"
    assert statuses(sixgate, "/edit", 2) == [200, 503]


# -- redis -----------------------------------------------------------------------------------


def redis_conf(server: RedisServer, **extra: Any) -> dict[str, Any]:
    return {"count": 2, "time_window": 60, "policy": "redis", "redis_host": "127.0.0.1",
            "redis_port": server.port, **extra}


def test_redis_policy_counts_in_redis(sixgate: GatewayHarness, redis_server: RedisServer,
                                      ) -> None:
    redis_server.flush()
    sixgate.add_route("/r", plugins={"limit-count": redis_conf(redis_server)}, id="r")
    probe = redis_server.client()
    connections = int(probe.info("stats")["total_connections_received"])
    evalsha = probe.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
    rs = [sixgate.get("/r") for _ in range(4)]
    # one client, its connection reused, the script run by EVALSHA
    assert int(probe.info("stats")["total_connections_received"]) - connections == 1
    stats = probe.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] - evalsha >= 4 and "cmdstat_eval" not in stats
    keys = sorted(probe.keys("plugin-limit-count*"))
    assert len(keys) == 1 and keys[0].startswith("plugin-limit-count:route:r:")
    assert keys[0].endswith(":127.0.0.1")
    assert 55 <= probe.ttl(keys[0]) <= 60
    probe.close()
    assert [r.status for r in rs] == [200, 200, 503, 503]
    assert [r.headers["X-RateLimit-Remaining"] for r in rs] == ["1", "0", "0", "0"]
    assert rs[0].headers["X-RateLimit-Reset"] == "60"
    assert shared_counters("plugin-limit-count").get(keys[0]) is None


def test_redis_sliding_window(sixgate: GatewayHarness, redis_server: RedisServer) -> None:
    redis_server.flush()
    sixgate.add_route("/rs", plugins={"limit-count": redis_conf(
        redis_server, window_type="sliding", count=3)})
    rs = [sixgate.get("/rs") for _ in range(4)]
    assert [r.status for r in rs] == [200, 200, 200, 503]
    assert [r.headers["X-RateLimit-Remaining"] for r in rs] == ["2", "1", "0", "0"]


def test_two_gateways_sharing_one_redis_share_the_limit(
    sixgate_factory: Callable[..., GatewayHarness], redis_server: RedisServer,
) -> None:
    redis_server.flush()
    a = sixgate_factory(plugins=["limit-count"])
    b = sixgate_factory(plugins=["limit-count"])
    conf = redis_conf(redis_server, count=5)
    for gw in (a, b):
        gw.add_route("/shared", plugins={"limit-count": conf}, id="shared")
    got = [gw.get("/shared").status for _ in range(4) for gw in (a, b)]
    assert got.count(200) == 5 and got.count(503) == 3
    assert got[:5] == [200] * 5


def test_redis_errors_500_unless_degradation(sixgate: GatewayHarness) -> None:
    dead = RedisServer()  # a free port with nothing listening
    conf = {"count": 1, "time_window": 60, "policy": "redis", "redis_host": "127.0.0.1",
            "redis_port": dead.port, "redis_timeout": 200}
    sixgate.add_route("/down", plugins={"limit-count": conf}, id="down")
    r = sixgate.get("/down")
    assert r.status == 500 and r.json() == {"error_msg": "failed to limit count"}
    assert "failed to limit count" in sixgate.logs()
    sixgate.add_route("/down", plugins={"limit-count": {**conf, "allow_degradation": True}},
                      id="down")
    assert statuses(sixgate, "/down", 3) == [200, 200, 200]
    dead.cleanup()


def test_redis_password(sixgate: GatewayHarness) -> None:
    server = RedisServer(password="s3cret").start()
    try:
        conf = redis_conf(server, count=1)
        sixgate.add_route("/pw", plugins={"limit-count": {**conf, "redis_password": "s3cret"}},
                          id="pw")
        assert statuses(sixgate, "/pw", 2) == [200, 503]
        sixgate.add_route("/pw", plugins={"limit-count": {**conf, "redis_password": "wrong"}},
                          id="pw")
        assert sixgate.get("/pw").status == 500
    finally:
        server.cleanup()


def test_redis_cluster_policy_counts(sixgate: GatewayHarness) -> None:
    server = RedisServer(cluster=True).start()
    try:
        sixgate.add_route("/cl", plugins={"limit-count": {
            "count": 2, "time_window": 60, "policy": "redis-cluster",
            "redis_cluster_nodes": [server.node], "redis_cluster_name": "test"}})
        assert statuses(sixgate, "/cl", 3) == [200, 200, 503]
        assert len(server.keys("plugin-limit-count*")) == 1
    finally:
        server.cleanup()


# -- `sixgate start` with two workers ---------------------------------------------------------

PID_PLUGIN = textwrap.dedent('''
    import os

    from plugin_sdk import hookimpl

    name = "test-pid"
    version = "1"
    priority = 1
    schema = {"type": "object"}

    @hookimpl
    def header_filter(ctx, conf):
        ctx.response.headers.set("X-Pid", str(os.getpid()))
''').lstrip()


def test_two_workers_share_one_count_and_a_reload_keeps_it(
    tmp_path: Path, upstream: Upstream,
) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "test_pid.py").write_text(PID_PLUGIN)
    g = GatewayProcess(tmp_path / "gw", {
        "apisix": {"plugin_dirs": [str(plugins)]},
        "plugins": ["limit-count", "test-pid"],
        "nginx_config": {"worker_processes": 2},
    })
    node = {"type": "roundrobin", "nodes": {f"127.0.0.1:{upstream.port}": 1}}
    total = 40
    g.start({"routes": [
        {"id": "limited", "uri": "/limited", "upstream": node, "plugins": {
            "test-pid": {}, "limit-count": {"count": total // 2, "time_window": 600}}},
        {"id": "warm", "uri": "/warm", "upstream": node, "plugins": {"test-pid": {}}},
    ]})
    try:
        assert g.proc is not None
        pids = wait_until(lambda: _two_pids(g), 20)

        with ThreadPoolExecutor(4) as pool:
            rs = list(pool.map(lambda _: g.get("/limited"), range(total)))
        assert sorted(r.status for r in rs).count(200) == total // 2
        assert sorted(r.status for r in rs).count(503) == total // 2
        assert {r.headers["x-pid"] for r in rs} == pids  # both workers served
        assert sorted(int(r.headers["x-ratelimit-remaining"]) for r in rs
                      if r.status == 200) == list(range(total // 2))

        # a plugin reload in every worker (SIGHUP = `sixgate reload`) keeps the count
        g.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: g.logs().count("SIGHUP: reloading") == 2, 10)  # both workers
        time.sleep(0.3)  # the reload runs in that signal handler; its state swap follows
        assert "refused" not in g.logs()
        after = [g.get("/limited") for _ in range(10)]
        assert {r.status for r in after} == {503}
        assert {r.headers["x-pid"] for r in after} <= pids
    finally:
        g.stop()


def _two_pids(g: GatewayProcess) -> set[str] | None:
    pids = {r.headers["x-pid"] for r in (g.get("/warm") for _ in range(20))
            if "x-pid" in r.headers}
    return pids if len(pids) == 2 else None
