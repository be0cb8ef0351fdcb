"""prometheus (APISIX priority 500, log; ``run_policy = "prefer_route"``): per-request metrics in
APISIX's names, types, labels and buckets, exported by the node's export server.

Per request (routes, services and global rules that enable the plugin):

* ``http_status`` (counter): ``code, route, matched_uri, matched_host, service, consumer, node,
  request_type, request_llm_model, llm_model, response_source`` (``upstream`` when an upstream
  response was relayed, i.e. ``$upstream_response_time`` is set; ``apisix`` when the gateway or
  a plugin answered);
* ``http_latency`` (histogram, milliseconds, buckets ``plugin_attr.prometheus.default_buckets``
  or 1 2 5 10 20 50 100 200 500 1000 2000 5000 10000 30000 60000): ``type`` ``request`` (from
  the request's start until the log phase, as APISIX's ``ngx.now() - start_time``),
  ``upstream`` (``$upstream_response_time``, when an upstream answered) and ``apisix`` (the
  difference), with ``route, service, consumer, node, request_type, request_llm_model,
  llm_model``;
* ``bandwidth`` (counter, bytes): ``type`` ``ingress`` (``$request_length``) and ``egress``
  (``$bytes_sent``), same labels.

``route``/``service`` are ids (names with ``prefer_name``), ``node`` the picked upstream
address, ``consumer`` the consumer's name, empty strings when absent. ``request_llm_model`` and
``llm_model`` are always empty (sixgate has no AI plugins). Extra labels per metric come from
``plugin_attr.prometheus.metrics.<metric>.extra_labels: [{name: "$var"}]``; labels named in the
plugin metadata's ``disabled_labels: {metric: [label, ...]}`` are exported empty.

The hook is synchronous (the route stays on the kernel's callback path) and does no I/O, takes
no lock and builds no label tuple per request: the storage of each series of a (route, consumer,
node) -- :mod:`plugin_sdk.metrics` children, plain lists in the worker's memory -- is looked up
once and cached, a request adds to it (a status cell per code, three histogram series, two
bandwidth cells). ~3.8 µs per request on the project's VM, most of it reading seven
variables. The kernel moves the values to the export server and sums the workers (see
:mod:`kernel.metrics` for the design and its measured cost, and :mod:`kernel.exporter` for the
kernel's own gauges: connections, requests, etcd, node info, shared dicts, upstream health).
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Mapping
from time import time
from typing import Any

from plugin_sdk import ConfCache, hookimpl
from plugin_sdk import metrics as m

name = "prometheus"
version = "0.2"
priority = 500
run_policy = "prefer_route"

schema: dict[str, Any] = {
    "type": "object",
    "properties": {"prefer_name": {"type": "boolean", "default": False}},
}

metadata_schema: dict[str, Any] = {
    "type": "object",
    "properties": {
        "disabled_labels": {
            "type": "object",
            "properties": {
                metric: {"type": "array", "items": {"type": "string"}, "uniqueItems": True}
                for metric in ("http_status", "http_latency", "bandwidth")
            },
            "additionalProperties": False,
        },
    },
}

STATUS_LABELS = ("code", "route", "matched_uri", "matched_host", "service", "consumer", "node",
                 "request_type", "request_llm_model", "llm_model", "response_source")
LATENCY_LABELS = ("type", "route", "service", "consumer", "node", "request_type",
                  "request_llm_model", "llm_model")
BANDWIDTH_LABELS = LATENCY_LABELS

_log = logging.getLogger("sixgate.plugin.prometheus")
_GROUPS_MAX = 10000
"""Cached label groups per worker before the cache starts afresh (bounded memory)."""


class _Metrics:
    """The families and what the hook needs about them (rebuilt by ``init``)."""

    __slots__ = ("bandwidth", "extra", "has_extra", "latency", "status")

    def __init__(self, attrs: Mapping[str, Any]) -> None:
        conf = attrs.get("metrics") if isinstance(attrs.get("metrics"), Mapping) else {}
        self.extra = {
            metric: _extra_labels(metric, (conf or {}).get(metric), base)
            for metric, base in (("http_status", STATUS_LABELS),
                                 ("http_latency", LATENCY_LABELS),
                                 ("bandwidth", BANDWIDTH_LABELS))
        }
        self.has_extra = any(self.extra.values())
        buckets = attrs.get("default_buckets") or m.DEFAULT_BUCKETS
        self.status = m.counter(
            "http_status", "HTTP status codes per service in APISIX",
            STATUS_LABELS + tuple(n for n, _ in self.extra["http_status"]))
        self.latency = m.histogram(
            "http_latency", "HTTP request latency in milliseconds per service in APISIX",
            LATENCY_LABELS + tuple(n for n, _ in self.extra["http_latency"]),
            buckets=sorted(float(b) for b in buckets))
        self.bandwidth = m.counter(
            "bandwidth", "Total bandwidth in bytes consumed per service in APISIX",
            BANDWIDTH_LABELS + tuple(n for n, _ in self.extra["bandwidth"]))


def _extra_labels(metric: str, conf: Any, base: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """``extra_labels: [{label: "$var"}, ...]`` -> ``((label, var), ...)``."""
    out: list[tuple[str, str]] = []
    entries = conf.get("extra_labels") if isinstance(conf, Mapping) else None
    for entry in entries or ():
        if not isinstance(entry, Mapping):
            continue
        for label, source in entry.items():
            label = str(label)
            if label in base or label in (n for n, _ in out):
                _log.error("prometheus: extra label %r of %s repeats a label; ignored", label,
                           metric)
                continue
            var = str(source)
            out.append((label, var[1:] if var.startswith("$") else var))
    return tuple(out)


_metrics: _Metrics | None = None
"""Set by ``init`` (the kernel calls it before any request); made with defaults on first use
otherwise (unit tests). Not made at import: a hot reload imports the module again, and
registering the default shape then would reset families that ``plugin_attr`` shaped."""
_CODES = {code: str(code) for code in range(100, 600)}


class _Group:
    """What one (route, consumer, node) needs per request: its label values and the storage
    of its latency and bandwidth series (``plugin_sdk.metrics`` children), made once."""

    __slots__ = ("apisix", "egress", "fixed", "ingress", "labels", "request", "route", "service",
                 "status", "upstream")

    def __init__(self, ctx: Any, route: Mapping[str, Any] | None, consumer: str, node: str,
                 prefer_name: bool) -> None:
        fams = _families()
        self.route = route
        self.service = ctx.service
        route_label = service_label = ""
        self.fixed: tuple[str, str] | None = None
        if route is not None:
            rid = str(route.get("id") or ctx.var["route_id"] or "")
            service_id = route.get("service_id")
            service_label = "" if service_id is None else str(service_id)
            route_label = rid
            if prefer_name:
                route_label = str(route.get("name") or rid)
                if service_label and self.service is not None:
                    service_label = str(self.service.get("name") or service_label)
            uri = route.get("uri")
            if isinstance(uri, str) and not route.get("uris") and not route.get("host") \
                    and not route.get("hosts"):
                self.fixed = (uri, "")  # the router's matched_uri / matched_host, known now
        request_type = str(ctx.var["request_type"] or "traditional_http")
        rest = (route_label, service_label, consumer, node, request_type, "", "")
        self.labels = rest
        self.request = fams.latency.child(("request", *rest))
        self.apisix = fams.latency.child(("apisix", *rest))
        self.upstream: list[float] | None = None  # made when an upstream first answers
        self.ingress = fams.bandwidth.child(("ingress", *rest))
        self.egress = fams.bandwidth.child(("egress", *rest))
        self.status: dict[Any, list[float]] = {}

    def upstream_series(self) -> list[float]:
        self.upstream = _families().latency.child(("upstream", *self.labels))
        return self.upstream

    def status_cell(self, code: Any, uri: str, host: str, upstream: bool) -> list[float]:
        route_label, service_label, consumer, node, request_type = self.labels[:5]
        cell = _families().status.child((
            _CODES.get(code) or str(code or ""), route_label, uri, host, service_label,
            consumer, node, request_type, "", "", "upstream" if upstream else "apisix"))
        self.status[(code, uri, host, upstream)] = cell
        return cell


_groups: dict[tuple[Any, ...], _Group] = {}


def _families() -> _Metrics:
    global _metrics
    if _metrics is None:
        _metrics = _Metrics({})
    return _metrics


def init(attrs: Mapping[str, Any]) -> None:
    """Register the families with ``plugin_attr.prometheus`` (extra labels, buckets). A reload
    that keeps their shape keeps their values."""
    global _metrics
    _metrics = _Metrics(attrs or {})
    _groups.clear()


def _disabled(metadata: Mapping[str, Any]) -> dict[str, frozenset[int]]:
    out: dict[str, frozenset[int]] = {}
    labels = metadata.get("disabled_labels") or {}
    for metric, base in (("http_status", STATUS_LABELS), ("http_latency", LATENCY_LABELS),
                         ("bandwidth", BANDWIDTH_LABELS)):
        names = set(labels.get(metric) or ())
        names.discard("type")  # the series kind, never a disabled label
        if names:
            out[metric] = frozenset(i for i, n in enumerate(base) if n in names)
    return out


_masks: ConfCache[dict[str, frozenset[int]]] = ConfCache(_disabled)


def _blank(labels: tuple[str, ...], positions: frozenset[int] | None) -> tuple[str, ...]:
    if not positions:
        return labels
    return tuple("" if i in positions else v for i, v in enumerate(labels))


def _ms(value: Any) -> float:
    """``$upstream_response_time`` (seconds, ``"0.002"`` or ``"0.001, 0.002"`` after retries)
    in milliseconds."""
    if isinstance(value, str) and "," in value:
        return sum(float(v) for v in value.replace(":", ",").split(",") if v.strip()) * 1000
    return float(value) * 1000


def _extras(var: Any, extra: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    values = []
    for _, source in extra:
        v = var[source]
        values.append("" if v is None else str(v))
    return tuple(values)


@hookimpl
def log(ctx: Any, conf: Mapping[str, Any]) -> None:
    var = ctx.var
    route = ctx.route
    consumer = ctx.consumer
    consumer_name = consumer.username if consumer is not None else ""
    node = var["balancer_ip"] or ""
    prefer = conf["prefer_name"]
    key = (id(route), consumer_name, node, prefer)
    group = _groups.get(key)
    if group is None or group.route is not route or (prefer and group.service is not ctx.service):
        if len(_groups) >= _GROUPS_MAX:
            _groups.clear()
        group = _groups[key] = _Group(ctx, route, consumer_name, node, prefer)
    code = var["status"]
    fixed = group.fixed
    if fixed is not None:
        uri, host = fixed
    else:
        uri, host = var["matched_uri"] or "", var["matched_host"] or ""
    latency = (time() - ctx.request.start_time) * 1000  # as APISIX: now - start, in ms
    upstream = var["upstream_response_time"]  # set once an upstream response was relayed
    upstream_answered = upstream is not None
    up: float | None = None
    apisix = latency
    if upstream is not None:
        up = _ms(upstream)
        apisix = latency - up if latency > up else 0.0
    fams = _metrics or _families()
    if ctx.plugin_metadata is not None or fams.has_extra:
        _log_labelled(ctx, var, group, (code, uri, host, upstream_answered), latency, up, apisix)
        return
    cell = group.status.get((code, uri, host, upstream_answered))
    if cell is None:
        cell = group.status_cell(code, uri, host, upstream_answered)
    cell[0] += 1
    bounds = fams.latency.bounds
    series = group.request
    series[bisect_left(bounds, latency)] += 1
    series[-1] += latency
    if up is not None:
        series = group.upstream or group.upstream_series()
        series[bisect_left(bounds, up)] += 1
        series[-1] += up
    series = group.apisix
    series[bisect_left(bounds, apisix)] += 1
    series[-1] += apisix
    group.ingress[0] += var["request_length"] or 0
    group.egress[0] += var["bytes_sent"] or 0


def _log_labelled(ctx: Any, var: Any, group: _Group, status: tuple[Any, str, str, bool],
                  latency: float, up: float | None, apisix: float) -> None:
    """The same with extra labels or disabled labels (label tuples built per request)."""
    fams = _families()
    metadata = ctx.plugin_metadata
    masks = _masks(metadata) if metadata is not None else {}
    extra = fams.extra
    code, uri, host, upstream_answered = status
    route_label, service_label, consumer, node, request_type = group.labels[:5]
    labels = (_CODES.get(code) or str(code or ""), route_label, uri, host, service_label,
              consumer, node, request_type, "", "",
              "upstream" if upstream_answered else "apisix")
    fams.status.inc(_blank(labels, masks.get("http_status"))
                    + _extras(var, extra["http_status"]))
    lat_extra = _extras(var, extra["http_latency"])
    lat_mask = masks.get("http_latency")
    observe = fams.latency.observe
    rest = group.labels
    observe(_blank(("request", *rest), lat_mask) + lat_extra, latency)
    if up is not None:
        observe(_blank(("upstream", *rest), lat_mask) + lat_extra, up)
    observe(_blank(("apisix", *rest), lat_mask) + lat_extra, apisix)
    bw_extra = _extras(var, extra["bandwidth"])
    bw_mask = masks.get("bandwidth")
    inc = fams.bandwidth.inc
    inc(_blank(("ingress", *rest), bw_mask) + bw_extra, var["request_length"] or 0)
    inc(_blank(("egress", *rest), bw_mask) + bw_extra, var["bytes_sent"] or 0)
