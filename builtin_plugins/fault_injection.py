"""fault-injection (APISIX priority 11000, rewrite): delay and/or abort matching requests.

``delay`` sleeps ``duration`` seconds (without blocking the event loop); ``abort`` answers with
``http_status``, ``body`` and ``headers`` (both ``$var`` templates) instead of proxying. Each
applies when its ``percentage`` sample hits (absent = always) and one of its ``vars`` rules
matches (rules are OR-ed; each rule is a vars expression, AND inside; absent = match).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from plugin_sdk import ConfCache, ExprError, Response, compile_expr, compile_template, hookimpl

name = "fault-injection"
version = "0.1"
priority = 11000

_vars_schema: dict[str, Any] = {
    "type": "array",
    "maxItems": 20,
    "items": {"type": "array"},
}
_percentage: dict[str, Any] = {"type": "integer", "minimum": 0, "maximum": 100}

schema: dict[str, Any] = {
    "type": "object",
    "properties": {
        "abort": {
            "type": "object",
            "properties": {
                "http_status": {"type": "integer", "minimum": 200},
                "body": {"type": "string", "minLength": 0},
                "headers": {
                    "type": "object",
                    "minProperties": 1,
                    "patternProperties": {
                        "^[^:]+$": {"oneOf": [{"type": "string"}, {"type": "number"}]},
                    },
                },
                "percentage": _percentage,
                "vars": _vars_schema,
            },
            "required": ["http_status"],
        },
        "delay": {
            "type": "object",
            "properties": {
                "duration": {"type": "number", "minimum": 0},
                "percentage": _percentage,
                "vars": _vars_schema,
            },
            "required": ["duration"],
        },
    },
    "minProperties": 1,
}

Template = Callable[[Any], str]
Match = Callable[[Any], bool]


def _compile_rules(rules: list[Any] | None) -> tuple[Match, ...] | None:
    if rules is None:
        return None
    return tuple(compile_expr(rule) for rule in rules)


def check_schema(conf: dict[str, Any]) -> str | None:
    """The JSON schema is checked by the kernel; here every ``vars`` rule must compile."""
    for part in ("abort", "delay"):
        section = conf.get(part)
        if section and section.get("vars") is not None:
            try:
                _compile_rules(section["vars"])
            except ExprError as exc:
                return str(exc)
    return None


def _number_text(value: Any) -> str:
    # Lua's tostring for JSON numbers: 3 -> "3", 3.0 -> "3", 2.5 -> "2.5".
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@dataclass(frozen=True, slots=True)
class _Abort:
    status: int
    body: Template | None
    headers: tuple[tuple[str, Template], ...]
    percentage: int | None
    rules: tuple[Match, ...] | None


@dataclass(frozen=True, slots=True)
class _Delay:
    duration: float
    percentage: int | None
    rules: tuple[Match, ...] | None


@dataclass(frozen=True, slots=True)
class _Compiled:
    abort: _Abort | None
    delay: _Delay | None


def _compile(conf: dict[str, Any]) -> _Compiled:
    abort = delay = None
    a = conf.get("abort")
    if a:
        body = a.get("body")
        abort = _Abort(
            status=a["http_status"],
            body=compile_template(body) if body is not None else None,
            headers=tuple(
                (hname, compile_template(v if isinstance(v, str) else _number_text(v)))
                for hname, v in (a.get("headers") or {}).items()
            ),
            percentage=a.get("percentage"),
            rules=_compile_rules(a.get("vars")),
        )
    d = conf.get("delay")
    if d:
        delay = _Delay(
            duration=float(d["duration"]),
            percentage=d.get("percentage"),
            rules=_compile_rules(d.get("vars")),
        )
    return _Compiled(abort, delay)


_sleep = asyncio.sleep  # a module attribute, so tests can replace it without touching asyncio

# Compiled templates/expressions per conf object: built on a conf's first request, dropped with
# the conf (see plugin_sdk.ConfCache).
_compiled: ConfCache[_Compiled] = ConfCache(_compile)


def _sample_hit(percentage: int | None) -> bool:
    return percentage is None or random.randint(1, 100) <= percentage


def _rules_match(rules: tuple[Match, ...] | None, var: Any) -> bool:
    if rules is None:
        return True
    # OR over the rules; an empty list matches nothing (as APISIX's loop leaves its result nil).
    return any(rule(var) for rule in rules)


@hookimpl
async def rewrite(ctx: Any, conf: dict[str, Any]) -> Response | None:
    c = _compiled(conf)
    var = ctx.var
    abort, delay = c.abort, c.delay
    # Both rule sets are evaluated before the delay, as APISIX does.
    abort_match = abort is not None and _rules_match(abort.rules, var)
    if delay is not None and _rules_match(delay.rules, var) and _sample_hit(delay.percentage):
        await _sleep(delay.duration)
    if abort is not None and abort_match and _sample_hit(abort.percentage):
        headers: dict[str, str] = {}
        for hname, tpl in abort.headers:
            value = tpl(var)
            if value != "":
                headers[hname] = value
        body = abort.body(var) if abort.body is not None else None
        return Response(abort.status, body, headers)
    return None
