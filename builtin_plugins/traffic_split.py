"""traffic-split (APISIX priority 966, access): send part of a route's traffic elsewhere.

Runs in ``access``. ``rules`` are tried in order: a rule without ``match`` takes every request;
a rule with ``match`` takes it when the ``vars`` expression of any ``match`` entry is true
(each expression ANDs its conditions). The first rule that takes the request picks one of its
``weighted_upstreams`` by smooth weighted round robin (weights 2:1 give A, B, A, A, B, A, ...;
the position is kept per rule of each conf, per worker), and the request goes there through
``ctx.upstream.set_upstream``:

* ``upstream_id`` — that upstream object, with all its settings and its own balancer state;
* ``upstream`` — an inline upstream, of which only ``name``, ``type``, ``hash_on``,
  ``pass_host``, ``upstream_host``, ``key``, ``nodes``, ``timeout`` and ``scheme`` are used
  (as APISIX: no ``retries``, health ``checks`` or ``keepalive_pool``); compiled by the kernel
  once per conf, host names among its nodes resolved when the request is forwarded;
* neither (only ``weight``) — the route's own upstream.

No rule takes the request: nothing changes. The plugin answers only when a rule it reaches
names an ``upstream_id`` that does not exist: ``500 failed to fetch upstream info by upstream
id: <id>``. Everything per conf (the ``vars`` expressions, the inline upstream objects, the
round-robin state) is built once, on the conf's first request (:class:`plugin_sdk.ConfCache`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from plugin_sdk import ConfCache, ExprError, Response, compile_expr, hookimpl
from plugin_sdk.upstream import check_upstream

name = "traffic-split"
version = "0.1"
priority = 966

_ID_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "minLength": 1, "maxLength": 64, "pattern": r"^[a-zA-Z0-9-_.]+$"},
        {"type": "integer", "minimum": 1},
    ]
}

schema: dict[str, Any] = {
    "type": "object",
    "properties": {
        "rules": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "match": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {"vars": {"type": "array"}},
                        },
                    },
                    "weighted_upstreams": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "upstream_id": _ID_SCHEMA,
                                # the full upstream schema: checked by check_schema (the
                                # kernel's own upstream check, see plugin_sdk.upstream)
                                "upstream": {"type": "object"},
                                "weight": {
                                    "description": "used to split traffic between different "
                                                   "upstreams for plugin configuration",
                                    "type": "integer",
                                    "default": 1,
                                    "minimum": 0,
                                },
                            },
                        },
                        # an entry without upstream_id/upstream is the route's own upstream
                        "default": [{"weight": 1}],
                        "minItems": 1,
                        "maxItems": 20,
                    },
                },
            },
        },
    },
}

_HONOURED = ("name", "type", "hash_on", "pass_host", "upstream_host", "key", "nodes",
             "timeout", "scheme")
"""The fields of an inline upstream APISIX's traffic-split copies into the upstream it uses."""

Match = Callable[[Any], bool]


def check_schema(conf: dict[str, Any]) -> str | None:
    """After the JSON schema: every inline upstream is a valid upstream object (the message
    names it as the JSON schema would), then every ``match`` entry's ``vars`` compiles."""
    rules = conf.get("rules") or []
    for i, rule in enumerate(rules, 1):
        for j, entry in enumerate(rule.get("weighted_upstreams") or [], 1):
            upstream = entry.get("upstream")
            if upstream is None:
                continue
            err = check_upstream(upstream)
            if err is not None:
                return (
                    f'property "rules" validation failed: failed to validate item {i}: '
                    f'property "weighted_upstreams" validation failed: failed to validate '
                    f'item {j}: property "upstream" validation failed: {err}'
                )
    for rule in rules:
        for m in rule.get("match") or []:
            try:
                compile_expr(m.get("vars"))
            except ExprError as exc:
                return f"failed to validate the 'vars' expression: {exc}"
    return None


@dataclass(frozen=True, slots=True)
class _Target:
    """Where one weighted entry sends a request (neither field: the route's upstream)."""

    upstream_id: str | int | None = None
    upstream: Mapping[str, Any] | None = None


_ROUTE = _Target()


class _SmoothRoundRobin:
    """nginx's smooth weighted round robin over a rule's targets (deterministic: 2:1 gives
    A, B, A, then again). Targets of weight 0 are never picked, unless every weight is 0:
    then they take turns (as APISIX's round robin does)."""

    __slots__ = ("_current", "_turn", "_weights", "targets", "total")

    def __init__(self, weighted: list[tuple[_Target, int]]) -> None:
        kept = [(t, w) for t, w in weighted if w > 0] or weighted
        self.targets = tuple(t for t, _ in kept)
        self._weights = tuple(w for _, w in kept)
        self.total = sum(self._weights)
        self._current = [0] * len(kept)
        self._turn = 0

    def next(self) -> _Target:
        targets = self.targets
        if len(targets) == 1:
            return targets[0]
        if not self.total:
            self._turn = (self._turn + 1) % len(targets)
            return targets[self._turn - 1]
        current = self._current
        best = 0
        top = None
        for i, weight in enumerate(self._weights):
            value = current[i] + weight
            current[i] = value
            if top is None or value > top:
                best, top = i, value
        current[best] -= self.total
        return targets[best]


@dataclass(frozen=True, slots=True)
class _Rule:
    match: tuple[Match, ...] | None
    """``None``: the rule has no ``match`` and takes every request."""
    upstream_ids: tuple[str | int, ...]
    """Every ``upstream_id`` of the rule: each must exist when the rule is reached."""
    balancer: _SmoothRoundRobin


def _targets(entries: list[Mapping[str, Any]]) -> list[tuple[_Target, int]]:
    """The rule's weighted targets. As APISIX's table of ``target -> weight``, the entries of
    one ``upstream_id`` (and the weight-only entries) are one target with the last weight."""
    out: list[tuple[_Target, int]] = []
    seen: dict[Any, int] = {}
    for entry in entries:
        weight = int(entry.get("weight", 1))
        if entry.get("upstream_id") is not None:
            uid = entry["upstream_id"]
            key: Any = ("id", str(uid))
            target = _Target(upstream_id=uid)
        elif entry.get("upstream") is not None:
            up = entry["upstream"]
            target = _Target(upstream={k: up[k] for k in _HONOURED if k in up})
            key = ("inline", len(out))
        else:
            key, target = ("route",), _ROUTE
        index = seen.get(key)
        if index is None:
            seen[key] = len(out)
            out.append((target, weight))
        else:
            out[index] = (out[index][0], weight)
    return out


def _compile(conf: Mapping[str, Any]) -> tuple[_Rule, ...]:
    rules = []
    for rule in conf.get("rules") or ():
        entries = rule.get("weighted_upstreams") or [{"weight": 1}]
        match = rule.get("match")
        rules.append(_Rule(
            match=None if match is None else tuple(compile_expr(m.get("vars")) for m in match),
            upstream_ids=tuple(e["upstream_id"] for e in entries
                               if e.get("upstream_id") is not None),
            balancer=_SmoothRoundRobin(_targets(entries)),
        ))
    return tuple(rules)


_compiled: ConfCache[tuple[_Rule, ...]] = ConfCache(_compile)


@hookimpl
def access(ctx: Any, conf: dict[str, Any]) -> Response | None:
    chosen = None
    passed = True  # carried from rule to rule, as APISIX does (a ``match: []`` rule reuses it)
    var = ctx.var
    for rule in _compiled(conf):
        for uid in rule.upstream_ids:
            if not ctx.upstream.has_upstream(uid):
                return Response(500, f"failed to fetch upstream info by upstream id: {uid}")
        if rule.match is None:
            chosen = rule
            break
        for expr in rule.match:
            passed = bool(expr(var))
            if passed:
                break
        if passed:
            chosen = rule
            break
    if chosen is None:
        return None
    target = chosen.balancer.next()
    if target.upstream_id is not None:
        ctx.upstream.set_upstream(target.upstream_id)
    elif target.upstream is not None:
        ctx.upstream.set_upstream(conf=target.upstream)
    else:
        ctx.upstream.set_upstream()  # the route's own upstream, whatever was chosen before
    return None
