"""limit-req (APISIX priority 1001, access): a leaky bucket of ``rate`` requests per second
with room for ``burst`` more, for each key.

Runs in ``access`` (spec §7.12, nginx's ``limit_req`` / ``resty.limit.req``): with ``excess``
the bucket's level, each request computes ``excess = max(excess - rate * elapsed + 1, 0)``.
Above ``burst`` the request is rejected (``rejected_code``, 503 by default, with
``{"error_msg": rejected_msg}`` or nginx's page) and the bucket is left as it was; otherwise
the level is stored and, when ``excess > 0`` and not ``nodelay``, the request waits
``excess / rate`` seconds (without blocking the worker) before it goes on.

* key: ``key_type`` ``var`` (a variable name) or ``var_combination`` (a ``$var`` template);
  an unset variable falls back to ``$remote_addr``. Each route and each conf revision has its
  own buckets (see :mod:`builtin_plugins._limits`).
* ``policy: local`` keeps the buckets in the node's shared counters (zone
  ``plugin-limit-req``: one bucket for every worker of the node, kept across plugin reloads).
  ``redis`` / ``redis-cluster``: one bucket for every gateway using that Redis, updated by one
  Lua script (``EVALSHA``) on the server's clock. On a Redis error the request gets a 500
  unless ``allow_degradation`` lets it through.

Only confs that may delay (``burst > 0`` without ``nodelay``) or use Redis make the route's
``access`` asynchronous; the others keep it on the gateway's callback path.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from builtin_plugins import _limits
from plugin_sdk import ConfCache, Response, hookimpl, shared_counters

name = "limit-req"
version = "0.1"
priority = 1001

schema: dict[str, Any] = {
    "type": "object",
    "properties": {
        "rate": {"type": "number", "exclusiveMinimum": 0},
        "burst": {"type": "number", "minimum": 0},
        "key": {"type": "string"},
        "key_type": {"type": "string", "enum": ["var", "var_combination"], "default": "var"},
        "policy": {"type": "string", "enum": ["redis", "redis-cluster", "local"],
                   "default": "local"},
        "rejected_code": {"type": "integer", "minimum": 200, "maximum": 599, "default": 503},
        "rejected_msg": {"type": "string", "minLength": 1},
        "nodelay": {"type": "boolean", "default": False},
        "allow_degradation": {"type": "boolean", "default": False},
    },
    "required": ["rate", "burst", "key"],
    **_limits.redis_schema(),
}

_buckets = shared_counters("plugin-limit-req")


def check_schema(conf: dict[str, Any]) -> str | None:
    return _limits.check_redis(conf)


@dataclass(slots=True)
class _Compiled:
    key: _limits.KeyFn
    digest: str
    rate: float
    burst: float
    ttl: float
    delays: bool


def _compile(conf: dict[str, Any]) -> _Compiled:
    rate, burst = float(conf["rate"]), float(conf["burst"])
    return _Compiled(
        key=_limits.compile_key(conf["key_type"], conf["key"]),
        digest=_limits.conf_digest(conf), rate=rate, burst=burst,
        # the level drains within (burst + 1) / rate seconds: an idle bucket is forgotten then
        ttl=(burst + 1) / rate + 1, delays=burst > 0 and not conf["nodelay"],
    )


_compiled = ConfCache(_compile)


def _leak(state: tuple[float, float] | None, now: float, rate: float, burst: float,
          ) -> tuple[tuple[float, float] | None, float]:
    """One request into the bucket ``state = (excess, last)``; returns the new excess, or
    -1 when rejected (the bucket then stays as it was)."""
    if state is None:
        excess = 0.0
    else:
        excess = max(state[0] - rate * abs(now - state[1]) + 1, 0.0)
        if excess > burst:
            return None, -1.0
    return (excess, now), excess


def _incoming(ctx: Any, c: _Compiled) -> float:
    key = f"{_limits.owner(ctx, name)}:{c.digest}:{c.key(ctx)}"
    return _buckets.update(key, _leak, time.monotonic(), c.rate, c.burst, ttl=c.ttl)


@hookimpl
def access(ctx: Any, conf: dict[str, Any]) -> Response | None:
    """Confs that never wait (``nodelay``, or ``burst: 0``)."""
    if _incoming(ctx, _compiled(conf)) < 0:
        code, body = _limits.rejection(conf)
        return Response(code, body)
    return None


async def access_delayed(ctx: Any, conf: dict[str, Any]) -> Response | None:
    """Local confs that may make a request wait (picked by :func:`phases_for`)."""
    c = _compiled(conf)
    excess = _incoming(ctx, c)
    if excess < 0:
        code, body = _limits.rejection(conf)
        return Response(code, body)
    delay = excess / c.rate
    if delay >= 0.001:
        await asyncio.sleep(delay)
    return None


# The bucket as APISIX's limit-req-redis keeps it (a hash: excess, last), on Redis's clock.
_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local state = redis.call('hmget', KEYS[1], 'excess', 'last')
local excess = 0
if state[1] and state[2] then
    excess = math.max(tonumber(state[1]) - rate * math.abs(now - tonumber(state[2])) + 1, 0)
    if excess > burst then
        return {0, tostring(excess)}
    end
end
redis.call('hset', KEYS[1], 'excess', tostring(excess), 'last', string.format('%.6f', now))
redis.call('pexpire', KEYS[1], math.ceil(((burst + 1) / rate + 1) * 1000))
return {1, tostring(excess)}
"""


async def access_redis(ctx: Any, conf: dict[str, Any]) -> Response | None:
    """``redis`` / ``redis-cluster`` confs (picked by :func:`phases_for`)."""
    c = _compiled(conf)
    key = f"plugin-limit-req:{_limits.owner(ctx, name)}:{c.digest}:{c.key(ctx)}"
    try:
        client = _limits.redis_client(conf)
        res = await _limits.run_script(client, _SCRIPT, [key], [c.rate, c.burst])
    except Exception as exc:
        ctx.log.error("failed to limit req: %s: %s", type(exc).__name__, exc)
        if conf["allow_degradation"]:
            return None
        return Response(500)
    if not int(res[0]):
        code, body = _limits.rejection(conf)
        return Response(code, body)
    delay = float(res[1]) / c.rate
    if delay >= 0.001 and not conf["nodelay"]:
        await asyncio.sleep(delay)
    return None


def phases_for(conf: dict[str, Any]) -> Any:
    """The plain ``access`` unless the conf can delay a request or uses Redis."""
    if conf["policy"] != "local":
        return {"access": access_redis}
    if conf["burst"] > 0 and not conf["nodelay"]:
        return {"access": access_delayed}
    return ("access",)


def init() -> None:
    _limits.retain_redis()


def destroy() -> None:
    _limits.release_redis()
