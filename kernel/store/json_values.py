"""Stored items decoded from JSON with their repeated strings shared.

Every store decodes its items one at a time (one line of ``apisix.yaml``, one etcd value), so
``json.loads`` would give each of 10,000 routes its own copies of ``"uri"``, ``"upstream"``,
``"roundrobin"``, ``"127.0.0.1:1980"`` ... (about 4 MiB of a worker at 10,000 routes).
:func:`decode` interns object keys and short string values instead; it runs when a store reads
an item, never per request.
"""

from __future__ import annotations

import json
import sys
from typing import Any

__all__ = ["decode"]

_SHORT = 64


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    intern = sys.intern
    return {intern(k): intern(v) if type(v) is str and len(v) <= _SHORT else v
            for k, v in pairs}


_decode_text = json.JSONDecoder(object_pairs_hook=_object).decode


def decode(value: str | bytes) -> Any:
    """``json.loads(value)`` with keys and short strings interned (same errors)."""
    if isinstance(value, bytes):
        value = value.decode(json.detect_encoding(value), "surrogatepass")
    return _decode_text(value)
