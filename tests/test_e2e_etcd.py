"""Gateway processes sharing a real etcd: Admin writes on one, served by another; etcd faults."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.etcd import EtcdServer
from tests.support.gateway import GatewayProcess, wait_until
from tests.support.upstream import free_port
from tests.test_e2e_admin import KEY, admin


def control(etcd: EtcdServer, admin_port: int, role: str = "traditional") -> dict[str, Any]:
    return {"deployment": {
        "role": role, f"role_{role}": {"config_provider": "etcd"},
        "etcd": {"host": [etcd.endpoint], "prefix": "/apisix", "resync_delay": 0.2},
        "admin": {"admin_listen": {"ip": "127.0.0.1", "port": admin_port},
                  "admin_key": [{"name": "admin", "key": KEY, "role": "admin"}]},
    }}


def data_plane(etcd: EtcdServer) -> dict[str, Any]:
    return {"deployment": {
        "role": "data_plane", "role_data_plane": {"config_provider": "etcd"},
        "etcd": {"host": [etcd.endpoint], "prefix": "/apisix", "resync_delay": 0.2},
    }}


def node(up: Any) -> dict[str, Any]:
    return {"type": "roundrobin", "nodes": {f"127.0.0.1:{up.port}": 1}}


def test_control_plane_write_reaches_two_data_planes(tmp_path: Path, etcd: EtcdServer,
                                                     upstream: Any) -> None:
    port = free_port()
    cp = GatewayProcess(tmp_path / "cp", control(etcd, port, "control_plane"))
    dp1 = GatewayProcess(tmp_path / "dp1", data_plane(etcd))
    dp2 = GatewayProcess(tmp_path / "dp2", data_plane(etcd))
    try:
        cp.start_background()
        dp1.start()
        dp2.start()
        wait_until(lambda: admin(port, "GET", "/routes")[0] == 200, timeout=15)
        route = {"uri": "/hello", "upstream": node(upstream)}
        status, body = admin(port, "PUT", "/routes/1", route)
        assert status == 201, body
        for dp in (dp1, dp2):
            wait_until(lambda dp=dp: dp.get("/hello").status == 200, timeout=2)
        # the control plane has no proxy port
        with pytest.raises(OSError):
            cp.get("/hello", timeout=1)
        status, _ = admin(port, "DELETE", "/routes/1")
        assert status == 200
        for dp in (dp1, dp2):
            wait_until(lambda dp=dp: dp.get("/hello").status == 404, timeout=2)
    finally:
        for g in (dp2, dp1, cp):
            g.stop()


def test_etcd_down_keeps_serving_and_admin_answers_503(tmp_path: Path, etcd: EtcdServer,
                                                       upstream: Any) -> None:
    port = free_port()
    gw = GatewayProcess(tmp_path / "gw", control(etcd, port))
    dp = GatewayProcess(tmp_path / "dp", data_plane(etcd))
    try:
        gw.start()
        dp.start()
        route = {"uri": "/hello", "upstream": node(upstream)}
        assert admin(port, "PUT", "/routes/1", route)[0] == 201
        wait_until(lambda: dp.get("/hello").status == 200, timeout=2)
        etcd.stop()
        time.sleep(0.5)
        assert dp.get("/hello").status == 200  # last good config keeps serving
        assert gw.get("/hello").status == 200
        status, body = admin(port, "PUT", "/routes/2", {"uri": "/two", "upstream": node(upstream)})
        assert status == 503 and body["error_msg"]
        etcd.restart()
        wait_until(lambda: admin(port, "PUT", "/routes/2",
                                 {"uri": "/two", "upstream": node(upstream)})[0] in (200, 201),
                   timeout=15)
        wait_until(lambda: dp.get("/two").status == 200, timeout=10)
        assert dp.get("/hello").status == 200
    finally:
        dp.stop()
        gw.stop()


def test_data_plane_refuses_admin_and_writes(tmp_path: Path, etcd: EtcdServer) -> None:
    dp = GatewayProcess(tmp_path / "dp", data_plane(etcd))
    dp.start()
    try:
        assert dp.get("/anything").status == 404
        assert "Admin API listening" not in dp.logs()
    finally:
        dp.stop()


def test_data_planes_follow_the_control_planes_plugin_list(tmp_path: Path, etcd: EtcdServer,
                                                           upstream: Any) -> None:
    port = free_port()
    cp = GatewayProcess(tmp_path / "cp", control(etcd, port, "control_plane"))
    dp = GatewayProcess(tmp_path / "dp", data_plane(etcd))
    try:
        cp.start_background()
        dp.start()
        wait_until(lambda: admin(port, "GET", "/routes")[0] == 200, timeout=15)
        route = {"uri": "/fi", "upstream": node(upstream),
                 "plugins": {"fault-injection": {"abort": {"http_status": 201}}}}
        assert admin(port, "PUT", "/routes/1", route)[0] == 201
        wait_until(lambda: dp.get("/fi").status == 201, timeout=3)
        # the control plane drops fault-injection and reloads: the data plane follows
        import yaml

        conf = yaml.safe_load((cp.conf / "config.yaml").read_text())
        conf["plugins"] = ["proxy-rewrite"]
        (cp.conf / "config.yaml").write_text(yaml.safe_dump(conf))
        status, body = admin(port, "PUT", "/plugins/reload")
        assert status == 200 and body == b"done\n"  # ngx.say, as APISIX
        wait_until(lambda: dp.get("/fi").status == 200, timeout=5)  # plugin ignored, proxied
        assert etcd_plugins(etcd) == [{"name": "proxy-rewrite"}]
    finally:
        dp.stop()
        cp.stop()


def etcd_plugins(etcd: EtcdServer) -> Any:
    import base64
    import json

    reply = etcd.call("/v3/kv/range", {"key": base64.b64encode(b"/apisix/plugins").decode()})
    return json.loads(base64.b64decode(reply["kvs"][0]["value"]))
