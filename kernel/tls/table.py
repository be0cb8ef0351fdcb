"""The compiled ssl objects of one state and the SNI index over them (spec §10.1).

``GatewayState.ssls`` is an :class:`SslTable`. The listener's SNI callback matches the name
the client sent (else ``apisix.ssl.fallback_sni``) against it at every handshake: exact names
first, then ``*.example.com`` (exactly one more label: ``a.example.com`` yes,
``a.b.example.com`` no), then an entry of just ``*``. Only enabled ``type: server`` objects
whose certificates loaded are indexed; every object (client ones too) is in :attr:`by_id`.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from kernel.tls.certs import CompiledSsl, normalize_sni

__all__ = ["EMPTY_SSL_TABLE", "SslTable", "certificates_report"]


class SslTable:
    """Enabled server ssl objects by SNI (built once per change of the ssls collection)."""

    __slots__ = ("by_id", "exact", "has_mtls", "star", "wildcard")

    def __init__(self, entries: Mapping[str, CompiledSsl] | None = None) -> None:
        self.by_id: Mapping[str, CompiledSsl] = entries if entries is not None else {}
        self.exact: dict[str, CompiledSsl] = {}
        self.wildcard: dict[str, CompiledSsl] = {}
        self.star: CompiledSsl | None = None
        self.has_mtls = False
        for entry in self.by_id.values():
            if entry.type != "server" or not entry.enabled or entry.context is None:
                continue
            if entry.mtls is not None:
                self.has_mtls = True
            for sni in entry.snis:  # the first object naming an SNI keeps it
                if sni == "*":
                    self.star = self.star or entry
                elif sni.startswith("*."):
                    self.wildcard.setdefault(sni[2:], entry)
                else:
                    self.exact.setdefault(sni, entry)

    def match(self, name: str) -> CompiledSsl | None:
        """The object serving ``name`` (already normalised: lower case, no trailing dot)."""
        hit = self.exact.get(name)
        if hit is not None:
            return hit
        dot = name.find(".")
        if dot > 0 and self.wildcard:
            hit = self.wildcard.get(name[dot + 1:])
            if hit is not None:
                return hit
        return self.star

    def lookup(self, name: str) -> CompiledSsl | None:
        """:meth:`match` for a raw name (normalised here)."""
        return self.match(normalize_sni(name))

    def __len__(self) -> int:
        return len(self.by_id)


EMPTY_SSL_TABLE = SslTable()


def certificates_report(state: Any) -> list[dict[str, Any]]:
    """One row per ssl object of ``state`` (its ``ssls`` table), sorted by id.

    ``not_after`` (ISO 8601, UTC) and ``serial`` (hex) are the earliest-expiring certificate's
    of the object (read once per object version, when it was compiled); ``days_left`` is
    counted now. ``status`` is 1/0 as configured; ``error`` is present when the object's
    certificates could not be loaded."""
    table: SslTable = getattr(state, "ssls", EMPTY_SSL_TABLE)
    now = datetime.datetime.now(datetime.UTC)
    rows = []
    for key in sorted(table.by_id, key=_sort_key):
        entry = table.by_id[key]
        first = min(entry.certs, key=lambda c: c.not_after) if entry.certs else None
        row: dict[str, Any] = {
            "id": entry.id,
            "snis": list(entry.snis),
            "type": entry.type,
            "not_after": first.not_after.isoformat() if first else None,
            "days_left": (first.not_after - now).days if first else None,
            "serial": first.serial if first else None,
            "status": 1 if entry.enabled else 0,
        }
        if entry.error is not None:
            row["error"] = entry.error
        rows.append(row)
    return rows


def _sort_key(key: str) -> tuple[int, str]:
    return (0, key.zfill(32)) if key.isdigit() else (1, key)
