"""The Admin API over real HTTP against a real store (spec §2, §6.5, §11 cases 1-23).

``resource_store`` is parametrized: ``yaml`` (the standalone file store), ``etcd`` (a real etcd
server, one per session, emptied per test).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import types
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from kernel.admin import AdminContext, create_admin_app
from kernel.config import Config
from kernel.plugins.loader import load_registry
from kernel.plugins.manager import PluginRegistry
from kernel.store.resources import ResourceStore, RevisionConflict, StoreUnavailable
from tests.support.memory_store import MemoryResourceStore

ADMIN_KEY = "edd1c9f034335f136f87ad84b625c8f0"
VIEWER_KEY = "4054f7cf07e344346cd3f287985e76a2"
H = {"X-API-KEY": ADMIN_KEY}
UPSTREAM = {"type": "roundrobin", "nodes": {"127.0.0.1:1980": 1}}


# -- test-only plugins (the registry's real plugins are fault-injection and proxy-rewrite) ------


def _module(name: str, **attrs: Any) -> types.ModuleType:
    mod = types.ModuleType(f"test_admin_plugin_{name.replace('-', '_')}")
    attrs = {"name": name, "version": "0.1", **attrs}
    for k, v in attrs.items():
        setattr(mod, k, v)
    return mod


def make_registry() -> PluginRegistry:
    registry, errors = load_registry(["fault-injection", "proxy-rewrite"], [], {})
    assert not errors, errors
    registry.add(
        _module(
            "key-auth",
            priority=2500,
            type="auth",
            schema={"type": "object", "properties": {"header": {"type": "string"}}},
            consumer_schema={
                "type": "object",
                "properties": {"key": {"type": "string"}},
                "required": ["key"],
            },
        )
    )
    registry.add(
        _module(
            "traffic-split",
            priority=966,
            schema={"type": "object", "properties": {"rules": {"type": "array"}}},
        )
    )
    registry.add(
        _module(
            "file-logger",
            priority=399,
            schema={"type": "object", "properties": {"path": {"type": "string"}}},
            metadata_schema={
                "type": "object",
                "properties": {"log_format": {"type": "object"}},
                "additionalProperties": False,
            },
        )
    )
    return registry


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[Any]:
    from tests.support.etcd import EtcdServer

    server = EtcdServer().start()
    yield server
    server.cleanup()


@pytest.fixture(params=["yaml", "etcd"])
async def resource_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[ResourceStore]:
    """A real store; every test runs against each kind (add params for more stores)."""
    if request.param == "etcd":
        from kernel.store.etcd import EtcdStore

        server = request.getfixturevalue("etcd_server")
        etcd = EtcdStore({"host": [server.endpoint], "timeout": 3})
        await etcd.delete_prefix("/apisix/")  # one server per session: start empty
        try:
            yield etcd
        finally:
            await etcd.stop()
        return
    from kernel.store.yaml_file import YamlFileStore
    from kernel.store.yaml_resources import YamlResourceStore

    path = tmp_path / "apisix.yaml"
    path.write_text("routes: []\n#END\n")
    files = YamlFileStore(path, None, {})
    await files.start(lambda snapshot: None)
    store = YamlResourceStore(files, "/apisix")
    try:
        yield store
    finally:
        stop = getattr(store, "stop", None)
        if stop is not None:
            await stop()
        await files.stop()


def admin_config(tmp_path: Path, **admin: Any) -> Config:
    base: dict[str, Any] = {
        "admin_key_required": True,
        "admin_key": [
            {"name": "admin", "key": ADMIN_KEY, "role": "admin"},
            {"name": "viewer", "key": VIEWER_KEY, "role": "viewer"},
        ],
        "enable_admin_cors": True,
        "allow_admin": ["127.0.0.0/24"],
    }
    base.update(admin)
    return Config(
        data={"deployment": {"admin": base}}, path=tmp_path / "config.yaml", conf_dir=tmp_path
    )


class Admin:
    """A tiny client: ``await admin.put("/routes/1", {...})`` -> ``(status, body, headers)``."""

    def __init__(self, client: TestClient, store: ResourceStore) -> None:
        self.client = client
        self.store = store
        self.reloads = 0
        self.registry = make_registry()

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        key: bool = True,
    ) -> tuple[int, Any, Any]:
        hdrs = dict(H) if key else {}
        hdrs.update(headers or {})
        data = raw if raw is not None else (None if body is None else json.dumps(body))
        url = path if path.startswith("/apisix") else "/apisix/admin" + path
        async with self.client.request(method, url, data=data, headers=hdrs) as resp:
            text = await resp.text()
            try:
                parsed = json.loads(text) if text else None
            except ValueError:
                parsed = text.removesuffix("\n")  # ngx.say's newline
            return resp.status, parsed, resp.headers

    async def get(self, path: str, **kw: Any) -> tuple[int, Any, Any]:
        return await self.call("GET", path, **kw)

    async def put(self, path: str, body: Any = None, **kw: Any) -> tuple[int, Any, Any]:
        return await self.call("PUT", path, body, **kw)

    async def post(self, path: str, body: Any = None, **kw: Any) -> tuple[int, Any, Any]:
        return await self.call("POST", path, body, **kw)

    async def patch(self, path: str, body: Any = None, **kw: Any) -> tuple[int, Any, Any]:
        return await self.call("PATCH", path, body, **kw)

    async def delete(self, path: str, **kw: Any) -> tuple[int, Any, Any]:
        return await self.call("DELETE", path, **kw)


AdminFactory = Callable[..., Any]


@pytest.fixture
async def admin_factory(
    resource_store: ResourceStore, tmp_path: Path
) -> AsyncIterator[AdminFactory]:
    clients: list[TestClient] = []

    async def make(store: ResourceStore | None = None, **admin_conf: Any) -> Admin:
        holder: dict[str, Admin] = {}

        async def reload() -> None:
            holder["a"].reloads += 1

        registry = make_registry()
        ctx = AdminContext(
            store=store or resource_store,
            registry=lambda: registry,
            reload_plugins=reload,
            config=admin_config(tmp_path, **admin_conf),
        )
        client = TestClient(TestServer(create_admin_app(ctx), host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        a = holder["a"] = Admin(client, store or resource_store)
        a.registry = registry
        return a

    yield make
    for c in clients:
        await c.close()


@pytest.fixture
async def admin(admin_factory: AdminFactory) -> Admin:
    admin: Admin = await admin_factory()
    return admin


def route(uri: str = "/index.html", **extra: Any) -> dict[str, Any]:
    return {"uri": uri, "upstream": UPSTREAM, **extra}


# -- §2.1 authentication (case 1) ---------------------------------------------------------------


async def test_token_missing_wrong_and_roles(admin: Admin) -> None:
    status, body, _ = await admin.put("/routes/1", route(), key=False)
    assert (status, body) == (
        401,
        {"error_msg": "failed to check token", "description": "missing apikey"},
    )
    status, body, _ = await admin.put(
        "/routes/1", route(), key=False, headers={"X-API-KEY": "nope"}
    )
    assert (status, body["description"]) == (401, "wrong apikey")
    status, body, _ = await admin.put(f"/plugins/reload?api_key={ADMIN_KEY}", key=False)
    assert (status, body) == (200, "done") and admin.reloads == 1
    status, _, _ = await admin.put("/plugins/reload")
    assert status == 200 and admin.reloads == 2
    status, body, _ = await admin.put(
        "/routes/1", route(), key=False, headers={"X-API-KEY": VIEWER_KEY}
    )
    assert (status, body["description"]) == (401, "invalid method for role viewer")
    status, body, _ = await admin.put(
        "/plugins/reload", key=False, headers={"X-API-KEY": VIEWER_KEY}
    )
    assert (status, body["description"]) == (401, "invalid method for role viewer")
    status, body, _ = await admin.get("/routes", key=False, headers={"X-API-KEY": VIEWER_KEY})
    assert (status, body) == (200, {"list": [], "total": 0})
    status, _, _ = await admin.get(
        "/routes", key=False, headers={"Cookie": f"x_api_key={ADMIN_KEY}"}
    )
    assert status == 200
    # the query argument wins over the header
    status, body, _ = await admin.get("/routes?api_key=bad", headers={"X-API-KEY": ADMIN_KEY})
    assert (status, body["description"]) == (401, "wrong apikey")
    for path in ("/plugins/list", "/schema/route"):
        status, _, _ = await admin.get(path, key=False)
        assert status == 401
    status, _, _ = await admin.post("/schema/validate/routes", route(), key=False)
    assert status == 401


async def test_no_key_required(admin_factory: AdminFactory) -> None:
    admin = await admin_factory(admin_key_required=False)
    status, _, _ = await admin.put("/routes/1", route(), key=False)
    assert status == 201


async def test_allow_admin_denies_other_networks(admin_factory: AdminFactory) -> None:
    admin = await admin_factory(allow_admin=["10.0.0.0/8"])
    status, body, headers = await admin.get("/routes")
    assert status == 403 and "403 Forbidden" in body
    assert headers["Content-Type"].startswith("text/html")


# -- §2.2 transport -----------------------------------------------------------------------------


async def test_headers_cors_options_head(admin: Admin, admin_factory: AdminFactory) -> None:
    status, _, headers = await admin.get("/routes")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert headers["Server"] == "APISIX/3.18.0"
    assert headers["X-API-VERSION"] == "v3"
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert headers["Access-Control-Allow-Credentials"] == "true"
    assert headers["Access-Control-Expose-Headers"] == "*"
    assert headers["Access-Control-Max-Age"] == "3600"
    status, body, headers = await admin.call("OPTIONS", "/routes/1", key=False)
    assert (status, body) == (200, None)
    assert headers["Access-Control-Allow-Methods"] == "POST, GET, PUT, OPTIONS, DELETE, PATCH"
    assert headers["Access-Control-Allow-Headers"] == "*"
    status, _, _ = await admin.call("HEAD", "/apisix/admin", key=False)
    assert status == 200
    status, _, headers = await admin.call("HEAD", "/routes")
    assert status == 404 and headers["Content-Type"].startswith("text/html")
    status, body, _ = await admin.get("/apisix/other")
    assert status == 404 and "404 Not Found" in body
    plain = await admin_factory(enable_admin_cors=False)
    status, _, headers = await plain.get("/routes")
    assert status == 200 and "Access-Control-Allow-Origin" not in headers
    status, _, _ = await plain.call("OPTIONS", "/routes")
    assert status == 404


async def test_body_limit_and_json_errors(admin: Admin) -> None:
    big = b'{"uri":"/a","desc":"' + b"x" * 1572864 + b'"}'
    status, body, _ = await admin.put("/routes/1", raw=big)
    assert status == 400
    assert body == {
        "error_msg": f"invalid request body: request size {len(big)} is greater "
        "than the maximum size 1572864 allowed"
    }
    status, body, _ = await admin.put("/routes/1", raw=b"{bad json")
    assert status == 400
    assert body["error_msg"].startswith("invalid request body: ")
    assert body["req_body"] == "{bad json"
    status, body, _ = await admin.put("/routes/1?ttl=abc", route())
    assert (status, body) == (400, {"error_msg": "invalid argument ttl: should be a number"})


# -- §2.3 dispatch (cases 14, 15) ---------------------------------------------------------------


async def test_dispatch_errors(admin: Admin) -> None:
    status, body, _ = await admin.get("/routs")
    assert (status, body) == (404, {"error_msg": "Unsupported resource type: routs"})
    status, body, _ = await admin.post("/consumers", {"username": "jack"})
    assert (status, body) == (405, {"error_msg": "not supported `POST` method for consumer"})
    status, body, _ = await admin.patch("/consumers/jack", {"desc": "x"})
    assert (status, body) == (405, {"error_msg": "not supported `PATCH` method for consumer"})
    for path, kind in (
        ("/consumer_groups", "consumer group"),
        ("/plugin_configs", "plugin config"),
        ("/global_rules", "global rule"),
        ("/plugin_metadata", "plugin_metadata"),
    ):
        status, body, _ = await admin.post(path, {"plugins": {}})
        assert (status, body) == (405, {"error_msg": f"not supported `POST` method for {kind}"})
    status, body, _ = await admin.put("/schema/route", {})
    assert (status, body) == (404, {"error_msg": "not found"})
    status, body, _ = await admin.get("/stream_routes")
    assert (status, body) == (
        400,
        {"error_msg": "stream mode is disabled, can not add stream routes"},
    )


# -- envelopes, ids (cases 2-7) -----------------------------------------------------------------


async def test_put_get_list_envelopes(admin: Admin) -> None:
    sent = {"methods": ["GET"], "uri": "/index.html", "desc": "new route", "upstream": UPSTREAM}
    status, body, _ = await admin.put("/routes/1", sent)
    assert status == 201
    assert set(body) == {"key", "value"} and body["key"] == "/apisix/routes/1"
    value = body["value"]
    assert {k: value[k] for k in sent} == sent
    assert value["id"] == "1"
    assert isinstance(value["create_time"], int) and isinstance(value["update_time"], int)
    assert set(value) == {*sent, "id", "create_time", "update_time"}  # no defaults stored
    status, body, _ = await admin.get("/routes")
    assert status == 200 and body["total"] == 1
    [item] = body["list"]
    assert set(item) == {"key", "value", "createdIndex", "modifiedIndex"}
    assert item["key"] == "/apisix/routes/1" and item["value"] == value
    status, one, _ = await admin.get("/routes/1")
    assert status == 200 and one == item
    # PUT again: 200, create_time preserved
    status, body, _ = await admin.put("/routes/1", {**sent, "desc": "changed"})
    assert status == 200 and body["value"]["create_time"] == value["create_time"]
    status, one, _ = await admin.get("/routes/1")
    assert one["modifiedIndex"] > item["modifiedIndex"]
    assert one["createdIndex"] == item["createdIndex"]


async def test_empty_list(admin: Admin) -> None:
    for res in (
        "routes",
        "services",
        "upstreams",
        "consumers",
        "ssls",
        "global_rules",
        "plugin_configs",
        "consumer_groups",
        "plugin_metadata",
    ):
        status, body, _ = await admin.get(f"/{res}")
        assert (status, body) == (200, {"list": [], "total": 0})


async def test_post_generates_id(admin: Admin) -> None:
    status, body, _ = await admin.post("/routes", route())
    assert status == 201
    rid = body["value"]["id"]
    assert isinstance(rid, str) and len(rid) == 20 and rid.isdigit()
    assert body["key"] == f"/apisix/routes/{rid}"
    assert "priority" not in body["value"] and "status" not in body["value"]
    status, got, _ = await admin.get(f"/routes/{rid}")
    assert status == 200 and got["value"] == body["value"]
    status, second, _ = await admin.post("/routes", route())
    assert int(second["value"]["id"]) > int(rid)


async def test_body_id_is_stored_as_given_and_patch_makes_it_a_string(admin: Admin) -> None:
    status, body, _ = await admin.put("/routes", route(id=1))
    assert status == 201 and body["key"] == "/apisix/routes/1" and body["value"]["id"] == 1
    status, body, _ = await admin.get("/routes/1")
    assert body["value"]["id"] == 1
    status, body, _ = await admin.put("/routes", route(id=1))
    assert status == 200
    status, body, _ = await admin.patch("/routes/1", {"uri": "/index"})
    assert status == 200 and body["value"]["id"] == "1" and body["value"]["uri"] == "/index"


async def test_delete(admin: Admin) -> None:
    await admin.put("/routes/1", route())
    status, body, _ = await admin.delete("/routes/1")
    assert (status, body) == (200, {"deleted": "1", "key": "/apisix/routes/1"})
    status, body, _ = await admin.get("/routes/1")
    assert (status, body) == (404, {"message": "Key not found"})
    status, body, _ = await admin.delete("/routes/not_found")
    assert (status, body) == (404, {"message": "Key not found"})
    status, body, _ = await admin.delete("/routes")
    assert (status, body) == (400, {"error_msg": "missing route id"})


async def test_id_rules(admin: Admin) -> None:
    status, body, _ = await admin.put("/routes/1", route(id=3))
    assert (status, body) == (400, {"error_msg": "wrong route id"})
    status, body, _ = await admin.post("/routes/1", route())
    assert (status, body) == (400, {"error_msg": "wrong route id, do not need it"})
    status, body, _ = await admin.post("/routes", route(id=1))
    assert (status, body) == (400, {"error_msg": "wrong route id, do not need it"})
    status, body, _ = await admin.put("/routes", route())
    assert (status, body) == (400, {"error_msg": "missing route id"})
    for res, word in (
        ("services", "service"),
        ("upstreams", "upstream"),
        ("global_rules", "global rule"),
        ("plugin_configs", "plugin config"),
        ("consumer_groups", "consumer group"),
        ("ssls", "ssl"),
    ):
        status, body, _ = await admin.put(f"/{res}", {"plugins": {}})
        assert (status, body) == (400, {"error_msg": f"missing {word} id"})
    status, body, _ = await admin.patch("/routes", {"uri": "/x"})
    assert (status, body) == (400, {"error_msg": "missing route id"})
    status, body, _ = await admin.put("/routes", route(id=-1))
    assert status == 400
    assert body["error_msg"] == (
        'invalid configuration: property "id" validation failed: '
        "object matches none of the required"
    )
    status, body, _ = await admin.put("/routes/1", route(id=1))
    assert status == 201 and body["value"]["id"] == "1"


# -- validation (cases 8-11, 13, 17) ------------------------------------------------------------


async def test_schema_messages(admin: Admin) -> None:
    status, body, _ = await admin.put(
        "/routes/1", {"methods": ["invalid_method"], "uri": "/index.html"}
    )
    assert (status, body) == (
        400,
        {
            "error_msg": (
                'invalid configuration: property "methods" validation failed: '
                "failed to validate item 1: matches none of the enum values"
            )
        },
    )
    status, body, _ = await admin.put("/routes/1", route(methods=["GET", "GET"]))
    assert status == 400 and "unique" in body["error_msg"]
    status, _, _ = await admin.put("/routes/1", route(host="*.foo.com"))
    assert status == 201
    status, body, _ = await admin.put("/routes/1", route(host="a.*.foo.com"))
    assert status == 400
    assert body["error_msg"].startswith(
        'invalid configuration: property "host" validation failed: failed to match pattern'
    )
    status, body, _ = await admin.put("/routes/1", route(host="a.com", hosts=["b.com"]))
    assert (status, body) == (400, {"error_msg": "only one of host or hosts is allowed"})
    status, body, _ = await admin.put(
        "/upstreams/1", {"nodes": {"127.0.0.1:8080": 1}, "type": "chash"}
    )
    assert (status, body) == (400, {"error_msg": "missing key"})
    status, body, _ = await admin.put("/routes/1", route(status=100))
    assert status == 400


async def test_forbidden_timestamps(admin: Admin) -> None:
    status, body, _ = await admin.put("/routes/1", route(create_time=1602883670))
    assert (status, body) == (400, {"error_msg": "the property is forbidden:  create_time"})
    status, body, _ = await admin.put("/consumers", {"username": "jack", "update_time": 1602883670})
    assert (status, body) == (400, {"error_msg": "the property is forbidden:  update_time"})
    status, body, _ = await admin.put(
        "/routes/1", {"uri": "/a", "upstream": {**UPSTREAM, "create_time": 1}}
    )
    assert (status, body) == (
        400,
        {"error_msg": "the property is forbidden:  upstream.create_time"},
    )
    # PATCH may carry them
    await admin.put("/routes/1", route())
    status, body, _ = await admin.patch("/routes/1", {"update_time": 1700000000})
    assert status == 200 and body["value"]["update_time"] == 1700000000


async def test_references(admin: Admin) -> None:
    status, body, _ = await admin.put("/routes/1", {"uri": "/a", "upstream_id": "99999999"})
    assert (status, body) == (
        400,
        {
            "error_msg": (
                "failed to fetch upstream info by upstream id [99999999], response code: 404"
            )
        },
    )
    status, body, _ = await admin.put("/routes/1", {"uri": "/a", "service_id": "99999999"})
    assert (status, body) == (
        400,
        {
            "error_msg": (
                "failed to fetch service info by service id [99999999], response code: 404"
            )
        },
    )
    status, body, _ = await admin.put("/routes/1", route(plugin_config_id="7"))
    assert (status, body) == (
        400,
        {
            "error_msg": (
                "failed to fetch plugin config info by plugin config id [7], response code: 404"
            )
        },
    )
    status, body, _ = await admin.put("/services/1", {"upstream_id": 5})
    assert (status, body) == (
        400,
        {"error_msg": ("failed to fetch upstream info by upstream id [5], response code: 404")},
    )
    status, body, _ = await admin.put("/consumers", {"username": "jack", "group_id": "g"})
    assert (status, body) == (
        400,
        {
            "error_msg": (
                "failed to fetch consumer group info by consumer group id [g], response code: 404"
            )
        },
    )
    assert (await admin.put("/upstreams/1", UPSTREAM))[0] == 201
    assert (await admin.put("/routes/1", {"uri": "/a", "upstream_id": "1"}))[0] == 201
    assert (await admin.put("/routes/2", {"uri": "/b", "upstream_id": 1}))[0] == 201


async def test_plugin_checks(admin: Admin) -> None:
    status, body, _ = await admin.put("/routes/1", route(plugins={"no-such": {}}))
    assert (status, body) == (400, {"error_msg": "unknown plugin [no-such]"})
    status, body, _ = await admin.put(
        "/routes/1", route(plugins={"fault-injection": {"abort": {"http_status": 100}}})
    )
    assert status == 400
    assert body["error_msg"].startswith(
        "failed to check the configuration of plugin fault-injection err: "
    )
    status, body, _ = await admin.put("/routes/1", route(plugins={"proxy-rewrite": 1}))
    assert (status, body) == (
        400,
        {"error_msg": "invalid plugin conf 1 for plugin [proxy-rewrite]"},
    )
    status, body, _ = await admin.put(
        "/routes/1",
        route(
            plugins={"fault-injection": {"abort": {"http_status": 100}, "_meta": {"disable": True}}}
        ),
    )
    assert status == 201  # a disabled plugin's failure is tolerated
    assert body["value"]["plugins"]["fault-injection"]["abort"] == {"http_status": 100}
    status, body, _ = await admin.put("/routes/1", route(plugins={"proxy-rewrite": {"uri": "/x"}}))
    assert status == 200 and body["value"]["plugins"] == {"proxy-rewrite": {"uri": "/x"}}
    for res in ("services/1", "global_rules/1", "plugin_configs/1", "consumer_groups/1"):
        status, body, _ = await admin.put(f"/{res}", {"plugins": {"nope": {}}})
        assert (status, body) == (400, {"error_msg": "unknown plugin [nope]"}), res
    status, body, _ = await admin.put(
        "/consumers", {"username": "jack", "plugins": {"key-auth": {}}}
    )
    assert (status, body) == (
        400,
        {
            "error_msg": (
                "invalid plugins configuration: failed to check the configuration of plugin "
                'key-auth err: property "key" is required'
            )
        },
    )


# -- consumers and credentials (cases 15, 16) ---------------------------------------------------


async def test_consumers(admin: Admin) -> None:
    status, body, _ = await admin.put(
        "/consumers", {"username": "jack", "plugins": {"key-auth": {"key": "auth-one"}}}
    )
    assert status == 201 and body["key"] == "/apisix/consumers/jack"
    assert "id" not in body["value"]
    status, body, _ = await admin.put("/consumers/jack", {"username": "bob"})
    assert (status, body) == (400, {"error_msg": "wrong username"})
    status, _, _ = await admin.put("/consumers/jack", {"username": "jack", "desc": "x"})
    assert status == 200
    status, body, _ = await admin.get("/consumers/jack")
    assert status == 200 and body["value"]["desc"] == "x"


async def test_credentials(admin: Admin) -> None:
    await admin.put(
        "/consumers", {"username": "bob", "plugins": {"key-auth": {"key": "the-key-of-bob"}}}
    )
    await admin.put("/consumers", {"username": "alex"})
    dup = {"plugins": {"key-auth": {"key": "the-key-of-bob"}}}
    status, body, _ = await admin.put("/consumers/alex/credentials/cred-alex-b", dup)
    assert (status, body) == (
        400,
        {"error_msg": ("duplicate key of plugin key-auth found with consumer: bob")},
    )
    status, body, _ = await admin.put("/consumers/bob/credentials/cred-bob", dup)
    assert (status, body) == (
        400,
        {"error_msg": ("duplicate key of plugin key-auth found with consumer: bob")},
    )
    status, body, _ = await admin.put(
        "/consumers/alex/credentials/c1", {"plugins": {"key-auth": {"key": "alex-1"}}}
    )
    assert status == 201 and body["key"] == "/apisix/consumers/alex/credentials/c1"
    assert body["value"]["id"] == "c1"
    status, body, _ = await admin.put(
        "/consumers", {"username": "carl", "plugins": {"key-auth": {"key": "alex-1"}}}
    )
    assert (status, body) == (
        400,
        {
            "error_msg": (
                "duplicate key of plugin key-auth found with credential: c1 of consumer: alex"
            )
        },
    )
    # re-putting the same credential is not a duplicate of itself
    status, _, _ = await admin.put(
        "/consumers/alex/credentials/c1", {"plugins": {"key-auth": {"key": "alex-1"}}}
    )
    assert status == 200
    status, body, _ = await admin.put(
        "/consumers/alex/credentials/c2", {"plugins": {"proxy-rewrite": {}}}
    )
    assert (status, body) == (
        400,
        {"error_msg": "only supports auth type plugins in consumer credential"},
    )
    status, body, _ = await admin.put(
        "/consumers/alex/credentials/c2",
        {"plugins": {"key-auth": {"key": "a"}, "traffic-split": {}}},
    )
    assert status == 400 and "at most 1 properties" in body["error_msg"]
    status, body, _ = await admin.put(
        "/consumers/nobody/credentials/c1", {"plugins": {"key-auth": {"key": "zzz"}}}
    )
    assert (status, body) == (404, {"error_msg": "consumer not found"})
    status, body, _ = await admin.put("/consumers/alex/credentials", {"plugins": {}})
    assert (status, body) == (400, {"error_msg": "missing credential id"})
    status, body, _ = await admin.post("/consumers/alex/credentials", {"plugins": {}})
    assert (status, body) == (405, {"error_msg": "not supported `POST` method for credential"})
    # lists: credentials under their consumer only
    status, body, _ = await admin.get("/consumers")
    assert sorted(i["key"] for i in body["list"]) == [
        "/apisix/consumers/alex",
        "/apisix/consumers/bob",
    ]
    status, body, _ = await admin.get("/consumers/alex/credentials")
    assert [i["key"] for i in body["list"]] == ["/apisix/consumers/alex/credentials/c1"]
    status, body, _ = await admin.get("/consumers/alex/credentials/c1")
    assert status == 200 and body["value"]["plugins"] == {"key-auth": {"key": "alex-1"}}
    # deleting the consumer removes its credentials
    status, _, _ = await admin.delete("/consumers/alex")
    assert status == 200
    status, body, _ = await admin.get("/consumers/alex/credentials/c1")
    assert (status, body) == (404, {"message": "Key not found"})


# -- ttl (case 12) ------------------------------------------------------------------------------


async def test_ttl(admin: Admin) -> None:
    status, _, _ = await admin.put("/routes/1?ttl=1", route())
    assert status == 201
    status, _, _ = await admin.get("/routes/1")
    assert status == 200
    await asyncio.sleep(2.5)
    status, body, _ = await admin.get("/routes/1")
    assert (status, body) == (404, {"message": "Key not found"})


# -- PATCH (§2.7) -------------------------------------------------------------------------------


async def test_patch(admin: Admin) -> None:
    await admin.put(
        "/routes/1", route(methods=["GET", "POST"], desc="d", labels={"a": "1", "b": "2"})
    )
    status, before, _ = await admin.get("/routes/1")
    status, body, _ = await admin.patch(
        "/routes/1", {"methods": ["PUT"], "desc": None, "labels": {"b": "3", "c": "4"}}
    )
    assert status == 200
    value = body["value"]
    assert value["methods"] == ["PUT"] and "desc" not in value
    assert value["labels"] == {"a": "1", "b": "3", "c": "4"}
    assert value["create_time"] == before["value"]["create_time"]
    status, body, _ = await admin.patch("/routes/1/methods", ["GET"])
    assert status == 200 and body["value"]["methods"] == ["GET"]
    status, body, _ = await admin.patch("/routes/1/upstream/nodes", {"127.0.0.1:1981": 1})
    assert status == 200 and body["value"]["upstream"]["nodes"] == {"127.0.0.1:1981": 1}
    status, body, _ = await admin.patch("/routes/1/uri/x", "y")
    assert (status, body) == (400, {"error_msg": "invalid sub-path: /uri"})
    status, body, _ = await admin.patch("/routes/1", ["x"])
    assert (status, body) == (400, {"error_msg": "invalid configuration"})
    status, body, _ = await admin.patch("/routes/1")
    assert (status, body) == (400, {"error_msg": "missing new configuration"})
    status, body, _ = await admin.patch("/routes/1/status", 100)
    assert status == 400 and body["error_msg"].startswith("invalid configuration: ")
    status, body, _ = await admin.patch("/routes/9", {"uri": "/x"})
    assert (status, body) == (404, {"message": "Key not found"})
    status, body, _ = await admin.get("/routes/1")
    assert body["value"]["upstream"]["nodes"] == {"127.0.0.1:1981": 1}


class ConflictStore(MemoryResourceStore):
    async def put(self, key: str, value: Any, **kw: Any) -> Any:
        if kw.get("prev_revision"):
            raise RevisionConflict(key)
        return await super().put(key, value, **kw)


class BrokenStore(MemoryResourceStore):
    async def list(self, directory: str) -> Any:
        raise StoreUnavailable("connection refused")


async def test_patch_conflict_and_store_failure(admin_factory: AdminFactory) -> None:
    admin = await admin_factory(store=ConflictStore())
    await admin.put("/routes/1", route())
    status, body, _ = await admin.patch("/routes/1", {"uri": "/x"})
    assert (status, body) == (503, {"error_msg": "value changed before overwritten"})
    broken = await admin_factory(store=BrokenStore())
    status, body, _ = await broken.get("/routes")
    assert (status, body) == (503, {"error_msg": "connection refused"})


# -- delete checks (cases 18, 19) ---------------------------------------------------------------


async def test_delete_checks(admin: Admin) -> None:
    await admin.put("/upstreams/1", UPSTREAM)
    await admin.put("/routes/1", {"uri": "/a", "upstream_id": "1"})
    status, body, _ = await admin.delete("/upstreams/1")
    assert (status, body) == (
        400,
        {"error_msg": ("can not delete this upstream, route [1] is still using it now")},
    )
    status, body, _ = await admin.delete("/upstreams/1?force=anyvalue")
    assert status == 400
    status, body, _ = await admin.delete("/upstreams/1?force=true")
    assert (status, body) == (200, {"deleted": "1", "key": "/apisix/upstreams/1"})

    await admin.put("/services/1", {"upstream": UPSTREAM})
    await admin.put("/routes/1", {"uri": "/a", "service_id": "1"})
    status, body, _ = await admin.delete("/services/1")
    assert (status, body) == (
        400,
        {"error_msg": ("can not delete this service directly, route [1] is still using it now")},
    )

    await admin.put("/upstreams/2", UPSTREAM)
    await admin.put("/services/2", {"upstream_id": "2"})
    status, body, _ = await admin.delete("/upstreams/2")
    assert (status, body) == (
        400,
        {"error_msg": ("can not delete this upstream, service [2] is still using it now")},
    )

    await admin.put("/upstreams/3", UPSTREAM)
    await admin.put(
        "/plugin_configs/1",
        {
            "plugins": {
                "traffic-split": {
                    "rules": [{"weighted_upstreams": [{"upstream_id": "3", "weight": 1}]}]
                }
            }
        },
    )
    status, body, _ = await admin.delete("/upstreams/3")
    assert (status, body) == (
        400,
        {
            "error_msg": (
                "can not delete this upstream, plugin in plugin_config [1] is still using it now"
            )
        },
    )

    await admin.put("/routes/2", route(plugin_config_id="1"))
    status, body, _ = await admin.delete("/plugin_configs/1")
    assert (status, body) == (
        400,
        {"error_msg": ("can not delete this plugin config, route [2] is still using it now")},
    )

    await admin.put("/consumer_groups/g1", {"plugins": {}})
    await admin.put("/consumers", {"username": "jack", "group_id": "g1"})
    status, body, _ = await admin.delete("/consumer_groups/g1")
    assert (status, body) == (
        400,
        {
            "error_msg": (
                "can not delete this consumer group, consumer [jack] is still using it now"
            )
        },
    )


# -- list options (case 20) ---------------------------------------------------------------------


async def test_list_paging_and_filters(admin: Admin) -> None:
    status, body, _ = await admin.get("/routes/?page=1&page_size=2")
    assert (status, body) == (400, "page_size must be between 10 and 500")
    await admin.put("/upstreams/u1", UPSTREAM)
    for i in range(1, 12):
        extra: dict[str, Any] = {"name": f"route-{i}"}
        if i % 2:
            extra["labels"] = {"odd": "yes"}
        if i == 3:
            await admin.put(f"/routes/{i}", {"uri": f"/r{i}", "upstream_id": "u1", **extra})
        else:
            await admin.put(f"/routes/{i}", route(f"/r{i}", **extra))
    status, body, _ = await admin.get("/routes?page=1&page_size=10")
    assert body["total"] == 11 and len(body["list"]) == 10
    assert [i["value"]["id"] for i in body["list"]] == [str(i) for i in range(1, 11)]
    status, body, _ = await admin.get("/routes?page=2&page_size=10")
    assert body["total"] == 11 and [i["value"]["id"] for i in body["list"]] == ["11"]
    status, body, _ = await admin.get("/routes?label=")
    assert body == {"list": [], "total": 0}
    status, body, _ = await admin.get("/routes?label=odd")
    assert body["total"] == 6
    status, body, _ = await admin.get("/routes?name=route-1")
    assert sorted(i["value"]["id"] for i in body["list"]) == ["1", "10", "11"]
    status, body, _ = await admin.get("/routes?uri=^/r1$")
    assert [i["value"]["id"] for i in body["list"]] == ["1"]
    status, body, _ = await admin.get("/routes?filter=upstream_id%3Du1")
    assert [i["value"]["id"] for i in body["list"]] == ["3"]
    status, body, _ = await admin.get("/routes?filter=upstream_id%3Du1&label=odd&name=route")
    assert body["total"] == 1


# -- other resources ----------------------------------------------------------------------------


async def test_global_rules_and_groups_and_configs(admin: Admin) -> None:
    fi = {"fault-injection": {"abort": {"http_status": 200}}}
    status, body, _ = await admin.put("/global_rules/1", {"plugins": fi})
    assert status == 201 and body["value"]["id"] == "1"
    status, body, _ = await admin.put("/global_rules/2", {"plugins": fi})
    assert (status, body) == (
        400,
        {"error_msg": ("plugin 'fault-injection' already exists in global rule with id '1'")},
    )
    status, _, _ = await admin.put("/global_rules/1", {"plugins": fi})
    assert status == 200
    status, body, _ = await admin.patch("/global_rules/1/plugins/proxy-rewrite", {"uri": "/p"})
    assert status == 200 and set(body["value"]["plugins"]) == {"fault-injection", "proxy-rewrite"}
    status, body, _ = await admin.put("/global_rules/3", {})
    assert (status, body) == (
        400,
        {"error_msg": ('invalid configuration: property "plugins" is required')},
    )
    status, _, _ = await admin.put("/consumer_groups/1", {"plugins": fi})
    assert status == 201
    status, body, _ = await admin.patch("/consumer_groups/1", {"desc": "x"})
    assert status == 200 and body["value"]["desc"] == "x"
    status, _, _ = await admin.put("/plugin_configs/1", {"plugins": fi})
    assert status == 201


async def test_plugin_metadata(admin: Admin) -> None:
    status, body, _ = await admin.put(
        "/plugin_metadata/file-logger", {"log_format": {"host": "$host"}}
    )
    assert status == 201 and body["key"] == "/apisix/plugin_metadata/file-logger"
    status, body, _ = await admin.get("/plugin_metadata/file-logger")
    assert status == 200 and body["value"]["log_format"] == {"host": "$host"}
    status, body, _ = await admin.put("/plugin_metadata/file-logger", {"nope": 1})
    assert status == 400
    assert body["error_msg"] == (
        "invalid configuration: additional properties forbidden, found nope"
    )
    status, body, _ = await admin.put("/plugin_metadata/no-such", {})
    assert (status, body) == (400, {"error_msg": "invalid plugin name"})
    status, body, _ = await admin.delete("/plugin_metadata/file-logger")
    assert status == 200


async def test_ssl_schema(admin: Admin, tmp_path: Path) -> None:
    status, body, _ = await admin.put("/ssls/1", {"sni": "a.com"})
    assert status == 400 and body["error_msg"].startswith("invalid configuration: ")
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    done = subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=a.com",
        ],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip("openssl unavailable")
    ssl = {"cert": cert.read_text(), "key": key.read_text(), "sni": "a.com"}
    status, body, _ = await admin.put("/ssls/1", ssl)
    assert status == 201, body
    status, body, _ = await admin.get("/ssls/1")
    assert status == 200 and "key" not in body["value"] and body["value"]["sni"] == "a.com"
    status, body, _ = await admin.get("/ssls")
    assert "key" not in body["list"][0]["value"]


# -- plugins and schema endpoints (cases 21-23) -------------------------------------------------


async def test_plugins_endpoints(admin: Admin) -> None:
    status, body, _ = await admin.get("/plugins/list")
    assert status == 200
    assert body == ["fault-injection", "key-auth", "proxy-rewrite", "traffic-split", "file-logger"]
    status, body, _ = await admin.get("/plugins/list?subsystem=stream")
    assert (status, body) == (200, [])
    status, body, _ = await admin.get("/plugins/list?subsystem=x")
    assert (status, body) == (400, "invalid subsystem passed")
    status, body, _ = await admin.get("/plugins/asdf")
    assert (status, body) == (404, {"error_msg": "plugin not found in subsystem http"})
    status, body, _ = await admin.get("/plugins/fault-injection")
    assert status == 200 and "abort" in body["properties"] and "_meta" in body["properties"]
    assert body["$comment"] == "this is a mark for our injected plugin schema"
    status, body, _ = await admin.get("/schema/plugins/fault-injection")
    assert status == 200 and "abort" in body["properties"]
    status, body, _ = await admin.get("/plugins/key-auth?schema_type=consumer")
    assert body["required"] == ["key"]
    status, body, _ = await admin.get("/plugins/proxy-rewrite?schema_type=consumer")
    assert (status, body) == (400, {"error_msg": "not found schema"})
    status, body, _ = await admin.get("/plugins/key-auth?subsystem=x")
    assert (status, body) == (400, {"error_msg": "unsupported subsystem: x"})
    status, body, _ = await admin.get("/plugins?all=true")
    assert status == 200 and body["key-auth"]["priority"] == 2500
    assert body["key-auth"]["type"] == "auth" and "consumer_schema" in body["key-auth"]


async def test_reload(admin: Admin) -> None:
    status, body, _ = await admin.put("/plugins/reload")
    assert (status, body) == (200, "done")
    for method in ("GET", "POST", "DELETE", "PATCH"):
        status, body, _ = await admin.call(method, "/plugins/reload")
        assert (status, body) == (
            405,
            {
                "error_msg": (
                    f"please use PUT method to reload the plugins, {method} method is not allowed."
                )
            },
        )
    assert admin.reloads == 1


async def test_schema_endpoints(admin: Admin) -> None:
    status, body, _ = await admin.post("/schema/validate/routes", {"upstream": UPSTREAM})
    assert (status, body) == (
        400,
        {"error_msg": ("allOf 1 failed: value should match only one schema, but matches none")},
    )
    status, body, _ = await admin.post("/schema/validate/routes", route())
    assert (status, body) == (200, None)
    status, body, _ = await admin.post("/schema/validate/routs", route())
    assert (status, body) == (404, {"error_msg": "Unsupported resource type: routs"})
    status, body, _ = await admin.get("/schema/route")
    assert status == 200 and "uri" in body["properties"]
    status, body, _ = await admin.get("/schema/nope")
    assert (status, body) == (400, {"error_msg": "not found schema: nope"})
    # validation stores nothing
    status, body, _ = await admin.get("/routes")
    assert body == {"list": [], "total": 0}


async def test_reload_failure_is_500(resource_store: ResourceStore, tmp_path: Path) -> None:
    async def broken() -> None:
        raise RuntimeError("boom")

    registry = make_registry()
    ctx = AdminContext(
        store=resource_store,
        registry=lambda: registry,
        reload_plugins=broken,
        config=admin_config(tmp_path),
    )
    async with TestClient(TestServer(create_admin_app(ctx), host="127.0.0.1")) as client:
        resp = await client.put("/apisix/admin/plugins/reload", headers=H)
        assert resp.status == 500
        assert json.loads(await resp.text()) == {"error_msg": "boom"}


async def test_writes_reach_the_served_config(tmp_path: Path) -> None:
    """With the file store, an Admin API write is what the gateway's snapshot serves."""
    from kernel.store.yaml_file import YamlFileStore
    from kernel.store.yaml_resources import YamlResourceStore

    path = tmp_path / "apisix.yaml"
    path.write_text("routes: []\n#END\n")
    files = YamlFileStore(path, None, {})
    await files.start(lambda snapshot: None)
    store = YamlResourceStore(files, "/apisix")
    registry = make_registry()

    async def reload() -> None:
        pass

    ctx = AdminContext(store=store, registry=lambda: registry, reload_plugins=reload,
                       config=admin_config(tmp_path))
    try:
        async with TestClient(TestServer(create_admin_app(ctx), host="127.0.0.1")) as client:
            admin = Admin(client, store)
            await admin.put("/upstreams/1", UPSTREAM)
            await admin.put("/routes/1", {"uri": "/hello", "upstream_id": "1"})
            await admin.put("/consumers", {"username": "jack",
                                           "plugins": {"key-auth": {"key": "k"}}})
            snapshot = files.current()
            assert snapshot is not None
            [r] = snapshot.items("routes")
            assert r["uri"] == "/hello" and str(r["id"]) == "1"
            assert [c["username"] for c in snapshot.items("consumers")] == ["jack"]
            await admin.delete("/routes/1")
            after = files.current()
            assert after is not None and after.items("routes") == ()
    finally:
        await store.stop()
        await files.stop()


def test_public_default_key_only_from_loopback(tmp_path: Path) -> None:
    from kernel.admin import auth

    cfg = admin_config(
        tmp_path, admin_key=[{"name": "admin", "key": auth.PUBLIC_DEFAULT_KEY, "role": "admin"}]
    )

    def req(remote: str) -> Any:
        return types.SimpleNamespace(
            query={},
            headers={"X-API-KEY": auth.PUBLIC_DEFAULT_KEY},
            cookies={},
            method="PUT",
            remote=remote,
        )

    assert auth.check_token(cfg, req("127.0.0.1")) is None
    assert auth.check_token(cfg, req("192.0.2.7")) == "wrong apikey"
    assert auth.client_allowed(auth.allowed_networks(cfg), "127.0.0.5")
    assert not auth.client_allowed(auth.allowed_networks(cfg), "192.0.2.7")
    assert not auth.client_allowed([], "127.0.0.1")
    assert auth.client_allowed(None, "192.0.2.7")


async def test_secrets(admin: Admin) -> None:
    vault = {"uri": "http://127.0.0.1:8200", "prefix": "kv/apisix", "token": "root"}
    status, body, _ = await admin.put("/secrets/vault/test1", vault)
    assert status == 201 and body["key"] == "/apisix/secrets/vault/test1"
    assert body["value"]["id"] == "vault/test1" and body["value"]["token"] == "root"
    status, body, _ = await admin.get("/secrets/vault/test1")
    assert status == 200 and body["value"]["uri"] == vault["uri"]
    status, body, _ = await admin.get("/secrets")
    assert body["total"] == 1
    status, body, _ = await admin.patch("/secrets/vault/test1/token", "other")
    assert status == 200 and body["value"]["token"] == "other"
    status, body, _ = await admin.put("/secrets/vault/test2", {"uri": "http://a"})
    assert (status, body) == (
        400,
        {"error_msg": ('invalid configuration: property "prefix" is required')},
    )
    status, body, _ = await admin.put("/secrets/nope/x", vault)
    assert (status, body) == (400, {"error_msg": "invalid secret manager: nope"})
    status, body, _ = await admin.put("/secrets/vault", vault)
    assert (status, body) == (400, {"error_msg": "missing secret id"})
    status, body, _ = await admin.post("/secrets/vault", vault)
    assert (status, body) == (405, {"error_msg": "not supported `POST` method for secret"})
    status, body, _ = await admin.delete("/secrets/vault/test1")
    assert (status, body) == (200, {"deleted": "1", "key": "/apisix/secrets/vault/test1"})


class ExplodingStore(MemoryResourceStore):
    async def get(self, key: str) -> Any:
        raise ZeroDivisionError("bug")


async def test_unexpected_error_is_json_500(admin_factory: AdminFactory) -> None:
    admin = await admin_factory(store=ExplodingStore())
    status, body, headers = await admin.get("/routes/1")
    assert (status, body) == (500, {"error_msg": "internal server error"})
    assert headers["Server"] == "APISIX/3.18.0"
