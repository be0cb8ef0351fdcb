#!/usr/bin/env python3
"""Reverse-proxy benchmark: sixgate against nginx, measured as in perf-baseline.md.

    python3 bench/proxy_bench.py                        # baseline: 1 worker, 1 route, no plugins
    python3 bench/proxy_bench.py --scenario plugins     # + limit-count and prometheus on the route
    python3 bench/proxy_bench.py --paced                # latency at ~1k req/s vs going direct
    python3 bench/proxy_bench.py --scenario routes10k   # 10,000 mixed routes, apply time, RSS
    python3 bench/proxy_bench.py --scenario workers     # 1 vs 2 workers (scaling)
    python3 bench/proxy_bench.py --all                  # every scenario, README table + PNG
    python3 bench/proxy_bench.py --compare HEAD~3 HEAD  # two commits in one interleaved run

Every scenario prints its ratio as the last line. Standard library only (the plot needs
matplotlib, in this interpreter or in the repo's venv, and is skipped with a message when it is
missing), Linux only (/proc, sched_setaffinity). See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import http.client
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import routes_gen
from ports import free_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LUA = HERE / "wrk_report.lua"
README = HERE / "README.md"
RESULTS = HERE / "results"
TAG = "SIXGATE_BENCH_LEG"  # env marker: finds a leg's processes even if they daemonize
TMP_PREFIX = "sixgate-bench-"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36
LIBC = ctypes.CDLL(None, use_errno=True)
HELLO_BODY = b"hello\n"
WRONG_ANSWER_GRACE = 5.0  # s a gateway may answer 404 while its routes load
README_BEGIN = "<!-- bench:latest:begin (written by proxy_bench.py --all) -->"
README_END = "<!-- bench:latest:end -->"
BENCH_PLUGINS = ("limit-count", "prometheus")
# APISIX's own benchmark route (benchmark/run.sh): limit-count that never rejects + prometheus
BENCH_PLUGIN_CONF = {
    "limit-count": {"count": 1000000000, "time_window": 60, "rejected_code": 503,
                    "key": "remote_addr"},
    "prometheus": {},
}
LOG_NOISE = re.compile(r"\[(ERROR|CRITICAL)\]|Traceback \(most recent call last\)|\[error\]")

SCENARIOS = {
    "baseline": "1 worker, 1 route `/*`, no plugins",
    "plugins": "1 worker, 1 route with limit-count + prometheus (APISIX's benchmark setup)",
    "paced": "latency at ~1k req/s (c=10, random think time), added over going direct",
    "routes10k": "10,000 mixed routes (exact, prefix, host, vars), request hits one in the middle",
    "workers": "1 vs N worker processes, both proxies (scaling)",
}
ALL_ORDER = ("baseline", "plugins", "paced", "routes10k", "workers")

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
{extra}"""
# with the bench plugins: only these two enabled, and the export server on a free port
SIXGATE_PLUGINS_CONFIG = """\
plugins:
  - limit-count
  - prometheus
plugin_attr:
  prometheus:
    export_addr:
      ip: 127.0.0.1
      port: {export_port}
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
SIXGATE_PLUGIN_ROUTES = """\
routes:
  - id: 1
    uri: "/*"
    plugins: {plugins}
    upstream:
      type: roundrobin
      nodes:
        "127.0.0.1:{upstream}": 1
#END
"""


class BenchError(Exception):
    """A leg could not be started or answered wrongly: abort loudly."""


class Skip(Exception):
    """A scenario cannot run here (a plugin is not installed, ...): say so, run nothing."""


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
    # --compare's `git worktree add` checkouts lived in those dirs: forget them
    subprocess.run(["git", "-C", str(REPO), "worktree", "prune"], capture_output=True, check=False)


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


def venv_python() -> str:
    venv = REPO / ".venv/bin/python"
    return str(venv) if venv.exists() else sys.executable


def sixgate_command(args, config: Path, tree: Path = REPO) -> list[str]:
    """How sixgate is started: as users start it (the `sixgate` script) for this checkout;
    the venv's python with ``-m kernel.cli`` for another tree (PYTHONPATH picks the tree)."""
    if args.sixgate_cmd:
        return shlex.split(args.sixgate_cmd.format(config=config, tree=tree))
    if tree == REPO:
        for exe in (REPO / ".venv/bin/sixgate", shutil.which("sixgate")):
            if exe and Path(exe).exists():
                return [str(exe), "start", "-c", str(config)]
    if not (tree / "kernel/cli.py").exists():
        raise BenchError(f"no sixgate to start: neither a `sixgate` script nor "
                         f"{tree}/kernel/cli.py exists (benchmark nginx alone with --only nginx)")
    return [venv_python(), "-m", "kernel.cli", "start", "-c", str(config)]


def tree_env(tree: Path) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))}


def tree_python(tree: Path, code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``code`` with the venv's python the way a sixgate of ``tree`` would import."""
    return subprocess.run([venv_python(), "-c", code], cwd=tempfile.gettempdir(),
                          env={**os.environ, **tree_env(tree)}, capture_output=True, text=True,
                          timeout=timeout, check=False)


def fmt_us(us: float | None) -> str:
    if us is None:
        return "-"
    return f"{us:.0f} µs" if abs(us) < 1000 else f"{us / 1000:.2f} ms"


def fmt_delta(us: float) -> str:
    return ("+" if us >= 0 else "-") + fmt_us(abs(us))


def fmt_ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text) or "    (empty)"


def pct(samples: list[float], q: float) -> float | None:
    if not samples:
        return None
    s = sorted(samples)
    return s[min(len(s) - 1, int(len(s) * q))]


def leaves(pids: set[int], table: dict) -> set[int]:
    """The processes of a tree that have no children in it: nginx's and sixgate's workers
    (or the one process of a single-process sixgate)."""
    parents = {table[p][0] for p in pids if p in table}
    return {p for p in pids if p not in parents} or set(pids)


def per_process_max_kib(pids: set[int], key: str) -> int:
    return max((memory_kib({p}, key) for p in pids), default=0)


# ---------------------------------------------------------------- scenarios and legs

@dataclass
class Leg:
    """One proxy configuration that is started, checked and measured once per round."""

    name: str  # unique in a run: base name, plus "@<tree label>" when comparing trees
    base: str  # the scenario's name for it ("sixgate+plugins")
    kind: str  # "nginx" | "sixgate" | "direct"
    workers: int = 1
    routes: int = 1  # 1: the single route `/*`; more: bench/routes_gen.py's mixed table
    plugins: bool = False  # limit-count + prometheus on the route
    tree: str = str(REPO)  # the source tree sixgate runs from
    label: str = ""  # the tree's label when comparing ("" otherwise)


@dataclass
class Tree:
    label: str  # "" (no comparison), a short commit id, or "worktree"
    path: Path
    rev: str = ""  # full commit id ("" for the working tree)


def routes_label(n: int) -> str:
    return f"sixgate-{n // 1000}k" if n % 1000 == 0 and n >= 1000 else f"sixgate-{n}"


def worker_counts(args) -> list[int]:
    return sorted({int(x) for x in str(args.workers_list).split(",") if x.strip()})


def scenario_legs(args, trees: list[Tree]) -> list[Leg]:
    """The legs of ``args.scenario``; sixgate legs once per tree."""
    s = args.scenario
    base: list[Leg] = []
    if s == "paced":
        base.append(Leg("direct", "direct", "direct", args.workers))
    if s == "workers":
        for w in worker_counts(args):
            base.append(Leg(f"nginx-{w}w", f"nginx-{w}w", "nginx", w))
            base.append(Leg(f"sixgate-{w}w", f"sixgate-{w}w", "sixgate", w))
    else:
        base.append(Leg("nginx", "nginx", "nginx", args.workers))
        base.append(Leg("sixgate", "sixgate", "sixgate", args.workers))
    if s == "plugins":
        base.append(Leg("sixgate+plugins", "sixgate+plugins", "sixgate", args.workers,
                        plugins=True))
    if s == "routes10k":
        name = routes_label(args.routes)
        base.append(Leg(name, name, "sixgate", args.workers, routes=args.routes))
    if args.only:
        base = [leg for leg in base if leg.kind in (args.only, "direct")]
    legs: list[Leg] = []
    for leg in base:
        if leg.kind != "sixgate":
            legs.append(leg)
            continue
        for t in trees:
            legs.append(Leg(**{**asdict(leg), "name": leg.base + (f"@{t.label}" if t.label else ""),
                               "tree": str(t.path), "label": t.label}))
    return legs


def primary_leg(args) -> str:
    """The leg a scenario's ratio (and a comparison's last line) is about."""
    return {"baseline": "sixgate", "plugins": "sixgate+plugins", "paced": "sixgate",
            "routes10k": routes_label(args.routes),
            "workers": f"sixgate-{max(worker_counts(args))}w"}[args.scenario]


def request_of(args) -> tuple[str, dict[str, str]]:
    if args.scenario == "routes10k":
        return routes_gen.hit(args.routes, args.hit)
    return args.path, {}


def plugins_missing(tree: Path) -> str | None:
    """Why the bench plugins cannot run from ``tree`` (``None``: they can). Loads them the way
    the tree's sixgate would (its own plugin loader); a module found only through the venv's
    editable install of another checkout does not count as the tree's."""
    code = f"""
import json, sys
names = {list(BENCH_PLUGINS)!r}
out = []
try:
    from kernel.plugins.loader import load_registry
    try:
        registry, errors = load_registry(names, [], {{}}, init=False)
    except TypeError:
        registry, errors = load_registry(names, [], {{}})
    out += [e.split(' (at ')[0][:300] for e in errors]
except Exception as e:
    out.append('the plugin loader failed: ' + repr(e)[:200])
for n in names:
    mod = next((m for m in list(sys.modules.values())
                if getattr(m, 'name', None) == n and hasattr(m, 'priority')), None)
    where = getattr(mod, '__file__', None) or ''
    if mod is not None and {str(REPO)!r} != {str(tree)!r} and where.startswith({str(REPO)!r}):
        out.append(n + ' is not in this tree (only in ' + where + ')')
print(json.dumps(out))
"""
    try:
        r = tree_python(tree, code)
        problems = json.loads(r.stdout.strip().splitlines()[-1])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired) as e:
        return f"could not check the plugins ({e!r})"
    return "; ".join(problems) if problems else None


# ---------------------------------------------------------------- comparing two commits

class Trees:
    """The source trees sixgate runs from: this checkout, or two revisions checked out with
    `git worktree add` into the run's temp dir (removed afterwards)."""

    def __init__(self, revs: list[str] | None, tmp: Path):
        self.made: list[Path] = []
        self.list: list[Tree] = []
        if not revs:
            self.list = [Tree("", REPO)]
            return
        try:
            self._add(revs, tmp)
        except BaseException:
            self.remove()
            raise

    def _add(self, revs: list[str], tmp: Path) -> None:
        for rev in revs:
            if rev in (".", "WORKTREE", "worktree"):
                self.list.append(Tree("worktree", REPO))
                continue
            full = self._git("rev-parse", "--verify", f"{rev}^{{commit}}").strip()
            short = self._git("rev-parse", "--short", full).strip()
            path = tmp / f"tree-{short}"
            if not path.exists():
                self._git("worktree", "add", "--detach", str(path), full)
                self.made.append(path)
            self.list.append(Tree(short, path, full))
        labels = [t.label for t in self.list]
        if len(set(labels)) != len(labels):
            raise BenchError(f"--compare needs two different revisions (got {' and '.join(revs)})")

    @staticmethod
    def _git(*argv: str) -> str:
        r = subprocess.run(["git", "-C", str(REPO), *argv], capture_output=True, text=True,
                           check=False)
        if r.returncode:
            raise BenchError(f"git {' '.join(argv)}: {r.stderr.strip()}")
        return r.stdout

    def check(self) -> None:
        """Each tree's sixgate must import its own kernel (not the editable install's)."""
        for t in self.list:
            r = tree_python(t.path, "import kernel; print(kernel.__file__)")
            where = r.stdout.strip()
            if r.returncode or not where.startswith(str(t.path)):
                raise BenchError(f"tree {t.label or t.path}: the venv imports kernel from "
                                 f"{where or r.stderr.strip()[-300:]}, not from {t.path}")

    def remove(self) -> None:
        for path in self.made:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)],
                           capture_output=True, check=False)
        if self.made:
            subprocess.run(["git", "-C", str(REPO), "worktree", "prune"], capture_output=True,
                           check=False)


# ---------------------------------------------------------------- the benchmark

class Bench:
    def __init__(self, args, tools: dict[str, str], tmp: Path, trees: list[Tree]):
        self.args, self.tools, self.tmp, self.trees = args, tools, tmp, trees
        self.proxy_cores = parse_cores(args.proxy_cores)
        self.load_cores = parse_cores(args.load_cores)
        self.upstream_cores = parse_cores(args.upstream_cores)
        self.paced = args.scenario == "paced"
        self.path, self.headers = request_of(args)
        self.upstream_port = 0
        self.upstream: subprocess.Popen | None = None
        self.wrk_runs = 0
        self.notes: list[str] = []
        self.extras: dict = {}
        self.routes_text: str | None = None

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

    def routes_file(self, leg: Leg) -> str:
        upstream = f"127.0.0.1:{self.upstream_port}"
        if leg.routes > 1:
            if self.routes_text is None:
                self.routes_text = routes_gen.apisix_yaml(leg.routes, upstream, probe="v0")
            return self.routes_text
        if leg.plugins:
            return SIXGATE_PLUGIN_ROUTES.format(plugins=json.dumps(BENCH_PLUGIN_CONF),
                                                upstream=self.upstream_port)
        return SIXGATE_ROUTES.format(upstream=self.upstream_port)

    def start_sixgate(self, name: str, port: int, leg: Leg) -> tuple[subprocess.Popen, dict]:
        d = self.tmp / name
        (d / "conf").mkdir(parents=True)
        (d / "logs").mkdir()
        access = (f"    enable_access_log: true\n    access_log: {d}/logs/access.log"
                  if self.args.access_log
                  else "    enable_access_log: false\n    access_log: false")
        info: dict = {"dir": d}
        extra = ""
        if leg.plugins:
            info["export_port"] = free_port()
            extra = SIXGATE_PLUGINS_CONFIG.format(export_port=info["export_port"])
        config = d / "conf/config.yaml"
        config.write_text(SIXGATE_CONFIG.format(port=port, workers=leg.workers,
                                                access_log=access, extra=extra))
        (d / "conf/apisix.yaml").write_text(self.routes_file(leg))
        tree = Path(leg.tree)
        return self.spawn(name, sixgate_command(self.args, config, tree), self.proxy_cores,
                          cwd=d, env=tree_env(tree)), info

    def fail(self, name: str, message: str) -> BenchError:
        logs = [self.tmp / f"{name}.log"]
        if (self.tmp / name).is_dir():
            logs += [p for p in sorted((self.tmp / name).rglob("*.log")) if "access" not in p.name]
        shown = "\n".join(f"  --- {p.relative_to(self.tmp)} ---\n{tail(p)}" for p in logs)
        return BenchError(f"{name}: {message}\n{shown}")

    def get(self, port: int, path: str, headers: dict[str, str] | None = None,
            timeout: float = 5) -> tuple[int, bytes, http.client.HTTPMessage]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            conn.request("GET", path, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.read(), resp.headers
        finally:
            conn.close()

    def wait_ready(self, name: str, proc: subprocess.Popen, port: int,
                   headers: dict[str, str] | None = None, path: str | None = None,
                   ) -> http.client.HTTPMessage:
        """Wait for the port, then demand 200 + `hello\\n` on a fresh connection."""
        path = path or self.path
        deadline = time.monotonic() + self.args.start_timeout
        last = "port never opened"
        while time.monotonic() < deadline:
            code = proc.poll()
            if code:  # exit 0 is fine: `start` may daemonize
                raise self.fail(name, f"exited with status {code} before answering")
            try:
                status, body, resp_headers = self.get(port, path, headers)
                if status == 200 and body == HELLO_BODY:
                    return resp_headers
                last = f"GET {path} gave {status} {body[:200]!r}"
                # it answers, but wrongly: allow a few seconds for the routes to load
                deadline = min(deadline, time.monotonic() + WRONG_ANSWER_GRACE)
            except OSError as e:
                last = f"GET {path}: {e}"
            time.sleep(0.1)
        raise self.fail(name, f"correctness check failed on port {port}: {last} "
                              f"(want 200 and body {HELLO_BODY!r})")

    def wrk(self, port: int, seconds: int, measured: bool) -> dict | None:
        a = self.args
        self.wrk_runs += 1
        name = f"wrk-{self.wrk_runs}"
        cmd = [self.tools["wrk"], f"-t{a.threads}", f"-c{a.connections}", f"-d{seconds}s",
               "--latency", "-s", str(LUA)]
        for k, v in self.headers.items():
            cmd += ["-H", f"{k}: {v}"]
        cmd.append(f"http://127.0.0.1:{port}{self.path}")
        env = {}
        if self.paced:
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

    def log_files(self, name: str) -> list[Path]:
        logs = [self.tmp / f"{name}.log"]
        d = self.tmp / name
        if d.is_dir():
            logs += [p for p in sorted(d.rglob("*.log")) if "access" not in p.name]
        return logs

    def log_sizes(self, name: str) -> dict[Path, int]:
        out = {}
        for p in self.log_files(name):
            with contextlib.suppress(OSError):
                out[p] = p.stat().st_size
        return out

    def log_noise(self, name: str, since: dict[Path, int]) -> list[str]:
        """Error and traceback lines a leg logged after ``since`` (its sizes when it was ready):
        what load and the clients going away (wrk closes its connections at the end) made it
        log."""
        found = []
        for p in self.log_files(name):
            try:
                with open(p, "rb") as f:
                    f.seek(since.get(p, 0))
                    text = f.read().decode(errors="replace")
            except OSError:
                continue
            found += [line for line in text.splitlines() if LOG_NOISE.search(line)]
        return found

    def reload_probe(self, leg: Leg, name: str, port: int) -> list[float]:
        """End-to-end apply of a one-route change on a large table: rewrite apisix.yaml with the
        probe route answering a new token (one line changed, renamed into place, as an editor
        or `sixgate`'s own store writes) and time until the gateway serves it."""
        path = self.tmp / name / "conf/apisix.yaml"
        text = path.read_text()
        samples = []
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            for k in range(1, self.args.reload_writes + 1):
                token = f"{name}-{k}"
                text = routes_gen.with_probe(text, token)
                tmp = path.with_name(f".apisix.yaml.{k}")
                started = time.perf_counter()
                tmp.write_text(text)
                os.replace(tmp, path)
                deadline = started + 30
                while True:
                    conn.request("GET", routes_gen.PROBE_URI)
                    if conn.getresponse().read() == token.encode():
                        break
                    if time.perf_counter() > deadline:
                        raise self.fail(name, "a one-route change was not served after 30 s")
                samples.append((time.perf_counter() - started) * 1000)
                time.sleep(0.05)
        finally:
            conn.close()
        return samples

    def scrape_prometheus(self, export_port: int) -> float | None:
        """Requests the prometheus plugin counted (``apisix_http_status`` summed), or None."""
        try:
            with urllib.request.urlopen(
                    f"http://127.0.0.1:{export_port}/apisix/prometheus/metrics", timeout=5) as r:
                text = r.read().decode(errors="replace")
        except OSError:
            return None
        total, seen = 0.0, False
        for line in text.splitlines():
            if line.startswith("apisix_http_status{") or line.startswith("apisix_http_status "):
                with contextlib.suppress(ValueError):
                    total += float(line.rsplit(" ", 1)[1])
                    seen = True
        return total if seen else None

    def run_leg(self, leg: Leg, rnd: int, profile: Path | None = None) -> dict:
        a = self.args
        name, port = f"{leg.name.replace('@', '-at-')}-r{rnd}", free_port()
        info: dict = {}
        if leg.kind == "sixgate":
            proc, info = self.start_sixgate(name, port, leg)
        elif leg.kind == "nginx":
            proc = self.start_nginx(name, PROXY_SERVER, port, self.proxy_cores, leg.workers,
                                    access_log=a.access_log)
        else:  # direct: a second hello nginx where the proxy would run ("A0" in the baseline)
            proc = self.start_nginx(name, HELLO_SERVER, port, self.proxy_cores, leg.workers)
        extra: dict = {}
        spy = None
        try:
            t_start = time.monotonic()
            resp_headers = self.wait_ready(name, proc, port, self.headers)
            extra["ready_s"] = round(time.monotonic() - t_start, 2)
            if leg.plugins and resp_headers.get("X-RateLimit-Limit") is None:
                raise self.fail(name, "limit-count is not applied: the route's answer has no "
                                      "X-RateLimit-Limit header")
            if leg.kind == "sixgate" and leg.routes > 1:  # the whole table loaded: probe answers
                status, body, _ = self.get(port, routes_gen.PROBE_URI)
                if (status, body) != (200, b"v0"):
                    raise self.fail(name, f"probe route: {status} {body[:100]!r}")
            tag = str(self.tmp / name)
            rss_idle = memory_kib(leg_pids(tag, proc.pid, proc_table()), "VmRSS")
            logs_at = self.log_sizes(name)
            self.wrk(port, a.warmup, measured=False)
            t0, cores0 = proc_table(), core_times()
            pids0 = leg_pids(tag, proc.pid, t0)
            up0 = descendants({self.upstream.pid}, t0)
            if profile is not None:
                spy = self.start_profile(name, leaves(pids0, t0), profile)
            res = self.wrk(port, a.duration, measured=True)
            t1, cores1 = proc_table(), core_times()
            pids1 = leg_pids(tag, proc.pid, t1)
            up1 = descendants({self.upstream.pid}, t1)
            rss_peak = memory_kib(pids1, "VmHWM")
            workers1 = leaves(pids1, t1)
            extra["rss_worker_kib"] = per_process_max_kib(workers1, "VmRSS")
            extra["rss_worker_peak_kib"] = per_process_max_kib(workers1, "VmHWM")
            if leg.plugins and "export_port" in info:
                extra["prometheus_counted"] = self.scrape_prometheus(info["export_port"])
            if leg.kind == "sixgate" and leg.routes > 1 and a.reload_writes > 0:
                extra["reload_ms"] = self.reload_probe(leg, name, port)
            time.sleep(0.3)  # what the gateway logs as wrk's connections go away
            noise = self.log_noise(name, logs_at) if leg.kind == "sixgate" else []
        finally:
            if spy is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    spy.wait(timeout=a.duration + 30)
            kill_all(leg_pids(str(self.tmp / name), proc.pid, proc_table()) | {proc.pid})
            proc.poll()
        n = max(1, res["requests"])
        errors = sum(res["errors"].values())
        return {
            "leg": leg.name, "base": leg.base, "tree": leg.label, "round": rnd, "port": port,
            "ok": errors == 0 and not noise,
            "rps": res["requests"] / (res["duration_us"] / 1e6),
            **{k: res[k] for k in ("requests", "mean_us", "p50_us", "p90_us", "p99_us",
                                   "max_us", "errors")},
            "error_total": errors,
            "log_errors": len(noise), "log_error_sample": noise[:5],
            "cpu_us_per_req": (cpu_seconds(pids1, t1) - cpu_seconds(pids0, t0)) * 1e6 / n,
            "upstream_cpu_us_per_req": (cpu_seconds(up1, t1) - cpu_seconds(up0, t0)) * 1e6 / n,
            "processes": len(pids1),
            "rss_idle_kib": rss_idle, "rss_peak_kib": rss_peak,
            "core_busy_pct": busy_pct(cores0, cores1),
            **extra,
        }

    def start_profile(self, name: str, pids: set[int], out: Path) -> subprocess.Popen | None:
        spy = next((str(p) for p in (REPO / ".venv/bin/py-spy", shutil.which("py-spy"))
                    if p and Path(p).exists()), None)
        if spy is None:
            self.notes.append("--profile: py-spy not found (pip install py-spy): no profile")
            return None
        pid = max(pids)  # the (last) worker
        cmd = [spy, "record", "-f", "raw", "-r", "250", "-d", str(self.args.duration),
               "-p", str(pid), "-o", str(out)]
        return self.spawn(f"{name}-py-spy", cmd, self.load_cores)

    def start_upstream(self) -> None:
        self.upstream_port = free_port()
        self.upstream = self.start_nginx("upstream", HELLO_SERVER, self.upstream_port,
                                         self.upstream_cores, self.args.upstream_workers)
        self.wait_ready("upstream", self.upstream, self.upstream_port, path="/")

    def prepare(self, legs: list[Leg]) -> list[Leg]:
        """Checks before any measurement; drops legs that cannot run (Skip when none can)."""
        if any(leg.plugins for leg in legs):
            keep = []
            for leg in legs:
                why = plugins_missing(Path(leg.tree)) if leg.plugins else None
                if why:
                    msg = (f"{leg.name}: skipped: {why} (the plugins scenario configures "
                           f"{' and '.join(BENCH_PLUGINS)} on the route through apisix.yaml)")
                    self.notes.append(msg)
                    print(msg, flush=True)
                    continue
                keep.append(leg)
            if not any(leg.plugins for leg in keep):
                raise Skip(self.notes[-1])
            legs = keep
        if any(leg.routes > 1 for leg in legs) and self.args.apply_changes > 0:
            self.extras["apply"] = {}
            for t in self.trees:
                self.extras["apply"][t.label] = self.apply_timing(t)
        return legs

    def apply_timing(self, tree: Tree) -> dict:
        """bench/apply_bench.py against the tree's kernel (in-process validate + build)."""
        cmd = [venv_python(), str(HERE / "apply_bench.py"), "--routes", str(self.args.routes),
               "--changes", str(self.args.apply_changes), "--json"]
        try:
            r = subprocess.run(cmd, cwd=tempfile.gettempdir(), capture_output=True, text=True,
                               env={**os.environ, **tree_env(tree.path)}, timeout=600,
                               check=False, preexec_fn=lambda: os.sched_setaffinity(
                                   0, self.proxy_cores))
        except subprocess.TimeoutExpired:
            return {"error": "apply_bench.py timed out"}
        line = next((x for x in r.stdout.splitlines() if x.startswith("APPLY_RESULT ")), None)
        if line is None:
            return {"error": (r.stdout + r.stderr).strip()[-500:]}
        res = json.loads(line.split(" ", 1)[1])
        label = f" ({tree.label})" if tree.label else ""
        if "error" in res:
            print(f"in-process apply{label}: n/a ({res['error']})", flush=True)
        else:
            print(f"in-process apply{label}: {r.stdout.strip().splitlines()[-1]}", flush=True)
        return res

    def run(self, legs: list[Leg]) -> list[dict]:
        a = self.args
        self.start_upstream()
        width = max(len(leg.name) for leg in legs)
        runs = []
        for rnd in range(1, a.rounds + 1):
            shift = (rnd - 1) % len(legs)  # rotate the order every round
            for leg in legs[shift:] + legs[:shift]:
                r = self.run_leg(leg, rnd)
                runs.append(r)
                busy = " ".join(f"{c}:{p:.0f}%" for c, p in r["core_busy_pct"].items())
                logs = f"  log errors {r['log_errors']}" if r["log_errors"] else ""
                print(f"round {rnd} {leg.name:{width}} {r['rps']:>9,.0f} req/s"
                      f"  p50 {fmt_us(r['p50_us'])}  p99 {fmt_us(r['p99_us'])}"
                      f"  {r['cpu_us_per_req']:.1f} µs/req"
                      f"  {r['rss_worker_peak_kib'] / 1024:.1f} MiB/worker  cores {busy}"
                      f"  errors {r['error_total']}{logs}{'' if r['ok'] else '  FAILED'}",
                      flush=True)
                for line in r["log_error_sample"][:3]:
                    print(f"    log: {line[:300]}")
        return runs

    def profile(self, legs: list[Leg], stamp: str) -> dict[str, dict]:
        """One extra, unmeasured pass of each primary leg with py-spy recording its worker."""
        out = {}
        for leg in legs:
            path = RESULTS / f"{stamp}-{leg.name.replace('@', '-at-')}.pyspy.txt"
            RESULTS.mkdir(parents=True, exist_ok=True)
            self.run_leg(leg, 0, profile=path)
            if path.exists():
                out[leg.name] = {"file": str(path), **summarize_profile(path)}
        return out


_LINE_NO = re.compile(r":\d+\)$")


def summarize_profile(path: Path, top: int = 15) -> dict:
    """py-spy raw (collapsed) stacks of the event-loop thread -> the top functions (line
    numbers dropped) by own and by inclusive samples, in % of that thread's samples. Other
    threads (file watch, thread pools, the metrics export server) are left out."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = other = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_LINE_NO.sub(")", f) for f in stack.split(";")]
        if not any(f.startswith(("Runner.run (", "_run_worker (")) for f in frames):
            other += n
            continue
        total += n
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for f in set(frames):
            incl[f] = incl.get(f, 0) + n

    def best(d: dict[str, int]) -> list[tuple[str, float]]:
        return [(f, round(100.0 * c / max(1, total), 1))
                for f, c in sorted(d.items(), key=lambda kv: -kv[1])[:top]]
    return {"samples": total, "other_thread_samples": other, "own": best(own),
            "inclusive": best(incl)}


# ---------------------------------------------------------------- figures and reports

MEDIAN_KEYS = ("rps", "p50_us", "p90_us", "p99_us", "cpu_us_per_req", "upstream_cpu_us_per_req",
               "rss_idle_kib", "rss_peak_kib", "rss_worker_kib", "rss_worker_peak_kib")


def summarize(legs: list[Leg], runs: list[dict]) -> dict[str, dict]:
    out = {}
    for leg in legs:
        rs = [r for r in runs if r["leg"] == leg.name]
        if not rs:
            continue
        med = {k: statistics.median(r[k] for r in rs) for k in MEDIAN_KEYS}
        s = {**med, "rps_min": min(r["rps"] for r in rs), "rps_max": max(r["rps"] for r in rs),
             "rounds": len(rs), "errors": sum(r["error_total"] for r in rs),
             "log_errors": sum(r["log_errors"] for r in rs), "workers": leg.workers,
             "kind": leg.kind, "base": leg.base, "tree": leg.label}
        reload = [x for r in rs for x in r.get("reload_ms", ())]
        if reload:
            s.update(reload_n=len(reload), reload_p50_ms=statistics.median(reload),
                     reload_p99_ms=pct(reload, 0.99), reload_max_ms=max(reload))
        counted = [r["prometheus_counted"] for r in rs if "prometheus_counted" in r]
        if counted:
            s["prometheus_counted"] = counted[-1]
        out[leg.name] = s
    return out


def nginx_ref(args, leg: dict) -> str:
    return f"nginx-{leg['workers']}w" if args.scenario == "workers" else "nginx"


def table(args, summary: dict[str, dict]) -> list[str]:
    width = max([8, *map(len, summary)])
    lines = []
    if args.scenario == "paced":
        direct = summary.get("direct")
        lines.append(f"{'':{width}} {'req/s':>7} {'p50':>9} {'p90':>9} {'p99':>9} "
                     f"{'added p50 / p99':>21} {'CPU/req':>10} {'errors':>6}")
        for leg, s in summary.items():
            added = ("-" if leg == "direct" or direct is None else
                     f"{fmt_delta(s['p50_us'] - direct['p50_us'])} / "
                     f"{fmt_delta(s['p99_us'] - direct['p99_us'])}")
            lines.append(f"{leg:{width}} {s['rps']:>7,.0f} {fmt_us(s['p50_us']):>9} "
                         f"{fmt_us(s['p90_us']):>9} {fmt_us(s['p99_us']):>9} {added:>21} "
                         f"{s['cpu_us_per_req']:>7.1f} µs {s['errors']:>6}")
        lines.append(f"(medians of {args.rounds} rounds; wrk -c{args.connections}, "
                     f"think {args.think_ms} ms; 'added' is over direct)")
        return lines
    lines.append(f"{'':{width}} {'req/s (min-max)':>24} {'p50':>9} {'p99':>9} {'CPU/req':>10} "
                 f"{'x nginx':>7} {'RSS/worker':>10} {'errors':>6}")
    for leg, s in summary.items():
        ref = summary.get(nginx_ref(args, s), {}).get("cpu_us_per_req")
        rate = f"{s['rps']:,.0f} ({s['rps_min'] / 1000:.1f}k-{s['rps_max'] / 1000:.1f}k)"
        times = f"{ref / s['cpu_us_per_req']:.2f}" if ref else "-"
        errs = f"{s['errors']}" + (f"+{s['log_errors']}L" if s["log_errors"] else "")
        lines.append(f"{leg:{width}} {rate:>24} {fmt_us(s['p50_us']):>9} {fmt_us(s['p99_us']):>9} "
                     f"{s['cpu_us_per_req']:>7.1f} µs {times:>7} "
                     f"{s['rss_worker_peak_kib'] / 1024:>6.1f} MiB {errs:>6}")
    lines.append(f"(medians of {args.rounds} rounds; wrk -t{args.threads} -c{args.connections} "
                 f"-d{args.duration}s; CPU/req = proxy process tree utime+stime / requests; "
                 "RSS/worker = peak VmHWM of the largest worker; errors: wrk's, +NL = N error "
                 "lines in the gateway's log)")
    return lines


def target(name: str, value: float | None, shown: str, goal: str, met: bool | None) -> dict:
    return {"name": name, "value": value, "shown": "n/a" if value is None else shown, "goal": goal,
            "met": None if value is None else met}


def figures(args, summary: dict[str, dict], extras: dict, label: str) -> dict:
    """The scenario's own figures for one tree: explanation lines, targets, the ratio line."""
    def n(base: str) -> str:
        return base + (f"@{label}" if label else "")

    def get(leg: str, key: str) -> float | None:
        return summary.get(leg, {}).get(key)

    def cpu_ratio(ref: str, leg: str) -> float | None:
        a, b = get(ref, "cpu_us_per_req"), get(leg, "cpu_us_per_req")
        return a / b if a and b else None

    s = args.scenario
    lines: list[str] = []
    targets: list[dict] = []
    if s == "baseline":
        r = cpu_ratio("nginx", n("sixgate"))
        targets.append(target("sixgate vs nginx (CPU/req)", r, f"{fmt_ratio(r)}x", "≥ 0.50x",
                              r is not None and r >= 0.5))
        ratio, ratio_line = r, f"{n('sixgate')}/nginx cpu-per-request ratio: {fmt_ratio(r)}"
    elif s == "plugins":
        r = cpu_ratio("nginx", n("sixgate+plugins"))
        plain, plug = get(n("sixgate"), "cpu_us_per_req"), get(n("sixgate+plugins"),
                                                             "cpu_us_per_req")
        if plain and plug:
            lines.append(f"limit-count + prometheus cost {plug - plain:+.1f} µs/req: "
                         f"{plain / plug:.2f}x the no-plugin figure (CPU/req)")
        counted = get(n("sixgate+plugins"), "prometheus_counted")
        if n("sixgate+plugins") in summary:
            lines.append("prometheus export after the last run: " + (
                f"apisix_http_status total {counted:,.0f}" if counted is not None else
                "no apisix_http_status counter (export server not reachable?)"))
        targets.append(target("limit-count + prometheus vs nginx (CPU/req)", r,
                              f"{fmt_ratio(r)}x", "≥ 0.40x", r is not None and r >= 0.4))
        ratio = r
        ratio_line = f"{n('sixgate+plugins')}/nginx cpu-per-request ratio: {fmt_ratio(r)}"
    elif s == "paced":
        direct = summary.get("direct")
        ratio, ratio_line = None, f"{n('sixgate')} added latency over direct: n/a"
        for leg in ("nginx", n("sixgate")):
            if direct is None or leg not in summary:
                continue
            d50 = summary[leg]["p50_us"] - direct["p50_us"]
            d99 = summary[leg]["p99_us"] - direct["p99_us"]
            line = f"{leg} added latency over direct: p50 {fmt_delta(d50)}, p99 {fmt_delta(d99)}"
            if leg == "nginx":
                lines.append(line)
                continue
            targets.append(target("added p50 over direct at ~1k req/s", d50, fmt_delta(d50),
                                  "≤ 0.15 ms", d50 <= 150))
            targets.append(target("added p99 over direct at ~1k req/s", d99, fmt_delta(d99),
                                  "≤ 0.50 ms", d99 <= 500))
            ratio, ratio_line = d99, line
    elif s == "routes10k":
        one, big = n("sixgate"), n(routes_label(args.routes))
        r = cpu_ratio(one, big)
        rr = (get(big, "rps") / get(one, "rps")) if get(big, "rps") and get(one, "rps") else None
        rn = cpu_ratio("nginx", big)
        path, headers = request_of(args)
        shown = path + "".join(f" [{k}: {v}]" for k, v in headers.items())
        lines.append(f"{big} (a {args.hit} route in the middle: {shown}): "
                     f"{fmt_ratio(r)}x the 1-route CPU/req, {fmt_ratio(rr)}x its req/s, "
                     f"{fmt_ratio(rn)}x nginx")
        apply = (extras.get("apply") or {}).get(label)
        worst = None
        if apply and "error" not in apply:
            parts = []
            for mode in ("identity", "delta"):
                m = apply.get(mode)
                if m:
                    parts.append(f"{mode} p50 {m['p50_ms']:.2f} / p99 {m['p99_ms']:.2f} ms")
                    worst = max(worst or 0.0, m["p99_ms"])
            lines.append(f"in-process one-route apply (validate + build, {apply['changes']} "
                         f"changes): {'; '.join(parts)}; first build "
                         f"{apply['initial_validate_ms'] + apply['initial_build_ms']:.0f} ms")
        elif apply:
            lines.append(f"in-process apply: n/a ({apply['error'][:200]})")
        if get(big, "reload_p50_ms") is not None:
            lines.append(f"file change served (apisix.yaml rewritten, one line changed, "
                         f"{summary[big]['reload_n']} changes): p50 "
                         f"{summary[big]['reload_p50_ms']:.1f} ms, p99 "
                         f"{summary[big]['reload_p99_ms']:.1f} ms, max "
                         f"{summary[big]['reload_max_ms']:.1f} ms")
        rss = get(big, "rss_worker_peak_kib")
        rss1 = get(one, "rss_worker_peak_kib")
        if rss:
            lines.append(f"RSS per worker: {rss / 1024:.1f} MiB at {args.routes:,} routes"
                         + (f", {rss1 / 1024:.1f} MiB at 1 route" if rss1 else ""))
        targets.append(target(f"{args.routes:,} routes vs 1 route (CPU/req)", r,
                              f"{fmt_ratio(r)}x", "≥ 0.90x", r is not None and r >= 0.9))
        targets.append(target("one-route apply, in-process p99", worst,
                              "n/a" if worst is None else f"{worst:.2f} ms", "≤ 10 ms",
                              worst is not None and worst <= 10))
        targets.append(target(f"RSS per worker at {args.routes:,} routes", rss and rss / 1024,
                              "n/a" if not rss else f"{rss / 1024:.1f} MiB", "≤ 60 MiB",
                              bool(rss) and rss / 1024 <= 60))
        ratio, ratio_line = r, f"{big}/{one} cpu-per-request ratio: {fmt_ratio(r)}"
    else:  # workers
        ws = worker_counts(args)
        lines.append(f"{'workers':>7} {'nginx req/s':>12} {'sixgate req/s':>14} "
                     f"{'sixgate CPU/req':>16} {'x nginx (CPU)':>14} {'x nginx (req/s)':>16}")
        for w in ws:
            ng, sg = f"nginx-{w}w", n(f"sixgate-{w}w")
            nr, sr = get(ng, "rps"), get(sg, "rps")
            sc = get(sg, "cpu_us_per_req")
            lines.append(f"{w:>7} {nr or 0:>12,.0f} {sr or 0:>14,.0f} "
                         f"{(sc or 0):>13.1f} µs {fmt_ratio(cpu_ratio(ng, sg)):>14} "
                         f"{fmt_ratio(sr / nr if sr and nr else None):>16}")
        lo, hi = ws[0], ws[-1]

        def scale(p: str) -> float | None:
            a, b = get(p.format(lo), "rps"), get(p.format(hi), "rps")
            return b / a if a and b else None

        sg_scale, ng_scale = scale(n("sixgate-{}w")), scale("nginx-{}w")
        lines.append(f"nginx {hi}-worker/{lo}-worker throughput ratio: {fmt_ratio(ng_scale)}")
        if args.layout_note:
            lines.append(args.layout_note)
        targets.append(target(f"sixgate {hi} vs {lo} worker(s) (req/s)", sg_scale,
                              f"{fmt_ratio(sg_scale)}x", f"report (nginx {fmt_ratio(ng_scale)}x)",
                              None))
        ratio = sg_scale
        ratio_line = (f"{n('sixgate')} {hi}-worker/{lo}-worker throughput ratio: "
                      f"{fmt_ratio(sg_scale)}")
    for leg, s2 in summary.items():
        if s2.get("tree", "") == label and s2["kind"] == "sixgate" and s2["log_errors"]:
            lines.append(f"{leg}: {s2['log_errors']} error/traceback lines in the gateway's log "
                         "during load and as the clients went away (target: none)")
    return {"lines": lines, "targets": targets, "ratio": ratio, "ratio_line": ratio_line}


def compare_lines(args, summary: dict[str, dict], trees: list[Tree]) -> list[str]:
    a, b = trees[0].label, trees[1].label
    lines = [f"comparison: {b} against {a} (same run, interleaved rounds)"]
    bases = [s["base"] for s in summary.values() if s["kind"] == "sixgate" and s["tree"] == a]
    for base in bases:
        sa, sb = summary.get(f"{base}@{a}"), summary.get(f"{base}@{b}")
        if not sa or not sb:
            continue
        ca, cb = sa["cpu_us_per_req"], sb["cpu_us_per_req"]
        lines.append(f"  {base}: CPU/req {ca:.1f} -> {cb:.1f} µs ({(cb - ca) / ca:+.1%}), "
                     f"req/s {sa['rps']:,.0f} -> {sb['rps']:,.0f} "
                     f"({(sb['rps'] - sa['rps']) / sa['rps']:+.1%}), p50 {fmt_us(sa['p50_us'])}"
                     f" -> {fmt_us(sb['p50_us'])}, p99 {fmt_us(sa['p99_us'])} -> "
                     f"{fmt_us(sb['p99_us'])}, RSS/worker {sa['rss_worker_peak_kib'] / 1024:.1f}"
                     f" -> {sb['rss_worker_peak_kib'] / 1024:.1f} MiB")
    base = primary_leg(args)
    sa, sb = summary.get(f"{base}@{a}"), summary.get(f"{base}@{b}")
    r = sa["cpu_us_per_req"] / sb["cpu_us_per_req"] if sa and sb else None
    lines.append(f"compare {base}: {b}/{a} cpu-per-request ratio: {fmt_ratio(r)} "
                 f"(above 1: {b} is cheaper)")
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
    osname = ""
    with contextlib.suppress(OSError):
        osname = next((line.split("=", 1)[1].strip().strip('"') for line in
                       Path("/etc/os-release").read_text().splitlines()
                       if line.startswith("PRETTY_NAME=")), "")
    runtime = first_line([venv_python(), "-c",
                          "import platform\ntry:\n import uvloop; u = ' + uvloop ' + "
                          "uvloop.__version__\nexcept ImportError:\n u = ''\n"
                          "print('CPython ' + platform.python_version() + u)"])
    dirty = first_line(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"])
    return {
        "hostname": platform.node(), "cpu": model, "cpus": os.cpu_count(), "os": osname,
        "kernel": platform.release(), "python": platform.python_version(),
        "sixgate_runtime": runtime,
        "loadavg": os.getloadavg(), "wrk": first_line([tools["wrk"], "-v"]),
        "nginx": first_line([tools["nginx"], "-v"]),
        "git": first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        "git_dirty": bool(dirty),
    }


def machine_line(host: dict) -> str:
    cpu = host["cpu"].replace("(R)", "").replace("(TM)", "")
    return (f"{host['cpus']} vCPU {cpu}, {host.get('os') or platform.system()}, "
            f"{host.get('sixgate_runtime') or 'CPython ' + host['python']}")


# ---------------------------------------------------------------- plot and README

def make_plot(results: list[dict], json_path: Path, out: Path) -> str:
    """Throughput and p99 of each leg, per scenario, as a PNG; matplotlib from this
    interpreter or the repo's venv. Returns what happened, for the output."""
    try:
        sys.path.insert(0, str(HERE))
        import plot
    except ImportError:
        plot = None
    if plot is not None:
        try:
            plot.plot(results, out)
            return f"plot: {out}"
        except Exception as e:  # a plot must never lose the figures
            return f"plot: failed ({e!r})"
    vpy = venv_python()
    if vpy != sys.executable:
        r = subprocess.run([vpy, str(HERE / "plot.py"), str(out), str(json_path)],
                           capture_output=True, text=True, timeout=120, check=False)
        if r.returncode == 0:
            return f"plot: {out}"
        if "No module named 'matplotlib'" not in r.stderr:
            return f"plot: failed ({r.stderr.strip()[-300:]})"
    return ("plot: skipped, matplotlib is not installed (.venv/bin/pip install matplotlib, "
            "or pip install matplotlib for this python)")


def readme_block(results: list[dict], png: Path | None) -> str:
    host = next((r["host"] for r in results if r.get("host")), {})
    a = next((r["args"] for r in results if r.get("args")), {})
    commit = host.get("git", "?") + (" + uncommitted changes" if host.get("git_dirty") else "")
    when = results[0].get("started", "")[:16].replace("T", " ")
    out = [README_BEGIN, "",
           f"Latest `python3 bench/proxy_bench.py --all`: {when}, commit {commit}, "
           f"{machine_line(host) if host else '?'}, load average at start "
           f"{host.get('loadavg', [0])[0]:.2f}; {a.get('rounds')} rounds x {a.get('duration')} s "
           "per leg. The machine is shared: quote ratios, not req/s.", "",
           "| scenario | measure | result | target | met |", "|---|---|---|---|---|"]
    for r in results:
        if r.get("skipped"):
            out.append(f"| {r['scenario']} | - | skipped: {r['skipped']} | | |")
            continue
        if r.get("error"):
            out.append(f"| {r['scenario']} | - | failed: {r['error'][:120]} | | ✗ |")
            continue
        for t in r["figures"][""]["targets"]:
            met = {True: "✓", False: "✗", None: "-"}[t["met"]]
            out.append(f"| {r['scenario']} | {t['name']} | {t['shown']} | {t['goal']} | {met} |")
    out += ["", "| scenario | leg | req/s | p50 | p99 | CPU µs/req | x nginx | RSS/worker "
            "| errors |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if not r.get("summary"):
            continue
        for leg, s in r["summary"].items():
            ref = r["summary"].get(f"nginx-{s['workers']}w" if r["scenario"] == "workers"
                                   else "nginx", {}).get("cpu_us_per_req")
            x = f"{ref / s['cpu_us_per_req']:.2f}" if ref and s["kind"] != "direct" else "-"
            errs = f"{s['errors']}" + (f" (+{s['log_errors']} log)" if s["log_errors"] else "")
            out.append(f"| {r['scenario']} | {leg} | {s['rps']:,.0f} | {fmt_us(s['p50_us'])} | "
                       f"{fmt_us(s['p99_us'])} | {s['cpu_us_per_req']:.1f} | {x} | "
                       f"{s['rss_worker_peak_kib'] / 1024:.1f} MiB | {errs} |")
    extra = [line for r in results if r.get("figures") for line in r["figures"][""]["lines"]
             if r["scenario"] in ("routes10k", "plugins")]
    if extra:
        out += [""] + [f"* {line}" for line in extra]
    if png is not None and png.exists():
        out += ["", f"Plot: `bench/results/{png.name}` (and `bench/results/latest.png`; "
                "git-ignored, regenerated by each `--all`)."]
    out += ["", README_END]
    return "\n".join(out)


def update_readme(results: list[dict], png: Path | None) -> str:
    block = readme_block(results, png)
    text = README.read_text() if README.exists() else ""
    if README_BEGIN in text and README_END in text:
        head, rest = text.split(README_BEGIN, 1)
        text = head + block + rest.split(README_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## Latest figures\n\n" + block + "\n"
    README.write_text(text)
    return f"README: {README} (latest figures table updated)"


# ---------------------------------------------------------------- running scenarios

def ratio_label(args) -> str:
    return {"baseline": "sixgate/nginx cpu-per-request ratio",
            "plugins": "sixgate+plugins/nginx cpu-per-request ratio",
            "paced": "sixgate added latency over direct",
            "routes10k": f"{routes_label(args.routes)}/sixgate cpu-per-request ratio",
            "workers": f"sixgate {max(worker_counts(args))}-worker/"
                       f"{min(worker_counts(args))}-worker throughput ratio"}[args.scenario]


def run_scenario(args, tools: dict[str, str], tmp: Path, trees: list[Tree],
                 stamp: str) -> dict:
    """Run one scenario; returns its result (printing progress, not the report)."""
    tmp.mkdir(parents=True, exist_ok=True)
    tmp.chmod(0o755)  # nginx workers run as nobody when we are root
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    bench = Bench(args, tools, tmp, trees)
    legs = scenario_legs(args, trees)
    argv_used = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    result: dict = {"scenario": args.scenario, "what": SCENARIOS[args.scenario],
                    "started": started, "host": host_info(tools), "args": argv_used,
                    "trees": [{"label": t.label, "path": str(t.path), "rev": t.rev}
                              for t in trees],
                    "legs": [asdict(leg) for leg in legs]}
    path, headers = request_of(args)
    print(f"scenario {args.scenario}: {SCENARIOS[args.scenario]}; GET {path}"
          + "".join(f" [{k}: {v}]" for k, v in headers.items())
          + f"; proxy cores {args.proxy_cores}, wrk cores {args.load_cores}, upstream cores "
            f"{args.upstream_cores}", flush=True)
    if args.layout_note:
        print(args.layout_note, flush=True)
    try:
        legs = bench.prepare(legs)
        runs = bench.run(legs)
        if args.profile:
            prim = [leg for leg in legs if leg.base == primary_leg(args)]
            result["profile"] = bench.profile(prim, stamp)
    except Skip as e:
        result.update(skipped=str(e), ok=True, notes=bench.notes)
        return result
    except BenchError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        result.update(error=str(e).splitlines()[0], ok=False, notes=bench.notes)
        return result
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop cleanup
        old_term = signal.signal(signal.SIGTERM, signal.SIG_IGN)
        everyone = descendants({os.getpid()}, proc_table()) - {os.getpid()}
        kill_all(everyone)
        reap(everyone)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, old_term)
    summary = summarize(legs, runs)
    labels = [t.label for t in trees]
    result.update(ok=all(r["ok"] for r in runs), summary=summary, runs=runs,
                  extras=bench.extras, notes=bench.notes,
                  figures={label: figures(args, summary, bench.extras, label)
                           for label in labels},
                  finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    return result


def report_lines(args, result: dict, trees: list[Tree]) -> list[str]:
    if result.get("skipped"):
        return [f"SKIPPED {result['scenario']}: {result['skipped']}",
                f"{ratio_label(args)}: n/a (skipped)"]
    if result.get("error"):
        return [f"{ratio_label(args)}: n/a (failed: {result['error']})"]
    lines = [f"note: {note}" for note in result.get("notes", ())]
    if not result["ok"]:
        lines.append("some runs had wrk errors (non-2xx or socket errors) or error lines in the "
                     "gateway's log: marked FAILED")
    lines += table(args, result["summary"])
    for leg, prof in (result.get("profile") or {}).items():
        lines.append(f"py-spy profile of {leg} ({prof['samples']} event-loop samples, "
                     f"{prof['file']}); top own time:")
        lines += [f"  {share:5.1f}%  {frame[:150]}" for frame, share in prof["own"][:12]]
        lines.append("  top inclusive time:")
        lines += [f"  {share:5.1f}%  {frame[:150]}" for frame, share in prof["inclusive"][:15]]
    for t in trees:
        f = result["figures"][t.label]
        if len(trees) > 1:
            lines.append(f"-- {t.label} ({t.rev[:12] or 'working tree'}):")
        lines += f["lines"]
        for tg in f["targets"]:
            met = {True: "met", False: "NOT met", None: ""}[tg["met"]]
            lines.append(f"target: {tg['name']}: {tg['shown']} ({tg['goal']}) {met}".rstrip())
        lines.append(f["ratio_line"])
    if len(trees) > 1:
        lines += compare_lines(args, result["summary"], trees)
    return lines


def write_results(payload: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


# ---------------------------------------------------------------- command line

CORE_OPTS = ("proxy_cores", "load_cores", "upstream_cores")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", choices=list(SCENARIOS), default=None,
                   help="what to measure (default baseline): " + "; ".join(
                       f"{k}: {v}" for k, v in SCENARIOS.items()))
    p.add_argument("--paced", action="store_true", help="same as --scenario paced")
    p.add_argument("--all", action="store_true",
                   help="run every scenario, then update bench/README.md's latest-figures table "
                        "and write bench/results/latest.png")
    p.add_argument("--compare", nargs=2, metavar=("REV_A", "REV_B"),
                   help="run sixgate from two git revisions (checked out with `git worktree add` "
                        "into the temp dir; `.` = this working tree) in the same interleaved "
                        "rounds, same venv; prints both and the delta")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--duration", type=int, default=10, help="measured seconds per run (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="warm-up seconds per run (default 3)")
    p.add_argument("--connections", type=int, help="wrk -c (default 50; 10 when paced)")
    p.add_argument("--threads", type=int,
                   help="wrk -t (default 1; workers scenario: one per load core)")
    p.add_argument("--proxy-cores", help="cores of the proxy under test (default 0)")
    p.add_argument("--load-cores", help="cores of wrk (default 1)")
    p.add_argument("--upstream-cores", help="cores of the upstream nginx (default 1)")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes of both proxies (sixgate: "
                        "nginx_config.worker_processes; default 1)")
    p.add_argument("--workers-list", default="1,2",
                   help="workers scenario: the worker counts to compare (default 1,2)")
    p.add_argument("--upstream-workers", type=int, default=1,
                   help="worker processes of the upstream nginx (default 1)")
    p.add_argument("--only", choices=["nginx", "sixgate"], help="benchmark one proxy only")
    p.add_argument("--think-ms", default="2-18", help="paced think time range in ms (default 2-18)")
    p.add_argument("--access-log", action="store_true", help="turn on both proxies' access log")
    p.add_argument("--path", default="/api/hello", help="request path (default /api/hello)")
    p.add_argument("--routes", type=int, default=10000,
                   help="routes10k: routes in the table (default 10000)")
    p.add_argument("--hit", choices=routes_gen.KINDS, default="prefix",
                   help="routes10k: the kind of route the request hits (default prefix)")
    p.add_argument("--apply-changes", type=int, default=200,
                   help="routes10k: one-route changes timed in-process (bench/apply_bench.py; "
                        "0: skip; default 200)")
    p.add_argument("--reload-writes", type=int, default=20,
                   help="routes10k: apisix.yaml one-line changes timed until served, per round "
                        "(0: skip; default 20)")
    p.add_argument("--profile", action="store_true",
                   help="after the rounds, one unmeasured pass of the scenario's main sixgate leg "
                        "with py-spy recording its worker (raw stacks under bench/results/)")
    p.add_argument("--sixgate-cmd",
                   help="command that starts sixgate in place of `sixgate start -c {config}` "
                        "({tree}: the source tree when comparing)")
    p.add_argument("--start-timeout", type=float, default=60,
                   help="seconds a proxy gets to answer correctly (default 60)")
    p.add_argument("--json", type=Path,
                   help="results file (default bench/results/<time>-<scenario>.json)")
    p.add_argument("--no-readme", action="store_true",
                   help="with --all: do not update bench/README.md")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs)")
    p.add_argument("-v", "--verbose", action="store_true", help="show commands and wrk output")
    args = p.parse_args(argv)
    if args.paced:
        if args.scenario not in (None, "paced"):
            p.error("--paced is --scenario paced")
        args.scenario = "paced"
    if args.all and args.scenario:
        p.error("--all runs every scenario: leave --scenario out")
    args.scenario = args.scenario or "baseline"
    try:
        ws = worker_counts(args)
    except ValueError:
        p.error("--workers-list: numbers like 1,2,4")
    if not ws or min(ws) < 1:
        p.error("--workers-list: numbers like 1,2,4")
    available = os.sched_getaffinity(0)
    for opt in CORE_OPTS:
        value = getattr(args, opt)
        if value is None:
            continue
        try:
            cores = parse_cores(value)
        except ValueError:
            p.error(f"--{opt.replace('_', '-')}: not a core list like 0 or 0-3 or 0,2")
        if not cores <= available:
            p.error(f"--{opt.replace('_', '-')} {value}: this machine only has "
                    f"cores {sorted(available)}")
    return args


def cores_text(cores: list[int]) -> str:
    return ",".join(map(str, cores))


def scenario_args(args, scenario: str):
    """``args`` resolved for one scenario: its core layout, wrk connections and threads."""
    a = copy.copy(args)
    a.scenario = scenario
    a.paced = scenario == "paced"
    a.layout_note = ""
    avail = sorted(os.sched_getaffinity(0))
    if scenario == "workers" and all(getattr(a, o) is None for o in CORE_OPTS):
        wmax = max(worker_counts(a))
        if len(avail) >= wmax + 2:  # the proxies on their own cores, the rest split
            rest = avail[wmax:]
            half = max(1, len(rest) // 2)
            a.proxy_cores, a.load_cores = cores_text(avail[:wmax]), cores_text(rest[:half])
            a.upstream_cores = cores_text(rest[half:] or rest[:half])
        else:
            every = cores_text(avail)
            a.proxy_cores = a.load_cores = a.upstream_cores = every
            a.layout_note = (f"note: {len(avail)} cores for {wmax} proxy workers + wrk + "
                             "upstream: everything runs unpinned on all cores and competes for "
                             "them (baseline §2.4), so the scaling figure is a floor; on a "
                             "bigger machine give each side its own cores (--proxy-cores "
                             "--load-cores --upstream-cores)")
    a.proxy_cores = a.proxy_cores or "0"
    a.load_cores = a.load_cores or "1"
    a.upstream_cores = a.upstream_cores or "1"
    for opt in CORE_OPTS:
        if not parse_cores(getattr(a, opt)) <= set(avail):
            raise BenchError(f"--{opt.replace('_', '-')} {getattr(a, opt)}: this machine only "
                             f"has cores {avail}")
    if a.connections is None:
        a.connections = 10 if a.paced else 50
    if a.threads is None:
        a.threads = len(parse_cores(a.load_cores)) if scenario == "workers" else 1
        a.threads = min(a.threads, a.connections)
    return a


def main(argv=None) -> int:
    if not sys.platform.startswith("linux"):
        print("proxy_bench needs Linux (/proc, sched_setaffinity)", file=sys.stderr)
        return 2
    args = parse_args(argv)
    tools = ensure_tools()
    if args.only != "nginx" and not args.compare:
        try:
            sixgate_command(args, Path("{config}"))
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
    tmp.chmod(0o755)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    scenarios = list(ALL_ORDER) if args.all else [args.scenario]
    results: list[dict] = []
    all_lines: list[str] = []
    trees = None
    try:
        trees = Trees(args.compare, tmp)
        trees.check()
        for scenario in scenarios:
            sargs = scenario_args(args, scenario)
            if args.all:
                print(f"\n=== {scenario}: {SCENARIOS[scenario]}", flush=True)
            result = run_scenario(sargs, tools, tmp / scenario, trees.list, stamp)
            results.append(result)
            lines = report_lines(sargs, result, trees.list)
            path = (args.json if args.json and not args.all else
                    RESULTS / f"{stamp}-{scenario}.json")
            write_results(result, path)
            if not args.all and result.get("summary"):
                png = path.with_suffix(".png")
                print(make_plot([result], path, png))
            print(f"results: {path}")
            print("\n".join(lines), flush=True)
            all_lines.append(f"{scenario}: {lines[-1]}")
    except BenchError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        everyone = descendants({os.getpid()}, proc_table()) - {os.getpid()}
        kill_all(everyone)
        reap(everyone)
        if trees is not None:
            trees.remove()
        if args.keep_tmp:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, terminate)
    failed = [r["scenario"] for r in results if not r.get("ok")]
    skipped = [r["scenario"] for r in results if r.get("skipped")]
    if args.all:
        path = args.json or RESULTS / f"{stamp}-all.json"
        write_results({"scenarios": results}, path)
        png = RESULTS / f"{stamp}-all.png"
        print(f"\nresults: {path}")
        msg = make_plot(results, path, png)
        print(msg)
        if png.exists():
            shutil.copyfile(png, RESULTS / "latest.png")
        if not args.compare and not args.only and not args.no_readme:
            print(update_readme(results, png if png.exists() else None))
        print("\n".join(all_lines))
        print(f"all scenarios: {len(results) - len(failed) - len(skipped)} ok, "
              f"{len(skipped)} skipped, {len(failed)} failed"
              + (f" ({', '.join(failed)})" if failed else ""))
        return 1 if failed else 0
    if skipped:
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
