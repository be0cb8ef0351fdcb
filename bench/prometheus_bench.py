#!/usr/bin/env python3
"""Per-request cost of the ``prometheus`` log hook, and of the storage designs it could use.

    .venv/bin/python bench/prometheus_bench.py [--ops 20000] [--rounds 7]

Each figure is CPU time per call (the process CPU clock), the best of ``--rounds`` rounds of
``--ops`` calls, each on a context of its own as the kernel hands it to the log phase of a
proxied request (route matched, node picked, upstream answered 200, ``ctx.var`` not yet made).

* ``hook``: ``builtin_plugins.prometheus.log`` as shipped: :mod:`plugin_sdk.metrics` families
  (plain dicts in the worker's memory), label tuples cached per (route, service, consumer,
  node).
* ``hook reads only``: the same variable reads and label work without the updates (what any
  design pays).
* ``shared_counters``: the same updates as node-wide shared-memory counters
  (:func:`plugin_sdk.shared_counters`; 12 ``incr`` per request: 3 histograms x bucket + sum +
  count, 2 bandwidth, 1 status), keys prebuilt per label group.
* ``prometheus_client``: ``prometheus_client`` in multiprocess mode (one mmap'd file per
  process), children cached per label group; only when the package is importable (it is not a
  sixgate dependency: ``PYTHONPATH=<dir with prometheus_client>``).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from bisect import bisect_left
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kernel.plugins.runtime  # noqa: F401  (installs the kernel runtime into the SDK)
from builtin_plugins import prometheus
from kernel.chain import Step
from kernel.router import Match, RouteSpec
from kernel.upstream.nodes import Node
from plugin_sdk import ConfCache
from plugin_sdk.counters import shared_counters
from plugin_sdk.testing import make_context

ROUTE = {"id": "1", "uri": "/hello", "upstream": {"nodes": {"127.0.0.1:1980": 1}}}
CONF = {"prefer_name": False}


def contexts(n: int) -> list[Any]:
    node = Node("127.0.0.1", 1980, 1)
    match = Match(RouteSpec("1", ("/hello",)), None, "/hello", "")
    step = Step("prometheus", prometheus.log, CONF, False)
    out = []
    for _ in range(n):
        ctx = make_context("GET", "/hello", route=ROUTE)
        ctx.route_id = "1"
        ctx.match = match
        ctx.node = node
        ctx.status = 200
        ctx.upstream_statuses = ["200"]
        ctx.upstream_addrs = ["127.0.0.1:1980"]
        ctx.upstream_response_time = 0.0021
        ctx.bytes_sent = 153
        ctx.request.bytes_received = 78
        ctx.end_time = ctx.request.start_mono + 0.0034
        ctx.step = step
        ctx.__dict__.pop("_var", None)
        out.append(ctx)
    return out


def reads_only(ctx: Any, conf: Any) -> None:
    """What the shipped hook reads and computes, without the updates."""
    var = ctx.var
    route = ctx.route
    consumer = ctx.consumer
    consumer_name = consumer.username if consumer is not None else ""
    node = var["balancer_ip"] or ""
    key = (id(route), consumer_name, node, conf["prefer_name"])
    group = prometheus._groups.get(key)
    code = var["status"]
    latency = (time.time() - ctx.request.start_time) * 1000
    up = float(var["upstream_response_time"]) * 1000
    _ = (group, code, latency - up, ctx.plugin_metadata, var["request_length"],
         var["bytes_sent"])


def _route_info(route: Any) -> tuple[str, str]:
    return str(route.get("id") or ""), str(route.get("service_id") or "")


_routes = ConfCache(_route_info)


BOUNDS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 60000)


def make_shared_counters_hook() -> Callable[[Any, Any], None]:
    table = shared_counters("prometheus-bench")
    groups: dict[tuple[str, ...], tuple[str, ...]] = {}

    def hook(ctx: Any, conf: Any) -> None:
        var = ctx.var
        r = _routes(ctx.route)
        consumer = ctx.consumer
        key = (r[0], r[1], consumer.username if consumer else "", var["balancer_ip"] or "")
        g = groups.get(key)
        if g is None:
            base = "|".join(key)
            g = groups[key] = tuple(f"{t}|{base}" for t in ("request", "upstream", "apisix",
                                                             "ingress", "egress"))
        status = f"{var['status']}|{var['matched_uri']}|{var['matched_host']}|{g[0]}"
        latency = (time.time() - ctx.request.start_time) * 1000
        up = float(var["upstream_response_time"]) * 1000
        incr = table.incr
        incr("s|" + status)
        for prefix, value in ((g[0], latency), (g[1], up), (g[2], latency - up)):
            incr(f"h|{prefix}|{bisect_left(BOUNDS, value)}")
            incr(f"h|{prefix}|sum", value)
            incr(f"h|{prefix}|count")
        incr("b|" + g[3], var["request_length"])
        incr("b|" + g[4], var["bytes_sent"])

    return hook


def make_prometheus_client_hook() -> Callable[[Any, Any], None] | None:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="prom-bench-")
    try:
        import prometheus_client as pc
    except ImportError:
        return None
    reg = pc.CollectorRegistry()
    status = pc.Counter("http_status", "s", prometheus.STATUS_LABELS, registry=reg)
    latency = pc.Histogram("http_latency", "l", prometheus.LATENCY_LABELS, registry=reg,
                           buckets=BOUNDS)
    bandwidth = pc.Counter("bandwidth", "b", prometheus.BANDWIDTH_LABELS, registry=reg)
    groups: dict[tuple[str, ...], tuple[Any, ...]] = {}
    statuses: dict[tuple[str, ...], Any] = {}

    def hook(ctx: Any, conf: Any) -> None:
        var = ctx.var
        r = _routes(ctx.route)
        consumer = ctx.consumer
        cname = consumer.username if consumer else ""
        node = var["balancer_ip"] or ""
        key = (r[0], r[1], cname, node, "traditional_http")
        g = groups.get(key)
        if g is None:
            rest = (*key, "", "")
            g = groups[key] = (
                latency.labels("request", *rest), latency.labels("upstream", *rest),
                latency.labels("apisix", *rest), bandwidth.labels("ingress", *rest),
                bandwidth.labels("egress", *rest))
        upstream = var["upstream_response_time"]
        skey = (str(var["status"]), r[0], var["matched_uri"] or "", var["matched_host"] or "",
                r[1], cname, node, "traditional_http", "", "",
                "upstream" if upstream is not None else "apisix")
        child = statuses.get(skey)
        if child is None:
            child = statuses[skey] = status.labels(*skey)
        child.inc()
        lat = (time.time() - ctx.request.start_time) * 1000
        up = float(upstream) * 1000
        g[0].observe(lat)
        g[1].observe(up)
        g[2].observe(lat - up)
        g[3].inc(var["request_length"])
        g[4].inc(var["bytes_sent"])

    return hook


def measure(hook: Callable[[Any, Any], None], ops: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        ctxs = contexts(ops)
        gc.collect()
        gc.freeze()  # as a worker does after start-up: the contexts are not the GC's work here
        start = time.process_time_ns()
        for ctx in ctxs:
            hook(ctx, CONF)
        best = min(best, (time.process_time_ns() - start) / ops)
        gc.unfreeze()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    gc.set_threshold(7000, 20, 20)  # the worker's setting (kernel/cli.py)
    results = {
        "hook (plugin_sdk.metrics, as shipped)": measure(prometheus.log, args.ops, args.rounds),
        "hook reads only (no updates)": measure(reads_only, args.ops, args.rounds),
        "shared_counters (12 incr)": measure(make_shared_counters_hook(), args.ops,
                                             args.rounds),
    }
    pc_hook = make_prometheus_client_hook()
    if pc_hook is not None:
        results["prometheus_client multiprocess"] = measure(pc_hook, args.ops, args.rounds)
    for label, ns in results.items():
        print(f"{label:42s} {ns / 1000:6.2f} µs per request")


if __name__ == "__main__":
    main()
