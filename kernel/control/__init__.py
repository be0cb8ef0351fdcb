"""The control API (spec §8): ``/v1/...`` on ``apisix.control`` (default ``127.0.0.1:9090``),
no authentication, served by worker 0 of ``sixgate start`` when ``apisix.enable_control`` is
true (the default). See docs/control-api.md.

Modules: :mod:`.listen` (address, port conflicts), :mod:`.server` (start/stop),
:mod:`.app` (routing), :mod:`.replies` (bodies and headers), :mod:`.context` (what it reads),
:mod:`.schema` (``/v1/schema``), :mod:`.health` (``/v1/healthcheck``), :mod:`.resources`
(routes, services, upstreams), :mod:`.metadata` (plugin metadata), :mod:`.sixgate`
(``/v1/sixgate/...``), :mod:`.errors` (recent config store errors), :mod:`.optional`
(reports owned by other modules, looked up lazily).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .listen import control_address, listen_problem, port_conflict

if TYPE_CHECKING:
    from .app import create_control_app
    from .context import ControlContext, context_for
    from .server import ControlServer, start_control

# The app and server need aiohttp: imported on first use, so that a gateway with the control
# API off (and the start-up checks) never loads it (aiohttp adds ~20 MiB to a worker's RSS).
_LAZY = {
    "create_control_app": ".app",
    "ControlContext": ".context",
    "context_for": ".context",
    "ControlServer": ".server",
    "start_control": ".server",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(module, __name__), name)

__all__ = [
    "ControlContext",
    "ControlServer",
    "context_for",
    "control_address",
    "create_control_app",
    "listen_problem",
    "port_conflict",
    "start_control",
]
