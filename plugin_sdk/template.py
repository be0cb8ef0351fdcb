"""``$var`` templates as APISIX resolves them (``core.utils.resolve_var``), compiled once.

Used by proxy-rewrite ``uri``/headers, response-rewrite headers, fault-injection, redirect
``uri``, limit-* keys, ... Syntax:

* ``$name`` — ``name`` is ASCII letters, digits, ``_`` and ``.``; ``${name}`` — any text up to
  ``}`` (surrounding blanks trimmed); ``${name ?? default}`` — ``default`` when unset.
* An unset variable (``None``) without default becomes the empty string; other values are
  rendered with Lua ``tostring`` (numbers ``%.14g``, booleans ``true``/``false``).
* A ``$`` right after a backslash is not substituted, and the backslash stays in the output
  (``\\$uri`` renders as ``\\$uri``, as in APISIX). A ``$`` not followed by a name is literal
  (``/foo$$uri`` → ``/foo$/hello``).

Regex templates: :func:`compile_capture_template` (proxy-rewrite headers: ``$1``/``${1}`` from
the regex match, then ``$var``) and :func:`compile_sub_template` (the ``ngx.re.sub``
replacement syntax of ``regex_uri``: ``$0``..``$N``, ``${N}``, ``$$``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from plugin_sdk.expr import lua_tostring

__all__ = [
    "compile_capture_template",
    "compile_sub_template",
    "compile_template",
    "compile_template_n",
]

Escaper = Callable[[str], str]

_VAR = re.compile(r"(?<!\\)\$(?:\{\s*([^}]+?)\s*\}|([\w.]+))", re.ASCII)
_DEFAULT_SEP = re.compile(r"\s*\?\?\s*", re.ASCII)
_CAPTURE = re.compile(r"(?<!\\)\$\{?(\d+)\}?", re.ASCII)

# one substitution: (variable name, default or None, literal text that follows)
_Part = tuple[str, str | None, str]


def _parse(tpl: str) -> tuple[str, tuple[_Part, ...]]:
    head = ""
    parts: list[_Part] = []
    pos = 0
    for m in _VAR.finditer(tpl):
        lit = tpl[pos : m.start()]
        if parts:
            name, default, prev = parts[-1]
            parts[-1] = (name, default, prev + lit)
        else:
            head = lit
        braced = m.group(1)
        if braced is not None:
            segs = _DEFAULT_SEP.split(braced)
            parts.append((segs[0], segs[1] if len(segs) > 1 else None, ""))
        else:
            parts.append((m.group(2), None, ""))
        pos = m.end()
    tail = tpl[pos:]
    if parts:
        name, default, prev = parts[-1]
        parts[-1] = (name, default, prev + tail)
    else:
        head = tail
    return head, tuple(parts)


def _str(value: Any) -> str:
    return value if type(value) is str else lua_tostring(value)


def compile_template_n(
    tpl: str, escaper: Escaper | None = None
) -> Callable[[Any], tuple[str, int]]:
    """Like :func:`compile_template`, but the function also returns how many variables were
    resolved (set, or replaced by a ``??`` default) — APISIX's ``n_resolved``, e.g. limit-count
    falls back to ``remote_addr`` when a ``$var`` key resolves none."""
    head, parts = _parse(tpl)
    if not parts:
        return lambda _v: (head, 0)

    def render(v: Any) -> tuple[str, int]:
        out = [head]
        n = 0
        for name, default, lit in parts:
            x = v.get(name)
            if x is None:
                if default is None:
                    out.append(lit)
                    continue
                x = default
            n += 1
            s = x if type(x) is str else lua_tostring(x)
            out.append(escaper(s) if escaper is not None else s)
            out.append(lit)
        return "".join(out), n

    return render


def compile_template(tpl: str, escaper: Escaper | None = None) -> Callable[[Any], str]:
    """Compile a ``$var`` template into ``render(vars) -> str``.

    ``vars`` is anything with ``.get(name)`` (``ctx.var``, a dict). ``escaper``, when given, is
    applied to each substituted value (defaults included), never to the literal text. A string
    without ``$`` yields a function returning it unchanged.
    """
    if "$" not in tpl:
        return lambda _v: tpl
    head, parts = _parse(tpl)
    if not parts:
        return lambda _v: tpl
    if escaper is not None:
        counted = compile_template_n(tpl, escaper)
        return lambda v: counted(v)[0]
    if len(parts) == 1:
        name, default, tail = parts[0]
        fallback = default if default is not None else ""

        def render_one(v: Any) -> str:
            x = v.get(name)
            if x is None:
                return head + fallback + tail
            return head + (x if type(x) is str else lua_tostring(x)) + tail

        return render_one

    def render(v: Any) -> str:
        out = [head]
        for name, default, lit in parts:
            x = v.get(name)
            if x is None:
                if default is not None:
                    out.append(default)
            else:
                out.append(x if type(x) is str else lua_tostring(x))
            out.append(lit)
        return "".join(out)

    return render


def _resolve_dynamic(s: str, v: Any) -> str:
    """``resolve_var`` on a string only known at request time."""
    if "$" not in s:
        return s

    def repl(m: re.Match[str]) -> str:
        braced = m.group(1)
        if braced is not None:
            segs = _DEFAULT_SEP.split(braced)
            x = v.get(segs[0])
            if x is None:
                return segs[1] if len(segs) > 1 else ""
        else:
            x = v.get(m.group(2))
            if x is None:
                return ""
        return _str(x)

    return _VAR.sub(repl, s)


def _group(m: re.Match[str] | None, idx: int) -> str:
    if m is None:
        return ""
    try:
        g = m.group(idx)
    except IndexError:
        return ""
    return g if g is not None else ""


def compile_capture_template(tpl: str) -> Callable[[re.Match[str] | None, Any], str]:
    """Compile a template with regex captures, as proxy-rewrite resolves header values:
    ``render(match, vars) -> str``.

    First ``$N`` / ``${N}`` become group ``N`` of ``match`` (``$0`` the whole match; a missing or
    non-participating group, or ``match=None``, gives ``""``; braces are each optional, as in
    APISIX), then the result goes through ``$var`` resolution like :func:`compile_template`
    (so captured text containing ``$name`` is resolved too, as in APISIX).
    """
    if "$" not in tpl:
        return lambda _m, _v: tpl
    pieces: list[str | int] = []
    pos = 0
    for m in _CAPTURE.finditer(tpl):
        pieces.append(tpl[pos : m.start()])
        pieces.append(int(m.group(1)))
        pos = m.end()
    if not pieces:
        render_vars = compile_template(tpl)
        return lambda _m, v: render_vars(v)
    pieces.append(tpl[pos:])
    frozen = tuple(pieces)

    def render(match: re.Match[str] | None, v: Any) -> str:
        out = [p if isinstance(p, str) else _group(match, p) for p in frozen]
        return _resolve_dynamic("".join(out), v)

    return render


def compile_sub_template(tpl: str) -> Callable[[re.Match[str]], str]:
    """Compile an ``ngx.re.sub`` replacement (redirect/proxy-rewrite ``regex_uri``):
    ``render(match) -> str``.

    ``$0`` is the whole match, ``$1``.. ``$N`` or ``${N}`` the groups (missing or
    non-participating → ``""``), ``$$`` a literal ``$``. Any other ``$`` raises ``ValueError``
    with nginx's message (``invalid capturing variable name found in "<tpl>"``, ``the closing
    bracket in "<tpl>" variable is missing``).
    """
    pieces: list[str | int] = []
    lit: list[str] = []
    i = 0
    n = len(tpl)
    while i < n:
        c = tpl[i]
        if c != "$":
            lit.append(c)
            i += 1
            continue
        nxt = tpl[i + 1 : i + 2]
        if nxt == "$":
            lit.append("$")
            i += 2
            continue
        braced = nxt == "{"
        j = i + 2 if braced else i + 1
        k = j
        while k < n and tpl[k].isascii() and tpl[k].isdigit():
            k += 1
        if k == j:
            raise ValueError(f'invalid capturing variable name found in "{tpl}"')
        if braced:
            if k >= n or tpl[k] != "}":
                raise ValueError(f'the closing bracket in "{tpl}" variable is missing')
            end = k + 1
        else:
            end = k
        pieces.append("".join(lit))
        lit.clear()
        pieces.append(int(tpl[j:k]))
        i = end
    pieces.append("".join(lit))
    if len(pieces) == 1:
        const = pieces[0]
        assert isinstance(const, str)
        return lambda _m: const
    frozen = tuple(pieces)

    def render(match: re.Match[str]) -> str:
        return "".join(p if isinstance(p, str) else _group(match, p) for p in frozen)

    return render
