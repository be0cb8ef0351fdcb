"""What the auth plugins (key-auth, basic-auth, jwt-auth) do alike once they found, or
failed to find, the caller. Plugin-private: uses only ``plugin_sdk``."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_plus

from plugin_sdk import Consumer, Response

ANONYMOUS_MISSING = "Invalid user authorization"


def unauthorized(scheme: str, conf: dict[str, Any], message: str) -> Response:
    """APISIX's 401: ``{"message": ...}`` with a ``WWW-Authenticate`` challenge for the conf's
    realm."""
    return Response(
        401, {"message": message}, {"WWW-Authenticate": f'{scheme} realm="{conf["realm"]}"'}
    )


def anonymous(ctx: Any, conf: dict[str, Any], plugin: str, error: str,
              ) -> tuple[Consumer | None, str]:
    """After a failed authentication: the conf's ``anonymous_consumer`` as ``(consumer, "")``,
    else ``(None, message for the 401)`` -- ``error`` when the conf names none,
    :data:`ANONYMOUS_MISSING` (logged as APISIX does) when the named consumer does not exist."""
    name = conf.get("anonymous_consumer")
    if name is None:
        return None, error
    consumer = ctx.consumers.get(name)
    if consumer is None:
        ctx.log.error("%s failed to authenticate the request, code: 401. error: "
                      "anonymous consumer %s not found", plugin, name)
        return None, ANONYMOUS_MISSING
    return consumer, ""


def identify(ctx: Any, consumer: Consumer) -> None:
    """Attach ``consumer`` (its plugins merge after ``rewrite``) and tell the upstream who
    called: ``X-Consumer-Username``, ``X-Credential-Identifier``, ``X-Consumer-Custom-ID``
    (a header without a value is removed, so a client cannot send its own)."""
    ctx.attach_consumer(consumer)
    upstream = ctx.upstream
    upstream.set_header("X-Consumer-Username", consumer.username)
    upstream.set_header("X-Credential-Identifier", consumer.credential_id)
    upstream.set_header("X-Consumer-Custom-ID", consumer.custom_id)


def drop_query_arg(ctx: Any, arg: str) -> None:
    """Send the request upstream without the query argument ``arg`` (every occurrence), as
    APISIX's ``set_uri_args`` does; ``$args`` and ``$arg_<arg>`` follow for later plugins."""
    upstream = ctx.upstream
    request = ctx.request
    target = upstream.uri
    if target is None:
        raw = request.raw_uri
        if raw.startswith("/"):
            target = raw
        else:  # absolute-form request-target: the path as routed
            target = request.path + ("?" + request.query_string if request.query_string else "")
    path, _, query = target.partition("?")
    kept = [
        part for part in query.split("&")
        if part and unquote_plus(part.partition("=")[0]) != arg
    ]
    args = "&".join(kept)
    upstream.uri = path + "?" + args if args else path
    var = ctx.var
    var["args"] = args
    var["query_string"] = args
    var["is_args"] = "?" if args else ""
    var["arg_" + arg] = None
