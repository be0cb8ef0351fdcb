"""jwt-auth (spec §7.10, §2.9 duplicate keys, §10.2 encrypted secrets): where the token is
read, every 401 message, HS*/RS*/PS*/ES*/EdDSA keys, ``alg`` pinning, ``exp``/``nbf`` with the
grace period, ``claims_to_verify``, ``store_in_ctx``, ``hide_credentials``, anonymous consumers
-- through a real gateway (the SDK test kit, tokens signed by PyJWT) and the real Admin API."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

import builtin_plugins.jwt_auth as jwt_auth
from kernel.encryption import Keyring
from plugin_sdk.testing import ConfigRejected, GatewayHarness
from tests.test_admin_api import Admin
from tests.test_key_auth import admin, gw, module_gateway  # noqa: F401  (fixtures)

SECRET = "a-secret-long-enough-for-hs512-" + "x" * 40  # >= 64 bytes: no PyJWT warning
CHALLENGE = 'Bearer realm="jwt"'
MISSING = {"message": "Missing JWT token in request"}
INVALID = {"message": "JWT token invalid"}
NO_KEY = {"message": "missing user key in JWT token"}
WRONG_KEY = {"message": "Invalid user key in JWT token"}
FAILED = {"message": "failed to verify jwt"}


def token(payload: dict[str, Any], key: Any = SECRET, alg: str = "HS256",
          headers: dict[str, Any] | None = None) -> str:
    return jwt.encode(payload, key, algorithm=alg, headers=headers)


def bearer(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


def pem_pair(private: Any) -> tuple[Any, str]:
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


KEYS: dict[str, Callable[[], Any]] = {
    "RS256": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ES256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "ES384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "EdDSA": lambda: ed25519.Ed25519PrivateKey.generate(),
}


@pytest.fixture(scope="module")
def keypairs() -> dict[str, tuple[Any, str]]:
    pairs = {alg: pem_pair(make()) for alg, make in KEYS.items()}
    pairs["PS256"] = pairs["RS512"] = pairs["RS256"]
    return pairs


@pytest.fixture
def jack(gw: GatewayHarness) -> GatewayHarness:  # noqa: F811
    """Consumer jack (HS256, ``user-key``) and route 1 ``/hello`` with ``jwt-auth {}``."""
    gw.add_consumer("jack", {"jwt-auth": {"key": "user-key", "secret": SECRET}})
    gw.add_route("/hello", {"jwt-auth": {}}, id="1")
    return gw


def later(seconds: float = 3600) -> int:
    return int(time.time() + seconds)


# -- finding the token and the messages ----------------------------------------------------------


def test_messages(jack: GatewayHarness) -> None:
    good = token({"key": "user-key", "exp": later()})
    header, payload, _ = good.split(".")
    cases: list[tuple[dict[str, str], dict[str, str]]] = [
        ({}, MISSING),
        ({"Authorization": "Bearer not-a-jwt"}, INVALID),
        ({"Authorization": "a.b"}, INVALID),
        ({"Authorization": "a.b.c.d"}, INVALID),
        ({"Authorization": f"{header}.{payload}.%%%"}, INVALID),
        ({"Authorization": base64.urlsafe_b64encode(b"[1]").decode() + f".{payload}.x"}, INVALID),
        (bearer(token({"sub": "user-key"})), NO_KEY),
        (bearer(token({"key": None})), NO_KEY),
        (bearer(token({"key": "nobody"})), WRONG_KEY),
        (bearer(token({"key": ["user-key"]})), WRONG_KEY),
        (bearer(token({"key": "user-key"}, key=SECRET + "x")), FAILED),
        (bearer(f"{header}.{payload}."), FAILED),
    ]
    for headers, body in cases:
        res = jack.get("/hello", headers=headers)
        assert (res.status, res.json()) == (401, body), headers
        assert res.headers.get("WWW-Authenticate") == CHALLENGE
    jack.upstream.assert_not_received()
    assert jack.get("/hello", headers=bearer(good)).status == 200
    jack.upstream.assert_received(headers={"X-Consumer-Username": "jack"})


def test_token_sources_and_order(jack: GatewayHarness) -> None:
    good = token({"key": "user-key"})
    bad = token({"key": "user-key"}, key=SECRET + "x")
    for headers in ({"Authorization": good}, bearer(good), {"Authorization": f"bearer {good}"},
                    {"Authorization": f"BEARER {good}"}):
        assert jack.get("/hello", headers=headers).status == 200, headers
    assert jack.get(f"/hello?jwt={good}").status == 200
    assert jack.get("/hello", headers={"Cookie": f"a=1; jwt={good}"}).status == 200
    # header, then query, then cookie: the first one found is the one checked
    assert jack.get(f"/hello?jwt={good}", headers=bearer(bad)).json() == FAILED
    assert jack.get(f"/hello?jwt={bad}", headers={"Cookie": f"jwt={good}"}).json() == FAILED
    assert jack.get("/hello?jwt").json() == INVALID  # a flag argument: no token in it


def test_custom_names_claim_and_realm(gw: GatewayHarness) -> None:  # noqa: F811
    gw.add_consumer("jack", {"jwt-auth": {"key": "user-key", "secret": SECRET}})
    gw.add_route("/hello", {"jwt-auth": {"header": "X-Token", "query": "t", "cookie": "c",
                                         "key_claim_name": "iss", "realm": "shop"}}, id="1")
    good = token({"iss": "user-key"})
    assert gw.get("/hello", headers={"X-Token": good}).status == 200
    assert gw.get(f"/hello?t={good}").status == 200
    assert gw.get("/hello", headers={"Cookie": f"c={good}"}).status == 200
    res = gw.get("/hello", headers=bearer(good))
    assert (res.status, res.json()) == (401, MISSING)
    assert res.headers.get("WWW-Authenticate") == 'Bearer realm="shop"'
    assert gw.get("/hello", headers={"X-Token": token({"key": "user-key"})}).json() == NO_KEY


# -- algorithms and keys ----------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hmac_algorithms(gw: GatewayHarness, alg: str) -> None:  # noqa: F811
    gw.add_consumer("jack", {"jwt-auth": {"key": "user-key", "secret": SECRET,
                                          "algorithm": alg}})
    gw.add_route("/hello", {"jwt-auth": {}}, id="1")
    assert gw.get("/hello", headers=bearer(token({"key": "user-key"}, alg=alg))).status == 200
    other = "HS512" if alg != "HS512" else "HS256"
    res = gw.get("/hello", headers=bearer(token({"key": "user-key"}, alg=other)))
    assert res.json() == FAILED  # the header's alg must be the consumer's


def test_base64_secret(gw: GatewayHarness) -> None:  # noqa: F811
    raw = bytes(range(40))
    gw.add_consumer("jack", {"jwt-auth": {"key": "user-key", "base64_secret": True,
                                          "secret": base64.b64encode(raw).decode()}})
    gw.add_route("/hello", {"jwt-auth": {}}, id="1")
    assert gw.get("/hello", headers=bearer(token({"key": "user-key"}, key=raw))).status == 200
    b64 = base64.b64encode(raw).decode()
    assert gw.get("/hello", headers=bearer(token({"key": "user-key"}, key=b64))).json() == FAILED


@pytest.mark.parametrize("alg", ["RS256", "RS512", "PS256", "ES256", "ES384", "EdDSA"])
def test_public_key_algorithms(gw: GatewayHarness, keypairs: Any,  # noqa: F811
                               alg: str) -> None:
    private, public = keypairs[alg]
    gw.add_consumer("kerouac", {"jwt-auth": {"key": "user-key", "algorithm": alg,
                                             "public_key": public}})
    gw.add_route("/hello", {"jwt-auth": {}}, id="1")
    assert gw.get("/hello", headers=bearer(token({"key": "user-key"}, private, alg))).status == 200
    gw.upstream.assert_received(headers={"X-Consumer-Username": "kerouac"})
    # another key of the same kind does not verify
    stranger = KEYS["RS256" if alg in ("RS512", "PS256") else alg]()
    res = gw.get("/hello", headers=bearer(token({"key": "user-key"}, stranger, alg)))
    assert res.json() == FAILED
    # the public key used as an HMAC secret (algorithm confusion; PyJWT refuses to sign it)
    head = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=").decode()
    body = base64.urlsafe_b64encode(b'{"key":"user-key"}').rstrip(b"=").decode()
    sig = hmac.new(public.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    confused = f"{head}.{body}." + base64.urlsafe_b64encode(sig).rstrip(b"=").decode()
    assert gw.get("/hello", headers=bearer(confused)).json() == FAILED


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_header_alg_must_be_the_consumers(jack: GatewayHarness) -> None:
    """A signature valid under the consumer's algorithm, with another ``alg`` in the header."""
    body = b64(b'{"key":"user-key"}')
    for alg, ok in (("HS256", True), ("HS512", False), ("hs256", False)):
        head = b64(b'{"alg":"%s","typ":"JWT"}' % alg.encode())
        sig = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
        res = jack.get("/hello", headers=bearer(f"{head}.{body}.{b64(sig)}"))
        assert (res.status == 200) is ok, alg
        assert ok or res.json() == FAILED


def test_alg_none_is_refused(jack: GatewayHarness) -> None:
    head = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
    body = base64.urlsafe_b64encode(b'{"key":"user-key"}').rstrip(b"=").decode()
    assert jack.get("/hello", headers=bearer(f"{head}.{body}.")).json() == FAILED


# -- claims -----------------------------------------------------------------------------------


def test_exp_nbf_and_grace_period(gw: GatewayHarness) -> None:  # noqa: F811
    gw.add_consumer("jack", {"jwt-auth": {"key": "strict", "secret": SECRET}})
    gw.add_consumer("rose", {"jwt-auth": {"key": "lenient", "secret": SECRET,
                                          "lifetime_grace_period": 100}})
    gw.add_route("/hello", {"jwt-auth": {}}, id="1")

    def status(payload: dict[str, Any]) -> int:
        return gw.get("/hello", headers=bearer(token(payload))).status

    assert status({"key": "strict", "exp": later(60), "nbf": later(-60)}) == 200
    assert status({"key": "strict"}) == 200  # neither claim: nothing to check
    assert status({"key": "strict", "exp": later(-10)}) == 401
    assert status({"key": "strict", "nbf": later(30)}) == 401
    assert status({"key": "strict", "exp": "tomorrow"}) == 401
    assert status({"key": "strict", "exp": True}) == 401
    assert status({"key": "lenient", "exp": later(-10)}) == 200  # within the grace period
    assert status({"key": "lenient", "nbf": later(30)}) == 200
    assert status({"key": "lenient", "exp": later(-200)}) == 401
    res = gw.get("/hello", headers=bearer(token({"key": "strict", "exp": later(-10)})))
    assert res.json() == FAILED


def test_claims_to_verify(gw: GatewayHarness) -> None:  # noqa: F811
    gw.add_consumer("jack", {"jwt-auth": {"key": "user-key", "secret": SECRET}})
    gw.add_route("/exp", {"jwt-auth": {"claims_to_verify": ["exp"]}}, id="1")
    gw.add_route("/both", {"jwt-auth": {"claims_to_verify": ["exp", "nbf"]}}, id="2")
    assert gw.get("/exp", headers=bearer(token({"key": "user-key"}))).json() == FAILED
    assert gw.get("/exp", headers=bearer(token({"key": "user-key", "exp": later()}))).status == 200
    only_exp = token({"key": "user-key", "exp": later()})
    assert gw.get("/both", headers=bearer(only_exp)).json() == FAILED
    both = token({"key": "user-key", "exp": later(), "nbf": later(-1)})
    assert gw.get("/both", headers=bearer(both)).status == 200
    with pytest.raises(ConfigRejected, match="matches none of the enum values"):
        gw.add_route("/x", {"jwt-auth": {"claims_to_verify": ["iat"]}}, id="3")


# -- what the upstream and later plugins see ---------------------------------------------------

PAYLOAD_READER = '''
from plugin_sdk import hookimpl

name = "payload-reader"
version = "0.1"
priority = 10
schema = {"type": "object"}


@hookimpl
def access(ctx, conf):
    payload = ctx.shared.get("jwt_auth_payload")
    ctx.upstream.set_header("X-Payload-Uid", None if payload is None else str(payload["uid"]))
'''


def test_store_in_ctx(gw: GatewayHarness) -> None:  # noqa: F811
    assert gw.write_plugin("payload_reader.py", PAYLOAD_READER).ok
    gw.add_consumer("jack", {"jwt-auth": {"key": "user-key", "secret": SECRET}})
    gw.add_route("/stored", {"jwt-auth": {"store_in_ctx": True}, "payload-reader": {}}, id="1")
    gw.add_route("/plain", {"jwt-auth": {}, "payload-reader": {}}, id="2")
    tok = bearer(token({"key": "user-key", "uid": 42}))
    assert gw.get("/stored", headers=tok).status == 200
    gw.upstream.assert_received(headers={"X-Payload-Uid": "42"})
    assert gw.get("/plain", headers=tok).status == 200
    gw.upstream.assert_received(headers={"X-Payload-Uid": None})


def test_hide_credentials(gw: GatewayHarness) -> None:  # noqa: F811
    gw.add_consumer("jack", {"jwt-auth": {"key": "user-key", "secret": SECRET}})
    gw.add_route("/hello", {"jwt-auth": {"hide_credentials": True}}, id="1")
    good = token({"key": "user-key"})
    assert gw.get("/hello", headers=bearer(good)).status == 200
    gw.upstream.assert_received(headers={"Authorization": None, "X-Consumer-Username": "jack"})
    assert gw.get(f"/hello?a=1&jwt={good}").status == 200
    assert gw.upstream.last.raw_path == "/hello?a=1"
    assert gw.get("/hello", headers={"Cookie": f"a=1; jwt={good}; b=2"}).status == 200
    gw.upstream.assert_received(headers={"Cookie": "a=1; b=2"})
    assert gw.get("/hello", headers={"Cookie": f"jwt={good}"}).status == 200
    gw.upstream.assert_received(headers={"Cookie": None})
    gw.add_route("/shown", {"jwt-auth": {}}, id="2")
    assert gw.get("/shown", headers={"Cookie": f"jwt={good}"}).status == 200
    gw.upstream.assert_received(headers={"Cookie": f"jwt={good}"})


def test_credentials_labels_and_anonymous(gw: GatewayHarness) -> None:  # noqa: F811
    gw.add_consumer("rose", {}, labels={"custom_id": "r-9"})
    gw.add_credential("rose", "cred-jwt", {"jwt-auth": {"key": "rose-key", "secret": SECRET}})
    gw.add_consumer("anon", {"proxy-rewrite": {"headers": {"X-Anon": "yes"}}})
    gw.add_route("/hello", {"jwt-auth": {"anonymous_consumer": "anon"}}, id="1")
    assert gw.get("/hello", headers=bearer(token({"key": "rose-key"}))).status == 200
    gw.upstream.assert_received(headers={"X-Consumer-Username": "rose", "X-Anon": None,
                                         "X-Credential-Identifier": "cred-jwt",
                                         "X-Consumer-Custom-ID": "r-9"})
    for headers in ({}, bearer("junk"), bearer(token({"key": "rose-key"}, key=SECRET + "x"))):
        assert gw.get("/hello", headers=headers).status == 200
        gw.upstream.assert_received(headers={"X-Consumer-Username": "anon", "X-Anon": "yes",
                                             "X-Credential-Identifier": None})
    gw.add_route("/ghost", {"jwt-auth": {"anonymous_consumer": "ghost"}}, id="2")
    res = gw.get("/ghost")
    assert (res.status, res.json()) == (401, {"message": "Invalid user authorization"})
    assert res.headers.get("WWW-Authenticate") == CHALLENGE


def test_keys_are_prepared_once_per_consumer_conf(jack: GatewayHarness) -> None:
    info = jack.gateway.registry.get("jwt-auth")
    assert info.module is jwt_auth
    jack.get("/hello", headers=bearer(token({"key": "user-key"})))
    before = len(jwt_auth._verifiers)
    for _ in range(3):
        assert jack.get("/hello", headers=bearer(token({"key": "user-key"}))).status == 200
    assert len(jwt_auth._verifiers) == before
    jack.add_consumer("jack", {"jwt-auth": {"key": "user-key", "secret": SECRET + "2"}})
    assert jack.get("/hello", headers=bearer(token({"key": "user-key"}))).json() == FAILED
    ok = token({"key": "user-key"}, key=SECRET + "2")
    assert jack.get("/hello", headers=bearer(ok)).status == 200


def test_encrypted_secret_still_authenticates(sixgate_factory: Any) -> None:
    keyring = ["0123456789abcdef"]
    g = sixgate_factory(plugins=["jwt-auth"], config={"apisix": {"data_encryption": {
        "enable_encrypt_fields": True, "keyring": keyring}}})
    sealed = Keyring(keyring).encrypt(SECRET)
    g.add_consumer("jack", {"jwt-auth": {"key": "user-key", "secret": sealed}})
    g.add_route("/hello", {"jwt-auth": {}}, id="1")
    assert g.get("/hello", headers=bearer(token({"key": "user-key"}))).status == 200
    signed_with_cipher = token({"key": "user-key"}, key=sealed)
    assert g.get("/hello", headers=bearer(signed_with_cipher)).json() == FAILED


def test_standalone_consumers_are_checked(gw: GatewayHarness, keypairs: Any) -> None:  # noqa: F811
    with pytest.raises(ConfigRejected, match='property "public_key" is required'):
        gw.add_consumer("jack", {"jwt-auth": {"key": "k", "algorithm": "ES256"}})
    with pytest.raises(ConfigRejected, match="invalid public_key for algorithm ES256"):
        gw.add_consumer("jack", {"jwt-auth": {"key": "k", "algorithm": "ES256",
                                              "public_key": keypairs["RS256"][1]}})


# -- the Admin API ------------------------------------------------------------------------------

PREFIX = ("invalid plugins configuration: failed to check the configuration of plugin jwt-auth "
          "err: ")


async def test_admin_validation(admin: Admin, keypairs: Any) -> None:  # noqa: F811
    private, public = keypairs["RS256"]
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
    bad: list[tuple[dict[str, Any], str]] = [
        ({}, 'property "key" is required'),
        ({"key": "k"}, 'property "secret" is required'),
        ({"key": "k", "algorithm": "RS256"}, 'property "public_key" is required'),
        ({"key": "k", "algorithm": "HS1"},
         'property "algorithm" validation failed: matches none of the enum values'),
        ({"key": "k", "secret": "%%%", "base64_secret": True},
         "base64_secret required but the secret is not in base64 format"),
        ({"key": "k", "algorithm": "ES256", "public_key": "not a key"},
         "invalid public_key for algorithm ES256: "),
        ({"key": "k", "secret": public}, "invalid secret for algorithm HS256: "),
        ({"key": "k", "algorithm": "RS256", "public_key": private_pem},
         "invalid public_key for algorithm RS256: a private key was given; public_key takes "
         "the public key"),
        ({"key": "k", "secret": SECRET, "exp": 0},
         'property "exp" validation failed: expected 0 to be at least 1'),
    ]
    for conf, message in bad:
        status, body, _ = await admin.put(
            "/consumers", {"username": "jack", "plugins": {"jwt-auth": conf}})
        assert status == 400, conf
        assert body["error_msg"].startswith(PREFIX + message), (conf, body)
    good = {"key": "rs-key", "algorithm": "RS256", "public_key": public}
    status, _, _ = await admin.put("/consumers", {"username": "jack", "plugins": {
        "jwt-auth": good}})
    assert status == 201


async def test_admin_duplicates_and_encryption(admin: Admin, gw: GatewayHarness) -> None:  # noqa: F811
    status, _, _ = await admin.put("/consumers", {
        "username": "jack", "plugins": {"jwt-auth": {"key": "user-key", "secret": SECRET}}})
    assert status == 201
    status, _, _ = await admin.put("/consumers", {"username": "rose"})
    assert status == 201
    status, body, _ = await admin.put("/consumers/rose/credentials/c1", {
        "plugins": {"jwt-auth": {"key": "user-key", "secret": "other-secret"}}})
    assert (status, body) == (
        400, {"error_msg": "duplicate key of plugin jwt-auth found with consumer: jack"})
    entry = await admin.store.get("/apisix/consumers/jack")
    assert entry is not None
    stored = entry.value["plugins"]["jwt-auth"]
    assert stored["key"] == "user-key" and stored["secret"] != SECRET
    _, body, _ = await admin.get("/consumers/jack")
    assert body["value"]["plugins"]["jwt-auth"]["secret"] == SECRET
    gw.add_consumer("jack", entry.value["plugins"])
    gw.add_route("/hello", {"jwt-auth": {}}, id="1")
    assert gw.get("/hello", headers=bearer(token({"key": "user-key"}))).status == 200


def test_an_unusable_consumer_key_fails_closed(caplog: pytest.LogCaptureFixture) -> None:
    """A consumer conf the checks never saw (no public key): 401, logged, never a 500."""
    from plugin_sdk import Consumer
    from plugin_sdk.testing import make_context, run_phase

    broken = Consumer("jack", {"jwt-auth": {"key": "user-key", "algorithm": "RS256"}})
    ctx = make_context(headers=bearer(token({"key": "user-key"})), consumers=[broken])
    res = run_phase(jwt_auth, "rewrite", {}, ctx)
    assert (res.status, res.body) == (401, FAILED)
    assert 'unusable jwt-auth key: property "public_key" is required' in caplog.text
