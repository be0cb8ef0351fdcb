"""key-auth (spec §7.8, §11 case 44, §2.9 duplicate keys, §10.2 encrypted keys): through a real
gateway (the SDK test kit) and the real Admin API.

One gateway serves the module (``gw``; each test starts from an empty config); tests that need
another ``config.yaml`` start their own through ``sixgate_factory``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

import builtin_plugins.key_auth as key_auth
from kernel.admin import AdminContext, create_admin_app
from kernel.encryption import Keyring
from kernel.plugins.loader import load_registry
from kernel.store.yaml_file import YamlFileStore
from kernel.store.yaml_resources import YamlResourceStore
from plugin_sdk.testing import GatewayHarness, MockUpstream, make_context, run_phase
from tests.test_admin_api import Admin, admin_config

PLUGINS = ["key-auth", "basic-auth", "jwt-auth", "consumer-restriction", "ip-restriction",
           "proxy-rewrite", "fault-injection", "real-ip"]
MISSING = {"message": "Missing API key in request"}
INVALID = {"message": "Invalid API key in request"}
CHALLENGE = 'apikey realm="key"'


# -- fixtures (also used by the basic-auth and jwt-auth tests) --------------------------------


@pytest.fixture(scope="module")
def module_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayHarness]:
    up = MockUpstream().start()
    harness = GatewayHarness(tmp_path_factory.mktemp("gw"), up, plugins=PLUGINS).start()
    yield harness
    harness.stop()
    up.stop()


@pytest.fixture
def gw(module_gateway: GatewayHarness) -> GatewayHarness:
    """The module's gateway with an empty config and a fresh upstream record."""
    module_gateway.apply({"routes": []})
    assert module_gateway.upstream is not None
    module_gateway.upstream.clear()
    module_gateway.upstream.respond()
    return module_gateway


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[Admin]:
    """The real Admin API (APISIX's default field encryption) on a standalone-file store, with
    the real auth plugins loaded."""
    path = tmp_path / "apisix.yaml"
    path.write_text("routes: []\n#END\n")
    files = YamlFileStore(path, None, {})
    await files.start(lambda snapshot: None)
    store = YamlResourceStore(files, "/apisix")
    registry, errors = load_registry(PLUGINS, [], {})
    assert not errors, errors

    async def reload() -> None:
        pass

    ctx = AdminContext(store=store, registry=lambda: registry, reload_plugins=reload,
                       config=admin_config(tmp_path))
    client = TestClient(TestServer(create_admin_app(ctx), host="127.0.0.1"))
    await client.start_server()
    a = Admin(client, store)
    a.registry = registry
    yield a
    await client.close()
    await files.stop()


def sent(gw: GatewayHarness) -> Any:
    """The last request the upstream received."""
    assert gw.upstream is not None
    return gw.upstream.last


# -- spec §11 case 44 ---------------------------------------------------------------------------


def test_case_44_header_key(gw: GatewayHarness) -> None:
    gw.add_consumer("jack", {"key-auth": {"key": "auth-one"}})
    gw.add_route("/hello", {"key-auth": {}}, id="1")

    res = gw.get("/hello", headers={"apikey": "auth-one"})
    assert res.status == 200
    got = sent(gw)
    assert got.headers.get("X-Consumer-Username") == "jack"
    assert got.headers.get("apikey") == "auth-one"  # not hidden by default
    assert "X-Credential-Identifier" not in got.headers
    assert "X-Consumer-Custom-ID" not in got.headers

    gw.upstream.clear()
    res = gw.get("/hello", headers={"apikey": "123"})
    assert (res.status, res.json()) == (401, INVALID)
    assert res.headers.get("WWW-Authenticate") == CHALLENGE
    res = gw.get("/hello")
    assert (res.status, res.json()) == (401, MISSING)
    assert res.headers.get("WWW-Authenticate") == CHALLENGE
    gw.upstream.assert_not_received()


def test_query_key_and_header_first(gw: GatewayHarness) -> None:
    gw.add_consumer("jack", {"key-auth": {"key": "auth-one"}})
    gw.add_route("/hello", {"key-auth": {}}, id="1")
    assert gw.get("/hello?apikey=auth-one").status == 200
    assert sent(gw).query == "apikey=auth-one"  # not hidden by default
    # the header wins over the query argument
    res = gw.get("/hello?apikey=auth-one", headers={"apikey": "nope"})
    assert (res.status, res.json()) == (401, INVALID)
    # an empty key is a key, just not a valid one
    assert gw.get("/hello?apikey=").json() == INVALID
    assert gw.get("/hello", headers={"apikey": ""}).json() == INVALID
    assert gw.get("/hello?apikey").json() == INVALID  # a flag argument
    assert gw.get("/hello?other=auth-one").json() == MISSING


def test_custom_header_query_and_realm(gw: GatewayHarness) -> None:
    gw.add_consumer("jack", {"key-auth": {"key": "auth-one"}})
    gw.add_route("/hello", {"key-auth": {"header": "X-Key", "query": "k", "realm": "shop"}},
                 id="1")
    assert gw.get("/hello", headers={"x-key": "auth-one"}).status == 200
    assert gw.get("/hello?k=auth-one").status == 200
    res = gw.get("/hello", headers={"apikey": "auth-one"})
    assert (res.status, res.json()) == (401, MISSING)
    assert res.headers.get("WWW-Authenticate") == 'apikey realm="shop"'


def test_credentials_labels_and_spoofed_headers(gw: GatewayHarness) -> None:
    gw.add_consumer("jack", {"key-auth": {"key": "k-jack"}}, labels={"custom_id": "cid-7"})
    gw.add_consumer("rose", {})
    gw.add_credential("rose", "cred-1", {"key-auth": {"key": "k-cred"}})
    gw.add_route("/hello", {"key-auth": {}}, id="1")
    spoof = {"X-Consumer-Username": "admin", "X-Credential-Identifier": "fake",
             "X-Consumer-Custom-ID": "fake"}

    assert gw.get("/hello", headers={"apikey": "k-cred", **spoof}).status == 200
    got = sent(gw).headers
    assert got.getall("X-Consumer-Username") == ["rose"]
    assert got.getall("X-Credential-Identifier") == ["cred-1"]
    assert "X-Consumer-Custom-ID" not in got  # rose has no custom_id: the client's is removed

    assert gw.get("/hello", headers={"apikey": "k-jack", **spoof}).status == 200
    got = sent(gw).headers
    assert got.getall("X-Consumer-Username") == ["jack"]
    assert got.getall("X-Consumer-Custom-ID") == ["cid-7"]
    assert "X-Credential-Identifier" not in got


def test_hide_credentials_header(gw: GatewayHarness) -> None:
    gw.add_consumer("jack", {"key-auth": {"key": "auth-one"}})
    gw.add_route("/hello", {"key-auth": {"hide_credentials": True}}, id="1")
    assert gw.get("/hello?apikey=x", headers={"apikey": "auth-one"}).status == 200
    gw.upstream.assert_received(path="/hello", query="apikey=x",  # only the used one goes
                                headers={"apikey": None, "X-Consumer-Username": "jack"})


def test_hide_credentials_query(gw: GatewayHarness) -> None:
    gw.add_consumer("jack", {"key-auth": {"key": "auth one"}})
    gw.add_route("/hello", {"key-auth": {"hide_credentials": True}}, id="1")
    assert gw.get("/hello?a=1&apikey=auth+one&b=%20x&apikey=again").status == 200
    got = gw.upstream.assert_received(path="/hello")
    assert got.raw_path == "/hello?a=1&b=%20x"  # the other arguments as the client wrote them
    assert gw.get("/hello?apikey=auth%20one").status == 200
    assert sent(gw).raw_path == "/hello"  # no empty "?"
    # a failed key is left as it was (the request does not reach the upstream anyway)
    assert gw.get("/hello?apikey=wrong").status == 401


def test_hide_credentials_query_with_a_later_rewrite(gw: GatewayHarness) -> None:
    gw.add_consumer("jack", {"key-auth": {"key": "auth-one"}})
    gw.add_route("/old/*", {
        "key-auth": {"hide_credentials": True},
        "proxy-rewrite": {"regex_uri": ["^/old/(.*)", "/new/$1"],
                          "headers": {"X-Args": "$args"}},
    }, id="1")
    assert gw.get("/old/x?apikey=auth-one&q=1").status == 200
    got = gw.upstream.assert_received(path="/new/x", query="q=1")
    assert got.headers.get("X-Args") == "q=1"


def test_anonymous_consumer(gw: GatewayHarness) -> None:
    gw.add_consumer("jack", {"key-auth": {"key": "auth-one"}})
    gw.add_consumer("anon", {"proxy-rewrite": {"headers": {"X-Tier": "free"}}})
    gw.add_route("/hello", {"key-auth": {"anonymous_consumer": "anon"}}, id="1")
    for headers in ({}, {"apikey": "wrong"}):
        assert gw.get("/hello", headers=headers).status == 200
        got = sent(gw).headers
        assert got.get("X-Consumer-Username") == "anon"
        assert got.get("X-Tier") == "free"  # the anonymous consumer's plugins apply
    assert gw.get("/hello", headers={"apikey": "auth-one"}).status == 200
    assert sent(gw).headers.get("X-Consumer-Username") == "jack"
    assert "X-Tier" not in sent(gw).headers

    gw.add_route("/ghost", {"key-auth": {"anonymous_consumer": "ghost"}}, id="2")
    gw.upstream.clear()
    res = gw.get("/ghost")
    assert (res.status, res.json()) == (401, {"message": "Invalid user authorization"})
    assert res.headers.get("WWW-Authenticate") == CHALLENGE
    assert gw.get("/ghost", headers={"apikey": "auth-one"}).status == 200  # a real key works


def test_consumer_plugins_apply_after_key_auth(gw: GatewayHarness) -> None:
    """The consumer's plugins merge over the route's once key-auth identified it (spec §6.2
    step 5): plugins only the consumer has run their rewrite hook (proxy-rewrite,
    fault-injection), after key-auth and before the request goes on."""
    gw.add_consumer("jack", {
        "key-auth": {"key": "k-jack"},
        "proxy-rewrite": {"uri": "/jack", "headers": {"X-Who": "$consumer_name"}},
    })
    gw.add_consumer("banned", {
        "key-auth": {"key": "k-banned"},
        "fault-injection": {"abort": {"http_status": 403, "body": "bye $consumer_name\n"}},
    })
    gw.add_consumer("rose", {"key-auth": {"key": "k-rose"}})
    gw.add_route("/hello", {"key-auth": {}}, id="1")

    assert gw.get("/hello", headers={"apikey": "k-jack"}).status == 200
    gw.upstream.assert_received(path="/jack", headers={"X-Who": "jack",
                                                       "X-Consumer-Username": "jack"})
    assert gw.get("/hello", headers={"apikey": "k-rose"}).status == 200
    gw.upstream.assert_received(path="/hello", headers={"X-Who": None})
    gw.upstream.clear()
    res = gw.get("/hello", headers={"apikey": "k-banned"})
    assert (res.status, res.text) == (403, "bye banned\n")
    gw.upstream.assert_not_received()


def test_consumer_conf_wins_over_the_route_conf(gw: GatewayHarness) -> None:
    """Precedence Consumer > Route for one plugin name (spec §4.7 step 5), in ``access``."""
    gw.add_consumer("vip", {"key-auth": {"key": "k-vip"},
                            "ip-restriction": {"whitelist": ["127.0.0.1"]}})
    gw.add_consumer("rose", {"key-auth": {"key": "k-rose"}})
    gw.add_route("/hello", {"key-auth": {}, "ip-restriction": {"blacklist": ["127.0.0.0/8"]}},
                 id="1")
    assert gw.get("/hello", headers={"apikey": "k-vip"}).status == 200
    res = gw.get("/hello", headers={"apikey": "k-rose"})
    assert (res.status, res.json()) == (403, {"message": "Your IP address is not allowed"})


def test_consumer_edits_are_live(gw: GatewayHarness) -> None:
    gw.add_consumer("jack", {"key-auth": {"key": "old"}})
    gw.add_route("/hello", {"key-auth": {}}, id="1")
    assert gw.get("/hello", headers={"apikey": "old"}).status == 200
    gw.add_consumer("jack", {"key-auth": {"key": "new"}})
    assert gw.get("/hello", headers={"apikey": "old"}).status == 401
    assert gw.get("/hello", headers={"apikey": "new"}).status == 200


def test_route_schema(gw: GatewayHarness) -> None:
    from plugin_sdk.testing import ConfigRejected

    with pytest.raises(ConfigRejected, match='property "header" validation failed: wrong type'):
        gw.add_route("/hello", {"key-auth": {"header": 1}}, id="1")
    with pytest.raises(ConfigRejected, match="anonymous_consumer"):
        gw.add_route("/hello", {"key-auth": {"anonymous_consumer": ""}}, id="1")


def test_standalone_consumers_are_checked_against_the_consumer_schema(
    gw: GatewayHarness,
) -> None:
    """A data plane refuses what the Admin API refuses (consumers in apisix.yaml)."""
    from plugin_sdk.testing import ConfigRejected

    with pytest.raises(ConfigRejected, match=r'plugins\.key-auth: failed to check the '
                       'configuration of plugin key-auth err: property "key" is required'):
        gw.add_consumer("jack", {"key-auth": {}})
    gw.add_consumer("jack", {})
    with pytest.raises(ConfigRejected, match='property "key" is required'):
        gw.add_credential("jack", "c1", {"key-auth": {"header": "apikey"}})


# -- field encryption (spec §10.2) ------------------------------------------------------------

KEYRING = ["0123456789abcdef", "fedcba9876543210"]


def test_encrypted_key_still_authenticates(sixgate_factory: Any) -> None:
    g = sixgate_factory(plugins=["key-auth"], config={"apisix": {"data_encryption": {
        "enable_encrypt_fields": True, "keyring": KEYRING}}})
    sealed = Keyring([KEYRING[0]]).encrypt("auth-one")
    old = Keyring([KEYRING[1]]).encrypt("auth-two")  # written under the second key
    assert sealed != "auth-one"
    g.add_consumer("jack", {"key-auth": {"key": sealed}})
    g.add_consumer("rose", {})
    g.add_credential("rose", "c1", {"key-auth": {"key": old}})
    g.add_route("/hello", {"key-auth": {}}, id="1")
    assert g.get("/hello", headers={"apikey": "auth-one"}).status == 200
    assert g.get("/hello", headers={"apikey": sealed}).status == 401
    assert g.get("/hello", headers={"apikey": "auth-two"}).status == 200
    assert g.upstream.last.headers.get("X-Credential-Identifier") == "c1"


# -- the Admin API (spec §2.8, §2.9, §11 cases 15, 16, 44) --------------------------------------

REQUIRED = ("invalid plugins configuration: failed to check the configuration of plugin "
            'key-auth err: property "key" is required')


async def test_admin_consumer_without_key(admin: Admin) -> None:
    status, body, _ = await admin.put(
        "/consumers", {"username": "jack", "plugins": {"key-auth": {}}})
    assert (status, body) == (400, {"error_msg": REQUIRED})
    status, body, _ = await admin.put(
        "/consumers", {"username": "jack", "plugins": {"key-auth": {"key": 1}}})
    assert status == 400 and 'property "key" validation failed: wrong type' in body["error_msg"]
    status, _, _ = await admin.put("/consumers", {"username": "jack"})
    assert status == 201
    status, body, _ = await admin.put(
        "/consumers/jack/credentials/c1", {"plugins": {"key-auth": {}}})
    assert (status, body) == (400, {"error_msg": REQUIRED})
    # a route's key-auth conf is another schema
    status, body, _ = await admin.put("/routes/1", {
        "uri": "/hello", "plugins": {"key-auth": {"query": False}},
        "upstream": {"type": "roundrobin", "nodes": {"127.0.0.1:1980": 1}}})
    assert status == 400
    assert body["error_msg"].startswith(
        "failed to check the configuration of plugin key-auth err: "
        'property "query" validation failed: wrong type')


async def test_admin_duplicate_keys(admin: Admin) -> None:
    status, _, _ = await admin.put(
        "/consumers", {"username": "bob", "plugins": {"key-auth": {"key": "the-key-of-bob"}}})
    assert status == 201
    status, _, _ = await admin.put("/consumers", {"username": "alex"})
    assert status == 201
    dup = {"plugins": {"key-auth": {"key": "the-key-of-bob"}}}
    status, body, _ = await admin.put("/consumers/alex/credentials/cred-alex-b", dup)
    assert (status, body) == (
        400, {"error_msg": "duplicate key of plugin key-auth found with consumer: bob"})
    status, body, _ = await admin.put("/consumers/bob/credentials/cred-bob", dup)
    assert status == 400 and body["error_msg"].endswith("found with consumer: bob")
    status, body, _ = await admin.put(
        "/consumers", {"username": "carl", "plugins": {"key-auth": {"key": "the-key-of-bob"}}})
    assert status == 400 and body["error_msg"].endswith("found with consumer: bob")
    status, _, _ = await admin.put(
        "/consumers/alex/credentials/c2", {"plugins": {"key-auth": {"key": "alex-key"}}})
    assert status == 201
    status, body, _ = await admin.put(
        "/consumers", {"username": "dan", "plugins": {"key-auth": {"key": "alex-key"}}})
    assert (status, body) == (400, {"error_msg": "duplicate key of plugin key-auth found with "
                                                 "credential: c2 of consumer: alex"})
    # rewriting bob with his own key is not a duplicate
    status, _, _ = await admin.put(
        "/consumers/bob", {"username": "bob", "plugins": {"key-auth": {"key": "the-key-of-bob"}}})
    assert status == 200


async def test_admin_stores_the_key_encrypted_and_the_gateway_reads_it(
    admin: Admin, gw: GatewayHarness
) -> None:
    status, body, _ = await admin.put(
        "/consumers", {"username": "jack", "plugins": {"key-auth": {"key": "auth-one"}}})
    assert status == 201
    entry = await admin.store.get("/apisix/consumers/jack")
    assert entry is not None
    stored = entry.value["plugins"]["key-auth"]["key"]
    assert stored != "auth-one" and Keyring(["qeddd145sfvddff3"]).decrypt(stored) == "auth-one"
    status, body, _ = await admin.get("/consumers/jack")
    assert body["value"]["plugins"]["key-auth"] == {"key": "auth-one"}
    # what the Admin API stored, served by a gateway (APISIX's default keyring)
    gw.add_consumer("jack", entry.value["plugins"])
    gw.add_route("/hello", {"key-auth": {}}, id="1")
    assert gw.get("/hello", headers={"apikey": "auth-one"}).status == 200
    assert gw.get("/hello", headers={"apikey": stored}).status == 401


# -- one phase, no gateway --------------------------------------------------------------------


def test_hide_query_for_an_absolute_form_target() -> None:
    from plugin_sdk import Consumer

    ctx = make_context("GET", "/p?apikey=k&x=1", consumers=[Consumer("jack",
                                                                     {"key-auth": {"key": "k"}})])
    ctx.request.raw_uri = "http://example.com/p?apikey=k&x=1"
    assert run_phase(key_auth, "rewrite", {"hide_credentials": True}, ctx) is None
    assert ctx.upstream.uri == "/p?x=1"
    assert ctx.var["args"] == "x=1" and ctx.var["arg_apikey"] is None
    assert ctx.var["consumer_name"] == "jack"
