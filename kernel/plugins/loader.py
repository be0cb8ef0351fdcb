"""Find plugin modules and build a :class:`~kernel.plugins.manager.PluginRegistry` from them.

Two sources:

* entry points of group ``sixgate.plugins`` (built-ins and pip-installed packs): the entry
  point's name is the plugin name, its value the module path;
* ``.py`` files in the directories of ``apisix.plugin_dirs``: each file is imported under a fresh,
  generated module name (``importlib.util.spec_from_file_location``), so a reload imports the
  edited source beside the live module instead of mutating it (``importlib.reload`` is never
  used).

Only the names listed in ``enabled`` (config.yaml ``plugins``) end up in the registry. Problems are
collected as messages and the offending plugin is skipped; loading never raises.
"""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import logging
import re
import sys
import traceback
from collections.abc import Iterable, Mapping
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

from plugin_sdk.errors import PluginError

from .manager import PluginRegistry

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "sixgate.plugins"
GENERATED_PREFIX = "sixgate_plugin_file"
_generation = itertools.count(1)


def traceback_summary(exc: BaseException, limit: int = 3) -> str:
    """The last ``limit`` frames and the exception line, on one string."""
    frames = traceback.extract_tb(exc.__traceback__)[-limit:]
    where = "; ".join(f"{f.filename}:{f.lineno} in {f.name}" for f in frames)
    what = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return f"{what} (at {where})" if where else what


def entry_point_plugins(group: str = ENTRY_POINT_GROUP) -> dict[str, EntryPoint]:
    """Installed entry points of ``group`` by plugin name (first one wins on duplicates)."""
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=group):
        if ep.name in found and found[ep.name].value != ep.value:
            log.error(
                "duplicate plugin entry point [%s]: %s and %s; using the first",
                ep.name, found[ep.name].value, ep.value,
            )
            continue
        found.setdefault(ep.name, ep)
    return found


def import_plugin_file(path: Path) -> ModuleType:
    """Import one plugin source file under a unique generated module name.

    The module is put in ``sys.modules`` while (and after) it executes, which ``dataclasses``,
    ``pickle`` and ``typing`` need; the registry that owns it removes it again on destroy.
    """
    gen = next(_generation)
    stem = re.sub(r"\W", "_", path.stem)
    modname = f"{GENERATED_PREFIX}_{gen}_{stem}"
    spec = importlib.util.spec_from_file_location(modname, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(modname, None)
        raise
    return module


def _plugin_files(directory: Path) -> list[Path]:
    return sorted(
        p for p in directory.glob("*.py") if p.is_file() and not p.name.startswith(("_", "."))
    )


def load_registry(
    enabled: Iterable[str],
    plugin_dirs: Iterable[Path | str],
    plugin_attr: Mapping[str, Any] | None = None,
    *,
    group: str = ENTRY_POINT_GROUP,
    init: bool = True,
) -> tuple[PluginRegistry, list[str]]:
    """Build the registry of the ``enabled`` plugins; returns ``(registry, errors)``.

    * Entry points are consulted first, then the plugin directories in order. Only enabled
      entry points are imported; every file in a plugin directory is imported (its plugin name
      is only known afterwards) and dropped again when not enabled.
    * An enabled name found nowhere, a module that fails to import (reported with a traceback
      summary), an invalid module (see :meth:`PluginRegistry.add`) and a second plugin with an
      already-registered name are reported and skipped.
    * With ``init`` (default) each plugin's ``init(attrs)`` is called with its ``plugin_attr``
      entry; a failing ``init`` removes that plugin.
    """
    errors: list[str] = []
    wanted = list(dict.fromkeys(enabled))
    wanted_set = set(wanted)
    registry = PluginRegistry()

    def register(module: Any, source: str) -> None:
        try:
            registry.add(module)
        except PluginError as exc:
            errors.append(f"failed to load plugin from {source}: {exc}")

    for name, ep in entry_point_plugins(group).items():
        if name not in wanted_set:
            continue
        source = f"entry point {name} = {ep.value}"
        try:
            module = ep.load()
        except Exception as exc:
            errors.append(f"failed to import plugin [{name}] ({source}): {traceback_summary(exc)}")
            continue
        declared = getattr(module, "name", None)
        if declared != name:
            errors.append(
                f"failed to load plugin from {source}: module declares name {declared!r}"
            )
            continue
        register(module, source)

    for directory in plugin_dirs:
        directory = Path(directory)
        if not directory.is_dir():
            errors.append(f"plugin directory {directory} does not exist")
            continue
        for path in _plugin_files(directory):
            try:
                module = import_plugin_file(path)
            except Exception as exc:
                errors.append(f"failed to import plugin file {path}: {traceback_summary(exc)}")
                continue
            modname = module.__name__
            if getattr(module, "name", None) not in wanted_set:
                sys.modules.pop(modname, None)
                continue
            before = len(registry)
            register(module, f"file {path}")
            if len(registry) > before:
                registry.owned_modules.append(modname)
            else:
                sys.modules.pop(modname, None)

    for name in wanted:
        if name not in registry and not any(f"[{name}]" in e for e in errors):
            errors.append(f"unknown plugin [{name}]: not installed and not in plugin_dirs")

    if init:
        errors.extend(registry.init_all(plugin_attr))
    for err in errors:
        log.error("%s", err)
    return registry, errors
