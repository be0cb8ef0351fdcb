"""Route matching with APISIX / lua-resty-radixtree semantics (spec §4.2-4.5, §11 #25-32)."""

from __future__ import annotations

from typing import Any

import pytest

from kernel.router import Match, Router, RouteSpec
from plugin_sdk.expr import compile_expr

KINDS = ["radixtree_host_uri", "radixtree_uri", "radixtree_uri_with_parameter"]


def R(id: str, *uris: str, **kw: Any) -> RouteSpec:
    return RouteSpec(id=id, uris=uris, **kw)


def hit(
    router: Router,
    uri: str,
    method: str = "GET",
    host: str | None = "localhost",
    raw_host: str | None = None,
    remote_addr: str = "127.0.0.1",
    var: Any = None,
) -> str | None:
    m = router.match(uri, method, host, raw_host or host, remote_addr, var or {})
    return None if m is None else m.spec.id


# --- URI patterns (§4.3) ------------------------------------------------------------------

PATTERN_CASES = [
    # pattern, path, matches?
    ("/hello", "/hello", True),
    ("/hello", "/hello/", False),
    ("/hello/", "/hello", False),
    ("/hello", "/hell", False),
    ("/hello", "/hello/x", False),
    ("/foo/*", "/foo/", True),
    ("/foo/*", "/foo/a/b", True),
    ("/foo/*", "/foo", False),
    ("/foo/*", "/foobar", False),
    ("/foo*", "/foo", True),
    ("/foo*", "/foobar", True),
    ("/foo*", "/foo/x", True),
    ("/foo*", "/fo", False),
    ("/*", "/", True),
    ("/*", "/anything/at/all", True),
    ("/foo/*rest", "/foo/a/b", True),
    ("/foo/*rest", "/foo/", True),
    ("/foo/*rest", "/foo", False),
    ("/a/*/b", "/a/x/y/b", True),
    ("/a/*/b", "/a/x/y/c", False),
    ("/file:listReputationHistories", "/file:listReputationHistories", True),
    ("/file:listReputationHistories", "/file:other", False),
    ("/user/:name", "/user/:name", True),
    ("/user/:name", "/user/john", False),
]


@pytest.mark.parametrize(("pattern", "path", "ok"), PATTERN_CASES)
@pytest.mark.parametrize("kind", ["radixtree_host_uri", "radixtree_uri"])
def test_uri_patterns(kind: str, pattern: str, path: str, ok: bool) -> None:
    router = Router([R("r", pattern)], kind)
    assert (hit(router, path) == "r") is ok


PARAM_CASES = [
    ("/user/:name", "/user/john", {"name": "john"}),
    ("/user/:name", "/user/", None),
    ("/user/:name", "/user/a/b", None),
    ("/user/:name", "/user", None),
    ("/name/:name/bar", "/name/json/bar", {"name": "json"}),
    ("/name/:name/bar", "/name/json2/foo", None),
    ("/name/:name/bar", "/name/json/", None),
    ("/name/:name/bar", "/name//bar", None),
    ("/:a/:b", "/x/y", {"a": "x", "b": "y"}),
    ("/u/:id/*rest", "/u/7/a/b", {"id": "7", "rest": "a/b"}),
    ("/u/:id/*", "/u/7/a", {"id": "7", ":ext": "a"}),
    ("/files/*path", "/files/a/b.txt", {"path": "a/b.txt"}),
]


@pytest.mark.parametrize(("pattern", "path", "params"), PARAM_CASES)
def test_parameter_router(pattern: str, path: str, params: dict[str, str] | None) -> None:
    router = Router([R("r", pattern)], "radixtree_uri_with_parameter")
    m = router.match(path, "GET", None, None, "127.0.0.1", {})
    if params is None:
        assert m is None
    else:
        assert m is not None and m.params == params and m.matched_uri == pattern


def test_colon_inside_a_segment_only_cuts_the_prefix_key() -> None:
    # radixtree: the key is "/v" (before the first ":"), and "v:x" is no parameter segment, so
    # no regex check follows: any path under "/v" matches, without params
    router = Router([R("r", "/v:x")], "radixtree_uri_with_parameter")
    m = router.match("/v1/anything", "GET", None, None, "127.0.0.1", {})
    assert m is not None and m.params is None
    assert hit(router, "/w") is None


def test_spec_case_29_parameter_route() -> None:
    router = Router([R("1", "/name/:name/bar")], "radixtree_uri_with_parameter")
    assert hit(router, "/name/json/bar") == "1"
    for path in ("/name/json2/foo", "/name/json/", "/name//bar"):
        assert hit(router, path) is None


def test_named_and_anonymous_wildcard_captures() -> None:
    router = Router([R("a", "/foo/*rest"), R("b", "/bar/*"), R("c", "/baz*")])
    m = router.match("/foo/x/y", "GET", None, None, "1.1.1.1", {})
    assert m is not None and m.params == {"rest": "x/y"}
    m = router.match("/bar/q", "GET", None, None, "1.1.1.1", {})
    assert m is not None and m.params == {":ext": "q"}
    m = router.match("/bazooka", "GET", None, None, "1.1.1.1", {})
    assert m is not None and m.params is None and m.matched_uri == "/baz*"


def test_exact_route_reports_no_params_and_its_pattern() -> None:
    router = Router([R("a", "/x", "/y")])
    m = router.match("/y", "GET", None, None, "1.1.1.1", {})
    assert m == Match(R("a", "/x", "/y"), None, "/y", "")


def test_segments_are_regex_text_like_radixtree() -> None:
    # the non-parameter segments of a parameter pattern are used as regex source
    router = Router([R("r", "/a/:id/x.json")], "radixtree_uri_with_parameter")
    assert hit(router, "/a/1/x.json") == "r"
    assert hit(router, "/a/1/xyjson") == "r"
    assert hit(router, "/a/1/x.jsonp") is None


# --- match order (§4.4) -------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_exact_beats_prefix_regardless_of_priority(kind: str) -> None:
    router = Router([R("prefix", "/foo*", priority=100), R("exact", "/foo")], kind)
    assert hit(router, "/foo") == "exact"
    assert hit(router, "/foo2") == "prefix"


@pytest.mark.parametrize("kind", KINDS)
def test_longest_prefix_first_regardless_of_priority(kind: str) -> None:
    router = Router(
        [R("root", "/*", priority=100), R("api", "/api/*", priority=5), R("v1", "/api/v1/*")],
        kind,
    )
    assert hit(router, "/api/v1/users") == "v1"
    assert hit(router, "/api/v2/users") == "api"
    assert hit(router, "/web") == "root"


@pytest.mark.parametrize("kind", KINDS)
def test_prefix_falls_back_to_shorter_when_conditions_fail(kind: str) -> None:
    router = Router([R("post-only", "/api/*", methods=frozenset({"POST"})), R("root", "/*")], kind)
    assert hit(router, "/api/x", method="POST") == "post-only"
    assert hit(router, "/api/x", method="GET") == "root"


@pytest.mark.parametrize("kind", KINDS)
def test_exact_falls_back_to_prefix_when_conditions_fail(kind: str) -> None:
    router = Router([R("exact", "/hello", methods=frozenset({"PUT"})), R("p", "/hel*")], kind)
    assert hit(router, "/hello", method="PUT") == "exact"
    assert hit(router, "/hello", method="GET") == "p"


def test_spec_case_26_priority_breaks_ties_within_one_key() -> None:
    def router(p1: int | None, p2: int | None) -> Router:
        a = R("to-1981", "/server_port", hosts=("test.com",), priority=p1 or 0)
        b = R("to-1980", "/server_port", hosts=("test.com",), priority=p2 or 0)
        return Router([a, b])

    assert hit(router(1, 2), "/server_port", host="test.com") == "to-1980"
    assert hit(router(2, 1), "/server_port", host="test.com") == "to-1981"
    assert hit(router(1, None), "/server_port", host="test.com") == "to-1981"
    assert hit(router(None, 1), "/server_port", host="test.com") == "to-1980"


@pytest.mark.parametrize("kind", KINDS)
def test_ties_longer_pattern_then_load_order(kind: str) -> None:
    # same key "/a/": equal priority -> longer original pattern first, then load order
    router = Router([R("short", "/a/*"), R("long", "/a/*rest"), R("long2", "/a/*rest")], kind)
    assert hit(router, "/a/x") == "long"
    router = Router([R("first", "/a"), R("second", "/a")], kind)
    assert hit(router, "/a") == "first"
    router = Router([R("first", "/a"), R("second", "/a", priority=1)], kind)
    assert hit(router, "/a") == "second"
    router = Router([R("low", "/a/*rest", priority=-1), R("short", "/a/*")], kind)
    assert hit(router, "/a/x") == "short"


@pytest.mark.parametrize("kind", KINDS)
def test_route_with_several_uris_is_registered_under_each(kind: str) -> None:
    router = Router([R("multi", "/one", "/two/*"), R("other", "/*")], kind)
    assert hit(router, "/one") == "multi"
    assert hit(router, "/two/x") == "multi"
    assert hit(router, "/three") == "other"
    m = router.match("/two/x", "GET", None, None, "1.1.1.1", {})
    assert m is not None and m.matched_uri == "/two/*"


# --- conditions (§4.5) --------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_method_filtering(kind: str) -> None:
    router = Router(
        [R("get", "/m", methods=frozenset({"GET", "HEAD"})), R("any", "/n", methods=frozenset())],
        kind,
    )
    assert hit(router, "/m", method="GET") == "get"
    assert hit(router, "/m", method="HEAD") == "get"
    assert hit(router, "/m", method="POST") is None
    assert hit(router, "/n", method="DELETE") == "any"


@pytest.mark.parametrize("kind", KINDS)
def test_spec_case_25_method_and_host(kind: str) -> None:
    router = Router(
        [R("1", "/hello", methods=frozenset({"GET"}), hosts=("foo.com",)), R("2", "/hi")], kind
    )
    assert hit(router, "/not_found", host="foo.com") is None
    assert hit(router, "/hello", host=None) is None
    assert hit(router, "/hello", host="bar.com") is None
    assert hit(router, "/hello", host="foo.com") == "1"
    assert hit(router, "/hello", host="foo.com", method="POST") is None
    assert hit(router, "/hi/") is None


@pytest.mark.parametrize("kind", KINDS)
def test_spec_case_28_hosts_are_case_insensitive(kind: str) -> None:
    router = Router([R("a", "/x", hosts=("test.com",)), R("b", "/y", hosts=("test.coM",))], kind)
    assert hit(router, "/x", host="tEst.com") == "a"
    assert hit(router, "/y", host="test.com") == "b"
    assert hit(router, "/y", host="TEST.COM") == "b"


@pytest.mark.parametrize("kind", KINDS)
def test_wildcard_hosts(kind: str) -> None:
    router = Router([R("w", "/x", hosts=("*.foo.com",)), R("all", "/y", hosts=("*",))], kind)
    assert hit(router, "/x", host="a.foo.com") == "w"
    assert hit(router, "/x", host="a.b.foo.com") == "w"
    assert hit(router, "/x", host="foo.com") is None
    assert hit(router, "/x", host="afoo.com") is None
    assert hit(router, "/y", host="anything.example") == "all"
    assert hit(router, "/y", host="localhost") == "all"


@pytest.mark.parametrize("kind", KINDS)
def test_matched_host_label(kind: str) -> None:
    router = Router(
        [
            R("w", "/x", hosts=("*.Foo.com",)),
            R("e", "/e/*", hosts=("a.com", "b.com")),
            R("n", "/n"),
        ],
        kind,
    )
    m = router.match("/x", "GET", "a.foo.com", None, "1.1.1.1", {})
    assert m is not None and m.matched_host == "*.foo.com"
    m = router.match("/e/1", "GET", "b.com", None, "1.1.1.1", {})
    assert m is not None and m.matched_host == "b.com" and m.params == {":ext": "1"}
    m = router.match("/n", "GET", "b.com", None, "1.1.1.1", {})
    assert m is not None and m.matched_host == ""


def test_host_with_port_uses_the_raw_host_header_under_radixtree_uri() -> None:
    for kind in ("radixtree_uri", "radixtree_uri_with_parameter"):
        router = Router([R("p", "/x", hosts=("foo.com:8080",))], kind)
        assert hit(router, "/x", host="foo.com", raw_host="foo.com:8080") == "p"
        assert hit(router, "/x", host="foo.com", raw_host="foo.com:9090") is None
        assert hit(router, "/x", host="foo.com", raw_host="foo.com") is None


def test_host_with_port_never_matches_under_radixtree_host_uri() -> None:
    router = Router([R("p", "/x", hosts=("foo.com:8080",))])
    assert hit(router, "/x", host="foo.com", raw_host="foo.com:8080") is None


@pytest.mark.parametrize("kind", KINDS)
def test_spec_case_32_remote_addrs(kind: str) -> None:
    router = Router([R("r", "/hello", remote_addrs=("192.0.0.0/8", "127.0.0.3"))], kind)
    assert hit(router, "/hello", remote_addr="127.0.0.1") is None
    assert hit(router, "/hello", remote_addr="192.168.1.100") == "r"
    assert hit(router, "/hello", remote_addr="127.0.0.3") == "r"
    assert hit(router, "/hello", remote_addr="193.0.0.1") is None
    assert hit(router, "/hello", remote_addr="not-an-ip") is None


@pytest.mark.parametrize("kind", KINDS)
def test_remote_addrs_ipv6(kind: str) -> None:
    router = Router([R("r", "/x", remote_addrs=("::1", "fe80::/32", "10.0.0.0/8"))], kind)
    assert hit(router, "/x", remote_addr="::1") == "r"
    assert hit(router, "/x", remote_addr="fe80::abcd") == "r"
    assert hit(router, "/x", remote_addr="fe81::1") is None
    assert hit(router, "/x", remote_addr="10.9.8.7") == "r"
    assert hit(router, "/x", remote_addr="::ffff:10.9.8.7") is None


def test_bad_remote_addrs_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="invalid IP address"):
        Router([R("r", "/x", remote_addrs=("10.0.0.0/99",))])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("rule", "vars"),
    [
        ([["arg_k", "==", "v"]], {"arg_k": "v"}),
        ([["cookie_k", "==", "v"]], {"cookie_k": "v", "cookie_kkk": "vvv"}),
        ([["http_k", "==", "v"]], {"http_k": "v"}),
    ],
)
def test_spec_case_30_vars(kind: str, rule: list[Any], vars: dict[str, str]) -> None:
    router = Router([R("r", "/hello", vars=compile_expr(rule))], kind)
    name = rule[0][0]
    assert hit(router, "/hello", var=vars) == "r"
    assert hit(router, "/hello", var={**vars, name: "not-hit"}) is None
    assert hit(router, "/hello", var={"other": "v"}) is None


def test_spec_case_30_vars_three_way_and() -> None:
    rule = [["arg_k", "==", "v"], ["cookie_k", "==", "v"], ["http_k", "==", "v"]]
    router = Router([R("r", "/hello", vars=compile_expr(rule))])
    assert hit(router, "/hello", var={"arg_k": "v", "cookie_k": "v", "http_k": "v"}) == "r"
    assert hit(router, "/hello", var={"arg_k": "v", "cookie_k": "v"}) is None


@pytest.mark.parametrize("kind", KINDS)
def test_conditions_are_checked_in_order_and_vars_last(kind: str) -> None:
    calls: list[str] = []

    def spy(var: Any) -> bool:
        calls.append("vars")
        return True

    router = Router(
        [R("r", "/x", methods=frozenset({"GET"}), remote_addrs=("10.0.0.1",), hosts=("a.com",),
           vars=spy)],
        kind,
    )  # fmt: skip
    assert hit(router, "/x", method="POST", host="a.com", remote_addr="10.0.0.1") is None
    assert hit(router, "/x", method="GET", host="a.com", remote_addr="10.0.0.2") is None
    assert hit(router, "/x", method="GET", host="b.com", remote_addr="10.0.0.1") is None
    assert calls == []
    assert hit(router, "/x", method="GET", host="a.com", remote_addr="10.0.0.1") == "r"
    assert calls == ["vars"]


# --- radixtree_host_uri ordering (§4.4) ---------------------------------------------------


def test_spec_case_27_host_routes_beat_hostless_exact() -> None:
    router = Router([R("A", "/*", hosts=("*.test.com",)), R("B", "/server_port")])
    assert hit(router, "/server_port", host="www.test.com") == "A"
    assert hit(router, "/server_port", host="localhost") == "B"
    # under radixtree_uri the exact path wins instead
    flat = Router([R("A", "/*", hosts=("*.test.com",)), R("B", "/server_port")], "radixtree_uri")
    assert hit(flat, "/server_port", host="www.test.com") == "B"


def test_spec_case_27_host_route_with_failing_condition_falls_back_to_hostless() -> None:
    # APISIX's case uses filter_func; a vars condition exercises the same fallback
    only_json = compile_expr([["arg_name", "==", "json"]])
    router = Router([R("A", "/*", hosts=("*.test.com",), vars=only_json), R("B", "/server_port")])
    assert hit(router, "/server_port", host="www.test.com", var={"arg_name": "unknown"}) == "B"
    assert hit(router, "/server_port", host="www.test.com", var={"arg_name": "json"}) == "A"


def test_host_tree_order_exact_then_longer_wildcard_then_shorter_then_any() -> None:
    router = Router(
        [
            R("any", "/*", hosts=("*",)),
            R("short", "/*", hosts=("*.com",)),
            R("long", "/*", hosts=("*.foo.com",)),
            R("exact", "/*", hosts=("a.foo.com",)),
            R("none", "/x"),
        ]
    )
    assert hit(router, "/x", host="a.foo.com") == "exact"
    assert hit(router, "/x", host="b.foo.com") == "long"
    assert hit(router, "/x", host="bar.com") == "short"
    assert hit(router, "/x", host="bar.org") == "any"
    assert hit(router, "/x", host=None) == "none"


def test_host_tree_falls_through_hosts_when_uri_does_not_match() -> None:
    router = Router(
        [
            R("exact-host", "/only", hosts=("a.foo.com",)),
            R("wild", "/*", hosts=("*.foo.com",), methods=frozenset({"POST"})),
            R("hostless", "/*"),
        ]
    )
    assert hit(router, "/only", host="a.foo.com") == "exact-host"
    assert hit(router, "/other", host="a.foo.com", method="POST") == "wild"
    assert hit(router, "/other", host="a.foo.com") == "hostless"


def test_host_uri_priority_only_within_the_same_host_and_key() -> None:
    router = Router([R("hostless-high", "/x", priority=100), R("host-low", "/x", hosts=("a.com",))])
    assert hit(router, "/x", host="a.com") == "host-low"
    assert hit(router, "/x", host="b.com") == "hostless-high"


def test_many_host_routes_under_one_key_keep_their_order_in_radixtree_uri() -> None:
    routes = [R(f"h{i}", "/api/*", hosts=(f"h{i}.example.com",)) for i in range(20)]
    routes += [R(f"w{i}", "/api/*", hosts=(f"*.w{i}.example.com",)) for i in range(10)]
    routes.append(R("top", "/api/*", hosts=("h3.example.com",), priority=5))
    routes.append(R("port", "/api/*", hosts=("h4.example.com:81",)))
    routes.append(R("fallback", "/api/*", priority=-1))
    routes.append(R("hostless-first", "/api/*rest"))  # longer pattern: ahead at equal priority
    router = Router(routes, "radixtree_uri")
    assert hit(router, "/api/x", host="h7.example.com") == "hostless-first"
    no_tail = [r for r in routes if r.id != "hostless-first"]
    router = Router(no_tail, "radixtree_uri")
    assert hit(router, "/api/x", host="h7.example.com") == "h7"
    assert hit(router, "/api/x", host="h3.example.com") == "top"
    assert hit(router, "/api/x", host="a.w5.example.com") == "w5"
    assert hit(router, "/api/x", host="h4.example.com", raw_host="h4.example.com:81") == "h4"
    assert hit(router, "/api/x", host="zz.example.com", raw_host="h4.example.com:81") == "port"
    assert hit(router, "/api/x", host="nobody.example.com") == "fallback"
    assert hit(router, "/api/x", host=None) == "fallback"


# --- construction -------------------------------------------------------------------------


def test_unknown_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="radixtree_uri"):
        Router([], "radixtree_nope")


def test_len_counts_route_specs() -> None:
    assert len(Router([])) == 0
    assert len(Router([R("a", "/a", "/b"), R("b", "/c", hosts=("x.com", "y.com"))])) == 2


def test_empty_router_matches_nothing() -> None:
    for kind in KINDS:
        assert hit(Router([], kind), "/") is None


def test_payload_is_returned_untouched() -> None:
    payload = object()
    m = Router([R("a", "/a", payload=payload)]).match("/a", "GET", None, None, "1.1.1.1", {})
    assert m is not None and m.spec.payload is payload


def test_large_table_keeps_semantics() -> None:
    routes = [R(f"e{i}", f"/api/v1/svc{i}/items") for i in range(2000)]
    routes += [R(f"p{i}", f"/p/svc{i}/*") for i in range(2000)]
    routes += [R(f"h{i}", f"/x/{i % 10}/*", hosts=(f"h{i}.example.com",)) for i in range(500)]
    routes.append(R("catchall", "/*"))
    for kind in KINDS:
        router = Router(routes, kind)
        assert hit(router, "/api/v1/svc1234/items") == "e1234"
        assert hit(router, "/api/v1/svc1234/items/") == "catchall"
        assert hit(router, "/p/svc1999/a/b") == "p1999"
        assert hit(router, "/x/7/q", host="h407.example.com") == "h407"
        assert hit(router, "/x/7/q", host="h408.example.com") == "catchall"


def test_many_host_routes_on_one_exact_path_in_radixtree_uri() -> None:
    routes = [R(f"h{i}", "/same", hosts=(f"h{i}.example.com",)) for i in range(12)]
    routes.insert(5, R("hostless", "/same", methods=frozenset({"POST"})))
    routes.append(R("wild", "/same", hosts=("*.example.com",)))
    router = Router(routes, "radixtree_uri")
    assert hit(router, "/same", host="h9.example.com") == "h9"
    assert hit(router, "/same", host="h9.example.com", method="POST") == "hostless"
    assert hit(router, "/same", host="h11.example.com", method="POST") == "hostless"
    assert hit(router, "/same", host="zz.example.com") == "wild"
    assert hit(router, "/same", host="example.com") is None


# --- hot-path shapes (catch-all matcher, prefix search strategies, built matches) ----------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("routes", "uri", "pattern", "params"),
    [
        (["/*"], "/api/hello", "/*", {":ext": "api/hello"}),
        (["/*"], "/", "/*", {":ext": ""}),
        (["/*all"], "/a/b", "/*all", {"all": "a/b"}),
        (["/api/*", "/api/v1/*", "/static/*", "/*"], "/api/v1/x", "/api/v1/*", {":ext": "x"}),
        (["/api/*", "/api/v1/*", "/static/*", "/*"], "/api/v2/x", "/api/*", {":ext": "v2/x"}),
        (["/api/*", "/api/v1/*", "/static/*", "/*"], "/apix", "/*", {":ext": "apix"}),
        (["/api/*rest", "/ap*"], "/api/a/b", "/api/*rest", {"rest": "a/b"}),
        (["/api/*rest", "/ap*"], "/apx", "/ap*", None),
        (["/exact", "/*"], "/exact", "/exact", None),
    ],
)
def test_matches_are_plain_frozen_match_objects(
    kind: str, routes: list[str], uri: str, pattern: str, params: dict[str, str] | None
) -> None:
    router = Router([R(p, p) for p in routes], kind)
    m = router.match(uri, "GET", "localhost", "localhost", "127.0.0.1", {})
    assert m is not None
    assert type(m) is Match
    assert m == Match(R(pattern, pattern), params, pattern, "")
    assert repr(m) == repr(Match(R(pattern, pattern), params, pattern, ""))
    with pytest.raises(AttributeError):  # dataclasses.FrozenInstanceError
        m.params = {}  # type: ignore[misc]
    again = router.match(uri, "GET", "localhost", "localhost", "127.0.0.1", {})
    assert again == m
    if params is not None:  # a fresh dict per request: callers may keep it (ctx.uri_params)
        assert again is not None and again.params is not m.params


@pytest.mark.parametrize("kind", KINDS)
def test_catch_all_router_needs_a_leading_slash(kind: str) -> None:
    router = Router([R("root", "/*")], kind)
    assert hit(router, "/") == "root"
    assert hit(router, "") is None
    assert hit(router, "x/y") is None
    router = Router([R("root", "/*"), R("any", "*")], kind)
    assert hit(router, "/x") == "root"
    assert hit(router, "x/y") == "any"
    m = router.match("", "GET", None, None, "127.0.0.1", {})
    assert m is not None and m.spec.id == "any" and m.params == {":ext": ""}


@pytest.mark.parametrize("kind", KINDS)
def test_catch_all_with_conditions_falls_through(kind: str) -> None:
    router = Router(
        [R("post", "/*", methods=frozenset({"POST"}), priority=1), R("any", "/*")], kind
    )
    assert hit(router, "/x", method="POST") == "post"
    assert hit(router, "/x", method="GET") == "any"
    router = Router([R("post", "/*", methods=frozenset({"POST"}))], kind)
    assert hit(router, "/x", method="GET") is None


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "extra",
    [
        [],  # every key ends in "/": the slash walk
        ["/zz*"],  # a few key lengths, not all ending in "/"
        [f"/{'q' * n}*" for n in range(1, 12)],  # many key lengths: the prefix index
    ],
)
def test_prefix_order_and_fallback_in_every_search_strategy(kind: str, extra: list[str]) -> None:
    post = frozenset({"POST"})
    routes = [
        R("root", "/*"),
        R("api", "/api/*"),
        R("api-v", "/api/v*"),
        R("v1-post", "/api/v1/*", methods=post),
        R("v1-deep", "/api/v1/users/*"),
    ]
    routes = [r for r in routes if extra or r.id != "api-v"]  # "/api/v" does not end in "/"
    routes += [R(f"extra{i}", p) for i, p in enumerate(extra)]
    router = Router(routes, kind)
    assert hit(router, "/api/v1/users/7") == "v1-deep"
    assert hit(router, "/api/v1/users/7", method="POST") == "v1-deep"
    assert hit(router, "/api/v1/users", method="POST") == "v1-post"
    v_or_api = "api-v" if extra else "api"
    assert hit(router, "/api/v1/users") == v_or_api
    assert hit(router, "/api/v2") == v_or_api
    assert hit(router, "/api/x") == "api"
    assert hit(router, "/api") == "root"
    assert hit(router, "/zzz") == ("extra0" if extra == ["/zz*"] else "root")
    if len(extra) > 1:
        assert hit(router, "/qqqqq/x") == "extra4"


@pytest.mark.parametrize("kind", KINDS)
def test_match_accepts_keyword_arguments(kind: str) -> None:
    tables = [
        [R("r", "/*")],
        [R("r", "/a/*"), R("x", "/x")],
        [R("r", "/a/*", hosts=("A.com",)), R("x", "/*")],
    ]
    for routes in tables:
        m = Router(routes, kind).match(
            uri="/a/b", method="GET", host="a.COM", raw_host=None, remote_addr="127.0.0.1", var={}
        )
        assert m is not None and m.spec.id == "r"


def test_host_trees_in_front_of_a_hostless_catch_all() -> None:
    router = Router([R("host", "/api/*", hosts=("*.Foo.com",)), R("any", "/*")])
    assert hit(router, "/api/x", host="A.FOO.COM") == "host"
    m = router.match("/api/x", "GET", "a.foo.com", None, "1.1.1.1", {})
    assert m is not None and m.matched_host == "*.foo.com" and m.params == {":ext": "x"}
    assert hit(router, "/api/x", host="foo.com") == "any"
    assert hit(router, "/api/x", host=None) == "any"
    assert hit(router, "/other", host="a.foo.com") == "any"


def test_never_matching_parameter_pattern_does_not_shadow_its_key() -> None:
    # "(" cannot compile: that route never matches, the other one under the same key still does
    router = Router(
        [R("bad", "/x/:id/(", priority=5), R("ok", "/x/*")], "radixtree_uri_with_parameter"
    )
    assert hit(router, "/x/1/(") == "ok"
    router = Router([R("bad", "/x/:id/(")], "radixtree_uri_with_parameter")
    assert hit(router, "/x/1/(") is None


def test_host_filter_with_many_hostless_candidates() -> None:
    # more host-less (conditioned) candidates under one key than are pre-merged per host
    routes = [R(f"m{i}", "/k/*", methods=frozenset({f"M{i}"})) for i in range(40)]
    routes += [R(f"h{i}", "/k/*", hosts=(f"h{i}.example.com",)) for i in range(10)]
    routes += [R("w", "/k/*", hosts=("*.w.example.com",))]
    routes += [R("top", "/k/*", methods=frozenset({"M3"}), hosts=("h3.example.com",), priority=1)]
    router = Router(routes, "radixtree_uri")
    assert hit(router, "/k/x", host="h3.example.com") == "h3"
    assert hit(router, "/k/x", host="h3.example.com", method="M3") == "top"
    assert hit(router, "/k/x", host="h4.example.com", method="M3") == "m3"
    assert hit(router, "/k/x", host="a.w.example.com") == "w"
    assert hit(router, "/k/x", host="a.w.example.com", method="M39") == "m39"
    assert hit(router, "/k/x", host="nobody.example.com") is None
    assert hit(router, "/k/x", host=None, method="M0") == "m0"
