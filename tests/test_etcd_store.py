"""EtcdStore / EtcdClient against a REAL etcd (tests/support/etcd.py; never skipped)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import statistics
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from kernel.store.base import Problem, Snapshot
from kernel.store.etcd import EtcdStore
from kernel.store.etcd_client import Compacted, EtcdClient
from kernel.store.resources import RevisionConflict, StoreUnavailable
from tests.support.etcd import EtcdServer

FAST = {"resync_delay": 0.05, "timeout": 3, "watch_timeout": 5}
LOGGER = "sixgate.store.etcd"


def validate(snapshot: Snapshot) -> list[Problem]:
    """A tiny kernel stand-in: a route's uri must be a string starting with '/'."""
    problems = []
    for i, route in enumerate(snapshot.items("routes")):
        uri = route.get("uri")
        if not isinstance(uri, str) or not uri.startswith("/"):
            problems.append(Problem("", None, f"routes[{i}].uri", "must start with /"))
    return problems


class Watcher:
    """Collects the snapshots a store delivers."""

    def __init__(self) -> None:
        self.snapshots: list[Snapshot] = []
        self._cond: asyncio.Condition | None = None

    def __call__(self, snapshot: Snapshot) -> None:
        self.snapshots.append(snapshot)
        if self._cond is not None:
            cond = self._cond

            async def wake() -> None:
                async with cond:
                    cond.notify_all()

            asyncio.get_running_loop().create_task(wake())

    @property
    def last(self) -> Snapshot:
        return self.snapshots[-1]

    async def wait(self, pred: Callable[[Snapshot], bool], timeout: float = 5.0) -> Snapshot:
        if self._cond is None:
            self._cond = asyncio.Condition()
        deadline = time.monotonic() + timeout
        while True:
            if self.snapshots and pred(self.snapshots[-1]):
                return self.snapshots[-1]
            left = deadline - time.monotonic()
            if left <= 0:
                last = self.snapshots[-1] if self.snapshots else None
                raise AssertionError(f"condition not met within {timeout}s; last: {last}")
            async with self._cond:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(left, 0.05)):
                        await self._cond.wait()


def ids(snapshot: Snapshot, collection: str) -> list[str]:
    return [str(item["id"]) for item in snapshot.items(collection)]


def route(snapshot: Snapshot, rid: str) -> dict[str, Any] | None:
    return snapshot.get("routes", rid)


def has_route(rid: str) -> Callable[[Snapshot], bool]:
    return lambda s: route(s, rid) is not None


@pytest.fixture
async def make(etcd: EtcdServer) -> AsyncIterator[Callable[..., EtcdStore]]:
    stores: list[EtcdStore] = []

    def factory(**kw: Any) -> EtcdStore:
        conf = {"host": [etcd.endpoint], **FAST, **kw.pop("conf", {})}
        store = EtcdStore(conf, kw.pop("validate", validate), **kw)
        stores.append(store)
        return store

    yield factory
    for store in stores:
        await store.stop()


async def started(store: EtcdStore) -> Watcher:
    w = Watcher()
    await store.start(w)
    return w


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# -- read side ---------------------------------------------------------------------------------


async def test_snapshot_from_existing_keys(etcd: EtcdServer, make: Any) -> None:
    etcd.put("/apisix/routes/", "init_dir")
    etcd.put("/apisix/routes/1", {"id": "wrong", "uri": "/hello", "upstream_id": "u1"})
    etcd.put("/apisix/routes/2", {"uri": "/two"})
    etcd.put("/apisix/upstreams/u1", {"nodes": {"127.0.0.1:1980": 1}, "type": "roundrobin"})
    etcd.put("/apisix/consumers/jack", {"username": "jack"})
    etcd.put("/apisix/consumers/jack/credentials/c1", {"plugins": {"key-auth": {"key": "k"}}})
    etcd.put("/apisix/plugin_metadata/file-logger", {"log_format": {"h": "$host"}})
    etcd.put("/apisix/secrets/vault/1", {"uri": "http://v"})
    etcd.put("/apisix/plugins", [{"name": "key-auth"}, {"name": "mqtt-proxy", "stream": True}])
    rev = etcd.put("/apisix/gen_id", "0")
    etcd.put("/other/routes/9", {"uri": "/not-ours"})

    store = make()
    w = await started(store)
    snap = w.last
    assert snap.version == f"etcd:{rev + 1}"
    assert ids(snap, "routes") == ["1", "2"]
    assert route(snap, "1") == {"id": "1", "uri": "/hello", "upstream_id": "u1"}
    assert ids(snap, "upstreams") == ["u1"]
    assert ids(snap, "consumers") == ["jack", "jack/credentials/c1"]
    assert snap.get("consumers", "jack") is not None
    assert ids(snap, "plugin_metadata") == ["file-logger"]
    assert ids(snap, "secrets") == ["vault/1"]
    assert snap.plugins == ("key-auth",)
    assert store.current() is snap
    assert store.check() == []


async def test_put_appears_through_watch_fast(make: Any) -> None:
    writer, reader = make(), make()
    w = await started(reader)
    await writer.put("/apisix/routes/warm", {"uri": "/warm"})
    await w.wait(lambda s: route(s, "warm") is not None)
    latencies = []
    for i in range(50):
        t0 = time.perf_counter()
        await writer.put(f"/apisix/routes/r{i}", {"uri": f"/r{i}"})
        await w.wait(has_route(f"r{i}"), timeout=2)
        latencies.append(time.perf_counter() - t0)
    latencies.sort()
    median, p99 = statistics.median(latencies), latencies[int(len(latencies) * 0.99) - 1]
    print(f"put->snapshot latency: median {median * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms")
    assert max(latencies) < 0.1, latencies
    assert await writer.delete("/apisix/routes/r0")
    await w.wait(lambda s: route(s, "r0") is None)
    assert w.last.version == f"etcd:{reader.revision}"


async def test_burst_coalesced_into_few_snapshots(make: Any) -> None:
    writer, reader = make(), make()
    w = await started(reader)
    before = len(w.snapshots)
    await asyncio.gather(*(writer.put(f"/apisix/routes/b{i}", {"uri": "/b"}) for i in range(40)))
    await w.wait(lambda s: len(s.items("routes")) == 40)
    assert len(w.snapshots) - before <= 40
    # every intermediate snapshot is complete up to its revision (no partial batch)
    assert all(s.version.startswith("etcd:") for s in w.snapshots)


async def test_two_stores_see_each_other(make: Any) -> None:
    a, b = make(), make()
    wa, wb = await started(a), await started(b)
    await a.put("/apisix/routes/from-a", {"uri": "/a"})
    await b.put("/apisix/upstreams/from-b", {"nodes": {}})
    await wb.wait(lambda s: route(s, "from-a") is not None)
    await wa.wait(lambda s: s.get("upstreams", "from-b") is not None)
    await b.delete("/apisix/routes/from-a")
    await wa.wait(lambda s: route(s, "from-a") is None)


async def test_restart_mid_watch_loses_nothing(
    etcd: EtcdServer, make: Any, caplog: pytest.LogCaptureFixture
) -> None:
    statuses: list[bool] = []
    reader = make(on_status=statuses.append)
    w = await started(reader)
    for i in range(20):  # written just before the kill: acknowledged, so durable
        etcd.put(f"/apisix/routes/pre{i}", {"uri": f"/pre{i}"})
    etcd.kill()
    await asyncio.sleep(0.3)
    served = reader.current()
    assert served is not None  # keeps serving the last snapshot while etcd is down
    etcd.start()
    writer = make()  # the other side writes as soon as etcd is back, maybe before we resume
    await writer.put("/apisix/routes/after", {"uri": "/after"})
    for i in range(20):
        await writer.put(f"/apisix/routes/post{i}", {"uri": f"/post{i}"})
    snap = await w.wait(lambda s: len(s.items("routes")) == 41, timeout=10)
    assert {f"pre{i}" for i in range(20)} <= set(ids(snap, "routes"))
    assert route(snap, "after") is not None
    # a SIGTERM restart too, with a write while our watcher is still backing off
    etcd.stop()
    await asyncio.sleep(0.2)
    etcd.start()
    await writer.put("/apisix/routes/late", {"uri": "/late"})
    await w.wait(lambda s: route(s, "late") is not None, timeout=10)
    assert False in statuses and statuses[-1] is True


async def test_compaction_past_watch_revision_rereads(
    etcd: EtcdServer, make: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    etcd.put("/apisix/routes/keep", {"uri": "/keep"})
    etcd.put("/apisix/routes/gone", {"uri": "/gone"})
    reader = make()
    w = await started(reader)
    # freeze the watcher (as if partitioned), change things, compact past its revision
    task = reader._task
    assert task is not None
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    etcd.delete("/apisix/routes/gone")
    etcd.put("/apisix/routes/new", {"uri": "/new"})
    etcd.put("/apisix/routes/keep", {"uri": "/keep2"})
    rev = etcd.put("/apisix/gen_id", "0")
    etcd.compact(rev)
    reader._task = asyncio.create_task(reader._watch_loop())
    snap = await w.wait(lambda s: route(s, "new") is not None)
    assert sorted(ids(snap, "routes")) == ["keep", "new"]
    assert route(snap, "keep") == {"id": "keep", "uri": "/keep2"}
    assert any("compact" in r.getMessage() for r in caplog.records)
    # and the watch carries on from the re-read revision
    etcd.put("/apisix/routes/later", {"uri": "/later"})
    await w.wait(lambda s: route(s, "later") is not None)


async def test_client_compacted_error(etcd: EtcdServer) -> None:
    client = EtcdClient([etcd.endpoint], timeout=3)
    try:
        for i in range(3):
            await client.put(f"/c/{i}", "x")
        rev = await client.put("/c/last", "x")
        await client.compact(rev)
        with pytest.raises(Compacted) as info:
            async for _ in client.watch("/c/", start_revision=2, watch_timeout=3):
                pass
        assert info.value.compact_revision == rev
    finally:
        await client.close()


async def test_fresh_etcd_revision_backwards_rereads(etcd: EtcdServer, make: Any) -> None:
    for i in range(10):
        etcd.put(f"/apisix/routes/old{i}", {"uri": "/old"})
    reader = make()
    w = await started(reader)
    etcd.stop()
    shutil.rmtree(etcd.base / "data")  # etcd comes back empty, at revision 1
    etcd.start()
    etcd.put("/apisix/routes/fresh", {"uri": "/fresh"})
    snap = await w.wait(lambda s: ids(s, "routes") == ["fresh"], timeout=10)
    assert snap.version == "etcd:2"


async def test_watch_timeout_reissues(etcd: EtcdServer, make: Any) -> None:
    reader = make(conf={"watch_timeout": 0.2})
    w = await started(reader)
    await asyncio.sleep(0.7)  # several watch timeouts in a row
    etcd.put("/apisix/routes/x", {"uri": "/x"})
    await w.wait(lambda s: route(s, "x") is not None)


async def test_invalid_item_kept_at_previous_value(
    etcd: EtcdServer, make: Any, caplog: pytest.LogCaptureFixture
) -> None:
    etcd.put("/apisix/routes/1", {"uri": "/good"})
    etcd.put("/apisix/routes/bad-at-start", {"uri": "nope"})
    etcd.put("/apisix/routes/notjson", "{oops")
    reader = make()
    w = await started(reader)
    assert ids(w.last, "routes") == ["1"]
    assert any("etcd /apisix/routes/bad-at-start: uri: must start with /" in m
               for m in errors(caplog))  # fmt: skip
    assert any("etcd /apisix/routes/notjson: invalid JSON" in m for m in errors(caplog))
    caplog.clear()
    count = len(w.snapshots)
    etcd.put("/apisix/routes/1", {"uri": "broken"})
    etcd.put("/apisix/routes/2", {"uri": "also-broken"})
    await asyncio.sleep(0.3)
    assert len(w.snapshots) == count  # nothing effective changed: no new snapshot
    assert route(w.last, "1") == {"id": "1", "uri": "/good"}
    assert any("etcd /apisix/routes/1: uri: must start with /" in m for m in errors(caplog))
    assert any("etcd /apisix/routes/2: uri: must start with /" in m for m in errors(caplog))
    etcd.put("/apisix/routes/3", {"uri": "/three"})  # the rest still applies
    snap = await w.wait(lambda s: route(s, "3") is not None)
    assert route(snap, "1") == {"id": "1", "uri": "/good"} and route(snap, "2") is None
    etcd.put("/apisix/routes/1", {"uri": "/fixed"})
    await w.wait(lambda s: (route(s, "1") or {}).get("uri") == "/fixed")
    problems = sorted(str(p) for p in reader.check())
    assert problems[:2] == [
        "etcd /apisix/routes/2: uri: must start with /",
        "etcd /apisix/routes/bad-at-start: uri: must start with /",
    ]
    assert problems[2].startswith("etcd /apisix/routes/notjson: invalid JSON value")
    assert len(problems) == 3


# -- auth, endpoints ---------------------------------------------------------------------------


async def test_auth_user_password_and_token_expiry(etcd: EtcdServer, make: Any) -> None:
    etcd.enable_auth("root", "rootpw")
    anonymous = make()
    with pytest.raises(StoreUnavailable, match="user name is empty"):
        await anonymous.get("/apisix/routes/1")
    wrong = make(conf={"user": "root", "password": "nope"})
    with pytest.raises(StoreUnavailable, match="authentication failed"):
        await wrong.get("/apisix/routes/1")
    store = make(conf={"user": "root", "password": "rootpw"})
    w = await started(store)
    await store.put("/apisix/routes/a", {"uri": "/a"})
    await w.wait(lambda s: route(s, "a") is not None)
    await asyncio.sleep(etcd.token_ttl + 1.5)  # the simple token expires when idle
    await store.put("/apisix/routes/b", {"uri": "/b"})  # 401 -> re-authenticate -> retry
    await w.wait(lambda s: route(s, "b") is not None)
    # restart: tokens vanish, the watch must re-authenticate and resume
    etcd.restart()
    await store.put("/apisix/routes/c", {"uri": "/c"})
    await w.wait(lambda s: route(s, "c") is not None, timeout=10)


async def test_several_endpoints_first_dead(etcd: EtcdServer, make: Any) -> None:
    dead = "http://127.0.0.1:1"
    store = make(conf={"host": [dead, etcd.endpoint]})
    w = await started(store)
    await store.put("/apisix/routes/x", {"uri": "/x"})
    await w.wait(lambda s: route(s, "x") is not None)
    assert store.client.endpoints[store.client._good] == etcd.endpoint
    all_dead = make(conf={"host": [dead, "http://127.0.0.1:2"]})
    with pytest.raises(StoreUnavailable, match=r"127\.0\.0\.1:1.*127\.0\.0\.1:2"):
        await all_dead.get("/apisix/routes/x")


async def test_start_while_etcd_down_then_up(etcd: EtcdServer, make: Any) -> None:
    etcd.put("/apisix/routes/x", {"uri": "/x"})
    etcd.stop()
    store = make()
    w = await started(store)
    assert w.last.version == "etcd:0" and ids(w.last, "routes") == []
    etcd.start()
    await w.wait(lambda s: route(s, "x") is not None, timeout=10)


# -- write side --------------------------------------------------------------------------------


async def test_cas_conflicts(make: Any) -> None:
    store = make()
    e1 = await store.put("/apisix/routes/1", {"uri": "/v1"}, prev_revision=0)
    assert e1.create_revision == e1.mod_revision and e1.value == {"uri": "/v1"}
    with pytest.raises(RevisionConflict):
        await store.put("/apisix/routes/1", {"uri": "/again"}, prev_revision=0)
    e2 = await store.put("/apisix/routes/1", {"uri": "/v2"}, prev_revision=e1.mod_revision)
    assert e2.create_revision == e1.create_revision and e2.mod_revision > e1.mod_revision
    with pytest.raises(RevisionConflict):
        await store.put("/apisix/routes/1", {"uri": "/stale"}, prev_revision=e1.mod_revision)
    with pytest.raises(RevisionConflict):
        await store.put("/apisix/routes/missing", {"uri": "/x"}, prev_revision=5)
    with pytest.raises(RevisionConflict):
        await store.delete("/apisix/routes/1", prev_revision=e1.mod_revision)
    assert (await store.get("/apisix/routes/1")) == e2
    assert await store.delete("/apisix/routes/1", prev_revision=e2.mod_revision)
    assert await store.get("/apisix/routes/1") is None
    assert not await store.delete("/apisix/routes/1")


async def test_list_get_delete_prefix(etcd: EtcdServer, make: Any) -> None:
    store = make()
    etcd.put("/apisix/consumers/", "init_dir")
    await store.put("/apisix/consumers/zed", {"username": "zed"})
    await store.put("/apisix/consumers/amy", {"username": "amy"})
    await store.put("/apisix/consumers/zed/credentials/c1", {"plugins": {}})
    await store.put("/apisix/consumers/zed", {"username": "zed", "desc": "updated"})
    listed = await store.list("/apisix/consumers/")
    assert [e.key for e in listed] == [
        "/apisix/consumers/zed",
        "/apisix/consumers/amy",
        "/apisix/consumers/zed/credentials/c1",
    ]
    assert listed[0].value == {"username": "zed", "desc": "updated"}
    assert await store.delete_prefix("/apisix/consumers/zed/credentials/") == 1
    assert len(await store.list("/apisix/consumers")) == 2


async def test_ttl_expiry(make: Any) -> None:
    store, reader = make(), make()
    w = await started(reader)
    await store.put("/apisix/routes/tmp", {"uri": "/tmp"}, ttl=1)
    await w.wait(lambda s: route(s, "tmp") is not None)
    assert await store.get("/apisix/routes/tmp") is not None
    await w.wait(lambda s: route(s, "tmp") is None, timeout=6)
    assert await store.get("/apisix/routes/tmp") is None


async def test_next_id_monotonic_20_digits(make: Any) -> None:
    store = make()
    got = [await store.next_id() for _ in range(5)]
    assert all(len(i) == 20 and i.isdigit() for i in got)
    assert got == sorted(got) and len(set(got)) == 5


async def test_read_only_refuses_writes(etcd: EtcdServer, make: Any) -> None:
    etcd.put("/apisix/routes/1", {"uri": "/one"})
    store = make(read_only=True)
    w = await started(store)
    assert route(w.last, "1") is not None
    assert (await store.get("/apisix/routes/1")) is not None
    message = "Data plane role should not write to etcd"
    for call in (
        store.put("/apisix/routes/2", {"uri": "/two"}),
        store.delete("/apisix/routes/1"),
        store.delete_prefix("/apisix/routes/"),
        store.next_id(),
    ):
        with pytest.raises(StoreUnavailable, match=message):
            await call
    assert (await store.get("/apisix/routes/1")) is not None


# -- TLS -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mtls", [False, True], ids=["tls", "mtls"])
async def test_tls(mtls: bool) -> None:
    server = EtcdServer(tls=True, client_cert_auth=mtls).start()
    stores: list[EtcdStore] = []
    try:
        tls = {"cert": server.client_cert, "key": server.client_key} if mtls else {}
        conf = {"host": [server.endpoint], **FAST, "tls": tls}
        store = EtcdStore(conf, validate, ssl_trusted_certificate=server.ca_file)
        stores.append(store)
        w = await started(store)
        await store.put("/apisix/routes/s", {"uri": "/secure"})
        await w.wait(lambda s: route(s, "s") is not None)
        untrusted = EtcdStore(conf, validate)  # system CAs do not know our test CA
        stores.append(untrusted)
        with pytest.raises(StoreUnavailable, match=r"CERTIFICATE_VERIFY_FAILED|certificate"):
            await untrusted.get("/apisix/routes/s")
        no_verify = EtcdStore({**conf, "tls": {**tls, "verify": False}}, validate)
        stores.append(no_verify)
        assert await no_verify.get("/apisix/routes/s") is not None
    finally:
        for s in stores:
            await s.stop()
        server.cleanup()


# -- backlog -------------------------------------------------------------------------------------


async def test_kill_during_catch_up_loses_nothing(etcd: EtcdServer, make: Any) -> None:
    reader, writer = make(), make()
    w = await started(reader)
    task = reader._task
    assert task is not None
    task.cancel()  # the watcher falls behind ...
    await asyncio.gather(task, return_exceptions=True)
    start_rev = reader.revision
    sem = asyncio.Semaphore(64)

    async def put(i: int) -> None:
        async with sem:
            await writer.put(f"/apisix/routes/k{i}", {"uri": f"/k{i}"})

    await asyncio.gather(*(put(i) for i in range(2000)))
    reader._task = asyncio.create_task(reader._watch_loop())  # ... and catches up
    while reader.revision == start_rev:
        await asyncio.sleep(0.0005)
    etcd.kill()  # SIGKILL in the middle of the catch-up (if it is not already over)
    caught = reader.revision - start_rev
    etcd.start()
    snap = await w.wait(lambda s: len(s.items("routes")) == 2000, timeout=15)
    assert len(set(ids(snap, "routes"))) == 2000
    print(f"killed after {caught} of 2000 catch-up events")
