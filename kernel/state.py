"""The gateway state: one immutable snapshot of everything the request path needs.

:func:`build_state` turns a store :class:`~kernel.store.base.Snapshot` plus the plugin registry
into a :class:`GatewayState` (defaults applied, router built, chains compiled, upstreams
compiled) beside the live one; :class:`StateHolder.apply` swaps it in with one assignment.
Every config change (file edit, etcd event, Admin write, plugin reload) ends in ``apply``.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kernel import schemas
from kernel.chain import EMPTY_CHAIN, Chain, compile_chain, merge_plugins
from kernel.plugins.manager import PluginRegistry, check_conf
from kernel.router import Router, RouteSpec
from kernel.store.base import COLLECTIONS, Problem, Snapshot, item_key
from kernel.upstream.connection import PoolSettings
from kernel.upstream.runtime import Timeouts, UpstreamRuntime
from plugin_sdk import ExprError, compile_expr

log = logging.getLogger("sixgate.state")

# Collections validated against a resource schema (others are accepted as they are for now).
_KINDS = {
    "routes": "route",
    "services": "service",
    "upstreams": "upstream",
    "consumers": "consumer",
    "consumer_groups": "consumer_group",
    "plugin_configs": "plugin_config",
    "global_rules": "global_rule",
    "ssls": "ssl",
    "protos": "proto",
    "stream_routes": "stream_route",
}
_PROPERTY = re.compile(r'property "([^"]+)" validation failed: ')


@dataclass(slots=True)
class CompiledRoute:
    """A route ready for the request path (the router's ``payload``)."""

    id: str
    conf: Mapping[str, Any]
    service: Mapping[str, Any] | None
    chain: Chain
    upstream: UpstreamRuntime | None
    timeouts: Timeouts | None
    enable_websocket: bool
    fail_status: int = 0
    """Non-zero: answer with this nginx page (missing service 404, plugin_config 503, ...)."""
    fail_reason: str = ""
    direct: bool = False
    """Eligible for the callback path (:mod:`kernel.direct`): only synchronous plugins, no
    body filter or ``_meta.filter``, a fixed-address plain-HTTP upstream, no WebSocket."""


def is_direct(chain: Chain, upstream: UpstreamRuntime | None, websocket: bool) -> bool:
    """Whether a route can run on the callback path (decided once, at compile time)."""
    if upstream is None or upstream.has_domain or upstream.picker is None:
        return False
    if upstream.ssl_context is not None or websocket:
        return False
    if chain.has_filters or chain.body_filter or chain.header_filter_async or chain.log_async:
        return False
    return not any(
        step.is_async for step in chain.rewrite + chain.access + chain.before_proxy
    )


@dataclass(frozen=True, slots=True)
class GatewayState:
    """Everything one request reads, frozen for its whole lifetime."""

    generation: int
    version: str
    router: Router
    routes: Mapping[str, CompiledRoute]
    upstreams: Mapping[str, UpstreamRuntime]
    global_chain: Chain
    registry: PluginRegistry
    snapshot: Snapshot
    built_at: float = field(default_factory=time.time)
    errors: tuple[str, ...] = ()
    cache: Any = None
    """The :class:`BuildCache` the next build starts from."""


def combine(first: Chain, second: Chain) -> Chain:
    """``first``'s steps before ``second``'s in every phase (global rules, then the route)."""
    if first.empty:
        return second
    if second.empty:
        return first
    return Chain(
        rewrite=first.rewrite + second.rewrite,
        access=first.access + second.access,
        before_proxy=first.before_proxy + second.before_proxy,
        header_filter=first.header_filter + second.header_filter,
        body_filter=first.body_filter + second.body_filter,
        log=first.log + second.log,
        plugins=first.plugins + second.plugins,
        confs={**first.confs, **second.confs},
        empty=False,
        has_filters=first.has_filters or second.has_filters,
        header_filter_async=first.header_filter_async or second.header_filter_async,
        body_filter_async=first.body_filter_async or second.body_filter_async,
        log_async=first.log_async or second.log_async,
    )


def _same(a: Any, b: Any) -> bool:
    return a is b or a == b


def _field_path(prefix: str, message: str) -> tuple[str, str]:
    """Turn ``property "a" validation failed: property "b" ...: msg`` into ``prefix.a.b``."""
    body = message.removeprefix("invalid configuration: ")
    path = prefix
    while True:
        m = _PROPERTY.match(body)
        if m is None:
            break
        path += "." + m.group(1)
        body = body[m.end() :]
    return path, message


def item_problems(
    collection: str, item: Mapping[str, Any], registry: PluginRegistry
) -> list[tuple[str, str]]:
    """``(field path below the item, message)`` for each problem of one item."""
    kind = _KINDS.get(collection)
    if kind == "consumer" and "/credentials/" in str(item.get("id", "")):
        kind = "credential"  # ``<username>/credentials/<id>`` items (spec §3.1)
    if kind is not None:
        try:
            schemas.validate_resource(kind, item)
        except schemas.ValidationError as err:
            path, message = _field_path("", err.message)
            return [(path, message)]
    out: list[tuple[str, str]] = []
    plugins = item.get("plugins")
    if isinstance(plugins, Mapping):
        for name, conf in plugins.items():
            info = registry.get(name)
            if info is None:
                out.append((f".plugins.{name}", f"unknown plugin [{name}]"))
                continue
            err_msg = check_conf(info, conf)
            if err_msg is not None:
                out.append((
                    f".plugins.{name}",
                    f"failed to check the configuration of plugin {name} err: {err_msg}",
                ))
    return out


class SnapshotValidator:
    """Validates snapshots, re-checking only items that changed since the last call.

    Results are cached per item key and reused while the item is equal to the one checked and
    the plugin registry is the same object.
    """

    def __init__(self) -> None:
        self._registry: PluginRegistry | None = None
        self._cache: dict[tuple[str, str], tuple[Any, list[tuple[str, str]]]] = {}

    def __call__(self, snapshot: Snapshot, registry: PluginRegistry) -> list[Problem]:
        if registry is not self._registry:
            self._registry, self._cache = registry, {}
        cache: dict[tuple[str, str], tuple[Any, list[tuple[str, str]]]] = {}
        problems: list[Problem] = []
        for collection in COLLECTIONS:
            for index, item in enumerate(snapshot.items(collection)):
                key = (collection, item_key(collection, item))
                hit = self._cache.get(key)
                if hit is not None and _same(hit[0], item):
                    found = hit[1]
                else:
                    found = item_problems(collection, item, registry)
                cache[key] = (item, found)
                for path, message in found:
                    problems.append(Problem("", None, f"{collection}[{index}]{path}", message))
        self._cache = cache
        return problems


def validate_snapshot(snapshot: Snapshot, registry: PluginRegistry) -> list[Problem]:
    """Every problem in ``snapshot``: resource schemas, resource checks and plugin confs."""
    return SnapshotValidator()(snapshot, registry)


def _by_key(snapshot: Snapshot, collection: str, kind: str | None) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for item in snapshot.items(collection):
        out[item_key(collection, item)] = schemas.with_defaults(kind, item) if kind else item
    return out


def _global_plugins(rules: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    dropped: set[str] = set()
    for rule_id, rule in rules.items():
        for name, conf in (rule.get("plugins") or {}).items():
            if name in merged or name in dropped:
                log.error("plugin %s appears in more than one global rule (rule %s): dropped",
                          name, rule_id)
                merged.pop(name, None)
                dropped.add(name)
                continue
            merged[name] = conf
    return merged


@dataclass(slots=True)
class BuildCache:
    """What a build compiled, for the next build to reuse where the input did not change.

    Keyed by item id and checked by value (``is`` first, then ``==``), so an edit to one route
    recompiles that route only, and an upstream keeps its runtime (balancer position, counters)
    while its configuration stays the same.
    """

    registry: PluginRegistry | None = None
    pool: PoolSettings | None = None
    router_kind: str = ""
    router: Router | None = None
    upstreams: dict[str, tuple[Any, UpstreamRuntime]] = field(default_factory=dict)
    global_rules: Any = None
    global_chain: Chain = EMPTY_CHAIN
    routes: dict[str, tuple[tuple[Any, ...], CompiledRoute | None, RouteSpec | None]] = field(
        default_factory=dict
    )


def build_state(
    snapshot: Snapshot,
    registry: PluginRegistry,
    *,
    router_kind: str = "radixtree_host_uri",
    pool: PoolSettings | None = None,
    generation: int = 1,
    previous: BuildCache | None = None,
) -> GatewayState:
    """Compile ``snapshot`` into a new state. Pure: touches nothing live.

    ``previous`` (the live state's ``cache``) lets unchanged routes and upstreams be reused.
    """
    pool = pool or PoolSettings()
    if previous is None or previous.registry is not registry or previous.pool != pool:
        previous = BuildCache()
    cache = BuildCache(registry=registry, pool=pool, router_kind=router_kind)
    errors: list[str] = []
    memo: dict[Any, Any] = {}
    upstreams: dict[str, UpstreamRuntime] = {}
    for raw in snapshot.items("upstreams"):
        up_id = item_key("upstreams", raw)
        up_hit = previous.upstreams.get(up_id)
        runtime = up_hit[1] if up_hit is not None and _same(up_hit[0], raw) else UpstreamRuntime(
            schemas.with_defaults("upstream", raw), pool, up_id
        )
        upstreams[up_id] = runtime
        cache.upstreams[up_id] = (raw, runtime)
    raw_services = {item_key("services", s): s for s in snapshot.items("services")}
    services = {sid: schemas.with_defaults("service", s) for sid, s in raw_services.items()}
    raw_configs = {item_key("plugin_configs", c): c for c in snapshot.items("plugin_configs")}
    global_raw = snapshot.items("global_rules")
    if previous.global_rules is not None and _same(previous.global_rules, global_raw):
        global_chain = previous.global_chain
    else:
        rules = {item_key("global_rules", g): g for g in global_raw}
        global_chain, errs = compile_chain(_global_plugins(rules), registry, memo)
        errors += [f"global_rules: {e}" for e in errs]
    cache.global_rules, cache.global_chain = global_raw, global_chain

    build = _Build(services, raw_configs, upstreams, {}, registry, global_chain, pool, memo,
                   errors)
    specs: list[RouteSpec] = []
    routes: dict[str, CompiledRoute] = {}
    for raw in snapshot.items("routes"):
        rid = item_key("routes", raw)
        sid, pcid, uid = raw.get("service_id"), raw.get("plugin_config_id"), raw.get("upstream_id")
        service_raw = raw_services.get(str(sid)) if sid is not None else None
        deps = (
            raw,
            service_raw,
            raw_configs.get(str(pcid)) if pcid is not None else None,
            upstreams.get(str(uid)) if uid is not None else None,
            upstreams.get(str(service_raw.get("upstream_id")))
            if service_raw is not None and service_raw.get("upstream_id") is not None
            else None,
            global_chain,
        )
        hit = previous.routes.get(rid)
        if hit is not None and hit[0] == deps:  # tuple ==: identity first, then value
            compiled, spec = hit[1], hit[2]
        else:
            compiled, spec = _compile_entry(rid, raw, build)
        cache.routes[rid] = (deps, compiled, spec)
        if compiled is not None and spec is not None:
            routes[rid] = compiled
            specs.append(spec)
    for message in errors:
        log.error("%s", message)
    router = Router(specs, router_kind, previous.router)
    cache.router = router
    return GatewayState(
        generation=generation,
        version=snapshot.version,
        router=router,
        routes=routes,
        upstreams=upstreams,
        global_chain=global_chain,
        registry=registry,
        snapshot=snapshot,
        errors=tuple(errors),
        cache=cache,
    )


@dataclass(slots=True)
class _Build:
    """What compiling one route needs from the rest of the snapshot (one per build)."""

    services: Mapping[str, dict[str, Any]]
    plugin_configs: Mapping[str, dict[str, Any]]
    upstreams: Mapping[str, UpstreamRuntime]
    service_upstreams: dict[str, UpstreamRuntime]
    registry: PluginRegistry
    global_chain: Chain
    pool: PoolSettings
    memo: dict[Any, Any]
    errors: list[str]


def _compile_entry(
    rid: str, raw: dict[str, Any], b: _Build
) -> tuple[CompiledRoute | None, RouteSpec | None]:
    """One route: its compiled form and its router entry (``None``s when not loaded)."""
    route = schemas.with_defaults("route", raw)
    if route.get("status", 1) == 0:
        return None, None
    compiled = _compile_route(rid, route, b)
    errors = b.errors
    if compiled is None:
        return None, None
    service = compiled.service
    hosts = route.get("hosts") or ([route["host"]] if route.get("host") else None)
    if hosts is None and service is not None and service.get("hosts"):
        hosts = service["hosts"]
    remote = route.get("remote_addrs") or (
        [route["remote_addr"]] if route.get("remote_addr") else None
    )
    predicate: Callable[[Any], bool] | None = None
    if route.get("vars"):
        try:
            predicate = compile_expr(route["vars"])
        except ExprError as err:
            errors.append(f"route {rid}: failed to validate the 'vars' expression: {err}")
            return None, None
    spec = RouteSpec(
        id=rid,
        uris=tuple(route.get("uris") or [route["uri"]]),
        methods=frozenset(route["methods"]) if route.get("methods") else None,
        hosts=tuple(hosts) if hosts else None,
        remote_addrs=tuple(remote) if remote else None,
        vars=predicate,
        priority=int(route.get("priority", 0)),
        payload=compiled,
    )
    return compiled, spec


def _compile_route(rid: str, route: dict[str, Any], b: _Build) -> CompiledRoute | None:
    services, plugin_configs, upstreams = b.services, b.plugin_configs, b.upstreams
    service_upstreams, registry, pool, errors = b.service_upstreams, b.registry, b.pool, b.errors
    global_chain, memo = b.global_chain, b.memo
    fail_status, fail_reason = 0, ""
    plugin_config = None
    if route.get("plugin_config_id") is not None:
        plugin_config = plugin_configs.get(str(route["plugin_config_id"]))
        if plugin_config is None:
            fail_status, fail_reason = 503, f"plugin config {route['plugin_config_id']} not found"
    service = None
    if route.get("service_id") is not None:
        service = services.get(str(route["service_id"]))
        if service is None:
            fail_status, fail_reason = 404, f"service {route['service_id']} not found"
    plugins = merge_plugins(
        service.get("plugins") if service else None,
        plugin_config.get("plugins") if plugin_config else None,
        route.get("plugins"),
    )
    chain, errs = compile_chain(plugins, registry, memo)
    if errs:
        errors.extend(f"route {rid}: {e}" for e in errs)
        return None
    upstream: UpstreamRuntime | None = None
    by_id = route.get("upstream_id")
    if by_id is None and route.get("upstream") is None and service is not None:
        by_id = service.get("upstream_id")
    if by_id is not None:
        upstream = upstreams.get(str(by_id))
        if upstream is None:
            fail_status = fail_status or 502
            fail_reason = fail_reason or f"upstream {by_id} not found"
    elif route.get("upstream") is not None:
        upstream = UpstreamRuntime(schemas.with_defaults("upstream", route["upstream"]), pool)
    elif service is not None:
        sid = str(service.get("id"))
        if service.get("upstream") is not None:
            upstream = service_upstreams.get(sid)
            if upstream is None:
                upstream = service_upstreams[sid] = UpstreamRuntime(
                    schemas.with_defaults("upstream", service["upstream"]), pool
                )
    websocket = route.get("enable_websocket")
    if websocket is None and service is not None:
        websocket = service.get("enable_websocket")
    full_chain = combine(global_chain, chain)
    return CompiledRoute(
        id=rid,
        conf=route,
        service=service,
        chain=full_chain,
        upstream=upstream,
        timeouts=Timeouts.from_conf(route.get("timeout")),
        enable_websocket=bool(websocket),
        fail_status=fail_status,
        fail_reason=fail_reason,
        direct=not fail_status and is_direct(full_chain, upstream, bool(websocket)),
    )


class StateHolder:
    """Holds the live :class:`GatewayState`; ``state`` is read once per request."""

    def __init__(self, initial: GatewayState) -> None:
        self.state = initial

    def swap(self, new: GatewayState) -> None:
        self.state = new


def empty_state(registry: PluginRegistry) -> GatewayState:
    """The state before any config was loaded: every request gets 404."""
    return GatewayState(
        generation=0,
        version="empty",
        router=Router([], "radixtree_host_uri"),
        routes={},
        upstreams={},
        global_chain=EMPTY_CHAIN,
        registry=registry,
        snapshot=Snapshot.empty("empty"),
    )
