"""What the control API reads and triggers: the live parts of one gateway worker."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kernel.config import Config
from kernel.plugins.manager import PluginRegistry
from kernel.plugins.reload import PluginStatus
from kernel.state import GatewayState
from kernel.store.resources import ResourceStore

from .errors import ErrorLog

if TYPE_CHECKING:
    from kernel.gateway import Gateway


@dataclass
class ControlContext:
    state: Callable[[], GatewayState]
    """The live state (read once per answer)."""
    registry: Callable[[], PluginRegistry]
    """The live plugin registry (changes on reload, even before any config is loaded)."""
    config: Callable[[], Config]
    """config.yaml as last (re)loaded."""
    reload_plugins: Callable[[], Awaitable[None]]
    """``PUT /v1/plugins/reload``: the Admin API's reload (every worker)."""
    plugin_status: PluginStatus
    last_error: Callable[[], str | None]
    """The last config that failed to build (``Gateway.last_error``)."""
    store: ResourceStore | None
    """Where ``createdIndex``/``modifiedIndex`` come from (``None``: a standalone file)."""
    errors: ErrorLog
    slot: int = 0

    @property
    def prefix(self) -> str:
        """The key prefix of resource keys (``deployment.etcd.prefix``, default ``/apisix``)."""
        if self.store is not None:
            return self.store.prefix
        return str(self.config().get("deployment.etcd.prefix") or "/apisix")


def context_for(gateway: Gateway, errors: ErrorLog) -> ControlContext:
    store = gateway.resources
    if store is None and isinstance(gateway.store, ResourceStore):
        store = gateway.store  # a data plane's read-only etcd store still has revisions
    return ControlContext(
        state=lambda: gateway.state,
        registry=lambda: gateway.registry,
        config=lambda: gateway.cfg,
        reload_plugins=lambda: gateway.reload_from_disk(trigger="control"),
        plugin_status=gateway.plugin_status,
        last_error=lambda: gateway.last_error,
        store=store,
        errors=errors,
        slot=gateway.slot,
    )
