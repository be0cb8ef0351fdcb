"""The Admin API key at startup: refuse the well-known default off loopback, generate a missing
one and write it back into the user's config.yaml (spec §1.4, §2.1).

Runs once, in the process that read config.yaml, before any worker starts.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import secrets
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kernel.config import Config, ConfigError, load_config

log = logging.getLogger("sixgate")

WELL_KNOWN_KEY = "edd1c9f034335f136f87ad84b625c8f1"
"""The fixed key older APISIX releases shipped (still shown in its FAQ): public knowledge."""


@dataclass(frozen=True)
class KeyCheck:
    """What startup decided about the admin keys."""

    config: Config
    generated: str | None = None
    written_back: bool = False


def _loopback_only(cfg: Config) -> bool:
    listen = cfg.get("deployment.admin.admin_listen") or {}
    ip = str(listen.get("ip", "0.0.0.0"))
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return ip == "localhost"


def _admin_keys(cfg: Config) -> list[dict[str, Any]]:
    keys = cfg.get("deployment.admin.admin_key") or []
    return [k for k in keys if isinstance(k, dict)]


def check_admin_keys(cfg: Config) -> KeyCheck:
    """Validate the configured keys; generate and persist an empty ``admin`` key.

    Raises :class:`ConfigError` for the well-known default key unless the Admin API listens on
    loopback only.
    """
    if cfg.get("deployment.admin.admin_key_required") is False:
        log.warning("deployment.admin.admin_key_required is false: the Admin API checks no key")
        return KeyCheck(cfg)
    for entry in _admin_keys(cfg):
        if str(entry.get("key") or "") == WELL_KNOWN_KEY and not _loopback_only(cfg):
            raise ConfigError(
                f"{cfg.path}: deployment.admin.admin_key '{entry.get('name')}' is the well-known "
                "default key from APISIX's documentation; anyone could use it. Set another key, "
                "or leave it empty to have one generated, or make "
                "deployment.admin.admin_listen.ip a loopback address"
            )
    empty = [e for e in _admin_keys(cfg) if e.get("role", "admin") == "admin" and not e.get("key")]
    if not empty:
        return KeyCheck(cfg)
    key = "".join(secrets.choice(string.ascii_letters) for _ in range(32))
    for entry in empty:
        entry["key"] = key  # in memory, so this run uses it even if the write-back fails
    written = write_back(cfg.path, str(empty[0].get("name") or "admin"), key)
    if written:
        try:
            reloaded = load_config(cfg.path)
            if any(e.get("key") == key for e in _admin_keys(reloaded)):
                log.warning("generated an Admin API key and wrote it to %s", cfg.path)
                return KeyCheck(reloaded, key, True)
        except ConfigError as err:
            log.error("the admin key written to %s did not load back: %s", cfg.path, err)
    log.warning("generated an Admin API key for this run only (could not write %s): %s",
                cfg.path, key)
    return KeyCheck(cfg, key, False)


_EMPTY_KEY = re.compile(r"^(?P<indent>\s*(?:-\s+)?)key:\s*(?:\"\"|''|)\s*(?:#.*)?$", re.M)


def write_back(path: Path, name: str, key: str) -> bool:
    """Put ``key`` into config.yaml, keeping the rest of the text (comments included)."""
    try:
        text = path.read_text()
    except OSError:
        return False
    block = re.search(r"^\s+admin_key:\s*$", text, re.M)
    if block is not None:
        m = _EMPTY_KEY.search(text, block.end())
        if m is None:
            return False
        text = text[: m.start()] + f"{m.group('indent')}key: {key}" + text[m.end() :]
    else:
        entry = (
            f"    admin_key:\n      - name: {name}\n        key: {key}\n        role: admin\n"
        )
        dep = re.search(r"^deployment:\s*(?:#.*)?$", text, re.M)
        if dep is None:
            text = text.rstrip("\n") + "\n\ndeployment:\n  admin:\n" + entry
        else:
            adm = re.search(r"^  admin:\s*(?:#.*)?$", text[dep.end() :], re.M)
            if adm is None:
                at = dep.end() + 1
                text = text[:at] + "  admin:\n" + entry + text[at:]
            else:
                at = dep.end() + adm.end() + 1
                text = text[:at] + entry + text[at:]
    try:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    except OSError:
        return False
    return True
