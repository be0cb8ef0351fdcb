"""``ctx.var``: nginx/APISIX variables computed on first read (spec §9.1)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

from kernel import APISIX_VERSION
from plugin_sdk.log_entry import parse_query

if TYPE_CHECKING:
    from kernel.context import RequestContext

Getter = Callable[["RequestContext"], Any]
HOSTNAME = socket.gethostname()

parse_args = parse_query
"""Decoded query arguments (``$arg_*``, ``$args`` tables): one parser with the SDK's log entry."""



def parse_cookies(header: str | None) -> dict[str, str]:
    """``a=1; b=2`` → ``{"a": "1", "b": "2"}`` (names case-sensitive, first wins)."""
    cookies: dict[str, str] = {}
    if not header:
        return cookies
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name and name not in cookies:
            cookies[name] = value.strip()
    return cookies


def _seconds(value: float | None) -> str | None:
    return None if value is None else f"{value:.3f}"


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list) else value


def _time_local(_: RequestContext) -> str:
    return time.strftime("%d/%b/%Y:%H:%M:%S %z")


def _request_uri(c: RequestContext) -> str:
    q = c.request.query_string
    return c.var_uri() + ("?" + q if q else "")


def _upstream_host(c: RequestContext) -> Any:
    return c.upstream_host_sent


def _upstream_uri(c: RequestContext) -> Any:
    """The request-target sent upstream (as APISIX's ``proxy_pass ...$upstream_uri``); before
    proxying, the target a plugin set, else unset."""
    sent = c.upstream_uri_sent
    if sent is not None:
        return sent
    u = c.upstream_state
    return u.uri if u is not None else None


def _remote_port(c: RequestContext) -> Any:
    address = c.client_address  # set by ctx.set_client_address (real-ip)
    return c.request.client_port if address is None else address[1]


_GETTERS: dict[str, Getter] = {
    "uri": lambda c: c.var_uri(),
    "host": lambda c: c.host,
    "http_host": lambda c: c.request.host_header,
    "request_uri": _request_uri,
    "real_request_uri": lambda c: c.request.raw_uri,
    "args": lambda c: c.request.query_string,
    "query_string": lambda c: c.request.query_string,
    "is_args": lambda c: "?" if c.request.query_string else "",
    "request_method": lambda c: c.request.method,
    "remote_addr": lambda c: c.request.client_ip,
    "remote_port": _remote_port,
    "realip_remote_addr": lambda c: c.request.peer_ip,
    "server_addr": lambda c: c.request.server_addr,
    "server_port": lambda c: c.request.server_port,
    "scheme": lambda c: c.request.scheme,
    # TLS (kernel/tls/listener.py): the SNI (or fallback_sni) and the mTLS verdict
    "ssl_server_name": lambda c: getattr(c.request.conn, "ssl_server_name", None),
    "ssl_client_verify": lambda c: getattr(c.request.conn, "ssl_client_verify", None),
    "server_protocol": lambda c: "HTTP/" + c.request.version,
    "request": lambda c: f"{c.request.method} {c.request.raw_uri} HTTP/{c.request.version}",
    "request_line": lambda c: f"{c.request.method} {c.request.raw_uri} HTTP/{c.request.version}",
    "content_type": lambda c: c.request.headers.get("content-type"),
    "content_length": lambda c: c.request.headers.get("content-length"),
    "request_length": lambda c: c.request.bytes_received,
    "status": lambda c: _status(c),
    "bytes_sent": lambda c: c.bytes_sent,
    "body_bytes_sent": lambda c: c.body_bytes_sent,
    "request_time": lambda c: f"{(c.end_time or c.request.start_mono) - c.request.start_mono:.3f}",
    "upstream_addr": lambda c: ", ".join(c.upstream_addrs) if c.upstream_addrs else None,
    "upstream_status": lambda c: ", ".join(c.upstream_statuses) if c.upstream_statuses else None,
    "upstream_response_time": lambda c: _seconds(c.upstream_response_time),
    "upstream_connect_time": lambda c: _seconds(c.upstream_connect_time),
    "upstream_header_time": lambda c: _seconds(c.upstream_header_time),
    "upstream_scheme": lambda c: c.upstream_scheme,
    "upstream_host": _upstream_host,
    "upstream_uri": _upstream_uri,
    "balancer_ip": lambda c: c.node.host if c.node is not None else None,
    "balancer_port": lambda c: c.node.port if c.node is not None else None,
    "upstream_unresolved_host": lambda c: c.node.domain if c.node is not None else None,
    "time_iso8601": lambda c: time.strftime("%Y-%m-%dT%H:%M:%S%z").replace(
        "+0000", "+00:00"
    ),
    "time_local": _time_local,
    "msec": lambda c: f"{time.time():.3f}",
    "hostname": lambda c: HOSTNAME,
    "request_id": lambda c: c.ensure_request_id(),
    "apisix_request_id": lambda c: c.ensure_request_id(),
    "route_id": lambda c: c.route_id,
    "matched_uri": lambda c: c.match.matched_uri if c.match is not None else None,
    "matched_host": lambda c: c.match.matched_host if c.match is not None else None,
    "route_name": lambda c: c.route.get("name") if c.route else None,
    "service_id": lambda c: c.service.get("id") if c.service else None,
    "service_name": lambda c: c.service.get("name") if c.service else None,
    "consumer_name": lambda c: c.consumer.username if c.consumer is not None else None,
    "consumer_group_id": lambda c: c.consumer.group_id if c.consumer is not None else None,
    "remote_user": lambda c: None,
    "request_type": lambda c: "traditional_http",
    "apisix_version": lambda c: APISIX_VERSION,
    "date_gmt": lambda c: formatdate(usegmt=True),
}


def _status(c: RequestContext) -> int | None:
    """The response status: as sent, else as header filters currently see it."""
    if c.status:
        return int(c.status)
    view = c.response_view
    return view.status if view is not None else None


def _prefixed(c: RequestContext, name: str) -> Any:
    if name.startswith("arg_"):
        return _first(c.args().get(name[4:]))
    if name.startswith("http_"):
        return c.request.headers.get(name[5:].replace("_", "-"))
    if name.startswith("cookie_"):
        return c.cookies().get(name[7:])
    if name.startswith("uri_param_"):
        params = c.uri_params
        return params.get(name[10:]) if params else None
    if name.startswith("upstream_http_"):
        h = c.upstream_headers
        if h is None and c.response_raw is not None:  # forwarded as is: make the view now
            h = c.response.headers
        return h.get(name[14:].replace("_", "-")) if h is not None else None
    if name.startswith("sent_http_"):
        r = c.response_view
        if r is None and c.response_raw is not None:
            r = c.response
        return r.headers.get(name[10:].replace("_", "-")) if r is not None else None
    if name.startswith("post_arg_"):
        return _first(c.post_args().get(name[9:])) if c.post_args is not None else None
    return None


class Vars:
    """The variable table of one request. Unknown or unset names read as ``None``.

    Values set by plugins (``ctx.var["x"] = ...``) shadow computed ones for the rest of the request.
    """

    __slots__ = ("_ctx", "_set")

    def __init__(self, ctx: RequestContext) -> None:
        self._ctx = ctx
        self._set: dict[str, Any] | None = None

    def __getitem__(self, name: str) -> Any:
        s = self._set
        if s is not None and name in s:
            return s[name]
        getter = _GETTERS.get(name)
        if getter is not None:
            return getter(self._ctx)
        return _prefixed(self._ctx, name)

    def get(self, name: str, default: Any = None) -> Any:
        value = self[name]
        return default if value is None else value

    def __setitem__(self, name: str, value: Any) -> None:
        if self._set is None:
            self._set = {}
        self._set[name] = value
        if name == "uri":
            self._ctx.uri = value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self[name] is not None

    def forget(self, *names: str) -> None:
        """Drop values plugins set for ``names``: the computed values show again."""
        s = self._set
        if s is not None:
            for name in names:
                s.pop(name, None)
