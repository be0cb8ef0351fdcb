"""real-ip (APISIX priority 23000, rewrite): take the client address from a header or argument.

Runs first among a route's ``rewrite`` hooks (no built-in plugin has a higher priority),
after routing. It reads the variable named by ``source`` (``http_x_real_ip``, ``arg_realip``,
...); for ``http_x_forwarded_for`` the **last** comma-separated entry of the last
``X-Forwarded-For`` line, or, with ``recursive`` + ``trusted_addresses``, the rightmost entry
that is not trusted (the first one when all are). The value may be ``ip``, ``ip:port``,
``[ipv6]``, ``[ipv6]:port`` or a bare IPv6 address. When it is valid, the client address is
replaced through ``ctx.set_client_address``: ``$remote_addr`` and ``$remote_port`` (unset
when the value has no port, as with nginx), ``ctx.request.client_ip``, later plugins, the
logs, and the ``X-Real-IP``/``X-Forwarded-For`` sent upstream. Nothing changes when the value
is absent or invalid (a port outside 1-65535 included), or when ``trusted_addresses`` is set
and the current ``$remote_addr`` is not in it.

The ``trusted_addresses`` networks are parsed once per conf.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from plugin_sdk import ConfCache, hookimpl

name = "real-ip"
version = "0.1"
priority = 23000

_IPV4_SEG = "([0-9]|[1-9][0-9]|1[0-9]{2}|2[0-4][0-9]|25[0-5])"
_IPV4 = r"\.".join([_IPV4_SEG] * 4)
_IPV6 = "([a-fA-F0-9]{0,4}:){1,8}(:[a-fA-F0-9]{0,4}){0,8}([a-fA-F0-9]{0,4})?"
# APISIX's core.schema.ip_def
_IP_DEF: list[dict[str, Any]] = [
    {"title": "IPv4", "type": "string", "format": "ipv4"},
    {"title": "IPv4/CIDR", "type": "string", "pattern": "^" + _IPV4 + "/([12]?[0-9]|3[0-2])$"},
    {"title": "IPv6", "type": "string", "format": "ipv6"},
    {"title": "IPv6/CIDR", "type": "string", "pattern": "^" + _IPV6 + "/[0-9]{1,3}$"},
]

schema: dict[str, Any] = {
    "type": "object",
    "properties": {
        "trusted_addresses": {
            "type": "array",
            "items": {"anyOf": _IP_DEF},
            "minItems": 1,
        },
        "source": {"type": "string", "minLength": 1},
        "recursive": {"type": "boolean", "default": False},
    },
    "required": ["source"],
}

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _network(text: str) -> Network | None:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def check_schema(conf: dict[str, Any]) -> str | None:
    """Every trusted address must be an IP or CIDR (the JSON schema's IPv6 patterns are loose),
    with APISIX's message."""
    for cidr in conf.get("trusted_addresses") or ():
        if "%" in cidr or _network(cidr) is None:
            return f"invalid ip address: {cidr}"
    return None


@dataclass(frozen=True, slots=True)
class _Trusted:
    exact: frozenset[str]
    """Single addresses, in canonical text form (compared without parsing)."""
    networks: tuple[Network, ...]
    """Real networks (prefix shorter than the address)."""

    def __contains__(self, text: str) -> bool:
        if text in self.exact:
            return True
        addr = _address(text)
        if addr is None:
            return False
        return str(addr) in self.exact or any(addr in net for net in self.networks)


def _compile(conf: dict[str, Any]) -> _Trusted | None:
    addresses = conf.get("trusted_addresses")
    if not addresses:
        return None
    exact: set[str] = set()
    networks: list[Network] = []
    for cidr in addresses:
        net = _network(cidr)
        if net is None:
            continue  # refused by check_schema; nothing to trust
        if net.num_addresses == 1:
            exact.add(str(net.network_address))
        else:
            networks.append(net)
    return _Trusted(frozenset(exact), tuple(networks))


_trusted: ConfCache[_Trusted | None] = ConfCache(_compile)


def _address(text: str) -> Address | None:
    if "%" in text:  # no IPv6 zone ids
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _port(text: str) -> int | None:
    if not (text.isascii() and text.isdigit()):
        return None
    port = int(text)
    return port if 0 < port < 65536 else None


def parse_address(value: str) -> tuple[str, int | None] | None:
    """``(ip, port or None)`` from ``ip``, ``ip:port``, ``[ipv6]``, ``[ipv6]:port`` or a bare
    IPv6 address (``ip`` as written, brackets removed); ``None`` when invalid (bad address,
    or a port that is not 1-65535)."""
    value = value.strip()
    port: int | None = None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[1:end], value[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                return None
            port = _port(rest[1:])
            if port is None:
                return None
        if not isinstance(_address(host), ipaddress.IPv6Address):
            return None
        return host, port
    if value.count(":") == 1:
        host, _, port_text = value.partition(":")
        port = _port(port_text)
        if port is None:
            return None
        if not isinstance(_address(host), ipaddress.IPv4Address):
            return None
        return host, port
    if _address(value) is None:
        return None
    return value, None


def _forwarded_for(ctx: Any, trusted: _Trusted | None, recursive: bool) -> str | None:
    lines = ctx.request.headers.getall("x-forwarded-for")
    if not lines:
        return None
    value: str = lines[-1]
    if "," not in value:
        return value
    if recursive and trusted is not None:
        entries = [entry.strip() for entry in value.split(",")]
        for entry in reversed(entries[1:]):
            if entry not in trusted:
                return entry
        return entries[0]
    return value.rsplit(",", 1)[1]


@hookimpl
def rewrite(ctx: Any, conf: dict[str, Any]) -> None:
    trusted = _trusted(conf)
    if trusted is not None and ctx.var["remote_addr"] not in trusted:
        return
    source = conf["source"]
    if source == "http_x_forwarded_for":
        value: Any = _forwarded_for(ctx, trusted, conf.get("recursive", False))
    else:
        value = ctx.var[source]
    if value is None:
        ctx.log.info("missing real address")
        return
    parsed = parse_address(value) if isinstance(value, str) else None
    if parsed is None:
        ctx.log.warning("bad address: %s", value)
        return
    ctx.set_client_address(*parsed)
