"""The control API (spec §8, issue 6) against real ``sixgate start`` processes.

One embedded gateway (traditional role + YAML store, so the Admin API writes and the control
API reads the same revisions) serves the read-only checks; other gateways cover reloads,
multi-worker nodes, start-up refusals and ``apisix.enable_control: false``.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.gateway import REPO, GatewayProcess, wait_port, wait_until
from tests.support.upstream import Upstream, free_port

KEY = "edd1c9f034335f136f87ad84b625c8f0"

META_DEMO = textwrap.dedent('''
    from plugin_sdk import hookimpl

    name = "meta-demo"
    version = "0.2"
    priority = 42
    scope = "global"
    schema = {"type": "object", "properties": {"x": {"type": "integer", "default": 1}}}
    metadata_schema = {"type": "object", "properties": {
        "greeting": {"type": "string", "default": "hi"},
        "level": {"type": "integer", "default": 3}}}

    @hookimpl
    def access(ctx, conf):
        return None
''')

CHECKS = {"active": {"type": "http", "http_path": "/hello",
                     "healthy": {"interval": 1, "successes": 1},
                     "unhealthy": {"interval": 1, "http_failures": 2}}}


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Reply {self.status} {self.body[:200]!r}>"


def call(port: int, method: str, path: str, headers: dict[str, str] | None = None,
         body: Any = None, admin: bool = False) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        hdrs = dict(headers or {})
        if admin:
            hdrs["X-API-KEY"] = KEY
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=hdrs)
        r = conn.getresponse()
        return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


def start_with_control(workdir: Path, config: dict[str, Any], doc: dict[str, Any] | None = None,
                       ) -> tuple[GatewayProcess, int]:
    control = free_port()
    config = {**config, "apisix": {**config.get("apisix", {}), "enable_control": True,
                                   "control": {"ip": "127.0.0.1", "port": control}}}
    g = GatewayProcess(workdir, config)
    g.start(doc if doc is not None else {"routes": []})
    try:
        wait_port(control, timeout=10)
    except TimeoutError:
        g.stop()
        raise RuntimeError("no control API:\n" + g.logs()) from None
    return g, control


def sixgate_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kernel.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


# -- one embedded gateway for the read-only endpoints ---------------------------------------------


class Embedded:
    def __init__(self, g: GatewayProcess, control: int, admin: int, upstream: Upstream) -> None:
        self.g, self.control, self.admin, self.upstream = g, control, admin, upstream

    def get(self, path: str, headers: dict[str, str] | None = None) -> Reply:
        return call(self.control, "GET", path, headers)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Embedded]:
    workdir = tmp_path_factory.mktemp("control")
    plugins = workdir / "plugins"
    plugins.mkdir()
    (plugins / "meta_demo.py").write_text(META_DEMO)
    up = Upstream().start()
    admin = free_port()
    g, control = start_with_control(workdir, {
        "apisix": {"plugin_dirs": [str(plugins)], "plugin_watch": False},
        "plugins": ["proxy-rewrite", "fault-injection", "meta-demo"],
        "deployment": {
            "role": "traditional", "role_traditional": {"config_provider": "yaml"},
            "admin": {"admin_listen": {"ip": "127.0.0.1", "port": admin},
                      "admin_key": [{"name": "admin", "key": KEY, "role": "admin"}]}},
    })
    try:
        node = f"127.0.0.1:{up.port}"
        writes = [
            ("/upstreams/1", {"type": "roundrobin", "nodes": {node: 1}, "checks": CHECKS}),
            ("/routes/1", {"uri": "/hello", "upstream_id": "1"}),
            ("/routes/2", {"uri": "/named", "upstream": {
                "type": "roundrobin", "nodes": {f"localhost:{up.port}": 1}}}),
            ("/services/s1", {"upstream": {"type": "roundrobin", "nodes": {node: 1},
                                           "checks": CHECKS}}),
            ("/routes/3", {"uri": "/svc", "service_id": "s1"}),
            ("/plugin_metadata/meta-demo", {"greeting": "hello"}),
        ]
        for path, body in writes:
            r = call(admin, "PUT", "/apisix/admin" + path, body=body, admin=True)
            assert r.status in (200, 201), r
        e = Embedded(g, control, admin, up)
        wait_until(lambda: e.get("/v1/sixgate/config").json()["counts"]["services"] == 1)
        wait_until(lambda: g.get("/hello").status == 200)
        yield e
    finally:
        g.stop()
        up.stop()


def test_schema_lists_core_schemas_and_enabled_plugins(embedded: Embedded) -> None:
    r = embedded.get("/v1/schema")
    assert r.status == 200 and r.headers["content-type"].startswith("application/json")
    assert r.body.endswith(b"}\n")
    doc = r.json()
    assert set(doc) == {"main", "plugins", "stream_plugins"}
    assert {"consumer", "consumer_group", "global_rule", "plugin_config", "plugins", "proto",
            "route", "service", "ssl", "stream_route", "upstream",
            "upstream_hash_header_schema", "upstream_hash_vars_schema"} <= set(doc["main"])
    assert doc["main"]["route"]["properties"]["uri"]
    assert set(doc["plugins"]) == {"proxy-rewrite", "fault-injection", "meta-demo"}
    demo = doc["plugins"]["meta-demo"]
    assert demo["version"] == "0.2" and demo["priority"] == 42 and demo["scope"] == "global"
    assert demo["schema"]["properties"]["x"] == {"type": "integer", "default": 1}
    assert demo["metadata_schema"]["properties"]["greeting"]["default"] == "hi"
    assert doc["plugins"]["fault-injection"]["priority"] == 11000
    assert doc["stream_plugins"] == {}


def test_routes_services_upstreams_show_the_running_config(embedded: Embedded) -> None:
    r = embedded.get("/v1/routes")
    assert r.status == 200
    routes = {item["value"]["id"]: item for item in r.json()}
    assert set(routes) == {"1", "2", "3"}
    one = routes["1"]
    assert set(one) == {"key", "value", "createdIndex", "modifiedIndex", "orig_modifiedIndex",
                        "has_domain"}
    assert one["key"] == "/apisix/routes/1"
    assert one["value"]["uri"] == "/hello" and one["value"]["upstream_id"] == "1"
    assert one["value"]["priority"] == 0 and one["value"]["status"] == 1  # defaults filled
    assert one["has_domain"] is False and one["orig_modifiedIndex"] == one["modifiedIndex"]
    # the indexes are the store's: the Admin API shows the same
    stored = call(embedded.admin, "GET", "/apisix/admin/routes/1", admin=True).json()
    assert (one["createdIndex"], one["modifiedIndex"]) == (
        stored["createdIndex"], stored["modifiedIndex"])
    named = routes["2"]
    assert named["has_domain"] is True
    nodes = named["value"]["upstream"]["nodes"]
    assert nodes == [{"host": "localhost", "port": embedded.upstream.port, "weight": 1,
                      "priority": 0}]  # the array form
    assert named["value"]["upstream"]["pass_host"] == "pass"
    # one by id: APISIX's singular path and the plural
    for path in ("/v1/route/2", "/v1/routes/2"):
        r = embedded.get(path)
        assert r.status == 200 and r.json() == named
    r = embedded.get("/v1/route/nope")
    assert r.status == 404 and r.json() == {"error_msg": "route[nope] not found"}

    ups = embedded.get("/v1/upstreams").json()
    assert [u["key"] for u in ups] == ["/apisix/upstreams/1"]
    value = ups[0]["value"]
    assert value["nodes"] == [{"host": "127.0.0.1", "port": embedded.upstream.port,
                               "weight": 1, "priority": 0}]
    assert value["scheme"] == "http" and value["hash_on"] == "vars"
    assert value["checks"]["active"]["http_path"] == "/hello"
    assert embedded.get("/v1/upstream/1").json() == ups[0]
    r = embedded.get("/v1/upstream/9")
    assert r.status == 404 and r.json() == {"error_msg": "upstream[9] not found"}

    svcs = embedded.get("/v1/services").json()
    assert [s["key"] for s in svcs] == ["/apisix/services/s1"]
    assert embedded.get("/v1/service/s1").json() == svcs[0]
    assert embedded.get("/v1/services/s1").json() == svcs[0]
    r = embedded.get("/v1/service/x")
    assert r.status == 404 and r.json() == {"error_msg": "service[x] not found"}


def test_plugin_metadata(embedded: Embedded) -> None:
    r = embedded.get("/v1/plugin_metadatas")
    assert r.status == 200
    assert r.json() == [{"id": "meta-demo", "greeting": "hello", "level": 3}]
    r = embedded.get("/v1/plugin_metadata/meta-demo")
    assert r.status == 200 and r.json() == {"id": "meta-demo", "greeting": "hello", "level": 3}
    r = embedded.get("/v1/plugin_metadata/proxy-rewrite")
    assert r.status == 404
    assert r.json() == {"error_msg": "plugin metadata[proxy-rewrite] not found"}


def test_healthcheck(embedded: Embedded) -> None:
    r = embedded.get("/v1/healthcheck")
    assert r.status == 200
    rows = r.json()
    assert isinstance(rows, list)
    if "x-sixgate-note" in r.headers:  # kernel.upstream.health not there yet
        assert rows == [] and "kernel.upstream.health" in r.headers["x-sixgate-note"]
    else:  # upstream 1 has checks and has served traffic (/hello)
        assert "/apisix/upstreams/1" in [row["name"] for row in rows]
    for row in rows:
        assert {"name", "type", "nodes"} <= set(row)
        for node in row["nodes"]:
            assert {"ip", "port", "status", "counter"} <= set(node)
    # one source
    r = embedded.get("/v1/healthcheck/upstreams/1")
    assert r.status == 200
    one = r.json()
    assert one["name"].endswith("/upstreams/1") and one["type"] == "http"
    assert isinstance(one["nodes"], list)
    r = embedded.get("/v1/healthcheck/services/s1")
    assert r.status == 200 and r.json()["name"].endswith("/services/s1")
    cases = {
        "/v1/healthcheck/routes/1": (404, "no checker for routes[1]"),  # upstream_id: none
        "/v1/healthcheck/routes/9": (404, "routes[9] not found"),
        "/v1/healthcheck/upstreams/9": (404, "upstreams[9] not found"),
        "/v1/healthcheck/foo/1": (400, "invalid src type foo"),
        "/v1/healthcheck/routes": (404, "missing src id for src type routes"),
    }
    for path, (status, message) in cases.items():
        r = embedded.get(path)
        assert (r.status, r.json()) == (status, {"error_msg": message}), path
    r = embedded.get("/v1/healthcheck", headers={"Accept": "text/html"})
    assert r.status == 200 and r.headers["content-type"].startswith("text/html")
    assert b"<h1>APISIX upstream check status</h1>" in r.body
    r = embedded.get("/v1/healthcheck/upstreams/1", headers={"Accept": "text/html"})
    assert r.status == 200 and b"<th>TIMEOUT Failures</th>" in r.body


def test_unknown_paths_and_methods_are_empty_404s(embedded: Embedded) -> None:
    for method, path in (("GET", "/v1/nope"), ("GET", "/"), ("GET", "/v1/plugins/reload"),
                         ("DELETE", "/v1/routes"), ("GET", "/v1/route/1/extra"),
                         ("GET", "/v1/discovery/dns/dump")):
        r = call(embedded.control, method, path)
        assert (r.status, r.body) == (404, b""), (method, path)
    r = call(embedded.control, "POST", "/v1/gc")
    assert (r.status, r.body) == (200, b"")


def test_sixgate_endpoints(embedded: Embedded) -> None:
    r = embedded.get("/v1/sixgate/config")
    assert r.status == 200
    doc = r.json()
    assert doc["worker"] == 0 and isinstance(doc["pid"], int)
    assert doc["generation"] >= 1 and doc["version"].startswith("yaml:")
    assert abs(doc["built_at"] - time.time()) < 600
    counts = doc["counts"]
    assert (counts["routes"], counts["upstreams"], counts["services"],
            counts["plugin_metadata"]) == (3, 1, 1, 1)
    assert doc["loaded"]["routes"] == 3 and doc["loaded"]["upstreams"] == 1
    assert doc["build_errors"] == [] and doc["last_error"] is None
    assert doc["store_errors"] == []

    plugins = embedded.get("/v1/sixgate/plugins").json()
    assert plugins["worker"] == 0 and plugins["generation"] >= 1
    assert plugins["last"]["trigger"] == "startup" and plugins["last"]["ok"] is True
    assert plugins["last_failure"] is None
    assert [p["name"] for p in plugins["plugins"]] == [
        "fault-injection", "proxy-rewrite", "meta-demo"]

    r = embedded.get("/v1/sixgate/certificates")
    assert r.status == 200
    certs = r.json()
    assert certs["total"] == len(certs["list"])
    if "note" in certs:  # kernel.tls not there yet
        assert certs["list"] == [] and "kernel.tls" in certs["note"]
    assert certs["list"] == []  # no ssl objects configured


def self_signed(workdir: Path, sni: str, days: int) -> dict[str, Any] | None:
    """An ssl object with a fresh self-signed certificate (``None`` without openssl)."""
    key, cert = workdir / "tls.key", workdir / "tls.pem"
    done = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", str(days), "-subj", f"/CN={sni}"],
        capture_output=True, check=False)  # fmt: skip
    if done.returncode != 0:
        return None
    return {"id": "c1", "sni": sni, "cert": cert.read_text(), "key": key.read_text()}


# -- reloads ---------------------------------------------------------------------------------------


def test_put_reload_rereads_the_plugin_list_and_reports_refusals(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "meta_demo.py").write_text(META_DEMO)
    cert = self_signed(tmp_path, "control.example.com", days=30)
    g, control = start_with_control(tmp_path / "gw", {
        "apisix": {"plugin_dirs": [str(plugins)], "plugin_watch": False},
        "plugins": ["proxy-rewrite", "fault-injection", "meta-demo"],
    }, {"routes": [{"id": "r1", "uri": "/r1", "plugins": {"meta-demo": {}},
                    "upstream": {"nodes": {"127.0.0.1:1": 1}}}],
        "ssls": [cert] if cert else []})
    try:
        if cert is not None:  # the certificates of the live state, with their expiry
            certs = call(control, "GET", "/v1/sixgate/certificates").json()
            assert "note" not in certs and certs["total"] == 1
            row = certs["list"][0]
            assert row["id"] == "c1" and row["snis"] == ["control.example.com"]
            assert row["not_after"] and 28 <= row["days_left"] <= 30

        def schema_plugins() -> set[str]:
            return set(call(control, "GET", "/v1/schema").json()["plugins"])

        def status() -> dict[str, Any]:
            return dict(call(control, "GET", "/v1/sixgate/plugins").json())

        assert schema_plugins() == {"proxy-rewrite", "fault-injection", "meta-demo"}
        generation = status()["generation"]
        # a standalone file has no revisions: every item carries the state generation
        route = call(control, "GET", "/v1/route/r1").json()
        state = call(control, "GET", "/v1/sixgate/config").json()
        assert route["key"] == "/apisix/routes/r1"
        assert route["modifiedIndex"] == route["createdIndex"] == state["generation"]

        # change config.yaml's plugin list, then PUT /v1/plugins/reload
        g.config["plugins"] = ["fault-injection", "meta-demo"]
        (g.conf / "config.yaml").write_text(yaml.safe_dump(g.config))
        r = call(control, "PUT", "/v1/plugins/reload")
        assert (r.status, r.body) == (200, b"done")
        assert r.headers["content-type"].startswith("text/plain")
        wait_until(lambda: schema_plugins() == {"fault-injection", "meta-demo"})
        last = status()["last"]
        assert (last["trigger"], last["ok"], last["generation"]) == ("control", True,
                                                                     generation + 1)

        # a broken plugin module: the reload is refused and reported, nothing changes
        (plugins / "meta_demo.py").write_text(META_DEMO + "\ndef broken(:\n")
        r = call(control, "PUT", "/v1/plugins/reload")
        assert (r.status, r.body) == (200, b"done")
        doc = wait_until(lambda: (s := status())["attempts"] >= 3 and s)
        assert doc["last"]["trigger"] == "control" and doc["last"]["ok"] is False
        assert doc["last"]["generation"] == generation + 1 == doc["generation"]
        assert doc["last"]["errors"] and any("meta_demo" in e or "meta-demo" in e
                                             for e in doc["last"]["errors"])
        assert doc["last_failure"] == doc["last"]
        assert schema_plugins() == {"fault-injection", "meta-demo"}

        # a refused apisix.yaml shows up among the store errors
        g.write_apisix("routes:\n  - id: bad\n    uri: 42\n#END\n")
        config = wait_until(lambda: (c := call(control, "GET", "/v1/sixgate/config").json())
                            ["store_errors"] and c)
        assert any("routes[0]" in e["message"] for e in config["store_errors"])
        assert config["counts"]["routes"] == 1  # still serving the last good file
    finally:
        g.stop()


def test_one_worker_serves_control_and_reload_reaches_every_worker(tmp_path: Path) -> None:
    g, control = start_with_control(tmp_path, {
        "nginx_config": {"worker_processes": 2},
        "plugins": ["proxy-rewrite", "fault-injection"],
    })
    try:
        for _ in range(5):
            assert call(control, "GET", "/v1/sixgate/config").json()["worker"] == 0
        config = str(g.conf / "config.yaml")

        def generations() -> dict[int, int]:
            result = sixgate_cli("plugins", "status", "--json", "-c", config)
            if result.returncode != 0:
                return {}
            return {d["worker"]: d["generation"] for d in json.loads(result.stdout)}

        before = wait_until(lambda: (gens := generations()) and len(gens) == 2 and gens)
        assert call(control, "PUT", "/v1/plugins/reload").body == b"done"
        wait_until(lambda: (gens := generations()).keys() == before.keys()
                   and all(gen > before[w] for w, gen in gens.items()), timeout=10)
    finally:
        g.stop()


# -- start-up: disabled, conflicts ----------------------------------------------------------------


def test_enable_control_false_serves_nothing(tmp_path: Path) -> None:
    control = free_port()
    g = GatewayProcess(tmp_path, {"apisix": {
        "enable_control": False, "control": {"ip": "127.0.0.1", "port": control}}})
    g.start({"routes": []})
    try:
        assert g.get("/anything").status == 404  # the proxy serves
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", control), 0.5).close()
    finally:
        g.stop()


def _write_config(path: Path, apisix: dict[str, Any], **extra: Any) -> str:
    path.mkdir(parents=True, exist_ok=True)
    doc = {"apisix": {"enable_ipv6": False, **apisix},
           "deployment": {"role": "data_plane", "role_data_plane": {"config_provider": "yaml"}},
           **extra}
    (path / "config.yaml").write_text(yaml.safe_dump(doc))
    (path / "apisix.yaml").write_text("routes: []\n#END\n")
    return str(path / "config.yaml")


def test_port_conflicts_are_refused_with_a_clear_error(tmp_path: Path) -> None:
    proxy, control, admin = free_port(), free_port(), free_port()
    # the control port on a proxy port
    config = _write_config(tmp_path / "a", {"node_listen": [proxy],
                                            "control": {"port": proxy}})
    result = sixgate_cli("start", "-c", config)
    assert result.returncode == 1
    assert f"http listen port {proxy} conflicts with control port" in result.stderr
    # the control port on the admin port
    config = _write_config(tmp_path / "b", {"node_listen": [proxy], "control": {"port": admin}},
                           deployment={
        "role": "traditional", "role_traditional": {"config_provider": "yaml"},
        "admin": {"admin_listen": {"ip": "127.0.0.1", "port": admin},
                  "admin_key": [{"name": "admin", "key": KEY, "role": "admin"}]}})
    result = sixgate_cli("start", "-c", config)
    assert result.returncode == 1
    assert f"control port {admin} conflicts with admin port" in result.stderr
    # the control address held by another process
    with socket.socket() as s:
        s.bind(("127.0.0.1", control))
        s.listen()
        config = _write_config(tmp_path / "c", {"node_listen": [proxy],
                                                "control": {"port": control}})
        result = sixgate_cli("start", "-c", config)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{control} for the control API" in result.stderr


# -- in-process pieces ---------------------------------------------------------------------------


def test_control_address_defaults_and_switch(tmp_path: Path) -> None:
    from kernel.config import load_config
    from kernel.control import control_address

    path = tmp_path / "config.yaml"
    path.write_text("apisix:\n  node_listen: [9080]\n")
    assert control_address(load_config(path)) == ("127.0.0.1", 9090)  # APISIX's defaults
    path.write_text("apisix:\n  control:\n    ip: 0.0.0.0\n    port: 9099\n")
    assert control_address(load_config(path)) == ("0.0.0.0", 9099)
    path.write_text("apisix:\n  enable_control: false\n")
    assert control_address(load_config(path)) is None


def test_optional_reports_are_looked_up_lazily(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from kernel.control import optional

    assert optional.find("kernel.no_such_module", "report") is None
    assert optional.find("kernel.store.base", "no_such_function") is None
    rows, note = optional.run(("kernel.no_such_module", "report"), object())
    assert rows == [] and note is not None and "kernel.no_such_module.report" in note
    # a module that exists but fails to import is an error, not "missing"
    (tmp_path / "broken_report_mod.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError):
        optional.find("broken_report_mod", "report")
