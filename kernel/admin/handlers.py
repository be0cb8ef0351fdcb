"""The store-backed resources: GET one/list, PUT, POST, PATCH, DELETE (spec §2.4 to §2.7)."""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from kernel.store.base import ConfigRejected
from kernel.store.resources import Entry, RevisionConflict, StoreUnavailable

from . import checks, sealing
from .resources import ResourceKind
from .transport import AdminError, error

if TYPE_CHECKING:
    from . import AdminContext

Reply = tuple[int, Any]

KEY_NOT_FOUND: dict[str, str] = {"message": "Key not found"}
_DELETED = object()


def _now() -> int:
    return int(time.time())


class Target:
    """Where one request points: the resource, its id, the sub-path and the etcd key."""

    def __init__(
        self,
        ctx: AdminContext,
        rk: ResourceKind,
        rid: str | None,
        sub_path: str,
        username: str | None = None,
    ) -> None:
        self.ctx = ctx
        self.rk = rk
        self.rid = rid
        self.sub_path = sub_path
        self.username = username
        """For credentials: the consumer they belong to."""

    @property
    def prefix(self) -> str:
        return self.ctx.store.prefix

    def directory(self) -> str:
        if self.rk.name == "credentials":
            return f"{self.prefix}/consumers/{self.username}/credentials/"
        return f"{self.prefix}/{self.rk.name}/"

    def key(self, rid: Any) -> str:
        return self.directory() + checks.lua_str(rid)


def _envelope(t: Target, entry: Entry) -> dict[str, Any]:
    return {
        "key": entry.key,
        "value": sealing.public(t.ctx, t.rk, entry.value),
        "createdIndex": entry.create_revision,
        "modifiedIndex": entry.mod_revision,
    }


def _written(entry: Entry) -> dict[str, Any]:
    return {"key": entry.key, "value": entry.value}


def _ttl(args: Mapping[str, str]) -> float | None:
    raw = args.get("ttl")
    if raw is None:
        return None
    return float(raw)  # checked numeric by the dispatcher


def _unsupported(rk: ResourceKind, method: str) -> None:
    if method in rk.unsupported:
        raise error(405, f"not supported `{method}` method for {rk.kind}")


# -- GET ------------------------------------------------------------------------------------------


async def get(t: Target, args: Mapping[str, str]) -> Reply:
    _unsupported(t.rk, "GET")
    store = t.ctx.store
    if t.rid is not None:
        entry = await store.get(t.key(t.rid))
        if entry is None:
            return 404, KEY_NOT_FOUND
        return 200, _envelope(t, entry)
    entries = await store.list(t.directory())
    if t.rk.name == "consumers":
        base = len(t.directory())
        entries = [e for e in entries if "/" not in e.key[base:]]
    items = [_envelope(t, e) for e in entries if _matches(t.rk, e.value, args)]
    total = len(items)
    page, page_size = _number(args.get("page")), _number(args.get("page_size"))
    if page is not None and page_size is not None:
        if page_size < 10 or page_size > 500:
            return 400, "page_size must be between 10 and 500"
        if page < 1:
            page = 1
        items.sort(key=lambda i: i["createdIndex"])
        to = int(page * page_size)
        start = int(to - page_size)
        items = items[max(start, 0) : max(to, 0)]
    return 200, {"list": items, "total": total}


def _number(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        return None


def _search(pattern: str, text: Any) -> bool:
    if not isinstance(text, str):
        return False
    try:
        return re.search(pattern, text) is not None
    except re.error:
        return False


def _matches(rk: ResourceKind, value: Any, args: Mapping[str, str]) -> bool:
    if not isinstance(value, dict):
        return False
    if "name" in args and not _search(args["name"], value.get("name")):
        return False
    if "label" in args:
        labels = value.get("labels")
        if not isinstance(labels, dict) or args["label"] not in labels:
            return False
    if "uri" in args:
        candidates: list[Any] = [value.get("uri")]
        if isinstance(value.get("uris"), list):
            candidates.extend(value["uris"])
        if not any(_search(args["uri"], u) for u in candidates):
            return False
    raw_filter = args.get("filter")
    if raw_filter:
        wanted: dict[str, str] = {}
        for k, v in parse_qsl(raw_filter, keep_blank_values=True):
            wanted[k] = v  # the last value wins
        for k, v in wanted.items():
            if k not in rk.list_filter_fields:
                continue
            have = value.get(k)
            if have is None or checks.lua_str(have) != v:
                return False
    return True


# -- writes ---------------------------------------------------------------------------------------


def _inject_timestamps(conf: Any, prev: Any, patch: Any = None) -> None:
    """``create_time`` kept from ``prev`` (else now); ``update_time`` refreshed unless a PATCH
    object sets it itself."""
    if not isinstance(conf, dict):
        return
    if not conf.get("create_time"):
        prev_ct = prev.get("create_time") if isinstance(prev, dict) else None
        conf["create_time"] = prev_ct if prev_ct else _now()
    if not conf.get("update_time") or (
        patch is not None
        and (
            patch is True or not (isinstance(patch, dict) and patch.get("update_time") is not None)
        )
    ):
        conf["update_time"] = _now()


async def _validate(
    t: Target, conf: Any, rid: Any, key: str, path_username: str | None = None
) -> None:
    await checks.check_resource(
        t.rk,
        copy.deepcopy(conf),
        store=t.ctx.store,
        registry=t.ctx.registry(),
        rid=rid,
        key=key,
        path_username=path_username,
        keyring=t.ctx.encryption.plugin_keyring,
    )


async def _require_consumer(t: Target) -> None:
    if t.rk.name == "credentials" and (
        await t.ctx.store.get(f"{t.prefix}/consumers/{t.username}") is None
    ):
        raise error(404, "consumer not found")


async def put(t: Target, conf: Any, args: Mapping[str, str]) -> Reply:
    _unsupported(t.rk, "PUT")
    if conf is None:
        raise error(400, "missing configurations")
    rk = t.rk
    path_username: str | None = None
    if rk.has_id:
        rid = checks.check_id(rk, t.rid, conf, need_id=True)
    elif rk.name == "consumers":
        path_username = t.rid
        rid = conf.get("username") if isinstance(conf, dict) else None
        if rid is None:
            rid = t.rid
    else:  # plugin_metadata
        if t.rid is None:
            raise error(400, "missing plugin name")
        rid = t.rid
    checks.check_forbidden(conf)
    key = t.key(rid) if rid is not None else t.directory()
    await _validate(t, conf, rid, key, path_username)
    await _require_consumer(t)
    conf = sealing.seal(t.ctx, rk, conf)
    prev = await t.ctx.store.get(key)
    if rk.name != "plugin_metadata":
        _inject_timestamps(conf, prev.value if prev is not None else None)
    entry = await t.ctx.store.put(key, conf, ttl=_ttl(args))
    return (201 if prev is None else 200), _written(entry)


async def post(t: Target, conf: Any, args: Mapping[str, str]) -> Reply:
    _unsupported(t.rk, "POST")
    if conf is None:
        raise error(400, "missing configurations")
    checks.check_id(t.rk, t.rid, conf, need_id=False)
    checks.check_forbidden(conf)
    await _validate(t, conf, None, t.directory())
    rid = await t.ctx.store.next_id()
    if isinstance(conf, dict):
        conf["id"] = rid
    conf = sealing.seal(t.ctx, t.rk, conf)
    _inject_timestamps(conf, None)
    entry = await t.ctx.store.put(t.key(rid), conf, prev_revision=0, ttl=_ttl(args))
    return 201, _written(entry)


def deep_merge(origin: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Objects merge recursively, anything else (arrays included) replaces, ``null`` deletes."""
    for k, v in patch.items():
        if v is None:
            origin.pop(k, None)
        elif isinstance(v, dict) and isinstance(origin.get(k), dict):
            deep_merge(origin[k], v)
        else:
            origin[k] = copy.deepcopy(v)
    return origin


def patch_path(value: Any, sub_path: str, conf: Any) -> Any:
    parts = [p for p in sub_path.split("/") if p != ""]
    if not parts:
        return conf
    node = value
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node, dict):
            raise error(400, "invalid sub-path: /" + "/".join(parts[:i]))
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise error(400, "invalid sub-path: /" + "/".join(parts[: i + 1]))
    if not isinstance(node, dict):
        raise error(400, "invalid sub-path: /" + "/".join(parts))
    node[parts[-1]] = conf
    return value


async def patch(t: Target, conf: Any, args: Mapping[str, str]) -> Reply:
    _unsupported(t.rk, "PATCH")
    if t.rid is None:
        raise error(400, f"missing {t.rk.kind} id")
    if conf is None:
        raise error(400, "missing new configuration")
    if not t.sub_path and not isinstance(conf, dict):
        raise error(400, "invalid configuration")
    key = t.key(t.rid)
    old = await t.ctx.store.get(key)
    if old is None:
        return 404, KEY_NOT_FOUND
    value = sealing.unseal(t.ctx, t.rk, copy.deepcopy(old.value))
    if t.sub_path:
        value = patch_path(value, t.sub_path, copy.deepcopy(conf))
        _inject_timestamps(value, None, True)
    else:
        if not isinstance(value, dict):
            value = {}
        value = deep_merge(value, conf)
        _inject_timestamps(value, None, conf)
    checks.check_id(t.rk, t.rid, value, need_id=True)
    await _validate(t, value, t.rid, key)
    value = sealing.seal(t.ctx, t.rk, value)
    try:
        entry = await t.ctx.store.put(key, value, prev_revision=old.mod_revision, ttl=_ttl(args))
    except RevisionConflict:
        raise error(503, "value changed before overwritten") from None
    return 200, _written(entry)


async def delete(t: Target, args: Mapping[str, str]) -> Reply:
    _unsupported(t.rk, "DELETE")
    if t.rid is None:
        raise error(400, f"missing {t.rk.kind} id")
    store = t.ctx.store
    if args.get("force") != "true":
        await checks.check_delete(store, t.rk, t.rid)
    key = t.key(t.rid)
    if t.rk.name == "consumers":
        await store.delete_prefix(f"{key}/credentials/")
    if not await store.delete(key):
        return 404, KEY_NOT_FOUND
    return 200, {"deleted": "1", "key": key}


async def handle(t: Target, method: str, body: Any, args: Mapping[str, str]) -> Reply:
    """Run one resource request; store failures become 503."""
    try:
        if method == "GET":
            return await get(t, args)
        if method == "PUT":
            return await put(t, body, args)
        if method == "POST":
            return await post(t, body, args)
        if method == "PATCH":
            return await patch(t, body, args)
        if method == "DELETE":
            return await delete(t, args)
    except StoreUnavailable as exc:
        return 503, {"error_msg": str(exc)}
    except RevisionConflict:
        return 503, {"error_msg": "value changed before overwritten"}
    except ConfigRejected as exc:  # the file store refused the resulting document
        return 400, {"error_msg": str(exc)}
    raise AdminError(404, {"error_msg": "not found"})
