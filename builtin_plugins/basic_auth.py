"""basic-auth (APISIX priority 2520, rewrite, auth): identify the caller by HTTP Basic auth.

Reads ``Authorization: Basic <base64(username:password)>`` (scheme case-insensitive). The
decoded text is split on ``:`` (the first two fields are username and password; whitespace is
removed from both, as APISIX does), the consumer whose (or whose credential's)
``basic-auth.username`` matches is looked up and its ``password`` compared in constant time.
Failures answer 401 with ``WWW-Authenticate: Basic realm="<realm>"``: ``Missing authorization
in request`` (no header), ``Invalid authorization in request`` (another scheme, bad base64, no
``:``), ``Invalid user authorization`` (unknown user or wrong password). With
``anonymous_consumer`` a failure attaches that consumer instead (401 ``Invalid user
authorization`` when it does not exist).

On success, as key-auth: the consumer is attached and the upstream request gets
``X-Consumer-Username``, ``X-Credential-Identifier`` and ``X-Consumer-Custom-ID`` (unset ones
removed); ``hide_credentials`` removes ``Authorization`` from the upstream request.

The consumer's ``password`` is listed in ``encrypt_fields`` (stored encrypted when field
encryption is on; the gateway decrypts it before lookups).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from typing import Any

from builtin_plugins._auth import anonymous, identify, unauthorized
from plugin_sdk import Consumer, Response, hookimpl

name = "basic-auth"
version = "0.1"
priority = 2520
type = "auth"

schema: dict[str, Any] = {
    "type": "object",
    "properties": {
        "hide_credentials": {"type": "boolean", "default": False},
        "realm": {"type": "string", "minLength": 1, "default": "basic"},
        "anonymous_consumer": {"type": "string", "minLength": 1},
    },
}

consumer_schema: dict[str, Any] = {
    "type": "object",
    "properties": {
        "username": {"type": "string"},
        "password": {"type": "string"},
    },
    "required": ["username", "password"],
}

encrypt_fields = ("password",)

_SCHEME = re.compile(r"\s*basic\s+(\S+)\s*$", re.IGNORECASE | re.ASCII)
_SPACE = re.compile(rb"\s+")

MISSING = "Missing authorization in request"
INVALID = "Invalid authorization in request"
WRONG_USER = "Invalid user authorization"


def _credentials(header: str) -> tuple[str, bytes] | None:
    """``(username, password)`` from an ``Authorization`` value, or ``None`` when malformed."""
    m = _SCHEME.match(header)
    if m is None:
        return None
    token = m.group(1)
    try:
        decoded = base64.b64decode(token + "=" * (-len(token) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    fields = decoded.split(b":")
    if len(fields) < 2:
        return None
    username = _SPACE.sub(b"", fields[0]).decode("utf-8", "surrogateescape")
    return username, _SPACE.sub(b"", fields[1])


def _find(ctx: Any) -> tuple[Consumer | None, str]:
    header = ctx.request.headers.get("Authorization")
    if header is None:
        return None, MISSING
    creds = _credentials(header)
    if creds is None:
        return None, INVALID
    username, password = creds
    consumer = ctx.consumers.find(name, "username", username)
    if consumer is None:
        return None, WRONG_USER
    expected = consumer.plugins[name].get("password")
    if not isinstance(expected, str) or not hmac.compare_digest(
        expected.encode("utf-8", "surrogateescape"), password
    ):
        return None, WRONG_USER
    return consumer, ""


@hookimpl
def rewrite(ctx: Any, conf: dict[str, Any]) -> Response | None:
    consumer, error = _find(ctx)
    if consumer is None:
        consumer, error = anonymous(ctx, conf, name, error)
        if consumer is None:
            return unauthorized("Basic", conf, error)
    if conf["hide_credentials"]:
        ctx.upstream.remove_header("Authorization")
    identify(ctx, consumer)
    return None
