"""A JSON Schema (Draft 7) validator that reports errors the way APISIX does.

APISIX validates with api7/jsonschema, which stops at the first failure and
reports it in its own words (``property "methods" validation failed: failed
to validate item 1: matches none of the enum values``). Python's ``jsonschema``
reports differently and collects every error, so sixgate walks the schema
itself. A schema is compiled once into nested closures; validating is a walk
of the value, no schema interpretation.

Behaviour carried over from that validator (so messages and results match):

* The keyword order of checks: ``type``; object keywords (``properties`` in
  schema order, with ``required`` and ``dependencies`` of each property, then
  the remaining ``required``/``dependencies``, then ``patternProperties`` /
  ``additionalProperties``, then ``min``/``maxProperties``); array keywords;
  string keywords; number keywords; ``enum``; ``allOf``; ``anyOf``; ``oneOf``;
  ``if``/``then``/``else``; ``not``; ``propertyNames``; ``format``; ``const``;
  ``contains``. Properties are therefore reported before a resource's
  top-level ``allOf``/``anyOf``/``oneOf`` structure.
* Defaults are written into the value *while* it is validated (a missing
  property with a ``default`` is set once its turn in ``properties`` is over).
  Later keywords see them: an SSL without ``type`` is checked as a ``server``
  one. The public helpers always work on a copy.
* An empty object and an empty array are the same Lua table: ``{}`` passes as
  an array and ``[]`` as an object. A property declared ``type: object`` that
  holds ``[]`` (or ``array`` holding ``{}``) is normalised in the copy.
* Indexes in messages are 1-based; numbers and strings print as Lua prints them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from .keywords import (
    FORMATS,
    TYPE_TESTS,
    Check,
    SchemaCompileError,
    array_step,
    is_empty_table,
    never,
    number_step,
    object_step,
    ok,
    sequence,
    string_step,
)
from .messages import cjson_encode, json_copy, lua_eq, lua_type

__all__ = [
    "Check",
    "Compiler",
    "SchemaCompileError",
    "check_and_fill",
    "compile_validator",
    "fill_defaults",
    "raw_validator",
]


class Compiler:
    """Compiles one root schema; sub-schemas are memoised by identity (shared defs, ``$ref``)."""

    def __init__(self, root: Any) -> None:
        self.root = root
        self._memo: dict[int, Check] = {}
        self._keep: list[Any] = []  # keep compiled sub-schemas alive so their ids stay unique

    def compile(self, schema: Any) -> Check:
        key = id(schema)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        cell: list[Check] = []

        def deferred(value: Any) -> str | None:  # only reached through a recursive $ref
            return cell[0](value)

        self._memo[key] = deferred
        self._keep.append(schema)
        built = self._build(schema)
        cell.append(built)
        self._memo[key] = built
        return built

    # -- helpers -------------------------------------------------------------------------------

    def _resolve(self, ref: Any) -> Any:
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise SchemaCompileError(f"unsupported $ref {ref!r} (only local '#/...' references)")
        node = self.root
        fragment = ref[1:].strip("/")
        if not fragment:
            return node
        for raw in fragment.split("/"):
            part = unquote(raw).replace("~1", "/").replace("~0", "~")
            try:
                node = node[int(part)] if isinstance(node, list) else node[part]
            except (KeyError, IndexError, ValueError, TypeError) as exc:
                raise SchemaCompileError(f"unresolvable $ref {ref!r}") from exc
        return node

    def _build(self, schema: Any) -> Check:
        if schema is True:
            return ok
        if schema is False:
            return never
        if not isinstance(schema, dict):
            raise SchemaCompileError(f"a schema must be an object or a boolean, got {schema!r}")
        if "$ref" in schema:
            target = self.compile(self._resolve(schema["$ref"]))
            return lambda value: target(value)
        steps: list[Check] = []
        self._type_step(schema, steps)
        object_step(self.compile, schema, steps)
        array_step(self.compile, schema, steps)
        string_step(schema, steps)
        number_step(schema, steps)
        self._enum_step(schema, steps)
        self._combinator_steps(schema, steps)
        self._misc_steps(schema, steps)
        return sequence(steps)

    # -- keyword groups ------------------------------------------------------------------------

    def _type_step(self, schema: dict[str, Any], steps: list[Check]) -> None:
        declared = schema.get("type")
        if declared is None:
            return
        names = [declared] if isinstance(declared, str) else list(declared)
        tests = []
        for name in names:
            test = TYPE_TESTS.get(name) if isinstance(name, str) else None
            if test is None:
                raise SchemaCompileError(f"invalid JSON type: {name!r}")
            tests.append(test)
        if isinstance(declared, str):
            only = tests[0]
            prefix = f"wrong type: expected {declared}, got "

            def check_type(value: Any) -> str | None:
                return None if only(value) else prefix + lua_type(value)
        else:
            prefix = f"wrong type: expected one of {', '.join(names)}, got "

            def check_type(value: Any) -> str | None:
                for test in tests:
                    if test(value):
                        return None
                return prefix + lua_type(value)

        steps.append(check_type)

    def _enum_step(self, schema: dict[str, Any], steps: list[Check]) -> None:
        if "enum" not in schema:
            return
        choices = list(schema["enum"])

        def check_enum(value: Any) -> str | None:
            for choice in choices:
                if lua_eq(value, choice):
                    return None
            return "matches none of the enum values"

        steps.append(check_enum)

    def _combinator_steps(self, schema: dict[str, Any], steps: list[Check]) -> None:
        if "allOf" in schema:
            parts = [self.compile(sub) for sub in schema["allOf"]]

            def check_all(value: Any) -> str | None:
                for index, check in enumerate(parts, 1):
                    err = check(value)
                    if err is not None:
                        return f"allOf {index} failed: {err}"
                return None

            steps.append(check_all)
        if "anyOf" in schema:
            options = [self.compile(sub) for sub in schema["anyOf"]]
            sets = [
                cjson_encode(sub["required"])
                for sub in schema["anyOf"]
                if isinstance(sub, dict) and "required" in sub
            ]
            message = "object matches none of the required"
            if sets:
                message += ": " + " or ".join(sets)

            def check_any(value: Any) -> str | None:
                for check in options:
                    if check(value) is None:
                        return None
                return message

            steps.append(check_any)
        if "oneOf" in schema:
            branches = [self.compile(sub) for sub in schema["oneOf"]]

            def check_one(value: Any) -> str | None:
                matched = 0
                for index, check in enumerate(branches, 1):
                    if check(value) is None:
                        if matched:
                            return (
                                "value should match only one schema, but matches both schemas "
                                f"{matched} and {index}"
                            )
                        matched = index
                if not matched:
                    return "value should match only one schema, but matches none"
                return None

            steps.append(check_one)
        if "if" in schema:
            cond = self.compile(schema["if"])
            then = self.compile(schema["then"]) if "then" in schema else None
            other = self.compile(schema["else"]) if "else" in schema else None

            def check_if(value: Any) -> str | None:
                if cond(value) is None:
                    if then is not None and then(value) is not None:
                        return "then clause did not match"
                elif other is not None and other(value) is not None:
                    return "else clause did not match"
                return None

            steps.append(check_if)
        if "not" in schema:
            negated = self.compile(schema["not"])

            def check_not(value: Any) -> str | None:
                if negated(value) is None:
                    return "value wasn't supposed to match schema"
                return None

            steps.append(check_not)

    def _misc_steps(self, schema: dict[str, Any], steps: list[Check]) -> None:
        names = schema.get("propertyNames")
        if names is False:

            def no_names(value: Any) -> str | None:
                return None if is_empty_table(value) else "expect false always"

            steps.append(no_names)
        elif isinstance(names, dict):
            # The Lua library ignores schema-valued propertyNames; sixgate enforces it.
            name_check = self.compile(names)

            def check_names(value: Any) -> str | None:
                if isinstance(value, dict):
                    for key in value:
                        err = name_check(key)
                        if err is not None:
                            return f"failed to validate property name {key}: {err}"
                return None

            steps.append(check_names)
        fmt = FORMATS.get(schema.get("format") or "")
        if fmt is not None:
            test, prefix = fmt

            def check_format(value: Any) -> str | None:
                if isinstance(value, str) and not test(value):
                    return prefix + value
                return None

            steps.append(check_format)
        if "const" in schema:
            expected = schema["const"]

            def check_const(value: Any) -> str | None:
                return None if lua_eq(value, expected) else "failed to check const value"

            steps.append(check_const)
        if "contains" in schema:
            steps.append(self._contains(schema["contains"]))

    def _contains(self, contains: Any) -> Check:
        if contains is True:
            return lambda v: (
                None if isinstance(v, list) and v else "check contains: expect array table"
            )
        if contains is False:
            return lambda v: (
                "check contains: expect table" if isinstance(v, (dict, list)) else None
            )
        inner = self.compile(contains)

        def check_contains(value: Any) -> str | None:
            if is_empty_table(value):
                return "check contains: empty array is invalid"
            if isinstance(value, list) and all(inner(item) is not None for item in value):
                return "failed to check contains"
            return None

        return check_contains


# -- compiled-validator cache -------------------------------------------------------------------

_CACHE_LIMIT = 4096
_CACHE: dict[int, tuple[Any, Check, Callable[[Any], str | None]]] = {}


def _entry(schema: Any) -> tuple[Any, Check, Callable[[Any], str | None]]:
    hit = _CACHE.get(id(schema))
    if hit is not None and hit[0] is schema:
        return hit
    raw = Compiler(schema).compile(schema)

    def validate(value: Any) -> str | None:
        return raw(json_copy(value))

    if len(_CACHE) >= _CACHE_LIMIT:
        _CACHE.pop(next(iter(_CACHE)))
    entry = (schema, raw, validate)
    _CACHE[id(schema)] = entry
    return entry


def compile_validator(schema: Any) -> Callable[[Any], str | None]:
    """Compile ``schema`` once (cached by identity) into ``check(value) -> message | None``.

    The returned function never changes ``value``: it validates a copy (defaults
    are filled into that copy as APISIX does, so later keywords see them). Do not
    mutate a schema after compiling it.
    """
    return _entry(schema)[2]


def raw_validator(schema: Any) -> Check:
    """The compiled validator that fills defaults *in place*; the caller passes its own copy."""
    return _entry(schema)[1]


def check_and_fill(schema: Any, value: Any) -> tuple[Any, str | None]:
    """Validate a copy of ``value``; return ``(copy with defaults, message or None)``."""
    work = json_copy(value)
    return work, raw_validator(schema)(work)


def fill_defaults(schema: Any, value: Any) -> Any:
    """Deep copy of ``value`` with the schema's defaults filled in (as a successful check would)."""
    return check_and_fill(schema, value)[0]
