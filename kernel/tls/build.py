"""What the state build (:func:`kernel.state.build_state`) does for TLS, incrementally.

* :func:`build_ssls` -- the next :class:`SslTable`: only ssl objects added or changed since the
  previous build are compiled (:func:`compile_ssl`); unchanged ones keep their entries (and so
  their contexts), and with no change at all the previous table itself is reused.
* :func:`client_cert_users` -- upstreams (by id), services and routes (inline upstreams) whose
  ``tls.client_cert_id`` names one of the ssl objects that changed: their upstream contexts
  are built again (scanned only when ssl objects changed, which is rare).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from kernel.encryption import Keyring, decrypt_ssl
from kernel.tls.certs import TlsSettings, compile_ssl
from kernel.tls.table import SslTable

__all__ = ["DEFAULT_SETTINGS", "build_ssls", "client_cert_users", "plaintext_ssl"]

DEFAULT_SETTINGS = TlsSettings()


def build_ssls(
    changed: Mapping[str, Any],
    removed: Iterable[str],
    previous: SslTable | None,
    settings: TlsSettings,
) -> SslTable:
    """The ssl table after ``changed`` (key -> stored object) and ``removed`` keys."""
    removed = tuple(removed)
    if previous is not None and not changed and not removed:
        return previous
    entries = dict(previous.by_id) if previous is not None else {}
    for key in removed:
        entries.pop(key, None)
    for key, raw in changed.items():
        entries[key] = compile_ssl(key, raw, settings)
    return SslTable(entries)


def _cert_id(upstream: Any) -> str | None:
    if not isinstance(upstream, Mapping):
        return None
    tls = upstream.get("tls")
    if isinstance(tls, Mapping) and tls.get("client_cert_id") is not None:
        return str(tls["client_cert_id"])
    return None


def client_cert_users(
    ssl_ids: set[str], items: Mapping[str, Mapping[str, Any]], *, inline: bool
) -> dict[str, Any]:
    """``key -> item`` of ``items`` whose upstream (the item itself, or with ``inline`` its
    ``upstream``) refers to one of ``ssl_ids`` through ``tls.client_cert_id``."""
    if not ssl_ids:
        return {}
    out = {}
    for key, item in items.items():
        cid = _cert_id(item.get("upstream") if inline else item)
        if cid is not None and cid in ssl_ids:
            out[key] = item
    return out


def plaintext_ssl(item: Mapping[str, Any], keyring: Keyring | None) -> Any:
    """An ssl object with its encrypted private keys decrypted (what the schema checks)."""
    return decrypt_ssl(item, keyring) if keyring else item
