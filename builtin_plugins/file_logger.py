"""file-logger (APISIX priority 399, access + body_filter + log): one JSON line per request.

* ``access`` reads the request body when ``include_req_body`` (+ ``include_req_body_expr``)
  applies or the log format uses ``$request_body``; ``body_filter`` keeps up to
  ``max_resp_body_bytes`` of the response body when ``include_resp_body`` (+ ``_expr``)
  applies; neither changes the request or the response.
* ``log`` builds the entry (``log_format`` of the conf, else of the plugin metadata, else the
  default entry of spec §9.2, plus ``log_format_extra``; see :mod:`plugin_sdk.log_entry`),
  unless ``match`` is set and none of its expressions matches, and appends it with ``\\n`` to
  ``path`` (the conf's, else the metadata's; relative paths are taken from the gateway's
  working directory).

Writing. The ``log`` hook only encodes the line and hands it to the writer of its path; it
never touches the disk, so a slow or stuck disk cannot stall the event loop. One writer per
path and worker process, shared by every route (and every plugin generation) that logs
there, lives in the kernel-owned ``shared_dict("file-logger")``. Its thread drains the queue
in batches and appends each batch of *complete* lines with one ``os.write`` on an
``O_APPEND`` descriptor: the kernel moves the file offset and writes under the inode lock, so
lines from several worker processes never interleave and never land half-written (a line is
never split across two ``write`` calls, unlike a buffered file object flushing at 8 KiB; only
a short write -- a full disk -- is completed by a second call). A dedicated thread per file,
rather than ``run_in_executor`` per line, keeps the lines in order, batches them (one system
call for many requests under load) and costs nothing while idle (it blocks on its queue).
Before a batch, at most once per ``REOPEN_CHECK_INTERVAL`` seconds, it compares the path's
inode with the open one (one ``stat``): a file moved away or deleted by logrotate is
reopened (created) at the path, so the next lines go to the new file. Lines arriving while
more than ``MAX_PENDING_BYTES`` wait (a dead disk) are dropped, with an error in the log,
rather than growing memory without bound. ``destroy()`` (plugin reload, gateway stop) and
process exit flush what is queued and close the files; the next line reopens them. A forked
worker drops the writers it inherited (their threads stayed in the parent) and opens its own.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from plugin_sdk import (
    ConfCache,
    ExprError,
    compile_expr,
    hookimpl,
    plugin_metadata,
    shared_dict,
)
from plugin_sdk.log_entry import (
    LOGGER_PROPERTIES,
    METADATA_PROPERTIES,
    check_log_conf,
    collect_response_body,
    encode_entry,
    get_log_entry,
    read_request_body,
)

name = "file-logger"
version = "0.1"
priority = 399

schema: dict[str, Any] = {
    "type": "object",
    "properties": {
        "path": {"type": "string"},
        **LOGGER_PROPERTIES,
        "match": {"type": "array", "maxItems": 20, "items": {"type": "array"}},
    },
}

metadata_schema: dict[str, Any] = {
    "type": "object",
    "properties": {"path": {"type": "string"}, **METADATA_PROPERTIES},
}

PATH_NOT_SET = 'property "path" is not set in either the plugin conf or the metadata'

REOPEN_CHECK_INTERVAL = 1.0
"""Seconds between two checks of a log file's inode (a writer reads it when created)."""
MAX_PENDING_BYTES = 64 * 1024 * 1024
"""Bytes of lines a writer may hold while its disk is slow; beyond, lines are dropped."""
BATCH_BYTES = 1024 * 1024
"""Most bytes one ``os.write`` carries (always whole lines; a bigger line goes alone)."""
CLOSE_TIMEOUT = 5.0
"""Seconds ``destroy()`` waits for each writer to write what it holds."""

_logger = logging.getLogger("sixgate.plugin.file-logger")

_UNSET = object()


def check_schema(
    conf: dict[str, Any], schema_type: str = "route", metadata: Any = _UNSET
) -> str | None:
    """Beyond the JSON schema: ``match`` and the ``_expr`` fields must compile, and a path
    must be set here or in the live plugin metadata (``metadata`` overrides the live one)."""
    if schema_type == "metadata":
        return None
    for rule in conf.get("match") or ():
        try:
            compile_expr(rule)
        except ExprError as exc:
            return f"failed to validate the 'match' expression: {exc}"
    err = check_log_conf(conf)
    if err is not None:
        return err
    if conf.get("path") is None:
        if metadata is _UNSET:
            metadata = plugin_metadata(name)
        meta_path = metadata.get("path") if isinstance(metadata, Mapping) else None
        if meta_path is None:
            return PATH_NOT_SET
    return None


# -- the compiled conf --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Compiled:
    path: str | None
    """The conf's path, made absolute once."""
    match: tuple[Any, ...] | None


def _compile(conf: dict[str, Any]) -> _Compiled:
    path = conf.get("path")
    rules = conf.get("match")
    match = None
    if rules is not None:
        compiled = []
        for rule in rules:
            try:
                compiled.append(compile_expr(rule))
            except ExprError:
                continue  # refused by check_schema; never matches here
        match = tuple(compiled)
    return _Compiled(os.path.abspath(path) if path is not None else None, match)


_compiled: ConfCache[_Compiled] = ConfCache(_compile)


def _matches(match: tuple[Any, ...], var: Any) -> bool:
    # OR over the expressions; an empty list matches nothing (APISIX's loop leaves nil).
    for rule in match:
        try:
            if rule(var):
                return True
        except Exception:
            continue
    return False


# -- writers ------------------------------------------------------------------------------------

_STOP = object()


class _Writer:
    """Appends whole lines to one file from its own thread (see the module docstring).

    Only ``write``, ``flush``, ``close`` and ``closed`` are used from outside: writers
    outlive the plugin module that made them (they sit in a kernel shared dict), so a newer
    generation of this module talks to an older writer through these names only.
    """

    def __init__(self, path: str, check_interval: float, max_pending: int) -> None:
        self.path = path
        self.closed = False
        self._check_interval = check_interval
        self._max_pending = max_pending
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending = 0
        self._dropped = 0
        self._thread: threading.Thread | None = None
        self._fd: int | None = None
        self._inode: tuple[int, int] | None = None
        self._checked = 0.0
        self._last_error = 0.0

    # -- called from the event loop ---------------------------------------------------------
    def write(self, line: bytes) -> bool:
        """Queue one complete line; ``False`` when this writer is closed (use another)."""
        with self._lock:
            if self.closed:
                return False
            if self._pending + len(line) > self._max_pending:
                self._dropped += 1
                if self._dropped == 1:
                    _logger.error("file %s: more than %d bytes waiting for the disk; dropping "
                              "log lines", self.path, self._max_pending)
                return True
            self._pending += len(line)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="sixgate-file-logger", daemon=True
                )
                self._thread.start()
            self._queue.put(line)
        return True

    def flush(self, timeout: float = CLOSE_TIMEOUT) -> bool:
        """Wait until every line queued before this call is written (``False`` on timeout)."""
        with self._lock:
            if self._thread is None or self.closed:
                return True
            done = threading.Event()
            self._queue.put(done)
        return done.wait(timeout)

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Write what is queued, stop the thread and close the file."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            thread = self._thread
            if thread is not None:
                self._queue.put(_STOP)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # -- the writer thread ------------------------------------------------------------------
    def _run(self) -> None:
        q = self._queue
        try:
            while True:
                item = q.get()
                batch: list[bytes] = []
                size = 0
                events: list[threading.Event] = []
                stop = False
                while True:
                    if item is _STOP:
                        stop = True
                        break
                    if isinstance(item, threading.Event):
                        events.append(item)
                    else:
                        if batch and size + len(item) > BATCH_BYTES:
                            self._write(batch, size)
                            batch, size = [], 0
                        batch.append(item)
                        size += len(item)
                    try:
                        item = q.get_nowait()
                    except queue.Empty:
                        break
                if batch:
                    self._write(batch, size)
                for event in events:
                    event.set()
                if stop:
                    return
        finally:
            self._close_fd()

    def _write(self, batch: list[bytes], size: int) -> None:
        try:
            fd = self._current_fd()
            data = b"".join(batch)
            written = os.write(fd, data)
            while written < len(data):  # a short write (disk full, signal): finish the line
                written += os.write(fd, data[written:])
        except OSError as exc:
            self._close_fd()
            now = time.monotonic()
            if now - self._last_error >= 10.0:
                self._last_error = now
                _logger.error("failed to write file: %s, error info: %s", self.path, exc)
        finally:
            with self._lock:
                self._pending -= size
                dropped, self._dropped = self._dropped, 0
            if dropped:
                _logger.error("file %s: dropped %d log line(s) while the disk was slow",
                          self.path, dropped)

    def _current_fd(self) -> int:
        fd = self._fd
        now = time.monotonic()
        if fd is not None and now - self._checked < self._check_interval:
            return fd
        self._checked = now
        if fd is not None:
            try:
                st = os.stat(self.path)
                current: tuple[int, int] | None = (st.st_dev, st.st_ino)
            except OSError:
                current = None
            if current == self._inode:
                return fd
            _logger.info("log file %s was moved or removed; reopening it", self.path)
            self._close_fd()
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        st = os.fstat(fd)
        self._fd, self._inode = fd, (st.st_dev, st.st_ino)
        return fd

    def _close_fd(self) -> None:
        fd, self._fd, self._inode = self._fd, None, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


# The registry: plain builtins only (a dict and a lock) in a kernel-owned shared dict, so that
# every plugin generation in this process finds the same writers.
_state = shared_dict("file-logger")


def _registry() -> tuple[dict[str, Any], threading.Lock]:
    reg = _state.get("registry")
    if reg is None:
        _state.add("registry", ({}, threading.Lock()))
        reg = _state.get("registry")
        if _state.add("process-hooks", True):
            atexit.register(_close_all_registered, _state)
            os.register_at_fork(after_in_child=lambda: _forget_inherited(_state))
    writers, lock = reg
    return writers, lock


def _forget_inherited(state: Any) -> None:
    """In a forked child: the parent's writer threads do not exist here, so its writers
    are dropped (their descriptors closed) and the child opens its own on first use."""
    reg = state.get("registry")
    state.set("registry", ({}, threading.Lock()))
    if reg is None:
        return
    for w in reg[0].values():
        fd = getattr(w, "_fd", None)
        if isinstance(fd, int):
            with contextlib.suppress(OSError):
                os.close(fd)


def _writer(path: str) -> Any:
    writers, lock = _registry()
    w = writers.get(path)
    if w is not None and not w.closed:
        return w
    with lock:
        w = writers.get(path)
        if w is None or w.closed:
            w = writers[path] = _Writer(path, REOPEN_CHECK_INTERVAL, MAX_PENDING_BYTES)
        return w


def write_line(path: str, line: bytes) -> None:
    """Append ``line`` (one complete line, ``\\n`` included) to ``path`` through its
    writer, without blocking."""
    for _ in range(3):  # a writer closed by a concurrent destroy(): take the next one
        if _writer(path).write(line):
            return


def flush(timeout: float = CLOSE_TIMEOUT) -> bool:
    """Wait until every line queued so far in this process is on disk (tests, tools)."""
    writers, lock = _registry()
    with lock:
        current = list(writers.values())
    return all(w.flush(timeout) for w in current)


def _close_all_registered(state: Any, timeout: float = CLOSE_TIMEOUT) -> None:
    reg = state.get("registry")
    if reg is None:
        return
    writers, lock = reg
    with lock:
        current = list(writers.values())
        writers.clear()
    for w in current:
        w.close(timeout)


def destroy() -> None:
    """Flush and close every writer (plugin reload or gateway stop); the next line reopens
    its file."""
    _close_all_registered(_state)


# -- hooks --------------------------------------------------------------------------------------


@hookimpl
async def access(ctx: Any, conf: dict[str, Any]) -> None:
    await read_request_body(ctx, conf)


@hookimpl
def body_filter(ctx: Any, conf: dict[str, Any]) -> None:
    collect_response_body(ctx, conf)


@hookimpl
def log(ctx: Any, conf: dict[str, Any]) -> None:
    c = _compiled(conf)
    if c.match is not None and not _matches(c.match, ctx.var):
        return
    path = c.path
    if path is None:
        meta = ctx.plugin_metadata
        meta_path = meta.get("path") if meta else None
        if meta_path is None:
            ctx.log.error("%s", PATH_NOT_SET)
            return
        path = os.path.abspath(meta_path)
    entry = get_log_entry(ctx, conf)
    write_line(path, encode_entry(entry) + b"\n")
