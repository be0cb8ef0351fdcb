"""lua-resty-expr semantics of plugin_sdk.expr (spec §4.6)."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest

from plugin_sdk.errors import ExprError
from plugin_sdk.expr import (
    IpMatcher,
    compile_expr,
    compile_pcre,
    lua_tonumber,
    lua_tostring,
    pcre_to_python,
)


def ev(rule: Any, **vars: Any) -> bool:
    return compile_expr(rule)(vars)


# --- one row per (expression, variables, expected) -------------------------------------------

OPERATOR_CASES = [
    # == : plain equality unless the right side is a number
    (["arg_k", "==", "v"], {"arg_k": "v"}, True),
    (["arg_k", "==", "v"], {"arg_k": "w"}, False),
    (["arg_k", "==", "v"], {}, False),
    (["arg_k", "==", "18"], {"arg_k": "18.0"}, False),
    (["arg_age", "==", 18], {"arg_age": "18"}, True),
    (["arg_age", "==", 18], {"arg_age": " 18 "}, True),
    (["arg_age", "==", 18], {"arg_age": "0x12"}, True),
    (["arg_age", "==", 18], {"arg_age": "1.8e1"}, True),
    (["arg_age", "==", 18], {"arg_age": "18abc"}, False),
    (["arg_age", "==", 18], {}, False),
    (["arg_age", "==", 18.5], {"arg_age": "18.5"}, True),
    (["x", "==", None], {}, True),
    (["x", "==", None], {"x": "a"}, False),
    (["x", "==", True], {"x": True}, True),
    (["x", "==", True], {"x": 1}, False),
    (["x", "==", 1], {"x": True}, False),
    # ~= : inverse, with the nil / non-numeric rules
    (["arg_k", "~=", "v"], {"arg_k": "v"}, False),
    (["arg_k", "~=", "************"], {"arg_k": "v"}, True),
    (["arg_name", "~=", "jack"], {}, True),
    (["arg_age", "~=", 18], {"arg_age": "18"}, False),
    (["arg_age", "~=", 18], {"arg_age": "16"}, True),
    (["arg_age", "~=", 18], {"arg_age": "aa"}, True),
    (["arg_age", "~=", 18], {}, True),
    (["arg_age", "~=", "18"], {"arg_age": "18"}, False),
    (["arg_k", "~=", None], {"arg_k": "v"}, True),
    (["http_test", "~=", None], {}, False),
    # numeric comparisons: both sides through tonumber, anything non-numeric is false
    (["arg_k", ">", 10], {"arg_k": "11"}, True),
    (["arg_k", ">", 10], {"arg_k": "9"}, False),
    (["arg_k", ">", 10], {"arg_k": "10"}, False),
    (["arg_k", ">", 10], {}, False),
    (["arg_k", ">", 10], {"arg_k": "eleven"}, False),
    (["arg_k", ">", "10"], {"arg_k": "0x10"}, True),
    (["arg_k", ">", "ten"], {"arg_k": "11"}, False),
    (["arg_k", ">=", "2"], {"arg_k": "2"}, True),
    (["arg_k", ">=", 3], {"arg_k": "2"}, False),
    (["arg_k", "<", 3], {"arg_k": "2"}, True),
    (["arg_k", "<", 3], {"arg_k": "3"}, False),
    (["arg_k", "<=", "2"], {"arg_k": "3"}, False),
    (["arg_k", "<=", 3], {"arg_k": "3"}, True),
    (["arg_k", "<", 3], {"arg_k": 2}, True),
    (["arg_k", "<", 3], {"arg_k": True}, False),
    # ~~ / ~* : unanchored PCRE search, nil is false
    (["k", "~~", "[a-z]"], {"k": "a"}, True),
    (["k", "~~", "[a-z]"], {"k": "9"}, False),
    (["k", "~~", "^/api/v\\d+/"], {"k": "/api/v2/users"}, True),
    (["k", "~~", "b"], {"k": "abc"}, True),
    (["k", "~~", "^12"], {"k": 123}, True),
    (["arg_name", "~~", "[a-z]{1,4}"], {}, False),
    (["k", "~~", "A"], {"k": "a"}, False),
    (["x", "~*", "A"], {"x": "a"}, True),
    (["x", "~*", "A"], {"x": "A"}, True),
    (["x", "~*", "A"], {"x": "b"}, False),
    (["x", "~*", "A"], {"x": ""}, False),
    (["arg_name", "~*", "[a-z]{1,4}"], {}, False),
    (["k", "~~", "\\w+"], {"k": "é"}, False),  # ASCII classes, as PCRE without "u"
    # in : left equals one element (Lua equality, no string/number coercion)
    (["arg_k", "in", ["1", "2"]], {"arg_k": "1"}, True),
    (["arg_k", "in", ["1", "2"]], {"arg_k": "2"}, True),
    (["arg_k", "in", ["1", "2"]], {"arg_k": "4"}, False),
    (["arg_k", "in", ["1", "2"]], {}, False),
    (["k", "in", [1, 2]], {"k": 1}, True),
    (["k", "in", [1, 2]], {"k": "1"}, False),
    (["k", "in", [1, "a", None]], {}, False),
    (["k", "in", "abc"], {"k": "abc"}, False),
    (["k", "in", {"a": 1}], {"k": "a"}, False),
    # has : left is a list containing right
    (["x", "has", "a"], {"x": ["a", "b"]}, True),
    (["x", "has", "a"], {"x": ["a"]}, True),
    (["x", "has", "a"], {"x": ["b"]}, False),
    (["x", "has", "a"], {"x": []}, False),
    (["x", "has", "a"], {"x": "a"}, False),
    (["x", "has", "a"], {}, False),
    (["x", "has", 1], {"x": [True]}, False),
    (["x", "has", None], {"x": [None]}, False),
    # ipmatch : left IP inside any of the right IPs/CIDRs
    (["remote_addr", "ipmatch", "127.0.0.1"], {"remote_addr": "127.0.0.1"}, True),
    (["remote_addr", "ipmatch", ["127.0.0.1"]], {"remote_addr": "127.0.0.1"}, True),
    (["remote_addr", "ipmatch", "127.0.0.0/16"], {"remote_addr": "127.0.200.9"}, True),
    (["remote_addr", "ipmatch", ["127.0.0.0/16"]], {"remote_addr": "127.1.0.1"}, False),
    (["remote_addr", "ipmatch", ["127.0.0.1", "127.0.0.2"]], {"remote_addr": "127.0.0.1"}, True),
    (["remote_addr", "ipmatch", ["127.0.0.2", "127.0.0.3"]], {"remote_addr": "127.0.0.1"}, False),
    (["arg_real_ip", "ipmatch", ["127.0.0.1"]], {"arg_real_ip": "127.0.0.1"}, True),
    (["http_real_ip", "ipmatch", ["127.0.0.2"]], {"http_real_ip": "127.0.0.1"}, False),
    (["remote_addr", "ipmatch", ["::1", "fe80::/32"]], {"remote_addr": "fe80:0:ff::1"}, True),
    (["remote_addr", "ipmatch", ["::1"]], {"remote_addr": "0:0:0:0:0:0:0:1"}, True),
    (["remote_addr", "ipmatch", ["10.0.0.0/8"]], {"remote_addr": "not-an-ip"}, False),
    (["remote_addr", "ipmatch", ["10.0.0.0/8"]], {}, False),
    (["remote_addr", "ipmatch", ["127.0.0.1"]], {"remote_addr": "::ffff:127.0.0.1"}, False),
]


@pytest.mark.parametrize(("expr", "vars", "expected"), OPERATOR_CASES)
def test_operator_semantics(expr: list[Any], vars: dict[str, Any], expected: bool) -> None:
    assert compile_expr([expr])(vars) is expected


@pytest.mark.parametrize(("expr", "vars", "expected"), OPERATOR_CASES)
def test_not_prefix_inverts_every_operator(
    expr: list[Any], vars: dict[str, Any], expected: bool
) -> None:
    negated = [expr[0], "!", expr[1], expr[2]]
    assert compile_expr([negated])(vars) is (not expected)


def test_not_operator_examples_from_lua_resty_expr() -> None:
    rule = [["k", "!", ">", 10]]
    assert ev(rule, k=11) is False
    assert ev(rule, k=9) is True
    both = [["x", ">", 10], ["x", "!", ">", 15]]
    assert ev(both, x=11) is True
    assert ev(both, x=16) is False


def test_operator_names_are_case_insensitive() -> None:
    rule = ["or", ["x", "HAS", "a"], ["x", "HAS", "c"]]
    assert ev(rule, x=["a", "b"]) is True
    assert ev(rule, x=["c"]) is True
    assert ev(rule, x=["b"]) is False
    assert ev([["k", "IN", ["a"]]], k="a") is True
    assert ev([["ip", "IpMatch", "10.0.0.0/8"]], ip="10.1.2.3") is True
    assert ev([["k", "~*", "X"]], k="x") is True


def test_legacy_two_element_form_is_equality() -> None:
    assert ev([["arg_k", "v"]], arg_k="v") is True
    assert ev([["arg_k", "v"]], arg_k="not_hit") is False
    rule = [["arg_k", "v"], ["host", "localhost"], ["server_port", "1984-not"]]
    assert ev(rule, arg_k="v", host="localhost", server_port="1984") is False
    assert ev(rule, arg_k="v", host="localhost", server_port="1984-not") is True


def test_legacy_value_is_lower_cased_like_lua() -> None:
    # the operator slot is lower-cased before it is reinterpreted as the value
    assert ev([["arg_name", "JSON"]], arg_name="json") is True
    assert ev([["arg_name", "JSON"]], arg_name="JSON") is False


def test_legacy_number_value_is_compared_as_a_string() -> None:
    assert ev([["arg_age", 18]], arg_age="18") is True
    assert ev([["arg_age", 18]], arg_age="018") is False


def test_two_element_form_with_a_real_operator_compares_with_nil() -> None:
    assert ev([["arg_k", "~="]], arg_k="x") is True
    assert ev([["arg_k", "~="]]) is False
    assert ev([["arg_k", "=="]]) is True


LOGIC_CASES = [
    # (a, b) truth values -> AND, OR, !AND, !OR
    ((True, True), (True, True, False, False)),
    ((True, False), (False, True, True, False)),
    ((False, True), (False, True, True, False)),
    ((False, False), (False, False, True, True)),
]


@pytest.mark.parametrize(("inputs", "outputs"), LOGIC_CASES)
def test_logical_groups_truth_table(
    inputs: tuple[bool, bool], outputs: tuple[bool, bool, bool, bool]
) -> None:
    a, b = inputs
    vars = {"a": "1" if a else "0", "b": "1" if b else "0"}
    for op, expected in zip(("AND", "OR", "!AND", "!OR"), outputs, strict=True):
        rule = [op, ["a", "==", "1"], ["b", "==", "1"]]
        assert compile_expr(rule)(vars) is expected, op


def test_logical_groups_with_three_operands_and_lower_case_names() -> None:
    rule = ["!or", ["a", "==", "1"], ["b", "==", "1"], ["c", "==", "1"]]
    assert ev(rule, a="0", b="0", c="0") is True
    assert ev(rule, a="0", b="0", c="1") is False
    rule = ["and", ["a", "==", "1"], ["b", "==", "1"], ["c", "==", "1"]]
    assert ev(rule, a="1", b="1", c="1") is True
    assert ev(rule, a="1", b="1", c="0") is False


def test_nested_groups() -> None:
    rule = [
        "!AND",
        ["arg_name", "==", "json"],
        ["OR", ["arg_weight", ">", 10], ["arg_height", "!", ">", 15]],
    ]
    # not (name == json and (weight > 10 or not height > 15))
    assert ev(rule, arg_name="json", arg_weight="11") is False
    assert ev(rule, arg_name="json", arg_weight="5", arg_height="20") is True
    assert ev(rule, arg_name="xml", arg_weight="11") is True
    readme = [
        "AND",
        ["arg_version", "==", "v2"],
        ["OR", ["arg_action", "==", "signup"], ["arg_action", "==", "subscribe"]],
    ]
    assert ev(readme, arg_version="v2", arg_action="subscribe") is True
    assert ev(readme, arg_version="v2", arg_action="login") is False
    assert ev(readme, arg_version="v1", arg_action="signup") is False


def test_top_level_is_an_implicit_and_and_may_hold_groups() -> None:
    rule = [["arg_k", "==", "v"], ["OR", ["a", "==", "1"], ["b", "==", "1"]], [["c", "==", "1"]]]
    assert ev(rule, arg_k="v", b="1", c="1") is True
    assert ev(rule, arg_k="v", b="1", c="0") is False
    assert ev(rule, arg_k="v", c="1") is False


def test_traffic_split_rule_from_spec_case_42() -> None:
    pred = compile_expr([["arg_name", "==", "jack"], ["arg_age", "!", "<", "16"]])
    assert pred({"arg_name": "jack", "arg_age": "14"}) is False
    assert pred({"arg_name": "jack", "arg_age": "16"}) is True
    assert pred({"arg_name": "rose", "arg_age": "16"}) is False


def test_vars_from_spec_case_30_three_way_and() -> None:
    pred = compile_expr([["arg_k", "==", "v"], ["cookie_k", "==", "v"], ["http_k", "==", "v"]])
    assert pred({"arg_k": "v", "cookie_k": "v", "http_k": "v"}) is True
    assert pred({"arg_k": "v", "cookie_k": "v"}) is False
    assert pred({"arg_k": "not-hit", "cookie_k": "v", "http_k": "v"}) is False


def test_empty_rule_always_matches() -> None:
    assert compile_expr([])({}) is True
    assert compile_expr({})({"x": 1}) is True


def test_works_with_any_object_having_get() -> None:
    class Var:
        def __init__(self) -> None:
            self.reads: list[str] = []

        def get(self, name: str) -> Any:
            self.reads.append(name)
            return {"arg_a": "1"}.get(name)

    var = Var()
    assert compile_expr([["arg_a", "==", "1"], ["arg_b", "==", "2"]])(var) is False
    assert var.reads == ["arg_a", "arg_b"]
    var.reads.clear()
    assert compile_expr(["OR", ["arg_a", "==", "1"], ["arg_b", "==", "2"]])(var) is True
    assert var.reads == ["arg_a"]  # short-circuits like Lua


ERROR_CASES: list[tuple[Any, str]] = [
    (None, "missing argument rule"),
    ([["arg_k", "=", "v"]], "invalid operator '='"),
    ([["arg_k", "invalid", 10]], "invalid operator 'invalid'"),
    ([["arg_k", "MATCHES", 10]], "invalid operator 'matches'"),
    ([["arg_k", "v", "w"]], "invalid operator 'v'"),
    ([["arg_k", "!", "v"]], "invalid operator '!'"),
    ([["arg_k"]], "invalid expression"),
    ([[]], "rule too short"),
    ([["!", "arg_k", "==", "1"]], "bad 'not' expression"),
    (["OR", ["arg_weight", ">", 10]], "rule too short"),
    (["OR", ["arg_weight", ">", 10], ["AND"]], "rule too short"),
    (["OR", ["a", ">", 10], ["AND", ["b", "==", "1"]]], "rule too short"),
    (["arg_k", "==", "v"], "rule should be wrapped inside brackets"),
    ([["arg_k", "==", "v"], "x"], "invalid expression"),
    ([["remote_addr", "ipmatch", None]], "invalid ip address"),
    ([["remote_addr", "ipmatch", ""]], "invalid ip address"),
    ([["remote_addr", "ipmatch", []]], "invalid ip address"),
    ([["remote_addr", "ipmatch"]], "invalid ip address"),
    ([["remote_addr", "ipmatch", [""]]], "invalid ip address: "),
    ([["remote_addr", "ipmatch", ["1.2.3.4", "300.1.1.1"]]], "invalid ip address: 300.1.1.1"),
    ([["remote_addr", "ipmatch", ["10.0.0.0/33"]]], "invalid ip address: 10.0.0.0/33"),
]


@pytest.mark.parametrize(("rule", "message"), ERROR_CASES)
def test_compile_errors_carry_lua_resty_expr_messages(rule: Any, message: str) -> None:
    with pytest.raises(ExprError) as info:
        compile_expr(rule)
    assert str(info.value) == message


@pytest.mark.parametrize("pattern", ["((", "[a-", "a{2,1}", "\\p{L}", "(?|a|b)", "a\\K"])
def test_bad_regex_is_a_compile_error(pattern: str) -> None:
    with pytest.raises(ExprError, match="failed to compile regex"):
        compile_expr([["k", "~~", pattern]])


def test_regex_right_side_must_be_a_string_or_number() -> None:
    with pytest.raises(ExprError, match="invalid regex"):
        compile_expr([["k", "~~", None]])
    assert ev([["k", "~~", 12]], k="x12y") is True


# --- Lua value conversions ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("18", 18.0),
        (" 18", 18.0),
        ("18 \t\n", 18.0),
        ("-18", -18.0),
        ("+5", 5.0),
        ("0x10", 16.0),
        ("0X1f", 31.0),
        ("-0x10", -16.0),
        ("0x1p4", 16.0),
        ("1e3", 1000.0),
        ("1E-2", 0.01),
        (".5", 0.5),
        ("5.", 5.0),
        ("inf", math.inf),
        ("-Infinity", -math.inf),
        ("", None),
        ("   ", None),
        ("abc", None),
        ("18abc", None),
        ("1_000", None),
        ("0x", None),
        ("1e", None),
        ("١٨", None),
        ("1 8", None),
    ],
)
def test_lua_tonumber_strings(text: str, number: float | None) -> None:
    assert lua_tonumber(text) == number


def test_lua_tonumber_other_types() -> None:
    assert lua_tonumber(3) == 3.0
    assert lua_tonumber(2.5) == 2.5
    assert lua_tonumber(True) is None
    assert lua_tonumber(None) is None
    assert lua_tonumber(["1"]) is None
    nan = lua_tonumber("nan")
    assert nan is not None and math.isnan(nan)


@pytest.mark.parametrize(
    ("value", "text"),
    [(18, "18"), (18.0, "18"), (1.5, "1.5"), (1e20, "1e+20"), (-0.25, "-0.25"), (True, "true"),
     (False, "false"), (None, "nil"), ("s", "s"), (math.inf, "inf")],
)  # fmt: skip
def test_lua_tostring(value: Any, text: str) -> None:
    assert lua_tostring(value) == text


def test_lua_tostring_tables() -> None:
    assert lua_tostring([1]).startswith("table: 0x")


# --- PCRE translation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pcre", "subject", "found"),
    [
        (r"(?<year>\d{4})-\k<year>", "2024-2024", "2024-2024"),
        (r"(?'y'\d)\g{y}", "x11", "11"),
        (r"abc\z", "abc", "abc"),
        (r"abc\Z", "abc\n", "abc"),
        (r"\Qa.b*\E", "xa.b*", "a.b*"),
        (r"\x{41}\x42", "AB", "AB"),
        (r"[[:alpha:]]+[[:digit:]]", "ab1", "ab1"),
        (r"[[:punct:]]+", "a!?b", "!?"),
        (r"a\h+b", "a \tb", "a \tb"),
        (r"a(?i)b|c", "aB", "aB"),
        (r"a(?i)b|c", "C", "C"),
        (r"a{,2}", "a{,2}", "a{,2}"),
        (r"\e", "\x1b", "\x1b"),
        (r"[&|~]+", "&|~", "&|~"),
        (r"[]a]+", "]a", "]a"),
    ],
)
def test_pcre_translation(pcre: str, subject: str, found: str) -> None:
    m = compile_pcre(pcre).search(subject)
    assert m is not None and m.group(0) == found


def test_pcre_inline_flags_are_scoped_like_pcre() -> None:
    rx = compile_pcre(r"x(a(?i)b)c")
    assert rx.search("xaBc") is not None
    assert rx.search("xaBC") is None
    assert rx.search("xAbc") is None
    assert pcre_to_python(r"(?i)abc") == r"(?i)abc"


def test_pcre_caseless_option() -> None:
    assert compile_pcre("abc", ignore_case=True).search("xABCx") is not None
    assert compile_pcre("abc").search("xABCx") is None
    assert compile_pcre(r"\d").flags & re.ASCII


@pytest.mark.parametrize("pcre", [r"\p{Lu}", r"a\Kb", r"\G", r"(?R)", r"(*SKIP)a", r"\g{-1}"])
def test_pcre_untranslatable_features_raise(pcre: str) -> None:
    with pytest.raises(ValueError):
        compile_pcre(pcre)


# --- IpMatcher ---------------------------------------------------------------------------------


def test_ip_matcher_v4_and_v6() -> None:
    m = IpMatcher(["127.0.0.1", "192.168.0.0/16", "::1", "fe80::/32", "[2001:db8::1]"])
    assert m.match("127.0.0.1")
    assert not m.match("127.0.0.2")
    assert m.match("192.168.254.1")
    assert not m.match("192.169.0.1")
    assert m.match("::1")
    assert m.match("0000:0000::0001")
    assert m.match("fe80:0000:1::2")
    assert not m.match("fe81::1")
    assert m.match("2001:db8::1")
    assert not m.match("garbage")
    assert not m.match("")
    assert not m.match(None)


def test_ip_matcher_host_bits_and_zero_prefix() -> None:
    assert IpMatcher(["10.1.2.3/8"]).match("10.200.0.1")
    everything = IpMatcher(["0.0.0.0/0"])
    assert everything.match("8.8.8.8")
    assert not everything.match("::1")


@pytest.mark.parametrize("bad", ["", "1.2.3", "1.2.3.04", "256.1.1.1", "1.2.3.4/40", "::1/129",
                                 "fe80::1%eth0", "x", "1.2.3.4/a"])  # fmt: skip
def test_ip_matcher_rejects_bad_entries(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid ip address"):
        IpMatcher([bad])
