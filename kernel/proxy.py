"""The request path: match a route, run its compiled phases, forward upstream, stream back.

Runs once per request with the state snapshot read at its start. Everything that can be
prepared ahead (routes, chains, pickers, header tables) was prepared when the state was built.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from kernel.chain import (
    EMPTY_CHAIN,
    Chain,
    run_request_phase,
    run_response_phase,
    run_response_phase_async,
    step_ending,
    step_failed,
)
from kernel.context import RequestContext
from kernel.direct import DirectExchange
from kernel.forward import UpstreamForwarder
from kernel.responses import HTML, TEXT, DateHeader
from kernel.upstream.connection import ConnectionPool, UpstreamError
from plugin_sdk import Response

if TYPE_CHECKING:
    from kernel.accesslog import AccessLog
    from kernel.server import HttpProtocol, HttpRequest
    from kernel.state import CompiledRoute, GatewayState
    from kernel.upstream.resolver import Resolver
    from kernel.upstream.runtime import UpstreamRuntime

log = logging.getLogger("sixgate.proxy")

_NOT_FOUND_BODY = b'{"error_msg":"404 Route Not Found"}\n'


class Proxy(UpstreamForwarder):
    """Serves requests against the gateway's current state: routing, phases, the choice
    between the callback path and the task path, and the end of each request."""

    def __init__(
        self,
        get_state: Any,
        resolver: Resolver,
        access_log: AccessLog | None,
        server_tokens: bool,
        delete_uri_tail_slash: bool,
        show_upstream_status: bool,
    ) -> None:
        from kernel import APISIX_VERSION

        self._get_state = get_state
        self.pool = ConnectionPool()
        self.resolver = resolver
        self.access_log = access_log
        self.server_header = b"APISIX/" + APISIX_VERSION.encode() if server_tokens else b"APISIX"
        self._server_line = b"Server: " + self.server_header + b"\r\n"
        self.delete_uri_tail_slash = delete_uri_tail_slash
        self.show_upstream_status = show_upstream_status
        self._date = DateHeader()
        self.inflight = 0
        self.loop = asyncio.get_event_loop()

    # --- entry point ------------------------------------------------------------------
    def dispatch(self, proto: HttpProtocol, req: HttpRequest) -> None:
        """Serve a request whose head was just parsed (called by the connection, in order).

        Routes compiled as ``direct`` with a body-less request run on the callback path
        (:mod:`kernel.direct`); everything else becomes a task running :meth:`handle`.
        """
        state: GatewayState = self._get_state()
        self.inflight += 1
        ctx = RequestContext(req, req.conn.host_of(req.host_header))
        uri = req.path
        if self.delete_uri_tail_slash and len(uri) > 1 and uri[-1] == "/":
            uri = ctx.uri = uri[:-1]
        match = state.router.match(uri, req.method, ctx.host, req.host_header, req.client_ip,
                                   ctx)
        if match is None:
            self.loop.create_task(self.handle(proto, req, ctx, None, state))
            return
        route: CompiledRoute = match.spec.payload
        ctx.route = route.conf
        ctx.route_id = route.id
        ctx.service = route.service
        ctx.uri_params = match.params
        ctx.match = match
        if route.direct and req.body_stream is None and not req.upgrade:
            try:
                if self._direct(proto, req, ctx, route, state):
                    return
            except Exception:
                log.exception("unhandled error while serving %s %s", req.method, req.raw_uri)
                proto.abort()
                self.finish_sync(proto, req, ctx)
                return
        self.loop.create_task(self.handle(proto, req, ctx, route, state))

    def _direct(
        self, proto: HttpProtocol, req: HttpRequest, ctx: RequestContext, route: CompiledRoute,
        state: GatewayState,
    ) -> bool:
        """Start the callback path; ``False`` leaves the request to :meth:`handle`."""
        chain = route.chain
        if chain.rewrite or chain.access:
            ctx.chain = chain
            _bind(ctx, state)
            ending = _run_sync(chain.rewrite, ctx)
            if ending is None and ctx.consumer is not None:
                # An auth plugin identified a consumer: merging its plugins (possibly async
                # ones) continues on the task path.
                self.loop.create_task(self.handle(proto, req, ctx, route, state, chain))
                return True
            if ending is None:
                ending = _run_sync(chain.access, ctx)
            if ending is not None:
                self.loop.create_task(self._answer(proto, req, ctx, ending, chain))
                return True
            changes = ctx.upstream_state
            if changes is not None and changes.selected is not None:
                # A plugin chose another upstream: the task path forwards there.
                self.loop.create_task(self._forward_task(proto, req, ctx, route, None))
                return True
        elif not chain.empty:
            ctx.chain = chain
            _bind(ctx, state)
        upstream = route.upstream
        assert upstream is not None and upstream.picker is not None
        node = upstream.picker.pick(ctx, None)
        if node is None:
            self.loop.create_task(self._forward_task(proto, req, ctx, route, None))
            return True
        ctx.node = node
        for step in chain.before_proxy:
            ctx.step = step
            try:
                result = step.func(ctx, step.conf)
            except Exception:
                result = step_failed(step)
            if result is not None:
                ending = step_ending(step, result)
                if ending is not None:
                    upstream.picker.done(node, None)
                    self.loop.create_task(self._answer(proto, req, ctx, ending, chain))
                    return True
        conn = self.pool.take(upstream.key_for(node), upstream.pool)
        if conn is None:
            # A new connection is needed: the task path connects to the node picked here.
            self.loop.create_task(self._forward_task(proto, req, ctx, route, None, node))
            return True
        ctx.upstream_statuses = []
        ctx.upstream_addrs = [node.addr]
        ctx.upstream_scheme = upstream.scheme
        head = self._request_head(req, ctx, upstream, node, False)
        timeouts = route.timeouts or upstream.timeouts
        DirectExchange(self, proto, req, ctx, route, node, conn).start(head, timeouts.read)
        return True

    def continue_after_failure(
        self, proto: HttpProtocol, req: HttpRequest, ctx: RequestContext,
        route: CompiledRoute, node: Any, err: UpstreamError,
    ) -> None:
        """The direct path failed before any response byte: retry or answer on the task path."""
        upstream = route.upstream
        if upstream is not None and upstream.picker is not None:
            upstream.picker.done(node, None)
        self.loop.create_task(self._forward_task(proto, req, ctx, route, (node, err)))

    async def _forward_task(
        self, proto: HttpProtocol, req: HttpRequest, ctx: RequestContext,
        route: CompiledRoute, failed: tuple[Any, UpstreamError] | None, picked: Any = None,
    ) -> None:
        try:
            upstream = _upstream_of(ctx, route)
            assert upstream is not None
            await self._forward(proto, req, ctx, route, upstream, route.chain, failed, picked)
        except Exception:
            log.exception("unhandled error while serving %s %s", req.method, req.raw_uri)
            proto.abort()
        await self._epilogue(proto, req, ctx)

    async def _answer(
        self, proto: HttpProtocol, req: HttpRequest, ctx: RequestContext, resp: Response,
        chain: Chain,
    ) -> None:
        try:
            await self.send_response(proto, ctx, resp, chain)
        except Exception:
            log.exception("unhandled error while answering %s %s", req.method, req.raw_uri)
            proto.abort()
        await self._epilogue(proto, req, ctx)

    async def handle(
        self, proto: HttpProtocol, req: HttpRequest, ctx: RequestContext,
        route: CompiledRoute | None, state: GatewayState, rewritten: Chain | None = None,
    ) -> None:
        """Serve one request on the task path, then let the connection read the next one.
        ``rewritten``: the callback path already ran this chain's ``rewrite`` phase."""
        _bind(ctx, state)
        try:
            if route is None:
                await self._unmatched(proto, ctx, state)
            elif rewritten is not None:
                await self._after_rewrite(proto, req, ctx, route, state, rewritten)
            else:
                await self._serve_route(proto, req, ctx, route, state)
        except ConnectionError:
            proto.abort()
        except Exception:
            log.exception("unhandled error while serving %s %s", req.method, req.raw_uri)
            proto.abort()
        await self._epilogue(proto, req, ctx)

    async def _epilogue(self, proto: HttpProtocol, req: HttpRequest, ctx: RequestContext) -> None:
        chain = ctx.chain
        if chain.log_async:
            ctx.end_time = self.loop.time()
            await run_response_phase_async(chain.log, ctx)
            ctx.chain = EMPTY_CHAIN
        self.finish_sync(proto, req, ctx)

    def finish_sync(self, proto: HttpProtocol, req: HttpRequest, ctx: RequestContext) -> None:
        """The response is written: log phase, access log, next request on the connection."""
        self.inflight -= 1
        chain = ctx.chain
        if chain.log:
            ctx.end_time = self.loop.time()
            run_response_phase(chain.log, ctx)
        if self.access_log is not None:
            if ctx.end_time is None:
                ctx.end_time = self.loop.time()
            self.access_log.write(ctx)
        if req.upgrade and req.upgrade_data and not proto.is_tunnel():
            proto.resume_http(req.upgrade_data)
        proto.finish_request(req)
        # ctx.var (made on first read) and ctx refer to each other: without this the context
        # and all it holds would wait for the cyclic GC (~5 us a request where a plugin read a
        # variable, measured with the prometheus plugin's log hook).
        ctx.__dict__.pop("_var", None)

    async def _unmatched(
        self, proto: HttpProtocol, ctx: RequestContext, state: GatewayState
    ) -> None:
        """No route: global rules' rewrite and access still run, then the JSON 404."""
        chain = state.global_chain
        if not chain.empty:
            if chain.has_filters:
                chain = chain.for_request(ctx.var)
            ctx.chain = chain
            resp = await self._request_phases(ctx, chain)
            if resp is not None:
                await self.send_response(proto, ctx, resp, chain)
                return
        await self.send_generated(proto, ctx, 404, _NOT_FOUND_BODY, TEXT, chain)

    async def _serve_route(
        self, proto: HttpProtocol, req: HttpRequest, ctx: RequestContext, route: CompiledRoute,
        state: GatewayState,
    ) -> None:
        if route.fail_status:
            log.error("route %s: %s", route.id, route.fail_reason)
            await self.send_generated(proto, ctx, route.fail_status, None, HTML, EMPTY_CHAIN)
            return
        chain = route.chain
        if not chain.empty:
            if chain.has_filters:
                chain = chain.for_request(ctx.var)
            ctx.chain = chain
            if chain.rewrite:
                resp = await run_request_phase(chain.rewrite, ctx)
                if resp is not None:
                    await self.send_response(proto, ctx, resp, chain)
                    return
        await self._after_rewrite(proto, req, ctx, route, state, chain)

    async def _after_rewrite(
        self, proto: HttpProtocol, req: HttpRequest, ctx: RequestContext, route: CompiledRoute,
        state: GatewayState, chain: Chain,
    ) -> None:
        """Consumer merge (spec §6.2 step 5), ``access``, then the upstream."""
        if ctx.consumer is not None:
            consumer_chain = state.consumers.chain_of(ctx.consumer.username)
            if not consumer_chain.empty:
                ran = chain.plugins
                chain = route.with_consumer(consumer_chain, state.global_chain)
                if chain.has_filters:
                    chain = chain.for_request(ctx.var)
                ctx.chain = chain
                added = tuple(s for s in chain.rewrite if s.plugin not in ran)
                if added:
                    resp = await run_request_phase(added, ctx)
                    if resp is not None:
                        await self.send_response(proto, ctx, resp, chain)
                        return
        if chain.access:
            resp = await run_request_phase(chain.access, ctx)
            if resp is not None:
                await self.send_response(proto, ctx, resp, chain)
                return
        upstream = _upstream_of(ctx, route)
        if upstream is None:
            log.error("missing upstream configuration in Route or Service (route %s)", route.id)
            await self.send_generated(proto, ctx, 503, None, HTML, chain)
            return
        await self._forward(proto, req, ctx, route, upstream, chain)

    async def _request_phases(self, ctx: RequestContext, chain: Chain) -> Response | None:
        if chain.rewrite:
            resp = await run_request_phase(chain.rewrite, ctx)
            if resp is not None:
                return resp
        if chain.access:
            return await run_request_phase(chain.access, ctx)
        return None


def _upstream_of(ctx: RequestContext, route: CompiledRoute) -> UpstreamRuntime | None:
    """The upstream a plugin chose (``ctx.upstream.set_upstream``), else the route's."""
    changes = ctx.upstream_state
    if changes is not None and changes.selected is not None:
        return changes.selected
    return route.upstream


def _bind(ctx: RequestContext, state: GatewayState) -> None:
    """Give a request that runs plugins the parts of its state they read (never the state
    itself: see ``RequestContext.plugin_metadata_map``)."""
    ctx.plugin_metadata_map = state.plugin_metadata  # ctx.plugin_metadata
    ctx.consumers = state.consumers  # ctx.consumers
    ctx.upstream_table = state.upstreams  # ctx.upstream.set_upstream(upstream_id)


def _run_sync(steps: tuple[Any, ...], ctx: RequestContext) -> Response | None:
    """A request phase of synchronous steps on the callback path (as
    :func:`kernel.chain.run_request_phase`, without awaiting)."""
    for step in steps:
        ctx.step = step
        try:
            result = step.func(ctx, step.conf)
        except Exception:  # isolated: this request gets a 500, as on the task path
            result = step_failed(step)
        if result is not None:
            ending = step_ending(step, result)
            if ending is not None:
                return ending
    return None
