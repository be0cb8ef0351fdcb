"""acme-teapot's tests, written with sixgate's plugin test kit (the ``sixgate`` fixture and
``plugin_sdk.testing`` come with sixgate: no conftest needed)."""

from __future__ import annotations

import acme_teapot.teapot as teapot
import pytest

from plugin_sdk.testing import ConfigRejected, make_context, run_phase


def test_tea_is_answered_by_the_teapot(sixgate):
    sixgate.add_route("/drinks/*", plugins={"acme-teapot": {}})
    r = sixgate.get("/drinks/today?brew=tea")
    assert r.status == 418
    assert r.text == "I'm a teapot\n"
    assert r.headers["X-Brew"] == "tea"
    assert r.headers["X-Teapot-Version"] == "0.1.0"
    sixgate.upstream.assert_not_received()


def test_other_requests_reach_the_upstream(sixgate):
    sixgate.add_route("/drinks/*", plugins={"acme-teapot": {"status": 503, "brews": ["chai"]}})
    r = sixgate.get("/drinks/today?brew=tea")
    assert r.status == 200
    assert r.headers["X-Teapot-Version"] == "0.1.0"
    sixgate.upstream.assert_received(path="/drinks/today", query="brew=tea",
                                     headers={"X-Teapot": "not brewing"})
    assert sixgate.get("/drinks/today?brew=chai").status == 503


def test_bad_confs_are_refused(sixgate):
    with pytest.raises(ConfigRejected, match="a teapot cannot brew coffee"):
        sixgate.add_route("/x", plugins={"acme-teapot": {"brews": ["coffee"]}})
    with pytest.raises(ConfigRejected, match="status"):
        sixgate.add_route("/x", plugins={"acme-teapot": {"status": 200}})


def test_access_phase_alone():
    ctx = make_context("GET", "/?brew=tea")
    res = run_phase(teapot, "access", {}, ctx)
    assert (res.status, res.headers["X-Brew"]) == (418, "tea")
    ctx = make_context("GET", "/?brew=water")
    assert run_phase(teapot, "access", {}, ctx) is None
    assert ctx.upstream.set["x-teapot"] == ("X-Teapot", ["not brewing"])


def test_an_edit_is_picked_up_without_a_restart(sixgate):
    sixgate.add_route("/t", plugins={"acme-teapot": {}})
    result = sixgate.edit_plugin(teapot.__file__, replace=("I'm a teapot", "Still a teapot"))
    try:
        assert result.ok, result.errors
        assert sixgate.get("/t?brew=tea").text == "Still a teapot\n"
    finally:
        sixgate.edit_plugin(teapot.__file__, replace=("Still a teapot", "I'm a teapot"))
    assert sixgate.get("/t?brew=tea").text == "I'm a teapot\n"
