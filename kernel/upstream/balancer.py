"""Load balancing: pick the node for one try of a request (spec §5.3).

A picker is built once per upstream configuration (and per set of resolved nodes) with
:func:`make_picker`; ``pick`` is called for every try and must stay cheap. Pickers keep their
state in the picker (round-robin position) and on the nodes (``least_conn``/``ewma`` counters),
and are meant for one event loop (no locking).

Behaviour common to every type:

* Nodes are grouped by ``priority``; the highest group serves. A lower group is used only when
  every node of the higher groups was tried in this request or is unhealthy.
* ``tried`` (the nodes already tried by this request) are skipped; ``None`` is returned when
  nothing is left.
* ``is_healthy``: unhealthy nodes are skipped; if *every* node is unhealthy, all are used.
* Weight-0 nodes are never chosen while a node of the same priority group has a weight > 0; a
  group whose weights are all 0 is balanced as if each weight were 1.
* One node and a type other than ``least_conn``: that node, always (tried or not, healthy or
  not — APISIX does the same, so explicit ``retries`` on a one-node upstream retry that node).

Types:

* ``roundrobin`` — interleaved weighted round robin as lua-resty-roundrobin: the current weight
  steps down from the largest weight by the weights' gcd, each pass taking the nodes whose
  weight reaches it. The whole cycle (sum of weights / gcd picks) is precomputed when it has at
  most ``MAX_RR_CYCLE`` entries and the picker starts at a random point of it; beyond that the
  picker falls back to nginx's smooth weighted round robin (same proportions, O(nodes) a pick).
* ``chash`` — consistent hash ring as lua-resty-chash: 160 points per unit of weight (weights
  divided by their gcd), point hashes chained with CRC32 from the node id ``host\\0port``; a key
  maps to the first point whose hash is ≥ CRC32(key), wrapping around. Tried and unhealthy
  nodes are skipped by walking clockwise to the next point of another node. Rings larger than
  ``MAX_CHASH_POINTS`` (huge coprime weights) get proportionally fewer points per unit.
* ``least_conn`` — the node with the lowest ``(active + 1) / weight``; ``pick`` counts the try in
  ``node.active`` and ``done`` releases it. Ties go round robin.
* ``ewma`` — power of two random choices (as current APISIX): two distinct candidates drawn at
  random, the lower EWMA of response time wins. A node's EWMA decays towards 0 with a 10 s time
  constant while it is not used, so idle nodes get probed again; ``done(node, elapsed)`` folds a
  sample in with weight ``1 - exp(-Δt/10 s)`` (the first sample is taken as is).
"""

from __future__ import annotations

import math
import random
import struct
import time
import zlib
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from .nodes import Node

__all__ = [
    "CHASH_POINTS",
    "EWMA_DECAY",
    "MAX_CHASH_POINTS",
    "MAX_RR_CYCLE",
    "Picker",
    "make_picker",
]

CHASH_POINTS = 160  # ring points per unit of weight (lua-resty-chash)
EWMA_DECAY = 10.0  # seconds (APISIX ewma DECAY_TIME)
MAX_RR_CYCLE = 4096  # longest precomputed round-robin cycle
MAX_CHASH_POINTS = 1 << 16  # largest ring; beyond it points per weight unit are scaled down
_U32 = struct.Struct("<I")

HealthFn = Callable[[Node], bool]
_random = random.random


class Picker(Protocol):
    def pick(self, var: Any, tried: set[Node] | None = None) -> Node | None:
        """The node for the next try; ``None`` when no node is left."""
        ...

    def done(self, node: Node, elapsed: float | None) -> None:
        """A try on ``node`` finished (``elapsed``: seconds, ``None`` if unknown/failed)."""
        ...


class _Group(Protocol):
    """One priority group's selector (also a full Picker when it is the only group)."""

    def select(
        self, var: Any, tried: set[Node] | None, healthy: HealthFn | None
    ) -> Node | None: ...

    def pick(self, var: Any, tried: set[Node] | None = None) -> Node | None: ...

    def done(self, node: Node, elapsed: float | None) -> None: ...


# --------------------------------------------------------------------------- helpers


def _weights(nodes: Sequence[Node], reduce: bool = True) -> list[tuple[Node, int]]:
    """Nodes with usable weights: weight-0 nodes dropped when others have weight, an all-zero
    group counted as weight 1 each; weights divided by their gcd when ``reduce``."""
    pairs = [(n, n.weight) for n in nodes if n.weight > 0]
    if not pairs:
        return [(n, 1) for n in nodes]
    if reduce:
        g = math.gcd(*(w for _, w in pairs))
        if g > 1:
            pairs = [(n, w // g) for n, w in pairs]
    return pairs


def _usable(node: Node, tried: set[Node] | None, healthy: HealthFn | None) -> bool:
    if tried and node in tried:
        return False
    return healthy is None or healthy(node)


# --------------------------------------------------------------------------- trivial pickers


class _Empty:
    __slots__ = ()

    def select(self, var: Any, tried: set[Node] | None, healthy: HealthFn | None) -> Node | None:
        return None

    def pick(self, var: Any, tried: set[Node] | None = None) -> Node | None:
        return None

    def done(self, node: Node, elapsed: float | None) -> None:
        pass


class _Single:
    __slots__ = ("node",)

    def __init__(self, node: Node) -> None:
        self.node = node

    def pick(self, var: Any, tried: set[Node] | None = None) -> Node | None:
        return self.node

    def done(self, node: Node, elapsed: float | None) -> None:
        pass


# --------------------------------------------------------------------------- roundrobin


class _RoundRobin:
    """Precomputed interleaved WRR cycle; ``pick`` is an index step."""

    __slots__ = ("_i", "_n", "_seq")

    def __init__(self, nodes: Sequence[Node]) -> None:
        pairs = _weights(nodes)
        # current weight cw = max, max-1, ..., 1 (weights are gcd-reduced: the step is 1);
        # each pass takes, in node order, the nodes whose weight reaches cw
        levels: list[list[Node]] = []
        reaching = pairs
        for cw in range(1, max(w for _, w in pairs) + 1):
            reaching = [p for p in reaching if p[1] >= cw]
            levels.append([n for n, _ in reaching])
        seq = [n for level in reversed(levels) for n in level]
        self._seq = seq
        self._n = len(seq)
        self._i = random.randrange(self._n)

    def pick(self, var: Any, tried: set[Node] | None = None) -> Node | None:
        if tried:
            return self.select(var, tried, None)
        i = self._i
        node = self._seq[i]
        i += 1
        self._i = 0 if i == self._n else i
        return node

    def select(self, var: Any, tried: set[Node] | None, healthy: HealthFn | None) -> Node | None:
        seq, n, i = self._seq, self._n, self._i
        for _ in range(n):
            node = seq[i]
            i += 1
            if i == n:
                i = 0
            if (tried and node in tried) or (healthy is not None and not healthy(node)):
                continue
            self._i = i
            return node
        return None

    def done(self, node: Node, elapsed: float | None) -> None:
        pass


class _SmoothRoundRobin:
    """nginx smooth WRR, for weight sets whose interleaved cycle is too long to precompute."""

    __slots__ = ("_cur", "_nodes", "_w")

    def __init__(self, nodes: Sequence[Node]) -> None:
        pairs = _weights(nodes)
        # random start: rotate the node order (it only decides ties); from all-zero current
        # weights every cycle of sum(weights) picks gives each node exactly its weight
        k = random.randrange(len(pairs))
        pairs = pairs[k:] + pairs[:k]
        self._nodes = [n for n, _ in pairs]
        self._w = [w for _, w in pairs]
        self._cur = [0] * len(pairs)

    def pick(self, var: Any, tried: set[Node] | None = None) -> Node | None:
        return self.select(var, tried, None)

    def select(self, var: Any, tried: set[Node] | None, healthy: HealthFn | None) -> Node | None:
        nodes, ws, cur = self._nodes, self._w, self._cur
        best = -1
        total = 0
        for k, node in enumerate(nodes):
            if (tried and node in tried) or (healthy is not None and not healthy(node)):
                continue
            w = ws[k]
            cur[k] += w
            total += w
            if best < 0 or cur[k] > cur[best]:
                best = k
        if best < 0:
            return None
        cur[best] -= total
        return nodes[best]

    def done(self, node: Node, elapsed: float | None) -> None:
        pass


def _make_roundrobin(nodes: Sequence[Node]) -> _Group:
    pairs = _weights(nodes)
    if sum(w for _, w in pairs) <= MAX_RR_CYCLE:
        return _RoundRobin(nodes)
    return _SmoothRoundRobin(nodes)


# --------------------------------------------------------------------------- chash


_HASH_ON = ("vars", "header", "cookie", "consumer", "vars_combinations")


def _chash_key(upstream: Mapping[str, Any]) -> tuple[str | None, Callable[[Any], Any] | None]:
    """(variable name, None) or (None, template renderer) for the chash key."""
    hash_on = upstream.get("hash_on") or "vars"
    key = upstream.get("key")
    if hash_on not in _HASH_ON:
        raise ValueError(f"invalid hash_on for chash: {hash_on!r}")
    if hash_on == "consumer":
        return "consumer_name", None
    if not isinstance(key, str) or not key:
        raise ValueError(f"chash with hash_on {hash_on!r} needs a 'key'")
    if hash_on == "vars":
        return key, None
    if hash_on == "header":
        return "http_" + key.lower().replace("-", "_"), None
    if hash_on == "cookie":
        return "cookie_" + key, None
    # vars_combinations: the resolved template (unset variables become empty strings)
    from plugin_sdk.template import compile_template

    return None, compile_template(key)


def _node_id(node: Node) -> bytes:
    # APISIX hashes "host:port" with every ':' replaced by NUL (IPv6 hosts in brackets)
    return node.addr.replace(":", "\0").encode()


def _key_bytes(key: Any, var: Any) -> bytes:
    if key is None:
        key = var.get("remote_addr")
        if key is None:
            return b""
    if isinstance(key, bytes):
        return key
    return str(key).encode("utf-8", "surrogateescape")


class _CHash:
    __slots__ = ("_count", "_hashes", "_name", "_owners", "_points", "_render")

    def __init__(
        self,
        nodes: Sequence[Node],
        name: str | None,
        render: Callable[[Any], Any] | None,
    ) -> None:
        pairs = _weights(nodes)
        per_unit = float(CHASH_POINTS)
        total = sum(w for _, w in pairs) * CHASH_POINTS
        if total > MAX_CHASH_POINTS:  # huge coprime weights: keep the proportions, cap the size
            per_unit = CHASH_POINTS * MAX_CHASH_POINTS / total
        crc, pack = zlib.crc32, _U32.pack
        keys: list[int] = []  # (hash << 20) | node index: sorts by hash, then index
        append = keys.append
        for idx, (node, w) in enumerate(pairs):
            base = crc(_node_id(node))
            prev = 0
            for _ in range(max(1, round(w * per_unit))):
                prev = crc(pack(prev), base)
                append(prev << 20 | idx)
        keys.sort()
        by_index = [n for n, _ in pairs]
        self._hashes = [k >> 20 for k in keys]
        owners = [by_index[k & 0xFFFFF] for k in keys]
        owners.append(owners[0])  # an index past the last point wraps to the first
        self._owners = owners
        self._points = len(keys)
        self._count = len(pairs)
        self._name = name
        self._render = render

    def _index(self, var: Any) -> int:
        name = self._name
        key = var.get(name) if name is not None else self._render(var)  # type: ignore[misc]
        return bisect_left(self._hashes, zlib.crc32(_key_bytes(key, var))) % self._points

    def pick(self, var: Any, tried: set[Node] | None = None) -> Node | None:
        if tried:
            return self.select(var, tried, None)
        name = self._name
        key = var.get(name) if name is not None else self._render(var)  # type: ignore[misc]
        if key.__class__ is str:
            try:
                b = key.encode()
            except UnicodeEncodeError:
                b = _key_bytes(key, var)
        else:
            b = _key_bytes(key, var)
        return self._owners[bisect_left(self._hashes, zlib.crc32(b))]

    def select(self, var: Any, tried: set[Node] | None, healthy: HealthFn | None) -> Node | None:
        idx = self._index(var)
        owners = self._owners
        node = owners[idx]
        if _usable(node, tried, healthy):
            return node
        seen = {node}
        n, count = self._points, self._count
        for _ in range(n - 1):
            idx += 1
            if idx == n:
                idx = 0
            node = owners[idx]
            if node in seen:
                continue
            if _usable(node, tried, healthy):
                return node
            seen.add(node)
            if len(seen) == count:
                break
        return None

    def done(self, node: Node, elapsed: float | None) -> None:
        pass


# --------------------------------------------------------------------------- least_conn


def _least_conn_done(node: Node, elapsed: float | None) -> None:
    if node.active > 0:
        node.active -= 1


class _LeastConn:
    __slots__ = ("_items", "_n", "_turn")

    def __init__(self, nodes: Sequence[Node]) -> None:
        self._items = [(n, 1.0 / w) for n, w in _weights(nodes, reduce=False)]
        self._n = len(self._items)
        self._turn = random.randrange(self._n)

    def pick(self, var: Any, tried: set[Node] | None = None) -> Node | None:
        return self.select(var, tried, None)

    def select(self, var: Any, tried: set[Node] | None, healthy: HealthFn | None) -> Node | None:
        items, n = self._items, self._n
        start = self._turn
        self._turn = start + 1 if start + 1 < n else 0
        best: Node | None = None
        best_score = math.inf
        for j in range(n):
            k = start + j
            node, inv = items[k if k < n else k - n]
            if (tried and node in tried) or (healthy is not None and not healthy(node)):
                continue
            score = (node.active + 1) * inv
            if score < best_score:
                best, best_score = node, score
        if best is not None:
            best.active += 1
        return best

    done = staticmethod(_least_conn_done)


# --------------------------------------------------------------------------- ewma


def _ewma_score(node: Node, now: float) -> float:
    # the read path of APISIX's ewma: decay towards 0 by the time since the last sample
    return node.ewma * math.exp(-(now - node.ewma_at) / EWMA_DECAY)


def _ewma_done(node: Node, elapsed: float | None) -> None:
    if elapsed is None:
        return
    now = time.monotonic()
    w = math.exp(-(now - node.ewma_at) / EWMA_DECAY)
    node.ewma = node.ewma * w + elapsed * (1.0 - w)
    node.ewma_at = now


class _Ewma:
    __slots__ = ("_nodes",)

    def __init__(self, nodes: Sequence[Node]) -> None:
        self._nodes = [n for n, _ in _weights(nodes, reduce=False)]

    def pick(self, var: Any, tried: set[Node] | None = None) -> Node | None:
        return self.select(var, tried, None)

    def select(self, var: Any, tried: set[Node] | None, healthy: HealthFn | None) -> Node | None:
        cands = self._nodes
        if tried or healthy is not None:
            cands = [n for n in cands if _usable(n, tried, healthy)]
        n = len(cands)
        if n < 2:
            return cands[0] if n else None
        a = int(_random() * n)
        b = int(_random() * (n - 1))
        if b >= a:
            b += 1
        na, nb = cands[a], cands[b]
        now = time.monotonic()
        return nb if _ewma_score(nb, now) < _ewma_score(na, now) else na

    done = staticmethod(_ewma_done)


# --------------------------------------------------------------------------- composite


def _noop_done(node: Node, elapsed: float | None) -> None:
    pass


class _Composite:
    """Priority groups and/or health filtering around per-group selectors."""

    __slots__ = ("_groups", "_healthy", "_nodes", "done")

    def __init__(
        self,
        groups: list[_Group],
        nodes: list[Node],
        healthy: HealthFn | None,
        done: Callable[[Node, float | None], None],
    ) -> None:
        self._groups = groups
        self._nodes = nodes
        self._healthy = healthy
        self.done = done

    def pick(self, var: Any, tried: set[Node] | None = None) -> Node | None:
        healthy = self._healthy
        for g in self._groups:
            node = g.select(var, tried, healthy)
            if node is not None:
                return node
        if healthy is None:
            return None
        for n in self._nodes:
            if healthy(n):
                return None  # healthy ones exist, all tried
        for g in self._groups:  # every node unhealthy: use them all
            node = g.select(var, tried, None)
            if node is not None:
                return node
        return None


# --------------------------------------------------------------------------- factory


_DONE: dict[str, Callable[[Node, float | None], None]] = {
    "roundrobin": _noop_done,
    "chash": _noop_done,
    "least_conn": _least_conn_done,
    "ewma": _ewma_done,
}


def make_picker(
    upstream: Mapping[str, Any],
    nodes: list[Node],
    is_healthy: HealthFn | None = None,
) -> Picker:
    """Build the picker for ``upstream`` (its config, defaults filled) over ``nodes``
    (resolved). Raises ``ValueError`` for an unknown ``type`` or an unusable chash key."""
    typ = upstream.get("type") or "roundrobin"
    if typ not in _DONE:
        raise ValueError(f"invalid balancer type: {typ}")
    key_name, key_render = _chash_key(upstream) if typ == "chash" else (None, None)
    if not nodes:
        return _Empty()
    if len(nodes) == 1 and typ != "least_conn":
        return _Single(nodes[0])

    by_prio: dict[int, list[Node]] = {}
    for n in nodes:
        by_prio.setdefault(n.priority, []).append(n)

    def build(group: list[Node]) -> _Group:
        if typ == "roundrobin":
            return _make_roundrobin(group)
        if typ == "chash":
            return _CHash(group, key_name, key_render)
        if typ == "least_conn":
            return _LeastConn(group)
        return _Ewma(group)

    groups = [build(by_prio[p]) for p in sorted(by_prio, reverse=True)]
    if len(groups) == 1 and is_healthy is None:
        return groups[0]
    return _Composite(groups, list(nodes), is_healthy, _DONE[typ])
