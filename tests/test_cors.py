"""cors through a real in-process gateway (spec §7.15, §11 case 49)."""

from __future__ import annotations

import pytest

import builtin_plugins.cors as cors
from plugin_sdk.testing import ConfigRejected, GatewayHarness, HttpResult, run_phase

pytestmark = pytest.mark.sixgate(plugins=["cors", "fault-injection", "echo"])

CORS_HEADERS = (
    "Access-Control-Allow-Origin",
    "Access-Control-Allow-Methods",
    "Access-Control-Allow-Headers",
    "Access-Control-Expose-Headers",
    "Access-Control-Max-Age",
    "Access-Control-Allow-Credentials",
    "Timing-Allow-Origin",
)

AUTH_PLUGIN = '''
from plugin_sdk import Response, hookimpl

name = "test-auth"
version = "0.1"
priority = 2500
type = "auth"
schema = {"type": "object"}


@hookimpl
def rewrite(ctx, conf):
    if ctx.request.headers.get("apikey") != "secret":
        return Response(401, {"message": "Missing API key found in request"})
'''


def vary(r: HttpResult) -> list[str]:
    return [v.strip() for value in r.headers.getall("Vary") for v in value.split(",")]


def assert_no_cors(r: HttpResult) -> None:
    present = [h for h in CORS_HEADERS if h in r.headers]
    assert not present, f"unexpected CORS headers: {present}"


# -- the default conf (case 49) ------------------------------------------------------------------


def test_default_conf(sixgate: GatewayHarness) -> None:
    sixgate.add_route("/hello", {"cors": {}})
    for headers in ({}, {"Origin": "http://sub.domain.com"}):
        r = sixgate.get("/hello", headers=headers)
        assert r.status == 200
        assert r.headers["Access-Control-Allow-Origin"] == "*"
        assert r.headers["Access-Control-Allow-Methods"] == "*"
        assert r.headers["Access-Control-Allow-Headers"] == "*"
        assert r.headers["Access-Control-Max-Age"] == "5"
        assert "Vary" not in r.headers
        assert "Access-Control-Expose-Headers" not in r.headers
        assert "Access-Control-Allow-Credentials" not in r.headers
        assert "Timing-Allow-Origin" not in r.headers
    assert len(sixgate.upstream.requests) == 2  # type: ignore[union-attr]


def test_origin_list_with_credentials(sixgate: GatewayHarness) -> None:
    sixgate.upstream.respond(200, "ok", {"Vary": "Accept-Encoding"})  # type: ignore[union-attr]
    sixgate.add_route("/hello", {"cors": {
        "allow_origins": "http://sub.domain.com,http://sub2.domain.com",
        "allow_methods": "GET,POST",
        "allow_headers": "headr1,headr2",
        "expose_headers": "ex-headr1,ex-headr2",
        "max_age": 50,
        "allow_credential": True,
    }})
    r = sixgate.get("/hello", headers={"Origin": "http://sub2.domain.com"})
    assert r.status == 200
    assert r.headers["Access-Control-Allow-Origin"] == "http://sub2.domain.com"
    assert r.headers["Access-Control-Allow-Methods"] == "GET,POST"
    assert r.headers["Access-Control-Allow-Headers"] == "headr1,headr2"
    assert r.headers["Access-Control-Expose-Headers"] == "ex-headr1,ex-headr2"
    assert r.headers["Access-Control-Max-Age"] == "50"
    assert r.headers["Access-Control-Allow-Credentials"] == "true"
    assert vary(r) == ["Accept-Encoding", "Origin"]  # appended to the upstream's

    r = sixgate.get("/hello", headers={"Origin": "http://sub3.domain.com"})
    assert r.status == 200 and r.text == "ok"
    assert_no_cors(r)
    assert "Origin" in vary(r)

    r = sixgate.get("/hello")  # no Origin at all
    assert_no_cors(r)


def test_single_origin_must_match(sixgate: GatewayHarness) -> None:
    sixgate.add_route("/hello", {"cors": {"allow_origins": "http://one.domain.com",
                                          "timing_allow_origins": "http://another.domain.com"}})
    r = sixgate.get("/hello", headers={"Origin": "http://one.domain.com"})
    assert r.headers["Access-Control-Allow-Origin"] == "http://one.domain.com"
    assert "Timing-Allow-Origin" not in r.headers
    r = sixgate.get("/hello", headers={"Origin": "http://another.domain.com"})
    assert "Access-Control-Allow-Origin" not in r.headers
    assert r.headers["Timing-Allow-Origin"] == "http://another.domain.com"
    r = sixgate.get("/hello", headers={"Origin": "http://other.domain.com"})
    assert_no_cors(r)


def test_double_star_echoes(sixgate: GatewayHarness) -> None:
    sixgate.add_route("/hello", {"cors": {
        "allow_origins": "**", "allow_methods": "**", "allow_headers": "**",
        "expose_headers": "", "max_age": 3500, "allow_credential": True,
    }})
    r = sixgate.get("/hello", headers={"Origin": "http://sub.domain.com",
                                       "Access-Control-Request-Headers": "x-a,x-b"})
    assert r.headers["Access-Control-Allow-Origin"] == "http://sub.domain.com"
    assert r.headers["Access-Control-Allow-Methods"] == cors.ALL_METHODS
    assert r.headers["Access-Control-Allow-Methods"] == (
        "GET,POST,PUT,DELETE,PATCH,HEAD,OPTIONS,CONNECT,TRACE")
    assert r.headers["Access-Control-Allow-Headers"] == "x-a,x-b"
    assert r.headers["Access-Control-Max-Age"] == "3500"
    assert r.headers["Access-Control-Allow-Credentials"] == "true"
    assert "Access-Control-Expose-Headers" not in r.headers  # empty: not sent
    assert vary(r) == ["Origin"]
    r = sixgate.get("/hello")  # no Origin: "*"
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Headers" not in r.headers  # nothing to echo


def test_upstream_cors_headers_are_replaced(sixgate: GatewayHarness) -> None:
    sixgate.upstream.respond(200, "ok", {  # type: ignore[union-attr]
        "Access-Control-Allow-Origin": "http://evil.com",
        "Access-Control-Allow-Methods": "DELETE",
    })
    sixgate.add_route("/hello", {"cors": {"allow_origins": "http://good.com",
                                          "allow_methods": "GET"}})
    r = sixgate.get("/hello", headers={"Origin": "http://good.com"})
    assert r.headers.getall("Access-Control-Allow-Origin") == ["http://good.com"]
    assert r.headers.getall("Access-Control-Allow-Methods") == ["GET"]


# -- preflight -----------------------------------------------------------------------------------


def test_preflight_answered_without_upstream(sixgate: GatewayHarness) -> None:
    sixgate.add_route("/hello", {"cors": {"allow_origins": "http://sub.domain.com",
                                          "allow_methods": "GET,PUT"}})
    r = sixgate.request("OPTIONS", "/hello", headers={
        "Origin": "http://sub.domain.com",
        "Access-Control-Request-Method": "PUT",
        "Access-Control-Request-Headers": "x-custom",
    })
    assert r.status == 200
    assert r.body == b""
    assert r.headers["Content-Length"] == "0"
    assert r.headers["Access-Control-Allow-Origin"] == "http://sub.domain.com"
    assert r.headers["Access-Control-Allow-Methods"] == "GET,PUT"
    assert r.headers["Access-Control-Max-Age"] == "5"
    # any OPTIONS, preflight or not, ends at the gateway
    r = sixgate.request("OPTIONS", "/hello")
    assert r.status == 200 and r.body == b""
    sixgate.upstream.assert_not_received()  # type: ignore[union-attr]
    assert sixgate.get("/hello").status == 200
    sixgate.upstream.assert_received(method="GET", count=1)  # type: ignore[union-attr]


# -- responses generated by other plugins ---------------------------------------------------------


def test_auth_failure_carries_cors_headers_and_preflight_skips_auth(
    sixgate: GatewayHarness,
) -> None:
    assert sixgate.write_plugin("test_auth.py", AUTH_PLUGIN).ok
    sixgate.add_route("/hello", {
        "cors": {"allow_origins": "http://app.com", "allow_credential": True,
                 "allow_methods": "GET", "allow_headers": "apikey"},
        "test-auth": {},
    })
    origin = {"Origin": "http://app.com"}
    r = sixgate.get("/hello", headers=origin)
    assert r.status == 401
    assert r.json() == {"message": "Missing API key found in request"}
    assert r.headers["Access-Control-Allow-Origin"] == "http://app.com"
    assert r.headers["Access-Control-Allow-Credentials"] == "true"
    assert "Origin" in vary(r)
    # the preflight is answered by cors (4000) before the auth plugin (2500) runs
    r = sixgate.request("OPTIONS", "/hello", headers={
        **origin, "Access-Control-Request-Method": "GET"})
    assert r.status == 200
    assert r.headers["Access-Control-Allow-Headers"] == "apikey"
    sixgate.upstream.assert_not_received()  # type: ignore[union-attr]
    r = sixgate.get("/hello", headers={**origin, "apikey": "secret"})
    assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == "http://app.com"


def test_fault_injection_abort_carries_cors_headers(sixgate: GatewayHarness) -> None:
    # fault-injection (11000) answers before cors' rewrite (4000) even runs
    sixgate.add_route("/hello", {
        "cors": {"allow_origins": "http://app.com"},
        "fault-injection": {"abort": {"http_status": 403, "body": "Fault Injection!\n"}},
    })
    r = sixgate.get("/hello", headers={"Origin": "http://app.com"})
    assert r.status == 403 and r.text == "Fault Injection!\n"
    assert r.headers["Access-Control-Allow-Origin"] == "http://app.com"
    assert r.headers["Access-Control-Allow-Methods"] == "*"
    r = sixgate.get("/hello", headers={"Origin": "http://else.com"})
    assert r.status == 403
    assert_no_cors(r)
    sixgate.upstream.assert_not_received()  # type: ignore[union-attr]


def test_upstream_error_and_global_rule(sixgate: GatewayHarness) -> None:
    sixgate.upstream.respond(500, "boom")  # type: ignore[union-attr]
    sixgate.add_global_rule({"cors": {"allow_origins": "**"}})
    sixgate.add_route("/hello")
    r = sixgate.get("/hello", headers={"Origin": "http://x.com"})
    assert r.status == 500
    assert r.headers["Access-Control-Allow-Origin"] == "http://x.com"
    r = sixgate.get("/nowhere", headers={"Origin": "http://x.com"})  # no route: 404
    assert r.status == 404
    assert r.headers["Access-Control-Allow-Origin"] == "http://x.com"


# -- regex and metadata --------------------------------------------------------------------------


def test_allow_origins_by_regex(sixgate: GatewayHarness) -> None:
    sixgate.add_route("/hello", {"cors": {
        "allow_origins_by_regex": [r"http://.*?\.domain\.com", r"^https://[a-z]+\.test\.com$"],
        "timing_allow_origins_by_regex": [r"http://test.*?\.domain\.com"],
        "allow_methods": "GET,POST",
    }})
    for origin in ("http://sub.domain.com", "https://abc.test.com"):
        r = sixgate.get("/hello", headers={"Origin": origin})
        assert r.headers["Access-Control-Allow-Origin"] == origin
        assert r.headers["Access-Control-Allow-Methods"] == "GET,POST"
        assert "Timing-Allow-Origin" not in r.headers
    r = sixgate.get("/hello", headers={"Origin": "http://testurl.domain.com"})
    assert r.headers["Access-Control-Allow-Origin"] == "http://testurl.domain.com"
    assert r.headers["Timing-Allow-Origin"] == "http://testurl.domain.com"
    # the regex replaces allow_origins (whose default "*" would allow anything)
    for origin in ("http://other.newdomain.com", "https://abc.test.com.evil"):
        r = sixgate.get("/hello", headers={"Origin": origin})
        assert_no_cors(r)
    assert_no_cors(sixgate.get("/hello"))
    assert "Origin" not in vary(sixgate.get("/hello"))  # allow_origins is "*"


def test_allow_origins_by_metadata(sixgate: GatewayHarness) -> None:
    sixgate.set_plugin_metadata("cors", {"allow_origins": {
        "company": "https://www.company.com,https://docs.company.com",
        "partner": "https://partner.org",
    }})
    sixgate.add_route("/hello", {"cors": {"allow_origins_by_metadata": ["company"]}})
    sixgate.add_route("/local", {"cors": {"allow_origins_by_metadata": ["partner"],
                                          "allow_origins": "http://local.test"}})
    r = sixgate.get("/hello", headers={"Origin": "https://docs.company.com"})
    assert r.headers["Access-Control-Allow-Origin"] == "https://docs.company.com"
    for origin in ("https://partner.org", "https://evil.com"):
        assert_no_cors(sixgate.get("/hello", headers={"Origin": origin}))
    # allow_origins other than "*" still applies when the metadata does not allow the origin
    r = sixgate.get("/local", headers={"Origin": "https://partner.org"})
    assert r.headers["Access-Control-Allow-Origin"] == "https://partner.org"
    r = sixgate.get("/local", headers={"Origin": "http://local.test"})
    assert r.headers["Access-Control-Allow-Origin"] == "http://local.test"
    assert_no_cors(sixgate.get("/local", headers={"Origin": "https://docs.company.com"}))
    # the metadata is read live: a change applies without touching the route
    sixgate.set_plugin_metadata("cors", {"allow_origins": {"company": "https://new.company.com"}})
    assert_no_cors(sixgate.get("/hello", headers={"Origin": "https://docs.company.com"}))
    r = sixgate.get("/hello", headers={"Origin": "https://new.company.com"})
    assert r.headers["Access-Control-Allow-Origin"] == "https://new.company.com"
    with pytest.raises(ConfigRejected, match="failed to match pattern"):
        sixgate.set_plugin_metadata("cors", {"allow_origins": {"x": "not-an-origin"}})


# -- schema --------------------------------------------------------------------------------------


@pytest.mark.parametrize("conf", [
    {"allow_credential": True},
    {"allow_credential": True, "allow_origins": "http://a.com"},
    {"allow_credential": True, "allow_origins": "http://a.com", "allow_methods": "GET",
     "allow_headers": "x", "expose_headers": "*"},
    {"allow_credential": True, "allow_origins": "http://a.com", "allow_methods": "GET",
     "allow_headers": "x", "timing_allow_origins": "*"},
])
def test_credential_with_star_is_refused(conf: dict[str, object]) -> None:
    with pytest.raises(ConfigRejected) as err:
        run_phase(cors, "header_filter", conf)
    assert str(err.value) == (
        "failed to check the configuration of plugin cors err: you can not set '*' for other "
        "option when 'allow_credential' is true")


@pytest.mark.parametrize(("conf", "message"), [
    ({"allow_origins": "x.com"},
     'property "allow_origins" validation failed: failed to match pattern '
     '"^(\\*|\\*\\*|null|\\w+://[^,]+(,\\w+://[^,]+)*)$" with "x.com"'),
    ({"allow_origins": "https://x.com,*"},
     'property "allow_origins" validation failed: failed to match pattern '
     '"^(\\*|\\*\\*|null|\\w+://[^,]+(,\\w+://[^,]+)*)$" with "https://x.com,*"'),
    ({"max_age": "5"}, 'property "max_age" validation failed: wrong type: expected integer, '
                       'got string'),
    ({"allow_origins_by_regex": []},
     'property "allow_origins_by_regex" validation failed: expect array to have at least 1 '
     'items'),
])
def test_schema_errors(conf: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigRejected) as err:
        run_phase(cors, "header_filter", conf)
    assert str(err.value) == f"failed to check the configuration of plugin cors err: {message}"


def test_bad_regex_is_refused(sixgate: GatewayHarness) -> None:
    with pytest.raises(ConfigRejected, match="invalid regex '\\(' in allow_origins_by_regex"):
        sixgate.add_route("/hello", {"cors": {"allow_origins_by_regex": ["("]}})


@pytest.mark.parametrize("good", [
    "*", "**", "null", "http://y.com.uk", "https://x.com", "https://x.com,http://y.com.uk",
    "https://x.com,http://y.com.uk:12000,http://c.tv",
])
def test_good_origin_values(good: str) -> None:
    run_phase(cors, "header_filter", {"allow_origins": good, "timing_allow_origins": good})


@pytest.mark.parametrize("bad", [
    "", "*a", "*,http://y.com", "nulll", "http//y.com.uk", "x.com", "https://x.com,y.com.uk",
    "https://x.com,*,https://y.com.uk", "https://x.com,http://y.com.uk,http:c.tv",
])
def test_bad_origin_values(bad: str) -> None:
    with pytest.raises(ConfigRejected):
        run_phase(cors, "header_filter", {"timing_allow_origins": bad})
