"""Run the examples of the plugin pages (``docs/plugins/*.md``) against a real gateway.

The format (also written down in ``docs/plugins/README.md``):

* Every ``docs/plugins/*.md`` file is a page; each page is one test. A page without a ``shell``
  block fails: every page must carry a runnable example.
* A fenced code block whose info string is ``shell`` (its first word) is a script. The
  page's shell blocks run in order, each as its own ``bash -e -o pipefail`` process (shell
  variables do not carry from one block to the next; files do: every block of a page runs in
  the same scratch directory). Before running, these addresses are replaced:

  - ``127.0.0.1:9180`` → the gateway's Admin API,
  - ``127.0.0.1:9080`` → the gateway's HTTP proxy,
  - ``127.0.0.1:1980`` → a real upstream (``tests/support/upstream.py``: ``/hello`` answers
    ``hello world``, ``/echo`` the request it received as JSON, any other path 200 with
    ``<its port> <path>``).

  The environment variable ``admin_key`` holds the Admin API key, so pages write
  ``-H "X-API-KEY: $admin_key"`` as APISIX's documentation does.
* A fenced block whose info string is ``text`` and that is the next fenced block after a
  shell block (prose may stand between them, no other fenced block) is that script's expected
  output: every non-empty line of it must appear as a line of the script's stdout, in the same
  order (other stdout lines may come between and around them). Lines are compared after
  stripping trailing whitespace and ``\\r``; an expected line that is exactly ``...`` is
  ignored; the same address replacement is applied to the expected lines. A shell block
  without such a text block only has to exit 0.
* A page may enable plugins that are not in the default plugin list, and set ``plugin_attr``,
  with HTML comments that start a line outside fenced blocks::

      <!-- doc-test plugins: serverless-pre-function, serverless-post-function -->
      <!-- doc-test plugin_attr: {"redirect": {"https_port": 9443}} -->

  The gateway then runs with the default ``plugins`` list (``kernel/config_default.yaml``)
  plus those names, and with that ``plugin_attr`` (JSON; several comments are merged).
* Each page gets a fresh gateway, started as users start it (``sixgate start`` in a
  subprocess, :class:`tests.support.gateway.GatewayProcess`) in the traditional role with the
  embedded YAML store, so it has the Admin API and pages cannot see each other's routes.

A failing page reports the page, the block (number and line), the script as run and its
output (stdout and stderr), and for a mismatch the first expected line not found.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.gateway import GatewayProcess, wait_port
from tests.support.upstream import free_port

REPO = Path(__file__).resolve().parents[2]
DOCS_DIR = REPO / "docs" / "plugins"

ADMIN_ADDR = "127.0.0.1:9180"
PROXY_ADDR = "127.0.0.1:9080"
UPSTREAM_ADDR = "127.0.0.1:1980"
ELLIPSIS = "..."
BLOCK_TIMEOUT = 60.0


class DocExampleError(AssertionError):
    """A page's example failed (the message says where and why)."""


@dataclass
class Fence:
    """One fenced code block of a page."""

    info: str
    """The first word of the info string (``shell``, ``text``, ``json``, ...; may be empty)."""
    text: str
    line: int
    """1-based line of the opening fence."""


@dataclass
class Example:
    """A shell block and, when one follows it, its expected output."""

    number: int
    """1-based position among the page's shell blocks."""
    line: int
    script: str
    expected: list[str] | None = None


@dataclass
class Page:
    path: Path
    examples: list[Example] = field(default_factory=list)
    plugins: list[str] = field(default_factory=list)
    """Plugins to enable besides the default list."""
    plugin_attr: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name


# -- parsing ---------------------------------------------------------------------------------------

_FENCE_OPEN = re.compile(r"^ {0,3}(`{3,}|~{3,})[ \t]*([^`\n]*?)[ \t]*$")
_DIRECTIVE = re.compile(r"^[ \t]*<!--[ \t]*doc-test[ \t]+([\w-]+)[ \t]*:(.*?)-->", re.M | re.S)


def parse_fences(text: str) -> tuple[list[Fence], str]:
    """The page's fenced blocks, and the page's text outside them (fences blanked out)."""
    fences: list[Fence] = []
    outside: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE_OPEN.match(lines[i])
        if m is None or (m.group(1)[0] == "`" and "`" in m.group(2)):
            outside.append(lines[i])
            i += 1
            continue
        marker = m.group(1)
        info = m.group(2).split()[0] if m.group(2).split() else ""
        start = i
        body: list[str] = []
        i += 1
        closing = re.compile(
            r"^ {0,3}" + re.escape(marker[0]) + "{" + str(len(marker)) + r",}[ \t]*$"
        )
        while i < len(lines) and not closing.match(lines[i]):
            body.append(lines[i])
            i += 1
        i += 1  # the closing fence (or the end of the page)
        fences.append(Fence(info.lower(), "\n".join(body) + ("\n" if body else ""), start + 1))
        outside.extend("" for _ in range(start, min(i, len(lines))))
    return fences, "\n".join(outside)


def parse_text(path: Path, text: str) -> Page:
    page = Page(path)
    fences, outside = parse_fences(text)
    for m in _DIRECTIVE.finditer(outside):
        key, value = m.group(1), m.group(2).strip()
        if key == "plugins":
            for plugin in re.split(r"[\s,]+", value):
                if plugin and plugin not in page.plugins:
                    page.plugins.append(plugin)
        elif key == "plugin_attr":
            try:
                attr = json.loads(value)
            except json.JSONDecodeError as exc:
                raise DocExampleError(f"{path.name}: doc-test plugin_attr is not JSON: {exc}: "
                                      f"{value!r}") from None
            if not isinstance(attr, dict):
                raise DocExampleError(f"{path.name}: doc-test plugin_attr must be a JSON object")
            _merge(page.plugin_attr, attr)
        else:
            raise DocExampleError(f"{path.name}: unknown doc-test directive {key!r} "
                                  "(known: plugins, plugin_attr)")
    last: Example | None = None
    for fence in fences:
        if fence.info == "shell":
            last = Example(len(page.examples) + 1, fence.line, fence.text)
            page.examples.append(last)
            continue
        if fence.info == "text" and last is not None and last.expected is None:
            last.expected = fence.text.splitlines()
        last = None
    return page


def parse_page(path: Path) -> Page:
    return parse_text(path, path.read_text())


def pages(directory: Path = DOCS_DIR) -> list[Path]:
    return sorted(directory.glob("*.md"))


def default_plugins() -> list[str]:
    """The ``plugins`` list of ``kernel/config_default.yaml``."""
    defaults = yaml.safe_load((REPO / "kernel" / "config_default.yaml").read_text())
    return list(defaults.get("plugins") or [])


# -- matching --------------------------------------------------------------------------------------


def missing_line(expected: list[str], output: str) -> str | None:
    """The first expected line that is not found, in order, among ``output``'s lines."""
    got = [line.rstrip() for line in output.splitlines()]
    pos = 0
    for want in expected:
        want = want.rstrip()
        if not want or want == ELLIPSIS:
            continue
        while pos < len(got) and got[pos] != want:
            pos += 1
        if pos == len(got):
            return want
        pos += 1
    return None


# -- running ---------------------------------------------------------------------------------------


class DocGateway:
    """A fresh ``sixgate start`` process with the Admin API (traditional role, embedded YAML
    store) for one page."""

    def __init__(self, workdir: Path, page: Page) -> None:
        self.admin_port = free_port()
        self.admin_key = secrets.token_hex(16)
        config: dict[str, Any] = {
            "deployment": {
                "role": "traditional",
                "role_traditional": {"config_provider": "yaml"},
                "admin": {
                    "admin_listen": {"ip": "127.0.0.1", "port": self.admin_port},
                    "admin_key": [{"name": "admin", "key": self.admin_key, "role": "admin"}],
                },
            },
        }
        if page.plugins:
            config["plugins"] = list(dict.fromkeys([*default_plugins(), *page.plugins]))
        if page.plugin_attr:
            config["plugin_attr"] = page.plugin_attr
        self.process = GatewayProcess(workdir, config)

    @property
    def proxy_port(self) -> int:
        return self.process.port

    def start(self) -> DocGateway:
        self.process.start({"routes": []})
        try:
            wait_port(self.admin_port)
        except TimeoutError:
            self.stop()
            raise RuntimeError("the Admin API did not start:\n" + self.process.logs()) from None
        return self

    def stop(self) -> None:
        self.process.stop()

    def __enter__(self) -> DocGateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def substitute(text: str, admin_port: int, proxy_port: int, upstream_port: int) -> str:
    return (
        text.replace(ADMIN_ADDR, f"127.0.0.1:{admin_port}")
        .replace(PROXY_ADDR, f"127.0.0.1:{proxy_port}")
        .replace(UPSTREAM_ADDR, f"127.0.0.1:{upstream_port}")
    )


def _report(page: Page, example: Example, script: str, why: str, stdout: str, stderr: str,
            logs: str) -> str:
    parts = [
        f"{page.name}: shell block {example.number} (line {example.line}) {why}",
        "--- script ---", script.rstrip(),
        "--- stdout ---", stdout.rstrip(),
        "--- stderr ---", stderr.rstrip(),
    ]
    if logs:
        parts += ["--- gateway log (last lines) ---", "\n".join(logs.splitlines()[-30:])]
    return "\n".join(parts)


def run_page(page: Page, workdir: Path, upstream_port: int) -> None:
    """Start a gateway for ``page`` and run its examples; raises :class:`DocExampleError`."""
    if not page.examples:
        raise DocExampleError(f"{page.name}: no ```shell block: every plugin page must carry "
                              "a runnable example")
    scratch = workdir / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    with DocGateway(workdir / "gateway", page) as gw:
        env = dict(os.environ, admin_key=gw.admin_key)
        for example in page.examples:
            script = substitute(example.script, gw.admin_port, gw.proxy_port, upstream_port)
            try:
                done = subprocess.run(
                    ["bash", "-e", "-o", "pipefail", "-c", script], cwd=scratch, env=env,
                    capture_output=True, text=True, timeout=BLOCK_TIMEOUT,
                )
            except subprocess.TimeoutExpired as exc:
                out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (
                    exc.stdout or "")
                err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (
                    exc.stderr or "")
                raise DocExampleError(_report(page, example, script,
                                              f"ran past {BLOCK_TIMEOUT:.0f}s", out, err,
                                              gw.process.logs())) from None
            if done.returncode != 0:
                raise DocExampleError(_report(page, example, script,
                                              f"exited {done.returncode}", done.stdout,
                                              done.stderr, gw.process.logs()))
            if example.expected is not None:
                expected = [
                    substitute(line, gw.admin_port, gw.proxy_port, upstream_port)
                    for line in example.expected
                ]
                missing = missing_line(expected, done.stdout)
                if missing is not None:
                    why = (f"printed no line {missing!r} (in order) of its expected output:\n"
                           + "\n".join(expected))
                    raise DocExampleError(_report(page, example, script, why, done.stdout,
                                                  done.stderr, ""))


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
