"""Client-side TLS toward ``https``/``grpcs`` upstreams (spec §5.1 ``tls``, §5.4).

:class:`UpstreamTls` hands each compiled upstream its :class:`ssl.SSLContext` once, when the
upstream is compiled (never per connection):

* ``tls.verify`` true: the upstream's certificate is verified, with its host name, against
  ``apisix.ssl.ssl_trusted_certificate`` (a CA bundle file), else the system trust store;
  false (the default): not verified, as nginx's ``proxy_ssl_verify off``;
* ``tls.client_cert``/``client_key`` (key decrypted with the keyring when encrypted), or
  ``tls.client_cert_id`` naming a ``type: client`` ssl object: presented to the upstream
  (mTLS). A missing or non-client ``client_cert_id`` gives the upstream an error that
  answers 502 (spec §5.7).

Contexts are shared between upstreams with the same settings (a small cache keyed by them),
and each has a tag that goes into the keep-alive pool key, so connections made with one
certificate or verification setting are never reused under another.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
from collections.abc import Mapping
from typing import Any

from kernel.tls.certs import ALPN, CompiledSsl, TlsSettings, load_pairs

__all__ = ["DEFAULT_UPSTREAM_TLS", "UpstreamTls", "configure_default", "upstream_sni"]

log = logging.getLogger("sixgate.tls")

_CACHE_MAX = 256
_cache: dict[tuple[Any, ...], tuple[ssl.SSLContext, str, str | None]] = {}

UpstreamContext = tuple[ssl.SSLContext, str, str | None]
"""``(context, pool tag, error)``: with an error the upstream answers 502 without connecting."""


class UpstreamTls:
    """What one state build makes upstream contexts from."""

    __slots__ = ("settings", "ssls")

    def __init__(self, settings: TlsSettings | None = None,
                 ssls: Mapping[str, CompiledSsl] | None = None) -> None:
        self.settings = settings or TlsSettings()
        self.ssls: Mapping[str, CompiledSsl] = ssls if ssls is not None else {}

    def context_for(self, tls: Mapping[str, Any] | None) -> UpstreamContext:
        """The context for an upstream whose ``tls`` object is ``tls``."""
        tls = tls or {}
        verify = bool(tls.get("verify"))
        pair: tuple[str, str] | None = None
        error: str | None = None
        cid = tls.get("client_cert_id")
        if cid is not None:
            entry = self.ssls.get(str(cid))
            if entry is None:
                error = f"failed to get ssl cert: ssl id [{cid}] not exits"
            elif entry.type != "client":
                error = "failed to get ssl cert: ssl type should be 'client'"
            elif not entry.pairs:
                error = f"failed to get ssl cert: ssl {cid} has no certificate"
            else:
                pair = entry.pairs[0]
        elif tls.get("client_cert") and tls.get("client_key"):
            key = str(tls["client_key"])
            keyring = self.settings.keyring
            if keyring and not key.startswith("---"):
                key = keyring.decrypt(key) or key
            pair = (str(tls["client_cert"]), key)
        trusted = self.settings.trusted_certificate if verify else None
        cache_key = (verify, trusted, pair)
        hit = _cache.get(cache_key)
        if hit is None:
            hit = _build(verify, trusted, pair)
            if len(_cache) >= _CACHE_MAX:
                _cache.clear()
            _cache[cache_key] = hit
        if error is not None:
            log.error("%s: requests to this upstream get 502", error)
            return hit[0], hit[1], error
        return hit


def _build(verify: bool, trusted: str | None, pair: tuple[str, str] | None) -> UpstreamContext:
    tag = hashlib.sha256(repr((verify, trusted, pair)).encode()).hexdigest()[:16]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    error: str | None = None
    if verify:
        try:
            if trusted:
                ctx.load_verify_locations(cafile=trusted)
            else:
                ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        except (OSError, ssl.SSLError) as err:
            error = f"cannot load ssl_trusted_certificate {trusted}: {err}"
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(ALPN)
    if pair is not None:
        try:
            load_pairs(ctx, [pair])
        except (OSError, ssl.SSLError, ValueError) as err:
            error = f"cannot load the upstream client certificate: {err}"
    if error is not None:
        log.error("%s", error)
    return ctx, tag, error


DEFAULT_UPSTREAM_TLS = UpstreamTls()
"""For upstreams compiled outside a state build (a plugin's inline upstream): no
``client_cert_id`` lookups; the process's settings once :func:`configure_default` ran."""


def configure_default(settings: TlsSettings) -> None:
    """Use ``settings`` (trusted CA bundle, keyring) for :data:`DEFAULT_UPSTREAM_TLS`."""
    DEFAULT_UPSTREAM_TLS.settings = settings


def upstream_sni(host: str | None) -> str | None:
    """The name toward an upstream: the Host sent without its port (``[v6]`` unbracketed;
    an IP literal is passed on too: Python sends no SNI for it but checks the IP SAN)."""
    if not host:
        return None
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end > 0 else host
    colon = host.rfind(":")
    if colon > 0 and host.count(":") == 1:
        return host[:colon]
    return host
