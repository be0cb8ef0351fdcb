"""kernel.upstream.resolver: cached async DNS and node resolution (spec §5.2).

Lookups are real (``localhost``); the loop's ``getaddrinfo`` is wrapped only to count calls (and,
for the error cases, to fail).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from kernel.upstream import resolver as resolver_mod
from kernel.upstream.nodes import normalize_nodes
from kernel.upstream.resolver import ResolveError, Resolver, resolve_nodes


class Counter:
    """Wraps the running loop's getaddrinfo: counts calls, can delay or fail them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.loop = asyncio.get_running_loop()
        self.real = self.loop.getaddrinfo
        self.calls: list[str] = []
        self.gate: asyncio.Event | None = None
        self.fail = False
        monkeypatch.setattr(self.loop, "getaddrinfo", self)

    async def __call__(self, host: str, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(host)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return await self.real(host, *args, **kwargs)


class Clock:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 1000.0
        monkeypatch.setattr(resolver_mod, "_clock", lambda: self.now)


async def settle(r: Resolver) -> None:
    """Let background refreshes finish."""
    for _ in range(500):
        await asyncio.sleep(0.002)
        if not r._inflight:
            return
    raise AssertionError("refresh did not finish")


async def test_resolve_localhost() -> None:
    addrs = await Resolver().resolve("localhost")
    assert addrs[0] == "127.0.0.1"  # IPv4 answers first


async def test_ip_literal_needs_no_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    counter = Counter(monkeypatch)
    r = Resolver()
    assert await r.resolve("10.1.2.3") == ["10.1.2.3"]
    assert await r.resolve("::1") == ["::1"]
    assert counter.calls == []


async def test_cached_within_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    counter = Counter(monkeypatch)
    clock = Clock(monkeypatch)
    r = Resolver(30)
    first = await r.resolve("localhost")
    clock.now += 29
    assert await r.resolve("localhost") is first
    assert counter.calls == ["localhost"]


async def test_concurrent_lookups_coalesced(monkeypatch: pytest.MonkeyPatch) -> None:
    counter = Counter(monkeypatch)
    counter.gate = asyncio.Event()
    r = Resolver()
    waiters = [asyncio.ensure_future(r.resolve("localhost")) for _ in range(10)]
    await asyncio.sleep(0.01)
    counter.gate.set()
    results = await asyncio.gather(*waiters)
    assert counter.calls == ["localhost"]
    assert all(res is results[0] for res in results)


async def test_stale_served_while_refreshing(monkeypatch: pytest.MonkeyPatch) -> None:
    counter = Counter(monkeypatch)
    clock = Clock(monkeypatch)
    r = Resolver(30)
    first = await r.resolve("localhost")
    clock.now += 31  # expired, within max_stale
    counter.gate = asyncio.Event()
    # answered at once from the stale entry; one refresh starts in the background
    assert await asyncio.wait_for(r.resolve("localhost"), 0.5) is first
    assert await asyncio.wait_for(r.resolve("localhost"), 0.5) is first
    await asyncio.sleep(0.01)
    assert counter.calls == ["localhost", "localhost"]
    counter.gate.set()
    await settle(r)
    refreshed = await r.resolve("localhost")
    assert refreshed is not first and refreshed == first
    assert len(counter.calls) == 2


async def test_too_stale_is_looked_up_again(monkeypatch: pytest.MonkeyPatch) -> None:
    counter = Counter(monkeypatch)
    clock = Clock(monkeypatch)
    r = Resolver(30, max_stale=10)
    await r.resolve("localhost")
    clock.now += 41  # past TTL + max_stale: foreground lookup
    counter.fail = True
    with pytest.raises(ResolveError):
        await r.resolve("localhost")
    assert len(counter.calls) == 2


async def test_errors_raise_resolve_error(monkeypatch: pytest.MonkeyPatch) -> None:
    counter = Counter(monkeypatch)
    counter.fail = True
    r = Resolver()
    with pytest.raises(ResolveError) as info:
        await r.resolve("backend.example")
    assert info.value.host == "backend.example"
    # failures are not cached
    with pytest.raises(ResolveError):
        await r.resolve("backend.example")
    assert counter.calls == ["backend.example", "backend.example"]


async def test_failed_refresh_keeps_stale_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    counter = Counter(monkeypatch)
    clock = Clock(monkeypatch)
    r = Resolver(30)
    first = await r.resolve("localhost")
    clock.now += 31
    counter.fail = True
    assert await r.resolve("localhost") is first
    await settle(r)
    assert len(counter.calls) == 2
    # no refresh storm: the next attempt waits a moment
    assert await r.resolve("localhost") is first
    await settle(r)
    assert len(counter.calls) == 2
    clock.now += 2
    counter.fail = False
    assert await r.resolve("localhost") is first
    await settle(r)
    assert len(counter.calls) == 3
    assert await r.resolve("localhost") is not first  # refreshed


async def test_cancelled_waiter_does_not_cancel_shared_lookup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counter = Counter(monkeypatch)
    counter.gate = asyncio.Event()
    r = Resolver()
    a = asyncio.ensure_future(r.resolve("localhost"))
    b = asyncio.ensure_future(r.resolve("localhost"))
    await asyncio.sleep(0.01)
    a.cancel()
    counter.gate.set()
    assert (await b)[0] == "127.0.0.1"
    assert counter.calls == ["localhost"]


async def test_resolve_nodes_fast_path() -> None:
    nodes = normalize_nodes({"127.0.0.1:1980": 1, "[::1]:1981": 2})
    assert await resolve_nodes(nodes, Resolver()) is nodes


async def test_resolve_nodes_replaces_names(monkeypatch: pytest.MonkeyPatch) -> None:
    counter = Counter(monkeypatch)
    nodes = normalize_nodes(
        [
            {"host": "localhost", "port": 1980, "weight": 3, "priority": 2, "metadata": {"a": 1}},
            {"host": "127.0.0.9", "port": 1981, "weight": 1},
        ]
    )
    r = Resolver()
    out = await resolve_nodes(nodes, r)
    assert len(out) == 2
    named, literal = out
    assert (named.host, named.port, named.weight, named.priority) == ("127.0.0.1", 1980, 3, 2)
    assert named.domain == "localhost"
    assert named.metadata == {"a": 1}
    assert named.addr == "127.0.0.1:1980"
    assert literal is nodes[1]
    # same input, same answers: the very same list and nodes (pickers and counters survive)
    again = await resolve_nodes(nodes, r)
    assert again is out
    assert counter.calls == ["localhost"]


async def test_resolve_nodes_expand(monkeypatch: pytest.MonkeyPatch) -> None:
    nodes = normalize_nodes({"localhost:80": 2})
    r = Resolver()
    addrs = await r.resolve("localhost")
    out = await resolve_nodes(nodes, r, expand=True)
    assert [n.host for n in out] == addrs
    assert all(n.weight == 2 and n.domain == "localhost" for n in out)


async def test_resolve_nodes_error(monkeypatch: pytest.MonkeyPatch) -> None:
    counter = Counter(monkeypatch)
    counter.fail = True
    with pytest.raises(ResolveError):
        await resolve_nodes(normalize_nodes({"backend.example:80": 1}), Resolver())
