"""One gateway process: config, plugins, store, state and listeners wired together.

:meth:`Gateway.apply` is the single apply path: a new store snapshot and a plugin reload
both build the next :class:`~kernel.state.GatewayState` beside the live one and swap it in.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

from kernel import config as config_mod
from kernel.accesslog import AccessLog
from kernel.config import Config
from kernel.encryption import DataEncryption
from kernel.plugins.loader import load_registry
from kernel.plugins.manager import PluginRegistry
from kernel.plugins.reload import PluginStatus, ReloadOutcome, refusal_reasons, status_path
from kernel.plugins.runtime import RUNTIME as PLUGIN_RUNTIME
from kernel.plugins.watcher import PluginWatcher, WatchTargets, targets_for
from kernel.proxy import Proxy
from kernel.server import Connections, HttpProtocol, RealIP, ServerLimits
from kernel.state import (
    GatewayState,
    SnapshotValidator,
    StateHolder,
    build_state,
    empty_state,
)
from kernel.store.base import ConfigStore, Problem, Snapshot
from kernel.store.factory import make_stores, mode
from kernel.store.resources import ResourceStore
from kernel.tls import TlsSettings
from kernel.tls.listener import serve_tls
from kernel.tls.upstream import configure_default as configure_upstream_tls
from kernel.upstream.connection import PoolSettings
from kernel.upstream.health import HealthManager
from kernel.upstream.resolver import Resolver
from plugin_sdk.batch import drain as drain_batches

log = logging.getLogger("sixgate")


def server_limits(cfg: Config) -> ServerLimits:
    """The HTTP server's limits and timeouts from ``nginx_config.http``."""
    http = cfg.get("nginx_config.http", {}) or {}
    real_ip_from = http.get("real_ip_from") or []
    return ServerLimits(
        max_request_line=int(http.get("max_request_line", 8192)),
        max_header_size=int(http.get("max_header_size", 8192)),
        max_headers_size=int(http.get("max_headers_size", 32768)),
        max_header_count=int(http.get("max_header_count", 100)),
        client_max_body_size=config_mod.parse_size(http.get("client_max_body_size", 0) or 0),
        header_timeout=config_mod.parse_duration(http.get("client_header_timeout", "60s")),
        body_timeout=config_mod.parse_duration(http.get("client_body_timeout", "60s")),
        keepalive_timeout=config_mod.parse_duration(http.get("keepalive_timeout", "60s")),
        real_ip_header=str(http.get("real_ip_header", "X-Real-IP")),
        real_ip_from=tuple(str(x) for x in real_ip_from),
        real_ip_recursive=config_mod.parse_flag(http.get("real_ip_recursive", "off")),
    )


def pool_settings(cfg: Config) -> PoolSettings:
    up = cfg.get("nginx_config.http.upstream", {}) or {}
    return PoolSettings(
        size=int(up.get("keepalive", 320)),
        idle_timeout=config_mod.parse_duration(up.get("keepalive_timeout", "60s")),
        requests=int(up.get("keepalive_requests", 1000)),
    )


def bind_socket(host: str, port: int, reuse_port: bool = True) -> socket.socket:
    """A listening TCP socket (``SO_REUSEPORT`` so several workers can share the port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port and hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


class Gateway:
    """The data plane of one worker process."""

    def __init__(self, cfg: Config, *, slot: int = 0, supervised: bool = False) -> None:
        self.cfg = cfg
        _publish_ssl_ports(cfg)
        self.slot = slot
        self.supervised = supervised
        self._registries: dict[tuple[str, ...] | None, PluginRegistry] = {}
        self._load_errors: dict[tuple[str, ...] | None, list[str]] = {}
        self.tls = TlsSettings.from_config(cfg)  # apisix.ssl.* + keyring (kernel/tls)
        configure_upstream_tls(self.tls)
        self._validator = SnapshotValidator(ssl_keyring=self.tls.keyring)
        # -- plugin hot reload (kernel/plugins/reload.py, watcher.py) --
        self.plugin_status = PluginStatus(status_path(self.logs_dir(cfg), slot), slot)
        self.plugin_watcher: PluginWatcher | None = None
        self._pending_reloads: set[asyncio.Task[None]] = set()
        started = time.perf_counter()
        self.registry = self._load_registry(None)
        self._record_plugins("startup", True, self._load_errors.get(None, []), started)
        self.holder = StateHolder(empty_state(self.registry))
        # upstream health checkers of the live state (kernel/upstream/health.py)
        self.health = HealthManager(not cfg.get("apisix.disable_upstream_healthcheck", False))
        PLUGIN_RUNTIME.set_metadata_source(self._live_metadata)
        self.last_error: str | None = None
        stores = make_stores(cfg, self.validate)
        self.store: ConfigStore = stores.config
        self.resources: ResourceStore | None = stores.resources
        self.admin_runner: Any = None
        self.access_log = self._access_log()
        self.proxy = Proxy(
            get_state=lambda: self.holder.state,
            resolver=Resolver(float(cfg.get("apisix.dns_resolver_valid") or 30)),
            access_log=self.access_log,
            server_tokens=bool(cfg.get("apisix.enable_server_tokens", True)),
            delete_uri_tail_slash=bool(cfg.get("apisix.delete_uri_tail_slash", False)),
            show_upstream_status=bool(
                cfg.get("apisix.show_upstream_status_in_response_header", False)
            ),
        )
        self.limits = server_limits(cfg)
        self.real_ip = RealIP(self.limits)
        self.connections = Connections()  # live connections + totals (kernel/metrics.py)
        self.metrics_publisher: Any = None
        self.servers: list[asyncio.base_events.Server] = []
        self._snapshot: Snapshot | None = None

    # --- construction helpers ---------------------------------------------------------
    def _plugin_names(self, override: tuple[str, ...] | None) -> list[str]:
        if override is not None:
            return list(override)
        return [str(p) for p in (self.cfg.get("plugins") or [])]

    def _plugin_dirs(self) -> list[Path]:
        return [self.cfg.resolve(d) for d in (self.cfg.get("apisix.plugin_dirs") or [])]

    def _load_registry(
        self, override: tuple[str, ...] | None, *, rescan: bool = False, init: bool = True
    ) -> PluginRegistry:
        cached = self._registries.get(override)
        if cached is not None:
            return cached
        registry, errors = load_registry(
            self._plugin_names(override), self._plugin_dirs(), self.cfg.get("plugin_attr") or {},
            rescan=rescan, init=init,
        )
        self._load_errors[override] = errors
        for err in errors:
            log.error("plugin: %s", err)
        registry.keyring = DataEncryption.from_config(self.cfg).plugin_keyring
        self._registries[override] = registry
        return registry

    def _access_log(self) -> AccessLog | None:
        http = self.cfg.get("nginx_config.http", {}) or {}
        path = config_mod.access_log_path(self.cfg)
        if path is None or not http.get("enable_access_log", True):
            return None
        return AccessLog(path, str(http.get("access_log_format")))

    # --- the one apply path -----------------------------------------------------------
    def validate(self, snapshot: Snapshot) -> list[Problem]:
        """Problems in a candidate snapshot (called by the store before it hands one over)."""
        return self._validator(snapshot, self._load_registry(snapshot.plugins))

    def apply(
        self, snapshot: Snapshot | None = None, registry: PluginRegistry | None = None
    ) -> GatewayState | None:
        """Build the next state from ``snapshot``/``registry`` (default: the current ones) and
        swap it in. A failed build changes nothing, is logged, and returns ``None``."""
        snapshot = snapshot if snapshot is not None else self._snapshot
        if snapshot is None:
            return None
        if registry is None:
            registry = self._load_registry(snapshot.plugins)
        started = time.perf_counter()
        try:
            state = build_state(
                snapshot,
                registry,
                router_kind=str(self.cfg.get("apisix.router.http") or "radixtree_host_uri"),
                pool=pool_settings(self.cfg),
                generation=self.holder.state.generation + 1,
                previous=self.holder.state.cache,
                tls=self.tls,
            )
        except Exception as err:
            self.last_error = f"config {snapshot.version}: {err}"
            log.exception("cannot apply config %s; the previous one keeps serving",
                          snapshot.version)
            return None
        self._snapshot = snapshot
        self.registry = registry
        self.holder.swap(state)
        self.health.sync(state)
        log.info(
            "config %s applied: generation %d, %d routes, %d upstreams (%.1f ms)",
            snapshot.version, state.generation, len(state.routes), len(state.upstreams),
            (time.perf_counter() - started) * 1000,
        )
        return state

    # --- plugin hot reload (one mechanism for every trigger) -----------------------------
    def reload_plugins(
        self, cfg: Config | None = None, trigger: str = "admin"
    ) -> GatewayState | None:
        """Load the next plugin generation beside the live one and swap it in.

        ``cfg`` (a re-read config.yaml) brings a new plugin list and ``plugin_attr``. Entry
        points are rescanned (new packs appear) and changed plugin sources are imported
        beside the live modules. A generation that would take a live plugin away (syntax or
        import error, invalid module) or whose schemas reject a stored plugin conf is refused:
        nothing changes, the error is logged and recorded for ``sixgate plugins status``.
        Returns the new state (``None`` when refused or when no config is loaded yet).
        """
        started = time.perf_counter()
        watcher = self.plugin_watcher
        sources_before = watcher.snapshot() if watcher is not None else None
        old_cfg, old_registries = self.cfg, self._registries
        if cfg is not None:
            self.cfg = cfg
            _publish_ssl_ports(cfg)
        self._registries = {}
        override = self._snapshot.plugins if self._snapshot else None
        registry = self._load_registry(override, rescan=True, init=False)
        errors = self._load_errors.get(override, [])
        reasons = refusal_reasons(
            self.registry, registry, errors, self._plugin_names(override), self._snapshot
        )
        if reasons:
            self.cfg, self._registries = old_cfg, old_registries
            _publish_ssl_ports(old_cfg)
            registry.destroy_all(call_destroy=False)
            log.error("plugin reload (%s) refused, the previous plugins keep serving: %s",
                      trigger, "; ".join(reasons))
            self._record_plugins(trigger, False, reasons, started)
            return None
        # APISIX order: destroy() the live generation, then init() the next one.
        for reg in old_registries.values():
            if reg is not registry:
                reg.destroy_all()
        errors = errors + registry.init_all(self.cfg.get("plugin_attr") or {})
        state = self.apply(registry=registry) if self._snapshot else None
        if self._snapshot is None:
            self.registry = registry
        elif state is None:
            errors = [*errors, self.last_error or "the next state failed to build"]
        self._record_plugins(trigger, state is not None or self._snapshot is None, errors,
                             started)
        if watcher is not None:
            watcher.retarget(sources_before)
        return state

    def plugins_ok(self) -> bool:
        """Whether the last plugin load was accepted."""
        last = self.plugin_status.last
        return last is None or last.ok

    def _record_plugins(self, trigger: str, ok: bool, errors: list[str], started: float) -> None:
        status = self.plugin_status
        generation = status.next_generation() if ok else status.generation
        status.record(
            ReloadOutcome(trigger, ok, time.time(), (time.perf_counter() - started) * 1000,
                          generation, list(errors)),
            self.registry,
        )
        if ok:
            log.info("plugins (%s): generation %d, %d plugin(s) loaded", trigger, generation,
                     len(self.registry))

    def watch_targets(self) -> WatchTargets:
        """The plugin sources a change of which triggers a reload."""
        return targets_for(self._plugin_dirs(), (f for _, f in self.registry.sources.values()))

    async def _start_plugin_watch(self) -> None:
        """``apisix.plugin_watch``: true (default: watchdog + a 0.5 s poll), ``poll`` (the poll
        only), false (reload only on request)."""
        setting = self.cfg.get("apisix.plugin_watch", True)
        if setting != "poll" and not config_mod.parse_flag(setting):
            return
        self.plugin_watcher = PluginWatcher(
            self.watch_targets, self._on_plugin_source_change, use_watchdog=setting != "poll"
        )
        await self.plugin_watcher.start()

    def _on_plugin_source_change(self) -> None:
        log.warning("plugin source changed: reloading plugins")
        self.reload_plugins(trigger="file")
        if self.plugins_ok():
            task = asyncio.get_running_loop().create_task(self.after_plugin_reload())
            self._pending_reloads.add(task)
            task.add_done_callback(self._pending_reloads.discard)

    @staticmethod
    def logs_dir(cfg: Config) -> Path:
        """Where the pid file (and the plugin status files) live."""
        return cfg.resolve(cfg.get("apisix.pid_file") or "logs/sixgate.pid").parent

    def _on_snapshot(self, snapshot: Snapshot) -> None:
        self.apply(snapshot)

    def _live_metadata(self, name: str) -> Any:
        return self.holder.state.plugin_metadata.get(name)

    @property
    def state(self) -> GatewayState:
        return self.holder.state

    # --- lifecycle --------------------------------------------------------------------
    async def start(self, sockets: list[socket.socket] | None = None) -> None:
        """Load the config, listen on every ``node_listen`` address (not on a control plane),
        and serve the Admin API (worker 0 of a traditional or control-plane node)."""
        await self.store.start(self._on_snapshot)
        self.health.sync(self.holder.state)  # a state built before the loop ran starts now
        await self._start_plugin_watch()
        if self.resources is not None and self.slot == 0:
            await self._start_admin()
            await self.publish_plugins()
        from kernel.metrics import start_publisher

        self.metrics_publisher = start_publisher(self)  # supervised node with a metrics export
        if mode(self.cfg)[0] == "control_plane":
            return
        tls_sockets: list[socket.socket] = []  # apisix.ssl.listen (kernel/tls/listener.py)
        if sockets is None:
            sockets = [bind_socket(h, p) for h, p in config_mod.listen_addresses(self.cfg)]
            tls_sockets = [bind_socket(h, p) for h, p in config_mod.ssl_listen_addresses(self.cfg)]
        loop = asyncio.get_running_loop()
        for sock in sockets:
            server = await loop.create_server(self._protocol, sock=sock)
            self.servers.append(server)
            addr = sock.getsockname()
            log.info("listening on %s:%s", addr[0], addr[1])
        self.servers.extend(await serve_tls(self, tls_sockets))

    async def _start_admin(self) -> None:
        from aiohttp import web

        from kernel.admin import AdminContext, create_admin_app

        assert self.resources is not None
        app = create_admin_app(
            AdminContext(
                store=self.resources,
                registry=lambda: self.registry,
                reload_plugins=self.reload_from_disk,
                config=self.cfg,
            )
        )
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        listen = self.cfg.get("deployment.admin.admin_listen") or {}
        host, port = str(listen.get("ip", "0.0.0.0")), int(listen.get("port", 9180))
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        self.admin_runner = runner
        log.info("Admin API listening on %s:%s", host, port)

    async def reload_from_disk(self, trigger: str = "admin") -> None:
        """Re-read config.yaml's plugin list and ``plugin_attr`` and apply them (every worker).

        In a supervised multi-worker node the supervisor forwards the request to all workers.
        ``trigger``: ``admin`` (Admin API) or ``control`` (control API), for the status.
        """
        if self.supervised:
            os.kill(os.getppid(), signal.SIGHUP)
            return
        try:
            cfg = config_mod.load_config(self.cfg.path)
        except config_mod.ConfigError as err:
            log.error("plugin reload refused: %s", err)
            return
        self.reload_plugins(cfg, trigger=trigger)
        if self.plugins_ok():
            await self.after_plugin_reload()

    async def after_plugin_reload(self) -> None:
        """Re-check the stored config against the new plugin set and, on the admin worker of
        an etcd node, publish the list at ``<prefix>/plugins`` so data planes follow."""
        await self.store.refresh()
        await self.publish_plugins()

    async def publish_plugins(self) -> None:
        if self.resources is None or self.slot != 0 or mode(self.cfg)[1] != "etcd":
            return
        names = self._plugin_names(None)
        try:
            await self.resources.put(
                f"{self.resources.prefix}/plugins", [{"name": name} for name in names]
            )
        except Exception as err:  # the store logs and retries its own connection
            log.error("cannot publish the plugin list to etcd: %s", err)

    def _protocol(self) -> HttpProtocol:
        return HttpProtocol(self.proxy.dispatch, self.limits, self.real_ip, self.connections)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, let in-flight requests finish (at most ``timeout`` s), then close."""
        for server in self.servers:
            server.close()
        for conn in list(self.connections):
            if conn.idle:
                conn.close()
        deadline = time.monotonic() + timeout
        while self.proxy.inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.close()
        if self.metrics_publisher is not None:
            self.metrics_publisher.stop()  # the last counts, before the worker exits
        if self.plugin_watcher is not None:
            await self.plugin_watcher.stop()
        if self.admin_runner is not None:
            await self.admin_runner.cleanup()
        await self.store.stop()
        await self.health.stop()
        self.proxy.pool.close()
        if self.access_log is not None:
            self.access_log.close()
        self.registry.destroy_all()
        # Logger batches that destroy() flushed (plugin_sdk.batch) go out while the shared
        # HTTP client is still open.
        await drain_batches(min(timeout, 5.0))
        # -- plugin runtime (issue 4): the worker's shared outbound HTTP session --
        await PLUGIN_RUNTIME.close_http_client()

    def listen_ports(self) -> list[Any]:
        return [s.getsockname() for srv in self.servers for s in (srv.sockets or ())]


def _publish_ssl_ports(cfg: Config) -> None:
    """What ``plugin_sdk.ssl_listen_ports()`` answers (e.g. redirect's ``http_to_https``)."""
    ports = [port for _, port in config_mod.ssl_listen_addresses(cfg, ipv6=False)]
    PLUGIN_RUNTIME.set_ssl_ports(list(dict.fromkeys(ports)))


def problems_text(problems: list[Problem]) -> str:
    return "\n".join(str(p) for p in problems)


def standalone_path(cfg: Config) -> Path:
    """The standalone file a yaml-provider node reads."""
    return cfg.resolve(cfg.get("apisix.standalone_file") or "apisix.yaml")
