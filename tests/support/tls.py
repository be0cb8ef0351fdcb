"""Real certificates and TLS peers for the TLS tests (``cryptography``, no fixtures on disk).

* :class:`CA` -- a test certificate authority issuing server and client certificates
  (ECDSA P-256 by default, RSA 2048 on request);
* :func:`tls_request` / :func:`handshake` -- a client choosing its SNI, trust, client
  certificate and TLS version, reporting the certificate the server presented;
* :class:`TlsUpstream` -- an HTTPS upstream (aiohttp in a thread) that reports the SNI it was
  reached with and the client certificate it was shown, optionally requiring one.
"""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import json
import os
import socket
import ssl
import tempfile
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.served import ServedApp
from tests.support.upstream import free_port

_NOW = datetime.datetime.now(datetime.UTC)


def _key_pem(key: Any) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


@dataclass(frozen=True)
class Issued:
    cert: str
    key: str

    @property
    def der(self) -> bytes:
        return x509.load_pem_x509_certificate(self.cert.encode()).public_bytes(
            serialization.Encoding.DER)

    @property
    def serial(self) -> int:
        return x509.load_pem_x509_certificate(self.cert.encode()).serial_number


class CA:
    """A certificate authority for one test module (``parent``: an intermediate CA of it,
    whose certificates come with the intermediate's certificate as their chain)."""

    cert: x509.Certificate
    chain: str
    parent: CA | None

    def __init__(self, name: str = "sixgate test CA", parent: CA | None = None) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            x509.CertificateBuilder().subject_name(subject)
            .issuer_name(parent.cert.subject if parent else subject)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(_NOW - datetime.timedelta(days=1))
            .not_valid_after(_NOW + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(parent.key if parent else self.key, hashes.SHA256())
        )
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM).decode()
        self.chain = self.pem + (parent.chain if parent is not None and parent.parent else "")
        self.parent = parent

    def issue(self, *names: str, rsa_key: bool = False, client: bool = False,
              days: int = 90) -> Issued:
        key: Any = (rsa.generate_private_key(65537, 2048) if rsa_key
                    else ec.generate_private_key(ec.SECP256R1()))
        sans: list[x509.GeneralName] = []
        for n in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_NOW - datetime.timedelta(days=1))
            .not_valid_after(_NOW + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        chain = self.chain if self.parent is not None else ""
        return Issued(cert.public_bytes(serialization.Encoding.PEM).decode() + chain,
                      _key_pem(key))


def load_pair(ctx: ssl.SSLContext, pair: Issued) -> None:
    fd, path = tempfile.mkstemp(suffix=".pem")
    try:
        os.write(fd, (pair.cert + pair.key).encode())
        os.close(fd)
        ctx.load_cert_chain(path)
    finally:
        os.unlink(path)


def client_context(*, ca: CA | None = None, client: Issued | None = None,
                   version: ssl.TLSVersion | None = None, ciphers: str | None = None
                   ) -> ssl.SSLContext:
    """A client context: verifying against ``ca`` (else not verifying), presenting
    ``client``, limited to ``version`` and (TLS 1.2) ``ciphers``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca is not None:
        ctx.load_verify_locations(cadata=ca.pem)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if client is not None:
        load_pair(ctx, client)
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    return ctx


def handshake(port: int, sni: str | None, ctx: ssl.SSLContext | None = None,
              timeout: float = 5.0) -> bytes:
    """The DER certificate the server presents for ``sni`` (raises ``ssl.SSLError``/
    ``OSError`` when the handshake fails)."""
    ctx = ctx or client_context()
    with socket.create_connection(("127.0.0.1", port), timeout) as raw, \
            ctx.wrap_socket(raw, server_hostname=sni) as s:
        der = s.getpeercert(binary_form=True)
        assert der is not None
        return der


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        return json.loads(self.body)


def tls_request(port: int, sni: str | None, path: str = "/", *, host: str | None = None,
                ctx: ssl.SSLContext | None = None, timeout: float = 5.0,
                method: str = "GET") -> Reply:
    """One HTTPS request to the gateway on ``port`` with SNI ``sni`` (Host: ``host``,
    default the SNI)."""
    ctx = ctx or client_context()
    raw = socket.create_connection(("127.0.0.1", port), timeout)
    try:
        sock = ctx.wrap_socket(raw, server_hostname=sni)
    except BaseException:
        raw.close()
        raise
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.sock = sock
    try:
        conn.request(method, path, headers={"Host": host or sni or "localhost"})
        r = conn.getresponse()
        return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


class TlsUpstream(ServedApp):
    """An HTTPS upstream on 127.0.0.1: ``/info`` answers ``{"sni", "client", "path"}`` (the
    SNI it was reached with, its client certificate's common name); anything else
    ``tls <port> <path>``. With ``client_ca`` a client certificate is required."""

    def __init__(self, pair: Issued, client_ca: CA | None = None) -> None:
        self.port = free_port()
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        load_pair(self.ctx, pair)
        if client_ca is not None:
            self.ctx.load_verify_locations(cadata=client_ca.pem)
            self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.snis: list[str | None] = []
        self.ctx.sni_callback = self._on_sni
        self.ssl_context = self.ctx

    def _on_sni(self, _obj: Any, name: str | None, _ctx: Any) -> None:
        self.snis.append(name)

    async def _any(self, request: web.Request) -> web.Response:
        if request.path == "/info":
            sslobj = request.transport.get_extra_info("ssl_object") if request.transport else None
            peer = sslobj.getpeercert() if sslobj is not None else None
            cn = None
            for rdn in (peer or {}).get("subject", ()):
                for k, v in rdn:
                    if k == "commonName":
                        cn = v
            return web.json_response({"sni": self.snis[-1] if self.snis else None,
                                      "client": cn, "path": request.path})
        return web.Response(text=f"tls {self.port} {request.path}\n")

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self._any)
