"""Services the kernel lends plugins beyond one request: shared dicts and an outbound HTTP client.

Both are owned by the kernel, not by the plugin module, so they outlive a plugin hot reload (a
reload imports the plugin's source again as a new module; its module globals start afresh, the
kernel's objects do not). Both are per worker process: with
``nginx_config.worker_processes: N`` each worker has its own dicts and its own client.

The SDK only defines the surface; the kernel installs the implementation (:func:`install`) when
it is imported, before any plugin module is loaded. The SDK never imports the kernel.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from .errors import PluginError

if TYPE_CHECKING:
    import aiohttp

    from .counters import SharedCountersBackend


class SharedDictBackend(Protocol):
    """What the kernel implements for one named shared dict (see :class:`SharedDict`)."""

    def get(self, key: str, default: Any = None) -> Any: ...

    def set(self, key: str, value: Any, ttl: float | None = None) -> None: ...

    def add(self, key: str, value: Any, ttl: float | None = None) -> bool: ...

    def incr(
        self, key: str, delta: int | float = 1, init: int | float = 0, ttl: float | None = None
    ) -> int | float: ...

    def delete(self, key: str) -> bool: ...

    def ttl(self, key: str) -> float | None: ...

    def keys(self) -> list[str]: ...

    def clear(self) -> None: ...

    def __len__(self) -> int: ...


class Runtime(Protocol):
    """What the kernel installs with :func:`install`."""

    def shared_dict(self, name: str) -> SharedDictBackend: ...

    def http_client(self) -> aiohttp.ClientSession: ...

    def shared_counters(self, name: str) -> SharedCountersBackend:
        """The node-wide counters of ``name`` (see :mod:`plugin_sdk.counters`)."""
        ...

    def ssl_listen_ports(self) -> list[int]: ...

    def plugin_metadata(self, name: str) -> Mapping[str, Any] | None: ...


_runtime: Runtime | None = None


def install(runtime: Runtime) -> None:
    """Install the kernel's implementation (called by the kernel; plugins never call this)."""
    global _runtime
    _runtime = runtime


def _current() -> Runtime:
    runtime = _runtime
    if runtime is None:
        raise PluginError(
            "no sixgate kernel in this process: shared dicts and the HTTP client are provided "
            "by a running gateway (in tests, use plugin_sdk.testing)"
        )
    return runtime


class SharedDict:
    """A named dict owned by the kernel: counters and small state that survive plugin reloads.

    Get one with :func:`shared_dict`, typically once at module level::

        from plugin_sdk import hookimpl, shared_dict

        hits = shared_dict("acme-teapot.hits")      # prefix names with your plugin's name

        @hookimpl
        def access(ctx, conf):
            n = hits.incr(ctx.var["remote_addr"], ttl=60)   # per client, per minute

    The data lives in the kernel: importing the module again after an edit (hot reload) gives
    a handle on the same data. Values are any Python objects (nothing is serialised); each
    worker process has its own data (not shared between workers, unlike nginx's
    ``lua_shared_dict``; for numbers every worker shares, such as rate limits, use
    :func:`plugin_sdk.shared_counters`). ``ttl`` is in seconds; an expired key reads as
    absent. The calls are plain (no ``await``) and safe from any thread.
    """

    __slots__ = ("_backend", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._backend: SharedDictBackend | None = None

    def _dict(self) -> SharedDictBackend:
        backend = self._backend
        if backend is None:
            backend = self._backend = _current().shared_dict(self.name)
        return backend

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key``, or ``default`` when absent or expired."""
        return self._dict().get(key, default)

    def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        """Store ``value`` under ``key``; it expires after ``ttl`` seconds (``None``: never)."""
        self._dict().set(key, value, ttl)

    def add(self, key: str, value: Any, ttl: float | None = None) -> bool:
        """Store ``value`` only when ``key`` is absent (or expired); ``True`` when stored."""
        return self._dict().add(key, value, ttl)

    def incr(
        self, key: str, delta: int | float = 1, init: int | float = 0, ttl: float | None = None
    ) -> int | float:
        """Add ``delta`` to the number under ``key`` and return the result, atomically.

        An absent (or expired) key starts at ``init`` and, with ``ttl``, expires ``ttl``
        seconds after that (later increments keep the expiry: a fixed window). A value that
        is not a number raises :class:`TypeError`.
        """
        return self._dict().incr(key, delta, init, ttl)

    def delete(self, key: str) -> bool:
        """Remove ``key``; ``True`` when it was present."""
        return self._dict().delete(key)

    def ttl(self, key: str) -> float | None:
        """Seconds until ``key`` expires; ``None`` when it never does. ``KeyError`` when
        absent."""
        return self._dict().ttl(key)

    def keys(self) -> list[str]:
        """The keys present now (expired ones left out)."""
        return self._dict().keys()

    def clear(self) -> None:
        """Remove every key."""
        self._dict().clear()

    def __contains__(self, key: str) -> bool:
        sentinel = _MISSING
        return self._dict().get(key, sentinel) is not sentinel

    def __len__(self) -> int:
        return len(self._dict())

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __repr__(self) -> str:
        return f"<SharedDict {self.name!r}>"


_MISSING = object()


def shared_dict(name: str) -> SharedDict:
    """The kernel-owned :class:`SharedDict` called ``name`` (created empty on first use).

    Every call with the same name, from any plugin and any plugin generation in this worker
    process, reaches the same data. Cheap enough to call at module level or per request.
    """
    if not isinstance(name, str) or not name:
        raise ValueError("shared_dict() needs a non-empty name")
    return SharedDict(name)


def http_client() -> aiohttp.ClientSession:
    """The worker's shared :class:`aiohttp.ClientSession` for calls to other services.

    Made by the kernel on first use, once per worker (per event loop), never per request, and
    closed when the gateway stops: do not close it, and do not make your own session per
    request. Call it from ``async def`` hooks (or ``init``/lifespan code running on the
    gateway's loop)::

        from plugin_sdk import Response, hookimpl, http_client

        @hookimpl
        async def access(ctx, conf):
            async with http_client().get(conf["auth_url"],
                                         headers={"Authorization": ctx.var["http_authorization"]
                                                  or ""}) as r:
                if r.status != 200:
                    return Response(401, {"message": "unauthorized"})

    Pass ``timeout=aiohttp.ClientTimeout(...)`` per call where the default (60 s total) does
    not fit. A route with an ``async`` hook runs on the gateway's task path, which is slightly
    more expensive than the callback path of all-synchronous routes.
    """
    return _current().http_client()


__all__ = ["Runtime", "SharedDict", "SharedDictBackend", "http_client", "install", "shared_dict"]


def ssl_listen_ports() -> list[int]:
    """The gateway's HTTPS ports (``apisix.ssl.listen``, in config order, without duplicates;
    ``[]`` when ``apisix.ssl.enable`` is false), e.g. for a redirect to HTTPS. Follows a
    config.yaml re-read by a plugin reload."""
    return _current().ssl_listen_ports()


def plugin_metadata(name: str) -> Mapping[str, Any] | None:
    """The live ``plugin_metadata`` of plugin ``name`` (validated, defaults filled,
    read-only), or ``None``. For code outside a request, e.g. a ``check_schema`` whose rule
    depends on the metadata (APISIX's file-logger: ``path`` from the conf or the metadata);
    in a hook, read ``ctx.plugin_metadata``, which stays the same for the whole request."""
    try:
        return _current().plugin_metadata(name)
    except PluginError:
        return None
