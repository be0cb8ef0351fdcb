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
from types import MappingProxyType
from typing import Any

from kernel import schemas
from kernel.chain import EMPTY_CHAIN, Chain, compile_chain, merge_plugins, overlay, plaintext_conf
from kernel.consumers import EMPTY_DIRECTORY, ConsumerDirectory, build_directory
from kernel.plugins.manager import PluginRegistry, check_conf, prepare_conf
from kernel.router import Router, RouteSpec
from kernel.store.base import COLLECTIONS, Problem, Snapshot, item_key, moved_items
from kernel.tls import EMPTY_SSL_TABLE, SslTable, TlsSettings, UpstreamTls
from kernel.tls.build import DEFAULT_SETTINGS, build_ssls, client_cert_users, plaintext_ssl
from kernel.upstream.connection import PoolSettings
from kernel.upstream.override import UpstreamTable
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
    own_chain: Chain = EMPTY_CHAIN
    """The route's merged plugins without the global rules (what a consumer's overlay)."""
    consumer_chains: dict[int, tuple[Chain, Chain]] = field(default_factory=dict)
    """``id(consumer chain) -> (consumer chain, merged chain)``: made on first use."""

    def with_consumer(self, consumer_chain: Chain, global_chain: Chain) -> Chain:
        """The chain of this route once a consumer with ``consumer_chain`` is attached: the
        global rules, then the route's plugins with the consumer's merged over them. Merged
        once per (route, consumer generation), then reused."""
        cache = self.consumer_chains
        hit = cache.get(id(consumer_chain))
        if hit is not None and hit[0] is consumer_chain:
            return hit[1]
        if len(cache) >= _CONSUMER_CHAINS_KEPT:
            cache.clear()
        merged = combine(global_chain, overlay(self.own_chain, consumer_chain))
        cache[id(consumer_chain)] = (consumer_chain, merged)
        return merged


_CONSUMER_CHAINS_KEPT = 1024


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
    """Upstreams by id (an :class:`UpstreamTable` once built): what ``upstream_id`` refers to,
    and what requests resolve ``ctx.upstream.set_upstream(upstream_id=...)`` in."""
    global_chain: Chain
    registry: PluginRegistry
    snapshot: Snapshot
    built_at: float = field(default_factory=time.time)
    errors: tuple[str, ...] = ()
    cache: Any = None
    """The :class:`BuildCache` the next build starts from."""
    plugin_metadata: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """plugin name -> its ``plugin_metadata`` (without ``id``, validated against the plugin's
    ``metadata_schema``, defaults filled, read-only): what ``ctx.plugin_metadata`` gives."""
    consumers: ConsumerDirectory = EMPTY_DIRECTORY
    """What ``ctx.consumers`` gives: lookups for auth plugins, per-consumer plugin chains."""
    ssls: SslTable = EMPTY_SSL_TABLE
    """The compiled ssl objects and their SNI index (:mod:`kernel.tls`): what the HTTPS
    listener's SNI callback reads at each handshake."""


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
    if collection == "plugin_metadata":
        info = registry.get(str(item.get("id")))
        if info is not None:  # metadata of a plugin not loaded here is kept, unused
            conf = {k: v for k, v in item.items() if k != "id"}
            err_msg = check_conf(info, conf, "metadata")
            if err_msg is not None:
                out.append(("", f"invalid plugin_metadata of plugin [{info.name}]: {err_msg}"))
        return out
    plugins = item.get("plugins")
    # a consumer's (or credential's) confs are checked as the Admin API checks them: against
    # the plugin's consumer_schema when it has one (key-auth's required "key", ...)
    schema_type = "consumer" if collection == "consumers" else "route"
    if isinstance(plugins, Mapping):
        for name, conf in plugins.items():
            info = registry.get(name)
            if info is None:
                out.append((f".plugins.{name}", f"unknown plugin [{name}]"))
                continue
            err_msg = check_conf(info, plaintext_conf(info, conf, registry), schema_type)
            if err_msg is not None:
                out.append((
                    f".plugins.{name}",
                    f"failed to check the configuration of plugin {name} err: {err_msg}",
                ))
    return out


class SnapshotValidator:
    """Validates snapshots, re-checking only items that changed since the last call.

    Items are recognised by identity first (an unchanged item handed over again as the same
    object costs nothing), then by key and value; results are reused while the plugin
    registry is the same object.
    """

    def __init__(self, ssl_keyring: Any = None) -> None:
        self._ssl_keyring = ssl_keyring
        """ssl private keys stored encrypted are decrypted with it before they are checked"""
        self._registry: PluginRegistry | None = None
        self._version: str | None = None
        self._items: dict[str, tuple[Any, ...] | None] = {}
        self._raws: dict[str, dict[str, Any]] = {}
        self._found: dict[str, dict[str, list[tuple[str, str]]]] = {}
        """collection -> key -> the problems of that item (empty list: none)"""
        self._bad: dict[str, set[str]] = {}
        """collection -> keys of the items with problems"""

    def __call__(self, snapshot: Snapshot, registry: PluginRegistry) -> list[Problem]:
        if registry is not self._registry:
            self._registry, self._items, self._raws, self._found, self._bad = (
                registry, {}, {}, {}, {})  # fmt: skip
        problems: list[Problem] = []
        for collection in COLLECTIONS:
            diff = _diff(collection, snapshot, self._version, self._items.get(collection),
                         self._raws.get(collection), take=True)  # fmt: skip
            self._items[collection], self._raws[collection] = diff.items, diff.raws
            found = self._found.get(collection, {})
            bad = self._bad.get(collection, set())
            if diff.changed or diff.removed:
                found, bad = dict(found), set(bad)
                for key in diff.removed:
                    found.pop(key, None)
                    bad.discard(key)
                for key, item in diff.changed.items():
                    if collection == "ssls":
                        item = plaintext_ssl(item, self._ssl_keyring)
                    found[key] = item_problems(collection, item, registry)
                    if found[key]:
                        bad.add(key)
                    else:
                        bad.discard(key)
                self._found[collection], self._bad[collection] = found, bad
            if bad:
                for index, item in enumerate(snapshot.items(collection)):
                    for path, message in found.get(item_key(collection, item), ()):
                        problems.append(
                            Problem("", None, f"{collection}[{index}]{path}", message)
                        )
        self._version = snapshot.version
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

    Items are recognised by identity first (stores hand unchanged items over as the same
    objects, so finding what changed costs a few C-level dict operations), then by key and
    value. Only changed items, and the routes depending on them (:attr:`dependents`), are
    compiled again; the router is derived with :meth:`Router.updated`. An upstream keeps its
    runtime (balancer position, counters) while its configuration stays the same.
    """

    registry: PluginRegistry | None = None
    pool: PoolSettings | None = None
    router_kind: str = ""
    router: Router | None = None
    consumed: bool = False
    """A cache seeds one build: that build takes its private tables over (moving is what keeps
    a one-route change from copying 10,000-entry tables). A consumed cache -- its build
    failed, or someone builds from it twice -- makes the next build start from scratch."""
    version: str = ""
    """The version of the snapshot built."""
    items: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    """collection -> the snapshot's items (absent when the build used the snapshot's delta)"""
    raws: dict[str, dict[str, Any]] = field(default_factory=dict)
    """collection -> key -> item"""
    upstreams: dict[str, UpstreamRuntime] = field(default_factory=dict)
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    """services with schema defaults applied"""
    service_upstreams: dict[str, UpstreamRuntime] = field(default_factory=dict)
    global_rules: Any = None
    global_chain: Chain = EMPTY_CHAIN
    global_errors: tuple[str, ...] = ()
    routes: dict[str, tuple[CompiledRoute | None, RouteSpec | None]] = field(default_factory=dict)
    """route id -> (compiled route, router entry); ``None``s when not loaded"""
    route_errors: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """route id -> what went wrong compiling it (routes without errors are absent)"""
    compiled: dict[str, CompiledRoute] = field(default_factory=dict)
    route_deps: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    dependents: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    """``("upstream" | "service" | "plugin_config", id)`` -> ids of the routes referring to it"""
    plugin_metadata: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    consumers: ConsumerDirectory | None = None
    tls: TlsSettings | None = None
    ssls: SslTable | None = None


@dataclass(slots=True)
class _Diff:
    """How one collection of the snapshot differs from the previous build's."""

    items: tuple[Any, ...] | None
    """the snapshot's items (``None`` when found from the snapshot's delta)"""
    raws: dict[str, Any]
    changed: dict[str, Any]
    """key -> item, for items added or whose value changed"""
    removed: set[str]
    new_objects: int
    """how many items are not the previous build's objects (a full re-read: all of them)"""
    reordered: bool = False
    """items kept from the previous snapshot changed their relative order"""
    added: set[str] = field(default_factory=set)
    """keys that were not there before (new items, as opposed to changed ones)"""


def _diff(
    collection: str,
    snapshot: Snapshot,
    seen_version: str | None,
    old_items: tuple[Any, ...] | None,
    old_raws: dict[str, Any] | None,
    *,
    take: bool = False,
) -> _Diff:
    """What changed in ``collection`` since the snapshot ``seen_version``, of which the caller
    kept ``old_items`` (the items, ``None`` when it came from a delta) and
    ``old_raws`` (key -> item; ``None``: nothing seen, everything is new). From the snapshot's
    delta when it derives from that snapshot (O(changes)), else by item identity (C-level dict
    work), else by key and value. ``take``: ``old_raws`` may be updated in place (its owner
    is done with it) instead of copied."""
    if old_raws is None:
        items = snapshot.items(collection)
        raws = {item_key(collection, raw): raw for raw in items}
        return _Diff(items, raws, dict(raws), set(), len(items), False, set(raws))
    delta = snapshot.delta
    if delta is not None and delta.base == seen_version:
        delta_items = delta.changed.get(collection)
        if not delta_items:
            return _Diff(None, old_raws, {}, set(), 0)
        raws = old_raws if take else dict(old_raws)
        changed: dict[str, Any] = {}
        removed: set[str] = set()
        added: set[str] = set()
        for key, item in delta_items.items():
            before = raws.get(key)
            if item is None:
                if before is not None:
                    del raws[key]
                    removed.add(key)
            else:
                raws[key] = item
                if before is None:
                    added.add(key)
                if before is None or before != item:
                    changed[key] = item
        return _Diff(None, raws, changed, removed, len(delta_items), False, added)
    items = snapshot.items(collection)
    if old_items is None:  # what was seen came from a delta: compare by key
        raws, changed = {}, {}
        fresh = 0
        for raw in items:
            key = item_key(collection, raw)
            raws[key] = raw
            before = old_raws.get(key)
            if before is not raw:
                fresh += 1
                if before is None or before != raw:
                    changed[key] = raw
        return _Diff(items, raws, changed, old_raws.keys() - raws.keys(), fresh, False,
                     {k for k in changed if k not in old_raws})
    arrived, left, reordered = moved_items(items, old_items)
    if reordered and not arrived:  # hand-reordered items, nothing else
        return _Diff(items, old_raws, {}, set(), 0, True)
    if not arrived and not left:
        return _Diff(items, old_raws, {}, set(), 0)
    came = [(item_key(collection, raw), raw) for raw in arrived]
    before_of = {key: old_raws.get(key) for key, _raw in came}  # read before any change
    raws = old_raws if take else dict(old_raws)
    gone = {item_key(collection, item) for item in left}
    for key in gone:
        raws.pop(key, None)
    changed = {}
    for key, raw in came:
        raws[key] = raw
        before = before_of[key]
        if before is None or before != raw:
            changed[key] = raw
    added = {key for key, before in before_of.items() if before is None}
    return _Diff(items, raws, changed, {k for k in gone if k not in raws}, len(arrived),
                 reordered, added)


def _diff_since(collection: str, snapshot: Snapshot, previous: BuildCache | None) -> _Diff:
    """:func:`_diff` against what the build ``previous`` saw."""
    if previous is None:
        return _diff(collection, snapshot, None, None, None)
    return _diff(collection, snapshot, previous.version, previous.items.get(collection),
                 previous.raws.get(collection), take=True)  # fmt: skip


class _DependencyIndex:
    """Which routes refer to which upstream, service and plugin config, both ways; takes the
    previous build's tables over (see :attr:`BuildCache.consumed`)."""

    def __init__(self, previous: BuildCache | None) -> None:
        self.route_deps = previous.route_deps if previous is not None else {}
        self.dependents = previous.dependents if previous is not None else {}

    def record(self, rid: str, deps: tuple[tuple[str, str], ...]) -> None:
        """Record that route ``rid`` now depends on ``deps`` (``()``: on nothing / removed)."""
        old = self.route_deps.get(rid, ())
        if old == deps:
            return
        for dep in old:
            if dep not in deps:
                self.dependents.setdefault(dep, set()).discard(rid)
        for dep in deps:
            self.dependents.setdefault(dep, set()).add(rid)
        if deps:
            self.route_deps[rid] = deps
        else:
            self.route_deps.pop(rid, None)



def _route_deps(raw: Mapping[str, Any], services: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """What a route's compiled form depends on besides itself and the global rules."""
    deps: list[tuple[str, str]] = []
    sid, pcid, uid = raw.get("service_id"), raw.get("plugin_config_id"), raw.get("upstream_id")
    if sid is not None:
        deps.append(("service", str(sid)))
        service = services.get(str(sid))
        if service is not None and service.get("upstream_id") is not None:
            deps.append(("upstream", str(service["upstream_id"])))
    if pcid is not None:
        deps.append(("plugin_config", str(pcid)))
    if uid is not None:
        deps.append(("upstream", str(uid)))
    return tuple(deps)


def build_state(
    snapshot: Snapshot,
    registry: PluginRegistry,
    *,
    router_kind: str = "radixtree_host_uri",
    pool: PoolSettings | None = None,
    generation: int = 1,
    previous: BuildCache | None = None,
    tls: TlsSettings | None = None,
) -> GatewayState:
    """Compile ``snapshot`` into a new state. Pure: touches nothing live (``previous`` is
    read, never changed).

    ``previous`` (the live state's ``cache``) lets the build do only what changed: an Admin
    write of one route compiles that route and updates the router around it.
    """
    pool = pool or PoolSettings()
    tls = tls or DEFAULT_SETTINGS
    prev = previous
    if prev is None or prev.consumed or prev.registry is not registry or prev.pool != pool or (
        prev.router_kind != router_kind or prev.tls is not tls
    ):
        prev = None
    else:
        prev.consumed = True  # its private tables become this build's
    cache = BuildCache(registry=registry, pool=pool, router_kind=router_kind, tls=tls)
    memo: dict[Any, Any] = {}

    sls = _diff_since("ssls", snapshot, prev)  # TLS (kernel/tls): changed ssl objects only
    ssls = build_ssls(sls.changed, sls.removed, prev.ssls if prev is not None else None, tls)
    up_tls = UpstreamTls(tls, ssls.by_id)
    cert_ids = set(sls.changed) | sls.removed if prev is not None else set()
    ups = _diff_since("upstreams", snapshot, prev)
    ups.changed.update(client_cert_users(cert_ids, ups.raws, inline=False))
    # with this build's pool settings: what upstreams plugins choose per request compile with
    upstreams = UpstreamTable(prev.upstreams if prev is not None else (), pool)
    for key in ups.removed:
        upstreams.pop(key, None)
    for key, raw in ups.changed.items():
        upstreams[key] = UpstreamRuntime(schemas.with_defaults("upstream", raw), pool, key,
                                         tls=up_tls)
    svc = _diff_since("services", snapshot, prev)
    svc.changed.update(client_cert_users(cert_ids, svc.raws, inline=True))
    services = prev.services if prev is not None else {}
    service_upstreams = prev.service_upstreams if prev is not None else {}
    for key in (*svc.removed, *svc.changed):
        services.pop(key, None)
        service_upstreams.pop(key, None)
    for key, raw in svc.changed.items():
        services[key] = schemas.with_defaults("service", raw)
    pcs = _diff_since("plugin_configs", snapshot, prev)
    pmd = _diff_since("plugin_metadata", snapshot, prev)
    plugin_metadata = dict(prev.plugin_metadata) if prev is not None else {}
    for key in (*pmd.removed, *pmd.changed):
        plugin_metadata.pop(key, None)
    for key, raw in pmd.changed.items():
        resolved = _metadata(registry, key, raw)
        if resolved is not None:
            plugin_metadata[key] = resolved

    global_raw = snapshot.items("global_rules")
    global_changed = prev is None or not _same(prev.global_rules, global_raw)
    if global_changed:
        rules = {item_key("global_rules", g): g for g in global_raw}
        global_chain, chain_errs = compile_chain(_global_plugins(rules), registry, memo)
        global_errors = tuple(f"global_rules: {e}" for e in chain_errs)
        for message in global_errors:
            log.error("%s", message)
    else:
        assert prev is not None
        global_chain, global_errors = prev.global_chain, prev.global_errors
    cache.global_rules, cache.global_chain, cache.global_errors = (
        global_raw, global_chain, global_errors)  # fmt: skip

    rts = _diff_since("routes", snapshot, prev)
    if prev is None or global_changed:
        dirty = set(rts.raws)
    else:
        dirty = set(rts.changed)
        for kind, diff in (("upstream", ups), ("service", svc), ("plugin_config", pcs)):
            for key in (*diff.changed, *diff.removed):
                dirty.update(prev.dependents.get((kind, key), ()))
        dirty.update(client_cert_users(cert_ids, rts.raws, inline=True))
        dirty.intersection_update(rts.raws)
    entries = prev.routes if prev is not None else {}  # taken over, like the rest below
    route_errors = prev.route_errors if prev is not None else {}
    compiled_routes = dict(prev.compiled) if prev is not None else {}
    deps_index = _DependencyIndex(prev)

    build = _Build(services, pcs.raws, upstreams, service_upstreams, registry, global_chain,
                   pool, memo, [], up_tls)  # fmt: skip
    router_changes: dict[str, RouteSpec | None] = {}
    for rid in rts.removed:
        hit = entries.pop(rid, None)
        compiled_routes.pop(rid, None)
        route_errors.pop(rid, None)
        deps_index.record(rid, ())
        if hit is not None and hit[1] is not None:
            router_changes[rid] = None
    for rid in dirty:
        raw = rts.raws[rid]
        build.errors = []
        compiled, spec = _compile_entry(rid, raw, build)
        for message in build.errors:
            log.error("%s", message)
        old_spec = entries[rid][1] if rid in entries else None
        entries[rid] = (compiled, spec)
        if build.errors:
            route_errors[rid] = tuple(build.errors)
        else:
            route_errors.pop(rid, None)
        deps_index.record(rid, _route_deps(raw, svc.raws))
        if compiled is not None and spec is not None:
            compiled_routes[rid] = compiled
        else:
            compiled_routes.pop(rid, None)
        if spec is not old_spec:
            router_changes[rid] = spec

    items = snapshot.items("routes")
    router = _next_router(prev, rts, items, router_changes, entries, router_kind)
    cache.router = router
    cache.version = snapshot.version
    diffs = {"upstreams": ups, "services": svc, "plugin_configs": pcs, "plugin_metadata": pmd,
             "routes": rts, "ssls": sls}  # fmt: skip
    cache.items = {
        name: diff.items
        for name, diff in diffs.items()
        if diff.items is not None
    }
    cache.raws = {name: diff.raws for name, diff in diffs.items()}
    cache.plugin_metadata = plugin_metadata
    cache.ssls = ssls
    consumers = cache.consumers = build_directory(
        snapshot, registry, prev.consumers if prev is not None else None)
    cache.upstreams, cache.services, cache.service_upstreams = (
        upstreams, services, service_upstreams)  # fmt: skip
    cache.routes, cache.compiled, cache.route_errors = entries, compiled_routes, route_errors
    cache.route_deps, cache.dependents = deps_index.route_deps, deps_index.dependents
    errors = list(global_errors)
    for errs_of in route_errors.values():
        errors.extend(errs_of)
    return GatewayState(
        generation=generation,
        version=snapshot.version,
        router=router,
        routes=compiled_routes,
        upstreams=upstreams,
        global_chain=global_chain,
        registry=registry,
        snapshot=snapshot,
        errors=tuple(errors),
        cache=cache,
        plugin_metadata=plugin_metadata,
        consumers=consumers,
        ssls=ssls,
    )


def _metadata(
    registry: PluginRegistry, name: str, raw: Mapping[str, Any]
) -> Mapping[str, Any] | None:
    """The ``plugin_metadata`` item of plugin ``name`` as hooks see it (``None``: the plugin
    is not loaded here, or the item does not fit its ``metadata_schema``, which is logged)."""
    info = registry.get(name)
    if info is None:
        return None
    filled, err = prepare_conf(info, {k: v for k, v in raw.items() if k != "id"}, "metadata")
    if err is not None or filled is None:
        log.error("plugin_metadata of plugin [%s] ignored: %s", name, err)
        return None
    return MappingProxyType(filled)


def _next_router(
    prev: BuildCache | None,
    rts: _Diff,
    items: tuple[dict[str, Any], ...],
    changes: dict[str, RouteSpec | None],
    entries: Mapping[str, tuple[CompiledRoute | None, RouteSpec | None]],
    kind: str,
) -> Router:
    """The router for this build: derived from the previous one when few routes changed and
    the snapshot kept its order (changed routes in place, new ones last), else rebuilt."""
    old = prev.router if prev is not None else None
    if rts.reordered:  # load order decides ties: rebuild in the new order
        old_router, old = old, None
    else:
        old_router = old
    if old is not None and not changes:
        return old
    if old is not None and len(changes) <= max(64, len(items) // 8) and rts.new_objects <= max(
        64, len(items) // 8
    ):
        new_keys = rts.added
        tail = items[len(items) - len(new_keys):] if new_keys else ()
        tail_keys = [item_key("routes", raw) for raw in tail]
        if set(tail_keys) == new_keys:
            ordered = {k: changes[k] for k in changes if k not in new_keys}
            ordered.update((k, changes[k]) for k in tail_keys if k in changes)
            try:
                return old.updated(ordered)
            except ValueError:
                pass
    specs: list[RouteSpec] = []
    seen: set[str] = set()
    for raw in items:
        rid = item_key("routes", raw)
        if rid in seen:
            continue
        seen.add(rid)
        spec = entries[rid][1] if rid in entries else None
        if spec is not None:
            specs.append(spec)
    return Router(specs, kind, old_router)


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
    tls: UpstreamTls | None = None


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
        # the route's own copy already holds the upstream schema's defaults (the route schema
        # fills its inline upstream): no second copy per route
        upstream = UpstreamRuntime(route["upstream"], pool, tls=b.tls)
    elif service is not None:
        sid = str(service.get("id"))
        if service.get("upstream") is not None:
            upstream = service_upstreams.get(sid)
            if upstream is None:
                upstream = service_upstreams[sid] = UpstreamRuntime(
                    service["upstream"], pool, tls=b.tls  # defaults filled with the service's
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
        own_chain=chain,
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
