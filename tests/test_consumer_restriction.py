"""consumer-restriction (spec §7.19, §11 case 52): by consumer name, consumer group, route and
service id; blacklist, whitelist, allowed_by_methods; rejected_code/rejected_msg -- through a
real gateway (the SDK test kit), with the real auth plugins identifying the callers."""

from __future__ import annotations

import base64

import pytest

import builtin_plugins.consumer_restriction as consumer_restriction
from plugin_sdk import Consumer
from plugin_sdk.testing import ConfigRejected, GatewayHarness, make_context, run_phase
from tests.test_key_auth import gw, module_gateway  # noqa: F401  (fixtures)

FORBIDDEN = {"message": "The consumer_name is forbidden."}


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def key(k: str) -> dict[str, str]:
    return {"apikey": k}


@pytest.fixture
def users(gw: GatewayHarness) -> GatewayHarness:  # noqa: F811
    """jack1 and jack2 (basic-auth and key-auth), jack2 in consumer group ``gold``."""
    gw.add_consumer_group("gold", {})
    gw.add_consumer("jack1", {"basic-auth": {"username": "jack2019", "password": "123456"},
                              "key-auth": {"key": "k1"}})
    gw.add_consumer("jack2", {"basic-auth": {"username": "jack2020", "password": "123456"},
                              "key-auth": {"key": "k2"}}, group_id="gold")
    return gw


def test_case_52(users: GatewayHarness) -> None:
    users.add_route("/hello", {"basic-auth": {},
                               "consumer-restriction": {"whitelist": ["jack1"]}}, id="1")
    res = users.get("/hello")
    assert (res.status, res.json()) == (401, {"message": "Missing authorization in request"})
    res = users.get("/hello", headers=basic("jack2020", "123456"))
    assert (res.status, res.json()) == (403, FORBIDDEN)
    assert users.get("/hello", headers=basic("jack2019", "123456")).status == 200

    users.add_route("/noauth", {"consumer-restriction": {"whitelist": ["jack1"]}}, id="2")
    users.upstream.clear()
    res = users.get("/noauth", headers=basic("jack2019", "123456"))
    assert (res.status, res.json()) == (401, {
        "message": "The request is rejected, please check the consumer_name for this request"})
    users.upstream.assert_not_received()


def test_blacklist_and_custom_rejection(users: GatewayHarness) -> None:
    users.add_route("/hello", {"key-auth": {}, "consumer-restriction": {
        "blacklist": ["jack1"], "rejected_code": 429, "rejected_msg": "go away"}}, id="1")
    res = users.get("/hello", headers=key("k1"))
    assert (res.status, res.json()) == (429, {"message": "go away"})
    assert users.get("/hello", headers=key("k2")).status == 200


def test_blacklist_wins_over_whitelist(users: GatewayHarness) -> None:
    users.add_route("/hello", {"key-auth": {}, "consumer-restriction": {
        "whitelist": ["jack1", "jack2"], "blacklist": ["jack2"]}}, id="1")
    assert users.get("/hello", headers=key("k1")).status == 200
    assert users.get("/hello", headers=key("k2")).json() == FORBIDDEN


def test_allowed_by_methods(users: GatewayHarness) -> None:
    users.add_route("/hello", {"key-auth": {}, "consumer-restriction": {
        "allowed_by_methods": [{"user": "jack1", "methods": ["POST", "PUT"]},
                               {"user": "jack1", "methods": ["GET"]}]}}, id="1")
    assert users.post("/hello", headers=key("k1")).status == 200
    res = users.get("/hello", headers=key("k1"))  # the first entry of a user decides
    assert (res.status, res.json()) == (403, FORBIDDEN)
    assert users.get("/hello", headers=key("k2")).status == 200  # no entry for jack2
    # a whitelisted user skips the method check; others are refused by the whitelist
    users.add_route("/both", {"key-auth": {}, "consumer-restriction": {
        "whitelist": ["jack1"],
        "allowed_by_methods": [{"user": "jack1", "methods": ["POST"]}]}}, id="2")
    assert users.get("/both", headers=key("k1")).status == 200
    assert users.get("/both", headers=key("k2")).status == 403


def test_by_consumer_group(users: GatewayHarness) -> None:
    users.add_route("/hello", {"key-auth": {}, "consumer-restriction": {
        "type": "consumer_group_id", "whitelist": ["gold"]}}, id="1")
    assert users.get("/hello", headers=key("k2")).status == 200
    res = users.get("/hello", headers=key("k1"))  # jack1 has no group
    assert (res.status, res.json()) == (401, {
        "message": "The request is rejected, please check the consumer_group_id for this "
                   "request"})


def test_by_route_and_service_id(gw: GatewayHarness) -> None:  # noqa: F811
    conf = {"consumer-restriction": {"type": "route_id", "blacklist": ["r-bad"]}}
    gw.add_route("/bad", conf, id="r-bad")
    gw.add_route("/good", conf, id="r-good")
    res = gw.get("/bad")
    assert (res.status, res.json()) == (403, {"message": "The route_id is forbidden."})
    assert gw.get("/good").status == 200  # no consumer needed

    doc = {k: list(v) for k, v in gw.doc.items()}
    doc["services"] = [{"id": "s1", "plugins": {"consumer-restriction": {
        "type": "service_id", "whitelist": ["s2"]}}}]
    gw.apply(doc)
    gw.add_route("/svc", service_id="s1", upstream=gw.upstream.node, id="r-svc")
    res = gw.get("/svc")
    assert (res.status, res.json()) == (403, {"message": "The service_id is forbidden."})
    gw.add_route("/nosvc", {"consumer-restriction": {"type": "service_id",
                                                     "whitelist": ["s1"]}}, id="r-nosvc")
    res = gw.get("/nosvc")
    assert (res.status, res.json()) == (401, {
        "message": "The request is rejected, please check the service_id for this request"})


def test_consumer_plugins_can_restrict(users: GatewayHarness) -> None:
    """A consumer-restriction in a consumer group's plugins applies to its members (merged
    after key-auth identified them, before ``access``)."""
    users.add_consumer_group("gold", {"consumer-restriction": {
        "allowed_by_methods": [{"user": "jack2", "methods": ["GET"]}]}})
    users.add_route("/hello", {"key-auth": {}}, id="1")
    assert users.get("/hello", headers=key("k2")).status == 200
    assert users.post("/hello", headers=key("k2")).json() == FORBIDDEN
    assert users.post("/hello", headers=key("k1")).status == 200  # not in the group


def test_schema(gw: GatewayHarness) -> None:  # noqa: F811
    with pytest.raises(ConfigRejected, match="object matches none of the required"):
        gw.add_route("/x", {"consumer-restriction": {}}, id="1")
    with pytest.raises(ConfigRejected, match='property "type" validation failed'):
        gw.add_route("/x", {"consumer-restriction": {"type": "host", "whitelist": ["a"]}},
                     id="1")
    with pytest.raises(ConfigRejected, match='property "whitelist" validation failed'):
        gw.add_route("/x", {"consumer-restriction": {"whitelist": []}}, id="1")
    with pytest.raises(ConfigRejected, match='property "rejected_code" validation failed'):
        gw.add_route("/x", {"consumer-restriction": {"whitelist": ["a"], "rejected_code": 100}},
                     id="1")
    with pytest.raises(ConfigRejected, match="matches none of the enum values"):
        gw.add_route("/x", {"consumer-restriction": {
            "allowed_by_methods": [{"user": "a", "methods": ["FETCH"]}]}}, id="1")


def test_one_phase_without_a_gateway() -> None:
    ctx = make_context("DELETE", "/", consumer=Consumer("jack"))
    conf = {"allowed_by_methods": [{"user": "jack", "methods": ["GET"]}]}
    res = run_phase(consumer_restriction, "access", conf, ctx)
    assert (res.status, res.body) == (403, FORBIDDEN)
    conf = {"allowed_by_methods": [{"user": "jack", "methods": ["DELETE"]}]}
    assert run_phase(consumer_restriction, "access", conf, ctx) is None
