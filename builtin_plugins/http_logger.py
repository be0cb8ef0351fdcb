"""http-logger (APISIX priority 410, access + body_filter + log): POST log entries in batches.

* ``access`` reads the request body when ``include_req_body`` (+ ``include_req_body_expr``)
  applies or the log format uses ``$request_body``; ``body_filter`` keeps up to
  ``max_resp_body_bytes`` of the response body when ``include_resp_body`` (+ ``_expr``)
  applies; neither changes the request or the response.
* ``log`` builds the entry exactly as file-logger does (``log_format`` of the conf, else of
  the plugin metadata, else the default entry of spec §9.2, plus ``log_format_extra``; see
  :mod:`plugin_sdk.log_entry`), sets ``route_id`` to ``"no-matched"`` when no route matched,
  and pushes it into the batch processor of its conf. It never waits for the network.

Sending. One :class:`plugin_sdk.batch.BatchProcessor` per conf object and worker process
(a route's conf; an edited route is a new conf and gets a new processor, the old one sends
what it holds first). A batch goes out when it has ``batch_max_size`` entries, when no entry
arrived for ``inactive_timeout`` seconds, or ``buffer_duration`` seconds after its first
entry: one ``POST`` to ``uri`` through the worker's shared HTTP client
(:func:`plugin_sdk.http_client`), ``timeout`` seconds at most, with ``Authorization:
<auth_header>`` when set. ``concat_method: json`` sends ``Content-Type: application/json`` and
a JSON array of the entries (one object alone when ``batch_max_size`` is 1); ``new_line``
sends ``text/plain``, one JSON object per line. A connection error, a timeout or a status
>= 400 is a failure: the batch is retried ``max_retry_count`` times, ``retry_delay`` seconds
apart, then dropped (logged). ``https`` URIs verify the collector's certificate only with
``ssl_verify: true``.

Entries waiting to be sent (buffered, being sent, waiting for a retry) are bounded for the
whole plugin in this worker: ``max_pending_entries`` of the conf, else ``plugin_attr``
``http-logger.max_pending_entries``, else 2000; beyond, new entries are dropped with an error
in the log. ``destroy()`` (plugin reload, gateway stop) sends what is buffered; when the
gateway stops it waits for those last batches before closing the HTTP client.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from plugin_sdk import ConfCache, hookimpl, http_client
from plugin_sdk.batch import (
    BatchProcessor,
    BatchSendError,
    PendingCounter,
    batch_properties,
    close_all,
)
from plugin_sdk.log_entry import (
    LOGGER_PROPERTIES,
    METADATA_PROPERTIES,
    check_log_conf,
    collect_response_body,
    encode_entry,
    get_log_entry,
    read_request_body,
)

name = "http-logger"
version = "0.1"
priority = 410

URI_PATTERN = r"^[^\/]+:\/\/([\da-zA-Z.-]+|\[[\da-fA-F:]+\])(:\d+)?"
"""APISIX's ``core.schema.uri_def``: ``scheme://host[:port]...``."""

schema: dict[str, Any] = {
    "type": "object",
    "properties": {
        "uri": {"type": "string", "pattern": URI_PATTERN},
        "auth_header": {"type": "string"},
        "timeout": {"type": "integer", "minimum": 1, "default": 3},
        **LOGGER_PROPERTIES,
        "concat_method": {"type": "string", "default": "json", "enum": ["json", "new_line"]},
        "ssl_verify": {"type": "boolean", "default": False},
        **batch_properties("http logger"),
    },
    "required": ["uri"],
}

metadata_schema: dict[str, Any] = {
    "type": "object",
    "properties": {**METADATA_PROPERTIES},
}

encrypt_fields = ("auth_header",)

DEFAULT_MAX_PENDING_ENTRIES = 2000

_logger = logging.getLogger("sixgate.plugin.http-logger")


def check_schema(conf: dict[str, Any], schema_type: str = "route") -> str | None:
    """Beyond the JSON schema: the ``_expr`` fields must compile."""
    if schema_type == "metadata":
        return None
    return check_log_conf(conf)


# -- plugin-wide state (this module generation, this process) ---------------------------------

_attrs: dict[str, Any] = {}
_pending = PendingCounter()
_made: weakref.WeakSet[BatchProcessor[Any]] = weakref.WeakSet()


def init(attrs: Mapping[str, Any] | None = None) -> None:
    """``plugin_attr.http-logger``: ``max_pending_entries`` (default 2000)."""
    _attrs.clear()
    _attrs.update(attrs or {})


def destroy() -> None:
    """Send what every processor of this generation holds (plugin reload, gateway stop).
    The next entry of a conf gets a new processor (a reload may keep this module)."""
    close_all(_made)
    _processors.clear()


def _max_pending() -> int:
    value = _attrs.get("max_pending_entries")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    return DEFAULT_MAX_PENDING_ENTRIES


# -- sending ------------------------------------------------------------------------------------


def _sender(conf: Mapping[str, Any]) -> Any:
    """``send(entries, batch_max_size)`` for the conf: only copies of its fields are kept, so
    the processor never keeps the conf alive."""
    uri = str(conf["uri"])
    parts = urlsplit(uri)
    host = parts.hostname or ""
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        port = 443 if parts.scheme == "https" else 80
    new_line = conf.get("concat_method") == "new_line"
    headers = {"Content-Type": "text/plain" if new_line else "application/json"}
    auth = conf.get("auth_header")
    if auth:
        headers["Authorization"] = str(auth)
    import aiohttp  # here, not at load: workers whose routes never log over HTTP skip it

    timeout = aiohttp.ClientTimeout(total=float(conf.get("timeout", 3)))
    ssl = bool(conf.get("ssl_verify"))

    async def send(entries: list[bytes], batch_max_size: int) -> None:
        if batch_max_size == 1:
            data = entries[0]
        elif new_line:
            data = b"\n".join(entries)
        else:
            data = b"[" + b",".join(entries) + b"]"
        try:
            async with http_client().post(uri, data=data, headers=headers, timeout=timeout,
                                          ssl=ssl) as resp:
                if resp.status >= 400:
                    body = await resp.text(errors="replace")
                    raise BatchSendError(
                        f"server returned status code[{resp.status}] host[{host}] "
                        f"port[{port}] body[{body}]"
                    )
        except BatchSendError:
            raise
        except aiohttp.ClientConnectorError as exc:
            raise BatchSendError(
                f"failed to connect to host[{host}] port[{port}] {exc}"
            ) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            reason = str(exc) or type(exc).__name__
            raise BatchSendError(
                f"error while sending data to [{host}] port[{port}] {reason}"
            ) from None

    return send


def _make_processor(conf: Mapping[str, Any]) -> BatchProcessor[bytes]:
    processor: BatchProcessor[bytes] = BatchProcessor.from_conf(
        _sender(conf), conf, counter=_pending, max_pending_entries=_max_pending(),
        logger=_logger,
    )
    _made.add(processor)
    return processor


# One processor per conf object, dropped with it (it still sends what it holds first: its
# timer and tasks keep it alive until then).
_processors: ConfCache[BatchProcessor[bytes]] = ConfCache(_make_processor)


# -- hooks --------------------------------------------------------------------------------------


@hookimpl
async def access(ctx: Any, conf: dict[str, Any]) -> None:
    await read_request_body(ctx, conf)


@hookimpl
def body_filter(ctx: Any, conf: dict[str, Any]) -> None:
    collect_response_body(ctx, conf)


@hookimpl
def log(ctx: Any, conf: dict[str, Any]) -> None:
    entry = get_log_entry(ctx, conf)
    if entry.get("route_id") is None:
        entry["route_id"] = "no-matched"
    # Entries are encoded now: the batch holds bytes, not live objects from the request.
    _processors(conf).push(encode_entry(entry))
