"""Log entries for logger plugins (file-logger, http-logger, ...): spec §9.2 and §9.3.

What a logger calls, and when (always from its own hooks: the per-request state lives in
``ctx.plugin_data``, which is private to the running plugin):

* **schema** — merge :data:`LOGGER_PROPERTIES` into the plugin's ``schema["properties"]``
  (``log_format``, ``log_format_extra``, ``include_req_body`` (+ ``_expr``),
  ``include_resp_body`` (+ ``_expr``), ``max_req_body_bytes``, ``max_resp_body_bytes``) and
  :data:`METADATA_PROPERTIES` into ``metadata_schema``; call :func:`check_log_conf` from
  ``check_schema`` (the ``_expr`` fields must compile, with APISIX's messages).
* **access** — ``await read_request_body(ctx, conf)``: reads the request body (truncated to
  ``max_req_body_bytes``) when ``include_req_body`` applies (its ``_expr``, if any, is
  evaluated now, against the variables known in ``access``) or when the log format in effect
  uses ``$request_body``. The body can only be read before it is proxied, hence ``access``.
* **body_filter** — ``collect_response_body(ctx, conf)``: when ``include_resp_body`` applies
  (its ``_expr`` is evaluated once, on the first chunk, when status and headers are known),
  keeps at most ``max_resp_body_bytes`` of the body as it streams by (the chunks sent to the
  client are not touched) and sets ``$resp_body`` at the end. Free when ``include_resp_body``
  is false.
* **log** — ``entry = get_log_entry(ctx, conf)``: the ``log_format`` of the conf, else of
  the plugin's metadata (§9.3), else the default entry (§9.2); then ``log_format_extra``
  (conf, else metadata) adds the keys the entry lacks. :func:`encode_entry` turns it into one
  compact JSON line.

Formats and expressions are compiled once per conf object (:class:`plugin_sdk.ConfCache`)
and once per metadata generation, never per request. The module only reads the public
context surface (``ctx.var``, ``ctx.request``, ``ctx.response``, ``ctx.route``,
``ctx.plugin_data``, ``ctx.plugin_metadata``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote_plus

from . import ConfCache
from .errors import ExprError
from .expr import VarsLike, compile_expr

__all__ = [
    "LOGGER_PROPERTIES",
    "MAX_FORMAT_DEPTH",
    "MAX_REQ_BODY_BYTES",
    "MAX_RESP_BODY_BYTES",
    "METADATA_PROPERTIES",
    "LogFormat",
    "active_log_format",
    "check_log_conf",
    "collect_response_body",
    "compile_log_format",
    "custom_log_entry",
    "default_log_entry",
    "encode_entry",
    "get_log_entry",
    "include_request_body",
    "include_response_body",
    "latency_details",
    "parse_query",
    "read_request_body",
    "request_body_text",
    "response_body_text",
]

MAX_REQ_BODY_BYTES: Final = 524288
"""Default ``max_req_body_bytes`` (512 KiB, as APISIX)."""
MAX_RESP_BODY_BYTES: Final = 524288
"""Default ``max_resp_body_bytes`` (512 KiB, as APISIX)."""
MAX_FORMAT_DEPTH: Final = 5
"""Levels of objects a ``log_format`` may nest (the top level counts as one); an object
deeper than that is logged as ``{}``."""

_expr_schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"type": "array"}}

LOGGER_PROPERTIES: Final[dict[str, Any]] = {
    "log_format": {"type": "object"},
    "log_format_extra": {"type": "object"},
    "include_req_body": {"type": "boolean", "default": False},
    "include_req_body_expr": _expr_schema,
    "include_resp_body": {"type": "boolean", "default": False},
    "include_resp_body_expr": _expr_schema,
    "max_req_body_bytes": {"type": "integer", "minimum": 1, "default": MAX_REQ_BODY_BYTES},
    "max_resp_body_bytes": {"type": "integer", "minimum": 1, "default": MAX_RESP_BODY_BYTES},
}
"""JSON-schema ``properties`` every logger shares (spec §7.21/§7.22); copy them into the
plugin's schema: ``{"type": "object", "properties": {**LOGGER_PROPERTIES, ...}}``."""

METADATA_PROPERTIES: Final[dict[str, Any]] = {
    "log_format": {"type": "object"},
    "log_format_extra": {"type": "object"},
}
"""``metadata_schema`` properties of a logger (``log_format``, ``log_format_extra``)."""

Predicate = Callable[[Any], bool]

# ctx.plugin_data keys (the running plugin's private per-request dict)
_REQ_BODY = "log_entry.request_body"
"""bytes (truncated) or None: the body read in access."""
_REQ_LOGGED = "log_entry.include_request_body"
"""bool: include_req_body (+expr) applied when access ran."""
_RESP_STATE = "log_entry.response_body_state"
"""_BodyBuffer while collecting, False when the response body is not collected."""
_RESP_BODY = "log_entry.response_body"
"""bytes: the collected response body (set at the end of the body)."""


# ---------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------


def check_log_conf(conf: Mapping[str, Any]) -> str | None:
    """``None`` when the conf's ``include_req_body_expr`` / ``include_resp_body_expr``
    compile, else APISIX's message (``failed to validate the 'include_req_body_expr'
    expression: <reason>``). Call it from the logger's ``check_schema``."""
    for key in ("include_req_body_expr", "include_resp_body_expr"):
        rule = conf.get(key)
        if rule is None:
            continue
        try:
            compile_expr(rule)
        except ExprError as exc:
            return f"failed to validate the '{key}' expression: {exc}"
    return None


# ---------------------------------------------------------------------------------------------
# log_format (§9.3)
# ---------------------------------------------------------------------------------------------

_LITERAL, _VAR, _NESTED = 0, 1, 2


class LogFormat:
    """A compiled ``log_format`` object (spec §9.3); build it with :func:`compile_log_format`.

    A string value that starts with ``$`` is the variable named by the rest of the string
    (``"$host:$server_port"`` looks up a variable literally called ``host:$server_port``; no
    interpolation); a variable that is unset leaves its key out. ``$request_body`` is the
    request body read by :func:`read_request_body`. Other strings, numbers, booleans, arrays
    and ``null`` are copied as they are; objects are formats of their own, down to
    :data:`MAX_FORMAT_DEPTH` levels (deeper ones become ``{}``).
    """

    __slots__ = ("_items", "needs_request_body")

    def __init__(self, items: tuple[tuple[str, int, Any], ...]) -> None:
        self._items = items
        self.needs_request_body: bool = any(
            (kind == _VAR and payload == "request_body")
            or (kind == _NESTED and payload.needs_request_body)
            for _, kind, payload in items
        )
        """Whether ``$request_body`` appears (at any depth): the body must be read in
        ``access``."""

    def render(self, var: VarsLike, request_body: str | None = None) -> dict[str, Any]:
        """The entry for one request: variables read from ``var`` (``ctx.var``)."""
        out: dict[str, Any] = {}
        for key, kind, payload in self._items:
            if kind == _VAR:
                value = request_body if payload == "request_body" else var.get(payload)
                if value is not None:
                    out[key] = value
            elif kind == _NESTED:
                out[key] = payload.render(var, request_body)
            else:
                out[key] = payload
        return out

    def __len__(self) -> int:
        return len(self._items)


def compile_log_format(fmt: Mapping[str, Any], _depth: int = 1) -> LogFormat:
    """Compile a ``log_format`` (or ``log_format_extra``) object into a :class:`LogFormat`."""
    items: list[tuple[str, int, Any]] = []
    for key, value in fmt.items():
        if isinstance(value, str) and value.startswith("$"):
            items.append((str(key), _VAR, value[1:]))
        elif isinstance(value, Mapping):
            if _depth >= MAX_FORMAT_DEPTH:
                items.append((str(key), _LITERAL, {}))
            else:
                items.append((str(key), _NESTED, compile_log_format(value, _depth + 1)))
        else:
            items.append((str(key), _LITERAL, value))
    return LogFormat(tuple(items))


# Formats found in plugin metadata, keyed by the format object (stable for a config
# generation; the metadata mapping is rebuilt when the metadata changes).
_metadata_formats: ConfCache[LogFormat] = ConfCache(compile_log_format, maxsize=256)


# ---------------------------------------------------------------------------------------------
# the compiled conf
# ---------------------------------------------------------------------------------------------


def _never(_var: Any) -> bool:
    return False


def _compile_rule(rule: Any) -> Predicate | None:
    if rule is None:
        return None
    try:
        return compile_expr(rule)
    except ExprError:
        return _never  # rejected by check_log_conf; a conf that skipped it never matches


@dataclass(frozen=True, slots=True)
class _Plan:
    include_req_body: bool
    req_body_expr: Predicate | None
    include_resp_body: bool
    resp_body_expr: Predicate | None
    max_req_body_bytes: int
    max_resp_body_bytes: int
    log_format: LogFormat | None
    log_format_extra: LogFormat | None


def _compile_plan(conf: Mapping[str, Any]) -> _Plan:
    fmt = conf.get("log_format")
    extra = conf.get("log_format_extra")
    return _Plan(
        include_req_body=bool(conf.get("include_req_body")),
        req_body_expr=_compile_rule(conf.get("include_req_body_expr")),
        include_resp_body=bool(conf.get("include_resp_body")),
        resp_body_expr=_compile_rule(conf.get("include_resp_body_expr")),
        max_req_body_bytes=int(conf.get("max_req_body_bytes") or MAX_REQ_BODY_BYTES),
        max_resp_body_bytes=int(conf.get("max_resp_body_bytes") or MAX_RESP_BODY_BYTES),
        log_format=compile_log_format(fmt) if isinstance(fmt, Mapping) else None,
        log_format_extra=compile_log_format(extra) if isinstance(extra, Mapping) else None,
    )


_plans: ConfCache[_Plan] = ConfCache(_compile_plan)


def _metadata_format(ctx: Any, key: str) -> LogFormat | None:
    meta = ctx.plugin_metadata
    if not meta:
        return None
    fmt = meta.get(key)
    if not isinstance(fmt, Mapping) or not fmt:
        return None  # APISIX: a metadata format counts only when it has keys
    return _metadata_formats(fmt)


def active_log_format(ctx: Any, conf: Mapping[str, Any]) -> LogFormat | None:
    """The ``log_format`` in effect: the conf's (even ``{}``), else the plugin metadata's
    (when it has keys), else ``None`` (the default entry)."""
    fmt = _plans(conf).log_format
    if fmt is not None:
        return fmt
    return _metadata_format(ctx, "log_format")


def _active_extra(ctx: Any, conf: Mapping[str, Any]) -> LogFormat | None:
    extra = _plans(conf).log_format_extra
    if extra is not None:
        return extra
    return _metadata_format(ctx, "log_format_extra")


# ---------------------------------------------------------------------------------------------
# body decisions and capture
# ---------------------------------------------------------------------------------------------


def _eval(pred: Predicate | None, var: Any) -> bool:
    if pred is None:
        return True
    try:
        return bool(pred(var))
    except Exception:
        return False


def include_request_body(ctx: Any, conf: Mapping[str, Any]) -> bool:
    """Whether the request body goes into the default entry: ``include_req_body`` is true
    and ``include_req_body_expr`` (when set) matches ``ctx.var`` now."""
    plan = _plans(conf)
    return plan.include_req_body and _eval(plan.req_body_expr, ctx.var)


def include_response_body(ctx: Any, conf: Mapping[str, Any]) -> bool:
    """Whether the response body is collected: ``include_resp_body`` is true and
    ``include_resp_body_expr`` (when set) matches ``ctx.var`` now."""
    plan = _plans(conf)
    return plan.include_resp_body and _eval(plan.resp_body_expr, ctx.var)


async def read_request_body(ctx: Any, conf: Mapping[str, Any]) -> None:
    """Call from ``access``: read and keep the request body (at most ``max_req_body_bytes``)
    when :func:`include_request_body` applies or the log format in effect uses
    ``$request_body``. Reading buffers the whole body for the upstream too (as nginx's
    ``read_body``); a request without a body keeps nothing. A failed read is logged and
    leaves the body out."""
    plan = _plans(conf)
    logged = include_request_body(ctx, conf)
    needed = logged
    if not needed:
        fmt = active_log_format(ctx, conf)
        needed = fmt is not None and fmt.needs_request_body
    if not needed:
        return
    data = ctx.plugin_data
    data[_REQ_LOGGED] = logged
    try:
        body = await ctx.request.body()
    except Exception as exc:  # a client that went away, a body over the size limit, ...
        ctx.log.warning("cannot read the request body for the log: %s", exc)
        return
    if body:
        data[_REQ_BODY] = bytes(body[: plan.max_req_body_bytes])


class _BodyBuffer:
    """The first ``limit`` bytes of a response body, kept as the chunks stream by."""

    __slots__ = ("chunks", "limit", "size")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.chunks: list[bytes] = []

    def add(self, chunk: bytes) -> None:
        room = self.limit - self.size
        if room <= 0 or not chunk:
            return
        if len(chunk) > room:
            chunk = chunk[:room]
        self.chunks.append(bytes(chunk))
        self.size += len(chunk)

    def value(self) -> bytes:
        return b"".join(self.chunks)


def collect_response_body(ctx: Any, conf: Mapping[str, Any]) -> None:
    """Call from ``body_filter`` (every chunk): when :func:`include_response_body` applies
    (decided on the first chunk), keep up to ``max_resp_body_bytes`` of the body; at the last
    chunk the body is final and ``ctx.var["resp_body"]`` is set. The chunk itself is left as
    it is."""
    plan = _plans(conf)
    if not plan.include_resp_body:
        return
    data = ctx.plugin_data
    state = data.get(_RESP_STATE)
    if state is None:
        state = data[_RESP_STATE] = (
            _BodyBuffer(plan.max_resp_body_bytes)
            if _eval(plan.resp_body_expr, ctx.var)
            else False
        )
    if state is False:
        return
    resp = ctx.response
    state.add(resp.chunk)
    if resp.eof:
        body = state.value()
        data[_RESP_BODY] = body
        data[_RESP_STATE] = False
        ctx.var["resp_body"] = _text(body)


def _text(body: bytes) -> str:
    return body.decode("utf-8", "replace")


def request_body_text(ctx: Any) -> str | None:
    """The request body :func:`read_request_body` kept for this plugin (text; undecodable
    bytes replaced), or ``None``."""
    body = ctx.plugin_data.get(_REQ_BODY)
    return None if body is None else _text(body)


def response_body_text(ctx: Any) -> str | None:
    """The response body :func:`collect_response_body` kept for this plugin, or ``None``.
    When the body did not end (the client went away), what arrived so far."""
    data = ctx.plugin_data
    body = data.get(_RESP_BODY)
    if body is None:
        state = data.get(_RESP_STATE)
        if not state:
            return None
        body = state.value()
    return _text(body)


# ---------------------------------------------------------------------------------------------
# entries
# ---------------------------------------------------------------------------------------------


def parse_query(query: str) -> dict[str, Any]:
    """A query string as ``ngx.req.get_uri_args()`` gives it: decoded (``+`` is a space),
    repeated names become lists, a name without ``=`` is ``True``."""
    args: dict[str, Any] = {}
    if not query:
        return args
    for part in query.split("&"):
        if not part:
            continue
        name, sep, value = part.partition("=")
        if "%" in part or "+" in part:
            name, value = unquote_plus(name), unquote_plus(value)
        val: Any = value if sep else True
        prev = args.get(name)
        if prev is None:
            args[name] = val
        elif isinstance(prev, list):
            prev.append(val)
        else:
            args[name] = [prev, val]
    return args


def _header_table(headers: Any) -> dict[str, Any]:
    """``ngx.req.get_headers()`` shape: lower-case names, repeated names as lists."""
    out: dict[str, Any] = {}
    for name, value in headers.items():
        key = name.lower()
        prev = out.get(key)
        if prev is None:
            out[key] = value
        elif isinstance(prev, list):
            prev.append(value)
        else:
            out[key] = [prev, value]
    return out


def _number(value: float) -> float | int:
    value = round(value, 3)
    return int(value) if value.is_integer() else value


def _upstream_seconds(text: Any) -> float | None:
    if text is None:
        return None
    if isinstance(text, int | float):
        return float(text)
    total = 0.0
    seen = False
    for part in str(text).replace(":", ",").split(","):
        part = part.strip()
        if not part or part == "-":
            continue
        try:
            total += float(part)
        except ValueError:
            continue
        seen = True
    return total if seen else None


def _start_time(ctx: Any) -> float:
    start = getattr(ctx.request, "start_time", None)
    if isinstance(start, int | float):
        return float(start)
    try:  # no wall-clock start on this request object: derive it from $request_time
        return time.time() - float(ctx.var["request_time"] or 0)
    except (TypeError, ValueError):
        return time.time()


def latency_details(ctx: Any) -> tuple[float, float | None, float]:
    """``(latency, upstream_latency, apisix_latency)`` in milliseconds, as APISIX's
    ``latency_details_in_ms``: ``latency`` is now minus the request start;
    ``upstream_latency`` is ``$upstream_response_time`` times 1000 (``None`` without an
    upstream; retries add up); ``apisix_latency`` is the difference, never below 0."""
    latency = (time.time() - _start_time(ctx)) * 1000
    seconds = _upstream_seconds(ctx.var["upstream_response_time"])
    if seconds is None:
        return latency, None, latency
    upstream = seconds * 1000
    return latency, upstream, max(latency - upstream, 0.0)


def _str_id(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def default_log_entry(
    ctx: Any, *, request_body: str | None = None, response_body: str | None = None
) -> dict[str, Any]:
    """The default entry of spec §9.2 for this request (call it in ``log``). ``request_body``
    / ``response_body`` go in as ``request.body`` / ``response.body`` when given. Keys
    whose value is unset are left out (``upstream`` without an upstream, ``consumer`` without
    one, ``route_id`` when no route matched, ...)."""
    var = ctx.var
    req = ctx.request
    route = ctx.route
    request: dict[str, Any] = {
        "url": f"{var['scheme']}://{var['host']}:{var['server_port']}{var['request_uri']}",
        "uri": var["request_uri"],
        "method": req.method,
        "headers": _header_table(req.headers),
        "querystring": parse_query(req.query_string),
    }
    size = var["request_length"]
    if size is not None:
        request["size"] = size
    if request_body is not None:
        request["body"] = request_body

    resp = ctx.response
    status = var["status"]
    response: dict[str, Any] = {
        "status": status if status is not None else resp.status,
        "headers": _header_table(resp.headers),
    }
    sent = var["bytes_sent"]
    if sent is not None:
        response["size"] = sent
    if response_body is not None:
        response["body"] = response_body

    server: dict[str, Any] = {"hostname": var["hostname"]}
    version = var["apisix_version"]
    if version is not None:
        server["version"] = version

    entry: dict[str, Any] = {"request": request, "response": response, "server": server}
    upstream = var["upstream_addr"]
    if upstream is not None:
        entry["upstream"] = upstream
    if route is not None:
        entry["service_id"] = _str_id(route.get("service_id")) or ""
        route_id = var["route_id"]
        if route_id is None:
            route_id = _str_id(route.get("id"))
        if route_id is not None:
            entry["route_id"] = route_id
    else:
        entry["service_id"] = var["host"]
    consumer = var["consumer_name"]
    if consumer is not None:
        entry["consumer"] = {"username": consumer}
    entry["client_ip"] = var["remote_addr"]
    latency, upstream_latency, apisix_latency = latency_details(ctx)
    entry["start_time"] = int(_start_time(ctx) * 1000)
    entry["latency"] = _number(latency)
    if upstream_latency is not None:
        entry["upstream_latency"] = _number(upstream_latency)
    entry["apisix_latency"] = _number(apisix_latency)
    return entry


def custom_log_entry(
    ctx: Any, log_format: LogFormat, *, request_body: str | None = None
) -> dict[str, Any]:
    """A ``log_format`` entry (spec §9.3): ``log_format`` rendered against ``ctx.var``, then
    the matched route's ``route_id`` and ``service_id`` set over it (as APISIX assigns them:
    a route without a service leaves no ``service_id``)."""
    entry = log_format.render(ctx.var, request_body)
    route = ctx.route
    if route is not None:
        service_id = _str_id(route.get("service_id"))
        if service_id is None:
            entry.pop("service_id", None)
        else:
            entry["service_id"] = service_id
        route_id = ctx.var["route_id"]
        if route_id is None:
            route_id = _str_id(route.get("id"))
        if route_id is None:
            entry.pop("route_id", None)
        else:
            entry["route_id"] = route_id
    return entry


def get_log_entry(ctx: Any, conf: Mapping[str, Any]) -> dict[str, Any]:
    """Call from ``log``: this request's entry for a logger with ``conf``.

    The conf's ``log_format``, else the metadata's (with keys), gives a
    :func:`custom_log_entry`; otherwise :func:`default_log_entry`, with ``request.body`` when
    ``include_req_body`` (+ ``_expr``) applied in ``access`` and ``response.body`` when the
    body was collected. Then ``log_format_extra`` (conf, else metadata) adds its keys where
    the entry has none."""
    fmt = active_log_format(ctx, conf)
    if fmt is not None:
        entry = custom_log_entry(ctx, fmt, request_body=request_body_text(ctx))
    else:
        data = ctx.plugin_data
        entry = default_log_entry(
            ctx,
            request_body=request_body_text(ctx) if data.get(_REQ_LOGGED) else None,
            response_body=response_body_text(ctx),
        )
    extra = _active_extra(ctx, conf)
    if extra is not None:
        for key, value in extra.render(ctx.var, request_body_text(ctx)).items():
            entry.setdefault(key, value)
    return entry


def encode_entry(entry: Mapping[str, Any]) -> bytes:
    """One compact JSON document (UTF-8, no spaces, no trailing newline), as ``cjson``
    encodes it. Values JSON cannot hold are written as their ``str``."""
    return json.dumps(
        entry, ensure_ascii=False, separators=(",", ":"), default=str
    ).encode("utf-8", "replace")
