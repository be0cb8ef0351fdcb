"""Hook specifications: one per request phase, each called as ``hook(ctx, conf)``.

A plugin implements a phase by defining a module-level function of the same name marked with
``@hookimpl``. Implementations may be plain functions or coroutines. ``conf`` is the plugin's
configuration for the matched route, validated against the plugin's ``schema`` with defaults
filled in; treat it as read-only. The kernel never calls these through pluggy per request: it
compiles, per route, a tuple of the implementations that route enables, sorted by priority.
"""

from __future__ import annotations

from typing import Any

from .markers import hookspec

PHASES: tuple[str, ...] = (
    "rewrite",
    "access",
    "before_proxy",
    "header_filter",
    "body_filter",
    "log",
)
"""Request phases in the order they run."""

SHORT_CIRCUIT_PHASES: frozenset[str] = frozenset({"rewrite", "access", "before_proxy"})
"""Phases whose implementations may end the request by returning a :class:`Response`."""


@hookspec
def rewrite(ctx: Any, conf: Any) -> Any:
    """Runs first, after the route matched and before authentication finishes.

    May change the upstream request (``ctx.upstream``) and ``ctx.var``-visible state, or return a
    :class:`~plugin_sdk.Response` to answer the client directly (later plugins do not run).
    """


@hookspec
def access(ctx: Any, conf: Any) -> Any:
    """Runs after every ``rewrite`` implementation; the place for access decisions.

    May change the upstream request or return a :class:`~plugin_sdk.Response` to end the request.
    """


@hookspec
def before_proxy(ctx: Any, conf: Any) -> Any:
    """Runs after the upstream node is picked, before it is contacted; again before each retry.

    ``ctx.var["balancer_ip"]`` / ``["balancer_port"]`` name the picked node. May change the upstream
    request or return a :class:`~plugin_sdk.Response`.
    """


@hookspec
def header_filter(ctx: Any, conf: Any) -> Any:
    """Runs when the response head is known (from the upstream or generated), before it is sent.

    May change ``ctx.response.status`` and ``ctx.response.headers``. Cannot end the request.
    """


@hookspec
def body_filter(ctx: Any, conf: Any) -> Any:
    """Runs for each response body chunk: ``ctx.response.chunk`` (bytes), ``ctx.response.eof``.

    May replace ``ctx.response.chunk``. Runs only on routes that enable a body filter, so the
    kernel streams untouched bodies without Python work per chunk.
    """


@hookspec
def log(ctx: Any, conf: Any) -> Any:
    """Runs after the response has been sent to the client. Must not change the response."""
