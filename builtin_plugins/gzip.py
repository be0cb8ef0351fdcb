"""gzip (APISIX priority 995, header_filter + body_filter): compress responses with gzip.

``header_filter`` decides, once per response, as APISIX's plugin and nginx's gzip filter do:

* the response has a ``Content-Type`` whose media type (parameters left out, case ignored) is
  in ``types`` (or ``types`` is ``"*"``);
* its status is 200, 403 or 404, it has no ``Content-Encoding`` yet, its ``Content-Length``
  (when known) is at least ``min_length``, and it has a body (not a ``HEAD`` request);
* then, with ``vary: true``, ``Vary: Accept-Encoding`` is added (whether or not this client
  gets gzip, as nginx's ``gzip_vary``);
* the request's HTTP version is at least ``http_version``, its ``Accept-Encoding`` accepts
  ``gzip`` (``gzip;q=0`` refuses it), and it carries no ``Via`` header (nginx's default
  ``gzip_proxied off`` leaves requests that came through a proxy alone).

When all hold, the response gets ``Content-Encoding: gzip``, loses ``Content-Length`` (it is
sent chunked) and ``Accept-Ranges``, and a strong ``ETag`` becomes weak (``W/``), as nginx does.
``body_filter`` then compresses the body as it streams: one ``zlib`` compressor per response
(level ``comp_level``), fed each chunk, finished at the last one; nothing is buffered beyond
what zlib keeps. A plugin after this one (lower priority) that drops ``Content-Encoding`` again
(``echo``/``response-rewrite`` replacing the body) turns compression off for that response,
so the client never gets a body its headers do not describe. ``buffers`` is accepted for
compatibility and has no effect (zlib manages its own memory).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from plugin_sdk import ConfCache, hookimpl

name = "gzip"
version = "0.1"
priority = 995

schema: dict[str, Any] = {
    "type": "object",
    "properties": {
        "types": {
            "anyOf": [
                {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
                {"enum": ["*"]},
            ],
            "default": ["text/html"],
        },
        "min_length": {"type": "integer", "minimum": 1, "default": 20},
        "comp_level": {"type": "integer", "minimum": 1, "maximum": 9, "default": 1},
        "http_version": {"enum": [1.1, 1.0], "default": 1.1},
        "buffers": {
            "type": "object",
            "properties": {
                "number": {"type": "integer", "minimum": 1, "default": 32},
                "size": {"type": "integer", "minimum": 1, "default": 4096},
            },
            "default": {"number": 32, "size": 4096},
        },
        "vary": {"type": "boolean"},
    },
}

_GZIP_STATUSES = frozenset((200, 403, 404))
_GZIP_WBITS = 16 + zlib.MAX_WBITS
"""zlib's window bits for a gzip header and trailer."""


@dataclass(frozen=True, slots=True)
class _Compiled:
    types: frozenset[str] | None
    """Lower-cased media types; ``None``: every type."""
    min_length: int
    level: int
    http_version: float
    vary: bool


def _compile(conf: Mapping[str, Any]) -> _Compiled:
    types = conf.get("types", ["text/html"])
    return _Compiled(
        types=None if types == "*" else frozenset(t.strip().lower() for t in types),
        min_length=int(conf.get("min_length", 20)),
        level=int(conf.get("comp_level", 1)),
        http_version=float(conf.get("http_version", 1.1)),
        vary=bool(conf.get("vary")),
    )


_compiled: ConfCache[_Compiled] = ConfCache(_compile)


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether an ``Accept-Encoding`` value accepts ``gzip`` (a ``q`` of 0 refuses it)."""
    if not accept_encoding:
        return False
    for item in accept_encoding.split(","):
        coding, _, params = item.partition(";")
        if coding.strip().lower() != "gzip":
            continue
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    return float(value.strip()) > 0
                except ValueError:
                    return False
        return True
    return False


def _eligible(c: _Compiled, ctx: Any, headers: Any) -> bool:
    """The response side: type, status, encoding, length, body (nginx adds Vary then)."""
    content_type = headers.get("Content-Type")
    if not content_type:
        return False  # like nginx: no Content-Type, no gzip
    if c.types is not None and content_type.split(";", 1)[0].strip().lower() not in c.types:
        return False
    if ctx.response.status not in _GZIP_STATUSES:
        return False
    if headers.get("Content-Encoding"):
        return False
    length = headers.get("Content-Length")
    if length is not None:
        try:
            if int(length) < c.min_length:
                return False
        except ValueError:
            pass
    return ctx.request.method != "HEAD"


def _client_ok(c: _Compiled, ctx: Any) -> bool:
    """The request side (nginx's ``ngx_http_gzip_ok``)."""
    req = ctx.request
    version = ctx.var["server_protocol"] or "HTTP/1.1"
    try:
        if float(version.rpartition("/")[2]) < c.http_version:
            return False
    except ValueError:
        return False
    if "Via" in req.headers:
        return False
    return accepts_gzip(req.headers.get("Accept-Encoding"))


_STATE = "compressor"


@hookimpl
def header_filter(ctx: Any, conf: dict[str, Any]) -> None:
    c = _compiled(conf)
    headers = ctx.response.headers
    if not _eligible(c, ctx, headers):
        return
    if c.vary:
        headers.add("Vary", "Accept-Encoding")
    if not _client_ok(c, ctx):
        return
    headers.set("Content-Encoding", "gzip")
    headers.remove("Content-Length")
    headers.remove("Accept-Ranges")
    etag = headers.get("ETag")
    if etag is not None and not etag.startswith("W/"):
        headers.set("ETag", "W/" + etag)
    # Keyed by this conf: a global rule's gzip and the route's share plugin_data, and only
    # the instance that set the header compresses.
    ctx.plugin_data[_STATE] = (conf, None)


@hookimpl
def body_filter(ctx: Any, conf: dict[str, Any]) -> None:
    data = ctx.plugin_data
    state = data.get(_STATE)
    if state is None or state[0] is not conf:
        return
    resp = ctx.response
    compressor = state[1]
    if compressor is None:
        if resp.headers.get("Content-Encoding") != "gzip":
            # A later header filter took the encoding away: send the body as it is.
            data[_STATE] = None
            return
        compressor = zlib.compressobj(_compiled(conf).level, zlib.DEFLATED, _GZIP_WBITS)
        data[_STATE] = (conf, compressor)
    chunk = resp.chunk
    out = compressor.compress(chunk) if chunk else b""
    if resp.eof:
        out += compressor.flush()
        data[_STATE] = None
    resp.chunk = out
