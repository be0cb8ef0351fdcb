"""basic-auth (spec §7.9, §11 case 45, §2.9 duplicate usernames, §10.2 encrypted passwords):
through a real gateway (the SDK test kit) and the real Admin API."""

from __future__ import annotations

import base64
from typing import Any

import pytest

import builtin_plugins.basic_auth as basic_auth
from kernel.encryption import Keyring
from plugin_sdk import Consumer
from plugin_sdk.testing import GatewayHarness, make_context, run_phase
from tests.test_admin_api import Admin
from tests.test_key_auth import admin, gw, module_gateway  # noqa: F401  (fixtures)

MISSING = {"message": "Missing authorization in request"}
INVALID = {"message": "Invalid authorization in request"}
WRONG = {"message": "Invalid user authorization"}
CHALLENGE = 'Basic realm="basic"'


def basic(text: str, scheme: str = "Basic") -> dict[str, str]:
    return {"Authorization": f"{scheme} {base64.b64encode(text.encode()).decode()}"}


def test_case_45(gw: GatewayHarness) -> None:  # noqa: F811
    gw.add_consumer("foo", {"basic-auth": {"username": "foo", "password": "bar"}})
    gw.add_route("/hello", {"basic-auth": {}}, id="1")
    cases: list[tuple[dict[str, str], dict[str, str]]] = [
        ({}, MISSING),
        ({"Authorization": "Bad_header YmFyOmJhcgo="}, INVALID),
        ({"Authorization": "Basic YmFy"}, INVALID),  # "bar": no colon
        ({"Authorization": "Basic %%%"}, INVALID),  # not base64
        ({"Authorization": "Basic"}, INVALID),
        ({"Authorization": "Bearer Zm9vOmJhcg=="}, INVALID),
        (basic("bar:bar"), WRONG),  # unknown user
        (basic("foo:baz"), WRONG),  # wrong password
        (basic("foo:"), WRONG),
    ]
    for headers, body in cases:
        res = gw.get("/hello", headers=headers)
        assert (res.status, res.json()) == (401, body), headers
        assert res.headers.get("WWW-Authenticate") == CHALLENGE
    gw.upstream.assert_not_received()

    res = gw.get("/hello", headers={"Authorization": "Basic Zm9vOmJhcg=="})
    assert res.status == 200
    got = gw.upstream.assert_received(headers={"X-Consumer-Username": "foo",
                                               "Authorization": "Basic Zm9vOmJhcg=="})
    assert "X-Credential-Identifier" not in got.headers


def test_parsing_rules(gw: GatewayHarness) -> None:  # noqa: F811
    gw.add_consumer("foo", {"basic-auth": {"username": "foo", "password": "bar"}})
    gw.add_route("/hello", {"basic-auth": {}}, id="1")
    ok = [
        basic("foo:bar", "basic"),  # the scheme is case-insensitive
        basic("foo:bar", "BASIC"),
        {"Authorization": "Basic   Zm9vOmJhcg==  "},
        {"Authorization": "Basic Zm9vOmJhcg"},  # padding may be left out
        basic(" f o o :\tbar\n"),  # whitespace is removed from both fields
        basic("foo:bar:ignored"),  # only the first two fields count
    ]
    for headers in ok:
        assert gw.get("/hello", headers=headers).status == 200, headers
    assert gw.get("/hello", headers=basic("foo:barx")).json() == WRONG
    assert gw.get("/hello", headers=basic("foobar")).json() == INVALID


def test_non_ascii_and_realm(gw: GatewayHarness) -> None:  # noqa: F811
    gw.add_consumer("juergen", {"basic-auth": {"username": "jürgen", "password": "pässword"}})
    gw.add_route("/hello", {"basic-auth": {"realm": "shop"}}, id="1")
    header = base64.b64encode("jürgen:pässword".encode()).decode()
    assert gw.get("/hello", headers={"Authorization": f"Basic {header}"}).status == 200
    res = gw.get("/hello", headers={"Authorization": "Basic " + base64.b64encode(
        b"j\xfcrgen:p\xe4ssword").decode()})  # latin-1 bytes: another user
    assert res.json() == WRONG
    assert res.headers.get("WWW-Authenticate") == 'Basic realm="shop"'


def test_hide_credentials_and_credentials(gw: GatewayHarness) -> None:  # noqa: F811
    gw.add_consumer("rose", {}, labels={"custom_id": "r-1"})
    gw.add_credential("rose", "cred-1", {"basic-auth": {"username": "rose", "password": "pw"}})
    gw.add_route("/hello", {"basic-auth": {"hide_credentials": True}}, id="1")
    gw.add_route("/shown", {"basic-auth": {}}, id="2")
    assert gw.get("/hello", headers=basic("rose:pw")).status == 200
    gw.upstream.assert_received(headers={
        "Authorization": None, "X-Consumer-Username": "rose",
        "X-Credential-Identifier": "cred-1", "X-Consumer-Custom-ID": "r-1"})
    assert gw.get("/shown", headers=basic("rose:pw")).status == 200
    assert gw.upstream.last.headers.get("Authorization") == basic("rose:pw")["Authorization"]


def test_anonymous_consumer(gw: GatewayHarness) -> None:  # noqa: F811
    gw.add_consumer("foo", {"basic-auth": {"username": "foo", "password": "bar"}})
    gw.add_consumer("anon", {})
    gw.add_route("/hello", {"basic-auth": {"anonymous_consumer": "anon",
                                           "hide_credentials": True}}, id="1")
    for headers in ({}, basic("foo:wrong"), {"Authorization": "junk"}):
        assert gw.get("/hello", headers=headers).status == 200
        gw.upstream.assert_received(headers={"X-Consumer-Username": "anon",
                                             "Authorization": None})
    assert gw.get("/hello", headers=basic("foo:bar")).status == 200
    assert gw.upstream.last.headers.get("X-Consumer-Username") == "foo"
    gw.add_route("/ghost", {"basic-auth": {"anonymous_consumer": "ghost"}}, id="2")
    res = gw.get("/ghost")
    assert (res.status, res.json()) == (401, WRONG)
    assert res.headers.get("WWW-Authenticate") == CHALLENGE


def test_consumer_plugins_apply(gw: GatewayHarness) -> None:  # noqa: F811
    gw.add_consumer("foo", {"basic-auth": {"username": "foo", "password": "bar"},
                            "proxy-rewrite": {"headers": {"X-User": "$consumer_name"}}})
    gw.add_route("/hello", {"basic-auth": {}}, id="1")
    assert gw.get("/hello", headers=basic("foo:bar")).status == 200
    gw.upstream.assert_received(headers={"X-User": "foo"})


def test_encrypted_password_still_authenticates(sixgate_factory: Any) -> None:
    keyring = ["0123456789abcdef0123456789abcdef"]  # 32 bytes: AES-256
    g = sixgate_factory(plugins=["basic-auth"], config={"apisix": {"data_encryption": {
        "enable_encrypt_fields": True, "keyring": keyring}}})
    sealed = Keyring(keyring).encrypt("bar")
    g.add_consumer("foo", {"basic-auth": {"username": "foo", "password": sealed}})
    g.add_route("/hello", {"basic-auth": {}}, id="1")
    assert g.get("/hello", headers=basic("foo:bar")).status == 200
    assert g.get("/hello", headers=basic(f"foo:{sealed}")).json() == WRONG


# -- the Admin API ------------------------------------------------------------------------------


async def test_admin_validation_duplicates_and_encryption(
    admin: Admin, gw: GatewayHarness  # noqa: F811
) -> None:
    prefix = ("invalid plugins configuration: failed to check the configuration of plugin "
              "basic-auth err: ")
    for conf, missing in (({}, "username"), ({"username": "foo"}, "password"),
                          ({"password": "bar"}, "username")):
        status, body, _ = await admin.put(
            "/consumers", {"username": "foo", "plugins": {"basic-auth": conf}})
        assert (status, body) == (400, {"error_msg": prefix + f'property "{missing}" is required'})
    status, _, _ = await admin.put("/consumers", {
        "username": "foo", "plugins": {"basic-auth": {"username": "foo", "password": "bar"}}})
    assert status == 201
    status, _, _ = await admin.put("/consumers", {"username": "alex"})
    assert status == 201
    status, body, _ = await admin.put("/consumers/alex/credentials/c1", {
        "plugins": {"basic-auth": {"username": "foo", "password": "other"}}})
    assert (status, body) == (
        400, {"error_msg": "duplicate key of plugin basic-auth found with consumer: foo"})
    # the password is stored encrypted, shown in clear, and the stored form authenticates
    entry = await admin.store.get("/apisix/consumers/foo")
    assert entry is not None
    conf = entry.value["plugins"]["basic-auth"]
    assert conf["username"] == "foo" and conf["password"] != "bar"
    _, body, _ = await admin.get("/consumers/foo")
    assert body["value"]["plugins"]["basic-auth"] == {"username": "foo", "password": "bar"}
    gw.add_consumer("foo", entry.value["plugins"])
    gw.add_route("/hello", {"basic-auth": {}}, id="1")
    assert gw.get("/hello", headers=basic("foo:bar")).status == 200


def test_route_schema(gw: GatewayHarness) -> None:  # noqa: F811
    from plugin_sdk.testing import ConfigRejected

    with pytest.raises(ConfigRejected, match="hide_credentials"):
        gw.add_route("/hello", {"basic-auth": {"hide_credentials": "yes"}}, id="1")


def test_one_phase_without_a_gateway() -> None:
    foo = Consumer("foo", {"basic-auth": {"username": "foo", "password": "bar"}})
    ctx = make_context(headers=basic("foo:bar"), consumers=[foo])
    assert run_phase(basic_auth, "rewrite", {}, ctx) is None
    assert ctx.consumer is foo
    res = run_phase(basic_auth, "rewrite", {}, make_context(consumers=[foo]))
    assert (res.status, res.body, dict(res.headers)) == (401, MISSING,
                                                         {"WWW-Authenticate": CHALLENGE})
