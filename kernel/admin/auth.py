"""Who may use the Admin API (spec §2.1): ``allow_admin`` networks and admin keys with roles."""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any

from aiohttp import web

from kernel.config import Config

PUBLIC_DEFAULT_KEY = "edd1c9f034335f136f87ad84b625c8f1"
"""The admin key older APISIX releases shipped; never accepted from a non-loopback client."""

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def allowed_networks(config: Config) -> list[Network] | None:
    """``deployment.admin.allow_admin`` parsed; ``None`` allows every client."""
    entries = config.get("deployment.admin.allow_admin")
    if entries is None:
        return None
    if isinstance(entries, str):
        entries = [entries]
    nets: list[Network] = []
    for entry in entries:
        try:
            nets.append(ipaddress.ip_network(str(entry), strict=False))
        except ValueError:
            continue
    return nets


def client_allowed(networks: list[Network] | None, remote: str | None) -> bool:
    if networks is None:
        return True
    if not remote:
        return False
    try:
        addr = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr.version == net.version and addr in net for net in networks)


def _is_loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def presented_key(request: web.Request) -> str | None:
    """The key from query ``api_key``, header ``X-API-KEY`` or cookie ``x_api_key``, in order."""
    key = request.query.get("api_key")
    if key is None:
        key = request.headers.get("X-API-KEY")
    if key is None:
        key = request.cookies.get("x_api_key")
    return key


def check_token(config: Config, request: web.Request) -> str | None:
    """``None`` when the request may proceed, else the 401 ``description``."""
    if config.get("deployment.admin.admin_key_required", True) is False:
        return None
    keys: Any = config.get("deployment.admin.admin_key")
    if not keys:
        return None
    if isinstance(keys, dict):
        keys = [keys]
    key = presented_key(request)
    if key is None:
        return "missing apikey"
    role: str | None = None
    for item in keys:
        if not isinstance(item, dict):
            continue
        want = item.get("key")
        if not isinstance(want, str) or not want:
            continue
        if hmac.compare_digest(want.encode(), key.encode()):
            role = str(item.get("role") or "admin")
            break
    if role is None:
        return "wrong apikey"
    if key == PUBLIC_DEFAULT_KEY and not _is_loopback(request.remote):
        return "wrong apikey"
    if role == "viewer" and request.method != "GET":
        return "invalid method for role viewer"
    return None
