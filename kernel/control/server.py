"""Starting and stopping the control API's listener (worker 0 of ``sixgate start`` only)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aiohttp import web

from .app import create_control_app
from .context import context_for
from .errors import ErrorLog
from .listen import control_address

if TYPE_CHECKING:
    from kernel.gateway import Gateway

log = logging.getLogger("sixgate.control")


class ControlServer:
    """One running control API: its aiohttp runner and the store error log it keeps."""

    def __init__(self, runner: web.AppRunner, errors: ErrorLog, host: str, port: int) -> None:
        self.runner = runner
        self.errors = errors
        self.host = host
        self.port = port

    async def stop(self) -> None:
        self.errors.detach()
        await self.runner.cleanup()


async def start_control(gateway: Gateway) -> ControlServer | None:
    """Serve the control API for ``gateway`` on ``apisix.control`` (``None`` when
    ``apisix.enable_control`` is false). Raises ``OSError`` naming the address when it cannot
    listen."""
    address = control_address(gateway.cfg)
    if address is None:
        return None
    host, port = address
    errors = ErrorLog().attach()
    runner = web.AppRunner(create_control_app(context_for(gateway, errors)), access_log=None,
                           handle_signals=False)  # fmt: skip
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_address=True).start()
    except OSError as err:
        errors.detach()
        await runner.cleanup()
        raise OSError(err.errno, f"control API cannot listen on {host}:{port}: "
                                 f"{err.strerror or err}") from err  # fmt: skip
    log.info("control API listening on %s:%s", host, port)
    return ControlServer(runner, errors, host, port)
