"""HTTP route matching with APISIX / lua-resty-radixtree semantics (spec §4.2-4.5).

Everything is built once in :class:`Router` (a new router per config generation); ``match`` only
does dict probes and the per-route condition checks.

Per URI tree: exact paths live in a dict; prefix keys (the pattern up to its first ``*``, or
up to its first ``:`` with the parameter router) are visited longest first among those that
prefix the path (see :class:`_UriTree`: one dict probe per ``/`` of the path or per distinct
key length, the catch-all ``/*`` last without any slicing). Candidates under one key are
ordered by priority (desc), then original pattern length (desc), then load order. The first
candidate whose conditions pass (method, remote_addr, host, vars, in that order) and whose
pattern check passes wins.

Hot path (``match`` runs for every proxied request): ``Router.match`` *is* the top tree's
matcher (no wrapper call); a key whose first candidate has no conditions resolves without
walking its candidates (a shared ``Match`` for plain patterns; for ``/literal/*name`` only the
capture dict and the ``Match`` are built, through :class:`_MatchBuilder`); a router holding
just an unconditional ``/*`` gets a dedicated matcher.

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

import copy
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

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

    __slots__ = ("matched_host", "matched_uri", "params", "spec")


if sorted(_MatchBuilder.__slots__) != sorted(Match.__slots__):  # __class__ swap: same layout
    raise TypeError("_MatchBuilder must mirror Match's slots")


def _new_match(spec: RouteSpec, params: dict[str, str] | None, uri: str, host: str) -> Match:
    """``Match(spec, params, uri, host)``, built faster (same object)."""
    m: Any = _MatchBuilder()
    m.spec = spec
    m.params = params
    m.matched_uri = uri
    m.matched_host = host
    m.__class__ = Match
    return m


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
        "seq",
        "spec",
        "tail_name",
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
        seq: int = 0,
    ) -> None:
        self.spec = spec
        self.seq = seq
        """Load order of the route (ties after priority and pattern length)."""
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
        self.tail_name = ""  # the capture name in _TAIL mode
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
        self.nocond = (
            self.methods is None and ipm is None and host_conds is None and self.vars is None
        )
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
            self.tail_name = names[0]
            return
        source = r"\/".join(parts) + (r"\/" if path.endswith("/") else "")
        try:
            self.regex = re.compile(pcre_to_python(source), re.ASCII)
            self.mode = _REGEX
        except (ValueError, re.error):
            self.mode = _NEVER


def _sorted(entries: list[_Entry]) -> tuple[_Entry, ...]:
    return tuple(sorted(entries, key=lambda e: (-e.priority, -e.blen, e.seq)))


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
        if conds is not None:  # index of the first route host matching the request
            if host is None:
                continue
            for j, (wild, h, colon) in enumerate(conds):
                target = raw_host if colon and raw_host else host
                if target.endswith(h) if wild else target == h:
                    hidx = j
                    break
            else:
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
            return _new_match(e.spec, {e.tail_name: path[e.key_len :]}, e.path_org, label)
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

    __slots__ = ("always", "cands", "exact", "merged", "no_host", "wild")

    THRESHOLD = 8
    MAX_MERGED_ALWAYS = 32
    """Precompute each exact host's candidate tuple when at most this many candidates apply to
    every host (memory: hosts x that many)."""

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
        self.no_host = tuple(cands[p] for p in always)
        self.merged: dict[str, tuple[_Entry, ...]] | None = None
        if len(always) <= self.MAX_MERGED_ALWAYS:
            self.merged = {h: self._pick(v) for h, v in self.exact.items()}

    def _pick(self, *extra: tuple[int, ...]) -> tuple[_Entry, ...]:
        cands = self.cands
        return tuple(cands[p] for p in sorted(set(self.always).union(*extra)))

    def select(self, host: str | None) -> tuple[_Entry, ...]:
        if host is None:
            return self.no_host
        wild = self.wild.lookup(host[::-1]) if self.wild is not None else None
        if not wild:
            merged = self.merged
            if merged is not None:
                return merged.get(host, self.no_host)
            hit = self.exact.get(host)
            return self.no_host if hit is None else self._pick(hit)
        hit = self.exact.get(host)
        if hit is not None:
            wild.append(hit)
        return self._pick(*wild)


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


class _CandsCache:
    """Candidate lists of the previous build, reused for keys whose entries did not change
    (the entries themselves are reused per unchanged route, so an identical tuple of entries
    means an identical candidate list)."""

    __slots__ = ("new", "old")

    def __init__(self, old: dict[tuple[_Entry, ...], _Cands | None]) -> None:
        self.old = old
        self.new: dict[tuple[_Entry, ...], _Cands | None] = {}

    def candidates(self, entries: list[_Entry]) -> _Cands | None:
        key = tuple(entries)
        try:
            cands = self.old[key]
        except KeyError:
            cands = _candidates(entries)
        self.new[key] = cands
        return cands


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
        return _tail_match(cands, path)
    if isinstance(cands, _HostFiltered):
        cands = cands.select(host)
    return _try(cands, path, method, host, raw_host, remote_addr, var)


def _tail_match(e: _Entry, path: str) -> Match:
    """The match of an unconditional ``/literal/*name`` entry (see the inlined copies)."""
    m: Any = _MatchBuilder()
    m.spec = e.spec
    m.params = {e.tail_name: path[e.key_len :]}
    m.matched_uri = e.path_org
    m.matched_host = e.label
    m.__class__ = Match
    return m


# how a _UriTree finds the prefix keys (besides "/" and "") that prefix a path
_WALK_NONE = 0  # no such keys
_WALK_SLASH = 1  # all keys end in "/": one probe per "/" of the path at a key length
_WALK_LENS = 2  # few distinct key lengths: one probe per length
_WALK_INDEX = 3  # _PrefixIndex
# keys not all ending in "/": up to this many distinct lengths are probed one by one (measured:
# cheaper than the index walk, whose str.rfind calls cost more than a probe, even at 8 lengths)
_MAX_PROBE_LENS = 8


class _HostTrees:
    """What a :class:`_UriTree` does with the request host before its own routes: lower-case it
    (for host conditions), and under ``radixtree_host_uri`` (host-less tree) try the trees of
    the exact host, then of the wildcard hosts (longest suffix first)."""

    __slots__ = ("exact", "wild")

    def __init__(
        self,
        exact: dict[str, _MatchFn],
        wild: _PrefixIndex[tuple[_MatchFn, ...]] | None,
    ) -> None:
        self.exact = exact
        self.wild = wild


class _UriTree:
    """Exact map + prefix keys over the URI patterns of a set of routes.

    Prefix keys that prefix the path are visited longest first. The catch-all keys ``"/"``
    (``/*``) and ``""`` are kept aside and checked last, without slicing. The others are found
    by one dict probe per ``/`` of the path whose position is a key length (when every key
    ends in ``/``, the usual ``/api/*`` shape), else by one probe per distinct key length (few
    lengths) or through a :class:`_PrefixIndex` (one probe per ``/``, then per tail length).

    A key whose first candidate always wins (no conditions, plain or ``/literal/*name``) is
    resolved inline; anything else goes through :func:`_resolve` / :func:`_try`. ``hosts``
    (:class:`_HostTrees`) is what happens with the request host before all that.
    """

    __slots__ = (
        "empty",
        "exact",
        "hosts",
        "index",
        "lens",
        "pmap",
        "root",
        "shape",
        "slash_lens",
        "slash_lo",
        "slash_max",
        "walk",
    )

    def __init__(
        self,
        exact: dict[str, _Cands],
        pmap: dict[str, _Cands],
        hosts: _HostTrees | None,
        shape: tuple[dict[int, int], int] | None = None,
    ) -> None:
        """``exact``: path -> candidates; ``pmap``: prefix key -> candidates, including the
        catch-all keys ``"/"`` and ``""`` (both dicts are owned by the tree from now on).
        ``shape``: ``(key length -> number of keys, number of keys not ending in "/")`` over
        ``pmap`` without the catch-all keys, when the caller kept it up to date."""
        self.hosts = hosts
        self.exact = exact or None
        self.root = pmap.pop("/", None)
        self.empty = pmap.pop("", None)
        self.pmap = pmap
        if shape is None:
            counts: dict[int, int] = {}
            for k in pmap:
                counts[len(k)] = counts.get(len(k), 0) + 1
            shape = (counts, sum(not k.endswith("/") for k in pmap))
        self.shape = shape
        lens = sorted(shape[0], reverse=True)
        self.walk = _WALK_NONE
        self.slash_lens: frozenset[int] = frozenset()
        # slash walk: the "/" closing a key of length n sits at n - 1, in [slash_lo, slash_max)
        self.slash_max = self.slash_lo = 0
        self.lens: tuple[int, ...] = ()
        self.index: _PrefixIndex[_Cands] | None = None
        if not pmap:
            pass
        elif not shape[1]:  # every key ends in "/" (the "/api/*" shape): lengths >= 2
            self.walk = _WALK_SLASH
            self.slash_lens = frozenset(lens)
            self.slash_max = lens[0]
            self.slash_lo = lens[-1] - 1
        elif len(lens) <= _MAX_PROBE_LENS:
            self.walk = _WALK_LENS
            self.lens = tuple(lens)
        else:
            self.walk = _WALK_INDEX
            self.index = _PrefixIndex(pmap, "/")

    def full_pmap(self) -> dict[str, _Cands]:
        """A copy of the prefix map, catch-all keys included (what ``__init__`` takes)."""
        pmap = dict(self.pmap)
        if self.root is not None:
            pmap["/"] = self.root
        if self.empty is not None:
            pmap[""] = self.empty
        return pmap

    def with_hosts(self, hosts: _HostTrees | None) -> _UriTree:
        """The same tree with another host layer (a copy; this tree is left as it is)."""
        tree = copy.copy(self)
        tree.hosts = hosts
        return tree

    def match(
        self,
        uri: str,
        method: str,
        host: str | None,
        raw_host: str | None,
        remote_addr: str,
        var: Any,
    ) -> Match | None:
        """Like ``Router.match``, within this tree."""
        hosts = self.hosts
        if hosts is not None and host is not None:
            host = host.lower()
            tree = hosts.exact.get(host)
            if tree is not None:
                found = tree(uri, method, host, raw_host, remote_addr, var)
                if found is not None:
                    return found
            if hosts.wild is not None:
                for group in hosts.wild.lookup(host[::-1]):
                    for tree in group:
                        found = tree(uri, method, host, raw_host, remote_addr, var)
                        if found is not None:
                            return found
        exact = self.exact
        if exact is not None:
            cands = exact.get(uri)
            if cands is not None:
                if cands.__class__ is Match:
                    return cands
                if cands.__class__ is tuple:
                    found = _try(cands, uri, method, host, raw_host, remote_addr, var)
                else:
                    found = _resolve(cands, uri, method, host, raw_host, remote_addr, var)
                if found is not None:
                    return found
        m: Any
        walk = self.walk
        if walk == _WALK_SLASH:
            slash_lens = self.slash_lens
            pmap = self.pmap
            # a "/" at i closes the key uri[:i + 1]; i == 0 (key "/") is the root, below
            lo = self.slash_lo
            i = uri.rfind("/", lo, self.slash_max)
            while i > 0:
                if i + 1 in slash_lens:
                    cands = pmap.get(uri[: i + 1])
                    if cands is not None:
                        if cands.__class__ is _Entry:  # _tail_match, inlined
                            e: Any = cands
                            m = _MatchBuilder()
                            m.spec = e.spec
                            m.params = {e.tail_name: uri[i + 1 :]}
                            m.matched_uri = e.path_org
                            m.matched_host = e.label
                            m.__class__ = Match
                            return m
                        found = _resolve(cands, uri, method, host, raw_host, remote_addr, var)
                        if found is not None:
                            return found
                i = uri.rfind("/", lo, i)
        elif walk == _WALK_LENS:
            pmap = self.pmap
            for n in self.lens:
                # a key of length n cannot equal uri[:n] when the uri is shorter: no length check
                cands = pmap.get(uri[:n])
                if cands is not None:
                    found = _resolve(cands, uri, method, host, raw_host, remote_addr, var)
                    if found is not None:
                        return found
        elif walk == _WALK_INDEX:
            assert self.index is not None
            found = self._walk(self.index, uri, method, host, raw_host, remote_addr, var)
            if found is not None:
                return found
        cands = self.root
        if cands is not None and uri and uri[0] == "/":
            if cands.__class__ is _Entry:  # bare "/*" (or "/*name"): _tail_match, inlined
                e = cands
                m = _MatchBuilder()
                m.spec = e.spec
                m.params = {e.tail_name: uri[1:]}
                m.matched_uri = e.path_org
                m.matched_host = e.label
                m.__class__ = Match
                return m
            found = _resolve(cands, uri, method, host, raw_host, remote_addr, var)
            if found is not None:
                return found
        cands = self.empty
        if cands is not None:
            return _resolve(cands, uri, method, host, raw_host, remote_addr, var)
        return None

    def matcher(self) -> _MatchFn:
        """The fastest equivalent of :meth:`match` for this tree's shape."""
        if (
            self.hosts is None
            and self.exact is None
            and self.walk == _WALK_NONE
            and type(self.root) is _Entry
        ):
            return self._match_catch_all
        return self.match

    def _match_catch_all(
        self,
        uri: str,
        method: str,
        host: str | None,
        raw_host: str | None,
        remote_addr: str,
        var: Any,
    ) -> Match | None:
        """:meth:`match` for a tree whose only key is ``"/"`` (plus maybe ``""``), held by an
        unconditional ``/*`` or ``/*name`` route: the usual single catch-all table."""
        if uri and uri[0] == "/":
            e: Any = self.root
            m: Any = _MatchBuilder()
            m.spec = e.spec
            m.params = {e.tail_name: uri[1:]}
            m.matched_uri = e.path_org
            m.matched_host = e.label
            m.__class__ = Match
            return m
        return self.match(uri, method, host, raw_host, remote_addr, var)

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
        # The same walk as _PrefixIndex.lookup, kept inline on purpose: it resolves each
        # candidate as it is found and stops at the first match, without building a list.
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


class _MatchFn(Protocol):
    def __call__(
        self,
        uri: str,
        method: str,
        host: str | None,
        raw_host: str | None,
        remote_addr: str,
        var: Any,
    ) -> Match | None: ...


_Reg = tuple[_Entry, str | None, str]
"""One registration of a route: ``(entry, uri key or None for an exact path, host label)``."""


class _Group:
    """The registrations behind one URI tree: one host label under ``radixtree_host_uri``
    (``""``: the host-less routes), or all routes under the other kinds. Never mutated once
    a router holds it."""

    __slots__ = ("exact", "n_host_conds", "prefix", "tree")

    def __init__(
        self,
        exact: dict[str, tuple[_Entry, ...]],
        prefix: dict[str, tuple[_Entry, ...]],
        n_host_conds: int,
    ) -> None:
        self.exact = exact
        """exact path -> its entries (any order; candidates are sorted when built)"""
        self.prefix = prefix
        """prefix key -> its entries"""
        self.n_host_conds = n_host_conds
        """entries with host conditions (``radixtree_uri*``): the tree lower-cases the host"""
        self.tree: _UriTree | None = None


def _slot_cands(entries: tuple[_Entry, ...] | None) -> _Cands | None:
    return _candidates(list(entries)) if entries else None


class Router:
    """Route table for one config generation.

    ``kind``: ``radixtree_host_uri`` (default: host-bearing routes first, by exact host, then
    wildcard hosts longest suffix first, then host-less routes), ``radixtree_uri`` (one tree,
    hosts are a condition) or ``radixtree_uri_with_parameter`` (like ``radixtree_uri`` plus
    ``:param`` segments).

    A router is immutable once built. :meth:`updated` derives the next one from a few changed
    routes, sharing everything they do not touch (cost: the changed routes plus a copy of the
    touched trees' dicts, not a rebuild of the table).
    """

    __slots__ = (
        "_cands",
        "_entries",
        "_groups",
        "_host_exact",
        "_host_wild",
        "_next_seq",
        "_updatable",
        "kind",
        "match",
    )
    _cands: dict[tuple[_Entry, ...], _Cands | None]

    match: _MatchFn
    """``match(uri, method, host, raw_host, remote_addr, var) -> Match | None``: find the route
    for a request.

    ``uri``: normalized path; ``host``: lower-cased Host without port (``None`` if absent);
    ``raw_host``: the Host header as sent (for ``host:port`` route hosts under
    ``radixtree_uri*``); ``var``: what ``vars`` expressions read.

    Set per instance to the (host-less) top tree's matcher, so that no extra call level sits
    on the hot path; the host trees hang off that tree (:class:`_HostTrees`).
    """

    def __init__(
        self,
        routes: Iterable[RouteSpec],
        kind: str = "radixtree_host_uri",
        previous: Router | None = None,
    ) -> None:
        """Build the tables; routes load in the order given. ``previous``: a router of the
        same kind whose per-route entries are reused for the very same :class:`RouteSpec`
        objects (a rebuild that changed one route recompiles one route's entries)."""
        if kind not in KINDS:
            raise ValueError(f"unknown router kind: {kind!r} (expected one of {', '.join(KINDS)})")
        self.kind = kind
        same = previous is not None and previous.kind == kind
        old = previous._entries if previous is not None and same else {}
        cache = _CandsCache(previous._cands if previous is not None and same else {})
        self._cands = cache.new
        self._entries: dict[str, tuple[RouteSpec, list[_Reg], int]] = {}
        self._updatable = True
        slots: dict[str, tuple[dict[str, list[_Entry]], dict[str, list[_Entry]], list[int]]] = {}
        seq = -1
        for seq, spec in enumerate(routes):
            if spec.id in self._entries:
                self._updatable = False  # duplicate ids: only a full rebuild is right
            for entry, key, label in self._regs_of(spec, old.get(spec.id), seq):
                slot = slots.get(label)
                if slot is None:
                    slot = slots[label] = ({}, {}, [0])
                bucket = slot[0] if key is None else slot[1]
                bucket.setdefault(entry.path_org if key is None else key, []).append(entry)
                if entry.hosts is not None:
                    slot[2][0] += 1
        self._next_seq = seq + 1
        groups: dict[str, _Group] = {}
        for label, (exact, prefix, n) in slots.items():
            group = groups[label] = _Group(
                {p: tuple(es) for p, es in exact.items()},
                {k: tuple(es) for k, es in prefix.items()},
                n[0],
            )
            if label:
                group.tree = _UriTree(
                    _cands_map(exact, cache.candidates), _cands_map(prefix, cache.candidates),
                    None,
                )
        top = groups.get("") or _Group({}, {}, 0)
        groups[""] = top
        self._groups = groups
        self._host_exact: dict[str, _MatchFn] = {}
        self._host_wild: dict[str, _MatchFn] = {}
        for label, group in groups.items():
            if label and group.tree is not None:
                target = self._host_wild if "*" in label else self._host_exact
                target[label] = group.tree.matcher()
        top.tree = _UriTree(
            _cands_map(top.exact, cache.candidates),
            _cands_map(top.prefix, cache.candidates),
            self._host_layer(top.n_host_conds),
        )
        self.match = top.tree.matcher()

    def updated(self, changes: Mapping[str, RouteSpec | None]) -> Router:
        """The router with the routes of ``changes`` replaced (``None``: removed). A changed
        route keeps its load order; a new one loads last. This router is left as it is.

        Raises ``ValueError`` when this router was built from duplicate route ids or was
        updated already (its per-route table went to the router that update made)."""
        if not self._updatable:
            raise ValueError("router built from duplicate route ids: rebuild it instead")
        new = Router.__new__(Router)
        new.kind = self.kind
        new._cands = self._cands  # read-only here; only a full build refreshes it
        new._updatable = True
        new._next_seq = self._next_seq
        # the per-route table is taken over, not copied (it is not used to match): this router
        # can no longer be updated (a later update of it rebuilds instead)
        entries = new._entries = self._entries
        self._updatable = False
        # (label, is prefix, path or key) -> (entries leaving, entries arriving)
        edits: dict[tuple[str, bool, str], tuple[list[_Entry], list[_Entry]]] = {}
        for rid, spec in changes.items():
            hit = entries.pop(rid, None)
            if hit is not None:
                if hit[0] is spec:
                    entries[rid] = hit
                    continue
                for entry, key, label in hit[1]:
                    slot = (label, key is not None, entry.path_org if key is None else key)
                    edits.setdefault(slot, ([], []))[0].append(entry)
            if spec is None:
                continue
            if hit is not None:
                seq = hit[2]
            else:
                seq = new._next_seq
                new._next_seq += 1
            for entry, key, label in new._regs_of(spec, None, seq):
                slot = (label, key is not None, entry.path_org if key is None else key)
                edits.setdefault(slot, ([], []))[1].append(entry)
        by_label: dict[str, list[tuple[bool, str, list[_Entry], list[_Entry]]]] = {}
        for (label, is_prefix, name), (gone, came) in edits.items():
            by_label.setdefault(label, []).append((is_prefix, name, gone, came))
        groups = new._groups = dict(self._groups)
        hosts_changed = any(label for label in by_label)
        if hosts_changed:
            new._host_exact, new._host_wild = dict(self._host_exact), dict(self._host_wild)
        else:
            new._host_exact, new._host_wild = self._host_exact, self._host_wild
        for label, slot_edits in by_label.items():
            if not label:
                continue
            group = _edited(groups.get(label), slot_edits, _cond_hosts)
            trees = new._host_wild if "*" in label else new._host_exact
            if group is None:
                groups.pop(label, None)
                trees.pop(label, None)
            else:
                groups[label] = group
                assert group.tree is not None
                trees[label] = group.tree.matcher()
        top = groups[""]
        if "" in by_label:
            edited = _edited(top, by_label[""], new._host_layer, keep_empty=True)
            assert edited is not None
            top = groups[""] = edited
        elif hosts_changed:
            old_tree = top.tree
            assert old_tree is not None
            top = groups[""] = _Group(top.exact, top.prefix, top.n_host_conds)
            top.tree = old_tree.with_hosts(new._host_layer(top.n_host_conds))
        assert top.tree is not None
        new.match = top.tree.matcher()
        return new

    def _host_layer(self, n_host_conds: int) -> _HostTrees | None:
        """What the top tree (with ``n_host_conds`` host-conditioned entries) does with the
        host before its own routes (see :class:`_HostTrees`)."""
        if self._host_exact or self._host_wild:
            wild: dict[str, list[tuple[str, _MatchFn]]] = {}
            for label, tree in self._host_wild.items():
                rev = label[::-1]
                wild.setdefault(rev[: rev.find("*")], []).append((label, tree))
            index = (
                _PrefixIndex(
                    {
                        k: tuple(t for _l, t in sorted(v, key=lambda lt: -len(lt[0].encode())))
                        for k, v in wild.items()
                    },
                    ".",
                )
                if wild
                else None
            )
            return _HostTrees(self._host_exact, index)
        return _cond_hosts(n_host_conds)

    def _regs_of(
        self, spec: RouteSpec, hit: tuple[RouteSpec, list[_Reg], int] | None, seq: int
    ) -> list[_Reg]:
        """The registrations of one route, reused when ``hit`` holds this very spec."""
        if hit is not None and hit[0] is spec:
            regs = hit[1]
            for entry, _key, _label in regs:
                entry.seq = seq  # only ever read while sorting a new build's candidates
        else:
            regs = []
            ipm = _ip_matcher(spec)
            if self.kind == "radixtree_host_uri":
                labels = list(dict.fromkeys(h.lower() for h in spec.hosts)) if spec.hosts else []
                for path in spec.uris:
                    key = _uri_key(path, False)
                    if not labels:
                        regs.append((_Entry(spec, path, key, ipm, None, "", seq), key, ""))
                    for label in labels:
                        regs.append((_Entry(spec, path, key, ipm, None, label, seq), key, label))
            else:
                with_param = self.kind == "radixtree_uri_with_parameter"
                conds = _host_conds(spec.hosts) if spec.hosts else None
                for path in spec.uris:
                    key = _uri_key(path, with_param)
                    regs.append((_Entry(spec, path, key, ipm, conds, "", seq), key, ""))
        self._entries[spec.id] = (spec, regs, seq)
        return regs

    def __len__(self) -> int:
        return len(self._entries)


def _cands_map(
    slots: Mapping[str, Iterable[_Entry]], candidates: Callable[[list[_Entry]], _Cands | None]
) -> dict[str, _Cands]:
    out: dict[str, _Cands] = {}
    for name, entries in slots.items():
        cands = candidates(list(entries))
        if cands is not None:
            out[name] = cands
    return out


def _edited(
    group: _Group | None,
    slot_edits: list[tuple[bool, str, list[_Entry], list[_Entry]]],
    hosts: Callable[[int], _HostTrees | None],
    keep_empty: bool = False,
) -> _Group | None:
    """A copy of ``group`` with ``slot_edits`` applied and its tree updated for the touched
    slots only; ``None`` when nothing is left (unless ``keep_empty``)."""
    exact = dict(group.exact) if group is not None else {}
    prefix = dict(group.prefix) if group is not None else {}
    n_host_conds = group.n_host_conds if group is not None else 0
    old_tree = group.tree if group is not None else None
    exact_map = dict(old_tree.exact or {}) if old_tree is not None else {}
    pmap = old_tree.full_pmap() if old_tree is not None else {}
    counts = dict(old_tree.shape[0]) if old_tree is not None else {}
    not_slash = old_tree.shape[1] if old_tree is not None else 0
    for is_prefix, name, gone, came in slot_edits:
        if is_prefix and name not in ("/", ""):
            had = name in pmap
        slots, cands_map = (prefix, pmap) if is_prefix else (exact, exact_map)
        doomed = {id(e) for e in gone}
        kept = tuple(e for e in slots.get(name, ()) if id(e) not in doomed) + tuple(came)
        n_host_conds += sum(e.hosts is not None for e in came)
        n_host_conds -= sum(e.hosts is not None for e in gone)
        if kept:
            slots[name] = kept
        else:
            slots.pop(name, None)
        cands = _slot_cands(kept)
        if cands is None:
            cands_map.pop(name, None)
        else:
            cands_map[name] = cands
        if is_prefix and name not in ("/", ""):
            step = (name in pmap) - had
            if step:
                n = len(name)
                counts[n] = counts.get(n, 0) + step
                if not counts[n]:
                    del counts[n]
                if not name.endswith("/"):
                    not_slash += step
    if not exact and not prefix and not keep_empty:
        return None
    out = _Group(exact, prefix, n_host_conds)
    out.tree = _UriTree(exact_map, pmap, hosts(n_host_conds), (counts, not_slash))
    return out


def _cond_hosts(n_host_conds: int) -> _HostTrees | None:
    """The host layer of a tree without host trees: lower-case the request host when some
    entry has host conditions."""
    return _HostTrees({}, None) if n_host_conds else None
