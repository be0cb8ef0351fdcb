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
    """The client address (``$remote_addr``): the peer's, or the one nginx-style real-IP
    (``nginx_config.http.real_ip_*``) or :meth:`Context.set_client_address` put in its place.
    Read it here; change it only through :meth:`Context.set_client_address`."""
    start_time: float
    """When the request arrived (seconds since the epoch, as ``time.time()``)."""

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

    def set_upstream(
        self, upstream_id: str | int | None = None, *, conf: Mapping[str, Any] | None = None
    ) -> None:
        """Send this request to another upstream than the route's (as ``traffic-split`` does).

        ``upstream_id``: an upstream of this request's configuration
        (``/apisix/admin/upstreams/<id>``). Everything of that upstream applies: its nodes, its
        load balancer (whose state, such as the round-robin position, it shares with every
        route and request using that upstream), ``retries``, ``retry_timeout``, ``timeout``,
        ``pass_host``/``upstream_host``, ``scheme`` and ``keepalive_pool``. Raises
        :class:`LookupError` when there is none (:meth:`has_upstream` asks first).

        ``conf``: an upstream object held in the plugin's conf (the schema of a route's inline
        ``upstream``; check it with :func:`plugin_sdk.upstream.check_upstream` when the conf is
        checked). The kernel compiles it once per object and hook conf and keeps its balancer
        state from one request to the next, so pass the same object every time (a part of
        ``conf``, or an object a :class:`~plugin_sdk.ConfCache` built from it), not a dict made
        per request. Host names among its nodes are resolved when the request is forwarded.

        Without arguments: back to the route's own upstream. Both at once: :class:`ValueError`.

        Call it in ``rewrite`` or ``access``; the last call wins. The node is then picked from
        the chosen upstream, before ``before_proxy`` runs; a call from ``before_proxy`` or a
        later phase does not change where this request goes. A route's ``timeout`` still wins
        over the upstream's, as it does over the route's own upstream.
        """
        ...

    def has_upstream(self, upstream_id: str | int) -> bool:
        """Whether this request's configuration has an upstream with id ``upstream_id``."""
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

    def set_response_header(self, name: str, value: str) -> None:
        """Set ``name: value`` on this request's response, replacing the values of ``name``
        the upstream (or a :class:`~plugin_sdk.Response`) has, as
        ``ctx.response.headers.set`` does in ``header_filter``, but callable earlier: in
        ``rewrite``, ``access`` or ``before_proxy`` the header is recorded and the kernel sets
        it when it builds the response head -- a proxied response (also when the route has no
        ``header_filter``, without building ``ctx.response`` for it), or a response the
        gateway or a plugin generates (a rejection, an upstream error page). ``header_filter``
        hooks then find it in ``ctx.response.headers``; so does ``ctx.response`` read before
        the head exists. Setting the same name again replaces the earlier value (names
        ignore case).

        This is how a plugin adds headers it knows in ``access`` (``limit-count``'s
        ``X-RateLimit-*``) without a ``header_filter`` hook of its own, which is cheaper:
        a route whose plugins have no ``header_filter`` forwards the upstream's head without
        making a :class:`ResponseView` of it. In ``header_filter`` it is
        ``ctx.response.headers.set``. After the head was sent (``body_filter``, ``log``)
        it changes nothing the client gets. Not applied to a ``101`` WebSocket handshake,
        which no ``header_filter`` sees either.
        """
        ...

    def set_client_address(self, ip: str, port: int | None = None) -> None:
        """Replace the client's address for the rest of this request, as nginx's real-IP
        module does (the ``real-ip`` plugin calls it in ``rewrite``).

        ``ip`` is an IPv4 or IPv6 address without brackets (kept in its canonical form:
        ``2001:DB8::1`` becomes ``2001:db8::1``); ``port`` 1-65535, or ``None`` when the new
        address has none. From this call on, ``$remote_addr`` and ``ctx.request.client_ip``
        are ``ip``, ``$remote_port`` is ``port`` (``None``: unset), values plugins had set
        for those two variables are dropped, and the ``X-Real-IP`` and ``X-Forwarded-For``
        headers sent upstream carry ``ip``; so do later plugins (``ip-restriction``, rate
        limit keys) and the logs. ``$realip_remote_addr`` keeps the peer's address.

        Call it in ``rewrite`` (or ``access``) to affect the upstream request; route matching
        (``remote_addrs``, ``vars``) already happened with the previous address. Calling it
        again replaces the address again. Raises :class:`ValueError` for an invalid ``ip`` or
        ``port``, and then changes nothing.
        """
        ...
