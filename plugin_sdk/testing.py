"""The plugin test kit: a real gateway and a recording upstream, in a few lines of pytest.

Installed with sixgate and registered under the ``pytest11`` entry point, so any project with
sixgate installed gets these fixtures without a ``conftest.py``::

    def test_teapot(sixgate):
        sixgate.add_route("/tea", plugins={"acme-teapot": {}})
        r = sixgate.get("/tea?brew=tea")
        assert r.status == 418 and r.headers["X-Brew"] == "tea"
        sixgate.upstream.assert_not_received()

        r = sixgate.get("/tea?brew=coffee")
        assert r.status == 200
        sixgate.upstream.assert_received(path="/tea", query="brew=coffee")

Fixtures:

* ``sixgate`` — a :class:`GatewayHarness`: a sixgate gateway running in this process (its own
  thread and event loop) on a real listening socket, with a :class:`MockUpstream` as the
  default upstream of every route. Options per test with the ``sixgate`` marker::

      @pytest.mark.sixgate(plugins=["acme-teapot"], plugin_dirs=["plugins"],
                           plugin_attr={"acme-teapot": {"pot": "big"}})

  ``plugins`` defaults to every installed plugin (entry-point group ``sixgate.plugins``);
  relative ``plugin_dirs`` are taken from the test's working directory.
* ``sixgate_upstream`` — the :class:`MockUpstream` alone.
* ``sixgate_factory`` — ``sixgate_factory(**options)`` makes more gateways (same options).

Unit-level helpers that need no gateway: :func:`make_context` builds the request context the
kernel hands to hooks, :func:`run_phase` runs one phase of a plugin on it with a validated conf.

The kit needs sixgate (the ``kernel`` package) installed; it imports it lazily, when a fixture
or helper is used, so ``plugin_sdk`` itself never imports the kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import inspect
import itertools
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any

import pytest

from .consumer import Consumer
from .headers import Headers
from .hooks import PHASES

__all__ = [
    "ConfigRejected",
    "GatewayHarness",
    "HttpResult",
    "MockUpstream",
    "ReceivedRequest",
    "ReloadResult",
    "make_context",
    "run_phase",
    "run_phase_async",
]

ENTRY_POINT_GROUP = "sixgate.plugins"


class ConfigRejected(AssertionError):
    """The gateway refused a config the test asked for (the message lists every problem)."""


# ---------------------------------------------------------------------------------------------
# the recording upstream
# ---------------------------------------------------------------------------------------------


@dataclass
class ReceivedRequest:
    """One request as the upstream received it."""

    method: str
    path: str
    """The path, percent-decoded."""
    raw_path: str
    """The request-target as sent (path and query, encoded)."""
    query: str
    headers: Headers
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class _Answer:
    status: int = 200
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class MockUpstream:
    """A real HTTP server (aiohttp, own thread) that records every request it receives.

    By default it answers ``200`` with a JSON document describing the request (method, path,
    query, headers, body); :meth:`respond` changes the answer, for every path or one path.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.requests: list[ReceivedRequest] = []
        self._answers: dict[str | None, _Answer] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- configuring ------------------------------------------------------------------------
    def respond(
        self,
        status: int = 200,
        body: str | bytes | Mapping[str, Any] | list[Any] | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        path: str | None = None,
        delay: float = 0.0,
    ) -> None:
        """Answer ``status``/``body``/``headers`` (to requests for ``path`` only, when given)
        after ``delay`` seconds. ``body=None`` keeps the JSON echo."""
        if isinstance(body, str):
            data: bytes | None = body.encode()
        elif isinstance(body, Mapping | list):
            data = json.dumps(body).encode()
        else:
            data = body
        with self._lock:
            self._answers[path] = _Answer(status, data, dict(headers or {}), delay)

    @property
    def node(self) -> dict[str, Any]:
        """An APISIX ``upstream`` object pointing at this server."""
        return {"type": "roundrobin", "nodes": {f"{self.host}:{self.port}": 1}}

    # -- assertions -------------------------------------------------------------------------
    @property
    def last(self) -> ReceivedRequest:
        """The most recent request (``AssertionError`` when none arrived)."""
        with self._lock:
            if not self.requests:
                raise AssertionError("the upstream received no request")
            return self.requests[-1]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def assert_not_received(self) -> None:
        with self._lock:
            if self.requests:
                got = ", ".join(f"{r.method} {r.raw_path}" for r in self.requests)
                raise AssertionError(f"the upstream received {len(self.requests)} request(s): "
                                     f"{got}")

    def assert_received(
        self,
        *,
        method: str | None = None,
        path: str | None = None,
        query: str | None = None,
        headers: Mapping[str, str | None] | None = None,
        body: bytes | str | None = None,
        count: int | None = None,
    ) -> ReceivedRequest:
        """Check the last request (and, with ``count``, how many arrived); returns it.

        ``headers`` must all be present with those values; a ``None`` value means the header
        must be absent.
        """
        if count is not None and len(self.requests) != count:
            raise AssertionError(f"expected {count} upstream request(s), got "
                                 f"{len(self.requests)}")
        req = self.last
        problems = []
        if method is not None and req.method != method:
            problems.append(f"method {req.method!r} != {method!r}")
        if path is not None and req.path != path:
            problems.append(f"path {req.path!r} != {path!r}")
        if query is not None and req.query != query:
            problems.append(f"query {req.query!r} != {query!r}")
        for name, value in (headers or {}).items():
            got = req.headers.get(name)
            if got != value:
                problems.append(f"header {name}: {got!r} != {value!r}")
        if body is not None:
            want = body.encode() if isinstance(body, str) else body
            if req.body != want:
                problems.append(f"body {req.body[:200]!r} != {want[:200]!r}")
        if problems:
            raise AssertionError("upstream request " + f"{req.method} {req.raw_path}: "
                                 + "; ".join(problems))
        return req

    # -- lifecycle --------------------------------------------------------------------------
    async def _handle(self, request: Any) -> Any:
        from aiohttp import web

        body = await request.read()
        rec = ReceivedRequest(
            method=request.method,
            path=request.path,
            raw_path=request.raw_path,
            query=request.query_string,
            headers=Headers(list(request.headers.items())),
            body=body,
        )
        with self._lock:
            self.requests.append(rec)
            answer = self._answers.get(request.path) or self._answers.get(None) or _Answer()
        if answer.delay:
            await asyncio.sleep(answer.delay)
        data = answer.body
        headers = dict(answer.headers)
        if data is None:
            data = json.dumps({
                "method": rec.method, "path": rec.path, "raw_path": rec.raw_path,
                "query": rec.query, "headers": rec.headers.items(),
                "body": body.decode("latin-1"),
            }).encode()
            headers.setdefault("Content-Type", "application/json")
        return web.Response(status=answer.status, body=data, headers=headers)

    def start(self) -> MockUpstream:
        from aiohttp import web

        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application(client_max_size=64 * 1024 * 1024)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            runner = web.AppRunner(app, access_log=None)
            try:
                loop.run_until_complete(runner.setup())
                sock = socket.socket()
                sock.bind((self.host, 0))
                self.port = sock.getsockname()[1]
                site = web.SockSite(runner, sock)
                loop.run_until_complete(site.start())
            except BaseException as err:  # reported to the starting thread
                errors.append(err)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="sixgate-mock-upstream", daemon=True)
        self._thread.start()
        ready.wait(10)
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)
        self._loop = self._thread = None


# ---------------------------------------------------------------------------------------------
# the in-process gateway
# ---------------------------------------------------------------------------------------------


@dataclass
class HttpResult:
    """A response the gateway sent."""

    status: int
    headers: Headers
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class ReloadResult:
    """The outcome of one plugin (re)load."""

    ok: bool
    """False: the new plugin generation was refused; the previous one keeps serving."""
    trigger: str
    generation: int
    errors: list[str]


def installed_plugins(group: str = ENTRY_POINT_GROUP) -> list[str]:
    """Names of every plugin installed through entry points."""
    from importlib.metadata import entry_points

    return sorted({ep.name for ep in entry_points(group=group)})


_NAME_RE = re.compile(r"""^name\s*(?::\s*\w+\s*)?=\s*["']([^"']+)["']""", re.M)
_route_ids = itertools.count(1)


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class GatewayHarness:
    """A sixgate gateway in this process, driven from a test.

    Routes are written to its standalone ``apisix.yaml`` and applied before the call returns
    (a config the gateway refuses raises :class:`ConfigRejected`). Requests go through a real
    socket. Plugin files live in :attr:`plugin_dir` (listed in ``apisix.plugin_dirs``) and are
    hot-reloaded by the gateway's own file watcher.
    """

    def __init__(
        self,
        workdir: Path,
        upstream: MockUpstream | None = None,
        *,
        plugins: list[str] | None = None,
        plugin_dirs: Iterable[str | Path] = (),
        plugin_attr: Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.dir = Path(workdir)
        self.conf_dir = self.dir / "conf"
        self.plugin_dir = self.dir / "plugins"
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        self.upstream = upstream
        self.plugins = list(plugins) if plugins is not None else installed_plugins()
        self.plugin_dirs = [str(self.plugin_dir), *(str(Path(d).resolve()) for d in plugin_dirs)]
        self.plugin_attr = dict(plugin_attr or {})
        self.extra_config = dict(config or {})
        self.doc: dict[str, list[dict[str, Any]]] = {"routes": [], "global_rules": []}
        self.port = 0
        self._gateway: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._capture = _Capture()

    # -- lifecycle --------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def gateway(self) -> Any:
        """The kernel's ``Gateway`` object (for introspection; the API may change)."""
        return self._gateway

    def _write_config(self) -> None:
        import yaml

        cfg: dict[str, Any] = {
            "apisix": {"node_listen": [{"ip": "127.0.0.1", "port": 9080}],
                       "enable_ipv6": False, "plugin_dirs": self.plugin_dirs,
                       "enable_admin": False},
            "deployment": {"role": "data_plane", "role_data_plane": {"config_provider": "yaml"}},
            "nginx_config": {"error_log_level": "info",
                             "http": {"enable_access_log": False}},
            "plugins": self.plugins,
            "plugin_attr": self.plugin_attr,
        }
        for key, value in self.extra_config.items():
            if isinstance(value, dict) and isinstance(cfg.get(key), dict):
                cfg[key] = {**cfg[key], **value}
            else:
                cfg[key] = value
        _atomic_write(self.conf_dir / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))

    def start(self) -> GatewayHarness:
        """Start the gateway (the fixtures do this for you)."""
        from kernel.config import load_config
        from kernel.gateway import Gateway, bind_socket

        self._write_config()
        _atomic_write(self.conf_dir / "apisix.yaml", "routes: []\n#END\n")
        for name in ("sixgate", "kernel"):
            logging.getLogger(name).addHandler(self._capture)
        ready: Future[None] = Future()

        async def main() -> None:
            try:
                cfg = load_config(self.conf_dir / "config.yaml")
                self._gateway = Gateway(cfg)
                sock = bind_socket("127.0.0.1", 0, reuse_port=False)
                self.port = sock.getsockname()[1]
                self._stop = asyncio.Event()
                await self._gateway.start([sock])
            except BaseException as err:
                ready.set_exception(err)
                return
            ready.set_result(None)
            await self._stop.wait()
            await self._gateway.stop(2.0)

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(main())
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="sixgate-test-gateway", daemon=True)
        self._thread.start()
        ready.result(30)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)
        for name in ("sixgate", "kernel"):
            logging.getLogger(name).removeHandler(self._capture)
        self._thread = None

    def call(self, coro: Any, timeout: float = 30.0) -> Any:
        """Run a coroutine on the gateway's event loop and return its result."""
        assert self._loop is not None, "gateway not started"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def logs(self, level: int = logging.DEBUG) -> str:
        """Everything the gateway logged so far (one line per record, tracebacks included)."""
        fmt = logging.Formatter("%(levelname)s %(name)s: %(message)s")
        return "\n".join(fmt.format(r) for r in self._capture.records if r.levelno >= level)

    # -- configuration ----------------------------------------------------------------------
    def apply(self, doc: Mapping[str, Any]) -> None:
        """Replace the whole standalone config (``routes``, ``services``, ``upstreams``,
        ``global_rules``, ``plugin_configs``, ...) and wait until it is live."""
        import yaml

        path = self.conf_dir / "apisix.yaml"
        previous = path.read_text()
        _atomic_write(path, yaml.safe_dump(dict(doc), sort_keys=False) + "#END\n")

        async def check() -> list[Any]:
            return list(self._gateway.store.check())

        problems = self.call(check())
        if problems:
            _atomic_write(path, previous)
            self.call(self._gateway.store.refresh())
            raise ConfigRejected("the gateway refused the config:\n"
                                 + "\n".join(str(p) for p in problems))
        self.call(self._gateway.store.refresh())
        self.doc = {k: list(v) for k, v in doc.items()}

    def add_route(
        self,
        uri: str = "/*",
        plugins: Mapping[str, Any] | None = None,
        *,
        id: str | None = None,
        upstream: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> str:
        """Add (or replace, same ``id``) a route proxying to :attr:`upstream` unless
        ``upstream`` (or ``upstream_id``/``service_id`` in ``fields``) says otherwise;
        returns its id. Raises :class:`ConfigRejected` when the gateway refuses it."""
        rid = str(id) if id is not None else f"r{next(_route_ids)}"
        route: dict[str, Any] = {"id": rid, "uri": uri, **fields}
        if plugins:
            route["plugins"] = dict(plugins)
        if upstream is not None:
            route["upstream"] = dict(upstream)
        elif "upstream_id" not in fields and "service_id" not in fields and self.upstream:
            route["upstream"] = self.upstream.node
        doc = {k: list(v) for k, v in self.doc.items()}
        doc["routes"] = [r for r in doc.get("routes", []) if str(r.get("id")) != rid] + [route]
        self.apply(doc)
        return rid

    def set_plugin_metadata(self, plugin: str, metadata: Mapping[str, Any] | None) -> None:
        """Set (``None``: remove) the ``plugin_metadata`` of ``plugin``, as ``PUT
        /apisix/admin/plugin_metadata/<plugin>`` does, and wait until it is live. Raises
        :class:`ConfigRejected` when the plugin is not loaded or its ``metadata_schema``
        refuses it (as the Admin API would)."""
        from kernel.plugins.manager import check_conf

        if metadata is not None:
            info = self._gateway.registry.get(plugin)
            if info is None:
                raise ConfigRejected(f"invalid plugin name: {plugin}")
            err = check_conf(info, dict(metadata), "metadata")
            if err is not None:
                raise ConfigRejected(f"invalid configuration: {err}")
        doc = {k: list(v) for k, v in self.doc.items()}
        items = [m for m in doc.get("plugin_metadata", []) if str(m.get("id")) != plugin]
        if metadata is not None:
            items.append({**dict(metadata), "id": plugin})
        doc["plugin_metadata"] = items
        self.apply(doc)

    def remove_route(self, rid: str) -> None:
        doc = {k: list(v) for k, v in self.doc.items()}
        doc["routes"] = [r for r in doc.get("routes", []) if str(r.get("id")) != str(rid)]
        self.apply(doc)

    def add_global_rule(self, plugins: Mapping[str, Any], *, id: str | None = None) -> str:
        gid = str(id) if id is not None else f"g{next(_route_ids)}"
        doc = {k: list(v) for k, v in self.doc.items()}
        rules = [g for g in doc.get("global_rules", []) if str(g.get("id")) != gid]
        doc["global_rules"] = [*rules, {"id": gid, "plugins": dict(plugins)}]
        self.apply(doc)
        return gid

    def add_consumer(
        self,
        username: str,
        plugins: Mapping[str, Any] | None = None,
        *,
        group_id: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> str:
        """Add (or replace) a consumer, as ``PUT /apisix/admin/consumers`` does; returns its
        username. ``plugins`` holds its credentials (``{"key-auth": {"key": "k1"}}``) and the
        plugins merged over a route once an auth plugin identified it."""
        item: dict[str, Any] = {"username": username, "plugins": dict(plugins or {})}
        if group_id is not None:
            item["group_id"] = group_id
        if labels:
            item["labels"] = dict(labels)
        self._put_item("consumers", "username", username, item)
        return username

    def add_credential(self, username: str, cred_id: str, plugins: Mapping[str, Any]) -> str:
        """Add a credential of consumer ``username``
        (``/apisix/admin/consumers/<username>/credentials/<cred_id>``)."""
        ident = f"{username}/credentials/{cred_id}"
        self._put_item("consumers", "id", ident, {"id": ident, "plugins": dict(plugins)})
        return cred_id

    def add_consumer_group(self, gid: str, plugins: Mapping[str, Any]) -> str:
        """Add (or replace) a consumer group whose ``plugins`` its consumers inherit."""
        self._put_item("consumer_groups", "id", gid, {"id": gid, "plugins": dict(plugins)})
        return gid

    def _put_item(self, collection: str, key: str, value: str, item: dict[str, Any]) -> None:
        doc = {k: list(v) for k, v in self.doc.items()}
        kept = [i for i in doc.get(collection, []) if str(i.get(key)) != value]
        doc[collection] = [*kept, item]
        self.apply(doc)

    # -- requests ---------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | str | None = None,
        json_body: Any = None,
        timeout: float = 10.0,
    ) -> HttpResult:
        """Send one request through the gateway's listening socket."""
        hdrs = dict(headers or {})
        if json_body is not None:
            body = json.dumps(json_body)
            hdrs.setdefault("Content-Type", "application/json")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=hdrs)
            r = conn.getresponse()
            return HttpResult(r.status, Headers(r.getheaders()), r.read())
        finally:
            conn.close()

    def get(self, path: str, **kw: Any) -> HttpResult:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> HttpResult:
        return self.request("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> HttpResult:
        return self.request("PUT", path, **kw)

    def delete(self, path: str, **kw: Any) -> HttpResult:
        return self.request("DELETE", path, **kw)

    # -- plugins ----------------------------------------------------------------------------
    def plugin_status(self) -> dict[str, Any]:
        """What ``sixgate plugins status`` shows for this gateway."""
        result: dict[str, Any] = self._gateway.plugin_status.as_dict()
        return result

    def _reload_result(self) -> ReloadResult:
        last = self._gateway.plugin_status.last
        return ReloadResult(last.ok, last.trigger, last.generation, list(last.errors))

    def wait_for_reload(self, attempts_before: int, timeout: float = 5.0) -> ReloadResult:
        """Wait until a plugin load attempt after ``attempts_before`` finished."""
        deadline = time.monotonic() + timeout
        status = self._gateway.plugin_status
        watcher = self._gateway.plugin_watcher
        while status.attempts <= attempts_before or (watcher is not None and watcher.pending()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no plugin reload within {timeout}s")
            time.sleep(0.01)
        return self._reload_result()

    def edit_plugin(
        self,
        path: str | Path,
        source: str | None = None,
        *,
        replace: tuple[str, str] | None = None,
        timeout: float = 5.0,
    ) -> ReloadResult:
        """Write a plugin source file (all of ``source``, or ``replace=(old, new)`` in the
        current text) and wait until the gateway's watcher reloaded it. The result says
        whether the new version is live (``ok``) or was refused (``errors``)."""
        path = Path(path)
        if not path.is_absolute():
            path = self.plugin_dir / path
        if replace is not None:
            text = path.read_text()
            if replace[0] not in text:
                raise ValueError(f"{replace[0]!r} not in {path}")
            source = text.replace(replace[0], replace[1])
        if source is None:
            raise ValueError("give source or replace")
        before = self._gateway.plugin_status.attempts
        _atomic_write(path, source)
        return self.wait_for_reload(before, timeout)

    def write_plugin(self, filename: str, source: str, *, timeout: float = 5.0) -> ReloadResult:
        """Add a plugin module to :attr:`plugin_dir`, enable it (its ``name``) and reload."""
        match = _NAME_RE.search(source)
        name = match.group(1) if match else None
        if name is None or name in self.plugins:
            return self.edit_plugin(filename, source, timeout=timeout)
        _atomic_write(self.plugin_dir / filename, source)
        return self.reload_plugins(plugins=[*self.plugins, name], timeout=timeout)

    def reload_plugins(
        self,
        *,
        plugins: list[str] | None = None,
        plugin_attr: Mapping[str, Any] | None = None,
        timeout: float = 10.0,
    ) -> ReloadResult:
        """What ``PUT /apisix/admin/plugins/reload`` does: re-read config.yaml (after setting
        ``plugins`` / ``plugin_attr`` in it), rescan entry points, reload."""
        if plugins is not None:
            self.plugins = list(plugins)
        if plugin_attr is not None:
            self.plugin_attr = dict(plugin_attr)
        self._write_config()
        before = self._gateway.plugin_status.attempts
        self.call(self._gateway.reload_from_disk(), timeout)
        return self.wait_for_reload(before, timeout)

    def run_phase(
        self, plugin: str, phase: str, conf: Mapping[str, Any] | None = None,
        ctx: Any = None, **ctx_args: Any,
    ) -> Any:
        """:func:`run_phase` with the plugin as this gateway loaded it (``plugin_attr``,
        ``init`` applied)."""
        info = self._gateway.registry.get(plugin)
        if info is None:
            raise KeyError(f"plugin {plugin!r} is not loaded")
        return run_phase(info.module, phase, conf, ctx, **ctx_args)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# one phase on a built context
# ---------------------------------------------------------------------------------------------


class _Clock:
    def time(self) -> float:
        return time.monotonic()


class _Connection:
    """The connection facts a request reads (no socket: for unit-level phase runs)."""

    def __init__(self, client_ip: str, server_port: int, scheme: str) -> None:
        self.peer_ip = client_ip
        self.peer_port = 54321
        self.scheme = scheme
        self.server_addr = "127.0.0.1"
        self.server_port = server_port
        self._loop = _Clock()


def make_context(
    method: str = "GET",
    path: str = "/",
    *,
    headers: Mapping[str, str] | list[tuple[str, str]] | None = None,
    body: bytes | str = b"",
    client_ip: str = "127.0.0.1",
    host: str | None = None,
    scheme: str = "http",
    server_port: int = 9080,
    route: Mapping[str, Any] | None = None,
    service: Mapping[str, Any] | None = None,
    consumer: Consumer | None = None,
    consumers: Iterable[Consumer] = (),
    status: int = 200,
    response_headers: Mapping[str, str] | None = None,
    plugin_metadata: Mapping[str, Mapping[str, Any]] | None = None,
) -> Any:
    """The kernel's request context for ``method path`` (``path`` may carry ``?query``), as
    hooks get it: ``ctx.var``, ``ctx.request``, ``ctx.upstream``, ``ctx.response``, ...

    ``status``/``response_headers`` preset ``ctx.response`` for ``header_filter`` tests.
    ``plugin_metadata`` (``plugin name -> metadata``) is what ``ctx.plugin_metadata`` gives
    each plugin (:func:`run_phase` validates it and fills the defaults of its
    ``metadata_schema``). ``ctx.plugin_data``, ``ctx.log`` and ``ctx.plugin_metadata`` belong
    to the plugin :func:`run_phase` runs; one context passed to several ``run_phase`` calls
    keeps each plugin's ``plugin_data``, as one request does. ``consumers`` is what
    ``ctx.consumers`` looks callers up in (a :class:`~plugin_sdk.Consumer` with a
    ``credential_id`` is one of its owner's credentials); ``consumer`` presets
    ``ctx.consumer``.
    """
    from kernel.consumers import directory_of
    from kernel.context import RequestContext
    from kernel.server import HttpRequest

    items = list(headers.items()) if isinstance(headers, Mapping) else list(headers or [])
    if host is None:
        host = next((v for k, v in items if k.lower() == "host"), "localhost")
    if not any(k.lower() == "host" for k, _ in items):
        items.insert(0, ("Host", host))
    raw_path, _, query = path.partition("?")
    from urllib.parse import unquote

    req = HttpRequest(_Connection(client_ip, server_port, scheme), time.monotonic())  # type: ignore[arg-type]
    req.method = method.upper()
    req.raw_uri = path
    req.path = unquote(raw_path) or "/"
    req.query_string = query
    req.version = "1.1"
    req.keep_alive = True
    req.raw_headers = [(k.encode("latin-1"), str(v).encode("latin-1")) for k, v in items]
    req.bytes_received = 0
    req.host_header = host
    data = body.encode() if isinstance(body, str) else body
    req._body_cache = data
    ctx = RequestContext(req, host.split(":")[0].lower())
    ctx.route = route
    ctx.route_id = str(route.get("id")) if route and route.get("id") is not None else None
    ctx.service = service
    ctx.consumer = consumer
    ctx.consumers = directory_of(consumers)
    ctx.status = status
    if plugin_metadata is not None:  # checked against each plugin's schema by run_phase
        ctx.plugin_metadata_map = {str(k): v for k, v in plugin_metadata.items()}
    if response_headers:
        for k, v in response_headers.items():
            ctx.response.headers.add(k, v)
    return ctx


def _resolve_plugin(plugin: ModuleType | str) -> ModuleType:
    if isinstance(plugin, ModuleType):
        return plugin
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == plugin:
            module = ep.load()
            assert isinstance(module, ModuleType)
            return module
    raise KeyError(f"no installed plugin named {plugin!r}")


def _prepare(plugin: ModuleType | str, phase: str, conf: Mapping[str, Any] | None) -> Any:
    from kernel.plugins.manager import PluginRegistry, prepare_conf

    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r} (one of {', '.join(PHASES)})")
    module = _resolve_plugin(plugin)
    info = PluginRegistry([module]).get(module.name)
    assert info is not None
    if phase not in info.phases:
        raise ValueError(f"plugin {info.name} has no {phase} hook")
    filled, err = prepare_conf(info, dict(conf or {}))
    if err is not None:
        raise ConfigRejected(f"failed to check the configuration of plugin {info.name} "
                             f"err: {err}")
    func, is_async = info.phases[phase]
    return func, filled, (info, phase, is_async)


def _bind(ctx: Any, func: Any, filled: Any, binding: Any) -> None:
    """Make ``ctx`` run ``func`` as the kernel would: as the current step of its plugin (for
    ``ctx.plugin_data``, ``ctx.log``, ``ctx.plugin_metadata``)."""
    from kernel.chain import Step
    from kernel.plugins.manager import prepare_conf

    info, phase, is_async = binding
    if not hasattr(ctx, "step"):
        return  # a context of the plugin author's own making
    ctx.step = Step(plugin=info.name, func=func, conf=filled, is_async=is_async, phase=phase,
                    priority=info.priority)
    given = ctx.plugin_metadata_map
    raw = given.get(info.name)
    if raw is not None and not isinstance(raw, MappingProxyType):  # as a build resolves it
        meta, err = prepare_conf(info, dict(raw), "metadata")
        if err is not None or meta is None:
            raise ConfigRejected(f"invalid plugin_metadata of plugin {info.name}: {err}")
        ctx.plugin_metadata_map = {**given, info.name: MappingProxyType(meta)}


async def run_phase_async(
    plugin: ModuleType | str, phase: str, conf: Mapping[str, Any] | None = None,
    ctx: Any = None, **ctx_args: Any,
) -> Any:
    """As :func:`run_phase`, for ``async`` tests."""
    func, filled, binding = _prepare(plugin, phase, conf)
    ctx = ctx if ctx is not None else make_context(**ctx_args)
    _bind(ctx, func, filled, binding)
    result = func(ctx, filled)
    if inspect.isawaitable(result):
        result = await result
    return result


def run_phase(
    plugin: ModuleType | str, phase: str, conf: Mapping[str, Any] | None = None,
    ctx: Any = None, **ctx_args: Any,
) -> Any:
    """Run one phase hook of ``plugin`` (its module, or its installed name) and return what it
    returned (a :class:`~plugin_sdk.Response` or ``None``).

    ``conf`` is validated against the plugin's schema and filled with defaults first, as the
    gateway does (an invalid conf raises :class:`ConfigRejected`). ``ctx`` defaults to
    ``make_context(**ctx_args)``; pass your own to inspect it afterwards (``ctx.upstream``,
    ``ctx.response``, ``ctx.var``). Async hooks are run to completion; inside a running event
    loop use :func:`run_phase_async`.
    """
    func, filled, binding = _prepare(plugin, phase, conf)
    ctx = ctx if ctx is not None else make_context(**ctx_args)
    _bind(ctx, func, filled, binding)
    result = func(ctx, filled)
    if inspect.isawaitable(result):
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(_await(result))
        close = getattr(result, "close", None)
        if close is not None:
            close()
        raise RuntimeError("run_phase() inside a running event loop: use run_phase_async()")
    return result


async def _await(awaitable: Any) -> Any:
    return await awaitable


# ---------------------------------------------------------------------------------------------
# pytest wiring
# ---------------------------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    # the kernel's shared dicts / HTTP client, for plugin modules imported by tests
    with contextlib.suppress(ImportError):
        import kernel.plugins.runtime  # noqa: F401
    config.addinivalue_line(
        "markers",
        "sixgate(plugins=None, plugin_dirs=(), plugin_attr=None, config=None): options of the "
        "sixgate fixture's gateway (plugin_sdk.testing)",
    )


@pytest.fixture
def sixgate_upstream() -> Iterator[MockUpstream]:
    """A recording HTTP upstream (see :class:`MockUpstream`)."""
    up = MockUpstream().start()
    yield up
    up.stop()


@pytest.fixture
def sixgate_factory(
    tmp_path: Path, sixgate_upstream: MockUpstream
) -> Iterator[Callable[..., GatewayHarness]]:
    """``sixgate_factory(plugins=..., plugin_dirs=..., plugin_attr=..., config=...)`` starts
    one more in-process gateway proxying to ``sixgate_upstream``."""
    started: list[GatewayHarness] = []

    def make(**options: Any) -> GatewayHarness:
        harness = GatewayHarness(tmp_path / f"sixgate{len(started)}", sixgate_upstream,
                                 **options)
        started.append(harness)
        return harness.start()

    yield make
    for harness in reversed(started):
        harness.stop()


@pytest.fixture
def sixgate(
    request: pytest.FixtureRequest, sixgate_factory: Callable[..., GatewayHarness]
) -> GatewayHarness:
    """An in-process gateway with a recording upstream (see :class:`GatewayHarness`)."""
    marker = request.node.get_closest_marker("sixgate")
    options = dict(marker.kwargs) if marker is not None else {}
    return sixgate_factory(**options)
