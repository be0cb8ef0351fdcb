"""limit-conn (APISIX priority 1003, access + log): at most ``conn`` concurrent requests per
key, ``burst`` more of them delayed, the rest rejected.

In ``access`` (spec §7.13, ``resty.limit.conn``) the key's count of requests in flight goes
up by one. Above ``conn + burst`` it goes back down and the request is rejected
(``rejected_code``, 503 by default, with ``{"error_msg": rejected_msg}`` or nginx's page).
Above ``conn`` the request waits ``floor((count - 1) / conn) * unit_delay`` seconds before it
goes on; ``unit_delay`` starts at ``default_conn_delay`` and, unless
``only_use_default_delay``, follows the observed latency (each finished request sets it to
the mean of itself and that request's upstream response time, per worker and conf). In
``log``, once the response is sent (or the client went away), the count goes down again.

* key: ``key_type`` ``var`` (a variable name) or ``var_combination`` (a ``$var`` template);
  an unset variable falls back to ``$remote_addr``. ``rules``: several limits at once, each
  with its own ``conn``, ``burst`` and key template (a rule whose key resolves no variable
  does not apply); ``conn`` / ``burst`` may be ``$var`` strings. Each route and each conf
  revision counts separately (see :mod:`builtin_plugins._limits`).
* ``policy: local`` counts in the node's shared counters (zone ``plugin-limit-conn``: every
  worker of the node together, kept across plugin reloads). ``redis`` / ``redis-cluster``:
  one count for every gateway using that Redis: a sorted set of the requests in flight, each
  entry expiring after ``key_ttl`` seconds so that a gateway that died mid-request does not
  hold its slots forever. On a Redis error the request gets a 500 unless
  ``allow_degradation`` lets it through.

Local confs that can never delay (``burst: 0``) keep both hooks plain, on the gateway's
callback path.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from builtin_plugins import _limits
from plugin_sdk import ConfCache, Response, hookimpl, shared_counters

name = "limit-conn"
version = "0.1"
priority = 1003

_INT_OR_VAR: dict[str, Any] = {"oneOf": [{"type": "integer", "exclusiveMinimum": 0},
                                         {"type": "string"}]}
_BURST: dict[str, Any] = {"oneOf": [{"type": "integer", "minimum": 0}, {"type": "string"}]}

schema: dict[str, Any] = {
    "type": "object",
    "properties": {
        "conn": _INT_OR_VAR,
        "burst": _BURST,
        "default_conn_delay": {"type": "number", "exclusiveMinimum": 0},
        "only_use_default_delay": {"type": "boolean", "default": False},
        "key": {"type": "string"},
        "key_type": {"type": "string", "enum": ["var", "var_combination"], "default": "var"},
        "rules": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"conn": _INT_OR_VAR, "burst": _BURST, "key": {"type": "string"}},
                "required": ["conn", "burst", "key"],
            },
        },
        "policy": {"type": "string", "enum": ["redis", "redis-cluster", "local"],
                   "default": "local"},
        "rejected_code": {"type": "integer", "minimum": 200, "maximum": 599, "default": 503},
        "rejected_msg": {"type": "string", "minLength": 1},
        "allow_degradation": {"type": "boolean", "default": False},
    },
    "oneOf": [
        {"required": ["conn", "burst", "default_conn_delay", "key"]},
        {"required": ["default_conn_delay", "rules"]},
    ],
    **_limits.redis_schema({"key_ttl": {"type": "integer", "minimum": 1, "default": 3600}}),
}

_counts = shared_counters("plugin-limit-conn")


def check_schema(conf: dict[str, Any]) -> str | None:
    return _limits.check_redis(conf)


@dataclass(slots=True)
class _Rule:
    conn: float
    burst: float
    conn_of: Callable[[Any], float | None] | None
    burst_of: Callable[[Any], float | None] | None
    key: Callable[[Any], str | None]
    tag: str


@dataclass(slots=True)
class _Compiled:
    rules: tuple[_Rule, ...]
    digest: str
    default_delay: float
    adapt: bool
    unit_delay: dict[str, float] = field(default_factory=dict)  # per rule tag, this worker


def _rule(conn: Any, burst: Any, key: Callable[[Any], str | None], tag: str) -> _Rule:
    conn_of, burst_of = _limits.compile_number(conn), _limits.compile_number(burst)
    return _Rule(0 if conn_of else float(conn), 0 if burst_of else float(burst),
                 conn_of, burst_of, key, tag)


def _compile(conf: dict[str, Any]) -> _Compiled:
    if conf.get("rules") is None:
        rules = [_rule(conf["conn"], conf["burst"],
                       _limits.compile_key(conf["key_type"], conf["key"]), "")]
    else:
        rules = [_rule(r["conn"], r["burst"], _limits.compile_rule_key(r["key"]), f"#{i}")
                 for i, r in enumerate(conf["rules"], 1)]
    return _Compiled(tuple(rules), _limits.conf_digest(conf), float(conf["default_conn_delay"]),
                     not conf["only_use_default_delay"])


_compiled = ConfCache(_compile)


def _limits_of(ctx: Any, rule: _Rule) -> tuple[float, float] | None:
    conn, burst = rule.conn, rule.burst
    if rule.conn_of is not None:
        got = rule.conn_of(ctx)
        if got is None or got <= 0:
            return None
        conn = got
    if rule.burst_of is not None:
        got = rule.burst_of(ctx)
        if got is None or got < 0:
            return None
        burst = got
    return conn, burst


def _delay(c: _Compiled, rule: _Rule, count: float, conn: float) -> float:
    if count <= conn:
        return 0.0
    unit = c.unit_delay.get(rule.tag, c.default_delay) if c.adapt else c.default_delay
    return unit * math.floor((count - 1) / conn)


def _reject(conf: dict[str, Any]) -> Response:
    code, body = _limits.rejection(conf)
    return Response(code, body)


def _failed(ctx: Any, conf: dict[str, Any], why: str) -> Response | None:
    ctx.log.error("failed to limit conn: %s", why)
    return None if conf["allow_degradation"] else Response(500)


def _incoming(ctx: Any, conf: dict[str, Any]) -> Response | float | None:
    """Count the request in; the delay to wait, or the response that ends it."""
    c = _compiled(conf)
    prefix = f"{_limits.owner(ctx, name)}:{c.digest}:"
    held: list[tuple[str, _Rule, float]] = []
    delay = 0.0
    for rule in c.rules:
        key = rule.key(ctx)
        if key is None:
            continue
        limits = _limits_of(ctx, rule)
        if limits is None:
            _leave_local(held)
            return _failed(ctx, conf, "could not resolve conn/burst to numbers")
        conn, burst = limits
        full = prefix + key + rule.tag
        count = _counts.incr(full, 1)
        if count > conn + burst:
            _counts.incr(full, -1)
            _leave_local(held)
            return _reject(conf)
        d = _delay(c, rule, count, conn)
        held.append((full, rule, d))
        delay = max(delay, d)
    if held:
        ctx.plugin_data["held"] = held
    return delay


def _leave_local(held: list[tuple[str, _Rule, float]]) -> None:
    for key, _, _ in held:
        _counts.incr(key, -1)


@hookimpl
def access(ctx: Any, conf: dict[str, Any]) -> Response | None:
    """Local confs that never delay (``burst: 0``)."""
    got = _incoming(ctx, conf)
    return got if isinstance(got, Response) or got is None else None


async def access_delayed(ctx: Any, conf: dict[str, Any]) -> Response | None:
    """Local confs that may make a request wait (picked by :func:`phases_for`)."""
    got = _incoming(ctx, conf)
    if isinstance(got, Response) or got is None:
        return got
    if got >= 0.001:
        try:
            await asyncio.sleep(got)
        except asyncio.CancelledError:  # the log phase will not run: give the slot back
            held = ctx.plugin_data.pop("held", None)
            if held:
                _leave_local(held)
            raise
    return None


def _latency(ctx: Any, delay: float) -> float | None:
    """The latency a finished request reports to the adaptive delay (APISIX's
    ``upstream_response_time``, or ``request_time`` minus the delay when not proxied)."""
    v = ctx.var
    upstream = v["upstream_response_time"]
    try:
        if upstream is not None:
            return float(str(upstream).split(",")[-1])
        return float(v["request_time"]) - delay
    except (TypeError, ValueError):
        return None


def _adapt(ctx: Any, conf: dict[str, Any], held: list[tuple[str, _Rule, float]]) -> None:
    c = _compiled(conf)
    if not c.adapt:
        return
    for _, rule, delay in held:
        latency = _latency(ctx, delay)
        if latency is not None and latency >= 0:
            unit = c.unit_delay.get(rule.tag, c.default_delay)
            c.unit_delay[rule.tag] = (latency + unit) / 2


@hookimpl
def log(ctx: Any, conf: dict[str, Any]) -> None:
    held = ctx.plugin_data.pop("held", None)
    if not held:
        return
    _leave_local(held)
    _adapt(ctx, conf, held)


# -- Redis ------------------------------------------------------------------------------------

# One sorted set per key: a member per request in flight, scored by when it expires.
_IN_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local max = tonumber(ARGV[1])
local ttl = tonumber(ARGV[3])
redis.call('zremrangebyscore', KEYS[1], '-inf', string.format('%.6f', now))
redis.call('zadd', KEYS[1], string.format('%.6f', now + ttl), ARGV[4])
local count = redis.call('zcard', KEYS[1])
if count > max + tonumber(ARGV[2]) then
    redis.call('zrem', KEYS[1], ARGV[4])
    return {0, count - 1}
end
redis.call('expire', KEYS[1], ttl)
return {1, count}
"""


def _member() -> str:
    return f"{os.getpid()}:{os.urandom(8).hex()}"


async def access_redis(ctx: Any, conf: dict[str, Any]) -> Response | None:
    """``redis`` / ``redis-cluster`` confs (picked by :func:`phases_for`)."""
    c = _compiled(conf)
    prefix = f"plugin-limit-conn:{_limits.owner(ctx, name)}:{c.digest}:"
    held: list[tuple[str, _Rule, float]] = []
    member = _member()
    delay = 0.0
    try:
        client = _limits.redis_client(conf)
        for rule in c.rules:
            key = rule.key(ctx)
            if key is None:
                continue
            limits = _limits_of(ctx, rule)
            if limits is None:
                await _leave_redis(client, held, member)
                return _failed(ctx, conf, "could not resolve conn/burst to numbers")
            conn, burst = limits
            full = prefix + key + rule.tag
            res = await _limits.run_script(client, _IN_SCRIPT, [full],
                                           [conn, burst, conf["key_ttl"], member])
            if not int(res[0]):
                await _leave_redis(client, held, member)
                return _reject(conf)
            d = _delay(c, rule, float(res[1]), conn)
            held.append((full, rule, d))
            delay = max(delay, d)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if held:  # best effort: the slots taken so far (else they expire after key_ttl)
            asyncio.get_running_loop().create_task(_leave_quietly(conf, held, member))
        return _failed(ctx, conf, f"{type(exc).__name__}: {exc}")
    if held:
        ctx.plugin_data["held"] = held
        ctx.plugin_data["member"] = member
    if delay >= 0.001:
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:  # the log phase will not run: give the slots back
            ctx.plugin_data.pop("held", None)
            asyncio.get_running_loop().create_task(_leave_redis(client, held, member))
            raise
    return None


async def _leave_redis(client: Any, held: list[tuple[str, _Rule, float]], member: str) -> None:
    for key, _, _ in held:
        await client.zrem(key, member)


async def _leave_quietly(conf: dict[str, Any], held: list[tuple[str, _Rule, float]],
                         member: str) -> None:
    with contextlib.suppress(Exception):  # Redis is failing: the entries expire after key_ttl
        await _leave_redis(_limits.redis_client(conf), held, member)


async def log_redis(ctx: Any, conf: dict[str, Any]) -> None:
    data = ctx.plugin_data
    held = data.pop("held", None)
    if not held:
        return
    try:
        await _leave_redis(_limits.redis_client(conf), held, data.pop("member"))
    except Exception as exc:  # the entries expire after key_ttl
        ctx.log.error("failed to leave limit conn in redis: %s: %s", type(exc).__name__, exc)
    _adapt(ctx, conf, held)


def phases_for(conf: dict[str, Any]) -> Any:
    """Plain hooks for local confs that never delay; async ones for delays and Redis."""
    if conf["policy"] != "local":
        return {"access": access_redis, "log": log_redis}
    rules = conf.get("rules") or [conf]
    if all(r.get("burst") == 0 for r in rules):
        return ("access", "log")
    return {"access": access_delayed, "log": None}


def init() -> None:
    _limits.retain_redis()


def destroy() -> None:
    _limits.release_redis()
