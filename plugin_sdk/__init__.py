"""sixgate's plugin SDK: everything a plugin module needs, in one flat namespace.

A plugin is a module with ``name``, ``version``, ``priority``, ``schema`` (and optionally
``metadata_schema``, ``consumer_schema``, ``type = "auth"``, ``run_policy``, ``check_schema``,
``init``/``destroy``, ``encrypt_fields``, ``phases_for``) plus phase functions marked
:data:`hookimpl`::

    from plugin_sdk import Response, hookimpl

    name = "hello"
    version = "0.1"
    priority = 10
    schema = {"type": "object", "properties": {"who": {"type": "string", "default": "world"}}}

    @hookimpl
    def access(ctx, conf):
        if ctx.var["arg_block"]:
            return Response(403, {"message": f"bye {conf['who']}"})

Beyond one request, :func:`shared_dict` (kernel-owned dicts that survive plugin reloads),
:func:`shared_counters` (numeric counters shared by every worker of the node) and
:func:`http_client` (the worker's shared aiohttp session). Logger plugins build their entries
with :mod:`plugin_sdk.log_entry` (spec §9.2/§9.3). The SDK never imports the kernel.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from .consumer import Consumer, Consumers
from .context import Context, Request, ResponseView, UpstreamRequest, Vars
from .counters import SharedCounters, shared_counters
from .errors import ExprError, PluginError, SchemaError
from .expr import compile_expr
from .headers import Headers
from .hooks import PHASES
from .markers import hookimpl, hookspec
from .response import Response
from .runtime import SharedDict, http_client, plugin_metadata, shared_dict, ssl_listen_ports
from .template import compile_capture_template, compile_template
from .upstream import check_upstream

__version__ = "0.4.0"


T = TypeVar("T")


class ConfCache(Generic[T]):
    """State derived from a plugin conf (compiled regexes, templates, expressions), built once
    per conf object and reused by every request that gets that conf::

        def _compile(conf): return re.compile(conf["pattern"])
        _compiled = ConfCache(_compile)

        @hookimpl
        def rewrite(ctx, conf):
            pattern = _compiled(conf)

    Entries are keyed by the conf's identity, never its content, so two routes with equal confs
    never share mutable state by accident and an edited conf (a new object after a config
    change) is compiled afresh. The kernel hands hooks confs that support weak references; their
    entries disappear with the conf. For other objects (plain dicts, e.g. in unit tests) the
    entry keeps the conf alive, so its id cannot be reused while cached, and at most ``maxsize``
    such entries are kept (oldest dropped first).
    """

    __slots__ = ("_build", "_entries", "_strong", "maxsize")

    def __init__(self, build: Callable[[Any], T], maxsize: int = 4096) -> None:
        self._build = build
        self._entries: dict[int, tuple[Any, T]] = {}
        self._strong: dict[int, None] = {}  # keys of entries that hold their conf, oldest first
        self.maxsize = maxsize

    def __call__(self, conf: Any) -> T:
        entry = self._entries.get(id(conf))
        if entry is not None and (entry[0] is conf or entry[0] is None):
            return entry[1]
        value = self._build(conf)
        self._store(conf, value)
        return value

    def _store(self, conf: Any, value: T) -> None:
        entries = self._entries
        key = id(conf)
        try:
            weakref.finalize(conf, entries.pop, key, None)
        except TypeError:
            # Not weak-referenceable: keep the conf alive so its id stays unique; bound the size.
            strong = self._strong
            if key not in strong and len(strong) >= self.maxsize:
                oldest = next(iter(strong))
                del strong[oldest]
                entries.pop(oldest, None)
            strong[key] = None
            entries[key] = (conf, value)
        else:
            entries[key] = (None, value)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self._strong.clear()


__all__ = [
    "PHASES",
    "ConfCache",
    "Consumer",
    "Consumers",
    "Context",
    "ExprError",
    "Headers",
    "PluginError",
    "Request",
    "Response",
    "ResponseView",
    "SchemaError",
    "SharedCounters",
    "SharedDict",
    "UpstreamRequest",
    "Vars",
    "__version__",
    "check_upstream",
    "compile_capture_template",
    "compile_expr",
    "compile_template",
    "hookimpl",
    "hookspec",
    "http_client",
    "plugin_metadata",
    "shared_counters",
    "shared_dict",
    "ssl_listen_ports",
]
