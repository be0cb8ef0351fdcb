"""Upstream objects inside plugin confs (``traffic-split``'s ``weighted_upstreams[].upstream``).

A plugin whose conf carries an APISIX upstream object checks it at write time with
:func:`check_upstream` (from its ``check_schema``), and at request time sends the request
there with ``ctx.upstream.set_upstream(conf=...)`` (see :class:`plugin_sdk.UpstreamRequest`)::

    from plugin_sdk import hookimpl
    from plugin_sdk.upstream import check_upstream

    schema = {"type": "object", "properties": {"backup": {"type": "object"}},
              "required": ["backup"]}

    def check_schema(conf):
        err = check_upstream(conf["backup"])
        if err is not None:
            return f'property "backup" validation failed: {err}'

    @hookimpl
    def access(ctx, conf):
        if ctx.var["http_x_backup"]:
            ctx.upstream.set_upstream(conf=conf["backup"])

The check is the kernel's (the same schema and checks as a route's inline ``upstream``), so
messages and accepted fields always agree with the Admin API's. The kernel installs it when it
is imported; the SDK itself never imports the kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import PluginError

UpstreamCheck = Callable[[Any], "str | None"]

_check: UpstreamCheck | None = None


def install(check: UpstreamCheck) -> None:
    """Install the kernel's upstream check (called by the kernel; plugins never call this)."""
    global _check
    _check = check


def check_upstream(conf: Any) -> str | None:
    """Why ``conf`` is not a valid upstream object, or ``None`` when it is.

    ``conf`` is checked as a route's inline ``upstream`` is (spec §5.1): the upstream JSON
    schema first, whose message is jsonschema's bare text (``property "nodes" validation
    failed: ...``, without the ``invalid configuration:`` prefix), then the upstream checks
    (for example ``missing key`` for a ``chash`` upstream without ``key``). ``conf`` is not
    modified. Call it when a conf is checked (``check_schema``), not per request.
    """
    check = _check
    if check is None:
        raise PluginError(
            "no sixgate kernel in this process: upstream objects are checked by the kernel "
            "(in tests, use plugin_sdk.testing)"
        )
    return check(conf)


__all__ = ["check_upstream", "install"]
