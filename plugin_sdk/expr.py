"""``vars`` expressions with lua-resty-expr semantics (APISIX route ``vars``, traffic-split
``match``, response-rewrite ``vars``, plugin ``_meta.filter``, ...).

``compile_expr(rule)`` checks and compiles a rule once and returns a predicate
``pred(vars) -> bool``; ``vars`` is anything with ``.get(name)`` returning the value or
``None`` (``ctx.var`` or a plain dict). A bad rule raises :class:`~plugin_sdk.errors.ExprError`
with lua-resty-expr's message (``invalid operator '<op>'``, ``rule too short``, ...).

Shape: a list of expressions and groups, implicitly AND-ed; a group is
``["AND" | "OR" | "!AND" | "!OR", expr, expr, ...]`` (case-insensitive, at least two operands);
an expression is ``[var, op, value]``, ``[var, "!", op, value]`` or the legacy ``[var, value]``
(``==``; note that, as in Lua, the legacy value is lower-cased). An empty list is always true.

Values follow Lua: ``None`` is ``nil``; a variable compared with a number goes through
:func:`lua_tonumber`; lists compare by identity unless an operator looks inside them
(``in``, ``has``).

Regexes (``~~``, ``~*``) are PCRE in APISIX and compiled here with :func:`compile_pcre`, which
translates PCRE-only syntax to Python ``re`` (named groups ``(?<n>``, ``\\k<n>``,
``\\z``/``\\Z``, ``\\Q..\\E``, ``\\x{..}``, ``\\h``/``\\v``/``\\R``, POSIX ``[:alpha:]``
classes, ``{,n}`` as literal, inline flags in the middle of a pattern). Not translated, so
they raise ``ExprError``: ``\\K``, ``\\G``, ``\\X``, ``\\p{..}``, recursion/subroutine calls,
backtracking verbs, branch reset ``(?|``, relative back-references, ``(?J)``/``(?U)``.
Matching is ASCII like PCRE without the ``u`` option (``\\w``, ``\\d``, caseless are
ASCII-only), but runs on text, not bytes: ``.`` matches one character where nginx would match
one byte. A bad regex is a compile error here; lua-resty-expr only notices it at evaluation
time (where it evaluates to false).
"""

from __future__ import annotations

import ipaddress
import math
import operator
import re
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from plugin_sdk.errors import ExprError

__all__ = [
    "IpMatcher",
    "VarsLike",
    "compile_expr",
    "compile_pcre",
    "lua_tonumber",
    "lua_tostring",
    "pcre_to_python",
]


class VarsLike(Protocol):
    """Variable lookup: ``get(name)`` gives the value or ``None`` (a dict or ``ctx.var``)."""

    def get(self, name: str, /) -> Any: ...


Predicate = Callable[[Any], bool]

# ---------------------------------------------------------------------------------------------
# Lua value helpers
# ---------------------------------------------------------------------------------------------

_LUA_SPACE = " \t\n\v\f\r"
_DEC_NUM = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_HEX_NUM = re.compile(
    r"([+-]?)0[xX]((?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)(?:[pP][+-]?[0-9]+)?)"
)
_SPECIAL_NUM = {"inf": math.inf, "infinity": math.inf, "nan": math.nan}


def lua_tonumber(value: Any) -> float | None:
    """LuaJIT ``tonumber``: numbers as they are (as floats), numeric strings converted.

    Strings may carry surrounding ASCII whitespace, a sign, a decimal or hex (``0x10`` = 16,
    ``0x1p4``) mantissa and an exponent, or be ``inf``/``nan``; anything else (booleans, ``None``,
    lists, ``"18abc"``, ``""``, ``"1_000"``) gives ``None``.
    """
    if isinstance(value, str):
        s = value.strip(_LUA_SPACE)
        if _DEC_NUM.fullmatch(s):
            return float(s)
        m = _HEX_NUM.fullmatch(s)
        if m:
            return float.fromhex(m.group(1) + "0x" + m.group(2))
        sign = 1.0
        if s.startswith(("+", "-")):
            sign = -1.0 if s[0] == "-" else 1.0
            s = s[1:]
        special = _SPECIAL_NUM.get(s.lower()) if len(s) <= 8 else None
        return None if special is None else sign * special
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        return value
    if isinstance(value, int):
        try:
            return float(value)
        except OverflowError:
            return math.inf if value > 0 else -math.inf
    return None


def lua_tostring(value: Any) -> str:
    """Lua ``tostring``: numbers as ``%.14g`` (``18``, ``0.5``, ``1e+20``), booleans as
    ``true``/``false``, ``None`` as ``nil``, lists/dicts as ``table: 0x...``."""
    if isinstance(value, str):
        return value
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        num = lua_tonumber(value)
        assert num is not None
        if num != num:
            return "nan"
        if math.isinf(num):
            return "inf" if num > 0 else "-inf"
        return f"{num:.14g}"
    if isinstance(value, list | tuple | dict):
        return f"table: 0x{id(value):08x}"
    return str(value)


def _ascii_lower(s: str) -> str:
    if s.isascii():
        return s.lower()
    return "".join(c.lower() if c < "\x80" else c for c in s)


def _kind(v: Any) -> int:
    # 0 nil, 1 boolean, 2 number, 3 string, 4 table/other (compared by identity)
    if v is None:
        return 0
    if isinstance(v, bool):
        return 1
    if isinstance(v, int | float):
        return 2
    if isinstance(v, str):
        return 3
    return 4


def _lua_eq(a: Any, b: Any) -> bool:
    if a is b:
        return True
    ka = _kind(a)
    if ka != _kind(b):
        return False
    if ka == 2:
        return bool(float(a) == float(b))
    if ka == 3:
        return bool(a == b)
    return False


# ---------------------------------------------------------------------------------------------
# IP matching (lua-resty-ipmatcher)
# ---------------------------------------------------------------------------------------------


def _v4_int(s: str) -> int | None:
    parts = s.split(".")
    if len(parts) != 4:
        return None
    n = 0
    for p in parts:
        if not p.isdigit() or not p.isascii() or len(p) > 3 or (len(p) > 1 and p[0] == "0"):
            return None
        o = int(p)
        if o > 255:
            return None
        n = (n << 8) | o
    return n


def _v6_int(s: str) -> int | None:
    if s[:1] == "[" and s[-1:] == "]":
        s = s[1:-1]
    if "%" in s or ":" not in s:
        return None
    try:
        return int(ipaddress.IPv6Address(s))
    except ValueError:
        return None


class IpMatcher:
    """A set of IPv4/IPv6 addresses and CIDRs (lua-resty-ipmatcher semantics).

    ``IpMatcher(["127.0.0.1", "10.0.0.0/8", "::1", "fe80::/32"])`` raises ``ValueError``
    (``invalid ip address: <ip>``) for a bad entry; ``match(ip)`` is false for an address that
    does not parse. Lookups cost one hash probe per distinct prefix length.
    """

    __slots__ = ("_exact", "_lens4", "_lens6", "_nets4", "_nets6", "_only_exact4")

    def __init__(self, ips: Iterable[Any]) -> None:
        exact: set[str] = set()
        nets4: dict[int, set[int]] = {}
        nets6: dict[int, set[int]] = {}
        for ip in ips:
            if not isinstance(ip, str) or not ip:
                raise ValueError(f"invalid ip address: {lua_tostring(ip)}")
            addr, slash, mask = ip.partition("/")
            n4 = _v4_int(addr)
            if n4 is not None:
                bits, table = 32, nets4
                n = n4
            else:
                n6 = _v6_int(addr)
                if n6 is None:
                    raise ValueError(f"invalid ip address: {ip}")
                bits, table, n = 128, nets6, n6
            plen = bits
            if slash:
                if not mask.isdigit() or not mask.isascii() or int(mask) > bits:
                    raise ValueError(f"invalid ip address: {ip}")
                plen = int(mask)
            if plen == bits:
                exact.add(addr if n4 is not None else str(ipaddress.IPv6Address(n)))
            table.setdefault(plen, set()).add(n >> (bits - plen))
        self._exact = frozenset(exact)
        self._nets4 = {k: frozenset(v) for k, v in nets4.items()}
        self._nets6 = {k: frozenset(v) for k, v in nets6.items()}
        self._lens4 = tuple(sorted(self._nets4, reverse=True))
        self._lens6 = tuple(sorted(self._nets6, reverse=True))
        self._only_exact4 = not nets6 and set(self._nets4) <= {32}

    def match(self, ip: Any) -> bool:
        """True when ``ip`` (a string) lies in one of the configured addresses/networks."""
        if ip in self._exact:
            return True
        if not isinstance(ip, str):
            return False
        if self._only_exact4:
            return False  # an IPv4 address has a single textual form, and it missed
        n = _v4_int(ip)
        if n is not None:
            nets = self._nets4
            for plen in self._lens4:  # noqa: SIM110 - a plain loop is faster here
                if (n >> (32 - plen)) in nets[plen]:
                    return True
            return False
        if not self._lens6:
            return False
        n = _v6_int(ip)
        if n is None:
            return False
        nets = self._nets6
        for plen in self._lens6:  # noqa: SIM110
            if (n >> (128 - plen)) in nets[plen]:
                return True
        return False


# ---------------------------------------------------------------------------------------------
# PCRE -> Python re
# ---------------------------------------------------------------------------------------------

_POSIX_CLASSES = {
    "alpha": "a-zA-Z",
    "digit": "0-9",
    "alnum": "a-zA-Z0-9",
    "upper": "A-Z",
    "lower": "a-z",
    "space": r" \t\n\x0b\f\r",
    "blank": r" \t",
    "punct": r"!-/:-@\[-`{-~",
    "xdigit": "0-9A-Fa-f",
    "word": "a-zA-Z0-9_",
    "cntrl": r"\x00-\x1f\x7f",
    "print": r"\x20-\x7e",
    "graph": r"\x21-\x7e",
    "ascii": r"\x00-\x7f",
}
_HSPACE = r"\t \xa0"
_VSPACE = r"\n\x0b\f\r\x85"
_FLAG_GROUP = re.compile(r"\(\?([imsx]*)(?:-([imsx]*))?\)")
_UNSUPPORTED_ESC = "KGXCpPN"


def _lit(cp: int) -> str:
    if cp <= 0xFF:
        return f"\\x{cp:02x}"
    if cp <= 0xFFFF:
        return f"\\u{cp:04x}"
    return f"\\U{cp:08x}"


def _read_braced(p: str, i: int) -> tuple[str, int]:
    """``p[i] == '{'``: return the text up to the matching ``}`` and the index after it."""
    j = p.find("}", i)
    if j < 0:
        raise ValueError(f"missing terminating }} at offset {i}")
    return p[i + 1 : j], j + 1


def _escape(p: str, i: int, in_class: bool) -> tuple[str, int]:
    """Translate the escape at ``p[i] == '\\\\'``; return (python text, next index)."""
    if i + 1 >= len(p):
        raise ValueError("\\ at end of pattern")
    c = p[i + 1]
    j = i + 2
    if c == "Q":
        end = p.find("\\E", j)
        chunk = p[j:] if end < 0 else p[j:end]
        nxt = len(p) if end < 0 else end + 2
        return "".join(_lit(ord(ch)) for ch in chunk), nxt
    if c == "E":
        return "", j
    if c == "x":
        if j < len(p) and p[j] == "{":
            body, j = _read_braced(p, j)
            return _lit(int(body, 16)), j
        k = j
        while k < len(p) and k < j + 2 and p[k] in "0123456789abcdefABCDEF":
            k += 1
        return _lit(int(p[j:k] or "0", 16)), k
    if c == "o" and j < len(p) and p[j] == "{":
        body, j = _read_braced(p, j)
        return _lit(int(body, 8)), j
    if c == "e":
        return r"\x1b", j
    if c == "c":
        if j >= len(p):
            raise ValueError("\\c at end of pattern")
        return _lit(ord(p[j].upper()) ^ 0x40), j + 1
    if c in "hH":
        if in_class:
            if c == "H":
                raise ValueError("\\H inside a character class is not supported")
            return _HSPACE, j
        return ("[%s]" if c == "h" else "[^%s]") % _HSPACE, j
    if c in "vV":
        if in_class:
            if c == "V":
                raise ValueError("\\V inside a character class is not supported")
            return _VSPACE, j
        return ("[%s]" if c == "v" else "[^%s]") % _VSPACE, j
    if in_class:
        if c in _UNSUPPORTED_ESC or c in "zZRk":
            raise ValueError(f"unsupported escape \\{c} in a character class")
        return "\\" + c, j
    if c == "z":
        return r"\Z", j
    if c == "Z":
        return r"(?=\n?\Z)", j
    if c == "R":
        return rf"(?:\r\n|[{_VSPACE}])", j
    if c == "k" and j < len(p) and p[j] in "<'{":
        close = {"<": ">", "'": "'", "{": "}"}[p[j]]
        end = p.find(close, j + 1)
        if end < 0:
            raise ValueError("syntax error in subpattern name (missing terminator)")
        return f"(?P={p[j + 1 : end]})", end + 1
    if c == "g":
        if j < len(p) and p[j] == "{":
            body, j = _read_braced(p, j)
        else:
            k = j
            while k < len(p) and p[k].isdigit():
                k += 1
            body, j = p[j:k], k
        if body.isdigit():
            return f"(?:\\{int(body)})", j
        if body and (body[0].isalpha() or body[0] == "_"):
            return f"(?P={body})", j
        raise ValueError(f"unsupported back-reference \\g{body}")
    if c in _UNSUPPORTED_ESC:
        if c == "N" and not (j < len(p) and p[j] == "{"):
            return r"[^\n]", j
        raise ValueError(f"unsupported escape \\{c}")
    return "\\" + c, j


def _char_class(p: str, i: int) -> tuple[str, int]:
    """Translate the class starting at ``p[i] == '['``."""
    out = ["["]
    j = i + 1
    if j < len(p) and p[j] == "^":
        out.append("^")
        j += 1
    if j < len(p) and p[j] == "]":
        out.append(r"\]")
        j += 1
    while j < len(p):
        c = p[j]
        if c == "]":
            out.append("]")
            return "".join(out), j + 1
        if c == "\\":
            text, j = _escape(p, j, True)
            out.append(text)
            continue
        if c == "[":
            m = re.match(r"\[:(\^?)([a-z]+):\]", p[j:])
            if m:
                if m.group(1) or m.group(2) not in _POSIX_CLASSES:
                    raise ValueError(f"unsupported POSIX class {m.group(0)}")
                out.append(_POSIX_CLASSES[m.group(2)])
                j += len(m.group(0))
                continue
            out.append(r"\[")
        elif c in "&|~":
            out.append("\\" + c)
        else:
            out.append(c)
        j += 1
    raise ValueError("missing terminating ] for character class")


def pcre_to_python(pattern: str) -> str:
    """Rewrite a PCRE pattern into Python ``re`` syntax (see the module docstring for what is
    covered); raises ``ValueError`` for PCRE features Python cannot express."""
    p = pattern
    out: list[str] = []
    # per open group: flags of scoped groups opened by a mid-pattern "(?i)" at that level
    frames: list[list[str]] = [[]]
    at_start = True
    i = 0
    n = len(p)
    while i < n:
        c = p[i]
        if c == "\\":
            text, i = _escape(p, i, False)
            out.append(text)
            at_start = False
            continue
        if c == "[":
            text, i = _char_class(p, i)
            out.append(text)
            at_start = False
            continue
        if c == "(":
            m = _FLAG_GROUP.match(p, i)
            if m:
                if at_start:
                    out.append(m.group(0))
                else:
                    flags = m.group(1) + ("-" + m.group(2) if m.group(2) else "")
                    out.append(f"(?{flags}:")
                    frames[-1].append(flags)
                i = m.end()
                continue
            at_start = False
            if p.startswith("(?#", i):
                end = p.find(")", i)
                if end < 0:
                    raise ValueError("missing ) after comment")
                i = end + 1
                continue
            if p.startswith("(?<", i) and not p.startswith(("(?<=", "(?<!"), i):
                out.append("(?P<")
                i += 3
            elif p.startswith("(?'", i):
                end = p.find("'", i + 3)
                if end < 0:
                    raise ValueError("syntax error in subpattern name (missing terminator)")
                out.append(f"(?P<{p[i + 3 : end]}>")
                i = end + 1
            elif p.startswith(("(?(<", "(?('"), i):
                close = ">" if p[i + 3] == "<" else "'"
                end = p.find(close, i + 4)
                if end < 0 or p[end + 1 : end + 2] != ")":
                    raise ValueError("malformed conditional group")
                out.append(f"(?({p[i + 4 : end]})")
                i = end + 2
            elif p.startswith("(?|", i) or p.startswith("(?R", i) or p.startswith("(*", i):
                raise ValueError(f"unsupported group syntax at offset {i}")
            else:
                out.append("(")
                i += 1
            frames.append([])
            continue
        at_start = False
        if c == ")":
            opened = frames.pop() if len(frames) > 1 else []
            out.append(")" * len(opened) + ")")
            i += 1
            continue
        if c == "|" and frames[-1]:
            opened = frames[-1]
            out.append(")" * len(opened) + "|" + "".join(f"(?{f}:" for f in opened))
            i += 1
            continue
        if c == "{" and i + 1 < n and p[i + 1] == ",":
            out.append(r"\{")
            i += 1
            continue
        out.append(c)
        i += 1
    out.append(")" * len(frames[0]))
    return "".join(out)


def compile_pcre(pattern: str, *, ignore_case: bool = False) -> re.Pattern[str]:
    """Compile a PCRE pattern (as ngx.re with options ``jo``/``joi``) into a Python regex.
    Raises ``ValueError`` with the reason when it is invalid or untranslatable."""
    flags = re.ASCII | (re.IGNORECASE if ignore_case else 0)
    try:
        return re.compile(pcre_to_python(pattern), flags)
    except re.error as exc:
        raise ValueError(str(exc)) from None


# ---------------------------------------------------------------------------------------------
# Compilation
# ---------------------------------------------------------------------------------------------

_LOGIC_OPS = frozenset({"AND", "OR", "!AND", "!OR"})
_COMPARE_OPS = frozenset({"==", "~=", ">", ">=", "<", "<=", "~~", "~*", "in", "has", "ipmatch"})
_NUM_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}
_MISSING = object()


def _always(result: bool) -> Predicate:
    def pred(_v: Any) -> bool:
        return result

    return pred


def _lv_test(op: str, rv: Any, has_rv: bool) -> Callable[[Any], bool]:
    """The comparison of one left value against the (compiled) right value."""
    if op == "==" or op == "~=":
        eq = op == "=="
        k = _kind(rv)
        if k == 2:
            rn = lua_tonumber(rv)

            def num_eq(lv: Any) -> bool:
                x = lua_tonumber(lv)
                if x is None:
                    return not eq
                return (x == rn) is eq

            return num_eq
        if k == 3:
            if eq:
                return lambda lv: rv == lv
            return lambda lv: rv != lv
        if eq:
            return lambda lv: lv is rv
        return lambda lv: lv is not rv
    if op in _NUM_OPS:
        rn = lua_tonumber(rv)
        if rn is None:
            return _always(False)
        cmp = _NUM_OPS[op]

        def num_cmp(lv: Any) -> bool:
            x = lua_tonumber(lv)
            return x is not None and cmp(x, rn)

        return num_cmp
    if op == "~~" or op == "~*":
        if isinstance(rv, bool) or not isinstance(rv, str | int | float):
            raise ExprError(f"invalid regex: {lua_tostring(rv)}")
        source = lua_tostring(rv)
        try:
            search = compile_pcre(source, ignore_case=op == "~*").search
        except ValueError as exc:
            raise ExprError(f"failed to compile regex '{source}': {exc}") from None

        def re_test(lv: Any) -> bool:
            if isinstance(lv, str):
                return search(lv) is not None
            if isinstance(lv, int | float) and not isinstance(lv, bool):
                return search(lua_tostring(lv)) is not None
            return False

        return re_test
    if op == "in":
        if not isinstance(rv, list | tuple):
            return _always(False)
        items = tuple(rv)
        if all(isinstance(x, str) for x in items):
            strs = frozenset(items)
            return lambda lv: isinstance(lv, str) and lv in strs

        def in_test(lv: Any) -> bool:
            if lv is None:
                return False
            return any(_lua_eq(x, lv) for x in items)

        return in_test
    if op == "has":
        if rv is None:
            return _always(False)

        def has_test(lv: Any) -> bool:
            if not isinstance(lv, list | tuple):
                return False
            return any(_lua_eq(x, rv) for x in lv)

        return has_test
    if op == "ipmatch":
        ips = rv if isinstance(rv, list | tuple) else [rv]
        if not has_rv or rv is None or rv == "" or not ips or isinstance(rv, dict):
            raise ExprError("invalid ip address")
        try:
            matcher = IpMatcher(ips)
        except ValueError as exc:
            raise ExprError(str(exc)) from None
        return matcher.match
    raise ExprError(f"invalid operator '{op}'")  # pragma: no cover - guarded by the caller


def _op_name(op: Any) -> str:
    if isinstance(op, str):
        return _ascii_lower(op)
    if isinstance(op, int | float) and not isinstance(op, bool):
        return _ascii_lower(lua_tostring(op))
    raise ExprError("invalid expression")


def _compile_leaf(rule: list[Any] | tuple[Any, ...]) -> Predicate:
    negate = False
    if len(rule) == 4:
        if rule[1] != "!":
            raise ExprError("bad 'not' expression")
        negate = True
        name, op_raw, rv = rule[0], rule[2], rule[3]
    else:
        name = rule[0]
        op_raw = rule[1] if len(rule) > 1 else _MISSING
        rv = rule[2] if len(rule) > 2 else _MISSING
    op = None if op_raw is _MISSING else _op_name(op_raw)
    if rv is _MISSING and op not in _COMPARE_OPS:
        if op is None:
            raise ExprError("invalid expression")
        rv, op = op, "=="  # legacy [var, value]
    assert op is not None
    if op not in _COMPARE_OPS:
        raise ExprError(f"invalid operator '{op}'")
    has_rv = rv is not _MISSING
    test = _lv_test(op, None if rv is _MISSING else rv, has_rv)
    if not isinstance(name, str):
        # lua-resty-expr would index the variable table with a non-string key: always nil
        const = test(None) is not negate
        return _always(const)
    if negate:

        def neg_leaf(v: Any) -> bool:
            return not test(v.get(name))

        return neg_leaf

    def leaf(v: Any) -> bool:
        return test(v.get(name))

    return leaf


def _combine(logic: str, preds: list[Predicate]) -> Predicate:
    if logic in ("AND", "!AND"):
        if len(preds) == 1:
            base = preds[0]
        elif len(preds) == 2:
            a, b = preds

            def base(v: Any) -> bool:
                return a(v) and b(v)
        else:
            group = tuple(preds)

            def base(v: Any) -> bool:
                for p in group:  # noqa: SIM110 - no generator on the request path
                    if not p(v):
                        return False
                return True
    else:
        if len(preds) == 2:
            a, b = preds

            def base(v: Any) -> bool:
                return a(v) or b(v)
        else:
            group = tuple(preds)

            def base(v: Any) -> bool:
                for p in group:  # noqa: SIM110
                    if p(v):
                        return True
                return False

    if logic[0] != "!":
        return base

    def negated(v: Any) -> bool:
        return not base(v)

    return negated


def _compile(rule: Any) -> Predicate:
    if isinstance(rule, dict):
        raise ExprError("rule too short")
    if not isinstance(rule, list | tuple):
        raise ExprError("invalid expression")
    if not rule:
        raise ExprError("rule too short")
    first = rule[0]
    if isinstance(first, list | tuple | dict):
        return _combine("AND", [_compile(r) for r in rule])
    if isinstance(first, str) and first.upper() in _LOGIC_OPS:
        if len(rule) <= 2:
            raise ExprError("rule too short")
        return _combine(first.upper(), [_compile(r) for r in rule[1:]])
    if first is None or isinstance(first, bool):
        raise ExprError("invalid expression")
    return _compile_leaf(rule)


def compile_expr(rule: Any) -> Callable[[Any], bool]:
    """Compile a lua-resty-expr rule into ``pred(vars) -> bool``.

    Raises ``ExprError``: ``missing argument rule`` (``None``), ``rule should be wrapped inside
    brackets`` (a bare ``["arg_k", "==", "v"]``), ``rule too short`` (empty group or logical
    group with fewer than two operands), ``invalid expression``, ``bad 'not' expression``,
    ``invalid operator '<op>'``, ``invalid ip address[: <ip>]``, ``failed to compile regex ...``.
    """
    if rule is None:
        raise ExprError("missing argument rule")
    if isinstance(rule, dict) and not rule:
        return _always(True)
    if not isinstance(rule, list | tuple):
        raise ExprError("rule should be an array")
    if not rule:
        return _always(True)
    first = rule[0]
    if not isinstance(first, list | tuple | dict) and not (
        isinstance(first, str) and first.upper() in _LOGIC_OPS
    ):
        raise ExprError("rule should be wrapped inside brackets")
    return _compile(rule)
