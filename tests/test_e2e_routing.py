"""Routing through a real gateway process (spec §4, §11 cases 25–32, 34–35)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.gateway import GatewayProcess
from tests.support.upstream import Upstream


def node(up: Upstream) -> dict[str, Any]:
    return {"type": "roundrobin", "nodes": {f"127.0.0.1:{up.port}": 1}}


@pytest.fixture(autouse=True)
def _ups(shared_upstreams: tuple[Upstream, Upstream]) -> None:
    pass


def test_no_route_is_json_404(gw: GatewayProcess) -> None:
    gw.apply({"routes": []})
    r = gw.get("/not_found")
    assert r.status == 404
    assert r.body == b'{"error_msg":"404 Route Not Found"}\n'
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    assert r.headers["server"].startswith("APISIX/")


def test_host_and_method_conditions(gw: GatewayProcess, shared_upstreams: Any) -> None:
    a, _ = shared_upstreams
    gw.apply({"routes": [{"id": 1, "methods": ["GET"], "host": "foo.com", "uri": "/hello",
                          "upstream": node(a)}]})
    assert gw.get("/hello").status == 404
    assert gw.get("/hello", headers={"Host": "other.com"}).status == 404
    ok = gw.get("/hello", headers={"Host": "foo.com"})
    assert ok.status == 200 and ok.text == "hello world\n"
    assert gw.get("/hello", headers={"Host": "FOO.com:9080"}).status == 200
    assert gw.request("POST", "/hello", headers={"Host": "foo.com"}).status == 404
    assert gw.get("/hello/", headers={"Host": "foo.com"}).status == 404


def test_priority_breaks_ties(gw: GatewayProcess, shared_upstreams: Any) -> None:
    a, b = shared_upstreams
    routes = [
        {"id": 1, "uri": "/server_port", "host": "test.com", "priority": 1, "upstream": node(b)},
        {"id": 2, "uri": "/server_port", "host": "test.com", "priority": 2, "upstream": node(a)},
    ]
    gw.apply({"routes": routes})
    assert gw.get("/server_port", headers={"Host": "test.com"}).text == str(a.port)
    routes[0]["priority"], routes[1]["priority"] = 2, 1
    gw.apply({"routes": routes})
    assert gw.get("/server_port", headers={"Host": "test.com"}).text == str(b.port)


def test_host_routes_before_hostless(gw: GatewayProcess, shared_upstreams: Any) -> None:
    a, b = shared_upstreams
    gw.apply({"routes": [
        {"id": "A", "uri": "/*", "host": "*.test.com", "upstream": node(b)},
        {"id": "B", "uri": "/server_port", "upstream": node(a)},
    ]})
    assert gw.get("/server_port", headers={"Host": "www.test.com"}).text == str(b.port)
    assert gw.get("/server_port", headers={"Host": "a.b.test.com"}).text == str(b.port)
    assert gw.get("/server_port", headers={"Host": "test.com"}).text == str(a.port)


def test_exact_beats_prefix_and_longest_prefix(gw: GatewayProcess, shared_upstreams: Any) -> None:
    a, b = shared_upstreams
    gw.apply({"routes": [
        {"id": 1, "uri": "/api/*", "priority": 100, "upstream": node(a)},
        {"id": 2, "uri": "/api/v1/*", "upstream": node(b)},
        {"id": 3, "uri": "/api/v1/users", "upstream": node(a)},
    ]})
    assert gw.get("/api/v1/users").text.startswith(str(a.port))
    assert gw.get("/api/v1/x").text.startswith(str(b.port))
    assert gw.get("/api/x").text.startswith(str(a.port))
    assert gw.get("/api").status == 404


def test_vars_on_args_cookies_headers(gw: GatewayProcess, shared_upstreams: Any) -> None:
    a, _ = shared_upstreams
    gw.apply({"routes": [{"id": 1, "uri": "/hello", "upstream": node(a), "vars": [
        ["arg_k", "==", "v"], ["cookie_k", "==", "v"], ["http_k", "==", "v"]]}]})
    full = {"Cookie": "k=v; kkk=vvv", "k": "v"}
    assert gw.get("/hello?k=v", headers=full).status == 200
    assert gw.get("/hello?k=not-hit", headers=full).status == 404
    assert gw.get("/hello?k=v", headers={"k": "v"}).status == 404
    assert gw.get("/hello?k=v", headers={"Cookie": "k=v"}).status == 404


def test_vars_operators_or_and_regex(gw: GatewayProcess, shared_upstreams: Any) -> None:
    a, _ = shared_upstreams
    gw.apply({"routes": [{"id": 1, "uri": "/hello", "upstream": node(a), "vars": [
        ["OR", ["arg_name", "~~", "^j.*k$"], ["http_x_age", ">", 18]],
        ["arg_blocked", "!", "==", "yes"]]}]})
    assert gw.get("/hello?name=jack").status == 200
    assert gw.get("/hello?name=john").status == 404
    assert gw.get("/hello", headers={"X-Age": "30"}).status == 200
    assert gw.get("/hello?name=jack&blocked=yes").status == 404


def test_remote_addrs_with_real_ip(gw: GatewayProcess, shared_upstreams: Any) -> None:
    a, _ = shared_upstreams
    gw.apply({"routes": [{"id": 1, "uri": "/hello", "upstream": node(a),
                          "remote_addrs": ["192.0.0.0/8", "127.0.0.3"]}]})
    assert gw.get("/hello").status == 404
    assert gw.get("/hello", headers={"X-Real-IP": "192.168.1.100"}).status == 200
    assert gw.get("/hello", headers={"X-Real-IP": "10.0.0.1"}).status == 404


def test_disabled_route_is_not_loaded(gw: GatewayProcess, shared_upstreams: Any) -> None:
    a, _ = shared_upstreams
    gw.apply({"routes": [{"id": 1, "uri": "/hello", "status": 0, "upstream": node(a)}]})
    assert gw.get("/hello").status == 404
    gw.apply({"routes": [{"id": 1, "uri": "/hello", "status": 1, "upstream": node(a)}]})
    assert gw.get("/hello").status == 200


def test_uris_list(gw: GatewayProcess, shared_upstreams: Any) -> None:
    a, _ = shared_upstreams
    gw.apply({"routes": [{"id": 1, "uris": ["/hello", "/server_port"], "upstream": node(a)}]})
    assert gw.get("/hello").status == 200
    assert gw.get("/server_port").text == str(a.port)


def test_service_and_upstream_id_merging(gw: GatewayProcess, shared_upstreams: Any) -> None:
    a, b = shared_upstreams
    gw.apply({
        "upstreams": [{"id": "ua", **node(a)}, {"id": "ub", **node(b)}],
        "services": [{"id": "s1", "upstream_id": "ua", "hosts": ["svc.com"]}],
        "routes": [
            {"id": 1, "uri": "/server_port", "service_id": "s1"},
            {"id": 2, "uri": "/hello", "service_id": "s1", "upstream": node(b)},
            {"id": 3, "uri": "/headers", "upstream_id": "ub", "upstream": node(a)},
        ],
    })
    # The route inherits the service's hosts for matching.
    assert gw.get("/server_port").status == 404
    assert gw.get("/server_port", headers={"Host": "svc.com"}).text == str(a.port)
    # A route upstream replaces the service's upstream_id.
    assert gw.get("/hello", headers={"Host": "svc.com"}).status == 200
    assert b.hits.get("/hello", 0) >= 1
    # upstream_id beats an inline upstream on the same object.
    assert gw.get("/headers").headers["x-upstream"] == str(b.port)


def test_missing_references_and_upstreams(gw: GatewayProcess, shared_upstreams: Any) -> None:
    a, _ = shared_upstreams
    gw.apply({"routes": [
        {"id": 1, "uri": "/no-service", "service_id": "999999999"},
        {"id": 2, "uri": "/no-upstream", "plugins": {"proxy-rewrite": {"uri": "/x"}}},
        {"id": 3, "uri": "/missing-upstream-id", "upstream_id": "nope"},
        {"id": 4, "uri": "/empty-nodes", "upstream": {"type": "roundrobin", "nodes": {}}},
        {"id": 5, "uri": "/no-plugin-config", "plugin_config_id": "pc", "upstream": node(a)},
    ]})
    r = gw.get("/no-service")
    assert r.status == 404 and b"<center><h1>404 Not Found</h1></center>" in r.body
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    r = gw.get("/no-upstream")
    assert r.status == 503 and b"503 Service Temporarily Unavailable" in r.body
    assert gw.get("/missing-upstream-id").status == 502
    assert gw.get("/empty-nodes").status == 503
    assert gw.get("/no-plugin-config").status == 503
    assert "missing upstream configuration in Route or Service" in gw.logs()


def test_uri_normalization(gw: GatewayProcess, shared_upstreams: Any) -> None:
    a, _ = shared_upstreams
    gw.apply({"routes": [{"id": 1, "uri": "/a/b", "upstream": node(a)}]})
    assert gw.get("/a//b").status == 200
    assert gw.get("/a/./b").status == 200
    assert gw.get("/a/x/../b").status == 200
    assert gw.get("/%61/b").status == 200
    assert gw.get("/a/b/c/../").status == 404


def test_parameter_router(tmp_path: Any, shared_upstreams: Any) -> None:
    a, _ = shared_upstreams
    g = GatewayProcess(tmp_path, {"apisix": {"router": {"http": "radixtree_uri_with_parameter"}}})
    g.start({"routes": [{"id": 1, "uri": "/name/:name/bar", "upstream": node(a)}]})
    try:
        assert g.get("/name/json/bar").status == 200
        for path in ("/name/json2/foo", "/name/json/", "/name//bar"):
            r = g.get(path)
            assert r.status == 404 and b"Route Not Found" in r.body, path
    finally:
        g.stop()


def test_delete_uri_tail_slash(tmp_path: Any, shared_upstreams: Any) -> None:
    a, _ = shared_upstreams
    g = GatewayProcess(tmp_path, {"apisix": {"delete_uri_tail_slash": True}})
    g.start({"routes": [{"id": 1, "uri": "/hello", "upstream": node(a)}]})
    try:
        assert g.get("/hello/").status == 200
    finally:
        g.stop()
