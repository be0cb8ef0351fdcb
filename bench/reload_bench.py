#!/usr/bin/env python3
"""Plugin hot reload under load: wrk runs against a route using a plugin while the plugin set is
reloaded 50 times (file edits of the plugin, picked up by the watcher, alternating with SIGHUP
reloads). Reports failed requests (must be 0) and the latency impact against a baseline run.

    python bench/reload_bench.py [--reloads 50] [--seconds 10] [--connections 20]

Needs wrk (PATH or /usr/bin/wrk). Runs `sixgate start` in a subprocess, one worker.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from ports import free_port, wait_port  # noqa: E402

from tests.support.upstream import Upstream  # noqa: E402

PLUGIN = '''
from plugin_sdk import hookimpl

name = "bench-tag"
version = "{version}"
priority = 20
schema = {{"type": "object", "properties": {{"tag": {{"type": "string", "default": "t"}}}}}}


@hookimpl
def rewrite(ctx, conf):
    ctx.upstream.set_header("X-Bench-Tag", conf["tag"] + "-{version}")


@hookimpl
def header_filter(ctx, conf):
    ctx.response.headers.set("X-Bench-Version", "{version}")
'''



def wrk(wrk_bin: str, port: int, seconds: int, connections: int) -> dict:
    out = subprocess.run(
        [wrk_bin, "-t2", f"-c{connections}", f"-d{seconds}s", "--latency",
         "-s", str(HERE / "wrk_report.lua"), f"http://127.0.0.1:{port}/hello"],
        capture_output=True, text=True, timeout=seconds + 60,
    )
    for line in out.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            return json.loads(line[len("BENCH_RESULT "):])
    raise RuntimeError("wrk gave no result:\n" + out.stdout + out.stderr)


def attempts(status_file: Path) -> tuple[int, bool, list[str]]:
    try:
        doc = json.loads(status_file.read_text())
    except (OSError, ValueError):
        return 0, False, []
    last = doc.get("last") or {}
    return int(doc.get("attempts", 0)), bool(last.get("ok")), list(last.get("errors") or [])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reloads", type=int, default=50)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=20)
    args = parser.parse_args()
    wrk_bin = shutil.which("wrk") or "/usr/bin/wrk"
    if not os.path.exists(wrk_bin):
        print("wrk not found", file=sys.stderr)
        return 2
    upstream = Upstream().start()
    tmp = Path(tempfile.mkdtemp(prefix="sixgate-reload-bench-"))
    conf, plugins = tmp / "conf", tmp / "plugins"
    conf.mkdir()
    plugins.mkdir()
    port = free_port()
    (plugins / "bench_tag.py").write_text(PLUGIN.format(version=0))
    (conf / "config.yaml").write_text(yaml.safe_dump({
        "apisix": {"node_listen": [port], "enable_ipv6": False, "plugin_dirs": [str(plugins)]},
        "deployment": {"role": "data_plane", "role_data_plane": {"config_provider": "yaml"}},
        "nginx_config": {"error_log_level": "warn", "http": {"enable_access_log": False}},
        "plugins": ["bench-tag", "proxy-rewrite"],
    }))
    (conf / "apisix.yaml").write_text(yaml.safe_dump({"routes": [{
        "id": 1, "uri": "/hello", "plugins": {"bench-tag": {"tag": "b"}},
        "upstream": {"type": "roundrobin", "nodes": {f"127.0.0.1:{upstream.port}": 1}},
    }]}) + "#END\n")
    status_file = conf / "logs" / "plugins-status.0.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kernel.cli", "start", "-c", str(conf / "config.yaml")],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(tmp / "stderr.log", "wb"),  # noqa: SIM115
    )
    try:
        wait_port(port)
        time.sleep(0.5)
        baseline = wrk(wrk_bin, port, args.seconds, args.connections)

        result: dict = {}
        runner = threading.Thread(
            target=lambda: result.update(wrk(wrk_bin, port, args.seconds, args.connections))
        )
        runner.start()
        time.sleep(0.3)
        gap = max((args.seconds - 1.0) / args.reloads, 0.05)
        refused, slowest = 0, 0.0
        for i in range(1, args.reloads + 1):
            before = attempts(status_file)[0]
            started = time.monotonic()
            if i % 2:
                (plugins / "bench_tag.py").write_text(PLUGIN.format(version=i))  # watcher
            else:
                proc.send_signal(signal.SIGHUP)  # the `sixgate reload` path
            while attempts(status_file)[0] <= before:
                if time.monotonic() - started > 10:
                    raise TimeoutError(f"reload {i} did not happen")
                time.sleep(0.005)
            slowest = max(slowest, time.monotonic() - started)
            refused += 0 if attempts(status_file)[1] else 1
            time.sleep(max(gap - (time.monotonic() - started), 0))
        runner.join()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        upstream.stop()
    with_reloads = result

    def failed(r: dict) -> int:
        return int(sum(r["errors"].values()))

    print(f"reloads: {args.reloads} ({args.reloads - refused} accepted, {refused} refused), "
          f"slowest trigger-to-live {slowest * 1000:.0f} ms")
    for label, r in (("baseline", baseline), ("during reloads", with_reloads)):
        rate = r["requests"] / r["duration_us"] * 1e6
        print(f"{label:>15}: {r['requests']:.0f} requests, {failed(r)} failed "
              f"({r['errors']}), p50 {r['p50_us'] / 1000:.2f} ms, p99 {r['p99_us'] / 1000:.2f} ms,"
              f" max {r['max_us'] / 1000:.2f} ms, {rate:.0f} req/s")
    print(f"latency impact: p50 {(with_reloads['p50_us'] - baseline['p50_us']) / 1000:+.2f} ms, "
          f"p99 {(with_reloads['p99_us'] - baseline['p99_us']) / 1000:+.2f} ms")
    print(f"failed requests during reloads: {failed(with_reloads)}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if failed(with_reloads) == 0 and refused == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
