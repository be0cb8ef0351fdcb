"""The direct path: a proxied request driven by parser callbacks, without a task.

Used when the route's plugins are all synchronous and have no body filter, the request has no
body, and an idle keep-alive connection to the picked node is at hand — the common case. The
exchange is then a chain of callbacks (client head parsed → request written upstream →
upstream head → response written → connection released) with no task, no future and no
timer per request. Anything unusual (a failure before the response head, a plugin answering
itself) hands the request to the task-based path in :mod:`kernel.proxy`, which has retries and
the general machinery.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from kernel.chain import run_response_phase

if TYPE_CHECKING:
    from kernel.context import RequestContext
    from kernel.proxy import Proxy
    from kernel.server import HttpProtocol, HttpRequest
    from kernel.state import CompiledRoute
    from kernel.upstream.connection import UpstreamConnection, UpstreamError
    from kernel.upstream.nodes import Node

log = logging.getLogger("sixgate.proxy")


class DirectExchange:
    """One request/response exchange with an upstream, driven by the connection's callbacks."""

    __slots__ = (
        "chunked",
        "conn",
        "ctx",
        "head",
        "no_body",
        "node",
        "proto",
        "proxy",
        "req",
        "route",
        "sent",
        "started",
    )

    def __init__(
        self,
        proxy: Proxy,
        proto: HttpProtocol,
        req: HttpRequest,
        ctx: RequestContext,
        route: CompiledRoute,
        node: Node,
        conn: UpstreamConnection,
    ) -> None:
        self.proxy = proxy
        self.proto = proto
        self.req = req
        self.ctx = ctx
        self.route = route
        self.node = node
        self.conn = conn
        self.head: bytes | None = None
        self.chunked = False
        self.no_body = False
        self.sent = 0
        self.started = 0.0

    def start(self, request_head: bytes, read_timeout: float) -> None:
        conn = self.conn
        conn.begin(skip_body=self.req.method == "HEAD", listener=self)
        conn.write(request_head)
        self.started = self.proxy.pool.deadlines.watch(conn, read_timeout)

    # --- Listener -------------------------------------------------------------------------
    def on_head(self) -> None:
        proxy, ctx, conn = self.proxy, self.ctx, self.conn
        ctx.upstream_header_time = proxy.loop.time() - self.started
        statuses = ctx.upstream_statuses
        if statuses is not None:
            statuses.append(str(conn.status))
        checker = self.route.upstream.checker  # type: ignore[union-attr]
        if checker is not None:  # passive health check
            checker.report_status(self.node, conn.status)
        chain = self.route.chain
        if chain.header_filter:
            view = proxy.response_view(ctx, conn.status, conn.headers)
            run_response_phase(chain.header_filter, ctx)
            self.head, self.chunked, self.no_body = proxy.head_from_view(
                self.req, ctx, view, chain
            )
        else:
            self.head, self.chunked, self.no_body = proxy.head_from_raw(
                self.req, ctx, conn.status, conn.headers
            )
        conn.sink = self._sink
        self.proto.on_write_resumed = conn.resume_reading

    def _sink(self, chunk: bytes) -> None:
        proto = self.proto
        if proto.closed:
            self.conn.close()  # the client is gone: stop reading; on_error finishes up
            return
        if self.no_body:
            return
        self.sent += len(chunk)
        data = b"%x\r\n%b\r\n" % (len(chunk), chunk) if self.chunked else chunk
        head = self.head
        if head is not None:
            self.head = None
            data = head + data
        proto.write(data)
        if proto.write_paused:
            self.conn.pause_reading()

    def flush(self) -> None:
        """End of one read from the upstream: send the head if no body came with it."""
        head = self.head
        if head is not None:
            self.head = None
            self.proto.write(head)

    def on_complete(self) -> None:
        proxy, conn = self.proxy, self.conn
        proxy.pool.deadlines.unwatch(conn)
        head = self.head
        tail = b"0\r\n\r\n" if self.chunked else b""
        if head is not None:
            self.head = None
            self.proto.write(head + tail if tail else head)
        elif tail:
            self.proto.write(tail)
        self._account()
        if self.proto.closed:
            conn.close()
        else:
            proxy.pool.release(conn, self.route.upstream.pool)  # type: ignore[union-attr]
        self._finish()

    def on_error(self, err: UpstreamError) -> None:
        proxy, conn = self.proxy, self.conn
        proxy.pool.deadlines.unwatch(conn)
        conn.listener = None
        conn.close()
        self.proto.on_write_resumed = None
        if not conn.head_seen:
            # Nothing reached the client yet: the task path retries or answers the error.
            proxy.continue_after_failure(self.proto, self.req, self.ctx, self.route, self.node,
                                         err)
            return
        log.error("%s while reading the response body (route %s)", err, self.route.id)
        self.proto.abort()
        self._account()
        self._finish()

    # --- the end of the request ---------------------------------------------------------
    def _account(self) -> None:
        ctx = self.ctx
        ctx.body_bytes_sent = self.sent
        ctx.bytes_sent += self.sent
        ctx.upstream_response_time = self.proxy.loop.time() - self.started

    def _finish(self) -> None:
        upstream = self.route.upstream
        if upstream is not None and upstream.picker is not None:
            upstream.picker.done(self.node, self.ctx.upstream_response_time)
        self.proto.on_write_resumed = None
        self.conn.sink = None
        self.conn.listener = None
        self.proxy.finish_sync(self.proto, self.req, self.ctx)
