"""A worker loads the heavy libraries only for the features that need them.

aiohttp (control API, Admin API, etcd), cryptography (encrypted fields, certificates) and PyJWT
(jwt-auth keys) together add ~20 MiB to a worker's RSS. A data-plane worker that uses none of
them must not map their native code; one that does must work as before.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.support.gateway import GatewayProcess
from tests.support.upstream import Upstream, free_port

HEAVY = {
    "aiohttp": f"{os.sep}aiohttp{os.sep}",
    "cryptography": f"{os.sep}cryptography{os.sep}",
}
SECRET = "a-jwt-secret-of-thirty-two-bytes-or-more"


def loaded_libraries(pid: int) -> set[str]:
    """Which of ``HEAVY`` have a shared object mapped in process ``pid``."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return {name for name, part in HEAVY.items() if part in maps}


def route(up: Upstream, plugins: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": "r1", "uri": "/*", "plugins": plugins or {},
            "upstream": {"type": "roundrobin", "nodes": {f"127.0.0.1:{up.port}": 1}}}


def test_plain_data_plane_worker_loads_none(tmp_path: Path, upstream: Upstream) -> None:
    gw = GatewayProcess(tmp_path / "gw")  # default plugin list (jwt-auth included), control off
    gw.start({"routes": [route(upstream, {"limit-count": {"count": 100, "time_window": 60}})]})
    try:
        assert gw.get("/hello").status == 200
        assert gw.proc is not None
        assert loaded_libraries(gw.proc.pid) == set()
    finally:
        gw.stop()


def test_features_load_what_they_need(tmp_path: Path, upstream: Upstream) -> None:
    control_port = free_port()
    gw = GatewayProcess(tmp_path / "gw", {"apisix": {
        "enable_control": True, "control": {"ip": "127.0.0.1", "port": control_port}}})
    doc = {
        "routes": [route(upstream, {"jwt-auth": {}})],
        "consumers": [{"username": "jack",
                       "plugins": {"jwt-auth": {"key": "user-key", "secret": SECRET}}}],
    }
    gw.start(doc)
    try:
        assert gw.get("/hello").status == 401  # jwt-auth is live: no token
        import jwt  # the test's own copy, to sign a token the gateway must verify

        token = jwt.encode({"key": "user-key"}, SECRET, algorithm="HS256")
        assert gw.get("/hello", headers={"Authorization": token}).status == 200
        assert gw.proc is not None
        assert loaded_libraries(gw.proc.pid) == {"aiohttp", "cryptography"}
    finally:
        gw.stop()
