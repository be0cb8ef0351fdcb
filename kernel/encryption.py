"""Field encryption at rest (spec §10.2), as APISIX's ``data_encryption``.

``apisix.data_encryption.keyring`` lists keys of 16 bytes (AES-128-CBC) or 32 bytes
(AES-256-CBC); the IV is the key itself (its first 16 bytes for a 32-byte key), padding is
PKCS#7 and the result is standard base64. The first key encrypts; decryption tries every key in
order. Keys of any other length are dropped with an error in the log.

What is encrypted:

* plugin fields named in a plugin module's ``encrypt_fields`` when
  ``apisix.data_encryption.enable_encrypt_fields`` is true (the Admin API encrypts them on
  write and decrypts them on GET; the data plane decrypts them once per config apply, when it
  compiles plugin chains);
* SSL private keys (``key`` and each of ``keys``, only PEM text starting with ``---``) whenever
  the keyring is non-empty.

A field name is a dotted path (``auth.password``). Walking it, an array met on the way is
entered item by item; at the end a string is transformed, as is every string of an array or
every string value of an object. Nothing here mutates its input: changed containers are copied.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

# cryptography is imported where a value is encrypted or decrypted: a gateway whose config has
# no encrypted field never loads it (it adds ~8 MiB to a worker's RSS).

__all__ = [
    "DEFAULT_KEYRING",
    "DataEncryption",
    "Keyring",
    "decrypt_plugin_conf",
    "decrypt_ssl",
    "encrypt_plugin_conf",
    "encrypt_ssl",
    "fields_of",
]

log = logging.getLogger("sixgate.encryption")

DEFAULT_KEYRING: tuple[str, ...] = ("qeddd145sfvddff3", "edd1c9f0985e76a2")
"""``apisix.data_encryption.keyring`` when config.yaml does not set it."""

_BLOCK = 16
_SSL_FIELDS = ("key", "keys")


class Keyring:
    """The AES-CBC keys of ``data_encryption.keyring``; built once per config, then shared.

    An empty keyring (no usable key) encrypts nothing and decrypts nothing.
    """

    __slots__ = ("_keys",)

    def __init__(self, keys: Iterable[str | bytes] = ()) -> None:
        usable: list[bytes] = []
        for index, key in enumerate(keys):
            raw = key.encode("utf-8") if isinstance(key, str) else bytes(key)
            if len(raw) in (16, 32):
                usable.append(raw)
            else:
                log.error(
                    "data_encryption.keyring[%d] is %d bytes long (16 or 32 needed); ignored",
                    index, len(raw),
                )
        self._keys: tuple[bytes, ...] = tuple(usable)

    @classmethod
    def from_setting(cls, value: Any) -> Keyring:
        """A keyring from the config value: a string, a list of strings, or null (empty)."""
        if value is None:
            return cls()
        if isinstance(value, str | bytes):
            return cls([value])
        if isinstance(value, Sequence):
            return cls([v for v in value if isinstance(v, str | bytes)])
        return cls()

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    @staticmethod
    def _cipher(key: bytes) -> Cipher[modes.CBC]:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        return Cipher(algorithms.AES(key), modes.CBC(key[:_BLOCK]))

    def encrypt(self, plaintext: str) -> str:
        """``plaintext`` encrypted with the first key, base64; unchanged when empty keyring."""
        if not self._keys:
            return plaintext
        from cryptography.hazmat.primitives import padding

        padder = padding.PKCS7(128).padder()
        data = padder.update(plaintext.encode("utf-8")) + padder.finalize()
        enc = self._cipher(self._keys[0]).encryptor()
        return base64.b64encode(enc.update(data) + enc.finalize()).decode("ascii")

    def decrypt(self, value: str) -> str | None:
        """The plaintext of ``value`` under the first key that fits, or ``None`` (not base64,
        or no key yields valid padding and UTF-8 text). An empty keyring returns ``value``."""
        if not self._keys:
            return value
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return None
        if not data or len(data) % _BLOCK:
            return None
        from cryptography.hazmat.primitives import padding

        for key in self._keys:
            dec = self._cipher(key).decryptor()
            padded = dec.update(data) + dec.finalize()
            unpadder = padding.PKCS7(128).unpadder()
            try:
                raw = unpadder.update(padded) + unpadder.finalize()
                return raw.decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                continue
        return None


@dataclass(frozen=True, slots=True)
class DataEncryption:
    """``apisix.data_encryption`` read once from config.yaml."""

    keyring: Keyring
    enable_encrypt_fields: bool = True

    @classmethod
    def from_config(cls, cfg: Any) -> DataEncryption:
        """From a :class:`kernel.config.Config` (anything with ``get(dotted, default)``).

        An absent ``keyring`` means APISIX's default one; an explicit null means none.
        """
        section = cfg.get("apisix.data_encryption")
        section = section if isinstance(section, Mapping) else {}
        keys = section.get("keyring", DEFAULT_KEYRING)
        return cls(
            Keyring.from_setting(keys), section.get("enable_encrypt_fields", True) is not False
        )

    @property
    def plugin_keyring(self) -> Keyring | None:
        """The keyring for plugin ``encrypt_fields``; ``None`` when they are not encrypted."""
        if self.enable_encrypt_fields and self.keyring:
            return self.keyring
        return None


def fields_of(module: Any) -> tuple[str, ...]:
    """A plugin module's ``encrypt_fields`` (tuple, list or set of dotted names), read once
    when the plugin is registered. Raises :class:`ValueError` when it has another shape."""
    raw = getattr(module, "encrypt_fields", None)
    if raw is None:
        return ()
    if isinstance(raw, str) or not isinstance(raw, tuple | list | set | frozenset):
        raise ValueError("'encrypt_fields' must be a tuple, list or set of field names")
    if not all(isinstance(f, str) and f and "" not in f.split(".") for f in raw):
        raise ValueError("'encrypt_fields' entries must be non-empty (dotted) field names")
    return tuple(sorted(raw)) if isinstance(raw, set | frozenset) else tuple(raw)


# -- plugin confs -------------------------------------------------------------------------------

Transform = Callable[[str, str], str]
"""``(value, field path) -> new value``."""


def _leaf(value: Any, path: str, op: Transform) -> Any:
    if isinstance(value, str):
        return op(value, path)
    if isinstance(value, list):
        new = [op(v, f"{path}[{i}]") if isinstance(v, str) else v for i, v in enumerate(value)]
        return new if any(a is not b for a, b in zip(new, value, strict=True)) else value
    if isinstance(value, Mapping):
        changed = {k: op(v, f"{path}.{k}") for k, v in value.items() if isinstance(v, str)}
        changed = {k: v for k, v in changed.items() if v is not value[k]}
        return {**value, **changed} if changed else value
    return value


def _walk(node: Any, parts: Sequence[str], path: str, op: Transform) -> Any:
    """``node`` with the field at ``parts`` transformed; the same object when nothing changed."""
    if isinstance(node, list):
        new = [_walk(item, parts, path, op) if isinstance(item, Mapping) else item
               for item in node]  # fmt: skip
        return new if any(a is not b for a, b in zip(new, node, strict=True)) else node
    if not isinstance(node, Mapping) or parts[0] not in node:
        return node
    head = parts[0]
    here = f"{path}.{head}" if path else head
    old = node[head]
    if len(parts) == 1:
        new = _leaf(old, here, op)
    elif isinstance(old, Mapping | list):
        new = _walk(old, parts[1:], here, op)
    else:
        return node
    if new is old:
        return node
    out = dict(node)
    out[head] = new
    return out


def _apply(conf: Any, fields: Iterable[str], op: Transform) -> Any:
    for name in fields:
        conf = _walk(conf, name.split("."), "", op)
    return conf


def encrypt_plugin_conf(conf: Any, fields: Iterable[str], keyring: Keyring | None) -> Any:
    """``conf`` with its ``fields`` encrypted (a copy where anything changed). Runs on Admin API
    writes, after the plaintext was validated."""
    if not keyring or not isinstance(conf, Mapping):
        return conf
    return _apply(conf, fields, lambda v, _p: keyring.encrypt(v))


_warned: set[bytes] = set()


def decrypt_plugin_conf(
    conf: Any, fields: Iterable[str], keyring: Keyring | None, *, plugin: str = "?"
) -> Any:
    """``conf`` with its ``fields`` decrypted (a copy where anything changed). A value no key
    decrypts stays as it is, with one warning per distinct value (e.g. text stored before
    encryption was enabled). Runs on Admin API reads and when the data plane compiles chains."""
    if not keyring or not isinstance(conf, Mapping):
        return conf

    def op(value: str, path: str) -> str:
        plain = keyring.decrypt(value)
        if plain is not None:
            return plain
        tag = hashlib.sha256(f"{plugin}\0{path}\0{value}".encode()).digest()[:12]
        if tag not in _warned:
            if len(_warned) > 4096:
                _warned.clear()
            _warned.add(tag)
            log.warning(
                "failed to decrypt the conf of plugin [%s] key [%s]: no key of "
                "data_encryption.keyring fits; using the value as stored", plugin, path,
            )
        return value

    return _apply(conf, fields, op)


# -- SSL private keys ---------------------------------------------------------------------------


def encrypt_ssl(value: Any, keyring: Keyring | None) -> Any:
    """An ssl object with ``key`` and each of ``keys`` encrypted when they are PEM text
    (``---...``) and the keyring is non-empty (a copy where anything changed)."""
    if not keyring or not isinstance(value, Mapping):
        return value

    def op(v: str, _p: str) -> str:
        return keyring.encrypt(v) if v.startswith("---") else v

    return _apply(value, _SSL_FIELDS, op)


def decrypt_ssl(value: Any, keyring: Keyring | None) -> Any:
    """An ssl object with encrypted ``key``/``keys`` decrypted; PEM text and values no key
    decrypts are kept as they are. For PATCH merges and, later, the TLS listener."""
    if not keyring or not isinstance(value, Mapping):
        return value

    def op(v: str, _p: str) -> str:
        if v.startswith("---"):
            return v
        plain = keyring.decrypt(v)
        if plain is None:
            log.error("decrypt ssl key failed")
            return v
        return plain

    return _apply(value, _SSL_FIELDS, op)
