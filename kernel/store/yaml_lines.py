"""The layout sixgate writes ``apisix.yaml`` in: plain YAML, one item per line.

Each collection is a block sequence whose items are JSON objects, which YAML reads as flow
mappings::

    routes:
      - {"id": "1", "uri": "/hello", "upstream": {"nodes": {"127.0.0.1:1980": 1}}}
    #END

Any YAML reader reads the file as usual, and people may edit it in any YAML style. What the
layout buys is speed at scale: :class:`ItemLines` remembers each item's line, so a write
serialises only the items that changed, and a read parses only the lines that changed and hands
back *the very same objects* for the others -- which is what lets validation and the gateway
build skip unchanged items by identity. A 10,000-route file is written and re-read in
milliseconds instead of the seconds a YAML dump and load take.

:meth:`ItemLines.parse` returns ``None`` for text not in this layout (hand-written block YAML);
the caller then parses it as YAML.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping
from itertools import compress, repeat
from operator import is_, itemgetter
from typing import Any

from kernel.store.json_values import decode

HEADER = (
    "# Written by sixgate: one item per line (JSON objects are YAML flow mappings).\n"
    "# Edit freely in any YAML style; comments do not survive an Admin API write.\n"
)
_KEY = re.compile(r"([A-Za-z_][A-Za-z0-9_]*):[ \t]*(\[\]|null|~)?[ \t]*\Z")
_ITEM = "  - "
_LINE = itemgetter(1)  # (item, line) -> line


class ItemLines:
    """Line cache for one file (thread-safe: each call swaps in a fresh cache)."""

    def __init__(self) -> None:
        self._lines: dict[int, tuple[Any, str]] = {}
        """id(item) -> (item, its line); holds the items, so ids stay valid"""
        self._items: dict[str, Any] = {}
        """line text -> the item parsed from it last time"""
        self._mutex = threading.Lock()

    def emit(self, doc: Mapping[str, Any]) -> str | None:
        """``doc`` in the line layout (without the ``#END`` trailer), or ``None`` when some
        value is not plain JSON (the caller then dumps YAML)."""
        with self._mutex:
            old = self._lines
        lines: dict[int, tuple[Any, str]] = {}
        out = [HEADER]
        try:
            for key, value in doc.items():
                if not isinstance(key, str) or not _KEY.match(f"{key}:"):
                    return None
                if value is None:
                    out.append(f"{key}: null\n")
                    continue
                if not isinstance(value, list):
                    return None
                if not value:
                    out.append(f"{key}: []\n")
                    continue
                out.append(f"{key}:\n")
                ids = list(map(id, value))
                got: list[Any] = list(map(old.get, ids))  # C-level: hits are (item, line)
                for i in compress(range(len(got)), map(is_, got, repeat(None))):
                    item = value[i]
                    line = _ITEM + json.dumps(item, ensure_ascii=False) + "\n"
                    if not _json_safe(line):
                        return None
                    got[i] = (item, line)
                lines.update(zip(ids, got, strict=True))
                out.extend(map(_LINE, got))
        except (TypeError, ValueError):  # not JSON: dates, sets, recursive aliases ...
            return None
        with self._mutex:
            self._lines = lines
        return "".join(out)

    def parse(self, text: str) -> dict[str, Any] | None:
        """The document, if ``text`` is in the line layout (else ``None``). Lines seen last
        time give back the same objects: treat them as read-only."""
        with self._mutex:
            old = self._items
        lines = text.splitlines()
        got: list[Any] = list(map(old.get, lines))  # C-level: cached item lines
        heads: list[tuple[int, str, Any]] = []  # (position, key, value when no items follow)
        skip: list[int] = []  # comments and blank lines
        for i in compress(range(len(got)), map(is_, got, repeat(None))):
            line = lines[i]
            if line.startswith(_ITEM):
                try:
                    item = decode(line[len(_ITEM) :])
                except ValueError:
                    return None
                if not isinstance(item, dict | list | str):
                    return None  # YAML may read scalars differently (1e3, NaN)
                got[i] = item
            elif not line.strip() or line.startswith("#"):
                skip.append(i)
            else:
                m = _KEY.match(line)
                if m is None:
                    return None
                heads.append((i, m.group(1), [] if m.group(2) == "[]" else None))
        if not heads or heads[0][0] != _first_content(lines, skip):
            return None  # items before the first key
        doc: dict[str, Any] = {}
        skipped = set(skip)
        ends = [h[0] for h in heads[1:]] + [len(lines)]
        for (pos, key, empty), end in zip(heads, ends, strict=True):
            if key in doc:
                return None
            block = got[pos + 1 : end]
            if skipped and any(pos < j < end for j in skip):
                block = [got[j] for j in range(pos + 1, end) if j not in skipped]
            if block and (empty is not None or _spells_value(lines[pos])):
                return None  # "key: []" or "key: null" followed by items
            doc[key] = block if block else empty
        items = dict(zip(lines, got, strict=True))
        for j in (*skip, *(h[0] for h in heads)):
            items.pop(lines[j], None)
        with self._mutex:
            self._items = items
        return doc


def _spells_value(head: str) -> bool:
    """Whether a key line spells its value (``key: null`` / ``key: ~``)."""
    m = _KEY.match(head)
    return m is not None and m.group(2) in ("null", "~")


def _first_content(lines: list[str], skip: list[int]) -> int:
    skipped = set(skip)
    for i in range(len(lines)):
        if i not in skipped:
            return i
    return -1


def _json_safe(line: str) -> bool:
    """Whether YAML reads this JSON line as JSON does: floats written without a dot or as
    NaN/Infinity are strings in YAML 1.1."""
    if "e" not in line and "E" not in line and "N" not in line and "I" not in line:
        return True
    return not re.search(r"(?<![\w.\"])(?:-?\d+[eE][-+]?\d+|NaN|-?Infinity)(?![\w\"])", line)
