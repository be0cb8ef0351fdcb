"""How APISIX's validator (api7/jsonschema on LuaJIT) spells values in its error messages.

The gateway's error texts are part of its API: clients and test suites compare
``error_msg`` strings. The validator runs inside LuaJIT, so the words it uses
for types and the way it prints numbers and strings are Lua's. These helpers
reproduce that from Python values decoded from JSON/YAML:

* JSON objects and arrays are both Lua *tables*; ``null`` is cjson's null,
  a *userdata*; ``true``/``false`` are *booleans*; every number is a *number*.
* Numbers print the way LuaJIT's ``tostring`` does (``%.14g``).
* ``%q``-quoted strings escape backslash, double quote and line breaks.
"""

from __future__ import annotations

import json
import math
from typing import Any


def lua_type(value: Any) -> str:
    """The name Lua's ``type()`` gives a decoded JSON value (used in ``wrong type`` messages)."""
    if value is None:
        return "userdata"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (dict, list, tuple)):
        return "table"
    return type(value).__name__


def is_number(value: Any) -> bool:
    """True for JSON numbers (``bool`` is an ``int`` subclass in Python but not a number)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def lua_num(value: Any) -> str:
    """Format a number as LuaJIT's ``tostring`` does: ``1``, ``0.5``, ``1e+20``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if abs(value) < 10**15:
            return str(value)
        try:
            value = float(value)
        except OverflowError:
            return str(value)
    if not isinstance(value, float):
        return str(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.14g}"


_QUOTE_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\\n", "\r": "\\r", "\0": "\\0"}


def lua_quote(text: str) -> str:
    """Quote a string as Lua's ``string.format('%q', s)`` does."""
    return '"' + "".join(_QUOTE_ESCAPES.get(ch, ch) for ch in text) + '"'


def cjson_encode(value: Any) -> str:
    """Encode as lua-cjson does for the short lists it is used on (``["active","passive"]``).

    cjson writes no spaces, escapes ``/`` and encodes an empty table as ``{}``.
    """
    if isinstance(value, (list, tuple)) and not value:
        return "{}"
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text.replace("/", "\\/")


def scalar_key(value: Any) -> tuple[str, Any]:
    """A hashable key under which Lua would store a scalar in a table (1 and 1.0 collide)."""
    if value is None:
        return ("null", None)
    if isinstance(value, bool):
        return ("boolean", value)
    if isinstance(value, (int, float)):
        return ("number", float(value) if isinstance(value, int) and abs(value) < 2**53 else value)
    return (lua_type(value), value)


def lua_eq(left: Any, right: Any) -> bool:
    """Deep equality with Lua's typing: ``true`` is not ``1``, ``{}`` equals ``[]``."""
    left_table = isinstance(left, (dict, list))
    right_table = isinstance(right, (dict, list))
    if left_table or right_table:
        if not (left_table and right_table):
            return False
        if not left and not right:
            return True
        if isinstance(left, dict) and isinstance(right, dict):
            if left.keys() != right.keys():
                return False
            return all(lua_eq(left[k], right[k]) for k in left)
        if isinstance(left, list) and isinstance(right, list):
            return len(left) == len(right) and all(
                lua_eq(a, b) for a, b in zip(left, right, strict=True)
            )
        return False
    return scalar_key(left) == scalar_key(right)


def json_copy(value: Any) -> Any:
    """Deep copy of a JSON-shaped value (dicts and lists copied, scalars shared)."""
    if isinstance(value, dict):
        return {k: json_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_copy(v) for v in value]
    if isinstance(value, tuple):
        return [json_copy(v) for v in value]
    return value
