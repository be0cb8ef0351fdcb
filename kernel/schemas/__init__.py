"""JSON Schemas of the core resources and an APISIX-compatible validator.

Used wherever configuration enters the gateway: the standalone ``apisix.yaml``
loader, the etcd watcher and the Admin API. Error texts are APISIX's, exactly
(spec §2.8): a client that matches ``error_msg`` strings sees no difference.

* :func:`validate_resource` — schema plus resource checks; raises
  :class:`ValidationError` whose ``message`` is the ``error_msg`` to return.
* :func:`schema_error` — the bare jsonschema message (``/schema/validate``).
* :func:`with_defaults` / :func:`check_resource` — the in-memory form the data
  plane uses: a copy with schema defaults filled (stored objects never change).
* :func:`compile_validator` / :func:`fill_defaults` / :func:`plugin_conf_schema`
  — the same machinery for plugin confs.

Id/path agreement, references to other stored objects and plugin confs are
checked by the callers that know about them (Admin API, plugin manager).
"""

from __future__ import annotations

from typing import Any

from . import checks
from .engine import (
    SchemaCompileError,
    check_and_fill,
    compile_validator,
    fill_defaults,
    raw_validator,
)
from .messages import json_copy
from .plugin_meta import INJECTED_MARK, META_SCHEMA, plugin_conf_schema
from .resources import KIND_ALIASES, SCHEMAS

__all__ = [
    "INJECTED_MARK",
    "KIND_ALIASES",
    "META_SCHEMA",
    "SCHEMAS",
    "SchemaCompileError",
    "ValidationError",
    "check_and_fill",
    "check_resource",
    "compile_validator",
    "fill_defaults",
    "plugin_conf_schema",
    "resource_kind",
    "schema_error",
    "validate_resource",
    "vars_error",
    "with_defaults",
]

vars_error = checks.vars_error


class ValidationError(Exception):
    """A configuration was refused; ``message`` is APISIX's ``error_msg`` text."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def resource_kind(kind: str) -> str:
    """Normalise a kind (``route``) or collection name (``routes``); ``KeyError`` if unknown."""
    if kind in SCHEMAS:
        return kind
    alias = KIND_ALIASES.get(kind)
    if alias is None:
        raise KeyError(f"unknown resource kind: {kind!r}")
    return alias


def _check(kind: str, obj: Any) -> tuple[Any, str | None]:
    kind = resource_kind(kind)
    if kind == "route":
        err = checks.pre_schema_route(obj)
        if err is not None:
            return json_copy(obj), err
    work, err = check_and_fill(SCHEMAS[kind], obj)
    if err is not None:
        return work, "invalid configuration: " + err
    checker = checks.POST_SCHEMA.get(kind)
    if checker is not None and isinstance(work, dict):
        err = checker(work)
    return work, err


def check_resource(kind: str, obj: Any) -> Any:
    """Validate ``obj`` like :func:`validate_resource`; return a copy with defaults filled."""
    work, err = _check(kind, obj)
    if err is not None:
        raise ValidationError(err)
    return work


def validate_resource(kind: str, obj: Any) -> None:
    """Schema and resource checks; raises :class:`ValidationError` with APISIX's message.

    ``obj`` is not modified. Schema failures read ``invalid configuration: <msg>``;
    resource checks give their own messages (``only one of host or hosts is
    allowed``, ``missing key``, ...).
    """
    check_resource(kind, obj)


def schema_error(kind: str, obj: Any) -> str | None:
    """The jsonschema message for ``obj`` (no prefix), or ``None`` if the schema accepts it."""
    return raw_validator(SCHEMAS[resource_kind(kind)])(json_copy(obj))


def with_defaults(kind: str, obj: Any) -> Any:
    """Deep copy of ``obj`` with the resource schema's defaults filled in; ``obj`` is untouched.

    Route ``priority``/``status``; upstream ``type``, ``scheme``, ``pass_host``,
    ``hash_on``, node ``priority`` (array form), ``keepalive_pool`` and ``checks``
    fields when those objects are present; SSL ``type``/``status``; and so on.
    """
    return check_and_fill(SCHEMAS[resource_kind(kind)], obj)[0]
