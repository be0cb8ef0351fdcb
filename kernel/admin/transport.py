"""HTTP details of the Admin API (spec §2.2): replies, headers, CORS, body limit, JSON bodies."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from kernel.pages import error_page

log = logging.getLogger("sixgate.admin")

SERVER = "APISIX/3.18.0"
MAX_REQ_BODY = 1572864
"""1.5 MiB, APISIX's ``MAX_REQ_BODY``."""

_NO_BODY = object()


class AdminError(Exception):
    """An early answer: ``status`` with a JSON object (or a plain string) as body."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(status, body)
        self.status = status
        self.body = body


def error(status: int, message: str) -> AdminError:
    return AdminError(status, {"error_msg": message})


def encode(body: Any) -> bytes:
    """JSON (compact) for objects and arrays, the text itself for strings; a trailing newline
    as ``ngx.say`` writes it."""
    if isinstance(body, str):
        return body.encode() + b"\n"
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def reply(status: int, body: Any = _NO_BODY) -> web.Response:
    data = b"" if body is _NO_BODY else encode(body)
    resp = web.Response(status=status, body=data)
    resp.headers["Content-Type"] = "application/json"
    return resp


def nginx_page(status: int) -> web.Response:
    """nginx's own HTML error page (paths outside the admin router, denied clients)."""
    resp = web.Response(status=status, body=error_page(status))
    resp.headers["Content-Type"] = "text/html"
    return resp


async def read_body(request: web.Request) -> Any:
    """The request body decoded as JSON; ``None`` when empty. Raises :class:`AdminError`."""
    declared = request.content_length
    if declared is not None and declared > MAX_REQ_BODY:
        raise _too_big(declared)
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.readany()
        if not chunk:
            break
        size += len(chunk)
        if size > MAX_REQ_BODY:
            raise _too_big(declared if declared is not None else size)
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw:
        return None
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise AdminError(
            400, {"error_msg": "invalid request body: " + _cjson_message(exc), "req_body": text}
        ) from None


def _too_big(size: int) -> AdminError:
    return error(
        400,
        f"invalid request body: request size {size} is greater than the maximum size "
        f"{MAX_REQ_BODY} allowed",
    )


def _cjson_message(exc: json.JSONDecodeError) -> str:
    """lua-cjson's wording for the common decode failures."""
    at = exc.pos + 1
    if exc.msg.startswith("Expecting value"):
        return f"Expected value but found invalid token at character {at}"
    if exc.msg.startswith("Extra data"):
        return f"Expected the end but found invalid token at character {at}"
    if exc.msg.startswith("Expecting property name"):
        return f"Expected object key string but found invalid token at character {at}"
    if exc.msg.startswith("Unterminated string"):
        return f"Expected value but found unexpected end of string at character {at}"
    return f"{exc.msg} at character {at}"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Credentials": "true",
    "Access-Control-Expose-Headers": "*",
    "Access-Control-Max-Age": "3600",
}
OPTIONS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, GET, PUT, OPTIONS, DELETE, PATCH",
    "Access-Control-Max-Age": "3600",
    "Access-Control-Allow-Headers": "*",
    "Access-Control-Allow-Credentials": "true",
    "Content-Type": "text/plain",
}


def make_transport_middleware(cors: Callable[[], bool]) -> Any:
    """Server / X-API-VERSION headers, CORS, OPTIONS and :class:`AdminError` answers."""

    @web.middleware
    async def transport(request: web.Request, handler: Handler) -> web.StreamResponse:
        enable_cors = cors()
        if enable_cors and request.method == "OPTIONS":
            resp: web.StreamResponse = web.Response(status=200, body=b"")
            resp.headers.update(OPTIONS_HEADERS)
        else:
            try:
                resp = await handler(request)
            except AdminError as exc:
                resp = reply(exc.status, exc.body)
            except web.HTTPException:
                raise
            except Exception:
                log.exception("admin API request %s %s failed", request.method, request.path)
                resp = reply(500, {"error_msg": "internal server error"})
            if enable_cors:
                resp.headers.update(CORS_HEADERS)
        resp.headers["Server"] = SERVER
        if resp.headers.get("Content-Type", "").startswith("application/json"):
            resp.headers["X-API-VERSION"] = "v3"
        return resp

    return transport
