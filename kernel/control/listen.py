"""Where the control API listens, and why it could not (spec §1.4, §8).

``apisix.enable_control`` (default true) and ``apisix.control.{ip,port}`` (default
``127.0.0.1:9090``). As ``apisix start`` does, the admin and control ports must differ, and no
proxy port may take the control port; a port already held by another process is reported
before any worker starts.
"""

from __future__ import annotations

import socket

from kernel import config as config_mod
from kernel.config import Config

DEFAULT_IP = "127.0.0.1"
DEFAULT_PORT = 9090


def control_address(cfg: Config) -> tuple[str, int] | None:
    """``(ip, port)`` of the control API, or ``None`` when ``apisix.enable_control`` is false."""
    if cfg.get("apisix.enable_control", True) is False:
        return None
    control = cfg.get("apisix.control") or {}
    return str(control.get("ip") or DEFAULT_IP), int(control.get("port") or DEFAULT_PORT)


def port_conflict(cfg: Config) -> str | None:
    """APISIX's start-up check, for the control port: ``control port 9180 conflicts with admin
    port`` / ``http listen port 9090 conflicts with control port`` (``None``: no conflict)."""
    control = control_address(cfg)
    if control is None:
        return None
    return config_mod.listener_conflict(cfg, control[1], "control")


def probe(host: str, port: int) -> None:
    """Bind ``host:port`` once (and let it go); raises ``OSError`` when another process has it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))


def listen_problem(cfg: Config) -> str | None:
    """Why the control API could not listen (a port conflict, or the address is taken);
    ``None`` when it can, or when it is disabled. Checked by ``sixgate start``."""
    conflict = port_conflict(cfg)
    if conflict is not None:
        return conflict
    address = control_address(cfg)
    if address is None:
        return None
    try:
        probe(*address)
    except OSError as err:
        return (
            f"cannot listen on {address[0]}:{address[1]} for the control API: "
            f"{err.strerror or err} (change apisix.control.port, or set "
            f"apisix.enable_control: false)"
        )
    return None
