"""The Admin API stores secrets encrypted and shows them decrypted (spec §2.5, §10.2), over real
HTTP against the real stores (the standalone file store and a real etcd)."""

from __future__ import annotations

import datetime
import types
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kernel.admin import AdminContext, create_admin_app
from kernel.config import Config
from kernel.encryption import DEFAULT_KEYRING, Keyring
from kernel.store.resources import ResourceStore
from tests.test_admin_api import (  # noqa: F401  (fixtures: etcd_server, resource_store)
    ADMIN_KEY,
    UPSTREAM,
    Admin,
    etcd_server,
    make_registry,
    resource_store,
)

K1, K2 = DEFAULT_KEYRING
RING = Keyring([K1, K2])
P = "/apisix"


def secret_plugin() -> types.ModuleType:
    """An auth plugin whose ``key`` and ``auth.password`` are stored encrypted."""
    mod = types.ModuleType("test_admin_enc_secret_auth")
    conf_schema = {
        "type": "object",
        "properties": {
            "key": {"type": "string", "maxLength": 16},  # ciphertexts are longer: checks
            "auth": {"type": "object"},  # must run on the plaintext
        },
    }
    for k, v in {
        "name": "secret-auth",
        "version": "0.1",
        "priority": 2400,
        "type": "auth",
        "schema": conf_schema,
        "consumer_schema": {**conf_schema, "required": ["key"]},
        "encrypt_fields": ("key", "auth.password"),
    }.items():
        setattr(mod, k, v)
    return mod


def config(tmp_path: Path, data_encryption: dict[str, Any] | None) -> Config:
    data: dict[str, Any] = {
        "deployment": {
            "admin": {
                "admin_key_required": True,
                "admin_key": [{"name": "admin", "key": ADMIN_KEY, "role": "admin"}],
                "allow_admin": ["127.0.0.0/24"],
            }
        }
    }
    if data_encryption is not None:
        data["apisix"] = {"data_encryption": data_encryption}
    return Config(data=data, path=tmp_path / "config.yaml", conf_dir=tmp_path)


Factory = Callable[..., Any]


@pytest.fixture
async def make_admin(
    resource_store: ResourceStore, tmp_path: Path  # noqa: F811
) -> AsyncIterator[Factory]:
    clients: list[TestClient] = []

    async def make(data_encryption: dict[str, Any] | None = None) -> Admin:
        registry = make_registry()
        registry.add(secret_plugin())

        async def reload() -> None:
            pass

        ctx = AdminContext(
            store=resource_store,
            registry=lambda: registry,
            reload_plugins=reload,
            config=config(tmp_path, data_encryption),
        )
        client = TestClient(TestServer(create_admin_app(ctx), host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        admin = Admin(client, resource_store)
        admin.registry = registry
        return admin

    yield make
    for c in clients:
        await c.close()


async def stored(admin: Admin, key: str) -> Any:
    entry = await admin.store.get(key)
    assert entry is not None, key
    return entry.value


def enc(plain: str) -> str:
    return Keyring([K1]).encrypt(plain)


SECRET = {"key": "k-one", "auth": {"user": "u", "password": "pw"}}
SEALED = {"key": enc("k-one"), "auth": {"user": "u", "password": enc("pw")}}


# -- plugin fields -------------------------------------------------------------------------------


async def test_route_fields_stored_encrypted_and_read_in_clear(make_admin: Factory) -> None:
    admin = await make_admin()  # no data_encryption section: APISIX's defaults apply
    route = {"uri": "/r", "upstream": UPSTREAM, "plugins": {"secret-auth": SECRET}}
    status, body, _ = await admin.put("/routes/1", route)
    assert status == 201, body
    # the write answers with the value as stored, as APISIX does
    assert body["value"]["plugins"]["secret-auth"] == SEALED
    value = await stored(admin, f"{P}/routes/1")
    assert value["plugins"]["secret-auth"] == SEALED
    assert value["uri"] == "/r" and value["upstream"] == UPSTREAM
    status, body, _ = await admin.get("/routes/1")
    assert status == 200 and body["value"]["plugins"]["secret-auth"] == SECRET
    status, body, _ = await admin.get("/routes")
    assert body["list"][0]["value"]["plugins"]["secret-auth"] == SECRET
    assert route["plugins"]["secret-auth"] == SECRET  # (the request body was not touched)


async def test_validation_sees_plaintext_and_nothing_is_stored_on_error(
    make_admin: Factory,
) -> None:
    admin = await make_admin()
    too_long = {"uri": "/r", "upstream": UPSTREAM, "plugins": {"secret-auth": {"key": "x" * 17}}}
    status, body, _ = await admin.put("/routes/1", too_long)
    assert status == 400 and "expected at most 16" in body["error_msg"]
    assert await admin.store.get(f"{P}/routes/1") is None


async def test_post_and_patch_reencrypt(make_admin: Factory) -> None:
    admin = await make_admin()
    route = {"uri": "/r", "upstream": UPSTREAM, "plugins": {"secret-auth": SECRET}}
    status, body, _ = await admin.post("/routes", route)
    assert status == 201
    rid = body["value"]["id"]
    key = f"{P}/routes/{rid}"
    assert (await stored(admin, key))["plugins"]["secret-auth"] == SEALED
    # a PATCH of something else: the stored secrets are not encrypted twice
    status, body, _ = await admin.patch(f"/routes/{rid}", {"desc": "d"})
    assert status == 200, body
    value = await stored(admin, key)
    assert value["desc"] == "d" and value["plugins"]["secret-auth"] == SEALED
    # merge into the decrypted value, then encrypt again
    status, _, _ = await admin.patch(
        f"/routes/{rid}", {"plugins": {"secret-auth": {"auth": {"password": "pw2"}}}}
    )
    assert status == 200
    value = await stored(admin, key)
    assert value["plugins"]["secret-auth"] == {
        "key": enc("k-one"), "auth": {"user": "u", "password": enc("pw2")},
    }  # fmt: skip
    # a sub-path PATCH of the secret itself
    status, _, _ = await admin.patch(f"/routes/{rid}/plugins/secret-auth/key", "k-two")
    assert status == 200
    assert (await stored(admin, key))["plugins"]["secret-auth"]["key"] == enc("k-two")
    status, body, _ = await admin.get(f"/routes/{rid}")
    assert body["value"]["plugins"]["secret-auth"] == {
        "key": "k-two", "auth": {"user": "u", "password": "pw2"},
    }  # fmt: skip
    # PATCH validates the merged plaintext
    status, body, _ = await admin.patch(f"/routes/{rid}/plugins/secret-auth/key", "y" * 17)
    assert status == 400 and "expected at most 16" in body["error_msg"]


async def test_every_resource_with_plugins(make_admin: Factory) -> None:
    admin = await make_admin()
    plugins = {"secret-auth": SECRET}
    writes = [
        ("/services/1", {"plugins": plugins}, f"{P}/services/1"),
        ("/plugin_configs/1", {"plugins": plugins}, f"{P}/plugin_configs/1"),
        ("/global_rules/1", {"plugins": plugins}, f"{P}/global_rules/1"),
        ("/consumer_groups/1", {"plugins": plugins}, f"{P}/consumer_groups/1"),
        ("/consumers", {"username": "jack", "plugins": plugins}, f"{P}/consumers/jack"),
        (
            "/consumers/jack/credentials/c1",
            {"plugins": {"secret-auth": {"key": "cred-key"}}},
            f"{P}/consumers/jack/credentials/c1",
        ),
    ]
    for path, body, key in writes:
        status, answer, _ = await admin.put(path, body)
        assert status == 201, (path, answer)
        value = await stored(admin, key)
        sealed = value["plugins"]["secret-auth"]
        assert sealed["key"] != body["plugins"]["secret-auth"]["key"], path
        assert RING.decrypt(sealed["key"]) == body["plugins"]["secret-auth"]["key"], path
        read = key.removeprefix(f"{P}")
        status, answer, _ = await admin.get(read)
        assert answer["value"]["plugins"] == body["plugins"], path
    status, answer, _ = await admin.get("/consumers/jack/credentials")
    assert answer["list"][0]["value"]["plugins"]["secret-auth"] == {"key": "cred-key"}


async def test_duplicate_auth_keys_found_through_encryption(make_admin: Factory) -> None:
    from kernel.admin import checks

    checks.AUTH_KEY_ATTRS["secret-auth"] = "key"
    try:
        admin = await make_admin()
        await admin.put("/consumers", {"username": "bob", "plugins": {"secret-auth": {"key": "b"}}})
        await admin.put("/consumers", {"username": "alex"})
        status, body, _ = await admin.put(
            "/consumers/alex/credentials/c1", {"plugins": {"secret-auth": {"key": "b"}}}
        )
        assert (status, body) == (
            400, {"error_msg": "duplicate key of plugin secret-auth found with consumer: bob"},
        )  # fmt: skip
    finally:
        del checks.AUTH_KEY_ATTRS["secret-auth"]


async def test_rotated_keyring_and_plaintext_left_from_before(make_admin: Factory) -> None:
    admin = await make_admin({"keyring": [K1, K2]})
    old = Keyring([K2]).encrypt("old-secret")
    for rid, secret in (("1", old), ("2", "written-in-clear")):
        await admin.store.put(
            f"{P}/routes/{rid}",
            {"id": rid, "uri": "/r" + rid, "plugins": {"secret-auth": {"key": secret}}},
        )
    _, body, _ = await admin.get("/routes/1")
    assert body["value"]["plugins"]["secret-auth"]["key"] == "old-secret"
    _, body, _ = await admin.get("/routes/2")
    assert body["value"]["plugins"]["secret-auth"]["key"] == "written-in-clear"
    # any write re-encrypts with the first key
    status, _, _ = await admin.patch("/routes/1", {"desc": "touched"})
    assert status == 200
    assert (await stored(admin, f"{P}/routes/1"))["plugins"]["secret-auth"]["key"] == enc(
        "old-secret"
    )


async def test_encrypt_fields_disabled(make_admin: Factory) -> None:
    admin = await make_admin({"enable_encrypt_fields": False, "keyring": [K1]})
    route = {"uri": "/r", "upstream": UPSTREAM, "plugins": {"secret-auth": SECRET}}
    status, body, _ = await admin.put("/routes/1", route)
    assert status == 201 and body["value"]["plugins"]["secret-auth"] == SECRET
    assert (await stored(admin, f"{P}/routes/1"))["plugins"]["secret-auth"] == SECRET


# -- SSL private keys ------------------------------------------------------------------------------


def cert_pair(cn: str) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem


async def test_ssl_keys_encrypted_and_never_shown(make_admin: Factory) -> None:
    admin = await make_admin({"enable_encrypt_fields": False})  # ssl keys: keyring alone decides
    cert, key = cert_pair("a.com")
    cert2, key2 = cert_pair("a.com")
    ssl = {"cert": cert, "key": key, "certs": [cert2], "keys": [key2], "snis": ["a.com"]}
    status, body, _ = await admin.put("/ssls/1", ssl)
    assert status == 201, body
    assert body["value"]["key"] == enc(key) and body["value"]["keys"] == [enc(key2)]
    value = await stored(admin, f"{P}/ssls/1")
    assert value["key"] == enc(key) and value["keys"] == [enc(key2)]
    assert value["cert"] == cert
    assert RING.decrypt(value["key"]) == key
    for path in ("/ssls/1", "/ssls"):
        status, body, _ = await admin.get(path)
        shown = body["value"] if path == "/ssls/1" else body["list"][0]["value"]
        assert status == 200 and "key" not in shown and "keys" not in shown
        assert shown["cert"] == cert and shown["snis"] == ["a.com"]
    # PATCH keeps the key encrypted once; a new key through a sub-path is encrypted too
    status, _, _ = await admin.patch("/ssls/1", {"snis": ["a.com", "b.a.com"]})
    assert status == 200
    assert (await stored(admin, f"{P}/ssls/1"))["key"] == enc(key)
    status, _, _ = await admin.patch("/ssls/1/key", key2)
    assert status == 200
    assert (await stored(admin, f"{P}/ssls/1"))["key"] == enc(key2)
    # POST as well
    status, body, _ = await admin.post("/ssls", {"cert": cert, "key": key, "snis": ["c.com"]})
    assert status == 201
    assert (await stored(admin, body["key"]))["key"] == enc(key)


async def test_ssl_keys_in_clear_without_keyring(make_admin: Factory) -> None:
    admin = await make_admin({"keyring": []})
    cert, key = cert_pair("a.com")
    status, _, _ = await admin.put("/ssls/1", {"cert": cert, "key": key, "snis": ["a.com"]})
    assert status == 201
    assert (await stored(admin, f"{P}/ssls/1"))["key"] == key
    _, body, _ = await admin.get("/ssls/1")
    assert "key" not in body["value"]
