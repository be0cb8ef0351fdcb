"""The nginx-style access log: one line per request, written off the event loop.

The format is compiled once into literal and variable parts. Lines go through a queue to a
writer thread that batches them, so a slow disk never stalls request handling, and reopens
the file when it was rotated away (logrotate's move-and-create style).
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger("sixgate.accesslog")

_VAR = re.compile(r"\$(?:\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))")
_STOP = object()


def compile_format(fmt: str) -> list[tuple[str, str | None]]:
    """Split an nginx ``log_format`` into ``(literal, variable name or None)`` pairs.

    ``'$remote_addr - [$time_local]'`` → ``[("", "remote_addr"), (" - [", "time_local"),
    ("]", None)]``.
    """
    parts: list[tuple[str, str | None]] = []
    pos = 0
    for m in _VAR.finditer(fmt):
        parts.append((fmt[pos : m.start()], m.group(1) or m.group(2)))
        pos = m.end()
    parts.append((fmt[pos:], None))
    return parts


class AccessLog:
    """Formats and queues access log lines; a daemon thread writes them."""

    def __init__(self, path: Path, fmt: str, reopen_check: float = 1.0) -> None:
        self.path = path
        self._parts = compile_format(fmt)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._reopen_check = reopen_check
        path.parent.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="sixgate-access-log", daemon=True)
        self._thread.start()

    def format(self, ctx: Any) -> str:
        var = ctx.var
        out = []
        for literal, name in self._parts:
            out.append(literal)
            if name is not None:
                value = var[name]
                out.append("-" if value is None or value == "" else str(value))
        return "".join(out)

    def write(self, ctx: Any) -> None:
        try:
            line = self.format(ctx)
        except Exception:
            log.exception("cannot format the access log line")
            return
        self._queue.put(line)

    def close(self, timeout: float = 2.0) -> None:
        """Flush what is queued and stop the writer."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _open(self) -> tuple[int, int]:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        return fd, os.fstat(fd).st_ino

    def _run(self) -> None:
        fd, inode = self._open()
        try:
            while True:
                try:
                    item = self._queue.get(timeout=self._reopen_check)
                except queue.Empty:
                    fd, inode = self._maybe_reopen(fd, inode)
                    continue
                batch = []
                stop = False
                while True:
                    if item is _STOP:
                        stop = True
                        break
                    batch.append(item)
                    if len(batch) >= 512:
                        break
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                if batch:
                    fd, inode = self._maybe_reopen(fd, inode)
                    data = ("\n".join(batch) + "\n").encode("utf-8", "replace")
                    # O_APPEND writes of one buffer land whole, even with several workers.
                    os.write(fd, data)
                if stop:
                    return
        finally:
            os.close(fd)

    def _maybe_reopen(self, fd: int, inode: int) -> tuple[int, int]:
        try:
            current = os.stat(self.path).st_ino
        except FileNotFoundError:
            current = -1
        if current == inode:
            return fd, inode
        os.close(fd)
        return self._open()
