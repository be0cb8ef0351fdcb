"""Watch plugin sources and ask for a reload when one changes (watchdog + polling fallback).

Watched: every ``.py`` file in the ``apisix.plugin_dirs`` directories, and the source of every
loaded entry-point plugin that is not installed in a site directory (an editable pack, the
built-ins of a source checkout). For a plugin that is a package, every ``.py`` file of its
directory is watched.

Events come from :class:`~kernel.filewatch.FileWatch` (watchdog filtered to those paths,
debounced: ``debounce`` s after the last event, at most ~4x that after the first of a burst; a
poll every ``poll_interval`` s). A change fires ``on_change`` only when the signature (mtime,
size) of the watched files differs from the one of the last reload.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sysconfig
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kernel.filewatch import FileWatch

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
        self._targets = WatchTargets()
        self._applied: Signature = {}
        self._watch = FileWatch(
            matches=lambda path: self._targets.matches(path),
            changed=lambda: self._targets.signature() != self._applied,
            on_change=self._check,
            debounce=debounce,
            max_wait=4 * debounce,
            poll_interval=poll_interval,
            use_watchdog=use_watchdog,
            what="plugin sources",
            logger=log,
        )

    @property
    def watchdog_active(self) -> bool:
        return self._watch.watchdog_active

    async def start(self) -> None:
        self._targets = self._targets_fn()
        self._applied = self._targets.signature()
        await self._watch.start(self._targets.watch_dirs())

    async def stop(self) -> None:
        await self._watch.stop()

    def pending(self) -> bool:
        """A change is waiting for its reload (debounce running or not yet seen)."""
        return self._watch.debouncing or self._targets.signature() != self._applied

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
        self._watch.watch(self._targets.watch_dirs())

    def _check(self) -> None:
        current = self._targets.signature()
        if current == self._applied:
            return
        self._applied = current
        try:
            self._on_change()
        except Exception:
            log.exception("plugin reload after a source change failed")
