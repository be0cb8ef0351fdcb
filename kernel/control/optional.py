"""Reports owned by other kernel modules, looked up when asked for (they may not exist yet).

* ``kernel.upstream.health.report(state) -> list[dict]``: the health checkers
  (``GET /v1/healthcheck``), and ``report_for(state, src_type, src_id) -> (status, body)``
  for one source (``GET /v1/healthcheck/{src_type}/{src_id}``);
* ``kernel.tls.certificates_report(state) -> list[dict]``: the certificates
  (``GET /v1/sixgate/certificates``).

A missing module or function is not an error: the endpoint answers 200 with an empty list
and a note saying what is missing.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

HEALTH = ("kernel.upstream.health", "report")
HEALTH_ONE = ("kernel.upstream.health", "report_for")
CERTIFICATES = ("kernel.tls", "certificates_report")

Report = Callable[..., Any]


def find(module: str, name: str) -> Report | None:
    """``module.name`` when both exist (``None`` otherwise). An import error raised *inside*
    an existing module is not swallowed."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name is not None and (module == err.name or module.startswith(err.name + ".")):
            return None
        raise
    func = getattr(mod, name, None)
    return func if callable(func) else None


def missing_note(module: str, name: str) -> str:
    return f"{module}.{name} is not available in this build: nothing to report"


def run(target: tuple[str, str], state: Any) -> tuple[list[dict[str, Any]], str | None]:
    """``(rows, note)``: the report's rows, or ``([], note)`` when it does not exist."""
    module, name = target
    func = find(module, name)
    if func is None:
        return [], missing_note(module, name)
    return list(func(state) or []), None
