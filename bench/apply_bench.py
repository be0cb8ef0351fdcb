#!/usr/bin/env python3
"""In-process config apply timing: one-route changes on a large route table.

    .venv/bin/python bench/apply_bench.py                     # 10,000 routes, 200 changes
    PYTHONPATH=/tmp/other-tree .venv/bin/python bench/apply_bench.py --json

Builds the table of ``bench/routes_gen.py`` (mixed exact / prefix / host / vars routes) once,
then changes one route at a time (its uri) and times what the gateway does with each new
snapshot: validation (``SnapshotValidator``) plus the state build (``build_state`` with the
live state's cache), i.e. everything between a store handing a snapshot over and the new
state being ready to swap in. Two ways a store hands a change over are timed:

* ``identity``: unchanged items are the same objects as before (the embedded yaml store);
* ``delta``: the snapshot also names what changed (``SnapshotDelta``, the etcd store).

File I/O, parsing and the wait for a watch event are not included (``proxy_bench.py
--scenario routes10k`` measures a real file change end to end, and
``propagation_bench.py`` an Admin API write seen by another instance).

Needs the kernel importable (run it with the repo's venv; ``PYTHONPATH`` picks the tree).
The last line is the result; ``--json`` adds one ``APPLY_RESULT {...}`` line before it.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import routes_gen

UPSTREAM = "127.0.0.1:9"


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(len(s) * q))]


def run(n: int, changes: int) -> dict:
    from kernel.plugins.loader import load_registry
    from kernel.state import SnapshotValidator, build_state
    from kernel.store.base import Snapshot, freeze_collections

    try:
        from kernel.store.base import SnapshotDelta
    except ImportError:  # an older tree: no delta hand-over
        SnapshotDelta = None

    registry, errors = load_registry(["fault-injection"], [], {})
    upstreams = [{"id": f"u{u}", "type": "roundrobin", "nodes": {UPSTREAM: 1}}
                 for u in range(routes_gen.UPSTREAMS)]
    routes = [routes_gen.route(i, UPSTREAM) for i in range(n)]
    validator = SnapshotValidator()
    snap = Snapshot("v0", freeze_collections({"routes": routes, "upstreams": upstreams}))
    t0 = time.perf_counter()
    problems = validator(snap, registry)
    t1 = time.perf_counter()
    state = build_state(snap, registry)
    t2 = time.perf_counter()
    if problems:
        raise SystemExit(f"the generated table does not validate: {problems[:3]}")
    gc.collect()
    gc.freeze()  # as the gateway does once its first config is loaded
    out: dict = {"routes": n, "changes": changes, "plugin_errors": errors,
                 "initial_validate_ms": (t1 - t0) * 1000, "initial_build_ms": (t2 - t1) * 1000}
    version = 0
    for mode in ("identity", "delta"):
        if mode == "delta" and SnapshotDelta is None:
            out[mode] = None
            continue
        samples, build_only = [], []
        items = snap.collections["routes"]
        for k in range(changes):
            j = (k * 7919 + n // 3) % n
            new = dict(items[j])
            new["uri"] = f"/changed/{mode}/{k}" + ("/*" if new["uri"].endswith("/*") else "")
            items = (*items[:j], new, *items[j + 1:])
            version += 1
            collections = dict(snap.collections)
            collections["routes"] = items
            delta = (SnapshotDelta(snap.version, {"routes": {new["id"]: new}})
                     if mode == "delta" else None)
            kwargs = {"delta": delta} if delta is not None else {}
            nxt = Snapshot(f"v{version}", freeze_collections(collections), None, **kwargs)
            started = time.perf_counter()
            problems = validator(nxt, registry)
            mid = time.perf_counter()
            nstate = build_state(nxt, registry, generation=state.generation + 1,
                                 previous=state.cache)
            done = time.perf_counter()
            if problems:
                raise SystemExit(f"change {k} does not validate: {problems[:3]}")
            samples.append((done - started) * 1000)
            build_only.append((done - mid) * 1000)
            snap, state = nxt, nstate
        probe = new["uri"].replace("/*", "/x")
        host = new.get("hosts", [None])[0]
        matched = state.router.match(probe, "GET", host, None, "127.0.0.1",
                                     {"http_x_tenant": new.get("vars", [["", "", ""]])[0][2]})
        out[mode] = {"p50_ms": statistics.median(samples), "p99_ms": pct(samples, 0.99),
                     "max_ms": max(samples), "build_p50_ms": statistics.median(build_only),
                     "last_change_served": matched is not None}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--routes", type=int, default=10000)
    p.add_argument("--changes", type=int, default=200)
    p.add_argument("--json", action="store_true", help="also print APPLY_RESULT {json}")
    args = p.parse_args()
    try:
        res = run(args.routes, args.changes)
    except (ImportError, AttributeError, TypeError) as e:  # a tree without these APIs
        print(f"APPLY_RESULT {json.dumps({'error': repr(e)})}" if args.json else "")
        print(f"in-process apply: n/a ({e!r})")
        return 2
    print(f"{res['routes']:,} routes: first validate {res['initial_validate_ms']:.0f} ms, "
          f"first build {res['initial_build_ms']:.0f} ms")
    for mode in ("identity", "delta"):
        r = res[mode]
        if r is None:
            print(f"  {mode:8}: n/a (this tree has no SnapshotDelta)")
            continue
        print(f"  {mode:8}: one-route change p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
              f"max {r['max_ms']:.2f} ms (build alone p50 {r['build_p50_ms']:.2f} ms)"
              f"{'' if r['last_change_served'] else '  LAST CHANGE NOT MATCHED'}")
    if args.json:
        print("APPLY_RESULT " + json.dumps(res))
    worst = max(res[m]["p99_ms"] for m in ("identity", "delta") if res[m])
    print(f"one-route apply at {res['routes']:,} routes: p99 {worst:.2f} ms (target <= 10 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
