"""An in-memory :class:`ResourceStore` (etcd semantics, no persistence) for tests."""

from __future__ import annotations

import copy
import time
from typing import Any

from kernel.store.resources import Entry, ResourceStore, RevisionConflict


class MemoryResourceStore(ResourceStore):
    def __init__(self, prefix: str = "/apisix") -> None:
        self.prefix = prefix
        self.revision = 0
        self._data: dict[str, tuple[Entry, float | None]] = {}

    def _live(self, key: str) -> Entry | None:
        hit = self._data.get(key)
        if hit is None:
            return None
        entry, expires = hit
        if expires is not None and expires <= time.monotonic():
            del self._data[key]
            return None
        return entry

    async def get(self, key: str) -> Entry | None:
        entry = self._live(key)
        return (
            None
            if entry is None
            else Entry(
                entry.key, copy.deepcopy(entry.value), entry.create_revision, entry.mod_revision
            )
        )

    async def list(self, directory: str) -> list[Entry]:
        out = []
        for key in list(self._data):
            if key.startswith(directory):
                entry = await self.get(key)
                if entry is not None and entry.value != "init_dir":
                    out.append(entry)
        out.sort(key=lambda e: e.create_revision)
        return out

    async def put(
        self, key: str, value: Any, *, prev_revision: int | None = None, ttl: float | None = None
    ) -> Entry:
        old = self._live(key)
        if prev_revision is not None:
            current = 0 if old is None else old.mod_revision
            if current != prev_revision:
                raise RevisionConflict(key)
        self.revision += 1
        created = self.revision if old is None else old.create_revision
        entry = Entry(key, copy.deepcopy(value), created, self.revision)
        self._data[key] = (entry, None if ttl is None else time.monotonic() + ttl)
        return Entry(key, copy.deepcopy(value), created, self.revision)

    async def delete(self, key: str, *, prev_revision: int | None = None) -> bool:
        old = self._live(key)
        if old is None:
            return False
        if prev_revision is not None and old.mod_revision != prev_revision:
            raise RevisionConflict(key)
        del self._data[key]
        self.revision += 1
        return True

    async def delete_prefix(self, directory: str) -> int:
        keys = [k for k in self._data if k.startswith(directory)]
        for k in keys:
            del self._data[k]
        if keys:
            self.revision += 1
        return len(keys)

    async def next_id(self) -> str:
        self.revision += 1
        return f"{self.revision:020d}"
