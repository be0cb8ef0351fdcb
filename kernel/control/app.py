"""The control API's aiohttp application: the endpoints of spec §8 plus ``/v1/sixgate/``."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from . import health, metadata, resources, schema, sixgate
from .context import ControlContext
from .replies import empty_reply, error_reply, json_reply, text_reply

log = logging.getLogger("sixgate.control")

CONTEXT: web.AppKey[ControlContext] = web.AppKey("control", ControlContext)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _ctx(request: web.Request) -> ControlContext:
    return request.app[CONTEXT]


@web.middleware
async def _answers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Unknown path or method: 404 with no body; a failure: 500 ``{"error_msg"}``."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status in (404, 405):
            return empty_reply(404)
        raise
    except asyncio.CancelledError:
        raise
    except Exception as err:
        log.exception("control API: %s %s failed", request.method, request.path)
        return error_reply(500, f"{type(err).__name__}: {err}")


async def get_schema(request: web.Request) -> web.StreamResponse:
    return json_reply(200, schema.schema_document(_ctx(request).registry()))


async def get_healthcheck(request: web.Request) -> web.StreamResponse:
    rows, note = health.report(_ctx(request).state())
    if health.wants_html(request.headers.get("Accept")):
        return text_reply(200, health.render_html(rows), "text/html")
    return json_reply(200, rows, note)


async def get_healthcheck_type(request: web.Request) -> web.StreamResponse:
    src_type = request.match_info["src_type"]
    return error_reply(404, f"missing src id for src type {src_type}")


async def get_healthcheck_one(request: web.Request) -> web.StreamResponse:
    ctx = _ctx(request)
    status, body, note = health.one(ctx.state(), ctx.prefix, request.match_info["src_type"],
                                    request.match_info["src_id"])  # fmt: skip
    if status == 200 and health.wants_html(request.headers.get("Accept")):
        return text_reply(200, health.render_html([body]), "text/html")
    return json_reply(status, body, note)


async def post_gc(_: web.Request) -> web.StreamResponse:
    gc.collect()
    return empty_reply(200)


def _dump_all(collection: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return json_reply(200, await resources.dump_all(_ctx(request), collection))

    return handler


def _dump_one(collection: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        ident = request.match_info["id"]
        found = await resources.dump_one(_ctx(request), collection, ident)
        if found is None:
            return error_reply(404, resources.not_found(collection, ident))
        return json_reply(200, found)

    return handler


async def get_plugin_metadatas(request: web.Request) -> web.StreamResponse:
    ctx = _ctx(request)
    state = ctx.state()
    names = state.snapshot.plugins
    if names is None:
        names = tuple(str(p) for p in ctx.config().get("plugins") or ())
    return json_reply(200, metadata.all_values(state, names))


async def get_plugin_metadata(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    found = metadata.value(_ctx(request).state(), name)
    if found is None:
        return error_reply(404, metadata.not_found(name))
    return json_reply(200, found)


async def put_plugins_reload(request: web.Request) -> web.StreamResponse:
    await _ctx(request).reload_plugins()
    return text_reply(200, "done")


async def get_sixgate_config(request: web.Request) -> web.StreamResponse:
    return json_reply(200, sixgate.config_report(_ctx(request)))


async def get_sixgate_plugins(request: web.Request) -> web.StreamResponse:
    return json_reply(200, sixgate.plugins_report(_ctx(request)))


async def get_sixgate_certificates(request: web.Request) -> web.StreamResponse:
    return json_reply(200, sixgate.certificates_report(_ctx(request)))


def create_control_app(ctx: ControlContext) -> web.Application:
    app = web.Application(middlewares=[_answers])
    app[CONTEXT] = ctx
    get = app.router.add_get
    get("/v1/schema", get_schema)
    get("/v1/healthcheck", get_healthcheck)
    get("/v1/healthcheck/{src_type}", get_healthcheck_type)
    get("/v1/healthcheck/{src_type}/{src_id}", get_healthcheck_one)
    app.router.add_post("/v1/gc", post_gc)
    for collection, kind in resources.KINDS.items():
        get(f"/v1/{collection}", _dump_all(collection))
        get(f"/v1/{kind}/{{id}}", _dump_one(collection))  # APISIX's path
        get(f"/v1/{collection}/{{id}}", _dump_one(collection))  # and the plural, as a courtesy
    get("/v1/plugin_metadatas", get_plugin_metadatas)
    get("/v1/plugin_metadata/{name}", get_plugin_metadata)
    app.router.add_put("/v1/plugins/reload", put_plugins_reload)
    get("/v1/sixgate/config", get_sixgate_config)
    get("/v1/sixgate/plugins", get_sixgate_plugins)
    get("/v1/sixgate/certificates", get_sixgate_certificates)
    return app
