"""proxy-rewrite: schema messages and the rewriting logic, with a stand-in request context."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qsl, unquote

import pytest

import builtin_plugins.proxy_rewrite as pr
from kernel.chain import compile_chain, run_request_phase
from kernel.plugins.manager import PluginInfo, PluginRegistry, check_conf
from plugin_sdk import Headers, Response


class Vars(dict[str, Any]):
    """``ctx.var`` stand-in: unset variables read as ``None``."""

    def __missing__(self, key: str) -> None:
        return None


class Upstream:
    """``ctx.upstream`` stand-in that applies header changes to the client's headers."""

    def __init__(self, headers: list[tuple[str, str]]) -> None:
        self.method: str | None = None
        self.uri: str | None = None
        self.host: str | None = None
        self.headers = Headers(headers)

    def set_header(self, name: str, value: str | None) -> None:
        if value is None:
            self.headers.remove(name)
        else:
            self.headers.set(name, value)

    def add_header(self, name: str, value: str) -> None:
        self.headers.add(name, value)

    def remove_header(self, name: str) -> None:
        self.headers.remove(name)


class Ctx:
    def __init__(self, target: str = "/hello", headers: list[tuple[str, str]] | None = None,
                 **var: Any) -> None:
        path, _, query = target.partition("?")
        self.var = Vars(
            uri=unquote(path),
            real_request_uri=target,
            args=query,
            is_args="?" if query else "",
            **var,
        )
        for name, value in parse_qsl(query):
            self.var.setdefault(f"arg_{name}", value)
        self.upstream = Upstream(headers or [])
        self.log = logging.getLogger("test.proxy-rewrite")


def rewrite(conf: dict[str, Any], ctx: Ctx) -> Response | None:
    return pr.rewrite(ctx, conf)


def target(conf: dict[str, Any], request: str, **var: Any) -> str | None:
    ctx = Ctx(request, **var)
    assert rewrite(conf, ctx) is None
    assert ctx.var["upstream_uri"] == ctx.upstream.uri
    return ctx.upstream.uri


@pytest.fixture(scope="module")
def info() -> PluginInfo:
    found = PluginRegistry([pr]).get("proxy-rewrite")
    assert found is not None
    return found


# -- schema ----------------------------------------------------------------------------------------


def test_module_contract(info: PluginInfo) -> None:
    assert (pr.name, pr.priority) == ("proxy-rewrite", 1008)
    assert list(info.phases) == ["rewrite"] and info.phases["rewrite"][1] is False


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        (
            {"uri": "abc"},
            'property "uri" validation failed: failed to match pattern "^\\/.*" with "abc"',
        ),
        (
            {"uri": ""},
            'property "uri" validation failed: string too short, expected at least 1, got 0',
        ),
        (
            {"uri": "/" + "a" * 4096},
            'property "uri" validation failed: string too long, expected at most 4096, got 4097',
        ),
        (
            {"method": "FOO"},
            'property "method" validation failed: matches none of the enum values',
        ),
        (
            {"regex_uri": ["^/a"]},
            'property "regex_uri" validation failed: expect array to have at least 2 items',
        ),
        (
            {"regex_uri": ["^/a", 1]},
            'property "regex_uri" validation failed: failed to validate item 2: '
            "wrong type: expected string, got number",
        ),
        ({"regex_uri": ["^/a", "/b", "^/c"]}, "The length of regex_uri should be an even number"),
        (
            {"host": "a b"},
            'property "host" validation failed: failed to match pattern '
            '"^[0-9a-zA-Z-.]+(:\\d{1,5})?$" with "a b"',
        ),
        (
            {"headers": {}},
            'property "headers" validation failed: value should match only one schema, '
            "but matches none",
        ),
        (
            {"headers": {"X-Api": {"nested": 1}}},
            'property "headers" validation failed: value should match only one schema, '
            "but matches none",
        ),
        (
            {"headers": {"remove": ["Bad:Name"]}},
            'property "headers" validation failed: value should match only one schema, '
            "but matches none",
        ),
        ({"headers": {"X:Api": "1"}}, "invalid field character in header"),
        ({"headers": {"X Api": "1"}}, "invalid field character in header"),
        ({"headers": {"X-Api": "a\r\nInjected: 1"}}, "invalid value character in header"),
        ({"headers": {"set": {"X-Api": ["ok", "bad\n"]}}}, "invalid value character in header"),
        ({"headers": {"add": {"X:Api": "1"}}}, "invalid field character in header"),
        (
            {"use_real_request_uri_unsafe": "yes"},
            'property "use_real_request_uri_unsafe" validation failed: '
            "wrong type: expected boolean, got string",
        ),
        # ngx.re.sub("/fake_uri", regex, template) only compiles the template on a match
        (
            {"regex_uri": ["^/fake_(.*)", "/$a$"]},
            'invalid regex_uri(^/fake_(.*), /$a$): invalid capturing variable name found in '
            '"/$a$"',
        ),
    ],
)
def test_schema_errors(info: PluginInfo, conf: dict[str, Any], message: str) -> None:
    assert check_conf(info, conf) == message


def test_invalid_regex(info: PluginInfo) -> None:
    err = check_conf(info, {"regex_uri": ["(", "/x"]})
    assert err is not None and err.startswith("invalid regex_uri((, /x): ")


@pytest.mark.parametrize(
    "conf",
    [
        {"uri": "/test/home.html", "host": "iresty.com", "method": "POST"},
        {"host": "a.example.com:8080"},
        {"regex_uri": ["^/iresty/(.*)/(.*)", "/$1-$2", "^/theothers/*", "/theothers"]},
        {"regex_uri": ["^/nomatch/(.*)", "/$arg_x/$1"]},  # template not tried: no fake match
        {"headers": {"X-Api-Version": "v1", "X-Num": 2}},
        {"headers": {"add": {"X-A": ["1", 2]}, "set": {"X-B": "$remote_addr"},
                     "remove": ["User-Agent"]}},
        {"use_real_request_uri_unsafe": True},
        {"uri": "/x", "scheme": "https"},  # extra keys are allowed, as in APISIX
    ],
)
def test_valid_confs(info: PluginInfo, conf: dict[str, Any]) -> None:
    assert check_conf(info, conf) is None


# -- uri -------------------------------------------------------------------------------------------


def test_uri_keeps_the_query_string() -> None:
    conf = {"uri": "/plugin_proxy_rewrite_args"}
    assert target(conf, "/hello?q=apisix&a=iresty") == (
        "/plugin_proxy_rewrite_args?q=apisix&a=iresty"
    )
    assert target(conf, "/hello") == "/plugin_proxy_rewrite_args"


def test_uri_template() -> None:
    conf = {"uri": "/$arg_name/${http_x_ver ?? v0}/x"}
    assert target(conf, "/hello?name=json") == "/json/v0/x?name=json"
    assert target(conf, "/hello", http_x_ver="v2") == "//v2/x"


def test_question_mark_in_a_variable_is_escaped() -> None:
    assert target({"uri": "/p/$http_x"}, "/h", http_x="a?b=1") == "/p/a%253Fb=1"


def test_literal_question_mark_starts_a_query() -> None:
    conf = {"uri": "/new?from=gw"}
    assert target(conf, "/hello?q=1") == "/new?from=gw&q=1"
    assert target(conf, "/hello") == "/new?from=gw"


def test_path_is_percent_encoded_like_nginx() -> None:
    assert pr.uri_safe_encode("/a b/ü#%?x") == "/a%20b/%C3%BC%23%25%3Fx"
    assert pr.uri_safe_encode("/keep!$&'()*+,;=:@[]~-._") == "/keep!$&'()*+,;=:@[]~-._"
    assert pr.uri_safe_encode("/tab\there\x7f") == "/tab%09here%7F"
    assert target({"uri": "/with space"}, "/x?a=1") == "/with%20space?a=1"


def test_no_uri_change_resends_the_normalised_encoded_path() -> None:
    assert target({"host": "example.com"}, "/a%20b/c?x=1") == "/a%20b/c?x=1"


def test_uri_var_is_updated_for_later_plugins() -> None:
    ctx = Ctx("/hello?q=1")
    rewrite({"uri": "/new path"}, ctx)
    assert ctx.var["uri"] == "/new%20path"
    assert ctx.var["upstream_uri"] == "/new%20path?q=1"


# -- regex_uri -------------------------------------------------------------------------------------


def test_regex_uri_captures() -> None:
    conf = {"regex_uri": ["^/test/(.*)/(.*)/(.*)", "/$1_$2_$3"]}
    assert target(conf, "/test/plugin/proxy/rewrite") == "/plugin_proxy_rewrite"
    assert target(conf, "/test/a/b/c?k=v") == "/a_b_c?k=v"


def test_regex_uri_braced_captures_and_partial_match() -> None:
    conf = {"regex_uri": ["/v(\\d+)/", "/version-${1}/"]}
    # Only the matched part is replaced (ngx.re.sub), the rest of the path stays.
    assert target(conf, "/api/v2/users") == "/api/version-2/users"


def test_regex_uri_first_matching_pair_wins() -> None:
    conf = {"regex_uri": ["^/iresty/(.*)/(.*)", "/$1-$2", "^/theothers/.*", "/theothers"]}
    assert target(conf, "/iresty/hello/world") == "/hello-world"
    assert target(conf, "/theothers/hello/world") == "/theothers"
    assert target(conf, "/unmatched/path?x=1") == "/unmatched/path?x=1"


def test_uri_wins_over_regex_uri() -> None:
    conf = {"uri": "/hello", "regex_uri": ["^/test/(.*)", "/$1"]}
    assert target(conf, "/test/other") == "/hello"


def test_regex_uri_template_variables() -> None:
    conf = {"regex_uri": ["^/svc/(.*)", "/$arg_v/$1"]}
    assert target(conf, "/svc/users?v=2") == "/2/users?v=2"
    # A value's "?" is escaped before substitution (then the path is encoded once more).
    assert target(conf, "/svc/users?v=a%3Fb") == "/a%253Fb/users?v=a%3Fb"


def test_regex_uri_unset_variable_is_a_500() -> None:
    ctx = Ctx("/svc/users")
    res = rewrite({"regex_uri": ["^/svc/(.*)", "/$arg_v/$1"]}, ctx)
    assert res is not None and res.status == 500
    assert res.body == {
        "error_msg": 'failed to substitute the uri /svc/users (^/svc/(.*)) with /$arg_v/$1 : '
        'invalid capturing variable name found in "/$arg_v/$1"'
    }
    assert ctx.upstream.uri is None


def test_regex_uri_on_a_decoded_question_mark() -> None:
    # $uri may contain a literal "?" (client sent %3F): it is not a query separator.
    assert target({"regex_uri": ["^/a(.*)", "/b$1"]}, "/a%3Fx?q=1") == "/b%3Fx?q=1"


def test_use_real_request_uri_unsafe() -> None:
    conf: dict[str, Any] = {"use_real_request_uri_unsafe": True}
    assert target(conf, "/a/../b%2F c?x=1") == "/a/../b%2F c?x=1"
    conf = {"use_real_request_uri_unsafe": True, "regex_uri": ["^/a/(.*)", "/z/$1"]}
    assert target(conf, "/a/%2e%2e?x=1") == "/z/%2e%2e?x=1"
    ctx = Ctx("/a/b")
    rewrite({"use_real_request_uri_unsafe": True, "uri": "/new"}, ctx)
    assert ctx.upstream.uri == "/new" and ctx.var["uri"] == "/a/b"


# -- host / method / headers -----------------------------------------------------------------------


def test_host_and_method() -> None:
    ctx = Ctx("/hello")
    rewrite({"host": "iresty.com:8080", "method": "POST"}, ctx)
    assert ctx.upstream.host == "iresty.com:8080"
    assert ctx.upstream.method == "POST"
    assert ctx.upstream.uri == "/hello"


def test_legacy_headers_are_set() -> None:
    ctx = Ctx("/hello", headers=[("X-Api-Version", "v0"), ("Accept", "*/*")],
              remote_addr="127.0.0.1")
    rewrite({"headers": {"X-Api-Version": "v1", "X-Num": 2, "X-Client": "$remote_addr"}}, ctx)
    assert ctx.upstream.headers.items() == [
        ("Accept", "*/*"), ("X-Api-Version", "v1"), ("X-Num", "2"), ("X-Client", "127.0.0.1"),
    ]


def test_add_set_remove_order() -> None:
    ctx = Ctx("/hello", headers=[("X-Tag", "client"), ("User-Agent", "curl"), ("X-Gone", "1")])
    conf = {
        "headers": {
            "add": {"X-Tag": "added", "X-Gone": "added-then-removed"},
            "set": {"X-Tag": "set-wins"},
            "remove": ["X-Gone", "user-agent"],
        }
    }
    rewrite(conf, ctx)
    assert ctx.upstream.headers.items() == [("X-Tag", "set-wins")]


def test_header_arrays() -> None:
    ctx = Ctx("/hello", headers=[("X-Multi", "client")])
    rewrite({"headers": {"add": {"X-Add": ["a", 1]}, "set": {"X-Multi": ["x", "y"]}}}, ctx)
    assert ctx.upstream.headers.getall("X-Add") == ["a", "1"]
    assert ctx.upstream.headers.getall("X-Multi") == ["x", "y"]


def test_empty_resolved_value_removes_the_header() -> None:
    ctx = Ctx("/hello", headers=[("X-Set", "client"), ("X-Add", "client")])
    conf = {"headers": {"set": {"X-Set": "$arg_missing"}, "add": {"X-Add": "$arg_missing"}}}
    rewrite(conf, ctx)
    assert "X-Set" not in ctx.upstream.headers
    assert ctx.upstream.headers.getall("X-Add") == ["client"]  # nothing added
    ctx = Ctx("/hello", headers=[("X-Api", "client")])
    rewrite({"headers": {"X-Api": "${arg_missing}"}}, ctx)
    assert "X-Api" not in ctx.upstream.headers


def test_header_values_use_regex_captures() -> None:
    ctx = Ctx("/test/alpha/beta", arg_x="42")
    conf = {
        "regex_uri": ["^/test/(.*)/(.*)", "/$1"],
        "headers": {"set": {"X-Captures": "$1-${2}-$arg_x"}},
    }
    rewrite(conf, ctx)
    assert ctx.upstream.uri == "/alpha"
    assert ctx.upstream.headers.get("X-Captures") == "alpha-beta-42"
    # No regex match: the capture references resolve to nothing.
    ctx = Ctx("/other", arg_x="42")
    rewrite(conf, ctx)
    assert ctx.upstream.headers.get("X-Captures") == "--42"


# -- compiled state and the chain ------------------------------------------------------------------


async def test_through_a_compiled_chain_with_weak_conf_cache() -> None:
    registry = PluginRegistry([pr])
    chain, errors = compile_chain({"proxy-rewrite": {"uri": "/$arg_to"}}, registry)
    assert errors == []
    assert chain.rewrite[0].conf == {"uri": "/$arg_to", "use_real_request_uri_unsafe": False}
    ctx = Ctx("/x?to=dest")
    assert await run_request_phase(chain.rewrite, ctx) is None
    assert ctx.upstream.uri == "/dest?to=dest"
    import gc

    gc.collect()  # confs of earlier tests that only the cyclic GC frees go first
    before = len(pr._compiled)
    assert before >= 1
    del chain, ctx
    gc.collect()
    assert len(pr._compiled) == before - 1, "the entry goes with the chain's conf"
