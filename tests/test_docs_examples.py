"""Every plugin page's examples run against a real gateway (format: tests/support/doc_examples.py,
docs/plugins/README.md). The runner itself is checked first, on pages written here."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.doc_examples import (
    DocExampleError,
    default_plugins,
    missing_line,
    pages,
    parse_text,
    run_page,
    substitute,
)
from tests.support.upstream import Upstream


@pytest.fixture(scope="module")
def doc_upstream() -> Iterator[Upstream]:
    up = Upstream().start()
    yield up
    up.stop()


# -- the runner ------------------------------------------------------------------------------------

PAGE = """\
# demo

<!-- doc-test plugins: echo, request-id -->
<!-- doc-test plugin_attr: {"redirect": {"https_port": 8443}} -->
<!-- doc-test plugin_attr: {"redirect": {"x": 1}, "prometheus": {"a": true}} -->

```shell
curl -s http://127.0.0.1:9080/x
```

Some prose between a command and its output.

```text
first
...
second
```

```json
{"not": "run"}
```

```text
not the output of anything
```

~~~shell
echo tilde fences count too
~~~

```shell title="with extra info"
echo two
```

```markdown
<!-- doc-test plugins: ignored-inside-a-fence -->
```

```shell
echo three
```
```json
{}
```
```text
not expected output: a json block stands between
```
"""


def test_parse_blocks_outputs_and_directives() -> None:
    page = parse_text(Path("demo.md"), PAGE)
    assert page.plugins == ["echo", "request-id"]
    assert page.plugin_attr == {"redirect": {"https_port": 8443, "x": 1}, "prometheus": {"a": True}}
    scripts = [e.script for e in page.examples]
    assert scripts == ["curl -s http://127.0.0.1:9080/x\n", "echo tilde fences count too\n",
                       "echo two\n", "echo three\n"]
    assert [e.number for e in page.examples] == [1, 2, 3, 4]
    assert page.examples[0].line == 7
    assert page.examples[0].expected == ["first", "...", "second"]
    assert [e.expected for e in page.examples[1:]] == [None, None, None]


def test_bad_directives_are_reported() -> None:
    with pytest.raises(DocExampleError, match="not JSON"):
        parse_text(Path("x.md"), "<!-- doc-test plugin_attr: {oops} -->\n")
    with pytest.raises(DocExampleError, match="unknown doc-test directive"):
        parse_text(Path("x.md"), "<!-- doc-test plugin: echo -->\n")


def test_expected_lines_in_order_with_ellipsis_and_trailing_space() -> None:
    out = "HTTP/1.1 200 OK\r\nServer: x\r\nX-A: 1  \r\n\r\nbody\n"
    assert missing_line(["HTTP/1.1 200 OK", "...", "X-A: 1", "", "body   "], out) is None
    assert missing_line(["X-A: 1", "HTTP/1.1 200 OK"], out) == "HTTP/1.1 200 OK"
    assert missing_line(["HTTP/1.1 200"], out) == "HTTP/1.1 200"  # whole lines only
    assert missing_line(["body", "body"], out) == "body"  # one output line matches once


def test_addresses_are_substituted() -> None:
    text = "curl 127.0.0.1:9180/a 127.0.0.1:9080/b http://127.0.0.1:1980/c 127.0.0.1:9443"
    assert substitute(text, 1, 2, 3) == ("curl 127.0.0.1:1/a 127.0.0.1:2/b http://127.0.0.1:3/c "
                                         "127.0.0.1:9443")


def test_default_plugins_come_from_the_shipped_defaults() -> None:
    assert "proxy-rewrite" in default_plugins()


def test_runner_runs_a_page_against_a_real_gateway(tmp_path: Path, doc_upstream: Upstream) -> None:
    page = parse_text(tmp_path / "ok.md", """\
```shell
curl -sf -X PUT http://127.0.0.1:9180/apisix/admin/routes/1 -H "X-API-KEY: $admin_key" -d '
{"uri": "/hello", "upstream": {"type": "roundrobin", "nodes": {"127.0.0.1:1980": 1}}}' > /dev/null
echo written > marker
```

```shell
cat marker
curl -si http://127.0.0.1:9080/hello
```

```text
written
HTTP/1.1 200 OK
...
hello world
```
""")
    run_page(page, tmp_path, doc_upstream.port)


def test_runner_reports_failures(tmp_path: Path, doc_upstream: Upstream) -> None:
    with pytest.raises(DocExampleError) as failed:
        run_page(parse_text(tmp_path / "none.md", "# no example\n```text\nx\n```\n"), tmp_path,
                 doc_upstream.port)
    assert "none.md: no ```shell block" in str(failed.value)

    page = parse_text(tmp_path / "bad.md", """\
```shell
echo fine
```

```shell
curl -s http://127.0.0.1:9080/nothing-here
```

```text
HTTP/1.1 200 OK
```
""")
    with pytest.raises(DocExampleError) as failed:
        run_page(page, tmp_path / "a", doc_upstream.port)
    message = str(failed.value)
    assert "bad.md: shell block 2 (line 5)" in message
    assert "printed no line 'HTTP/1.1 200 OK'" in message
    assert "--- script ---\ncurl -s http://127.0.0.1:" in message
    assert '{"error_msg":"404 Route Not Found"}' in message  # the output is shown

    page = parse_text(tmp_path / "exit.md", "```shell\necho out; echo err >&2; false | cat\n```\n")
    with pytest.raises(DocExampleError) as failed:
        run_page(page, tmp_path / "b", doc_upstream.port)
    message = str(failed.value)
    assert "exit.md: shell block 1 (line 1) exited 1" in message  # pipefail
    assert "--- stdout ---\nout" in message and "--- stderr ---\nerr" in message


# -- the pages -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", pages(), ids=lambda p: p.name)
def test_doc_page_examples(path: Path, tmp_path: Path, doc_upstream: Upstream) -> None:
    from tests.support.doc_examples import parse_page

    run_page(parse_page(path), tmp_path, doc_upstream.port)
