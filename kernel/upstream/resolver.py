"""Asynchronous DNS for upstream nodes with a TTL cache (spec §5.2).

* Lookups go through ``loop.getaddrinfo`` (the loop's default executor), so ``/etc/hosts`` and
  the system resolver configuration apply.
* Answers are cached for ``valid`` seconds (config ``dns_resolver_valid``, default 30).
* After expiry the stale answer is still returned while one background refresh runs; if the
  refresh keeps failing, the stale answer is served for at most ``max_stale`` more seconds
  (default: ``valid``), then the name is looked up in the foreground again (and may fail).
* Concurrent lookups of one name share a single ``getaddrinfo`` call.
* Failures raise :class:`ResolveError`.

Address order: IPv4 answers first, then IPv6 (the order APISIX's DNS client queries records
in), each family in the order the system returned them.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass

from .nodes import Node, is_ip_literal

__all__ = ["ResolveError", "Resolver", "resolve_nodes"]

log = logging.getLogger("sixgate.upstream.dns")

_clock = time.monotonic  # module attribute so tests can drive the TTL logic
_RETRY_AFTER_FAILURE = 1.0  # seconds between background refresh attempts of a stale name
_MEMO_MAX = 1024


class ResolveError(Exception):
    """A hostname could not be resolved."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"failed to resolve {host!r}: {reason}")
        self.host = host
        self.reason = reason


@dataclass(slots=True)
class _Entry:
    addrs: list[str]
    expires: float  # fresh until (monotonic)
    retry_at: float  # no background refresh before this (after a failed refresh)


class Resolver:
    """Caching asynchronous resolver; one per worker process (it is not thread-safe)."""

    def __init__(
        self,
        valid: float = 30,
        *,
        max_stale: float | None = None,
        family: int = socket.AF_UNSPEC,
    ) -> None:
        self.valid = float(valid)
        self.max_stale = self.valid if max_stale is None else float(max_stale)
        self.family = family
        self._cache: dict[str, _Entry] = {}
        self._inflight: dict[str, asyncio.Task[list[str]]] = {}
        # resolve_nodes memo: id(input list) -> (input list, answers key, output list)
        self._memo: dict[int, tuple[list[Node], tuple[str, ...], list[Node]]] = {}

    async def resolve(self, host: str) -> list[str]:
        """IP addresses of ``host`` (an IP literal is returned as is, without a lookup)."""
        entry = self._cache.get(host)
        if entry is not None:
            now = _clock()
            if now < entry.expires:
                return entry.addrs
            if now - entry.expires <= self.max_stale:
                if host not in self._inflight and now >= entry.retry_at:
                    self._start(host)
                return entry.addrs
            del self._cache[host]
        if is_ip_literal(host):
            return [host]
        task = self._inflight.get(host)
        if task is None:
            task = self._start(host)
        # shield: a cancelled waiter must not cancel the lookup others share
        return await asyncio.shield(task)

    def invalidate(self, host: str | None = None) -> None:
        """Forget one cached name, or all of them."""
        if host is None:
            self._cache.clear()
            self._memo.clear()
        else:
            self._cache.pop(host, None)

    def _start(self, host: str) -> asyncio.Task[list[str]]:
        task = asyncio.get_running_loop().create_task(self._lookup(host))
        task.add_done_callback(_retrieve)
        self._inflight[host] = task
        return task

    async def _lookup(self, host: str) -> list[str]:
        try:
            loop = asyncio.get_running_loop()
            try:
                infos = await loop.getaddrinfo(
                    host, None, family=self.family, type=socket.SOCK_STREAM
                )
            except (OSError, UnicodeError) as exc:
                entry = self._cache.get(host)
                if entry is not None:  # background refresh: keep serving the stale answer
                    entry.retry_at = _clock() + _RETRY_AFTER_FAILURE
                    log.warning("DNS refresh of %s failed, serving stale answer: %s", host, exc)
                raise ResolveError(host, str(exc) or type(exc).__name__) from exc
            v4: list[str] = []
            v6: list[str] = []
            for fam, _type, _proto, _canon, sockaddr in infos:
                ip = str(sockaddr[0])
                bucket = v4 if fam == socket.AF_INET else v6
                if ip not in bucket:
                    bucket.append(ip)
            addrs = v4 + v6
            if not addrs:
                raise ResolveError(host, "no address")
            now = _clock()
            self._cache[host] = _Entry(addrs, now + self.valid, now)
            return addrs
        finally:
            self._inflight.pop(host, None)


def _retrieve(task: asyncio.Task[list[str]]) -> None:
    # a background refresh may fail with nobody awaiting it: mark its exception as seen
    if not task.cancelled():
        task.exception()


async def resolve_nodes(
    nodes: list[Node], resolver: Resolver, *, expand: bool = False
) -> list[Node]:
    """Nodes with every hostname replaced by an IP; the hostname is kept as ``domain``.

    * No hostname among ``nodes`` → ``nodes`` itself is returned.
    * ``expand=False`` (APISIX's behaviour): a name node becomes one node, the first address.
    * ``expand=True``: one node per address, each with the name node's weight and priority.
    * While the answers stay the same, the same output list (and the same ``Node`` objects, with
      their balancer state) is returned for the same input list, so callers can cache pickers
      by the identity of the returned list.

    Raises :class:`ResolveError` if a name fails.
    """
    for n in nodes:
        if not n.is_ip:
            break
    else:
        return nodes

    answers: list[str] = []
    per_node: list[list[str] | None] = []
    for n in nodes:
        if n.is_ip:
            per_node.append(None)
            continue
        addrs = await resolver.resolve(n.host)
        if not expand:
            addrs = addrs[:1]
        per_node.append(addrs)
        answers.extend(addrs)
        answers.append("")  # separator: keeps the key unambiguous per node
    key = (*answers, "1" if expand else "0")

    memo = resolver._memo
    hit = memo.get(id(nodes))
    if hit is not None and hit[0] is nodes and hit[1] == key:
        return hit[2]

    out: list[Node] = []
    for n, ips in zip(nodes, per_node, strict=True):
        if ips is None:
            out.append(n)
            continue
        for ip in ips:
            out.append(Node(ip, n.port, n.weight, n.priority, n.host, n.metadata))
    if len(memo) >= _MEMO_MAX:
        memo.clear()
    memo[id(nodes)] = (nodes, key, out)
    return out
