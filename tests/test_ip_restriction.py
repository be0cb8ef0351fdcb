"""ip-restriction (spec §7.14, §11 cases 48 and 54, §6.2 phase order): IPv4/IPv6 addresses and
CIDRs, whitelist and blacklist, message and response_code, schema messages -- through a real
gateway (the SDK test kit). The client address is set with ``X-Real-IP`` (trusted from
127.0.0.1 by default, as nginx's realip module) or the ``real-ip`` plugin."""

from __future__ import annotations

import pytest

import builtin_plugins.ip_restriction as ip_restriction
from plugin_sdk.testing import ConfigRejected, GatewayHarness, make_context, run_phase
from tests.test_key_auth import gw, module_gateway  # noqa: F401  (fixtures)

BLOCKED = {"message": "Your IP address is not allowed"}


def from_ip(ip: str) -> dict[str, str]:
    return {"X-Real-IP": ip}


def test_case_48(gw: GatewayHarness) -> None:  # noqa: F811
    gw.add_route("/hello", {"ip-restriction": {"whitelist": ["127.0.0.0/24",
                                                             "113.74.26.106"]}}, id="1")
    assert gw.get("/hello").status == 200
    assert gw.get("/hello", headers=from_ip("113.74.26.106")).status == 200
    gw.upstream.clear()
    res = gw.get("/hello", headers=from_ip("114.114.114.114"))
    assert (res.status, res.json()) == (403, BLOCKED)
    gw.upstream.assert_not_received()

    gw.add_route("/hello", {"ip-restriction": {"blacklist": ["127.0.0.1"]}}, id="1")
    res = gw.get("/hello")
    assert (res.status, res.json()) == (403, BLOCKED)
    assert gw.get("/hello", headers=from_ip("127.0.0.2")).status == 200


def test_case_54_after_real_ip(gw: GatewayHarness) -> None:  # noqa: F811
    gw.add_route("/hello", {"real-ip": {"source": "http_xff"},
                            "ip-restriction": {"whitelist": ["1.1.1.1"]}}, id="1")
    assert gw.get("/hello", headers={"XFF": "1.1.1.1"}).status == 200
    assert gw.get("/hello", headers={"XFF": "1.1.1.1:80"}).status == 200
    for headers in ({}, {"XFF": "1.1.1.1.1"}, {"XFF": "1.1.1.1:65536"}):
        assert gw.get("/hello", headers=headers).status == 403, headers


def test_cidrs_and_exact_addresses(gw: GatewayHarness) -> None:  # noqa: F811
    gw.add_route("/hello", {"ip-restriction": {"blacklist": [
        "10.0.0.0/8", "192.168.1.77/24", "172.16.5.4", "0.0.0.0/32"]}}, id="1")
    blocked = ["10.1.2.3", "10.255.255.255", "192.168.1.1", "192.168.1.254", "172.16.5.4"]
    allowed = ["11.0.0.1", "192.168.2.1", "172.16.5.5", "9.255.255.255"]
    for ip in blocked:
        assert gw.get("/hello", headers=from_ip(ip)).status == 403, ip
    for ip in allowed:
        assert gw.get("/hello", headers=from_ip(ip)).status == 200, ip


def test_ipv6(gw: GatewayHarness) -> None:  # noqa: F811
    gw.add_route("/hello", {"ip-restriction": {"whitelist": [
        "2001:db8::/32", "::1", "fe80::1:2/128", "1.2.3.0/24"]}}, id="1")
    for ip in ("2001:db8::1", "2001:DB8:ffff::", "::1", "fe80::1:2", "::ffff:1.2.3.4"):
        assert gw.get("/hello", headers=from_ip(ip)).status == 200, ip
    for ip in ("2001:db9::1", "::2", "fe80::1:3", "::ffff:1.2.4.4", "127.0.0.2"):
        assert gw.get("/hello", headers=from_ip(ip)).status == 403, ip


def test_message_and_response_code(gw: GatewayHarness) -> None:  # noqa: F811
    gw.add_route("/hello", {"ip-restriction": {"blacklist": ["127.0.0.1"], "message": "nope",
                                               "response_code": 404}}, id="1")
    res = gw.get("/hello")
    assert (res.status, res.json()) == (404, {"message": "nope"})


def test_rewrite_auth_runs_first(gw: GatewayHarness) -> None:  # noqa: F811
    """Phase-major order (spec §6.2): key-auth (2500, rewrite) answers before ip-restriction
    (3000, access) although its priority is lower."""
    gw.add_consumer("jack", {"key-auth": {"key": "k"}})
    gw.add_route("/hello", {"key-auth": {}, "ip-restriction": {"blacklist": ["127.0.0.1"]}},
                 id="1")
    res = gw.get("/hello")
    assert (res.status, res.json()) == (401, {"message": "Missing API key in request"})
    assert gw.get("/hello", headers={"apikey": "k"}).status == 403


@pytest.mark.parametrize(("conf", "message"), [
    ({}, "value should match only one schema, but matches none"),
    ({"whitelist": ["1.1.1.1"], "blacklist": ["2.2.2.2"]},
     "value should match only one schema, but matches both schemas 1 and 2"),
    ({"whitelist": []}, 'property "whitelist" validation failed'),
    ({"whitelist": ["1.1.1.1.1"]}, "invalid ip address: 1.1.1.1.1"),
    ({"blacklist": ["10.0.0.0/33"]}, "invalid ip address: 10.0.0.0/33"),
    ({"blacklist": ["::1/129"]}, "invalid ip address: ::1/129"),
    ({"blacklist": ["10.0.0.0/255.0.0.0"]}, "invalid ip address: 10.0.0.0/255.0.0.0"),
    ({"blacklist": ["fe80::1%eth0"]}, "invalid ip address: fe80::1%eth0"),
    ({"blacklist": ["localhost"]}, "invalid ip address: localhost"),
    ({"blacklist": ["1.1.1.1"], "response_code": 401},
     'property "response_code" validation failed: expected 401 to be at least 403'),
    ({"blacklist": ["1.1.1.1"], "message": ""}, 'property "message" validation failed'),
])
def test_schema(gw: GatewayHarness, conf: dict, message: str) -> None:  # noqa: F811
    with pytest.raises(ConfigRejected) as err:
        gw.add_route("/x", {"ip-restriction": conf}, id="1")
    assert ("failed to check the configuration of plugin ip-restriction err: "
            + message) in str(err.value)


def test_lookup_without_a_gateway() -> None:
    conf = {"whitelist": [f"10.{i}.0.0/16" for i in range(200)] + ["192.0.2.7"]}
    for ip, allowed in (("10.199.3.4", True), ("10.200.0.1", False), ("192.0.2.7", True),
                        ("192.0.2.8", False), ("not-an-ip", False)):
        ctx = make_context(client_ip=ip if ip != "not-an-ip" else "127.0.0.1")
        if ip == "not-an-ip":
            ctx.var["remote_addr"] = ip
        res = run_phase(ip_restriction, "access", conf, ctx)
        assert (res is None) is allowed, ip
    compiled = ip_restriction._compile({"whitelist": ["10.0.0.0/16", "10.0.0.0/8", "1.2.3.4"]})
    assert [p for p, _ in compiled.matcher.v4] == [32, 16, 8]  # one set probe per length
