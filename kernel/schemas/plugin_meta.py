"""The ``_meta`` property injected into every plugin's conf schema (spec §6.1, §6.4)."""

from __future__ import annotations

from typing import Any

INJECTED_MARK = "this is a mark for our injected plugin schema"

META_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "disable": {"type": "boolean"},
        "error_response": {"oneOf": [{"type": "string"}, {"type": "object"}]},
        "priority": {"description": "priority of plugins by customized order",
                     "type": "integer"},
        "filter": {
            "description": "filter determines whether the plugin needs to be executed at runtime",
            "type": "array",
        },
        "pre_function": {
            "description": "function to be executed in each phase before execution of plugins "
                           "(Lua only: sixgate does not run it)",
            "type": "string",
        },
    },
    "additionalProperties": False,
}

_INJECTED: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}


def plugin_conf_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The plugin's conf schema with the optional ``_meta`` property added.

    Returns a new dict (the plugin's own schema is not changed), the same one
    for the same input so compiled validators stay cached. A schema that
    already carries the mark is returned as is.
    """
    if schema.get("$comment") == INJECTED_MARK:
        return schema
    hit = _INJECTED.get(id(schema))
    if hit is not None and hit[0] is schema:
        return hit[1]
    injected = dict(schema)
    properties = dict(schema.get("properties") or {})
    properties["_meta"] = META_SCHEMA
    injected["properties"] = properties
    injected["$comment"] = INJECTED_MARK
    if len(_INJECTED) >= 4096:
        _INJECTED.pop(next(iter(_INJECTED)))
    _INJECTED[id(schema)] = (schema, injected)
    return injected
