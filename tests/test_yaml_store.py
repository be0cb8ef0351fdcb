"""YamlFileStore: real files in tmp dirs, a real running store (watchdog + polling)."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from kernel.store.base import COLLECTIONS, ConfigRejected, Problem, Snapshot, item_key
from kernel.store.yaml_file import YamlFileStore, _line_of

EXAMPLE = """\
upstreams:
  - id: 1
    type: roundrobin
    nodes:
      "127.0.0.1:1980": 1
routes:
  - id: 1
    uri: /hello
    upstream_id: 1
consumers:
  - username: jack
    plugins:
      key-auth:
        key: auth-one
plugin_metadata:
  - id: file-logger
    log_format:
      host: "$host"
      client_ip: "$remote_addr"
#END
"""


def routes_yaml(*uris: str, end: bool = True) -> str:
    body = "routes:\n" + "".join(
        f"  - id: r{i}\n    uri: {u}\n    upstream_id: 1\n" for i, u in enumerate(uris)
    )
    return body + ("#END\n" if end else "")


def uri_validator(snapshot: Snapshot) -> list[Problem]:
    """Flags a route uri that does not start with '/' (source and line left to the store)."""
    return [
        Problem("", None, f"routes[{i}].uri", "must start with /")
        for i, r in enumerate(snapshot.items("routes"))
        if not str(r.get("uri", "/")).startswith("/")
    ]


class Recorder:
    def __init__(self) -> None:
        self.snapshots: list[Snapshot] = []
        self.times: list[float] = []

    def __call__(self, snapshot: Snapshot) -> None:
        self.snapshots.append(snapshot)
        self.times.append(time.perf_counter())

    @property
    def last(self) -> Snapshot:
        return self.snapshots[-1]

    async def wait_count(self, n: int, timeout: float = 3.0) -> None:
        await wait_until(lambda: len(self.snapshots) >= n, timeout)


async def wait_until(cond: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def uris(snapshot: Snapshot) -> list[str]:
    return [r["uri"] for r in snapshot.items("routes")]


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    (tmp_path / "conf").mkdir()
    return tmp_path / "conf" / "apisix.yaml"


@pytest.fixture
def log() -> logging.Logger:
    return logging.getLogger("test.yaml_store")


@pytest.fixture
async def stores() -> AsyncIterator[list[YamlFileStore]]:
    created: list[YamlFileStore] = []
    yield created
    for store in created:
        await store.stop()


@pytest.fixture
def make(
    stores: list[YamlFileStore], log: logging.Logger, caplog: pytest.LogCaptureFixture
) -> Callable[..., Any]:
    caplog.set_level(logging.DEBUG, logger=log.name)

    async def start(path: Path, **kw: Any) -> tuple[YamlFileStore, Recorder]:
        kw.setdefault("env", {})
        kw.setdefault("logger", log)
        store = YamlFileStore(path, **kw)
        rec = Recorder()
        await store.start(rec)
        stores.append(store)
        return store, rec

    return start


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def write_in_place(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(".edit.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# -- loading -----------------------------------------------------------------------------


async def test_initial_load(conf: Path, make: Any) -> None:
    conf.write_text(EXAMPLE)
    store, rec = await make(conf)
    assert len(rec.snapshots) == 1
    snap = rec.last
    assert store.current() is snap
    assert snap.version.startswith("yaml:")
    assert set(snap.collections) == set(COLLECTIONS)
    assert snap.items("routes") == ({"id": "1", "uri": "/hello", "upstream_id": 1},)
    assert snap.items("upstreams")[0]["nodes"] == {"127.0.0.1:1980": 1}
    assert snap.get("consumers", "jack") is not None
    assert snap.get("plugin_metadata", "file-logger")["log_format"]["host"] == "$host"
    assert snap.items("ssls") == ()
    assert snap.plugins is None


async def test_ids_normalized(conf: Path, make: Any) -> None:
    conf.write_text(
        "routes:\n  - uri: /a\n  - id: 7\n    uri: /b\n  - uri: /c\n"
        "consumers:\n  - username: jack\n  - username: rose\n    id: 3\n"
        "upstreams:\n  - id: up-1\n    nodes: {}\n"
        "secrets:\n  - id: vault/1\n    uri: http://v\n#END\n"
    )
    _, rec = await make(conf)
    snap = rec.last
    assert [r["id"] for r in snap.items("routes")] == ["arr_1", "7", "arr_3"]
    assert [item_key("consumers", c) for c in snap.items("consumers")] == ["jack", "rose"]
    assert "id" not in snap.items("consumers")[0]
    assert snap.items("upstreams")[0]["id"] == "up-1"
    assert snap.get("secrets", "vault/1") is not None
    assert snap.get("routes", "7")["uri"] == "/b"


async def test_plugins_override_list(conf: Path, make: Any) -> None:
    conf.write_text(
        "plugins:\n  - name: real-ip\n  - name: mqtt-proxy\n    stream: true\n"
        "  - name: echo\n#END\n"
    )
    _, rec = await make(conf)
    assert rec.last.plugins == ("real-ip", "echo")


async def test_env_substitution(conf: Path, make: Any, caplog: pytest.LogCaptureFixture) -> None:
    conf.write_text(
        'upstreams:\n  - id: 1\n    nodes:\n      "${{UP_HOST:=127.0.0.1}}:${{UP_PORT}}": 1\n'
        "    retries: ${{RETRIES:=2}}\n"
        'routes:\n  - id: 1\n    uri: "${{URI:=/x}}"\n#END\n'
    )
    _, rec = await make(conf, env={"UP_PORT": "1980", "URI": "/from-env"})
    up = rec.last.items("upstreams")[0]
    assert up["nodes"] == {"127.0.0.1:1980": 1}
    assert up["retries"] == 2  # bare substitution is typed by YAML
    assert rec.last.items("routes")[0]["uri"] == "/from-env"


async def test_env_missing_variable_is_a_problem(conf: Path, make: Any) -> None:
    conf.write_text("routes:\n  - id: 1\n    uri: /a\n    desc: ${{NOPE}}\n#END\n")
    store, rec = await make(conf)
    assert rec.last.items("routes") == ()
    assert store.check() == [Problem(str(conf), 4, "", "can't find environment variable NOPE")]


async def test_missing_file_then_created(tmp_path: Path, make: Any, caplog: Any) -> None:
    path = tmp_path / "apisix.yaml"
    store, rec = await make(path, poll_interval=0.2)
    assert len(rec.snapshots) == 1 and rec.last.items("routes") == ()
    assert any("file not found" in r.getMessage() for r in caplog.records)
    write_atomic(path, routes_yaml("/late"))
    await rec.wait_count(2)
    assert uris(rec.last) == ["/late"]
    assert store.current() is rec.last


async def test_json_file(tmp_path: Path, make: Any) -> None:
    path = tmp_path / "apisix.json"
    path.write_text('{"routes": [{"id": 1, "uri": "/j"}]}')  # no #END needed
    _, rec = await make(path)
    assert rec.last.items("routes") == ({"id": "1", "uri": "/j"},)


# -- reloading ---------------------------------------------------------------------------


async def test_edit_picked_up_within_one_second(conf: Path, make: Any) -> None:
    conf.write_text(routes_yaml("/a"))
    _, rec = await make(conf)
    latencies = []
    for n, uri in enumerate(["/b", "/c", "/d"], start=2):
        t0 = time.perf_counter()
        write_in_place(conf, routes_yaml(uri))
        await rec.wait_count(n, timeout=2.0)
        latencies.append(rec.times[-1] - t0)
        assert uris(rec.last) == [uri]
    assert max(latencies) < 1.0, latencies
    versions = [s.version for s in rec.snapshots]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)


async def test_atomic_rename_edit(conf: Path, make: Any) -> None:
    conf.write_text(routes_yaml("/a"))
    _, rec = await make(conf)
    for n, uri in enumerate(["/renamed", "/again"], start=2):
        t0 = time.perf_counter()
        write_atomic(conf, routes_yaml(uri))
        await rec.wait_count(n, timeout=2.0)
        assert rec.times[-1] - t0 < 1.0
        assert uris(rec.last) == [uri]


async def test_polling_fallback_without_watchdog(conf: Path, make: Any) -> None:
    conf.write_text(routes_yaml("/a"))
    store, rec = await make(conf, use_watchdog=False, poll_interval=0.2)
    assert store._watch is not None and not store._watch.watchdog_active
    t0 = time.perf_counter()
    write_in_place(conf, routes_yaml("/polled"))
    await rec.wait_count(2, timeout=2.0)
    assert rec.times[-1] - t0 < 1.0  # one poll interval + the read
    write_atomic(conf, routes_yaml("/polled-atomic"))
    await rec.wait_count(3, timeout=2.0)
    assert uris(rec.last) == ["/polled-atomic"]


async def test_identical_rewrite_no_second_call(
    conf: Path, make: Any, caplog: pytest.LogCaptureFixture
) -> None:
    conf.write_text(routes_yaml("/a"))
    _, rec = await make(conf, poll_interval=0.1)
    write_in_place(conf, routes_yaml("/a"))  # same bytes
    write_atomic(conf, routes_yaml("/a"))  # same bytes, new inode
    write_atomic(conf, "# just a comment\n" + routes_yaml("/a"))  # same content
    await wait_until(lambda: any("unchanged" in r.getMessage() for r in caplog.records))
    await asyncio.sleep(0.3)
    assert len(rec.snapshots) == 1
    assert not errors(caplog)


async def test_missing_end_flag_refused(
    conf: Path, make: Any, caplog: pytest.LogCaptureFixture
) -> None:
    conf.write_text(routes_yaml("/a"))
    store, rec = await make(conf)
    good = rec.last
    write_atomic(conf, routes_yaml("/b", end=False))
    await wait_until(lambda: any("end flag" in m for m in errors(caplog)))
    assert f"{conf}:4: missing valid end flag in file" in errors(caplog)
    assert store.current() is good and len(rec.snapshots) == 1
    write_atomic(conf, routes_yaml("/b"))  # fixed: picked up
    await rec.wait_count(2)
    assert uris(rec.last) == ["/b"]


async def test_yaml_syntax_error_with_line(
    conf: Path, make: Any, caplog: pytest.LogCaptureFixture
) -> None:
    conf.write_text(routes_yaml("/a"))
    store, rec = await make(conf)
    write_atomic(conf, "routes:\n  - id: 1\n    uri: /a\n   bad: [1, 2\n#END\n")
    await wait_until(lambda: bool(errors(caplog)))
    first = errors(caplog)[0]
    assert first.startswith(f"{conf}:4: invalid YAML: "), first
    assert "\n" not in first
    assert store.current() is rec.last and uris(rec.last) == ["/a"]


async def test_validation_problem_mapped_to_line_and_field(
    conf: Path, make: Any, caplog: pytest.LogCaptureFixture
) -> None:
    conf.write_text(routes_yaml("/a"))
    store, rec = await make(conf, validate=uri_validator)
    text = (
        "upstreams:\n"  # 1
        "  - id: 1\n"  # 2
        "    nodes:\n"  # 3
        '      "127.0.0.1:1980": 1\n'  # 4
        "routes:\n"  # 5
        "  - id: ok\n"  # 6
        "    uri: /fine\n"  # 7
        "  - id: bad\n"  # 8
        "    methods: [GET]\n"  # 9
        "    uri: no-slash\n"  # 10
        "#END\n"
    )
    write_atomic(conf, text)
    await wait_until(lambda: bool(errors(caplog)))
    assert errors(caplog)[0] == f"{conf}:10: routes[1].uri: must start with /"
    assert "refused" in errors(caplog)[-1]
    assert store.current() is rec.last and uris(rec.last) == ["/a"]
    assert store.check() == [Problem(str(conf), 10, "routes[1].uri", "must start with /")]


async def test_structure_problems(conf: Path, make: Any) -> None:
    conf.write_text(
        "routes:\n  - id: 1\n    uri: /a\n  - id: 1\n    uri: /b\n"  # 1-5
        "services: {}\n"  # 6
        "bogus: 1\n"  # 7
        "upstreams:\n  - just a string\n"  # 8-9
        "routes_conf_version: 3\n"  # tolerated
        "#END\n"
    )
    store, rec = await make(conf)
    assert rec.last.items("routes") == ()
    got = {(p.line, p.path) for p in store.check()}
    assert got == {(4, "routes[1].id"), (6, "services"), (7, "bogus"), (9, "upstreams[0]")}


async def test_on_change_failure_keeps_previous(conf: Path, make: Any) -> None:
    conf.write_text(routes_yaml("/a"))
    store = YamlFileStore(conf, env={}, logger=logging.getLogger("test.yaml_store"))
    seen: list[Snapshot] = []

    def on_change(snap: Snapshot) -> None:
        seen.append(snap)
        if uris(snap) == ["/boom"]:
            raise RuntimeError("kernel refused")

    await store.start(on_change)
    try:
        good = store.current()
        write_atomic(conf, routes_yaml("/boom"))
        await wait_until(lambda: len(seen) == 2)
        assert store.current() is good
    finally:
        await store.stop()


def test_problem_str() -> None:
    p = Problem("conf/apisix.yaml", 12, "routes[0].upstream.nodes", "invalid port 65536")
    assert str(p) == "conf/apisix.yaml:12: routes[0].upstream.nodes: invalid port 65536"
    assert str(Problem("conf/apisix.yaml", None, "", "file not found")) == (
        "conf/apisix.yaml: file not found"
    )


def test_line_of_paths() -> None:
    root = yaml.compose(
        "routes:\n"  # 1
        "  - id: 1\n"  # 2
        "    plugins:\n"  # 3
        "      key-auth: {}\n"  # 4
        "    upstream:\n"  # 5
        "      nodes:\n"  # 6
        '        "127.0.0.1:80": 1\n'  # 7
        "      type: roundrobin\n",  # 8
        Loader=yaml.SafeLoader,
    )
    assert _line_of(root, "routes[0].upstream.nodes") == 6
    assert _line_of(root, 'routes[0].upstream.nodes["127.0.0.1:80"]') == 7
    assert _line_of(root, "routes[0].plugins.key-auth") == 4
    assert _line_of(root, "routes[0].upstream.type") == 8
    assert _line_of(root, "routes[0].upstream.missing.deeper") == 5  # nearest parent
    assert _line_of(root, "routes[3].uri") == 1
    assert _line_of(root, "") is None


# -- writing -----------------------------------------------------------------------------


def add_route(route_id: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def mutate(doc: dict[str, Any]) -> dict[str, Any]:
        doc.setdefault("routes", []).append({"id": route_id, "uri": f"/{route_id}"})
        return doc

    return mutate


async def test_write_applies_and_keeps_env_placeholders(conf: Path, make: Any) -> None:
    conf.write_text('upstreams:\n  - id: 1\n    nodes: {"127.0.0.1:${{P:=80}}": 1}\n#END\n')
    store, rec = await make(conf)
    snap = await store.write(add_route("w1"))
    assert snap is store.current() is rec.last
    assert uris(snap) == ["/w1"]
    text = conf.read_text()
    assert text.endswith("#END\n") and "${{P:=80}}" in text
    await asyncio.sleep(0.3)  # our own write's file events cause no second apply
    assert len(rec.snapshots) == 2
    assert not list(conf.parent.glob(".*.tmp"))


async def test_write_rejected_changes_nothing(conf: Path, make: Any) -> None:
    conf.write_text(routes_yaml("/a"))
    store, rec = await make(conf, validate=uri_validator)
    before = conf.read_bytes()

    def bad(doc: dict[str, Any]) -> dict[str, Any]:
        doc["routes"].append({"id": "x", "uri": "nope"})
        return doc

    with pytest.raises(ConfigRejected) as info:
        await store.write(bad)
    assert [(p.path, p.message) for p in info.value.problems] == [
        ("routes[1].uri", "must start with /")
    ]
    assert conf.read_bytes() == before and len(rec.snapshots) == 1


async def test_write_without_start_creates_file(tmp_path: Path) -> None:
    path = tmp_path / "apisix.yaml"
    store = YamlFileStore(path, None, {})
    snap = await store.write(add_route("first"))
    assert uris(snap) == ["/first"] and store.check() == []


def _writer_process(path: str, worker: int, count: int) -> None:
    async def main() -> None:
        store = YamlFileStore(Path(path), None, {})
        for i in range(count):
            await store.write(add_route(f"w{worker}-{i}"))

    asyncio.run(main())


def test_concurrent_writers_lose_no_update(conf: Path) -> None:
    conf.write_text("routes: []\n#END\n")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer_process, args=(str(conf), w, 25)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    store = YamlFileStore(conf, None, {})
    assert store.check() == []
    doc = yaml.safe_load(conf.read_text())
    ids = {r["id"] for r in doc["routes"]}
    assert ids == {f"w{w}-{i}" for w in range(4) for i in range(25)}


async def test_write_refused_while_file_is_broken(conf: Path) -> None:
    conf.write_text("routes:\n  - id: 1\n    uri: [unclosed\n#END\n")
    store = YamlFileStore(conf, None, {})
    with pytest.raises(ConfigRejected) as info:
        await store.write(add_route("x"))
    assert info.value.problems[0].line is not None
    assert "unclosed" in conf.read_text()


def test_check_reports_unreadable_and_missing(tmp_path: Path) -> None:
    (tmp_path / "apisix.yaml").mkdir()
    [problem] = YamlFileStore(tmp_path / "apisix.yaml", None, {}).check()
    assert "cannot read the file" in problem.message
    [problem] = YamlFileStore(tmp_path / "nope.yaml", None, {}).check()
    assert str(problem) == f"{tmp_path / 'nope.yaml'}: file not found"


async def test_a_file_renamed_into_place_is_read_without_waiting_for_the_debounce(
    conf: Path, make: Any
) -> None:
    """An atomic replace (what the Admin API and most editors do) leaves nothing half written:
    it is read at once; an in-place write still waits ``debounce`` after its last event."""
    conf.write_text(routes_yaml("/a"))
    store, rec = await make(conf, debounce=1.5, poll_interval=30)
    assert store._watch is not None and store._watch.watchdog_active
    t0 = time.perf_counter()
    write_atomic(conf, routes_yaml("/renamed"))
    await rec.wait_count(2, timeout=5.0)
    assert uris(rec.last) == ["/renamed"]
    assert rec.times[-1] - t0 < 1.0
    t0 = time.perf_counter()
    write_in_place(conf, routes_yaml("/in-place"))
    await rec.wait_count(3, timeout=5.0)
    assert uris(rec.last) == ["/in-place"]
    assert rec.times[-1] - t0 >= 1.4
