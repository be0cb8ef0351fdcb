"""Endpoints about the gateway itself: plugins, schemas, reload (spec §2.3 "Other endpoints")."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from kernel.schemas import SCHEMAS, schema_error

from .resources import RESOURCES
from .transport import AdminError, error

if TYPE_CHECKING:
    from . import AdminContext

Reply = tuple[int, Any]

SUBSYSTEMS = ("http", "stream")


def plugins_list(ctx: AdminContext, args: Mapping[str, str]) -> Reply:
    """``GET /apisix/admin/plugins/list``: enabled plugin names, highest priority first."""
    subsystem = args.get("subsystem", "http")
    if subsystem not in SUBSYSTEMS:
        return 400, "invalid subsystem passed"
    if subsystem == "stream":
        return 200, []
    return 200, list(ctx.registry().names_by_priority())


def _plugin_entry(info: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "version": info.version,
        "priority": info.priority,
        "schema": info.schema,
    }
    if info.type is not None:
        item["type"] = info.type
    if info.metadata_schema is not None:
        item["metadata_schema"] = info.metadata_schema
    if info.consumer_schema is not None:
        item["consumer_schema"] = info.consumer_schema
    return item


def plugin_get(ctx: AdminContext, name: str | None, args: Mapping[str, str]) -> Reply:
    """``GET /apisix/admin/plugins/{name}`` (and ``/schema/plugins/{name}``, ``?all=true``)."""
    subsystem = args.get("subsystem", "http")
    if subsystem not in SUBSYSTEMS:
        return 400, {"error_msg": "unsupported subsystem: " + subsystem}
    registry = ctx.registry()
    if args.get("all") == "true":
        if subsystem == "stream":
            return 200, {}
        return 200, {info.name: _plugin_entry(info) for info in registry}
    info = registry.get(name) if name and subsystem == "http" else None
    if info is None:
        return 404, {"error_msg": "plugin not found in subsystem " + subsystem}
    schema: Any = info.schema
    if args.get("schema_type") == "consumer":
        schema = info.consumer_schema
    if schema is None:
        return 400, {"error_msg": "not found schema"}
    return 200, schema


def schema_get(name: str | None) -> Reply:
    """``GET /apisix/admin/schema/{name}``: a core schema."""
    schema = SCHEMAS.get(name or "")
    if schema is None:
        return 400, {"error_msg": "not found schema: " + (name or "")}
    return 200, schema


def schema_validate(resource: str, body: Any) -> Reply:
    """``POST /apisix/admin/schema/validate/{resource}``: the schema only, no reference checks."""
    rk = RESOURCES.get(resource)
    if rk is None:
        raise AdminError(404, {"error_msg": "Unsupported resource type: " + resource})
    if rk.name == "plugin_metadata":
        raise error(400, "not found schema")
    err = schema_error(rk.schema, body)
    if err is None:
        return 200, None
    return 400, {"error_msg": err}
