"""What limit-count, limit-req and limit-conn share: keys, counter identities, Redis.

Not a plugin (no entry point): a helper the three plugin modules import. A plugin hot reload
imports the plugin modules again but keeps this module, so the per-worker Redis clients below
outlive reloads.

**Keys** (APISIX's ``gen_limit_key``). A request's limit key is the value of ``key``
(``key_type: var``: the variable ``ctx.var[key]``; ``var_combination``: a ``$var`` template;
``constant``: the text itself). When the variable is unset, or the template resolves no
variable, the client address (``$remote_addr``) is used instead. The counter the key lands in
is ``<owner>:<conf digest>:<key>``: the owner is the route the conf applies to (a conf
inherited from a service or a plugin config still counts per route, as APISIX's
``route&service`` does) or ``global_rule`` for a conf that only a global rule carries; the
digest hashes the conf, so each conf revision counts afresh. With ``group`` (limit-count) the
counter is ``group:<group>:<key>`` for every conf of that group.

**Redis.** :func:`redis_client` gives one ``redis.asyncio`` client per worker, event loop and
connection parameters, made on first use and reused by every request (its pool keeps the
connections alive). Scripts run with ``EVALSHA`` (loaded once per server, again after a
``SCRIPT FLUSH``). Calls are not retried: a failure (refused connection, timeout after
``redis_timeout`` ms) is reported at once, and the plugin then degrades (``allow_degradation``)
or answers 500, as APISIX does. The clients of a loop are closed when the last limit plugin of
that loop is destroyed (the gateway stops, or the plugins are removed by a reload).
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import logging
import math
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from plugin_sdk.template import compile_template_n

log = logging.getLogger("sixgate.plugin.limits")

__all__ = [
    "REDIS_CLUSTER_PROPERTIES",
    "REDIS_PROPERTIES",
    "KeyFn",
    "as_int",
    "check_redis",
    "compile_key",
    "compile_number",
    "compile_rule_key",
    "conf_digest",
    "owner",
    "redis_client",
    "redis_schema",
    "rejection",
    "release_redis",
    "retain_redis",
    "run_script",
]

KeyFn = Callable[[Any], str]
"""``key(ctx) -> str``: a request's limit key (before the owner and digest prefix)."""

# -- schemas --------------------------------------------------------------------------------

REDIS_PROPERTIES: dict[str, Any] = {
    "redis_host": {"type": "string", "minLength": 2},
    "redis_port": {"type": "integer", "minimum": 1, "default": 6379},
    "redis_username": {"type": "string", "minLength": 1},
    "redis_password": {"type": "string", "minLength": 0},
    "redis_database": {"type": "integer", "minimum": 0, "default": 0},
    "redis_timeout": {"type": "integer", "minimum": 1, "default": 1000},
    "redis_ssl": {"type": "boolean", "default": False},
    "redis_ssl_verify": {"type": "boolean", "default": False},
    "redis_keepalive_timeout": {"type": "integer", "minimum": 1000, "default": 10000},
    "redis_keepalive_pool": {"type": "integer", "minimum": 1, "default": 100},
}
REDIS_CLUSTER_PROPERTIES: dict[str, Any] = {
    "redis_cluster_nodes": {
        "type": "array", "minItems": 1,
        "items": {"type": "string", "minLength": 2, "maxLength": 100},
    },
    "redis_password": {"type": "string", "minLength": 0},
    "redis_timeout": {"type": "integer", "minimum": 1, "default": 1000},
    "redis_cluster_name": {"type": "string"},
    "redis_cluster_ssl": {"type": "boolean", "default": False},
    "redis_cluster_ssl_verify": {"type": "boolean", "default": False},
}


def redis_schema(extra_redis: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``if``/``then``/``else`` part of a limit plugin's schema: the Redis fields (and
    defaults) that apply when ``policy`` is ``redis`` or ``redis-cluster`` (APISIX's
    ``utils/redis-schema.lua``). ``extra_redis``: more properties for both policies."""
    more = dict(extra_redis or {})
    return {
        "if": {"properties": {"policy": {"enum": ["redis"]}}},
        "then": {"properties": {**REDIS_PROPERTIES, **more}, "required": ["redis_host"]},
        "else": {
            "if": {"properties": {"policy": {"enum": ["redis-cluster"]}}},
            "then": {"properties": {**REDIS_CLUSTER_PROPERTIES, **more},
                     "required": ["redis_cluster_nodes", "redis_cluster_name"]},
        },
    }


def check_redis(conf: Mapping[str, Any]) -> str | None:
    """What the JSON schema cannot say about the Redis policies: the ``redis`` package must be
    installed, and ``redis_cluster_nodes`` entries must be ``host:port``."""
    policy = conf.get("policy")
    if policy not in ("redis", "redis-cluster"):
        return None
    if importlib.util.find_spec("redis") is None:
        return f"policy {policy} needs the redis package (pip install redis)"
    if policy != "redis-cluster":
        return None
    for node in conf.get("redis_cluster_nodes") or ():
        host, sep, port = str(node).rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            return f"invalid redis_cluster_nodes entry {node!r}: expected host:port"
    return None


# -- keys -----------------------------------------------------------------------------------


def compile_key(key_type: str, key: str) -> KeyFn:
    """``key(ctx)`` for one conf (see the module docstring for the fallback)."""
    if key_type == "constant":
        return lambda ctx: key
    if key_type == "var_combination":
        render = compile_template_n(key)

        def combined(ctx: Any) -> str:
            v = ctx.var
            text, resolved = render(v)
            if resolved == 0:
                return str(v["remote_addr"])
            return text

        return combined

    def variable(ctx: Any) -> str:
        v = ctx.var
        value = v[key]
        if value is None:
            value = v["remote_addr"]
        return value if type(value) is str else str(value)

    return variable


def compile_rule_key(template: str) -> Callable[[Any], str | None]:
    """A ``rules[].key`` template: ``None`` when it resolves no variable (the rule is
    skipped for that request)."""
    render = compile_template_n(template)

    def rule_key(ctx: Any) -> str | None:
        text, resolved = render(ctx.var)
        return text if resolved else None

    return rule_key


def compile_number(value: Any) -> Callable[[Any], float | None] | None:
    """``None`` for a plain number (use it as is); for a string (``"$http_x_limit"``, ``"10"``)
    ``number(ctx)``: the resolved number, or ``None`` when it is not one."""
    if not isinstance(value, str):
        return None
    render = compile_template_n(value)

    def number(ctx: Any) -> float | None:
        text = render(ctx.var)[0].strip()
        try:
            n = float(text)
        except ValueError:
            try:
                n = float(int(text, 0))
            except ValueError:
                return None
        if math.isnan(n) or math.isinf(n):
            return None
        return n

    return number


def as_int(n: float) -> int | float:
    return int(n) if n == int(n) else n


def conf_digest(conf: Mapping[str, Any]) -> str:
    """A stable 16-hex-digit digest of a conf (``_meta`` left out), the same in every
    process and every gateway (so gateways sharing a Redis share counters)."""
    body = {k: v for k, v in conf.items() if k != "_meta"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def owner(ctx: Any, plugin: str) -> str:
    """The object whose counters a conf uses (see the module docstring).

    A conf found neither on the matched route, its service, its plugin config nor the
    consumer (or its group) comes from a global rule. When a global rule and the route both
    configure the plugin, both count per route.
    """
    route = ctx.route
    if route is None:
        return "global_rule"
    plugins = route.get("plugins")
    if (plugins and plugin in plugins) or route.get("plugin_config_id") is not None:
        return f"route:{route.get('id')}"
    service = ctx.service
    if service is not None:
        splugins = service.get("plugins")
        if splugins and plugin in splugins:
            return f"route:{route.get('id')}"
    consumer = ctx.consumer
    if consumer is not None and (plugin in consumer.plugins or consumer.group_id is not None):
        return f"route:{route.get('id')}"
    return "global_rule"


def rejection(conf: Mapping[str, Any]) -> tuple[int, dict[str, str] | None]:
    """``(status, body)`` of a rejected request: ``{"error_msg": rejected_msg}`` or, without
    ``rejected_msg``, ``None`` (nginx's page for the status)."""
    msg = conf.get("rejected_msg")
    return conf["rejected_code"], ({"error_msg": msg} if msg is not None else None)


# -- Redis ----------------------------------------------------------------------------------

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[Any, ...], Any]] = (
    weakref.WeakKeyDictionary()
)
_users: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, int] = weakref.WeakKeyDictionary()
_scripts: dict[tuple[int, str], Any] = {}


def _params(conf: Mapping[str, Any]) -> tuple[Any, ...]:
    if conf["policy"] == "redis-cluster":
        return ("cluster", tuple(conf["redis_cluster_nodes"]), conf.get("redis_password"),
                conf["redis_timeout"], conf["redis_cluster_ssl"],
                conf["redis_cluster_ssl_verify"])
    return ("redis", conf["redis_host"], conf["redis_port"], conf["redis_database"],
            conf.get("redis_username"), conf.get("redis_password"), conf["redis_timeout"],
            conf["redis_ssl"], conf["redis_ssl_verify"])


def _make_client(params: tuple[Any, ...]) -> Any:
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    no_retry = Retry(NoBackoff(), 0)
    if params[0] == "cluster":
        from redis.asyncio.cluster import ClusterNode, RedisCluster

        _, nodes, password, timeout_ms, ssl, verify = params
        startup = []
        for node in nodes:
            host, _, port = node.rpartition(":")
            startup.append(ClusterNode(host.strip("[]"), int(port)))
        return RedisCluster(
            startup_nodes=startup, password=password or None, retry=no_retry,
            socket_timeout=timeout_ms / 1000,
            socket_connect_timeout=timeout_ms / 1000, ssl=ssl,
            ssl_cert_reqs="required" if verify else "none", ssl_check_hostname=bool(verify),
            decode_responses=True,
        )
    _, host, port, db, username, password, timeout_ms, ssl, verify = params
    extra: dict[str, Any] = {}
    if ssl:
        extra = {"ssl": True, "ssl_cert_reqs": "required" if verify else "none",
                 "ssl_check_hostname": bool(verify)}
    return Redis(
        host=host, port=port, db=db, username=username, password=password or None,
        socket_timeout=timeout_ms / 1000, socket_connect_timeout=timeout_ms / 1000,
        retry=no_retry, decode_responses=True, **extra,
    )


def redis_client(conf: Mapping[str, Any]) -> Any:
    """The worker's client for ``conf``'s Redis (``redis`` or ``redis-cluster`` policy) on
    the running event loop; made once, then shared by every request and conf with the same
    connection parameters."""
    loop = asyncio.get_running_loop()
    clients = _clients.get(loop)
    if clients is None:
        clients = _clients[loop] = {}
    params = _params(conf)
    client = clients.get(params)
    if client is None:
        client = clients[params] = _make_client(params)
    return client


async def run_script(client: Any, source: str, keys: list[str], args: list[Any]) -> Any:
    """Run a Lua script by ``EVALSHA`` (loaded on first use, again after ``NOSCRIPT``)."""
    script = _scripts.get((id(client), source))
    if script is None or script.registered_client is not client:
        script = _scripts[(id(client), source)] = client.register_script(source)
    return await script(keys=keys, args=args)


def retain_redis() -> None:
    """A limit plugin was initialised on the running loop (its ``init``)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    _users[loop] = _users.get(loop, 0) + 1


def release_redis() -> None:
    """A limit plugin was destroyed: when it was the loop's last, close the loop's clients
    (the new generation of a reload is initialised before the old one is destroyed, so a
    reload keeps them)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    users = _users.get(loop, 0) - 1
    if users > 0:
        _users[loop] = users
        return
    _users.pop(loop, None)
    clients = _clients.pop(loop, None) or {}
    for client in clients.values():
        for key in [k for k in _scripts if k[0] == id(client)]:
            del _scripts[key]
        _close_now(client)


def _close_now(client: Any) -> None:
    """Close a client's connections at once. ``destroy()`` cannot await, and when the
    gateway stops its loop ends right after: a close task would never finish. (redis-py's
    pools keep their connections in these lists; ``_close`` is its own no-wait close.)"""
    connections: list[Any] = []
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        connections += getattr(pool, "_available_connections", [])
        connections += getattr(pool, "_in_use_connections", [])
    get_nodes = getattr(client, "get_nodes", None)
    if pool is None and get_nodes is not None:
        for node in get_nodes():
            connections += getattr(node, "_connections", [])
    for conn in connections:
        try:
            conn._close()
        except Exception:  # already broken: nothing left to close
            log.debug("closing a Redis connection failed", exc_info=True)
