"""traffic-split through a real gateway and real upstreams (spec §7.3, §2.10, §11 case 42).

One in-process gateway (plugin_sdk.testing) serves the whole module; three recording upstreams
tell which one a request reached (``a`` is every route's own upstream). Each test uses its own
route ids, so every conf starts with a fresh round-robin position.
"""

from __future__ import annotations

import concurrent.futures
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from builtin_plugins import traffic_split
from kernel.admin import AdminContext, create_admin_app
from kernel.config import Config
from kernel.plugins.loader import load_registry
from kernel.plugins.manager import check_conf
from kernel.upstream.override import UpstreamTable, inline_upstream
from plugin_sdk.testing import ConfigRejected, GatewayHarness, MockUpstream
from tests.support.memory_store import MemoryResourceStore
from tests.support.upstream import free_port

PLUGINS = ["traffic-split", "proxy-rewrite"]


@pytest.fixture(scope="module")
def ups() -> Iterator[dict[str, MockUpstream]]:
    started = {n: MockUpstream().start() for n in "abc"}
    for n, up in started.items():
        up.respond(headers={"X-Up": n})  # keeps the JSON echo of the request
    yield started
    for up in started.values():
        up.stop()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, ups: dict[str, MockUpstream]
       ) -> Iterator[GatewayHarness]:
    harness = GatewayHarness(tmp_path_factory.mktemp("traffic-split"), ups["a"],
                             plugins=PLUGINS).start()
    yield harness
    harness.stop()


@pytest.fixture(autouse=True)
def _fresh(request: pytest.FixtureRequest) -> None:
    if "gw" in request.fixturenames:
        for up in request.getfixturevalue("ups").values():
            up.clear()


def split(*rules: dict[str, Any]) -> dict[str, Any]:
    return {"traffic-split": {"rules": list(rules)}}


def served(gw: GatewayHarness, path: str, n: int = 1, **kw: Any) -> list[str]:
    """Which upstream (``a``/``b``/``c``) answered each of ``n`` requests."""
    out = []
    for _ in range(n):
        r = gw.get(path, **kw)
        assert r.status == 200, (r.status, r.body, gw.logs())
        out.append(r.headers["X-Up"])
    return out


def host_sent(r: Any) -> str:
    return {k.lower(): v for k, v in json.loads(r.body)["headers"]}["host"]


# -- weighted round robin ------------------------------------------------------------------


def test_weights_2_to_1_split_six_requests_4_and_2_in_smooth_order(
    gw: GatewayHarness, ups: dict[str, MockUpstream]
) -> None:
    gw.add_route("/w21", split({"weighted_upstreams": [
        {"upstream": ups["b"].node, "weight": 2}, {"weight": 1}]}), id="w21")
    # the route is eligible for the callback path: the choice must still be honoured there
    assert gw.gateway.state.routes["w21"].direct
    got = served(gw, "/w21", 6)
    assert got == ["b", "a", "b", "b", "a", "b"]
    assert len(ups["b"].requests) == 4 and len(ups["a"].requests) == 2


def test_three_to_one_between_two_inline_upstreams(
    gw: GatewayHarness, ups: dict[str, MockUpstream]
) -> None:
    gw.add_route("/w31", split({"weighted_upstreams": [
        {"upstream": ups["b"].node, "weight": 3}, {"upstream": ups["c"].node, "weight": 1}]}),
        id="w31")
    got = served(gw, "/w31", 8)
    assert got.count("b") == 6 and got.count("c") == 2 and "a" not in got


def test_spec_case_42_match_then_weights(gw: GatewayHarness, ups: dict[str, MockUpstream]) -> None:
    gw.add_route("/hello42", split({
        "match": [{"vars": [["arg_name", "==", "jack"], ["arg_age", "!", "<", "16"]]}],
        "weighted_upstreams": [{"upstream": ups["b"].node, "weight": 2}, {"weight": 1}],
    }), id="case42")
    assert served(gw, "/hello42?name=jack&age=14") == ["a"]
    assert sorted(served(gw, "/hello42?name=jack&age=16", 6)) == ["a", "a", "b", "b", "b", "b"]


def test_weight_only_entry_is_the_routes_own_upstream(
    gw: GatewayHarness, ups: dict[str, MockUpstream]
) -> None:
    gw.add_route("/own", split({"weighted_upstreams": [{"weight": 1}]}), id="own")
    assert served(gw, "/own", 3) == ["a", "a", "a"]
    # rules without weighted_upstreams default to [{"weight": 1}]: the route's upstream too
    gw.add_route("/own2", split({"match": [{"vars": [["arg_x", "==", "1"]]}]}), id="own2")
    assert served(gw, "/own2?x=1", 2) == ["a", "a"]
    ups["b"].assert_not_received()


def test_weight_zero_is_never_chosen_unless_all_are_zero(
    gw: GatewayHarness, ups: dict[str, MockUpstream]
) -> None:
    gw.add_route("/zero", split({"weighted_upstreams": [
        {"upstream": ups["b"].node, "weight": 0}, {"weight": 1}]}), id="zero")
    assert served(gw, "/zero", 4) == ["a"] * 4
    gw.add_route("/allzero", split({"weighted_upstreams": [
        {"upstream": ups["b"].node, "weight": 0}, {"upstream": ups["c"].node, "weight": 0}]}),
        id="allzero")
    assert served(gw, "/allzero", 4) == ["b", "c", "b", "c"]  # they take turns (APISIX's rr)


# -- rules and match -----------------------------------------------------------------------


def test_canary_by_header_and_by_argument(gw: GatewayHarness, ups: dict[str, MockUpstream]) -> None:
    gw.add_route("/canary", split({
        "match": [{"vars": [["http_x_canary", "==", "yes"]]},
                  {"vars": [["arg_canary", "==", "1"], ["arg_user", "~~", "^qa-"]]}],
        "weighted_upstreams": [{"upstream": ups["b"].node}],
    }), id="canary")
    assert served(gw, "/canary", headers={"X-Canary": "yes"}) == ["b"]
    assert served(gw, "/canary?canary=1&user=qa-7") == ["b"]  # the second entry matches
    assert served(gw, "/canary?canary=1&user=bob") == ["a"]  # AND inside one entry
    assert served(gw, "/canary", headers={"X-Canary": "no"}) == ["a"]
    assert served(gw, "/canary") == ["a"]


def test_rules_are_tried_in_order_first_match_wins(
    gw: GatewayHarness, ups: dict[str, MockUpstream]
) -> None:
    gw.add_route("/order", split(
        {"match": [{"vars": [["arg_v", "==", "1"]]}],
         "weighted_upstreams": [{"upstream": ups["b"].node}]},
        {"weighted_upstreams": [{"upstream": ups["c"].node}]},  # no match: takes the rest
        {"match": [{"vars": [["arg_v", "==", "2"]]}],
         "weighted_upstreams": [{"upstream": ups["a"].node}]},  # never reached
    ), id="order")
    assert served(gw, "/order?v=1") == ["b"]
    assert served(gw, "/order?v=2") == ["c"]
    assert served(gw, "/order") == ["c"]


def test_no_rule_matches_leaves_the_route_upstream(
    gw: GatewayHarness, ups: dict[str, MockUpstream]
) -> None:
    gw.add_route("/nomatch", split({"match": [{"vars": [["arg_v", "==", "1"]]}],
                                    "weighted_upstreams": [{"upstream": ups["b"].node}]}),
                 id="nomatch")
    assert served(gw, "/nomatch?v=2", 2) == ["a", "a"]


# -- upstream_id ---------------------------------------------------------------------------


def _with(gw: GatewayHarness, **collections: list[dict[str, Any]]) -> None:
    doc = {k: list(v) for k, v in gw.doc.items()}
    doc.update(collections)
    gw.apply(doc)


def _upstream(gw: GatewayHarness, item: dict[str, Any]) -> None:
    """Add or replace one upstream object (the others stay: routes may refer to them)."""
    kept = [u for u in gw.doc.get("upstreams", []) if u["id"] != item["id"]]
    _with(gw, upstreams=[*kept, item])


def test_upstream_id_and_its_live_change(gw: GatewayHarness, ups: dict[str, MockUpstream]) -> None:
    _upstream(gw, {"id": "live", **ups["b"].node})
    gw.add_route("/byid", split({"weighted_upstreams": [{"upstream_id": "live"}]}), id="byid")
    assert served(gw, "/byid", 2) == ["b", "b"]
    _upstream(gw, {"id": "live", **ups["c"].node})  # the route itself is unchanged
    assert served(gw, "/byid", 2) == ["c", "c"]


def test_upstream_id_settings_and_balancer_are_the_upstreams(
    gw: GatewayHarness, ups: dict[str, MockUpstream]
) -> None:
    pair = {"id": "pair", "type": "roundrobin", "pass_host": "rewrite",
            "upstream_host": "pair.test",
            "nodes": {f"127.0.0.1:{ups['b'].port}": 1, f"127.0.0.1:{ups['c'].port}": 1}}
    _upstream(gw, pair)
    gw.add_route("/pair-direct", id="pair-direct", upstream_id="pair")
    gw.add_route("/pair-split", split({"weighted_upstreams": [{"upstream_id": "pair"}]}),
                 id="pair-split")
    direct, via_split = [], []
    for _ in range(3):
        direct += served(gw, "/pair-direct")
        via_split += served(gw, "/pair-split")
    # one balancer shared by both routes (as APISIX): alternating between the routes, each
    # route keeps meeting the same node
    assert len(set(direct)) == 1 and len(set(via_split)) == 1 and direct != via_split
    assert host_sent(gw.get("/pair-split")) == "pair.test"  # pass_host of the upstream


def test_upstream_id_retries_apply(gw: GatewayHarness, ups: dict[str, MockUpstream]) -> None:
    dead = free_port()
    _upstream(gw, {"id": "flaky", "retries": 1, "nodes": {
        f"127.0.0.1:{dead}": 1, f"127.0.0.1:{ups['b'].port}": 1}})
    gw.add_route("/flaky", split({"weighted_upstreams": [{"upstream_id": "flaky"}]}),
                 id="flaky")
    assert served(gw, "/flaky", 4) == ["b"] * 4


def test_missing_upstream_id_is_500_with_the_message(
    gw: GatewayHarness, ups: dict[str, MockUpstream]
) -> None:
    gw.add_route("/missing", split({"weighted_upstreams": [
        {"upstream_id": "nope", "weight": 1}, {"weight": 3}]}), id="missing")
    for _ in range(4):  # every request, even those the weights give the route's upstream
        r = gw.get("/missing")
        assert r.status == 500
        assert r.body == b"failed to fetch upstream info by upstream id: nope"
    ups["a"].assert_not_received()
    # a rule after the chosen one is not checked
    gw.add_route("/missing-later", split(
        {"weighted_upstreams": [{"upstream": ups["b"].node}]},
        {"weighted_upstreams": [{"upstream_id": 404}]}), id="missing-later")
    assert served(gw, "/missing-later") == ["b"]
    gw.add_route("/missing-int", split({"weighted_upstreams": [{"upstream_id": 404}]}),
                 id="missing-int")
    assert gw.get("/missing-int").body == b"failed to fetch upstream info by upstream id: 404"


# -- inline upstreams ----------------------------------------------------------------------


def test_inline_upstream_pass_host_and_upstream_host(
    gw: GatewayHarness, ups: dict[str, MockUpstream]
) -> None:
    b = ups["b"]
    gw.add_route("/rewrite-host", split({"weighted_upstreams": [{"upstream": {
        **b.node, "pass_host": "rewrite", "upstream_host": "canary.test"}}]}), id="rh")
    assert host_sent(gw.get("/rewrite-host", headers={"Host": "client.test"})) == "canary.test"
    gw.add_route("/node-host", split({"weighted_upstreams": [{"upstream": {
        **b.node, "pass_host": "node"}}]}), id="nh")
    assert host_sent(gw.get("/node-host", headers={"Host": "client.test"})) == (
        f"127.0.0.1:{b.port}")
    gw.add_route("/pass-host", split({"weighted_upstreams": [{"upstream": b.node}]}), id="ph")
    assert host_sent(gw.get("/pass-host", headers={"Host": "client.test"})) == "client.test"
    # the route's own upstream keeps its own pass_host
    gw.add_route("/own-host", split({"weighted_upstreams": [{"weight": 1}]}), id="oh",
                 upstream={**ups["a"].node, "pass_host": "rewrite", "upstream_host": "own.test"})
    assert host_sent(gw.get("/own-host")) == "own.test"


def test_inline_upstream_domain_nodes_are_resolved(
    gw: GatewayHarness, ups: dict[str, MockUpstream]
) -> None:
    b = ups["b"]
    gw.add_route("/domain", split({"weighted_upstreams": [{"upstream": {
        "pass_host": "node", "nodes": [{"host": "localhost", "port": b.port, "weight": 1}]}}]}),
        id="domain")
    r = gw.get("/domain")
    assert r.status == 200 and r.headers["X-Up"] == "b"
    assert host_sent(r) == f"localhost:{b.port}"


def _fails_fast(host: str) -> bool:
    """Whether resolving ``host`` fails within a second here (no hanging DNS server)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(socket.getaddrinfo, host, None)
        try:
            future.result(1.0)
        except socket.gaierror:
            return True
        except Exception:
            return False
    return False


def test_inline_upstream_name_that_does_not_resolve_is_500(gw: GatewayHarness) -> None:
    host = "sixgate-traffic-split.invalid"  # RFC 6761: never resolves
    if not _fails_fast(host):
        pytest.skip("the resolver here does not fail fast")
    gw.add_route("/nxdomain", split({"weighted_upstreams": [{"upstream": {
        "nodes": {f"{host}:80": 1}}}]}), id="nxdomain")
    assert gw.get("/nxdomain").status == 500  # spec §5.7: inline upstream's name


def test_inline_upstream_timeout_is_honoured(
    gw: GatewayHarness, ups: dict[str, MockUpstream]
) -> None:
    b = ups["b"]
    b.respond(path="/slow", delay=1.0, headers={"X-Up": "b"})
    gw.add_route("/slow", split({"weighted_upstreams": [{"upstream": {
        **b.node, "timeout": {"connect": 1, "send": 1, "read": 0.2}}}]}), id="slow")
    assert gw.get("/slow").status == 504


def test_inline_upstream_keeps_its_balancer_between_requests(
    gw: GatewayHarness, ups: dict[str, MockUpstream]
) -> None:
    nodes = {f"127.0.0.1:{ups['b'].port}": 1, f"127.0.0.1:{ups['c'].port}": 1}
    gw.add_route("/two", split({"weighted_upstreams": [{"upstream": {"nodes": nodes}}]}),
                 id="two")
    got = served(gw, "/two", 8)
    # compiled once per conf: strict alternation (a picker made per request would start at a
    # random node each time)
    assert got[0::2] == [got[0]] * 4 and got[1::2] == [got[1]] * 4 and got[0] != got[1]


def test_route_without_upstream_of_its_own(
    gw: GatewayHarness, ups: dict[str, MockUpstream]
) -> None:
    route = {"id": "noup", "uri": "/noup", "plugins": split(
        {"match": [{"vars": [["arg_v", "==", "1"]]}],
         "weighted_upstreams": [{"upstream": ups["c"].node}]})}
    _with(gw, routes=[*gw.doc["routes"], route])
    assert served(gw, "/noup?v=1") == ["c"]
    assert gw.get("/noup").status == 503  # nothing chosen, and the route has no upstream


def test_upstream_changes_of_other_plugins_still_apply(
    gw: GatewayHarness, ups: dict[str, MockUpstream]
) -> None:
    gw.add_route("/combo", {**split({"weighted_upstreams": [{"upstream": ups["b"].node}]}),
                            "proxy-rewrite": {"uri": "/rewritten",
                                              "headers": {"set": {"X-Extra": "1"}}}},
                 id="combo")
    r = gw.get("/combo?q=1")
    assert r.headers["X-Up"] == "b"
    ups["b"].assert_received(path="/rewritten", query="q=1", headers={"X-Extra": "1"})


# -- schema ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def info() -> Any:
    registry, errors = load_registry(["traffic-split"], [], {})
    assert not errors
    return registry.get("traffic-split")


PREFIX = ('property "rules" validation failed: failed to validate item 1: '
          'property "weighted_upstreams" validation failed: ')
NODES = {"127.0.0.1:1980": 1}


@pytest.mark.parametrize(("conf", "message"), [
    ({"rules": [{"match": [{"vars": [["arg_name", "123", "jack"]]}]}]},
     "failed to validate the 'vars' expression: invalid operator '123'"),
    ({"rules": [{"match": [{}]}]}, "failed to validate the 'vars' expression: "
                                   "missing argument rule"),
    ({"rules": [{"weighted_upstreams": [{"weight": -1}]}]},
     PREFIX + 'failed to validate item 1: property "weight" validation failed: '
              "expected -1 to be at least 0"),
    ({"rules": [{"weighted_upstreams": [{"weight": 1.5}]}]},
     PREFIX + 'failed to validate item 1: property "weight" validation failed: '
              "wrong type: expected integer, got number"),
    ({"rules": [{"weighted_upstreams": []}]},
     PREFIX + "expect array to have at least 1 items"),
    ({"rules": [{"weighted_upstreams": [{"weight": 1}] * 21}]},
     PREFIX + "expect array to have at most 20 items"),
    ({"rules": [{"weighted_upstreams": [{"weight": 1}, {"upstream": {"type": "roundrobin"}}]}]},
     PREFIX + 'failed to validate item 2: property "upstream" validation failed: '
              "value should match only one schema, but matches none"),
    ({"rules": [{"weighted_upstreams": [{"upstream": {"nodes": NODES, "pass_host": "x"}}]}]},
     PREFIX + 'failed to validate item 1: property "upstream" validation failed: '
              'property "pass_host" validation failed: matches none of the enum values'),
    ({"rules": [{"weighted_upstreams": [{"upstream": {"nodes": NODES, "retries": -1}}]}]},
     PREFIX + 'failed to validate item 1: property "upstream" validation failed: '
              'property "retries" validation failed: expected -1 to be at least 0'),
    ({"rules": [{"weighted_upstreams": [{"upstream": {"nodes": NODES, "pass_host": "rewrite"}}]}]},
     PREFIX + 'failed to validate item 1: property "upstream" validation failed: '
              "`upstream_host` can't be empty when `pass_host` is `rewrite`"),
    ({"rules": [{"weighted_upstreams": [{"upstream_id": "a b"}]}]},
     PREFIX + 'failed to validate item 1: property "upstream_id" validation failed: '
              "object matches none of the required"),
    ({"rules": "all"}, 'property "rules" validation failed: wrong type: expected array, '
                       "got string"),
])
def test_schema_errors(info: Any, conf: dict[str, Any], message: str) -> None:
    assert check_conf(info, conf) == message


def test_valid_confs_and_defaults(info: Any) -> None:
    assert check_conf(info, {}) is None
    assert check_conf(info, {"rules": [{"weighted_upstreams": [
        {"upstream_id": 1}, {"upstream_id": "u-1.x", "weight": 0},
        {"upstream": {"type": "chash", "key": "remote_addr", "nodes": NODES,
                      "timeout": {"connect": 1, "send": 1, "read": 1}}},
        {"weight": 3}]}]}) is None
    from kernel.plugins.manager import prepare_conf

    filled, err = prepare_conf(info, {"rules": [{"match": [{"vars": []}]}]})
    assert err is None and filled is not None
    assert filled["rules"][0]["weighted_upstreams"] == [{"weight": 1}]


@pytest.mark.sixgate(plugins=PLUGINS)
def test_the_gateway_refuses_an_invalid_conf(sixgate: GatewayHarness) -> None:
    # a gateway of its own: the module's gateway sees a write every few milliseconds, and the
    # harness's check can race the store's file watcher (kernel/store/yaml_file.py check())
    with pytest.raises(ConfigRejected, match="invalid operator '123'"):
        sixgate.add_route("/bad", split({"match": [{"vars": [["arg_a", "123", "b"]]}]}))
    with pytest.raises(ConfigRejected, match="`upstream_host` can't be empty"):
        sixgate.add_route("/bad", split({"weighted_upstreams": [{"upstream": {
            "nodes": NODES, "pass_host": "rewrite"}}]}))


# -- Admin API (spec §2.10) ------------------------------------------------------------------

KEY = "edd1c9f034335f136f87ad84b625c8f0"


async def _admin(tmp_path: Path) -> TestClient:
    registry, errors = load_registry(["traffic-split"], [], {})
    assert not errors

    async def reload() -> None:
        return None

    config = Config(data={"deployment": {"admin": {
        "admin_key_required": True, "admin_key": [{"name": "admin", "key": KEY, "role": "admin"}],
        "allow_admin": ["127.0.0.0/24"]}}}, path=tmp_path / "config.yaml", conf_dir=tmp_path)
    ctx = AdminContext(store=MemoryResourceStore(), registry=lambda: registry,
                       reload_plugins=reload, config=config)
    client = TestClient(TestServer(create_admin_app(ctx), host="127.0.0.1"))
    await client.start_server()
    return client


async def test_admin_refuses_deleting_an_upstream_traffic_split_uses(tmp_path: Path) -> None:
    client = await _admin(tmp_path)
    h = {"X-API-KEY": KEY}
    try:
        async def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
            data = None if body is None else json.dumps(body)
            async with client.request(method, "/apisix/admin" + path, data=data,
                                      headers=h) as resp:
                return resp.status, await resp.json(content_type=None)

        assert (await call("PUT", "/upstreams/1", {"nodes": NODES}))[0] == 201
        route = {"uri": "/hello", "upstream": {"nodes": NODES}, "plugins": split(
            {"weighted_upstreams": [{"upstream_id": 1, "weight": 2}, {"weight": 1}]})}
        assert (await call("PUT", "/routes/1", route))[0] == 201
        assert await call("DELETE", "/upstreams/1") == (400, {
            "error_msg": "can not delete this upstream, plugin in route [1] is still using it now"})
        bad = {**route, "plugins": split({"match": [{"vars": [["arg_a", "123", "b"]]}]})}
        assert await call("PUT", "/routes/2", bad) == (400, {
            "error_msg": "failed to check the configuration of plugin traffic-split err: "
                         "failed to validate the 'vars' expression: invalid operator '123'"})
        assert (await call("DELETE", "/routes/1"))[0] == 200
        assert (await call("DELETE", "/upstreams/1"))[0] == 200
    finally:
        await client.close()


# -- units -----------------------------------------------------------------------------------


def test_smooth_round_robin_order() -> None:
    a, b, c = (traffic_split._Target(upstream_id=n) for n in "abc")
    rr = traffic_split._SmoothRoundRobin([(a, 5), (b, 1), (c, 1)])
    assert [t.upstream_id for t in (rr.next() for _ in range(7))] == list("aabacaa")
    one = traffic_split._SmoothRoundRobin([(a, 0)])
    assert {one.next().upstream_id for _ in range(3)} == {"a"}


def test_duplicate_entries_collapse_as_in_apisix() -> None:
    targets = traffic_split._targets([
        {"upstream_id": 1, "weight": 1}, {"weight": 2}, {"upstream_id": "1", "weight": 5},
        {"weight": 7}, {"upstream": {"nodes": NODES, "retries": 3}, "weight": 1},
    ])
    assert [(t.upstream_id, w) for t, w in targets[:2]] == [(1, 5), (None, 7)]
    assert targets[2][0].upstream == {"nodes": NODES}  # only the fields APISIX copies


def test_inline_upstream_compiled_once_per_hook_conf_and_object() -> None:
    class Conf(dict[str, Any]):
        __slots__ = ("__weakref__",)

    owner = Conf()
    up = {"nodes": NODES, "pass_host": "node"}
    table = UpstreamTable()
    first = inline_upstream(owner, up, table)
    assert inline_upstream(owner, up, table) is first
    assert first.pass_host == "node" and first.timeouts.read == 60
    assert inline_upstream(Conf(), up, table) is not first  # another conf: its own balancer
    assert inline_upstream(owner, dict(up), table) is not first  # another object


def test_set_upstream_contract() -> None:
    from plugin_sdk.testing import make_context

    ctx = make_context()
    runtime = inline_upstream(None, {"nodes": NODES}, UpstreamTable())
    ctx.upstream_table = UpstreamTable({"1": runtime})
    assert ctx.upstream.has_upstream(1) and not ctx.upstream.has_upstream("2")
    with pytest.raises(LookupError):
        ctx.upstream.set_upstream("2")
    with pytest.raises(ValueError):
        ctx.upstream.set_upstream(1, conf={"nodes": NODES})
    ctx.upstream.set_upstream(1)
    assert ctx.upstream.selected is runtime
    ctx.upstream.set_upstream(conf={"nodes": NODES, "pass_host": "node"})
    assert ctx.upstream.selected.pass_host == "node"
    ctx.upstream.set_upstream()
    assert ctx.upstream.selected is None
