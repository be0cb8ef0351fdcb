"""Watching files from the event loop: watchdog events, debounced, with a polling fallback.

Used by the standalone config file (:mod:`kernel.store.yaml_file`) and by the plugin sources
watcher (:mod:`kernel.plugins.watcher`). watchdog runs its observer thread; each event on a
path the owner cares about is bridged into the loop and debounced: ``on_change`` runs
``debounce`` seconds after the last event of a burst (at once when the burst has lasted
``max_wait``, or when a file was renamed into place: an atomic replace leaves nothing half
written to wait for). Independently, every ``poll_interval`` seconds ``changed()`` is asked, which
catches what watchdog misses (network file systems, no inotify) or everything when watchdog
cannot start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

_IGNORED_EVENTS = frozenset({"opened", "closed_no_write"})  # reads do not change a file


class FileWatch:
    """Calls ``on_change()`` on the event loop when a watched file may have changed.

    ``matches(path)``: whether an event on this absolute path concerns the owner;
    ``changed()``: the poll's check (cheap: a stat signature compare).
    """

    def __init__(
        self,
        *,
        matches: Callable[[str], bool],
        changed: Callable[[], bool],
        on_change: Callable[[], Any],
        debounce: float,
        max_wait: float,
        poll_interval: float,
        use_watchdog: bool = True,
        what: str = "files",
        logger: logging.Logger | None = None,
    ) -> None:
        self._matches = matches
        self._changed = changed
        self._on_change = on_change
        self._debounce = debounce
        self._max_wait = max_wait
        self._poll_interval = poll_interval
        self._use_watchdog = use_watchdog
        self._what = what
        self._log = logger or logging.getLogger("sixgate.filewatch")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._observer: Any = None
        self._handler: Any = None
        self._scheduled: dict[str, Any] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._burst_since: float | None = None
        self._poll_task: asyncio.Task[None] | None = None

    @property
    def watchdog_active(self) -> bool:
        return self._observer is not None

    @property
    def debouncing(self) -> bool:
        """An event was seen and ``on_change`` has not run for it yet."""
        return self._timer is not None

    async def start(self, dirs: Iterable[str]) -> None:
        """Watch ``dirs`` (not recursively) and start polling."""
        self._loop = asyncio.get_running_loop()
        if self._use_watchdog:
            await asyncio.to_thread(self._start_observer, set(dirs))
        self._poll_task = asyncio.create_task(self._poll(), name=f"watch {self._what}")

    def watch(self, dirs: Iterable[str]) -> None:
        """Watch exactly ``dirs`` from now on (directories that do not exist are polled)."""
        observer = self._observer
        if observer is None:
            return
        wanted = set(dirs)
        for d in [d for d in self._scheduled if d not in wanted]:
            with contextlib.suppress(Exception):
                observer.unschedule(self._scheduled.pop(d))
        for d in wanted:
            if d in self._scheduled or not os.path.isdir(d):
                continue
            try:
                self._scheduled[d] = observer.schedule(self._handler, d, recursive=False)
            except Exception as err:
                self._log.warning("cannot watch %s (%s); it is polled", d, err)

    async def stop(self) -> None:
        task, self._poll_task = self._poll_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            await asyncio.to_thread(observer.join, 5)
        self._loop = None

    # -- watchdog ---------------------------------------------------------------------------
    def _start_observer(self, dirs: set[str]) -> None:
        try:
            from watchdog.events import FileSystemEvent, FileSystemEventHandler
            from watchdog.observers import Observer

            watch = self

            class Handler(FileSystemEventHandler):
                def on_any_event(self, event: FileSystemEvent) -> None:
                    if event.is_directory or event.event_type in _IGNORED_EVENTS:
                        return
                    dest = getattr(event, "dest_path", "") or ""
                    if dest and watch._matches(os.path.abspath(os.fsdecode(dest))):
                        watch._notify_threadsafe(event.event_type == "moved")
                    elif watch._matches(os.path.abspath(os.fsdecode(event.src_path))):
                        watch._notify_threadsafe(False)

            self._handler = Handler()
            self._observer = Observer()
            self.watch(dirs)
            self._observer.start()
        except Exception as err:
            self._observer = None
            self._log.warning("cannot watch %s (%s); polling every %ss instead", self._what, err,
                              self._poll_interval)  # fmt: skip

    def _notify_threadsafe(self, complete: bool) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # loop closed
                loop.call_soon_threadsafe(self._schedule, complete)

    def _schedule(self, complete: bool = False) -> None:
        """Debounce an event; ``complete``: a file renamed into place (no need to wait)."""
        loop = self._loop
        if loop is None:
            return
        now = loop.time()
        if self._burst_since is None:
            self._burst_since = now
        if self._timer is not None:
            self._timer.cancel()
        waited = now - self._burst_since
        delay = 0.0 if complete or waited >= self._max_wait else self._debounce
        self._timer = loop.call_later(delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._burst_since = None
        self._run()

    def _run(self) -> None:
        try:
            self._on_change()
        except Exception:
            self._log.exception("reacting to a change of %s failed", self._what)

    # -- polling ----------------------------------------------------------------------------
    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval)
            if self._timer is None and self._changed():  # the interval already debounces
                self._run()
