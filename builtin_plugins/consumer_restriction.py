"""consumer-restriction (APISIX priority 2400, access): allow or refuse requests by who sent them.

Runs in ``access``, so after the auth plugins of the ``rewrite`` phase identified the caller.
``type`` says what is compared: ``consumer_name`` (default; ``$consumer_name``), ``service_id``,
``route_id`` or ``consumer_group_id``. When the request has no such value (for example no auth
plugin attached a consumer) it is refused with 401 ``The request is rejected, please check the
<type> for this request``. Otherwise it is refused with ``rejected_code`` (default 403) and
``{"message": rejected_msg}`` (default ``The <type> is forbidden.``) when:

* the value is in ``blacklist``;
* ``whitelist`` is given and the value is not in it;
* the value is not whitelisted, ``allowed_by_methods`` has an entry whose ``user`` is the value,
  and the request method is not among that entry's ``methods``.

The lists are turned into sets once per conf.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from plugin_sdk import ConfCache, Response, hookimpl

name = "consumer-restriction"
version = "0.1"
priority = 2400

METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE",
           "PURGE")

schema: dict[str, Any] = {
    "type": "object",
    "properties": {
        "type": {
            "type": "string",
            "enum": ["consumer_name", "service_id", "route_id", "consumer_group_id"],
            "default": "consumer_name",
        },
        "blacklist": {"type": "array", "minItems": 1, "items": {"type": "string"}},
        "whitelist": {"type": "array", "minItems": 1, "items": {"type": "string"}},
        "allowed_by_methods": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "user": {"type": "string"},
                    "methods": {
                        "type": "array",
                        "minItems": 1,
                        "items": {"type": "string", "enum": list(METHODS)},
                    },
                },
            },
        },
        "rejected_code": {"type": "integer", "minimum": 200, "default": 403},
        "rejected_msg": {"type": "string"},
    },
    "anyOf": [
        {"required": ["blacklist"]},
        {"required": ["whitelist"]},
        {"required": ["allowed_by_methods"]},
    ],
}


@dataclass(frozen=True, slots=True)
class _Compiled:
    var: str
    blacklist: frozenset[str]
    whitelist: frozenset[str] | None
    methods: dict[str, frozenset[str]]
    """user -> the methods it may use (the first entry for a user decides, as in APISIX)."""
    missing: str
    rejected_code: int
    rejected_msg: str


def _compile(conf: dict[str, Any]) -> _Compiled:
    kind = conf["type"]
    methods: dict[str, frozenset[str]] = {}
    for entry in conf.get("allowed_by_methods") or ():
        user = entry.get("user")
        if user is not None and user not in methods:
            methods[user] = frozenset(entry.get("methods") or ())
    whitelist = conf.get("whitelist")
    message = conf.get("rejected_msg")
    if message is None:
        message = f"The {kind} is forbidden."
    return _Compiled(
        var=kind,
        blacklist=frozenset(conf.get("blacklist") or ()),
        whitelist=None if whitelist is None else frozenset(whitelist),
        methods=methods,
        missing=f"The request is rejected, please check the {kind} for this request",
        rejected_code=conf["rejected_code"],
        rejected_msg=message,
    )


_compiled: ConfCache[_Compiled] = ConfCache(_compile)


def _text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@hookimpl
def access(ctx: Any, conf: dict[str, Any]) -> Response | None:
    c = _compiled(conf)
    value = ctx.var[c.var]
    if value is None:
        return Response(401, {"message": c.missing})
    value = value if isinstance(value, str) else _text(value)
    if value in c.blacklist:
        return _reject(c)
    whitelisted = False
    if c.whitelist is not None:
        whitelisted = value in c.whitelist
        if not whitelisted:
            return _reject(c)
    if c.methods and not whitelisted:
        allowed = c.methods.get(value)
        if allowed is not None and ctx.request.method not in allowed:
            return _reject(c)
    return None


def _reject(c: _Compiled) -> Response:
    return Response(c.rejected_code, {"message": c.rejected_msg})
