"""limit-count (APISIX priority 1002, access): at most ``count`` requests per
``time_window`` seconds for each key.

Runs in ``access``: counts the request in its key's window and rejects it (``rejected_code``,
503 by default, with ``{"error_msg": rejected_msg}`` or nginx's page) once the window's
``count`` is used up. The counters (spec §7.11):

* **fixed** window (default): the window starts with the first request of the key and lasts
  ``time_window`` seconds; **sliding**: the previous fixed window's count, weighted by how
  much of it the sliding window still covers, plus the current one's (an approximation of a
  true sliding log that needs two numbers per key).
* key: ``key_type`` ``var`` (a variable name, default ``remote_addr``), ``var_combination``
  (a ``$var`` template) or ``constant``; an unset variable falls back to ``$remote_addr``.
  Each route and each conf revision counts separately (see :mod:`builtin_plugins._limits`);
  ``group`` shares one counter between every conf of the group (which must then be equal:
  ``group conf mismatched``).
* ``rules``: several limits at once, each with its own ``count``, ``time_window`` and key
  template; a rule whose key resolves no variable does not apply to the request; any rule
  over its limit rejects.
* ``policy: local`` keeps the counters in the node's shared counters (zone
  ``plugin-limit-count``: every worker of the node counts together, and plugin reloads keep
  the counts). ``redis`` / ``redis-cluster``: one counter for every gateway using that Redis,
  updated by one Lua script per request (``EVALSHA``), APISIX's. On a Redis error the request
  gets 500 ``{"error_msg":"failed to limit count"}`` unless ``allow_degradation`` lets it
  through. Only Redis confs make the route's ``access`` asynchronous.

When ``show_limit_quota_header`` (the default) the response -- proxied, or the rejection --
gets ``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and ``X-RateLimit-Reset`` (seconds left
in the window), replacing any the upstream sent; names from plugin_metadata ``limit_header`` /
``remaining_header`` / ``reset_header``; with ``rules`` ``X-<n>-RateLimit-...`` (``n`` the
rule's position or its ``header_prefix``). ``access`` sets them with
``ctx.set_response_header`` (as APISIX sets them in its access phase): the plugin has no
``header_filter``, so a route keeps forwarding the upstream's head as it is.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from builtin_plugins import _limits
from plugin_sdk import (
    ConfCache,
    PluginError,
    Response,
    hookimpl,
    shared_counters,
    shared_dict,
)

name = "limit-count"
version = "0.1"
priority = 1002

_COUNT: dict[str, Any] = {"oneOf": [{"type": "integer", "exclusiveMinimum": 0},
                                    {"type": "string"}]}

schema: dict[str, Any] = {
    "type": "object",
    "properties": {
        "count": _COUNT,
        "time_window": _COUNT,
        "window_type": {"type": "string", "enum": ["fixed", "sliding"], "default": "fixed"},
        "group": {"type": "string"},
        "key": {"type": "string", "default": "remote_addr"},
        "key_type": {"type": "string", "enum": ["var", "var_combination", "constant"],
                     "default": "var"},
        "rejected_code": {"type": "integer", "minimum": 200, "maximum": 599, "default": 503},
        "rejected_msg": {"type": "string", "minLength": 1},
        "policy": {"type": "string", "enum": ["local", "redis", "redis-cluster", "redis-sentinel"],
                   "default": "local"},
        "allow_degradation": {"type": "boolean", "default": False},
        "show_limit_quota_header": {"type": "boolean", "default": True},
        "sync_interval": {"type": "number", "default": -1},
        "rules": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "count": _COUNT,
                    "time_window": _COUNT,
                    "key": {"type": "string"},
                    "header_prefix": {"type": "string"},
                },
                "required": ["count", "time_window", "key"],
            },
        },
    },
    "oneOf": [
        {"required": ["count", "time_window"]},
        # rules with count/time_window as well is refused by check_schema, with its message
        {"required": ["rules"], "not": {"required": ["count", "time_window"]}},
    ],
    **_limits.redis_schema(),
}

metadata_schema: dict[str, Any] = {
    "type": "object",
    "properties": {
        "limit_header": {"type": "string", "default": "X-RateLimit-Limit"},
        "remaining_header": {"type": "string", "default": "X-RateLimit-Remaining"},
        "reset_header": {"type": "string", "default": "X-RateLimit-Reset"},
    },
}

_counts = shared_counters("plugin-limit-count")
_clock = time.time  # sliding windows: wall-clock seconds, the same in every worker
_GROUP_TTL = 300.0  # APISIX keeps a group's first conf in a 5-minute plugin LRU
_group_confs: dict[str, tuple[float, str]] = {}  # when no kernel runtime (unit checks)


def check_schema(conf: dict[str, Any], schema_type: str = "route") -> str | None:
    if schema_type == "metadata":
        return None
    if conf.get("rules") is not None and ("count" in conf or "time_window" in conf):
        return "count/time_window and rules cannot be specified at the same time"
    if conf["policy"] == "redis-sentinel":
        return "policy redis-sentinel is not supported by sixgate (use redis or redis-cluster)"
    err = _limits.check_redis(conf)
    if err:
        return err
    group = conf.get("group")
    if group is not None:
        if conf.get("rules") is not None:
            return "group is not supported with rules"
        return _check_group(group, conf)
    return None


def _check_group(group: str, conf: dict[str, Any]) -> str | None:
    """Every conf of a group must be the same (APISIX compares each new conf with the
    group's first one, remembered for five minutes)."""
    text = json.dumps({k: v for k, v in conf.items() if k != "_meta"}, sort_keys=True,
                      default=str)
    try:
        groups = shared_dict("limit-count.groups")
        prev = groups.get(group)
        if prev is None:
            groups.set(group, text, ttl=_GROUP_TTL)
            return None
    except PluginError:  # no kernel in this process: a module-level memory
        now = time.monotonic()
        entry = _group_confs.get(group)
        if entry is None or entry[0] <= now:
            _group_confs[group] = (now + _GROUP_TTL, text)
            return None
        prev = entry[1]
    return None if prev == text else "group conf mismatched"


# -- the compiled conf ------------------------------------------------------------------------


@dataclass(slots=True)
class _Rule:
    count: int | float
    window: int | float
    count_of: Callable[[Any], float | None] | None  # a "$var" count
    window_of: Callable[[Any], float | None] | None
    key: Callable[[Any], str | None]
    prefix: str | None  # header prefix (rules); None: the plain header names
    tag: str  # told apart in the counter key (rules)


@dataclass(slots=True)
class _Compiled:
    rules: tuple[_Rule, ...]
    single: _Rule | None  # the common case: one static rule
    digest: str
    group: str | None
    sliding: bool
    headers: bool
    redis: bool
    owner: tuple[Any, Any, Any, str] | None = None
    """The last (route, service, consumer) the counter prefix was worked out for, and it:
    a request of the same route (the same objects) reuses it."""


def _compile(conf: dict[str, Any]) -> _Compiled:
    rules: list[_Rule] = []
    if conf.get("rules") is None:
        key = _limits.compile_key(conf["key_type"], conf["key"])
        rules.append(_rule(conf["count"], conf["time_window"], key, None, ""))
    else:
        for i, r in enumerate(conf["rules"], 1):
            prefix = r.get("header_prefix") or str(i)
            rules.append(_rule(r["count"], r["time_window"], _limits.compile_rule_key(r["key"]),
                               prefix, f"#{i}"))
    single = rules[0] if (len(rules) == 1 and rules[0].count_of is None
                          and rules[0].window_of is None and not rules[0].tag) else None
    return _Compiled(
        rules=tuple(rules), single=single, digest=_limits.conf_digest(conf),
        group=conf.get("group"), sliding=conf["window_type"] == "sliding",
        headers=conf["show_limit_quota_header"], redis=conf["policy"] != "local",
    )


def _rule(count: Any, window: Any, key: Callable[[Any], str | None], prefix: str | None,
          tag: str) -> _Rule:
    count_of = _limits.compile_number(count)
    window_of = _limits.compile_number(window)
    return _Rule(count if count_of is None else 0, window if window_of is None else 0,
                 count_of, window_of, key, prefix, tag)


_compiled = ConfCache(_compile)


def _prefix(ctx: Any, c: _Compiled) -> str:
    if c.group is not None:
        return f"group:{c.group}:"
    route, service, consumer = ctx.route, ctx.service, ctx.consumer
    last = c.owner
    if last is not None and last[0] is route and last[1] is service and last[2] is consumer:
        return last[3]
    prefix = f"{_limits.owner(ctx, name)}:{c.digest}:"
    c.owner = (route, service, consumer, prefix)
    return prefix


def _limits_of(ctx: Any, rule: _Rule) -> tuple[float, float] | None:
    count: float = rule.count
    window: float = rule.window
    if rule.count_of is not None:
        got = rule.count_of(ctx)
        if got is None or got < 0:
            return None
        count = got
    if rule.window_of is not None:
        got = rule.window_of(ctx)
        if got is None or got <= 0:
            return None
        window = got
    return count, window


# -- local counters ---------------------------------------------------------------------------


def _slide(state: tuple[float, float] | None, previous: float, limit: float,
           ) -> tuple[tuple[float, float] | None, float]:
    """The current window's entry: count the request when the estimate allows it.
    Returns the remaining quota (negative: rejected, nothing stored)."""
    used = state[0] if state is not None else 0.0
    left = limit - previous - used - 1
    if left < 0:
        return None, left
    return (used + 1, 0.0), left


def _count_local(key: str, count: float, window: float, sliding: bool) -> tuple[float, float]:
    """``(remaining, reset)`` after counting one request; remaining < 0: rejected."""
    if not sliding:
        remaining, reset = _counts.incr_ttl(key, -1, count, window)
        return remaining, (reset if reset is not None else window)
    now = _clock()
    index = math.floor(now / window)
    into = now - index * window
    previous = _counts.get(f"{key}@{index - 1}", 0) * (1 - into / window)
    left = _counts.update(f"{key}@{index}", _slide, previous, count, ttl=2 * window)
    return left, window - into


def _reset_text(reset: float) -> int:
    return max(0, math.ceil(reset - 1e-6))


def _quota(count: float, remaining: float) -> tuple[int | float, int]:
    return _limits.as_int(count), max(0, math.floor(remaining))


@hookimpl
def access(ctx: Any, conf: dict[str, Any]) -> Response | None:
    c = _compiled(conf)
    single = c.single
    if single is not None and not c.sliding:  # the hot path: one static fixed window
        key = _prefix(ctx, c) + (single.key(ctx) or "")
        remaining, reset = _counts.incr_ttl(key, -1, single.count, single.window)
        if reset is None:
            reset = single.window
        if c.headers:
            meta = ctx.plugin_metadata
            lname, rname, sname = _NAMES if meta is None else _names_of(meta)
            put = ctx.set_response_header
            put(lname, str(single.count))
            put(rname, str(max(0, remaining)))
            put(sname, str(_reset_text(reset)))
        if remaining < 0:
            code, body = _limits.rejection(conf)
            return Response(code, body)
        return None
    prefix = _prefix(ctx, c)
    quota = []
    rejected = False
    for rule in c.rules:
        rule_key = rule.key(ctx)
        if rule_key is None:
            continue
        limits = _limits_of(ctx, rule)
        if limits is None:
            return _failed(ctx, conf, "could not resolve count/time_window to numbers")
        count, window = limits
        remaining, reset = _count_local(prefix + rule_key + rule.tag, count, window,
                                        c.sliding)
        limit, left = _quota(count, remaining)
        quota.append((rule.prefix, limit, left, _reset_text(reset)))
        if remaining < 0:
            rejected = True
            break
    return _finish(ctx, conf, c, quota, rejected)


def _finish(ctx: Any, conf: dict[str, Any], c: _Compiled, quota: list[Any],
            rejected: bool) -> Response | None:
    """After the rules were counted: the quota headers, then the rejection if one ran out."""
    if c.headers:
        for q in quota:
            _set_quota_headers(ctx, *q)
    if rejected:
        code, body = _limits.rejection(conf)
        return Response(code, body)
    return None


def _failed(ctx: Any, conf: dict[str, Any], why: str) -> Response | None:
    ctx.log.error("failed to limit count: %s", why)
    if conf["allow_degradation"]:
        return None
    return Response(500, {"error_msg": "failed to limit count"})


# -- Redis ------------------------------------------------------------------------------------

# APISIX's limit-count-redis script: a fixed window in one key, created with its TTL.
_FIXED_SCRIPT = """
local ttl = redis.call('ttl', KEYS[1])
if ttl < 0 then
    redis.call('set', KEYS[1], ARGV[1] - ARGV[3], 'EX', ARGV[2])
    return {ARGV[1] - ARGV[3], tonumber(ARGV[2])}
end
return {redis.call('incrby', KEYS[1], 0 - ARGV[3]), ttl}
"""

# Sliding: a hash per key, one field per fixed window (the server's clock, so gateways agree).
_SLIDING_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local index = math.floor(now / window)
local cur_field = string.format('%d', index)
local prev_field = string.format('%d', index - 1)
local cur = tonumber(redis.call('hget', KEYS[1], cur_field) or '0')
local prev = tonumber(redis.call('hget', KEYS[1], prev_field) or '0')
local into = now - index * window
local left = limit - prev * (1 - into / window) - cur - cost
local reset = window - into
if left < 0 then
    return {0, tostring(left), tostring(reset)}
end
redis.call('hincrby', KEYS[1], cur_field, cost)
for _, field in ipairs(redis.call('hkeys', KEYS[1])) do
    if field ~= cur_field and field ~= prev_field then
        redis.call('hdel', KEYS[1], field)
    end
end
redis.call('expire', KEYS[1], math.ceil(window * 2))
return {1, tostring(left), tostring(reset)}
"""


async def access_redis(ctx: Any, conf: dict[str, Any]) -> Response | None:
    """``access`` for ``redis`` / ``redis-cluster`` confs (picked by :func:`phases_for`)."""
    c = _compiled(conf)
    prefix = "plugin-limit-count:" + _prefix(ctx, c)
    quota = []
    rejected = False
    for rule in c.rules:
        key = rule.key(ctx)
        if key is None:
            continue
        limits = _limits_of(ctx, rule)
        if limits is None:
            return _failed(ctx, conf, "could not resolve count/time_window to numbers")
        count, window = limits
        try:
            client = _limits.redis_client(conf)
            if c.sliding:
                res = await _limits.run_script(client, _SLIDING_SCRIPT, [prefix + key + rule.tag],
                                               [count, window, 1])
                remaining, reset = float(res[1]), float(res[2])
                if not int(res[0]):
                    remaining = min(remaining, -1.0)
            else:
                res = await _limits.run_script(
                    client, _FIXED_SCRIPT, [prefix + key + rule.tag],
                    [_limits.as_int(count), max(1, math.ceil(window)), 1])
                remaining, reset = float(res[0]), float(res[1])
        except Exception as exc:
            return _failed(ctx, conf, f"{type(exc).__name__}: {exc}")
        limit, left = _quota(count, remaining)
        quota.append((rule.prefix, limit, left, _reset_text(reset)))
        if remaining < 0:
            rejected = True
            break
    return _finish(ctx, conf, c, quota, rejected)


# -- the response headers ---------------------------------------------------------------------

_NAMES = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


def _prefixed(header: str, prefix: str) -> str:
    if header[:2].lower() == "x-":
        return f"{header[:2]}{prefix}-{header[2:]}"
    return f"{prefix}-{header}"


def _names_of(meta: Any) -> tuple[str, str, str]:
    return meta["limit_header"], meta["remaining_header"], meta["reset_header"]


def _set_quota_headers(ctx: Any, prefix: str | None, limit: Any, remaining: Any,
                       reset: int) -> None:
    """The quota headers of one rule, set on the response from ``access``."""
    meta = ctx.plugin_metadata
    names = _NAMES if meta is None else _names_of(meta)
    if prefix is not None:
        names = tuple(_prefixed(n, prefix) for n in names)
    put = ctx.set_response_header
    put(names[0], str(limit))
    put(names[1], str(remaining))
    put(names[2], str(reset))


def phases_for(conf: dict[str, Any]) -> Any:
    """Local confs keep the plain ``access`` (routes stay on the callback path); Redis confs
    get :func:`access_redis`."""
    if conf["policy"] == "local":
        return ("access",)
    return {"access": access_redis}


def init() -> None:
    _limits.retain_redis()


def destroy() -> None:
    _limits.release_redis()
