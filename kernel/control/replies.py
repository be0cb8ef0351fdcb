"""How the control API answers (spec §8, APISIX's ``control/router.lua``).

A table body is JSON with a trailing newline and ``Content-Type: application/json``; a string
body (``done``) is written as it is; an unknown path or method is a 404 with no body.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

NOTE_HEADER = "X-Sixgate-Note"
"""Carries the note of an APISIX-shaped answer that cannot hold one (a JSON array)."""


def _plain(value: Any) -> Any:
    """JSON for the read-only containers the gateway state holds."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    return str(value)


def encode(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False, default=_plain).encode() + b"\n"


def json_reply(status: int, body: Any, note: str | None = None) -> web.Response:
    resp = web.Response(status=status, body=encode(body), content_type="application/json")
    if note:
        resp.headers[NOTE_HEADER] = note
    return resp


def error_reply(status: int, message: str) -> web.Response:
    """``{"error_msg": message}``, APISIX's error body."""
    return json_reply(status, {"error_msg": message})


def text_reply(status: int, text: str, content_type: str = "text/plain") -> web.Response:
    return web.Response(status=status, body=text.encode(), content_type=content_type)


def empty_reply(status: int) -> web.Response:
    resp = web.Response(status=status)
    resp.headers["Content-Type"] = "text/plain"
    return resp
