"""An upstream compiled for the request path: nodes, picker, timeouts and pool settings.

Built once per config generation (shared by every route that names the upstream by id) so
balancer state, like round-robin position and least-conn counters, is per upstream.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

from kernel.tls.upstream import DEFAULT_UPSTREAM_TLS, UpstreamTls
from kernel.upstream.balancer import Picker
from kernel.upstream.connection import PoolSettings
from kernel.upstream.health import HealthChecker, health_picker
from kernel.upstream.nodes import Node, has_domain, normalize_nodes
from kernel.upstream.resolver import Resolver, resolve_nodes

DEFAULT_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = DEFAULT_TIMEOUT
    send: float = DEFAULT_TIMEOUT
    read: float = DEFAULT_TIMEOUT

    @classmethod
    def from_conf(cls, conf: dict[str, Any] | None) -> Timeouts | None:
        if not conf:
            return None
        return cls(float(conf["connect"]), float(conf["send"]), float(conf["read"]))


class UpstreamRuntime:
    """The request-path form of one upstream configuration."""

    __slots__ = (
        "_keys",
        "_resolved",
        "checker",
        "conf",
        "has_domain",
        "id",
        "inline",
        "nodes",
        "pass_host",
        "picker",
        "pool",
        "retries",
        "retry_timeout",
        "scheme",
        "ssl_context",
        "timeouts",
        "tls_error",
        "tls_tag",
        "upstream_host",
    )

    def __init__(
        self,
        conf: dict[str, Any],
        pool: PoolSettings,
        upstream_id: str | None = None,
        *,
        tls: UpstreamTls | None = None,
    ) -> None:
        self.conf = conf
        self.id = upstream_id
        self.inline = upstream_id is None
        self.scheme: str = conf.get("scheme", "http")
        self.nodes: list[Node] = normalize_nodes(conf.get("nodes") or {}, self.scheme)
        self.has_domain = has_domain(self.nodes)
        # health checks (kernel/upstream/health.py): started/stopped by the gateway on swap
        self.checker: HealthChecker | None = (
            HealthChecker(conf, () if self.has_domain else self.nodes)
            if conf.get("checks") else None
        )
        self.picker: Picker | None = None if self.has_domain or not self.nodes else (
            health_picker(conf, self.nodes, self.checker)
        )
        self._resolved: tuple[tuple[tuple[str, int], ...], Picker] | None = None
        self._keys: dict[Node, tuple[object, ...]] = {}
        self.pass_host: str = conf.get("pass_host", "pass")
        self.upstream_host: str | None = conf.get("upstream_host")
        self.timeouts = Timeouts.from_conf(conf.get("timeout")) or Timeouts()
        retries = conf.get("retries")
        self.retries: int = max(len(self.nodes) - 1, 0) if retries is None else int(retries)
        self.retry_timeout: float = float(conf.get("retry_timeout") or 0)
        keepalive = conf.get("keepalive_pool")
        self.pool = (
            PoolSettings(
                int(keepalive.get("size", pool.size)),
                float(keepalive.get("idle_timeout", pool.idle_timeout)),
                int(keepalive.get("requests", pool.requests)),
            )
            if keepalive
            else pool
        )
        self.ssl_context: ssl.SSLContext | None = None
        self.tls_tag: str | None = None
        self.tls_error: str | None = None
        """With an error (``client_cert_id`` missing, not ``type: client``): 502, no connect."""
        if self.scheme in ("https", "grpcs"):  # kernel/tls/upstream.py: built once per conf
            self.ssl_context, self.tls_tag, self.tls_error = (
                tls or DEFAULT_UPSTREAM_TLS).context_for(conf.get("tls"))

    def key_for(self, node: Node, sni: str | None = None) -> tuple[object, ...]:
        """The keep-alive pool key of ``node`` (TLS connections are also keyed by SNI)."""
        if self.ssl_context is None:
            key = self._keys.get(node)
            if key is None:
                key = self._keys[node] = (self.scheme, node.host, node.port, None)
            return key
        return (self.scheme, node.host, node.port, sni, self.tls_tag)

    async def picker_for(self, resolver: Resolver) -> Picker | None:
        """The picker over the current addresses (domains resolved through ``resolver``)."""
        if not self.has_domain:
            return self.picker
        nodes = await resolve_nodes(self.nodes, resolver)
        signature = tuple((n.host, n.port) for n in nodes)
        cached = self._resolved
        if cached is not None and cached[0] == signature:
            return cached[1]
        if not nodes:
            return None
        if self.checker is not None:
            self.checker.set_nodes(nodes)
        picker = health_picker(self.conf, nodes, self.checker)
        self._resolved = (signature, picker)
        return picker
