"""``GET /v1/schema``: the core schemas and every enabled plugin's (spec §8)."""

from __future__ import annotations

from typing import Any

from kernel.admin.meta import _plugin_entry
from kernel.plugins.manager import PluginRegistry
from kernel.schemas import SCHEMAS
from kernel.schemas.resources import UPSTREAM_HASH_HEADER, UPSTREAM_HASH_VARS

MAIN_KINDS = ("consumer", "consumer_group", "global_rule", "plugin_config", "plugins", "proto",
              "route", "service", "ssl", "stream_route", "upstream")  # fmt: skip


def main_schemas() -> dict[str, Any]:
    """``main``: the resource schemas APISIX lists (``graphql_cost_decoration`` is left out:
    sixgate has no GraphQL support)."""
    main: dict[str, Any] = {kind: SCHEMAS[kind] for kind in MAIN_KINDS}
    main["upstream_hash_header_schema"] = UPSTREAM_HASH_HEADER
    main["upstream_hash_vars_schema"] = UPSTREAM_HASH_VARS
    return main


def plugin_schemas(registry: PluginRegistry) -> dict[str, Any]:
    """``name -> {version, priority, schema, type?, metadata_schema?, consumer_schema?,
    scope?}`` for the loaded plugins, highest priority first."""
    out: dict[str, Any] = {}
    for name in registry.names_by_priority():
        info = registry.get(name)
        if info is None:
            continue
        entry = _plugin_entry(info)
        scope = getattr(info.module, "scope", None)
        if scope is not None:
            entry["scope"] = scope
        out[name] = entry
    return out


def schema_document(registry: PluginRegistry) -> dict[str, Any]:
    """The whole ``/v1/schema`` answer (no stream plugins: sixgate proxies HTTP only)."""
    return {"main": main_schemas(), "plugins": plugin_schemas(registry), "stream_plugins": {}}
