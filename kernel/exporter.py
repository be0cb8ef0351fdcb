"""The Prometheus export server of a node (``plugin_attr.prometheus``, spec §7.16).

When the ``prometheus`` plugin is in config.yaml's ``plugins`` and
``plugin_attr.prometheus.enable_export_server`` is true (the default), one export server per
node answers ``GET http://<export_addr.ip>:<export_addr.port><export_uri>`` (default
``http://127.0.0.1:9091/apisix/prometheus/metrics``) in the Prometheus text format (0.0.4),
every name prefixed with ``metric_prefix`` (default ``apisix_``).

Where it runs: in the supervisor when ``nginx_config.worker_processes`` > 1 (a process that
serves no traffic and outlives worker restarts), in the one worker otherwise. Either way it is
a thread of its own (``ThreadingHTTPServer``): a scrape never waits behind the event loop's
request traffic, and the request path never waits for a scrape. In the supervisor the thread
starts before the workers are forked: a forked worker closes its copy of the listening socket
(``os.register_at_fork``) and needs no lock that thread takes (the shared-counters table the
scrapes use is resolved before the thread starts). A scrape gets the node's values from a
:mod:`kernel.metrics` collector and adds the node's own gauges:

* ``node_info{hostname,version}`` 1;
* ``nginx_http_current_connections{state}`` (accepted, active, handled, reading, waiting,
  writing) and ``http_requests_total``, over every worker (accepted, handled and requests
  include exited workers);
* ``upstream_status{name,ip,port}``: 1 healthy, 0 unhealthy, per node of each upstream with
  health checks (the lowest value among the live workers: each worker runs its own checks);
* ``shared_dict_capacity_bytes`` / ``shared_dict_free_space_bytes{name}``: the node-wide
  shared-counter zones (``nginx_config.http.lua_shared_dict``);
* with etcd as the config provider: ``etcd_reachable`` (a count-only read of
  ``<prefix>/phantomkey`` made by the scrape, as APISIX does) and
  ``etcd_modify_indexes{key}``: per collection the highest ``mod_revision`` of the config the
  workers serve, ``max_modify_index``, ``prev_index`` (the last revision the workers applied)
  and ``x_etcd_index`` (etcd's revision, read by the scrape).

The address is fixed when the node starts (a plugin reload does not move it). It must not be
the Admin API's, the control API's or a proxy port (``sixgate start`` refuses:
``prometheus port 9180 conflicts with admin port``). When another process holds the address,
the node serves without the export server and logs an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kernel import APISIX_VERSION
from kernel import config as config_mod
from kernel.config import Config
from kernel.metrics import (
    FamilyData,
    LocalCollector,
    NodeCollector,
    Snapshot,
    make_node_dir,
)

log = logging.getLogger("sixgate.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ETCD_KEYS = ("consumers", "global_rules", "max_modify_index", "prev_index", "protos", "routes",
             "services", "ssls", "stream_routes", "upstreams", "x_etcd_index")
ETCD_PROBE_TIMEOUT = 3.0


@dataclass(frozen=True, slots=True)
class ExportSettings:
    ip: str
    port: int
    uri: str
    prefix: str


def export_settings(cfg: Config) -> ExportSettings | None:
    """Where the node exports, or ``None`` (the plugin is not enabled, or
    ``enable_export_server`` is false)."""
    if "prometheus" not in [str(p) for p in cfg.get("plugins") or []]:
        return None
    attr = cfg.get("plugin_attr.prometheus") or {}
    if attr.get("enable_export_server", True) is False:
        return None
    addr = attr.get("export_addr") or {}
    return ExportSettings(
        ip=str(addr.get("ip") or "127.0.0.1"),
        port=int(addr.get("port") or 9091),
        uri=str(attr.get("export_uri") or "/apisix/prometheus/metrics"),
        prefix=str(attr.get("metric_prefix") if attr.get("metric_prefix") is not None
                   else "apisix_"),
    )


def port_conflict(cfg: Config) -> str | None:
    """``sixgate start``'s check: the export port may not be another listener's port."""
    from kernel.control.listen import control_address

    settings = export_settings(cfg)
    if settings is None:
        return None
    control = control_address(cfg)
    others = (("control", control[1]),) if control is not None else ()
    return config_mod.listener_conflict(cfg, settings.port, "prometheus", others)


# --- the node's own gauges -----------------------------------------------------------------------


async def _etcd_probe(cfg: Config) -> tuple[bool, int]:
    from kernel.store.etcd import EtcdStore
    from kernel.store.factory import _trusted_ca

    conf = dict(cfg.get("deployment.etcd") or {})
    store = EtcdStore(conf, read_only=True, ssl_trusted_certificate=_trusted_ca(cfg))
    client = store.client
    client.timeout = min(client.timeout, ETCD_PROBE_TIMEOUT)
    try:
        res = await asyncio.wait_for(
            client.range(store.prefix + "/phantomkey", count_only=True), ETCD_PROBE_TIMEOUT)
        return True, res.revision
    except Exception as err:
        log.error("prometheus: failed to reach config server while processing metrics "
                  "endpoint: %s", err)
        return False, 0
    finally:
        await client.close()


def _gauge(name: str, help_: str, labelnames: tuple[str, ...],
           values: dict[Any, Any]) -> FamilyData:
    return (name, "gauge", help_, labelnames, "sum", values)


def node_families(cfg: Config, merged: Snapshot) -> list[FamilyData]:
    """The kernel's families for one scrape."""
    from kernel.counters import NODE_COUNTERS
    from kernel.store.factory import mode
    from kernel.vars import HOSTNAME

    k = merged.get("kernel") or {}
    states = ("accepted", "active", "handled", "reading", "waiting", "writing")
    out = [
        _gauge("node_info", "Info of APISIX node", ("hostname", "version"),
               {(HOSTNAME, APISIX_VERSION): 1}),
        _gauge("nginx_http_current_connections", "Number of HTTP connections", ("state",),
               {(s,): k.get(s, 0) for s in states}),
        _gauge("http_requests_total", "The total number of client requests since APISIX "
               "started", (), {(): k.get("requests", 0)}),
    ]
    health = k.get("upstream_status") or {}
    if health:
        out.append(_gauge("upstream_status", "Upstream status from health check",
                          ("name", "ip", "port"), dict(health)))
    zones = NODE_COUNTERS.zones()
    if zones:
        out.append(_gauge("shared_dict_capacity_bytes",
                          "The capacity of each nginx shared DICT since APISIX start", ("name",),
                          {(z.name,): z.capacity_bytes for z in zones}))
        out.append(_gauge("shared_dict_free_space_bytes",
                          "The free space of each nginx shared DICT since APISIX start",
                          ("name",), {(z.name,): z.free_space_bytes() for z in zones}))
    if mode(cfg)[1] == "etcd":
        reachable, revision = asyncio.run(_etcd_probe(cfg))
        out.append(_gauge("etcd_reachable",
                          "Config server etcd reachable from APISIX, 0 is unreachable", (),
                          {(): int(reachable)}))
        modify = dict(k.get("modify_indexes") or {})
        indexes = {key: int(modify.get(key, 0)) for key in ETCD_KEYS}
        indexes["max_modify_index"] = max(
            [v for key, v in indexes.items() if key not in ("prev_index", "x_etcd_index")],
            default=0)
        indexes["x_etcd_index"] = revision
        out.append(_gauge("etcd_modify_indexes", "Etcd modify index for APISIX keys", ("key",),
                          {(key,): v for key, v in indexes.items()}))
    return out


# --- the text format ----------------------------------------------------------------------------


def _num(v: float) -> str:
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


def _escape(value: Any) -> str:
    text = "" if value is None else str(value)
    if "\\" in text or '"' in text or "\n" in text:
        text = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return text


def _labels(names: tuple[str, ...], values: Iterable[Any], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=False)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def render(families: Iterable[FamilyData], prefix: str = "apisix_") -> str:
    """The Prometheus text format (0.0.4) of ``families``, each name prefixed."""
    lines: list[str] = []
    for name, kind, help_, labelnames, extra, values in sorted(families, key=lambda f: f[0]):
        full = prefix + name
        names = tuple(labelnames)
        help_text = str(help_).replace("\\", "\\\\").replace("\n", "\\n")
        lines.append(f"# HELP {full} {help_text}")
        lines.append(f"# TYPE {full} {kind}")
        for labels in sorted(values, key=lambda t: tuple(str(x) for x in t)):
            if len(labels) != len(names):
                continue  # a plugin bug: wrong label count (never emit a broken line)
            value = values[labels]
            if kind != "histogram":
                lines.append(f"{full}{_labels(names, labels)} {_num(value)}")
                continue
            bounds = tuple(extra)
            cumulative: float = 0
            for i, bound in enumerate((*bounds, math.inf)):
                cumulative += value[i]
                le = 'le="' + _num(bound) + '"'
                lines.append(f"{full}_bucket{_labels(names, labels, le)} {_num(cumulative)}")
            lines.append(f"{full}_count{_labels(names, labels)} {_num(cumulative)}")
            lines.append(f"{full}_sum{_labels(names, labels)} {_num(value[-1])}")
    lines.append("")
    return "\n".join(lines)


# --- the server ----------------------------------------------------------------------------------


_listeners: list[ThreadingHTTPServer] = []


def _close_in_child() -> None:
    """A worker forked by the supervisor must not hold the export port: drop the inherited
    listening socket without touching the supervisor's (``detach`` leaves the object closed, so
    nothing in the child closes that descriptor number again later)."""
    for httpd in _listeners:
        with contextlib.suppress(OSError):
            os.close(httpd.socket.detach())
    _listeners.clear()


os.register_at_fork(after_in_child=_close_in_child)


class ExportServer:
    """The export HTTP server: a ``ThreadingHTTPServer`` in a daemon thread."""

    def __init__(self, cfg: Config, settings: ExportSettings,
                 collector: NodeCollector | LocalCollector) -> None:
        self.cfg = cfg
        self.settings = settings
        self.collector = collector
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def scrape(self) -> str:
        merged = self.collector.collect()
        families = list(merged["families"]) + node_families(self.cfg, merged)
        return render(families, self.settings.prefix)

    def start(self) -> ExportServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "APISIX"
            sys_version = ""

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path != server.settings.uri:
                    self._reply(404, b"404 Not Found\n", "text/plain")
                    return
                try:
                    body = server.scrape().encode()
                except Exception:
                    log.exception("prometheus: scrape failed")
                    self._reply(500, b'{"message":"An unexpected error occurred"}\n',
                                "application/json")
                    return
                self._reply(200, body, CONTENT_TYPE)

            def _reply(self, status: int, body: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_HEAD = do_GET

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("prometheus export: " + format, *args)

        family = socket.AF_INET6 if ":" in self.settings.ip else socket.AF_INET

        class Server(ThreadingHTTPServer):
            address_family = family
            daemon_threads = True
            allow_reuse_address = True

        self._httpd = Server((self.settings.ip, self.settings.port), Handler)
        _listeners.append(self._httpd)
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.2},
                                        name="sixgate-prometheus-export", daemon=True)
        self._thread.start()
        log.info("prometheus export server listening on %s:%s%s", self.settings.ip,
                 self.port, self.settings.uri)
        return self

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return int(self._httpd.server_address[1])

    def worker_exited(self, pid: int) -> None:
        """Keep an exited worker's counts (never raises: the supervisor must go on)."""
        try:
            self.collector.worker_exited(pid)
        except Exception:
            log.exception("prometheus: cannot keep the counts of exited worker %d", pid)

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            with contextlib.suppress(ValueError):
                _listeners.remove(self._httpd)
            self._httpd = None
        self.collector.close()


def _start(cfg: Config, settings: ExportSettings,
           collector: NodeCollector | LocalCollector) -> ExportServer | None:
    try:
        return ExportServer(cfg, settings, collector).start()
    except OSError as err:
        log.error("prometheus: cannot listen on %s:%s for the export server: %s; metrics are "
                  "not exported (change plugin_attr.prometheus.export_addr)", settings.ip,
                  settings.port, err.strerror or err)
        collector.close()
        return None


def start_node_export(cfg: Config, live_pids: Callable[[], Iterable[int]]) -> ExportServer | None:
    """The supervisor's export server (call before forking the workers): workers publish to a
    node directory made here; ``live_pids`` names the workers alive now."""
    settings = export_settings(cfg)
    if settings is None:
        return None
    collector = NodeCollector(make_node_dir(), live_pids)
    server = _start(cfg, settings, collector)
    if server is None:
        import kernel.metrics as metrics

        metrics._node_dir = None  # no export: workers need not publish
    return server


def start_local_export(cfg: Config, gateway: Any,
                       loop: asyncio.AbstractEventLoop) -> ExportServer | None:
    """The export server of a single-process gateway (reads the gateway on ``loop``)."""
    settings = export_settings(cfg)
    if settings is None:
        return None
    return _start(cfg, settings, LocalCollector(gateway, loop))
