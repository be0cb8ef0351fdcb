"""HTTP route matching with APISIX / lua-resty-radixtree semantics (spec §4.2-4.5).

Everything is built once in :class:`Router` (a new router per config generation); ``match`` only
does dict probes and the per-route condition checks.

Per URI tree: exact paths live in a dict; prefix keys (the pattern up to its first ``*``, or
up to its first ``:`` with the parameter router) live in a :class:`_PrefixIndex`, which finds
every key that is a prefix of the path, longest first, with at most one probe per ``/``.
Candidates under one key are ordered by priority (desc), then original pattern length (desc),
then load order. The first candidate whose conditions pass (method, remote_addr, host, vars,
in that order) and whose pattern check passes wins.

Pattern check for prefix routes: like radixtree's ``compare_param``, a pattern with ``:name``
or ``*name`` segments is turned into a regex (``:x`` = ``([^/]+)``, ``*x`` = ``((.|\\n)*)``, a
bare ``*`` is named ``:ext``; the other segments are used *as regex text*, as radixtree does)
that must match the whole path; captures become ``Match.params``. ``/foo/*rest``-shaped
patterns skip the regex (the capture is simply the rest of the path).

Known differences from APISIX: ``filter_func`` is not part of :class:`RouteSpec` (the caller
decides what to do with Lua functions); the param regex runs on Python ``re`` after the PCRE
translation of :func:`plugin_sdk.expr.compile_pcre` (an untranslatable pattern never matches,
like a PCRE compile error); matching works on text, not bytes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from plugin_sdk.expr import IpMatcher, pcre_to_python

__all__ = ["KINDS", "Match", "RouteSpec", "Router"]

KINDS = ("radixtree_host_uri", "radixtree_uri", "radixtree_uri_with_parameter")


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """One route as the router sees it."""

    id: str
    uris: tuple[str, ...]
    methods: frozenset[str] | None = None
    """Allowed request methods (upper case); ``None`` or empty = any."""
    hosts: tuple[str, ...] | None = None
    """As configured (the router lower-cases them); ``None`` or empty = any."""
    remote_addrs: tuple[str, ...] | None = None
    """Client IPs / CIDRs (v4 and v6); ``None`` or empty = any."""
    vars: Callable[[Any], bool] | None = None
    """A compiled ``vars`` expression (:func:`plugin_sdk.expr.compile_expr`)."""
    priority: int = 0
    payload: Any = None
    """Opaque; handed back in :class:`Match`."""


@dataclass(frozen=True, slots=True)
class Match:
    """The route that matched."""

    spec: RouteSpec
    params: dict[str, str] | None
    """``:name`` / ``*name`` captures (``:ext`` for a bare ``*``), else ``None``."""
    matched_uri: str = ""
    """The route pattern that matched (APISIX ``curr_req_matched._path``; prometheus
    ``matched_uri``)."""
    matched_host: str = ""
    """The route host that matched (``*.foo.com`` for a wildcard), ``""`` for host-less routes
    (APISIX ``curr_req_matched._host``; prometheus ``matched_host``)."""


class _MatchBuilder:
    """Same slot layout as :class:`Match` but mutable: filled with plain (specialised) attribute
    stores, then re-classed to ``Match``: much cheaper than the frozen-dataclass ``__init__`` or
    slot-descriptor ``__set__`` calls, and the result is an ordinary ``Match``."""

    __slots__ = ("spec", "params", "matched_uri", "matched_host")


if _MatchBuilder.__slots__ != Match.__slots__:  # the __class__ swap needs the same layout
    raise TypeError("_MatchBuilder must mirror Match's slots")


def _new_match(spec: RouteSpec, params: dict[str, str] | None, uri: str, host: str) -> Match:
    """``Match(spec, params, uri, host)``, built faster (same object)."""
    m: Any = _MatchBuilder()
    m.spec = spec
    m.params = params
    m.matched_uri = uri
    m.matched_host = host
    m.__class__ = Match
    return m  # type: ignore[no-any-return]


T = TypeVar("T")


class _PrefixIndex(Generic[T]):
    """Keys → values; finds all keys that are prefixes of a string, longest first.

    Keys are grouped by their *base* (the key up to and including its last separator). The
    base of any key that prefixes ``s`` is a prefix of ``s`` ending at a separator, and a longer
    base means a longer key, so a lookup visits the separator positions of ``s`` from the
    right (only those where a base of that length exists), then the few tail lengths stored
    under that base.
    """

    __slots__ = ("bases", "blens", "max_blen", "sep")

    def __init__(self, items: dict[str, T], sep: str) -> None:
        self.sep = sep
        grouped: dict[str, dict[str, T]] = {}
        for key, value in items.items():
            base = key[: key.rfind(sep) + 1]
            grouped.setdefault(base, {})[key[len(base) :]] = value
        self.bases: dict[str, tuple[tuple[int, ...], dict[str, T]]] = {
            base: (tuple(sorted({len(t) for t in tails}, reverse=True)), tails)
            for base, tails in grouped.items()
        }
        self.blens = frozenset(len(b) for b in self.bases)
        self.max_blen = max(self.blens, default=-1)

    def lookup(self, s: str) -> list[T]:
        found: list[T] = []
        if self.max_blen < 0:
            return found
        bases = self.bases
        blens = self.blens
        sep = self.sep
        i = s.rfind(sep, 0, self.max_blen)
        seg_end = s.find(sep, i + 1)
        if seg_end < 0:
            seg_end = len(s)
        while True:
            if i + 1 in blens:
                b = bases.get(s[: i + 1])
                if b is not None:
                    start = i + 1
                    room = seg_end - start
                    tails = b[1]
                    for n in b[0]:
                        if n <= room:
                            v = tails.get(s[start : start + n])
                            if v is not None:
                                found.append(v)
            if i < 0:
                return found
            seg_end = i
            i = s.rfind(sep, 0, i)


# entry modes: how the pattern is checked after the conditions passed
_PLAIN = 0  # exact path, or prefix pattern without captures
_TAIL = 1  # "/literal/*name": capture = rest of the path
_REGEX = 2  # general pattern: whole-path regex
_NEVER = 3  # pattern regex does not compile: never matches

_REGEX_META = frozenset("\\^$|?*+()[]{}")


class _Entry:
    """One (route, uri pattern) registration in one URI tree."""

    __slots__ = (
        "blen",
        "host_labels",
        "host_matches",
        "hosts",
        "ipm",
        "key_len",
        "label",
        "match",
        "methods",
        "mode",
        "names",
        "nocond",
        "path_org",
        "plain",
        "priority",
        "regex",
        "spec",
        "vars",
    )

    def __init__(
        self,
        spec: RouteSpec,
        path_org: str,
        key: str | None,
        ipm: IpMatcher | None,
        host_conds: tuple[tuple[bool, str, bool], ...] | None,
        matched_host: str,
    ) -> None:
        self.spec = spec
        self.path_org = path_org
        self.priority = spec.priority or 0
        self.blen = len(path_org.encode())
        self.methods = spec.methods or None
        self.ipm = ipm
        self.hosts = host_conds
        self.vars = spec.vars
        self.key_len = 0 if key is None else len(key)
        self.names: tuple[str, ...] = ()
        self.regex: re.Pattern[str] | None = None
        self.mode = _PLAIN
        if key is not None:
            self._setup_pattern(key)
        self.match = Match(spec, None, path_org, matched_host)
        self.host_labels: tuple[str | None, ...] = ()
        self.host_matches: tuple[Match | None, ...] = ()
        if host_conds is not None:
            # label reported for host i: "*" + suffix for wildcards, the request host otherwise
            # (equal to the route host, except for "host:port" routes matched on the raw Host)
            self.host_labels = tuple(
                "*" + h if wild else (None if colon else h) for wild, h, colon in host_conds
            )
            self.host_matches = tuple(
                None if label is None else Match(spec, None, path_org, label)
                for label in self.host_labels
            )
        self.label = matched_host
        self.nocond = self.methods is None and ipm is None and host_conds is None and self.vars is None
        self.plain = self.nocond and self.mode == _PLAIN

    def _setup_pattern(self, key: str) -> None:
        path = self.path_org
        items = path.split("/")
        while items and items[-1] == "":
            items.pop()
        names: list[str] = []
        parts: list[str] = []
        for item in items:
            if item.startswith(":"):
                names.append(item[1:])
                parts.append(r"([^\/]+)")
            elif item.startswith("*"):
                names.append(item[1:] or ":ext")
                parts.append(r"((.|\n)*)")
            else:
                parts.append(item)
        if not names:
            return
        self.names = tuple(names)
        last = items[-1]
        literal = path[: len(path) - len(last)]
        if (
            len(names) == 1
            and last.startswith("*")
            and not path.endswith("/")
            and literal == key
            and not _REGEX_META.intersection(literal)
        ):
            self.mode = _TAIL
            return
        source = r"\/".join(parts) + (r"\/" if path.endswith("/") else "")
        try:
            self.regex = re.compile(pcre_to_python(source), re.ASCII)
            self.mode = _REGEX
        except (ValueError, re.error):
            self.mode = _NEVER


def _sorted(entries: list[_Entry]) -> tuple[_Entry, ...]:
    return tuple(sorted(entries, key=lambda e: (-e.priority, -e.blen)))


def _match_hosts(
    conds: tuple[tuple[bool, str, bool], ...], host: str | None, raw_host: str | None
) -> int:
    if host is None:
        return -1
    for i, (wild, h, colon) in enumerate(conds):
        target = raw_host if colon and raw_host else host
        if target.endswith(h) if wild else target == h:
            return i
    return -1


def _try(
    cands: tuple[_Entry, ...],
    path: str,
    method: str,
    host: str | None,
    raw_host: str | None,
    remote_addr: str,
    var: Any,
) -> Match | None:
    for e in cands:
        if e.plain:
            return e.match
        methods = e.methods
        if methods is not None and method not in methods:
            continue
        ipm = e.ipm
        if ipm is not None and not ipm.match(remote_addr):
            continue
        hidx = -1
        conds = e.hosts
        if conds is not None:
            hidx = _match_hosts(conds, host, raw_host)
            if hidx < 0:
                continue
        pred = e.vars
        if pred is not None and not pred(var):
            continue
        mode = e.mode
        if mode == _PLAIN:
            if hidx < 0:
                return e.match
            found = e.host_matches[hidx]
            if found is None:
                found = _new_match(e.spec, None, e.path_org, host or "")
            return found
        label = e.match.matched_host if hidx < 0 else (e.host_labels[hidx] or host or "")
        if mode == _TAIL:
            return _new_match(e.spec, {e.names[0]: path[e.key_len :]}, e.path_org, label)
        if mode == _REGEX:
            assert e.regex is not None
            m = e.regex.match(path)
            if m is None or m.end() != len(path):
                continue
            params: dict[str, str] = {}
            names = e.names
            groups = m.groups()
            for i in range(min(len(names), len(groups))):
                value = groups[i]
                if value is not None:
                    params[names[i]] = value
            return _new_match(e.spec, params, e.path_org, label)
    return None


class _HostFiltered:
    """Candidates of one key with many host-conditioned routes (``radixtree_uri*`` only).

    Selecting by the request host first skips routes whose hosts cannot match, instead of
    checking them one by one; the survivors keep their order, so the result is the same.
    """

    __slots__ = ("always", "cands", "exact", "wild")

    THRESHOLD = 8

    def __init__(self, cands: tuple[_Entry, ...]) -> None:
        self.cands = cands
        always: list[int] = []
        exact: dict[str, list[int]] = {}
        wild: dict[str, list[int]] = {}
        for pos, e in enumerate(cands):
            conds = e.hosts
            if conds is None or any(colon for _w, _h, colon in conds):
                always.append(pos)
                continue
            for is_wild, h, _colon in conds:
                if is_wild:
                    wild.setdefault(h[::-1], []).append(pos)
                else:
                    exact.setdefault(h, []).append(pos)
        self.always = tuple(always)
        self.exact = {h: tuple(v) for h, v in exact.items()}
        self.wild = _PrefixIndex({k: tuple(v) for k, v in wild.items()}, ".") if wild else None

    def select(self, host: str | None) -> tuple[_Entry, ...]:
        cands = self.cands
        if host is None:
            return tuple(cands[p] for p in self.always)
        extra: list[tuple[int, ...]] = []
        hit = self.exact.get(host)
        if hit is not None:
            extra.append(hit)
        if self.wild is not None:
            extra.extend(self.wild.lookup(host[::-1]))
        if not extra:
            return tuple(cands[p] for p in self.always)
        return tuple(cands[p] for p in sorted(set(self.always).union(*extra)))


_Cands = Match | _Entry | tuple[_Entry, ...] | _HostFiltered
"""What one exact path / prefix key resolves to: a ``Match`` when its first candidate is a plain
route without conditions (it always wins), an ``_Entry`` when that first candidate is an
unconditional ``/literal/*name`` (it always wins, with a capture), else the ordered candidates
(:func:`_try`), possibly behind a host filter."""


def _candidates(entries: list[_Entry]) -> _Cands | None:
    ordered = tuple(e for e in _sorted(entries) if e.mode != _NEVER)
    if not ordered:
        return None
    first = ordered[0]
    if first.nocond:
        if first.mode == _PLAIN:
            return first.match
        if first.mode == _TAIL:
            return first
    if sum(e.hosts is not None for e in ordered) >= _HostFiltered.THRESHOLD:
        return _HostFiltered(ordered)
    return ordered


def _resolve(
    cands: _Cands,
    path: str,
    method: str,
    host: str | None,
    raw_host: str | None,
    remote_addr: str,
    var: Any,
) -> Match | None:
    if isinstance(cands, Match):
        return cands
    if isinstance(cands, _Entry):
        return _new_match(cands.spec, {cands.names[0]: path[cands.key_len :]}, cands.path_org,
                          cands.label)  # fmt: skip
    if isinstance(cands, _HostFiltered):
        cands = cands.select(host)
    return _try(cands, path, method, host, raw_host, remote_addr, var)


# a prefix tree with at most this many distinct key lengths (besides "/" and "") is searched by
# probing each length; a larger one by the separator-driven _PrefixIndex
_MAX_PROBE_LENS = 4


class _UriTree:
    """Exact map + prefix keys over the URI patterns of a set of routes.

    Prefix keys that prefix the path are visited longest first: the catch-all keys ``"/"``
    (``/*``) and ``""`` are kept aside and checked last without any slicing; the others are
    found by one dict probe per distinct key length (few lengths) or through a
    :class:`_PrefixIndex` (one probe per ``/`` of the path).
    """

    __slots__ = ("empty", "exact", "index", "lens", "pmap", "root")

    def __init__(self, entries: list[tuple[_Entry, str | None]]) -> None:
        exact: dict[str, list[_Entry]] = {}
        prefix: dict[str, list[_Entry]] = {}
        for entry, key in entries:
            if key is None:
                exact.setdefault(entry.path_org, []).append(entry)
            else:
                prefix.setdefault(key, []).append(entry)
        self.exact: dict[str, _Cands] = {}
        for p, es in exact.items():
            cands = _candidates(es)
            if cands is not None:
                self.exact[p] = cands
        pmap: dict[str, _Cands] = {}
        for k, es in prefix.items():
            cands = _candidates(es)
            if cands is not None:
                pmap[k] = cands
        self.root = pmap.pop("/", None)
        self.empty = pmap.pop("", None)
        lens = tuple(sorted({len(k) for k in pmap}, reverse=True))
        self.pmap = pmap
        self.lens: tuple[int, ...] | None = None
        self.index: _PrefixIndex[_Cands] | None = None
        if len(lens) <= _MAX_PROBE_LENS:
            if lens:
                self.lens = lens
        else:
            self.index = _PrefixIndex(pmap, "/")

    def match(
        self,
        uri: str,
        method: str,
        host: str | None,
        raw_host: str | None,
        remote_addr: str,
        var: Any,
    ) -> Match | None:
        """Like :meth:`Router.match` within this tree (``host`` already lower-cased if any
        route of the tree has a host condition)."""
        cands = self.exact.get(uri)
        if cands is not None:
            if isinstance(cands, Match):
                return cands
            found = _resolve(cands, uri, method, host, raw_host, remote_addr, var)
            if found is not None:
                return found
        lens = self.lens
        if lens is not None:
            pmap = self.pmap
            for n in lens:
                # a key of length n cannot equal uri[:n] when the uri is shorter: no length check
                cands = pmap.get(uri[:n])
                if cands is not None:
                    found = _resolve(cands, uri, method, host, raw_host, remote_addr, var)
                    if found is not None:
                        return found
        elif self.index is not None:
            found = self._walk(self.index, uri, method, host, raw_host, remote_addr, var)
            if found is not None:
                return found
        cands = self.root
        if cands is not None and uri[:1] == "/":
            if isinstance(cands, _Entry):  # bare "/*" (or "/*name") without conditions
                m: Any = _MatchBuilder()
                m.spec = cands.spec
                m.params = {cands.names[0]: uri[1:]}
                m.matched_uri = cands.path_org
                m.matched_host = cands.label
                m.__class__ = Match
                return m  # type: ignore[no-any-return]
            found = _resolve(cands, uri, method, host, raw_host, remote_addr, var)
            if found is not None:
                return found
        cands = self.empty
        if cands is not None:
            return _resolve(cands, uri, method, host, raw_host, remote_addr, var)
        return None

    @staticmethod
    def _walk(
        index: _PrefixIndex[_Cands],
        path: str,
        method: str,
        host: str | None,
        raw_host: str | None,
        remote_addr: str,
        var: Any,
    ) -> Match | None:
        bases = index.bases
        blens = index.blens
        i = path.rfind("/", 0, index.max_blen)
        seg_end = path.find("/", i + 1)
        if seg_end < 0:
            seg_end = len(path)
        while True:
            if i + 1 in blens:
                b = bases.get(path[: i + 1])
                if b is not None:
                    start = i + 1
                    room = seg_end - start
                    tails = b[1]
                    for n in b[0]:
                        if n <= room:
                            cands = tails.get(path[start : start + n])
                            if cands is not None:
                                found = _resolve(cands, path, method, host, raw_host,
                                                 remote_addr, var)  # fmt: skip
                                if found is not None:
                                    return found
            if i < 0:
                return None
            seg_end = i
            i = path.rfind("/", 0, i)


def _uri_key(path: str, with_param: bool) -> str | None:
    """The radix key of a pattern: ``None`` for an exact path, else the prefix."""
    if with_param:
        pos = path.find(":")
        if pos >= 0:
            return path[:pos]
    pos = path.find("*")
    return None if pos < 0 else path[:pos]


def _ip_matcher(spec: RouteSpec) -> IpMatcher | None:
    if not spec.remote_addrs:
        return None
    try:
        return IpMatcher(spec.remote_addrs)
    except ValueError as exc:
        raise ValueError(f"route {spec.id}: invalid IP address: {exc}") from None


def _host_conds(hosts: tuple[str, ...]) -> tuple[tuple[bool, str, bool], ...]:
    conds = []
    for raw in hosts:
        h = raw.lower()
        wild = h.startswith("*")
        if wild:
            h = h[1:]
        conds.append((wild, h, ":" in h))
    return tuple(conds)


class Router:
    """Route table for one config generation.

    ``kind``: ``radixtree_host_uri`` (default: host-bearing routes first, by exact host, then
    wildcard hosts longest suffix first, then host-less routes), ``radixtree_uri`` (one tree,
    hosts are a condition) or ``radixtree_uri_with_parameter`` (like ``radixtree_uri`` plus
    ``:param`` segments).
    """

    __slots__ = ("_count", "_host_exact", "_host_mode", "_host_wild", "_hosts", "_tree", "kind")

    def __init__(self, routes: Iterable[RouteSpec], kind: str = "radixtree_host_uri") -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown router kind: {kind!r} (expected one of {', '.join(KINDS)})")
        self.kind = kind
        specs = list(routes)
        self._count = len(specs)
        self._host_mode = kind == "radixtree_host_uri"
        with_param = kind == "radixtree_uri_with_parameter"
        self._host_exact: dict[str, _UriTree] = {}
        self._host_wild: _PrefixIndex[tuple[tuple[str, _UriTree], ...]] | None = None
        if not self._host_mode:
            regs: list[tuple[_Entry, str | None]] = []
            for spec in specs:
                ipm = _ip_matcher(spec)
                conds = _host_conds(spec.hosts) if spec.hosts else None
                for path in spec.uris:
                    key = _uri_key(path, with_param)
                    regs.append((_Entry(spec, path, key, ipm, conds, ""), key))
            self._tree = _UriTree(regs)
            # whether the request host matters at all (else it is not even lower-cased)
            self._hosts = any(spec.hosts for spec in specs)
            return

        no_host: list[tuple[_Entry, str | None]] = []
        by_host: dict[str, list[tuple[_Entry, str | None]]] = {}
        for spec in specs:
            ipm = _ip_matcher(spec)
            labels = list(dict.fromkeys(h.lower() for h in spec.hosts)) if spec.hosts else []
            for path in spec.uris:
                key = _uri_key(path, False)
                if not labels:
                    no_host.append((_Entry(spec, path, key, ipm, None, ""), key))
                for label in labels:
                    by_host.setdefault(label, []).append(
                        (_Entry(spec, path, key, ipm, None, label), key)
                    )
        self._tree = _UriTree(no_host)
        wild: dict[str, list[tuple[str, _UriTree]]] = {}
        for label, regs in by_host.items():
            tree = _UriTree(regs)
            if "*" not in label:
                self._host_exact[label] = tree
                continue
            rev = label[::-1]
            wild.setdefault(rev[: rev.find("*")], []).append((label, tree))
        if wild:
            self._host_wild = _PrefixIndex(
                {k: tuple(sorted(v, key=lambda lt: -len(lt[0].encode()))) for k, v in wild.items()},
                ".",
            )
        self._hosts = bool(self._host_exact) or self._host_wild is not None

    def __len__(self) -> int:
        return self._count

    def match(
        self,
        uri: str,
        method: str,
        host: str | None,
        raw_host: str | None,
        remote_addr: str,
        var: Any,
    ) -> Match | None:
        """Find the route for a request.

        ``uri``: normalized path; ``host``: lower-cased Host without port (``None`` if absent);
        ``raw_host``: the Host header as sent (for ``host:port`` route hosts under
        ``radixtree_uri*``); ``var``: what ``vars`` expressions read.
        """
        if host is not None and self._hosts:
            host = host.lower()
            if self._host_mode:
                tree = self._host_exact.get(host)
                if tree is not None:
                    found = tree.match(uri, method, host, raw_host, remote_addr, var)
                    if found is not None:
                        return found
                if self._host_wild is not None:
                    for group in self._host_wild.lookup(host[::-1]):
                        for _label, tree in group:
                            found = tree.match(uri, method, host, raw_host, remote_addr, var)
                            if found is not None:
                                return found
        return self._tree.match(uri, method, host, raw_host, remote_addr, var)
