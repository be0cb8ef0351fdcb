"""The config store interface: where routes, services, upstreams, ... come from.

Two implementations sit behind it: :mod:`kernel.store.yaml_file` (``conf/apisix.yaml``, the
standalone file mode) and, later, an etcd store. Either hands the kernel whole
:class:`Snapshot` objects through the ``on_change`` callback given to :meth:`ConfigStore.start`;
the kernel builds the next gateway state from a snapshot and swaps it in (one apply path).

A store never applies a config that its ``validate`` callback (supplied by the kernel) rejects:
the last good snapshot keeps serving and every :class:`Problem` is logged, one line each, as
``conf/apisix.yaml:12: routes[0].upstream.nodes: invalid port 65536``.
"""

from __future__ import annotations

import operator
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import compress
from types import MappingProxyType
from typing import Any

COLLECTIONS: tuple[str, ...] = (
    "routes",
    "services",
    "upstreams",
    "consumers",
    "consumer_groups",
    "ssls",
    "global_rules",
    "plugin_configs",
    "plugin_metadata",
    "protos",
    "stream_routes",
    "secrets",
)
"""The resource collections, in APISIX's order. Every snapshot has all of them (maybe empty)."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config, located as precisely as the store can.

    ``source`` is the file (or etcd key prefix) it came from, ``line`` is 1-based (``None`` when
    unknown), ``path`` names the field (``routes[0].upstream.nodes``; ``""`` for the whole
    document) and ``message`` says what is wrong.
    """

    source: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        if self.path:
            return f"{where}: {self.path}: {self.message}"
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class SnapshotDelta:
    """How a snapshot differs from the snapshot it was derived from: a hint for consumers
    that still hold that base (they may do only this much work); anyone else reads the whole
    snapshot, which is always complete."""

    base: str
    """The ``version`` of the snapshot this one was derived from."""
    changed: Mapping[str, Mapping[str, dict[str, Any] | None]]
    """collection -> :func:`item_key` -> the new item, or ``None`` when it was removed.
    Collections not named here did not change."""


@dataclass(frozen=True)
class Snapshot:
    """One complete, validated configuration.

    ``collections`` maps every name in :data:`COLLECTIONS` to a tuple of items (plain dicts as
    the user wrote them, ids normalised to strings, see :func:`item_key`). ``plugins`` is the
    ``plugins:`` override list of plugin names from the standalone file (HTTP plugins, entries
    without ``stream: true``) or ``None`` when the file has none (config.yaml's list applies).

    ``version`` changes whenever the content does; stores make it increase within a process.
    Treat the item dicts as read-only: the snapshot is shared with every reader.
    """

    version: str
    collections: Mapping[str, tuple[dict[str, Any], ...]]
    plugins: tuple[str, ...] | None = None
    delta: SnapshotDelta | None = None
    """Set by stores that know exactly what changed since their previous snapshot."""

    @classmethod
    def empty(cls, version: str) -> Snapshot:
        return cls(version, freeze_collections({}), None)

    def items(self, collection: str) -> tuple[dict[str, Any], ...]:
        """The items of ``collection`` (``()`` when none)."""
        return self.collections.get(collection, ())

    def get(self, collection: str, key: str) -> dict[str, Any] | None:
        """The item of ``collection`` whose :func:`item_key` is ``key``, or ``None`` (linear)."""
        for item in self.items(collection):
            if item_key(collection, item) == key:
                return item
        return None


def freeze_collections(
    collections: Mapping[str, tuple[dict[str, Any], ...] | list[dict[str, Any]]],
) -> Mapping[str, tuple[dict[str, Any], ...]]:
    """A read-only mapping holding every collection in :data:`COLLECTIONS` (missing -> ``()``)."""
    return MappingProxyType({name: tuple(collections.get(name, ())) for name in COLLECTIONS})


def item_key(collection: str, item: Mapping[str, Any]) -> str:
    """The key an item is indexed by: ``username`` for consumers (else ``id``), ``id`` otherwise.

    For ``plugin_metadata`` the id is the plugin name; for ``secrets`` it is ``<manager>/<id>``.
    """
    if collection == "consumers" and "username" in item:
        return str(item["username"])
    return str(item.get("id", ""))


Validate = Callable[[Snapshot], list[Problem]]
"""Supplied by the kernel: check a candidate snapshot, return its problems (``[]`` = good).

Problems name fields by path (``routes[0].upstream.nodes``, ``routes[1].plugins["key-auth"]``;
bracket-quote keys that contain dots); ``source``/``line`` may be left empty/``None``, the store
fills them in. It may be called from a worker thread, so it must not touch the event loop.
"""


class ConfigRejected(Exception):
    """A write (or an explicit reload) was refused; nothing was stored or applied."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        first = str(problems[0]) if problems else "invalid configuration"
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(first + more)


class ConfigStore(ABC):
    """Where the declarative configuration lives: a YAML/JSON file, or etcd.

    Lifecycle: ``await start(on_change)`` loads once and delivers the first snapshot, then keeps
    watching; ``on_change`` is called on the event loop thread, exactly once per effective change,
    never with an invalid snapshot. ``await stop()`` ends watching.
    """

    @abstractmethod
    async def start(self, on_change: Callable[[Snapshot], None]) -> None:
        """Load once, call ``on_change`` with the first valid snapshot (or log the problems and
        start with an empty one), then watch for changes until :meth:`stop`."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop watching. Idempotent."""

    @abstractmethod
    def current(self) -> Snapshot | None:
        """The snapshot now serving (``None`` before :meth:`start`)."""

    async def refresh(self) -> None:  # noqa: B027 - optional for stores without a cache
        """Re-read and re-validate the stored config now (after the validator changed)."""

    @abstractmethod
    def check(self) -> list[Problem]:
        """Read, parse and validate the stored config without applying it (``sixgate validate``).

        Blocking; ``[]`` means the config is good."""


_FEW = 64


def moved_items(
    items: tuple[Any, ...], old: tuple[Any, ...]
) -> tuple[list[Any], list[Any], bool]:
    """``(arrived, left, reordered)``: the item objects of ``items`` not in ``old``, those of
    ``old`` not in ``items``, and whether the objects in both changed their relative order.
    An edit in place or an append is found position by position (C-level); anything else
    (removals shift positions) through sets of object ids."""
    if len(items) >= len(old):
        differ = list(compress(range(len(old)), map(operator.is_not, items, old)))
        if len(differ) <= _FEW:
            came = [items[i] for i in differ]
            went = [old[i] for i in differ]
            moved = set(map(id, came)) & set(map(id, went))  # swapped, not replaced
            arrived = [x for x in came if id(x) not in moved] + list(items[len(old):])
            return arrived, [x for x in went if id(x) not in moved], bool(moved)
    new_ids = dict(zip(map(id, items), items, strict=True))
    old_ids = dict(zip(map(id, old), old, strict=True))
    kept_new = [x for x in items if id(x) in old_ids]
    kept_old = [x for x in old if id(x) in new_ids]
    reordered = any(map(operator.is_not, kept_new, kept_old))
    return ([new_ids[i] for i in new_ids.keys() - old_ids.keys()],
            [old_ids[i] for i in old_ids.keys() - new_ids.keys()], reordered)  # fmt: skip
