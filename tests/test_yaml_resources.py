"""YamlResourceStore: keyed documents with revisions on a real apisix.yaml and YamlFileStore."""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from kernel.store.base import ConfigRejected, Problem, Snapshot
from kernel.store.resources import RevisionConflict, StoreUnavailable
from kernel.store.yaml_file import YamlFileStore
from kernel.store.yaml_resources import SIDECAR_SUFFIX, YamlResourceStore

ROUTE = {"uri": "/hello", "upstream": {"type": "roundrobin", "nodes": {"127.0.0.1:1980": 1}}}


def route(rid: Any, uri: str = "/hello", **extra: Any) -> dict[str, Any]:
    return {**ROUTE, "id": rid, "uri": uri, "create_time": 1700000000, "update_time": 1700000000,
            **extra}  # fmt: skip


async def wait_until(cond: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def load(path: Path) -> dict[str, Any]:
    text = path.read_text()
    assert text.endswith("#END\n")
    doc = yaml.safe_load(text)
    assert isinstance(doc, dict)
    return doc


def file_check(path: Path) -> list[Problem]:
    """The file still loads through the normal read path."""
    return YamlFileStore(path, env={}).check()


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    (tmp_path / "conf").mkdir()
    return tmp_path / "conf" / "apisix.yaml"


@pytest.fixture
async def opened() -> AsyncIterator[list[tuple[YamlFileStore, YamlResourceStore]]]:
    created: list[tuple[YamlFileStore, YamlResourceStore]] = []
    yield created
    for files, resources in created:
        await resources.stop()
        await files.stop()


@pytest.fixture
def make(
    opened: list[tuple[YamlFileStore, YamlResourceStore]],
) -> Callable[..., Any]:
    async def start(path: Path, **kw: Any) -> YamlResourceStore:
        sweep = kw.pop("sweep_interval", 1.0)
        kw.setdefault("env", {})
        kw.setdefault("poll_interval", 0.1)
        kw.setdefault("debounce", 0.01)
        files = YamlFileStore(path, **kw)
        await files.start(lambda snapshot: None)
        resources = YamlResourceStore(files, sweep_interval=sweep)
        opened.append((files, resources))
        return resources

    return start


# -- round trips ---------------------------------------------------------------------------


async def test_put_get_list_delete_round_trip(conf: Path, make: Any) -> None:
    store = await make(conf)
    created = await store.put("/apisix/routes/1", route("1"))
    assert created.key == "/apisix/routes/1"
    assert created.value == route("1")
    assert created.create_revision == created.mod_revision > 0

    got = await store.get("/apisix/routes/1")
    assert got == created
    doc = load(conf)
    assert doc["routes"] == [route("1")]
    assert file_check(conf) == []

    listed = await store.list("/apisix/routes/")
    assert [e.key for e in listed] == ["/apisix/routes/1"]

    assert await store.delete("/apisix/routes/1") is True
    assert await store.get("/apisix/routes/1") is None
    assert await store.delete("/apisix/routes/1") is False
    assert load(conf)["routes"] == []
    assert file_check(conf) == []
    assert await store.list("/apisix/routes/") == []


async def test_value_stored_exactly_integer_id(conf: Path, make: Any) -> None:
    store = await make(conf)
    await store.put("/apisix/routes/2", route(2))
    assert load(conf)["routes"][0]["id"] == 2  # the file keeps the integer
    got = await store.get("/apisix/routes/2")
    assert got is not None and got.value["id"] == 2 and got.value == route(2)
    # a value without id, or with another id, still reads back as given
    await store.put("/apisix/upstreams/u1", {"type": "roundrobin", "nodes": {"1.1.1.1:80": 1}})
    up = await store.get("/apisix/upstreams/u1")
    assert up is not None and "id" not in up.value
    assert load(conf)["upstreams"][0]["id"] == "u1"


async def test_revisions_increase_and_survive_restart(conf: Path, make: Any) -> None:
    store = await make(conf)
    a = await store.put("/apisix/routes/a", route("a", "/a"))
    b = await store.put("/apisix/routes/b", route("b", "/b"))
    a2 = await store.put("/apisix/routes/a", route("a", "/a2"))
    assert a.mod_revision < b.mod_revision < a2.mod_revision
    assert a2.create_revision == a.create_revision
    listed = await store.list("/apisix/routes/")
    assert [e.key for e in listed] == ["/apisix/routes/a", "/apisix/routes/b"]  # by create rev

    again = await make(conf)  # new objects on the same files
    got = await again.get("/apisix/routes/a")
    assert got is not None
    assert (got.create_revision, got.mod_revision) == (a.create_revision, a2.mod_revision)
    assert got.value["uri"] == "/a2"
    c = await again.put("/apisix/routes/c", route("c", "/c"))
    assert c.mod_revision > a2.mod_revision
    assert (conf.parent / ("apisix.yaml" + SIDECAR_SUFFIX)).exists()


async def test_compare_and_swap(conf: Path, make: Any) -> None:
    store = await make(conf)
    first = await store.put("/apisix/routes/1", route("1"), prev_revision=0)  # create-if-absent
    with pytest.raises(RevisionConflict):
        await store.put("/apisix/routes/1", route("1", "/x"), prev_revision=0)
    with pytest.raises(RevisionConflict):
        await store.put("/apisix/routes/1", route("1", "/x"), prev_revision=first.mod_revision + 9)
    with pytest.raises(RevisionConflict):
        await store.put("/apisix/routes/9", route("9"), prev_revision=first.mod_revision)
    assert load(conf)["routes"] == [route("1")]  # nothing written by the failures
    second = await store.put("/apisix/routes/1", route("1", "/y"), prev_revision=first.mod_revision)
    assert second.mod_revision > first.mod_revision
    with pytest.raises(RevisionConflict):
        await store.delete("/apisix/routes/1", prev_revision=first.mod_revision)
    assert await store.get("/apisix/routes/1") is not None
    assert await store.delete("/apisix/routes/1", prev_revision=second.mod_revision) is True


async def test_cas_refuses_a_hand_edit_made_after_the_read(conf: Path, make: Any) -> None:
    store = await make(conf)
    seen = await store.put("/apisix/routes/1", route("1"))
    text = conf.read_text().replace("/hello", "/by-hand")
    conf.write_text(text)  # not yet seen by anyone
    with pytest.raises(RevisionConflict):
        await store.put("/apisix/routes/1", route("1", "/mine"), prev_revision=seen.mod_revision)
    assert "/by-hand" in conf.read_text()


async def test_ttl_expiry(conf: Path, make: Any) -> None:
    store = await make(conf)
    await store.put("/apisix/routes/t", route("t"), ttl=0.3)
    await store.put("/apisix/routes/keep", route("keep", "/keep"))
    assert await store.get("/apisix/routes/t") is not None
    await asyncio.sleep(0.45)
    assert await store.get("/apisix/routes/t") is None
    assert [e.key for e in await store.list("/apisix/routes/")] == ["/apisix/routes/keep"]
    assert [r["id"] for r in load(conf)["routes"]] == ["t", "keep"]  # still in the file ...
    await store.put("/apisix/upstreams/1", {"type": "roundrobin", "nodes": {"1.1.1.1:80": 1}})
    assert [r["id"] for r in load(conf)["routes"]] == ["keep"]  # ... until the next write
    # a put without ttl clears the lease
    await store.put("/apisix/routes/t", route("t"), ttl=0.2)
    await store.put("/apisix/routes/t", route("t"))
    await asyncio.sleep(0.3)
    assert await store.get("/apisix/routes/t") is not None


async def test_ttl_sweeper(conf: Path, make: Any) -> None:
    store = await make(conf, sweep_interval=0.05)
    store.start_sweeper()
    await store.put("/apisix/routes/t", route("t"), ttl=0.2)
    await store.put("/apisix/plugins", [{"name": "x"}], ttl=0.2)
    assert "routes" in load(conf) and load(conf)["routes"]
    await wait_until(lambda: not load(conf).get("routes"), timeout=3.0)
    assert await store.get("/apisix/plugins") is None
    assert file_check(conf) == []
    await store.stop()
    await store.stop()  # idempotent


async def test_next_id(conf: Path, make: Any) -> None:
    store = await make(conf)
    ids = [await store.next_id() for _ in range(3)]
    put = await store.put("/apisix/routes/1", route("1"))
    ids.append(await store.next_id())
    assert all(len(i) == 20 and i.isdigit() for i in ids)
    numbers = [int(i) for i in ids]
    assert numbers == sorted(numbers) and len(set(numbers)) == 4
    assert numbers[2] < put.mod_revision < numbers[3]  # one store-wide counter
    other = await make(conf)
    assert int(await other.next_id()) > numbers[3]  # persisted


# -- concurrency ---------------------------------------------------------------------------


def _writer_process(path: str, worker: int, count: int) -> None:
    async def main() -> None:
        store = YamlResourceStore(YamlFileStore(Path(path), None, {}))
        for i in range(count):
            await store.put(f"/apisix/routes/w{worker}-{i}", route(f"w{worker}-{i}", f"/{i}"))

    asyncio.run(main())


async def test_concurrent_puts_from_processes_lose_nothing(conf: Path, make: Any) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer_process, args=(str(conf), w, 25)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        await asyncio.to_thread(p.join, 60)
        assert p.exitcode == 0
    assert len(load(conf)["routes"]) == 100
    assert file_check(conf) == []
    sidecar = json.loads((conf.parent / ("apisix.yaml" + SIDECAR_SUFFIX)).read_text())
    assert sidecar["revision"] == 100
    unstarted = YamlResourceStore(YamlFileStore(conf, env={}))  # reads the file itself
    assert len(await unstarted.list("/apisix/routes/")) == 100
    store = await make(conf)
    entries = await store.list("/apisix/routes/")
    assert len(entries) == 100
    assert len({e.mod_revision for e in entries}) == 100
    assert sorted(e.mod_revision for e in entries) == list(range(1, 101))


async def test_concurrent_puts_in_one_process(conf: Path, make: Any) -> None:
    store = await make(conf)
    entries = await asyncio.gather(
        *(store.put(f"/apisix/routes/{i}", route(str(i), f"/{i}")) for i in range(20))
    )
    assert len({e.mod_revision for e in entries}) == 20
    assert len(await store.list("/apisix/routes/")) == 20


# -- hand edits ----------------------------------------------------------------------------


async def test_hand_edit_is_picked_up_with_revisions(conf: Path, make: Any) -> None:
    store = await make(conf)
    one = await store.put("/apisix/routes/1", route("1"))
    doc = load(conf)
    doc["routes"].append({"id": "h1", "uri": "/hand", "upstream": ROUTE["upstream"]})
    conf.write_text(yaml.safe_dump(doc) + "#END\n")
    await wait_until(lambda: store.store.current().get("routes", "h1") is not None)

    hand = await store.get("/apisix/routes/h1")
    assert hand is not None and hand.value["uri"] == "/hand"
    assert hand.create_revision == hand.mod_revision > one.mod_revision
    assert await store.get("/apisix/routes/h1") == hand  # stable once assigned
    again = await make(conf)  # and persisted
    assert await again.get("/apisix/routes/h1") == hand

    # a hand change to a known item: new mod revision, same create revision
    conf.write_text(conf.read_text().replace("uri: /hello", "uri: /changed"))
    await wait_until(lambda: store.store.current().get("routes", "1")["uri"] == "/changed")
    changed = await store.get("/apisix/routes/1")
    assert changed is not None and changed.value["uri"] == "/changed"
    assert changed.create_revision == one.create_revision
    assert changed.mod_revision > hand.mod_revision

    # hand delete: gone from reads, and from the sidecar after the next write
    doc = load(conf)
    doc["routes"] = [r for r in doc["routes"] if r["id"] != "h1"]
    conf.write_text(yaml.safe_dump(doc) + "#END\n")
    await wait_until(lambda: store.store.current().get("routes", "h1") is None)
    assert await store.get("/apisix/routes/h1") is None
    await store.put("/apisix/routes/2", route("2"))
    sidecar = json.loads(store.sidecar.read_text())
    assert "/apisix/routes/h1" not in sidecar["keys"]
    assert "/apisix/routes/1" in sidecar["keys"]


async def test_write_reconciles_unseen_hand_edits(conf: Path, make: Any) -> None:
    conf.write_text("routes:\n  - id: pre\n    uri: /pre\n    upstream_id: 1\n#END\n")
    store = await make(conf)
    await store.put("/apisix/routes/new", route("new"))  # before anyone read "pre"
    sidecar = json.loads(store.sidecar.read_text())
    assert set(sidecar["keys"]) == {"/apisix/routes/pre", "/apisix/routes/new"}
    pre = await store.get("/apisix/routes/pre")
    assert pre is not None and pre.value == {"id": "pre", "uri": "/pre", "upstream_id": 1}


# -- key layout ----------------------------------------------------------------------------


async def test_consumers_and_credentials(conf: Path, make: Any) -> None:
    store = await make(conf)
    jack = {"username": "jack", "plugins": {"key-auth": {"key": "auth-one"}}}
    await store.put("/apisix/consumers/jack", jack)
    await store.put("/apisix/consumers/rose", {"username": "rose"})
    cred = {"id": "c1", "plugins": {"key-auth": {"key": "k1"}}, "create_time": 1}
    await store.put("/apisix/consumers/jack/credentials/c1", cred)

    items = load(conf)["consumers"]
    assert items[0] == jack
    assert items[2]["id"] == "jack/credentials/c1"
    assert file_check(conf) == []

    got = await store.get("/apisix/consumers/jack/credentials/c1")
    assert got is not None and got.value == cred
    got_jack = await store.get("/apisix/consumers/jack")
    assert got_jack is not None and got_jack.value == jack

    consumers = await store.list("/apisix/consumers/")
    assert [e.key for e in consumers] == ["/apisix/consumers/jack", "/apisix/consumers/rose"]
    creds = await store.list("/apisix/consumers/jack/credentials/")
    assert [e.key for e in creds] == ["/apisix/consumers/jack/credentials/c1"]
    assert await store.list("/apisix/consumers/rose/credentials/") == []

    assert await store.delete_prefix("/apisix/consumers/jack/credentials/") == 1
    assert await store.delete_prefix("/apisix/consumers/jack/credentials/") == 0
    assert [c.get("username") for c in load(conf)["consumers"]] == ["jack", "rose"]


async def test_list_is_per_collection_and_other_layouts(conf: Path, make: Any) -> None:
    store = await make(conf)
    await store.put("/apisix/routes/1", route("1"))
    await store.put("/apisix/services/1", {"id": "1", "upstream_id": "1"})
    await store.put("/apisix/upstreams/1", {"id": "1", "nodes": {"1.1.1.1:80": 1}})
    await store.put("/apisix/plugin_metadata/file-logger", {"id": "file-logger", "log_format": {}})
    await store.put("/apisix/secrets/vault/1", {"id": "vault/1", "uri": "http://v"})
    await store.put("/apisix/routes/", "init_dir")  # a directory placeholder: sidecar only

    assert [e.key for e in await store.list("/apisix/routes/")] == ["/apisix/routes/1"]
    assert [e.key for e in await store.list("/apisix/services/")] == ["/apisix/services/1"]
    secret = await store.get("/apisix/secrets/vault/1")
    assert secret is not None and secret.value["uri"] == "http://v"
    meta = await store.get("/apisix/plugin_metadata/file-logger")
    assert meta is not None and meta.value["id"] == "file-logger"
    doc = load(conf)
    assert doc["secrets"] == [{"id": "vault/1", "uri": "http://v"}]
    assert doc["plugin_metadata"][0]["id"] == "file-logger"
    assert "plugins" not in doc
    assert len(await store.list("/apisix/")) == 5


async def test_sidecar_only_keys(conf: Path, make: Any) -> None:
    store = await make(conf)
    plugins = [{"name": "key-auth"}, {"name": "mqtt-proxy", "stream": True}]
    first = await store.put("/apisix/plugins", plugins)
    assert not conf.exists() or "plugins" not in load(conf)  # never changes what is served
    got = await store.get("/apisix/plugins")
    assert got is not None and got.value == plugins
    with pytest.raises(RevisionConflict):
        await store.put("/apisix/plugins", [], prev_revision=0)
    assert await store.delete("/apisix/plugins", prev_revision=first.mod_revision) is True
    assert await store.get("/apisix/plugins") is None


# -- failures ------------------------------------------------------------------------------


def slash_validator(snapshot: Snapshot) -> list[Problem]:
    return [
        Problem("", None, f"routes[{i}].uri", "must start with /")
        for i, r in enumerate(snapshot.items("routes"))
        if not str(r.get("uri", "/")).startswith("/")
    ]


async def test_rejected_write_propagates_and_changes_nothing(conf: Path, make: Any) -> None:
    store = await make(conf, validate=slash_validator)
    ok = await store.put("/apisix/routes/1", route("1"))
    before = (conf.read_bytes(), store.sidecar.read_bytes())
    with pytest.raises(ConfigRejected):
        await store.put("/apisix/routes/2", route("2", "nope"))
    assert (conf.read_bytes(), store.sidecar.read_bytes()) == before
    nxt = await store.put("/apisix/routes/3", route("3"))
    assert nxt.mod_revision == ok.mod_revision + 1


async def test_io_error_is_store_unavailable(
    conf: Path, make: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL)
    store = await make(conf)
    store.sidecar.mkdir()  # a directory where the revisions file should be
    with pytest.raises(StoreUnavailable):
        await store.put("/apisix/routes/1", route("1"))
    with pytest.raises(StoreUnavailable):
        await store.next_id()
    assert not conf.exists()


async def test_bad_key(conf: Path, make: Any) -> None:
    store = await make(conf)
    with pytest.raises(ValueError):
        await store.get("/other/routes/1")


TRICKY = {
    "id": "t",
    "uri": "/t",
    "desc": "yes",
    "labels": {"a": "1.0", "b": "null", "c": "~", "d": "héllo ✓", "e": " padded ", "f": "x: y"},
    "vars": [["arg_x", "==", "on"], ["arg_y", "in", [1, 2.5, True, None]]],
    "priority": 10**12,
    "timeout": {"connect": 1.5, "send": 1e-3, "read": 2.0},
    "upstream": {"nodes": {"127.0.0.1:1980": 1}, "type": "roundrobin"},
}


async def test_cas_after_read_back_of_tricky_values(conf: Path, make: Any) -> None:
    store = await make(conf)
    await store.put("/apisix/routes/t", TRICKY)
    other = await make(conf)  # another process's view: everything read back from the file
    got = await other.get("/apisix/routes/t")
    assert got is not None and got.value == TRICKY
    again = await other.put("/apisix/routes/t", {**TRICKY, "desc": "no"},
                            prev_revision=got.mod_revision)  # fmt: skip
    assert again.mod_revision == got.mod_revision + 1
    await wait_until(lambda: store.store.current().get("routes", "t")["desc"] == "no")
    mine = await store.get("/apisix/routes/t")
    assert mine == again


async def test_json_config_file(tmp_path: Path, make: Any) -> None:
    path = tmp_path / "apisix.json"
    store = await make(path)
    await store.put("/apisix/routes/1", route(1))
    assert json.loads(path.read_text())["routes"][0]["id"] == 1
    assert (tmp_path / ("apisix.json" + SIDECAR_SUFFIX)).exists()
    got = await store.get("/apisix/routes/1")
    assert got is not None and got.value == route(1)


async def test_env_variables_in_the_file(conf: Path, make: Any) -> None:
    conf.write_text("routes:\n  - id: e\n    uri: ${{URI:=/env}}\n    upstream_id: 1\n#END\n")
    store = await make(conf, env={"URI": "/from-env"})
    first = await store.get("/apisix/routes/e")
    assert first is not None and first.value["uri"] == "/from-env"  # reads are what is served
    await store.put("/apisix/routes/x", route("x"))  # rewrites the file, keeps the placeholder
    assert "${{URI:=/env}}" in conf.read_text()
    same = await store.get("/apisix/routes/e")
    assert same == first  # not mistaken for a hand edit
