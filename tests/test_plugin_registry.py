"""Plugin discovery and the registry: kernel.plugins.loader / kernel.plugins.manager."""

from __future__ import annotations

import importlib.metadata
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import pytest

from kernel.plugins.loader import GENERATED_PREFIX, load_registry
from kernel.plugins.manager import PluginRegistry, check_conf
from plugin_sdk import PluginError, SchemaError, hookimpl


def write_plugin(directory: Path, filename: str, source: str) -> Path:
    path = directory / filename
    path.write_text(textwrap.dedent(source))
    return path


HELLO = """
    from plugin_sdk import Response, hookimpl

    name = "hello"
    version = "1.2"
    priority = 42
    schema = {"type": "object", "properties": {"who": {"type": "string", "default": "world"}}}
    GREETING = "hello"

    @hookimpl
    def access(ctx, conf):
        return Response(200, GREETING + " " + conf["who"])
"""


def module(name: str, priority: int = 1, **attrs: Any) -> types.ModuleType:
    mod = types.ModuleType(f"test_plugin_{name.replace('-', '_')}")
    mod.name = name  # type: ignore[attr-defined]
    mod.priority = priority  # type: ignore[attr-defined]
    mod.schema = attrs.pop("schema", {"type": "object"})  # type: ignore[attr-defined]
    for key, value in attrs.items():
        setattr(mod, key, value)
    return mod


# -- loading from plugin_dirs ----------------------------------------------------------------------


def test_load_plugin_from_directory(tmp_path: Path) -> None:
    write_plugin(tmp_path, "hello.py", HELLO)
    registry, errors = load_registry(["hello"], [tmp_path], {})
    assert errors == []
    info = registry.get("hello")
    assert info is not None
    assert (info.name, info.version, info.priority) == ("hello", "1.2", 42)
    assert list(info.phases) == ["access"]
    func, is_async = info.phases["access"]
    assert is_async is False
    assert func(None, {"who": "bob"}).body == "hello bob"
    # Imported under a generated name, registered in sys.modules until the registry goes.
    modname = info.module.__name__
    assert modname.startswith(GENERATED_PREFIX) and modname.endswith("_hello")
    assert sys.modules[modname] is info.module
    assert registry.destroy_all() == []
    assert modname not in sys.modules


def test_reload_imports_a_new_module_and_leaves_the_old_one_alone(tmp_path: Path) -> None:
    write_plugin(tmp_path, "hello.py", HELLO)
    first, _ = load_registry(["hello"], [tmp_path], {})
    write_plugin(tmp_path, "hello.py", HELLO.replace('GREETING = "hello"', 'GREETING = "hi"'))
    second, errors = load_registry(["hello"], [tmp_path], {})
    assert errors == []
    old, new = first.get("hello"), second.get("hello")
    assert old is not None and new is not None
    assert old.module is not new.module
    assert old.module.__name__ != new.module.__name__
    assert old.phases["access"][0](None, {"who": "x"}).body == "hello x"
    assert new.phases["access"][0](None, {"who": "x"}).body == "hi x"
    first.destroy_all()
    second.destroy_all()


def test_only_enabled_plugins_are_active(tmp_path: Path) -> None:
    write_plugin(tmp_path, "hello.py", HELLO)
    write_plugin(tmp_path, "other.py", HELLO.replace('"hello"', '"other"', 1))
    before = set(sys.modules)
    registry, errors = load_registry(["other", "nope"], [tmp_path], {})
    assert "hello" not in registry and "other" in registry
    assert errors == ["unknown plugin [nope]: not installed and not in plugin_dirs"]
    leaked = {m for m in set(sys.modules) - before if m.endswith("_hello")}
    assert leaked == set(), "a non-enabled plugin file must not stay imported"
    registry.destroy_all()


def test_underscore_files_and_missing_dirs(tmp_path: Path) -> None:
    write_plugin(tmp_path, "_helper.py", "raise RuntimeError('must not be imported')\n")
    registry, errors = load_registry([], [tmp_path, tmp_path / "missing"], {})
    assert len(registry) == 0
    assert errors == [f"plugin directory {tmp_path / 'missing'} does not exist"]


def test_import_error_is_reported_with_a_traceback_summary(tmp_path: Path) -> None:
    path = write_plugin(
        tmp_path, "broken.py", "name = 'broken'\npriority = 1\nschema = {}\n1 / 0\n"
    )
    write_plugin(tmp_path, "hello.py", HELLO)
    registry, errors = load_registry(["hello", "broken"], [tmp_path], {})
    assert "hello" in registry and "broken" not in registry
    assert len(errors) == 2
    assert errors[0].startswith(f"failed to import plugin file {path}: ZeroDivisionError")
    assert f"{path}:4" in errors[0]
    assert errors[1].startswith("unknown plugin [broken]")
    registry.destroy_all()


def test_hookimpl_signature_error(tmp_path: Path) -> None:
    write_plugin(
        tmp_path,
        "bad.py",
        """
        from plugin_sdk import hookimpl
        name = "bad-sig"
        priority = 1
        schema = {"type": "object"}

        @hookimpl
        def access(ctx, conf, extra):
            pass
        """,
    )
    registry, errors = load_registry(["bad-sig"], [tmp_path], {})
    assert "bad-sig" not in registry
    assert len(errors) == 1
    assert "failed to load plugin from file" in errors[0]
    assert "{'extra'}" in errors[0] and "can not be found in the hookspec" in errors[0]


def test_unknown_hook_name_is_an_error(tmp_path: Path) -> None:
    write_plugin(
        tmp_path,
        "typo.py",
        """
        from plugin_sdk import hookimpl
        name = "typo"
        priority = 1
        schema = {"type": "object"}

        @hookimpl
        def acces(ctx, conf):
            pass
        """,
    )
    registry, errors = load_registry(["typo"], [tmp_path], {})
    assert "typo" not in registry
    assert len(errors) == 1 and "unknown hook 'acces'" in errors[0]
    # The failed module left nothing behind in pluggy.
    assert registry.pm.get_plugins() == set()


def test_duplicate_names(tmp_path: Path) -> None:
    write_plugin(tmp_path, "a.py", HELLO)
    write_plugin(tmp_path, "b.py", HELLO)
    registry, errors = load_registry(["hello"], [tmp_path], {})
    assert len(registry) == 1
    assert registry.get("hello").module.__name__.endswith("_a")  # type: ignore[union-attr]
    assert len(errors) == 1
    assert "duplicate plugin name [hello]" in errors[0]
    registry.destroy_all()


def test_duplicate_names_in_direct_registration() -> None:
    registry = PluginRegistry([module("dup")])
    with pytest.raises(PluginError, match=r"duplicate plugin name \[dup\]"):
        registry.add(module("dup"))


# -- entry points (the built-ins are declared in pyproject.toml) ---------------------------------


def _installed() -> bool:
    try:
        importlib.metadata.distribution("sixgate")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _installed(), reason="sixgate is not installed (pip install -e .)")
def test_builtin_plugins_load_through_entry_points() -> None:
    registry, errors = load_registry(["proxy-rewrite", "fault-injection"], [], {})
    assert errors == []
    assert registry.names_by_priority() == ("fault-injection", "proxy-rewrite")
    fi, pr = registry.get("fault-injection"), registry.get("proxy-rewrite")
    assert fi is not None and pr is not None
    assert fi.priority == 11000 and pr.priority == 1008
    assert fi.module.__name__ == "builtin_plugins.fault_injection"
    assert list(fi.phases) == ["rewrite"] and fi.phases["rewrite"][1] is True
    assert list(pr.phases) == ["rewrite"] and pr.phases["rewrite"][1] is False
    assert "_meta" in fi.schema["properties"]
    registry.destroy_all()
    assert "builtin_plugins.fault_injection" in sys.modules  # entry-point modules stay


@pytest.mark.skipif(not _installed(), reason="sixgate is not installed (pip install -e .)")
def test_entry_points_and_directory_with_the_same_name(tmp_path: Path) -> None:
    write_plugin(tmp_path, "fi.py", HELLO.replace('"hello"', '"fault-injection"', 1))
    registry, errors = load_registry(["fault-injection"], [tmp_path], {})
    info = registry.get("fault-injection")
    assert info is not None and info.module.__name__ == "builtin_plugins.fault_injection"
    assert len(errors) == 1 and "duplicate plugin name [fault-injection]" in errors[0]


# -- the registry ----------------------------------------------------------------------------------


def test_priority_order_and_lookup() -> None:
    registry = PluginRegistry(
        [module("low", 1), module("high", 3000), module("mid-b", 500), module("mid-a", 500)]
    )
    assert registry.names_by_priority() == ("high", "mid-a", "mid-b", "low")
    assert registry.rank() == {"high": 0, "mid-a": 1, "mid-b": 2, "low": 3}
    assert registry.get("nope") is None
    assert "low" in registry and len(registry) == 4
    registry.remove("high")
    assert registry.names_by_priority() == ("mid-a", "mid-b", "low")


@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        ({"name": ""}, "'name' must be a non-empty plugin name"),
        ({"priority": "1"}, "'priority' must be an integer"),
        ({"priority": True}, "'priority' must be an integer"),
        ({"schema": None}, "'schema' must be a JSON schema object"),
        ({"type": "proxy"}, "unknown type 'proxy'"),
        ({"run_policy": "always"}, "unknown run_policy 'always'"),
        ({"consumer_schema": []}, "'consumer_schema' must be a JSON schema object"),
        ({"check_schema": 3}, "'check_schema' must be callable"),
    ],
)
def test_invalid_module_attributes(attrs: dict[str, Any], message: str) -> None:
    mod = module("x")
    for key, value in attrs.items():
        setattr(mod, key, value)
    with pytest.raises(PluginError, match=message.replace("[", r"\[").replace("(", r"\(")):
        PluginRegistry([mod])


def test_wrapper_hookimpls_are_rejected() -> None:
    @hookimpl(wrapper=True)
    def log(ctx: Any, conf: Any) -> Any:
        return (yield)

    registry = PluginRegistry()
    with pytest.raises(PluginError, match="may not be a pluggy wrapper"):
        registry.add(module("wrap", log=log))
    assert registry.pm.get_plugins() == set()


async def test_phase_functions_sync_async_and_argument_subsets() -> None:
    calls: list[tuple[str, Any]] = []

    @hookimpl
    async def rewrite(ctx: Any, conf: Any) -> None:
        calls.append(("rewrite", (ctx, conf)))

    @hookimpl
    def access(conf: Any, ctx: Any) -> None:
        calls.append(("access", (ctx, conf)))

    @hookimpl
    def header_filter(ctx: Any) -> None:
        calls.append(("header_filter", ctx))

    @hookimpl
    def body_filter(conf: Any) -> None:
        calls.append(("body_filter", conf))

    @hookimpl
    def log() -> None:
        calls.append(("log", None))

    registry = PluginRegistry(
        [module("p", rewrite=rewrite, access=access, header_filter=header_filter,
                body_filter=body_filter, log=log)]
    )
    info = registry.get("p")
    assert info is not None
    assert list(info.phases) == ["rewrite", "access", "header_filter", "body_filter", "log"]
    assert info.phases["rewrite"][1] is True
    assert info.phases["rewrite"][0] is rewrite  # (ctx, conf) is used unwrapped
    await info.phases["rewrite"][0]("C", "K")
    for phase in ("access", "header_filter", "body_filter", "log"):
        func, is_async = info.phases[phase]
        assert is_async is False
        func("C", "K")
    assert calls == [
        ("rewrite", ("C", "K")),
        ("access", ("C", "K")),
        ("header_filter", "C"),
        ("body_filter", "K"),
        ("log", None),
    ]


def test_unmarked_phase_function_is_ignored(caplog: pytest.LogCaptureFixture) -> None:
    def access(ctx: Any, conf: Any) -> None:
        pass

    registry = PluginRegistry([module("plain", access=access)])
    assert registry.get("plain").phases == {}  # type: ignore[union-attr]
    assert "not marked with @hookimpl" in caplog.text


def test_init_all_and_destroy_all() -> None:
    seen: list[Any] = []

    def init(attrs: dict[str, Any]) -> None:
        seen.append(("init", attrs))

    def init_noargs() -> None:
        seen.append(("init-noargs", None))

    def failing_init(attrs: dict[str, Any]) -> None:
        raise RuntimeError("boom")

    def destroy() -> None:
        seen.append(("destroy", None))

    registry = PluginRegistry(
        [
            module("a", 10, init=init, destroy=destroy),
            module("b", 5, init=init_noargs),
            module("c", 1, init=failing_init),
        ]
    )
    errors = registry.init_all({"a": {"port": 1}})
    assert errors == ["failed to init plugin [c]: RuntimeError: boom"]
    assert "c" not in registry
    assert seen == [("init", {"port": 1}), ("init-noargs", None)]
    assert registry.get("a").attrs == {"port": 1}  # type: ignore[union-attr]
    assert registry.get("b").attrs == {}  # type: ignore[union-attr]
    assert registry.destroy_all() == []
    assert seen[-1] == ("destroy", None)


def test_load_registry_passes_plugin_attr(tmp_path: Path) -> None:
    write_plugin(
        tmp_path,
        "attrs.py",
        """
        name = "attrs"
        priority = 1
        schema = {"type": "object"}
        SEEN = []

        def init(attrs):
            SEEN.append(attrs)
        """,
    )
    registry, errors = load_registry(["attrs"], [tmp_path], {"attrs": {"x": 1}})
    assert errors == []
    assert registry.get("attrs").module.SEEN == [{"x": 1}]  # type: ignore[union-attr]
    registry.destroy_all()


# -- conf checks -----------------------------------------------------------------------------------


SCHEMA = {
    "type": "object",
    "properties": {
        "count": {"type": "integer", "minimum": 1},
        "mode": {"type": "string", "default": "local"},
    },
    "required": ["count"],
}


def test_check_conf_schema_messages() -> None:
    info = PluginRegistry([module("lim", schema=SCHEMA)]).get("lim")
    assert info is not None
    assert check_conf(info, {"count": 1}) is None
    assert check_conf(info, {}) == 'property "count" is required'
    assert check_conf(info, {"count": 0}) == (
        'property "count" validation failed: expected 0 to be at least 1'
    )
    # _meta is accepted on every plugin conf, and only its known keys.
    assert check_conf(info, {"count": 1, "_meta": {"disable": True, "priority": 3}}) is None
    assert check_conf(info, {"count": 1, "_meta": {"bogus": 1}}) is not None


@pytest.mark.parametrize(
    ("result", "message"),
    [
        (None, None),
        (True, None),
        ("bad mode", "bad mode"),
        ((True, None), None),
        ((False, "tuple says no"), "tuple says no"),
        (SchemaError("raised"), "raised"),
        (ValueError("oops"), "ValueError: oops"),
    ],
)
def test_check_conf_runs_check_schema_with_defaults(result: Any, message: str | None) -> None:
    seen: list[Any] = []

    def check_schema(conf: dict[str, Any]) -> Any:
        seen.append(dict(conf))
        if isinstance(result, Exception):
            raise result
        return result

    info = PluginRegistry([module("c", schema=SCHEMA, check_schema=check_schema)]).get("c")
    assert info is not None
    conf = {"count": 2}
    assert check_conf(info, conf) == message
    assert seen == [{"count": 2, "mode": "local"}]
    assert conf == {"count": 2}, "the caller's conf is never modified"


def test_check_conf_consumer_and_metadata_schemas() -> None:
    types_seen: list[str] = []

    def check_schema(conf: dict[str, Any], schema_type: str) -> None:
        types_seen.append(schema_type)

    info = PluginRegistry(
        [
            module(
                "auth-x",
                schema={"type": "object"},
                consumer_schema={"type": "object", "required": ["key"]},
                metadata_schema={"type": "object", "required": ["fmt"]},
                type="auth",
                check_schema=check_schema,
            )
        ]
    ).get("auth-x")
    assert info is not None and info.type == "auth"
    assert check_conf(info, {}) is None
    assert check_conf(info, {}, "consumer") == 'property "key" is required'
    assert check_conf(info, {"key": "k"}, "consumer") is None
    assert check_conf(info, {}, "metadata") == 'property "fmt" is required'
    assert types_seen == ["route", "consumer"]
    no_meta = PluginRegistry([module("plain")]).get("plain")
    assert no_meta is not None
    assert check_conf(no_meta, {"anything": 1}, "metadata") is None


def test_invalid_schema_is_a_load_error() -> None:
    with pytest.raises(PluginError, match=r"plugin \[s\]: invalid schema"):
        PluginRegistry([module("s", schema={"type": "no-such-type"})])
