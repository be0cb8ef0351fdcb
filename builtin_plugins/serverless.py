"""serverless-pre-function / serverless-post-function: run user functions in one phase.

The two plugins (modules :mod:`builtin_plugins.serverless_pre_function`, priority 10000, and
:mod:`builtin_plugins.serverless_post_function`, priority -2000) share this implementation.
A conf names one ``phase`` (``rewrite``, ``access`` (default), ``before_proxy``,
``header_filter``, ``body_filter``, ``log``) and a list of ``functions``; every hook of the
plugin compares ``conf["phase"]`` with its own phase and returns at once when they differ, so
only the configured phase runs the functions, in order, each called as ``f(conf, ctx)``.

Each function string is one of:

* **Python** -- when its first line that is neither blank nor a ``#`` comment starts with
  ``def``/``async def`` (``def name(``), ``lambda``, ``import``, ``from ... import`` or a
  decorator ``@``. The (dedented) source is compiled once per conf. A ``lambda`` source is
  evaluated as one expression; any other source is executed as a module that must define
  exactly one top-level function (``def`` or ``async def``; imports, constants and nested
  helpers are fine), and that function is the callable. Its globals start with ``Response``
  (:class:`plugin_sdk.Response`). It must accept ``(conf, ctx)``: ``conf`` is the plugin conf,
  ``ctx`` the :class:`plugin_sdk.Context`. It may be ``async`` in every phase but
  ``body_filter`` (whose hook is synchronous).
* **Lua** -- anything else: APISIX's form ``return function(conf, ctx) ... end``, run by an
  embedded LuaJIT (``lupa``) with an OpenResty-like ``ngx`` table and ``require("apisix.core")``
  (the subset documented in ``docs/plugins/serverless.md``). Each function's chunk is loaded
  once per conf, in text mode, with its own global environment (reads fall back to the shared
  globals). The Lua state has no ``python`` module, and Python objects reachable from Lua are
  opaque callables (every attribute access is refused).

In ``rewrite``/``access``/``before_proxy`` a function ends the request by returning a
:class:`plugin_sdk.Response`, a status code or ``(status, body)`` (Python), by returning
``code[, body]`` (Lua; a table body is sent as JSON), by calling ``ngx.exit(status >= 200)``,
``ngx.redirect`` or ``core.response.exit``, or by writing output with ``ngx.say``/``ngx.print``
(sent with ``ngx.status``, default 200, when the function returns or exits). ``ngx.exit(0)``
stops the remaining functions of the conf and lets the request go on. Response headers set in
those phases (``ngx.header`` in Lua, ``ctx.response.headers`` in Python) are added to the
response the client eventually gets, generated or proxied. In ``header_filter`` functions change
``ctx.response`` (``ngx.status``/``ngx.header``), in ``body_filter`` the chunk
(``ctx.response.chunk`` / ``ngx.arg[1]``); return values there and in ``log`` are ignored.

Bad code is refused when the conf is written (``check_schema``), with APISIX's messages for Lua
(``failed to loadstring: ...``, ``only accept Lua function, the input code type is <type>``).
A function that raises at run time -- a Lua error surfaces as :class:`LuaFunctionError` carrying
the Lua message -- is isolated by the kernel: a 500 in request phases, logged elsewhere.
These plugins run arbitrary code with the gateway's rights, so they are not in the default
``plugins`` list; enable them explicitly.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import importlib
import inspect
import json
import linecache
import logging
import re
import textwrap
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, unquote_plus

from plugin_sdk import ConfCache, Response, hookimpl


def _import_lupa() -> Any:
    """LuaJIT (as OpenResty) when lupa has it, else lupa's default Lua; ``None`` without lupa
    (then only Python functions can be configured)."""
    for module in ("lupa.luajit21", "lupa"):
        try:
            return importlib.import_module(module)
        except ImportError:
            continue
    return None


_lupa = _import_lupa()

version = "0.1"

PHASES = ("rewrite", "access", "header_filter", "body_filter", "log", "before_proxy")
REQUEST_PHASES = frozenset({"rewrite", "access", "before_proxy"})

schema: dict[str, Any] = {
    "type": "object",
    "properties": {
        "phase": {"type": "string", "default": "access", "enum": list(PHASES)},
        "functions": {"type": "array", "items": {"type": "string"}, "minItems": 1},
    },
    "required": ["functions"],
}


class LuaFunctionError(RuntimeError):
    """A Lua function failed; the message is Lua's (``[string "..."]:1: ...``)."""


# -- telling Python from Lua --------------------------------------------------------------------

_PYTHON_START = re.compile(
    r"(?:async\s+)?def\s+[A-Za-z_]\w*\s*\("
    r"|lambda\b(?!\s*=)"
    r"|import\s+[A-Za-z_]"
    r"|from\s+[\w.]+\s+import\b"
    r"|@"
)


def _first_line(source: str) -> str:
    """The first line that is neither blank nor a ``#`` comment, stripped."""
    for line in source.splitlines():
        text = line.strip()
        if text and not text.startswith("#"):
            return text
    return ""


def is_python(source: str) -> bool:
    """Whether a function string is Python (else it is Lua): its first line that is neither
    blank nor a ``#`` comment starts with ``def name(``, ``async def``, ``lambda``,
    ``import``, ``from x import`` or ``@``."""
    return _PYTHON_START.match(_first_line(source)) is not None


# -- compiled functions -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Function:
    func: Any
    """A Python callable, or a Lua function."""
    lua: bool
    is_async: bool


@dataclass(frozen=True, slots=True)
class _Compiled:
    functions: tuple[_Function, ...]
    lua_conf: Any
    """The conf as a Lua table (``None`` when no function is Lua)."""
    needs_body: bool
    """A Lua function mentions ``get_body_data``/``get_body``: read the body before calling."""


class _CompileError(Exception):
    pass


def _compile_python(source: str, index: int, phase: str) -> _Function:
    prefix = f"failed to compile python function functions[{index}]: "
    text = textwrap.dedent(source).strip()
    digest = hashlib.sha1(text.encode()).hexdigest()[:12]
    filename = f"<serverless-function {digest}>"
    namespace: dict[str, Any] = {"__name__": "serverless_function", "Response": Response}
    try:
        if _first_line(text).startswith("lambda"):
            expression = ast.parse(text, filename, "eval")
            linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
            func = eval(compile(expression, filename, "eval"), namespace)
        else:
            module = ast.parse(text, filename)
            defs = [n for n in module.body
                    if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
            if len(defs) != 1:
                raise _CompileError(
                    f"{prefix}the source must define exactly one top-level function, "
                    f"found {len(defs)}"
                )
            # Tracebacks through the function show its source lines.
            linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
            exec(compile(module, filename, "exec"), namespace)
            func = namespace[defs[0].name]
    except SyntaxError as exc:
        raise _CompileError(f"{prefix}{exc.msg} (line {exc.lineno})") from None
    except _CompileError:
        raise
    except Exception as exc:
        raise _CompileError(f"{prefix}{type(exc).__name__}: {exc}") from None
    if not callable(func):
        raise _CompileError(f"{prefix}the source must produce a callable, got "
                            f"{type(func).__name__}")
    try:
        inspect.signature(func).bind(None, None)
    except TypeError as exc:
        raise _CompileError(f"{prefix}the function must accept (conf, ctx): {exc}") from None
    except ValueError:
        pass  # no signature available (a builtin): let the call decide
    is_async = inspect.iscoroutinefunction(func)
    if is_async and phase == "body_filter":
        raise _CompileError(f"{prefix}async functions cannot run in phase body_filter")
    return _Function(func, False, is_async)


def _compile(conf: dict[str, Any]) -> _Compiled:
    phase = conf.get("phase", "access")
    functions = []
    lua = None
    needs_body = False
    for index, source in enumerate(conf["functions"]):
        if is_python(source):
            functions.append(_compile_python(source, index, phase))
            continue
        if lua is None:
            lua = _runtime()
        functions.append(_Function(lua.compile(source), True, False))
        needs_body = needs_body or "get_body" in source
    return _Compiled(
        functions=tuple(functions),
        lua_conf=lua.to_lua(conf) if lua is not None else None,
        needs_body=needs_body and phase in REQUEST_PHASES,
    )


def check_schema(conf: dict[str, Any]) -> str | None:
    """Compile every function (the JSON schema was checked by the kernel first); the first
    problem is the message (Lua ones as APISIX words them)."""
    try:
        _compile(conf)
    except _CompileError as exc:
        return str(exc)
    return None


_compiled: ConfCache[_Compiled] = ConfCache(_compile)


# -- one call into Lua --------------------------------------------------------------------------

_RETURNED, _EXITED, _FAILED = 0, 1, 2


class _Call:
    """What the ``ngx`` API of the running Lua function acts on (one per hook invocation)."""

    __slots__ = ("body", "ctx", "exit_code", "out", "phase", "request_phase", "status")

    def __init__(self, ctx: Any, phase: str) -> None:
        self.ctx = ctx
        self.phase = phase
        self.request_phase = phase in REQUEST_PHASES
        self.out: list[bytes] = []
        self.status: int | None = None
        self.exit_code: int | None = None
        self.body: bytes | None = None


_tls = threading.local()


def _current() -> _Call:
    call: _Call | None = getattr(_tls, "call", None)
    if call is None:
        raise RuntimeError("the ngx API is only available while a request runs the function")
    return call


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _var_text(value: Any) -> bytes | None:
    """A variable as nginx gives it to Lua: a string, or nil."""
    if value is None or value is False:
        return None
    if value is True:
        return b""
    if isinstance(value, bytes):
        return value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).encode()


def _scalar_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _header_name(name: Any) -> str:
    # OpenResty's ngx.header: underscores become hyphens.
    return _text(name).replace("_", "-")


_PY_LEVELS = {
    0: logging.CRITICAL, 1: logging.CRITICAL, 2: logging.CRITICAL, 3: logging.CRITICAL,
    4: logging.ERROR, 5: logging.WARNING, 6: logging.INFO, 7: logging.INFO, 8: logging.DEBUG,
}
_CONTEXT_NAMES = {
    "header_filter": "header_filter_by_lua*",
    "body_filter": "body_filter_by_lua*",
    "log": "log_by_lua*",
    "before_proxy": "balancer_by_lua*",
}
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})


def _disabled(call: _Call) -> RuntimeError:
    return RuntimeError(
        f"API disabled in the context of {_CONTEXT_NAMES.get(call.phase, call.phase)}"
    )


def _deny_attributes(obj: Any, name: Any, is_setting: bool) -> Any:
    raise AttributeError("access to Python attributes is not allowed")


_PRELUDE = r"""
local cb = ...
local type, tostring, select, error, setmetatable, rawget, rawset, xpcall =
      type, tostring, select, error, setmetatable, rawget, rawset, xpcall
local concat = table.concat
local unpack = table.unpack or unpack
local traceback = debug.traceback

local EXIT = setmetatable({}, {__tostring = function() return "ngx.exit" end})

local function flatten(buf, v)
  local t = type(v)
  if t == "string" then buf[#buf + 1] = v
  elseif t == "number" then buf[#buf + 1] = tostring(v)
  elseif t == "table" then for i = 1, #v do flatten(buf, v[i]) end
  elseif t == "nil" then buf[#buf + 1] = "nil"
  elseif t == "boolean" then buf[#buf + 1] = v and "true" or "false"
  else error("bad argument: string, number, boolean, nil or array table expected, got " .. t, 3)
  end
end

local function text(...)
  local buf = {}
  for i = 1, select("#", ...) do flatten(buf, (select(i, ...))) end
  return concat(buf)
end

local ngx = {
  OK = 0, ERROR = -1, AGAIN = -2, DONE = -4, DECLINED = -5,
  HTTP_CONTINUE = 100, HTTP_SWITCHING_PROTOCOLS = 101,
  HTTP_OK = 200, HTTP_CREATED = 201, HTTP_ACCEPTED = 202, HTTP_NO_CONTENT = 204,
  HTTP_PARTIAL_CONTENT = 206, HTTP_SPECIAL_RESPONSE = 300, HTTP_MOVED_PERMANENTLY = 301,
  HTTP_MOVED_TEMPORARILY = 302, HTTP_SEE_OTHER = 303, HTTP_NOT_MODIFIED = 304,
  HTTP_TEMPORARY_REDIRECT = 307, HTTP_PERMANENT_REDIRECT = 308, HTTP_BAD_REQUEST = 400,
  HTTP_UNAUTHORIZED = 401, HTTP_PAYMENT_REQUIRED = 402, HTTP_FORBIDDEN = 403,
  HTTP_NOT_FOUND = 404, HTTP_NOT_ALLOWED = 405, HTTP_NOT_ACCEPTABLE = 406,
  HTTP_REQUEST_TIMEOUT = 408, HTTP_CONFLICT = 409, HTTP_GONE = 410,
  HTTP_UPGRADE_REQUIRED = 426, HTTP_TOO_MANY_REQUESTS = 429, HTTP_CLOSE = 444,
  HTTP_ILLEGAL = 451, HTTP_INTERNAL_SERVER_ERROR = 500, HTTP_METHOD_NOT_IMPLEMENTED = 501,
  HTTP_NOT_IMPLEMENTED = 501, HTTP_BAD_GATEWAY = 502, HTTP_SERVICE_UNAVAILABLE = 503,
  HTTP_GATEWAY_TIMEOUT = 504, HTTP_VERSION_NOT_SUPPORTED = 505,
  HTTP_INSUFFICIENT_STORAGE = 507,
  HTTP_GET = "GET", HTTP_HEAD = "HEAD", HTTP_PUT = "PUT", HTTP_POST = "POST",
  HTTP_DELETE = "DELETE", HTTP_OPTIONS = "OPTIONS", HTTP_PATCH = "PATCH", HTTP_TRACE = "TRACE",
  STDERR = 0, EMERG = 1, ALERT = 2, CRIT = 3, ERR = 4, WARN = 5, NOTICE = 6, INFO = 7,
  DEBUG = 8,
}

ngx.var = setmetatable({}, {
  __index = function(_, k) return cb.var_get(k) end,
  __newindex = function(_, k, v) cb.var_set(k, v) end,
})
ngx.header = setmetatable({}, {
  __index = function(_, k) return cb.header_get(k) end,
  __newindex = function(_, k, v)
    if type(v) == "table" then cb.header_set(k, true, unpack(v)) else cb.header_set(k, false, v) end
  end,
})
ngx.arg = setmetatable({}, {
  __index = function(_, k) return cb.arg_get(k) end,
  __newindex = function(_, k, v)
    if k == 1 then v = (v == nil) and "" or text(v) end
    cb.arg_set(k, v)
  end,
})
ngx.say = function(...) cb.output(text(...) .. "\n") return 1 end
ngx.print = function(...) cb.output(text(...)) return 1 end
ngx.exit = function(code) cb.exit(code) error(EXIT, 0) end
ngx.redirect = function(uri, status) cb.redirect(uri, status) error(EXIT, 0) end
ngx.log = function(level, ...) cb.log(level, text(...)) end
ngx.time = function() return os.time() end
ngx.now = function() return cb.now() end
ngx.encode_base64 = function(s) return cb.b64encode(s) end
ngx.decode_base64 = function(s) return cb.b64decode(s) end
ngx.escape_uri = function(s) return cb.escape_uri(s) end
ngx.unescape_uri = function(s) return cb.unescape_uri(s) end
ngx.md5 = function(s) return cb.md5(s) end

local header_mt = {__index = function(t, k)
  if type(k) == "string" then
    local n = k:lower():gsub("_", "-")
    if n ~= k then return rawget(t, n) end
  end
end}
ngx.req = {
  get_headers = function(_, raw)
    local t = cb.req_headers(raw and true or false)
    if not raw then setmetatable(t, header_mt) end
    return t
  end,
  get_uri_args = function() return cb.req_args() end,
  get_method = function() return cb.req_method() end,
  http_version = function() return cb.req_version() end,
  set_header = function(name, value)
    if type(value) == "table" then cb.req_set_header(name, true, unpack(value))
    else cb.req_set_header(name, false, value) end
  end,
  clear_header = function(name) cb.req_set_header(name, false, nil) end,
  read_body = function() end,
  get_body_data = function() return cb.req_body() end,
}
setmetatable(ngx, {
  __index = function(_, k)
    if k == "status" then return cb.status_get()
    elseif k == "ctx" then return cb.ngx_ctx() end
  end,
  __newindex = function(t, k, v)
    if k == "status" then cb.status_set(v)
    elseif k == "ctx" then cb.ngx_ctx_set(v)
    else rawset(t, k, v) end
  end,
})
_G.ngx = ngx

-- require("apisix.core"): the parts serverless snippets use.
local function logger(level) return function(...) cb.log(level, text(...)) end end
local core = {
  log = {
    emerg = logger(1), alert = logger(2), crit = logger(3), error = logger(4),
    warn = logger(5), notice = logger(6), info = logger(7), debug = logger(8),
  },
  json = {
    encode = function(v) return cb.json_encode(v) end,
    decode = function(s) return cb.json_decode(s) end,
  },
  table = {
    new = function() return {} end, insert = table.insert, concat = table.concat,
    nkeys = function(t) local n = 0 for _ in pairs(t) do n = n + 1 end return n end,
  },
  response = {},
  request = {},
}
core.json.delay_encode = core.json.encode
function core.response.exit(code, ...)
  local buf = {}
  local function add(v)
    if type(v) == "table" then
      local body, err = cb.json_encode(v)
      if not body then error("failed to encode the response body: " .. tostring(err), 3) end
      buf[#buf + 1] = body
      buf[#buf + 1] = "\n"
    elseif v ~= nil then
      buf[#buf + 1] = tostring(v)
    end
  end
  if code ~= nil and type(code) ~= "number" then add(code) code = nil end
  for i = 1, select("#", ...) do add((select(i, ...))) end
  if code then ngx.status = code end
  if #buf > 0 then ngx.print(buf) end
  if code then return ngx.exit(code) end
end
local function set_headers(add, ...)
  local n = select("#", ...)
  if n == 1 and type((...)) == "table" then
    for k, v in pairs((...)) do cb.resp_header(add, k, v) end
    return
  end
  local args = {...}
  for i = 1, n, 2 do cb.resp_header(add, args[i], args[i + 1]) end
end
function core.response.set_header(...) set_headers(false, ...) end
function core.response.add_header(...) set_headers(true, ...) end
function core.request.header(ctx, name)
  if name == nil then name = ctx end
  local v = ngx.req.get_headers()[name]
  if type(v) == "table" then return v[1] end
  return v
end
function core.request.headers() return ngx.req.get_headers() end
function core.request.get_method() return ngx.req.get_method() end
function core.request.get_uri_args() return ngx.req.get_uri_args() end
function core.request.get_body() return ngx.req.get_body_data() end
function core.request.set_header(ctx, name, value)
  if type(ctx) == "string" then name, value = ctx, name end
  ngx.req.set_header(name, value)
end
package.loaded["apisix.core"] = core

local function handler(e)
  if e == EXIT or type(e) ~= "string" then return e end
  return traceback(e, 1)
end

local function run(f, conf, ctx)
  local ok, a, b = xpcall(f, handler, conf, ctx)
  if ok then return 0, a, b end
  if a == EXIT then return 1, nil, nil end
  return 2, a, nil
end

local function compile(src)
  local chunk, err = load(src, src, "t", setmetatable({}, {__index = _G}))
  if not chunk then return nil, "failed to loadstring: " .. err end
  local ok, ret = pcall(chunk)
  if not ok then return nil, "pcall error: " .. tostring(ret) end
  if type(ret) ~= "function" then
    return nil, "only accept Lua function, the input code type is " .. type(ret)
  end
  return ret, nil
end

local function new_api_ctx()
  return setmetatable({var = ngx.var}, {__index = function(_, k) return cb.ctx_field(k) end})
end

return run, compile, new_api_ctx
"""

_RUNNER_FRAMES = re.compile(r"\n\t\[C\]: in (?:function|upvalue|local) 'xpcall'")
_CTX_FIELDS = frozenset(
    {"route_id", "route_name", "service_id", "service_name", "consumer_name"}
)


class _LuaState:
    """The Lua runtime of this process: ``ngx``/``apisix.core`` backed by the running call."""

    def __init__(self) -> None:
        assert _lupa is not None
        self.error = _lupa.LuaError
        self.lua_type = _lupa.lua_type
        lua = self.lua = _lupa.LuaRuntime(
            register_eval=False,
            register_builtins=False,
            unpack_returned_tuples=True,
            attribute_filter=_deny_attributes,
            encoding=None,
        )
        lua.execute("python = nil; package.loaded.python = nil")
        callbacks = lua.table()
        for name in (
            "var_get", "var_set", "header_get", "header_set", "arg_get", "arg_set", "output",
            "exit", "redirect", "log", "now", "b64encode", "b64decode", "escape_uri",
            "unescape_uri", "md5", "req_headers", "req_args", "req_method", "req_version",
            "req_set_header", "req_body", "status_get", "status_set", "ngx_ctx", "ngx_ctx_set",
            "ctx_field", "json_encode", "json_decode", "resp_header",
        ):
            callbacks[name.encode()] = getattr(self, "_" + name)
        prelude = lua.eval("function(src) return assert(load(src, '=serverless', 't')) end")
        self._run, self._compile, self._new_api_ctx = prelude(_PRELUDE.encode())(callbacks)

    # -- conversions ------------------------------------------------------------------------
    def to_lua(self, value: Any) -> Any:
        if isinstance(value, str):
            return value.encode()
        if isinstance(value, dict):
            table = self.lua.table()
            for k, v in value.items():
                if v is not None:
                    table[self.to_lua(k)] = self.to_lua(v)
            return table
        if isinstance(value, list | tuple):
            return self.lua.table(*(self.to_lua(v) for v in value))
        if value is None or isinstance(value, bool | int | float | bytes):
            return value
        return str(value).encode()

    def from_lua(self, value: Any, depth: int = 0) -> Any:
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace")
        if self.lua_type(value) != "table":
            return value
        if depth > 64:
            raise ValueError("table nested too deeply")
        items = list(value.items())
        n = len(value)
        if n and len(items) == n:
            return [self.from_lua(value[i], depth + 1) for i in range(1, n + 1)]
        return {_scalar_text(k): self.from_lua(v, depth + 1) for k, v in items}

    # -- compile / run ------------------------------------------------------------------------
    def compile(self, source: str) -> Any:
        func, err = self._compile(source.encode())
        if err is not None:
            raise _CompileError(_text(err))
        return func

    def call(self, func: Any, compiled: _Compiled, call: _Call) -> tuple[int, Any, Any]:
        """Run one Lua function: ``(_RETURNED, a, b)`` with its first two results, or
        ``(_EXITED, None, None)`` after ``ngx.exit``/``ngx.redirect``."""
        ctx = call.ctx
        shared = ctx.shared
        api_ctx = shared.get("serverless.api_ctx")
        if api_ctx is None:
            api_ctx = shared["serverless.api_ctx"] = self._new_api_ctx()
        _tls.call = call
        try:
            kind, a, b = self._run(func, compiled.lua_conf, api_ctx)
        finally:
            _tls.call = None
        if kind == _FAILED:
            if isinstance(a, BaseException):
                raise a
            # The traceback below xpcall is this module's runner: leave it out.
            raise LuaFunctionError(_RUNNER_FRAMES.split(_text(a), 1)[0])
        return kind, a, b

    # -- callbacks (called from Lua, with the running call in _tls) ---------------------------
    def _var_get(self, name: Any) -> bytes | None:
        return _var_text(_current().ctx.var[_text(name)])

    def _var_set(self, name: Any, value: Any) -> None:
        ctx = _current().ctx
        key = _text(name)
        text = _scalar_text(value)
        ctx.var[key] = text
        if key == "upstream_uri" and text:
            ctx.upstream.uri = text

    def _header_get(self, name: Any) -> Any:
        values = _current().ctx.response.headers.getall(_header_name(name))
        if not values:
            return None
        if len(values) == 1:
            return values[0].encode("utf-8", "surrogateescape")
        return self.lua.table(*(v.encode("utf-8", "surrogateescape") for v in values))

    def _header_set(self, name: Any, multi: bool, *values: Any) -> None:
        call = _current()
        if call.phase in ("body_filter", "log"):
            raise RuntimeError(
                f"attempt to set ngx.header.{_text(name)} after sending out response headers"
            )
        headers = call.ctx.response.headers
        key = _header_name(name)
        texts = [t for t in (_scalar_text(v) for v in values) if t is not None]
        if not texts:
            headers.remove(key)
            return
        headers.set(key, texts[0])
        for t in texts[1:]:
            headers.add(key, t)

    def _resp_header(self, add: bool, name: Any, value: Any) -> None:
        headers = _current().ctx.response.headers
        text = _scalar_text(value)
        key = _text(name)
        if text is None:
            if not add:
                headers.remove(key)
        elif add:
            headers.add(key, text)
        else:
            headers.set(key, text)

    def _arg_get(self, index: Any) -> Any:
        call = _current()
        if call.phase != "body_filter":
            return None
        resp = call.ctx.response
        if index == 1:
            return resp.chunk
        if index == 2:
            return bool(resp.eof)
        return None

    def _arg_set(self, index: Any, value: Any) -> None:
        call = _current()
        if call.phase != "body_filter":
            raise _disabled(call)
        if index == 1:
            call.ctx.response.chunk = value if isinstance(value, bytes) else b""
        elif index == 2 and value:
            # Truncate: this chunk is the last one the client gets from this point.
            call.ctx.plugin_data["eof"] = True

    def _output(self, data: Any) -> None:
        call = _current()
        if not call.request_phase or call.phase == "before_proxy":
            raise _disabled(call)
        call.out.append(data if isinstance(data, bytes) else str(data).encode())

    def _exit(self, code: Any) -> None:
        if not isinstance(code, int | float) or isinstance(code, bool):
            raise TypeError(f"bad argument #1 to 'exit' (number expected, got {code!r})")
        _current().exit_code = int(code)

    def _redirect(self, uri: Any, status: Any = None) -> None:
        call = _current()
        if not call.request_phase:
            raise _disabled(call)
        code = 302 if status is None else int(status)
        if code not in _REDIRECT_CODES:
            raise ValueError(f"only ngx.HTTP_MOVED_TEMPORARILY, ngx.HTTP_MOVED_PERMANENTLY, "
                             f"ngx.HTTP_PERMANENT_REDIRECT, ngx.HTTP_SEE_OTHER, and "
                             f"ngx.HTTP_TEMPORARY_REDIRECT are allowed, got {code}")
        call.ctx.response.headers.set("Location", _text(uri))
        call.exit_code = code

    def _log(self, level: Any, message: Any) -> None:
        lvl = _PY_LEVELS.get(int(level) if isinstance(level, int | float) else -1)
        if lvl is None:
            raise ValueError(f"bad log level: {level!r}")
        _current().ctx.log.log(lvl, "%s", _text(message))

    def _now(self) -> float:
        return round(time.time(), 3)

    def _b64encode(self, data: Any) -> bytes:
        return base64.b64encode(data if isinstance(data, bytes) else str(data).encode())

    def _b64decode(self, data: Any) -> bytes | None:
        try:
            return base64.b64decode(data, validate=True)
        except (ValueError, TypeError):
            return None

    def _escape_uri(self, data: Any) -> bytes:
        return quote(data if isinstance(data, bytes) else str(data).encode(), safe="").encode()

    def _unescape_uri(self, data: Any) -> bytes:
        return unquote(_text(data)).encode()

    def _md5(self, data: Any) -> bytes:
        return hashlib.md5(data if isinstance(data, bytes) else str(data).encode()).hexdigest()\
            .encode()

    def _req_headers(self, raw: bool) -> Any:
        table = self.lua.table()
        for name, value in _current().ctx.request.headers.items():
            key = (name if raw else name.lower()).encode("latin-1", "replace")
            data = value.encode("utf-8", "surrogateescape")
            current = table[key]
            if current is None:
                table[key] = data
            elif isinstance(current, bytes):
                table[key] = self.lua.table(current, data)
            else:
                current[len(current) + 1] = data
        return table

    def _req_args(self) -> Any:
        table = self.lua.table()
        query = _current().ctx.request.query_string
        for part in query.split("&") if query else ():
            if not part:
                continue
            name, sep, value = part.partition("=")
            key = unquote_plus(name).encode()
            val: Any = unquote_plus(value).encode() if sep else True
            current = table[key]
            if current is None:
                table[key] = val
            elif self.lua_type(current) == "table":
                current[len(current) + 1] = val
            else:
                table[key] = self.lua.table(current, val)
        return table

    def _req_method(self) -> bytes:
        return _current().ctx.request.method.encode()

    def _req_version(self) -> Any:
        version = _current().ctx.var["server_protocol"] or "HTTP/1.1"
        number = float(str(version).rpartition("/")[2] or 1.1)
        return int(number) if number.is_integer() else number

    def _req_set_header(self, name: Any, multi: bool, *values: Any) -> None:
        call = _current()
        if not call.request_phase:
            raise _disabled(call)
        upstream = call.ctx.upstream
        key = _text(name)
        texts = [t for t in (_scalar_text(v) for v in values) if t is not None]
        if not texts:
            upstream.remove_header(key)
            return
        upstream.set_header(key, texts[0])
        for t in texts[1:]:
            upstream.add_header(key, t)

    def _req_body(self) -> bytes | None:
        return _current().body or None

    def _status_get(self) -> int:
        call = _current()
        if call.request_phase:
            return call.status or 0
        return int(call.ctx.response.status)

    def _status_set(self, value: Any) -> None:
        call = _current()
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise TypeError(f"ngx.status must be a number, got {value!r}")
        if call.request_phase:
            call.status = int(value)
        elif call.phase == "header_filter":
            call.ctx.response.status = int(value)
        else:
            raise RuntimeError("attempt to set ngx.status after sending out response headers")

    def _ngx_ctx(self) -> Any:
        shared = _current().ctx.shared
        table = shared.get("serverless.ngx_ctx")
        if table is None:
            table = shared["serverless.ngx_ctx"] = self.lua.table()
        return table

    def _ngx_ctx_set(self, value: Any) -> None:
        if self.lua_type(value) != "table":
            raise TypeError("ngx.ctx must be a table")
        _current().ctx.shared["serverless.ngx_ctx"] = value

    def _ctx_field(self, name: Any) -> Any:
        key = _text(name)
        if key not in _CTX_FIELDS:
            return None
        return _var_text(_current().ctx.var[key])

    def _json_encode(self, value: Any) -> Any:
        try:
            data = json.dumps(self.from_lua(value), ensure_ascii=False, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            return None, str(exc).encode()
        return data.encode()

    def _json_decode(self, data: Any) -> Any:
        try:
            return self.to_lua(json.loads(data))
        except (TypeError, ValueError) as exc:
            return None, str(exc).encode()


_state: _LuaState | None = None
_state_lock = threading.Lock()


def _runtime() -> _LuaState:
    global _state
    state = _state
    if state is None:
        if _lupa is None:
            raise _CompileError("Lua functions need the lupa package (pip install lupa)")
        with _state_lock:
            if _state is None:
                _state = _LuaState()
            state = _state
    return state


# -- turning results into responses ----------------------------------------------------------


def _python_response(res: Any) -> Response | None:
    if res is None:
        return None
    if isinstance(res, Response):
        return res
    if isinstance(res, int) and not isinstance(res, bool):
        return Response(res)
    if (
        isinstance(res, tuple)
        and 1 <= len(res) <= 3
        and isinstance(res[0], int)
        and not isinstance(res[0], bool)
    ):
        return Response(*res)
    raise TypeError(
        f"a serverless function returned {type(res).__name__}: return None, a "
        "plugin_sdk.Response, a status code or (status, body[, headers])"
    )


def _lua_body(lua: _LuaState, body: Any) -> Any:
    if body is None or isinstance(body, bytes):
        return body
    if lua.lua_type(body) == "table":
        return lua.from_lua(body)
    return _scalar_text(body)


def _lua_outcome(
    lua: _LuaState, call: _Call, kind: int, a: Any, b: Any
) -> tuple[Response | None, bool]:
    """After a Lua function in a request phase: ``(response or None, stop the list)``."""
    if call.out:
        status = call.status or 200
        body = b"".join(call.out)
        call.out = []
        return Response(status, body), True
    if kind == _EXITED:
        code = call.exit_code or 0
        if code >= 100:
            return Response(code), True
        if code < 0:
            return Response(500), True
        return None, True  # ngx.exit(ngx.OK): this conf is done, the request goes on
    if a is None:
        return None, False
    if not isinstance(a, int | float) or isinstance(a, bool):
        raise TypeError(f"a serverless Lua function returned a non-numeric status: {a!r}")
    return Response(int(a), _lua_body(lua, b)), True


def _carry_headers(ctx: Any, resp: Response | None) -> Response | None:
    """Response headers set during a request phase: kept for this request's header_filter, and
    added to a response that ends the request now."""
    headers = ctx.response.headers
    if not len(headers):
        return resp
    items = headers.items()
    ctx.plugin_data["headers"] = items
    if resp is None:
        return None
    merged: dict[str, Any] = dict(items)
    merged.update(resp.headers)
    return Response(resp.status, resp.body, merged)


def _apply_carried(ctx: Any) -> None:
    items = ctx.plugin_data.get("headers")
    if not items:
        return
    headers = ctx.response.headers
    for name in {n.lower(): n for n, _ in items}.values():
        headers.remove(name)
    for name, value in items:
        headers.add(name, value)


# -- the phase runners ---------------------------------------------------------------------------


async def run_request_phase(ctx: Any, conf: dict[str, Any], phase: str) -> Response | None:
    """The functions of a ``rewrite``/``access``/``before_proxy`` conf, in order."""
    c = _compiled(conf)
    call: _Call | None = None
    resp: Response | None = None
    for fn in c.functions:
        if fn.lua:
            lua = _runtime()
            if call is None:
                call = _Call(ctx, phase)
                if c.needs_body:
                    call.body = await ctx.request.body()
            call.exit_code = None
            kind, a, b = lua.call(fn.func, c, call)
            resp, stop = _lua_outcome(lua, call, kind, a, b)
            if stop:
                break
        else:
            res = fn.func(conf, ctx)
            if inspect.isawaitable(res):
                res = await res
            resp = _python_response(res)
            if resp is not None:
                break
    return _carry_headers(ctx, resp)


def run_response_phase_sync(ctx: Any, conf: dict[str, Any], phase: str) -> None:
    """The functions of a ``body_filter`` (or any response-side) conf, all synchronous."""
    c = _compiled(conf)
    call: _Call | None = None
    for fn in c.functions:
        if fn.lua:
            call = call or _Call(ctx, phase)
            if _runtime().call(fn.func, c, call)[0] == _EXITED:
                break
        else:
            res = fn.func(conf, ctx)
            if inspect.isawaitable(res):
                close = getattr(res, "close", None)
                if close is not None:
                    close()
                raise TypeError(f"an async serverless function cannot run in phase {phase}")


async def run_response_phase(ctx: Any, conf: dict[str, Any], phase: str) -> None:
    """The functions of a ``header_filter``/``log`` conf, in order (return values ignored)."""
    c = _compiled(conf)
    call: _Call | None = None
    for fn in c.functions:
        if fn.lua:
            call = call or _Call(ctx, phase)
            if _runtime().call(fn.func, c, call)[0] == _EXITED:
                break
        else:
            res = fn.func(conf, ctx)
            if inspect.isawaitable(res):
                await res


# -- the hooks (re-exported by both plugin modules; each acts only for its conf's phase) -------


def phases_for(conf: dict[str, Any]) -> tuple[str, ...]:
    """The phases a conf needs (read by the kernel when it compiles a route's chain): its
    ``phase``, plus ``header_filter`` for request phases (headers set there are carried to
    the response). Routes thus keep ``Content-Length`` unless a function filters the body."""
    phase = conf["phase"]
    return (phase, "header_filter") if phase in REQUEST_PHASES else (phase,)



@hookimpl
async def rewrite(ctx: Any, conf: dict[str, Any]) -> Response | None:
    if conf["phase"] != "rewrite":
        return None
    return await run_request_phase(ctx, conf, "rewrite")


@hookimpl
async def access(ctx: Any, conf: dict[str, Any]) -> Response | None:
    if conf["phase"] != "access":
        return None
    return await run_request_phase(ctx, conf, "access")


@hookimpl
async def before_proxy(ctx: Any, conf: dict[str, Any]) -> Response | None:
    if conf["phase"] != "before_proxy":
        return None
    return await run_request_phase(ctx, conf, "before_proxy")


@hookimpl
async def header_filter(ctx: Any, conf: dict[str, Any]) -> None:
    phase = conf["phase"]
    if phase == "header_filter":
        await run_response_phase(ctx, conf, phase)
    elif phase in REQUEST_PHASES:
        _apply_carried(ctx)


@hookimpl
def body_filter(ctx: Any, conf: dict[str, Any]) -> None:
    if conf["phase"] != "body_filter":
        return
    if ctx.plugin_data.get("eof"):  # ngx.arg[2] = true on an earlier chunk
        ctx.response.chunk = b""
        return
    run_response_phase_sync(ctx, conf, "body_filter")


@hookimpl
async def log(ctx: Any, conf: dict[str, Any]) -> None:
    if conf["phase"] != "log":
        return
    await run_response_phase(ctx, conf, "log")

