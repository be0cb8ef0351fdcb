"""proxy-rewrite (APISIX priority 1008, rewrite): change what is sent upstream.

* ``uri`` (a ``$var`` template; ``?`` inside substituted values becomes ``%3F``) or else
  ``regex_uri`` pairs ``[regex, template, ...]``: the first regex that matches ``$uri`` is
  substituted once (captures ``$1``/``${1}``, plus ``$var``); no match leaves the path as is.
* The new path is percent-encoded like nginx's ``ngx_escape_uri`` (a literal ``?`` from the
  template starts a query that is kept as written) and the client's query string is appended
  with ``?`` or ``&``. ``use_real_request_uri_unsafe`` starts from the raw request-target and
  skips encoding and appending.
* ``host`` sets the upstream Host, ``method`` the upstream method.
* ``headers``: legacy ``{name: value}`` (= set) or ``{add, set, remove}``, applied add → set →
  remove; values are ``$var`` templates that may use the ``regex_uri`` captures; a value that
  resolves to ``""`` means the header is not sent.

The rewritten target is visible to later plugins as ``ctx.var["uri"]`` (path) and
``ctx.var["upstream_uri"]``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from plugin_sdk import (
    ConfCache,
    Response,
    compile_capture_template,
    compile_template,
    hookimpl,
)
from plugin_sdk.expr import compile_pcre
from plugin_sdk.template import compile_sub_template

name = "proxy-rewrite"
version = "0.1"
priority = 1008

METHODS = (
    "GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "MKCOL", "COPY", "MOVE", "PROPFIND",
    "LOCK", "UNLOCK", "PATCH", "TRACE",
)

_scalar: dict[str, Any] = {"oneOf": [{"type": "string"}, {"type": "number"}]}
_scalar_or_list: dict[str, Any] = {
    "oneOf": [
        {"type": "string"},
        {"type": "number"},
        {"type": "array", "items": _scalar},
    ]
}

schema: dict[str, Any] = {
    "type": "object",
    "properties": {
        "uri": {"type": "string", "minLength": 1, "maxLength": 4096, "pattern": r"^\/.*"},
        "method": {"type": "string", "enum": list(METHODS)},
        "regex_uri": {"type": "array", "minItems": 2, "items": {"type": "string"}},
        "host": {"type": "string", "pattern": r"^[0-9a-zA-Z-.]+(:\d{1,5})?$"},
        "headers": {
            "oneOf": [
                {
                    "type": "object",
                    "minProperties": 1,
                    "additionalProperties": False,
                    "properties": {
                        "add": {
                            "type": "object",
                            "minProperties": 1,
                            "patternProperties": {"^[^:]+$": _scalar_or_list},
                        },
                        "set": {
                            "type": "object",
                            "minProperties": 1,
                            "patternProperties": {"^[^:]+$": _scalar_or_list},
                        },
                        "remove": {
                            "type": "array",
                            "minItems": 1,
                            "items": {"type": "string", "pattern": "^[^:]+$"},
                        },
                    },
                },
                {
                    "type": "object",
                    "minProperties": 1,
                    "patternProperties": {"^[^:]+$": _scalar},
                },
            ],
        },
        "use_real_request_uri_unsafe": {"type": "boolean", "default": False},
    },
    "minProperties": 1,
}

# -- helpers -----------------------------------------------------------------------------------

# nginx ngx_escape_uri(NGX_ESCAPE_URI): escapes controls, space, '#', '%', '?', DEL and non-ASCII.
_URI_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in "#%?")
_NEEDS_ESCAPE = re.compile(r"[^\x21-\x7e]|[#%?]")


def uri_safe_encode(path: str) -> str:
    """Percent-encode ``path`` as nginx's ``ngx_escape_uri(..., NGX_ESCAPE_URI)`` (APISIX's
    ``core.utils.uri_safe_encode``); ``/`` and other printable ASCII stay as they are."""
    if _NEEDS_ESCAPE.search(path) is None:
        return path
    return quote(path, safe=_URI_SAFE)


def _valid_header_field(field: str) -> bool:
    # Printable ASCII except ':' (APISIX core.utils.validate_header_field).
    return all(32 < ord(ch) < 127 and ch != ":" for ch in field)


def _valid_header_value(value: Any) -> bool:
    # No control characters, nothing outside ASCII (APISIX core.utils.validate_header_value).
    return not isinstance(value, str) or all(32 <= ord(ch) < 127 for ch in value)


def _number_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _is_new_headers_conf(headers: dict[str, Any]) -> bool:
    return any(isinstance(headers.get(k), dict | list) for k in ("add", "set", "remove"))


def _check_headers(pairs: dict[str, Any]) -> str | None:
    for field, value in pairs.items():
        values = value if isinstance(value, list) else [value]
        if not field:
            return "invalid field length in header"
        if not _valid_header_field(field):
            return "invalid field character in header"
        for v in values:
            if not isinstance(v, str | int | float) or isinstance(v, bool):
                return "invalid type as header value"
            if not _valid_header_value(v):
                return "invalid value character in header"
    return None


def check_schema(conf: dict[str, Any]) -> str | None:
    """Checks beyond the JSON schema (run by the kernel first), with APISIX's messages."""
    regex_uri = conf.get("regex_uri")
    if regex_uri:
        if len(regex_uri) % 2 != 0:
            return "The length of regex_uri should be an even number"
        for i in range(0, len(regex_uri), 2):
            try:
                regex = compile_pcre(regex_uri[i])
                # As APISIX's trial ngx.re.sub on "/fake_uri": the raw template is only compiled
                # (and can only fail) when the regex matches there.
                if regex.search("/fake_uri"):
                    compile_sub_template(regex_uri[i + 1])
            except ValueError as exc:
                return f"invalid regex_uri({regex_uri[i]}, {regex_uri[i + 1]}): {exc}"
    headers = conf.get("headers")
    if headers:
        if _is_new_headers_conf(headers):
            for verb in ("add", "set"):
                err = _check_headers(headers.get(verb) or {})
                if err:
                    return err
            for field in headers.get("remove") or ():
                if not _valid_header_field(field):
                    return "invalid field character in header"
        else:
            err = _check_headers(headers)
            if err:
                return err
    return None


# -- compiled conf --------------------------------------------------------------------------------

VarsTemplate = Callable[[Any], str]
CaptureTemplate = Callable[["re.Match[str] | None", Any], str]
SubTemplate = Callable[["re.Match[str]"], str]

# A ``$name``/``${name}`` reference in a regex_uri template, as APISIX finds them before handing
# the template to ngx.re.sub (names made only of digits are captures, never variables).
_TEMPLATE_VAR = re.compile(r"(?<!\\)\$(?:\{(\w+)\}|(\w+))", re.ASCII)


def _escape_separator(value: str) -> str:
    return value.replace("?", "%3F")


def _has_variables(template: str) -> bool:
    return any(not (m.group(1) or m.group(2)).isdigit() for m in _TEMPLATE_VAR.finditer(template))


def _resolve_template_vars(template: str, var: Any) -> str:
    """Variables of a regex_uri template, set ones replaced (``?`` escaped), unset ones kept."""

    def repl(m: re.Match[str]) -> str:
        value = var.get(m.group(1) or m.group(2))
        if value is None:
            return m.group(0)
        return _escape_separator(value if isinstance(value, str) else _number_text(value))

    return _TEMPLATE_VAR.sub(repl, template)


@dataclass(frozen=True, slots=True)
class _RegexUri:
    regex: re.Pattern[str]
    pattern: str
    template: str
    sub: SubTemplate | None
    """The compiled replacement when the template has no variables (else built per request)."""


@dataclass(frozen=True, slots=True)
class _Compiled:
    uri: VarsTemplate | None
    regex_uri: tuple[_RegexUri, ...]
    add: tuple[tuple[str, tuple[CaptureTemplate, ...]], ...]
    set: tuple[tuple[str, tuple[CaptureTemplate, ...]], ...]
    remove: tuple[str, ...]


def _header_values(value: Any) -> tuple[CaptureTemplate, ...]:
    return tuple(
        compile_capture_template(v if isinstance(v, str) else _number_text(v))
        for v in (value if isinstance(value, list) else [value])
    )


def _regex_uri(pattern: str, template: str) -> _RegexUri:
    sub = None
    if not _has_variables(template):
        try:
            sub = compile_sub_template(template)
        except ValueError:
            sub = None  # reported per request, as ngx.re.sub does
    return _RegexUri(compile_pcre(pattern), pattern, template, sub)


def _compile(conf: dict[str, Any]) -> _Compiled:
    uri = conf.get("uri")
    regex_uri = conf.get("regex_uri") or []
    headers = conf.get("headers") or {}
    if headers and _is_new_headers_conf(headers):
        add = headers.get("add") or {}
        set_ = headers.get("set") or {}
        remove = headers.get("remove") or []
    else:
        add, set_, remove = {}, headers, []
    return _Compiled(
        uri=(
            compile_template(uri, escaper=_escape_separator)
            if uri is not None
            else None
        ),
        regex_uri=tuple(
            _regex_uri(regex_uri[i], regex_uri[i + 1]) for i in range(0, len(regex_uri) - 1, 2)
        )
        if uri is None
        else (),
        add=tuple((k, _header_values(v)) for k, v in add.items()),
        set=tuple((k, _header_values(v)) for k, v in set_.items()),
        remove=tuple(remove),
    )


# Compiled templates and regexes per conf object: built on a conf's first request, dropped with
# the conf (see plugin_sdk.ConfCache).
_compiled: ConfCache[_Compiled] = ConfCache(_compile)


def _resolve(values: tuple[CaptureTemplate, ...], match: Any, var: Any) -> list[str]:
    out = []
    for tpl in values:
        text = tpl(match, var)
        if text != "":
            out.append(text)
    return out


def _substitute(rule: _RegexUri, m: re.Match[str], var: Any, uri: str) -> tuple[str, str | None]:
    """``(replacement, None)`` or ``("", error message)`` (APISIX's 500 ``error_msg``)."""
    sub = rule.sub
    template = rule.template
    try:
        if sub is None:
            template = _resolve_template_vars(template, var)
            sub = compile_sub_template(template)
        return sub(m), None
    except ValueError as exc:
        return "", f"failed to substitute the uri {uri} ({rule.pattern}) with {template} : {exc}"


@hookimpl
def rewrite(ctx: Any, conf: dict[str, Any]) -> Response | None:
    c = _compiled(conf)
    var = ctx.var
    upstream = ctx.upstream
    unsafe = conf.get("use_real_request_uri_unsafe", False)

    host = conf.get("host")
    if host:
        upstream.host = host

    current = var["uri"] or "/"
    upstream_uri: str = (var["real_request_uri"] or current) if unsafe else current
    separator_escaped = False
    match: re.Match[str] | None = None
    if c.uri is not None:
        separator_escaped = True
        upstream_uri = c.uri(var)
    elif c.regex_uri:
        separator_escaped = "?" not in upstream_uri
        for rule in c.regex_uri:
            m = rule.regex.search(upstream_uri)
            if m is None:
                continue
            match = m
            replacement, error = _substitute(rule, m, var, current)
            if error is not None:
                ctx.log.error("%s", error)
                return Response(500, {"error_msg": error})
            upstream_uri = upstream_uri[: m.start()] + replacement + upstream_uri[m.end() :]
            break

    if not unsafe:
        index = upstream_uri.find("?") if separator_escaped else -1
        if index >= 0:
            path = uri_safe_encode(upstream_uri[:index])
            upstream_uri = path + upstream_uri[index:]
        else:
            path = upstream_uri = uri_safe_encode(upstream_uri)
        var["uri"] = path
        if var["is_args"] == "?":
            upstream_uri += ("&" if index >= 0 else "?") + (var["args"] or "")
    upstream.uri = upstream_uri
    var["upstream_uri"] = upstream_uri

    if c.add or c.set or c.remove:
        for hname, values in c.add:
            for text in _resolve(values, match, var):
                upstream.add_header(hname, text)
        for hname, values in c.set:
            texts = _resolve(values, match, var)
            if not texts:
                upstream.set_header(hname, None)
                continue
            upstream.set_header(hname, texts[0])
            for text in texts[1:]:
                upstream.add_header(hname, text)
        for hname in c.remove:
            upstream.remove_header(hname)

    method = conf.get("method")
    if method:
        upstream.method = method
    return None
