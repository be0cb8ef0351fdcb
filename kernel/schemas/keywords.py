"""Keyword checks of the validator: types, objects, arrays, strings and numbers.

Split from :mod:`kernel.schemas.engine`, which composes these steps (and the
combinators) into one compiled validator per schema. Every message here is
api7/jsonschema's wording; see the engine's docstring for the rules carried over.
"""

from __future__ import annotations

import math
import re
import socket
import warnings
from collections.abc import Callable
from typing import Any

from .messages import is_number, json_copy, lua_eq, lua_num, lua_quote, scalar_key

Check = Callable[[Any], str | None]
"""A compiled validator: takes the value (defaults are filled into it), returns an error or None."""


class SchemaCompileError(ValueError):
    """The schema itself is unusable (bad ``type`` name, unresolvable ``$ref``, bad regex)."""


_MISSING: Any = object()


def ok(_value: Any) -> str | None:
    return None


def never(_value: Any) -> str | None:
    return "expect false always"


def is_empty_table(value: Any) -> bool:
    return isinstance(value, (dict, list)) and not value


def _is_integer(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value) and value.is_integer()


TYPE_TESTS: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict) or (isinstance(v, list) and not v),
    "array": lambda v: isinstance(v, list) or (isinstance(v, dict) and not v),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "number": is_number,
    "integer": _is_integer,
    "null": lambda v: v is None,
    "table": lambda v: isinstance(v, (dict, list)),
    "function": lambda v: False,
}


def compile_regex(pattern: str) -> re.Pattern[str]:
    """Compile a PCRE-style schema pattern with Python's ``re`` (searched, not anchored)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return re.compile(pattern)
    except re.error as exc:
        raise SchemaCompileError(f"invalid pattern {pattern!r}: {exc}") from exc


def _inet(family: int, text: str) -> bool:
    try:
        socket.inet_pton(family, text)
    except (OSError, ValueError):
        return False
    return True


_EMAIL_RE = re.compile(r"^([A-Za-z0-9_\-\.])+\@([A-Za-z0-9_\-\.])+\.([A-Za-z]{2,4})$")
_HOSTNAME_RE = re.compile(r"^[a-zA-Z0-9\-\.]+$")

# format name -> (test, message prefix); the hostname wording is the upstream library's own.
FORMATS: dict[str, tuple[Callable[[str], bool], str]] = {
    "email": (lambda s: _EMAIL_RE.search(s) is not None, "expect valid email address but got: "),
    "ipv4": (lambda s: _inet(socket.AF_INET, s), "expect valid ipv4 address but got: "),
    "ipv6": (lambda s: _inet(socket.AF_INET6, s), "expect valid ipv6 address but got: "),
    "hostname": (
        lambda s: _HOSTNAME_RE.search(s) is not None,
        "expect valid ipv4 address but got: ",
    ),
}


def unique_violation(items: list[Any]) -> tuple[int, int] | None:
    """1-based indexes of the first two equal items, found the way the Lua library does."""
    seen: dict[tuple[str, Any], int] = {}
    tables: list[tuple[int, Any]] = []
    for index, item in enumerate(items, 1):
        if isinstance(item, (dict, list)):
            tables.append((index, item))
            continue
        key = scalar_key(item)
        try:
            first = seen.get(key)
        except TypeError:  # an unhashable oddity: compare it the slow way below
            tables.append((index, item))
            continue
        if first is not None:
            return first, index
        seen[key] = index
    for pos, (i, left) in enumerate(tables):
        for j, right in tables[pos + 1 :]:
            if lua_eq(left, right):
                return i, j
    return None


def sequence(steps: list[Check]) -> Check:
    if not steps:
        return ok
    if len(steps) == 1:
        return steps[0]
    frozen = tuple(steps)

    def run(value: Any) -> str | None:
        for step in frozen:
            err = step(value)
            if err is not None:
                return err
        return None

    return run


Compile = Callable[[Any], Check]
"""Compiles a sub-schema (memoised by the engine)."""


def object_step(compile: Compile, schema: dict[str, Any], steps: list[Check]) -> None:
    """Object keywords: ``properties`` (filling defaults), ``required``, ``dependencies``,
    ``patternProperties``, ``additionalProperties``, ``min``/``maxProperties``."""
    keys = ("properties", "patternProperties", "minProperties", "maxProperties",
            "dependencies", "required")
    additional = schema.get("additionalProperties")
    if additional is None and not any(k in schema for k in keys):
        return
    properties: dict[str, Any] = schema.get("properties") or {}
    required: list[str] = list(schema.get("required") or [])
    dependencies: dict[str, Any] = schema.get("dependencies") or {}

    def dependency_check(name: str, dep: Any) -> Callable[[dict[str, Any]], str | None]:
        if isinstance(dep, list) and dep:
            names = list(dep)

            def need(obj: dict[str, Any]) -> str | None:
                for other in names:
                    if other not in obj:
                        return f'property "{other}" is required when "{name}" is set'
                return None

            return need
        sub = compile(dep if not isinstance(dep, list) else {})

        def dep_schema(obj: dict[str, Any]) -> str | None:
            err = sub(obj)
            if err is not None:
                return f'failed to validate dependent schema for "{name}": {err}'
            return None

        return dep_schema

    plan = []
    for name, sub in properties.items():
        default = _MISSING
        if isinstance(sub, dict) and sub.get("default") is not None:
            default = sub["default"]
        declared = sub.get("type") if isinstance(sub, dict) else None
        dep = dependency_check(name, dependencies[name]) if name in dependencies else None
        plan.append((name, compile(sub), name in required, dep, default, declared))
    rest_required = [name for name in required if name not in properties]
    rest_deps = [
        (name, dependency_check(name, dep))
        for name, dep in dependencies.items()
        if name not in properties
    ]
    patterns = [
        (patt, compile_regex(patt), compile(sub))
        for patt, sub in (schema.get("patternProperties") or {}).items()
    ]
    propset: frozenset[str] | None = None
    extra: Check | None = None
    if additional is not None and additional is not True:
        propset = frozenset(properties)
        if isinstance(additional, dict):
            extra = compile(additional)
    min_props = schema.get("minProperties")
    max_props = schema.get("maxProperties")
    walk_keys = bool(patterns) or propset is not None

    def check_object(value: Any) -> str | None:
        if isinstance(value, dict):
            obj = value
        elif isinstance(value, list) and not value:
            obj = {}
        else:
            return None
        for name, check, is_required, dep, default, declared in plan:
            current = obj.get(name, _MISSING)
            if current is not _MISSING:
                err = check(current)
                if err is not None:
                    return f'property "{name}" validation failed: {err}'
                if declared == "object" and current == []:
                    obj[name] = {}
                elif declared == "array" and current == {}:
                    obj[name] = []
                if dep is not None:
                    err = dep(obj)
                    if err is not None:
                        return err
            elif is_required:
                return f'property "{name}" is required'
            if current is _MISSING and default is not _MISSING:
                obj[name] = json_copy(default)
        for name in rest_required:
            if name not in obj:
                return f'property "{name}" is required'
        for name, dep in rest_deps:
            if name in obj:
                err = dep(obj)
                if err is not None:
                    return err
        if walk_keys:
            for key, item in list(obj.items()):
                matched = False
                text = key if isinstance(key, str) else str(key)  # YAML may give int keys
                for patt, regex, check in patterns:
                    if regex.search(text):
                        err = check(item)
                        if err is not None:
                            return f'failed to validate {key} (matching "{patt}"): {err}'
                        matched = True
                if propset is not None and not matched and key not in propset:
                    if extra is None:
                        return f"additional properties forbidden, found {key}"
                    err = extra(item)
                    if err is not None:
                        return f"failed to validate additional property {key}: {err}"
        if min_props is not None and len(obj) < min_props:
            return f"expect object to have at least {lua_num(min_props)} properties"
        if max_props is not None and len(obj) > max_props:
            return f"expect object to have at most {lua_num(max_props)} properties"
        return None

    steps.append(check_object)
    if "required" in schema and not required:

        def must_be_empty(value: Any) -> str | None:
            return None if is_empty_table(value) else "the input data should be an empty table"

        steps.append(must_be_empty)

def array_step(compile: Compile, schema: dict[str, Any], steps: list[Check]) -> None:
    """Array keywords: ``items`` (list or tuple), ``additionalItems``, ``min``/``maxItems``,
    ``uniqueItems``."""
    items = schema.get("items")
    if items is None and not any(
        k in schema for k in ("minItems", "maxItems", "uniqueItems")
    ):
        return
    if items is False:

        def no_items(value: Any) -> str | None:
            return None if is_empty_table(value) else "expect false always"

        steps.append(no_items)
        return
    min_items = schema.get("minItems")
    max_items = schema.get("maxItems")
    unique = bool(schema.get("uniqueItems"))
    each: Check | None = None
    tuple_checks: list[Check] = []
    additional: Any = schema.get("additionalItems")
    extra: Check | None = None
    if isinstance(items, list) and items:
        tuple_checks = [compile(sub) for sub in items]
        if isinstance(additional, dict):
            extra = compile(additional)
    elif isinstance(items, dict):
        each = compile(items)

    def check_array(value: Any) -> str | None:
        if isinstance(value, list):
            arr = value
        elif isinstance(value, dict) and not value:
            arr = []
        else:
            return None
        count = len(arr)
        if min_items is not None and count < min_items:
            return f"expect array to have at least {lua_num(min_items)} items"
        if max_items is not None and count > max_items:
            return f"expect array to have at most {lua_num(max_items)} items"
        if tuple_checks:
            for index, check in enumerate(tuple_checks):
                if index >= count:
                    break
                err = check(arr[index])
                if err is not None:
                    return f"failed to validate item {index + 1}: {err}"
            else:
                if additional is False and count > len(tuple_checks):
                    return "found unexpected extra items in array"
                if extra is not None:
                    for index in range(len(tuple_checks), count):
                        err = extra(arr[index])
                        if err is not None:
                            return f"failed to validate additional item {index + 1}: {err}"
        elif each is not None:
            for index, item in enumerate(arr, 1):
                err = each(item)
                if err is not None:
                    return f"failed to validate item {index}: {err}"
        if unique:
            pair = unique_violation(arr)
            if pair is not None:
                return f"expected unique items but items {pair[0]} and {pair[1]} are equal"
        return None

    steps.append(check_array)

def string_step(schema: dict[str, Any], steps: list[Check]) -> None:
    """``minLength``, ``maxLength`` (characters), ``pattern`` (searched, as PCRE does)."""
    min_len = schema.get("minLength")
    max_len = schema.get("maxLength")
    pattern = schema.get("pattern")
    if min_len is None and max_len is None and pattern is None:
        return
    regex = compile_regex(pattern) if isinstance(pattern, str) else None

    def check_string(value: Any) -> str | None:
        if not isinstance(value, str):
            return None
        if min_len is not None and len(value) < min_len:
            return f"string too short, expected at least {lua_num(min_len)}, got {len(value)}"
        if max_len is not None and len(value) > max_len:
            return f"string too long, expected at most {lua_num(max_len)}, got {len(value)}"
        if regex is not None and regex.search(value) is None:
            return f'failed to match pattern "{pattern}" with {lua_quote(value)}'
        return None

    steps.append(check_string)

def number_step(schema: dict[str, Any], steps: list[Check]) -> None:
    """``minimum``, ``exclusiveMinimum``, ``maximum``, ``exclusiveMaximum``, ``multipleOf``."""
    minimum = schema.get("minimum")
    maximum = schema.get("maximum")
    ex_min = schema.get("exclusiveMinimum")
    ex_max = schema.get("exclusiveMaximum")
    multiple = schema.get("multipleOf")
    # Draft 4 spelling (boolean exclusiveMinimum/Maximum) still turns up in plugin schemas.
    if ex_min is True and minimum is not None:
        ex_min, minimum = minimum, None
    if ex_max is True and maximum is not None:
        ex_max, maximum = maximum, None
    if not is_number(ex_min):
        ex_min = None
    if not is_number(ex_max):
        ex_max = None
    bounds = [
        (b, op, word)
        for b, op, word in (
            (minimum, "lt", "at least"),
            (ex_min, "le", "greater than"),
            (maximum, "gt", "at most"),
            (ex_max, "ge", "smaller than"),
        )
        if b is not None
    ]
    if not bounds and multiple is None:
        return

    def check_number(value: Any) -> str | None:
        if not is_number(value):
            return None
        for bound, op, word in bounds:
            if (
                (op == "lt" and value < bound)
                or (op == "le" and value <= bound)
                or (op == "gt" and value > bound)
                or (op == "ge" and value >= bound)
            ):
                return f"expected {lua_num(value)} to be {word} {lua_num(bound)}"
        if multiple is not None:
            quotient = value / multiple
            if not math.isfinite(quotient) or quotient != int(quotient):
                return f"expected {lua_num(value)} to be a multiple of {lua_num(multiple)}"
        return None

    steps.append(check_number)
