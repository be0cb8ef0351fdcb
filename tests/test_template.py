"""``$var`` substitution of plugin_sdk.template (spec §9.4, APISIX ``resolve_var``)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from plugin_sdk.template import (
    compile_capture_template,
    compile_sub_template,
    compile_template,
    compile_template_n,
)

CTX = {"you": "John", "me": "David"}

# t/core/utils.t "resolve_var": template -> output
RESOLVE_VAR_CASES = [
    ("", ""),
    ("xx", "xx"),
    ("$me", "David"),
    ("$me run", "David run"),
    ("talk with $me", "talk with David"),
    ("tell $me to", "tell David to"),
    ("$you and $me", "John and David"),
    ("$eva and $me", " and David"),
    ("$you and \\$me", "John and \\$me"),
    ("${you}_${me}", "John_David"),
    ("${you}${me}", "JohnDavid"),
    ("${you}$me", "JohnDavid"),
]


@pytest.mark.parametrize(("tpl", "out"), RESOLVE_VAR_CASES)
def test_resolve_var_cases_from_apisix(tpl: str, out: str) -> None:
    assert compile_template(tpl)(CTX) == out


@pytest.mark.parametrize(
    ("tpl", "vars", "out"),
    [
        ("${name ?? anonymous}", {}, "anonymous"),
        ("${name ?? anonymous}", {"name": "jack"}, "jack"),
        ("${ name??x }", {}, "x"),
        ("${name ?? }-", {}, "-"),
        ("${ name }", {"name": "j"}, "j"),
        ("${name}", {"name": ""}, ""),
        ("${name ?? d}", {"name": ""}, ""),
        ("$status", {"status": 200}, "200"),
        ("$t", {"t": 0.5}, "0.5"),
        ("$flag", {"flag": False}, "false"),
        ("$host:$server_port", {"host": "h", "server_port": "9080"}, "h:9080"),
        ("$a.b", {"a.b": "dotted", "a": "no"}, "dotted"),
        ("$a-b", {"a": "x"}, "x-b"),
        ("$", {}, "$"),
        ("a$ b", {}, "a$ b"),
        ("${unclosed", {"unclosed": "x"}, "${unclosed"),
        ("/foo$$uri", {"uri": "/hello"}, "/foo$/hello"),
        ("$uri/$bad_var/bar", {"uri": "/hello"}, "/hello//bar"),
        ("$uri/test/a${arg_name}c", {"uri": "/hello", "arg_name": "json"}, "/hello/test/ajsonc"),
        ("\\\\$uri", {"uri": "/x"}, "\\\\$uri"),
        ("$1", {"1": "one"}, "one"),
        ("$héllo", {"h": "H"}, "Héllo"),
    ],
)
def test_template_rules(tpl: str, vars: dict[str, Any], out: str) -> None:
    assert compile_template(tpl)(vars) == out


def test_no_dollar_is_a_constant_function() -> None:
    tpl = "/static/path"
    render = compile_template(tpl)
    assert render({}) is tpl
    assert render({"static": "x"}) is tpl


def test_reads_through_get_only() -> None:
    class Var:
        def get(self, name: str) -> Any:
            return {"uri": "/u"}.get(name)

    assert compile_template("$uri?x=$arg_x")(Var()) == "/u?x="


def test_escaper_applies_to_values_and_defaults_not_literals() -> None:
    def esc(s: str) -> str:
        return s.replace("?", "%3F")

    render = compile_template("/a?b/$v/${w ?? d?}/$missing", esc)
    assert render({"v": "x?y"}) == "/a?b/x%3Fy/d%3F/"


def test_resolved_count() -> None:
    assert compile_template_n("$a-$b-${c ?? z}")({"a": "1"}) == ("1--z", 2)
    assert compile_template_n("$a $b")({}) == (" ", 0)
    assert compile_template_n("plain")({}) == ("plain", 0)
    assert compile_template_n("$remote_addr")({"remote_addr": "1.2.3.4"}) == ("1.2.3.4", 1)


# --- regex templates -----------------------------------------------------------------------


def test_capture_template_groups_then_vars() -> None:
    m = re.match(r"^/test/(.*)/(.*)/(.*)", "/test/plugin/proxy/rewrite")
    render = compile_capture_template("/$1_${2}_$3-$me-$0")
    assert render(m, CTX) == "/plugin_proxy_rewrite-David-/test/plugin/proxy/rewrite"


def test_capture_template_missing_groups_are_empty() -> None:
    m = re.match(r"^/(a)?(b)", "/b")
    render = compile_capture_template("[$1][$2][$9]")
    assert render(m, {}) == "[][b][]"
    assert render(None, {}) == "[][][]"


def test_capture_template_braces_are_optional_on_each_side() -> None:
    m = re.match(r"(x)", "x")
    assert compile_capture_template("${1-$1}-{$1")(m, {}) == "x-x-{x"


def test_capture_template_backslash_blocks_substitution_and_stays() -> None:
    m = re.match(r"(x)", "x")
    assert compile_capture_template("\\$1/$1")(m, {}) == "\\$1/x"


def test_capture_template_resolves_vars_inside_captured_text_like_apisix() -> None:
    m = re.match(r"/(.*)", "/$me")
    assert compile_capture_template("got $1")(m, CTX) == "got David"


def test_capture_template_without_captures_is_a_var_template() -> None:
    assert compile_capture_template("$me!")(None, CTX) == "David!"
    assert compile_capture_template("plain")(None, CTX) == "plain"


def test_sub_template_like_ngx_re_sub() -> None:
    m = re.match(r"^/test/(.*)", "/test/1")
    assert m is not None
    assert compile_sub_template("http://test.com/${1}")(m) == "http://test.com/1"
    m = re.match(r"^/test/(.*)/(.*)/(.*)", "/test/plugin/proxy/rewrite")
    assert m is not None
    assert compile_sub_template("/$1_$2_$3")(m) == "/plugin_proxy_rewrite"
    assert (
        compile_sub_template("$$1=$1,$0,${3}x,$7")(m)
        == "$1=plugin,/test/plugin/proxy/rewrite,rewritex,"
    )
    assert compile_sub_template("no captures")(m) == "no captures"


@pytest.mark.parametrize(
    ("tpl", "message"),
    [
        ("$a", 'invalid capturing variable name found in "$a"'),
        ("x$", 'invalid capturing variable name found in "x$"'),
        ("${a}", 'invalid capturing variable name found in "${a}"'),
        ("${1", 'the closing bracket in "${1" variable is missing'),
    ],
)
def test_sub_template_errors(tpl: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        compile_sub_template(tpl)
    assert str(info.value) == message
