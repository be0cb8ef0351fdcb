"""Upstreams a plugin chooses for one request (``ctx.upstream.set_upstream``, spec §7.3).

* :class:`UpstreamTable` — a state's compiled upstreams by id (``GatewayState.upstreams``)
  plus the pool settings of its build. A request's context holds this mapping (never the
  state) so ``set_upstream(upstream_id=...)`` resolves ids in the request's own config
  generation, to the shared :class:`UpstreamRuntime` (its balancer state is the upstream's, as
  APISIX's).
* :func:`inline_upstream` — an inline upstream object compiled to an :class:`UpstreamRuntime`
  once per (running hook conf, object): the cache hangs off the hook conf (weakly), so it
  lives exactly as long as the config generation that holds it, and the balancer position of
  an inline upstream carries from one request to the next.
* :func:`check_upstream` — what :func:`plugin_sdk.upstream.check_upstream` runs (installed into
  the SDK when this module is imported).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import plugin_sdk.upstream as sdk_upstream
from kernel import schemas
from kernel.schemas import checks
from kernel.upstream.connection import PoolSettings
from kernel.upstream.runtime import UpstreamRuntime
from plugin_sdk import ConfCache

__all__ = ["EMPTY_TABLE", "UpstreamTable", "check_upstream", "compile_upstream",
           "inline_upstream"]

_PER_CONF = 256
"""Inline upstreams kept per hook conf. A plugin passes parts of its conf (a handful); more
means it builds a new object per request, which is compiled each time and must not pile up."""


class UpstreamTable(dict[str, UpstreamRuntime]):
    """Compiled upstreams by id, and the pool settings inline upstreams of this build use."""

    __slots__ = ("pool",)

    def __init__(
        self, items: Mapping[str, UpstreamRuntime] | Iterable[tuple[str, UpstreamRuntime]] = (),
        pool: PoolSettings | None = None,
    ) -> None:
        super().__init__(items)
        self.pool = pool if pool is not None else PoolSettings()


EMPTY_TABLE = UpstreamTable()
"""The table of requests that run no plugin (never written to)."""


def compile_upstream(conf: Mapping[str, Any], pool: PoolSettings) -> UpstreamRuntime:
    """An inline upstream object (already validated) in its request-path form."""
    return UpstreamRuntime(schemas.with_defaults("upstream", conf), pool)


def _new_table(_owner: Any) -> dict[int, tuple[Any, UpstreamRuntime]]:
    return {}


_by_owner: ConfCache[dict[int, tuple[Any, UpstreamRuntime]]] = ConfCache(_new_table)
"""hook conf -> ``id(upstream object) -> (object, runtime)``; entries go with the hook conf."""


def inline_upstream(
    owner: Any, conf: Mapping[str, Any], table: Mapping[str, UpstreamRuntime]
) -> UpstreamRuntime:
    """The runtime of inline upstream ``conf`` chosen by the hook whose conf is ``owner``
    (``None``: outside a hook, compiled afresh)."""
    pool = getattr(table, "pool", None) or PoolSettings()
    if owner is None:
        return compile_upstream(conf, pool)
    known = _by_owner(owner)
    hit = known.get(id(conf))
    if hit is not None and hit[0] is conf:
        return hit[1]
    runtime = compile_upstream(conf, pool)
    if len(known) >= _PER_CONF:
        known.clear()
    known[id(conf)] = (conf, runtime)  # holds conf: its id stays unique while cached
    return runtime


def check_upstream(conf: Any) -> str | None:
    """The upstream schema (bare message), then the upstream checks (spec §5.1)."""
    work, err = schemas.check_and_fill(schemas.SCHEMAS["upstream"], conf)
    if err is not None:
        return err
    if isinstance(work, dict):
        return checks.check_upstream(work)
    return None


sdk_upstream.install(check_upstream)
