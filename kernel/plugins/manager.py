"""The plugin registry: one pluggy manager per plugin generation, read once into plain tables.

pluggy validates what a plugin module declares (``@hookimpl`` signatures against
:mod:`plugin_sdk.hooks`, unknown hook names via ``check_pending``). After that the registry keeps,
per plugin, a :class:`PluginInfo` with its phase functions already extracted; nothing here is
called per request and pluggy never is.

A hot reload builds a new :class:`PluginRegistry` beside the live one (see
:mod:`kernel.plugins.loader`) and the state swap replaces it; live modules are never mutated.
"""

from __future__ import annotations

import copy
import inspect
import logging
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import pluggy

from kernel.encryption import Keyring, fields_of
from plugin_sdk import hooks as hookspecs
from plugin_sdk.errors import PluginError, SchemaError
from plugin_sdk.hooks import PHASES
from plugin_sdk.markers import PROJECT_NAME

log = logging.getLogger(__name__)

PhaseFunc = Callable[[Any, Any], Any]
Validator = Callable[[Any], "str | None"]
ConfCheck = Callable[[Any, str], "str | None"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_PLUGIN_TYPES = (None, "auth")
_RUN_POLICIES = (None, "prefer_route")
SCHEMA_TYPES = ("route", "consumer", "metadata")
"""``schema_type`` values understood by :func:`check_conf` (as APISIX's ``check_schema``)."""


class PluginInfo:
    """Everything the kernel needs to know about one loaded plugin, read from its module once."""

    __slots__ = (
        "attrs",
        "check_schema",
        "consumer_schema",
        "consumer_validator",
        "encrypt_fields",
        "metadata_schema",
        "metadata_validator",
        "module",
        "name",
        "phases",
        "phases_for",
        "priority",
        "run_policy",
        "schema",
        "type",
        "validator",
        "version",
    )

    name: str
    version: str
    priority: int
    module: Any
    schema: dict[str, Any]
    """The plugin's ``schema`` with the optional ``_meta`` property injected."""
    validator: Validator
    metadata_schema: dict[str, Any] | None
    metadata_validator: Validator | None
    consumer_schema: dict[str, Any] | None
    consumer_validator: Validator | None
    type: str | None
    run_policy: str | None
    phases: dict[str, tuple[PhaseFunc, bool]]
    """``phase -> (function called as f(ctx, conf), is_async)`` for the phases it implements."""
    phases_for: Callable[[Any], Any] | None
    """The module's optional ``phases_for(conf)``: the phases one (validated) conf needs;
    the chain gets steps for those only (e.g. serverless functions run in one phase). It may
    return a mapping ``phase -> function`` instead: the function (``f(ctx, conf)``, plain or
    ``async``; ``None`` = the module's hook) implements that phase for that conf, so e.g. a
    rate limit keeps a plain ``access`` for local counters and an async one for Redis. Only
    phases the module implements with ``@hookimpl`` count."""
    check_schema: ConfCheck | None
    """The module's ``check_schema`` normalised to ``(conf, schema_type) -> error | None``."""
    attrs: dict[str, Any]
    """This plugin's ``plugin_attr`` entry from config.yaml (empty when absent)."""
    encrypt_fields: tuple[str, ...]
    """Conf fields stored encrypted (the module's ``encrypt_fields``; dotted paths)."""

    def __repr__(self) -> str:
        return f"<PluginInfo {self.name} priority={self.priority} phases={list(self.phases)}>"


def _schemas() -> Any:
    # Imported at call time: kernel.schemas is built in parallel with this module.
    import kernel.schemas as schemas

    return schemas


def prepare_conf(
    info: PluginInfo, conf: Any, schema_type: str = "route"
) -> tuple[dict[str, Any] | None, str | None]:
    """Validate ``conf`` for ``info`` and return ``(conf with defaults filled, None)`` or
    ``(None, message)``.

    Order as APISIX: the JSON schema (``consumer_schema`` / ``metadata_schema`` by
    ``schema_type``), then defaults are filled into a deep copy, then the module's
    ``check_schema`` sees that copy. ``conf`` itself is never modified. The message is bare; the
    caller adds ``failed to check the configuration of plugin <name> err: ``.
    """
    if schema_type == "consumer" and info.consumer_validator is not None:
        validator, schema = info.consumer_validator, info.consumer_schema
    elif schema_type == "metadata":
        if info.metadata_validator is None:
            # Plugins without a metadata_schema accept any object (spec §2.11).
            return (copy.deepcopy(conf), None) if isinstance(conf, dict) else (
                None,
                "wrong type: expected object, got " + _json_type(conf),
            )
        validator, schema = info.metadata_validator, info.metadata_schema
    else:
        validator, schema = info.validator, info.schema
    err = validator(conf)
    if err is not None:
        return None, err
    # fill_defaults returns a deep copy: the hook conf never aliases the stored config.
    filled = _schemas().fill_defaults(schema, conf)
    check = info.check_schema
    if check is not None:
        try:
            err = check(filled, schema_type)
        except SchemaError as exc:
            return None, str(exc)
        except Exception as exc:
            log.exception("check_schema of plugin [%s] raised", info.name)
            return None, f"{type(exc).__name__}: {exc}"
        if err:
            return None, str(err)
    return filled, None


def check_conf(info: PluginInfo, conf: Any, schema_type: str = "route") -> str | None:
    """The bare validation error of ``conf`` for plugin ``info``, or ``None`` when valid.

    The Admin API prefixes it: ``failed to check the configuration of plugin <name> err: <msg>``.
    """
    return prepare_conf(info, conf, schema_type)[1]


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else type(value).__name__


def _adapt(func: Callable[..., Any], argnames: tuple[str, ...]) -> PhaseFunc:
    """Give every phase function the ``(ctx, conf)`` calling convention.

    pluggy accepts implementations that take a subset of the spec's arguments (pluggy calls by
    keyword); the chain calls positionally, so the rare subset form gets a thin adapter here,
    once, and the common ``(ctx, conf)`` form is used as is.
    """
    if argnames == ("ctx", "conf"):
        return func
    if argnames == ("conf", "ctx"):
        return lambda ctx, conf: func(conf, ctx)
    if argnames == ("ctx",):
        return lambda ctx, conf: func(ctx)
    if argnames == ("conf",):
        return lambda ctx, conf: func(conf)
    return lambda ctx, conf: func()


def _arity(func: Callable[..., Any]) -> int:
    """Number of positional parameters ``func`` accepts (a large number for ``*args``)."""
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return 1
    count = 0
    for p in params:
        if p.kind is p.VAR_POSITIONAL:
            return 99
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            count += 1
    return count


def _normalise_check(func: Callable[..., Any]) -> ConfCheck:
    """``check_schema(conf)`` or ``check_schema(conf, schema_type)`` → ``(conf, type) -> err``.

    The function may return ``None``/``True`` (valid), an error string, a ``(ok, err)`` pair as
    in APISIX, or raise :class:`~plugin_sdk.errors.SchemaError`.
    """
    takes_type = _arity(func) >= 2

    def check(conf: Any, schema_type: str) -> str | None:
        res = func(conf, schema_type) if takes_type else func(conf)
        if res is None or res is True:
            return None
        if isinstance(res, tuple):
            ok = res[0] if res else True
            if ok:
                return None
            return str(res[1]) if len(res) > 1 and res[1] else "invalid configuration"
        if res is False:
            return "invalid configuration"
        return str(res)

    return check


class PluginRegistry:
    """The loaded plugins of one generation, keyed by name.

    Built from plugin modules (``PluginRegistry(modules)`` raises :class:`PluginError` on the
    first bad module; :meth:`add` lets a loader skip bad modules one by one). Every module is
    registered in a ``pluggy.PluginManager("sixgate")`` that knows the hook specs of
    :mod:`plugin_sdk.hooks`, so pluggy rejects hook implementations whose arguments are not in
    the spec and :meth:`pluggy.PluginManager.check_pending` rejects unknown hook names. The
    implementations are then copied out per phase, once.
    """

    def __init__(self, modules: Iterable[Any] = ()) -> None:
        self.pm = pluggy.PluginManager(PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self._plugins: dict[str, PluginInfo] = {}
        self._order: tuple[str, ...] | None = None
        self.owned_modules: list[str] = []
        """``sys.modules`` names imported for this generation only (dropped by destroy_all)."""
        self.keyring: Keyring | None = None
        """Decrypts ``encrypt_fields`` when chains are compiled (set by the gateway from
        ``apisix.data_encryption``); ``None``: confs are used as stored."""
        self.sources: dict[str, tuple[str, str | None]] = {}
        """``name -> (where the loader found it, its source file)`` (set by the loader)."""
        for module in modules:
            self.add(module)

    # -- building ---------------------------------------------------------------------------

    def add(self, module: Any) -> PluginInfo:
        """Validate and register one plugin module; raises :class:`PluginError` when unusable."""
        where = getattr(module, "__name__", repr(module))
        name = getattr(module, "name", None)
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise PluginError(f"plugin module {where}: 'name' must be a non-empty plugin name")
        if name in self._plugins:
            other = getattr(self._plugins[name].module, "__name__", "?")
            raise PluginError(
                f"duplicate plugin name [{name}]: defined by {other} and {where}"
            )
        priority = getattr(module, "priority", None)
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise PluginError(f"plugin [{name}] ({where}): 'priority' must be an integer")
        raw_schema = getattr(module, "schema", None)
        if not isinstance(raw_schema, dict):
            raise PluginError(f"plugin [{name}] ({where}): 'schema' must be a JSON schema object")
        ptype = getattr(module, "type", None)
        if ptype not in _PLUGIN_TYPES:
            raise PluginError(f"plugin [{name}]: unknown type {ptype!r} (only 'auth')")
        run_policy = getattr(module, "run_policy", None)
        if run_policy not in _RUN_POLICIES:
            raise PluginError(
                f"plugin [{name}]: unknown run_policy {run_policy!r} (only 'prefer_route')"
            )
        metadata_schema = getattr(module, "metadata_schema", None)
        consumer_schema = getattr(module, "consumer_schema", None)
        for label, value in (("metadata_schema", metadata_schema),
                             ("consumer_schema", consumer_schema)):
            if value is not None and not isinstance(value, dict):
                raise PluginError(f"plugin [{name}]: '{label}' must be a JSON schema object")
        check_fn = getattr(module, "check_schema", None)
        if check_fn is not None and not callable(check_fn):
            raise PluginError(f"plugin [{name}]: 'check_schema' must be callable")
        try:
            encrypt_fields = fields_of(module)
        except ValueError as exc:
            raise PluginError(f"plugin [{name}]: {exc}") from None

        schemas = _schemas()
        try:
            schema = schemas.plugin_conf_schema(raw_schema)
            validator = schemas.compile_validator(schema)
            metadata_validator = (
                schemas.compile_validator(metadata_schema) if metadata_schema else None
            )
            consumer_validator = (
                schemas.compile_validator(consumer_schema) if consumer_schema else None
            )
        except Exception as exc:
            raise PluginError(f"plugin [{name}]: invalid schema: {exc}") from exc

        for phase in PHASES:
            func = getattr(module, phase, None)
            if callable(func) and self.pm.parse_hookimpl_opts(module, phase) is None:
                log.warning(
                    "plugin [%s]: %s() is not marked with @hookimpl and will not run", name, phase
                )

        try:
            self.pm.register(module, name=name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            raise PluginError(f"plugin [{name}] ({where}): {exc}") from exc
        try:
            self.pm.check_pending()
            phases = self._extract_phases(module, name)
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(module)
            raise PluginError(f"plugin [{name}] ({where}): {exc}") from exc
        except PluginError:
            self.pm.unregister(module)
            raise

        info = PluginInfo()
        info.name = name
        info.version = str(getattr(module, "version", "0.1"))
        info.priority = priority
        info.module = module
        info.schema = schema
        info.validator = validator
        info.metadata_schema = metadata_schema
        info.metadata_validator = metadata_validator
        info.consumer_schema = consumer_schema
        info.consumer_validator = consumer_validator
        info.type = ptype
        info.run_policy = run_policy
        info.phases = phases
        phases_for = getattr(module, "phases_for", None)
        info.phases_for = phases_for if callable(phases_for) else None
        info.check_schema = _normalise_check(check_fn) if check_fn is not None else None
        info.attrs = {}
        info.encrypt_fields = encrypt_fields
        self._plugins[name] = info
        self._order = None
        return info

    def _extract_phases(self, module: Any, name: str) -> dict[str, tuple[PhaseFunc, bool]]:
        phases: dict[str, tuple[PhaseFunc, bool]] = {}
        for phase in PHASES:
            caller = getattr(self.pm.hook, phase)
            for impl in caller.get_hookimpls():
                if impl.plugin is not module:
                    continue
                if impl.hookwrapper or impl.wrapper:
                    raise PluginError(
                        f"plugin [{name}]: hook {phase} may not be a pluggy wrapper"
                    )
                func = impl.function
                is_async = inspect.iscoroutinefunction(func)
                phases[phase] = (_adapt(func, tuple(impl.argnames)), is_async)
        return phases

    def remove(self, name: str) -> PluginInfo | None:
        """Drop one plugin (e.g. whose ``init`` failed)."""
        info = self._plugins.pop(name, None)
        if info is not None:
            self.pm.unregister(info.module)
            self._order = None
        return info

    # -- lookups ------------------------------------------------------------------------------

    def get(self, name: str) -> PluginInfo | None:
        return self._plugins.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._plugins

    def __iter__(self) -> Iterator[PluginInfo]:
        return iter(self._plugins.values())

    def __len__(self) -> int:
        return len(self._plugins)

    def names_by_priority(self) -> tuple[str, ...]:
        """Plugin names, highest priority first; ties by name (the ``/plugins/list`` order)."""
        order = self._order
        if order is None:
            infos = sorted(self._plugins.values(), key=lambda i: (-i.priority, i.name))
            order = self._order = tuple(i.name for i in infos)
        return order

    def rank(self) -> dict[str, int]:
        """``name -> position`` in :meth:`names_by_priority` (used for stable tie-breaking)."""
        return {n: i for i, n in enumerate(self.names_by_priority())}

    # -- lifecycle ----------------------------------------------------------------------------

    def init_all(self, plugin_attr: Mapping[str, Any] | None = None) -> list[str]:
        """Store each plugin's ``plugin_attr`` entry and call its ``init(attrs)``.

        A plugin whose ``init`` raises (or is a coroutine function, which this synchronous path
        cannot run) is removed from the registry; the error is returned.
        """
        errors: list[str] = []
        plugin_attr = plugin_attr or {}
        for name in self.names_by_priority():
            info = self._plugins[name]
            attrs = plugin_attr.get(name)
            info.attrs = dict(attrs) if isinstance(attrs, Mapping) else {}
            init = getattr(info.module, "init", None)
            if init is None:
                continue
            if inspect.iscoroutinefunction(init):
                errors.append(f"failed to init plugin [{name}]: init() must be synchronous")
                self.remove(name)
                continue
            try:
                if _arity(init) >= 1:
                    init(info.attrs)
                else:
                    init()
            except Exception as exc:
                log.exception("init of plugin [%s] failed", name)
                errors.append(f"failed to init plugin [{name}]: {type(exc).__name__}: {exc}")
                self.remove(name)
        return errors

    def destroy_all(self, call_destroy: bool = True) -> list[str]:
        """Call every plugin's ``destroy()`` (lowest priority first), then forget the modules
        this generation imported under generated names. Errors are logged and returned.
        ``call_destroy=False`` only forgets the modules (a generation never ``init``-ed)."""
        errors: list[str] = []
        for name in reversed(self.names_by_priority() if call_destroy else ()):
            destroy = getattr(self._plugins[name].module, "destroy", None)
            if destroy is None:
                continue
            try:
                destroy()
            except Exception as exc:
                log.exception("destroy of plugin [%s] failed", name)
                errors.append(f"failed to destroy plugin [{name}]: {type(exc).__name__}: {exc}")
        for modname in self.owned_modules:
            sys.modules.pop(modname, None)
        self.owned_modules = []
        return errors
