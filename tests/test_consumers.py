"""Consumers (spec §4.7 step 5, §6.2 step 5): an auth plugin written against the public SDK
looks the caller up in ``ctx.consumers`` and attaches it; the consumer group's and the
consumer's plugins are then merged over the route's, on a real gateway."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kernel.chain import compile_chain, overlay
from kernel.consumers import build_directory
from kernel.plugins.manager import PluginRegistry
from kernel.store.base import Snapshot
from plugin_sdk import Consumer, Response
from plugin_sdk.testing import GatewayHarness, make_context, run_phase

# A third-party auth plugin: SDK only, as a pack would write it.
TEST_AUTH = '''
from plugin_sdk import Response, hookimpl

name = "test-auth"
version = "0.1"
priority = 2500
type = "auth"
schema = {"type": "object"}
consumer_schema = {"type": "object", "properties": {"key": {"type": "string"}},
                   "required": ["key"]}


@hookimpl
def rewrite(ctx, conf):
    consumer = ctx.consumers.find(name, "key", ctx.request.headers.get("apikey"))
    if consumer is None:
        return Response(401, {"message": "Invalid API key in request"})
    ctx.attach_consumer(consumer)
    ctx.upstream.set_header("X-Consumer-Username", consumer.username)
    if consumer.credential_id is not None:
        ctx.upstream.set_header("X-Credential-Identifier", consumer.credential_id)
'''

# Records, per phase, which conf ran: the upstream sees X-Rec-<phase>: <tag>[,<tag>...].
RECORDER = '''
from plugin_sdk import hookimpl

name = "recorder"
version = "0.1"
priority = 10
schema = {"type": "object", "properties": {"tag": {"type": "string"}}, "required": ["tag"]}


def _note(ctx, phase, conf):
    ctx.upstream.add_header("X-Rec-" + phase, conf["tag"])


@hookimpl
def rewrite(ctx, conf):
    _note(ctx, "rewrite", conf)


@hookimpl
def access(ctx, conf):
    _note(ctx, "access", conf)
'''

@pytest.fixture
def gw(sixgate_factory: Any, tmp_path: Path) -> GatewayHarness:
    plugins = tmp_path / "auth-plugins"
    plugins.mkdir()
    (plugins / "test_auth.py").write_text(TEST_AUTH)
    (plugins / "recorder.py").write_text(RECORDER)
    harness: GatewayHarness = sixgate_factory(
        plugins=["test-auth", "recorder", "proxy-rewrite", "fault-injection"],
        plugin_dirs=[plugins])
    return harness


def received(gw: GatewayHarness) -> dict[str, list[str]]:
    last = gw.upstream.last
    return {k.lower(): last.headers.getall(k) for k in {n for n, _ in last.headers.items()}}


def test_consumer_conf_wins_in_later_phases_and_rewrite_is_not_rerun(gw: GatewayHarness) -> None:
    gw.add_consumer("jack", {"test-auth": {"key": "k-jack"}, "recorder": {"tag": "consumer"}})
    gw.add_route("/hello", {"test-auth": {}, "recorder": {"tag": "route"}}, id="1")
    res = gw.get("/hello", headers={"apikey": "k-jack"})
    assert res.status == 200
    got = received(gw)
    assert got["x-consumer-username"] == ["jack"]
    assert got["x-rec-rewrite"] == ["route"]  # ran before the merge, not run again
    assert got["x-rec-access"] == ["consumer"]  # consumer > route
    assert gw.get("/hello", headers={"apikey": "nope"}).status == 401


def test_plugins_only_the_consumer_has_run_their_rewrite(gw: GatewayHarness) -> None:
    gw.add_consumer("jack", {
        "test-auth": {"key": "k-jack"},
        "proxy-rewrite": {"headers": {"set": {"X-Who": "$consumer_name"}}},
    })
    gw.add_consumer("rose", {"test-auth": {"key": "k-rose"}})
    gw.add_route("/hello", {"test-auth": {}}, id="1")
    assert gw.get("/hello", headers={"apikey": "k-jack"}).status == 200
    assert received(gw)["x-who"] == ["jack"]
    assert gw.get("/hello", headers={"apikey": "k-rose"}).status == 200
    assert "x-who" not in received(gw)  # jack's plugins are not rose's
    assert "x-rec-access" not in received(gw)


def test_group_then_consumer_precedence(gw: GatewayHarness) -> None:
    gw.add_consumer_group("gold", {"recorder": {"tag": "group"},
                                   "proxy-rewrite": {"headers": {"set": {"X-Tier": "gold"}}}})
    gw.add_consumer("jack", {"test-auth": {"key": "k-jack"}}, group_id="gold")
    gw.add_consumer("rose", {"test-auth": {"key": "k-rose"}, "recorder": {"tag": "rose"}},
                    group_id="gold")
    gw.add_route("/hello", {"test-auth": {}, "recorder": {"tag": "route"}}, id="1")
    gw.get("/hello", headers={"apikey": "k-jack"})
    got = received(gw)
    assert got["x-rec-access"] == ["group"]  # group > route
    assert got["x-tier"] == ["gold"]  # a plugin only the group has: its rewrite ran
    gw.get("/hello", headers={"apikey": "k-rose"})
    assert received(gw)["x-rec-access"] == ["rose"]  # consumer > group


def test_a_consumer_plugin_can_end_the_request(gw: GatewayHarness) -> None:
    gw.add_consumer("banned", {"test-auth": {"key": "k-b"},
                               "fault-injection": {"abort": {"http_status": 403,
                                                             "body": "no $consumer_name\n"}}})
    gw.add_route("/hello", {"test-auth": {}}, id="1")
    gw.upstream.clear()
    res = gw.get("/hello", headers={"apikey": "k-b"})
    assert (res.status, res.text) == (403, "no banned\n")
    gw.upstream.assert_not_received()


def test_credentials_identify_their_consumer(gw: GatewayHarness) -> None:
    gw.add_consumer("jack", {"recorder": {"tag": "jack"}})
    gw.add_credential("jack", "cred-1", {"test-auth": {"key": "k-cred"}})
    gw.add_route("/hello", {"test-auth": {}}, id="1")
    assert gw.get("/hello", headers={"apikey": "k-cred"}).status == 200
    got = received(gw)
    assert got["x-consumer-username"] == ["jack"]
    assert got["x-credential-identifier"] == ["cred-1"]
    assert got["x-rec-access"] == ["jack"]


def test_the_callback_path_hands_consumers_over(gw: GatewayHarness) -> None:
    gw.add_consumer("jack", {"test-auth": {"key": "k-jack"}, "recorder": {"tag": "consumer"}})
    gw.add_route("/hello", {"test-auth": {}}, id="1")
    assert gw.gateway.state.routes["1"].direct  # sync plugins only: the callback path
    gw.get("/hello", headers={"apikey": "k-jack"})
    assert received(gw)["x-rec-access"] == ["consumer"]


def test_a_consumer_edit_is_live(gw: GatewayHarness) -> None:
    gw.add_consumer("jack", {"test-auth": {"key": "k-jack"}, "recorder": {"tag": "v1"}})
    gw.add_route("/hello", {"test-auth": {}}, id="1")
    gw.get("/hello", headers={"apikey": "k-jack"})
    assert received(gw)["x-rec-access"] == ["v1"]
    gw.add_consumer("jack", {"test-auth": {"key": "k-jack"}, "recorder": {"tag": "v2"}})
    gw.get("/hello", headers={"apikey": "k-jack"})
    assert received(gw)["x-rec-access"] == ["v2"]
    gw.add_consumer("jack", {"test-auth": {"key": "k-new"}})
    assert gw.get("/hello", headers={"apikey": "k-jack"}).status == 401
    assert gw.get("/hello", headers={"apikey": "k-new"}).status == 200
    assert "x-rec-access" not in received(gw)


def test_global_rules_keep_their_own_steps(gw: GatewayHarness) -> None:
    gw.add_global_rule({"recorder": {"tag": "global"}})
    gw.add_consumer("jack", {"test-auth": {"key": "k-jack"}, "recorder": {"tag": "consumer"}})
    gw.add_route("/hello", {"test-auth": {}}, id="1")
    gw.get("/hello", headers={"apikey": "k-jack"})
    got = received(gw)
    assert got["x-rec-rewrite"] == ["global"]
    assert got["x-rec-access"] == ["global", "consumer"]  # global first, then the route's


# -- the directory and the merge, in process ------------------------------------------------

def _snapshot(**collections: Any) -> Snapshot:
    snap = Snapshot.empty("t")
    return Snapshot(version="t", collections={**snap.collections, **{
        k: tuple(v) for k, v in collections.items()}}, plugins=None)


def test_directory_lookups_and_reuse() -> None:
    import builtin_plugins.proxy_rewrite as pr

    registry = PluginRegistry([pr])
    snap = _snapshot(
        consumers=[
            {"username": "jack", "plugins": {"key-auth": {"key": "a"}}, "group_id": "g",
             "labels": {"custom_id": "c-7"}},
            {"id": "jack/credentials/c1", "plugins": {"key-auth": {"key": "b"}}},
            {"id": "ghost/credentials/c2", "plugins": {"key-auth": {"key": "c"}}},
        ],
        consumer_groups=[{"id": "g", "plugins": {"proxy-rewrite": {"uri": "/g"}}}],
    )
    d = build_directory(snap, registry)
    jack = d.get("jack")
    assert jack is not None and jack.custom_id == "c-7" and jack.group_id == "g"
    assert d.find("key-auth", "key", "a") is jack
    via_cred = d.find("key-auth", "key", "b")
    assert via_cred is not None and (via_cred.username, via_cred.credential_id) == ("jack", "c1")
    assert d.find("key-auth", "key", "c") is None  # its consumer does not exist
    assert d.find("key-auth", "key", ["unhashable"]) is None
    assert d.chain_of("jack").plugins == ("proxy-rewrite",)  # from the group
    assert d.chain_of("nobody").empty
    assert build_directory(snap, registry, d) is d  # unchanged: reused as is
    assert build_directory(_snapshot(), registry, d) is not d


def test_overlay_orders_by_priority_and_replaces_by_name() -> None:
    import builtin_plugins.fault_injection as fi
    import builtin_plugins.proxy_rewrite as pr

    registry = PluginRegistry([fi, pr])
    base, _ = compile_chain({"proxy-rewrite": {"uri": "/route"}}, registry)
    top, _ = compile_chain({"proxy-rewrite": {"uri": "/consumer"},
                            "fault-injection": {"abort": {"http_status": 200}}}, registry)
    merged = overlay(base, top)
    assert [s.plugin for s in merged.rewrite] == ["fault-injection", "proxy-rewrite"]
    assert merged.confs["proxy-rewrite"]["uri"] == "/consumer"
    assert overlay(base, compile_chain({}, registry)[0]) is base


def test_make_context_gives_consumers_to_unit_tests(gw: GatewayHarness) -> None:
    jack = Consumer("jack", {"test-auth": {"key": "k"}})
    ctx = make_context(headers={"apikey": "k"}, consumers=[jack])
    assert gw.run_phase("test-auth", "rewrite", {}, ctx) is None
    assert ctx.consumer is jack and ctx.var["consumer_name"] == "jack"
    ctx = make_context(headers={"apikey": "x"}, consumers=[jack])
    res = gw.run_phase("test-auth", "rewrite", {}, ctx)
    assert isinstance(res, Response) and res.status == 401
    with pytest.raises(TypeError):
        make_context().attach_consumer({"username": "jack"})


def test_run_phase_without_consumers_finds_nobody() -> None:
    ctx = make_context()
    assert ctx.consumers.find("key-auth", "key", "x") is None and len(ctx.consumers) == 0
    assert run_phase("proxy-rewrite", "rewrite", {"uri": "/x"}, ctx) is None
