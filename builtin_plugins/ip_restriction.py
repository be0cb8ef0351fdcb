"""ip-restriction (APISIX priority 3000, access): allow or refuse requests by client address.

Runs in ``access`` (after every ``rewrite`` hook, so after ``real-ip`` replaced the address) and
checks ``$remote_addr`` against exactly one of ``whitelist`` (only those addresses may pass) or
``blacklist`` (those may not). Entries are IPv4 or IPv6 addresses or CIDR networks
(``10.0.0.0/8``, ``2001:db8::/32``; host bits are ignored); an IPv4-mapped IPv6 client address
(``::ffff:1.2.3.4``) is also matched as its IPv4 address. A refused request is answered with
``response_code`` (403 or 404, default 403) and ``{"message": message}`` (default ``Your IP
address is not allowed``).

The lists are parsed once per conf into sets of integers per prefix length, so a lookup costs
one address parse and one set probe per distinct prefix length; the verdicts of recently seen
addresses are remembered per conf.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from plugin_sdk import ConfCache, Response, hookimpl

name = "ip-restriction"
version = "0.1"
priority = 3000

_ip_list: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"type": "string"}}

schema: dict[str, Any] = {
    "type": "object",
    "properties": {
        "message": {
            "type": "string",
            "minLength": 1,
            "maxLength": 1024,
            "default": "Your IP address is not allowed",
        },
        "response_code": {"type": "integer", "minimum": 403, "maximum": 404, "default": 403},
        "whitelist": _ip_list,
        "blacklist": _ip_list,
    },
    "oneOf": [{"required": ["whitelist"]}, {"required": ["blacklist"]}],
}

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_CIDR = re.compile(r"[^/%\s]+(/[0-9]{1,3})?\Z")


def _network(text: Any) -> Network | None:
    """``text`` as a network (a bare address is a /32 or /128), or ``None`` when invalid."""
    if not isinstance(text, str) or _CIDR.match(text) is None:
        return None
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def check_schema(conf: dict[str, Any]) -> str | None:
    """Every entry must be an IP address or a CIDR network (APISIX's message)."""
    for list_name in ("whitelist", "blacklist"):
        for entry in conf.get(list_name) or ():
            if _network(entry) is None:
                return f"invalid ip address: {entry}"
    return None


_MEMO_SIZE = 1024


@dataclass(slots=True)
class _Matcher:
    """Networks grouped by ``(version, prefix length)``: ``{prefix_len: {network int}}``."""

    v4: tuple[tuple[int, frozenset[int]], ...]
    v6: tuple[tuple[int, frozenset[int]], ...]
    memo: dict[str, bool] = field(default_factory=dict)

    def match(self, addr: str) -> bool:
        memo = self.memo
        hit = memo.get(addr)
        if hit is not None:
            return hit
        result = self._match(addr)
        if len(memo) >= _MEMO_SIZE:
            memo.clear()
        memo[addr] = result
        return result

    def _match(self, addr: str) -> bool:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address):
            if ip.ipv4_mapped is not None and self._in(self.v4, int(ip.ipv4_mapped), 32):
                return True
            return self._in(self.v6, int(ip), 128)
        return self._in(self.v4, int(ip), 32)

    @staticmethod
    def _in(groups: tuple[tuple[int, frozenset[int]], ...], value: int, bits: int) -> bool:
        return any((value >> (bits - prefix)) in networks for prefix, networks in groups)


def _groups(networks: Sequence[Network], bits: int) -> tuple[tuple[int, frozenset[int]], ...]:
    by_prefix: dict[int, set[int]] = {}
    for net in networks:
        by_prefix.setdefault(net.prefixlen, set()).add(
            int(net.network_address) >> (bits - net.prefixlen)
        )
    # longest prefixes (exact addresses) first: the common entries of a list
    return tuple((p, frozenset(v)) for p, v in sorted(by_prefix.items(), reverse=True))


@dataclass(frozen=True, slots=True)
class _Compiled:
    whitelist: bool
    matcher: _Matcher


def _compile(conf: dict[str, Any]) -> _Compiled:
    entries = conf.get("whitelist")
    whitelist = entries is not None
    if entries is None:
        entries = conf.get("blacklist") or []
    nets = [n for n in (_network(e) for e in entries) if n is not None]
    v4 = [n for n in nets if n.version == 4]
    v6 = [n for n in nets if n.version == 6]
    return _Compiled(whitelist, _Matcher(_groups(v4, 32), _groups(v6, 128)))


_compiled: ConfCache[_Compiled] = ConfCache(_compile)


@hookimpl
def access(ctx: Any, conf: dict[str, Any]) -> Response | None:
    c = _compiled(conf)
    addr = ctx.var["remote_addr"]
    matched = c.matcher.match(addr) if isinstance(addr, str) else False
    if matched != c.whitelist:
        return Response(conf["response_code"], {"message": conf["message"]})
    return None
