"""kernel.store.json_values: stored items decode as json.loads would, sharing repeated strings."""

from __future__ import annotations

import json

import pytest

from kernel.store.json_values import decode

LINE = '{"id": "r1", "uri": "/a", "upstream": {"type": "roundrobin", "nodes": {"127.0.0.1:80": 1}}}'


def test_same_value_as_json_loads() -> None:
    text = '{"a": [1, 2.5, "x", null, true], "b": {"c": "' + "y" * 100 + '"}, "a2": {}}'
    assert decode(text) == json.loads(text)
    assert decode(text.encode()) == json.loads(text.encode())
    assert decode('"just a string"') == "just a string"
    assert decode('{"k": 1, "k": 2}') == {"k": 2}  # last duplicate wins, as json.loads


def test_items_decoded_apart_share_keys_and_short_values() -> None:
    one, two = decode(LINE.replace("r1", "r" + "1" * 3)), decode(LINE.encode())
    key_one = next(k for k in one if k == "upstream")
    key_two = next(k for k in two if k == "upstream")
    assert key_one is key_two
    assert one["upstream"]["type"] is two["upstream"]["type"]
    long_value = "v" * 65
    assert decode(f'{{"k": "{long_value}"}}')["k"] is not decode(f'{{"k": "{long_value}"}}')["k"]


@pytest.mark.parametrize("bad", ["{", "{'a': 1}", ""])
def test_errors_as_json_loads(bad: str) -> None:
    with pytest.raises(json.JSONDecodeError):
        decode(bad)
    with pytest.raises(json.JSONDecodeError):
        decode(bad.encode())


def test_invalid_utf8_raises_unicode_error() -> None:
    with pytest.raises(UnicodeDecodeError):
        decode(b'{"a": "\xff"}')
