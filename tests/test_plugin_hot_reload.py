"""Plugin hot reload (issue 4): three triggers, one mechanism, broken edits change nothing.

In-process gateways come from the plugin test kit (``sixgate`` fixture); the ``sixgate start``
tests run the gateway as users do, in a subprocess.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from plugin_sdk.testing import GatewayHarness
from tests.support.gateway import REPO, GatewayProcess, wait_until
from tests.support.upstream import Upstream, free_port

HELLO = textwrap.dedent('''
    from plugin_sdk import Response, hookimpl

    name = "hello"
    version = "1"
    priority = 10
    schema = {"type": "object", "properties": {"who": {"type": "string", "default": "world"}}}

    @hookimpl
    def access(ctx, conf):
        return Response(200, "hello " + conf["who"] + "\\n")
''')


def enable_hello(sixgate: GatewayHarness) -> None:
    assert sixgate.write_plugin("hello.py", HELLO).ok
    sixgate.add_route("/h", plugins={"hello": {}})
    assert sixgate.get("/h").text == "hello world\n"


# -- trigger 2: file watching ---------------------------------------------------------------------


def test_an_edit_is_live_within_a_second(sixgate: GatewayHarness) -> None:
    enable_hello(sixgate)
    for i in range(3):
        started = time.monotonic()
        result = sixgate.edit_plugin("hello.py", replace=('"hello " +', f'"hi{i} " +'))
        assert result.ok and result.trigger == "file"
        assert sixgate.get("/h").text == f"hi{i} world\n"
        assert time.monotonic() - started < 1.0
        sixgate.edit_plugin("hello.py", HELLO)


@pytest.mark.sixgate(config={"apisix": {"plugin_watch": "poll"}})
def test_polling_fallback_is_live_within_a_second(sixgate: GatewayHarness) -> None:
    enable_hello(sixgate)
    assert sixgate.gateway.plugin_watcher.watchdog_active is False
    started = time.monotonic()
    assert sixgate.edit_plugin("hello.py", replace=('"hello " +', '"polled " +')).ok
    assert time.monotonic() - started < 1.0
    assert sixgate.get("/h").text == "polled world\n"


@pytest.mark.sixgate(config={"apisix": {"plugin_watch": False}})
def test_watching_can_be_turned_off(sixgate: GatewayHarness) -> None:
    enable_hello(sixgate)
    assert sixgate.gateway.plugin_watcher is None
    (sixgate.plugin_dir / "hello.py").write_text(HELLO.replace('"hello " +', '"off " +'))
    time.sleep(0.8)
    assert sixgate.get("/h").text == "hello world\n"
    assert sixgate.reload_plugins().ok  # an explicit reload still picks it up
    assert sixgate.get("/h").text == "off world\n"


# -- trigger 3: a broken edit changes nothing ------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "error"),
    [
        ("def access(ctx, conf):", "def access(ctx, conf:", "SyntaxError"),
        ("from plugin_sdk import", "import no_such_module_xyz\nfrom plugin_sdk import",
         "ModuleNotFoundError: No module named 'no_such_module_xyz'"),
        ('priority = 10', 'priority = "high"', "'priority' must be an integer"),
        ('"type": "string"', '"type": "strin"', "invalid schema"),
        ("def access(ctx, conf):", "def access(ctx, conf, extra):", "hook 'access'"),
        ('"default": "world"}}}', '"default": "world"}}, "required": ["who"]}',
         'routes[0].plugins.hello: failed to check the configuration of plugin hello err: '
         'property "who" is required'),
    ],
    ids=["syntax", "import", "module", "schema", "signature", "stored-conf-rejected"],
)
def test_a_broken_edit_keeps_the_old_version_serving(
    sixgate: GatewayHarness, old: str, new: str, error: str
) -> None:
    enable_hello(sixgate)
    generation = sixgate.plugin_status()["generation"]
    result = sixgate.edit_plugin("hello.py", replace=(old, new))
    assert not result.ok
    assert any(error in e for e in result.errors), result.errors
    assert sixgate.get("/h").text == "hello world\n"
    status = sixgate.plugin_status()
    assert status["generation"] == generation
    assert status["last"]["ok"] is False and status["last_failure"]["errors"] == result.errors
    assert "hello" in [p["name"] for p in status["plugins"]]
    assert "plugin reload (file) refused" in sixgate.logs()
    # the fix goes live
    result = sixgate.edit_plugin("hello.py", HELLO.replace('"hello " +', '"fixed " +'))
    assert result.ok and sixgate.get("/h").text == "fixed world\n"


def test_a_new_plugin_that_fails_is_skipped_not_fatal(sixgate: GatewayHarness) -> None:
    enable_hello(sixgate)
    result = sixgate.write_plugin("bad.py", 'name = "bad"\npriority = 1\nschema = {}\n1 / 0\n')
    assert result.ok and any("ZeroDivisionError" in e for e in result.errors)
    assert sixgate.get("/h").text == "hello world\n"


# -- a plugin that raises is isolated --------------------------------------------------------------

RAISES = textwrap.dedent('''
    from plugin_sdk import hookimpl

    name = "raises"
    version = "1"
    priority = 10
    schema = {"type": "object"}

    @hookimpl
    {kind}def access(ctx, conf):
        if ctx.var["arg_boom"]:
            raise RuntimeError("kaboom")
''')


@pytest.mark.parametrize("kind", ["", "async "], ids=["sync-direct-path", "async-task-path"])
def test_a_raising_plugin_fails_only_that_request(sixgate: GatewayHarness, kind: str) -> None:
    assert sixgate.write_plugin("raises.py", RAISES.replace("{kind}", kind)).ok
    sixgate.add_route("/r", plugins={"raises": {}})
    r = sixgate.get("/r?boom=1")
    assert r.status == 500 and b"500 Internal Server Error" in r.body
    assert "plugin [raises] failed in phase access" in sixgate.logs()
    assert "RuntimeError: kaboom" in sixgate.logs()
    assert sixgate.get("/r").status == 200
    sixgate.upstream.assert_received(path="/r", count=1)


@pytest.mark.parametrize("kind", ["", "async "], ids=["sync-direct-path", "async-task-path"])
def test_a_raising_plugin_uses_meta_error_response(sixgate: GatewayHarness, kind: str) -> None:
    assert sixgate.write_plugin("raises.py", RAISES.replace("{kind}", kind)).ok
    sixgate.add_route("/r", plugins={"raises": {"_meta": {"error_response": {"msg": "sorry"}}}})
    r = sixgate.get("/r?boom=1")
    assert r.status == 500 and r.json() == {"msg": "sorry"}


# -- an editable pack / a source checkout: entry-point modules reload too --------------------------


def make_dist(root: Path, dist: str, package: str, files: dict[str, str],
              entry_points: dict[str, str]) -> None:
    """What ``pip install -e`` leaves for a pack: its sources on sys.path plus metadata."""
    pkg = root / package
    pkg.mkdir(parents=True)
    for name, text in files.items():
        (pkg / name).write_text(textwrap.dedent(text))
    info = root / f"{dist}-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1.0\n")
    lines = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[sixgate.plugins]\n{lines}")


PACK_PLUGIN = '''
    from plugin_sdk import Response, hookimpl

    from .words import WORD

    name = "pack-word"
    version = "0.1.0"
    priority = 5
    schema = {"type": "object"}

    @hookimpl
    def rewrite(ctx, conf):
        return Response(200, WORD + " v1\\n")
'''


def test_an_editable_pack_module_reloads_in_place(
    tmp_path: Path, sixgate_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    make_dist(src, "pack_word", "pack_word",
              {"__init__.py": "", "plugin.py": PACK_PLUGIN, "words.py": "WORD = 'tea'\n"},
              {"pack-word": "pack_word.plugin"})
    monkeypatch.syspath_prepend(str(src))
    gw = sixgate_factory(plugins=["pack-word"])
    gw.add_route("/w", plugins={"pack-word": {}})
    assert gw.get("/w").text == "tea v1\n"
    row = gw.plugin_status()["plugins"][0]
    assert row["source"] == "entry point pack-word = pack_word.plugin"
    plugin_file = src / "pack_word" / "plugin.py"
    result = gw.edit_plugin(plugin_file, replace=('" v1', '" v2'))
    assert result.ok, result.errors
    assert gw.get("/w").text == "tea v2\n"  # the relative import still resolves
    assert sys.modules["pack_word.plugin"].__file__ == str(plugin_file)  # live module untouched
    assert gw.edit_plugin(plugin_file, replace=("def rewrite", "def rewrite(")).ok is False
    assert gw.get("/w").text == "tea v2\n"


# -- trigger 1 and `sixgate plugins status`, with `sixgate start` ----------------------------------


def sixgate_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kernel.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def node(up: Upstream) -> dict[str, Any]:
    return {"type": "roundrobin", "nodes": {f"127.0.0.1:{up.port}": 1}}


def test_sixgate_start_watches_plugin_dirs_and_reports_status(
    tmp_path: Path, upstream: Upstream
) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "hello.py").write_text(HELLO)
    gw = GatewayProcess(tmp_path / "gw", {
        "apisix": {"plugin_dirs": [str(plugins)]},
        "plugins": ["fault-injection", "hello"],
    })
    gw.start()
    config = str(gw.conf / "config.yaml")
    try:
        gw.apply({"routes": [{"id": 1, "uri": "/h", "plugins": {"hello": {}},
                              "upstream": node(upstream)}]})
        assert gw.get("/h").text == "hello world\n"
        ok = sixgate_cli("plugins", "status", "-c", config)
        assert ok.returncode == 0, ok.stderr
        assert "hello" in ok.stdout and "last load:" in ok.stdout

        started = time.monotonic()
        (plugins / "hello.py").write_text(HELLO.replace('"hello " +', '"edited " +'))
        wait_until(lambda: gw.get("/h").text == "edited world\n", timeout=1.0)
        assert time.monotonic() - started < 1.0

        (plugins / "hello.py").write_text(HELLO.replace("def access(ctx, conf):", "def x(:"))
        wait_until(lambda: sixgate_cli("plugins", "status", "-c", config).returncode == 1,
                   timeout=5)
        status = sixgate_cli("plugins", "status", "-c", config)
        assert "REFUSED" in status.stdout and "SyntaxError" in status.stdout
        assert gw.get("/h").text == "edited world\n"
        assert "plugin reload (file) refused" in gw.logs()
        as_json = json.loads(sixgate_cli("plugins", "status", "--json", "-c", config).stdout)
        assert as_json[0]["last"]["ok"] is False

        (plugins / "hello.py").write_text(HELLO)
        wait_until(lambda: gw.get("/h").text == "hello world\n", timeout=2)
        assert sixgate_cli("plugins", "status", "-c", config).returncode == 0
    finally:
        gw.stop()


def build_wheel(out: Path) -> Path:
    """A real wheel of a small pack (built by hand: no build backend needed offline)."""
    files = {
        "sg_wheel_pack/__init__.py": "",
        "sg_wheel_pack/plugin.py": textwrap.dedent('''
            from plugin_sdk import Response, hookimpl

            name = "wheel-pack"
            version = "0.3.0"
            priority = 7
            schema = {"type": "object"}

            @hookimpl
            def access(ctx, conf):
                return Response(200, "from the wheel\\n")
        '''),
        "sg_wheel_pack-0.3.0.dist-info/METADATA":
            "Metadata-Version: 2.1\nName: sg-wheel-pack\nVersion: 0.3.0\n",
        "sg_wheel_pack-0.3.0.dist-info/WHEEL":
            "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        "sg_wheel_pack-0.3.0.dist-info/entry_points.txt":
            "[sixgate.plugins]\nwheel-pack = sg_wheel_pack.plugin\n",
    }
    wheel = out / "sg_wheel_pack-0.3.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
        record = "".join(f"{n},,\n" for n in files) + "sg_wheel_pack-0.3.0.dist-info/RECORD,,\n"
        z.writestr("sg_wheel_pack-0.3.0.dist-info/RECORD", record)
    return wheel


KEY = "edd1c9f034335f136f87ad84b625c8f0"


def admin_put(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("PUT", "/apisix/admin" + path, headers={"X-API-KEY": KEY})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def test_admin_reload_finds_a_pack_pip_installed_into_the_running_gateway(
    tmp_path: Path, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "site"
    target.mkdir()
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(target), str(REPO)]))
    admin_port = free_port()
    gw = GatewayProcess(tmp_path / "gw", {
        "deployment": {
            "role": "traditional", "role_traditional": {"config_provider": "yaml"},
            "admin": {"admin_listen": {"ip": "127.0.0.1", "port": admin_port},
                      "admin_key": [{"name": "admin", "key": KEY, "role": "admin"}]},
        },
        "plugins": ["fault-injection"],
    })
    gw.start()
    try:
        wait_until(lambda: admin_put(admin_port, "/plugins/reload")[0] == 200, timeout=10)
        pip = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
             "--target", str(target), str(build_wheel(tmp_path))],
            capture_output=True, text=True, timeout=120,
        )
        assert pip.returncode == 0, pip.stderr
        cfg = yaml.safe_load((gw.conf / "config.yaml").read_text())
        cfg["plugins"] = ["fault-injection", "wheel-pack"]
        (gw.conf / "config.yaml").write_text(yaml.safe_dump(cfg))
        assert admin_put(admin_port, "/plugins/reload") == (200, b"done\n")
        gw.apply({"routes": [{"id": 1, "uri": "/w", "plugins": {"wheel-pack": {}},
                              "upstream": node(upstream)}]})
        assert gw.get("/w").text == "from the wheel\n"
        status = sixgate_cli("plugins", "status", "-c", str(gw.conf / "config.yaml"))
        assert "wheel-pack" in status.stdout and "0.3.0" in status.stdout
    finally:
        gw.stop()
