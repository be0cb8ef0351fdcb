"""What a phase implementation receives as ``ctx``: the typed surface of one request.

The kernel creates one context per request; everything here is valid for that request only.
These are protocols: the kernel provides the implementation, plugins depend only on this shape.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

from .consumer import Consumer, Consumers
from .headers import Headers


class Vars(Protocol):
    """APISIX/nginx variables (``uri``, ``host``, ``arg_name``, ``http_x_header``, ``cookie_k``,
    ``remote_addr``, ``route_id``, ...). Reading an unset variable gives ``None``, never an error.
    Plugins may set their own variables; later plugins and log formats see them."""

    def __getitem__(self, name: str) -> Any: ...

    def get(self, name: str, default: Any = None) -> Any: ...

    def __setitem__(self, name: str, value: Any) -> None: ...


class Request(Protocol):
    """The client's request as received (after real-IP substitution)."""

    method: str
    """Request method, upper case."""
    path: str
    """Normalized, percent-decoded path (nginx ``$uri``) used for routing."""
    raw_uri: str
    """The request-target exactly as the client sent it (path and query)."""
    query_string: str
    """Raw query string without ``?`` (empty when none)."""
    headers: Headers
    """Request headers; changes here are not sent upstream (use ``ctx.upstream``)."""
    client_ip: str
    """The client address (``$remote_addr``)."""

    async def body(self) -> bytes:
        """The whole request body; reading it buffers the body for the upstream too."""
        ...


class UpstreamRequest(Protocol):
    """Changes to the request sent upstream. ``None`` means: as received from the client."""

    method: str | None
    uri: str | None
    """Request-target (path plus optional ``?query``) sent upstream."""
    host: str | None
    """Host header value sent upstream (honoured when the upstream's ``pass_host`` is ``pass``)."""

    def set_header(self, name: str, value: str | None) -> None:
        """Send ``name: value`` instead of the client's values; ``None`` removes it."""
        ...

    def add_header(self, name: str, value: str) -> None:
        """Send one more ``name: value`` besides the client's values."""
        ...

    def remove_header(self, name: str) -> None:
        """Do not send ``name`` upstream."""
        ...


class ResponseView(Protocol):
    """The response on its way to the client."""

    status: int
    headers: Headers
    chunk: bytes
    """The current body chunk (``body_filter`` only); assign to replace it."""
    eof: bool
    """True for the last body chunk (``body_filter`` only)."""


class Context(Protocol):
    """One request, as seen by a plugin."""

    var: Vars
    request: Request
    upstream: UpstreamRequest
    response: ResponseView
    route: Mapping[str, Any] | None
    """The matched route's configuration as stored (read-only; ``None`` when no route
    matched, e.g. in a global rule answering a 404)."""
    service: Mapping[str, Any] | None
    """The matched route's service (its stored configuration, read-only), or ``None``."""
    consumer: Consumer | None
    """The consumer an auth plugin attached (:meth:`attach_consumer`), or ``None``."""
    consumers: Consumers
    """The consumers of this request's config generation, for auth plugins to look callers
    up in (``ctx.consumers.find("key-auth", "key", key)``)."""
    plugin_name: str | None
    """The name of the plugin whose hook is running (``None`` outside a hook)."""
    shared: dict[str, Any]
    """Per-request storage shared by all plugins of this request (made on first use)."""
    plugin_data: dict[str, Any]
    """Per-request storage private to the running plugin: the same dict in all of this plugin's
    phases of this request (``rewrite`` to ``log``), invisible to other plugins. Made on first
    use, so a request whose plugins never touch it pays nothing."""
    plugin_metadata: Mapping[str, Any] | None
    """The running plugin's ``plugin_metadata`` (``/apisix/admin/plugin_metadata/<name>``),
    validated against its ``metadata_schema`` with defaults filled in, read-only; ``None``
    when none is configured. Resolved once per config generation, not per request."""
    log: logging.Logger | logging.LoggerAdapter[logging.Logger]
    """A logger bound to the running plugin and this request (logger
    ``sixgate.plugin.<name>``): messages read ``[<name>] <message>, request_id: <id>`` and
    the records carry ``plugin`` and ``request_id`` attributes. Made on first use."""

    def attach_consumer(self, consumer: Consumer) -> None:
        """Identify the caller as ``consumer`` (an auth plugin, in ``rewrite``). Sets
        ``ctx.consumer`` and ``$consumer_name``; when the ``rewrite`` phase ends, the plugins
        of the consumer's group and of the consumer are merged over the route's (the
        consumer's conf wins per name), the ``rewrite`` hooks of the plugins this adds run,
        then ``access`` and the later phases run with the merged set."""
        ...
