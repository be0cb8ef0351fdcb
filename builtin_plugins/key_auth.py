"""key-auth (APISIX priority 2500, rewrite, auth): identify the caller by an API key.

The key is read from the request header ``header`` (default ``apikey``), else from the query
argument ``query`` (default ``apikey``), and looked up among the consumers' (and their
credentials') ``key-auth.key``. Failures answer 401 with ``WWW-Authenticate: apikey
realm="<realm>"``: ``Missing API key in request`` when there is no key, ``Invalid API key in
request`` when no consumer has it. With ``anonymous_consumer`` a failure attaches that consumer
instead (401 ``Invalid user authorization`` when it does not exist).

On success the consumer is attached (``$consumer_name``; its plugins are merged over the
route's once ``rewrite`` is over) and the upstream request gets ``X-Consumer-Username``,
``X-Credential-Identifier`` (the credential id when a credential matched) and
``X-Consumer-Custom-ID`` (the consumer's ``labels.custom_id``); each one that has no value is
removed, so a client cannot send its own. With ``hide_credentials`` the key is not sent
upstream: the header is removed, or the query argument is dropped from the upstream target
(and from ``$args`` for later plugins).

The consumer's ``key`` is listed in ``encrypt_fields``: stored encrypted when
``apisix.data_encryption.enable_encrypt_fields`` is on; the gateway decrypts it before lookups.
"""

from __future__ import annotations

from typing import Any

from builtin_plugins._auth import anonymous, drop_query_arg, identify, unauthorized
from plugin_sdk import Response, hookimpl

name = "key-auth"
version = "0.1"
priority = 2500
type = "auth"

schema: dict[str, Any] = {
    "type": "object",
    "properties": {
        "header": {"type": "string", "default": "apikey"},
        "query": {"type": "string", "default": "apikey"},
        "hide_credentials": {"type": "boolean", "default": False},
        "realm": {"type": "string", "minLength": 1, "default": "key"},
        "anonymous_consumer": {"type": "string", "minLength": 1},
    },
}

consumer_schema: dict[str, Any] = {
    "type": "object",
    "properties": {"key": {"type": "string"}},
    "required": ["key"],
}

encrypt_fields = ("key",)


@hookimpl
def rewrite(ctx: Any, conf: dict[str, Any]) -> Response | None:
    header = conf["header"]
    key: Any = ctx.request.headers.get(header)
    from_header = key is not None
    if not from_header:
        key = ctx.var["arg_" + conf["query"]]
    if key is None:
        error = "Missing API key in request"
        consumer = None
    else:
        consumer = ctx.consumers.find(name, "key", key)
        error = "Invalid API key in request"
    if consumer is None:
        consumer, error = anonymous(ctx, conf, name, error)
        if consumer is None:
            return unauthorized("apikey", conf, error)
    elif conf["hide_credentials"]:
        if from_header:
            ctx.upstream.remove_header(header)
        else:
            drop_query_arg(ctx, conf["query"])
    identify(ctx, consumer)
    return None
