"""Field encryption at rest (spec §10.2): kernel.encryption, the registry's ``encrypt_fields``,
and the data plane decrypting plugin confs when it compiles chains."""

from __future__ import annotations

import base64
import logging
import shutil
import subprocess
import textwrap
import types
from pathlib import Path
from typing import Any

import pytest
import yaml

from kernel.chain import compile_chain, plaintext_conf
from kernel.config import Config
from kernel.encryption import (
    DEFAULT_KEYRING,
    DataEncryption,
    Keyring,
    decrypt_plugin_conf,
    decrypt_ssl,
    encrypt_plugin_conf,
    encrypt_ssl,
    fields_of,
)
from kernel.plugins.manager import PluginRegistry
from plugin_sdk import PluginError, Response, hookimpl
from tests.support.gateway import GatewayProcess

K1, K2 = DEFAULT_KEYRING  # "qeddd145sfvddff3", "edd1c9f0985e76a2"
K256 = "0123456789abcdef0123456789ABCDEF"

# From APISIX's own test suite (t/plugin/csrf.t): "userkey" under the key edd1c9f0985e76a2.
APISIX_VECTOR = (K2, "userkey", "mt39FazQccyMqt4ctoRV7w==")


def openssl_encrypt(key: str, plaintext: str) -> str:
    """AES-CBC with IV = the key's first 16 bytes, computed by the openssl CLI."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl unavailable")
    raw = key.encode()
    cipher = {16: "aes-128-cbc", 32: "aes-256-cbc"}[len(raw)]
    done = subprocess.run(
        ["openssl", "enc", "-" + cipher, "-K", raw.hex(), "-iv", raw[:16].hex(), "-A", "-base64"],
        input=plaintext.encode(), capture_output=True, check=True,
    )
    return done.stdout.decode().strip()


# -- the cipher ------------------------------------------------------------------------------------


def test_known_vector_from_apisix() -> None:
    key, plain, cipher = APISIX_VECTOR
    ring = Keyring([key])
    assert ring.encrypt(plain) == cipher
    assert ring.decrypt(cipher) == plain


@pytest.mark.parametrize("key", [K1, K2, K256])
@pytest.mark.parametrize(
    "plain", ["p", "exactly16bytes!!", "a longer secret with spaces, 40 chars.", "ünï©ødé ✓"]
)
def test_matches_openssl(key: str, plain: str) -> None:
    expected = openssl_encrypt(key, plain)
    ring = Keyring([key])
    assert ring.encrypt(plain) == expected
    assert ring.decrypt(expected) == plain


def test_round_trip_and_padding_lengths() -> None:
    ring = Keyring([K1, K2])
    for n in range(0, 40):
        text = "x" * n
        enc = ring.encrypt(text)
        assert len(base64.b64decode(enc)) == (n // 16 + 1) * 16  # PKCS#7 always pads
        assert ring.decrypt(enc) == text


def test_rotation_decrypts_with_a_later_key() -> None:
    old = Keyring([K2]).encrypt("secret")
    rotated = Keyring([K1, K2])  # a new first key; the old one kept for reading
    assert rotated.encrypt("secret") != old
    assert rotated.decrypt(old) == "secret"
    assert Keyring([K1]).decrypt(old) is None
    # AES-128 -> AES-256 rotation
    assert Keyring([K256, K2]).decrypt(old) == "secret"


def test_undecryptable_values() -> None:
    ring = Keyring([K1])
    assert ring.decrypt("not base64!") is None
    assert ring.decrypt("") is None
    assert ring.decrypt(base64.b64encode(b"short").decode()) is None
    assert ring.decrypt(base64.b64encode(b"\0" * 32).decode()) is None  # bad padding


def test_bad_key_lengths_are_dropped(caplog: pytest.LogCaptureFixture) -> None:
    ring = Keyring(["short", K1, "x" * 24])
    assert len(ring) == 1
    assert ring.encrypt("v") == Keyring([K1]).encrypt("v")
    assert sum("16 or 32 needed" in r.getMessage() for r in caplog.records) == 2
    empty = Keyring([])
    assert not empty and empty.encrypt("v") == "v" and empty.decrypt("v") == "v"


def test_config_section() -> None:
    def cfg(data: dict[str, Any]) -> Config:
        return Config(data=data, path=Path("config.yaml"), conf_dir=Path("."))

    default = DataEncryption.from_config(cfg({}))
    assert len(default.keyring) == 2 and default.enable_encrypt_fields
    assert default.plugin_keyring is default.keyring
    one = DataEncryption.from_config(cfg({"apisix": {"data_encryption": {"keyring": K2}}}))
    assert one.keyring.encrypt("userkey") == APISIX_VECTOR[2]
    off = DataEncryption.from_config(
        cfg({"apisix": {"data_encryption": {"enable_encrypt_fields": False}}})
    )
    assert off.plugin_keyring is None and off.keyring  # ssl keys are still encrypted
    none = DataEncryption.from_config(cfg({"apisix": {"data_encryption": {"keyring": None}}}))
    assert not none.keyring and none.plugin_keyring is None


def test_shipped_defaults_match() -> None:
    from kernel.config import load_config

    conf = load_config(Path(__file__).resolve().parents[1] / "conf" / "config.yaml", env={})
    enc = DataEncryption.from_config(conf)
    assert enc.enable_encrypt_fields and len(enc.keyring) == 2
    assert enc.keyring.encrypt("userkey") == Keyring([K1]).encrypt("userkey")


# -- plugin confs ---------------------------------------------------------------------------------


def test_nested_fields_without_mutating_the_input() -> None:
    ring = Keyring([K1])
    conf = {
        "key": "top",
        "auth": {"password": "pw", "user": "u"},
        "servers": [{"token": "t1"}, {"token": "t2"}, "not-an-object"],
        "headers": {"a": "1", "n": 2},
        "list": ["x", 3],
        "untouched": {"deep": "v"},
        "number": 5,
    }
    snapshot = yaml.safe_dump(conf)
    fields = ("key", "auth.password", "servers.token", "headers", "list", "number", "missing.x")
    enc = encrypt_plugin_conf(conf, fields, ring)
    assert yaml.safe_dump(conf) == snapshot  # input untouched
    assert enc["untouched"] is conf["untouched"]  # unchanged parts are shared
    assert enc["auth"]["user"] == "u" and enc["number"] == 5
    assert ring.decrypt(enc["key"]) == "top"
    assert ring.decrypt(enc["auth"]["password"]) == "pw"
    assert [ring.decrypt(s["token"]) for s in enc["servers"][:2]] == ["t1", "t2"]
    assert enc["servers"][2] == "not-an-object"
    assert ring.decrypt(enc["headers"]["a"]) == "1" and enc["headers"]["n"] == 2
    assert ring.decrypt(enc["list"][0]) == "x" and enc["list"][1] == 3
    dec = decrypt_plugin_conf(enc, fields, Keyring([K2, K1]))
    assert dec == conf
    # nothing to do: the same object back
    assert encrypt_plugin_conf(conf, ("nope",), ring) is conf
    assert encrypt_plugin_conf(conf, fields, None) is conf


def test_undecryptable_field_stays_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="sixgate.encryption")
    conf = {"key": "stored-before-encryption-was-on"}
    for _ in range(3):
        assert decrypt_plugin_conf(conf, ("key",), Keyring([K1]), plugin="p1") == conf
    warnings = [r.getMessage() for r in caplog.records if "failed to decrypt" in r.getMessage()]
    assert warnings == [
        "failed to decrypt the conf of plugin [p1] key [key]: no key of "
        "data_encryption.keyring fits; using the value as stored"
    ]


def test_ssl_keys_only_pem_is_encrypted() -> None:
    ring = Keyring([K1])
    pem = "-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----\n"
    ssl = {"cert": "C", "key": pem, "keys": [pem, "already-encrypted"], "snis": ["a.com"]}
    enc = encrypt_ssl(ssl, ring)
    assert ssl["key"] == pem  # input untouched
    assert enc["cert"] == "C" and enc["keys"][1] == "already-encrypted"
    assert ring.decrypt(enc["key"]) == pem and ring.decrypt(enc["keys"][0]) == pem
    assert decrypt_ssl(enc, ring) == ssl
    assert encrypt_ssl(ssl, Keyring([])) is ssl


# -- the registry and the data plane ------------------------------------------------------------


def plugin_module(name: str = "secretive", **attrs: Any) -> types.ModuleType:
    mod = types.ModuleType(f"test_enc_plugin_{name}")
    seen: list[Any] = []

    @hookimpl
    def access(ctx: Any, conf: Any) -> Response:
        seen.append(conf)
        return Response(200, conf["key"])

    values: dict[str, Any] = {
        "name": name,
        "version": "0.1",
        "priority": 10,
        "schema": {
            "type": "object",
            "properties": {
                "key": {"type": "string", "minLength": 1, "maxLength": 12},
                "auth": {"type": "object"},
            },
            "required": ["key"],
        },
        "encrypt_fields": ("key", "auth.password"),
        "access": access,
        "seen": seen,
        **attrs,
    }
    for k, v in values.items():
        setattr(mod, k, v)
    return mod


def test_registry_reads_encrypt_fields() -> None:
    registry = PluginRegistry([plugin_module(), plugin_module("plain", encrypt_fields=None)])
    assert registry.keyring is None
    info = registry.get("secretive")
    assert info is not None and info.encrypt_fields == ("key", "auth.password")
    plain = registry.get("plain")
    assert plain is not None and plain.encrypt_fields == ()
    as_set = PluginRegistry([plugin_module(encrypt_fields={"b", "a"})]).get("secretive")
    assert as_set is not None and as_set.encrypt_fields == ("a", "b")
    for bad in ("key", ["ok", 3], ("a..b",)):
        with pytest.raises(PluginError, match="encrypt_fields"):
            PluginRegistry([plugin_module(encrypt_fields=bad)])
    with pytest.raises(ValueError):
        fields_of(types.SimpleNamespace(encrypt_fields=""))


def test_compiled_chain_gets_decrypted_conf() -> None:
    mod = plugin_module()
    registry = PluginRegistry([mod])
    ring = Keyring([K1, K2])
    # "s3cret-value" fits maxLength 12; its ciphertext does not
    stored = {"key": Keyring([K2]).encrypt("s3cret-value"), "auth": {"password": ring.encrypt("p")}}
    # without a keyring the ciphertext is what the plugin would see (and it fails validation)
    _, errors = compile_chain({"secretive": stored}, registry)
    assert errors == [
        'failed to check the configuration of plugin secretive err: property "key" validation '
        "failed: string too long, expected at most 12, got 24"
    ]
    registry.keyring = ring
    chain, errors = compile_chain({"secretive": stored}, registry)
    assert errors == []
    [step] = chain.access
    assert step.conf == {"key": "s3cret-value", "auth": {"password": "p"}}
    assert stored["key"] != "s3cret-value"  # the stored conf is not modified
    resp = step.func(None, step.conf)
    assert resp.body == "s3cret-value" and mod.seen == [step.conf]
    info = registry.get("secretive")
    assert info is not None
    assert plaintext_conf(info, stored, registry) == step.conf


# -- end to end: a gateway process serving an encrypted conf -------------------------------------

PLUGIN_SOURCE = """
    from plugin_sdk import Response, hookimpl

    name = "echo-secret"
    version = "0.1"
    priority = 10
    schema = {"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"]}
    encrypt_fields = ("key",)

    @hookimpl
    def access(ctx, conf):
        return Response(200, "secret=" + conf["key"])
"""


def test_gateway_serves_plugins_their_plaintext(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "echo_secret.py").write_text(textwrap.dedent(PLUGIN_SOURCE))
    ring_conf = {"enable_encrypt_fields": True, "keyring": [K1, K2]}
    gw = GatewayProcess(
        tmp_path / "gw",
        {
            "apisix": {"plugin_dirs": [str(plugins)], "data_encryption": ring_conf},
            "plugins": ["echo-secret", "fault-injection"],
        },
    )
    current = Keyring([K1]).encrypt("hunter2")
    rotated = Keyring([K2]).encrypt("from-the-old-key")
    doc = {
        "routes": [
            {"id": "1", "uri": "/new", "plugins": {"echo-secret": {"key": current}}},
            {"id": "2", "uri": "/old", "plugins": {"echo-secret": {"key": rotated}}},
            {"id": "3", "uri": "/plain", "plugins": {"echo-secret": {"key": "plain-text"}}},
        ]
    }
    gw.start()
    try:
        gw.apply(doc)
        assert gw.get("/new").text == "secret=hunter2"
        assert gw.get("/old").text == "secret=from-the-old-key"
        assert gw.get("/plain").text == "secret=plain-text"  # undecryptable: used as stored
    finally:
        gw.stop()
    assert "failed to decrypt the conf of plugin [echo-secret] key [key]" in gw.logs()
