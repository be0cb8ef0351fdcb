"""The one-item-per-line layout of apisix.yaml: valid YAML, identity-preserving re-reads."""

from __future__ import annotations

from typing import Any

import yaml

from kernel.store.yaml_lines import ItemLines

DOC: dict[str, Any] = {
    "routes": [
        {"id": "1", "uri": "/a", "upstream": {"nodes": {"127.0.0.1:1980": 1}}},
        {"id": "2", "uri": "/b", "desc": "unicode é and \"quotes\""},
    ],
    "upstreams": [],
    "services": None,
    "plugins": ["fault-injection", {"name": "proxy-rewrite"}],
}


def test_emitted_text_reads_back_the_same_with_yaml_and_with_the_line_parser() -> None:
    text = ItemLines().emit(DOC)
    assert text is not None
    assert yaml.safe_load(text + "#END\n") == DOC
    assert ItemLines().parse(text + "#END\n") == DOC


def test_unchanged_lines_give_back_the_same_objects() -> None:
    lines = ItemLines()
    text = ItemLines().emit(DOC)
    assert text is not None
    first = lines.parse(text)
    assert first is not None
    edited = text.replace('"uri": "/b"', '"uri": "/c"')
    second = lines.parse(edited)
    assert second is not None
    assert second["routes"][0] is first["routes"][0]  # same line, same object
    assert second["routes"][1] is not first["routes"][1]
    assert second["routes"][1]["uri"] == "/c"


def test_emit_serialises_only_new_items() -> None:
    lines = ItemLines()
    doc = {"routes": [{"id": "1", "uri": "/a"}]}
    assert lines.emit(doc) is not None
    doc["routes"][0]["uri"] = "/changed-in-place"  # same object: its cached line is kept
    text = lines.emit(doc)
    assert text is not None and '"/a"' in text
    doc["routes"][0] = {"id": "1", "uri": "/new"}  # a new object is serialised
    text = lines.emit(doc)
    assert text is not None and '"/new"' in text


def test_hand_written_block_yaml_is_not_taken_for_the_line_layout() -> None:
    text = "routes:\n  - id: 1\n    uri: /a\n#END\n"
    assert ItemLines().parse(text) is None
    assert ItemLines().parse("  - {\"id\": \"1\"}\nroutes:\n") is None  # item before a key
    assert ItemLines().parse("routes: []\n  - {\"id\": \"1\"}\n") is None


def test_values_yaml_reads_differently_fall_back_to_a_yaml_dump() -> None:
    assert ItemLines().emit({"routes": [{"id": "1", "weight": 1e20}]}) is None
    assert ItemLines().emit({"routes": [{"id": "1", "x": float("nan")}]}) is None
    assert ItemLines().parse('routes:\n  - 1e3\n') is None
