"""The prometheus plugin and the node's export server (spec §7.16, case 56).

* the text format, the adding-up of workers and the SDK registry, without a gateway;
* the metric lines of a route through the plugin test kit (in-process gateway, its export
  server reading the gateway's own values);
* ``sixgate start`` with two workers: one scrape shows every request of both workers, a killed
  worker's counts stay counted exactly once; a custom ``export_addr``; the etcd gauges against a
  real etcd; the start-up port check.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kernel.exporter import ExportServer, ExportSettings, render
from kernel.metrics import LocalCollector, cumulative_part, merge
from plugin_sdk import metrics as sdk_metrics
from plugin_sdk.testing import GatewayHarness
from tests.support.etcd import EtcdServer
from tests.support.gateway import REPO, GatewayProcess, child_pids, wait_port, wait_until
from tests.support.upstream import Upstream, free_port

BUCKETS = ["1", "2", "5", "10", "20", "50", "100", "200", "500", "1000", "2000", "5000", "10000",
           "30000", "60000", "+Inf"]
TAIL = 'request_type="traditional_http",request_llm_model="",llm_model=""'


# --- scraping ---------------------------------------------------------------------------------


def scrape(port: int, uri: str = "/apisix/prometheus/metrics") -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", uri)
        r = conn.getresponse()
        body = r.read().decode()
        assert r.status == 200, (r.status, body)
        assert r.getheader("Content-Type", "").startswith("text/plain; version=0.0.4")
        return body
    finally:
        conn.close()


def value(text: str, line_prefix: str) -> float | None:
    """The value of the one sample line starting with ``line_prefix`` (``None``: absent)."""
    found = [ln for ln in text.splitlines() if ln.startswith(line_prefix)]
    assert len(found) <= 1, found
    return float(found[0].rsplit(" ", 1)[1]) if found else None


def status_total(text: str, route: str) -> float:
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
               if ln.startswith("apisix_http_status{") and f',route="{route}",' in ln)


async def _running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


@pytest.fixture
def kit_export(sixgate: GatewayHarness) -> Iterator[int]:
    """An export server on a free port reading the kit's in-process gateway."""
    loop = sixgate.call(_running_loop())
    settings = ExportSettings("127.0.0.1", 0, "/apisix/prometheus/metrics", "apisix_")
    server = ExportServer(sixgate.gateway.cfg, settings,
                          LocalCollector(sixgate.gateway, loop)).start()
    yield server.port
    server.stop()


# --- without a gateway ------------------------------------------------------------------------


def test_text_format() -> None:
    families: list[Any] = [
        ("b_total", "counter", "Bytes\nseen", ("type", "path"), None,
         {("in", 'a"b\\c\nd'): 3, ("out", "/"): 2.5}),
        ("lat", "histogram", "Latency", ("route",), (1, 5), {("r1",): [2, 0, 1, 13.5]}),
        ("up", "gauge", "Up", (), "sum", {(): 1}),
    ]
    text = render(families, "x_")
    assert text.splitlines() == [
        "# HELP x_b_total Bytes\\nseen",
        "# TYPE x_b_total counter",
        'x_b_total{type="in",path="a\\"b\\\\c\\nd"} 3',
        'x_b_total{type="out",path="/"} 2.5',
        "# HELP x_lat Latency",
        "# TYPE x_lat histogram",
        'x_lat_bucket{route="r1",le="1"} 2',
        'x_lat_bucket{route="r1",le="5"} 2',
        'x_lat_bucket{route="r1",le="+Inf"} 3',
        'x_lat_count{route="r1"} 3',
        'x_lat_sum{route="r1"} 13.5',
        "# HELP x_up Up",
        "# TYPE x_up gauge",
        "x_up 1",
    ]


def test_merge_of_workers() -> None:
    def snap(n: int, gauge: int, active: int) -> dict[str, Any]:
        return {
            "families": [
                ("c", "counter", "", ("r",), None, {("1",): n}),
                ("h", "histogram", "", ("r",), (1,), {("1",): [n, 1, 0.5 + n]}),
                ("g", "gauge", "", (), "max", {(): gauge}),
            ],
            "kernel": {"requests": n, "accepted": 1, "handled": 1, "active": active,
                       "upstream_status": {("u", "1.1.1.1", "80"): gauge % 2},
                       "modify_indexes": {"routes": gauge}},
        }

    a, b, dead = snap(2, 7, 1), snap(3, 4, 2), snap(10, 99, 5)
    merged = merge([a, b], [cumulative_part(dead)])
    fams = {f[0]: f for f in merged["families"]}
    assert fams["c"][5] == {("1",): 15}
    assert fams["h"][5] == {("1",): [15, 3, 16.5]}
    assert fams["g"][5] == {(): 7}  # live workers only, by max
    k = merged["kernel"]
    assert (k["requests"], k["accepted"], k["active"]) == (15, 3, 3)
    assert k["upstream_status"] == {("u", "1.1.1.1", "80"): 0}  # the lowest live value
    assert k["modify_indexes"] == {"routes": 7}
    # another shape of the same family (a worker from before a reload) is left out
    other = {"families": [("c", "counter", "", ("r", "x"), None, {("1", "2"): 5})]}
    assert {f[0]: f for f in merge([a], [other])["families"]}["c"][5] == {("1",): 2}


def test_sdk_families_keep_values_for_the_same_shape() -> None:
    c = sdk_metrics.counter("test_prom_keep", "x", ("a",))
    c.inc(("1",))
    c.child(("1",))[0] += 2
    assert sdk_metrics.counter("test_prom_keep", "y", ("a",)) is c
    assert c.snapshot() == {("1",): 3}
    fresh = sdk_metrics.counter("test_prom_keep", "x", ("a", "b"))
    assert fresh is not c and fresh.snapshot() == {}
    h = sdk_metrics.histogram("test_prom_hist", "x", (), buckets=[1, 2])
    for v in (0.5, 1, 1.5, 9):
        h.observe((), v)
    assert h.snapshot() == {(): [2, 1, 1, 12.0]}
    with pytest.raises(ValueError):
        sdk_metrics.histogram("test_prom_bad", "x", (), buckets=[2, 1])
    with pytest.raises(ValueError):
        sdk_metrics.counter("test_prom_bad", "x", ("le",))
    for name in ("test_prom_keep", "test_prom_hist"):
        assert sdk_metrics.unregister(name)


# --- through the plugin test kit --------------------------------------------------------------


def raw_get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One request on its own connection: ``(bytes sent, the whole response)``."""
    head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    for name, val in (headers or {}).items():
        head += f"{name}: {val}\r\n"
    data = (head + "Connection: close\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), 5) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return len(data), b"".join(chunks)


def histogram_lines(text: str, kind: str, route: str) -> dict[str, float]:
    """``le -> value`` of the ``http_latency`` series ``type=kind, route=route``, plus
    ``count`` and ``sum``."""
    out: dict[str, float] = {}
    for ln in text.splitlines():
        m = re.match(r'apisix_http_latency_(bucket|count|sum)\{type="(\w+)",route="([^"]*)",'
                     r'(.*)\} (\S+)$', ln)
        if not m or m.group(2) != kind or m.group(3) != route:
            continue
        if m.group(1) == "bucket":
            le = re.search(r'le="([^"]+)"', m.group(4))
            assert le is not None
            out[le.group(1)] = float(m.group(5))
        else:
            out[m.group(1)] = float(m.group(5))
    return out


@pytest.mark.sixgate(plugins=["prometheus", "key-auth"])
def test_route_metric_lines(sixgate: GatewayHarness, kit_export: int) -> None:
    up = sixgate.upstream
    assert up is not None
    node = up.node
    sixgate.add_consumer("jack", {"key-auth": {"key": "k-jack"}})
    up.respond(404, "not here", path="/hello3")
    sixgate.apply({"routes": [
        {"id": "p1", "uri": "/hello", "plugins": {"prometheus": {}, "key-auth": {}},
         "upstream": node},
        {"id": "3", "uri": "/hello3", "plugins": {"prometheus": {}}, "upstream": node},
    ], "consumers": sixgate.doc.get("consumers", [])})
    sent = received = 0
    for _ in range(3):
        n, response = raw_get(sixgate.port, "/hello", {"apikey": "k-jack"})
        assert response.startswith(b"HTTP/1.1 200 "), response[:100]
        sent, received = sent + n, received + len(response)
    assert raw_get(sixgate.port, "/hello3")[1].startswith(b"HTTP/1.1 404 ")
    text = scrape(kit_export)
    upstream = f'node="127.0.0.1",{TAIL}'
    assert (f'apisix_http_status{{code="200",route="p1",matched_uri="/hello",matched_host="",'
            f'service="",consumer="jack",{upstream},response_source="upstream"}} 3'
            in text.splitlines()), text
    assert (f'apisix_http_status{{code="404",route="3",matched_uri="/hello3",matched_host="",'
            f'service="",consumer="",{upstream},response_source="upstream"}} 1'
            in text.splitlines())
    assert "# TYPE apisix_http_status counter" in text
    assert "# TYPE apisix_http_latency histogram" in text
    assert "# TYPE apisix_bandwidth counter" in text
    for kind in ("request", "upstream", "apisix"):
        series = histogram_lines(text, kind, "p1")
        assert list(series)[:len(BUCKETS)] == BUCKETS, (kind, series)
        counts = [series[le] for le in BUCKETS]
        assert counts == sorted(counts) and counts[-1] == series["count"] == 3, (kind, series)
        assert series["sum"] >= 0
    assert (f'apisix_http_latency_count{{type="request",route="p1",service="",consumer="jack",'
            f'{upstream}}} 3' in text.splitlines())
    assert value(text, f'apisix_bandwidth{{type="egress",route="p1",service="",consumer="jack",'
                       f'{upstream}}}') == received
    ingress = value(text, f'apisix_bandwidth{{type="ingress",route="p1",service="",'
                          f'consumer="jack",{upstream}}}')
    assert ingress is not None and abs(ingress - sent) <= 3 * 3, (ingress, sent)
    # the kernel's gauges of this (single-process) gateway
    assert value(text, "apisix_http_requests_total ") == 4
    assert value(text, 'apisix_nginx_http_current_connections{state="accepted"}') == 4
    assert re.search(r'^apisix_node_info\{hostname="[^"]+",version="[\d.]+"\} 1$', text, re.M)
    # the route stays on the kernel's synchronous callback path
    assert sixgate.gateway.state.routes["3"].direct


@pytest.mark.sixgate(plugins=["prometheus", "fault-injection"])
def test_gateway_made_answers_and_global_rule(sixgate: GatewayHarness, kit_export: int) -> None:
    sixgate.add_global_rule({"prometheus": {}})
    sixgate.add_route("/abort", id="fi",
                      plugins={"fault-injection": {"abort": {"http_status": 403, "body": "no"}}})
    assert sixgate.get("/abort").status == 403
    assert sixgate.get("/nowhere").status == 404
    text = scrape(kit_export)
    assert (f'apisix_http_status{{code="403",route="fi",matched_uri="/abort",matched_host="",'
            f'service="",consumer="",node="",{TAIL},response_source="apisix"}} 1'
            in text.splitlines()), text
    assert (f'apisix_http_status{{code="404",route="",matched_uri="",matched_host="",service="",'
            f'consumer="",node="",{TAIL},response_source="apisix"}} 1' in text.splitlines())
    assert histogram_lines(text, "upstream", "fi") == {}  # no upstream answered
    assert histogram_lines(text, "apisix", "fi")["count"] == 1
    assert histogram_lines(text, "request", "")["count"] == 1


@pytest.mark.sixgate(plugins=["prometheus"], plugin_attr={"prometheus": {
    "default_buckets": [10, 100],
    "metrics": {"http_status": {"extra_labels": [{"upstream_addr": "$upstream_addr"}]},
                "bandwidth": {"extra_labels": [{"method": "$request_method"}]}},
}})
def test_extra_labels_buckets_and_names(sixgate: GatewayHarness, kit_export: int) -> None:
    up = sixgate.upstream
    assert up is not None
    sixgate.apply({
        "services": [{"id": "s1", "name": "svc-one", "upstream": up.node}],
        "routes": [{"id": "n1", "name": "route-one", "uri": "/named*", "service_id": "s1",
                    "host": "a.example", "plugins": {"prometheus": {"prefer_name": True}}}],
    })
    assert sixgate.get("/named/x", headers={"Host": "a.example"}).status == 200
    text = scrape(kit_export)
    assert (f'apisix_http_status{{code="200",route="route-one",matched_uri="/named*",'
            f'matched_host="a.example",service="svc-one",consumer="",node="127.0.0.1",{TAIL},'
            f'response_source="upstream",upstream_addr="127.0.0.1:{up.port}"}} 1'
            in text.splitlines()), text
    assert list(histogram_lines(text, "request", "route-one")) == ["10", "100", "+Inf", "count",
                                                                   "sum"]
    assert value(text, f'apisix_bandwidth{{type="ingress",route="route-one",service="svc-one",'
                       f'consumer="",node="127.0.0.1",{TAIL},method="GET"}}')


@pytest.mark.sixgate(plugins=["prometheus"])
def test_disabled_labels_metadata(sixgate: GatewayHarness, kit_export: int) -> None:
    sixgate.add_route("/dl", id="dl", plugins={"prometheus": {}})
    sixgate.set_plugin_metadata("prometheus",
                                {"disabled_labels": {"http_status": ["matched_uri", "node"]}})
    assert sixgate.get("/dl").status == 200
    text = scrape(kit_export)
    assert (f'apisix_http_status{{code="200",route="dl",matched_uri="",matched_host="",'
            f'service="",consumer="",node="",{TAIL},response_source="upstream"}} 1'
            in text.splitlines()), text


@pytest.mark.sixgate(plugins=["prometheus"])
def test_counts_survive_a_plugin_reload(sixgate: GatewayHarness, kit_export: int) -> None:
    sixgate.add_route("/rl", id="rl", plugins={"prometheus": {}})
    for _ in range(2):
        assert sixgate.get("/rl").status == 200
    assert sixgate.reload_plugins().ok
    assert sixgate.get("/rl").status == 200
    assert status_total(scrape(kit_export), "rl") == 3
    # plugin_attr that changes a family's labels starts that family afresh
    assert sixgate.reload_plugins(plugin_attr={"prometheus": {"metrics": {"http_status": {
        "extra_labels": [{"method": "$request_method"}]}}}}).ok
    assert sixgate.get("/rl").status == 200
    text = scrape(kit_export)
    assert status_total(text, "rl") == 1
    assert 'response_source="upstream",method="GET"} 1' in text
    assert histogram_lines(text, "request", "rl")["count"] == 4


@pytest.mark.sixgate(plugins=["prometheus"])
def test_request_contexts_are_freed_without_the_cyclic_gc(sixgate: GatewayHarness) -> None:
    """The hook reads ``ctx.var``; the kernel must still free each request's context by
    reference counting (a context left to the cyclic GC costs ~5 us a request)."""
    import gc

    from kernel.context import RequestContext

    sixgate.add_route("/gc", id="gc", plugins={"prometheus": {}})
    assert sixgate.get("/gc").status == 200
    gc.collect()
    gc.disable()
    try:
        for _ in range(20):
            assert sixgate.get("/gc").status == 200
        alive = sum(1 for o in gc.get_objects() if isinstance(o, RequestContext))
    finally:
        gc.enable()
    assert alive <= 2, alive


# --- sixgate start ----------------------------------------------------------------------------


def node(up: Upstream) -> dict[str, Any]:
    return {"type": "roundrobin", "nodes": {f"127.0.0.1:{up.port}": 1}}



def serving_pid(conn: http.client.HTTPConnection, gateway_port: int, pids: list[int]) -> int:
    """The worker holding the gateway's end of the (open) client connection ``conn``."""
    assert conn.sock is not None
    client_port = conn.sock.getsockname()[1]
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if (int(fields[1].split(":")[1], 16) == gateway_port
                and int(fields[2].split(":")[1], 16) == client_port):
            inode = fields[9]
    assert inode is not None, client_port
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    raise AssertionError(f"no worker holds the connection from port {client_port}")


def prometheus_gateway(tmp_path: Path, export_port: int, extra: dict[str, Any] | None = None,
                       ) -> GatewayProcess:
    config: dict[str, Any] = {
        "plugins": ["prometheus"],
        "plugin_attr": {"prometheus": {"export_addr": {"ip": "127.0.0.1", "port": export_port}}},
    }
    for key, val in (extra or {}).items():
        config[key] = {**config.get(key, {}), **val} if isinstance(val, dict) else val
    # GatewayProcess turns the export server off for other tests (a fixed port otherwise)
    config["plugin_attr"]["prometheus"]["enable_export_server"] = True
    return GatewayProcess(tmp_path, config)


def test_two_workers_one_scrape_and_a_killed_worker(tmp_path: Path, upstream: Upstream) -> None:
    export_port = free_port()
    g = prometheus_gateway(tmp_path, export_port, {"nginx_config": {"worker_processes": 2}})
    g.start({"routes": [{"id": "1", "uri": "/hello", "plugins": {"prometheus": {}},
                         "upstream": node(upstream)}]})
    try:
        proc = g.proc
        assert proc is not None
        workers = wait_until(lambda: len(kids := child_pids(proc.pid)) == 2 and kids, timeout=10)
        wait_port(export_port)
        # N requests on connections spread over both workers (SO_REUSEPORT)
        conns = [http.client.HTTPConnection("127.0.0.1", g.port, timeout=10) for _ in range(24)]
        served: set[int] = set()
        for conn in conns:
            conn.request("GET", "/hello")
            assert conn.getresponse().read() == b"hello world\n"
            served.add(serving_pid(conn, g.port, workers))
        for conn in conns:
            conn.request("GET", "/hello")
            assert conn.getresponse().status == 200
            conn.close()
        assert served == set(workers), "both workers must have served"
        text = scrape(export_port)  # no wait: the scrape has every worker publish first
        assert status_total(text, "1") == 48, text
        assert value(text, 'apisix_http_latency_count{type="request",route="1",service="",'
                           f'consumer="",node="127.0.0.1",{TAIL}}}') == 48
        assert value(text, "apisix_http_requests_total ") == 48
        assert (value(text, 'apisix_nginx_http_current_connections{state="accepted"}')
                or 0) >= 24
        # a killed worker: what a scrape showed stays counted, exactly once
        os.kill(workers[0], signal.SIGKILL)
        replaced = wait_until(lambda: len(kids := child_pids(proc.pid)) == 2
                              and workers[0] not in kids and kids, timeout=15)
        assert status_total(scrape(export_port), "1") == 48
        wait_until(lambda: g.get("/hello").status == 200, timeout=10)  # 1 request
        for _ in range(9):
            assert g.get("/hello").status == 200
        text = scrape(export_port)
        assert status_total(text, "1") == 58, text
        assert value(text, "apisix_http_requests_total ") == 58
        assert workers[1] in replaced
        assert g.stop() == 0
    finally:
        g.stop()


def test_custom_export_and_etcd_gauges(tmp_path: Path, etcd: EtcdServer,
                                       upstream: Upstream) -> None:
    revision = etcd.put("/apisix/routes/1", {"id": "1", "uri": "/hello",
                                             "plugins": {"prometheus": {}},
                                             "upstream": node(upstream)})
    export_port = free_port()
    g = prometheus_gateway(tmp_path, export_port, {
        "deployment": {"role": "data_plane",
                       "role_data_plane": {"config_provider": "etcd"},
                       "etcd": {"host": [etcd.endpoint], "prefix": "/apisix",
                                "resync_delay": 0.2}},
        "plugin_attr": {"prometheus": {"export_addr": {"ip": "127.0.0.1", "port": export_port},
                                       "export_uri": "/metrics", "metric_prefix": "sg_"}},
    })
    g.start()
    try:
        wait_until(lambda: g.get("/hello").status == 200, timeout=10)
        text = scrape(export_port, "/metrics")
        assert value(text, "sg_etcd_reachable ") == 1, text
        assert value(text, 'sg_etcd_modify_indexes{key="routes"}') == revision
        assert value(text, 'sg_etcd_modify_indexes{key="max_modify_index"}') == revision
        assert (value(text, 'sg_etcd_modify_indexes{key="x_etcd_index"}') or 0) >= revision
        assert value(text, 'sg_etcd_modify_indexes{key="services"}') == 0
        assert status_total(text.replace("sg_http_status", "apisix_http_status"), "1") == 1
        assert not any(ln.startswith("apisix_") for ln in text.splitlines())
        conn = http.client.HTTPConnection("127.0.0.1", export_port, timeout=5)
        conn.request("GET", "/apisix/prometheus/metrics")
        assert conn.getresponse().status == 404
        conn.close()
        etcd.stop()
        assert value(scrape(export_port, "/metrics"), "sg_etcd_reachable ") == 0
        assert g.get("/hello").status == 200  # the last good config keeps serving
    finally:
        g.stop()


def test_start_refuses_a_port_conflict(tmp_path: Path) -> None:
    g = prometheus_gateway(tmp_path, 0)
    g.config["plugin_attr"]["prometheus"]["export_addr"]["port"] = g.port
    import yaml

    (g.conf / "config.yaml").write_text(yaml.safe_dump(g.config))
    done = subprocess.run([sys.executable, "-m", "kernel.cli", "start", "-c",
                           str(g.conf / "config.yaml")], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0
    assert f"http listen port {g.port} conflicts with prometheus port" in done.stderr


def test_a_taken_export_address_does_not_stop_the_gateway(tmp_path: Path,
                                                          upstream: Upstream) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        g = prometheus_gateway(tmp_path, taken.getsockname()[1])
        g.start({"routes": [{"id": "1", "uri": "/hello", "plugins": {"prometheus": {}},
                             "upstream": node(upstream)}]})
        try:
            assert g.get("/hello").status == 200
            wait_until(lambda: "for the export server" in g.logs(), timeout=5)
        finally:
            g.stop()
