"""The Admin API's :class:`ResourceStore` on top of the standalone file (``conf/apisix.yaml``).

Keys map onto the file's collections (spec §3.1):

* ``<prefix>/<collection>/<id>`` <-> the item of ``<collection>`` whose id (a string) is ``<id>``;
* ``<prefix>/consumers/<username>`` <-> the ``consumers`` item with that ``username``;
* ``<prefix>/consumers/<u>/credentials/<cid>`` <-> a ``consumers`` item with
  ``id: "<u>/credentials/<cid>"`` (APISIX's standalone credential shape);
* ``<prefix>/plugin_metadata/<plugin>`` <-> the item with ``id: <plugin>``;
* ``<prefix>/secrets/<manager>/<id>`` <-> the ``secrets`` item with ``id: "<manager>/<id>"``.

Any other key (``<prefix>/plugins``, ``<prefix>/gen_id``, directory placeholders, ids that
cannot be a file item) lives only in the revisions file, so it never changes what the gateway
serves.

Values are written into the file as given; the item's key field (``id``, or ``username`` for
consumers) is forced to the key's id. What the file cannot say exactly (an integer ``id`` -- the
file store stringifies ids --, a value id that differs from the key, a value without ``id``) is
remembered in the revisions file and restored on read.

**Revisions** live in a sidecar JSON file next to the config, ``<file>.revisions``
(``conf/apisix.yaml.revisions``)::

    {"revision": 42,                      # store-wide counter (etcd's header revision)
     "keys": {"/apisix/routes/1": {"c": 3, "m": 40, "h": "...", "rh": "...", "exp": 1.7e9}},
     "extra": {"/apisix/plugins": {"c": 5, "m": 5, "v": [...]}}}

``c``/``m`` are create/mod revisions, ``h`` a hash of the item as the gateway sees it (built:
ids normalised, ``${{VAR}}`` substituted), ``rh`` a hash of the item as written in the file,
``exp`` an epoch-seconds expiry (``ttl``). Every write takes the file store's ``flock``
(``<file>.lock``), re-reads both files, evaluates compare-and-swap, mutates, validates and writes
the sidecar then the config (both atomic replaces) inside that one critical section, so the two
never disagree and concurrent writers in several processes lose no update.

Hand edits: an item whose hash no longer matches its sidecar entry (or that has none) was
edited by hand; it gets a fresh ``mod_revision`` (and, if new, ``create_revision``) the first
time it is seen -- by the next write, or by a read, which then reconciles the sidecar under the
lock. Items deleted by hand lose their sidecar entries the same way.

**Read consistency**: ``get``/``list`` read the file store's last applied snapshot (or, if it
was never started, the file itself) plus the sidecar (re-read only when its stat signature
changes). A write made through this object is visible as soon as it returns
(``YamlFileStore.write`` applies before returning); a write made by another process (or a hand
edit) is visible once this process's file watcher has applied it (debounce, at most
``poll_interval``). In that window a read may pair the old value with the new
revisions. Values with ``${{VAR}}`` read back substituted (the snapshot is what is served).

``ttl``: expired keys are never returned; they are removed from the file by the next write or by
the sweeper (:meth:`YamlResourceStore.start_sweeper` / :meth:`YamlResourceStore.stop`).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import copy
import hashlib
import json
import logging
import operator
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import compress, repeat
from pathlib import Path
from typing import Any, TypeVar

from kernel.store.base import (
    COLLECTIONS,
    ConfigRejected,
    Snapshot,
    freeze_collections,
    moved_items,
)
from kernel.store.resources import Entry, ResourceStore, RevisionConflict, StoreUnavailable
from kernel.store.yaml_file import YamlFileStore, _atomic_write

T = TypeVar("T")
_Meta = dict[str, Any]
_Sig = tuple[int, int, int, int]
SIDECAR_SUFFIX = ".revisions"
_FRAGMENT = operator.itemgetter(1)


class _Abort(Exception):
    """Leave a write's critical section without writing anything; ``result`` is returned."""

    def __init__(self, result: Any) -> None:
        super().__init__("aborted")
        self.result = result


@dataclass
class _Txn:
    """State shared by a write's ``mutate`` and ``before_replace`` (both under the lock)."""

    now: float
    meta: _Meta = field(default_factory=dict)
    touched: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Keys written by this operation -> extra sidecar fields (``exp``, ``vid``, ``noid``)."""
    result: Any = None
    expired: int = 0
    removed: set[str] = field(default_factory=set)
    """Keys whose items this operation removed (a delete)."""
    keyed: bool = False
    """The operation changed exactly the keys in ``touched`` and ``removed`` (a put or a
    delete), nothing else in the document."""
    trusted: bool = False
    """The file and the sidecar are exactly as this object's last write left them: only the
    keys written or removed need their revisions updated (no hand edit to look for)."""


def _empty_meta() -> _Meta:
    return {"revision": 0, "keys": {}, "extra": {}}


def _hash(item: Any) -> str:
    try:
        blob = json.dumps(item, sort_keys=True, default=str, separators=(",", ":"))
    except (TypeError, ValueError):  # mixed-type keys, recursion
        blob = repr(item)
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _ident(collection: str, item: dict[str, Any], index: int) -> str:
    """The id part of an item's key, as the file store indexes it (see ``_collection``)."""
    if collection == "consumers" and "username" in item:
        return str(item["username"])
    if "id" in item:
        return str(item["id"])
    return f"arr_{index + 1}"


def _normal(collection: str, item: dict[str, Any]) -> dict[str, Any]:
    """A raw file item with its id stringified, like the file store does."""
    if (collection != "consumers" or "username" not in item) and "id" in item:
        item = {**item, "id": str(item["id"])}
    return item


_UNSURE: Any = object()


def _position(items: list[Any], collection: str, ident: str) -> Any:
    """The index of the item whose key is ``ident``, ``None`` when there is none, or
    ``_UNSURE`` when C-level lookups cannot tell (items without string ids: scan instead)."""
    field = "username" if collection == "consumers" else "id"
    try:
        ids = list(map(operator.methodcaller("get", field), items))
    except AttributeError:  # an item that is not a mapping
        return _UNSURE
    if set(map(type, ids)) - {str}:
        return _UNSURE
    try:
        return ids.index(ident)
    except ValueError:
        return None


def _served_ident(collection: str, item: dict[str, Any]) -> str:
    """The id part of a served item's key (the file store gave every item a string id)."""
    if collection == "consumers" and "username" in item:
        return str(item["username"])
    return str(item["id"])


def _expired(entry: dict[str, Any] | None, now: float) -> bool:
    return entry is not None and entry.get("exp") is not None and entry["exp"] <= now


def _stat_sig(path: Path) -> _Sig | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)


class YamlResourceStore(ResourceStore):
    """:class:`ResourceStore` over a :class:`YamlFileStore` (see the module docstring)."""

    def __init__(
        self,
        store: YamlFileStore,
        prefix: str = "/apisix",
        *,
        sweep_interval: float = 1.0,
        logger: logging.Logger | None = None,
    ) -> None:
        self.store = store
        self.prefix = prefix.rstrip("/")
        self.sidecar = Path(str(store.path) + SIDECAR_SUFFIX)
        self._sweep_interval = sweep_interval
        self._log = logger or logging.getLogger("sixgate.store.yaml_resources")
        self._meta_cache: tuple[_Sig | None, _Meta] = (None, _empty_meta())
        self._index_version: str | None = None
        self._index: dict[str, dict[str, Any]] = {}
        self._indexed: dict[str, tuple[dict[str, Any], ...]] = {}
        """collection -> the items the index was built from"""
        self._hashes: dict[int, tuple[Any, str]] = {}
        """id(served item) -> (item, its hash), for the items in the index"""
        self._reconciled_at: tuple[str | None, _Sig | None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._hash_memo: dict[int, tuple[Any, str]] = {}
        self._fragments: dict[int, tuple[Any, str]] = {}
        self._synced: tuple[_Sig | None, _Sig | None] | None = None
        """(file, sidecar) signatures right after this object's last write"""

    # -- keys ------------------------------------------------------------------------------

    def _split(self, key: str) -> tuple[str | None, str]:
        """``(collection, id)`` for a key held in the file, ``(None, key)`` for a sidecar key."""
        head = self.prefix + "/"
        if not key.startswith(head):
            raise ValueError(f"key {key!r} is not under the prefix {self.prefix!r}")
        collection, sep, ident = key[len(head) :].partition("/")
        if not sep or not ident or collection not in COLLECTIONS:
            return None, key
        parts = ident.split("/")
        if not all(parts):
            return None, key
        if len(parts) == 1:
            return collection, ident
        if collection == "consumers" and len(parts) == 3 and parts[1] == "credentials":
            return collection, ident
        if collection == "secrets" and len(parts) == 2:
            return collection, ident
        return None, key

    def _key(self, collection: str, ident: str) -> str:
        return f"{self.prefix}/{collection}/{ident}"

    # -- sidecar ---------------------------------------------------------------------------

    def _read_meta(self) -> tuple[_Sig | None, _Meta]:
        """The sidecar from disk (a fresh one when missing; reset, with a warning, when corrupt)."""
        for _ in range(5):
            sig = _stat_sig(self.sidecar)
            try:
                raw = self.sidecar.read_bytes()
            except FileNotFoundError:
                return None, _empty_meta()
            except OSError as e:
                raise StoreUnavailable(f"cannot read {self.sidecar}: {e.strerror or e}") from e
            if _stat_sig(self.sidecar) == sig:
                break
        try:
            meta = json.loads(raw)
            if not isinstance(meta, dict) or not isinstance(meta.get("revision"), int):
                raise ValueError("not a revisions document")
        except ValueError as e:
            self._log.warning("%s: unreadable (%s); starting revisions afresh", self.sidecar, e)
            return sig, _empty_meta()
        meta.setdefault("keys", {})
        meta.setdefault("extra", {})
        return sig, meta

    def _save_meta(self, meta: _Meta) -> None:
        """Write the sidecar atomically (call holding the lock) and cache it."""
        data = self._serialise_meta(meta)
        try:
            _atomic_write(str(self.sidecar), data)
        except OSError as e:
            raise StoreUnavailable(f"cannot write {self.sidecar}: {e.strerror or e}") from e
        self._meta_cache = (_stat_sig(self.sidecar), meta)

    def _locked_meta(self) -> _Meta:
        """The sidecar as on disk (call holding the lock), as a copy the caller may change:
        re-read only when its stat signature changed since we last read or wrote it."""
        meta = self._meta()[1]
        return {"revision": meta["revision"], "keys": dict(meta["keys"]),
                "extra": dict(meta["extra"])}  # fmt: skip

    def _serialise_meta(self, meta: _Meta) -> bytes:
        """``meta`` as JSON; each key's fragment is reused while its entry is the same object
        (entries are replaced, never changed), so a write serialises what it changed."""
        old = self._fragments
        keys = meta["keys"]
        entries = list(keys.values())
        ids = list(map(id, entries))
        got: list[Any] = list(map(old.get, ids))
        for i, key in zip(
            compress(range(len(got)), map(operator.is_, got, repeat(None))),
            compress(list(keys), map(operator.is_, got, repeat(None))),
            strict=True,
        ):
            entry = entries[i]
            got[i] = (entry, json.dumps(key) + ":" + json.dumps(entry, separators=(",", ":"),
                                                               default=str))  # fmt: skip
        self._fragments = dict(zip(ids, got, strict=True))
        head = json.dumps({"revision": meta["revision"], "extra": meta["extra"]},
                          separators=(",", ":"), default=str)  # fmt: skip
        return (head[:-1] + ',"keys":{' + ",\n".join(map(_FRAGMENT, got)) + "}}").encode()

    def _meta(self) -> tuple[_Sig | None, _Meta]:
        """The sidecar, re-read only when its stat signature changed (cheap for reads)."""
        sig = _stat_sig(self.sidecar)
        cached_sig = self._meta_cache[0]
        if sig is not None and sig == cached_sig:
            return self._meta_cache
        if sig is None and cached_sig is None:
            return self._meta_cache
        self._meta_cache = self._read_meta()
        return self._meta_cache

    def _sidecar_op(self, fn: Callable[[_Meta, float], T]) -> T:
        """Run ``fn(meta, now)`` under the lock on a fresh sidecar and save it (blocking)."""
        try:
            with self.store.locked():
                meta = self._locked_meta()
                now = time.time()
                for key in [k for k, e in meta["extra"].items() if _expired(e, now)]:
                    del meta["extra"][key]
                try:
                    result = fn(meta, now)
                except _Abort as abort:
                    return abort.result
                self._save_meta(meta)
                return result
        except OSError as e:
            raise StoreUnavailable(f"{self.sidecar}: {e.strerror or e}") from e

    # -- reconciling -----------------------------------------------------------------------

    def _reconcile(
        self,
        meta: _Meta,
        doc: dict[str, Any],
        built: dict[str, list[dict[str, Any]]],
        touched: dict[str, dict[str, Any]],
    ) -> bool:
        """Make ``meta["keys"]`` describe exactly the file ``(doc, built)``: written keys and
        hand-edited items get fresh revisions, vanished items lose their entries."""
        old: dict[str, dict[str, Any]] = meta["keys"]
        new: dict[str, dict[str, Any]] = {}
        rev: int = meta["revision"]
        changed = False
        seen = self._hash_memo
        memo: dict[int, tuple[Any, str]] = {}
        self._hash_memo = memo

        def hash_of(obj: dict[str, Any], raw_of: str | None = None) -> str:
            """``_hash`` of a built item (or, with ``raw_of``, of that collection's raw file
            item, normalised): the file store hands unchanged items back as the same objects,
            so each is hashed once."""
            key = id(obj) if raw_of is None else -id(obj)  # an object may be both
            hit = seen.get(key)
            if hit is None or hit[0] is not obj:
                hit = (obj, _hash(obj if raw_of is None else _normal(raw_of, obj)))
            memo[key] = hit
            return hit[1]

        for collection in COLLECTIONS:
            items = built.get(collection) or []
            raws = doc.get(collection) or []
            for i, item in enumerate(items):
                key = self._key(collection, _ident(collection, item, i))
                h = hash_of(item)
                raw = raws[i] if i < len(raws) and isinstance(raws[i], dict) else item
                rh = hash_of(raw, collection)
                prev = old.get(key)
                if key in touched:
                    rev += 1
                    c = prev["c"] if prev else rev
                    new[key] = {"c": c, "m": rev, "h": h, "rh": rh, **touched[key]}
                    changed = True
                elif prev is not None and prev.get("h") == h:
                    new[key] = prev if prev.get("rh") == rh else {**prev, "rh": rh}
                    changed = changed or prev.get("rh") != rh
                else:  # edited or added by hand
                    rev += 1
                    entry: dict[str, Any] = {"c": prev["c"] if prev else rev, "m": rev,
                                             "h": h, "rh": rh}  # fmt: skip
                    if prev is not None and prev.get("exp") is not None:
                        entry["exp"] = prev["exp"]
                    new[key] = entry
                    changed = True
        changed = changed or old.keys() != new.keys()
        meta["keys"], meta["revision"] = new, rev
        return changed

    def _reconcile_now(self) -> None:
        """Give hand-edited items revisions (blocking; under the lock, against the file)."""
        try:
            with self.store.locked():
                state = self.store.read_built()
                if state is None:
                    return
                _, meta = self._read_meta()
                if self._reconcile(meta, state[0], state[1], {}):
                    self._save_meta(meta)
                else:
                    self._meta_cache = (_stat_sig(self.sidecar), meta)
        except OSError as e:
            raise StoreUnavailable(f"{self.store.path}: {e.strerror or e}") from e

    # -- reading ---------------------------------------------------------------------------

    def _index_of(self, snapshot: Snapshot | None) -> dict[str, dict[str, Any]]:
        """Key -> served item for ``snapshot``; updated from the previous index by item
        identity (the file store hands unchanged items over as the same objects)."""
        if snapshot is None:
            return {}
        if snapshot.version == self._index_version:
            return self._index
        index = dict(self._index)
        for collection in COLLECTIONS:
            items = snapshot.items(collection)
            before = self._indexed.get(collection, ())
            if items is before:
                continue
            arrived, left, _reordered = moved_items(items, before)
            for item in left:
                index.pop(self._key(collection, _served_ident(collection, item)), None)
                self._hashes.pop(id(item), None)
            for item in arrived:
                index[self._key(collection, _served_ident(collection, item))] = item
            self._indexed[collection] = items
        self._index, self._index_version = index, snapshot.version
        return index

    def _unstarted_snapshot(self) -> Snapshot:
        try:
            state = self.store.read_built()
        except OSError as e:
            raise StoreUnavailable(f"{self.store.path}: {e.strerror or e}") from e
        collections = {} if state is None else state[1]
        return Snapshot(f"unstarted:{time.monotonic_ns()}", freeze_collections(collections))

    def _item_hash(self, item: dict[str, Any]) -> str:
        hit = self._hashes.get(id(item))
        if hit is None or hit[0] is not item:
            hit = self._hashes[id(item)] = (item, _hash(item))
        return hit[1]

    async def _entries(
        self, select: Callable[[str], bool], keys: Iterable[str] | None
    ) -> list[Entry]:
        snapshot = self.store.current()
        if snapshot is None:  # the file store was never started: read the file itself
            snapshot = await asyncio.to_thread(self._unstarted_snapshot)
        index = self._index_of(snapshot)
        wanted = [k for k in (index if keys is None else keys) if k in index and select(k)]
        sig, meta = self._meta()

        def stale(k: str) -> bool:
            entry = meta["keys"].get(k)
            return entry is None or entry.get("h") != self._item_hash(index[k])

        if any(stale(k) for k in wanted):
            version = None if snapshot is None else snapshot.version
            if self._reconciled_at != (version, sig):
                await asyncio.to_thread(self._reconcile_now)
                sig, meta = self._meta()
                self._reconciled_at = (version, sig)
        now = time.time()
        out: list[Entry] = []
        for k in wanted:
            entry = meta["keys"].get(k)
            if _expired(entry, now):
                continue
            item = index[k]
            value = copy.deepcopy(dict(item))
            if entry is None:  # seen before the file's latest state reached the sidecar
                c = m = meta["revision"]
            else:
                c, m = entry["c"], entry["m"]
                if entry.get("h") == self._item_hash(item):
                    if entry.get("noid"):
                        value.pop("id", None)
                    elif "vid" in entry:
                        value["id"] = entry["vid"]
            out.append(Entry(k, value, c, m))
        for k, entry in meta["extra"].items():
            if (keys is None or k in keys) and select(k) and not _expired(entry, now):
                out.append(Entry(k, copy.deepcopy(entry["v"]), entry["c"], entry["m"]))
        return out

    async def get(self, key: str) -> Entry | None:
        self._split(key)  # validates the prefix
        found = await self._entries(lambda k: True, (key,))
        return found[0] if found else None

    async def list(self, directory: str) -> list[Entry]:
        consumers = f"{self.prefix}/consumers/"

        def select(k: str) -> bool:
            if not k.startswith(directory):
                return False
            return directory != consumers or "/" not in k[len(consumers) :]

        entries = [e for e in await self._entries(select, None) if e.value != "init_dir"]
        entries.sort(key=lambda e: (e.create_revision, e.key))
        return entries

    # -- writing ---------------------------------------------------------------------------

    def _expire(self, doc: dict[str, Any], txn: _Txn) -> None:
        """Drop expired keys from the document and the sidecar's extras (inside a write)."""
        meta = txn.meta
        gone = {k for k, e in meta["keys"].items() if _expired(e, txn.now)}
        for key in [k for k, e in meta["extra"].items() if _expired(e, txn.now)]:
            del meta["extra"][key]
            txn.expired += 1
        if not gone:
            return
        txn.expired += self._drop_items(doc, gone.__contains__)

    def _drop_items(self, doc: dict[str, Any], doomed: Callable[[str], bool]) -> int:
        """Remove the file's items whose key ``doomed`` selects; how many were removed."""
        removed = 0
        for collection in COLLECTIONS:
            items = doc.get(collection)
            if not isinstance(items, list):
                continue
            keep = [
                item
                for i, item in enumerate(items)
                if not (
                    isinstance(item, dict)
                    and doomed(self._key(collection, _ident(collection, item, i)))
                )
            ]
            removed += len(items) - len(keep)
            doc[collection] = keep
        return removed

    async def _write(self, change: Callable[[dict[str, Any], _Txn], None]) -> _Txn:
        """One YAML write: ``change(doc, txn)`` under the lock, then revisions, then replace."""
        txn = _Txn(time.time())

        def mutate(doc: dict[str, Any]) -> dict[str, Any]:
            txn.meta = self._locked_meta()
            txn.now = time.time()
            txn.trusted = self._synced is not None and self._synced == (
                _stat_sig(self.store.path), _stat_sig(self.sidecar))
            self._expire(doc, txn)
            change(doc, txn)
            return doc

        def before_replace(doc: dict[str, Any], built: dict[str, list[dict[str, Any]]]) -> None:
            if txn.trusted and txn.keyed and not txn.expired:
                self._reconcile_written(txn.meta, doc, built, txn)
            else:
                self._reconcile(txn.meta, doc, built, txn.touched)
            self._save_meta(txn.meta)

        try:
            await self.store.write(mutate, before_replace=before_replace)
        except _Abort as abort:
            txn.result = abort.result
            return txn
        except OSError as e:
            raise StoreUnavailable(f"{self.store.path}: {e.strerror or e}") from e
        # a failed write leaves no match: whatever it changed changed the signatures
        self._synced = (self.store.written_sig, self._meta_cache[0])
        return txn

    def _reconcile_written(
        self,
        meta: _Meta,
        doc: dict[str, Any],
        built: dict[str, builtins.list[dict[str, Any]]],
        txn: _Txn,
    ) -> None:
        """:meth:`_reconcile` for a trusted write: the other items cannot have changed, so
        only the keys written get fresh revisions and the keys removed lose their entries."""
        keys = dict(meta["keys"])
        rev: int = meta["revision"]
        for key in txn.removed:
            keys.pop(key, None)
        for key, fields in txn.touched.items():
            collection, ident = self._split(key)
            assert collection is not None
            items: list[dict[str, Any]] = built.get(collection) or []
            i = _position(items, collection, ident)
            if i is _UNSURE:
                i = self._scan(items, collection, ident)
            if i is None:  # refused by nothing, yet not in the file: reconcile everything
                self._reconcile(meta, doc, built, txn.touched)
                return
            raws = doc.get(collection) or []
            raw = raws[i] if i < len(raws) and isinstance(raws[i], dict) else items[i]
            rev += 1
            prev = keys.get(key)
            keys[key] = {"c": prev["c"] if prev else rev, "m": rev, "h": _hash(items[i]),
                         "rh": _hash(_normal(collection, raw)), **fields}  # fmt: skip
        meta["keys"], meta["revision"] = keys, rev

    def _current_mod(self, meta: _Meta, key: str, collection: str, raw: dict[str, Any]) -> int:
        """The mod_revision a client may hold for an existing file item (-1: edited by hand
        since the sidecar last saw it, so no revision a client holds matches)."""
        entry = meta["keys"].get(key)
        if entry is None:
            return -1
        if entry.get("rh") is not None and entry["rh"] != _hash(_normal(collection, raw)):
            return -1
        return int(entry["m"])

    def _checked_find(
        self,
        items: builtins.list[Any],
        txn: _Txn,
        key: str,
        collection: str,
        ident: str,
        prev_revision: int | None,
    ) -> int | None:
        """The index of ``ident`` in ``items`` (``None``: absent), after the compare-and-swap
        check: raises :class:`RevisionConflict` unless ``prev_revision`` is ``None`` or the
        item's current mod revision (0 when absent)."""
        i = self._find(items, collection, ident)
        if prev_revision is not None:
            current = 0 if i is None else self._current_mod(txn.meta, key, collection, items[i])
            if current != prev_revision:
                raise RevisionConflict(f"{key}: revision is not {prev_revision}")
        return i

    @staticmethod
    def _find(items: builtins.list[Any], collection: str, ident: str) -> int | None:
        found = _position(items, collection, ident)
        if found is not _UNSURE:
            return int(found) if found is not None else None
        return YamlResourceStore._scan(items, collection, ident)

    @staticmethod
    def _scan(items: builtins.list[Any], collection: str, ident: str) -> int | None:
        for i, item in enumerate(items):
            if isinstance(item, dict) and _ident(collection, item, i) == ident:
                return i
        return None

    @staticmethod
    def _file_item(
        collection: str, ident: str, value: Any
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The item to write for ``value`` and the sidecar fields that restore it exactly."""
        if not isinstance(value, dict):
            raise ValueError(f"a {collection} value must be a JSON object")
        extra: dict[str, Any] = {}
        if collection == "consumers" and "/" not in ident:
            if value.get("username") == ident:
                return dict(value), extra
            return {"username": ident, **{k: v for k, v in value.items() if k != "username"}}, extra
        if "id" not in value:
            extra["noid"] = True
        elif str(value["id"]) == ident:
            if not isinstance(value["id"], str):
                extra["vid"] = value["id"]  # the file keeps it, the snapshot stringifies it
            return dict(value), extra
        else:
            extra["vid"] = value["id"]
        return {"id": ident, **{k: v for k, v in value.items() if k != "id"}}, extra

    async def put(
        self,
        key: str,
        value: Any,
        *,
        prev_revision: int | None = None,
        ttl: float | None = None,
    ) -> Entry:
        collection, ident = self._split(key)
        if collection is None:
            op = self._put_extra(key, value, prev_revision, ttl)
            return await asyncio.to_thread(self._sidecar_op, op)
        item, extra = self._file_item(collection, ident, value)

        def change(doc: dict[str, Any], txn: _Txn) -> None:
            if not isinstance(doc.get(collection), list):
                doc[collection] = []
            items: list[Any] = doc[collection]
            i = self._checked_find(items, txn, key, collection, ident, prev_revision)
            if i is None:
                items.append(item)
            else:
                items[i] = item
            fields = dict(extra)
            if ttl is not None:
                fields["exp"] = txn.now + ttl
            txn.touched[key] = fields
            txn.keyed = True

        txn = await self._write(change)
        entry = txn.meta["keys"][key]
        return Entry(key, copy.deepcopy(value), entry["c"], entry["m"])

    @staticmethod
    def _put_extra(
        key: str, value: Any, prev_revision: int | None, ttl: float | None
    ) -> Callable[[_Meta, float], Entry]:
        def op(meta: _Meta, now: float) -> Entry:
            prev = meta["extra"].get(key)
            if prev_revision is not None and (prev["m"] if prev else 0) != prev_revision:
                raise RevisionConflict(f"{key}: revision is not {prev_revision}")
            meta["revision"] += 1
            rev = meta["revision"]
            entry: dict[str, Any] = {"c": prev["c"] if prev else rev, "m": rev, "v": value}
            if ttl is not None:
                entry["exp"] = now + ttl
            meta["extra"][key] = entry
            return Entry(key, copy.deepcopy(value), entry["c"], rev)

        return op

    async def delete(self, key: str, *, prev_revision: int | None = None) -> bool:
        collection, ident = self._split(key)
        if collection is None:

            def op(meta: _Meta, now: float) -> bool:
                prev = meta["extra"].get(key)
                if prev_revision is not None and (prev["m"] if prev else 0) != prev_revision:
                    raise RevisionConflict(f"{key}: revision is not {prev_revision}")
                if prev is None:
                    raise _Abort(False)
                del meta["extra"][key]
                return True

            return await asyncio.to_thread(self._sidecar_op, op)

        def change(doc: dict[str, Any], txn: _Txn) -> None:
            found = doc.get(collection)
            items: builtins.list[Any] = found if isinstance(found, list) else []
            i = self._checked_find(items, txn, key, collection, ident, prev_revision)
            if i is None:
                raise _Abort(False)
            del items[i]
            txn.removed.add(key)
            txn.keyed = True
            txn.result = True

        txn = await self._write(change)
        return bool(txn.result)

    async def delete_prefix(self, directory: str) -> int:
        def change(doc: dict[str, Any], txn: _Txn) -> None:
            removed = self._drop_items(doc, lambda key: key.startswith(directory))
            for key in [k for k in txn.meta["extra"] if k.startswith(directory)]:
                del txn.meta["extra"][key]
                removed += 1
            if not removed:
                raise _Abort(0)
            txn.result = removed

        txn = await self._write(change)
        return int(txn.result or 0)

    async def next_id(self) -> str:
        def op(meta: _Meta, now: float) -> str:
            meta["revision"] += 1
            return f"{meta['revision']:020d}"

        return await asyncio.to_thread(self._sidecar_op, op)

    # -- ttl sweeper -----------------------------------------------------------------------

    async def sweep(self) -> int:
        """Remove expired keys now (a write); how many went. Cheap when none expired."""
        _, meta = self._meta()
        now = time.time()
        if not any(_expired(e, now) for e in (*meta["keys"].values(), *meta["extra"].values())):
            return 0

        def change(doc: dict[str, Any], txn: _Txn) -> None:
            if not txn.expired:
                raise _Abort(0)
            txn.result = txn.expired

        txn = await self._write(change)
        return int(txn.result or 0)

    def start_sweeper(self) -> None:
        """Start removing expired keys every ``sweep_interval`` seconds (until :meth:`stop`)."""
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(
                self._sweep_loop(), name="yaml-resources-sweeper"
            )

    async def stop(self) -> None:
        """Stop the sweeper. Idempotent."""
        task, self._sweeper = self._sweeper, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval)
            try:
                await self.sweep()
            except Exception as e:
                self._log.warning("%s: removing expired keys failed: %s", self.store.path, e)

    # -- the whole document (``/apisix/admin/configs``) ------------------------------------

    @staticmethod
    def _document_record(meta: _Meta, key: str, doc: dict[str, Any]) -> dict[str, Any] | None:
        """What :meth:`replace_document` recorded under ``key``, while it still describes
        ``doc`` (``None`` once anything else changed the file: an Admin write, a hand edit)."""
        entry = meta["extra"].get(key)
        value = entry.get("v") if isinstance(entry, dict) else None
        if not isinstance(value, dict) or value.get("doc") != _hash(doc):
            return None
        return {k: v for k, v in value.items() if k != "doc"}

    async def read_document(self, key: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """The file's document as written and the record :meth:`replace_document` left under
        the sidecar key ``key`` (``None``: none, or the document changed since)."""

        def read() -> tuple[dict[str, Any], dict[str, Any] | None]:
            try:
                with self.store.locked():
                    doc = self.store.document()
                    return doc, self._document_record(self._locked_meta(), key, doc)
            except ConfigRejected as e:
                raise StoreUnavailable(f"{self.store.path}: cannot parse the file: "
                                       f"{'; '.join(str(p) for p in e.problems)}") from e
            except OSError as e:
                raise StoreUnavailable(f"{self.store.path}: {e.strerror or e}") from e

        return await asyncio.to_thread(read)

    async def replace_document(
        self,
        key: str,
        plan: Callable[
            [dict[str, Any], dict[str, Any] | None], tuple[dict[str, Any], dict[str, Any]]
        ],
    ) -> None:
        """Replace the whole document in one write (one lock, one validation, one apply).

        ``plan(document, record)`` gets a private copy of the document as written and the
        record from the last replacement (as :meth:`read_document` gives it); it returns the
        new document and the record to keep under the sidecar key ``key`` -- or raises, and
        nothing is written. The new document is validated like any write
        (:class:`~kernel.store.base.ConfigRejected`). Revisions follow the usual reconciling:
        unchanged items keep theirs, changed and new items get fresh ones, removed items lose
        their entries."""

        def change(doc: dict[str, Any], txn: _Txn) -> None:
            new_doc, record = plan(copy.deepcopy(doc), self._document_record(txn.meta, key, doc))
            doc.clear()
            doc.update(new_doc)
            self._put_extra(key, {**record, "doc": _hash(doc)}, None, None)(txn.meta, txn.now)

        await self._write(change)

    async def check_document(self, doc: dict[str, Any]) -> builtins.list[Any]:
        """The problems (:class:`~kernel.store.base.Problem`) a write of ``doc`` as the whole
        document would be refused for; ``[]`` when it would be accepted. Nothing is written."""
        candidate = copy.deepcopy(doc)

        def refuse(new_doc: dict[str, Any], built: dict[str, builtins.list[Any]]) -> None:
            raise _Abort(None)

        try:
            await self.store.write(lambda current: candidate, before_replace=refuse)
        except _Abort:
            return []
        except ConfigRejected as e:
            return builtins.list(e.problems)
        except OSError as e:
            raise StoreUnavailable(f"{self.store.path}: {e.strerror or e}") from e
        return []
