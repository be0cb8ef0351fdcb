"""kernel.upstream.nodes: node normalisation (spec §5.1, §5.2)."""

from __future__ import annotations

import pytest

from kernel.upstream.nodes import Node, has_domain, normalize_nodes, parse_addr


def test_hash_form_keeps_order_and_ports() -> None:
    nodes = normalize_nodes({"127.0.0.1:1980": 1, "127.0.0.2:1981": 3})
    assert [(n.host, n.port, n.weight, n.priority) for n in nodes] == [
        ("127.0.0.1", 1980, 1, 0),
        ("127.0.0.2", 1981, 3, 0),
    ]
    assert all(n.domain is None and n.metadata is None for n in nodes)


@pytest.mark.parametrize(
    ("scheme", "port"),
    [("http", 80), ("grpc", 80), ("https", 443), ("grpcs", 443), ("tcp", 80)],
)
def test_default_port_per_scheme(scheme: str, port: int) -> None:
    assert normalize_nodes({"example.com": 1}, scheme)[0].port == port
    assert normalize_nodes([{"host": "10.0.0.1", "weight": 1}], scheme)[0].port == port


def test_ipv6_forms() -> None:
    nodes = normalize_nodes({"[::1]:8080": 1, "[fe80::1]": 2, "::2": 3})
    assert [(n.host, n.port) for n in nodes] == [("::1", 8080), ("fe80::1", 80), ("::2", 80)]
    assert nodes[0].addr == "[::1]:8080"
    arr = normalize_nodes([{"host": "[::1]", "port": 81, "weight": 1}])
    assert arr[0].host == "::1"
    assert arr[0].addr == "[::1]:81"


def test_array_form_fields() -> None:
    meta = {"zone": "a"}
    nodes = normalize_nodes(
        [
            {"host": "127.0.0.1", "port": 1980, "weight": 2, "priority": 5, "metadata": meta},
            {"host": "backend.local", "weight": 0},
        ],
        "https",
    )
    a, b = nodes
    assert (a.host, a.port, a.weight, a.priority, a.metadata) == ("127.0.0.1", 1980, 2, 5, meta)
    assert (b.host, b.port, b.weight, b.priority) == ("backend.local", 443, 0, 0)
    assert b.domain is None  # set by the resolver, not here


def test_addr() -> None:
    assert Node("127.0.0.1", 1980, 1).addr == "127.0.0.1:1980"
    assert Node("::1", 80, 1).addr == "[::1]:80"
    assert Node("example.com", 8080, 1).addr == "example.com:8080"


def test_has_domain() -> None:
    assert not has_domain(normalize_nodes({"127.0.0.1:80": 1, "[::1]:80": 1}))
    assert has_domain(normalize_nodes({"127.0.0.1:80": 1, "localhost:80": 1}))
    assert not has_domain([])


def test_nodes_hash_by_identity() -> None:
    a = Node("127.0.0.1", 80, 1)
    b = Node("127.0.0.1", 80, 1)
    assert a != b
    assert len({a, b}) == 2
    assert a in {a}


def test_empty_forms() -> None:
    assert normalize_nodes({}) == []
    assert normalize_nodes([]) == []


@pytest.mark.parametrize(
    "bad", ["127.0.0.1:abc", "127.0.0.1:0", "127.0.0.1:70000", "[::1", "[::1]x"]
)
def test_bad_addresses(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_addr(bad)
