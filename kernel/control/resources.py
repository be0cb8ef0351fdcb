"""``GET /v1/routes``, ``/v1/services``, ``/v1/upstreams`` (and one by id): what the running
state holds, in APISIX's in-memory form (spec §8).

Each object is ``{"key", "value", "createdIndex", "modifiedIndex", "orig_modifiedIndex",
"has_domain"}``. ``value`` is the item of the live snapshot with the schema defaults filled
and upstream nodes in the array form. The indexes are the store's revisions of the key (etcd,
or the embedded store's sidecar); a standalone file has none, and every item gets the state
generation (APISIX gives every item of a standalone file the file's version).
"""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any

from kernel import schemas
from kernel.state import GatewayState
from kernel.store.base import item_key
from kernel.store.resources import StoreUnavailable
from kernel.upstream.nodes import Node, has_domain, normalize_nodes

from .context import ControlContext

log = logging.getLogger("sixgate.control")

KINDS = {"routes": "route", "services": "service", "upstreams": "upstream"}
"""collection -> resource kind (its schema and its name in 404 messages)."""
REVISION_TIMEOUT = 2.0


def _node(node: Node) -> dict[str, Any]:
    out: dict[str, Any] = {"host": node.host, "port": node.port, "weight": node.weight,
                           "priority": node.priority}  # fmt: skip
    if node.metadata is not None:
        out["metadata"] = node.metadata
    return out


def _array_nodes(upstream: dict[str, Any]) -> bool:
    """Turn ``upstream["nodes"]`` into the array form, in place; whether a node is a name."""
    nodes = upstream.get("nodes")
    if nodes is None:
        return False
    try:
        parsed = normalize_nodes(nodes, str(upstream.get("scheme") or "http"))
    except ValueError:
        return False
    upstream["nodes"] = [_node(n) for n in parsed]
    return has_domain(parsed)


def value_of(collection: str, raw: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """``(value, has_domain)`` of one stored item as the data plane holds it."""
    try:
        value = schemas.with_defaults(KINDS[collection], raw)
    except Exception:  # kept by the store, so valid; be lenient all the same
        value = copy.deepcopy(raw)
    if collection == "upstreams":
        return value, _array_nodes(value)
    inline = value.get("upstream")
    if isinstance(inline, dict):
        return value, _array_nodes(inline)
    return value, False


async def revisions(
    ctx: ControlContext, collection: str, key: str | None = None
) -> dict[str, tuple[int, int]]:
    """key -> ``(createdIndex, modifiedIndex)`` from the store, for the whole collection or
    just ``key`` (empty when the store has none or does not answer in time)."""
    store = ctx.store
    if store is None:
        return {}
    try:
        if key is None:
            entries = await asyncio.wait_for(store.list(f"{store.prefix}/{collection}/"),
                                             REVISION_TIMEOUT)  # fmt: skip
        else:
            entry = await asyncio.wait_for(store.get(key), REVISION_TIMEOUT)
            entries = [] if entry is None else [entry]
    except (TimeoutError, StoreUnavailable, OSError) as err:
        log.warning("control API: no revisions for %s: %s", key or collection, err)
        return {}
    return {e.key: (e.create_revision, e.mod_revision) for e in entries}


def _dump(ctx: ControlContext, state: GatewayState, collection: str, raw: dict[str, Any],
          revs: dict[str, tuple[int, int]]) -> dict[str, Any]:  # fmt: skip
    key = f"{ctx.prefix}/{collection}/{item_key(collection, raw)}"
    value, domain = value_of(collection, raw)
    created, modified = revs.get(key, (state.generation, state.generation))
    return {"key": key, "value": value, "createdIndex": created, "modifiedIndex": modified,
            "orig_modifiedIndex": modified, "has_domain": domain}  # fmt: skip


async def dump_all(ctx: ControlContext, collection: str) -> list[dict[str, Any]]:
    state = ctx.state()
    revs = await revisions(ctx, collection)
    return [_dump(ctx, state, collection, raw, revs) for raw in state.snapshot.items(collection)]


async def dump_one(ctx: ControlContext, collection: str, ident: str) -> dict[str, Any] | None:
    state = ctx.state()
    raw = state.snapshot.get(collection, ident)
    if raw is None:
        return None
    key = f"{ctx.prefix}/{collection}/{item_key(collection, raw)}"
    return _dump(ctx, state, collection, raw, await revisions(ctx, collection, key))


def not_found(collection: str, ident: str) -> str:
    """``route[1] not found`` (APISIX's words)."""
    return f"{KINDS[collection]}[{ident}] not found"
