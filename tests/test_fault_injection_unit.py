"""fault-injection: schema messages and the rewrite logic, on the kernel's request context
(built by the plugin test kit, ``plugin_sdk.testing.make_context``)."""

from __future__ import annotations

from typing import Any

import pytest

import builtin_plugins.fault_injection as fi
from kernel.chain import compile_chain, run_request_phase
from kernel.plugins.manager import PluginInfo, PluginRegistry, check_conf
from plugin_sdk import Response
from plugin_sdk.testing import make_context


def Ctx(**var: Any) -> Any:
    """The kernel's real request context (plugin_sdk.testing.make_context) with ``var``
    preset as plugin-set variables."""
    ctx = make_context("GET", "/hello")
    for name, value in var.items():
        ctx.var[name] = value
    return ctx


@pytest.fixture(scope="module")
def info() -> PluginInfo:
    registry = PluginRegistry([fi])
    found = registry.get("fault-injection")
    assert found is not None
    return found


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(fi, "_sleep", fake_sleep)
    return slept


def dice(monkeypatch: pytest.MonkeyPatch, *rolls: int) -> list[tuple[int, int]]:
    """Make random.randint return ``rolls`` in order; returns the recorded calls."""
    calls: list[tuple[int, int]] = []
    it = iter(rolls)

    def randint(a: int, b: int) -> int:
        calls.append((a, b))
        return next(it)

    monkeypatch.setattr(fi.random, "randint", randint)
    return calls


async def run(conf: dict[str, Any], ctx: Any = None) -> Response | None:
    return await fi.rewrite(ctx or Ctx(), conf)


# -- schema ----------------------------------------------------------------------------------------


def test_module_contract(info: PluginInfo) -> None:
    assert (fi.name, fi.priority) == ("fault-injection", 11000)
    assert list(info.phases) == ["rewrite"] and info.phases["rewrite"][1] is True


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({}, "expect object to have at least 1 properties"),
        ({"abort": {}}, 'property "abort" validation failed: property "http_status" is required'),
        (
            {"abort": {"http_status": 100}},
            'property "abort" validation failed: property "http_status" validation failed: '
            "expected 100 to be at least 200",
        ),
        (
            {"abort": {"http_status": 200.5}},
            'property "abort" validation failed: property "http_status" validation failed: '
            "wrong type: expected integer, got number",
        ),
        (
            {"abort": {"http_status": 200, "percentage": 101}},
            'property "abort" validation failed: property "percentage" validation failed: '
            "expected 101 to be at most 100",
        ),
        (
            {"abort": {"http_status": 200, "body": 1}},
            'property "abort" validation failed: property "body" validation failed: '
            "wrong type: expected string, got number",
        ),
        (
            {"abort": {"http_status": 200, "headers": {}}},
            'property "abort" validation failed: property "headers" validation failed: '
            "expect object to have at least 1 properties",
        ),
        (
            {"abort": {"http_status": 200, "headers": {"X-A": {"nested": 1}}}},
            'property "abort" validation failed: property "headers" validation failed: '
            'failed to validate X-A (matching "^[^:]+$"): value should match only one schema, '
            "but matches none",
        ),
        (
            {"abort": {"http_status": 200, "vars": [[["arg_a", "==", "1"]]] * 21}},
            'property "abort" validation failed: property "vars" validation failed: '
            "expect array to have at most 20 items",
        ),
        (
            {"abort": {"http_status": 200, "vars": ["arg_a"]}},
            'property "abort" validation failed: property "vars" validation failed: '
            "failed to validate item 1: wrong type: expected array, got string",
        ),
        ({"delay": {}}, 'property "delay" validation failed: property "duration" is required'),
        (
            {"delay": {"duration": -1}},
            'property "delay" validation failed: property "duration" validation failed: '
            "expected -1 to be at least 0",
        ),
        # every vars rule is compiled when the conf is checked
        ({"abort": {"http_status": 403, "vars": [[["arg_a", "=", "1"]]]}}, "invalid operator '='"),
        (
            {"delay": {"duration": 1, "vars": [["arg_a", "==", "1"]]}},
            "rule should be wrapped inside brackets",
        ),
    ],
)
def test_schema_errors(info: PluginInfo, conf: dict[str, Any], message: str) -> None:
    assert check_conf(info, conf) == message


@pytest.mark.parametrize(
    "conf",
    [
        {"abort": {"http_status": 200, "body": "Fault Injection!\n"}},
        {"abort": {"http_status": 200, "body": ""}},
        {"abort": {"http_status": 503, "headers": {"X-Id": 1, "X-Who": "$remote_addr"}}},
        {"delay": {"duration": 0.5, "percentage": 0}},
        {"delay": {"duration": 0}, "abort": {"http_status": 599, "percentage": 100}},
        {
            "abort": {
                "http_status": 403,
                "vars": [[["arg_name", "==", "jack"], ["arg_age", "!", "<", 18]],
                         [["http_x", "==", "1"]]],
            }
        },
    ],
)
def test_valid_confs(info: PluginInfo, conf: dict[str, Any]) -> None:
    assert check_conf(info, conf) is None


# -- abort -----------------------------------------------------------------------------------------


async def test_abort_with_body() -> None:
    res = await run({"abort": {"http_status": 200, "body": "Fault Injection!\n"}})
    assert res == Response(200, "Fault Injection!\n", {})


async def test_abort_without_body_uses_the_default_page() -> None:
    res = await run({"abort": {"http_status": 503}})
    assert res is not None and res.status == 503 and res.body is None


async def test_abort_body_and_headers_resolve_variables() -> None:
    conf = {
        "abort": {
            "http_status": 418,
            "body": "client addr: $remote_addr, ${arg_who ?? nobody}\n",
            "headers": {"X-Client": "$remote_addr", "X-Count": 3, "X-Float": 2.5,
                        "X-Unset": "$arg_missing", "X-Lit": "a\\$b"},
        }
    }
    res = await run(conf, Ctx(remote_addr="10.0.0.1"))
    assert res is not None
    assert res.status == 418
    assert res.body == "client addr: 10.0.0.1, nobody\n"
    # An empty resolved value means no header (ngx.header[k] = "" clears it).
    assert res.headers == {"X-Client": "10.0.0.1", "X-Count": "3", "X-Float": "2.5",
                           "X-Lit": "a\\$b"}


async def test_abort_vars_are_ored() -> None:
    conf = {
        "abort": {
            "http_status": 403,
            "vars": [
                [["arg_name", "==", "jack"], ["arg_age", ">", 18]],  # AND inside one rule
                [["http_x_fault", "==", "yes"]],
            ],
        }
    }
    assert await run(conf, Ctx(arg_name="jack", arg_age="19")) is not None
    assert await run(conf, Ctx(arg_name="jack", arg_age="17")) is None
    assert await run(conf, Ctx(http_x_fault="yes")) is not None
    assert await run(conf, Ctx()) is None


async def test_empty_vars_list_never_matches() -> None:
    assert await run({"abort": {"http_status": 403, "vars": []}}) is None


async def test_abort_percentage(monkeypatch: pytest.MonkeyPatch) -> None:
    conf = {"abort": {"http_status": 500, "percentage": 50}}
    calls = dice(monkeypatch, 50, 51)
    assert await run(conf) is not None
    assert await run(conf) is None
    assert calls == [(1, 100), (1, 100)]
    dice(monkeypatch, 1)
    assert await run({"abort": {"http_status": 500, "percentage": 0}}) is None


# -- delay -----------------------------------------------------------------------------------------


async def test_delay_then_continue(sleeps: list[float]) -> None:
    assert await run({"delay": {"duration": 1.5}}) is None
    assert sleeps == [1.5]


async def test_delay_is_applied_before_abort(sleeps: list[float]) -> None:
    res = await run({"delay": {"duration": 2}, "abort": {"http_status": 200, "body": "x"}})
    assert sleeps == [2.0]
    assert res is not None and res.status == 200


async def test_delay_vars_and_percentage(
    sleeps: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = {"delay": {"duration": 1, "vars": [[["arg_slow", "==", "1"]]], "percentage": 30}}
    calls = dice(monkeypatch, 30, 31)
    await run(conf, Ctx(arg_slow="1"))  # rules match, 30 <= 30: delayed
    await run(conf, Ctx())  # rules miss: no delay (and no roll)
    await run(conf, Ctx(arg_slow="1"))  # rules match, 31 > 30: not delayed
    assert sleeps == [1.0]
    assert len(calls) == 2


async def test_abort_vars_are_evaluated_before_the_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = Ctx(arg_go="1")

    async def sleep_and_change(seconds: float) -> None:
        ctx.var["arg_go"] = None

    monkeypatch.setattr(fi, "_sleep", sleep_and_change)
    conf = {
        "delay": {"duration": 1},
        "abort": {"http_status": 403, "vars": [[["arg_go", "==", "1"]]]},
    }
    assert await run(conf, ctx) is not None


# -- compiled state --------------------------------------------------------------------------------


async def test_compiled_once_per_conf_object(monkeypatch: pytest.MonkeyPatch) -> None:
    builds: list[int] = []
    original = fi._compiled._build

    def counting(conf: Any) -> Any:
        builds.append(id(conf))
        return original(conf)

    monkeypatch.setattr(fi._compiled, "_build", counting)
    fi._compiled.clear()
    conf = {"abort": {"http_status": 403, "body": "$uri"}}
    for _ in range(3):
        await run(conf, Ctx(uri="/a"))
    assert builds == [id(conf)]
    equal_but_new = {"abort": {"http_status": 403, "body": "$uri"}}
    await run(equal_but_new, Ctx(uri="/a"))
    assert len(builds) == 2, "identity, not equality, selects the cache entry"


async def test_through_a_compiled_chain() -> None:
    registry = PluginRegistry([fi])
    chain, errors = compile_chain(
        {"fault-injection": {"abort": {"http_status": 403, "body": "no\n"},
                             "_meta": {"error_response": {"message": "custom"}}}},
        registry,
    )
    assert errors == []
    step = chain.rewrite[0]
    assert step.is_async and step.priority == 11000
    res = await run_request_phase(chain.rewrite, Ctx())
    assert res is not None and res.status == 403 and res.body == {"message": "custom"}
