"""The Admin API in a real gateway process: embedded store (traditional + yaml) end to end."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

import yaml

from tests.support.gateway import GatewayProcess, wait_until
from tests.support.upstream import free_port

KEY = "edd1c9f034335f136f87ad84b625c8f0"


def embedded(admin_port: int) -> dict[str, Any]:
    return {"deployment": {
        "role": "traditional", "role_traditional": {"config_provider": "yaml"},
        "admin": {"admin_listen": {"ip": "127.0.0.1", "port": admin_port},
                  "admin_key": [{"name": "admin", "key": KEY, "role": "admin"}]},
    }}


def admin(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, "/apisix/admin" + path,
                     body=None if body is None else json.dumps(body), headers={"X-API-KEY": KEY})
        r = conn.getresponse()
        raw = r.read()
        return r.status, json.loads(raw) if raw.strip().startswith((b"{", b"[")) else raw
    finally:
        conn.close()


def test_admin_writes_serve_persist_and_survive_restart(tmp_path: Path, upstream: Any) -> None:
    port = free_port()
    g = GatewayProcess(tmp_path, embedded(port))
    g.start({"routes": []})
    try:
        status, body = admin(port, "PUT", "/upstreams/1",
                             {"type": "roundrobin", "nodes": {f"127.0.0.1:{upstream.port}": 1}})
        assert status == 201 and body["key"] == "/apisix/upstreams/1"
        status, body = admin(port, "PUT", "/routes/1", {"uri": "/hello", "upstream_id": "1"})
        assert status == 201
        wait_until(lambda: g.get("/hello").status == 200, timeout=2)
        assert g.get("/hello").text == "hello world\n"
        stored = yaml.safe_load((g.conf / "apisix.yaml").read_text())
        assert stored["routes"][0]["uri"] == "/hello"
        assert (g.conf / "apisix.yaml").read_text().rstrip().endswith("#END")
        # invalid input: 400, nothing stored
        status, body = admin(port, "PUT", "/routes/2", {"uri": "/x", "methods": ["FETCH"]})
        assert status == 400 and "matches none of the enum values" in body["error_msg"]
        assert admin(port, "GET", "/routes/2")[0] == 404
        # PATCH, then the data plane follows
        status, _ = admin(port, "PATCH", "/routes/1", {"uri": "/hi"})
        assert status == 200
        wait_until(lambda: g.get("/hi").status == 200, timeout=2)
        assert g.get("/hello").status == 404
    finally:
        g.stop()
    # restart: the route is still there, with its revisions
    g2 = GatewayProcess.__new__(GatewayProcess)
    g2.__dict__.update(g.__dict__)
    g2.start()
    try:
        assert g2.get("/hi").status == 200
        status, body = admin(port, "GET", "/routes/1")
        assert status == 200 and body["value"]["uri"] == "/hi"
        assert body["modifiedIndex"] > body["createdIndex"] >= 1
    finally:
        g2.stop()


def test_hand_edits_are_still_picked_up(tmp_path: Path, upstream: Any) -> None:
    port = free_port()
    g = GatewayProcess(tmp_path, embedded(port))
    g.start({"routes": []})
    try:
        admin(port, "PUT", "/routes/a", {"uri": "/a", "upstream": {
            "type": "roundrobin", "nodes": {f"127.0.0.1:{upstream.port}": 1}}})
        doc = yaml.safe_load((g.conf / "apisix.yaml").read_text())
        doc["routes"].append({"id": "b", "uri": "/b", "upstream": {
            "type": "roundrobin", "nodes": {f"127.0.0.1:{upstream.port}": 1}}})
        g.write_apisix(doc)
        wait_until(lambda: g.get("/b").status == 200, timeout=3)
        status, body = admin(port, "GET", "/routes")
        assert status == 200 and {i["value"]["uri"] for i in body["list"]} == {"/a", "/b"}
    finally:
        g.stop()


def test_second_instance_on_the_same_file_sees_admin_writes(tmp_path: Path, upstream: Any) -> None:
    port = free_port()
    a = GatewayProcess(tmp_path / "a", embedded(port))
    a.start({"routes": []})
    b = GatewayProcess(tmp_path / "b", {"apisix": {
        "standalone_file": str(a.conf / "apisix.yaml")}})
    b.start()
    try:
        admin(port, "PUT", "/routes/1", {"uri": "/shared", "upstream": {
            "type": "roundrobin", "nodes": {f"127.0.0.1:{upstream.port}": 1}}})
        wait_until(lambda: b.get("/shared").status == 200, timeout=3)
    finally:
        b.stop()
        a.stop()


def test_control_plane_without_etcd_is_refused(tmp_path: Path) -> None:
    g = GatewayProcess(tmp_path, {"deployment": {
        "role": "control_plane", "role_control_plane": {"config_provider": "yaml"}}})
    try:
        g.start()
    except RuntimeError as err:
        assert "deployment.role_control_plane.config_provider" in str(err)
    else:
        raise AssertionError("a control plane on the yaml provider started")
