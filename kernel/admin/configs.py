"""``/apisix/admin/configs``: APISIX's standalone API-driven mode (spec §2.13), embedded store.

On a ``traditional`` node whose ``config_provider`` is ``yaml`` the whole configuration can be
read and replaced in one request, besides the per-resource API:

* ``GET`` -- the document as JSON (YAML with ``Accept: application/yaml``): the collections that
  have items, the ``plugins:`` list if the file has one, and ``<resource>_conf_version`` for
  every collection (0 until set). ``HEAD`` -- the same headers, no body. Both carry
  ``X-Digest`` / ``X-Last-Modified`` of the last ``PUT`` while the file is still what that
  ``PUT`` wrote (a per-resource write or a hand edit since drops them).
* ``PUT`` -- needs ``X-Digest`` (400 ``missing digest header``); the same digest as the current
  one answers 204 and changes nothing. Body (JSON, or YAML with ``Content-Type:
  application/yaml``) replaces the document. Per collection, ``<res>_conf_version`` lower than
  the current one is refused (400), equal keeps that collection as it is, omitted means
  current + 1. Items are checked one by one (APISIX's messages: ``invalid routes at index 0,
  err: ...``, ``found duplicate id r1 in routes``), then the document as a whole by the store,
  with the validators of a file edit; refused means nothing stored. Success: 202, and the
  data plane serves the new config when the answer is sent (the store applies before it
  returns). An item's ``modifiedIndex`` equal to the one given for the same item last time
  keeps the stored item (APISIX's per-item change control); it is not written into the file.
* ``POST /configs/validate`` -- the same checks, nothing stored: 200 with an empty body, or 400
  ``{"error_msg": "Configuration validation failed", "errors": [{resource_type, index,
  error}, ...]}``. Available with any store (with etcd: the item checks only).

The ``<res>_conf_version`` counters live in the file (top-level keys the file store ignores);
the digest, the time of the ``PUT`` and the ``modifiedIndex`` values live in the revisions
sidecar under ``<prefix>/configs``. Per-resource writes do not bump the counters.
"""

from __future__ import annotations

import copy
import json
import re
import time
from typing import TYPE_CHECKING, Any

import yaml
from aiohttp import web

from kernel.schemas import schema_error
from kernel.store.base import COLLECTIONS, ConfigRejected, Problem
from kernel.store.resources import StoreUnavailable

from . import checks
from .resources import RESOURCES
from .transport import MAX_REQ_BODY, AdminError, _cjson_message, error, nginx_page, reply

if TYPE_CHECKING:
    from kernel.plugins.manager import PluginRegistry
    from kernel.store.yaml_resources import YamlResourceStore

    from . import AdminContext

DIGEST = "X-Digest"
LAST_MODIFIED = "X-Last-Modified"
"""APISIX's own header: not ``Last-Modified``, so that HTTP caches are not affected."""
SUFFIX = "_conf_version"
_PROBLEM_PATH = re.compile(r"^([a-z_]+)\[(\d+)\](?:\.(.*))?$")
_LUA_TYPES = {bool: "boolean", str: "string", dict: "table", list: "table", type(None): "nil"}


class _Unchanged(Exception):
    """Same digest as the stored one: answer 204 without writing."""


def _yaml_store(ctx: AdminContext) -> YamlResourceStore | None:
    from kernel.store.yaml_resources import YamlResourceStore

    return ctx.store if isinstance(ctx.store, YamlResourceStore) else None


def _record_key(store: Any) -> str:
    return f"{store.prefix}/configs"


def serves(ctx: AdminContext, rest: str, method: str) -> bool:
    """Whether this node answers ``method`` on ``/apisix/admin/<rest>`` here; otherwise the usual
    dispatch answers (``Unsupported resource type: configs`` on an etcd node, as APISIX)."""
    if rest == "configs/validate":
        return method == "POST"
    return rest == "configs" and _yaml_store(ctx) is not None


async def dispatch(ctx: AdminContext, request: web.Request, rest: str) -> web.StreamResponse:
    """Answer a request :func:`serves` accepted (the token is already checked)."""
    store = _yaml_store(ctx)
    method = request.method
    if rest == "configs/validate":
        return await _validate(ctx, store, request)
    assert store is not None
    try:
        if method in ("GET", "HEAD"):
            return await _get(store, request)
        if method == "PUT":
            return await _put(ctx, store, request)
    except StoreUnavailable as exc:
        raise error(503, str(exc)) from None
    return nginx_page(404)  # outside APISIX's standalone router


# -- reading ------------------------------------------------------------------------------------


def _conf_version(doc: dict[str, Any], collection: str) -> int:
    value = doc.get(collection + SUFFIX)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _public(doc: dict[str, Any], record: dict[str, Any] | None) -> dict[str, Any]:
    """The document as GET shows it: items (with the ``modifiedIndex`` they were given),
    ``plugins``, then every ``<res>_conf_version``."""
    indexes = (record or {}).get("indexes") or {}
    out: dict[str, Any] = {}
    for collection in COLLECTIONS:
        items = doc.get(collection)
        if isinstance(items, list) and items:
            out[collection] = [_with_index(collection, item, indexes) for item in items]
    if "plugins" in doc:
        out["plugins"] = doc["plugins"]
    for collection in COLLECTIONS:
        out[collection + SUFFIX] = _conf_version(doc, collection)
    return out


def _with_index(collection: str, item: Any, indexes: dict[str, Any]) -> Any:
    ident = _ident(collection, item)
    if ident is None or f"{collection}/{ident}" not in indexes:
        return item
    return {**item, "modifiedIndex": indexes[f"{collection}/{ident}"]}


def _meta_headers(record: dict[str, Any] | None) -> dict[str, str]:
    if record is None:
        return {}
    return {LAST_MODIFIED: str(record.get("last_modified", "")), DIGEST: str(record["digest"])}


async def _get(store: YamlResourceStore, request: web.Request) -> web.StreamResponse:
    doc, record = await store.read_document(_record_key(store))
    headers = _meta_headers(record)
    if request.method == "HEAD":
        resp = web.Response(status=200, headers=headers)
        resp.headers["Content-Type"] = "application/json"
        return resp
    body = _public(doc, record)
    if request.headers.get("Accept", "").startswith("application/yaml"):
        text = yaml.safe_dump(body, sort_keys=False, allow_unicode=True, default_flow_style=False)
        resp = web.Response(status=200, body=text.encode(), headers=headers)
        resp.headers["Content-Type"] = "application/yaml"
        return resp
    resp = reply(200, body)
    resp.headers.update(headers)
    return resp


# -- request bodies -----------------------------------------------------------------------------


async def _read_document(request: web.Request) -> dict[str, Any]:
    """The body as a document: YAML with ``Content-Type: application/yaml``, else JSON."""
    declared = request.content_length
    if declared is not None and declared > MAX_REQ_BODY:
        raise _too_big(declared)
    raw = b""
    while True:
        chunk = await request.content.readany()
        if not chunk:
            break
        raw += chunk
        if len(raw) > MAX_REQ_BODY:
            raise _too_big(declared if declared is not None else len(raw))
    if not raw:
        raise error(400, "invalid request body: empty request body")
    text = raw.decode("utf-8", errors="replace")
    if request.headers.get("Content-Type", "").startswith("application/yaml"):
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError:
            doc = None
        if not isinstance(doc, dict):
            raise error(400, "invalid request body: invalid yaml request body")
        return doc
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(400, "invalid request body: " + _cjson_message(exc)) from None
    if not isinstance(doc, dict):
        raise error(400, "invalid request body: the configuration must be an object")
    return doc


def _too_big(size: int) -> AdminError:
    return error(
        400,
        f"invalid request body: request size {size} is greater than the maximum size "
        f"{MAX_REQ_BODY} allowed",
    )


# -- checks -------------------------------------------------------------------------------------


def _ident(collection: str, item: Any) -> str | None:
    if not isinstance(item, dict):
        return None
    ident = item.get("id")
    if collection == "consumers" and ident is None:
        ident = item.get("username")
    return None if ident is None else checks.lua_str(ident)


def _version_error(body: dict[str, Any], collection: str) -> str | None:
    value = body.get(collection + SUFFIX)
    if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
        return None
    return f"{collection}{SUFFIX} must be a number, got {_LUA_TYPES.get(type(value), 'table')}"


def _item_error(registry: PluginRegistry, collection: str, item: Any) -> str | None:
    """APISIX's per-item check (schema and plugins; references are the document's business)."""
    if not isinstance(item, dict):
        return "invalid configuration: expected an object"
    item = {k: v for k, v in copy.deepcopy(item).items() if k != "modifiedIndex"}
    if collection in ("plugin_metadata", "secrets"):
        return None  # checked with the whole document
    if collection == "consumers" and "/credentials/" in str(item.get("id", "")):
        return None  # a credential: checked with the whole document
    err = schema_error(RESOURCES[collection].schema, item)
    if err is not None:
        return err
    if collection == "consumers":
        err = checks.plugins_error(registry, item.get("plugins"), "consumer")
        return None if err is None else "invalid plugins configuration: " + err
    return checks.plugins_error(registry, item.get("plugins"), "route")


def _items_errors(registry: PluginRegistry, collection: str, items: Any) -> list[dict[str, Any]]:
    """Every problem of one collection's items, as validate reports them."""
    if items is None:
        return []
    if not isinstance(items, list):
        return [{"resource_type": collection, "error": f"invalid {collection}: expected an array"}]
    found: list[dict[str, Any]] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        err = _item_error(registry, collection, item)
        if err is not None:
            message = f"invalid {collection} at index {index}, err: {err}"
            found.append({"resource_type": collection, "index": index, "error": message})
        ident = _ident(collection, item)
        if ident is None:
            continue
        if ident in seen:
            word = "id" if collection != "consumers" or "id" in item else "username"
            found.append({"resource_type": collection, "index": index,
                          "error": f"found duplicate {word} {ident} in {collection}"})  # fmt: skip
        seen.add(ident)
    return found


def _problem_entry(problem: Problem) -> dict[str, Any]:
    m = _PROBLEM_PATH.match(problem.path)
    if m is None:
        where = f"{problem.path}: " if problem.path else ""
        return {"error": where + problem.message}
    collection, index, rest = m.group(1), int(m.group(2)), m.group(3)
    where = f"{rest}: " if rest else ""
    return {
        "resource_type": collection,
        "index": index,
        "error": f"invalid {collection} at index {index}, err: {where}{problem.message}",
    }


def _rejected(exc: ConfigRejected) -> AdminError:
    if not exc.problems:
        return error(400, "invalid configuration")
    return error(400, _problem_entry(exc.problems[0])["error"])


# -- PUT ----------------------------------------------------------------------------------------


def _plan(registry: PluginRegistry, body: dict[str, Any], digest: str) -> Any:
    def plan(
        current: dict[str, Any], record: dict[str, Any] | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        if record is not None and record.get("digest") == digest:
            raise _Unchanged()
        old_indexes: dict[str, Any] = (record or {}).get("indexes") or {}
        indexes: dict[str, Any] = {}
        new: dict[str, Any] = {}
        versions: dict[str, int] = {}
        for collection in COLLECTIONS:
            version_key = collection + SUFFIX
            have = _conf_version(current, collection)
            want = body.get(version_key)
            if want is None:
                want = have + 1
            elif _version_error(body, collection) is not None:
                raise error(400, f"{version_key} must be a number")
            elif want < have:
                raise error(400, f"{version_key} must be greater than or equal to ({have})")
            versions[collection] = int(want)
            if want == have:  # this collection is left as it is
                if current.get(collection):
                    new[collection] = current[collection]
                indexes.update(
                    (k, v) for k, v in old_indexes.items() if k.startswith(collection + "/")
                )
                continue
            items = body.get(collection)
            for entry in _items_errors(registry, collection, items):
                raise error(400, entry["error"])
            if items:
                new[collection] = _items(collection, items, current, old_indexes, indexes)
        if "plugins" in body:
            new["plugins"] = body["plugins"]
        elif "plugins" in current:
            new["plugins"] = current["plugins"]
        for collection in COLLECTIONS:
            new[collection + SUFFIX] = versions[collection]
        record = {"digest": digest, "last_modified": int(time.time())}
        if indexes:
            record["indexes"] = indexes
        return new, record

    return plan


def _items(
    collection: str,
    items: list[Any],
    current: dict[str, Any],
    old_indexes: dict[str, Any],
    indexes: dict[str, Any],
) -> list[Any]:
    """The items to store: ``modifiedIndex`` is taken out (recorded); an item whose
    ``modifiedIndex`` is the one recorded for it keeps the stored item."""
    stored = {_ident(collection, i): i for i in current.get(collection) or [] if _ident(
        collection, i) is not None}  # fmt: skip
    out: list[Any] = []
    for item in items:
        if not isinstance(item, dict) or "modifiedIndex" not in item:
            out.append(item)
            continue
        ident = _ident(collection, item)
        index = item["modifiedIndex"]
        name = f"{collection}/{ident}"
        if ident is not None:
            indexes[name] = index
        if ident is not None and ident in stored and old_indexes.get(name) == index:
            out.append(stored[ident])
        else:
            out.append({k: v for k, v in item.items() if k != "modifiedIndex"})
    return out


async def _put(
    ctx: AdminContext, store: YamlResourceStore, request: web.Request
) -> web.StreamResponse:
    digest = request.headers.get(DIGEST)
    if digest is None:
        raise error(400, "missing digest header")
    body = await _read_document(request)
    try:
        await store.replace_document(_record_key(store), _plan(ctx.registry(), body, digest))
    except _Unchanged:
        return reply(204)
    except ConfigRejected as exc:
        raise _rejected(exc) from None
    return reply(202)


# -- POST /configs/validate ---------------------------------------------------------------------


async def _validate(
    ctx: AdminContext, store: YamlResourceStore | None, request: web.Request
) -> web.StreamResponse:
    body = await _read_document(request)
    registry = ctx.registry()
    errors: list[dict[str, Any]] = []
    for collection in COLLECTIONS:
        version_error = _version_error(body, collection)
        if version_error is not None:
            errors.append({"resource_type": collection, "error": version_error})
        errors.extend(_items_errors(registry, collection, body.get(collection)))
    if not errors and store is not None:
        candidate = {c: _strip_indexes(body[c]) for c in COLLECTIONS if body.get(c)}
        if "plugins" in body:
            candidate["plugins"] = body["plugins"]
        try:
            problems = await store.check_document(candidate)
        except StoreUnavailable as exc:
            raise error(503, str(exc)) from None
        errors.extend(_problem_entry(p) for p in problems)
    if errors:
        return reply(400, {"error_msg": "Configuration validation failed", "errors": errors})
    resp = web.Response(status=200, body=b"")
    resp.headers["Content-Type"] = "application/json"
    return resp


def _strip_indexes(items: list[Any]) -> list[Any]:
    return [
        {k: v for k, v in item.items() if k != "modifiedIndex"} if isinstance(item, dict) else item
        for item in items
    ]
