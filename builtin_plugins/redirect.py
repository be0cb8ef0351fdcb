"""redirect (APISIX priority 900, rewrite): answer with a redirect instead of proxying.

Exactly one of (the schema's ``oneOf``):

* ``uri`` — a template for the ``Location``: ``$name`` and ``${name}`` (names of ASCII letters,
  digits and ``_``) become ``ctx.var[name]`` (unset → empty string); ``\\$name`` is copied
  literally, backslash included; a ``$`` not followed by a name is literal (``/foo$$uri`` →
  ``/foo$/hello``); any other backslash is dropped (as APISIX's tokenizer skips it).
* ``regex_uri`` — ``[regex, template]``: the first match of the PCRE ``regex`` in ``$uri`` is
  replaced once by ``template`` (``ngx.re.sub`` syntax: ``$0``, ``$1``, ``${1}``, ``$$``); the
  rest of ``$uri`` stays. No match: the plugin does nothing and the request is proxied.
* ``http_to_https`` — when the request scheme (``X-Forwarded-Proto`` when sent, else the
  connection's) is not ``https``: ``Location: https://$host[:port]$request_uri`` with 301 for
  GET/HEAD and 308 for other methods (``ret_code`` is ignored). ``port`` is
  ``plugin_attr.redirect.https_port``, else the first ``apisix.ssl.listen`` port (9443 when
  the SDK cannot tell, the APISIX default); left out when it is 443 or not a valid port.

Then ``encode_uri`` percent-encodes the part before ``?`` (as nginx's ``ngx_escape_uri``) and
``append_query_string`` appends the request's query string with ``?`` or ``&``. The answer is
``ret_code`` (default 302) with the ``Location`` header; its body is nginx's page for 301 and
302 and empty for other codes. A failed ``regex_uri`` substitution answers 500.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import plugin_sdk
from plugin_sdk import ConfCache, Response, hookimpl
from plugin_sdk.expr import compile_pcre, lua_tostring
from plugin_sdk.template import compile_sub_template

name = "redirect"
version = "0.1"
priority = 900

schema: dict[str, Any] = {
    "type": "object",
    "properties": {
        "ret_code": {"type": "integer", "minimum": 200, "default": 302},
        "uri": {"type": "string", "minLength": 2},
        "regex_uri": {
            "description": "params for generating new uri that substitute from client uri, "
                           "first param is regular expression, the second one is uri template",
            "type": "array",
            "maxItems": 2,
            "minItems": 2,
            "items": {"description": "regex uri", "type": "string"},
        },
        "http_to_https": {"type": "boolean"},
        "encode_uri": {"type": "boolean", "default": False},
        "append_query_string": {"type": "boolean", "default": False},
    },
    "oneOf": [
        {"required": ["uri"]},
        {"required": ["regex_uri"]},
        {"required": ["http_to_https"]},
    ],
}

# -- the Location template (APISIX's own tokenizer, not core.utils.resolve_var) --------------

# \$name (kept as written) | ${name} | $name | a lone "$" or a run of other text. A backslash
# that does not start "\$name" matches nothing and is skipped, as ngx.re.gmatch skips it.
_TOKEN = re.compile(r"(\\\$[0-9a-zA-Z_]+)|\$\{([0-9a-zA-Z_]+)\}|\$([0-9a-zA-Z_]+)|(\$|[^$\\]+)")

# one piece of a template: literal text (str) or a variable name (a 1-tuple)
_Piece = str | tuple[str]


def _parse_template(tpl: str) -> tuple[_Piece, ...]:
    pieces: list[_Piece] = []
    for m in _TOKEN.finditer(tpl):
        literal, braced, bare, other = m.groups()
        if braced is not None or bare is not None:
            pieces.append((braced if braced is not None else bare,))
        else:
            pieces.append(literal if literal is not None else other)
    return tuple(pieces)


def _render(pieces: tuple[_Piece, ...], var: Any) -> str:
    out: list[str] = []
    for piece in pieces:
        if isinstance(piece, str):
            out.append(piece)
            continue
        value = var.get(piece[0])
        if value is not None:
            out.append(value if type(value) is str else lua_tostring(value))
    return "".join(out)


# -- helpers ---------------------------------------------------------------------------------

# nginx ngx_escape_uri(NGX_ESCAPE_URI): controls, space, '#', '%', '?', DEL and non-ASCII.
_URI_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in "#%?")
_NEEDS_ESCAPE = re.compile(r"[^\x21-\x7e]|[#%?]")


def uri_safe_encode(path: str) -> str:
    """Percent-encode ``path`` as APISIX's ``core.utils.uri_safe_encode``."""
    if _NEEDS_ESCAPE.search(path) is None:
        return path
    return quote(path, safe=_URI_SAFE)


def _valid_port(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        value = value.strip()
        if not value.isdigit():
            return None
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and 0 < value <= 65535:
        return value
    return None


def check_schema(conf: dict[str, Any]) -> str | None:
    """Checks beyond the JSON schema (run by the kernel first), with APISIX's messages."""
    regex_uri = conf.get("regex_uri")
    if regex_uri:
        regex, template = regex_uri[0], regex_uri[1]
        try:
            compiled = compile_pcre(regex)
            # As APISIX's trial ngx.re.sub on "/fake_uri": the template is only compiled (and
            # can only fail) when the regex matches there.
            if compiled.search("/fake_uri"):
                compile_sub_template(template)
        except ValueError as exc:
            return f"invalid regex_uri ({regex}, {template}), err:{exc}"
    if conf.get("http_to_https") and conf.get("append_query_string"):
        return "only one of `http_to_https` and `append_query_string` can be configured."
    return None


# -- plugin_attr -------------------------------------------------------------------------------

_attr_https_port: Any = None


def init(attrs: dict[str, Any]) -> None:
    """Keep ``plugin_attr.redirect.https_port`` (re-read on every plugin reload)."""
    global _attr_https_port
    _attr_https_port = (attrs or {}).get("https_port")


def destroy() -> None:
    global _attr_https_port
    _attr_https_port = None


_DEFAULT_SSL_PORT = 9443


def _ssl_listen_port() -> int | None:
    """The first ``apisix.ssl.listen`` port (``None`` when SSL is disabled); APISIX's default
    HTTPS port 9443 when no gateway runs in this process."""
    try:
        ports = plugin_sdk.ssl_listen_ports()
    except plugin_sdk.PluginError:  # no kernel in this process (a unit test)
        return _DEFAULT_SSL_PORT
    return ports[0] if ports else None


def https_port() -> int | None:
    """The port written into ``http_to_https`` Locations; ``None`` when left out."""
    port = _valid_port(_attr_https_port) if _attr_https_port is not None else None
    if port is None:
        port = _valid_port(_ssl_listen_port())
    return None if port is None or port == 443 else port


# -- compiled conf -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Compiled:
    uri: tuple[_Piece, ...] | None
    regex: re.Pattern[str] | None
    sub: Callable[[re.Match[str]], str] | None
    sub_error: str | None


def _compile(conf: dict[str, Any]) -> _Compiled:
    uri = conf.get("uri")
    regex_uri = conf.get("regex_uri")
    regex = sub = sub_error = None
    if uri is None and regex_uri:
        regex = compile_pcre(regex_uri[0])
        try:
            sub = compile_sub_template(regex_uri[1])
        except ValueError as exc:  # reported when a request matches, as ngx.re.sub does
            sub_error = str(exc)
    return _Compiled(_parse_template(uri) if uri is not None else None, regex, sub, sub_error)


# Compiled templates and regexes per conf object (see plugin_sdk.ConfCache).
_compiled: ConfCache[_Compiled] = ConfCache(_compile)


def _request_scheme(ctx: Any) -> str:
    proto = ctx.request.headers.get("X-Forwarded-Proto")
    if proto:
        return str(proto).strip().lower()
    return str(ctx.var["scheme"] or "http").lower()


@hookimpl
def rewrite(ctx: Any, conf: dict[str, Any]) -> Response | None:
    var = ctx.var
    ret_code: int = conf.get("ret_code", 302)
    new_uri: str | None = None

    if conf.get("http_to_https") and _request_scheme(ctx) != "https":
        port = https_port()
        host = var["host"] or ""
        new_uri = f"https://{host}{'' if port is None else f':{port}'}{var['request_uri'] or '/'}"
        ret_code = 301 if ctx.request.method in ("GET", "HEAD") else 308
    else:
        c = _compiled(conf)
        if c.uri is not None:
            new_uri = _render(c.uri, var)
        elif c.regex is not None:
            uri = var["uri"] or "/"
            m = c.regex.search(uri)
            if m is None:
                return None
            if c.sub is None:
                regex, template = conf["regex_uri"]
                ctx.log.error("failed to substitute the uri:%s (%s) with %s, error:%s",
                              uri, regex, template, c.sub_error)
                return Response(500)
            new_uri = uri[: m.start()] + c.sub(m) + uri[m.end():]
    if new_uri is None:
        return None

    index = new_uri.find("?")
    if conf.get("encode_uri"):
        if index >= 0:
            new_uri = uri_safe_encode(new_uri[:index]) + new_uri[index:]
        else:
            new_uri = uri_safe_encode(new_uri)
    if conf.get("append_query_string") and var["is_args"] == "?":
        new_uri += ("&" if index >= 0 else "?") + (var["args"] or "")

    # nginx's page for 301/302, an empty body for the other codes (spec §7.1)
    return Response(ret_code, None if ret_code in (301, 302) else "", {"Location": new_uri})
