"""The write side of a config store: keyed JSON documents with revisions (what the Admin API uses).

Keys are etcd-style paths under the store's prefix (spec §3.1): ``/apisix/routes/1``,
``/apisix/consumers/jack/credentials/c1``, ``/apisix/plugin_metadata/file-logger``. Both stores
implement :class:`ResourceStore`: the etcd store directly on etcd's keyspace, the YAML file store
by mapping keys onto the collections of ``apisix.yaml`` (revisions kept beside the file). Every
successful write reaches the gateway through the store's watch side (``ConfigStore.start``'s
``on_change``), i.e. through the one apply path — never by a side channel.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Entry:
    """One stored document with its etcd-style revisions."""

    key: str
    """Full key, prefix included: ``/apisix/routes/1``."""
    value: Any
    """The JSON document exactly as stored (what the client sent plus id and timestamps)."""
    create_revision: int
    """``createdIndex`` in Admin API envelopes."""
    mod_revision: int
    """``modifiedIndex`` in Admin API envelopes; the compare-and-swap token."""


class StoreUnavailable(Exception):
    """The backing store cannot be reached or failed; the Admin API answers 503 with the text."""


class RevisionConflict(Exception):
    """A compare-and-swap failed: the key changed (or appeared/disappeared) since it was read."""


class ResourceStore(ABC):
    """Keyed documents with revisions. All methods may raise :class:`StoreUnavailable`."""

    prefix: str
    """Key prefix, ``deployment.etcd.prefix`` (default ``/apisix``)."""

    @abstractmethod
    async def get(self, key: str) -> Entry | None:
        """The entry at ``key``, or ``None``."""

    @abstractmethod
    async def list(self, directory: str) -> list[Entry]:
        """Every entry whose key starts with ``directory`` (a key ending in ``/``), sorted by
        ``create_revision``. Placeholder values ``"init_dir"`` are left out."""

    @abstractmethod
    async def put(
        self,
        key: str,
        value: Any,
        *,
        prev_revision: int | None = None,
        ttl: float | None = None,
    ) -> Entry:
        """Store ``value`` at ``key``.

        ``prev_revision``: compare-and-swap — ``0`` means the key must not exist, ``n > 0``
        means its ``mod_revision`` must still be ``n``; otherwise :class:`RevisionConflict`.
        ``ttl``: seconds after which the key disappears (an etcd lease).
        """

    @abstractmethod
    async def delete(self, key: str, *, prev_revision: int | None = None) -> bool:
        """Remove ``key`` (and, for a consumer, nothing else: callers delete sub-keys).
        ``True`` when something was deleted."""

    @abstractmethod
    async def delete_prefix(self, directory: str) -> int:
        """Remove every key under ``directory``; how many were removed."""

    @abstractmethod
    async def next_id(self) -> str:
        """A new id for POST: a store-wide increasing number, zero-padded to 20 digits."""
