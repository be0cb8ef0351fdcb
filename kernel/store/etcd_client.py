"""A small asyncio etcd v3 client over etcd's JSON gateway (``/v3/kv/*``, ``/v3/watch``, ...).

One shared :class:`aiohttp.ClientSession` (created lazily on the running loop, closed by
:meth:`EtcdClient.close`). What the gateway needs and this module handles:

* keys and values are base64 in both directions; int64 fields arrive as JSON strings; default
  values are omitted (a PUT event has no ``type``, a failed txn has no ``succeeded``);
* watch responses are newline-delimited ``{"result": ...}`` objects; in-stream errors arrive as
  ``{"error": {...}}`` (503 "transport is closing" / 408 while etcd shuts down) and are retryable;
  a watch cancelled with ``compact_revision`` raises :class:`Compacted`;
* auth: ``/v3/auth/authenticate`` (sent without any stale token), the token goes in the
  ``Authorization`` header; on HTTP 401 / ``invalid auth token`` / an auth-cancelled watch the
  client re-authenticates and retries once;
* several endpoints (spec §3.2 point 7): requests go to the first healthy endpoint in the
  configured order; one that fails to connect (or times out) is marked unhealthy and skipped
  for ``health_check_timeout`` seconds while another is healthy; when none is, all are tried.
  A single endpoint is never skipped.

Every failure to talk to etcd raises :class:`~kernel.store.resources.StoreUnavailable` with a
message naming the endpoint. Callers (the etcd store) own resume and backoff logic: a watch is
one stream, ended by an error, a cancel, or ``watch_timeout``; resume it from the last applied
``mod_revision + 1``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from kernel.store.resources import StoreUnavailable

_log = logging.getLogger("sixgate.store.etcd")


class Compacted(Exception):
    """The watch's start revision was compacted away: a full re-read is needed."""

    def __init__(self, compact_revision: int) -> None:
        self.compact_revision = compact_revision
        super().__init__(f"etcd watch revision compacted (compact_revision={compact_revision})")


class _AuthExpired(Exception):
    """Internal: the server refused our token (re-authenticate and retry once)."""


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int = 0
    lease: int = 0


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: str  # "PUT" or "DELETE"
    kv: KeyValue


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """Events read from the stream together (every complete response already buffered)."""

    events: list[WatchEvent]
    header_revision: int
    """The store revision reported by the last response of the batch (0 when absent)."""
    created: bool = False
    """This batch contains the watch's ``created`` response."""


@dataclass(frozen=True, slots=True)
class RangeResult:
    kvs: list[KeyValue]
    revision: int
    count: int


@dataclass
class TLSConfig:
    cert: str | None = None
    key: str | None = None
    verify: bool = True
    sni: str | None = None
    ca_file: str | None = None  # None: the system store


def b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def unb64(data: str | None) -> bytes:
    return base64.b64decode(data) if data else b""


def prefix_end(prefix: str | bytes) -> bytes:
    """The ``range_end`` selecting every key that starts with ``prefix``."""
    raw = bytearray(prefix.encode() if isinstance(prefix, str) else prefix)
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return bytes(raw)
        raw.pop()
    return b"\0"  # every key


def _kv(d: Mapping[str, Any]) -> KeyValue:
    return KeyValue(
        key=unb64(d.get("key")).decode("utf-8", "replace"),
        value=unb64(d.get("value")),
        create_revision=int(d.get("create_revision", 0)),
        mod_revision=int(d.get("mod_revision", 0)),
        version=int(d.get("version", 0)),
        lease=int(d.get("lease", 0)),
    )


def _error_text(body: Any) -> str:
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            return str(err.get("message") or err)
        return str(body.get("message") or err or body)
    return str(body)


class EtcdClient:
    """An etcd v3 client for one cluster (``endpoints`` like ``http://127.0.0.1:2379``)."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        user: str | None = None,
        password: str | None = None,
        timeout: float = 30.0,
        tls: TLSConfig | None = None,
        health_check_timeout: float = 10.0,
    ) -> None:
        if not endpoints:
            raise ValueError("etcd: no endpoints configured")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.user = user
        self.password = password
        self.timeout = float(timeout)
        self.tls = tls or TLSConfig()
        self._session: aiohttp.ClientSession | None = None
        self._token: str | None = None
        self.health_check_timeout = float(health_check_timeout)
        if self.health_check_timeout < 0:  # as APISIX: a negative value means the default
            self.health_check_timeout = 10.0
        self._good = 0
        """The endpoint that answered last (for logs and tests)."""
        self._down_until: dict[int, float] = {}
        """Endpoint index -> ``time.monotonic()`` until which it is skipped."""
        self._auth_lock: asyncio.Lock | None = None
        self._ssl: ssl.SSLContext | bool | None = None

    # -- plumbing ----------------------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext | bool | None:
        if not any(e.startswith("https://") for e in self.endpoints):
            return None
        if self._ssl is None:
            ctx = ssl.create_default_context(cafile=self.tls.ca_file)
            if not self.tls.verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            if self.tls.cert:
                ctx.load_cert_chain(self.tls.cert, self.tls.key)
            self._ssl = ctx
        return self._ssl

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=0, ssl=self._ssl_context() or False)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    def _order(self) -> list[int]:
        """Endpoint indexes to try for one request: the healthy ones in configured order, or
        every endpoint when none is healthy."""
        n = len(self.endpoints)
        if n == 1 or not self._down_until:
            return list(range(n))
        now = time.monotonic()
        healthy = [i for i in range(n) if self._down_until.get(i, 0.0) <= now]
        return healthy or list(range(n))

    def _failed(self, i: int, reason: str) -> None:
        """Endpoint ``i`` could not be reached: skip it for ``health_check_timeout``."""
        if len(self.endpoints) == 1 or self.health_check_timeout <= 0:
            return
        if self._down_until.get(i, 0.0) <= time.monotonic():
            _log.warning(
                "etcd endpoint %s is unhealthy (%s); skipped for %gs",
                self.endpoints[i], reason, self.health_check_timeout,
            )
        self._down_until[i] = time.monotonic() + self.health_check_timeout

    def _answered(self, i: int) -> None:
        self._good = i
        self._down_until.pop(i, None)

    def unhealthy(self) -> list[str]:
        """Endpoints currently skipped by the health check."""
        now = time.monotonic()
        return [self.endpoints[i] for i, t in sorted(self._down_until.items()) if t > now]

    def _headers(self) -> dict[str, str]:
        return {"Authorization": self._token} if self._token else {}

    def _request_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        if self.tls.sni:
            kw["server_hostname"] = self.tls.sni
        return kw

    async def _authenticate(self, stale: str | None) -> None:
        """Get a fresh token (unless another task already replaced ``stale``)."""
        if self.user is None:
            raise StoreUnavailable("etcd requires authentication but no user is configured")
        if self._auth_lock is None:
            self._auth_lock = asyncio.Lock()
        async with self._auth_lock:
            if self._token is not None and self._token != stale:
                return
            self._token = None  # Authenticate must carry no stale token
            body = await self._post_raw(
                "/v3/auth/authenticate", {"name": self.user, "password": self.password or ""}
            )
            token = body.get("token")
            if not token:
                raise StoreUnavailable(f"etcd authentication returned no token: {body}")
            self._token = str(token)

    async def _post_raw(self, path: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        """POST to the first endpoint that answers; raises StoreUnavailable / _AuthExpired."""
        errors: list[str] = []
        session = self._get_session()
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        for i in self._order():
            url = self.endpoints[i] + path
            try:
                try:
                    text, status = await self._send(session, url, payload, timeout)
                except aiohttp.ServerDisconnectedError:
                    # most likely a pooled keep-alive connection to a restarted etcd: the
                    # request never reached it; one fresh connection before giving up
                    text, status = await self._send(session, url, payload, timeout)
            except (TimeoutError, aiohttp.ClientError, OSError) as e:
                reason = f"{type(e).__name__}: {e}".rstrip(": ")
                errors.append(f"{self.endpoints[i]}: {reason}")
                self._failed(i, reason)
                continue
            self._answered(i)
            try:
                body = json.loads(text) if text else {}
            except json.JSONDecodeError:
                body = {"error": text}
            if status == 200:
                return body if isinstance(body, dict) else {}
            message = _error_text(body)
            if status == 401 or "invalid auth token" in message:
                raise _AuthExpired(message)
            if status == 400 and "user name is empty" in message and self.user is not None:
                raise _AuthExpired(message)
            if status >= 500:  # no leader, shutting down, ...: another member may do better
                errors.append(f"{self.endpoints[i]}: HTTP {status}: {message}")
                continue
            raise StoreUnavailable(f"etcd {self.endpoints[i]}{path}: HTTP {status}: {message}")
        raise StoreUnavailable("etcd unreachable: " + "; ".join(errors))

    async def _send(
        self,
        session: aiohttp.ClientSession,
        url: str,
        payload: Mapping[str, Any],
        timeout: aiohttp.ClientTimeout,
    ) -> tuple[str, int]:
        async with session.post(
            url, json=payload, headers=self._headers(), timeout=timeout, **self._request_kwargs()
        ) as resp:
            return await resp.text(), resp.status

    async def _post(self, path: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        if self.user is not None and self._token is None:
            await self._authenticate(None)
        try:
            return await self._post_raw(path, payload)
        except _AuthExpired as e:
            if self.user is None:
                raise StoreUnavailable(f"etcd refused the request: {e}") from None
            await self._authenticate(self._token)
        try:
            return await self._post_raw(path, payload)
        except _AuthExpired as e:
            raise StoreUnavailable(
                f"etcd refused the request after re-authenticating: {e}"
            ) from None

    # -- KV ------------------------------------------------------------------------------------

    async def range(
        self,
        key: str,
        *,
        prefix: bool = False,
        revision: int | None = None,
        count_only: bool = False,
    ) -> RangeResult:
        req: dict[str, Any] = {"key": b64(key)}
        if prefix:
            req["range_end"] = b64(prefix_end(key))
        if revision:
            req["revision"] = revision
        if count_only:
            req["count_only"] = True
        body = await self._post("/v3/kv/range", req)
        kvs = [_kv(d) for d in body.get("kvs", ())]
        revision_now = int(body.get("header", {}).get("revision", 0))
        return RangeResult(kvs, revision_now, int(body.get("count", 0)))

    async def get(self, key: str) -> KeyValue | None:
        res = await self.range(key)
        return res.kvs[0] if res.kvs else None

    async def grant(self, ttl: float) -> int:
        body = await self._post("/v3/lease/grant", {"TTL": max(1, int(-(-ttl // 1)))})
        lease = int(body.get("ID", 0))
        if not lease:
            raise StoreUnavailable(f"etcd lease grant failed: {body}")
        return lease

    async def put(self, key: str, value: str | bytes, *, lease: int = 0) -> int:
        """Store ``value``; the revision of the write."""
        req: dict[str, Any] = {"key": b64(key), "value": b64(value)}
        if lease:
            req["lease"] = lease
        body = await self._post("/v3/kv/put", req)
        return int(body.get("header", {}).get("revision", 0))

    async def delete(self, key: str, *, prefix: bool = False) -> int:
        """Delete ``key`` (or every key under it); how many were deleted."""
        req: dict[str, Any] = {"key": b64(key)}
        if prefix:
            req["range_end"] = b64(prefix_end(key))
        body = await self._post("/v3/kv/deleterange", req)
        return int(body.get("deleted", 0))

    async def txn(
        self,
        compare: list[dict[str, Any]],
        success: list[dict[str, Any]],
        failure: list[dict[str, Any]] | None = None,
    ) -> tuple[bool, int, list[dict[str, Any]]]:
        """A raw transaction: (succeeded, revision, responses). Ops use the gateway's JSON."""
        body = await self._post(
            "/v3/kv/txn", {"compare": compare, "success": success, "failure": failure or []}
        )
        return (
            bool(body.get("succeeded", False)),
            int(body.get("header", {}).get("revision", 0)),
            list(body.get("responses", ())),
        )

    async def put_if(
        self, key: str, value: str | bytes, *, mod_revision: int, lease: int = 0
    ) -> KeyValue | None:
        """Compare-and-swap: store only if the key's ``mod_revision`` is still ``mod_revision``
        (``0``: the key must not exist). The stored KeyValue, or ``None`` when the compare
        failed."""
        if mod_revision == 0:
            cmp = {"key": b64(key), "target": "CREATE", "create_revision": 0}
        else:
            cmp = {"key": b64(key), "target": "MOD", "mod_revision": mod_revision}
        return await self._put_txn(key, value, [cmp], lease)

    async def put_read(self, key: str, value: str | bytes, *, lease: int = 0) -> KeyValue:
        """Unconditional put returning the stored KeyValue (revisions included)."""
        kv = await self._put_txn(key, value, [], lease)
        assert kv is not None
        return kv

    async def _put_txn(
        self, key: str, value: str | bytes, compare: list[dict[str, Any]], lease: int
    ) -> KeyValue | None:
        put: dict[str, Any] = {"key": b64(key), "value": b64(value)}
        if lease:
            put["lease"] = lease
        ok, _, responses = await self.txn(
            compare, [{"request_put": put}, {"request_range": {"key": b64(key)}}]
        )
        if not ok:
            return None
        for r in responses:
            kvs = r.get("response_range", {}).get("kvs")
            if kvs:
                return _kv(kvs[0])
        raise StoreUnavailable(f"etcd txn on {key} returned no value")

    async def delete_if(self, key: str, *, mod_revision: int) -> bool | None:
        """Delete only if the key's ``mod_revision`` is still ``mod_revision``. ``None`` when
        the compare failed, else whether something was deleted."""
        cmp = {"key": b64(key), "target": "MOD", "mod_revision": mod_revision}
        ok, _, responses = await self.txn([cmp], [{"request_delete_range": {"key": b64(key)}}])
        if not ok:
            return None
        return any(int(r.get("response_delete_range", {}).get("deleted", 0)) for r in responses)

    async def compact(self, revision: int, physical: bool = True) -> None:
        await self._post("/v3/kv/compaction", {"revision": revision, "physical": physical})

    # -- watch -----------------------------------------------------------------------------

    async def watch(
        self,
        key: str,
        *,
        prefix: bool = True,
        start_revision: int,
        watch_timeout: float = 50.0,
    ) -> AsyncIterator[WatchBatch]:
        """Yield batches of events from ``start_revision`` until ``watch_timeout`` seconds have
        passed (then return normally: re-issue from the next revision).

        Raises :class:`Compacted`, or :class:`StoreUnavailable` on a connection error, an
        in-stream error or a cancel (after one re-authentication attempt for auth problems).
        """
        reauthed = False
        while True:
            if self.user is not None and self._token is None:
                await self._authenticate(None)
            try:
                async for batch in self._watch_once(key, prefix, start_revision, watch_timeout):
                    yield batch
                    reauthed = False
                    for ev in batch.events:
                        start_revision = max(start_revision, ev.kv.mod_revision + 1)
                return
            except _AuthExpired as e:
                if self.user is None or reauthed:
                    raise StoreUnavailable(f"etcd watch refused: {e}") from None
                reauthed = True
                await self._authenticate(self._token)

    async def _watch_once(
        self, key: str, prefix: bool, start_revision: int, watch_timeout: float
    ) -> AsyncIterator[WatchBatch]:
        create: dict[str, Any] = {
            "key": b64(key),
            "start_revision": start_revision,
            "progress_notify": True,
        }
        if prefix:
            create["range_end"] = b64(prefix_end(key))
        session = self._get_session()
        deadline = time.monotonic() + watch_timeout
        errors: list[str] = []
        for i in self._order():
            endpoint = self.endpoints[i]
            try:
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation
                async with asyncio.timeout(self.timeout):
                    resp = await session.post(
                        endpoint + "/v3/watch", json={"create_request": create},
                        headers=self._headers(),
                        timeout=aiohttp.ClientTimeout(total=None, connect=self.timeout),
                        **self._request_kwargs(),
                    )  # fmt: skip
            except (TimeoutError, aiohttp.ClientError, OSError) as e:
                reason = f"{type(e).__name__}: {e}".rstrip(": ")
                errors.append(f"{endpoint}: {reason}")
                self._failed(i, reason)
                continue
            self._answered(i)
            break
        else:
            raise StoreUnavailable("etcd unreachable: " + "; ".join(errors))
        async with resp:
            if resp.status != 200:
                text = await resp.text()
                try:
                    message = _error_text(json.loads(text))
                except json.JSONDecodeError:
                    message = text
                if resp.status == 401 or "invalid auth token" in message:
                    raise _AuthExpired(message)
                raise StoreUnavailable(f"etcd {endpoint}/v3/watch: HTTP {resp.status}: {message}")
            buf = b""
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                try:
                    async with asyncio.timeout(left):
                        chunk = await resp.content.readany()
                except TimeoutError:
                    return  # watch_timeout: the caller re-issues from the same revision
                except (aiohttp.ClientError, OSError) as e:
                    raise StoreUnavailable(f"etcd {endpoint} watch stream: {e!r}") from None
                if not chunk:
                    raise StoreUnavailable(f"etcd {endpoint} closed the watch stream")
                buf += chunk
                buf += resp.content.read_nowait()  # coalesce whatever else already arrived
                *lines, buf = buf.split(b"\n")
                batch = self._parse(lines, endpoint)
                if batch is not None:
                    yield batch

    def _parse(self, lines: list[bytes], endpoint: str) -> WatchBatch | None:
        events: list[WatchEvent] = []
        header_revision = 0
        created = False
        seen = False
        for line in lines:
            line = line.strip()
            if not line:
                continue
            try:
                msg = json.loads(line)
            except json.JSONDecodeError as e:
                raise StoreUnavailable(f"etcd {endpoint} watch: bad response {line[:200]!r}") from e
            if "error" in msg:
                message = _error_text(msg)
                if "invalid auth token" in message:
                    raise _AuthExpired(message)
                raise StoreUnavailable(f"etcd {endpoint} watch: {message}")
            result = msg.get("result", {})
            seen = True
            rev = int(result.get("header", {}).get("revision", 0))
            if rev:
                header_revision = rev
            compact = int(result.get("compact_revision", 0))
            if compact:
                raise Compacted(compact)
            if result.get("canceled"):
                reason = str(result.get("cancel_reason", "")) or "no reason given"
                # after a restart etcd cancels an authenticated watch (3.4: "invalid auth
                # token", 3.5: "permission denied"): re-authenticate once on any cancel
                raise _AuthExpired(f"watch canceled: {reason}")
            if result.get("created"):
                created = True
            for ev in result.get("events", ()):
                events.append(WatchEvent(str(ev.get("type", "PUT")), _kv(ev.get("kv", {}))))
        if not seen:
            return None
        return WatchBatch(events, header_revision, created)
