"""A batch processor for logger plugins: queue entries per request, send them in batches.

What APISIX's ``apisix/utils/batch-processor.lua`` (and its manager) do, on the gateway's event
loop. A logger makes one :class:`BatchProcessor` per plugin conf (per worker process), pushes
one entry per request from its ``log`` hook, and gives it an ``async`` *send* function that
delivers one batch (an HTTP POST, a TCP write, ...)::

    import weakref

    from plugin_sdk import ConfCache, hookimpl
    from plugin_sdk.batch import BatchProcessor, PendingCounter, batch_properties, close_all
    from plugin_sdk.log_entry import encode_entry, get_log_entry

    schema = {"type": "object",
              "properties": {"uri": {"type": "string"}, **batch_properties("my logger")}}

    _pending = PendingCounter()     # one bound for all of this plugin's processors
    _made = weakref.WeakSet()       # to close them in destroy()

    def _make(conf):
        uri = conf["uri"]           # copy what send needs: never keep the conf itself alive
        async def send(entries, batch_max_size):
            ...                     # raise on failure (the batch is retried)
        processor = BatchProcessor.from_conf(send, conf, counter=_pending)
        _made.add(processor)
        return processor

    _processors = ConfCache(_make)

    @hookimpl
    def log(ctx, conf):
        _processors(conf).push(encode_entry(get_log_entry(ctx, conf)))

    def destroy():                  # plugin reload / gateway stop
        close_all(_made)
        _processors.clear()         # the module may live on: new processors next time

``builtin_plugins/http_logger.py`` is a complete example.

Semantics (APISIX's):

* :meth:`~BatchProcessor.push` never blocks and never awaits: the entry joins the buffer; a
  buffer of ``batch_max_size`` entries is sent at once; otherwise a timer sends it when no
  entry arrived for ``inactive_timeout`` seconds, or at the latest ``buffer_duration`` seconds
  after its first entry. With ``batch_max_size`` 1 every entry is sent on its own, at once.
* Each batch is sent by its own task (batches do not wait for each other). A send that raises
  is logged (``Batch Processor[<name>] failed to process entries: <error>``) and retried after
  ``retry_delay`` seconds, at most ``max_retry_count`` times; then the batch is dropped
  (``... exceeded the max_retry_count[<n>] dropping the entries``). Raising
  :class:`BatchSendError` with ``sent=k`` says the first ``k`` entries went through: only the
  rest is retried.
* Entries waiting (buffered, being sent or waiting for a retry) are bounded: when the
  :class:`PendingCounter` shared by the processors (or the processor's own) has
  ``max_pending_entries`` of them, a new entry is dropped and an error is logged
  (``max pending entries limit exceeded. discarding entry.``; then at most one such line per
  :data:`DROP_LOG_INTERVAL` seconds, with the count).
* :meth:`~BatchProcessor.close` (call it from the plugin's ``destroy()``) sends what is
  buffered at once; entries pushed later (requests that were in flight during a plugin reload)
  are sent at once too. When the gateway stops, the kernel awaits :func:`drain` after the
  plugins' ``destroy()`` and before it closes the shared HTTP client, so those last batches go
  out (within its timeout).

A processor belongs to the event loop of its first :meth:`~BatchProcessor.push` (each worker
process has its own). Nothing here imports the kernel.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Final, Generic, TypeVar

__all__ = [
    "BATCH_PROPERTIES",
    "DEFAULT_MAX_PENDING_ENTRIES",
    "DROP_LOG_INTERVAL",
    "BatchProcessor",
    "BatchSendError",
    "PendingCounter",
    "SendFunc",
    "batch_properties",
    "close_all",
    "drain",
]

T = TypeVar("T")

SendFunc = Callable[[list[Any], int], Awaitable[object]]
"""``async send(entries, batch_max_size)``: deliver one batch; raise on failure."""

DEFAULT_MAX_PENDING_ENTRIES: Final = 2000
"""Entries a processor (or a :class:`PendingCounter`) holds at most unless told otherwise."""
DROP_LOG_INTERVAL: Final = 10.0
"""Seconds between two "discarding entry" error lines of one processor."""

BATCH_PROPERTIES: Final[dict[str, Any]] = {
    "name": {"type": "string", "default": "log buffer"},
    "max_retry_count": {"type": "integer", "minimum": 0, "default": 0},
    "retry_delay": {"type": "integer", "minimum": 0, "default": 1},
    "buffer_duration": {"type": "integer", "minimum": 1, "default": 60},
    "inactive_timeout": {"type": "integer", "minimum": 1, "default": 5},
    "batch_max_size": {"type": "integer", "minimum": 1, "default": 1000},
    "max_pending_entries": {"type": "integer", "minimum": 1},
}
"""The batch processor's JSON-schema ``properties`` (APISIX's, plus ``max_pending_entries``);
use :func:`batch_properties` to get them with the plugin's ``name`` default."""


def batch_properties(default_name: str) -> dict[str, Any]:
    """:data:`BATCH_PROPERTIES` (a copy) with ``name`` defaulting to ``default_name`` (APISIX's
    ``batch_processor_manager:wrap_schema``). Merge them into the plugin's ``properties``."""
    props = {key: dict(value) for key, value in BATCH_PROPERTIES.items()}
    props["name"]["default"] = default_name
    return props


class BatchSendError(Exception):
    """A send failure; ``sent`` entries at the start of the batch were delivered anyway (only
    the others are retried)."""

    def __init__(self, message: str, sent: int = 0) -> None:
        super().__init__(message)
        self.sent = sent


class PendingCounter:
    """How many entries a group of processors (typically all of one plugin's) holds: buffered,
    being sent or waiting for a retry. ``max_pending_entries`` is checked against it."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


_log = logging.getLogger("sixgate.plugin.batch")

# Every processor with work left (buffered entries or running sends), so that drain() finds
# them and none is garbage-collected while its tasks run (the loop keeps tasks weakly).
_busy: set[BatchProcessor[Any]] = set()


class BatchProcessor(Generic[T]):
    """Buffers entries and hands them to ``send`` in batches (see the module docstring)."""

    def __init__(
        self,
        send: SendFunc,
        *,
        name: str = "log buffer",
        batch_max_size: int = 1000,
        inactive_timeout: float = 5,
        buffer_duration: float = 60,
        max_retry_count: int = 0,
        retry_delay: float = 1,
        max_pending_entries: int | None = None,
        counter: PendingCounter | None = None,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
    ) -> None:
        if batch_max_size < 1:
            raise ValueError("batch_max_size must be at least 1")
        self.send = send
        self.name = name
        self.batch_max_size = batch_max_size
        self.inactive_timeout = float(inactive_timeout)
        self.buffer_duration = float(buffer_duration)
        self.max_retry_count = max_retry_count
        self.retry_delay = float(retry_delay)
        self.max_pending_entries = (
            max_pending_entries if max_pending_entries is not None
            else DEFAULT_MAX_PENDING_ENTRIES
        )
        self.counter = counter if counter is not None else PendingCounter()
        self.log = logger if logger is not None else _log
        self.closed = False
        self.dropped = 0
        """Entries refused because too many were pending (since the processor was made)."""
        self._buffer: list[T] = []
        self._first = 0.0
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unreported = 0
        self._last_drop_log = -DROP_LOG_INTERVAL

    @classmethod
    def from_conf(
        cls,
        send: SendFunc,
        conf: Mapping[str, Any],
        *,
        counter: PendingCounter | None = None,
        max_pending_entries: int | None = None,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
    ) -> BatchProcessor[Any]:
        """A processor configured by the :data:`BATCH_PROPERTIES` fields of a validated conf
        (defaults filled). ``max_pending_entries`` is used when the conf has none. The conf
        itself is not kept."""
        pending = conf.get("max_pending_entries")
        return cls(
            send,
            name=str(conf.get("name", "log buffer")),
            batch_max_size=int(conf.get("batch_max_size", 1000)),
            inactive_timeout=float(conf.get("inactive_timeout", 5)),
            buffer_duration=float(conf.get("buffer_duration", 60)),
            max_retry_count=int(conf.get("max_retry_count", 0)),
            retry_delay=float(conf.get("retry_delay", 1)),
            max_pending_entries=int(pending) if pending is not None else max_pending_entries,
            counter=counter,
            logger=logger,
        )

    # -- state -------------------------------------------------------------------------------
    @property
    def buffered(self) -> int:
        """Entries waiting in the buffer (not yet handed to a send)."""
        return len(self._buffer)

    @property
    def sending(self) -> int:
        """Batches being sent or waiting for a retry."""
        return len(self._tasks)

    @property
    def idle(self) -> bool:
        """Nothing buffered and nothing being sent."""
        return not self._buffer and not self._tasks

    # -- the request side (sync, never blocks) ---------------------------------------------
    def push(self, entry: T) -> bool:
        """Queue one entry (call it on the gateway's event loop, e.g. from a ``log`` hook).
        ``False`` when it was dropped because too many entries are pending."""
        counter = self.counter
        if counter.value >= self.max_pending_entries:
            self._dropped()
            return False
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        counter.value += 1
        if self.batch_max_size == 1 or self.closed:
            self._dispatch([entry])
            return True
        buffer = self._buffer
        buffer.append(entry)
        now = loop.time()
        if len(buffer) == 1:
            self._first = now
            _busy.add(self)
        self._last = now
        if len(buffer) >= self.batch_max_size:
            self._process_buffer()
        if self._timer is None and self._buffer:
            self._timer = loop.call_later(self.inactive_timeout, self._on_timer)
        return True

    def _dropped(self) -> None:
        self.dropped += 1
        self._unreported += 1
        now = time.monotonic()
        if now - self._last_drop_log >= DROP_LOG_INTERVAL:
            self.log.error(
                "Batch Processor[%s] max pending entries limit exceeded. discarding entry. "
                "total_processing_entries: %d max_pending_entries: %d (%d discarded)",
                self.name, self.counter.value, self.max_pending_entries, self._unreported,
            )
            self._unreported = 0
            self._last_drop_log = now

    def _on_timer(self) -> None:
        self._timer = None
        if not self._buffer:
            return
        loop = self._loop
        assert loop is not None
        now = loop.time()
        if (now - self._last >= self.inactive_timeout
                or now - self._first >= self.buffer_duration):
            self._process_buffer()
            return
        # Entries keep arriving: look again in inactive_timeout seconds (APISIX extends the
        # timer the same way; buffer_duration bounds the wait).
        self._timer = loop.call_later(self.inactive_timeout, self._on_timer)

    def _process_buffer(self) -> None:
        batch = self._buffer
        if not batch:
            return
        self._buffer = []
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._dispatch(batch)

    def _dispatch(self, batch: list[T]) -> None:
        loop = self._loop
        assert loop is not None
        task = loop.create_task(self._run(batch))
        self._tasks.add(task)
        _busy.add(self)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self.idle:
            _busy.discard(self)

    async def _run(self, batch: list[T]) -> None:
        counter = self.counter
        retry_count = 0
        try:
            while True:
                try:
                    await self.send(list(batch), self.batch_max_size)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    sent = exc.sent if isinstance(exc, BatchSendError) else 0
                    if 0 < sent < len(batch):
                        self.log.error(
                            "Batch Processor[%s] failed to process entries [%d/%d]: %s",
                            self.name, len(batch) - sent, len(batch), exc,
                        )
                        counter.value -= sent
                        batch = batch[sent:]
                    else:
                        self.log.error("Batch Processor[%s] failed to process entries: %s",
                                       self.name, exc)
                    retry_count += 1
                    if retry_count <= self.max_retry_count:
                        if self.retry_delay > 0:
                            await asyncio.sleep(self.retry_delay)
                        continue
                    self.log.error(
                        "Batch Processor[%s] exceeded the max_retry_count[%d] dropping the "
                        "entries", self.name, retry_count,
                    )
                    return
                self.log.debug("Batch Processor[%s] successfully processed the entries",
                               self.name)
                return
        finally:
            counter.value -= len(batch)

    # -- flushing --------------------------------------------------------------------------
    async def flush(self) -> None:
        """Send what is buffered now and wait until every batch is sent (or dropped)."""
        self._process_buffer()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def close(self) -> None:
        """Send what is buffered now (plugin ``destroy()``); entries pushed afterwards are
        sent at once, one by one. Needs no running loop when nothing is buffered."""
        self.closed = True
        if self._buffer and self._loop is not None and not self._loop.is_closed():
            self._process_buffer()

    def __repr__(self) -> str:
        return (f"<BatchProcessor {self.name!r} buffered={len(self._buffer)} "
                f"sending={len(self._tasks)}>")


def close_all(processors: Iterable[BatchProcessor[Any]]) -> None:
    """:meth:`BatchProcessor.close` each of ``processors`` (from a plugin's ``destroy()``)."""
    for processor in list(processors):
        processor.close()


async def drain(timeout: float = 5.0) -> None:
    """Wait (at most ``timeout`` seconds) until the processors of the running event loop have
    sent what they hold; then cancel what is left, with an error line per processor.

    The kernel calls this when the gateway stops, after the plugins' ``destroy()`` and before
    it closes the shared HTTP client. Buffered entries of processors that were not closed are
    sent first."""
    loop = asyncio.get_running_loop()
    mine = [p for p in list(_busy) if p._loop is loop]
    for processor in mine:
        processor._process_buffer()
    owner = {task: p for p in mine for task in list(p._tasks)}
    if not owner:
        return
    _done, pending = await asyncio.wait(list(owner), timeout=max(timeout, 0.0))
    if not pending:
        return
    for task in pending:
        task.cancel()
    await asyncio.wait(pending)
    for processor in {owner[task] for task in pending}:
        processor.log.error("Batch Processor[%s] stopped before its entries were sent; "
                            "dropping them", processor.name)

