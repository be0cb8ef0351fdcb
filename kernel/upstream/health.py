"""Upstream health checks (spec §5.6): active probes, passive judgement, the control API view.

One :class:`HealthChecker` per upstream configuration per worker, attached to its
:class:`~kernel.upstream.runtime.UpstreamRuntime` (``runtime.checker``; ``None`` for an upstream
without ``checks``, so the request path pays one attribute test). A runtime lives exactly as
long as its upstream's configuration (``build_state`` keeps it while the conf is unchanged), and
so does its checker. :class:`HealthManager` (one per gateway) starts the checkers of a state
when it is swapped in, stops those the new state no longer has, and carries a replaced
checker's target states over when its ``checks`` did not change (the same resource was only
edited elsewhere).

Target states and counters follow lua-resty-healthcheck (which APISIX uses): four counters
per target (success, http, tcp, timeout); a success resets the failure counters, a failure
resets the success counter; a target reaching a limit takes the reported state; a failure
counted on a healthy target makes it ``mostly_healthy``, a success counted on an unhealthy one
``mostly_unhealthy``; successes are not counted on a ``healthy`` target, failures not on an
``unhealthy`` one; a limit of 0 disables that counter. ``healthy``/``mostly_healthy`` targets
take traffic.

Balancers see health through :class:`HealthPicker`: the checker keeps a frozen set of the
keys of the nodes that take no traffic and a ``version`` bumped when that set changes; the
picker compares one integer per pick and rebuilds its inner picker over the healthy nodes only
when the version moved. When every node is unhealthy, all are used (as APISIX does).

Probe intervals are ``interval`` seconds times :data:`TIME_SCALE` (1.0; tests shorten it,
since the schema only allows whole seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .balancer import Picker, make_picker
from .nodes import Node

if TYPE_CHECKING:
    from kernel.state import GatewayState
    from kernel.upstream.runtime import UpstreamRuntime

__all__ = [
    "HEALTHY",
    "MOSTLY_HEALTHY",
    "MOSTLY_UNHEALTHY",
    "TIME_SCALE",
    "UNHEALTHY",
    "HealthChecker",
    "HealthManager",
    "HealthPicker",
    "checkers_of",
    "health_picker",
    "report",
    "report_for",
]

log = logging.getLogger("sixgate.healthcheck")

TIME_SCALE = 1.0
"""Multiplies the probe intervals (tests only; the schema allows whole seconds)."""

HEALTHY = "healthy"
UNHEALTHY = "unhealthy"
MOSTLY_HEALTHY = "mostly_healthy"
MOSTLY_UNHEALTHY = "mostly_unhealthy"
_UP = frozenset({HEALTHY, MOSTLY_HEALTHY})

_SUCCESS, _HTTP, _TCP, _TIMEOUT = 0, 1, 2, 3
_COUNTER_NAMES = ("SUCCESS", "HTTP", "TCP", "TIMEOUT")
_COUNTER_MAX = 255  # lua-resty-healthcheck keeps 8-bit counters

# defaults of the parts the schema fills only when the enclosing object is present
_ACTIVE_HEALTHY = {"interval": 1, "http_statuses": [200, 302], "successes": 2}
_ACTIVE_UNHEALTHY = {
    "interval": 1,
    "http_statuses": [429, 404, 500, 501, 502, 503, 504, 505],
    "http_failures": 5,
    "tcp_failures": 2,
    "timeouts": 3,
}
_PASSIVE_HEALTHY = {
    "http_statuses": [200, 201, 202, 203, 204, 205, 206, 207, 208, 226,
                      300, 301, 302, 303, 304, 305, 306, 307, 308],
    "successes": 5,
}
_PASSIVE_UNHEALTHY = {
    "http_statuses": [429, 500, 503], "http_failures": 5, "tcp_failures": 2, "timeouts": 7,
}
_STATUS_LINE = re.compile(rb"^HTTP/\d+\.\d+\s+(\d+)", re.IGNORECASE)


class _Rules:
    """The thresholds of one kind of check (active or passive)."""

    __slots__ = ("healthy_statuses", "http_failures", "successes", "tcp_failures", "timeouts",
                 "unhealthy_statuses")

    def __init__(self, conf: Mapping[str, Any], healthy: Mapping[str, Any],
                 unhealthy: Mapping[str, Any]) -> None:
        h = {**healthy, **(conf.get("healthy") or {})}
        u = {**unhealthy, **(conf.get("unhealthy") or {})}
        self.healthy_statuses = frozenset(int(s) for s in h["http_statuses"])
        self.successes = int(h["successes"])
        self.unhealthy_statuses = frozenset(int(s) for s in u["http_statuses"])
        self.http_failures = int(u["http_failures"])
        self.tcp_failures = int(u["tcp_failures"])
        self.timeouts = int(u["timeouts"])


class Target:
    """One checked node: its address, probe settings and health state."""

    __slots__ = ("counters", "host_header", "hostname", "ip", "key", "port", "status")

    def __init__(self, key: tuple[str, int], ip: str, port: int, hostname: str,
                 host_header: str) -> None:
        self.key = key
        self.ip = ip
        self.port = port
        """the probed port (``checks.active.port`` when set, else the node's)"""
        self.hostname = hostname
        self.host_header = host_header
        self.status = HEALTHY
        self.counters = [0, 0, 0, 0]

    @property
    def label(self) -> str:
        return f"{self.hostname}({self.ip}:{self.port})"

    def view(self) -> dict[str, Any]:
        c = self.counters
        return {
            "ip": self.ip,
            "port": self.port,
            "hostname": self.hostname,
            "status": self.status,
            "counter": {"success": c[_SUCCESS], "http_failure": c[_HTTP],
                        "tcp_failure": c[_TCP], "timeout_failure": c[_TIMEOUT]},
        }


def node_key(node: Node) -> tuple[str, int]:
    return (node.host, node.port)


class HealthChecker:
    """Health of one upstream's nodes: probes them (a task, once started) and judges the
    responses and failures the proxy reports."""

    __slots__ = ("_active", "_passive", "_ssl", "_task",
                 "active_conf", "checks", "down", "enabled", "name", "pass_host", "targets",
                 "type", "upstream_host", "version")

    def __init__(self, conf: Mapping[str, Any], nodes: Sequence[Node] = (),
                 name: str = "") -> None:
        checks: Mapping[str, Any] = conf.get("checks") or {}
        self.checks = checks
        self.name = name
        active = dict(checks.get("active") or {})
        self.active_conf = active
        self.type: str = active.get("type", "http")
        self._active = _Rules(active, _ACTIVE_HEALTHY, _ACTIVE_UNHEALTHY)
        passive = checks.get("passive")
        self._passive = (
            _Rules(passive, _PASSIVE_HEALTHY, _PASSIVE_UNHEALTHY) if passive is not None else None
        )
        self.pass_host = conf.get("pass_host", "pass")
        self.upstream_host = conf.get("upstream_host")
        self.enabled = True
        self.targets: dict[tuple[str, int], Target] = {}
        self.down: frozenset[tuple[str, int]] = frozenset()
        """keys (host, port) of the nodes that take no traffic"""
        self.version = 0
        """bumped whenever :attr:`down` changes"""
        self._task: asyncio.Task[None] | None = None
        self._ssl: ssl.SSLContext | None = None
        self.set_nodes(nodes)

    # --- targets ----------------------------------------------------------------------
    def set_nodes(self, nodes: Iterable[Node]) -> None:
        """Check these nodes (resolved addresses); states of nodes kept are kept."""
        active = self.active_conf
        port_override = active.get("port")
        host = active.get("host")
        old = self.targets
        targets: dict[tuple[str, int], Target] = {}
        for node in nodes:
            key = node_key(node)
            if key in targets:
                continue
            target = old.get(key)
            if target is None:
                hostname = host or node.host
                header = None
                if self.pass_host == "rewrite" and self.upstream_host:
                    header = self.upstream_host
                elif self.pass_host == "node" and node.domain:
                    header = node.domain
                target = Target(key, node.host, int(port_override or node.port), hostname,
                                header or hostname)
            targets[key] = target
        self.targets = targets
        self._refresh_down()

    def _refresh_down(self) -> None:
        down = frozenset(k for k, t in self.targets.items() if t.status not in _UP)
        if down != self.down:
            self.down = down
            self.version += 1

    def adopt(self, old: HealthChecker) -> None:
        """Take over the states of ``old``'s targets that this checker also has."""
        for key, target in self.targets.items():
            before = old.targets.get(key)
            if before is not None:
                target.status = before.status
                target.counters = list(before.counters)
        self._refresh_down()

    def is_healthy(self, node: Node) -> bool:
        return node_key(node) not in self.down

    # --- counting (lua-resty-healthcheck's incr_counter) --------------------------------
    def _count(self, target: Target, report: str, limit: int, ctr: int) -> None:
        if limit == 0:
            return
        current = target.status
        if report == current:
            return  # no successes counted on a healthy target, no failures on an unhealthy one
        c = target.counters
        n = c[ctr] = min(c[ctr] + 1, _COUNTER_MAX)
        log.warning("[healthcheck] (upstream#%s) %s %s increment (%d/%d) for '%s'",
                    self.name, report, _COUNTER_NAMES[ctr], n, limit, target.label)
        if ctr == _SUCCESS:
            c[_HTTP] = c[_TCP] = c[_TIMEOUT] = 0
        else:
            c[_SUCCESS] = 0
        new: str | None = None
        if n >= limit:
            new = report
        elif current == HEALTHY and (c[_HTTP] or c[_TCP] or c[_TIMEOUT]):
            new = MOSTLY_HEALTHY
        elif current == UNHEALTHY and c[_SUCCESS]:
            new = MOSTLY_UNHEALTHY
        if new is not None and new != current:
            target.status = new
            log.warning("[healthcheck] (upstream#%s) target '%s' changed from %s to %s",
                        self.name, target.label, current, new)
            if (current in _UP) != (new in _UP):
                self._refresh_down()

    def _http_status(self, target: Target, status: int, rules: _Rules) -> None:
        if status in rules.healthy_statuses:
            self._count(target, HEALTHY, rules.successes, _SUCCESS)
        elif status in rules.unhealthy_statuses or status == 0:
            self._count(target, UNHEALTHY, rules.http_failures, _HTTP)

    # --- passive: called from the proxy -----------------------------------------------
    def report_status(self, node: Node, status: int) -> None:
        """The upstream ``node`` answered with ``status`` (a proxied response's head)."""
        rules = self._passive
        if rules is None or not self.enabled:
            return
        target = self.targets.get((node.host, node.port))
        if target is not None:
            self._http_status(target, status, rules)

    def report_failure(self, node: Node, status: int) -> None:
        """A try on ``node`` failed before a response: ``status`` 504 is a timeout, 502 a
        TCP-level failure (refused, reset, closed); other statuses are not the node's fault."""
        rules = self._passive
        if rules is None or not self.enabled:
            return
        target = self.targets.get((node.host, node.port))
        if target is None:
            return
        if status == 504:
            self._count(target, UNHEALTHY, rules.timeouts, _TIMEOUT)
        elif status == 502:
            self._count(target, UNHEALTHY, rules.tcp_failures, _TCP)

    # --- active probes ----------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    def start(self) -> None:
        """Start probing (on the running loop); a no-op when running or disabled."""
        if (self._task is not None and not self._task.done()) or not self.enabled:
            return
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"sixgate-healthcheck {self.name}"
        )

    def stop(self) -> None:
        """Stop probing (the task is cancelled; :attr:`task` stays for inspection). A runtime
        kept by a later state (a service's upstream whose routes come back) starts again."""
        task = self._task
        if task is not None and not task.done():
            task.cancel()

    async def _run(self) -> None:
        active = self.active_conf
        h_int = max(float((active.get("healthy") or {}).get("interval", 1)), 0.0)
        u_int = max(float((active.get("unhealthy") or {}).get("interval", 1)), 0.0)
        loop = asyncio.get_running_loop()
        now = loop.time()
        next_h = now + h_int * TIME_SCALE if h_int > 0 else float("inf")
        next_u = now + u_int * TIME_SCALE if u_int > 0 else float("inf")
        if next_h == next_u == float("inf"):
            return
        while True:
            await asyncio.sleep(max(min(next_h, next_u) - loop.time(), 0.0))
            now = loop.time()
            batch: list[Target] = []
            if now >= next_h:
                batch += [t for t in self.targets.values() if t.status in _UP]
                next_h = now + h_int * TIME_SCALE
            if now >= next_u:
                batch += [t for t in self.targets.values() if t.status not in _UP]
                next_u = now + u_int * TIME_SCALE
            if batch:
                await self._check(batch)

    async def _check(self, targets: list[Target]) -> None:
        """Probe ``targets`` in ``concurrency`` parallel work packages (as the Lua library)."""
        concurrency = max(int(self.active_conf.get("concurrency") or 10), 1)
        packages = [targets[i::concurrency] for i in range(min(concurrency, len(targets)))]

        async def run(package: list[Target]) -> None:
            for target in package:
                try:
                    await self._probe(target)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("[healthcheck] (upstream#%s) probe of '%s' failed",
                                  self.name, target.label)

        if len(packages) == 1:
            await run(packages[0])
        else:
            await asyncio.gather(*(run(p) for p in packages))

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            if self.active_conf.get("https_verify_certificate", True):
                ctx = ssl.create_default_context()
            else:
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self._ssl = ctx
        return self._ssl

    async def _probe(self, target: Target) -> None:
        if target.key not in self.targets or self.targets[target.key] is not target:
            return  # removed meanwhile
        active = self.active_conf
        rules = self._active
        timeout = float(active.get("timeout", 1))
        kind = self.type
        tls = self._ssl_context() if kind == "https" else None
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    target.ip, target.port, ssl=tls,
                    server_hostname=target.host_header if tls is not None else None,
                )
        except TimeoutError:
            self._count(target, UNHEALTHY, rules.timeouts, _TIMEOUT)
            return
        except (OSError, ssl.SSLError, ValueError) as err:
            log.info("[healthcheck] (upstream#%s) connect to '%s' failed: %s", self.name,
                     target.label, err)
            self._count(target, UNHEALTHY, rules.tcp_failures, _TCP)
            return
        try:
            if kind == "tcp":
                self._count(target, HEALTHY, rules.successes, _SUCCESS)
                return
            writer.write(self._request(target))
            try:
                async with asyncio.timeout(timeout):
                    await writer.drain()
                    line = await reader.readline()
            except TimeoutError:
                self._count(target, UNHEALTHY, rules.timeouts, _TIMEOUT)
                return
            except (OSError, ValueError):
                self._count(target, UNHEALTHY, rules.tcp_failures, _TCP)
                return
            if not line:
                self._count(target, UNHEALTHY, rules.tcp_failures, _TCP)
                return
            m = _STATUS_LINE.match(line)
            if m is None:
                log.error("[healthcheck] (upstream#%s) bad status line from '%s': %r",
                          self.name, target.label, line[:100])
            self._http_status(target, int(m.group(1)) if m else 0, rules)
        finally:
            writer.close()

    def _request(self, target: Target) -> bytes:
        active = self.active_conf
        method = str(active.get("http_method") or "GET")
        path = str(active.get("http_path") or "/")
        body = active.get("http_req_body") or ""
        headers = "".join(f"{h}\r\n" for h in active.get("req_headers") or ())
        head = (f"{method} {path} HTTP/1.1\r\nConnection: close\r\n{headers}"
                f"Host: {target.host_header}\r\n")
        data = body.encode() if isinstance(body, str) else b""
        if data:
            head += f"Content-Length: {len(data)}\r\n"
        return head.encode("latin-1", "replace") + b"\r\n" + data

    # --- the control API's view -------------------------------------------------------
    def view(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type,
                "nodes": [t.view() for t in self.targets.values()]}


# ------------------------------------------------------------------------------- the picker


class HealthPicker:
    """A picker that skips the nodes its checker holds unhealthy (all of them when every node
    is unhealthy). The inner picker is rebuilt only when the checker's version moves."""

    __slots__ = ("_all", "_checker", "_conf", "_cur", "_nodes", "_seen", "done")

    def __init__(self, conf: Mapping[str, Any], nodes: list[Node],
                 checker: HealthChecker) -> None:
        self._conf = conf
        self._nodes = nodes
        self._checker = checker
        self._all = make_picker(conf, nodes)
        self._cur: Picker = self._all
        self._seen = -1
        self.done = self._all.done  # per-type bookkeeping on the nodes: same for any subset

    def _refresh(self) -> None:
        checker = self._checker
        self._seen = checker.version
        down = checker.down
        if not down:
            self._cur = self._all
            return
        up = [n for n in self._nodes if (n.host, n.port) not in down]
        if not up:
            self._cur = self._all  # every node unhealthy: use them all
        elif (self._conf.get("type") or "roundrobin") == "chash":
            # keep the ring (keys of healthy nodes stay put); unhealthy owners are walked past
            self._cur = make_picker(self._conf, self._nodes, checker.is_healthy)
        else:
            self._cur = make_picker(self._conf, up)

    def pick(self, var: Any, tried: set[Node] | None = None) -> Node | None:
        if self._checker.version != self._seen:
            self._refresh()
        return self._cur.pick(var, tried)


def health_picker(conf: Mapping[str, Any], nodes: list[Node],
                  checker: HealthChecker | None) -> Picker:
    """The picker of ``nodes``: health-aware when there is a checker and a choice to make."""
    if checker is None or len(nodes) < 2:
        return make_picker(conf, nodes)
    return HealthPicker(conf, nodes, checker)


# ------------------------------------------------------------------------------- lifecycle


def checkers_of(
    state: GatewayState, prefix: str = "/apisix"
) -> Iterator[tuple[str, UpstreamRuntime]]:
    """``(resource key, runtime)`` for each upstream of ``state`` with a checker, in the
    control API's order: routes' inline upstreams, services' upstreams, upstreams by id
    (``prefix``: the etcd key prefix the names start with)."""
    seen: set[int] = set()
    services: list[tuple[str, UpstreamRuntime]] = []
    for rid, route in state.routes.items():
        up = route.upstream
        if up is None or up.checker is None or not up.inline or id(up) in seen:
            continue
        seen.add(id(up))
        if route.conf.get("upstream") is not None:
            yield f"{prefix}/routes/{rid}", up
        elif route.service is not None:
            services.append((f"{prefix}/services/{route.service.get('id')}", up))
    yield from services
    for uid, up in state.upstreams.items():
        if up.checker is not None and id(up) not in seen:
            seen.add(id(up))
            yield f"{prefix}/upstreams/{uid}", up


class HealthManager:
    """The checkers of the live state (one gateway, one event loop)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        """``False``: ``apisix.disable_upstream_healthcheck`` (no probes, nothing judged)"""
        self._live: dict[HealthChecker, str] = {}

    def checkers(self) -> list[HealthChecker]:
        return list(self._live)

    def sync(self, state: GatewayState) -> None:
        """``state`` was swapped in: name and start its checkers, stop the others (a replaced
        checker with the same ``checks`` hands its target states to its successor)."""
        live: dict[HealthChecker, str] = {}
        for name, up in checkers_of(state):
            checker = up.checker
            assert checker is not None
            live[checker] = name
        previous = self._live
        by_name = {name: c for c, name in previous.items() if c not in live}
        for checker, name in live.items():
            if checker in previous:
                continue
            checker.name = name
            old = by_name.get(name)
            if old is not None and old.checks == checker.checks:
                checker.adopt(old)
        for checker in previous:
            if checker not in live:
                checker.stop()
        self._live = live
        if not self.enabled:
            for checker in live:
                checker.enabled = False
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # started by the next sync on a running loop
        for checker in live:
            checker.start()

    async def stop(self) -> None:
        """Stop every checker and wait for their tasks to end."""
        tasks = []
        for checker in self._live:
            task = checker.task
            checker.stop()
            if task is not None:
                tasks.append(task)
        self._live = {}
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


# ------------------------------------------------------------------------------- reporting


def report(state: GatewayState, prefix: str = "/apisix") -> list[dict[str, Any]]:
    """``GET /v1/healthcheck``: one entry per upstream with a checker
    (``{"name", "type", "nodes": [{ip, port, hostname, status, counter}]}``)."""
    out = []
    for name, up in checkers_of(state, prefix):
        assert up.checker is not None
        entry = up.checker.view()
        entry["name"] = name
        out.append(entry)
    return out


_SRC_TYPES = {"routes": "routes", "services": "services", "upstreams": "upstreams",
              "stream_routes": "stream_routes"}


def report_for(state: GatewayState, src_type: str, src_id: str | None,
               prefix: str = "/apisix") -> tuple[int, dict[str, Any]]:
    """``GET /v1/healthcheck/{src_type}/{src_id}``: ``(status, body)`` with APISIX's error
    messages (400 unknown type, 404 missing id / not found / no checker)."""
    if not src_id:
        return 404, {"error_msg": f"missing src id for src type {src_type}"}
    if src_type not in _SRC_TYPES:
        return 400, {"error_msg": f"invalid src type {src_type}"}
    if state.snapshot.get(src_type, src_id) is None:
        return 404, {"error_msg": f"{src_type}[{src_id}] not found"}
    wanted = f"{prefix}/{src_type}/{src_id}"
    for entry in report(state, prefix):
        if entry["name"] == wanted:
            return 200, entry
    return 404, {"error_msg": f"no checker for {src_type}[{src_id}]"}
