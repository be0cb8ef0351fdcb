"""Upstream nodes: the in-memory form of an upstream's ``nodes`` (spec §5.1, §5.2).

Both config forms — the hash form ``{"host:port": weight}`` and the array form
``[{host, port, weight, priority, metadata}]`` — become a list of :class:`Node`. Hostnames are kept
as written here; :mod:`kernel.upstream.resolver` turns them into IP nodes later.

A ``Node`` also carries the small runtime state the balancers keep per node (active requests
for ``least_conn``, the EWMA of response times for ``ewma``). Nodes compare and hash by
identity, so a ``set[Node]`` of tried nodes is cheap and exact.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

__all__ = [
    "DEFAULT_PORTS",
    "Node",
    "default_port",
    "has_domain",
    "is_ip_literal",
    "normalize_nodes",
    "parse_addr",
]

# scheme -> port used when a node gives none (APISIX's scheme_to_port); others fall back to 80
DEFAULT_PORTS: dict[str, int] = {"http": 80, "https": 443, "grpc": 80, "grpcs": 443}


def default_port(scheme: str | None) -> int:
    return DEFAULT_PORTS.get(scheme or "http", 80)


@lru_cache(maxsize=4096)
def is_ip_literal(host: str) -> bool:
    """True for an IPv4 or IPv6 literal (IPv6 without brackets; a ``%zone`` suffix is allowed)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(slots=True, eq=False)
class Node:
    """One upstream server. ``host`` is an IP literal once resolved (IPv6 without brackets)."""

    host: str
    port: int
    weight: int
    priority: int = 0
    domain: str | None = None
    """The hostname this node was resolved from (``None`` when configured as an IP)."""
    metadata: dict[str, Any] | None = None

    # --- runtime state kept by balancers (not configuration) ---
    active: int = field(default=0, repr=False)
    """Requests in flight on this node through a ``least_conn`` picker."""
    ewma: float = field(default=0.0, repr=False)
    """EWMA of response time in seconds (``ewma`` picker)."""
    ewma_at: float = field(default=float("-inf"), repr=False)
    """``time.monotonic()`` of the last EWMA sample."""

    # --- derived once at construction ---
    is_ip: bool = field(init=False, repr=False)
    """``host`` is an IP literal (no DNS needed)."""
    _addr: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        host = self.host
        self.is_ip = is_ip_literal(host)
        self._addr = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    @property
    def addr(self) -> str:
        """``host:port`` as in ``$upstream_addr`` (``[::1]:80`` for IPv6)."""
        return self._addr


def parse_addr(addr: str) -> tuple[str, int | None]:
    """Split ``host[:port]`` / ``[v6][:port]`` / a bare IPv6 literal into (host, port or None).

    Brackets are removed from IPv6 hosts. Raises ``ValueError`` for a malformed port.
    """
    if addr.startswith("["):
        end = addr.find("]")
        if end < 0:
            raise ValueError(f"invalid address: {addr!r}")
        host = addr[1:end]
        rest = addr[end + 1 :]
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise ValueError(f"invalid address: {addr!r}")
        return host, _port(rest[1:], addr)
    colons = addr.count(":")
    if colons == 0:
        return addr, None
    if colons > 1:  # bare IPv6 literal: no port possible
        return addr, None
    host, _, port = addr.partition(":")
    return host, _port(port, addr)


def _port(text: str, addr: str) -> int:
    if not text.isdigit():
        raise ValueError(f"invalid port in address: {addr!r}")
    port = int(text)
    if not 0 < port < 65536:
        raise ValueError(f"invalid port in address: {addr!r}")
    return port


def _strip_brackets(host: str) -> str:
    if host.startswith("[") and host.endswith("]"):
        return host[1:-1]
    return host


def normalize_nodes(nodes: Mapping[str, Any] | list[Any], scheme: str = "http") -> list[Node]:
    """Both config forms to a list of :class:`Node` (spec §5.2).

    Missing port → 80 (``http``/``grpc``) or 443 (``https``/``grpcs``); missing priority → 0.
    Hosts are kept as given (resolution is separate); IPv6 brackets are removed.
    The hash form keeps its key order. Raises ``ValueError`` on malformed input (the schema
    normally rejects it first).
    """
    dport = default_port(scheme)
    out: list[Node] = []
    if isinstance(nodes, Mapping):
        for addr, weight in nodes.items():
            host, port = parse_addr(str(addr))
            out.append(Node(host, dport if port is None else port, int(weight)))
        return out
    for item in nodes:
        if not isinstance(item, Mapping):
            raise ValueError(f"invalid upstream node: {item!r}")
        host = _strip_brackets(str(item["host"]))
        port = item.get("port")
        out.append(
            Node(
                host,
                dport if port is None else int(port),
                int(item.get("weight", 1)),
                int(item.get("priority") or 0),
                None,
                item.get("metadata"),
            )
        )
    return out


def has_domain(nodes: list[Node]) -> bool:
    """True when some node's host is a name, not an IP literal (the upstream needs DNS)."""
    return any(not n.is_ip for n in nodes)
