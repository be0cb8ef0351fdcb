"""real-ip (spec §7.18, §11 case 54): schema messages, where the address comes from
(X-Forwarded-For last entry, recursive with trusted addresses, other variables), ip:port and
IPv6 forms, invalid values and untrusted peers (no-op), and what follows the new address:
``$remote_addr``/``$remote_port`` for later plugins and the ``X-Real-IP``/``X-Forwarded-For``
the upstream receives -- through a real gateway (the SDK test kit) and on the request context
(``ctx.set_client_address``)."""

from __future__ import annotations

import http.client
from typing import Any

import pytest

import builtin_plugins.real_ip as real_ip
from kernel.plugins.manager import PluginInfo, PluginRegistry, check_conf, prepare_conf
from plugin_sdk.testing import ConfigRejected, GatewayHarness, MockUpstream, make_context, run_phase

# The gateway's own nginx-style real-IP (X-Real-IP from 127.0.0.1) is pointed elsewhere, so
# that only the plugin changes the address in these tests.
_NO_SERVER_REAL_IP = {"nginx_config": {"http": {"enable_access_log": False,
                                                "real_ip_from": ["192.0.2.1"]}}}
pytestmark = pytest.mark.sixgate(plugins=["real-ip", "proxy-rewrite", "proxy-mirror",
                                          "fault-injection"],
                                 config=_NO_SERVER_REAL_IP)

# Later plugins see the new address: proxy-rewrite (priority 1008) copies it into headers.
_SHOW = {"proxy-rewrite": {"headers": {"set": {"X-Client": "$remote_addr",
                                               "X-Client-Port": "$remote_port",
                                               "X-Peer": "$realip_remote_addr"}}}}


@pytest.fixture(scope="module")
def info() -> PluginInfo:
    found = PluginRegistry([real_ip]).get("real-ip")
    assert found is not None
    return found


def _route(sixgate: GatewayHarness, conf: dict[str, Any]) -> None:
    sixgate.add_route("/ip", {"real-ip": conf, **_SHOW}, id="ip")


def _seen(sixgate: GatewayHarness, path: str = "/ip", **headers: str) -> dict[str, str | None]:
    """What the upstream received about the client, for one request."""
    r = sixgate.get(path, headers={k.replace("_", "-"): v for k, v in headers.items()})
    assert r.status == 200, r.text
    assert sixgate.upstream is not None
    got = sixgate.upstream.last.headers
    return {name: got.get(name) for name in
            ("X-Real-IP", "X-Forwarded-For", "X-Client", "X-Client-Port", "X-Peer")}


# -- schema ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("conf", "message"), [
    ({}, 'property "source" is required'),
    ({"source": ""}, 'property "source" validation failed: string too short, expected at least '
                     "1, got 0"),
    ({"source": 1}, 'property "source" validation failed: wrong type: expected string, got '
                    "number"),
    ({"source": "http_x_forwarded_for", "trusted_addresses": []},
     'property "trusted_addresses" validation failed: expect array to have at least 1 items'),
    ({"source": "http_x_forwarded_for", "trusted_addresses": "1.1.1.1"},
     'property "trusted_addresses" validation failed: wrong type: expected array, got string'),
    ({"source": "http_x_forwarded_for", "trusted_addresses": ["1.1.1.1/33"]},
     'property "trusted_addresses" validation failed: failed to validate item 1: object '
     "matches none of the required"),
    ({"source": "http_x_forwarded_for", "trusted_addresses": ["127.0.0.1", "localhost"]},
     'property "trusted_addresses" validation failed: failed to validate item 2: object '
     "matches none of the required"),
    # the IPv6/CIDR pattern is loose (as APISIX's); check_schema catches the rest
    ({"source": "http_x_forwarded_for", "trusted_addresses": ["::1/999"]},
     "invalid ip address: ::1/999"),
    ({"source": "http_x_forwarded_for", "trusted_addresses": [":::1/64"]},
     "invalid ip address: :::1/64"),
    ({"source": "http_x_forwarded_for", "recursive": "yes"},
     'property "recursive" validation failed: wrong type: expected boolean, got string'),
])
def test_schema_errors(info: PluginInfo, conf: dict[str, Any], message: str) -> None:
    assert check_conf(info, conf) == message


def test_valid_confs_and_defaults(info: PluginInfo) -> None:
    assert check_conf(info, {"source": "http_x_real_ip", "trusted_addresses": [
        "127.0.0.1", "10.0.0.0/8", "10.1.2.3/8", "::1", "2001:db8::/32"], "recursive": True,
    }) is None
    assert prepare_conf(info, {"source": "arg_realip"}) == (
        {"source": "arg_realip", "recursive": False}, None)


def test_gateway_refuses_missing_source(sixgate: GatewayHarness) -> None:
    with pytest.raises(ConfigRejected, match='property "source" is required'):
        sixgate.add_route("/ip", {"real-ip": {}})


# -- through the gateway -------------------------------------------------------------------------


def test_without_the_plugin_nothing_changes(sixgate: GatewayHarness) -> None:
    sixgate.add_route("/ip", _SHOW, id="ip")
    seen = _seen(sixgate, X_Forwarded_For="1.1.1.1")
    assert seen["X-Real-IP"] == "127.0.0.1" and seen["X-Client"] == "127.0.0.1"
    assert seen["X-Forwarded-For"] == "1.1.1.1, 127.0.0.1"
    assert seen["X-Client-Port"] not in (None, "")


def test_x_forwarded_for_single_entry(sixgate: GatewayHarness) -> None:
    _route(sixgate, {"source": "http_x_forwarded_for"})
    assert _seen(sixgate, X_Forwarded_For="1.1.1.1") == {
        "X-Real-IP": "1.1.1.1",
        # nginx's $proxy_add_x_forwarded_for: the client's value, then the (new) $remote_addr
        "X-Forwarded-For": "1.1.1.1, 1.1.1.1",
        "X-Client": "1.1.1.1",
        "X-Client-Port": None,  # no port in the value: $remote_port is unset (as nginx)
        "X-Peer": "127.0.0.1",  # $realip_remote_addr keeps the peer
    }


def test_x_forwarded_for_takes_the_last_entry(sixgate: GatewayHarness) -> None:
    _route(sixgate, {"source": "http_x_forwarded_for"})
    seen = _seen(sixgate, X_Forwarded_For="1.1.1.1, 2.2.2.2,   3.3.3.3")
    assert seen["X-Real-IP"] == seen["X-Client"] == "3.3.3.3"
    assert seen["X-Forwarded-For"] == "1.1.1.1, 2.2.2.2,   3.3.3.3, 3.3.3.3"


def test_x_forwarded_for_on_several_lines_uses_the_last_line(
    sixgate: GatewayHarness, sixgate_upstream: MockUpstream
) -> None:
    _route(sixgate, {"source": "http_x_forwarded_for"})
    conn = http.client.HTTPConnection("127.0.0.1", sixgate.port, timeout=10)
    try:
        conn.putrequest("GET", "/ip")
        conn.putheader("X-Forwarded-For", "1.1.1.1, 2.2.2.2")
        conn.putheader("X-Forwarded-For", "4.4.4.4")
        conn.endheaders()
        assert conn.getresponse().status == 200
    finally:
        conn.close()
    assert sixgate_upstream.last.headers["X-Real-IP"] == "4.4.4.4"


@pytest.mark.parametrize(("xff", "expected"), [
    ("5.5.5.5, 6.6.6.6, 10.1.1.1", "6.6.6.6"),         # rightmost untrusted
    ("5.5.5.5, 6.6.6.6, 10.1.1.1, 127.0.0.1", "6.6.6.6"),
    ("10.0.0.1, 10.0.0.2", "10.0.0.1"),                 # all trusted: the first
    ("5.5.5.5,10.0.0.1", "5.5.5.5"),
    ("7.7.7.7", "7.7.7.7"),                             # one entry: itself
    ("5.5.5.5, 6.6.6.6:8080, 10.0.0.1", "6.6.6.6"),     # ip:port is never "trusted"
])
def test_recursive_with_trusted_addresses(sixgate: GatewayHarness, xff: str,
                                          expected: str) -> None:
    _route(sixgate, {"source": "http_x_forwarded_for", "recursive": True,
                     "trusted_addresses": ["127.0.0.1", "10.0.0.0/8"]})
    assert _seen(sixgate, X_Forwarded_For=xff)["X-Client"] == expected


def test_recursive_needs_trusted_addresses_and_vice_versa(sixgate: GatewayHarness) -> None:
    # recursive without trusted_addresses: the last entry, as without recursive
    _route(sixgate, {"source": "http_x_forwarded_for", "recursive": True})
    assert _seen(sixgate, X_Forwarded_For="5.5.5.5, 10.0.0.1")["X-Client"] == "10.0.0.1"
    # trusted_addresses without recursive: only gate the peer; the last entry is taken
    _route(sixgate, {"source": "http_x_forwarded_for", "trusted_addresses": ["127.0.0.0/8",
                                                                             "10.0.0.0/8"]})
    assert _seen(sixgate, X_Forwarded_For="5.5.5.5, 10.0.0.1")["X-Client"] == "10.0.0.1"


def test_untrusted_peer_changes_nothing(sixgate: GatewayHarness) -> None:
    _route(sixgate, {"source": "http_x_forwarded_for", "trusted_addresses": ["10.0.0.0/8",
                                                                             "::1"]})
    seen = _seen(sixgate, X_Forwarded_For="1.1.1.1")
    assert seen["X-Real-IP"] == seen["X-Client"] == "127.0.0.1"
    assert seen["X-Forwarded-For"] == "1.1.1.1, 127.0.0.1"
    # the same with the peer trusted
    _route(sixgate, {"source": "http_x_forwarded_for", "trusted_addresses": ["127.0.0.1"]})
    assert _seen(sixgate, X_Forwarded_For="1.1.1.1")["X-Client"] == "1.1.1.1"


def test_x_real_ip_source(sixgate: GatewayHarness) -> None:
    _route(sixgate, {"source": "http_x_real_ip"})
    seen = _seen(sixgate, X_Real_IP="8.8.4.4:1234")
    assert seen["X-Real-IP"] == seen["X-Client"] == "8.8.4.4"
    assert seen["X-Client-Port"] == "1234"
    assert seen["X-Forwarded-For"] == "8.8.4.4"


def test_query_argument_source(sixgate: GatewayHarness) -> None:
    _route(sixgate, {"source": "arg_realip"})
    seen = _seen(sixgate, "/ip?realip=2.2.2.2&x=1")
    assert seen["X-Real-IP"] == seen["X-Client"] == "2.2.2.2"
    assert _seen(sixgate, "/ip")["X-Client"] == "127.0.0.1"  # absent: no-op


@pytest.mark.parametrize(("value", "ip", "port"), [
    ("1.1.1.1:80", "1.1.1.1", "80"),
    ("1.1.1.1:65535", "1.1.1.1", "65535"),
    (" 9.9.9.9 ", "9.9.9.9", None),
    ("[2001:DB8::1]:443", "2001:db8::1", "443"),
    ("[::1]", "::1", None),
    ("2001:db8::2", "2001:db8::2", None),
    ("::ffff:1.2.3.4", "::ffff:1.2.3.4", None),
])
def test_address_forms(sixgate: GatewayHarness, value: str, ip: str, port: str | None) -> None:
    _route(sixgate, {"source": "http_x_forwarded_for"})
    seen = _seen(sixgate, X_Forwarded_For=value)
    assert (seen["X-Real-IP"], seen["X-Client"], seen["X-Client-Port"]) == (ip, ip, port)


@pytest.mark.parametrize("value", [
    "1.1.1.1.1", "1.1.1.1:65536", "1.1.1.1:0", "1.1.1.1:", "1.1.1.1:abc",
    "[::1", "[::1]x", "[::1]:70000", "[1.1.1.1]:80", "abc", "", "fe80::1%eth0", "01.1.1.1",
    "1.1.1.1, bad",
])
def test_invalid_value_changes_nothing(sixgate: GatewayHarness, value: str) -> None:
    _route(sixgate, {"source": "http_x_forwarded_for"})
    seen = _seen(sixgate, X_Forwarded_For=value)
    assert seen["X-Real-IP"] == seen["X-Client"] == "127.0.0.1"
    assert seen["X-Client-Port"] not in (None, "")  # the peer's port is kept
    assert "bad address" in sixgate.logs()


def test_missing_header_changes_nothing(sixgate: GatewayHarness) -> None:
    _route(sixgate, {"source": "http_x_forwarded_for"})
    seen = _seen(sixgate)
    assert seen["X-Real-IP"] == seen["X-Client"] == "127.0.0.1"
    assert seen["X-Forwarded-For"] == "127.0.0.1"


def test_spec_case_54_later_access_check(sixgate: GatewayHarness) -> None:
    """Spec case 54, with fault-injection (rewrite, priority 11000, after real-ip) standing in
    for ip-restriction: a later plugin's check sees the address real-ip set."""
    sixgate.add_route("/ip", {
        "real-ip": {"source": "http_x_forwarded_for"},
        "fault-injection": {"abort": {
            "http_status": 403, "body": "Your IP address is not allowed",
            "vars": [[["remote_addr", "~=", "1.1.1.1"]]]}},
    }, id="ip")
    for value, status in (("1.1.1.1", 200), ("1.1.1.1:80", 200), ("2.2.2.2", 403),
                          ("1.1.1.1.1", 403), ("1.1.1.1:65536", 403)):
        r = sixgate.get("/ip", headers={"X-Forwarded-For": value})
        assert r.status == status, value
    r = sixgate.get("/ip")
    assert (r.status, r.text) == (403, "Your IP address is not allowed")


def test_task_path_route(sixgate: GatewayHarness, sixgate_upstream: MockUpstream) -> None:
    """A route with an async hook (proxy-mirror's before_proxy) is served on the task path:
    the upstream headers follow the new address there too."""
    mirror = MockUpstream().start()
    try:
        sixgate.add_route("/ip", {"real-ip": {"source": "http_x_forwarded_for"},
                                  "proxy-mirror": {"host": f"http://127.0.0.1:{mirror.port}"},
                                  **_SHOW})
        seen = _seen(sixgate, X_Forwarded_For="3.3.3.3:99")
        assert seen == {"X-Real-IP": "3.3.3.3", "X-Forwarded-For": "3.3.3.3:99, 3.3.3.3",
                        "X-Client": "3.3.3.3", "X-Client-Port": "99", "X-Peer": "127.0.0.1"}
        # a body-carrying request as well
        r = sixgate.post("/ip", body=b"payload", headers={"X-Forwarded-For": "4.4.4.4"})
        assert r.status == 200
        assert sixgate_upstream.last.headers["X-Real-IP"] == "4.4.4.4"
        assert sixgate_upstream.last.body == b"payload"
    finally:
        mirror.stop()


# -- on the request context ----------------------------------------------------------------------


def test_rewrite_on_a_context() -> None:
    ctx = make_context("GET", "/", headers={"X-Forwarded-For": "1.1.1.1, [2001:db8::5]:8443"})
    ctx.var["remote_addr"] = "shadowed"  # a value a plugin set is dropped
    assert run_phase(real_ip, "rewrite", {"source": "http_x_forwarded_for"}, ctx) is None
    assert ctx.var["remote_addr"] == ctx.request.client_ip == "2001:db8::5"
    assert ctx.var["remote_port"] == 8443
    assert ctx.var["realip_remote_addr"] == "127.0.0.1"


def test_set_client_address() -> None:
    ctx = make_context("GET", "/")
    assert ctx.var["remote_port"] == 54321
    ctx.set_client_address("10.0.0.7", 4000)
    assert (ctx.var["remote_addr"], ctx.var["remote_port"]) == ("10.0.0.7", 4000)
    ctx.set_client_address("2001:DB8:0::1")
    assert ctx.request.client_ip == "2001:db8::1" and ctx.var["remote_port"] is None
    for ip, port in (("1.1.1.1.1", None), ("", None), ("fe80::1%eth0", None),
                     ("1.1.1.1", 0), ("1.1.1.1", 65536), ("1.1.1.1", True), ("1.1.1.1", "80")):
        with pytest.raises(ValueError):
            ctx.set_client_address(ip, port)
    assert ctx.var["remote_addr"] == "2001:db8::1"  # unchanged by the refused calls


@pytest.mark.parametrize(("value", "parsed"), [
    ("1.2.3.4", ("1.2.3.4", None)),
    ("1.2.3.4:5", ("1.2.3.4", 5)),
    ("[::1]:5", ("::1", 5)),
    ("::1", ("::1", None)),
    ("1.2.3.4:99999", None),
    ("[1.2.3.4]", None),
    ("::1:5:", None),
    ("1.2.3.4:\uff18\uff10", None),  # fullwidth digits are not a port
    ("[2001:DB8::1]", ("2001:DB8::1", None)),  # as written: the context canonicalizes
])
def test_parse_address(value: str, parsed: tuple[str, int | None] | None) -> None:
    assert real_ip.parse_address(value) == parsed
