"""redirect (spec §7.1, §11 cases 38-40): schema messages, Location templates, http_to_https
ports and codes, regex_uri, encode_uri, append_query_string — through a real gateway (the SDK
test kit's in-process gateway and a ``sixgate start`` process) and on the request context."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import builtin_plugins.redirect as redirect
from kernel.plugins.manager import PluginInfo, PluginRegistry, check_conf
from plugin_sdk import Response
from plugin_sdk.testing import ConfigRejected, GatewayHarness, MockUpstream, make_context, run_phase
from tests.support.gateway import GatewayProcess, wait_port
from tests.support.upstream import free_port

pytestmark = pytest.mark.sixgate(plugins=["redirect", "proxy-rewrite", "fault-injection"])


@pytest.fixture(autouse=True)
def _reset_plugin_attr() -> Iterator[None]:
    yield
    redirect.destroy()


@pytest.fixture(scope="module")
def info() -> PluginInfo:
    found = PluginRegistry([redirect]).get("redirect")
    assert found is not None
    return found


# -- schema ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("conf", "message"), [
    ({"uri": "/a", "http_to_https": True},
     "value should match only one schema, but matches both schemas 1 and 3"),
    ({"uri": "/a", "regex_uri": ["^/a", "/b"]},
     "value should match only one schema, but matches both schemas 1 and 2"),
    ({}, "value should match only one schema, but matches none"),
    ({"ret_code": 301}, "value should match only one schema, but matches none"),
    ({"http_to_https": True, "append_query_string": True},
     "only one of `http_to_https` and `append_query_string` can be configured."),
    ({"uri": "/"}, 'property "uri" validation failed: string too short, expected at least 2, '
                   "got 1"),
    ({"uri": "/a", "ret_code": 199},
     'property "ret_code" validation failed: expected 199 to be at least 200'),
    ({"regex_uri": ["^/a"]},
     'property "regex_uri" validation failed: expect array to have at least 2 items'),
    ({"regex_uri": ["^/a", "/b", "/c"]},
     'property "regex_uri" validation failed: expect array to have at most 2 items'),
    ({"http_to_https": "yes"},
     'property "http_to_https" validation failed: wrong type: expected boolean, got string'),
])
def test_schema_errors(info: PluginInfo, conf: dict[str, Any], message: str) -> None:
    assert check_conf(info, conf) == message


def test_invalid_regex_uri(info: PluginInfo) -> None:
    err = check_conf(info, {"regex_uri": ["^/test/(.*", "/x"]})
    assert err is not None and err.startswith("invalid regex_uri (^/test/(.*, /x), err:")
    # a bad template is found by the trial substitution on "/fake_uri", as in APISIX
    err = check_conf(info, {"regex_uri": ["^/(.*)", "/$x"]})
    assert err == ('invalid regex_uri (^/(.*), /$x), err:invalid capturing variable name found '
                   'in "/$x"')
    assert check_conf(info, {"regex_uri": ["^/nomatch(.*)", "/$x"]}) is None


def test_valid_confs_and_defaults(info: PluginInfo) -> None:
    for conf in ({"uri": "/a"}, {"regex_uri": ["^/a(.*)", "/b$1"]}, {"http_to_https": True},
                 {"http_to_https": False}, {"uri": "$uri", "ret_code": 200, "encode_uri": True,
                                            "append_query_string": True}):
        assert check_conf(info, conf) is None, conf
    ctx = make_context("GET", "/hello")
    result = run_phase(redirect, "rewrite", {"uri": "/x"}, ctx)
    assert result.status == 302  # the default ret_code


def test_admin_api_refuses_uri_with_http_to_https(tmp_path: Path) -> None:
    """Spec case 39, through the Admin API of a ``sixgate start`` process."""
    admin_port, key = free_port(), "doc0test0key0000000000000000000"
    gw = GatewayProcess(tmp_path, {
        "plugins": ["redirect", "fault-injection"],
        "deployment": {"role": "traditional", "role_traditional": {"config_provider": "yaml"},
                       "admin": {"admin_listen": {"ip": "127.0.0.1", "port": admin_port},
                                 "admin_key": [{"name": "a", "key": key, "role": "admin"}]}},
    })
    gw.start({"routes": []})
    try:
        wait_port(admin_port)
        conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=10)
        conn.request("PUT", "/apisix/admin/routes/1", headers={"X-API-KEY": key},
                     body=json.dumps({"uri": "/hello", "plugins": {"redirect": {
                         "uri": "/x", "http_to_https": True}}}))
        r = conn.getresponse()
        assert r.status == 400
        assert json.loads(r.read()) == {"error_msg": (
            "failed to check the configuration of plugin redirect err: value should match only "
            "one schema, but matches both schemas 1 and 3")}
    finally:
        gw.stop()


def test_gateway_refuses_bad_conf(sixgate: GatewayHarness) -> None:
    with pytest.raises(ConfigRejected, match="only one of `http_to_https` and"):
        sixgate.add_route("/hello", {"redirect": {"http_to_https": True,
                                                  "append_query_string": True}})


# -- uri templates -------------------------------------------------------------------------------


def test_uri_with_ret_code(sixgate: GatewayHarness, sixgate_upstream: MockUpstream) -> None:
    sixgate.add_route("/hello", {"redirect": {"uri": "/test/add", "ret_code": 301}})
    r = sixgate.get("/hello")
    assert r.status == 301
    assert r.headers["Location"] == "/test/add"
    assert b"<h1>301 Moved Permanently</h1>" in r.body
    assert r.headers["Content-Type"].startswith("text/html")
    sixgate_upstream.assert_not_received()


@pytest.mark.parametrize(("template", "path", "location"), [
    ("$uri/test/a${arg_name}c", "/hello?name=json", "/hello/test/ajsonc"),
    ("/foo$$uri", "/hello", "/foo$/hello"),
    ("$uri/$bad_var/bar", "/hello", "/hello//bar"),
    ("\\$uri/x", "/hello", "\\$uri/x"),
    ("/a\\b$uri", "/hello", "/ab/hello"),
    ("${http_x_to}/p", "/hello", "http://example.com/p"),
    ("/$request_method/${arg_n}$", "/hello?n=1", "/GET/1$"),
    ("https://$host$request_uri", "/hello?a=b", "https://foo.com/hello?a=b"),
])
def test_uri_templates(sixgate: GatewayHarness, template: str, path: str, location: str) -> None:
    sixgate.add_route("/hello", {"redirect": {"uri": template}})
    r = sixgate.get(path, headers={"Host": "foo.com", "X-To": "http://example.com"})
    assert r.status == 302
    assert r.headers["Location"] == location
    assert b"<h1>302 Found</h1>" in r.body


def test_other_ret_codes_have_empty_bodies(sixgate: GatewayHarness,
    sixgate_upstream: MockUpstream) -> None:
    sixgate.add_route("/hello", {"redirect": {"uri": "/new", "ret_code": 307}}, id="1")
    r = sixgate.get("/hello")
    assert (r.status, r.headers["Location"], r.body) == (307, "/new", b"")
    sixgate.add_route("/hello", {"redirect": {"uri": "/new", "ret_code": 200}}, id="1")
    r = sixgate.get("/hello")
    assert (r.status, r.headers["Location"], r.body) == (200, "/new", b"")
    sixgate_upstream.assert_not_received()


# -- http_to_https -------------------------------------------------------------------------------


def test_http_to_https_default_port(sixgate: GatewayHarness,
    sixgate_upstream: MockUpstream) -> None:
    sixgate.add_route("/hello", {"redirect": {"http_to_https": True}}, host="foo.com")
    r = sixgate.get("/hello", headers={"Host": "foo.com"})
    assert r.status == 301
    assert r.headers["Location"] == "https://foo.com:9443/hello"
    r = sixgate.get("/hello?a=1&b=2", headers={"Host": "FOO.com:9080"})
    assert (r.status, r.headers["Location"]) == (301, "https://foo.com:9443/hello?a=1&b=2")
    r = sixgate.request("HEAD", "/hello", headers={"Host": "foo.com"})
    assert (r.status, r.headers["Location"]) == (301, "https://foo.com:9443/hello")
    sixgate_upstream.assert_not_received()


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_http_to_https_other_methods_get_308(sixgate: GatewayHarness, method: str) -> None:
    sixgate.add_route("/hello", {"redirect": {"http_to_https": True, "ret_code": 302}})
    r = sixgate.request(method, "/hello", headers={"Host": "foo.com"}, body=b"x")
    assert r.status == 308
    assert r.headers["Location"] == "https://foo.com:9443/hello"
    assert r.body == b""


def test_http_to_https_skips_https_requests(sixgate: GatewayHarness,
    sixgate_upstream: MockUpstream) -> None:
    sixgate.add_route("/hello", {"redirect": {"http_to_https": True}})
    r = sixgate.get("/hello", headers={"Host": "foo.com", "X-Forwarded-Proto": "https"})
    assert r.status == 200
    sixgate_upstream.assert_received(path="/hello")
    r = sixgate.get("/hello", headers={"Host": "foo.com", "X-Forwarded-Proto": "http"})
    assert r.status == 301
    # the forwarded scheme wins over the connection's
    ctx = make_context("GET", "/hello", scheme="https", host="foo.com",
                       headers={"X-Forwarded-Proto": "http"})
    assert run_phase(redirect, "rewrite", {"http_to_https": True}, ctx).status == 301
    ctx = make_context("GET", "/hello", scheme="https", host="foo.com")
    assert run_phase(redirect, "rewrite", {"http_to_https": True}, ctx) is None
    # http_to_https false does nothing
    assert run_phase(redirect, "rewrite", {"http_to_https": False},
                     make_context("GET", "/hello")) is None


def test_http_to_https_port_from_plugin_attr(sixgate_factory: Any) -> None:
    gw = sixgate_factory(plugins=["redirect"], plugin_attr={"redirect": {"https_port": 8443}})
    gw.add_route("/hello", {"redirect": {"http_to_https": True}})
    r = gw.get("/hello", headers={"Host": "foo.com"})
    assert (r.status, r.headers["Location"]) == (301, "https://foo.com:8443/hello")
    # a plugin reload re-reads plugin_attr: 443 is left out of the Location
    assert gw.reload_plugins(plugin_attr={"redirect": {"https_port": 443}}).ok
    r = gw.get("/hello", headers={"Host": "foo.com"})
    assert (r.status, r.headers["Location"]) == (301, "https://foo.com/hello")


@pytest.mark.parametrize(("attr", "location"), [
    ({"https_port": 8443}, "https://foo.com:8443/hello"),
    ({"https_port": "10443"}, "https://foo.com:10443/hello"),
    ({"https_port": 443}, "https://foo.com/hello"),
    ({"https_port": 70000}, "https://foo.com:9443/hello"),  # invalid: the SSL listen port
    ({}, "https://foo.com:9443/hello"),
])
def test_https_port_resolution(attr: dict[str, Any], location: str) -> None:
    redirect.init(attr)
    result = run_phase(redirect, "rewrite", {"http_to_https": True},
                       make_context("GET", "/hello", host="foo.com"))
    assert isinstance(result, Response)
    assert result.headers["Location"] == location


def test_https_port_from_the_ssl_listen_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    import plugin_sdk

    redirect.init({})
    monkeypatch.setattr(plugin_sdk, "ssl_listen_ports", lambda: [8444, 9445], raising=False)
    assert redirect.https_port() == 8444
    monkeypatch.setattr(plugin_sdk, "ssl_listen_ports", lambda: [], raising=False)  # SSL off
    assert redirect.https_port() is None
    redirect.init({"https_port": 7443})
    assert redirect.https_port() == 7443


@pytest.mark.parametrize(("ssl", "location"), [
    ({"enable": True, "listen": [{"port": 8444}, {"port": 9445}]}, "https://foo.com:8444/hello"),
    ({"enable": False}, "https://foo.com/hello"),
])
def test_http_to_https_port_from_the_gateways_ssl_listen(
    sixgate_factory: Any, ssl: dict[str, Any], location: str
) -> None:
    from kernel.plugins.runtime import RUNTIME

    try:
        gw = sixgate_factory(plugins=["redirect"], config={"apisix": {"ssl": ssl}})
        gw.add_route("/hello", {"redirect": {"http_to_https": True}})
        r = gw.get("/hello", headers={"Host": "foo.com"})
        assert (r.status, r.headers["Location"]) == (301, location)
    finally:
        RUNTIME.set_ssl_ports([9443])  # the runtime is per process: back to the default


# -- regex_uri -----------------------------------------------------------------------------------


def test_regex_uri(sixgate: GatewayHarness, sixgate_upstream: MockUpstream) -> None:
    conf = {"regex_uri": ["^/test/(.*)", "http://test.com/${1}"], "ret_code": 301}
    sixgate.add_route("/test/*", {"redirect": conf})
    sixgate.add_route("/hello", {"redirect": conf})
    r = sixgate.get("/test/1")
    assert (r.status, r.headers["Location"]) == (301, "http://test.com/1")
    sixgate_upstream.assert_not_received()
    r = sixgate.get("/hello")  # no match: proxied
    assert r.status == 200
    sixgate_upstream.assert_received(path="/hello")


def test_regex_uri_replaces_the_first_match_only(sixgate: GatewayHarness) -> None:
    sixgate.add_route("/a/*", {"redirect": {"regex_uri": ["b(\\d)", "[$1$$]"]}})
    r = sixgate.get("/a/b1/b2?q=1")
    assert (r.status, r.headers["Location"]) == (302, "/a/[1$]/b2")


def test_regex_uri_bad_template_at_request_time_is_500(sixgate: GatewayHarness,
    sixgate_upstream: MockUpstream) -> None:
    # "/fake_uri" does not match, so the write is accepted (as in APISIX); the request fails
    sixgate.add_route("/hello", {"redirect": {"regex_uri": ["^/hel(.*)", "/$name"]}})
    r = sixgate.get("/hello")
    assert r.status == 500
    assert b"500 Internal Server Error" in r.body
    assert "failed to substitute the uri:/hello (^/hel(.*)) with /$name" in sixgate.logs()
    sixgate_upstream.assert_not_received()


# -- encode_uri / append_query_string ------------------------------------------------------------


def test_encode_uri(sixgate: GatewayHarness) -> None:
    sixgate.add_route("/hello", {"redirect": {"uri": "/a b%c#d/$arg_p?x=a b", "encode_uri": True}},
                      id="1")
    r = sixgate.get("/hello?p=v")
    assert r.headers["Location"] == "/a%20b%25c%23d/v?x=a b"  # the query part is kept as is
    sixgate.add_route("/hello", {"redirect": {"uri": "/a b", "encode_uri": False}}, id="1")
    assert sixgate.get("/hello").headers["Location"] == "/a b"


@pytest.mark.parametrize(("template", "path", "location"), [
    ("/new", "/hello?a=1&b=2", "/new?a=1&b=2"),
    ("/new?x=1", "/hello?a=1", "/new?x=1&a=1"),
    ("/new", "/hello", "/new"),
])
def test_append_query_string(sixgate: GatewayHarness, template: str, path: str,
                             location: str) -> None:
    sixgate.add_route("/hello", {"redirect": {"uri": template, "append_query_string": True}})
    assert sixgate.get(path).headers["Location"] == location


def test_append_query_string_with_regex_uri(sixgate: GatewayHarness) -> None:
    sixgate.add_route("/test/*", {"redirect": {"regex_uri": ["^/test/(.*)", "/v2/$1"],
                                               "append_query_string": True, "ret_code": 301}})
    r = sixgate.get("/test/x?k=v")
    assert (r.status, r.headers["Location"]) == (301, "/v2/x?k=v")


def test_runs_after_proxy_rewrite_priority(sixgate: GatewayHarness) -> None:
    """redirect (900) runs after proxy-rewrite (1008) in rewrite: ``$uri`` is the rewritten
    path; fault-injection (11000) answers before it."""
    sixgate.add_route("/hello", {"redirect": {"uri": "$uri"},
                                 "proxy-rewrite": {"uri": "/rewritten"}}, id="1")
    assert sixgate.get("/hello").headers["Location"] == "/rewritten"
    sixgate.add_route("/hello", {"redirect": {"uri": "/x"},
                                 "fault-injection": {"abort": {"http_status": 403}}}, id="1")
    r = sixgate.get("/hello")
    assert r.status == 403 and "Location" not in r.headers


# -- the template parser, unit level ------------------------------------------------------------


def test_template_parser() -> None:
    var = {"uri": "/hello", "n": 5, "arg_a": "x"}
    cases = {
        "$uri": "/hello",
        "${uri}": "/hello",
        "${ uri }": "${ uri }",  # no blanks inside braces (unlike resolve_var)
        "$arg_a.b": "x.b",  # "." ends a name
        "$n": "5",
        "$missing|": "|",
        "\\\\$uri": "\\$uri",  # "\\" is dropped, then "\$uri" is kept
        "$": "$",
        "a$$b": "a$",  # "$" then $b (unset)
    }
    for tpl, want in cases.items():
        assert redirect._render(redirect._parse_template(tpl), var) == want, tpl
