"""``GET /v1/plugin_metadatas`` and ``/v1/plugin_metadata/{name}`` (spec §6.8, §8).

Values are what plugins read through ``ctx.plugin_metadata``: the stored item validated
against the plugin's ``metadata_schema`` with its defaults filled, plus ``id`` (the plugin
name). Metadata of a plugin that is not loaded, or that its schema rejects, is not live and
is not shown.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kernel.state import GatewayState


def value(state: GatewayState, name: str) -> dict[str, Any] | None:
    meta = state.plugin_metadata.get(name)
    if meta is None:
        return None
    return {"id": name, **dict(meta)}


def all_values(state: GatewayState, enabled: Iterable[str]) -> list[dict[str, Any]]:
    """One value per enabled plugin that has metadata, in the order of the plugin list."""
    out = []
    for name in dict.fromkeys(enabled):
        item = value(state, name)
        if item is not None:
            out.append(item)
    return out


def not_found(name: str) -> str:
    return f"plugin metadata[{name}] not found"
