"""serverless-pre-function (APISIX priority 10000): run user functions (Python, or APISIX's Lua
``return function(conf, ctx) ... end``) early in the configured ``phase`` (default ``access``).

It runs before almost every other plugin of that phase; the functions may change ``ctx.var``,
the upstream request, the response (in ``header_filter``/``body_filter``) or end the request.
Not in the default ``plugins`` list: it runs arbitrary code. Everything is in
:mod:`builtin_plugins.serverless`.
"""

from __future__ import annotations

from builtin_plugins.serverless import (
    access,
    before_proxy,
    body_filter,
    check_schema,
    header_filter,
    log,
    phases_for,
    rewrite,
    schema,
    version,
)

name = "serverless-pre-function"
priority = 10000

__all__ = [
    "access",
    "before_proxy",
    "body_filter",
    "check_schema",
    "header_filter",
    "log",
    "name",
    "phases_for",
    "priority",
    "rewrite",
    "schema",
    "version",
]
