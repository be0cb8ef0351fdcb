"""sixgate's own control endpoints, under ``/v1/sixgate/`` (see docs/control-api.md).

* ``GET /v1/sixgate/config``: the live config generation (``generation``, ``version``,
  ``built_at``), item counts, build errors, the last config that failed to build and the
  recent errors of the config store (a refused ``apisix.yaml``, a rejected etcd item);
* ``GET /v1/sixgate/plugins``: the plugin generation, the last (re)load and the last refused
  one (``trigger``, ``ok``, ``errors``, ``generation``), and the loaded plugins;
* ``GET /v1/sixgate/certificates``: ``kernel.tls.certificates_report(state)`` (with expiry).

Every answer names the worker (``worker``, ``pid``) whose view it is: worker 0, the one that
serves the control port.
"""

from __future__ import annotations

import os
from typing import Any

from kernel.store.base import COLLECTIONS

from . import optional
from .context import ControlContext


def _who(ctx: ControlContext) -> dict[str, Any]:
    return {"worker": ctx.slot, "pid": os.getpid()}


def config_report(ctx: ControlContext) -> dict[str, Any]:
    state = ctx.state()
    snapshot = state.snapshot
    return {
        **_who(ctx),
        "generation": state.generation,
        "version": state.version,
        "built_at": state.built_at,
        "counts": {name: len(snapshot.items(name)) for name in COLLECTIONS},
        "loaded": {
            "routes": len(state.routes),
            "upstreams": len(state.upstreams),
            "plugin_metadata": len(state.plugin_metadata),
        },
        "plugins_override": list(snapshot.plugins) if snapshot.plugins is not None else None,
        "build_errors": list(state.errors),
        "last_error": ctx.last_error(),
        "store_errors": ctx.errors.recent(),
    }


def plugins_report(ctx: ControlContext) -> dict[str, Any]:
    doc = ctx.plugin_status.as_dict()
    doc["worker"] = ctx.slot
    return doc


def certificates_report(ctx: ControlContext) -> dict[str, Any]:
    rows, note = optional.run(optional.CERTIFICATES, ctx.state())
    doc: dict[str, Any] = {**_who(ctx), "total": len(rows), "list": rows}
    if note is not None:
        doc["note"] = note
    return doc
