"""The built-in plugins through a real gateway (spec §7.2, §7.4, §11 cases 41 and 43)."""

from __future__ import annotations

import json
import time
from typing import Any

from tests.support.gateway import GatewayProcess


def node(up: Any) -> dict[str, Any]:
    return {"type": "roundrobin", "nodes": {f"127.0.0.1:{up.port}": 1}}


def echo(r: Any) -> dict[str, Any]:
    info = json.loads(r.body)
    info["h"] = {}
    for k, v in info["headers"]:
        info["h"].setdefault(k.lower(), []).append(v)
    return info


def test_fault_injection_abort_never_reaches_upstream(gw: GatewayProcess, shared_upstreams: Any) -> None:
    a, _ = shared_upstreams
    before = a.hits.get("/hello", 0)
    gw.apply({"routes": [{"id": 1, "uri": "/hello", "upstream": node(a), "plugins": {
        "fault-injection": {"abort": {"http_status": 200, "body": "Fault Injection!\n"}}}}]})
    r = gw.get("/hello")
    assert r.status == 200 and r.body == b"Fault Injection!\n"
    assert a.hits.get("/hello", 0) == before


def test_fault_injection_abort_with_vars_and_headers(gw: GatewayProcess, shared_upstreams: Any) -> None:
    a, _ = shared_upstreams
    gw.apply({"routes": [{"id": 1, "uri": "/hello", "upstream": node(a), "plugins": {
        "fault-injection": {"abort": {
            "http_status": 403, "body": "blocked $arg_name\n", "headers": {"X-Reason": "$arg_name"},
            "vars": [[["arg_name", "==", "jack"]]]}}}}]})
    r = gw.get("/hello?name=jack")
    assert r.status == 403 and r.body == b"blocked jack\n"
    assert r.headers["x-reason"] == "jack"
    assert gw.get("/hello?name=rose").text == "hello world\n"


def test_fault_injection_abort_without_body_gives_nginx_page(gw: GatewayProcess, shared_upstreams: Any) -> None:
    a, _ = shared_upstreams
    gw.apply({"routes": [{"id": 1, "uri": "/hello", "upstream": node(a), "plugins": {
        "fault-injection": {"abort": {"http_status": 503}}}}]})
    r = gw.get("/hello")
    assert r.status == 503 and b"<h1>503 Service Temporarily Unavailable</h1>" in r.body


def test_fault_injection_delay(gw: GatewayProcess, shared_upstreams: Any) -> None:
    a, _ = shared_upstreams
    gw.apply({"routes": [{"id": 1, "uri": "/hello", "upstream": node(a), "plugins": {
        "fault-injection": {"delay": {"duration": 0.5}}}}]})
    started = time.monotonic()
    r = gw.get("/hello")
    assert r.text == "hello world\n"
    assert time.monotonic() - started >= 0.5


def test_proxy_rewrite_regex_uri_and_uri(gw: GatewayProcess, shared_upstreams: Any) -> None:
    a, _ = shared_upstreams
    gw.apply({"routes": [
        {"id": 1, "uri": "/test/*", "upstream": node(a), "plugins": {
            "proxy-rewrite": {"regex_uri": ["^/test/(.*)/(.*)/(.*)", "/echo/$1_$2_$3"]}}},
        {"id": 2, "uri": "/hello", "upstream": node(a), "plugins": {
            "proxy-rewrite": {"uri": "/echo/plugin_proxy_rewrite_args"}}},
        {"id": 3, "uri": "/both", "upstream": node(a), "plugins": {
            "proxy-rewrite": {"uri": "/echo/uri-wins", "regex_uri": ["^/both", "/echo/regex"]}}},
    ]})
    assert echo(gw.get("/test/plugin/proxy/rewrite"))["path"] == "/echo/plugin_proxy_rewrite"
    assert echo(gw.get("/hello?q=apisix&a=iresty"))["raw_path"] == (
        "/echo/plugin_proxy_rewrite_args?q=apisix&a=iresty"
    )
    assert echo(gw.get("/both"))["path"] == "/echo/uri-wins"


def test_proxy_rewrite_host_method_headers(gw: GatewayProcess, shared_upstreams: Any) -> None:
    a, _ = shared_upstreams
    gw.apply({"routes": [{"id": 1, "uri": "/echo", "upstream": node(a), "plugins": {
        "proxy-rewrite": {
            "host": "rewritten.example",
            "method": "POST",
            "headers": {
                "add": {"X-Added": "$arg_who"},
                "set": {"X-Set": "fixed", "X-Client": "$remote_addr"},
                "remove": ["X-Secret"],
            },
        }}}]})
    info = echo(gw.get("/echo?who=me", headers={"X-Set": "old", "X-Secret": "s",
                                               "X-Added": "first"}))
    h = info["h"]
    assert info["method"] == "POST"
    assert h["host"] == ["rewritten.example"]
    assert h["x-added"] == ["first", "me"]
    assert h["x-set"] == ["fixed"]
    assert h["x-client"] == ["127.0.0.1"]
    assert "x-secret" not in h


def test_global_rules_run_for_every_route_and_unmatched(gw: GatewayProcess, shared_upstreams: Any) -> None:
    a, _ = shared_upstreams
    gw.apply({
        "global_rules": [{"id": 1, "plugins": {"fault-injection": {"abort": {
            "http_status": 418, "body": "teapot\n", "vars": [[["arg_brew", "==", "tea"]]]}}}}],
        "routes": [{"id": 1, "uri": "/hello", "upstream": node(a)}],
    })
    assert gw.get("/hello?brew=tea").status == 418
    assert gw.get("/nowhere?brew=tea").status == 418
    assert gw.get("/hello").status == 200
    assert gw.get("/nowhere").status == 404


def test_meta_disable_and_service_plugins(gw: GatewayProcess, shared_upstreams: Any) -> None:
    a, _ = shared_upstreams
    gw.apply({
        "services": [{"id": "s", "upstream": node(a), "plugins": {
            "fault-injection": {"abort": {"http_status": 202, "body": "from service\n"}}}}],
        "routes": [
            {"id": 1, "uri": "/hello", "service_id": "s"},
            {"id": 2, "uri": "/server_port", "service_id": "s", "plugins": {
                "fault-injection": {"abort": {"http_status": 202}, "_meta": {"disable": True}}}},
        ],
    })
    r = gw.get("/hello")
    assert r.status == 202 and r.text == "from service\n"
    assert gw.get("/server_port").text == str(a.port)


def test_invalid_plugin_conf_is_refused_with_its_line(gw: GatewayProcess) -> None:
    gw.apply({"routes": [{"id": 1, "uri": "/hello", "plugins": {
        "fault-injection": {"abort": {"http_status": 200, "body": "ok"}}}}]})
    gw.write_apisix(
        "routes:\n  - id: 1\n    uri: /hello\n    plugins:\n      fault-injection:\n"
        "        abort: {http_status: 100}\n#END\n"
    )
    from tests.support.gateway import wait_until

    wait_until(lambda: "routes[0].plugins.fault-injection" in gw.logs(), timeout=3)
    line = next(ln for ln in gw.logs().splitlines() if "routes[0].plugins.fault-injection" in ln)
    assert "apisix.yaml:5:" in line and "http_status" in line
    assert gw.get("/hello").text == "ok"
