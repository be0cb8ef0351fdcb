"""Plugin hot reload: which generations are refused, what the status file says.

Every trigger (``PUT /apisix/admin/plugins/reload``, SIGHUP, a watched plugin file changing)
ends in :meth:`kernel.gateway.Gateway.reload_plugins`, which loads the next
:class:`~kernel.plugins.manager.PluginRegistry` beside the live one, asks
:func:`refusal_reasons` whether it may replace it, and then builds and swaps the next gateway
state through the one apply path. A refused generation is destroyed and changes nothing: the
live plugins keep serving. Each attempt is recorded in a :class:`PluginStatus`, written as JSON
next to the pid file (``logs/plugins-status.<worker slot>.json``) for ``sixgate plugins status``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kernel.store.base import Snapshot

    from .manager import PluginRegistry

log = logging.getLogger("sixgate.plugins")

STATUS_FILE_PREFIX = "plugins-status."


@dataclass
class ReloadOutcome:
    """One load of the plugin set (start-up or a reload)."""

    trigger: str
    """``startup``, ``admin`` (Admin API), ``signal`` (SIGHUP), ``file`` (a watched file)."""
    ok: bool
    """``True``: the new generation is live. ``False``: refused, the previous one serves."""
    at: float
    duration_ms: float
    generation: int
    """The plugin generation live after this attempt."""
    errors: list[str] = field(default_factory=list)
    """Why it was refused, or (when ``ok``) plugins that failed to load and were skipped."""


def refusal_reasons(
    old: PluginRegistry | None,
    new: PluginRegistry,
    load_errors: Iterable[str],
    enabled: Iterable[str],
    snapshot: Snapshot | None,
) -> list[str]:
    """Why ``new`` must not replace ``old`` (empty: it may).

    * a plugin that is live and still enabled did not load (syntax or import error, invalid
      module, invalid schema, failing ``init``): a broken edit must not take a plugin away;
    * a stored plugin conf (route, service, plugin config, global rule, consumer) that the new
      schema or ``check_schema`` rejects.

    A newly enabled plugin that fails to load is not a reason: it is skipped and reported, as
    APISIX does with unknown names. Plugins no longer enabled are dropped on purpose.
    """
    errors = list(load_errors)
    reasons: list[str] = []
    wanted = set(enabled)
    if old is not None:
        for info in old:
            if info.name not in wanted or info.name in new:
                continue
            file = old.sources.get(info.name, ("", None))[1]
            why = [e for e in errors if file and file in e] or [
                e for e in errors if f"[{info.name}]" in e
            ]
            reasons.extend(why or [f"plugin [{info.name}] did not load"])
    if snapshot is not None:
        from kernel.state import validate_snapshot

        for problem in validate_snapshot(snapshot, new):
            if "failed to check the configuration of plugin" in problem.message:
                reasons.append(f"{problem.path}: {problem.message}")
    return list(dict.fromkeys(reasons))


def plugin_rows(registry: PluginRegistry) -> list[dict[str, Any]]:
    rows = []
    for name in registry.names_by_priority():
        info = registry.get(name)
        assert info is not None
        source, file = registry.sources.get(name, ("module", None))
        rows.append({
            "name": name,
            "version": info.version,
            "priority": info.priority,
            "phases": list(info.phases),
            "source": source,
            "file": file,
            "module": getattr(info.module, "__name__", None),
        })
    return rows


class PluginStatus:
    """What ``sixgate plugins status`` shows for one worker; kept in memory and on disk."""

    def __init__(self, path: Path | None, slot: int = 0) -> None:
        self.path = path
        self.slot = slot
        self.generation = 0
        self.attempts = 0
        """Every load attempt, refused ones included (the test kit waits on this)."""
        self.last: ReloadOutcome | None = None
        self.last_failure: ReloadOutcome | None = None
        self.plugins: list[dict[str, Any]] = []

    def record(self, outcome: ReloadOutcome, registry: PluginRegistry) -> None:
        self.attempts += 1
        self.last = outcome
        if not outcome.ok:
            self.last_failure = outcome
        self.plugins = plugin_rows(registry)
        self.write()

    def next_generation(self) -> int:
        self.generation += 1
        return self.generation

    def as_dict(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "worker": self.slot,
            "generation": self.generation,
            "attempts": self.attempts,
            "last": asdict(self.last) if self.last else None,
            "last_failure": asdict(self.last_failure) if self.last_failure else None,
            "plugins": self.plugins,
        }

    def write(self) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.as_dict(), indent=2) + "\n")
            os.replace(tmp, self.path)
        except OSError as err:
            log.warning("cannot write the plugin status file %s: %s", self.path, err)


def status_path(logs_dir: Path, slot: int) -> Path:
    return logs_dir / f"{STATUS_FILE_PREFIX}{slot}.json"


def read_status_files(logs_dir: Path) -> list[dict[str, Any]]:
    """Every worker's status document in ``logs_dir`` (by worker slot)."""
    docs = []
    for path in sorted(logs_dir.glob(f"{STATUS_FILE_PREFIX}*.json")):
        try:
            docs.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(docs, key=lambda d: d.get("worker", 0))


def format_status(docs: list[dict[str, Any]]) -> str:
    """The human-readable ``sixgate plugins status`` text."""
    lines: list[str] = []
    for doc in docs:
        lines.append(f"worker {doc.get('worker')} (pid {doc.get('pid')}): "
                     f"plugin generation {doc.get('generation')}, "
                     f"{len(doc.get('plugins') or [])} plugin(s) loaded")
        for row in doc.get("plugins") or []:
            where = row.get("file") or row.get("source")
            lines.append(f"  {row['name']:<24} {row['version']:<10} priority {row['priority']:<6}"
                         f" {where}")
        last = doc.get("last")
        if last:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last["at"]))
            verdict = "ok" if last["ok"] else "REFUSED (previous plugins keep serving)"
            lines.append(f"  last load: {stamp} by {last['trigger']}: {verdict}")
            for err in last.get("errors") or []:
                lines.append(f"    error: {err}")
        failure = doc.get("last_failure")
        if failure and (not last or failure["at"] != last["at"]):
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(failure["at"]))
            lines.append(f"  last refused load: {stamp} by {failure['trigger']}")
            for err in failure.get("errors") or []:
                lines.append(f"    error: {err}")
    return "\n".join(lines)
