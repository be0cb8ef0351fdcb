"""response-rewrite (APISIX priority 899, header_filter + body_filter): change the response the
client gets, whether the upstream produced it or the gateway did (a 401 from an auth plugin,
a 404, a 502 page).

``header_filter`` decides once per request whether the conf applies (``vars``, evaluated
against response-time variables such as ``$status``, ``$upstream_http_*``, ``$sent_http_*``;
absent = always), then sets ``status_code`` and applies ``headers`` add → set → remove
(values are ``$var`` templates; a legacy ``{name: value}`` object means set, and a value
rendering to ``""`` removes the header). With ``body`` or ``filters`` it drops
``Content-Length``, ``Content-Encoding``, ``Last-Modified`` and ``ETag``.

``body_filter`` then either replaces the body with ``body`` (literal; ``body_base64`` decodes
it once per conf), or buffers the whole body (up to ``max_resp_body_size``; beyond that the
body passes unchanged), decodes gzip/deflate, and applies ``filters`` in order: PCRE
``regex`` → ``replace`` (``$0``, ``$1``, ``${1}``), ``scope`` ``once`` (first match) or
``global`` (every match), ``options`` as ``ngx.re`` flags (``i``, ``m``, ``s``, ``x``; ``j`` and
``o`` are implied).
"""

from __future__ import annotations

import base64
import binascii
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from plugin_sdk import ConfCache, ExprError, compile_expr, compile_template, hookimpl
from plugin_sdk.expr import pcre_to_python
from plugin_sdk.template import compile_sub_template

name = "response-rewrite"
version = "0.1"
priority = 899

_scalar: dict[str, Any] = {"oneOf": [{"type": "string"}, {"type": "number"}]}

schema: dict[str, Any] = {
    "type": "object",
    "properties": {
        "headers": {
            "anyOf": [
                {
                    "type": "object",
                    "minProperties": 1,
                    "patternProperties": {"^[^:]+$": _scalar},
                },
                {
                    "type": "object",
                    "properties": {
                        "add": {
                            "type": "array",
                            "minItems": 1,
                            "items": {"type": "string", "pattern": "^[^:]+:[^:]*[^/]$"},
                        },
                        "set": {
                            "type": "object",
                            "minProperties": 1,
                            "patternProperties": {"^[^:]+$": _scalar},
                        },
                        "remove": {
                            "type": "array",
                            "minItems": 1,
                            "items": {"type": "string", "pattern": "^[^:]+$"},
                        },
                    },
                },
            ],
        },
        "body": {"type": "string"},
        "body_base64": {"type": "boolean", "default": False},
        "status_code": {"type": "integer", "minimum": 200, "maximum": 598},
        "vars": {"type": "array"},
        "filters": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "properties": {
                    "regex": {"type": "string", "minLength": 1},
                    "scope": {"type": "string", "enum": ["once", "global"], "default": "once"},
                    "replace": {"type": "string"},
                    "options": {"type": "string", "default": "jo"},
                },
                "required": ["regex", "replace"],
            },
        },
        "max_resp_body_size": {"type": "integer", "minimum": 1, "default": 67108864},
    },
    "dependencies": {
        "body": {"not": {"required": ["filters"]}},
        "filters": {"not": {"required": ["body"]}},
    },
}

_OPTION_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE,
                 "j": 0, "o": 0, "u": 0, "U": 0, "a": 0, "D": 0, "J": 0}
_RESET_ON_BODY = ("Content-Length", "Content-Encoding", "Last-Modified", "ETag")
_SPECIAL_KEYS = frozenset({"add", "set", "remove"})


@dataclass(frozen=True, slots=True)
class _Filter:
    pattern: re.Pattern[str]
    render: Callable[[re.Match[str]], str]
    count: int
    """``re.sub`` count: 1 for ``once``, 0 (all) for ``global``."""


@dataclass(frozen=True, slots=True)
class _Compiled:
    applies: Callable[[Any], bool] | None
    add: tuple[tuple[str, Callable[[Any], str]], ...]
    set: tuple[tuple[str, Callable[[Any], str]], ...]
    remove: tuple[str, ...]
    body: bytes | None
    filters: tuple[_Filter, ...]
    rewrites_body: bool
    limit: int


def _compile_filter(spec: dict[str, Any]) -> _Filter:
    flags = re.ASCII
    for ch in spec.get("options", "jo"):
        if ch not in _OPTION_FLAGS:
            raise ValueError(f"unknown flag \"{ch}\"")
        flags |= _OPTION_FLAGS[ch]
    pattern = re.compile(pcre_to_python(spec["regex"]), flags)
    render = compile_sub_template(spec["replace"])
    return _Filter(pattern, render, 1 if spec.get("scope", "once") == "once" else 0)


def _header_ops(headers: dict[str, Any] | None) -> tuple[Any, Any, Any]:
    if not headers:
        return (), (), ()
    if not _SPECIAL_KEYS.intersection(headers):  # legacy: {name: value} means set
        return (), tuple((k, compile_template(str(v))) for k, v in headers.items()), ()
    add = []
    for line in headers.get("add") or ():
        field, _, value = line.partition(":")
        add.append((field.strip(), compile_template(value.strip())))
    set_ = tuple((k, compile_template(str(v))) for k, v in (headers.get("set") or {}).items())
    return tuple(add), set_, tuple(headers.get("remove") or ())


def _compile(conf: dict[str, Any]) -> _Compiled:
    add, set_, remove = _header_ops(conf.get("headers"))
    body: bytes | None = None
    if conf.get("body") is not None:
        body = (base64.b64decode(conf["body"]) if conf.get("body_base64")
                else conf["body"].encode())
    filters = tuple(_compile_filter(f) for f in conf.get("filters") or ())
    return _Compiled(
        applies=compile_expr(conf["vars"]) if conf.get("vars") else None,
        add=add, set=set_, remove=remove, body=body, filters=filters,
        rewrites_body=body is not None or bool(filters),
        limit=conf.get("max_resp_body_size", 67108864),
    )


_compiled = ConfCache(_compile)


def check_schema(conf: dict[str, Any]) -> str | None:
    """Checks beyond the JSON schema: base64 body, the ``vars`` expression, filter regexes."""
    if conf.get("body_base64"):
        body = conf.get("body")
        if not body:
            return "invalid base64 content"
        try:
            base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            return "invalid base64 content"
    if conf.get("vars"):
        try:
            compile_expr(conf["vars"])
        except ExprError as err:
            return f"failed to validate the 'vars' expression: {err}"
    for spec in conf.get("filters") or ():
        try:
            _compile_filter({"options": "jo", **spec})
        except (re.error, ValueError) as err:
            return f'regex "{spec["regex"]}" validation failed: {err}'
    return None


# -- hooks ---------------------------------------------------------------------------------------

@hookimpl
def header_filter(ctx: Any, conf: dict[str, Any]) -> None:
    c = _compiled(conf)
    if c.applies is not None and not c.applies(ctx.var):
        return
    resp = ctx.response
    if conf.get("status_code") is not None:
        resp.status = conf["status_code"]
    headers = resp.headers
    if c.rewrites_body:
        encoding = headers.get("Content-Encoding")
        for field in _RESET_ON_BODY:
            headers.remove(field)
        ctx.plugin_data["body"] = [c, (encoding or "").lower(), [], 0]
    var = ctx.var
    for field, render in c.add:
        headers.add(field, render(var))
    for field, render in c.set:
        value = render(var)
        if value == "":
            headers.remove(field)
        else:
            headers.set(field, value)
    for field in c.remove:
        headers.remove(field)


@hookimpl
def body_filter(ctx: Any, conf: dict[str, Any]) -> None:
    state = ctx.plugin_data.get("body")
    if state is None:
        return
    c, encoding, parts, size = state
    resp = ctx.response
    if c.body is not None:
        # Replace the body: emit it once, with the first chunk, swallow the rest.
        if size == 0:
            state[3] = 1
            resp.chunk = c.body
        else:
            resp.chunk = b""
        return
    if size < 0:  # gave up buffering: pass the rest through
        return
    chunk = resp.chunk
    if chunk:
        size += len(chunk)
        if size > c.limit:
            ctx.log.warning("response body larger than max_resp_body_size (%d): "
                            "filters not applied", c.limit)
            state[3] = -1
            resp.chunk = b"".join(parts) + chunk
            parts.clear()
            return
        parts.append(chunk)
        state[3] = size
    if not resp.eof:
        resp.chunk = b""
        return
    body = b"".join(parts)
    parts.clear()
    resp.chunk = _apply_filters(ctx, c.filters, _decoded(ctx, body, encoding))


def _decoded(ctx: Any, body: bytes, encoding: str) -> bytes:
    if not encoding or encoding == "identity" or not body:
        return body
    try:
        if encoding in ("gzip", "x-gzip"):
            return zlib.decompress(body, 16 + zlib.MAX_WBITS)
        if encoding == "deflate":
            return zlib.decompress(body)
    except zlib.error as err:
        ctx.log.error("cannot decode the %s response body: %s", encoding, err)
        return body
    ctx.log.error("filters: unsupported Content-Encoding %s; body left as is", encoding)
    return body


def _apply_filters(ctx: Any, filters: tuple[_Filter, ...], body: bytes) -> bytes:
    text = body.decode("latin-1")  # byte-transparent: PCRE works on bytes too
    for f in filters:
        text = f.pattern.sub(f.render, text, count=f.count)
    return text.encode("latin-1")
