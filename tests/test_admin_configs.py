"""``/apisix/admin/configs`` (spec §2.13): the standalone API-driven mode on the embedded store.

The Admin API runs over real HTTP against a real :class:`YamlResourceStore` whose file store
validates with the kernel's validator (the one file edits go through); the last test runs a
real gateway process and checks that the data plane serves a ``PUT`` at once.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from kernel.admin import AdminContext, create_admin_app
from kernel.state import validate_snapshot
from kernel.store.resources import ResourceStore
from kernel.store.yaml_file import YamlFileStore
from kernel.store.yaml_resources import YamlResourceStore
from tests.support.gateway import GatewayProcess
from tests.support.memory_store import MemoryResourceStore
from tests.support.upstream import free_port
from tests.test_admin_api import UPSTREAM, VIEWER_KEY, Admin, admin_config, make_registry

VERSIONS = ("routes", "services", "upstreams", "consumers", "ssls", "global_rules")


def route(rid: str, uri: str, **extra: Any) -> dict[str, Any]:
    return {"id": rid, "uri": uri, "upstream": UPSTREAM, **extra}


class Fixture:
    def __init__(self, admin: Admin, path: Path) -> None:
        self.admin = admin
        self.path = path

    async def configs(
        self,
        method: str,
        body: Any = None,
        *,
        digest: str | None = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        path: str = "/configs",
        key: bool = True,
    ) -> tuple[int, Any, Any]:
        hdrs = dict(headers or {})
        if digest is not None:
            hdrs["X-Digest"] = digest
        return await self.admin.call(method, path, body, raw=raw, headers=hdrs, key=key)

    def file(self) -> dict[str, Any]:
        doc: dict[str, Any] = yaml.safe_load(self.path.read_text())
        return doc


async def _serve(store: ResourceStore, tmp_path: Path) -> tuple[Admin, TestClient]:
    registry = make_registry()

    async def reload() -> None:
        return None

    ctx = AdminContext(
        store=store,
        registry=lambda: registry,
        reload_plugins=reload,
        config=admin_config(tmp_path),
    )
    client = TestClient(TestServer(create_admin_app(ctx), host="127.0.0.1"))
    await client.start_server()
    admin = Admin(client, store)
    admin.registry = registry
    return admin, client


@pytest.fixture
async def fx(tmp_path: Path) -> AsyncIterator[Fixture]:
    registry = make_registry()
    path = tmp_path / "apisix.yaml"
    path.write_text("routes: []\n#END\n")
    files = YamlFileStore(path, lambda snap: validate_snapshot(snap, registry), {})
    await files.start(lambda snapshot: None)
    store = YamlResourceStore(files, "/apisix")
    admin, client = await _serve(store, tmp_path)
    try:
        yield Fixture(admin, path)
    finally:
        await client.close()
        await store.stop()
        await files.stop()


# -- GET / HEAD ---------------------------------------------------------------------------------


async def test_get_empty_config_json_and_yaml(fx: Fixture) -> None:
    status, body, headers = await fx.configs("GET")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    for name in VERSIONS:
        assert body[f"{name}_conf_version"] == 0
    assert "routes" not in body
    assert "X-Digest" not in headers
    status, text, headers = await fx.configs("GET", headers={"Accept": "application/yaml"})
    assert status == 200 and headers["Content-Type"] == "application/yaml"
    assert not text.startswith("---") and not text.rstrip().endswith("...")
    assert yaml.safe_load(text)["routes_conf_version"] == 0


async def test_put_then_get_round_trip_head_and_digest(fx: Fixture) -> None:
    config = {"routes": [route("r1", "/r1")], "upstreams": [{"id": "u1", **UPSTREAM}]}
    status, body, _ = await fx.configs("PUT", config, digest="d1")
    assert (status, body) == (202, None)
    status, body, headers = await fx.configs("GET")
    assert status == 200
    assert body["routes"] == config["routes"] and body["upstreams"] == config["upstreams"]
    for name in VERSIONS:
        assert body[f"{name}_conf_version"] == 1
    assert headers["X-Digest"] == "d1" and int(headers["X-Last-Modified"]) > 0
    status, text, head = await fx.configs("HEAD")
    assert status == 200 and not text
    assert head["X-Digest"] == "d1" and head["X-Last-Modified"] == headers["X-Last-Modified"]
    # the same digest: accepted, nothing changes
    status, _, _ = await fx.configs("PUT", {"routes": [route("r9", "/r9")]}, digest="d1")
    assert status == 204
    assert [r["id"] for r in fx.file()["routes"]] == ["r1"]
    # GET's body can be PUT back as it is
    status, _, _ = await fx.configs("PUT", body, digest="d2")
    assert status == 202
    status, again, _ = await fx.configs("GET")
    assert again["routes"] == config["routes"] and again["routes_conf_version"] == 1
    assert again["services_conf_version"] == 1  # every counter given back: all left as they are
    # the per-resource API sees the items, with revisions
    status, one, _ = await fx.admin.get("/routes/r1")
    assert status == 200 and one["value"]["uri"] == "/r1" and one["modifiedIndex"] >= 1


async def test_yaml_body_and_yaml_accept(fx: Fixture) -> None:
    text = yaml.safe_dump({"routes": [route("r2", "/r2")], "routes_conf_version": 5})
    status, _, _ = await fx.configs(
        "PUT", raw=text.encode(), digest="y", headers={"Content-Type": "application/yaml"}
    )
    assert status == 202
    status, out, _ = await fx.configs("GET", headers={"Accept": "application/yaml"})
    assert "id: r2" in out and "routes:" in out
    doc = yaml.safe_load(out)
    assert doc["routes_conf_version"] == 5 and doc["upstreams_conf_version"] == 1
    status, body, _ = await fx.configs(
        "PUT", raw=b"- a\n- b\n", digest="z", headers={"Content-Type": "application/yaml"}
    )
    assert (status, body) == (400, {"error_msg": "invalid request body: invalid yaml request body"})


# -- PUT errors ---------------------------------------------------------------------------------


async def test_put_request_errors(fx: Fixture) -> None:
    status, body, _ = await fx.configs("PUT", {"routes": []})
    assert (status, body) == (400, {"error_msg": "missing digest header"})
    status, body, _ = await fx.configs("PUT", raw=b"", digest="x")
    assert (status, body) == (400, {"error_msg": "invalid request body: empty request body"})
    status, body, _ = await fx.configs("PUT", raw=b"{abcd", digest="x")
    assert (status, body) == (
        400,
        {
            "error_msg": "invalid request body: "
            "Expected object key string but found invalid token at character 2"
        },
    )


async def test_conf_version_rules(fx: Fixture) -> None:
    status, _, _ = await fx.configs("PUT", {"routes_conf_version": 100}, digest="a")
    assert status == 202
    status, body, _ = await fx.configs("PUT", {"routes_conf_version": -1}, digest="b")
    assert (status, body) == (
        400,
        {"error_msg": "routes_conf_version must be greater than or equal to (100)"},
    )
    status, body, _ = await fx.configs("PUT", {"routes_conf_version": "adc"}, digest="b")
    assert (status, body) == (400, {"error_msg": "routes_conf_version must be a number"})
    # a new routes version: routes replaced
    status, _, _ = await fx.configs(
        "PUT", {"routes": [route("r1", "/r1")], "routes_conf_version": 101}, digest="c"
    )
    assert status == 202
    # equal version: routes left untouched although the body has other routes
    status, _, _ = await fx.configs(
        "PUT",
        {"routes": [route("r2", "/r2")], "routes_conf_version": 101, "services": []},
        digest="d",
    )
    assert status == 202
    status, body, _ = await fx.configs("GET")
    assert [r["id"] for r in body["routes"]] == ["r1"]
    assert body["routes_conf_version"] == 101 and body["services_conf_version"] == 3
    # omitted: current + 1, and the collection is replaced by what the body has (none)
    status, _, _ = await fx.configs("PUT", {}, digest="e")
    assert status == 202
    status, body, _ = await fx.configs("GET")
    assert "routes" not in body and body["routes_conf_version"] == 102
    assert fx.file()["routes_conf_version"] == 102  # the counters live in the file


async def test_duplicate_ids_and_invalid_items_store_nothing(fx: Fixture) -> None:
    before = fx.path.read_bytes()
    status, body, _ = await fx.configs(
        "PUT", {"routes": [route("r1", "/a"), route("r1", "/b")]}, digest="x"
    )
    assert (status, body) == (400, {"error_msg": "found duplicate id r1 in routes"})
    status, body, _ = await fx.configs(
        "PUT", {"consumers": [{"username": "jack"}, {"username": "jack"}]}, digest="x"
    )
    assert (status, body) == (400, {"error_msg": "found duplicate username jack in consumers"})
    bad = route("r1", "/a")
    bad["uri"] = 123
    status, body, _ = await fx.configs("PUT", {"routes": [bad]}, digest="x")
    assert (status, body) == (
        400,
        {
            "error_msg": 'invalid routes at index 0, err: property "uri" validation failed: '
            "wrong type: expected string, got number"
        },
    )
    status, body, _ = await fx.configs(
        "PUT", {"routes": [route("r1", "/a", plugins={"no-such-plugin": {}})]}, digest="x"
    )
    assert (status, body) == (
        400,
        {"error_msg": "invalid routes at index 0, err: unknown plugin [no-such-plugin]"},
    )
    # a document-level problem (found by the validators of a file edit)
    status, body, _ = await fx.configs(
        "PUT", {"routes": [route("r1", "/a", vars=[["arg_a", "=", "1"]])]}, digest="x"
    )
    assert (status, body) == (
        400,
        {
            "error_msg": "invalid routes at index 0, err: "
            "failed to validate the 'vars' expression: invalid operator '='"
        },
    )
    assert fx.path.read_bytes() == before
    status, body, _ = await fx.configs("GET")
    assert body["routes_conf_version"] == 0


async def test_modified_index_keeps_the_stored_item(fx: Fixture) -> None:
    first = {"routes": [route("r1", "/r1", modifiedIndex=1)]}
    assert (await fx.configs("PUT", first, digest="1"))[0] == 202
    same_index = {"routes": [route("r1", "/changed", modifiedIndex=1)]}
    assert (await fx.configs("PUT", same_index, digest="2"))[0] == 202
    assert fx.file()["routes"][0]["uri"] == "/r1"
    new_index = {"routes": [route("r1", "/changed", modifiedIndex=2)]}
    assert (await fx.configs("PUT", new_index, digest="3"))[0] == 202
    assert fx.file()["routes"][0]["uri"] == "/changed"
    assert "modifiedIndex" not in fx.file()["routes"][0]
    _, body, _ = await fx.configs("GET")
    assert body["routes"][0]["modifiedIndex"] == 2


async def test_per_resource_write_invalidates_the_digest(fx: Fixture) -> None:
    assert (await fx.configs("PUT", {"routes": [route("r1", "/r1")]}, digest="d"))[0] == 202
    status, _, _ = await fx.admin.put("/routes/r2", {"uri": "/r2", "upstream": UPSTREAM})
    assert status == 201
    _, body, headers = await fx.configs("GET")
    assert "X-Digest" not in headers and len(body["routes"]) == 2
    # the same digest again is no longer "nothing changed"
    assert (await fx.configs("PUT", {"routes": [route("r1", "/r1")]}, digest="d"))[0] == 202
    assert [r["id"] for r in fx.file()["routes"]] == ["r1"]


async def test_roles(fx: Fixture) -> None:
    viewer = {"X-API-KEY": VIEWER_KEY}
    status, _, _ = await fx.configs("GET", key=False, headers=viewer)
    assert status == 200
    status, body, _ = await fx.configs("PUT", {}, digest="v", key=False, headers=viewer)
    assert (status, body) == (
        401,
        {"error_msg": "failed to check token", "description": "invalid method for role viewer"},
    )
    status, body, _ = await fx.configs("GET", key=False)
    assert (status, body["description"]) == (401, "missing apikey")
    status, _, _ = await fx.configs("DELETE")
    assert status == 404


# -- validate -----------------------------------------------------------------------------------


async def test_validate_stores_nothing(fx: Fixture) -> None:
    before = fx.path.read_bytes()
    good = {"routes": [route("r1", "/r1")], "upstreams": [{"id": "u1", **UPSTREAM}]}
    status, body, _ = await fx.configs("POST", good, path="/configs/validate")
    assert (status, body) == (200, None)
    status, _, _ = await fx.configs(
        "POST",
        raw=yaml.safe_dump(good).encode(),
        path="/configs/validate",
        headers={"Content-Type": "application/yaml"},
    )
    assert status == 200
    bad = {
        "routes": [route("r1", "/r1"), route("r1", "/r2"), {"id": "r3", "uri": 5}],
        "services_conf_version": "x",
    }
    status, body, _ = await fx.configs("POST", bad, path="/configs/validate")
    assert status == 400 and body["error_msg"] == "Configuration validation failed"
    assert {"resource_type": "routes", "index": 1,
            "error": "found duplicate id r1 in routes"} in body["errors"]  # fmt: skip
    assert any(e.get("index") == 2 and 'property "uri"' in e["error"] for e in body["errors"])
    version_error = "services_conf_version must be a number, got string"
    assert {"resource_type": "services", "error": version_error} in body["errors"]
    status, body, _ = await fx.configs(
        "POST", {"routes": [route("r1", "/a", vars=[["arg_a", "=", "1"]])]},
        path="/configs/validate",
    )  # fmt: skip
    assert (status, body["errors"]) == (400, [{
        "resource_type": "routes", "index": 0,
        "error": "invalid routes at index 0, err: "
                 "failed to validate the 'vars' expression: invalid operator '='",
    }])  # fmt: skip
    assert fx.path.read_bytes() == before


# -- an etcd-backed node ------------------------------------------------------------------------


async def test_not_served_on_an_etcd_style_store(tmp_path: Path) -> None:
    admin, client = await _serve(MemoryResourceStore(), tmp_path)
    try:
        status, body, _ = await admin.get("/configs")
        assert (status, body) == (404, {"error_msg": "Unsupported resource type: configs"})
        status, body, _ = await admin.put("/configs", {}, headers={"X-Digest": "x"})
        assert (status, body) == (404, {"error_msg": "Unsupported resource type: configs"})
        status, _, headers = await admin.call("HEAD", "/configs")
        assert status == 404 and headers["Content-Type"] == "text/html"
        # validate works in every mode (item checks)
        ok = {"routes": [route("r1", "/r1")]}
        assert (await admin.post("/configs/validate", ok))[0] == 200
        status, body, _ = await admin.post(
            "/configs/validate", {"routes": [route("r1", "/a"), route("r1", "/b")]}
        )
        assert status == 400 and body["errors"][0]["error"] == "found duplicate id r1 in routes"
    finally:
        await client.close()


# -- a real gateway -----------------------------------------------------------------------------

KEY = "edd1c9f034335f136f87ad84b625c8f0"


def _admin(port: int, method: str, path: str, body: Any, headers: dict[str, str]) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, "/apisix/admin" + path, body=json.dumps(body),
                     headers={"X-API-KEY": KEY, **headers})  # fmt: skip
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def test_data_plane_serves_a_put_at_once(tmp_path: Path, upstream: Any) -> None:
    port = free_port()
    config = {"deployment": {
        "role": "traditional", "role_traditional": {"config_provider": "yaml"},
        "admin": {"admin_listen": {"ip": "127.0.0.1", "port": port},
                  "admin_key": [{"name": "admin", "key": KEY, "role": "admin"}]},
    }}  # fmt: skip
    g = GatewayProcess(tmp_path, config)
    g.start({"routes": []})
    try:
        nodes = {f"127.0.0.1:{upstream.port}": 1}
        doc = {"routes": [{"id": "r1", "uri": "/hello",
                           "upstream": {"type": "roundrobin", "nodes": nodes}}]}  # fmt: skip
        assert _admin(port, "PUT", "/configs", doc, {"X-Digest": "one"}) == 202
        resp = g.get("/hello")
        assert resp.status == 200 and resp.text == "hello world\n"
        doc["routes"][0]["uri"] = "/hi"
        assert _admin(port, "PUT", "/configs", doc, {"X-Digest": "two"}) == 202
        assert g.get("/hi").status == 200
        assert g.get("/hello").status == 404
        stored = yaml.safe_load((g.conf / "apisix.yaml").read_text())
        assert stored["routes"][0]["uri"] == "/hi" and stored["routes_conf_version"] == 2
    finally:
        g.stop()


async def test_a_replacement_after_a_per_resource_write_gives_changed_items_new_revisions(
    fx: Fixture,
) -> None:
    status, _, _ = await fx.admin.put("/routes/r1", {"uri": "/r1", "upstream": UPSTREAM})
    assert status == 201
    status, _, _ = await fx.admin.put("/routes/r2", {"uri": "/r2", "upstream": UPSTREAM})
    assert status == 201
    _, before, _ = await fx.admin.get("/routes/r1")
    _, kept_before, _ = await fx.admin.get("/routes/r2")
    kept = {"id": "r2", "uri": "/r2", "upstream": UPSTREAM,
            "create_time": kept_before["value"]["create_time"],
            "update_time": kept_before["value"]["update_time"]}
    config = {"routes": [route("r1", "/r1-changed"), kept]}
    assert (await fx.configs("PUT", config, digest="x"))[0] == 202
    # the write itself recorded the new revision (before any read could notice the change)
    revisions = json.loads(Path(str(fx.path) + ".revisions").read_text())["keys"]
    assert revisions["/apisix/routes/r1"]["m"] > before["modifiedIndex"]
    assert revisions["/apisix/routes/r2"]["m"] == kept_before["modifiedIndex"]
    _, after, _ = await fx.admin.get("/routes/r1")
    _, kept_after, _ = await fx.admin.get("/routes/r2")
    assert after["value"]["uri"] == "/r1-changed"
    assert after["modifiedIndex"] > before["modifiedIndex"]
    assert kept_after["modifiedIndex"] == kept_before["modifiedIndex"]
