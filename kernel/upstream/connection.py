"""The upstream leg: a lean HTTP/1.1 client protocol on httptools and its keep-alive pool.

One :class:`UpstreamConnection` carries one request at a time. Response bodies are handed to a
``sink`` callback chunk by chunk as they arrive (no queue, no task switch), so a proxied body
costs one ``transport.write`` per received chunk; backpressure pauses this connection's reading.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import httptools


class UpstreamError(Exception):
    """The upstream failed; ``status`` is what the client gets (502 or 504)."""

    def __init__(self, status: int, message: str, *, sent: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.sent = sent


class StaleConnection(UpstreamError):
    """A reused keep-alive connection was closed by the upstream before answering."""


Sink = Callable[[bytes], None]


class Listener(Protocol):
    """Receives an exchange's events when it is driven by callbacks instead of futures."""

    def on_head(self) -> None: ...

    def on_complete(self) -> None: ...

    def on_error(self, err: UpstreamError) -> None: ...

    def flush(self) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    """A client connection to one upstream node."""

    __slots__ = (
        "_done",
        "_head",
        "_loop",
        "body_started",
        "closed",
        "head_seen",
        "headers",
        "idle_since",
        "keep_alive",
        "key",
        "last_read",
        "listener",
        "message_complete",
        "on_close",
        "parser",
        "pending",
        "raw_target",
        "read_paused",
        "requests",
        "sink",
        "skip_body",
        "status",
        "transport",
        "write_ready",
    )

    def __init__(self, key: tuple[object, ...]) -> None:
        self.key = key
        self._loop = asyncio.get_event_loop()
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.headers: list[tuple[bytes, bytes]] = []
        self.status = 0
        self.keep_alive = False
        self.message_complete = False
        self.body_started = False
        self.skip_body = False
        self.sink: Sink | None = None
        self.pending: list[bytes] = []
        self.listener: Listener | None = None
        self.head_seen = False
        self.raw_target: Sink | None = None
        self.on_close: Callable[[], None] | None = None
        self._head: asyncio.Future[None] | None = None
        self._done: asyncio.Future[None] | None = None
        self.requests = 0
        self.idle_since = 0.0
        self.last_read = 0.0
        self.read_paused = False
        self.write_ready: asyncio.Future[None] | None = None

    # --- transport callbacks ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.last_read = self._loop.time()
        raw = self.raw_target
        if raw is not None:
            raw(data)
            return
        try:
            self.parser.feed_data(data)
            listener = self.listener
            if listener is not None and self.head_seen:
                listener.flush()
        except httptools.HttpParserUpgrade:
            self._finish_head()
        except httptools.HttpParserError as err:
            self._fail(UpstreamError(502, f"upstream sent an invalid response: {err}"))
            self.close()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        listener = self.listener
        if listener is not None:
            if not self.head_seen:
                listener.on_error(
                    StaleConnection(502, "upstream closed a reused connection")
                    if self.requests > 1 and not self.headers
                    else UpstreamError(502, "upstream prematurely closed connection", sent=True)
                )
            elif not self.message_complete:
                if not self.keep_alive and self._close_delimited():
                    self.message_complete = True
                    listener.on_complete()
                else:
                    listener.on_error(
                        UpstreamError(502, "upstream prematurely closed connection", sent=True)
                    )
        if self._head is not None and not self._head.done():
            err: UpstreamError
            if self.requests > 1 and not self.headers:
                err = StaleConnection(502, "upstream closed a reused connection")
            else:
                err = UpstreamError(502, "upstream prematurely closed connection", sent=True)
            self._head.set_exception(err)
        done = self._done
        if done is not None and not done.done():
            if self.keep_alive is False and not self.message_complete and self._close_delimited():
                self.message_complete = True
                done.set_result(None)
            else:
                done.set_exception(
                    UpstreamError(502, "upstream prematurely closed connection", sent=True)
                )
        waiter = self.write_ready
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self.on_close is not None:
            self.on_close()

    def pause_writing(self) -> None:
        self.write_ready = self._loop.create_future()

    def resume_writing(self) -> None:
        waiter, self.write_ready = self.write_ready, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- response parser callbacks -----------------------------------------------------
    def on_message_begin(self) -> None:
        self.headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self.headers = []  # informational: wait for the final response
            return
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()
        self._finish_head()
        if self.skip_body:
            # A response to HEAD announces a length but carries no body: the parser cannot be
            # told so, so it is replaced and the message ends here.
            self.parser = httptools.HttpResponseParser(self)
            self.on_message_complete()

    def _finish_head(self) -> None:
        self.head_seen = True
        if self.listener is not None:
            self.listener.on_head()
            return
        head = self._head
        if head is not None and not head.done():
            head.set_result(None)

    def on_body(self, chunk: bytes) -> None:
        sink = self.sink
        if sink is not None:
            sink(chunk)
        else:
            self.pending.append(chunk)  # arrived with the head, before the proxy took over

    def on_message_complete(self) -> None:
        if 100 <= self.status < 200 and self.status != 101 and not self._head_done():
            return
        self.message_complete = True
        if self.listener is not None:
            self.listener.on_complete()
            return
        done = self._done
        if done is not None and not done.done():
            done.set_result(None)

    def _head_done(self) -> bool:
        return self.head_seen

    def _close_delimited(self) -> bool:
        for name, _ in self.headers:
            lname = name.lower()
            if lname in (b"content-length", b"transfer-encoding"):
                return False
        return self._head_done()

    def fail_read(self, err: UpstreamError) -> None:
        """The read timed out: fail whoever waits for this exchange."""
        if self.listener is not None:
            self.listener.on_error(err)
            return
        head = self._head
        if head is not None and not head.done():
            head.set_exception(err)

    def _fail(self, err: UpstreamError) -> None:
        if self.listener is not None:
            self.listener.on_error(err)
            return
        for fut in (self._head, self._done):
            if fut is not None and not fut.done():
                fut.set_exception(err)

    # --- used by the proxy ----------------------------------------------------------------
    def begin(self, skip_body: bool, listener: Listener | None = None) -> None:
        """Prepare for one request/response exchange (events go to ``listener`` if given,
        else to the ``head``/``done`` futures)."""
        self.requests += 1
        self.headers = []
        self.status = 0
        self.message_complete = False
        self.head_seen = False
        self.skip_body = skip_body
        self.sink = None
        self.pending = []
        self.listener = listener
        self._head = None if listener is not None else self._loop.create_future()
        self._done = None

    @property
    def head(self) -> asyncio.Future[None]:
        assert self._head is not None
        return self._head

    @property
    def done(self) -> asyncio.Future[None]:
        """Resolved when the response body has been read completely (made on first use)."""
        done = self._done
        if done is None:
            done = self._done = self._loop.create_future()
            if self.message_complete:
                done.set_result(None)
            elif self.closed:
                if self._close_delimited() and not self.keep_alive:
                    self.message_complete = True
                    done.set_result(None)
                else:
                    done.set_exception(
                        UpstreamError(502, "upstream prematurely closed connection", sent=True)
                    )
        return done

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def pause_reading(self) -> None:
        if not self.read_paused and self.transport is not None and not self.closed:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused and self.transport is not None and not self.closed:
            self.read_paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """Keep-alive settings of one upstream.

    From its ``keepalive_pool``, else ``nginx_config.http.upstream``.
    """

    size: int = 320
    idle_timeout: float = 60.0
    requests: int = 1000


class ReadDeadlines:
    """Upstream read timeouts, checked by one ticker instead of a timer per request.

    ``watch`` costs a dict store. Every ``resolution`` seconds, while anything is watched, the
    ticker fails exchanges that have read nothing for longer than their timeout (504); a
    connection paused because the client is slow is not timed out.
    """

    def __init__(self, resolution: float = 0.05) -> None:
        self._loop = asyncio.get_event_loop()
        self._resolution = resolution
        self._timeouts: dict[UpstreamConnection, float] = {}
        self._ticking = False

    def watch(self, conn: UpstreamConnection, timeout: float) -> float:
        """Start timing ``conn``'s reads; returns the loop time it started at."""
        now = conn.last_read = self._loop.time()
        self._timeouts[conn] = timeout
        if not self._ticking:
            self._ticking = True
            self._loop.call_later(self._resolution, self._tick)
        return now

    def unwatch(self, conn: UpstreamConnection) -> None:
        self._timeouts.pop(conn, None)

    def _tick(self) -> None:
        timeouts = self._timeouts
        if not timeouts:
            self._ticking = False
            return
        now = self._loop.time()
        expired = []
        for conn, timeout in timeouts.items():
            if conn.read_paused:
                conn.last_read = now
            elif conn.last_read + timeout <= now:
                expired.append(conn)
        for conn in expired:
            del timeouts[conn]
            what = "reading the body" if conn.head_seen else "reading response header"
            conn.fail_read(UpstreamError(504, f"upstream timed out while {what}", sent=True))
        self._loop.call_later(self._resolution, self._tick)


class ConnectionPool:
    """Idle keep-alive connections per ``(scheme, host, port, sni)``; one pool per worker."""

    def __init__(self) -> None:
        self._idle: dict[tuple[object, ...], collections.deque[UpstreamConnection]] = {}
        self._loop = asyncio.get_event_loop()
        self.deadlines = ReadDeadlines()

    def take(
        self, key: tuple[object, ...], settings: PoolSettings | None = None
    ) -> UpstreamConnection | None:
        """An idle keep-alive connection for ``key``, or ``None``."""
        idle = self._idle.get(key)
        if not idle:
            return None
        now = self._loop.time()
        timeout = settings.idle_timeout if settings is not None else 60.0
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < timeout:
                return conn
            conn.close()
        return None

    async def connect(
        self,
        key: tuple[object, ...],
        host: str,
        port: int,
        connect_timeout: float,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> UpstreamConnection:
        """A new connection to ``host:port`` (raises :class:`UpstreamError`)."""
        try:
            async with asyncio.timeout(connect_timeout):
                _, conn = await self._loop.create_connection(
                    lambda: UpstreamConnection(key),
                    host,
                    port,
                    ssl=ssl_context,
                    server_hostname=server_hostname if ssl_context is not None else None,
                )
        except TimeoutError:
            raise UpstreamError(
                504, f"upstream timed out while connecting to {host}:{port}"
            ) from None
        except OSError as err:
            raise UpstreamError(502, f"connect() to {host}:{port} failed: {err}") from None
        return conn

    def release(self, conn: UpstreamConnection, settings: PoolSettings | None = None) -> None:
        """Return a finished connection for reuse, or close it when it cannot be reused."""
        size = settings.size if settings is not None else 320
        max_requests = settings.requests if settings is not None else 1000
        if (
            conn.closed
            or not conn.keep_alive
            or not conn.message_complete
            or conn.requests >= max_requests
        ):
            conn.close()
            return
        conn.sink = None
        conn.idle_since = self._loop.time()
        idle = self._idle.get(conn.key)
        if idle is None:
            idle = self._idle[conn.key] = collections.deque()
        if len(idle) >= size:
            conn.close()
            return
        idle.append(conn)

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
