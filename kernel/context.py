"""The per-request context handed to plugins (implements :class:`plugin_sdk.Context`)."""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from kernel.chain import EMPTY_CHAIN
from kernel.consumers import EMPTY_DIRECTORY, ConsumerDirectory
from kernel.plugins import runtime as _runtime  # noqa: F401  (installs shared dicts / HTTP)
from kernel.upstream.override import EMPTY_TABLE, inline_upstream
from kernel.vars import Vars, parse_args, parse_cookies
from plugin_sdk import Headers
from plugin_sdk.consumer import Consumer

if TYPE_CHECKING:
    from kernel.chain import Step
    from kernel.router import Match
    from kernel.server import HttpRequest
    from kernel.upstream.nodes import Node
    from kernel.upstream.runtime import UpstreamRuntime

log = logging.getLogger("sixgate")


class PluginLogger(logging.LoggerAdapter[logging.Logger]):
    """``ctx.log``: logger ``sixgate.plugin.<name>``; each message becomes
    ``[<name>] <message>, request_id: <id>`` and its record gets ``plugin``/``request_id``."""

    def __init__(self, plugin: str, request_id: str) -> None:
        logger = logging.getLogger(f"sixgate.plugin.{plugin}" if plugin else "sixgate")
        super().__init__(logger, {"plugin": plugin, "request_id": request_id})
        safe = plugin.replace("%", "%%")
        self._prefix = f"[{safe}] " if plugin else ""
        self._suffix = f", request_id: {request_id}"

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = kwargs.get("extra")
        kwargs["extra"] = {**self.extra, **extra} if extra else self.extra  # type: ignore[dict-item]
        return f"{self._prefix}{msg}{self._suffix}", kwargs


class UpstreamChanges:
    """What plugins changed about the request sent upstream (``ctx.upstream``)."""

    __slots__ = ("_ctx", "add", "host", "method", "remove", "selected", "set", "uri")

    def __init__(self, ctx: RequestContext | None = None) -> None:
        self._ctx = ctx
        self.selected: UpstreamRuntime | None = None  # set_upstream's choice (None: the route's)
        self.method: str | None = None
        self.uri: str | None = None
        self.host: str | None = None
        self.set: dict[str, tuple[str, list[str]]] = {}
        self.add: list[tuple[str, str]] = []
        self.remove: set[str] = set()

    def set_header(self, name: str, value: str | None) -> None:
        key = name.lower()
        self.add = [item for item in self.add if item[0].lower() != key]
        if value is None:
            self.set.pop(key, None)
            self.remove.add(key)
        else:
            self.set[key] = (name, [str(value)])
            self.remove.discard(key)

    def add_header(self, name: str, value: str) -> None:
        key = name.lower()
        current = self.set.get(key)
        if current is not None:
            current[1].append(str(value))
        else:
            self.add.append((name, str(value)))
            self.remove.discard(key)

    def remove_header(self, name: str) -> None:
        key = name.lower()
        self.set.pop(key, None)
        self.add = [item for item in self.add if item[0].lower() != key]
        self.remove.add(key)

    def overrides(self, key: str) -> bool:
        """True when the client's header ``key`` (lower case) must not be forwarded as is."""
        return key in self.set or key in self.remove

    def set_upstream(
        self, upstream_id: str | int | None = None, *, conf: Mapping[str, Any] | None = None
    ) -> None:
        """``plugin_sdk.UpstreamRequest.set_upstream``: the kernel forwards to
        :attr:`selected` instead of the route's upstream (see :mod:`kernel.upstream.override`)."""
        ctx = self._ctx
        table = ctx.upstream_table if ctx is not None else EMPTY_TABLE
        if upstream_id is not None:
            if conf is not None:
                raise ValueError("set_upstream() takes upstream_id or conf, not both")
            runtime = table.get(str(upstream_id))
            if runtime is None:
                raise LookupError(f"no upstream with id {upstream_id!r}")
            self.selected = runtime
        elif conf is not None:
            step = ctx.step if ctx is not None else None
            self.selected = inline_upstream(None if step is None else step.conf, conf, table)
        else:
            self.selected = None

    def has_upstream(self, upstream_id: str | int) -> bool:
        ctx = self._ctx
        return ctx is not None and str(upstream_id) in ctx.upstream_table


RESPONSE_SKIP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"server",
        b"trailer",
    }
)
"""Upstream response headers never passed to the client as they are."""

HEAD_BUILT: dict[bytes, tuple[str, str]] = {}
"""``ctx.response_pending`` once the response head's ``ctx.response`` exists: headers set from
then on go to that view only (never mutated; compared by identity)."""


_KEYS: dict[str, bytes] = {}
"""Header name -> its ``response_pending`` key (plugins use a few constant names)."""


class ResponseState:
    """``ctx.response``: the response head (and current body chunk) on its way out."""

    __slots__ = ("chunk", "eof", "headers", "status")

    def __init__(self, status: int, headers: Headers) -> None:
        self.status = status
        self.headers = headers
        self.chunk = b""
        self.eof = False


class RequestContext:
    """One request: what plugins see as ``ctx`` and what the kernel records for logging.

    Optional fields live as class-level defaults, so creating a context sets four attributes;
    a field gets an instance value only when a request actually uses it.
    """

    request: HttpRequest
    host: str
    uri: str
    route: Mapping[str, Any] | None = None
    route_id: str | None = None
    service: Mapping[str, Any] | None = None
    consumer: Consumer | None = None
    """Set by an auth plugin through :meth:`attach_consumer`."""
    client_address: tuple[str, int | None] | None = None
    """``(ip, port)`` set by :meth:`set_client_address` (the real-ip plugin): replaces the
    peer's address for ``$remote_addr``/``$remote_port``; ``None`` = the peer's."""
    consumers: ConsumerDirectory = EMPTY_DIRECTORY
    """``ctx.consumers``: the directory of the state the request started with (set for
    requests that run plugins)."""
    upstream_table: Mapping[str, UpstreamRuntime] = EMPTY_TABLE
    """The compiled upstreams by id of the state the request started with (set for requests
    that run plugins), for ``ctx.upstream.set_upstream``: the mapping only, never the state
    (see :attr:`plugin_metadata_map`)."""
    uri_params: dict[str, str] | None = None
    match: Match | None = None
    """The router's match (``$matched_uri``/``$matched_host``: the route pattern and host that
    matched, as APISIX's ``ctx.curr_req_matched``)."""
    upstream_state: UpstreamChanges | None = None
    response_view: ResponseState | None = None
    response_pending: dict[bytes, tuple[str, str]] | None = None
    """Headers :meth:`set_response_header` recorded before the response head existed (lower
    case name as latin-1 bytes, as the upstream's head is compared -> (name, value)); the
    kernel applies them when it builds the head. ``HEAD_BUILT`` once a view took them."""
    response_raw: tuple[int, list[tuple[bytes, bytes]], str | None] | None = None
    """A proxied response head forwarded without a view (no header filter): ``(status,
    upstream headers, X-APISIX-Upstream-Status value or None)``, from which ``ctx.response``
    is made if something reads it later (the log phase, ``$sent_http_*``)."""
    upstream_headers: Headers | None = None
    node: Node | None = None
    upstream_addrs: list[str] | None = None
    upstream_statuses: list[str] | None = None
    upstream_response_time: float | None = None
    upstream_connect_time: float | None = None
    upstream_header_time: float | None = None
    upstream_scheme: str | None = None
    upstream_host_sent: str | None = None
    upstream_uri_sent: str | None = None
    status = 0
    bytes_sent = 0
    body_bytes_sent = 0
    end_time: float | None = None
    request_id: str | None = None
    _args: dict[str, Any] | None = None
    _cookies: dict[str, str] | None = None
    _shared: dict[str, Any] | None = None
    _plugin_slots: dict[str, dict[str, Any]] | None = None
    chain: Any = EMPTY_CHAIN
    step: Step | None = None
    """The step (plugin hook) running now; set by the chain runners before each call."""

    plugin_metadata_map: Mapping[str, Mapping[str, Any]] = MappingProxyType({})
    """plugin name -> its metadata, from the state the request started with (set for requests
    that run plugins). Only this mapping, never the state: a context lives until the cyclic GC
    frees it, and contexts holding whole states kept every replaced state (10,000-route dict
    copies) alive until a collection freed them all at once -- a 150 ms stall per second of
    Admin writes at 10,000 routes."""

    def __init__(self, request: HttpRequest, host: str) -> None:
        self.request = request
        self.host = host
        self.uri = request.path

    @property
    def var(self) -> Vars:
        """``ctx.var``, made on first use (most proxied requests never read a variable)."""
        v = self.__dict__.get("_var")
        if v is None:
            v = self.__dict__["_var"] = Vars(self)
        return v

    def get(self, name: str, default: Any = None) -> Any:
        """``ctx.var.get``: lets routers and balancers take the context as their variables."""
        return self.var.get(name, default)

    @property
    def shared(self) -> dict[str, Any]:
        shared = self._shared
        if shared is None:
            shared = self._shared = {}
        return shared

    # --- per-plugin facilities (all made on first use: free for plugins that do not ask) ----
    @property
    def plugin_name(self) -> str | None:
        step = self.step
        return None if step is None else step.plugin

    def _plugin_slot(self) -> dict[str, Any]:
        """What this request keeps for the running plugin (``data``, ``log``), made on first
        use."""
        slots = self._plugin_slots
        if slots is None:
            slots = self._plugin_slots = {}
        step = self.step
        name = "" if step is None else step.plugin
        slot = slots.get(name)
        if slot is None:
            slot = slots[name] = {}
        return slot

    @property
    def plugin_data(self) -> dict[str, Any]:
        """The running plugin's private dict for this request."""
        slot = self._plugin_slot()
        data: dict[str, Any] | None = slot.get("data")
        if data is None:
            data = slot["data"] = {}
        return data

    @property
    def plugin_metadata(self) -> Mapping[str, Any] | None:
        step = self.step
        if step is None:
            return None
        return self.plugin_metadata_map.get(step.plugin)

    def attach_consumer(self, consumer: Consumer) -> None:
        """Identify the caller (auth plugins, ``rewrite``): ``$consumer_name`` follows, and
        once the ``rewrite`` phase ends the consumer's plugins are merged into the chain."""
        if not isinstance(consumer, Consumer):
            raise TypeError(
                f"attach_consumer() takes a plugin_sdk.Consumer, not {type(consumer).__name__}")
        self.consumer = consumer

    def set_client_address(self, ip: str, port: int | None = None) -> None:
        """Replace the client address for the rest of the request (real-ip): ``$remote_addr``,
        ``$remote_port`` (``None`` = unset, as nginx's real-IP without a port),
        ``ctx.request.client_ip`` and the ``X-Real-IP``/``X-Forwarded-For`` sent upstream.
        ``ValueError`` for an invalid IP or port (nothing changes then)."""
        try:
            addr = ipaddress.ip_address(ip)
        except (TypeError, ValueError):
            raise ValueError(f"invalid client address: {ip!r}") from None
        if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id:
            raise ValueError(f"invalid client address: {ip!r}")
        if port is not None and (
            isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536
        ):
            raise ValueError(f"invalid client port: {port!r}")
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            text = f"::ffff:{addr.ipv4_mapped}"  # as nginx prints it
        else:
            text = str(addr)
        self.request.client_ip = text
        self.client_address = (text, port)
        v: Vars | None = self.__dict__.get("_var")
        if v is not None:
            v.forget("remote_addr", "remote_port")  # values a plugin set no longer apply

    # --- the plugin_sdk.Context surface -------------------------------------------------
    @property
    def upstream(self) -> UpstreamChanges:
        state = self.upstream_state
        if state is None:
            state = self.upstream_state = UpstreamChanges(self)
        return state

    @property
    def response(self) -> ResponseState:
        view = self.response_view
        if view is None:
            raw = self.response_raw
            if raw is not None:  # forwarded as is: the same view a header filter would see
                return view_from_upstream(self, *raw)
            headers = Headers()
            pending = self.response_pending
            if pending:  # before the head: show what set_response_header recorded
                for name, value in pending.values():
                    headers.add(name, value)
            view = self.response_view = ResponseState(self.status or 200, headers)
        return view

    def set_response_header(self, name: str, value: str) -> None:
        """``plugin_sdk.Context.set_response_header``: set now on the response head when it
        exists, else recorded for the kernel to apply when it builds the head."""
        view = self.response_view
        if view is not None:
            view.headers.set(name, value)
        pending = self.response_pending
        if pending is HEAD_BUILT:
            return
        key = _KEYS.get(name)
        if key is None:
            if len(_KEYS) >= 1024:
                _KEYS.clear()
            key = _KEYS[name] = name.lower().encode("latin-1")
        if pending is None:
            self.response_pending = {key: (name, value)}
            return
        if key in pending:
            del pending[key]  # as Headers.set: the header moves to the end
        pending[key] = (name, value)

    @property
    def log(self) -> PluginLogger:
        """A logger bound to the running plugin and this request (made on first use)."""
        slot = self._plugin_slot()
        logger: PluginLogger | None = slot.get("log")
        if logger is None:
            logger = slot["log"] = PluginLogger(self.plugin_name or "", self.ensure_request_id())
        return logger

    def ensure_request_id(self) -> str:
        rid = self.request_id
        if rid is None:
            rid = self.request_id = os.urandom(16).hex()
        return rid

    # --- helpers for ctx.var ----------------------------------------------------------
    def var_uri(self) -> str:
        return self.uri

    def args(self) -> dict[str, Any]:
        a = self._args
        if a is None:
            a = self._args = parse_args(self.request.query_string)
        return a

    def cookies(self) -> dict[str, str]:
        c = self._cookies
        if c is None:
            c = self._cookies = parse_cookies(self.request.headers.get("cookie"))
        return c

    post_args = None


def view_from_upstream(
    ctx: RequestContext, status: int, headers: list[tuple[bytes, bytes]],
    upstream_status: str | None,
) -> ResponseState:
    """``ctx.response`` for a proxied response: the upstream's head without hop-by-hop
    headers, ``X-APISIX-Upstream-Status`` when given, then the headers plugins set before the
    head existed (:meth:`RequestContext.set_response_header`)."""
    resp_headers = Headers(
        [(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers
         if n.lower() not in RESPONSE_SKIP]
    )
    ctx.upstream_headers = resp_headers
    if upstream_status is not None:
        resp_headers.set("X-APISIX-Upstream-Status", upstream_status)
    apply_pending(ctx, resp_headers)
    view = ctx.response_view = ResponseState(status, resp_headers)
    return view


def apply_pending(ctx: RequestContext, headers: Headers) -> None:
    """Set the headers recorded by :meth:`RequestContext.set_response_header` on a response
    head's ``headers``; later calls go to the view straight away."""
    pending = ctx.response_pending
    if pending:
        for name, value in pending.values():
            headers.set(name, value)
    ctx.response_pending = HEAD_BUILT
