"""etcd endpoints: ``health_check_timeout`` (a failing endpoint is skipped for that long) and
``startup_retry`` (the initial read is tried that many times, then startup fails), spec §1.4 and
§3.2 point 7, against a real etcd."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kernel.store.base import Snapshot
from kernel.store.etcd import EtcdStartupError, EtcdStore
from kernel.store.etcd_client import EtcdClient
from kernel.store.resources import StoreUnavailable
from tests.support.etcd import EtcdServer
from tests.support.gateway import GatewayProcess, wait_until
from tests.support.upstream import free_port

LOGGER = "sixgate.store.etcd"


class Blackhole:
    """A TCP listener that accepts connections, counts them and never answers."""

    def __init__(self) -> None:
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> Blackhole:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            while await reader.read(65536):  # swallow the request, never answer
                pass
        except OSError:
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()


@pytest.fixture
async def hole() -> AsyncIterator[Blackhole]:
    bh = await Blackhole().start()
    yield bh
    await bh.stop()


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused


# -- health_check_timeout ------------------------------------------------------------------------


async def test_failing_endpoint_skipped_for_health_check_timeout(
    etcd: EtcdServer, hole: Blackhole, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    client = EtcdClient([hole.url, etcd.endpoint], timeout=0.5, health_check_timeout=2.0)
    try:
        started = time.monotonic()
        await client.put("/hc/a", "1")  # the first endpoint times out, the second answers
        assert time.monotonic() - started >= 0.5
        assert hole.accepted == 1
        assert client.unhealthy() == [hole.url]
        assert any(f"etcd endpoint {hole.url} is unhealthy" in r.getMessage()
                   for r in caplog.records)  # fmt: skip
        marked = time.monotonic()
        requests = 0
        while time.monotonic() - marked < 1.5:  # inside health_check_timeout
            before = time.monotonic()
            kv = await client.get("/hc/a")
            assert kv is not None and kv.value == b"1"
            assert time.monotonic() - before < 0.4  # straight to the live endpoint
            requests += 1
        assert requests > 5 and hole.accepted == 1
        # after health_check_timeout the endpoint is tried again (first in order), once
        await asyncio.sleep(2.0 - (time.monotonic() - marked) + 0.2)
        assert client.unhealthy() == []
        assert (await client.get("/hc/a")) is not None
        assert hole.accepted == 2
        assert (await client.get("/hc/a")) is not None
        assert hole.accepted == 2
    finally:
        await client.close()


async def test_store_keeps_working_with_a_dead_endpoint(etcd: EtcdServer, hole: Blackhole) -> None:
    etcd.put("/apisix/routes/1", {"uri": "/one"})
    conf = {
        "host": [hole.url, etcd.endpoint],
        "timeout": 0.5,
        "health_check_timeout": 30,
        "resync_delay": 0.05,
        "watch_timeout": 5,
    }
    snapshots: list[Snapshot] = []
    store = EtcdStore(conf, must_connect=True)
    try:
        await store.start(snapshots.append)
        assert snapshots[-1].get("routes", "1") is not None
        # writes and the watch both go to the live endpoint
        await store.put("/apisix/routes/2", {"uri": "/two"})
        etcd.put("/apisix/routes/3", {"uri": "/three"})
        deadline = time.monotonic() + 5
        while snapshots[-1].get("routes", "3") is None or snapshots[-1].get("routes", "2") is None:
            assert time.monotonic() < deadline, snapshots[-1]
            await asyncio.sleep(0.05)
        assert hole.accepted == 1  # tried once (initial read), then skipped
    finally:
        await store.stop()


async def test_single_endpoint_is_never_skipped(etcd: EtcdServer) -> None:
    client = EtcdClient([etcd.endpoint], timeout=2, health_check_timeout=60)
    try:
        await client.put("/single", "1")
        etcd.stop()
        with pytest.raises(StoreUnavailable):
            await client.get("/single")
        etcd.start()
        assert client.unhealthy() == []
        kv = await client.get("/single")  # at once: nothing else to fall back on
        assert kv is not None and kv.value == b"1"
    finally:
        await client.close()


async def test_all_endpoints_unhealthy_are_all_tried_again() -> None:
    a, b = dead_url(), dead_url()
    client = EtcdClient([a, b], timeout=1, health_check_timeout=60)
    try:
        for _ in range(2):
            with pytest.raises(StoreUnavailable) as info:
                await client.get("/x")
            assert a in str(info.value) and b in str(info.value)
        assert client.unhealthy() == [a, b]
    finally:
        await client.close()


# -- startup_retry -------------------------------------------------------------------------------


async def test_startup_gives_up_after_startup_retry_attempts(
    hole: Blackhole, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    conf = {"host": [hole.url], "timeout": 0.3, "startup_retry": 3, "resync_delay": 0.05}
    store = EtcdStore(conf, must_connect=True)
    seen: list[Snapshot] = []
    try:
        with pytest.raises(EtcdStartupError) as info:
            await store.start(seen.append)
    finally:
        await store.stop()
    message = str(info.value)
    assert message.startswith("all etcd nodes are unavailable: the initial read of /apisix/ "
                              "failed 3 time(s) (deployment.etcd.startup_retry): ")
    assert hole.url in message
    assert hole.accepted == 3 and seen == []
    retries = [r.getMessage() for r in caplog.records if "initial read failed" in r.getMessage()]
    assert len(retries) == 2 and retries[-1].endswith("retry 2/2")


async def test_startup_retry_defaults_to_two_attempts(hole: Blackhole) -> None:
    store = EtcdStore({"host": [hole.url], "timeout": 0.3, "resync_delay": 0}, must_connect=True)
    try:
        with pytest.raises(EtcdStartupError, match=r"failed 2 time\(s\)"):
            await store.start(lambda s: None)
    finally:
        await store.stop()
    assert hole.accepted == 2


async def test_data_plane_store_starts_empty_and_catches_up(etcd: EtcdServer) -> None:
    """Without ``must_connect`` (data planes) a failed startup is not fatal, as in APISIX."""
    etcd.put("/apisix/routes/1", {"uri": "/one"})
    etcd.stop()
    snapshots: list[Snapshot] = []
    store = EtcdStore(
        {"host": [etcd.endpoint], "timeout": 1, "startup_retry": 1, "resync_delay": 0.05},
        read_only=True,
    )
    try:
        await store.start(snapshots.append)
        assert snapshots[-1].version == "etcd:0"
        etcd.start()
        deadline = time.monotonic() + 10
        while snapshots[-1].get("routes", "1") is None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    finally:
        await store.stop()


def test_gateway_refuses_to_start_without_etcd(tmp_path: Path) -> None:
    dead = dead_url()
    gw = GatewayProcess(tmp_path / "gw", {"deployment": {
        "role": "traditional", "role_traditional": {"config_provider": "etcd"},
        "etcd": {"host": [dead], "timeout": 1, "startup_retry": 2, "resync_delay": 0.1},
        "admin": {"admin_listen": {"ip": "127.0.0.1", "port": free_port()},
                  "admin_key": [{"name": "admin", "key": "k" * 32, "role": "admin"}]},
    }})  # fmt: skip
    gw.start_background()
    try:
        assert gw.proc is not None
        code = wait_until(lambda: gw.proc.poll() if gw.proc else None, timeout=20)
        assert code == 1
    finally:
        gw.stop()
    logs = gw.logs()
    assert "cannot start: all etcd nodes are unavailable" in logs, logs
    assert "failed 2 time(s) (deployment.etcd.startup_retry)" in logs and dead in logs
