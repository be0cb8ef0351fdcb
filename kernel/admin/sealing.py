"""What the Admin API stores encrypted and shows decrypted (spec §2.5, §10.2).

* Writes (PUT/POST/PATCH) validate the plaintext, then :func:`seal` the value: in the
  ``plugins`` of routes, services, consumers, credentials, consumer groups, plugin configs and
  global rules, each plugin's ``encrypt_fields`` are encrypted when
  ``enable_encrypt_fields`` is true; an ssl's ``key``/``keys`` are encrypted whenever the keyring
  is non-empty. The write answers with the value as stored (encrypted), as APISIX does.
* GET (one and list) shows :func:`public`: plugin fields decrypted, ssl ``key``/``keys`` left out.
* PATCH merges into :func:`unseal` of the stored value (plugin fields and ssl keys decrypted),
  re-validates, and seals again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kernel.encryption import (
    Keyring,
    decrypt_plugin_conf,
    decrypt_ssl,
    encrypt_plugin_conf,
    encrypt_ssl,
)
from kernel.plugins.manager import PluginRegistry

from .resources import ResourceKind

if TYPE_CHECKING:
    from . import AdminContext

WITH_PLUGINS = frozenset(
    {
        "routes",
        "services",
        "consumers",
        "credentials",
        "consumer_groups",
        "plugin_configs",
        "global_rules",
    }
)
"""Resources whose ``plugins`` object may hold encrypted fields."""

_SSL_SECRETS = ("key", "keys")

ConfOp = Callable[[Any, tuple[str, ...], Keyring, str], Any]


def _plugins(value: Any, registry: PluginRegistry, keyring: Keyring, op: ConfOp) -> Any:
    if not isinstance(value, dict) or not isinstance(value.get("plugins"), dict):
        return value
    plugins = value["plugins"]
    out: dict[str, Any] | None = None
    for name, conf in plugins.items():
        info = registry.get(name)
        if info is None or not info.encrypt_fields:
            continue
        new = op(conf, info.encrypt_fields, keyring, name)
        if new is not conf:
            if out is None:
                out = dict(plugins)
            out[name] = new
    return value if out is None else {**value, "plugins": out}


def _encrypt(conf: Any, fields: tuple[str, ...], keyring: Keyring, _name: str) -> Any:
    return encrypt_plugin_conf(conf, fields, keyring)


def _decrypt(conf: Any, fields: tuple[str, ...], keyring: Keyring, name: str) -> Any:
    return decrypt_plugin_conf(conf, fields, keyring, plugin=name)


def seal(ctx: AdminContext, rk: ResourceKind, value: Any) -> Any:
    """``value`` as it is stored: secrets encrypted (a copy where anything changed)."""
    enc = ctx.encryption
    if rk.name == "ssls":
        return encrypt_ssl(value, enc.keyring)
    keyring = enc.plugin_keyring
    if rk.name in WITH_PLUGINS and keyring is not None:
        return _plugins(value, ctx.registry(), keyring, _encrypt)
    return value


def unseal(ctx: AdminContext, rk: ResourceKind, value: Any) -> Any:
    """A stored ``value`` with its secrets decrypted (the base a PATCH merges into)."""
    enc = ctx.encryption
    if rk.name == "ssls":
        return decrypt_ssl(value, enc.keyring)
    keyring = enc.plugin_keyring
    if rk.name in WITH_PLUGINS and keyring is not None:
        return _plugins(value, ctx.registry(), keyring, _decrypt)
    return value


def public(ctx: AdminContext, rk: ResourceKind, value: Any) -> Any:
    """A stored ``value`` as GET shows it: plugin fields decrypted, SSL private keys removed."""
    if rk.name == "ssls":
        if isinstance(value, dict) and any(k in value for k in _SSL_SECRETS):
            value = {k: v for k, v in value.items() if k not in _SSL_SECRETS}
        return value
    return unseal(ctx, rk, value)
