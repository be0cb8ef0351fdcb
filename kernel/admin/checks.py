"""What a write must pass (spec §2.4, §2.5, §2.8, §2.9, §2.12) and what a delete must not break
(§2.10). Every function raises :class:`~kernel.admin.transport.AdminError` with APISIX's
message; other resources are read through the store."""

from __future__ import annotations

from typing import Any

from kernel.encryption import Keyring
from kernel.plugins.manager import PluginRegistry, check_conf
from kernel.schemas import ValidationError, validate_resource, vars_error
from kernel.schemas.messages import cjson_encode
from kernel.store.resources import Entry, ResourceStore

from .resources import ResourceKind
from .secrets import secret_error
from .transport import AdminError, error

FORBIDDEN = ("create_time", "update_time")

AUTH_KEY_ATTRS: dict[str, str] = {
    "key-auth": "key",
    "basic-auth": "username",
    "jwt-auth": "key",
    "hmac-auth": "key_id",
}
"""Plugin -> the conf field that must be unique across consumers and credentials."""


def lua_str(value: Any) -> str:
    """``tostring`` of a JSON scalar as Lua prints it (ids compared/printed as strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# -- generic part of check_conf ----------------------------------------------------------------


def check_id(rk: ResourceKind, path_id: str | None, conf: Any, need_id: bool) -> Any:
    """Id agreement; sets ``conf["id"]`` (as given) and returns the id (``None`` on POST)."""
    body_id = conf.get("id") if isinstance(conf, dict) else None
    rid: Any = path_id if path_id is not None or rk.name == "secrets" else body_id
    if need_id and rid is None:
        raise error(400, f"missing {rk.kind} id")
    if not need_id and rid is not None:
        raise error(400, f"wrong {rk.kind} id, do not need it")
    if need_id and body_id is not None and lua_str(body_id) != lua_str(rid):
        raise error(400, f"wrong {rk.kind} id")
    if isinstance(conf, dict) and rid is not None:
        conf["id"] = rid
    return rid


def check_forbidden(conf: Any) -> None:
    """Clients may not send ``create_time`` / ``update_time`` on PUT/POST."""
    if not isinstance(conf, dict):
        return
    prefix = "the property is forbidden: "
    for name in FORBIDDEN:
        if conf.get(name):
            raise error(400, f"{prefix} {name}")
    for holder in ("upstream", "plugins"):
        sub = conf.get(holder)
        if isinstance(sub, dict):
            for name in FORBIDDEN:
                if sub.get(name):
                    raise error(400, f"{prefix} {holder}.{name}")


def schema_check(kind: str, conf: Any) -> None:
    try:
        validate_resource(kind, conf)
    except ValidationError as exc:
        raise error(400, exc.message) from None


# -- plugins -------------------------------------------------------------------------------------


def plugins_error(registry: PluginRegistry, plugins: Any, schema_type: str) -> str | None:
    """The first problem of a ``plugins`` object, or ``None``."""
    if not isinstance(plugins, dict):
        return None
    for name, conf in plugins.items():
        if not isinstance(conf, dict):
            return f"invalid plugin conf {cjson_encode(conf)} for plugin [{name}]"
        info = registry.get(name)
        if info is None:
            return f"unknown plugin [{name}]"
        meta = conf.get("_meta")
        disabled = isinstance(meta, dict) and meta.get("disable") is True
        err = check_conf(info, conf, schema_type)
        if err is not None and not disabled:
            return f"failed to check the configuration of plugin {name} err: {err}"
        if isinstance(meta, dict) and meta.get("filter") is not None:
            ferr = vars_error(meta["filter"])
            if ferr is not None:
                return ferr
    return None


# -- references ----------------------------------------------------------------------------------


async def require(store: ResourceStore, directory: str, rid: Any, what: str) -> Entry:
    entry = await store.get(f"{store.prefix}/{directory}/{lua_str(rid)}")
    if entry is None:
        raise error(
            400, f"failed to fetch {what} info by {what} id [{lua_str(rid)}], response code: 404"
        )
    return entry


async def check_route_refs(store: ResourceStore, conf: dict[str, Any]) -> None:
    if conf.get("upstream_id") is not None:
        await require(store, "upstreams", conf["upstream_id"], "upstream")
    if conf.get("service_id") is not None:
        await require(store, "services", conf["service_id"], "service")
    if conf.get("plugin_config_id") is not None:
        await require(store, "plugin_configs", conf["plugin_config_id"], "plugin config")


async def check_client_cert(store: ResourceStore, conf: dict[str, Any]) -> None:
    tls = conf.get("tls")
    if not isinstance(tls, dict) or tls.get("client_cert_id") is None:
        return
    cid = tls["client_cert_id"]
    entry = await require(store, "ssls", cid, "ssl")
    value = entry.value if isinstance(entry.value, dict) else {}
    if value.get("type") != "client":
        raise error(400, f"failed to fetch ssl info by ssl id [{lua_str(cid)}], wrong ssl type")


async def _consumers_and_credentials(store: ResourceStore) -> list[Entry]:
    """Every consumer followed by its credentials (stores may leave sub-keys out of lists)."""
    base = f"{store.prefix}/consumers/"
    out: list[Entry] = []
    seen: set[str] = set()
    for entry in await store.list(base):
        if entry.key in seen:
            continue
        seen.add(entry.key)
        out.append(entry)
        if "/" in entry.key[len(base) :]:
            continue
        for cred in await store.list(entry.key + "/credentials/"):
            if cred.key not in seen:
                seen.add(cred.key)
                out.append(cred)
    return out


async def check_duplicate_keys(
    store: ResourceStore, own_key: str, plugins: Any, keyring: Keyring | None = None
) -> None:
    """Auth keys (key-auth ``key``, ...) must be unique across consumers and credentials.
    Stored keys may be encrypted (spec §10.2): ``keyring`` decrypts them for the comparison."""
    if not isinstance(plugins, dict):
        return
    wanted = {
        name: conf[attr]
        for name, attr in AUTH_KEY_ATTRS.items()
        if isinstance(conf := plugins.get(name), dict) and conf.get(attr) is not None
    }
    if not wanted:
        return
    base = f"{store.prefix}/consumers/"
    for entry in await _consumers_and_credentials(store):
        if entry.key == own_key or not isinstance(entry.value, dict):
            continue
        other = entry.value.get("plugins")
        if not isinstance(other, dict):
            continue
        for name, value in wanted.items():
            conf = other.get(name)
            attr = AUTH_KEY_ATTRS[name]
            if not isinstance(conf, dict) or _revealed(conf.get(attr), keyring) != value:
                continue
            rest = entry.key[len(base) :]
            if "/credentials/" in rest:
                user, cid = rest.split("/credentials/", 1)
                raise error(
                    400,
                    f"duplicate key of plugin {name} found with credential: {cid} "
                    f"of consumer: {user}",
                )
            raise error(400, f"duplicate key of plugin {name} found with consumer: {rest}")


def _revealed(stored: Any, keyring: Keyring | None) -> Any:
    if keyring is None or not isinstance(stored, str):
        return stored
    plain = keyring.decrypt(stored)
    return stored if plain is None else plain


# -- per-resource checkers -----------------------------------------------------------------------


async def check_resource(
    rk: ResourceKind,
    conf: Any,
    *,
    store: ResourceStore,
    registry: PluginRegistry,
    rid: Any,
    key: str,
    path_username: str | None = None,
    keyring: Keyring | None = None,
) -> None:
    """The resource's own checks (after id and forbidden-field checks)."""
    name = rk.name
    if name == "plugin_metadata":
        info = registry.get(str(rid))
        if info is None:
            raise error(400, "invalid plugin name")
        err = check_conf(info, conf, "metadata")
        if err is not None:
            raise error(400, "invalid configuration: " + err)
        return
    if name == "secrets":
        manager = str(rid).split("/", 1)[0]
        err = secret_error(manager, conf)
        if err is not None:
            raise error(400, err)
        return
    schema_check(rk.schema, conf)
    assert isinstance(conf, dict)
    if name in ("routes", "stream_routes"):
        await check_route_refs(store, conf)
    elif name == "services":
        if conf.get("upstream_id") is not None:
            await require(store, "upstreams", conf["upstream_id"], "upstream")
    elif name == "upstreams":
        await check_client_cert(store, conf)
    elif (
        name == "consumers" and path_username is not None and path_username != conf.get("username")
    ):
        raise error(400, "wrong username")
    if name in ("consumers", "credentials"):
        if conf.get("plugins") is not None:
            err = plugins_error(registry, conf["plugins"], "consumer")
            if err is not None:
                raise error(400, "invalid plugins configuration: " + err)
        if name == "credentials" and isinstance(conf.get("plugins"), dict):
            for pname in conf["plugins"]:
                info = registry.get(pname)
                if info is None:
                    raise error(400, f"unknown plugin {pname}")
                if info.type != "auth":
                    raise error(400, "only supports auth type plugins in consumer credential")
        if name == "consumers" and conf.get("group_id") is not None:
            await require(store, "consumer_groups", conf["group_id"], "consumer group")
        await check_duplicate_keys(store, key, conf.get("plugins"), keyring)
        return
    err = plugins_error(registry, conf.get("plugins"), "route")
    if err is not None:
        raise error(400, err)
    if name == "global_rules" and isinstance(conf.get("plugins"), dict):
        for entry in await store.list(f"{store.prefix}/global_rules/"):
            if entry.key == key or not isinstance(entry.value, dict):
                continue
            other = entry.value.get("plugins")
            if not isinstance(other, dict):
                continue
            for pname in conf["plugins"]:
                if pname in other:
                    oid = entry.value.get("id", entry.key.rsplit("/", 1)[-1])
                    raise error(
                        400,
                        f"plugin '{pname}' already exists in global rule with id '{lua_str(oid)}'",
                    )


# -- delete checks -------------------------------------------------------------------------------


def _item_name(entry: Entry) -> str:
    value = entry.value if isinstance(entry.value, dict) else {}
    ident = value.get("id", value.get("username"))
    return lua_str(ident) if ident is not None else entry.key.rsplit("/", 1)[-1]


def _traffic_split_uses(plugins: Any, uid: str) -> bool:
    if not isinstance(plugins, dict):
        return False
    conf = plugins.get("traffic-split")
    if not isinstance(conf, dict):
        return False
    for rule in conf.get("rules") or []:
        if not isinstance(rule, dict):
            continue
        for wu in rule.get("weighted_upstreams") or []:
            if (
                isinstance(wu, dict)
                and wu.get("upstream_id") is not None
                and lua_str(wu["upstream_id"]) == uid
            ):
                return True
    return False


async def _entries(store: ResourceStore, directory: str) -> list[Entry]:
    entries = await store.list(f"{store.prefix}/{directory}/")
    if directory == "consumers":
        entries = [e for e in entries if "/credentials/" not in e.key[len(store.prefix) :]]
    return entries


async def _users_of(store: ResourceStore, directory: str, field: str, rid: str) -> str | None:
    for entry in await _entries(store, directory):
        value = entry.value
        if (
            isinstance(value, dict)
            and value.get(field) is not None
            and lua_str(value[field]) == rid
        ):
            return _item_name(entry)
    return None


_PLUGIN_HOLDERS = (
    ("routes", "route"),
    ("services", "service"),
    ("plugin_configs", "plugin_config"),
    ("consumers", "consumer"),
    ("consumer_groups", "consumer_group"),
    ("global_rules", "global_rules"),
)


async def check_delete(store: ResourceStore, rk: ResourceKind, rid: str) -> None:
    """Refuse deleting what others still reference (bypassed by ``?force=true``)."""
    if rk.name == "upstreams":
        for directory, label in (("routes", "route"), ("services", "service")):
            user = await _users_of(store, directory, "upstream_id", rid)
            if user is not None:
                raise error(
                    400, f"can not delete this upstream, {label} [{user}] is still using it now"
                )
        for directory, label in _PLUGIN_HOLDERS:
            for entry in await _entries(store, directory):
                value = entry.value if isinstance(entry.value, dict) else {}
                if _traffic_split_uses(value.get("plugins"), rid):
                    raise error(
                        400,
                        f"can not delete this upstream, plugin in {label} "
                        f"[{_item_name(entry)}] is still using it now",
                    )
    elif rk.name == "services":
        for directory, label in (("routes", "route"), ("stream_routes", "stream_route")):
            user = await _users_of(store, directory, "service_id", rid)
            if user is not None:
                raise error(
                    400,
                    f"can not delete this service directly, {label} [{user}] is still using it now",
                )
    elif rk.name == "plugin_configs":
        user = await _users_of(store, "routes", "plugin_config_id", rid)
        if user is not None:
            raise error(
                400, f"can not delete this plugin config, route [{user}] is still using it now"
            )
    elif rk.name == "consumer_groups":
        user = await _users_of(store, "consumers", "group_id", rid)
        if user is not None:
            raise error(
                400,
                f"can not delete this consumer group, consumer [{user}] is still using it now",
            )
    elif rk.name == "protos":
        for directory, label in (("routes", "route"), ("services", "service")):
            for entry in await _entries(store, directory):
                value = entry.value if isinstance(entry.value, dict) else {}
                plugins = value.get("plugins")
                conf = plugins.get("grpc-transcode") if isinstance(plugins, dict) else None
                if (
                    isinstance(conf, dict)
                    and conf.get("proto_id") is not None
                    and lua_str(conf["proto_id"]) == rid
                ):
                    raise error(
                        400,
                        f"can not delete this proto, {label} [{_item_name(entry)}] "
                        "is still using it now",
                    )
    elif rk.name == "stream_routes":
        for entry in await _entries(store, "stream_routes"):
            value = entry.value if isinstance(entry.value, dict) else {}
            proto = value.get("protocol")
            if (
                isinstance(proto, dict)
                and proto.get("superior_id") is not None
                and lua_str(proto["superior_id"]) == rid
            ):
                raise error(
                    400,
                    "can not delete this stream route directly, stream route "
                    f"[{_item_name(entry)}] is still using it as superior_id",
                )


__all__ = [
    "AdminError",
    "check_delete",
    "check_forbidden",
    "check_id",
    "check_resource",
    "lua_str",
    "plugins_error",
]
