"""``GET /v1/healthcheck`` and ``/v1/healthcheck/{src_type}/{src_id}`` (spec §5.6, §8).

The checkers belong to ``kernel.upstream.health``; its ``report(state)`` gives the list
(``[{"name": "/apisix/upstreams/1", "type": "http", "nodes": [{ip, port, hostname, status,
counter}]}]``) and its ``report_for(state, src_type, src_id)`` one source. Without
``report_for``, one source is the list's entry whose ``name`` ends in
``/<src_type>/<src_id>`` (a source with ``checks`` but no checker yet answers with
``nodes: []``). With ``Accept: text/html`` both answer APISIX's HTML table.
"""

from __future__ import annotations

import html
from typing import Any

from kernel.state import GatewayState

from . import optional

SRC_TYPES = ("routes", "services", "upstreams", "stream_routes")


def checks_of(collection: str, item: dict[str, Any]) -> dict[str, Any] | None:
    """The health ``checks`` a source carries: an upstream's own, or the inline upstream of a
    route or service (an ``upstream_id`` reference has none, as in APISIX)."""
    checks = item.get("checks")
    if checks is None and collection != "upstreams":
        inline = item.get("upstream")
        checks = inline.get("checks") if isinstance(inline, dict) else None
    return checks if isinstance(checks, dict) and checks else None


def checker_type(checks: dict[str, Any]) -> str:
    """``checks.active.type`` or ``checks.passive.type`` (schema default ``http``)."""
    for mode in ("active", "passive"):
        part = checks.get(mode)
        if isinstance(part, dict):
            return str(part.get("type") or "http")
    return "http"


def report(state: GatewayState) -> tuple[list[dict[str, Any]], str | None]:
    """``(checkers, note)``; ``note`` says why the list is empty when the health module is
    not there."""
    return optional.run(optional.HEALTH, state)


def one(
    state: GatewayState, prefix: str, src_type: str, src_id: str
) -> tuple[int, Any, str | None]:
    """``(status, body, note)`` for ``/v1/healthcheck/{src_type}/{src_id}`` (APISIX's
    messages): the health module's ``report_for`` when it has one, else :func:`report`'s
    entry for the source."""
    per_source = optional.find(*optional.HEALTH_ONE)
    if per_source is not None:
        status, body = per_source(state, src_type, src_id)
        return status, body, None
    if src_type not in SRC_TYPES:
        return 400, {"error_msg": f"invalid src type {src_type}"}, None
    item = state.snapshot.get(src_type, src_id)
    if item is None:
        return 404, {"error_msg": f"{src_type}[{src_id}] not found"}, None
    checks = checks_of(src_type, item)
    if checks is None:
        return 404, {"error_msg": f"no checker for {src_type}[{src_id}]"}, None
    rows, note = report(state)
    suffix = f"/{src_type}/{src_id}"
    for row in rows:
        if str(row.get("name", "")).endswith(suffix):
            return 200, row, note
    return 200, {"name": f"{prefix}{suffix}", "type": checker_type(checks), "nodes": []}, note


def wants_html(accept: str | None) -> bool:
    return bool(accept) and "text/html" in str(accept)


def render_html(stats: list[dict[str, Any]]) -> str:
    """APISIX's "upstream check status" page: one row per node."""
    rows: list[str] = []
    index = 0
    for stat in stats:
        for node in stat.get("nodes") or []:
            index += 1
            counter = node.get("counter") or {}
            healthy = node.get("status") in ("healthy", "mostly_healthy")
            cells = [index, stat.get("name"), stat.get("type"),
                     f"{node.get('ip')}:{node.get('port')}", node.get("status"),
                     counter.get("success"), counter.get("tcp_failure"),
                     counter.get("http_failure"), counter.get("timeout_failure")]  # fmt: skip
            tds = "".join(f"    <td>{html.escape(str(c))}</td>\n" for c in cells)
            tr = "  <tr>\n" if healthy else '  <tr bgcolor="#FF0000">\n'
            rows.append(f"{tr}{tds}  </tr>\n")
    headers = ("Index", "Upstream", "Check type", "Host", "Status", "Success counts",
               "TCP Failures", "HTTP Failures", "TIMEOUT Failures")  # fmt: skip
    ths = "".join(f"    <th>{h}</th>\n" for h in headers)
    return (
        '<html xmlns="http://www.w3.org/1999/xhtml">\n<head>\n'
        "  <title>APISIX upstream check status</title>\n</head>\n<body>\n"
        "<h1>APISIX upstream check status</h1>\n"
        '<table style="background-color:white" cellspacing="0" cellpadding="3" border="1">\n'
        f'  <tr bgcolor="#C0C0C0">\n{ths}  </tr>\n{"".join(rows)}</table>\n</body>\n</html>\n'
    )
