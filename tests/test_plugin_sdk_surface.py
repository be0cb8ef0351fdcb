"""The public plugin SDK is stable: its surface is pinned here, and it never imports the kernel.

Changing anything pinned below is an SDK change: bump ``plugin_sdk.__version__`` (minor for
additions, major for removals or signature changes) and update docs/plugin-development.md.
"""

from __future__ import annotations

import inspect
import re
import subprocess
import sys

import plugin_sdk
import plugin_sdk.hooks as hooks
import plugin_sdk.testing as testing
from tests.support.gateway import REPO

PUBLIC = [
    "ConfCache",
    "Consumer",
    "Consumers",
    "Context",
    "ExprError",
    "Headers",
    "PHASES",
    "PluginError",
    "Request",
    "Response",
    "ResponseView",
    "SchemaError",
    "SharedCounters",
    "SharedDict",
    "UpstreamRequest",
    "Vars",
    "__version__",
    "check_upstream",
    "compile_capture_template",
    "compile_expr",
    "compile_template",
    "hookimpl",
    "hookspec",
    "http_client",
    "plugin_metadata",
    "shared_counters",
    "shared_dict",
    "ssl_listen_ports",
]

TESTING_PUBLIC = [
    "ConfigRejected",
    "GatewayHarness",
    "HttpResult",
    "MockUpstream",
    "ReceivedRequest",
    "ReloadResult",
    "make_context",
    "run_phase",
    "run_phase_async",
]

PHASES = ("rewrite", "access", "before_proxy", "header_filter", "body_filter", "log")


def test_version_is_semver() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+", plugin_sdk.__version__)
    # 0.2.0 added plugin_data, plugin_name, plugin_metadata, the bound ctx.log, shared_dict,
    # SharedDict and http_client (additions only: a minor bump). 0.3.0 added Consumer,
    # Consumers, ctx.consumers and ctx.attach_consumer (ctx.consumer became a Consumer) and
    # ssl_listen_ports, plugin_metadata, Request.start_time, ctx.set_client_address and the
    # node-wide shared_counters / SharedCounters, ctx.upstream.set_upstream / has_upstream and
    # check_upstream.
    # 0.4.0 added ctx.set_response_header.
    assert plugin_sdk.__version__ == "0.4.0"


def test_public_names_are_pinned() -> None:
    assert sorted(plugin_sdk.__all__) == PUBLIC
    for name in PUBLIC:
        assert hasattr(plugin_sdk, name), name
    assert sorted(testing.__all__) == TESTING_PUBLIC
    for name in TESTING_PUBLIC:
        assert hasattr(testing, name), name


def test_hook_specs_are_pinned_and_documented() -> None:
    assert hooks.PHASES == PHASES
    assert plugin_sdk.PHASES == PHASES
    assert frozenset({"rewrite", "access", "before_proxy"}) == hooks.SHORT_CIRCUIT_PHASES
    specs = {
        name for name, obj in vars(hooks).items()
        if inspect.isfunction(obj) and hasattr(obj, "sixgate_spec")
    }
    assert specs == set(PHASES)
    for phase in PHASES:
        func = getattr(hooks, phase)
        assert str(inspect.signature(func)) == "(ctx: 'Any', conf: 'Any') -> 'Any'", phase
        doc = inspect.getdoc(func) or ""
        assert doc.startswith("Runs "), f"{phase}: the docstring must say when it runs"
        assert "May " in doc or "Must not" in doc, f"{phase}: say what it may change"


def test_response_and_context_shapes() -> None:
    params = list(inspect.signature(plugin_sdk.Response).parameters)
    assert params == ["status", "body", "headers"]
    for attr in ("var", "request", "upstream", "response", "route", "service", "consumer",
                 "shared", "log"):
        assert attr in plugin_sdk.Context.__annotations__, attr
    for attr in ("plugin_name", "plugin_data", "plugin_metadata", "consumers"):
        assert attr in plugin_sdk.Context.__annotations__, attr
    assert list(inspect.signature(plugin_sdk.Context.attach_consumer).parameters) == [
        "self", "consumer"]
    assert list(inspect.signature(plugin_sdk.Context.set_client_address).parameters) == [
        "self", "ip", "port"]
    assert list(inspect.signature(plugin_sdk.Context.set_response_header).parameters) == [
        "self", "name", "value"]
    assert [f for f in plugin_sdk.Consumer.__dataclass_fields__] == [
        "username", "plugins", "group_id", "labels", "desc", "credential_id"]
    assert list(inspect.signature(plugin_sdk.Consumers.find).parameters) == [
        "self", "plugin", "field", "value"]
    assert list(inspect.signature(plugin_sdk.Consumers.get).parameters) == ["self", "username"]
    for meth in ("get", "set", "add", "incr", "delete", "ttl", "keys", "clear"):
        assert callable(getattr(plugin_sdk.SharedDict, meth)), meth
    assert list(inspect.signature(plugin_sdk.SharedDict.incr).parameters) == [
        "self", "key", "delta", "init", "ttl"]
    assert list(inspect.signature(plugin_sdk.shared_dict).parameters) == ["name"]
    assert list(inspect.signature(plugin_sdk.http_client).parameters) == []
    assert list(inspect.signature(plugin_sdk.shared_counters).parameters) == ["name"]
    for meth in ("add", "capacity", "clear", "delete", "get", "incr", "incr_ttl", "set", "ttl",
                 "update"):
        assert hasattr(plugin_sdk.SharedCounters, meth), meth
    assert list(inspect.signature(plugin_sdk.SharedCounters.incr).parameters) == [
        "self", "key", "delta", "init", "ttl"]
    assert list(inspect.signature(plugin_sdk.SharedCounters.update).parameters) == [
        "self", "key", "fn", "args", "ttl"]
    for attr in ("method", "path", "raw_uri", "query_string", "headers", "client_ip",
                 "start_time"):
        assert attr in plugin_sdk.Request.__annotations__, attr
    assert callable(plugin_sdk.Request.body)
    for meth in ("set_header", "add_header", "remove_header"):
        assert callable(getattr(plugin_sdk.UpstreamRequest, meth))
    assert list(inspect.signature(plugin_sdk.UpstreamRequest.set_upstream).parameters) == [
        "self", "upstream_id", "conf"]
    assert list(inspect.signature(plugin_sdk.UpstreamRequest.has_upstream).parameters) == [
        "self", "upstream_id"]


def test_sdk_never_imports_the_kernel() -> None:
    code = (
        "import pkgutil, importlib, sys, plugin_sdk\n"
        "for m in pkgutil.iter_modules(plugin_sdk.__path__):\n"
        "    importlib.import_module('plugin_sdk.' + m.name)\n"
        "bad = sorted(n for n in sys.modules if n == 'kernel' or n.startswith('kernel.'))\n"
        "assert not bad, bad\n"
        "print('ok', len([n for n in sys.modules if n.startswith('plugin_sdk')]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok ")


def test_sdk_sources_do_not_mention_kernel_imports() -> None:
    for path in (REPO / "plugin_sdk").glob("*.py"):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith(("import kernel", "from kernel")):
                # only allowed inside functions of the test kit (lazy, needs sixgate installed)
                assert path.name == "testing.py" and line.startswith("    "), (path, line)


def test_generated_sdk_reference_is_current() -> None:
    result = subprocess.run([sys.executable, "docs/gen_sdk_reference.py", "--check"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
