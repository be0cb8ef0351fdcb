"""Compiled per-route plugin chains and the loops that run them.

When a config generation is applied, each route's merged plugin confs become a :class:`Chain`:
per phase, a tuple of :class:`Step` (function, validated conf with defaults, filter,
``_meta.error_response``) in execution order. A request then walks those tuples with a plain
``for`` loop: no pluggy, no lookups by plugin name, cost proportional to the plugins the route
enables.

Per request the server does, once after matching::

    chain = route_chain.for_request(ctx.var)          # resolves _meta.filter once
    resp = await run_request_phase(chain.rewrite, ctx)
    ...
    run_response_phase(chain.header_filter, ctx)      # or the async variant when
                                                      # chain.header_filter_async
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from plugin_sdk.errors import ExprError
from plugin_sdk.expr import compile_expr
from plugin_sdk.hooks import PHASES
from plugin_sdk.response import Response

from .encryption import Keyring, decrypt_plugin_conf
from .plugins.manager import PluginInfo, prepare_conf

if TYPE_CHECKING:
    from .plugins.manager import PluginRegistry

log = logging.getLogger(__name__)

Filter = Callable[[Any], bool]


class PluginConf(dict[str, Any]):
    """The conf object handed to hooks: a plain dict that also supports weak references, so
    per-conf caches (:class:`plugin_sdk.ConfCache`) can drop their entries when a config
    generation is replaced."""

    __slots__ = ("__weakref__",)


Memo = dict[tuple[int, str], tuple[Any, PluginConf | None, str | None]]
"""Per-apply validation memo: ``(id(conf), plugin) -> (conf, hook conf, error)``."""


@dataclass(frozen=True, slots=True)
class Step:
    """One plugin's implementation of one phase on one route."""

    plugin: str
    func: Callable[[Any, Any], Any]
    conf: Any
    is_async: bool
    filter: Filter | None = None
    """Compiled ``_meta.filter``; ``None`` = always run."""
    error_response: Any = None
    """``_meta.error_response``: replaces the body of a >= 400 response this step returns."""
    phase: str = ""
    priority: int = 0
    """Effective priority (``_meta.priority`` or the plugin's)."""
    rank: int = 0
    """The plugin's position in the registry's priority order: breaks priority ties."""


@dataclass(frozen=True, slots=True)
class Chain:
    """The compiled plugin chain of one route (or of the merged global rules)."""

    rewrite: tuple[Step, ...] = ()
    access: tuple[Step, ...] = ()
    before_proxy: tuple[Step, ...] = ()
    header_filter: tuple[Step, ...] = ()
    body_filter: tuple[Step, ...] = ()
    log: tuple[Step, ...] = ()
    plugins: tuple[str, ...] = ()
    """Active plugin names in execution order (whatever phases they implement)."""
    confs: Mapping[str, Any] = field(default_factory=dict)
    """``name -> conf passed to hooks`` for the active plugins (for introspection and merges)."""
    empty: bool = True
    """No step in any phase: the server can skip all plugin work."""
    has_filters: bool = False
    header_filter_async: bool = False
    body_filter_async: bool = False
    log_async: bool = False

    def for_request(self, vars: Any) -> Chain:
        """This chain with every ``_meta.filter`` evaluated once against ``vars``.

        Steps of plugins whose filter is false are dropped from all phases; the others are
        kept with their filter cleared, so the plugin's hooks see one consistent decision for
        the whole request (APISIX evaluates the filter once, when it builds the request's
        plugin list). A filter that raises counts as true (the plugin runs). Chains without
        filters are returned as they are (no cost).
        """
        if not self.has_filters:
            return self
        verdicts: dict[int, bool] = {}
        phases: dict[str, tuple[Step, ...]] = {}
        for phase in PHASES:
            kept: list[Step] = []
            for step in getattr(self, phase):
                flt = step.filter
                if flt is None:
                    kept.append(step)
                    continue
                ok = verdicts.get(id(flt))
                if ok is None:
                    ok = verdicts[id(flt)] = _filter_passes(step, vars)
                if ok:
                    kept.append(replace(step, filter=None))
            phases[phase] = tuple(kept)
        return _make_chain(phases, self.plugins, self.confs, has_filters=False)


EMPTY_CHAIN = Chain()


def _make_chain(
    phases: Mapping[str, tuple[Step, ...]],
    plugins: tuple[str, ...],
    confs: Mapping[str, Any],
    has_filters: bool,
) -> Chain:
    def any_async(steps: tuple[Step, ...]) -> bool:
        return any(s.is_async for s in steps)

    return Chain(
        rewrite=phases.get("rewrite", ()),
        access=phases.get("access", ()),
        before_proxy=phases.get("before_proxy", ()),
        header_filter=phases.get("header_filter", ()),
        body_filter=phases.get("body_filter", ()),
        log=phases.get("log", ()),
        plugins=plugins,
        confs=confs,
        empty=not any(phases.get(p) for p in PHASES),
        has_filters=has_filters,
        header_filter_async=any_async(phases.get("header_filter", ())),
        body_filter_async=any_async(phases.get("body_filter", ())),
        log_async=any_async(phases.get("log", ())),
    )


def merge_plugins(
    service: Mapping[str, Any] | None,
    plugin_config: Mapping[str, Any] | None,
    route: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The plugin confs that apply to a route (spec §4.7), each argument a ``plugins`` object.

    The route's own confs win over its plugin_config's (which only add missing names); the
    result replaces the service's conf per plugin name. Conf objects are shared, not copied.
    """
    merged: dict[str, Any] = dict(service) if service else {}
    if plugin_config:
        merged.update(plugin_config)
    if route:
        merged.update(route)
    return merged


def overlay(base: Chain, top: Chain) -> Chain:
    """``base`` with ``top``'s plugins added, a plugin in both taking ``top``'s steps; every
    phase in execution order (priority, then registry rank). Used for a consumer's plugins
    over a route's (spec §4.7 step 5): compiled once per (route, consumer), then cached."""
    if top.empty:
        return base
    names = set(top.plugins)
    phases: dict[str, tuple[Step, ...]] = {}
    for phase in PHASES:
        steps = [s for s in getattr(base, phase) if s.plugin not in names]
        steps.extend(getattr(top, phase))
        steps.sort(key=lambda s: (-s.priority, s.rank))
        phases[phase] = tuple(steps)
    kept = [n for n in base.plugins if n not in names]
    confs = {n: base.confs[n] for n in kept if n in base.confs}
    confs.update(top.confs)
    return _make_chain(phases, (*kept, *top.plugins), confs,
                       has_filters=base.has_filters or top.has_filters)


def _is_disabled(conf: Mapping[str, Any]) -> bool:
    meta = conf.get("_meta")
    return isinstance(meta, Mapping) and meta.get("disable") is True


def compile_chain(
    plugins: Mapping[str, Any] | None,
    registry: PluginRegistry,
    memo: Memo | None = None,
) -> tuple[Chain, list[str]]:
    """Compile the merged plugin confs of one route into a :class:`Chain`.

    * names not in ``registry`` (not enabled on this node) are skipped silently (spec §6.2);
    * ``_meta.disable: true`` drops the plugin (its conf is not even validated);
    * each conf is validated once and the hooks get a deep copy with defaults filled (the
      plugin's ``encrypt_fields`` decrypted with ``registry.keyring`` first, spec §10.2);
      an invalid conf drops that plugin and adds
      ``failed to check the configuration of plugin <name> err: <msg>`` to the errors;
      a non-object conf adds ``invalid plugin conf <json> for plugin [<name>]``;
    * steps run by ``_meta.priority`` (else the plugin's priority), highest first; ties keep
      the registry's order (priority, then name), so the order never depends on key order;
    * ``_meta.filter`` is compiled here; one that does not compile is reported and ignored
      (the plugin always runs, as APISIX does at runtime).

    ``memo`` (optional, one per config apply) lets confs shared by many routes (a service's)
    be validated once and share one hook conf object. An APISIX data plane refuses to load a
    route whose plugin confs fail; the caller decides what to do when errors are returned.
    """
    errors: list[str] = []
    if not plugins:
        return EMPTY_CHAIN, errors
    rank = registry.rank()
    keyring = registry.keyring
    entries: list[tuple[int, int, PluginInfo, Any, Filter | None, Any]] = []
    for name, conf in plugins.items():
        info = registry.get(name)
        if info is None:
            continue
        if not isinstance(conf, Mapping):
            errors.append(
                f"invalid plugin conf {json.dumps(conf, default=str)} for plugin [{name}]"
            )
            continue
        if _is_disabled(conf):
            continue
        filled, err = _validated(info, conf, memo, keyring)
        if err is not None or filled is None:
            errors.append(f"failed to check the configuration of plugin {name} err: {err}")
            continue
        meta = filled.get("_meta")
        meta = meta if isinstance(meta, Mapping) else {}
        prio = meta.get("priority")
        if not isinstance(prio, int) or isinstance(prio, bool):
            prio = info.priority
        flt: Filter | None = None
        if meta.get("filter") is not None:
            try:
                flt = compile_expr(meta["filter"])
            except ExprError as exc:
                errors.append(f"plugin [{name}]: failed to compile _meta.filter: {exc}")
        entries.append((prio, rank[name], info, filled, flt, meta.get("error_response")))

    entries.sort(key=lambda e: (-e[0], e[1]))
    phases: dict[str, list[Step]] = {p: [] for p in PHASES}
    for prio, _, info, filled, flt, error_response in entries:
        wanted = info.phases_for(filled) if info.phases_for is not None else None
        for phase, (func, is_async) in info.phases.items():
            if wanted is not None:
                if phase not in wanted:
                    continue
                if isinstance(wanted, Mapping) and wanted[phase] is not None:
                    # phases_for may pick the implementation per conf, e.g. a plain hook for
                    # local state and an async variant for a conf that needs I/O.
                    func = wanted[phase]
                    is_async = inspect.iscoroutinefunction(func)
            phases[phase].append(
                Step(
                    plugin=info.name,
                    func=func,
                    conf=filled,
                    is_async=is_async,
                    filter=flt,
                    error_response=error_response,
                    phase=phase,
                    priority=prio,
                    rank=rank[info.name],
                )
            )
    chain = _make_chain(
        {p: tuple(steps) for p, steps in phases.items()},
        tuple(e[2].name for e in entries),
        {e[2].name: e[3] for e in entries},
        has_filters=any(e[4] is not None for e in entries),
    )
    return chain, errors


def _validated(
    info: PluginInfo, conf: Any, memo: Memo | None, keyring: Keyring | None = None
) -> tuple[Any, str | None]:
    """The hook conf of ``conf`` (validated, defaults filled) or the error. The plugin's
    ``encrypt_fields`` are decrypted first (spec §10.2), so checks and hooks see plaintext."""
    if memo is not None:
        hit = memo.get((id(conf), info.name))
        # The memo holds `conf`, so an equal id is the same object while the memo lives.
        if hit is not None and hit[0] is conf:
            return hit[1], hit[2]
    filled, err = prepare_conf(info, _plaintext(info, conf, keyring))
    result = PluginConf(filled) if filled is not None else None
    if memo is not None:
        memo[(id(conf), info.name)] = (conf, result, err)
    return result, err


def _plaintext(info: PluginInfo, conf: Any, keyring: Keyring | None) -> Any:
    if keyring is None or not info.encrypt_fields:
        return conf
    return decrypt_plugin_conf(conf, info.encrypt_fields, keyring, plugin=info.name)


def plaintext_conf(info: PluginInfo, conf: Any, registry: PluginRegistry) -> Any:
    """A stored plugin ``conf`` as the plugin sees it: its ``encrypt_fields`` decrypted with
    ``registry.keyring`` (a copy where anything changed). For code that checks stored config
    outside :func:`compile_chain`, e.g. a snapshot validator."""
    return _plaintext(info, conf, registry.keyring)


# -- runners ------------------------------------------------------------------------------------


def _filter_passes(step: Step, vars: Any) -> bool:
    try:
        return bool(step.filter(vars))  # type: ignore[misc]
    except Exception:
        log.warning("plugin [%s]: _meta.filter failed; running the plugin", step.plugin,
                    exc_info=True)
        return True


async def run_request_phase(steps: tuple[Step, ...], ctx: Any) -> Response | None:
    """Run a ``rewrite``/``access``/``before_proxy`` phase.

    The first :class:`Response` a step returns ends the phase and is returned (with
    ``_meta.error_response`` as its body when the status is >= 400). A step that raises is
    logged with the plugin name and ends the request with a 500 (nginx page, or
    ``_meta.error_response``), as an OpenResty Lua error does. Other return values are
    ignored (:func:`step_ending`).
    """
    for step in steps:
        if step.filter is not None and not _filter_passes(step, ctx.var):
            continue
        ctx.step = step
        try:
            res = step.func(ctx, step.conf)
            if step.is_async:
                res = await res
        except Exception:
            res = step_failed(step)
        if res is not None:
            ending = step_ending(step, res)
            if ending is not None:
                return ending
    return None


def step_failed(step: Step) -> Response:
    """What a request gets when ``step`` raised (call from the ``except`` block): the error
    is logged with the plugin's name and the request ends with a 500."""
    log.exception("plugin [%s] failed in phase %s", step.plugin, step.phase)
    return Response(500)


def step_ending(step: Step, res: Any) -> Response | None:
    """The response a request-phase step's non-``None`` return value ends the request with
    (``_meta.error_response`` as the body when the status is >= 400), or ``None``: anything
    but a :class:`Response` is ignored, with a warning."""
    if isinstance(res, Response):
        if step.error_response is not None and res.status >= 400:
            return Response(res.status, step.error_response, res.headers)
        return res
    log.warning(
        "plugin [%s] returned %r from %s; return a plugin_sdk.Response to end the request",
        step.plugin, type(res).__name__, step.phase,
    )
    return None


def run_response_phase(steps: tuple[Step, ...], ctx: Any) -> None:
    """Run ``header_filter``/``body_filter``/``log`` synchronously (use when the chain's
    ``<phase>_async`` flag is false). A raising step is logged and the next one runs."""
    for step in steps:
        if step.filter is not None and not _filter_passes(step, ctx.var):
            continue
        ctx.step = step
        try:
            res = step.func(ctx, step.conf)
        except Exception:
            log.exception("plugin [%s] failed in phase %s", step.plugin, step.phase)
            continue
        if step.is_async:
            res.close()
            log.error(
                "plugin [%s]: async %s hook skipped by the synchronous runner",
                step.plugin, step.phase,
            )


async def run_response_phase_async(steps: tuple[Step, ...], ctx: Any) -> None:
    """As :func:`run_response_phase`, awaiting async steps."""
    for step in steps:
        if step.filter is not None and not _filter_passes(step, ctx.var):
            continue
        ctx.step = step
        try:
            res = step.func(ctx, step.conf)
            if step.is_async:
                await res
        except Exception:
            log.exception("plugin [%s] failed in phase %s", step.plugin, step.phase)
