"""Responses the gateway writes itself, and the client's response head for proxied ones.

:class:`ResponseWriter` is mixed into :class:`kernel.proxy.Proxy`; it needs only the server
header line, the ``show_upstream_status`` flag and the ``Date`` cache set up there.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from kernel import pages
from kernel.chain import Chain, run_response_phase, run_response_phase_async
from kernel.context import (
    RESPONSE_SKIP,
    RequestContext,
    ResponseState,
    apply_pending,
    view_from_upstream,
)
from plugin_sdk import Headers, Response

if TYPE_CHECKING:
    from kernel.server import HttpProtocol, HttpRequest

TEXT = "text/plain; charset=utf-8"
HTML = "text/html; charset=utf-8"


class DateHeader:
    """The ``Date`` header value, formatted at most once per second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now)).encode()
        return self._value


class ResponseWriter:
    """Builds response heads and writes gateway-generated responses."""

    _server_line: bytes
    _date: DateHeader
    show_upstream_status: bool

    async def send_response(
        self, proto: HttpProtocol, ctx: RequestContext, resp: Response, chain: Chain
    ) -> None:
        """Answer with a plugin's :class:`Response`."""
        body = resp.body_bytes()
        content_type = TEXT if body is not None else HTML
        await self.send_generated(proto, ctx, resp.status, body, content_type, chain, resp.headers)

    async def send_generated(
        self,
        proto: HttpProtocol,
        ctx: RequestContext,
        status: int,
        body: bytes | None,
        content_type: str,
        chain: Chain,
        extra: Any = None,
        upstream_status: str | None = None,
    ) -> None:
        """Write a response produced by the gateway itself (not proxied)."""
        if body is None:
            body = pages.error_page(status)
            content_type = HTML
        headers = Headers([("Content-Type", content_type)]) if body else Headers()
        if extra:
            for name, value in extra.items():
                headers.set(name, str(value))
        if upstream_status is not None:
            headers.set("X-APISIX-Upstream-Status", upstream_status)
        apply_pending(ctx, headers)
        view = ctx.response_view = ResponseState(status, headers)
        if chain.header_filter:
            if chain.header_filter_async:
                await run_response_phase_async(chain.header_filter, ctx)
            else:
                run_response_phase(chain.header_filter, ctx)
            status = view.status
        if chain.body_filter:
            view.chunk, view.eof = body, True
            run_response_phase(chain.body_filter, ctx)
            body = view.chunk
        req = ctx.request
        head = [pages.status_line(status), self._server_line, b"Date: ", self._date.get(), b"\r\n"]
        for name, value in view.headers.items():
            if name.lower() == "content-length":
                continue
            head.append(f"{name}: {value}\r\n".encode("latin-1"))
        if status not in (204, 304) and status >= 200:
            head.append(b"Content-Length: " + str(len(body)).encode() + b"\r\n")
        data, _, no_body = self._close_head(head, req, ctx, status, True)
        if not no_body:
            ctx.bytes_sent += len(body)
            ctx.body_bytes_sent = len(body)
            data += body
        proto.write(data)

    # --- proxying ---------------------------------------------------------------------

    def response_view(
        self, ctx: RequestContext, status: int, headers: list[tuple[bytes, bytes]]
    ) -> ResponseState:
        """``ctx.response`` for header/body filters, from the upstream's head."""
        upstream_status = None
        if status >= 500 or self.show_upstream_status:
            upstream_status = ", ".join(ctx.upstream_statuses or ())
        return view_from_upstream(ctx, status, headers, upstream_status)

    def head_from_view(
        self, req: HttpRequest, ctx: RequestContext, view: ResponseState, chain: Chain
    ) -> tuple[bytes, bool, bool]:
        """The client's response head after header filters: ``(head, chunked, no_body)``."""
        if chain.body_filter:
            view.headers.remove("Content-Length")
        parts = [pages.status_line(view.status), self._server_line]
        length_known = False
        for name, value in view.headers.items():
            if name.lower() == "content-length":
                length_known = True
            parts.append(f"{name}: {value}\r\n".encode("latin-1"))
        return self._close_head(parts, req, ctx, view.status, length_known)

    def head_from_raw(
        self, req: HttpRequest, ctx: RequestContext, status: int,
        headers: list[tuple[bytes, bytes]],
    ) -> tuple[bytes, bool, bool]:
        """The client's response head straight from the upstream's: ``(head, chunked, no_body)``.

        Headers plugins set before the head (``ctx.set_response_header``) replace the
        upstream's of the same name, as on a view. ``ctx.response`` is made from the same
        parts only if something reads it later."""
        parts = [pages.status_line(status), self._server_line]
        length_known = False
        skip = RESPONSE_SKIP
        pending = ctx.response_pending
        if pending:
            length_known = b"content-length" in pending
            for name, value in headers:
                lname = name.lower()
                if lname in skip or lname in pending:
                    continue
                if lname == b"content-length":
                    length_known = True
                parts += (name, b": ", value, b"\r\n")
        else:
            for name, value in headers:
                lname = name.lower()
                if lname in skip:
                    continue
                if lname == b"content-length":
                    length_known = True
                parts += (name, b": ", value, b"\r\n")
        upstream_status = None
        if status >= 500 or self.show_upstream_status:
            upstream_status = ", ".join(ctx.upstream_statuses or ())
            parts += (b"X-APISIX-Upstream-Status: ", upstream_status.encode(), b"\r\n")
        if pending:
            for name_s, value_s in pending.values():
                parts += (name_s.encode("latin-1"), b": ", value_s.encode("latin-1"), b"\r\n")
        ctx.response_raw = (status, headers, upstream_status)
        if ctx.response_view is not None:
            ctx.response_view = None  # a view made before the head: ctx.response is this one
        return self._close_head(parts, req, ctx, status, length_known)

    def _close_head(
        self, parts: list[bytes], req: HttpRequest, ctx: RequestContext, status: int,
        length_known: bool,
    ) -> tuple[bytes, bool, bool]:
        no_body = req.method == "HEAD" or status in (204, 304) or 100 <= status < 200
        chunked = not length_known and not no_body and req.version == "1.1"
        if chunked:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        keep = req.keep_alive and (req.body_stream is None or req.body_stream.complete)
        if not length_known and not no_body and not chunked:
            keep = False
        if not keep:
            req.keep_alive = False
            parts.append(b"Connection: close\r\n")
        elif req.version == "1.0":
            parts.append(b"Connection: keep-alive\r\n")
        parts.append(b"\r\n")
        head = b"".join(parts)
        ctx.status = status
        ctx.bytes_sent = len(head)
        return head, chunked, no_body
