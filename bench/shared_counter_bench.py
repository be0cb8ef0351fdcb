#!/usr/bin/env python3
"""Cost of one ``incr`` on the node-wide shared counters against the per-worker shared dict.

    .venv/bin/python bench/shared_counter_bench.py [--ops 200000] [--rounds 7]

Each figure is CPU time per call: the best of ``--rounds`` rounds of ``--ops`` calls, measured
with the process's CPU clock so that other load on the machine counts less. Each call builds a
fresh key string, as a rate-limit plugin does per request (``route:client``), so the key's
hash is computed every time. The cost of the same loop calling an empty function is subtracted.

Measured:

* ``plugin_sdk.shared_counters(...).incr(key, -1, 100, 60)``, the limit-count call, through
  the SDK handle. The kernel's table uses robust process-shared mutexes.
* the same call on the kernel's table directly, which is the SDK handle's own overhead, and
  ``incr_ttl`` (the same with the seconds left, limit-count's remaining and reset).
* the same table with ``multiprocessing`` semaphore locks (the fallback without glibc).
* ``plugin_sdk.shared_dict(...).incr``, per worker, for comparison.
* ``--procs`` processes incrementing one key together, which shows the contended cost. This
  figure is their whole CPU time (with start-up) divided by their increments.

The last line is the node-wide figure and the per-worker one.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kernel.plugins.runtime  # noqa: F401  (installs the kernel runtime into the SDK)
from kernel.counters import CounterZone
from plugin_sdk.counters import shared_counters
from plugin_sdk.runtime import shared_dict

CLIENTS = [f"10.0.{i // 256}.{i % 256}" for i in range(1000)]


def per_call(fn: Callable[..., Any], ops: int, rounds: int) -> float:
    """Best CPU ns per ``fn(fresh key, -1, 100, 60)`` over ``rounds`` rounds."""
    clients = CLIENTS
    loops = max(1, ops // len(clients))
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time_ns()
        for _ in range(loops):
            for client in clients:
                fn("route:1:" + client, -1, 100, 60)
        best = min(best, (time.process_time_ns() - start) / (loops * len(clients)))
    return best


def noop(key: str, delta: int, init: int, ttl: float) -> int:
    return 0


def contended(procs: int, ops: int) -> float:
    """CPU ns per incr while ``procs`` processes increment the same key at once."""
    table = CounterZone("bench-contended", 1024 * 1024).table("bench")
    go_r, go_w = os.pipe()
    pids = []
    for _ in range(procs):
        pid = os.fork()
        if pid == 0:
            try:
                os.close(go_w)
                os.read(go_r, 1)
                incr = table.incr
                for _ in range(ops):
                    incr("hot", 1)
            finally:
                os._exit(0)
        pids.append(pid)
    os.close(go_r)
    os.close(go_w)
    cpu = 0.0
    for pid in pids:
        _, _, usage = os.wait4(pid, 0)
        cpu += usage.ru_utime + usage.ru_stime
    total = table.get("hot")
    if total != procs * ops:
        raise SystemExit(f"lost updates: {total} != {procs * ops}")
    return cpu * 1e9 / (procs * ops)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=200_000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--procs", type=int, default=2, help="processes in the contended run")
    args = parser.parse_args()

    node = shared_counters("bench.node")
    node.clear()  # resolves the handle: node.incr is the kernel's method from now on
    table = CounterZone("bench", 10 * 1024 * 1024).table("bench")
    semaphores = CounterZone("bench-sem", 10 * 1024 * 1024, robust=False).table("bench")
    worker = shared_dict("bench.worker")
    worker.clear()
    base = per_call(noop, args.ops, args.rounds)
    rows = [
        ("node-wide, SDK handle (robust mutex)", per_call(node.incr, args.ops, args.rounds)),
        ("node-wide, kernel table (robust mutex)", per_call(table.incr, args.ops, args.rounds)),
        ("node-wide, kernel table incr_ttl", per_call(table.incr_ttl, args.ops, args.rounds)),
        ("node-wide, kernel table (semaphores)", per_call(semaphores.incr, args.ops,
                                                          args.rounds)),
        ("per-worker shared_dict, SDK handle", per_call(worker.incr, args.ops, args.rounds)),
    ]
    print(f"loop + key + empty call: {base:.0f} ns (subtracted below)")
    for label, ns in rows:
        print(f"{label:42s} {ns - base:7.0f} ns/incr")
    if args.procs > 1:
        ns = contended(args.procs, max(1, args.ops // 4))
        print(f"{f'{args.procs} processes, one key (robust mutex)':42s} {ns:7.0f} ns/incr (CPU)")
    print(f"node-wide incr: {rows[0][1] - base:.0f} ns/op "
          f"(per-worker shared_dict: {rows[4][1] - base:.0f} ns/op)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
