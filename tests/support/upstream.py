"""A real upstream HTTP server for tests (aiohttp, in a background thread).

Endpoints: ``/hello`` → ``hello world``; ``/server_port`` → its port; ``/echo`` → the request
(method, path, query, headers, body) as JSON; ``/mysleep?seconds=`` → sleeps then ``ok``;
``/status/{code}``; ``/stream?chunks=&size=&delay=`` → a chunked body; ``/big?size=`` → a
Content-Length body; ``/negotiate`` → a text gzipped when ``Accept-Encoding`` allows it;
``/ws`` → WebSocket echo; anything else → 200 with the path.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
from typing import Any

from aiohttp import WSMsgType, web

from tests.support.served import ServedApp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Upstream(ServedApp):
    """Start with :meth:`start`; ``port``, ``hits`` (path → count), ``requests`` (last 100)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.hits: dict[str, int] = {}
        self.requests: list[dict[str, Any]] = []

    # --- handlers ---------------------------------------------------------------------
    async def _record(self, request: web.Request) -> dict[str, Any]:
        body = await request.read()
        info = {
            "method": request.method,
            "path": request.path,
            "raw_path": request.raw_path,
            "query": request.query_string,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body": body.decode("latin-1"),
        }
        self.hits[request.path] = self.hits.get(request.path, 0) + 1
        self.requests.append(info)
        del self.requests[:-100]
        return info

    async def _any(self, request: web.Request) -> web.StreamResponse:
        info = await self._record(request)
        path = request.path
        if path == "/hello":
            return web.Response(text="hello world\n")
        if path == "/server_port":
            return web.Response(text=str(self.port))
        if path == "/echo" or path.startswith("/echo/"):
            return web.Response(text=json.dumps(info), content_type="application/json")
        if path == "/mysleep":
            await asyncio.sleep(float(request.query.get("seconds", "1")))
            return web.Response(text="ok\n")
        if path.startswith("/status/"):
            code = int(path.rsplit("/", 1)[1])
            return web.Response(status=code, text=f"status {code}\n")
        if path == "/stream":
            resp = web.StreamResponse()
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            size = int(request.query.get("size", "10"))
            delay = float(request.query.get("delay", "0"))
            for i in range(int(request.query.get("chunks", "3"))):
                await resp.write((str(i % 10) * size).encode())
                if delay:
                    await asyncio.sleep(delay)
            await resp.write_eof()
            return resp
        if path == "/big":
            size = int(request.query.get("size", "1048576"))
            return web.Response(body=b"x" * size)
        if path == "/negotiate":
            # gzip when the client accepts it, as most web servers do
            accept = request.headers.get("Accept-Encoding", "").replace(" ", "").lower()
            body = b"plain text from the upstream\n"
            if "gzip" in accept and "gzip;q=0" not in accept:
                return web.Response(body=gzip.compress(body),
                                    headers={"Content-Encoding": "gzip"})
            return web.Response(body=body)
        if path == "/headers":
            resp = web.Response(text="headers\n")
            resp.headers["X-Upstream"] = str(self.port)
            resp.headers["Server"] = "upstream-server"
            return resp
        return web.Response(text=f"{self.port} {path}\n")

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str("echo: " + msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    # --- lifecycle --------------------------------------------------------------------
    def routes(self, app: web.Application) -> None:
        app.router.add_get("/ws", self._ws)
        app.router.add_route("*", "/{tail:.*}", self._any)
