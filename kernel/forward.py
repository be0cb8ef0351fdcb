"""The task path's upstream leg: pick, connect, send, retry, relay, tunnel.

:class:`UpstreamForwarder` is mixed into :class:`kernel.proxy.Proxy`. It handles everything
the callback path (:mod:`kernel.direct`) leaves to a task: request bodies, new connections,
DNS-named nodes, TLS upstreams, WebSocket tunnels, body filters, and retries.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from kernel import pages
from kernel.chain import Chain, run_request_phase, run_response_phase, run_response_phase_async
from kernel.context import RequestContext
from kernel.responses import HTML, ResponseWriter
from kernel.server import HOP_BY_HOP
from kernel.tls.upstream import upstream_sni
from kernel.upstream.connection import (
    ConnectionPool,
    StaleConnection,
    UpstreamConnection,
    UpstreamError,
)
from kernel.upstream.resolver import ResolveError

if TYPE_CHECKING:
    from kernel.server import HttpProtocol, HttpRequest
    from kernel.state import CompiledRoute
    from kernel.upstream.resolver import Resolver
    from kernel.upstream.runtime import UpstreamRuntime

log = logging.getLogger("sixgate.proxy")

_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


class UpstreamForwarder(ResponseWriter):
    """Forwards a request upstream and relays the answer (the task path)."""

    pool: ConnectionPool
    resolver: Resolver

    async def _forward(
        self,
        proto: HttpProtocol,
        req: HttpRequest,
        ctx: RequestContext,
        route: CompiledRoute,
        upstream: UpstreamRuntime,
        chain: Chain,
        failed: tuple[Any, UpstreamError] | None = None,
        picked: Any = None,
    ) -> None:
        """Pick a node, exchange, retry on connect errors and timeouts, relay the response.

        ``failed``: a node that already failed for this request on the direct path;
        ``picked``: a node the direct path picked but had no idle connection for.
        """
        if upstream.tls_error is not None:  # e.g. a bad tls.client_cert_id (spec §5.7)
            log.error("%s (route %s)", upstream.tls_error, route.id)
            await self.send_generated(proto, ctx, 502, None, HTML, chain)
            return
        try:
            picker = (
                await upstream.picker_for(self.resolver) if upstream.has_domain
                else upstream.picker
            )
        except ResolveError as exc:
            # spec §5.7: 500 for an inline upstream's name, 502 for an upstream_id's
            log.error("%s (route %s)", exc, route.id)
            await self.send_generated(proto, ctx, 500 if upstream.inline else 502, None, HTML,
                                      chain)
            return
        if picker is None:
            log.error("no valid upstream node (route %s)", route.id)
            await self.send_generated(proto, ctx, 503, None, HTML, chain)
            return
        timeouts = route.timeouts or upstream.timeouts
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + upstream.retry_timeout if upstream.retry_timeout else 0.0
        tries_left = upstream.retries
        tried: set[Any] | None = None
        statuses: list[str] = []
        addrs: list[str] = []
        ctx.upstream_statuses = statuses
        ctx.upstream_addrs = addrs
        ctx.upstream_scheme = upstream.scheme
        tunnel = req.upgrade and route.enable_websocket
        body_sent = False
        stale_retry = False
        if failed is not None:
            node, err = failed
            addrs.append(node.addr)
            if isinstance(err, StaleConnection):
                stale_retry = True  # not a node failure: the same node gets a fresh connection
            else:
                statuses.append(str(err.status))
                if upstream.checker is not None:  # passive health check
                    upstream.checker.report_failure(node, err.status)
                if tries_left <= 0:
                    log.error("%s while proxying route %s", err, route.id)
                    await self._upstream_failed(proto, ctx, chain, err.status, str(err))
                    return
                log.warning("%s, retrying (route %s)", err, route.id)
                tries_left -= 1
                tried = {node}
        while True:
            if stale_retry:
                stale_retry = False
                node = failed[0]  # type: ignore[index]
                addrs.pop()
            elif picked is not None:
                node, picked = picked, None
            else:
                node = picker.pick(ctx.var, tried)
            if node is None:
                await self._upstream_failed(proto, ctx, chain, 502, "no upstream node left to try")
                return
            ctx.node = node
            if chain.before_proxy:
                resp = await run_request_phase(chain.before_proxy, ctx)
                if resp is not None:
                    await self.send_response(proto, ctx, resp, chain)
                    return
            addrs.append(node.addr)
            try_start = loop.time()
            try:
                conn = await self._exchange(req, ctx, upstream, node, timeouts, tunnel)
            except UpstreamError as err:
                picker.done(node, None)
                statuses.append(str(err.status))
                if upstream.checker is not None:  # passive health check
                    upstream.checker.report_failure(node, err.status)
                body_sent = body_sent or err.sent
                retriable = not (err.sent and (req.method not in _IDEMPOTENT or req.has_body))
                if deadline and loop.time() > deadline:
                    retriable = False
                if tries_left > 0 and retriable:
                    log.warning("%s, retrying (route %s)", err, route.id)
                    tries_left -= 1
                    if tried is None:
                        tried = set()
                    tried.add(node)
                    continue
                log.error("%s while proxying route %s", err, route.id)
                await self._upstream_failed(proto, ctx, chain, err.status, str(err))
                return
            ctx.upstream_header_time = loop.time() - try_start
            statuses.append(str(conn.status))
            if upstream.checker is not None:  # passive health check
                upstream.checker.report_status(node, conn.status)
            await self._relay(proto, req, ctx, upstream, conn, chain, timeouts.read, tunnel)
            picker.done(node, loop.time() - try_start)
            ctx.upstream_response_time = loop.time() - try_start
            return

    async def _upstream_failed(
        self, proto: HttpProtocol, ctx: RequestContext, chain: Chain, status: int, reason: str
    ) -> None:
        statuses = ctx.upstream_statuses
        shown = ", ".join(statuses) if statuses else str(status)
        await self.send_generated(proto, ctx, status, None, HTML, chain, upstream_status=shown)

    def _request_head(
        self, req: HttpRequest, ctx: RequestContext, upstream: UpstreamRuntime, node: Any,
        tunnel: bool,
    ) -> bytes:
        changes = ctx.upstream_state
        method = req.method
        target = req.raw_uri if req.raw_uri.startswith("/") else (
            req.path + ("?" + req.query_string if req.query_string else "")
        )
        host = req.host_header
        if changes is not None:
            if changes.method:
                method = changes.method
            if changes.uri:
                target = changes.uri
            if changes.host and upstream.pass_host == "pass":
                host = changes.host
        if upstream.pass_host == "node":
            name = node.domain or node.host
            if ":" in name and not name.startswith("["):
                name = f"[{name}]"
            default_port = 443 if upstream.scheme in ("https", "grpcs") else 80
            host = name if node.port == default_port else f"{name}:{node.port}"
        elif upstream.pass_host == "rewrite":
            host = upstream.upstream_host
        if host is None:
            host = node.addr
        ctx.upstream_host_sent = host
        ctx.upstream_uri_sent = target
        block = (req.forward_block
                 if changes is None or not (changes.set or changes.add or changes.remove)
                 else self._changed_headers(req, changes))
        conn = req.conn
        client = conn.peer_ip_bytes if req.client_ip is conn.peer_ip else req.client_ip.encode()
        xff = req.xff
        forwarded = conn.forwarded_host(req.host_header, ctx.host)
        parts = [
            b"%s %s HTTP/1.1\r\nHost: %s\r\n%sX-Real-IP: %s\r\nX-Forwarded-For: %s\r\n"
            b"X-Forwarded-Proto: %s\r\nX-Forwarded-Host: %s\r\nX-Forwarded-Port: %s\r\n"
            % (
                method.encode(), target.encode("latin-1"), host.encode("latin-1"), block, client,
                (xff + b", " + client) if xff else client, conn.scheme_bytes,
                forwarded[0], forwarded[1],
            )
        ]
        if tunnel:
            for name, value in req.raw_headers:
                if name.lower() == b"upgrade":
                    parts += (b"Upgrade: ", value, b"\r\n")
            parts.append(b"Connection: upgrade\r\n")
        buffered = req.body_buffered
        if buffered is not None:
            parts += (b"Content-Length: ", str(len(buffered)).encode(), b"\r\n")
        elif req.body_stream is not None:
            if req.chunked:
                parts.append(b"Transfer-Encoding: chunked\r\n")
            else:
                parts += (b"Content-Length: ", str(req.content_length).encode(), b"\r\n")
        elif req.content_length == 0 or method in ("POST", "PUT", "PATCH"):
            parts.append(b"Content-Length: 0\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    @staticmethod
    def _changed_headers(req: HttpRequest, changes: Any) -> bytes:
        """The client's forwarded header lines with a plugin's set/add/remove applied."""
        parts: list[bytes] = []
        skip = HOP_BY_HOP
        for name, value in req.raw_headers:
            lname = name.lower()
            if lname in skip or changes.overrides(lname.decode("latin-1")):
                continue
            parts += (name, b": ", value, b"\r\n")
        for name, values in changes.set.values():
            for v in values:
                parts.append(f"{name}: {v}\r\n".encode("latin-1"))
        for name, v in changes.add:
            parts.append(f"{name}: {v}\r\n".encode("latin-1"))
        return b"".join(parts)

    async def _exchange(
        self, req: HttpRequest, ctx: RequestContext, upstream: UpstreamRuntime, node: Any,
        timeouts: Any, tunnel: bool,
    ) -> UpstreamConnection:
        """Send the request to ``node`` and wait for the response head."""
        head = self._request_head(req, ctx, upstream, node, tunnel)
        method = (ctx.upstream_state.method if ctx.upstream_state and ctx.upstream_state.method
                  else req.method)
        key = upstream.key_for(node, ctx.upstream_host_sent)
        for attempt in (0, 1):
            conn = self.pool.take(key, upstream.pool) if attempt == 0 else None
            if conn is None:
                conn = await self.pool.connect(
                    key, node.host, node.port, timeouts.connect, upstream.ssl_context,
                    upstream_sni(ctx.upstream_host_sent),
                )
            conn.begin(skip_body=method == "HEAD")
            conn.write(head)
            try:
                if req.body_stream is not None or req.body_buffered:
                    await self._send_body(req, conn, timeouts.send)
                deadlines = self.pool.deadlines
                deadlines.watch(conn, timeouts.read)
                try:
                    await conn.head
                finally:
                    deadlines.unwatch(conn)
                return conn
            except StaleConnection:
                conn.close()
                if attempt == 0 and (req.body_stream is None or req.body_buffered is not None):
                    continue
                raise UpstreamError(
                    502, "upstream closed a reused connection", sent=True
                ) from None
            except TimeoutError:
                conn.close()
                raise UpstreamError(504, "upstream timed out while reading response header",
                                    sent=True) from None
            except UpstreamError:
                conn.close()
                raise
        raise UpstreamError(502, "unreachable")  # pragma: no cover

    async def _send_body(self, req: HttpRequest, conn: UpstreamConnection, timeout: float) -> None:
        buffered = req.body_buffered
        if buffered is not None:
            if buffered:
                conn.write(buffered)
            return
        stream = req.body_stream
        if stream is None:
            return
        chunked = req.chunked
        while True:
            try:
                chunk = await stream.read()
            except Exception as err:
                raise UpstreamError(400, f"client body: {err}", sent=True) from None
            if chunk is None:
                break
            if chunked:
                conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            else:
                conn.write(chunk)
            if conn.write_ready is not None:
                async with asyncio.timeout(timeout):
                    await conn.write_ready
            if conn.closed:
                raise UpstreamError(502, "upstream closed while sending the body", sent=True)
        if chunked:
            conn.write(b"0\r\n\r\n")

    async def _relay(
        self, proto: HttpProtocol, req: HttpRequest, ctx: RequestContext,
        upstream: UpstreamRuntime, conn: UpstreamConnection, chain: Chain, read_timeout: float,
        tunnel: bool,
    ) -> None:
        """Send the upstream's response head and stream its body to the client."""
        status = conn.status
        headers = conn.headers
        if status == 101 and tunnel:
            await self._tunnel(proto, req, ctx, conn, headers)
            return
        if chain.header_filter or chain.body_filter:
            view = self.response_view(ctx, status, headers)
            if chain.header_filter_async:
                await run_response_phase_async(chain.header_filter, ctx)
            elif chain.header_filter:
                run_response_phase(chain.header_filter, ctx)
            head, chunked, no_body = self.head_from_view(req, ctx, view, chain)
        else:
            head, chunked, no_body = self.head_from_raw(req, ctx, status, headers)
        if conn.message_complete and not chain.body_filter:
            # The whole response arrived with its head: one write for both.
            body = b"".join(conn.pending) if not no_body else b""
            conn.pending = []
            if chunked:
                body = (b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)) if body else b"0\r\n\r\n"
            proto.write(head + body if body else head)
            ctx.body_bytes_sent = len(body)
            ctx.bytes_sent += len(body)
            self.pool.release(conn, upstream.pool)
            return
        proto.write(head)
        body_filter = chain.body_filter
        sent = 0

        def sink(chunk: bytes) -> None:
            nonlocal sent
            if body_filter:
                view = ctx.response_view
                assert view is not None
                view.chunk, view.eof = chunk, False
                run_response_phase(body_filter, ctx)
                chunk = view.chunk
                if not chunk:
                    return
            sent += len(chunk)
            if no_body:
                return
            if chunked:
                proto.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            else:
                proto.write(chunk)
            if proto.write_paused:
                conn.pause_reading()

        pending, conn.pending = conn.pending, []
        for chunk in pending:
            sink(chunk)
        conn.sink = sink
        proto.on_write_resumed = conn.resume_reading
        try:
            await self._await_body(conn, read_timeout)
        except UpstreamError as err:
            log.error("%s while reading the response body (route %s)", err, ctx.route_id)
            conn.close()
            proto.abort()
            return
        finally:
            proto.on_write_resumed = None
            conn.sink = None
        if body_filter:
            last = ctx.response_view
            assert last is not None
            last.chunk, last.eof = b"", True
            run_response_phase(body_filter, ctx)
            if last.chunk and not no_body:
                sent += len(last.chunk)
                proto.write(b"%x\r\n%b\r\n" % (len(last.chunk), last.chunk) if chunked
                            else last.chunk)
        if chunked:
            proto.write(b"0\r\n\r\n")
        ctx.body_bytes_sent = sent
        ctx.bytes_sent += sent
        if proto.closed:
            conn.close()
        else:
            self.pool.release(conn, upstream.pool)

    async def _await_body(self, conn: UpstreamConnection, read_timeout: float) -> None:
        """Wait for the end of the body; a gap longer than ``read_timeout`` is a timeout."""
        done = conn.done
        loop = asyncio.get_running_loop()
        conn.last_read = loop.time()
        while not done.done():
            remaining = conn.last_read + read_timeout - loop.time()
            if conn.read_paused:
                remaining = read_timeout  # the client is slow, not the upstream
                conn.last_read = loop.time()
            if remaining <= 0:
                raise UpstreamError(504, "upstream timed out while reading the body", sent=True)
            try:
                await asyncio.wait_for(asyncio.shield(done), remaining)
            except TimeoutError:
                continue
        done.result()

    async def _tunnel(
        self, proto: HttpProtocol, req: HttpRequest, ctx: RequestContext,
        conn: UpstreamConnection, headers: list[tuple[bytes, bytes]],
    ) -> None:
        """Switch both connections to a raw byte tunnel after ``101 Switching Protocols``."""
        parts = [pages.status_line(101), self._server_line]
        for name, value in headers:
            if name.lower() != b"server":
                parts += (name, b": ", value, b"\r\n")
        parts.append(b"\r\n")
        ctx.status = 101
        proto.write(b"".join(parts))
        closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on_close() -> None:
            if (proto.closed or conn.closed) and not closed.done():
                closed.set_result(None)

        proto.on_write_resumed = on_close
        conn.on_close = on_close
        conn.raw_target = proto.write
        proto.start_tunnel(conn.write, req.upgrade_data)
        if conn.closed:
            on_close()
        try:
            await closed
        finally:
            proto.on_write_resumed = None
            proto.close()
            conn.close()
