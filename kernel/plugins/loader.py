"""Find plugin modules and build a :class:`~kernel.plugins.manager.PluginRegistry` from them.

Two sources:

* entry points of group ``sixgate.plugins`` (built-ins and pip-installed packs): the entry
  point's name is the plugin name, its value the module path;
* ``.py`` files in the directories of ``apisix.plugin_dirs``: each file is imported under a fresh,
  generated module name (``importlib.util.spec_from_file_location``), so a reload imports the
  edited source beside the live module instead of mutating it (``importlib.reload`` is never
  used).

A reload rescans the entry points (after :func:`refresh_import_system`, so a pack ``pip
install``-ed into the running environment is found) and re-imports an entry-point module whose
source changed since it was first imported (an editable pack, a built-in during development) the
same way: beside the live module, under a generated name inside the same package, so its relative
imports keep working.

Only the names listed in ``enabled`` (config.yaml ``plugins``) end up in the registry. Problems are
collected as messages and the offending plugin is skipped; loading never raises.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import itertools
import logging
import os
import re
import site
import sys
import traceback
from collections.abc import Iterable, Mapping
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

from kernel.plugins import runtime as _runtime  # noqa: F401  (installed before any plugin import)
from kernel.upstream import override as _override  # noqa: F401  (installs check_upstream)
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
    return _exec_source(f"{GENERATED_PREFIX}_{gen}_{stem}", path)


def _exec_source(
    modname: str, path: Path | str, search_locations: list[str] | None = None
) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        modname, path, submodule_search_locations=search_locations
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        for name in [modname, *(m for m in sys.modules if m.startswith(modname + "."))]:
            sys.modules.pop(name, None)
        raise
    return module


# -- entry points: rescan and re-import of changed sources -------------------------------------

_first_digest: dict[str, str | None] = {}
"""Module name -> digest of its source file when the loader first saw it imported."""


def source_digest(path: str | Path | None) -> str | None:
    """SHA-1 of a file's bytes (``None`` when unreadable)."""
    if path is None:
        return None
    try:
        return hashlib.sha1(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def _site_dirs() -> list[str]:
    dirs = list(getattr(site, "getsitepackages", list)())
    user = getattr(site, "getusersitepackages", None)
    if user is not None and site.ENABLE_USER_SITE:
        dirs.append(user())
    return [d for d in dirs if os.path.isdir(d)]


def _pth_files() -> set[Path]:
    found: set[Path] = set()
    for sitedir in _site_dirs():
        found.update(Path(sitedir).glob("*.pth"))
    return found


_seen_pth: set[Path] = _pth_files()


def refresh_import_system() -> list[str]:
    """Make packages installed since the process started importable and discoverable.

    Clears the import system's directory caches (and with them ``importlib.metadata``'s), and
    processes ``.pth`` files that appeared in the site directories since start-up (``pip install
    -e`` writes one per editable install). Returns the new ``.pth`` files' names.
    """
    importlib.invalidate_caches()
    added: list[str] = []
    for pth in sorted(_pth_files() - _seen_pth):
        _seen_pth.add(pth)
        try:
            site.addpackage(str(pth.parent), pth.name, None)
            added.append(pth.name)
        except Exception as exc:
            log.error("cannot process %s: %s", pth, exc)
    if added:
        importlib.invalidate_caches()
        log.info("new site .pth files processed: %s", ", ".join(added))
    return added


def _load_entry_point(ep: EntryPoint) -> tuple[Any, list[str]]:
    """The plugin module of ``ep`` and the generated module names imported for it.

    The first time, a plain import. Later, when the module's source file changed since then,
    the current source is imported beside the live module (never ``importlib.reload``)."""
    modname = ep.module
    live = sys.modules.get(modname)
    if live is None or ep.attr:
        module = ep.load()
        if modname not in _first_digest:
            _first_digest[modname] = source_digest(getattr(sys.modules.get(modname), "__file__",
                                                           None))
        return module, []
    path = getattr(live, "__file__", None)
    digest = source_digest(path)
    first = _first_digest.setdefault(modname, digest)
    if path is None or digest is None or digest == first:
        return live, []
    parent, _, leaf = modname.rpartition(".")
    generated = f"{GENERATED_PREFIX}_{next(_generation)}_{leaf}"
    if parent:
        generated = f"{parent}.{generated}"
    search = list(live.__path__) if hasattr(live, "__path__") else None
    module = _exec_source(generated, path, search)
    owned = [generated, *(m for m in sys.modules if m.startswith(generated + "."))]
    return module, owned


def module_source(module: Any) -> str | None:
    """The file a plugin module was imported from (``None`` for built-in/dynamic modules)."""
    path = getattr(module, "__file__", None)
    return os.path.abspath(path) if path else None


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
    rescan: bool = False,
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
    * An entry-point module whose source changed since it was first imported is re-imported
      beside the live one; with ``rescan`` (a reload) the import system is refreshed first
      (:func:`refresh_import_system`) so packs installed since start-up are found.

    ``registry.sources`` maps each loaded plugin to ``(where it came from, its file)``.
    """
    errors: list[str] = []
    wanted = list(dict.fromkeys(enabled))
    wanted_set = set(wanted)
    registry = PluginRegistry()
    if rescan:
        refresh_import_system()

    def register(module: Any, source: str) -> bool:
        try:
            info = registry.add(module)
        except PluginError as exc:
            errors.append(f"failed to load plugin from {source}: {exc}")
            return False
        registry.sources[info.name] = (source, module_source(module))
        return True

    for name, ep in entry_point_plugins(group).items():
        if name not in wanted_set:
            continue
        source = f"entry point {name} = {ep.value}"
        try:
            module, owned = _load_entry_point(ep)
        except Exception as exc:
            errors.append(f"failed to import plugin [{name}] ({source}): {traceback_summary(exc)}")
            continue
        declared = getattr(module, "name", None)
        if declared != name:
            errors.append(
                f"failed to load plugin [{name}] from {source}: module declares name {declared!r}"
            )
            ok = False
        else:
            ok = register(module, source)
        if ok:
            registry.owned_modules.extend(owned)
        else:
            for modname in owned:
                sys.modules.pop(modname, None)

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
            if register(module, f"file {path}"):
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
