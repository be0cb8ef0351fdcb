"""The etcd config store (``deployment.config_provider: etcd``, spec §3).

Read side (spec §3.2): one range read of ``<prefix>/`` gives the first :class:`Snapshot`; a
background task then watches the prefix from ``header.revision + 1``. Each batch of watch events
(everything already buffered is applied together) updates an in-memory key -> (value,
create_revision, mod_revision) map and yields at most ONE new snapshot. Items that fail the
kernel's ``validate`` are kept at their previous value (left out when new) and logged as
``etcd <key>: <problem>`` -- the rest of the change still applies, as in APISIX.

* watch timeout (``watch_timeout``) -> re-issue from the last applied revision + 1;
* compaction, or etcd reporting a revision below ours (restarted with a fresh data dir) -> a full
  re-read, rebuilt from scratch (invalid items again keep their previous value);
* connection errors -> keep serving the last snapshot, retry after ``resync_delay`` + 0-50 %
  jitter, doubling up to ``min(32 s, 8 x resync_delay)``; resume from the last applied
  ``mod_revision + 1`` so no event is lost. With several endpoints, one that fails is skipped
  for ``health_check_timeout`` seconds (see :mod:`kernel.store.etcd_client`).

Startup: the initial read is tried ``startup_retry`` times (default 2, at least once). When all
fail, a store built with ``must_connect=True`` (traditional and control-plane nodes, as APISIX's
CLI does) raises :class:`EtcdStartupError`; otherwise (data planes) it starts with an empty
config and keeps retrying in the background.

Write side: :class:`~kernel.store.resources.ResourceStore` on etcd's keyspace (compare-and-swap on
``mod_revision``, TTL through leases, ids from the revision of a put to ``<prefix>/gen_id``).
A data-plane store (``read_only=True``) refuses every write.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kernel.store.base import (
    COLLECTIONS,
    ConfigStore,
    Problem,
    Snapshot,
    SnapshotDelta,
    Validate,
    freeze_collections,
    item_key,
)
from kernel.store.etcd_client import Compacted, EtcdClient, KeyValue, TLSConfig
from kernel.store.json_values import decode
from kernel.store.resources import Entry, ResourceStore, RevisionConflict, StoreUnavailable

_PROBLEM_PATH = re.compile(r"^([a-z_]+)\[(\d+)\]")
_READ_ONLY = "Data plane role should not write to etcd"
_INIT_DIR = (b"init_dir", b'"init_dir"')


@dataclass(frozen=True, slots=True)
class _Rec:
    """One raw key as read from etcd."""

    value: bytes
    create_revision: int
    mod_revision: int


@dataclass(frozen=True, slots=True)
class _Item:
    """One accepted (validated) item of the serving snapshot."""

    collection: str
    item: dict[str, Any]
    create_revision: int
    mod_revision: int


class _BadValue(Exception):
    pass


class EtcdStartupError(StoreUnavailable):
    """No etcd endpoint answered the initial read within ``startup_retry`` attempts."""


def _hosts(conf: Mapping[str, Any]) -> list[str]:
    host = conf.get("host") or ["http://127.0.0.1:2379"]
    if isinstance(host, str):
        host = [host]
    return [str(h) for h in host]


class EtcdStore(ConfigStore, ResourceStore):
    """Routes, services, ... in etcd under ``deployment.etcd.prefix`` (default ``/apisix``)."""

    def __init__(
        self,
        conf: Mapping[str, Any] | None = None,
        validate: Validate | None = None,
        *,
        read_only: bool = False,
        ssl_trusted_certificate: str | None = None,
        on_status: Callable[[bool], None] | None = None,
        logger: logging.Logger | None = None,
        must_connect: bool = False,
    ) -> None:
        conf = dict(conf or {})
        self._conf = conf
        self.prefix = "/" + str(conf.get("prefix") or "/apisix").strip("/")
        self._dir = self.prefix + "/"
        self._timeout = float(conf.get("timeout", 30))
        self._watch_timeout = float(conf.get("watch_timeout", 50))
        self._resync_delay = float(conf.get("resync_delay", 5))
        self._health_check_timeout = float(conf.get("health_check_timeout", 10))
        self._startup_retry = max(1, int(conf.get("startup_retry", 2)))
        self._must_connect = must_connect
        tls = conf.get("tls") or {}
        ca = (
            ssl_trusted_certificate if ssl_trusted_certificate not in (None, "", "system") else None
        )
        self._tls = TLSConfig(
            cert=tls.get("cert"),
            key=tls.get("key"),
            verify=bool(tls.get("verify", True)),
            sni=tls.get("sni"),
            ca_file=ca,
        )
        self._validate = validate
        self.read_only = read_only
        self._on_status = on_status
        self._log = logger or logging.getLogger("sixgate.store.etcd")
        self._client = self._new_client()
        # read side state
        self._kvs: dict[str, _Rec] = {}
        self._accepted: dict[str, _Item] = {}
        self._ordered: dict[str, dict[str, _Item]] = {}
        """Accepted items per collection, in create-revision order (what snapshots list)."""
        self._plugins: tuple[str, ...] | None = None
        self._plugins_mod = 0
        self._rejected: dict[str, int] = {}  # key -> mod_revision found invalid (logged once)
        self._revision = 0
        self._current: Snapshot | None = None
        self._handed: str | None = None  # version of the last snapshot given to on_change
        self._on_change: Callable[[Snapshot], None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._need_reload = False
        self._reachable: bool | None = None
        self._modify: tuple[int, dict[str, int]] = (-1, {})  # see modify_indexes()

    def _new_client(self) -> EtcdClient:
        conf = self._conf
        user = conf.get("user")
        return EtcdClient(
            _hosts(conf),
            user=None if user is None else str(user),
            password=None if conf.get("password") is None else str(conf.get("password")),
            timeout=self._timeout,
            tls=self._tls,
            health_check_timeout=self._health_check_timeout,
        )

    @property
    def client(self) -> EtcdClient:
        return self._client

    # -- ConfigStore -----------------------------------------------------------------------

    async def start(self, on_change: Callable[[Snapshot], None]) -> None:
        if self._task is not None:
            raise RuntimeError("store already started")
        self._on_change = on_change
        self._lock = asyncio.Lock()
        try:
            await self._initial_read()
        except EtcdStartupError as e:
            self._status(False)
            if self._must_connect:
                self._on_change = None
                await self._client.close()
                raise
            self._log.error("%s; starting with an empty config", e)
            self._need_reload = True
            self._current = Snapshot.empty("etcd:0")
            self._safe_on_change(self._current)
        self._task = asyncio.create_task(self._watch_loop(), name="etcd-store-watch")

    async def _initial_read(self) -> None:
        """The first full read, tried ``startup_retry`` times (runs once, in :meth:`start`)."""
        attempts = self._startup_retry
        for attempt in range(1, attempts + 1):
            try:
                async with self._lock:
                    await self._full_reload()
                return
            except StoreUnavailable as e:
                if attempt == attempts:
                    raise EtcdStartupError(
                        f"all etcd nodes are unavailable: the initial read of {self._dir} "
                        f"failed {attempts} time(s) (deployment.etcd.startup_retry): {e}"
                    ) from None
                self._log.warning(
                    "etcd: initial read failed (%s), retry %d/%d", e, attempt, attempts - 1
                )
                await asyncio.sleep(min(self._resync_delay, 1.0))

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            for _ in range(100):  # re-cancel: a cancellation can be lost in a race
                task.cancel()
                done, _ = await asyncio.wait({task}, timeout=0.1)
                if done:
                    break
            else:
                self._log.error("etcd: the watch task did not stop")
        await self._client.close()

    def current(self) -> Snapshot | None:
        return self._current

    @property
    def revision(self) -> int:
        """The last etcd revision applied to the serving snapshot."""
        return self._revision

    def modify_indexes(self) -> dict[str, int]:
        """Per collection, the highest ``mod_revision`` among the serving items, and
        ``prev_index``: the last applied revision (Prometheus' ``etcd_modify_indexes``).
        Recomputed only when the revision moved."""
        revision, indexes = self._modify
        if revision != self._revision:
            indexes = {"prev_index": self._revision}
            for item in self._accepted.values():
                if item.mod_revision > indexes.get(item.collection, 0):
                    indexes[item.collection] = item.mod_revision
            self._modify = (self._revision, indexes)
        return dict(indexes)

    async def refresh(self) -> None:
        async with self._lock:
            await self._full_reload()

    def check(self) -> list[Problem]:
        """Range-read the prefix and validate it (blocking; runs its own event loop)."""
        result: list[list[Problem]] = []
        error: list[BaseException] = []

        def run() -> None:
            try:
                result.append(asyncio.run(self._check()))
            except BaseException as e:
                error.append(e)

        t = threading.Thread(target=run, name="etcd-check")
        t.start()
        t.join()
        if error:
            raise error[0]
        return result[0]

    async def _check(self) -> list[Problem]:
        client = self._new_client()
        try:
            res = await client.range(self._dir, prefix=True)
        except StoreUnavailable as e:
            return [Problem("etcd", None, "", str(e))]
        finally:
            await client.close()
        kvs = {kv.key: _Rec(kv.value, kv.create_revision, kv.mod_revision) for kv in res.kvs}
        problems: list[Problem] = []
        candidate: dict[str, _Item] = {}
        for key, rec in kvs.items():
            where = self._classify(key)
            if where is None or where[0] == "plugins":
                continue
            try:
                candidate[key] = self._parse_item(where[0], where[1], rec)
            except _BadValue as e:
                problems.append(Problem(f"etcd {key}", None, "", str(e)))
        if self._validate is not None:
            snapshot, index = self._snapshot_of(candidate, None, "candidate")
            for p in self._validate(snapshot):
                found, sub = self._locate(p, index)
                src = f"etcd {found}" if found else f"etcd {self.prefix}"
                problems.append(Problem(src, None, sub, p.message))
        return problems

    # -- read side: building snapshots -------------------------------------------------------

    def _classify(self, key: str) -> tuple[str, str] | None:
        """``(collection, id)`` for an item key, ``("plugins", "")`` for the plugin list."""
        if not key.startswith(self._dir):
            return None
        rel = key[len(self._dir) :]
        if rel == "plugins":
            return ("plugins", "")
        directory, _, rest = rel.partition("/")
        if directory not in COLLECTIONS or not rest or rest.endswith("/"):
            return None
        parts = rest.split("/")
        if len(parts) == 1:
            return (directory, rest)
        if directory == "consumers" and len(parts) == 3 and parts[1] == "credentials":
            return (directory, rest)
        if directory == "secrets" and len(parts) == 2:
            return (directory, rest)
        return None

    @staticmethod
    def _decode(rec: _Rec) -> Any:
        try:
            return decode(rec.value)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise _BadValue(f"invalid JSON value: {e}") from None

    def _parse_item(self, collection: str, ident: str, rec: _Rec) -> _Item:
        value = self._decode(rec)
        if not isinstance(value, dict):
            raise _BadValue(f"the value must be a JSON object, got {type(value).__name__}")
        item = dict(value)
        item["id"] = ident
        return _Item(collection, item, rec.create_revision, rec.mod_revision)

    def _parse_plugins(self, rec: _Rec) -> tuple[str, ...]:
        value = self._decode(rec)
        if not isinstance(value, list):
            raise _BadValue("the plugin list must be a JSON array")
        names: list[str] = []
        for entry in value:
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                if not entry.get("stream"):
                    names.append(entry["name"])
            elif isinstance(entry, str):
                names.append(entry)
            else:
                raise _BadValue(f"bad plugin list entry {entry!r}")
        return tuple(names)

    def _snapshot_of(
        self, items: Mapping[str, _Item], plugins: tuple[str, ...] | None, version: str
    ) -> tuple[Snapshot, dict[str, list[str]]]:
        """A snapshot of ``items`` (for validation) and, per collection, each position's key."""
        per: dict[str, list[tuple[int, str, _Item]]] = {name: [] for name in COLLECTIONS}
        for key, it in items.items():
            per[it.collection].append((it.create_revision, key, it))
        collections: dict[str, list[dict[str, Any]]] = {}
        index: dict[str, list[str]] = {}
        for name, entries in per.items():
            entries.sort(key=lambda e: (e[0], e[1]))
            collections[name] = [e[2].item for e in entries]
            index[name] = [e[1] for e in entries]
        return Snapshot(version, freeze_collections(collections), plugins), index

    @staticmethod
    def _locate(p: Problem, index: Mapping[str, list[str]]) -> tuple[str | None, str]:
        m = _PROBLEM_PATH.match(p.path)
        if m is None:
            return None, p.path
        keys = index.get(m.group(1), [])
        pos = int(m.group(2))
        if pos >= len(keys):
            return None, p.path
        return keys[pos], p.path[m.end() :].lstrip(".")

    async def _rebuild(self, changed: Iterable[str] | None) -> bool:
        """Recompute the accepted items from ``self._kvs``; commit a new snapshot if anything
        effective changed. ``changed=None``: every key is re-examined (full reload)."""
        old = self._accepted
        if changed is None:
            self._rejected.clear()
            keys: set[str] = set(self._kvs) | set(old)
            candidate: dict[str, _Item] = {}
            plugins_changed = True
        else:
            keys = set(changed)
            candidate = dict(old)
            plugins_changed = False
        plugins = None if changed is None else self._plugins  # full reload: absent -> None
        touched: set[str] = set()
        for key in keys:
            where = self._classify(key)
            if where is None:
                continue
            rec = self._kvs.get(key)
            if where[0] == "plugins":
                plugins_changed = True
                if rec is None:
                    plugins = None
                    continue
                try:
                    plugins = self._parse_plugins(rec)
                except _BadValue as e:
                    plugins = self._plugins
                    self._log.error("etcd %s: %s; keeping the previous plugin list", key, e)
                continue
            if rec is None:
                candidate.pop(key, None)
                self._rejected.pop(key, None)
                continue
            prev = old.get(key)
            if prev is not None and prev.mod_revision == rec.mod_revision and changed is not None:
                continue
            if self._rejected.get(key) == rec.mod_revision:
                continue
            try:
                candidate[key] = self._parse_item(where[0], where[1], rec)
                touched.add(key)
            except _BadValue as e:
                self._reject(key, rec, str(e), prev, candidate)
        if self._validate is not None and (touched or changed is None or plugins_changed):
            # Items are validated one by one (no check spans items), so an event batch only
            # needs its own items checked.
            scope = candidate if changed is None or plugins_changed else {
                k: candidate[k] for k in touched if k in candidate
            }
            for _ in range(8):
                snapshot, index = self._snapshot_of(scope, plugins, "candidate")
                try:
                    problems = await asyncio.to_thread(self._validate, snapshot)
                except Exception as e:
                    self._log.exception("etcd: validator raised; keeping the previous config")
                    problems = [Problem("etcd", None, "", f"validation failed: {e!r}")]
                    return False
                if not problems:
                    break
                progressed = False
                for p in problems:
                    found, sub = self._locate(p, index)
                    if found is None:  # not attributable to one item: log, cannot revert
                        at = f"{sub}: " if sub else ""
                        self._log.error("etcd %s: %s%s", self.prefix, at, p.message)
                        continue
                    if found not in candidate:
                        continue
                    message = f"{sub}: {p.message}" if sub else p.message
                    before = candidate.get(found)
                    self._reject(found, self._kvs.get(found), message, old.get(found), candidate)
                    if scope is not candidate:
                        scope.pop(found, None)
                    progressed = progressed or candidate.get(found) is not before
                if not progressed:
                    break
        if changed is None:
            effective = plugins != self._plugins or not _same(candidate, self._accepted)
        else:  # only the keys of this batch can differ
            accepted = self._accepted
            effective = plugins != self._plugins or any(
                candidate.get(k) is not accepted.get(k) for k in keys
            )
        self._accepted = candidate
        self._plugins = plugins
        if effective:
            self._commit(None if changed is None else keys)
        return effective

    def _reject(
        self,
        key: str,
        rec: _Rec | None,
        message: str,
        prev: _Item | None,
        candidate: dict[str, _Item],
    ) -> None:
        if rec is not None:
            self._rejected[key] = rec.mod_revision
        if prev is not None and candidate.get(key) is not prev:
            self._log.error("etcd %s: %s; keeping the previous value", key, message)
            candidate[key] = prev
        elif key in candidate or prev is None:
            candidate.pop(key, None)
            self._log.error("etcd %s: %s; item left out", key, message)

    def _commit(self, changed: Iterable[str] | None = None) -> None:
        """Publish the accepted items. ``changed``: the keys that may differ from the last
        published snapshot (``None``: everything); only their collections are rebuilt, in
        create-revision order kept up to date instead of re-sorted."""
        ordered = self._ordered
        if changed is None or not ordered:
            ordered.clear()
            for key, item in sorted(self._accepted.items(),
                                    key=lambda kv: (kv[1].create_revision, kv[0])):
                ordered.setdefault(item.collection, {})[key] = item
            dirty: set[str] = set(COLLECTIONS)
            delta: dict[str, dict[str, dict[str, Any] | None]] | None = None
        else:
            dirty = set()
            delta = {}
            for key in changed:
                it = self._accepted.get(key)
                if it is None:
                    for coll in ordered.values():
                        gone = coll.pop(key, None)
                        if gone is not None:
                            delta.setdefault(gone.collection, {})[
                                item_key(gone.collection, gone.item)
                            ] = None
                            break
                    where = self._classify(key)
                    if where is not None:
                        dirty.add(where[0])
                    continue
                coll = ordered.setdefault(it.collection, {})
                old = coll.get(key)
                if old is not None and old.item is not it.item:
                    old_key = item_key(it.collection, old.item)
                    if old_key != item_key(it.collection, it.item):
                        delta.setdefault(it.collection, {})[old_key] = None
                coll[key] = it  # an update keeps its place; a new key (newest) goes last
                delta.setdefault(it.collection, {})[item_key(it.collection, it.item)] = it.item
                dirty.add(it.collection)
        base = self._current
        collections: dict[str, Any] = {}
        for name in COLLECTIONS:
            if name in dirty or base is None:
                collections[name] = [it.item for it in ordered.get(name, {}).values()]
            else:
                collections[name] = base.items(name)
        snapshot = Snapshot(
            f"etcd:{self._revision}",
            freeze_collections(collections),
            self._plugins,
            # relative to the last snapshot handed out, even one the consumer refused: a
            # consumer that refused it no longer holds the base and reads the whole snapshot
            None if delta is None or self._handed is None else SnapshotDelta(self._handed, delta),
        )
        self._handed = snapshot.version
        previous = self._current
        self._current = snapshot
        if not self._safe_on_change(snapshot):
            self._current = previous

    def _safe_on_change(self, snapshot: Snapshot) -> bool:
        if self._on_change is None:
            return True
        try:
            self._on_change(snapshot)
        except Exception:
            self._log.exception("etcd: applying %s failed; kept the previous config",
                                snapshot.version)  # fmt: skip
            return False
        return True

    def _status(self, reachable: bool) -> None:
        if reachable == self._reachable:
            return
        self._reachable = reachable
        if self._on_status is not None:
            try:
                self._on_status(reachable)
            except Exception:
                self._log.exception("etcd: on_status hook raised")

    async def _full_reload(self) -> None:
        res = await self._client.range(self._dir, prefix=True)
        self._status(True)
        self._kvs = {kv.key: _Rec(kv.value, kv.create_revision, kv.mod_revision) for kv in res.kvs}
        self._revision = res.revision
        self._need_reload = False
        if not await self._rebuild(None) and self._current is None:
            self._commit()
        self._log.info("etcd: loaded %d keys at revision %d", len(self._kvs), res.revision)

    async def _watch_loop(self) -> None:
        failures = 0
        while True:
            try:
                if self._need_reload:
                    async with self._lock:
                        await self._full_reload()
                async for batch in self._client.watch(
                    self._dir, start_revision=self._revision + 1, watch_timeout=self._watch_timeout
                ):
                    self._status(True)
                    failures = 0
                    if batch.header_revision and batch.header_revision < self._revision:
                        self._log.warning("etcd: revision went backwards (%d < %d): etcd was "
                                          "restarted with fresh data; reloading everything",
                                          batch.header_revision, self._revision)  # fmt: skip
                        self._need_reload = True
                        break
                    if batch.events:
                        async with self._lock:
                            await self._apply(batch.events)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Compacted as e:
                self._log.warning("etcd: %s; reloading everything", e)
                self._need_reload = True
            except Exception as e:
                if not isinstance(e, StoreUnavailable):
                    self._log.exception("etcd: watch failed")
                self._status(False)
                failures += 1
                delay = self._backoff(failures)
                self._log.warning("etcd: %s; keeping the last config, retrying in %.2fs", e, delay)
                await asyncio.sleep(delay)

    def _backoff(self, failures: int) -> float:
        base = max(self._resync_delay, 0.001)
        cap = max(base, min(32.0, 8 * base))
        return min(base * 2 ** (failures - 1), cap) * (1 + random.random() * 0.5)

    async def _apply(self, events: list[Any]) -> None:
        changed: set[str] = set()
        for ev in events:
            kv: KeyValue = ev.kv
            if kv.mod_revision <= self._revision:
                continue  # already applied (a re-issued watch may replay)
            self._revision = kv.mod_revision
            if ev.type == "DELETE":
                self._kvs.pop(kv.key, None)
            else:
                self._kvs[kv.key] = _Rec(kv.value, kv.create_revision, kv.mod_revision)
            changed.add(kv.key)
        if changed:
            await self._rebuild(changed)

    # -- ResourceStore ---------------------------------------------------------------------------

    def _check_writable(self) -> None:
        if self.read_only:
            raise StoreUnavailable(_READ_ONLY)

    @staticmethod
    def _entry(kv: KeyValue) -> Entry:
        try:
            value: Any = decode(kv.value)
        except (json.JSONDecodeError, UnicodeDecodeError):
            value = kv.value.decode("utf-8", "replace")
        return Entry(kv.key, value, kv.create_revision, kv.mod_revision)

    async def get(self, key: str) -> Entry | None:
        kv = await self._client.get(key)
        return None if kv is None else self._entry(kv)

    async def list(self, directory: str) -> list[Entry]:
        if not directory.endswith("/"):
            directory += "/"
        res = await self._client.range(directory, prefix=True)
        kvs = [kv for kv in res.kvs if kv.key != directory and kv.value not in _INIT_DIR]
        kvs.sort(key=lambda kv: (kv.create_revision, kv.key))
        return [self._entry(kv) for kv in kvs]

    async def put(
        self,
        key: str,
        value: Any,
        *,
        prev_revision: int | None = None,
        ttl: float | None = None,
    ) -> Entry:
        self._check_writable()
        data = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        lease = await self._client.grant(ttl) if ttl is not None and ttl > 0 else 0
        if prev_revision is None:
            kv = await self._client.put_read(key, data, lease=lease)
        else:
            got = await self._client.put_if(key, data, mod_revision=prev_revision, lease=lease)
            if got is None:
                raise RevisionConflict(
                    f"{key}: changed since revision {prev_revision}"
                    if prev_revision
                    else f"{key}: already exists"
                )
            kv = got
        return self._entry(kv)

    async def delete(self, key: str, *, prev_revision: int | None = None) -> bool:
        self._check_writable()
        if prev_revision is None:
            return await self._client.delete(key) > 0
        if prev_revision == 0:
            if await self._client.get(key) is not None:
                raise RevisionConflict(f"{key}: exists")
            return False
        done = await self._client.delete_if(key, mod_revision=prev_revision)
        if done is None:
            raise RevisionConflict(f"{key}: changed since revision {prev_revision}")
        return done

    async def delete_prefix(self, directory: str) -> int:
        self._check_writable()
        if not directory.endswith("/"):
            directory += "/"
        return await self._client.delete(directory, prefix=True)

    async def next_id(self) -> str:
        self._check_writable()
        revision = await self._client.put(self.prefix + "/gen_id", "0")
        return f"{revision:020d}"


def _same(a: Mapping[str, _Item], b: Mapping[str, _Item]) -> bool:
    if a.keys() != b.keys():
        return False
    for key, x in a.items():
        y = b[key]
        if x is y:
            continue
        if x.mod_revision != y.mod_revision or x.item != y.item:
            return False
    return True


__all__ = ["Compacted", "EtcdStore"]
