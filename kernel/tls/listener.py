"""The HTTPS listeners (``apisix.ssl.listen``): certificates chosen per SNI, client mTLS.

One listener context per worker carries no certificate of its own. Its SNI callback runs at
every handshake, reads the *live* state's :class:`~kernel.tls.table.SslTable` (so an ssl object
added, changed or deleted through any store serves, or stops, from the next handshake) and
switches the connection to the matched object's prebuilt context. No SNI: the
``apisix.ssl.fallback_sni`` name is matched instead; nothing matched: the handshake fails.

mTLS (``client.ca``): OpenSSL does not take the verification mode over when a connection
switches context, so the callback sets it on the connection itself (``SSL_set_verify`` and
``SSL_set_verify_depth`` through ctypes, checked against the connection before use): required
(no certificate, or one the CA does not vouch for, fails the handshake) or, with
``client.skip_mtls_uri_regex``, optional. Then every request over TLS whose Host matches an
mTLS object needs a verified client certificate and an SNI equal to the Host, else 400 -- unless
its URI matches the object's ``skip_mtls_uri_regex`` (APISIX's ``verify_https_client``).

The same :class:`~kernel.server.HttpProtocol` serves HTTP over TLS (ALPN offers ``http/1.1``
only); ``$scheme`` is ``https`` and ``$ssl_server_name`` the SNI.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

from kernel import pages
from kernel.server import Connections, Handler, HttpProtocol, HttpRequest, RealIP, ServerLimits
from kernel.tls.certs import CompiledSsl, TlsSettings, normalize_sni
from kernel.tls.table import EMPTY_SSL_TABLE, SslTable

__all__ = ["TlsHttpProtocol", "listener_context", "serve_tls"]

log = logging.getLogger("sixgate.tls")

_SSL_VERIFY_PEER = 0x01
_SSL_VERIFY_FAIL_IF_NO_PEER_CERT = 0x02
_TLS_ATTR = "_sixgate_tls"


class _Verify:
    """``SSL_set_verify`` on one connection's ``SSL*`` (found once, checked at every use)."""

    def __init__(self) -> None:
        self.lib: Any = None
        self.ok = False
        try:
            import _ssl

            lib = ctypes.CDLL(getattr(_ssl, "__file__", None))
            lib.SSL_set_verify.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
            lib.SSL_set_verify.restype = None
            lib.SSL_set_verify_depth.argtypes = [ctypes.c_void_p, ctypes.c_int]
            lib.SSL_set_verify_depth.restype = None
            lib.SSL_get_SSL_CTX.argtypes = [ctypes.c_void_p]
            lib.SSL_get_SSL_CTX.restype = ctypes.c_void_p
            self.lib = lib
            self.ok = True
        except (OSError, AttributeError) as err:
            log.error("client certificate verification unavailable (%s): requests to mTLS "
                      "SNIs get 400", err)

    @staticmethod
    def _pointer(obj: object, offset: int) -> int | None:
        return ctypes.c_void_p.from_address(id(obj) + offset).value

    def set(self, sslobj: Any, current: ssl.SSLContext, required: bool, depth: int) -> bool:
        """Ask the client of ``sslobj`` (still on the context ``current``) for a certificate."""
        if not self.ok:
            return False
        head = object.__basicsize__  # PyObject_HEAD
        inner = getattr(sslobj, "_sslobj", None)
        if inner is None:
            return False
        ssl_ptr = self._pointer(inner, head + ctypes.sizeof(ctypes.c_void_p))
        ctx_ptr = self._pointer(current, head)
        if not ssl_ptr or not ctx_ptr or self.lib.SSL_get_SSL_CTX(ssl_ptr) != ctx_ptr:
            self.ok = False
            log.error("client certificate verification unavailable on this Python build: "
                      "requests to mTLS SNIs get 400")
            return False
        mode = _SSL_VERIFY_PEER | (_SSL_VERIFY_FAIL_IF_NO_PEER_CERT if required else 0)
        self.lib.SSL_set_verify(ssl_ptr, mode, None)
        self.lib.SSL_set_verify_depth(ssl_ptr, depth)
        return True


_verify: _Verify | None = None


def _verifier() -> _Verify:
    global _verify
    if _verify is None:
        _verify = _Verify()
    return _verify


def listener_context(
    settings: TlsSettings, table: Callable[[], SslTable]
) -> ssl.SSLContext:
    """The context of the HTTPS listeners: picks each connection's certificate by SNI from
    ``table()`` (the live state's ssl table)."""
    base = settings.server_context()
    fallback = settings.fallback_sni

    def on_sni(sslobj: Any, server_name: str | None, current: ssl.SSLContext) -> int | None:
        try:
            name = normalize_sni(server_name) if server_name else fallback
            if not name:
                log.info("TLS handshake without SNI and no apisix.ssl.fallback_sni: refused")
                return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE
            entry = table().match(name)
            if entry is None or entry.context is None:
                log.warning("failed to find any SSL certificate by SNI: %s", name)
                return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE
            mtls = entry.mtls
            if mtls is not None:
                _verifier().set(sslobj, current, not mtls.skip, mtls.depth)
            sslobj.context = entry.context
            setattr(sslobj, _TLS_ATTR, (name, entry))
            return None
        except Exception:
            log.exception("TLS SNI callback failed")
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR

    base.sni_callback = on_sni
    return base


_BAD_REQUEST = pages.error_page(400)


class TlsHttpProtocol(HttpProtocol):
    """:class:`HttpProtocol` on a TLS connection: knows its SNI and ssl object, and checks
    client certificates per request where an mTLS object covers the Host."""

    __slots__ = ("_downstream", "_table", "ssl_client_verify", "ssl_entry", "ssl_server_name")

    def __init__(
        self,
        handler: Handler,
        limits: ServerLimits,
        real_ip: RealIP,
        tracker: Connections,
        table: Callable[[], SslTable],
    ) -> None:
        super().__init__(self._guard, limits, real_ip, tracker, scheme="https")
        self._downstream = handler
        self._table = table
        self.ssl_server_name: str | None = None
        self.ssl_entry: CompiledSsl | None = None
        self.ssl_client_verify = "NONE"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        sslobj = transport.get_extra_info("ssl_object")
        info = getattr(sslobj, _TLS_ATTR, None)
        if info is None:
            return
        self.ssl_server_name, entry = info
        self.ssl_entry = entry
        if entry.mtls is not None and sslobj.getpeercert():
            self.ssl_client_verify = "SUCCESS"
        if entry.protocols is not None and sslobj.version() not in entry.protocols:
            log.info("ssl %s: %s is not in its ssl_protocols: connection closed",
                     entry.id, sslobj.version())
            self.abort()

    def _guard(self, proto: HttpProtocol, req: HttpRequest) -> None:
        table = self._table()
        if table.has_mtls:
            host = self.host_of(req.host_header).rstrip(".")
            entry = table.match(host)
            if entry is not None and entry.mtls is not None and not entry.mtls.skipped(req.path):
                reason = None
                if self.ssl_client_verify != "SUCCESS":
                    reason = "client certificate was not present"
                elif self.ssl_server_name != host:
                    reason = (f"client certificate verified with SNI {self.ssl_server_name}, "
                              f"but the host is {host}")
                if reason is not None:
                    log.error("%s (client %s)", reason, self.peer_ip)
                    self._bad_request(req)
                    return
        self._downstream(proto, req)

    def _bad_request(self, req: HttpRequest) -> None:
        self.write(
            pages.status_line(400)
            + b"Server: APISIX\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: "
            + str(len(_BAD_REQUEST)).encode()
            + b"\r\nConnection: close\r\n\r\n"
            + _BAD_REQUEST
        )
        req.keep_alive = False
        self.finish_request(req)


def _http2_note(cfg: Any) -> None:
    entries = cfg.get("apisix.ssl.listen") or []
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and entry.get("enable_http2"):
            log.warning("apisix.ssl.listen port %s: enable_http2 is not supported, HTTPS "
                        "serves HTTP/1.1 (ALPN http/1.1)", entry.get("port", 9443))


async def serve_tls(
    gateway: Any, sockets: list[socket.socket]
) -> list[asyncio.base_events.Server]:
    """Serve HTTPS on ``sockets`` (bound from ``apisix.ssl.listen``) for ``gateway``."""
    if not sockets:
        return []
    _http2_note(gateway.cfg)
    holder = gateway.holder

    def table() -> SslTable:
        return getattr(holder.state, "ssls", EMPTY_SSL_TABLE)

    ctx = listener_context(gateway.tls, table)

    def factory() -> TlsHttpProtocol:
        return TlsHttpProtocol(gateway.proxy.dispatch, gateway.limits, gateway.real_ip,
                               gateway.connections, table)

    loop = asyncio.get_running_loop()
    servers: list[asyncio.base_events.Server] = []
    for sock in sockets:
        servers.append(await loop.create_server(factory, sock=sock, ssl=ctx))
        addr = sock.getsockname()
        log.info("listening on %s:%s (TLS)", addr[0], addr[1])
    return servers
