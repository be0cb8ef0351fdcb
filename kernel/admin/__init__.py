"""The APISIX Admin API (spec §2): ``/apisix/admin/...`` on ``deployment.admin.admin_listen``.

:func:`create_admin_app` builds the aiohttp application; the gateway process starts a site for
it. Every write goes to the :class:`~kernel.store.resources.ResourceStore`; the gateway sees it
through the store's watch side. Modules: :mod:`.transport` (headers, CORS, bodies),
:mod:`.auth` (keys, roles, ``allow_admin``), :mod:`.resources` (the resource table),
:mod:`.handlers` (GET/PUT/POST/PATCH/DELETE), :mod:`.checks` (validation, references),
:mod:`.meta` (plugins, schemas, reload), :mod:`.sealing` (fields encrypted at rest).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from aiohttp import web

from kernel.config import Config
from kernel.encryption import DataEncryption
from kernel.plugins.manager import PluginRegistry
from kernel.store.resources import ResourceStore

from . import auth, configs, handlers, meta
from .resources import META_RESOURCES, RESOURCE_METHODS, RESOURCES
from .transport import (
    AdminError,
    error,
    make_transport_middleware,
    nginx_page,
    read_body,
    reply,
)

__all__ = ["AdminContext", "create_admin_app"]

log = logging.getLogger("sixgate.admin")

ADMIN_PREFIX = "/apisix/admin"
RELOAD_OTHER_METHODS = ("GET", "POST", "DELETE", "PATCH")


@dataclass
class AdminContext:
    """What the Admin API works on."""

    store: ResourceStore
    registry: Callable[[], PluginRegistry]
    """The live plugin registry (changes on reload)."""
    reload_plugins: Callable[[], Awaitable[None]]
    """``PUT /apisix/admin/plugins/reload``."""
    config: Config

    @cached_property
    def encryption(self) -> DataEncryption:
        """``apisix.data_encryption`` (spec §10.2), read from ``config`` on first use."""
        return DataEncryption.from_config(self.config)


def _check_token(ctx: AdminContext, request: web.Request) -> None:
    reason = auth.check_token(ctx.config, request)
    if reason is not None:
        raise AdminError(401, {"error_msg": "failed to check token", "description": reason})


def _answer(status: int, body: Any) -> web.Response:
    return reply(status) if body is None else reply(status, body)


def _check_ttl(args: Mapping[str, str]) -> None:
    raw = args.get("ttl")
    if raw is None:
        return
    try:
        float(raw)
    except ValueError:
        raise error(400, "invalid argument ttl: should be a number") from None


async def dispatch(ctx: AdminContext, request: web.Request) -> web.StreamResponse:
    path = request.path
    method = request.method
    if path == ADMIN_PREFIX and method == "HEAD":
        return web.Response(status=200, headers={"Content-Type": "application/json"})
    if not path.startswith(ADMIN_PREFIX + "/"):
        return nginx_page(404)
    rest = path[len(ADMIN_PREFIX) + 1 :]
    args = request.query

    if rest == "plugins/reload" and method in ("PUT", *RELOAD_OTHER_METHODS):
        _check_token(ctx, request)
        if method != "PUT":
            raise error(
                405,
                f"please use PUT method to reload the plugins, {method} method is not allowed.",
            )
        try:
            await ctx.reload_plugins()
        except Exception as exc:  # APISIX answers 500 with the event error
            log.exception("plugin reload failed")
            raise error(500, str(exc) or type(exc).__name__) from None
        return reply(200, "done")
    if rest == "plugins/list" and method == "GET":
        _check_token(ctx, request)
        return _answer(*meta.plugins_list(ctx, args))
    if rest.startswith("schema/validate/") and method == "POST":
        _check_token(ctx, request)
        resource = rest[len("schema/validate/") :].split("/", 1)[0]
        if resource not in RESOURCES:
            raise AdminError(404, {"error_msg": "Unsupported resource type: " + resource})
        body = await read_body(request)
        return _answer(*meta.schema_validate(resource, body))

    if configs.serves(ctx, rest, method):  # standalone API-driven mode (spec §2.13)
        _check_token(ctx, request)
        return await configs.dispatch(ctx, request, rest)

    if method not in RESOURCE_METHODS:
        return nginx_page(404)
    _check_token(ctx, request)

    segs = rest.split("/")
    res = segs[0]
    rid: str | None = segs[1] if len(segs) > 1 and segs[1] != "" else None
    sub_path = "/".join(segs[2:])
    username: str | None = None
    if res == "schema" and rid == "plugins":
        res = "plugins"
        rid = segs[2] if len(segs) > 2 and segs[2] != "" else None
        sub_path = "/".join(segs[3:])
    if res == "consumers" and len(segs) >= 3 and segs[2] == "credentials":
        res = "credentials"
        username = rid
        rid = segs[3] if len(segs) > 3 and segs[3] != "" else None
        sub_path = "/".join(segs[4:])

    if res == "secrets":
        # /secrets/<manager>/<id>[/<sub/path>]: the id is "<manager>/<id>"
        manager = rid
        sid = segs[2] if len(segs) > 2 and segs[2] != "" else None
        rid = f"{manager}/{sid}" if manager is not None and sid is not None else None
        sub_path = "/".join(segs[3:])

    if res in META_RESOURCES:
        if method != "GET":
            raise error(404, "not found")
        await read_body(request)
        if res == "schema":
            return _answer(*meta.schema_get(rid))
        return _answer(*meta.plugin_get(ctx, rid, args))

    rk = RESOURCES.get(res)
    if rk is None or (rk.name == "credentials" and username is None):
        raise error(404, "Unsupported resource type: " + res)
    if rk.name == "stream_routes":
        raise error(400, "stream mode is disabled, can not add stream routes")
    body = await read_body(request)
    _check_ttl(args)
    target = handlers.Target(ctx, rk, rid, sub_path, username)
    return _answer(*await handlers.handle(target, method, body, args))


def create_admin_app(ctx: AdminContext) -> web.Application:
    """The Admin API as an aiohttp application (one catch-all route, APISIX's dispatch)."""

    def cors() -> bool:
        return bool(ctx.config.get("deployment.admin.enable_admin_cors", True))

    networks = auth.allowed_networks(ctx.config)

    @web.middleware
    async def allow_admin(request: web.Request, handler: Any) -> web.StreamResponse:
        if not auth.client_allowed(networks, request.remote):
            resp = nginx_page(403)
            resp.headers["Server"] = "APISIX/3.18.0"
            return resp
        result: web.StreamResponse = await handler(request)
        return result

    async def handle(request: web.Request) -> web.StreamResponse:
        return await dispatch(ctx, request)

    app = web.Application(
        middlewares=[allow_admin, make_transport_middleware(cors)],
        client_max_size=2 * 1024 * 1024,
    )
    app.router.add_route("*", "/{tail:.*}", handle)
    return app
