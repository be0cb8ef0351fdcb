"""proxy-mirror (APISIX priority 1010, rewrite + before_proxy): send a copy of requests elsewhere.

``rewrite``: with probability ``sample_ratio`` (always when it is 1) the request is picked and
its mirror URL is fixed as ``host`` followed by

* ``path`` + ``?args`` when ``path`` is set and ``path_concat_mode`` is ``replace`` (default);
* ``path`` + the request's path + ``?args`` when ``path_concat_mode`` is ``prefix``;
* else the request's path + ``?args``.

"The request's path + ``?args``" is ``$upstream_uri`` when a plugin that ran before set it,
else ``$uri`` (percent-encoded again) + ``?`` + ``$args``. As in APISIX the URL is fixed
here, so ``proxy-rewrite`` (priority 1008, later in the phase) does not change it. The picked
request gets ``$upstream_mirror_host`` (``host``) and ``$upstream_mirror_uri`` (the URL).

``before_proxy`` (once per request, not again on retries): reads the client's request body
when there is one (buffered: the upstream then gets it with a ``Content-Length``) and starts a
background task that sends the copy: the client's method, headers (hop-by-hop and framing
headers left out) and body, with ``Host`` = the Host sent upstream, through the worker's
shared HTTP client. The response is read and dropped; a failure is logged (warning). The task
is never awaited by the request: a slow or dead mirror neither delays nor fails it.

Limits, per worker process: at most ``plugin_attr.proxy-mirror.max_inflight`` (default 64)
mirror requests in flight; a picked request beyond that is not mirrored (logged at debug,
counted in ``stats()["dropped"]``). Timeouts from ``plugin_attr.proxy-mirror.timeout``
(``connect``/``send``/``read``, seconds or nginx times like ``60s``, default 60 each): connect
and read are aiohttp's ``sock_connect``/``sock_read``; the whole exchange is capped at their
sum with ``send``. ``https`` mirrors do not verify the certificate (nginx's
``proxy_ssl_verify off``); ``grpc``/``grpcs`` hosts pass the schema (as APISIX) but are not
mirrored (no gRPC client; a warning is logged once per conf). Domain names are resolved by
the HTTP client (cached). ``destroy()`` (gateway stop, plugin reload) cancels mirrors still
in flight on the calling loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from plugin_sdk import ConfCache, hookimpl, http_client

name = "proxy-mirror"
version = "0.1"
priority = 1010

schema: dict[str, Any] = {
    "type": "object",
    "properties": {
        "host": {
            "type": "string",
            "pattern": r"^(http(s)?|grpc(s)?):\/\/([\da-zA-Z.-]+|\[[\da-fA-F:]+\])(:\d+)?$",
        },
        "path": {"type": "string", "pattern": r"^/[^?&]+$"},
        "path_concat_mode": {
            "type": "string",
            "default": "replace",
            "enum": ["replace", "prefix"],
            "description": "the concatenation mode for custom path",
        },
        "sample_ratio": {"type": "number", "minimum": 0.00001, "maximum": 1, "default": 1},
    },
    "required": ["host"],
}

log = logging.getLogger("sixgate.plugin.proxy-mirror")

# -- plugin_attr ---------------------------------------------------------------------------------

DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_INFLIGHT = 64

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "M": 2592000,
          "y": 31536000}
_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)(ms|s|m|h|d|w|M|y))+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|M|y)")


def parse_duration(value: Any) -> float:
    """Seconds from a number or an nginx time (``60s``, ``500ms``, ``1m30s``)."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration: {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"invalid duration: {value!r}")
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            if _DURATION.match(text):
                return sum(float(n) * _UNITS[u] for n, u in _DURATION_PART.findall(text))
        else:
            if seconds >= 0:
                return seconds
    raise ValueError(f"invalid duration: {value!r}")


@functools.lru_cache(maxsize=8)
def _client_timeout(connect: float, send: float, read: float) -> Any:
    """aiohttp's timeout for these seconds; aiohttp is imported on the first mirror, not when
    the plugin loads (it is a few MiB in every worker that never mirrors)."""
    import aiohttp

    return aiohttp.ClientTimeout(total=connect + send + read, sock_connect=connect,
                                 sock_read=read)


_timeout = (DEFAULT_TIMEOUT, DEFAULT_TIMEOUT, DEFAULT_TIMEOUT)
_max_inflight = DEFAULT_MAX_INFLIGHT


def init(attrs: dict[str, Any]) -> None:
    """Read ``plugin_attr.proxy-mirror`` (on load and every plugin reload); a bad value makes
    the plugin fail to load, with the reason."""
    global _timeout, _max_inflight
    attrs = attrs or {}
    timeout = attrs.get("timeout") or {}
    if not isinstance(timeout, dict):
        raise ValueError("plugin_attr.proxy-mirror.timeout must be an object")
    connect, send, read = (
        parse_duration(timeout.get(key, DEFAULT_TIMEOUT)) for key in ("connect", "send", "read")
    )
    limit = attrs.get("max_inflight", DEFAULT_MAX_INFLIGHT)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"plugin_attr.proxy-mirror.max_inflight must be an integer >= 0, "
                         f"not {limit!r}")
    _timeout = (connect, send, read)
    _max_inflight = limit


def destroy() -> None:
    """Cancel the mirrors still in flight on this loop; back to the default attributes."""
    global _timeout, _max_inflight
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    for task in list(_inflight):
        if task.get_loop() is loop:
            task.cancel()
            _inflight.discard(task)  # even if the loop stops before the task sees it
    _timeout = (DEFAULT_TIMEOUT, DEFAULT_TIMEOUT, DEFAULT_TIMEOUT)
    _max_inflight = DEFAULT_MAX_INFLIGHT


# -- in-flight mirrors ---------------------------------------------------------------------------

_inflight: set[asyncio.Task[None]] = set()
"""The running mirror tasks (held here so they are not garbage collected while running)."""
_stats = {"sent": 0, "failed": 0, "dropped": 0}


def stats() -> dict[str, int]:
    """Counters of this worker: ``sent`` (the mirror answered), ``failed`` (error, timeout),
    ``dropped`` (not sent: ``max_inflight`` reached), ``inflight`` (running now)."""
    return {**_stats, "inflight": len(_inflight)}


# -- compiled conf -------------------------------------------------------------------------------

# nginx ngx_escape_uri(NGX_ESCAPE_URI): controls, space, '#', '%', '?', DEL and non-ASCII.
_URI_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in "#%?")
_NEEDS_ESCAPE = re.compile(r"[^\x21-\x7e]|[#%?]")


def _escape_path(path: str) -> str:
    return path if _NEEDS_ESCAPE.search(path) is None else quote(path, safe=_URI_SAFE)


@dataclass(frozen=True, slots=True)
class _Compiled:
    host: str
    path: str | None
    prefix: bool
    ratio: float
    http: bool
    """False for grpc(s) hosts: not mirrored."""


def _compile(conf: dict[str, Any]) -> _Compiled:
    host = conf["host"]
    http = host.startswith(("http://", "https://"))
    if not http:
        log.warning("[proxy-mirror] %s: gRPC mirrors are not supported, requests are not "
                    "mirrored", host)
    return _Compiled(
        host=host,
        path=conf.get("path"),
        prefix=conf.get("path_concat_mode") == "prefix",
        ratio=float(conf.get("sample_ratio", 1)),
        http=http,
    )


_compiled: ConfCache[_Compiled] = ConfCache(_compile)

# Not copied to the mirror: hop-by-hop and framing headers (the client lib frames the body).
_SKIPPED = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
    "upgrade", "host", "content-length", "expect",
})
# Headers aiohttp would otherwise add on its own.
_NO_AUTO_HEADERS = ("Accept", "Accept-Encoding", "Content-Type", "User-Agent")


# -- hooks ---------------------------------------------------------------------------------------


@hookimpl
def rewrite(ctx: Any, conf: dict[str, Any]) -> None:
    c = _compiled(conf)
    if not c.http or (c.ratio < 1 and random.random() >= c.ratio):
        return
    var = ctx.var
    args = var["args"] or ""
    query = "?" + args if var["is_args"] == "?" else ""
    if c.path is not None and not c.prefix:
        target = c.path + query
    else:
        target = var["upstream_uri"] or (_escape_path(var["uri"] or "/") + query)
        if c.path is not None:
            target = c.path + target
    url = c.host + target
    var["upstream_mirror_host"] = c.host
    var["upstream_mirror_uri"] = url
    ctx.plugin_data["url"] = url


def _has_body(var: Any) -> bool:
    if var["http_transfer_encoding"] is not None:
        return True
    length = var["content_length"]
    return length is not None and length.strip() not in ("", "0")


@hookimpl
async def before_proxy(ctx: Any, conf: dict[str, Any]) -> None:
    url = ctx.plugin_data.pop("url", None)  # popped: retries find nothing and send nothing
    if url is None:
        return
    if len(_inflight) >= _max_inflight:
        _stats["dropped"] += 1
        ctx.log.debug("mirror to %s dropped: %d mirror requests in flight", url, len(_inflight))
        return
    request = ctx.request
    body = None
    if _has_body(ctx.var):
        try:
            body = await request.body()
        except Exception as err:  # the client's body failed: the proxy reports it, not us
            ctx.log.info("not mirrored: reading the request body failed: %s", err)
            return
    headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _SKIPPED]
    task = asyncio.get_running_loop().create_task(
        _mirror(ctx, url, request.method, headers, body, ctx.log)
    )
    _inflight.add(task)
    task.add_done_callback(_inflight.discard)


async def _mirror(
    ctx: Any, url: str, method: str, headers: list[tuple[str, str]], body: bytes | None,
    logger: Any,
) -> None:
    # A task starts after the hook returns, by when the gateway has built the upstream request
    # (the Host it sends is known); when it was not built (a later before_proxy hook answered),
    # the client's Host is used.
    var = ctx.var
    host = var["upstream_host"] or var["http_host"]
    del ctx, var  # nothing of the request is kept while the mirror runs
    if host:
        headers.append(("Host", host))
    from yarl import URL  # with aiohttp, on the first mirror (see _client_timeout)

    try:
        async with http_client().request(
            method, URL(url, encoded=True), headers=headers, data=body,
            timeout=_client_timeout(*_timeout),
            ssl=False, allow_redirects=False, skip_auto_headers=_NO_AUTO_HEADERS,
            auto_decompress=False,
        ) as resp:
            while await resp.content.readany():
                pass
    except asyncio.CancelledError:
        raise
    except Exception as err:
        _stats["failed"] += 1
        logger.warning("mirror request to %s failed: %s", url, str(err) or type(err).__name__)
    else:
        _stats["sent"] += 1
