"""request-id (spec §7.17, §11 case 53): the id on the upstream request and the response, a
client's id kept, header_name / include_in_response, every algorithm, ``$apisix_request_id``
and the schema — through the SDK test kit's gateway (real sockets) and on the request context."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import pytest

import builtin_plugins.request_id as rid
from kernel.plugins.manager import PluginInfo, PluginRegistry, check_conf, prepare_conf
from plugin_sdk.testing import GatewayHarness, MockUpstream, make_context, run_phase

pytestmark = pytest.mark.sixgate(plugins=["request-id", "proxy-rewrite", "fault-injection"])

UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


@pytest.fixture(scope="module")
def info() -> PluginInfo:
    found = PluginRegistry([rid]).get("request-id")
    assert found is not None
    return found


# -- schema ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("conf", "message"), [
    ({"algorithm": "snowflake"},
     'property "algorithm" validation failed: matches none of the enum values'),
    ({"header_name": 1},
     'property "header_name" validation failed: wrong type: expected string, got number'),
    ({"include_in_response": "yes"}, 'property "include_in_response" validation failed: wrong '
                                     "type: expected boolean, got string"),
    ({"range_id": {"length": 5}}, 'property "range_id" validation failed: property "length" '
                                  "validation failed: expected 5 to be at least 6"),
    ({"range_id": {"char_set": "abcde"}},
     'property "range_id" validation failed: property "char_set" validation failed: string '
     "too short, expected at least 6, got 5"),
])
def test_schema_errors(info: PluginInfo, conf: dict[str, Any], message: str) -> None:
    assert check_conf(info, conf) == message


def test_defaults(info: PluginInfo) -> None:
    filled, err = prepare_conf(info, {})
    assert err is None
    assert filled is not None
    assert (filled["header_name"], filled["include_in_response"], filled["algorithm"]) == (
        "X-Request-Id", True, "uuid")
    # range_id defaults to {} (its length 16 and char_set apply when the fields are absent)
    assert isinstance(filled["range_id"], dict)
    for algorithm in ("uuid", "nanoid", "range_id", "ksuid", "uuidv7"):
        assert check_conf(info, {"algorithm": algorithm}) is None


# -- through a real gateway ----------------------------------------------------------------------


def test_default_conf_sets_a_uuid_upstream_and_in_the_response(sixgate: GatewayHarness,
    sixgate_upstream: MockUpstream) -> None:
    sixgate.add_route("/hello", {"request-id": {}})
    ids = set()
    for _ in range(3):
        r = sixgate.get("/hello")
        assert r.status == 200
        value = r.headers["X-Request-Id"]
        assert UUID4.match(value), value
        req = sixgate_upstream.assert_received(headers={"X-Request-Id": value})
        assert req.headers.getall("X-Request-Id") == [value]
        ids.add(value)
    assert len(ids) == 3  # unique per request


def test_a_client_id_is_kept(sixgate: GatewayHarness, sixgate_upstream: MockUpstream) -> None:
    sixgate.add_route("/hello", {"request-id": {}})
    r = sixgate.get("/hello", headers={"X-Request-Id": "client-id-1"})
    assert r.headers.getall("X-Request-Id") == ["client-id-1"]
    req = sixgate_upstream.assert_received(headers={"X-Request-Id": "client-id-1"})
    assert req.headers.getall("X-Request-Id") == ["client-id-1"]
    # an empty header does not count: a new id is made
    r = sixgate.get("/hello", headers={"X-Request-Id": ""})
    assert UUID4.match(r.headers["X-Request-Id"])
    sixgate_upstream.assert_received(headers={"X-Request-Id": r.headers["X-Request-Id"]})


def test_include_in_response_false(sixgate: GatewayHarness, sixgate_upstream: MockUpstream) -> None:
    sixgate.add_route("/hello", {"request-id": {"include_in_response": False}})
    r = sixgate.get("/hello")
    assert "X-Request-Id" not in r.headers
    assert UUID4.match(sixgate_upstream.last.headers["X-Request-Id"] or "")


def test_custom_header_name(sixgate: GatewayHarness, sixgate_upstream: MockUpstream) -> None:
    sixgate.add_route("/hello", {"request-id": {"header_name": "Custom-Header-Name"}})
    r = sixgate.get("/hello")
    value = r.headers["Custom-Header-Name"]
    assert UUID4.match(value)
    assert "X-Request-Id" not in r.headers
    sixgate_upstream.assert_received(headers={"Custom-Header-Name": value, "X-Request-Id": None})


def test_an_upstream_response_id_is_kept(sixgate: GatewayHarness,
    sixgate_upstream: MockUpstream) -> None:
    sixgate_upstream.respond(body="ok", headers={"X-Request-Id": "from-upstream"})
    sixgate.add_route("/hello", {"request-id": {}})
    r = sixgate.get("/hello")
    assert r.headers.getall("X-Request-Id") == ["from-upstream"]
    sent = sixgate_upstream.last.headers["X-Request-Id"]
    assert sent != "from-upstream" and UUID4.match(sent or "")
    # an empty one is replaced
    sixgate_upstream.respond(body="ok", headers={"X-Request-Id": ""})
    r = sixgate.get("/hello")
    assert UUID4.match(r.headers["X-Request-Id"])


def test_apisix_request_id_variable(sixgate: GatewayHarness,
    sixgate_upstream: MockUpstream) -> None:
    """Later plugins see the id as ``$apisix_request_id`` and ``$http_x_request_id``."""
    sixgate.add_route("/hello", {"request-id": {}, "proxy-rewrite": {"headers": {
        "X-Seen": "$apisix_request_id", "X-Seen-Header": "$http_x_request_id"}}})
    r = sixgate.get("/hello")
    value = r.headers["X-Request-Id"]
    sixgate_upstream.assert_received(headers={"X-Seen": value, "X-Seen-Header": value})
    sixgate.get("/hello", headers={"X-Request-Id": "mine"})
    sixgate_upstream.assert_received(headers={"X-Seen": "mine", "X-Seen-Header": "mine"})


def test_generated_responses_carry_the_id(sixgate: GatewayHarness) -> None:
    # fault-injection (11000) answers after request-id (12015) ran
    sixgate.add_route("/hello", {"request-id": {}, "fault-injection": {
        "abort": {"http_status": 403, "body": "no"}}})
    r = sixgate.get("/hello", headers={"X-Request-Id": "abc"})
    assert (r.status, r.headers["X-Request-Id"]) == (403, "abc")


def test_algorithms_through_the_gateway(sixgate: GatewayHarness,
    sixgate_upstream: MockUpstream) -> None:
    sixgate.add_route("/hello", {"request-id": {
        "algorithm": "range_id", "range_id": {"length": 8, "char_set": "abcdef"}}}, id="1")
    value = sixgate.get("/hello").headers["X-Request-Id"]
    assert re.fullmatch(r"[a-f]{8}", value), value
    sixgate.add_route("/hello", {"request-id": {"algorithm": "nanoid"}}, id="1")
    value = sixgate.get("/hello").headers["X-Request-Id"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{21}", value), value
    sixgate_upstream.assert_received(headers={"X-Request-Id": value})


# -- the generators --------------------------------------------------------------------------------


def _run(conf: dict[str, Any]) -> str:
    ctx = make_context("GET", "/hello")
    run_phase(rid, "rewrite", conf, ctx)
    value = ctx.var["apisix_request_id"]
    assert isinstance(value, str)
    return value


def test_uuid() -> None:
    values = {_run({}) for _ in range(50)}
    assert len(values) == 50 and all(UUID4.match(v) for v in values)


def test_nanoid() -> None:
    values = {_run({"algorithm": "nanoid"}) for _ in range(50)}
    assert len(values) == 50
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{21}", v) for v in values)


def test_range_id() -> None:
    assert re.fullmatch(r"[a-zA-Z0-9]{16}", _run({"algorithm": "range_id"}))
    value = _run({"algorithm": "range_id", "range_id": {"length": 40, "char_set": "xyz123"}})
    assert re.fullmatch(r"[xyz123]{40}", value)
    # the default char set is APISIX's, letter for letter (no "J")
    assert "J" not in rid.DEFAULT_CHAR_SET and len(rid.DEFAULT_CHAR_SET) == 62


def test_ksuid() -> None:
    value = _run({"algorithm": "ksuid"})
    assert re.fullmatch(r"[0-9A-Za-z]{27}", value), value
    n = 0
    for ch in value:
        n = n * 62 + rid._BASE62.index(ch)
    stamp = n >> 128
    assert abs(stamp + 1_400_000_000 - time.time()) < 5
    assert len({_run({"algorithm": "ksuid"}) for _ in range(20)}) == 20


def test_uuidv7() -> None:
    values = [_run({"algorithm": "uuidv7"}) for _ in range(20)]
    assert len(set(values)) == 20
    for value in values:
        u = uuid.UUID(value)
        assert u.version == 7 and u.variant == uuid.RFC_4122
        assert abs((u.int >> 80) / 1000 - time.time()) < 5


def test_rewrite_and_header_filter_on_the_context() -> None:
    ctx = make_context("GET", "/hello", headers={"X-Request-Id": "given"})
    run_phase(rid, "rewrite", {}, ctx)
    assert ctx.var["apisix_request_id"] == "given"
    assert "x-request-id" not in ctx.upstream.set  # forwarded as received
    run_phase(rid, "header_filter", {}, ctx)
    assert ctx.response.headers["X-Request-Id"] == "given"

    ctx = make_context("GET", "/hello")
    run_phase(rid, "rewrite", {"header_name": "X-Trace"}, ctx)
    made = ctx.var["apisix_request_id"]
    assert ctx.upstream.set["x-trace"] == ("X-Trace", [made])
    assert ctx.var["http_x_trace"] == made
    run_phase(rid, "header_filter", {"header_name": "X-Trace", "include_in_response": False}, ctx)
    assert "X-Trace" not in ctx.response.headers

    # header_filter without a rewrite (the request was answered before it): nothing to add
    ctx = make_context("GET", "/hello")
    run_phase(rid, "header_filter", {}, ctx)
    assert "X-Request-Id" not in ctx.response.headers
