#!/usr/bin/env python3
"""Reverse-proxy benchmark: sixgate against nginx, measured as in perf-baseline.md.

    python bench/proxy_bench.py            # saturation: wrk -t1 -c50, 3 interleaved rounds
    python bench/proxy_bench.py --paced    # latency at ~1k req/s vs going direct
    python bench/proxy_bench.py --only nginx --rounds 1

Standard library only, Linux only (/proc, sched_setaffinity). See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import http.client
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ports import free_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LUA = HERE / "wrk_report.lua"
TAG = "SIXGATE_BENCH_LEG"  # env marker: finds a leg's processes even if they daemonize
TMP_PREFIX = "sixgate-bench-"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36
LIBC = ctypes.CDLL(None, use_errno=True)
HELLO_BODY = b"hello\n"
WRONG_ANSWER_GRACE = 5.0  # s a gateway may answer 404 while its routes load

NGINX_CONF = """\
worker_processes {workers};
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections {conns}; }}
http {{
    {access_log}
    keepalive_requests 1000000;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
{server}
}}
"""
HELLO_SERVER = """\
    server {{
        listen 127.0.0.1:{port};
        location / {{ default_type text/plain; return 200 "hello\\n"; }}
    }}"""
PROXY_SERVER = """\
    upstream backend {{
        server 127.0.0.1:{upstream};
        keepalive 320;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""
# APISIX's default access-log format and buffering (spec 9.5), with nginx's own variables
APISIX_LOG_FORMAT = (
    '$remote_addr - $remote_user [$time_local] $http_host "$request" $status $body_bytes_sent '
    '$request_time "$http_referer" "$http_user_agent" $upstream_addr $upstream_status '
    '$upstream_response_time "$scheme://$proxy_host$uri" "$request_id"')
# Access log off: APISIX's switch is nginx_config.http.enable_access_log; sixgate also takes
# access_log: false. Both are written so either reading turns it off.
SIXGATE_CONFIG = """\
deployment:
  role: data_plane
  role_data_plane:
    config_provider: yaml
apisix:
  node_listen:
    - {port}
  enable_admin: false
  enable_control: false
  ssl:
    enable: false
nginx_config:
  error_log_level: warn
  worker_processes: {workers}
  http:
{access_log}
"""
SIXGATE_ROUTES = """\
routes:
  - id: 1
    uri: "/*"
    upstream:
      type: roundrobin
      nodes:
        "127.0.0.1:{upstream}": 1
#END
"""


class BenchError(Exception):
    """A leg could not be started or answered wrongly: abort loudly."""


# ---------------------------------------------------------------- /proc helpers

def proc_table() -> dict[int, tuple[int, str, int]]:
    """pid -> (ppid, state, utime+stime+cutime+cstime in ticks) for every process."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        f = stat[stat.rindex(")") + 2 :].split()
        table[int(name)] = (int(f[1]), f[0], sum(int(x) for x in f[11:15]))
    return table


def descendants(roots: set[int], table: dict) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out: set[int] = set()
    todo = [p for p in roots if p in table]
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.add(pid)
            todo.extend(children.get(pid, ()))
    return out


def has_tag(pid: int, value: str) -> bool:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{TAG}={value}".encode() in env.split(b"\0")


def leg_pids(tag: str, root: int, table: dict) -> set[int]:
    """The leg's process tree: its root plus anything tagged for it (we are a subreaper,
    so a daemonized gateway is re-parented to us and still found here)."""
    ours = descendants({os.getpid()}, table)
    return descendants({root} | {p for p in ours if has_tag(p, tag)}, table)


def sweep_stale() -> None:
    """Kill what an earlier run that was SIGKILLed left behind, and remove its temp dir.
    Its processes name that dir in an open file, their command line or their environment."""
    stale = []
    for d in Path(tempfile.gettempdir()).glob(TMP_PREFIX + "*-*"):
        pid = d.name[len(TMP_PREFIX):].split("-")[0]
        try:
            if b"proxy_bench" in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue  # that run is alive
        except OSError:
            pass
        stale.append(str(d).encode())
    if not stale:
        return
    victims = set()
    for pid in proc_table():
        try:
            refs = [os.readlink(f"/proc/{pid}/fd/{fd}").encode()
                    for fd in os.listdir(f"/proc/{pid}/fd")]
            refs += [Path(f"/proc/{pid}/{f}").read_bytes() for f in ("cmdline", "environ")]
        except OSError:
            continue
        if any(d in ref for ref in refs for d in stale):
            victims.add(pid)
    if victims:
        print(f"killing {len(victims)} processes left by an earlier killed run", file=sys.stderr)
        kill_all(victims)
    for d in stale:
        shutil.rmtree(d.decode(), ignore_errors=True)


def cpu_seconds(pids: set[int], table: dict) -> float:
    return sum(table[p][2] for p in pids if p in table) / CLK_TCK


def memory_kib(pids: set[int], key: str) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def core_times() -> dict[int, tuple[int, int]]:
    """core -> (busy, total) jiffies from /proc/stat."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3].isdigit():
            name, *vals = line.split()
            v = [int(x) for x in vals[:8]]
            out[int(name[3:])] = (sum(v) - v[3] - v[4], sum(v))
    return out


def busy_pct(before: dict, after: dict) -> dict[str, float]:
    res = {}
    for core, (busy, total) in after.items():
        b0, t0 = before.get(core, (0, 0))
        res[str(core)] = round(100.0 * (busy - b0) / max(1, total - t0), 1)
    return res


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def reap(pids) -> None:
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def kill_all(pids: set[int], grace: float = 5.0) -> None:
    """SIGTERM, wait up to `grace` s, then SIGKILL what is left; reap our own children."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            reap(pids)
            if not any(alive(p) for p in pids):
                return
            time.sleep(0.05)


# ---------------------------------------------------------------- small helpers


def parse_cores(text: str) -> set[int]:
    cores: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cores.update(range(int(lo), int(hi or lo) + 1))
    return cores


def find_tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in ("/usr/sbin", "/usr/bin", "/sbin", "/usr/local/sbin", "/usr/local/bin"):
        if os.access(f"{d}/{name}", os.X_OK):
            return f"{d}/{name}"
    return None


def ensure_tools() -> dict[str, str]:
    packages = {"wrk": "wrk", "nginx": "nginx-light"}
    missing = [t for t in packages if not find_tool(t)]
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"installing {', '.join(packages[t] for t in missing)} with apt-get ...", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update"], env=env, check=False)
        subprocess.run(["apt-get", "install", "-y", *(packages[t] for t in missing)],
                       env=env, check=False)
        missing = [t for t in packages if not find_tool(t)]
    if missing:
        print(f"proxy_bench needs {' and '.join(missing)} (not installed).\n"
              f"On Debian/Ubuntu run as root:  apt-get install -y "
              f"{' '.join(packages[t] for t in missing)}\n"
              "(any wrk 4.x and any nginx >= 1.15.3 with the upstream keepalive module will do;"
              " run this script as root to have it install them)", file=sys.stderr)
        sys.exit(2)
    return {t: find_tool(t) or t for t in packages}


def sixgate_command(args, config: Path) -> list[str]:
    if args.sixgate_cmd:
        return shlex.split(args.sixgate_cmd.format(config=config))
    for exe in (REPO / ".venv/bin/sixgate", shutil.which("sixgate")):
        if exe and Path(exe).exists():
            return [str(exe), "start", "-c", str(config)]
    if not (REPO / "kernel/cli.py").exists():
        raise BenchError("no sixgate to start: neither a `sixgate` script nor kernel/cli.py "
                         "exists (benchmark nginx alone with --only nginx)")
    venv_python = REPO / ".venv/bin/python"
    python = str(venv_python) if venv_python.exists() else sys.executable
    return [python, "-m", "kernel.cli", "start", "-c", str(config)]


def fmt_us(us: float | None) -> str:
    if us is None:
        return "-"
    return f"{us:.0f} µs" if us < 1000 else f"{us / 1000:.2f} ms"


def fmt_delta(us: float) -> str:
    return ("+" if us >= 0 else "-") + fmt_us(abs(us))


def tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text) or "    (empty)"


# ---------------------------------------------------------------- the benchmark

class Bench:
    def __init__(self, args, tools: dict[str, str], tmp: Path):
        self.args, self.tools, self.tmp = args, tools, tmp
        self.proxy_cores = parse_cores(args.proxy_cores)
        self.load_cores = parse_cores(args.load_cores)
        self.upstream_cores = parse_cores(args.upstream_cores)
        self.upstream_port = 0
        self.upstream: subprocess.Popen | None = None
        self.wrk_runs = 0

    def spawn(self, name: str, cmd: list[str], cores: set[int], cwd: Path | None = None,
              env: dict | None = None) -> subprocess.Popen:
        def pre_exec() -> None:
            os.sched_setaffinity(0, cores)  # same as `taskset -c <cores>`
            LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # dies with us, even on SIGKILL

        if self.args.verbose:
            print(f"  $ taskset -c {','.join(map(str, sorted(cores)))} {shlex.join(cmd)}")
        with open(self.tmp / f"{name}.log", "ab") as log:
            return subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=cwd, env={**os.environ, **(env or {}), TAG: str(self.tmp / name)},
                preexec_fn=pre_exec, start_new_session=True)

    def start_nginx(self, name: str, server: str, port: int, cores: set[int], workers: int,
                    access_log: bool = False) -> subprocess.Popen:
        d = self.tmp / name
        d.mkdir()
        log = (f"log_format apisix '{APISIX_LOG_FORMAT}';\n"
               f"    access_log {d}/access.log apisix buffer=16384 flush=3;"
               if access_log else "access_log off;")
        conf = NGINX_CONF.format(
            workers=workers, dir=d, conns=max(1024, 4 * self.args.connections),
            access_log=log, server=server.format(port=port, upstream=self.upstream_port))
        (d / "nginx.conf").write_text(conf)
        return self.spawn(name, [self.tools["nginx"], "-p", str(d), "-c", str(d / "nginx.conf")],
                          cores)

    def start_sixgate(self, name: str, port: int) -> subprocess.Popen:
        d = self.tmp / name
        (d / "conf").mkdir(parents=True)
        (d / "logs").mkdir()
        access = (f"    enable_access_log: true\n    access_log: {d}/logs/access.log"
                  if self.args.access_log
                  else "    enable_access_log: false\n    access_log: false")
        config = d / "conf/config.yaml"
        config.write_text(SIXGATE_CONFIG.format(port=port, workers=self.args.workers,
                                                access_log=access))
        (d / "conf/apisix.yaml").write_text(SIXGATE_ROUTES.format(upstream=self.upstream_port))
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                           os.environ.get("PYTHONPATH")]))}
        return self.spawn(name, sixgate_command(self.args, config), self.proxy_cores, cwd=d,
                          env=env)

    def fail(self, name: str, message: str) -> BenchError:
        logs = [self.tmp / f"{name}.log"]
        if (self.tmp / name).is_dir():
            logs += [p for p in sorted((self.tmp / name).rglob("*.log")) if "access" not in p.name]
        shown = "\n".join(f"  --- {p.relative_to(self.tmp)} ---\n{tail(p)}" for p in logs)
        return BenchError(f"{name}: {message}\n{shown}")

    def wait_ready(self, name: str, proc: subprocess.Popen, port: int) -> None:
        """Wait for the port, then demand 200 + `hello\\n` on a fresh connection."""
        deadline = time.monotonic() + self.args.start_timeout
        last = "port never opened"
        while time.monotonic() < deadline:
            code = proc.poll()
            if code:  # exit 0 is fine: `start` may daemonize
                raise self.fail(name, f"exited with status {code} before answering")
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                conn.request("GET", self.args.path)
                resp = conn.getresponse()
                body = resp.read()
                if resp.status == 200 and body == HELLO_BODY:
                    return
                last = f"GET {self.args.path} gave {resp.status} {body[:200]!r}"
                # it answers, but wrongly: allow a few seconds for the routes to load
                deadline = min(deadline, time.monotonic() + WRONG_ANSWER_GRACE)
            except OSError as e:
                last = f"GET {self.args.path}: {e}"
            finally:
                conn.close()
            time.sleep(0.1)
        raise self.fail(name, f"correctness check failed on port {port}: {last} "
                              f"(want 200 and body {HELLO_BODY!r})")

    def wrk(self, port: int, seconds: int, measured: bool) -> dict | None:
        a = self.args
        self.wrk_runs += 1
        name = f"wrk-{self.wrk_runs}"
        cmd = [self.tools["wrk"], f"-t{a.threads}", f"-c{a.connections}", f"-d{seconds}s",
               "--latency", "-s", str(LUA), f"http://127.0.0.1:{port}{a.path}"]
        env = {}
        if a.paced:
            lo, _, hi = a.think_ms.partition("-")
            env = {"BENCH_THINK_MIN_MS": lo, "BENCH_THINK_MAX_MS": hi or lo}
        proc = self.spawn(name, cmd, self.load_cores, env=env)
        try:
            code = proc.wait(timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            kill_all({proc.pid})
            raise self.fail(name, "wrk did not finish") from None
        out = (self.tmp / f"{name}.log").read_text(errors="replace")
        result = next((json.loads(line.split(" ", 1)[1]) for line in out.splitlines()
                       if line.startswith("BENCH_RESULT ")), None)
        if code != 0 or result is None:
            raise self.fail(name, f"wrk failed (exit {code})")
        if measured and self.args.verbose:
            print("\n".join("    " + line for line in out.splitlines()))
        return result if measured else None

    def run_leg(self, leg: str, rnd: int) -> dict:
        a = self.args
        name, port = f"{leg}-r{rnd}", free_port()
        if leg == "sixgate":
            proc = self.start_sixgate(name, port)
        elif leg == "nginx":
            proc = self.start_nginx(name, PROXY_SERVER, port, self.proxy_cores, a.workers,
                                    access_log=a.access_log)
        else:  # direct: a second hello nginx where the proxy would run ("A0" in the baseline)
            proc = self.start_nginx(name, HELLO_SERVER, port, self.proxy_cores, a.workers)
        try:
            self.wait_ready(name, proc, port)
            tag = str(self.tmp / name)
            rss_idle = memory_kib(leg_pids(tag, proc.pid, proc_table()), "VmRSS")
            self.wrk(port, a.warmup, measured=False)
            t0, cores0 = proc_table(), core_times()
            pids0 = leg_pids(tag, proc.pid, t0)
            up0 = descendants({self.upstream.pid}, t0)
            res = self.wrk(port, a.duration, measured=True)
            t1, cores1 = proc_table(), core_times()
            pids1 = leg_pids(tag, proc.pid, t1)
            up1 = descendants({self.upstream.pid}, t1)
            rss_peak = memory_kib(pids1, "VmHWM")
        finally:
            kill_all(leg_pids(str(self.tmp / name), proc.pid, proc_table()) | {proc.pid})
            proc.poll()
        n = max(1, res["requests"])
        errors = sum(res["errors"].values())
        return {
            "leg": leg, "round": rnd, "port": port, "ok": errors == 0,
            "rps": res["requests"] / (res["duration_us"] / 1e6),
            **{k: res[k] for k in ("requests", "mean_us", "p50_us", "p90_us", "p99_us",
                                   "max_us", "errors")},
            "error_total": errors,
            "cpu_us_per_req": (cpu_seconds(pids1, t1) - cpu_seconds(pids0, t0)) * 1e6 / n,
            "upstream_cpu_us_per_req": (cpu_seconds(up1, t1) - cpu_seconds(up0, t0)) * 1e6 / n,
            "processes": len(pids1),
            "rss_idle_kib": rss_idle, "rss_peak_kib": rss_peak,
            "core_busy_pct": busy_pct(cores0, cores1),
        }

    def run(self) -> tuple[list[str], list[dict]]:
        a = self.args
        legs = [a.only] if a.only else ["nginx", "sixgate"]
        if a.paced:
            legs = ["direct", *legs]
        self.upstream_port = free_port()
        self.upstream = self.start_nginx("upstream", HELLO_SERVER, self.upstream_port,
                                         self.upstream_cores, a.upstream_workers)
        self.wait_ready("upstream", self.upstream, self.upstream_port)
        runs = []
        for rnd in range(1, a.rounds + 1):
            shift = (rnd - 1) % len(legs)  # rotate the order every round
            for leg in legs[shift:] + legs[:shift]:
                r = self.run_leg(leg, rnd)
                runs.append(r)
                busy = " ".join(f"{c}:{p:.0f}%" for c, p in r["core_busy_pct"].items())
                print(f"round {rnd} {leg:8} {r['rps']:>9,.0f} req/s  p50 {fmt_us(r['p50_us'])}"
                      f"  p99 {fmt_us(r['p99_us'])}  {r['cpu_us_per_req']:.1f} µs/req"
                      f"  {r['rss_peak_kib'] / 1024:.1f} MiB  cores {busy}"
                      f"  errors {r['error_total']}{'' if r['ok'] else '  FAILED'}", flush=True)
        return legs, runs


# ---------------------------------------------------------------- reporting

def summarize(legs: list[str], runs: list[dict]) -> dict[str, dict]:
    out = {}
    for leg in legs:
        rs = [r for r in runs if r["leg"] == leg]
        med = {k: statistics.median(r[k] for r in rs)
               for k in ("rps", "p50_us", "p90_us", "p99_us", "cpu_us_per_req",
                         "upstream_cpu_us_per_req", "rss_idle_kib", "rss_peak_kib")}
        out[leg] = {**med, "rps_min": min(r["rps"] for r in rs),
                    "rps_max": max(r["rps"] for r in rs), "rounds": len(rs),
                    "errors": sum(r["error_total"] for r in rs)}
    return out


def report(args, summary: dict[str, dict]) -> list[str]:
    lines = []
    if args.paced:
        direct = summary["direct"]
        lines.append(f"{'':8} {'req/s':>7} {'p50':>9} {'p90':>9} {'p99':>9} "
                     f"{'added p50 / p99':>21} {'CPU/req':>10} {'errors':>6}")
        for leg, s in summary.items():
            added = ("-" if leg == "direct" else
                     f"{fmt_delta(s['p50_us'] - direct['p50_us'])} / "
                     f"{fmt_delta(s['p99_us'] - direct['p99_us'])}")
            lines.append(f"{leg:8} {s['rps']:>7,.0f} {fmt_us(s['p50_us']):>9} "
                         f"{fmt_us(s['p90_us']):>9} {fmt_us(s['p99_us']):>9} {added:>21} "
                         f"{s['cpu_us_per_req']:>7.1f} µs {s['errors']:>6}")
        lines.append(f"(medians of {args.rounds} rounds; wrk -c{args.connections}, "
                     f"think {args.think_ms} ms; 'added' is over direct)")
        for leg in summary:
            if leg != "direct":
                lines.append(f"{leg} added latency over direct: "
                             f"p50 {fmt_delta(summary[leg]['p50_us'] - direct['p50_us'])}, "
                             f"p99 {fmt_delta(summary[leg]['p99_us'] - direct['p99_us'])}")
        return lines
    lines.append(f"{'':8} {'req/s (min-max)':>24} {'p50':>9} {'p99':>9} {'CPU/req':>10} "
                 f"{'x nginx':>7} {'RSS peak':>9} {'errors':>6}")
    nginx_cpu = summary.get("nginx", {}).get("cpu_us_per_req")
    for leg, s in summary.items():
        rate = f"{s['rps']:,.0f} ({s['rps_min'] / 1000:.1f}k-{s['rps_max'] / 1000:.1f}k)"
        times = f"{nginx_cpu / s['cpu_us_per_req']:.2f}" if nginx_cpu else "-"
        lines.append(f"{leg:8} {rate:>24} {fmt_us(s['p50_us']):>9} {fmt_us(s['p99_us']):>9} "
                     f"{s['cpu_us_per_req']:>7.1f} µs {times:>7} "
                     f"{s['rss_peak_kib'] / 1024:>5.1f} MiB {s['errors']:>6}")
    lines.append(f"(medians of {args.rounds} rounds; wrk -t{args.threads} -c{args.connections} "
                 f"-d{args.duration}s; CPU/req = proxy process tree utime+stime / requests)")
    if "nginx" in summary and "sixgate" in summary:
        ratio = summary["nginx"]["cpu_us_per_req"] / summary["sixgate"]["cpu_us_per_req"]
        lines.append(f"sixgate/nginx cpu-per-request ratio: {ratio:.2f}")
    else:
        lines.append("sixgate/nginx cpu-per-request ratio: n/a (only "
                     f"{', '.join(summary)} measured)")
    return lines


def host_info(tools: dict[str, str]) -> dict:
    def first_line(cmd: list[str]) -> str:
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
        except OSError:
            return ""
        return (r.stdout + r.stderr).strip().splitlines()[0] if (r.stdout + r.stderr) else ""

    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.machine())
    return {
        "hostname": platform.node(), "cpu": model, "cpus": os.cpu_count(),
        "kernel": platform.release(), "python": platform.python_version(),
        "loadavg": os.getloadavg(), "wrk": first_line([tools["wrk"], "-v"]),
        "nginx": first_line([tools["nginx"], "-v"]),
        "git": first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--duration", type=int, default=10, help="measured seconds per run (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="warm-up seconds per run (default 3)")
    p.add_argument("--connections", type=int, help="wrk -c (default 50; 10 with --paced)")
    p.add_argument("--threads", type=int, default=1, help="wrk -t (default 1)")
    p.add_argument("--proxy-cores", default="0", help="cores of the proxy under test (default 0)")
    p.add_argument("--load-cores", default="1", help="cores of wrk (default 1)")
    p.add_argument("--upstream-cores", default="1", help="cores of the upstream nginx (default 1)")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes of both proxies (sixgate: "
                        "nginx_config.worker_processes; default 1)")
    p.add_argument("--upstream-workers", type=int, default=1,
                   help="worker processes of the upstream nginx (default 1)")
    p.add_argument("--only", choices=["nginx", "sixgate"], help="benchmark one proxy only")
    p.add_argument("--paced", action="store_true",
                   help="latency at ~1k req/s: random think time per connection, c=10, "
                        "compared with going direct")
    p.add_argument("--think-ms", default="2-18", help="paced think time range in ms (default 2-18)")
    p.add_argument("--access-log", action="store_true", help="turn on both proxies' access log")
    p.add_argument("--path", default="/api/hello", help="request path (default /api/hello)")
    p.add_argument("--sixgate-cmd",
                   help="command that starts sixgate in place of `sixgate start -c {config}`")
    p.add_argument("--start-timeout", type=float, default=30,
                   help="seconds a proxy gets to answer correctly (default 30)")
    p.add_argument("--json", type=Path, help="results file (default bench/results/<time>.json)")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs)")
    p.add_argument("-v", "--verbose", action="store_true", help="show commands and wrk output")
    args = p.parse_args(argv)
    if args.connections is None:
        args.connections = 10 if args.paced else 50
    available = os.sched_getaffinity(0)
    for opt in ("proxy_cores", "load_cores", "upstream_cores"):
        try:
            cores = parse_cores(getattr(args, opt))
        except ValueError:
            p.error(f"--{opt.replace('_', '-')}: not a core list like 0 or 0-3 or 0,2")
        if not cores <= available:
            p.error(f"--{opt.replace('_', '-')} {getattr(args, opt)}: this machine only has "
                    f"cores {sorted(available)}")
    return args


def main(argv=None) -> int:
    if not sys.platform.startswith("linux"):
        print("proxy_bench needs Linux (/proc, sched_setaffinity)", file=sys.stderr)
        return 2
    args = parse_args(argv)
    tools = ensure_tools()
    sixgate_cmd = ""
    if args.only != "nginx":
        try:
            sixgate_cmd = shlex.join(sixgate_command(args, Path("{config}")))
        except BenchError as e:
            print(e, file=sys.stderr)
            return 2
    LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphans of our children stay ours to kill

    def terminate(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    sweep_stale()
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-"))
    tmp.chmod(0o755)  # nginx workers run as nobody when we are root
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    bench = Bench(args, tools, tmp)
    try:
        host = {**host_info(tools), "sixgate_cmd": sixgate_cmd}
        legs, runs = bench.run()
    except BenchError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop cleanup
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        everyone = descendants({os.getpid()}, proc_table()) - {os.getpid()}
        kill_all(everyone)
        reap(everyone)
        if args.keep_tmp:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, terminate)
    summary = summarize(legs, runs)
    ok = all(r["ok"] for r in runs)
    path = args.json or HERE / "results" / f"{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    argv_used = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    path.write_text(json.dumps({"started": started, "mode": "paced" if args.paced else "saturation",
                                "ok": ok, "host": host, "args": argv_used,
                                "summary": summary, "runs": runs}, indent=2) + "\n")
    lines = report(args, summary)
    if not ok:
        lines.insert(0, "some runs had wrk errors (non-2xx or socket errors): marked FAILED")
    print(f"results: {path}")
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
