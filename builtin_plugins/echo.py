"""echo (APISIX priority 412, header_filter + body_filter): change the response body and headers.

The request is still proxied; the plugin works on the response, whatever produced it:

* ``body`` replaces the whole body: the first body chunk becomes ``body`` and every later
  upstream chunk is dropped (APISIX ends the body there).
* ``before_body`` is put in front of the first chunk, ``after_body`` after the last one (with
  ``body`` set, both wrap it: ``before_body + body + after_body``).
* ``headers`` (``{name: value}``, string or number values) are set on the response, replacing
  the upstream's values of those headers; a value of another type makes the plugin set none.

When any body field is set the body changes, so the response loses ``Content-Length``,
``Content-Encoding``, ``ETag`` and ``Last-Modified`` (APISIX's
``clear_header_as_body_modified``). The schema needs at least one of ``before_body``, ``body``
and ``after_body`` (``anyOf``): ``headers`` alone is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from plugin_sdk import ConfCache, hookimpl
from plugin_sdk.expr import lua_tostring

name = "echo"
version = "0.1"
priority = 412

schema: dict[str, Any] = {
    "type": "object",
    "properties": {
        "before_body": {"description": "body before the filter phase.", "type": "string"},
        "body": {"description": "body to replace upstream response.", "type": "string"},
        "after_body": {
            "description": "body after the modification of filter phase.",
            "type": "string",
        },
        "headers": {
            "description": "new headers for response",
            "type": "object",
            "minProperties": 1,
        },
    },
    "anyOf": [
        {"required": ["before_body"]},
        {"required": ["body"]},
        {"required": ["after_body"]},
    ],
    "minProperties": 1,
}

_BODY_HEADERS = ("Content-Length", "Content-Encoding", "ETag", "Last-Modified")


@dataclass(frozen=True, slots=True)
class _Compiled:
    before: bytes | None
    body: bytes | None
    after: bytes | None
    modifies_body: bool
    headers: tuple[tuple[str, str], ...]


def _header_pairs(headers: dict[str, Any] | None) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    for field, value in (headers or {}).items():
        if isinstance(value, bool) or not isinstance(value, str | int | float) or not field:
            return ()  # as APISIX: one bad entry and no header is set
        pairs.append((field, value if isinstance(value, str) else lua_tostring(value)))
    return tuple(pairs)


def _encode(text: str | None) -> bytes | None:
    return None if text is None else text.encode()


def _compile(conf: dict[str, Any]) -> _Compiled:
    before, body, after = conf.get("before_body"), conf.get("body"), conf.get("after_body")
    return _Compiled(
        before=_encode(before),
        body=_encode(body),
        after=_encode(after),
        modifies_body=before is not None or body is not None or after is not None,
        headers=_header_pairs(conf.get("headers")),
    )


# Encoded bodies and checked headers per conf object (see plugin_sdk.ConfCache).
_compiled: ConfCache[_Compiled] = ConfCache(_compile)


@hookimpl
def header_filter(ctx: Any, conf: dict[str, Any]) -> None:
    c = _compiled(conf)
    headers = ctx.response.headers
    if c.modifies_body:
        for hname in _BODY_HEADERS:
            headers.remove(hname)
    for hname, value in c.headers:
        headers.set(hname, value)


@hookimpl
def body_filter(ctx: Any, conf: dict[str, Any]) -> None:
    c = _compiled(conf)
    resp = ctx.response
    state = ctx.plugin_data
    if state.get("ended"):
        resp.chunk = b""  # ``body`` already ended the response body
        return
    chunk = resp.chunk
    last = resp.eof
    if c.body is not None:
        chunk, last = c.body, True
        state["ended"] = True
    if c.before is not None and not state.get("started"):
        chunk = c.before + chunk
        state["started"] = True
    if last and c.after is not None:
        chunk += c.after
    resp.chunk = chunk
