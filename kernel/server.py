"""The data plane's HTTP/1.1 server: a strict, lean asyncio protocol on httptools.

One :class:`HttpProtocol` per client connection parses requests, answers protocol errors
itself (400/413/414/431/501/408) and hands each request to the gateway's handler, one at a time
and in order (pipelined requests queue). Bodies stream with backpressure in both directions.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import httptools

from kernel import pages
from kernel.uri import BadURI, normalize_path, split_target
from plugin_sdk import Headers

log = logging.getLogger("sixgate.server")

_IDLE, _HEADERS, _BUSY = 0, 1, 2
_BODY_HIGH_WATER = 256 * 1024
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
        b"expect",
        b"x-real-ip",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"forwarded",
    }
)
"""Request headers the proxy never forwards as received: hop-by-hop ones, ``Host``, framing,
and the ``X-Forwarded-*``/``X-Real-IP``/``Forwarded`` headers it sets itself."""


_METHODS = {m.encode(): m for m in (
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "PURGE",
)}


class ProtocolError(Exception):
    """A request the server refuses before any handler runs."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """Per-listener limits, from ``nginx_config`` (built once from config)."""

    max_request_line: int = 8192
    max_header_size: int = 8192
    max_headers_size: int = 32768
    max_header_count: int = 100
    client_max_body_size: int = 0
    header_timeout: float = 60.0
    body_timeout: float = 60.0
    keepalive_timeout: float = 60.0
    real_ip_header: str = "x-real-ip"
    real_ip_from: tuple[str, ...] = ("127.0.0.1", "unix:")
    real_ip_recursive: bool = False


class Connections(set["HttpProtocol"]):
    """A worker's live client connections, with nginx ``stub_status``-style totals: connections
    ``accepted`` and client ``requests`` since the worker started (read by
    :mod:`kernel.metrics`; one integer addition per connection and per request)."""

    accepted = 0
    requests = 0

    def add(self, conn: HttpProtocol) -> None:
        self.accepted += 1
        set.add(self, conn)


class RealIP:
    """nginx real-IP: trusted peers may name the client address in a header (compiled once)."""

    __slots__ = ("_exact", "_header", "_networks", "_recursive")

    def __init__(self, limits: ServerLimits) -> None:
        self._header = limits.real_ip_header.lower().encode()
        self._exact: set[str] = set()
        self._networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in limits.real_ip_from:
            if entry == "unix:":
                continue
            if "/" in entry:
                self._networks.append(ipaddress.ip_network(entry, strict=False))
            else:
                self._exact.add(entry)
        self._recursive = limits.real_ip_recursive

    @property
    def header(self) -> bytes:
        return self._header

    def trusted(self, ip: str) -> bool:
        if ip in self._exact:
            return True
        if not self._networks:
            return False
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self._networks)

    def client_ip(self, peer: str, value: str) -> str:
        """The address ``value`` names for a trusted ``peer``, or ``peer`` when it is invalid."""
        candidates = [v.strip() for v in value.split(",") if v.strip()]
        if not candidates:
            return peer
        chosen = candidates[-1]
        if self._recursive:
            for candidate in reversed(candidates):
                chosen = candidate
                if not self.trusted(_strip_port(candidate)):
                    break
        chosen = _strip_port(chosen)
        try:
            ipaddress.ip_address(chosen)
        except ValueError:
            return peer
        return chosen


def _strip_port(value: str) -> str:
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value


class Body:
    """A request body arriving from the client; read by a plugin or streamed upstream."""

    __slots__ = ("_proto", "_waiter", "chunks", "complete", "continue_sent", "error", "size")

    def __init__(self, proto: HttpProtocol, expect_continue: bool) -> None:
        self._proto = proto
        self.chunks: collections.deque[bytes] = collections.deque()
        self.size = 0
        self.complete = False
        self.error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.continue_sent = not expect_continue

    def feed(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.size += len(chunk)
        if self.size > _BODY_HIGH_WATER:
            self._proto.pause_reading_body()
        self._wake()

    def finish(self, error: BaseException | None = None) -> None:
        self.complete = True
        self.error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def read(self) -> bytes | None:
        """The next chunk, or ``None`` at the end. Raises on client disconnect or timeout."""
        if not self.continue_sent:
            self.continue_sent = True
            if not self.complete:
                self._proto.write(_CONTINUE)
        while not self.chunks:
            if self.error is not None:
                raise self.error
            if self.complete:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self._waiter, self._proto.limits.body_timeout)
            except TimeoutError:
                raise ProtocolError(408, "client body timeout") from None
            finally:
                self._waiter = None
        chunk = self.chunks.popleft()
        self.size -= len(chunk)
        if self.size < _BODY_HIGH_WATER // 2:
            self._proto.resume_reading_body()
        return chunk

    async def read_all(self) -> bytes:
        parts = []
        while (chunk := await self.read()) is not None:
            parts.append(chunk)
        return b"".join(parts)


class HttpRequest:
    """One parsed request (implements :class:`plugin_sdk.Request`).

    Connection-level facts (server address, scheme, peer) are read through ``conn`` rather
    than copied per request; optional fields are class-level defaults.
    """

    method: str
    raw_uri: str
    path: str
    query_string: str
    version: str
    keep_alive: bool
    raw_headers: list[tuple[bytes, bytes]]
    bytes_received: int
    _headers: Headers | None = None
    _body_cache: bytes | None = None
    body_stream: Body | None = None
    upgrade = False
    upgrade_data = b""
    chunked = False
    content_length: int | None = None
    host_header: str | None = None
    xff: bytes | None = None
    """The client's ``X-Forwarded-For`` values, comma-joined."""
    forward_block: bytes = b""
    """The client's header lines to forward as they are (hop-by-hop and proxy headers left out)."""

    def __init__(self, conn: HttpProtocol, start_mono: float) -> None:
        self.conn = conn
        self.start_mono = start_mono
        self.client_ip = conn.peer_ip

    @property
    def start_time(self) -> float:
        return time.time() - (self.conn._loop.time() - self.start_mono)

    @property
    def scheme(self) -> str:
        return self.conn.scheme

    @property
    def server_addr(self) -> str:
        return self.conn.server_addr

    @property
    def server_port(self) -> int:
        return self.conn.server_port

    @property
    def peer_ip(self) -> str:
        return self.conn.peer_ip

    @property
    def client_port(self) -> int:
        return self.conn.peer_port

    @property
    def headers(self) -> Headers:
        h = self._headers
        if h is None:
            h = self._headers = Headers(
                [(n.decode("latin-1"), v.decode("latin-1")) for n, v in self.raw_headers]
            )
        return h

    @property
    def has_body(self) -> bool:
        return self.body_stream is not None

    @property
    def body_buffered(self) -> bytes | None:
        """The body when a plugin already read it whole, else ``None``."""
        return self._body_cache

    async def body(self) -> bytes:
        if self._body_cache is None:
            stream = self.body_stream
            self._body_cache = await stream.read_all() if stream is not None else b""
        return self._body_cache


Handler = Callable[["HttpProtocol", HttpRequest], None]
"""Called once per request, in order; must end with ``proto.finish_request(req)``."""


class HttpProtocol(asyncio.Protocol):
    """A client connection: parse, dispatch one request at a time, write responses."""

    __slots__ = (
        "_active",
        "_armed",
        "_body_paused",
        "_drain_waiters",
        "_forwarded",
        "_handler",
        "_header_bytes",
        "_headers",
        "_host",
        "_loop",
        "_parser",
        "_parsing",
        "_pipeline",
        "_reading_paused",
        "_state",
        "_timer",
        "_transitions",
        "_url",
        "_write_paused",
        "closed",
        "limits",
        "listener_port",
        "on_write_resumed",
        "peer_ip",
        "peer_ip_bytes",
        "peer_port",
        "real_ip",
        "real_ip_name",
        "scheme",
        "scheme_bytes",
        "server_addr",
        "server_port",
        "tracker",
        "transport",
    )

    def __init__(
        self,
        handler: Handler,
        limits: ServerLimits,
        real_ip: RealIP,
        tracker: Connections,
        scheme: str = "http",
    ) -> None:
        self._handler = handler
        self.limits = limits
        self.real_ip = real_ip
        self.tracker = tracker
        self.scheme = scheme
        self._loop = asyncio.get_event_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._parsing: HttpRequest | None = None
        self._active: HttpRequest | None = None
        self._pipeline: collections.deque[HttpRequest] = collections.deque()
        self._state = _IDLE
        self._transitions = 0
        self._armed = -1
        self._timer: asyncio.TimerHandle | None = None
        self._write_paused = False
        self._reading_paused = False
        self._body_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self.on_write_resumed: Callable[[], None] | None = None
        self.closed = False
        self.transport: asyncio.Transport | None = None

    # --- connection lifecycle ---------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("sockname")
        if isinstance(peer, tuple):
            self.peer_ip, self.peer_port = peer[0], peer[1]
        else:
            self.peer_ip, self.peer_port = "unix:", 0
        if isinstance(sock, tuple):
            self.server_addr, self.server_port = sock[0], sock[1]
        else:
            self.server_addr, self.server_port = "unix:", 0
        self.peer_ip_bytes = self.peer_ip.encode()
        self.real_ip_name = self.real_ip.header
        self.scheme_bytes = self.scheme.encode()
        self._forwarded: tuple[str | None, tuple[bytes, bytes]] | None = None
        self._host: tuple[str | None, str] | None = None
        self.tracker.add(self)
        self._enter(_IDLE)

    def host_of(self, host_header: str | None) -> str:
        """``$host``: the Host header lower-cased without its port (cached per connection)."""
        cached = self._host
        if cached is not None and cached[0] == host_header:
            return cached[1]
        if not host_header:
            host = self.server_addr
        else:
            h = host_header.lower()
            if h.startswith("["):
                end = h.find("]")
                host = h[: end + 1] if end > 0 else h
            else:
                colon = h.find(":")
                host = h if colon < 0 else h[:colon]
        self._host = (host_header, host)
        return host

    def forwarded_host(self, host_header: str | None, host: str) -> tuple[bytes, bytes]:
        """``X-Forwarded-Host`` / ``X-Forwarded-Port`` values, cached per connection."""
        cached = self._forwarded
        if cached is not None and cached[0] == host_header:
            return cached[1]
        port = None
        if host_header and not host_header.endswith("]") and ":" in host_header:
            port = host_header.rsplit(":", 1)[1]
        value = (
            host_header.encode("latin-1") if host_header else host.encode(),
            (port or str(self.server_port)).encode(),
        )
        self._forwarded = (host_header, value)
        return value

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.tracker.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for req in (self._parsing, self._active, *self._pipeline):
            if req is not None and req.body_stream is not None and not req.body_stream.complete:
                req.body_stream.finish(ConnectionResetError("client closed the connection"))
        self._wake_drain()
        resumed = self.on_write_resumed
        if resumed is not None:
            resumed()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain()
        resumed = self.on_write_resumed
        if resumed is not None:
            resumed()

    def _wake_drain(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    @property
    def write_paused(self) -> bool:
        return self._write_paused

    async def drain(self) -> None:
        """Wait until the client's socket buffer has room again."""
        if self._write_paused and not self.closed:
            fut = self._loop.create_future()
            self._drain_waiters.append(fut)
            await fut

    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.closed = True
            self.transport.abort()

    @property
    def idle(self) -> bool:
        return self._active is None and self._parsing is None

    # --- timeouts: one lazily re-armed timer per connection ---------------------------------
    # A state change costs a counter increment, not a clock read or a timer: the timer checks
    # whether the connection moved on since it was armed, so a timeout fires between one and
    # two timeout periods after the state began.
    def _enter(self, state: int) -> None:
        self._state = state
        self._transitions += 1
        if self._timer is None and state != _BUSY:
            self._arm()

    def _timeout_for(self, state: int) -> float:
        return self.limits.keepalive_timeout if state == _IDLE else self.limits.header_timeout

    def _arm(self) -> None:
        self._armed = self._transitions
        self._timer = self._loop.call_later(self._timeout_for(self._state), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.closed or self._state == _BUSY:
            return
        if self._transitions != self._armed:
            self._arm()
            return
        if self._state == _HEADERS:
            self._reject(408, "client header timeout")
        else:
            self.close()

    # --- reading --------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._on_upgrade(data[upgrade.args[0] :] if upgrade.args else b"")
        except ProtocolError as err:
            self._reject(err.status, str(err))
        except httptools.HttpParserError as err:
            cause = err.__context__
            if isinstance(cause, ProtocolError):
                self._reject(cause.status, str(cause))
            else:
                self._reject(400, str(err))

    def pause_reading_body(self) -> None:
        if not self._body_paused and self.transport is not None:
            self._body_paused = True
            self.transport.pause_reading()

    def resume_reading_body(self) -> None:
        if self._body_paused and self.transport is not None and not self.closed:
            self._body_paused = False
            self.transport.resume_reading()

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._enter(_HEADERS)

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.limits.max_request_line:
            raise ProtocolError(414, "request-line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value)
        if size > self.limits.max_header_size:
            raise ProtocolError(431, "request header too large")
        self._header_bytes += size
        self._headers.append((name, value))
        if (
            self._header_bytes > self.limits.max_headers_size
            or len(self._headers) > self.limits.max_header_count
        ):
            raise ProtocolError(431, "request headers too large")

    def on_headers_complete(self) -> None:
        parser = self._parser
        req = HttpRequest(self, self._loop.time())
        method = parser.get_method()
        req.method = _METHODS.get(method) or method.decode("ascii")
        req.version = parser.get_http_version()
        req.keep_alive = parser.should_keep_alive()
        req.upgrade = parser.should_upgrade()
        req.raw_headers = headers = self._headers
        raw_uri = self._url.decode("latin-1")
        req.raw_uri = raw_uri
        path, req.query_string = split_target(raw_uri)
        if "%" in path or "/." in path or "//" in path:
            try:
                path = normalize_path(path)
            except BadURI as err:
                raise ProtocolError(400, str(err)) from None
        req.path = path
        req.bytes_received = len(self._url) + self._header_bytes + 4 * len(headers) + 16
        host = None
        real_ip_name = self.real_ip_name
        real_ip_value = None
        has_body = False
        expect_continue = False
        kept: list[bytes] = []
        hop = HOP_BY_HOP
        for name, value in headers:
            lname = name.lower()
            if lname not in hop:
                kept += (name, b": ", value, b"\r\n")
                if lname == real_ip_name:
                    real_ip_value = value.decode("latin-1")
                continue
            if lname == b"host":
                if host is not None:
                    raise ProtocolError(400, "duplicate Host header")
                host = value.decode("latin-1")
            elif lname == b"content-length":
                req.content_length = int(value)
                has_body = req.content_length > 0
            elif lname == b"transfer-encoding":
                if value.rsplit(b",", 1)[-1].strip().lower() != b"chunked":
                    raise ProtocolError(501, "unsupported transfer-encoding")
                req.chunked = has_body = True
            elif lname == b"expect":
                if value.lower() != b"100-continue":
                    raise ProtocolError(417, "unsupported expectation")
                expect_continue = True
            elif lname == b"x-forwarded-for":
                xff = value if req.xff is None else req.xff + b", " + value
                req.xff = xff
            if lname == real_ip_name:
                real_ip_value = value.decode("latin-1")
        req.forward_block = b"".join(kept)
        if host is None and req.version == "1.1":
            raise ProtocolError(400, "missing Host header")
        req.host_header = host
        if real_ip_value is not None and self.real_ip.trusted(self.peer_ip):
            req.client_ip = self.real_ip.client_ip(self.peer_ip, real_ip_value)
        limit = self.limits.client_max_body_size
        if limit and req.content_length is not None and req.content_length > limit:
            raise ProtocolError(413, "client intended to send too large body")
        if has_body:
            req.body_stream = Body(self, expect_continue)
        self._parsing = req
        if self._active is None:
            self._start(req)
        else:
            self._pipeline.append(req)

    def on_body(self, chunk: bytes) -> None:
        req = self._parsing
        if req is None or req.body_stream is None:
            return
        stream = req.body_stream
        limit = self.limits.client_max_body_size
        if limit and stream.size + len(chunk) > limit and req.chunked:
            stream.finish(ProtocolError(413, "client body too large"))
            raise ProtocolError(413, "client sent too large chunked body")
        req.bytes_received += len(chunk)
        stream.feed(chunk)

    def on_message_complete(self) -> None:
        req = self._parsing
        self._parsing = None
        if req is not None and req.body_stream is not None:
            req.body_stream.finish()
        if self._pipeline and not self._reading_paused and self.transport is not None:
            # A pipelined request waits for the active one: read no further until it is answered.
            self._reading_paused = True
            self.transport.pause_reading()

    def _on_upgrade(self, rest: bytes) -> None:
        """The parser stopped at an ``Upgrade`` request; keep the bytes after it for a tunnel."""
        req = self._active if self._active is not None else self._parsing
        self._parser = httptools.HttpRequestParser(self)
        if req is not None:
            req.upgrade_data = rest
        if self.transport is not None and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()

    def start_tunnel(self, target: Callable[[bytes], None], pending: bytes) -> None:
        """Hand the raw byte stream to ``target``: no more HTTP parsing on this connection."""
        sink = _RawSink(self)
        sink.target = target
        self._parser = sink  # type: ignore[assignment]
        if pending:
            target(pending)
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()

    def resume_http(self, leftover: bytes) -> None:
        """An upgrade was refused: continue parsing HTTP with the bytes already received."""
        if leftover:
            self.data_received(leftover)

    # --- dispatch ---------------------------------------------------------------------
    def _start(self, req: HttpRequest) -> None:
        """Run the handler for ``req``; it calls :meth:`finish_request` when done."""
        self._active = req
        self._state = _BUSY
        self.tracker.requests += 1
        self._handler(self, req)

    def finish_request(self, req: HttpRequest) -> None:
        """The response to ``req`` is fully written: close, or move to the next request.

        Called by the handler as its last step (also after it failed)."""
        self._active = None
        if self.closed:
            return
        stream = req.body_stream
        if not req.keep_alive or (stream is not None and not stream.complete):
            # An unread body (or HTTP/1.0) means we cannot find the next request: close.
            self.close()
            return
        if self._pipeline:
            self._start(self._pipeline.popleft())
            return
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        if self._parsing is None:
            self._enter(_IDLE)

    # --- errors produced by the server itself -----------------------------------------------
    def _reject(self, status: int, reason: str) -> None:
        log.info("client %s: %s (%d)", self.peer_ip, reason, status)
        if self._active is None and not self.closed:
            body = pages.error_page(status)
            self.write(
                pages.status_line(status)
                + b"Server: APISIX\r\nContent-Type: text/html; charset=utf-8\r\n"
                + b"Content-Length: "
                + str(len(body)).encode()
                + b"\r\nConnection: close\r\n\r\n"
                + body
            )
        self.close()

    def is_tunnel(self) -> bool:
        return isinstance(self._parser, _RawSink)


class _RawSink:
    """Stands in for the HTTP parser once a connection became a tunnel."""

    __slots__ = ("_proto", "target")

    def __init__(self, proto: HttpProtocol) -> None:
        self._proto = proto
        self.target: Callable[[bytes], None] | None = None

    def feed_data(self, data: bytes) -> None:
        if self.target is not None:
            self.target(data)
