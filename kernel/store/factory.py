"""Which store a gateway uses, from ``deployment.role`` and its ``config_provider``.

| role          | provider | read side (watch)        | write side (Admin API)         |
|---------------|----------|--------------------------|--------------------------------|
| data_plane    | yaml     | ``apisix.yaml``          | none                           |
| data_plane    | etcd     | etcd, read-only          | none                           |
| traditional   | yaml     | ``apisix.yaml``          | the same file (embedded mode)  |
| traditional   | etcd     | etcd                     | etcd                           |
| control_plane | etcd     | etcd                     | etcd                           |
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from kernel.config import Config
from kernel.store.base import ConfigStore, Validate
from kernel.store.resources import ResourceStore

MODES = {
    ("data_plane", "yaml"),
    ("data_plane", "etcd"),
    ("traditional", "yaml"),
    ("traditional", "etcd"),
    ("control_plane", "etcd"),
}


@dataclass(frozen=True)
class Stores:
    config: ConfigStore
    resources: ResourceStore | None


def mode(cfg: Config) -> tuple[str, str]:
    role = str(cfg.get("deployment.role") or "traditional")
    provider = str(cfg.get(f"deployment.role_{role}.config_provider") or "")
    return role, provider


def mode_problem(cfg: Config) -> str | None:
    """Why this role/provider pair cannot run, or ``None``."""
    role, provider = mode(cfg)
    if (role, provider) not in MODES:
        supported = ", ".join(f"{r}+{p}" for r, p in sorted(MODES))
        return (
            f"deployment.role {role} with config_provider {provider or '(none)'} is not "
            f"supported (supported: {supported})"
        )
    return None


def admin_enabled(cfg: Config) -> bool:
    role, _ = mode(cfg)
    if role == "control_plane":
        return True
    return role == "traditional" and cfg.get("apisix.enable_admin", True) is not False


def make_stores(cfg: Config, validate: Validate) -> Stores:
    _, provider = mode(cfg)
    writable = admin_enabled(cfg)
    if provider == "etcd":
        from kernel.store.etcd import EtcdStore

        etcd = EtcdStore(
            dict(cfg.get("deployment.etcd") or {}),
            validate=validate,
            read_only=not writable,
            ssl_trusted_certificate=_trusted_ca(cfg),
            must_connect=writable,  # as APISIX: only data planes start without etcd
        )
        return Stores(etcd, etcd if writable else None)
    from kernel.store.yaml_file import YamlFileStore

    name = cfg.get("apisix.standalone_file") or "apisix.yaml"
    file_store = YamlFileStore(
        cfg.resolve(name), validate=validate, env=os.environ,
        logger=logging.getLogger("sixgate.config"),
    )
    if not writable:
        return Stores(file_store, None)
    from kernel.store.yaml_resources import YamlResourceStore

    prefix = str(cfg.get("deployment.etcd.prefix") or "/apisix")
    return Stores(file_store, YamlResourceStore(file_store, prefix))


def _trusted_ca(cfg: Config) -> str | None:
    ca = cfg.get("apisix.ssl.ssl_trusted_certificate")
    if not ca or ca == "system":
        return None
    return str(cfg.resolve(ca))
