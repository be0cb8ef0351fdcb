"""Node-wide shared counters: numbers shared by every worker process of a sixgate node.

:func:`shared_counters` is sixgate's ``lua_shared_dict`` for numbers. It is what rate limits
need: limit-count's fixed windows, limit-req's leaky buckets, limit-conn's concurrent counts.
The SDK only defines the surface. The kernel installs the implementation (see
:mod:`plugin_sdk.runtime`), and the SDK never imports the kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from .runtime import _current

T = TypeVar("T")

Pair = tuple[float, float]
"""The two numbers of an entry as :meth:`SharedCounters.update` sees them: ``(value, aux)``."""


class SharedCountersBackend(Protocol):
    """What the kernel implements for one name (see :class:`SharedCounters`)."""

    def incr(
        self, key: str, delta: int | float = 1, init: int | float = 0, ttl: float | None = None
    ) -> int | float: ...

    def incr_ttl(
        self, key: str, delta: int | float = 1, init: int | float = 0, ttl: float | None = None
    ) -> tuple[int | float, float | None]: ...

    def get(self, key: str, default: Any = None) -> Any: ...

    def set(self, key: str, value: int | float, ttl: float | None = None) -> None: ...

    def add(self, key: str, value: int | float, ttl: float | None = None) -> bool: ...

    def delete(self, key: str) -> bool: ...

    def ttl(self, key: str) -> float | None: ...

    def update(
        self, key: str, fn: Callable[..., tuple[Pair | None, T]], *args: Any,
        ttl: float | None = None,
    ) -> T: ...

    def clear(self) -> None: ...

    @property
    def capacity(self) -> int: ...


class SharedCounters:
    """Numbers that all worker processes of the node share, keyed by string. Every operation is
    atomic across the node, and each costs 1-2 µs with no system call.

    Get a handle with :func:`shared_counters`, typically once at module level::

        from plugin_sdk import Response, hookimpl, shared_counters

        counts = shared_counters("plugin-limit-count")

        @hookimpl
        def access(ctx, conf):
            key = f"{ctx.var['route_id']}:{ctx.var['remote_addr']}"
            remaining = counts.incr(key, -1, init=conf["count"], ttl=conf["time_window"])
            if remaining < 0:
                return Response(429)

    **When to use it.** Use it for state that must hold for the whole node rather than for
    one worker: rate-limit counters, concurrency counts, anything a client must not be able to
    multiply by reaching another worker. Values are numbers only (``int`` or ``float``). For
    other Python objects, or for state that may stay per worker, use
    :func:`~plugin_sdk.shared_dict`, which is cheaper and holds any object.

    **Across workers.** With ``nginx_config.worker_processes: N`` all N workers read and write
    the same entries, and so does a worker restarted after a crash. Every call takes a lock that
    is shared across processes, so ``incr`` never loses an update and never gives two callers
    the same result. If a worker dies while holding that lock, the lock is recovered.

    **What survives.** The data lives in the kernel, so a plugin hot reload finds it as it was.
    Stopping the node drops it. Keys are strings. A key longer than 88 bytes (UTF-8) is stored
    as a digest, at no extra cost in space.

    **TTL.** ``ttl`` is in seconds. An expired entry reads as absent, and its space is reused.

    **Capacity.** Capacity is fixed: a zone of ``nginx_config.http.lua_shared_dict.<name>``
    bytes, as in APISIX (128 bytes an entry: 10m holds 81,792). ``plugin-limit-count``,
    ``plugin-limit-req`` and ``plugin-limit-conn`` default to 10m each. Other names share the
    10m zone ``sixgate-default`` (sized by the same key). Zones are sized when the node
    starts, and a reload does not change them. When a zone is full, the entries that expire
    soonest are evicted, and an error is logged. For a rate limit this means an evicted key
    starts a new window: the limit fails open. APISIX's ``lua_shared_dict`` also evicts when
    full.

    Integers are exact up to 2**53. Calls are plain, with no ``await``, and are safe from any
    thread. Never use the counters from inside an :meth:`update` function. A call that needs
    the lock ``update`` holds raises ``RuntimeError``, and a call on another lock could
    deadlock two workers.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._backend: SharedCountersBackend | None = None

    def _resolve(self) -> SharedCountersBackend:
        backend = self._backend
        if backend is None:
            backend = self._backend = _current().shared_counters(self.name)
            # From now on the per-request calls go straight to the kernel's methods (instance
            # attributes shadow the methods below): one Python call less per operation.
            vars(self).update({name: getattr(backend, name) for name in _DIRECT})
        return backend

    def incr(
        self, key: str, delta: int | float = 1, init: int | float = 0, ttl: float | None = None
    ) -> int | float:
        """Add ``delta`` to ``key`` and return the new value, atomically for the whole node.

        An absent or expired key starts at ``init + delta``. With ``ttl`` it expires ``ttl``
        seconds after that. Later increments keep that expiry, which makes a fixed window.
        This is ``ngx.shared.DICT:incr(key, delta, init, init_ttl)``. limit-count uses it as
        ``incr(key, -cost, init=limit, ttl=window)``. limit-conn uses ``incr(key, 1)`` when a
        request starts and ``incr(key, -1)`` when it ends.
        """
        backend = self._backend
        if backend is None:
            backend = self._resolve()
        return backend.incr(key, delta, init, ttl)

    def incr_ttl(
        self, key: str, delta: int | float = 1, init: int | float = 0, ttl: float | None = None
    ) -> tuple[int | float, float | None]:
        """:meth:`incr`, and also the seconds left before ``key`` expires, read in the same
        atomic step. The second number is ``None`` when the key never expires.

        This is limit-count in one call::

            remaining, reset = counts.incr_ttl(key, -1, init=conf["count"],
                                               ttl=conf["time_window"])
        """
        backend = self._backend
        if backend is None:
            backend = self._resolve()
        return backend.incr_ttl(key, delta, init, ttl)

    def get(self, key: str, default: Any = None) -> Any:
        """The number under ``key``, or ``default`` when it is absent or expired."""
        backend = self._backend
        if backend is None:
            backend = self._resolve()
        return backend.get(key, default)

    def set(self, key: str, value: int | float, ttl: float | None = None) -> None:
        """Store ``value`` (a number) under ``key``. It expires after ``ttl`` seconds
        (``None``: never)."""
        self._resolve().set(key, value, ttl)

    def add(self, key: str, value: int | float, ttl: float | None = None) -> bool:
        """Store ``value`` only when ``key`` is absent or expired. Returns ``True`` when it
        stored the value."""
        return self._resolve().add(key, value, ttl)

    def delete(self, key: str) -> bool:
        """Remove ``key``. Returns ``True`` when the key was present."""
        return self._resolve().delete(key)

    def ttl(self, key: str) -> float | None:
        """Seconds until ``key`` expires, or ``None`` when it never does. Raises ``KeyError``
        when the key is absent (for example, the reset time of a limit-count window)."""
        return self._resolve().ttl(key)

    def update(
        self, key: str, fn: Callable[..., tuple[Pair | None, T]], *args: Any,
        ttl: float | None = None,
    ) -> T:
        """Read and write the two numbers of ``key`` in one atomic step, and return ``fn``'s
        result.

        ``fn(current, *args)`` runs under the key's lock. ``current`` is ``(value, aux)``
        (floats), or ``None`` when the key is absent or expired. ``fn`` returns
        ``(new, result)``. ``new`` is the ``(value, aux)`` to store, or ``None`` to leave the
        entry as it is. With ``ttl`` every write sets the expiry to ``ttl`` seconds from now,
        so an entry left idle that long is forgotten. Without ``ttl`` an existing entry keeps
        its expiry, and a new entry never expires.

        ``fn`` must be quick and pure. It runs while the other workers wait for that lock. It
        must not use any shared counters, and it must not await, sleep or do I/O. A leaky bucket
        (limit-req)::

            def leak(state, now, rate, burst):        # module level: no closure per request
                if state is None:
                    excess = 0.0
                else:
                    excess = max(state[0] - rate * (now - state[1]) + 1, 0.0)
                    if excess > burst:
                        return None, None             # rejected: state unchanged
                return (excess, now), excess          # stored; the delay is excess / rate

            excess = buckets.update(key, leak, time.monotonic(), rate, burst,
                                    ttl=burst / rate + 1)
        """
        return self._resolve().update(key, fn, *args, ttl=ttl)

    def clear(self) -> None:
        """Remove every key of this name, from every worker's view."""
        self._resolve().clear()

    @property
    def capacity(self) -> int:
        """How many entries fit in this name's zone. Other names that share the zone use the
        same space."""
        return self._resolve().capacity

    def __contains__(self, key: str) -> bool:
        return self.get(key, _MISSING) is not _MISSING

    def __repr__(self) -> str:
        return f"<SharedCounters {self.name!r}>"


_MISSING = object()
_DIRECT = ("incr", "incr_ttl", "get", "update")


def shared_counters(name: str) -> SharedCounters:
    """The node-wide :class:`SharedCounters` called ``name``.

    Every call with the same name reaches the same entries: from any plugin, any plugin
    generation and any worker process of the node. Use the ``lua_shared_dict`` names of
    APISIX's plugins where they apply (``"plugin-limit-count"``, ``"plugin-limit-req"``,
    ``"plugin-limit-conn"``). For anything else, prefix the name with your plugin's name. The
    call is cheap enough for module level or per request.
    """
    if not isinstance(name, str) or not name:
        raise ValueError("shared_counters() needs a non-empty name")
    return SharedCounters(name)


__all__ = ["Pair", "SharedCounters", "SharedCountersBackend", "shared_counters"]
