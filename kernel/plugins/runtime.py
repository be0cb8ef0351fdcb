"""The kernel's side of :mod:`plugin_sdk.runtime`: shared dicts and the outbound HTTP client.

Both live in this module (one per worker process), never in a plugin module, so a plugin hot
reload — which imports the plugin's source again as a new module — finds them as they were.
Importing this module installs the implementation into the SDK; the plugin loader and the
request context import it, so it is in place before any plugin module is imported.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import plugin_sdk.runtime as sdk_runtime
from kernel.counters import NODE_COUNTERS, CounterTable

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger("sixgate.plugins")

_SWEEP_EVERY = 1024
"""Writes between two sweeps of expired keys (reads drop expired keys they meet)."""


class SharedDictStore:
    """One named shared dict: ``key -> (value, expires_at | None)`` behind a lock."""

    __slots__ = ("_data", "_lock", "_writes", "clock", "name")

    def __init__(self, name: str, clock: Any = time.monotonic) -> None:
        self.name = name
        self.clock = clock
        self._data: dict[str, tuple[Any, float | None]] = {}
        self._lock = threading.Lock()
        self._writes = 0

    def _live(self, key: str, now: float) -> tuple[Any, float | None] | None:
        entry = self._data.get(key)
        if entry is not None and entry[1] is not None and entry[1] <= now:
            del self._data[key]
            return None
        return entry

    def _expiry(self, ttl: float | None, now: float) -> float | None:
        if ttl is None:
            return None
        if ttl <= 0:
            raise ValueError("ttl must be positive (None: never expires)")
        return now + ttl

    def _wrote(self, now: float) -> None:
        self._writes += 1
        if self._writes >= _SWEEP_EVERY:
            self._writes = 0
            dead = [k for k, (_, exp) in self._data.items() if exp is not None and exp <= now]
            for k in dead:
                del self._data[k]

    def get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            entry = self._live(key, self.clock())
        return default if entry is None else entry[0]

    def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        with self._lock:
            now = self.clock()
            self._data[key] = (value, self._expiry(ttl, now))
            self._wrote(now)

    def add(self, key: str, value: Any, ttl: float | None = None) -> bool:
        with self._lock:
            now = self.clock()
            if self._live(key, now) is not None:
                return False
            self._data[key] = (value, self._expiry(ttl, now))
            self._wrote(now)
            return True

    def incr(
        self, key: str, delta: int | float = 1, init: int | float = 0, ttl: float | None = None
    ) -> int | float:
        with self._lock:
            now = self.clock()
            entry = self._live(key, now)
            if entry is None:
                value, expires = init + delta, self._expiry(ttl, now)
            else:
                current, expires = entry
                if isinstance(current, bool) or not isinstance(current, int | float):
                    raise TypeError(
                        f"shared dict {self.name!r}: {key!r} holds "
                        f"{type(current).__name__}, not a number"
                    )
                value = current + delta
            self._data[key] = (value, expires)
            self._wrote(now)
            return value

    def delete(self, key: str) -> bool:
        with self._lock:
            return self._data.pop(key, None) is not None

    def ttl(self, key: str) -> float | None:
        with self._lock:
            now = self.clock()
            entry = self._live(key, now)
            if entry is None:
                raise KeyError(key)
            return None if entry[1] is None else entry[1] - now

    def keys(self) -> list[str]:
        with self._lock:
            now = self.clock()
            return [k for k, (_, exp) in self._data.items() if exp is None or exp > now]

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self.keys())


class KernelRuntime:
    """Implements :class:`plugin_sdk.runtime.Runtime` for this worker process."""

    def __init__(self) -> None:
        self._dicts: dict[str, SharedDictStore] = {}
        self._dicts_lock = threading.Lock()
        self._sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}
        self._ssl_ports: list[int] = [9443]
        self._metadata_of: Callable[[str], Mapping[str, Any] | None] | None = None

    def set_metadata_source(self, source: Callable[[str], Mapping[str, Any] | None]) -> None:
        """Set by the gateway: where :meth:`plugin_metadata` reads the live metadata."""
        self._metadata_of = source

    def plugin_metadata(self, name: str) -> Mapping[str, Any] | None:
        source = self._metadata_of
        return None if source is None else source(name)

    def set_ssl_ports(self, ports: list[int]) -> None:
        """Set by the gateway from ``apisix.ssl`` whenever it (re)reads config.yaml."""
        self._ssl_ports = list(ports)

    def ssl_listen_ports(self) -> list[int]:
        return list(self._ssl_ports)

    def shared_dict(self, name: str) -> SharedDictStore:
        store = self._dicts.get(name)
        if store is None:
            with self._dicts_lock:
                store = self._dicts.get(name)
                if store is None:
                    store = self._dicts[name] = SharedDictStore(name)
        return store

    def shared_dict_names(self) -> list[str]:
        return sorted(self._dicts)

    def shared_counters(self, name: str) -> CounterTable:
        """The node-wide counters of ``name`` (kernel/counters.py: shared by all workers)."""
        return NODE_COUNTERS.table(name)

    def http_client(self) -> aiohttp.ClientSession:
        """The session of the running event loop (one per worker), made on first use."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "plugin_sdk.http_client() must be called on the gateway's event loop "
                "(from an async hook)"
            ) from None
        session = self._sessions.get(loop)
        if session is None or session.closed:
            import aiohttp

            from kernel import APISIX_VERSION

            session = aiohttp.ClientSession(
                # shared by every plugin: a Set-Cookie one call receives must not ride along
                # on another plugin's calls
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(total=60),
                headers={"User-Agent": f"sixgate/{APISIX_VERSION}"},
            )
            self._sessions[loop] = session
        return session

    async def close_http_client(self) -> None:
        """Close the running loop's session (the gateway calls this when it stops)."""
        session = self._sessions.pop(asyncio.get_running_loop(), None)
        if session is not None and not session.closed:
            await session.close()


RUNTIME = KernelRuntime()
sdk_runtime.install(RUNTIME)
