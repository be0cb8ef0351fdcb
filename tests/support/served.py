"""An aiohttp application served on 127.0.0.1 from a thread of its own: the base of the tests'
upstreams, collectors and TLS servers."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from typing import Self

from aiohttp import web


class ServedApp:
    """Subclasses add their routes in :meth:`routes`. ``port`` 0 (the default) takes a free
    port at :meth:`start`; ``ssl_context`` serves HTTPS."""

    port: int = 0
    ssl_context: ssl.SSLContext | None = None
    thread_name = "test-server"
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            app = web.Application()
            self.routes(app)
            runner = web.AppRunner(app, access_log=None)
            try:
                loop.run_until_complete(runner.setup())
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("127.0.0.1", self.port))
                self.port = sock.getsockname()[1]
                site = web.SockSite(runner, sock, ssl_context=self.ssl_context)
                loop.run_until_complete(site.start())
            except BaseException as err:  # reported to the starting thread
                errors.append(err)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name=self.thread_name, daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError(f"{type(self).__name__} did not start")
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)
