"""Shared fixtures: real upstream servers and a real gateway process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.etcd import EtcdServer
from tests.support.gateway import GatewayProcess
from tests.support.redis import RedisServer
from tests.support.upstream import Upstream


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    up = Upstream().start()
    yield up
    up.stop()


@pytest.fixture
def upstream2() -> Iterator[Upstream]:
    up = Upstream().start()
    yield up
    up.stop()


@pytest.fixture
def etcd() -> Iterator[EtcdServer]:
    """A real etcd of its own on free loopback ports (Debian's etcd-server)."""
    server = EtcdServer().start()
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server of its own on a free loopback port (the limit plugins' redis
    policy)."""
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[object]:
    started: list[GatewayProcess] = []

    def make(doc: dict | str | None = None, config: dict | None = None) -> GatewayProcess:
        gw = GatewayProcess(tmp_path / f"gw{len(started)}", config)
        started.append(gw)
        return gw.start(doc if doc is not None else {"routes": []})

    yield make
    for gw in started:
        gw.stop()


@pytest.fixture(scope="module")
def shared_upstreams() -> Iterator[tuple[Upstream, Upstream]]:
    a, b = Upstream().start(), Upstream().start()
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """One gateway per test module; tests call ``gw.apply(doc)`` to change its routes."""
    g = GatewayProcess(tmp_path_factory.mktemp("gw"))
    g.start({"routes": []})
    yield g
    g.stop()
