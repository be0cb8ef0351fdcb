"""Standalone file mode: the whole config in ``conf/apisix.yaml`` (or ``.json``), hot reloaded.

Reading: raw bytes -> ``#END`` trailer check (YAML only; the last 10 bytes must match
``#END\\s*$``) -> ``${{VAR:=default}}`` substitution -> parse (libyaml when available) ->
structure checks -> id normalisation -> the kernel's ``validate``. Any problem refuses the whole
edit: the last good snapshot keeps serving and each problem is logged on one line with file, line
and field. Watching: :class:`~kernel.filewatch.FileWatch` on the file's directory (watchdog,
debounced) plus a stat() poll every ``poll_interval`` seconds, so an edit is never missed.

``write()`` is the Admin API's way in: an exclusive ``flock`` on ``<file>.lock``, re-read, mutate,
validate, atomic replace, apply. Comments in the file do not survive a write.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import hashlib
import json
import logging
import operator
import os
import re
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from itertools import compress, repeat
from pathlib import Path
from typing import Any

import yaml

from kernel.envsubst import EnvSubstError, substitute_env
from kernel.filewatch import FileWatch
from kernel.store.base import (
    COLLECTIONS,
    ConfigRejected,
    ConfigStore,
    Problem,
    Snapshot,
    Validate,
    freeze_collections,
)
from kernel.store.yaml_lines import ItemLines

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_END_FLAG = re.compile(rb"#END\s*$")
_PATH_TOKEN = re.compile(r"""\[(-?\d+)\]|\[(?:"((?:[^"\\]|\\.)*)"|'([^']*)')\]|\.?([^.\[\]]+)""")
_Sig = tuple[int, int, int, int]  # mtime_ns, size, inode, ctime_ns
_TOP_LEVEL = (*COLLECTIONS, "plugins")
_DROPPED = object()  # a collection entry that is not a mapping (reported, left out)

BeforeReplace = Callable[[dict[str, Any], dict[str, list[dict[str, Any]]]], None]
"""``write``'s hook: (new document as written, its built collections) -> None, under the lock."""


@dataclass
class _Built:
    problems: list[Problem]
    collections: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    plugins: tuple[str, ...] | None = None
    digest: str = ""


@dataclass
class _Outcome:
    sig: _Sig | None
    raw_digest: str | None = None  # None: the file is missing
    built: _Built | None = None  # None: missing, or same bytes as last time


class YamlFileStore(ConfigStore):
    """The standalone config file (``conf/apisix.yaml`` / ``conf/apisix.json``) as a store."""

    def __init__(
        self,
        path: Path | str,
        validate: Validate | None = None,
        env: Mapping[str, str] | None = None,
        poll_interval: float = 1.0,
        debounce: float = 0.02,
        logger: logging.Logger | None = None,
        use_watchdog: bool = True,
    ) -> None:
        self._path = Path(path)
        self._source = str(path)
        self._abs = os.path.abspath(self._path)
        self._is_json = self._path.suffix.lower() == ".json"
        self._validate = validate
        self._env: Mapping[str, str] = os.environ if env is None else dict(env)
        self._poll_interval = poll_interval
        self._debounce = debounce
        self._log = logger or logging.getLogger("sixgate.store.yaml")
        self._use_watchdog = use_watchdog
        self._current: Snapshot | None = None
        self._current_digest: str | None = None
        self._generation = 0
        self._last_sig: _Sig | None = None
        self._last_raw_digest: str | None = None
        self._missing_logged = False
        self._on_change: Callable[[Snapshot], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dirty = asyncio.Event()
        self._lock = asyncio.Lock()  # serialises read/apply on the loop
        # builds run on worker threads (reload, write) and on the loop (check): the
        # validator and the line caches they share must see one build at a time
        self._build_lock = threading.RLock()
        self._tasks: list[asyncio.Task[None]] = []
        self._watch: FileWatch | None = None
        # identity-preserving caches (see kernel.store.yaml_lines): the file as served
        # (env substituted) and as written, each item's normalised form and digest blob
        self._served_lines = ItemLines()
        self._written_lines = ItemLines()
        self._normalised: dict[int, Any] = {}
        self._blobs: dict[int, tuple[Any, bytes]] = {}
        self._written: tuple[_Sig, dict[str, Any]] | None = None
        """the document as of our last write or read-for-write, and the file's signature then"""

    # -- ConfigStore -----------------------------------------------------------------------

    async def start(self, on_change: Callable[[Snapshot], None]) -> None:
        if self._loop is not None:
            raise RuntimeError("store already started")
        self._loop = asyncio.get_running_loop()
        self._on_change = on_change
        self._dirty = asyncio.Event()
        self._watch = FileWatch(
            matches=self._abs.__eq__,
            changed=lambda: _stat_sig(self._path) != self._last_sig,
            on_change=self._dirty.set,
            debounce=self._debounce,
            max_wait=max(10 * self._debounce, 0.2),
            poll_interval=self._poll_interval,
            use_watchdog=self._use_watchdog,
            what=self._source,
            logger=self._log,
        )
        await self._watch.start([os.path.dirname(self._abs)])
        async with self._lock:
            self._apply(await asyncio.to_thread(self._read_and_build), initial=True)
            if self._current is None:
                self._log.warning("%s: starting with an empty config", self._source)
                self._commit(_Built([], {}, None, _digest({}, None, "")))
        self._tasks = [asyncio.create_task(self._reload_loop(), name="yaml-store-reload")]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._watch is not None:
            await self._watch.stop()
            self._watch = None
        self._loop = None

    def current(self) -> Snapshot | None:
        return self._current

    @property
    def path(self) -> Path:
        """The config file."""
        return self._path

    async def refresh(self) -> None:
        """Re-read and re-validate the file now, even if its bytes did not change.

        Used after something the validator depends on changed (a plugin reload): a file that
        was refused for naming a plugin that is now enabled gets applied.
        """
        async with self._lock:
            self._last_raw_digest = None
            self._apply(await asyncio.to_thread(self._read_and_build, True))

    def check(self) -> list[Problem]:
        outcome = self._read_and_build(force=True)
        if outcome.built is None:
            return [Problem(self._source, None, "", "file not found")]
        return outcome.built.problems

    async def write(
        self,
        mutate: Callable[[dict[str, Any]], dict[str, Any]],
        *,
        before_replace: BeforeReplace | None = None,
    ) -> Snapshot:
        """Apply ``mutate`` to the parsed file under an exclusive lock and store the result.

        ``mutate`` receives the document as written (ids as in the file, ``${{VAR}}`` not
        substituted) and returns the new one. The result is validated like an edit; problems
        raise :class:`ConfigRejected` and nothing is written. Safe across processes.

        ``before_replace(document, collections)`` (optional) runs in the same critical section
        after validation and just before the file is replaced, with the new document and its
        built collections (ids normalised, env substituted): the place to update side data
        (e.g. a revisions file) so that it never disagrees with the file. If it raises, nothing
        is written and the exception propagates. ``mutate`` may also raise to abort.
        """
        # holding the loop-side lock from the write to its apply: the change event of our own
        # replace then finds it applied instead of reading the file again
        async with self._lock:
            sig, raw_digest, built = await asyncio.to_thread(
                self._write_locked, mutate, before_replace
            )
            if _stat_sig(self._path) == sig:  # nobody replaced it since: no need to re-read
                self._apply(_Outcome(sig, raw_digest, built))
            else:
                self._apply(await asyncio.to_thread(self._read_and_build))
        assert self._current is not None
        return self._current

    # -- reading ---------------------------------------------------------------------------

    def _read_file(self) -> tuple[bytes | None, _Sig | None]:
        for _ in range(5):  # a stable read: the file did not change while we read it
            try:
                with open(self._path, "rb") as f:
                    before = _sig_of(os.fstat(f.fileno()))
                    raw = f.read()
            except (FileNotFoundError, NotADirectoryError):
                return None, None
            if _stat_sig(self._path) == before:
                break
        return raw, before

    def _read_and_build(self, force: bool = False) -> _Outcome:
        try:
            raw, sig = self._read_file()
        except OSError as e:  # permissions, a directory in the way, ...
            problem = self._problem(None, "", f"cannot read the file: {e.strerror or e}")
            return _Outcome(_stat_sig(self._path), f"error:{e}", _Built([problem]))
        if raw is None:
            return _Outcome(None)
        raw_digest = hashlib.sha256(raw).hexdigest()
        if raw_digest == self._last_raw_digest and not force:
            return _Outcome(sig, raw_digest)
        return _Outcome(sig, raw_digest, self._build(raw, raw_digest))

    def _problem(self, line: int | None, path: str, message: str) -> Problem:
        return Problem(self._source, line, path, " ".join(message.split()))

    def _build(self, raw: bytes, raw_digest: str | None = None) -> _Built:
        """Read ``raw`` (the file's bytes; ``raw_digest``: their sha256 when the caller has it)
        into collections, validated (one build at a time, whatever the thread)."""
        with self._build_lock:
            return self._build_unlocked(raw, raw_digest)

    def _build_unlocked(self, raw: bytes, raw_digest: str | None) -> _Built:
        if not self._is_json and not _END_FLAG.search(raw[-10:]):
            lines = raw.count(b"\n") + (0 if raw.endswith(b"\n") else 1)
            return _Built([self._problem(lines or None, "", "missing valid end flag in file")])
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line = raw[: e.start].count(b"\n") + 1
            return _Built([self._problem(line, "", f"not valid UTF-8: {e.reason}")])
        try:
            substituted = substitute_env(text, self._env)
            unchanged, text = substituted is text, substituted
        except EnvSubstError as e:
            m = re.search(r"^(.*) \(line (\d+)\)$", str(e))
            if m is None:
                return _Built([self._problem(None, "", str(e))])
            return _Built([self._problem(int(m.group(2)), "", m.group(1))])
        with _gc_paused():
            root: Any = None
            try:
                parsed: Any = None if self._is_json else self._served_lines.parse(text)
                if parsed is not None:
                    doc = parsed
                elif self._is_json:
                    doc = json.loads(text)
                else:
                    loader = _Loader(text)
                    try:
                        root = loader.get_single_node()
                        doc = None if root is None else loader.construct_document(root)
                    finally:
                        loader.dispose()
            except json.JSONDecodeError as e:
                return _Built([self._problem(e.lineno, "", f"invalid JSON: {e.msg}")])
            except yaml.YAMLError as e:
                return _Built([self._yaml_problem(e)])
            problems, collections, plugins = self._normalize(doc)
        if not problems and self._validate is not None:
            candidate = Snapshot("candidate", freeze_collections(collections), plugins)
            try:
                problems = list(self._validate(candidate))
            except Exception as e:  # a validator bug must not take the watcher down
                self._log.exception("%s: validator raised", self._source)
                problems = [self._problem(None, "", f"validation failed: {e!r}")]
        try:
            if problems:
                return _Built(self._locate(problems, text, root))
            if parsed is not None:  # unchanged lines are unchanged items: hash the text
                if unchanged and raw_digest is not None:  # no ${{VAR}}: the bytes say it all
                    digest = "lines:" + raw_digest
                else:
                    blob = text.encode("utf-8", "surrogatepass")
                    digest = "lines:" + hashlib.sha256(blob).hexdigest()
            else:
                digest = self._digest(collections, plugins, text)
            return _Built([], collections, plugins, digest)
        finally:
            _dismantle(root)

    def _digest(
        self, collections: Mapping[str, Any], plugins: tuple[str, ...] | None, text: str
    ) -> str:
        memo: dict[int, tuple[Any, bytes]] = {}
        digest = _digest(collections, plugins, text, self._blobs, memo)
        self._blobs = memo
        return digest

    def _yaml_problem(self, e: yaml.YAMLError) -> Problem:
        if isinstance(e, yaml.MarkedYAMLError):
            mark = e.problem_mark or e.context_mark
            parts = [p for p in (e.context, e.problem) if p]
            msg = "invalid YAML: " + (", ".join(parts) or "invalid document")
            if mark is not None:
                return self._problem(mark.line + 1, "", f"{msg} (column {mark.column + 1})")
            return self._problem(None, "", msg)
        return self._problem(None, "", f"invalid YAML: {e}")

    def _normalize(
        self, doc: Any
    ) -> tuple[list[Problem], dict[str, list[dict[str, Any]]], tuple[str, ...] | None]:
        """Structure checks and id normalisation (``arr_<n>``, consumers by username, str ids)."""
        problems: list[Problem] = []
        out: dict[str, list[dict[str, Any]]] = {}
        plugins: tuple[str, ...] | None = None
        memo: dict[int, Any] = {}
        if doc is None:
            doc = {}
        if not isinstance(doc, dict):
            kind = type(doc).__name__
            msg = f"the top level must be a mapping of collections, got {kind}"
            return [self._problem(1, "", msg)], out, None
        for key, value in doc.items():
            name = str(key)
            if name == "plugins":
                plugins = self._plugin_names(value, problems)
            elif name in COLLECTIONS:
                out[name] = self._collection(name, value, problems, memo)
            elif name.endswith("_conf_version") and name[: -len("_conf_version")] in COLLECTIONS:
                continue  # emitted by GET /apisix/admin/configs; harmless in a file
            else:
                expected = ", ".join(_TOP_LEVEL)
                problems.append(
                    self._problem(None, name, f"unknown key; expected one of {expected}")
                )
        self._normalised = memo
        return problems, out, plugins

    def _collection(
        self,
        name: str,
        value: Any,
        problems: list[Problem],
        memo: dict[int, Any],
    ) -> list[dict[str, Any]]:
        """The items of one collection, normalised; an item object normalised last time (an
        unchanged line) gives back the same normalised object."""
        if value is None:
            return []
        if not isinstance(value, list):
            problems.append(self._problem(None, name, f"must be a list, got {_kind(value)}"))
            return []
        # normalised forms of the item objects seen last time (C-level lookups); only the
        # others go through _normalise_item
        ids = list(map(id, value))
        hits: list[Any] = list(map(self._normalised.get, ids))
        fresh = list(compress(range(len(value)), map(operator.is_, hits, repeat(None))))
        for i in fresh:
            hits[i] = self._normalise_item(name, i, value[i], problems)
        items: list[dict[str, Any]] = [h[1] for h in hits if h is not _DROPPED]
        memo.update(zip(ids, hits, strict=True))
        for i in fresh:  # index-dependent (arr_<n>), with problems, or not a mapping
            if hits[i] is _DROPPED or not hits[i][2]:
                memo.pop(ids[i], None)
        if name == "consumers":
            keys = [it["username"] if "username" in it else it["id"] for it in items]
        else:
            keys = list(map(operator.itemgetter("id"), items))
        if len(set(keys)) != len(keys):
            self._duplicates(name, value, items, keys, problems)
        return items

    def _normalise_item(
        self, name: str, i: int, raw_item: Any, problems: list[Problem]
    ) -> tuple[Any, dict[str, Any], bool] | object:
        """``(raw item, normalised item, reusable)``, or ``_DROPPED`` when it is not a
        mapping. ``reusable``: its normalised form does not depend on its position and it
        had no problem."""
        where = f"{name}[{i}]"
        n_problems = len(problems)
        if not isinstance(raw_item, dict):
            problems.append(self._problem(None, where, f"must be a mapping, got {_kind(raw_item)}"))
            return _DROPPED
        if type(raw_item.get("username" if name == "consumers" else "id")) is str:
            # already in normal form (every line the store writes): no copy per item
            return (raw_item, raw_item, True)
        item = dict(raw_item)  # YAML aliases may share one dict between items
        if name == "consumers" and "username" in item:
            if not isinstance(item["username"], str):
                problems.append(self._problem(None, f"{where}.username", "must be a string"))
                item["username"] = str(item["username"])
        elif "id" in item:
            key = item["id"]
            if isinstance(key, bool) or not isinstance(key, str | int):
                msg = f"must be a string or an integer, got {_kind(key)}"
                problems.append(self._problem(None, f"{where}.id", msg))
            item["id"] = str(key)
        else:
            if name == "plugin_metadata":
                problems.append(self._problem(None, where, "needs an id (the plugin name)"))
            item["id"] = f"arr_{i + 1}"
        reusable = len(problems) == n_problems and (
            "id" in raw_item or (name == "consumers" and "username" in raw_item)
        )
        return (raw_item, item, reusable)

    def _duplicates(
        self,
        name: str,
        value: list[Any],
        items: list[dict[str, Any]],
        keys: list[str],
        problems: list[Problem],
    ) -> None:
        """One problem per item whose key an earlier item already has."""
        positions = [i for i, raw in enumerate(value) if isinstance(raw, dict)]
        seen: dict[str, int] = {}
        for pos, item, key in zip(positions, items, keys, strict=True):
            key_field = "username" if name == "consumers" and "username" in item else "id"
            if key in seen:
                msg = f"duplicate {key_field} {key!r} (first at {name}[{seen[key]}])"
                problems.append(self._problem(None, f"{name}[{pos}].{key_field}", msg))
            else:
                seen[key] = pos

    def _plugin_names(self, value: Any, problems: list[Problem]) -> tuple[str, ...] | None:
        if value is None:
            return None
        if not isinstance(value, list):
            problems.append(self._problem(None, "plugins", f"must be a list, got {_kind(value)}"))
            return None
        names: list[str] = []
        for i, entry in enumerate(value):
            if isinstance(entry, str):
                names.append(entry)
            elif isinstance(entry, dict) and isinstance(entry.get("name"), str):
                if not entry.get("stream"):
                    names.append(entry["name"])
            else:
                msg = "must be {name: <plugin>, stream?: bool} or a plugin name"
                problems.append(self._problem(None, f"plugins[{i}]", msg))
        return tuple(names)

    def _locate(self, problems: list[Problem], text: str, root: Any) -> list[Problem]:
        """Fill in the source and the line of each problem's path."""
        if root is None and any(p.line is None and p.path for p in problems):
            with contextlib.suppress(yaml.YAMLError), _gc_paused():
                root = yaml.compose(text, Loader=_Loader)  # JSON is (nearly) YAML
        located = []
        for p in problems:
            line = p.line if p.line is not None else _line_of(root, p.path)
            located.append(replace(p, source=p.source or self._source, line=line))
        return located

    # -- applying --------------------------------------------------------------------------

    def _apply(self, outcome: _Outcome, initial: bool = False) -> None:
        self._last_sig = outcome.sig
        if outcome.raw_digest is None:
            if not self._missing_logged:
                keep = "" if initial else "; keeping the last good config"
                self._log.warning("%s: file not found%s", self._source, keep)
                self._missing_logged = True
            self._last_raw_digest = None
            return
        self._missing_logged = False
        built = outcome.built
        if built is None or outcome.raw_digest == self._last_raw_digest:  # same bytes as before
            return
        self._last_raw_digest = outcome.raw_digest
        if built.problems:
            for problem in built.problems:
                self._log.error("%s", str(problem).replace("\n", " "))
            serving = self._current.version if self._current else "an empty config"
            self._log.error(
                "%s: config refused (%d problem%s); still serving %s",
                self._source, len(built.problems), "" if len(built.problems) == 1 else "s", serving,
            )  # fmt: skip
            return
        if built.digest == self._current_digest:
            self._log.info("%s: content unchanged, nothing to apply", self._source)
            return
        self._commit(built)

    def _commit(self, built: _Built) -> None:
        previous = (self._current, self._current_digest)
        self._generation += 1
        snapshot = Snapshot(
            f"yaml:{self._generation:08d}:{built.digest[:12]}",
            freeze_collections(built.collections),
            built.plugins,
        )
        self._current, self._current_digest = snapshot, built.digest
        counts = ", ".join(f"{len(v)} {k}" for k, v in built.collections.items() if v)
        self._log.info("%s: applied %s (%s)", self._source, snapshot.version, counts or "empty")
        if self._on_change is None:
            return
        try:
            self._on_change(snapshot)
        except Exception:
            self._log.exception("%s: applying %s failed; kept the previous config",
                                self._source, snapshot.version)  # fmt: skip
            self._current, self._current_digest = previous

    # -- watching --------------------------------------------------------------------------

    async def _reload_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                async with self._lock:
                    if _stat_sig(self._path) == self._last_sig:
                        continue  # what is there was applied already (this store's own write)
                    self._apply(await asyncio.to_thread(self._read_and_build))
            except Exception:
                self._log.exception("%s: reload failed", self._source)

    # -- writing ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the writers' exclusive ``flock`` on ``<file>.lock`` (blocking; not re-entrant,
        so never call :meth:`write` inside it)."""
        lock_fd = os.open(f"{self._abs}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(lock_fd)  # releases the flock

    def read_built(self) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]] | None:
        """The file now: (document as written, built collections), or ``None`` when it is
        missing, empty-but-invalid or refused. Blocking; call it inside :meth:`locked` to get a
        view no writer changes meanwhile."""
        try:
            raw, _ = self._read_file()
        except OSError:
            return None
        if raw is None:
            return None
        if not raw.strip():
            return {}, {}
        built = self._build(raw)
        if built.problems:
            return None
        try:
            doc = self._document_for_write(raw)
        except ConfigRejected:
            return None
        return doc, built.collections

    def _write_locked(
        self,
        mutate: Callable[[dict[str, Any]], dict[str, Any]],
        before_replace: BeforeReplace | None = None,
    ) -> tuple[_Sig, str, _Built]:
        with self.locked():
            doc = self._document_now()
            result = mutate(doc)
            new_doc = doc if result is None else result
            try:
                if self._is_json:
                    data = (json.dumps(new_doc, indent=2, ensure_ascii=False) + "\n").encode()
                else:
                    text = self._written_lines.emit(new_doc)
                    if text is None:
                        text = yaml.dump(new_doc, Dumper=_Dumper, sort_keys=False,
                                         allow_unicode=True, default_flow_style=False)  # fmt: skip
                    data = (text + "#END\n").encode()
            except (yaml.YAMLError, TypeError, ValueError) as e:
                raise ConfigRejected([self._problem(None, "", f"cannot serialise: {e}")]) from e
            data_digest = hashlib.sha256(data).hexdigest()
            built = self._build(data, data_digest)
            if built.problems:
                raise ConfigRejected(built.problems)
            if before_replace is not None:
                before_replace(new_doc, built.collections)
            _atomic_write(self._abs, data)
            sig = _stat_sig(self._path)
            assert sig is not None
            self._written = (sig, new_doc)
            return sig, data_digest, built

    @property
    def written_sig(self) -> _Sig | None:
        """The file's stat signature right after the last :meth:`write` of this object (or its
        last read for one), ``None`` before any."""
        return None if self._written is None else self._written[0]

    def document(self) -> dict[str, Any]:
        """The file's document as written (ids as in the file, ``${{VAR}}`` not substituted),
        as a copy whose collection lists the caller may change (treat the items as read-only).
        Call holding :meth:`locked`; raises :class:`ConfigRejected` for a file that cannot be
        read back."""
        return self._document_now()

    def _document_now(self) -> dict[str, Any]:
        """A private copy of the file's document as written (call holding the lock): the one
        of our last write when the file is still that one, else read from the file."""
        written = self._written
        if written is not None and _stat_sig(self._path) == written[0]:
            doc = written[1]
        else:
            raw, sig = self._read_file()
            doc = self._document_for_write(raw)
            if sig is not None:
                self._written = (sig, doc)
        # mutators edit the collections' lists in place: copy those (items are replaced,
        # never changed in place)
        return {k: list(v) if isinstance(v, list) else v for k, v in doc.items()}

    def _document_for_write(self, raw: bytes | None) -> dict[str, Any]:
        """The file as written (no env substitution), refusing one we could not round-trip."""
        if raw is None or not raw.strip():
            return {}
        if not self._is_json and not _END_FLAG.search(raw[-10:]):
            raise ConfigRejected([self._problem(None, "", "missing valid end flag in file")])
        try:
            text = raw.decode("utf-8-sig")
            lines = None if self._is_json else self._written_lines.parse(text)
            if lines is not None:
                doc = lines
            else:
                doc = json.loads(text) if self._is_json else yaml.load(text, Loader=_Loader)
        except json.JSONDecodeError as e:
            raise ConfigRejected([self._problem(e.lineno, "", f"invalid JSON: {e.msg}")]) from e
        except yaml.YAMLError as e:
            raise ConfigRejected([self._yaml_problem(e)]) from e
        except UnicodeDecodeError as e:
            raise ConfigRejected([self._problem(None, "", "not valid UTF-8")]) from e
        if doc is None:
            return {}
        if not isinstance(doc, dict):
            raise ConfigRejected([self._problem(1, "", "the top level must be a mapping")])
        return doc


# -- helpers -------------------------------------------------------------------------------

_gc_mutex = threading.Lock()
_gc_depth = 0
_gc_was_enabled = False


_FREEZE_AFTER = 100_000  # young objects; ~2k routes


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while building a config tree (2-3x faster parsing).

    A big tree (10k routes are ~1M objects) would then be scanned in one young-generation
    collection as soon as the GC is back on: ~0.2-0.5 s holding the GIL, i.e. an event loop
    stall. So after a big build the young objects are moved to the permanent generation
    (``gc.freeze()``): refcounting still frees them, the cyclic GC no longer scans them. The
    price: cyclic garbage that happened to exist at that moment is never collected (unless
    someone calls ``gc.unfreeze()``) -- acceptable for a reload, not for every request."""
    global _gc_depth, _gc_was_enabled
    with _gc_mutex:
        if _gc_depth == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_depth += 1
    try:
        yield
    finally:
        with _gc_mutex:
            _gc_depth -= 1
            if _gc_depth == 0 and _gc_was_enabled:
                if gc.get_count()[0] > _FREEZE_AFTER:
                    gc.freeze()
                gc.enable()


def _sig_of(st: os.stat_result) -> _Sig:
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)


def _stat_sig(path: Path) -> _Sig | None:
    try:
        return _sig_of(os.stat(path))
    except OSError:
        return None


def _kind(value: Any) -> str:
    names = {dict: "a mapping", list: "a list", str: "a string", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _digest(
    collections: Mapping[str, Any],
    plugins: tuple[str, ...] | None,
    text: str,
    blobs: dict[int, tuple[Any, bytes]] | None = None,
    memo: dict[int, tuple[Any, bytes]] | None = None,
) -> str:
    """A hash of the effective content (comments and formatting do not count).

    Item by item, so that no single C call holds the GIL for long on a big config. ``blobs``:
    the serialised items of the last call (reused for the same objects); ``memo`` receives
    this call's."""
    h = hashlib.sha256(repr(plugins).encode())
    old = blobs or {}
    try:
        for name in COLLECTIONS:
            h.update(b"\0" + name.encode())
            for item in collections.get(name, ()):
                hit = old.get(id(item))
                if hit is not None and hit[0] is item:
                    blob = hit[1]
                else:
                    blob = json.dumps(item, sort_keys=True, default=str,
                                      separators=(",", ":")).encode()  # fmt: skip
                if memo is not None:
                    memo[id(item)] = (item, blob)
                h.update(b"\n" + blob)
    except (TypeError, ValueError):  # mixed-type keys or a recursive alias
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return h.hexdigest()


def _dismantle(root: Any) -> None:
    """Free a big YAML node tree item by item: letting it go in one dealloc cascade holds the
    GIL (stalling the event loop) for ~0.1 s per 10k routes."""
    if isinstance(root, yaml.MappingNode):
        for _, value in root.value:
            if isinstance(value, yaml.SequenceNode):
                items = value.value
                while items:
                    items.pop()


def _line_of(root: Any, path: str) -> int | None:
    """1-based line of the node at ``path`` (``routes[0].upstream.nodes``), else its nearest
    existing parent's; for a mapping entry, the line of its key."""
    if root is None or not path:
        return None
    node, line, pos = root, None, 0
    while pos < len(path):
        m = _PATH_TOKEN.match(path, pos)
        if m is None or m.end() == pos:
            break
        pos = m.end()
        index, dq, sq, bare = m.groups()
        if dq is not None:
            token = re.sub(r"\\(.)", r"\1", dq)
        else:
            token = next(t for t in (index, sq, bare) if t is not None)
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.value == token:
                    line, node = key_node.start_mark.line + 1, value_node
                    break
            else:
                break
        elif isinstance(node, yaml.SequenceNode) and index is not None:
            i = int(index)
            if not -len(node.value) <= i < len(node.value):
                break
            node = node.value[i]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _atomic_write(path: str, data: bytes) -> None:
    directory, name = os.path.split(path)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory or ".", os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
