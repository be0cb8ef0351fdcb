"""Watch plugin sources and ask for a reload when one changes (watchdog + polling fallback).

Watched: every ``.py`` file in the ``apisix.plugin_dirs`` directories, and the source of every
loaded entry-point plugin that is not installed in a site directory (an editable pack, the
built-ins of a source checkout). For a plugin that is a package, every ``.py`` file of its
directory is watched.

watchdog events are filtered to those paths and debounced (``debounce`` s after the last event,
at most ~4x that after the first of a burst). A poll every ``poll_interval`` s compares file
signatures (mtime, size) and catches what watchdog misses (network file systems, no inotify);
when watchdog cannot start, the poll is the only mechanism. A change fires ``on_change`` only
when the signature of the watched files differs from the one of the last reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sysconfig
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("sixgate.plugins")

Signature = dict[str, tuple[int, int]]


def _installed_roots() -> tuple[str, ...]:
    roots = {sysconfig.get_paths().get(k) for k in ("purelib", "platlib")}
    return tuple(os.path.abspath(r) + os.sep for r in roots if r)


_INSTALLED = _installed_roots()


def is_installed_file(path: str) -> bool:
    """True for files of a regular (non-editable) install: not watched."""
    path = os.path.abspath(path)
    return path.startswith(_INSTALLED) or f"{os.sep}site-packages{os.sep}" in path or (
        f"{os.sep}dist-packages{os.sep}" in path
    )


@dataclass
class WatchTargets:
    dirs: set[str] = field(default_factory=set)
    """Directories whose ``.py`` files are all watched (plugin_dirs, package plugins)."""
    files: set[str] = field(default_factory=set)
    """Single files (module plugins from entry points)."""

    def signature(self) -> Signature:
        sig: Signature = {}
        paths: set[str] = set(self.files)
        for d in self.dirs:
            with contextlib.suppress(OSError):
                paths.update(
                    os.path.join(d, n) for n in os.listdir(d)
                    if n.endswith(".py") and not n.startswith(".")
                )
        for p in paths:
            try:
                st = os.stat(p)
            except OSError:
                continue
            sig[p] = (st.st_mtime_ns, st.st_size)
        return sig

    def matches(self, path: str) -> bool:
        path = os.path.abspath(path)
        if path in self.files:
            return True
        return path.endswith(".py") and os.path.dirname(path) in self.dirs

    def watch_dirs(self) -> set[str]:
        return set(self.dirs) | {os.path.dirname(f) for f in self.files}


def targets_for(plugin_dirs: Iterable[Path | str], files: Iterable[str | None]) -> WatchTargets:
    """Targets from the configured plugin directories and the loaded plugins' source files."""
    t = WatchTargets()
    for d in plugin_dirs:
        if os.path.isdir(d):
            t.dirs.add(os.path.abspath(d))
    for f in files:
        if not f or is_installed_file(f):
            continue
        f = os.path.abspath(f)
        if os.path.basename(f) == "__init__.py":
            t.dirs.add(os.path.dirname(f))
        else:
            t.files.add(f)
    return t


class PluginWatcher:
    """Calls ``on_change()`` on the event loop when a watched plugin source changed."""

    def __init__(
        self,
        targets: Callable[[], WatchTargets],
        on_change: Callable[[], Any],
        *,
        debounce: float = 0.05,
        poll_interval: float = 0.5,
        use_watchdog: bool = True,
    ) -> None:
        self._targets_fn = targets
        self._on_change = on_change
        self._debounce = debounce
        self._poll_interval = poll_interval
        self._use_watchdog = use_watchdog
        self._targets = WatchTargets()
        self._applied: Signature = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._observer: Any = None
        self._watched_dirs: dict[str, Any] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._first_event: float | None = None
        self._poll_task: asyncio.Task[None] | None = None
        self.watchdog_active = False

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._targets = self._targets_fn()
        self._applied = self._targets.signature()
        if self._use_watchdog:
            await asyncio.to_thread(self._start_observer)
        self._poll_task = asyncio.create_task(self._poll(), name="plugin-watch-poll")

    async def stop(self) -> None:
        if self._poll_task is not None:
            self._poll_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll_task
            self._poll_task = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            await asyncio.to_thread(observer.join, 2)

    def pending(self) -> bool:
        """A change is waiting for its reload (debounce running or not yet seen)."""
        return self._timer is not None or self._targets.signature() != self._applied

    def snapshot(self) -> Signature:
        """The watched files' signature now (taken before a reload reads them)."""
        return self._targets.signature()

    def retarget(self, before: Signature | None = None) -> None:
        """Re-read the targets after a reload. ``before`` (:meth:`snapshot` taken before the
        reload read the sources) is what that reload applied: a file written while it ran
        differs from it and triggers the next reload instead of being taken as applied."""
        self._targets = self._targets_fn()
        current = self._targets.signature()
        if before is not None:
            current = {path: before.get(path, sig) for path, sig in current.items()}
        self._applied = current
        if self._observer is not None:
            self._schedule_dirs()

    # -- watchdog -----------------------------------------------------------------------------
    def _start_observer(self) -> None:
        try:
            from watchdog.events import FileSystemEvent, FileSystemEventHandler
            from watchdog.observers import Observer

            watcher = self

            class Handler(FileSystemEventHandler):
                def on_any_event(self, event: FileSystemEvent) -> None:
                    if event.is_directory or event.event_type in ("opened", "closed_no_write"):
                        return
                    paths = (event.src_path, getattr(event, "dest_path", "") or "")
                    if any(p and watcher._targets.matches(os.fsdecode(p)) for p in paths):
                        watcher._notify_threadsafe()

            self._handler = Handler()
            self._observer = Observer()
            self._schedule_dirs()
            self._observer.start()
            self.watchdog_active = True
        except Exception as err:
            self._observer = None
            log.warning("cannot watch plugin sources (%s); polling every %ss instead", err,
                        self._poll_interval)

    def _schedule_dirs(self) -> None:
        observer = self._observer
        wanted = self._targets.watch_dirs()
        for d in list(self._watched_dirs):
            if d not in wanted:
                with contextlib.suppress(Exception):
                    observer.unschedule(self._watched_dirs.pop(d))
        for d in wanted:
            if d in self._watched_dirs or not os.path.isdir(d):
                continue
            try:
                self._watched_dirs[d] = observer.schedule(self._handler, d, recursive=False)
            except Exception as err:
                log.warning("cannot watch %s (%s); it is polled", d, err)

    def _notify_threadsafe(self) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._schedule)

    def _schedule(self) -> None:
        loop = self._loop
        if loop is None:
            return
        now = loop.time()
        if self._first_event is None:
            self._first_event = now
        if self._timer is not None:
            self._timer.cancel()
        delay = 0.0 if now - self._first_event >= 4 * self._debounce else self._debounce
        self._timer = loop.call_later(delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._first_event = None
        self._check()

    # -- polling ------------------------------------------------------------------------------
    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval)
            if self._timer is None:
                self._check()

    def _check(self) -> None:
        current = self._targets.signature()
        if current == self._applied:
            return
        self._applied = current
        try:
            self._on_change()
        except Exception:
            log.exception("plugin reload after a source change failed")
