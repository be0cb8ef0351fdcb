"""APISIX's FAQ recipes, unchanged, against a started gateway (``sixgate start``) whose config
lives in the embedded store or in a real etcd: the Admin API bodies below are the FAQ's."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.etcd import EtcdServer
from tests.support.gateway import GatewayProcess, Response, wait_port, wait_until
from tests.support.upstream import Upstream, free_port
from tests.test_e2e_admin import KEY, admin

EXTRA_PLUGINS = ["serverless-pre-function", "serverless-post-function"]


class FaqGateway:
    """A traditional-role gateway with the Admin API, on the store under test."""

    def __init__(self, proc: GatewayProcess, admin_port: int, upstream: Upstream) -> None:
        self.proc = proc
        self.admin_port = admin_port
        self.upstream = upstream
        self.node = f"127.0.0.1:{upstream.port}"

    def put(self, path: str, body: Any) -> None:
        status, answer = admin(self.admin_port, "PUT", path, body)
        assert status in (200, 201), (status, answer)

    def route(self, rid: str, body: dict[str, Any]) -> None:
        """``PUT /apisix/admin/routes/<rid>`` and wait until the proxy serves it (a probe
        header makes each write observable on both stores)."""
        self.put(f"/routes/{rid}", body)
        token = f"{rid}-{time.monotonic_ns()}"
        self.put("/routes/__probe", {"uri": "/__probe", "plugins": {"fault-injection": {
            "abort": {"http_status": 200, "body": token}}}})
        wait_until(lambda: self.get("/__probe").text == token, 5.0)

    def get(self, path: str, headers: dict[str, str] | None = None) -> Response:
        return self.proc.get(path, headers=headers)


@pytest.fixture(params=["embedded", "etcd"])
def faq(request: pytest.FixtureRequest, tmp_path: Path, upstream: Upstream) -> Iterator[FaqGateway]:
    admin_port = free_port()
    admin_conf = {"admin_listen": {"ip": "127.0.0.1", "port": admin_port},
                  "admin_key": [{"name": "admin", "key": KEY, "role": "admin"}]}
    etcd: EtcdServer | None = None
    if request.param == "etcd":
        etcd = EtcdServer().start()
        deployment = {"role": "traditional", "role_traditional": {"config_provider": "etcd"},
                      "etcd": {"host": [etcd.endpoint], "prefix": "/apisix"},
                      "admin": admin_conf}
    else:
        deployment = {"role": "traditional", "role_traditional": {"config_provider": "yaml"},
                      "admin": admin_conf}
    from tests.support.doc_examples import default_plugins

    config = {"deployment": deployment,
              "plugins": list(dict.fromkeys([*default_plugins(), *EXTRA_PLUGINS]))}
    proc = GatewayProcess(tmp_path / "gw", config)
    try:
        proc.start({"routes": []})
        wait_port(admin_port)
        yield FaqGateway(proc, admin_port, upstream)
    finally:
        proc.stop()
        if etcd is not None:
            etcd.cleanup()


def test_gray_release_by_query_argument_with_vars_and_redirect(faq: FaqGateway) -> None:
    faq.route("1", {"uri": "/index.html", "vars": [["arg_id", "<=", "1000"]],
                    "plugins": {"redirect": {"uri": "/test?group_id=1"}}})
    faq.route("2", {"uri": "/index.html", "vars": [["arg_id", ">", "1000"]],
                    "plugins": {"redirect": {"uri": "/test?group_id=2"}}})
    low = faq.get("/index.html?id=999")
    assert (low.status, low.headers["location"]) == (302, "/test?group_id=1")
    high = faq.get("/index.html?id=1001")
    assert (high.status, high.headers["location"]) == (302, "/test?group_id=2")
    assert faq.get("/index.html").status == 404  # no id: neither route matches


def test_http_to_https_with_redirect_http_to_https(faq: FaqGateway) -> None:
    faq.route("1", {"uri": "/hello", "host": "foo.com",
                    "plugins": {"redirect": {"http_to_https": True}}})
    res = faq.get("/hello?x=1", headers={"Host": "foo.com"})
    assert res.status == 301
    assert res.headers["location"].startswith("https://foo.com")
    assert res.headers["location"].endswith("/hello?x=1")


def test_http_to_https_with_redirect_vars_and_a_template(faq: FaqGateway) -> None:
    faq.route("1", {"uri": "/hello", "host": "foo.com", "vars": [["scheme", "==", "http"]],
                    "plugins": {"redirect": {"uri": "https://$host$request_uri",
                                             "ret_code": 301}}})
    res = faq.get("/hello?x=1", headers={"Host": "foo.com"})
    assert (res.status, res.headers["location"]) == (301, "https://foo.com/hello?x=1")


def test_http_to_https_with_a_lua_serverless_function(faq: FaqGateway) -> None:
    faq.route("1", {"uri": "/hello", "plugins": {"serverless-pre-function": {
        "phase": "rewrite",
        "functions": ["return function(conf, ctx) local scheme = ngx.var.scheme; "
                      "if scheme == \"http\" and ngx.var.host == \"foo.com\" then "
                      "ngx.header[\"Location\"] = \"https://foo.com\" .. ngx.var.request_uri; "
                      "ngx.exit(ngx.HTTP_MOVED_PERMANENTLY); end; end"],
    }}, "upstream": {"type": "roundrobin", "nodes": {faq.node: 1}}})
    res = faq.get("/hello?x=1", headers={"Host": "foo.com"})
    assert (res.status, res.headers["location"]) == (301, "https://foo.com/hello?x=1")
    other = faq.get("/hello", headers={"Host": "bar.com"})
    assert (other.status, other.text) == (200, "hello world\n")


def test_regex_routing_through_vars(faq: FaqGateway) -> None:
    faq.route("1", {"uri": "/*", "vars": [["uri", "~~", "^/[a-z]+$"]],
                    "upstream": {"type": "roundrobin", "nodes": {faq.node: 1}}})
    assert faq.get("/hello").text == "hello world\n"
    assert faq.get("/hello1").status == 404
    assert faq.get("/Hello").status == 404


def test_strip_a_path_prefix_with_proxy_rewrite_regex_uri(faq: FaqGateway) -> None:
    faq.route("1", {"uri": "/foo/*", "plugins": {"proxy-rewrite": {
        "regex_uri": ["^/foo/(.*)", "/$1"]}},
        "upstream": {"type": "roundrobin", "nodes": {faq.node: 1}}})
    assert faq.get("/foo/hello").text == "hello world\n"
    echoed = json.loads(faq.get("/foo/echo?a=1").text)
    assert (echoed["path"], echoed["query"]) == ("/echo", "a=1")


def test_a_liveness_route_with_fault_injection(faq: FaqGateway) -> None:
    faq.route("1", {"uri": "/status", "plugins": {"fault-injection": {
        "abort": {"http_status": 200, "body": "fine"}}}})
    res = faq.get("/status")
    assert (res.status, res.text) == (200, "fine")
    assert "/status" not in [r["path"] for r in faq.upstream.requests]


def test_file_logger_lines_stay_readable_with_accept_encoding_set(
    faq: FaqGateway, tmp_path: Path
) -> None:
    log_path = tmp_path / "access.log"
    faq.route("1", {"uri": "/negotiate", "plugins": {
        "proxy-rewrite": {"headers": {"set": {"accept-encoding": "gzip;q=0,deflate,sdch"}}},
        "file-logger": {"path": str(log_path), "include_resp_body": True},
    }, "upstream": {"type": "roundrobin", "nodes": {faq.node: 1}}})
    res = faq.get("/negotiate", headers={"Accept-Encoding": "gzip"})
    assert res.text == "plain text from the upstream\n"
    entry = wait_until(lambda: _last_entry(log_path, "/negotiate"), 5.0)
    assert entry["response"]["body"] == "plain text from the upstream\n"


def _last_entry(path: Path, uri: str) -> dict[str, Any] | None:
    if not path.exists():
        return None
    for line in reversed(path.read_text().splitlines()):
        entry = json.loads(line)
        if entry["request"]["uri"].startswith(uri):
            return entry  # type: ignore[no-any-return]
    return None


def test_traffic_split_canary_by_header_and_by_weight(faq: FaqGateway, upstream2: Upstream) -> None:
    canary = {"type": "roundrobin", "nodes": {f"127.0.0.1:{upstream2.port}": 1}}
    faq.route("1", {"uri": "/server_port", "plugins": {"traffic-split": {"rules": [
        {"match": [{"vars": [["http_release", "==", "new_release"]]}],
         "weighted_upstreams": [{"upstream": canary}]},
        {"weighted_upstreams": [{"upstream": canary, "weight": 1}, {"weight": 2}]},
    ]}}, "upstream": {"type": "roundrobin", "nodes": {faq.node: 1}}})
    ports = [faq.get("/server_port", headers={"release": "new_release"}).text
             for _ in range(3)]
    assert ports == [str(upstream2.port)] * 3
    ports = [faq.get("/server_port").text for _ in range(6)]
    assert ports.count(str(upstream2.port)) == 2
    assert ports.count(str(faq.upstream.port)) == 4


def test_plugin_configs_and_plugin_metadata(faq: FaqGateway, tmp_path: Path) -> None:
    log_path = tmp_path / "meta.log"
    faq.put("/plugin_configs/1", {"desc": "shared", "plugins": {
        "proxy-rewrite": {"headers": {"set": {"X-From": "plugin-config"}}}}})
    faq.put("/plugin_metadata/file-logger", {"log_format": {"host": "$host",
                                                            "client": "$remote_addr"}})
    faq.route("1", {"uri": "/echo", "plugin_config_id": 1,
                    "plugins": {"file-logger": {"path": str(log_path)}},
                    "upstream": {"type": "roundrobin", "nodes": {faq.node: 1}}})
    echoed = json.loads(faq.get("/echo", headers={"Host": "meta.test"}).text)
    assert {k.lower(): v for k, v in echoed["headers"]}["x-from"] == "plugin-config"
    line = wait_until(lambda: log_path.exists() and log_path.read_text().strip(), 5.0)
    entry = json.loads(line.splitlines()[-1])
    assert entry["host"] == "meta.test" and entry["client"] == "127.0.0.1"
