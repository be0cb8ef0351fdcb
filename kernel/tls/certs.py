"""SSL objects compiled for the TLS layer (spec §2.11, §10.1, §10.2).

:func:`compile_ssl` turns one stored ssl object into a :class:`CompiledSsl`, once per version
of the object (the state build keeps the previous build's entries for unchanged objects):

* private keys decrypted with ``apisix.data_encryption.keyring`` (values not starting with
  ``---``), ``$env://NAME`` references resolved;
* ``type: server`` (status 1): one :class:`ssl.SSLContext` holding every cert/key pair of the
  object (``cert``/``key`` plus ``certs``/``keys``: RSA and ECDSA side by side), the listener's
  protocols and ciphers, ALPN ``http/1.1``, and with ``client.ca`` the client CA store;
* ``type: client``: the decrypted pair, for upstream mTLS (``tls.client_cert_id``);
* the certificates' expiry and serial (:func:`certificates_report`).

A pair that does not load leaves the object without a context (logged; its SNIs are not
served) rather than failing the whole build.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import re
import ssl
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kernel.encryption import DataEncryption, Keyring, decrypt_ssl

__all__ = [
    "ALPN",
    "CertInfo",
    "CompiledSsl",
    "Mtls",
    "TlsSettings",
    "compile_ssl",
    "load_pairs",
    "normalize_sni",
]

log = logging.getLogger("sixgate.tls")

ALPN = ["http/1.1"]
"""What the listener and upstream connections offer: HTTP/2 is not served."""

_VERSIONS = {
    "TLSv1": ssl.TLSVersion.TLSv1,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}


def normalize_sni(name: str) -> str:
    """An SNI (or Host) as the ssl table indexes names: lower case, no trailing dot."""
    return name.lower().rstrip(".")


@dataclass(frozen=True, eq=False)
class TlsSettings:
    """``apisix.ssl.*`` and the data-encryption keyring, read once from config.yaml.

    Compared by identity: a build cache made with other settings is not reused."""

    protocols: tuple[str, ...] = ("TLSv1.2", "TLSv1.3")
    ciphers: str | None = None
    fallback_sni: str | None = None
    trusted_certificate: str | None = None
    """A CA bundle path for upstream verification; ``None``: the system's trust store."""
    keyring: Keyring | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> TlsSettings:
        section = cfg.get("apisix.ssl") or {}
        if not isinstance(section, Mapping):
            section = {}
        protocols = tuple(
            p for p in str(section.get("ssl_protocols") or "TLSv1.2 TLSv1.3").split()
            if p in _VERSIONS
        ) or ("TLSv1.2", "TLSv1.3")
        trusted = section.get("ssl_trusted_certificate")
        trusted_path: str | None = None
        if trusted and str(trusted) != "system":
            resolve = getattr(cfg, "resolve", None)
            trusted_path = str(resolve(str(trusted)) if resolve is not None else trusted)
            if not os.path.isfile(trusted_path):
                log.error("apisix.ssl.ssl_trusted_certificate %s: no such file; upstreams with "
                          "tls.verify will fail (502)", trusted_path)
        fallback = section.get("fallback_sni")
        ciphers = section.get("ssl_ciphers")
        return cls(
            protocols=protocols,
            ciphers=str(ciphers) if ciphers else None,
            fallback_sni=normalize_sni(str(fallback)) if fallback else None,
            trusted_certificate=trusted_path,
            keyring=DataEncryption.from_config(cfg).keyring,
        )

    def apply(self, ctx: ssl.SSLContext) -> None:
        """Protocol range and (TLS 1.2) cipher list of a server context."""
        versions = sorted(_VERSIONS[p] for p in self.protocols)
        with contextlib.suppress(ValueError):
            ctx.minimum_version = versions[0]
            ctx.maximum_version = versions[-1]
        if self.ciphers:
            try:
                ctx.set_ciphers(self.ciphers)
            except ssl.SSLError as err:
                log.error("apisix.ssl.ssl_ciphers %r refused by OpenSSL (%s): defaults kept",
                          self.ciphers, err)
        ctx.set_alpn_protocols(ALPN)

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.apply(ctx)
        return ctx


@dataclass(frozen=True, slots=True)
class CertInfo:
    """What :func:`certificates_report` shows of one certificate."""

    not_after: datetime.datetime
    serial: str
    subject: str


@dataclass(frozen=True, slots=True)
class Mtls:
    """``client`` of a server ssl object: client certificates are verified for its SNIs."""

    depth: int
    skip: tuple[re.Pattern[str], ...]
    """``skip_mtls_uri_regex``: such URIs are served without a verified client certificate
    (the handshake then only asks for one)."""

    def skipped(self, uri: str) -> bool:
        return any(p.search(uri) for p in self.skip)


@dataclass(slots=True, eq=False)
class CompiledSsl:
    """One ssl object ready for the TLS layer (immutable once built)."""

    id: str
    type: str
    enabled: bool
    snis: tuple[str, ...]
    context: ssl.SSLContext | None
    """The server context (``type: server``, loaded); ``None`` otherwise."""
    pairs: tuple[tuple[str, str], ...]
    """Decrypted ``(cert, key)`` pairs (a client object's first one is what upstreams present)."""
    mtls: Mtls | None
    protocols: frozenset[str] | None
    """The object's own ``ssl_protocols`` (checked once the handshake completed)."""
    certs: tuple[CertInfo, ...]
    error: str | None = None


def _secret(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("$env://"):
        return os.environ.get(value[len("$env://"):], "")
    return value


def load_pairs(ctx: ssl.SSLContext, pairs: Sequence[tuple[str, str]]) -> None:
    """``load_cert_chain`` for each PEM pair (the key never touches a disk where the platform
    has anonymous memory files; else a private temporary file, removed at once)."""
    for cert, key in pairs:
        data = (cert.strip() + "\n" + key.strip() + "\n").encode()
        _load_bytes(ctx, data)


def _load_bytes(ctx: ssl.SSLContext, data: bytes) -> None:
    memfd = getattr(os, "memfd_create", None)
    if memfd is not None and os.path.isdir("/proc/self/fd"):
        fd = memfd("sixgate-cert", getattr(os, "MFD_CLOEXEC", 0))
        try:
            os.write(fd, data)
            ctx.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    fd, path = tempfile.mkstemp(suffix=".pem")  # mode 0600
    try:
        os.write(fd, data)
        os.close(fd)
        fd = -1
        ctx.load_cert_chain(path)
    finally:
        if fd >= 0:
            os.close(fd)
        os.unlink(path)


def _cert_infos(pems: Sequence[str]) -> tuple[CertInfo, ...]:
    from cryptography import x509  # here: a gateway without certificates never loads it

    out = []
    for pem in pems:
        try:
            cert = x509.load_pem_x509_certificate(pem.encode())
        except ValueError:
            continue
        out.append(CertInfo(cert.not_valid_after_utc, format(cert.serial_number, "X"),
                            cert.subject.rfc4514_string()))
    return tuple(out)


def compile_ssl(key: str, raw: Mapping[str, Any], settings: TlsSettings) -> CompiledSsl:
    """One stored ssl object in its TLS-layer form (errors are logged and kept on the entry)."""
    plain = decrypt_ssl(raw, settings.keyring) if settings.keyring else raw
    kind = str(plain.get("type") or "server")
    enabled = plain.get("status", 1) != 0
    snis = plain.get("snis") or ([plain["sni"]] if plain.get("sni") else [])
    certs = [_secret(plain.get("cert"))] + [_secret(c) for c in plain.get("certs") or ()]
    keys = [_secret(plain.get("key"))] + [_secret(k) for k in plain.get("keys") or ()]
    pairs = tuple(
        (c, k) for c, k in zip(certs, keys, strict=False)
        if isinstance(c, str) and isinstance(k, str) and c and k
    )
    client = plain.get("client") if isinstance(plain.get("client"), Mapping) else None
    protocols = plain.get("ssl_protocols")
    entry = CompiledSsl(
        id=key, type=kind, enabled=enabled,
        snis=tuple(dict.fromkeys(normalize_sni(str(s)) for s in snis)),
        context=None, pairs=pairs, mtls=None,
        protocols=frozenset(protocols) if protocols else None,
        certs=_cert_infos([c for c, _ in pairs]),
    )
    if kind != "server" or not enabled:
        return entry
    try:
        if not pairs:
            raise ValueError("no certificate and key")
        ctx = settings.server_context()
        load_pairs(ctx, pairs)
        if client is not None:
            ctx.load_verify_locations(cadata=str(_secret(client.get("ca"))))
            skip = tuple(re.compile(p) for p in client.get("skip_mtls_uri_regex") or ())
            ctx.verify_mode = ssl.CERT_OPTIONAL if skip else ssl.CERT_REQUIRED
            entry.mtls = Mtls(int(client.get("depth", 1)), skip)
    except (ssl.SSLError, ValueError, OSError, re.error) as err:
        entry.error = f"cannot load ssl {key}: {err}"
        log.error("%s: its SNIs %s are not served", entry.error, ", ".join(entry.snis))
        return entry
    entry.context = ctx
    return entry
