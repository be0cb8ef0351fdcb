"""request-id (APISIX priority 12015, rewrite + header_filter): give every request an id.

``rewrite``: a request that carries a non-empty ``header_name`` header keeps it (the first value
when repeated) and it is forwarded unchanged; otherwise an id is generated with ``algorithm``
and set on the request sent upstream (and on ``ctx.request.headers``, so later plugins see it
as ``$http_x_request_id``). Either way the id becomes ``$apisix_request_id``.

``header_filter``: with ``include_in_response`` (default true) the response gets
``header_name: <id>`` unless it already has a non-empty one (e.g. from the upstream).

Algorithms: ``uuid`` (random UUID v4, the default), ``nanoid`` (21 URL-safe characters),
``range_id`` (``range_id.length`` characters drawn from ``range_id.char_set``), ``ksuid``
(27 base62 characters: a 32-bit timestamp since 2014-05-13 16:53:20 UTC then 128 random bits)
and ``uuidv7`` (time-ordered UUID, RFC 9562).
"""

from __future__ import annotations

import os
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

from plugin_sdk import ConfCache, hookimpl

name = "request-id"
version = "0.1"
priority = 12015

# APISIX's default, character for character (its upper-case run has "IGK": no "J").
DEFAULT_CHAR_SET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIGKLMNOPQRSTUVWXYZ0123456789"

schema: dict[str, Any] = {
    "type": "object",
    "properties": {
        "header_name": {"type": "string", "default": "X-Request-Id"},
        "include_in_response": {"type": "boolean", "default": True},
        "algorithm": {
            "type": "string",
            "enum": ["uuid", "nanoid", "range_id", "ksuid", "uuidv7"],
            "default": "uuid",
        },
        "range_id": {
            "type": "object",
            "properties": {
                "length": {"type": "integer", "minimum": 6, "default": 16},
                "char_set": {"type": "string", "minLength": 6, "default": DEFAULT_CHAR_SET},
            },
            "default": {},
        },
    },
}

# -- generators ----------------------------------------------------------------------------------

_NANOID_ALPHABET = "_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_KSUID_EPOCH = 1_400_000_000


def new_uuid() -> str:
    return str(uuid.UUID(bytes=os.urandom(16), version=4))


def new_nanoid() -> str:
    # 21 symbols of a 64-character alphabet: 6 random bits each.
    return "".join(_NANOID_ALPHABET[b & 63] for b in os.urandom(21))


def new_range_id(length: int = 16, char_set: str = DEFAULT_CHAR_SET) -> str:
    return "".join(random.choices(char_set, k=length))


def new_ksuid() -> str:
    stamp = int(time.time()) - _KSUID_EPOCH
    n = int.from_bytes(stamp.to_bytes(4, "big") + os.urandom(16), "big")
    out = []
    for _ in range(27):
        n, r = divmod(n, 62)
        out.append(_BASE62[r])
    return "".join(reversed(out))


def new_uuidv7() -> str:
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    rand_a = rand >> 68  # 12 bits
    rand_b = rand & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    return str(uuid.UUID(int=value))


def _generator(conf: dict[str, Any]) -> Callable[[], str]:
    algorithm = conf.get("algorithm", "uuid")
    if algorithm == "nanoid":
        return new_nanoid
    if algorithm == "range_id":
        range_conf = conf.get("range_id") or {}
        length = int(range_conf.get("length", 16))
        char_set = range_conf.get("char_set", DEFAULT_CHAR_SET)
        return lambda: new_range_id(length, char_set)
    if algorithm == "ksuid":
        return new_ksuid
    if algorithm == "uuidv7":
        return new_uuidv7
    return new_uuid


# The id generator per conf object (see plugin_sdk.ConfCache).
_generators: ConfCache[Callable[[], str]] = ConfCache(_generator)


@hookimpl
def rewrite(ctx: Any, conf: dict[str, Any]) -> None:
    header = conf.get("header_name", "X-Request-Id")
    rid = ctx.request.headers.get(header)
    if not rid:
        rid = _generators(conf)()
        ctx.upstream.set_header(header, rid)
        ctx.request.headers.set(header, rid)
    ctx.var["apisix_request_id"] = rid
    ctx.plugin_data["id"] = rid


@hookimpl
def header_filter(ctx: Any, conf: dict[str, Any]) -> None:
    if not conf.get("include_in_response", True):
        return
    rid = ctx.plugin_data.get("id")
    if rid is None:  # rewrite did not run (a request answered before it)
        return
    header = conf.get("header_name", "X-Request-Id")
    headers = ctx.response.headers
    if not headers.get(header):
        headers.set(header, rid)
