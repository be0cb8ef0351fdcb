#!/usr/bin/env python3
"""Config propagation benchmark: an Admin API write on one instance, seen by a second one.

    python bench/propagation_bench.py    # etcd and embedded yaml, 10 and 10,000 routes
    python bench/propagation_bench.py --store etcd --routes 10 --writes 1000

Instance A runs ``role: traditional`` (Admin API); instance B runs ``role: data_plane`` on the
same store (the same etcd, or A's ``apisix.yaml``). Each write PUTs route ``probe`` with a new
body through A's Admin API, then polls B until it answers with that body; the time from sending
the PUT to B's first matching answer is one sample. ``--routes`` other routes are loaded first,
to show whether propagation stays flat as the table grows. The last line summarises the p99s.

Standard library only; needs the repo's venv (``.venv``) for sixgate and Debian's ``etcd``
(``apt-get install -y etcd-server``) for the etcd store.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from ports import free_port, wait_port

REPO = Path(__file__).resolve().parent.parent
ADMIN_KEY = "benchbenchbenchbenchbenchbenchbe"




def python() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


class Etcd:
    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("etcd") or "/usr/bin/etcd"
        if not Path(binary).exists():
            raise SystemExit("etcd not found: apt-get install -y etcd-server")
        self.port, peer = free_port(), free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [binary, "--data-dir", str(workdir / "etcd"), "--name", "bench",
             "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
             "--listen-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-cluster", f"bench=http://127.0.0.1:{peer}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_port(self.port)

    def txn_put(self, items: list[tuple[str, str]]) -> None:
        ops = [{"requestPut": {"key": base64.b64encode(k.encode()).decode(),
                               "value": base64.b64encode(v.encode()).decode()}} for k, v in items]
        req = urllib.request.Request(f"{self.endpoint}/v3/kv/txn",
                                     data=json.dumps({"success": ops}).encode(), method="POST")
        urllib.request.urlopen(req, timeout=30).read()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class Instance:
    def __init__(self, workdir: Path, name: str, config: dict, apisix_yaml: str | None) -> None:
        self.dir = workdir / name
        (self.dir / "conf").mkdir(parents=True)
        self.port = free_port()
        config.setdefault("apisix", {})["node_listen"] = [self.port]
        config["apisix"]["enable_ipv6"] = False
        config.setdefault("nginx_config", {})["error_log_level"] = "warn"
        config["nginx_config"]["http"] = {"enable_access_log": False}
        self.config_path = self.dir / "conf" / "config.yaml"
        self.config_path.write_text(json.dumps(config))  # JSON is YAML
        if apisix_yaml is not None:
            (self.dir / "conf" / "apisix.yaml").write_text(apisix_yaml)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [python(), "-m", "kernel.cli", "start", "-c", str(self.config_path)],
            cwd=REPO, stdout=subprocess.DEVNULL,
            stderr=open(self.dir / "stderr.log", "wb"),  # noqa: SIM115  (lives with the process)
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def route_doc(i: int) -> dict:
    return {"uri": f"/r/{i}/*" if i % 2 else f"/r/{i}", "upstream": {
        "type": "roundrobin", "nodes": {"127.0.0.1:9": 1}}}


def yaml_routes(n: int) -> str:
    lines = ["routes:"]
    for i in range(n):
        doc = route_doc(i)
        lines.append(f"  - id: \"{i}\"\n    uri: \"{doc['uri']}\"\n    upstream:\n"
                     "      type: roundrobin\n      nodes:\n        \"127.0.0.1:9\": 1")
    return "\n".join(lines) + "\n#END\n"


def run_case(store: str, routes: int, writes: int, workdir: Path) -> dict:
    etcd = Etcd(workdir) if store == "etcd" else None
    admin_port = free_port()
    base = {"deployment": {"admin": {"admin_key": [{"name": "admin", "key": ADMIN_KEY,
                                                     "role": "admin"}],
                                     "admin_listen": {"ip": "127.0.0.1", "port": admin_port}}},
            "plugins": ["fault-injection", "proxy-rewrite"]}
    a_cfg = json.loads(json.dumps(base))
    b_cfg = json.loads(json.dumps(base))
    if etcd is not None:
        for cfg in (a_cfg, b_cfg):
            cfg["deployment"]["etcd"] = {"host": [etcd.endpoint], "prefix": "/apisix"}
        a_cfg["deployment"].update(role="traditional", role_traditional={"config_provider": "etcd"})
        b_cfg["deployment"].update(role="data_plane", role_data_plane={"config_provider": "etcd"})
        batch = [(f"/apisix/routes/{i}", json.dumps({**route_doc(i), "id": str(i)}))
                 for i in range(routes)]
        for start in range(0, len(batch), 100):
            etcd.txn_put(batch[start : start + 100])
        a = Instance(workdir, "a", a_cfg, None)
        b = Instance(workdir, "b", b_cfg, None)
    else:
        a_cfg["deployment"].update(role="traditional", role_traditional={"config_provider": "yaml"})
        a = Instance(workdir, "a", a_cfg, yaml_routes(routes))
        b_cfg["deployment"].update(role="data_plane", role_data_plane={"config_provider": "yaml"})
        b_cfg.setdefault("apisix", {})["standalone_file"] = str(a.dir / "conf" / "apisix.yaml")
        b = Instance(workdir, "b", b_cfg, None)
    samples: list[float] = []
    put_samples: list[float] = []
    try:
        a.start()
        b.start()
        wait_port(admin_port)
        wait_port(b.port)
        admin = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=30)
        probe = http.client.HTTPConnection("127.0.0.1", b.port, timeout=30)

        def b_body() -> bytes:
            probe.request("GET", "/probe")
            return probe.getresponse().read()

        for i in range(writes):
            token = f"v{i}".encode()
            body = json.dumps({"uri": "/probe", "plugins": {"fault-injection": {
                "abort": {"http_status": 200, "body": token.decode()}}}})
            started = time.perf_counter()
            admin.request("PUT", "/apisix/admin/routes/probe", body=body,
                          headers={"X-API-KEY": ADMIN_KEY, "Content-Type": "application/json"})
            resp = admin.getresponse()
            resp.read()
            put_samples.append((time.perf_counter() - started) * 1000)
            if resp.status not in (200, 201):
                raise RuntimeError(f"admin PUT answered {resp.status}")
            deadline = started + 30
            while b_body() != token:
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"write {i} not visible on B after 30 s")
            samples.append((time.perf_counter() - started) * 1000)
    finally:
        a.stop()
        b.stop()
        if etcd is not None:
            etcd.stop()
    samples.sort()
    return {
        "put_p50_ms": statistics.median(put_samples),
        "store": store, "routes": routes, "writes": len(samples),
        "p50_ms": statistics.median(samples),
        "p99_ms": samples[min(len(samples) - 1, int(len(samples) * 0.99))],
        "max_ms": samples[-1],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", choices=["etcd", "yaml", "both"], default="both")
    parser.add_argument("--routes", default="10,10000", help="comma-separated table sizes")
    parser.add_argument("--writes", type=int, default=1000)
    parser.add_argument("--yaml-large-writes", type=int, default=50,
                        help="writes for the yaml store at >= 1000 routes (each rewrites the file)")
    args = parser.parse_args()
    stores = ["etcd", "yaml"] if args.store == "both" else [args.store]
    results = []
    for store in stores:
        for n in (int(x) for x in args.routes.split(",")):
            writes = args.writes if store == "etcd" or n < 1000 else args.yaml_large_writes
            with tempfile.TemporaryDirectory(prefix="sixgate-prop-") as tmp:
                r = run_case(store, n, writes, Path(tmp))
            results.append(r)
            print(f"{store:5s} {n:6d} routes  {r['writes']:5d} writes  p50 {r['p50_ms']:7.1f} ms"
                  f"  p99 {r['p99_ms']:7.1f} ms  max {r['max_ms']:7.1f} ms"
                  f"  (admin PUT p50 {r['put_p50_ms']:.1f} ms)", flush=True)
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    (out / f"propagation-{stamp}.json").write_text(json.dumps(results, indent=2))
    print("propagation p99: " + ", ".join(
        f"{r['store']} {r['routes']} routes {r['p99_ms']:.1f} ms" for r in results))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    os._exit(130)
