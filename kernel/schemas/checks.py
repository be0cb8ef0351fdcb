"""Resource checks APISIX runs besides the JSON Schema (spec §2.8, §2.11, §5.1).

Each checker takes the *validated, defaults-filled copy* (as APISIX's checkers
see the conf after ``core.schema.check`` filled it) and returns an error
message or ``None``. Messages are APISIX's, prefix included where it has one.

Not here: id/path agreement and references to other stored objects (the Admin
API's), and plugin confs (they need the plugin registry).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from .engine import raw_validator
from .messages import lua_num
from .pem import is_secret_ref, validate_pair
from .resources import UPSTREAM_HASH_HEADER, UPSTREAM_HASH_VARS, UPSTREAM_HASH_VARS_COMBINATIONS

Checker = Callable[[dict[str, Any]], str | None]

FILTER_FUNC_UNSUPPORTED = (
    "failed to load 'filter_func' string: filter_func is Lua code, which sixgate does not run; "
    "use a 'vars' expression instead"
)
SCRIPT_UNSUPPORTED = (
    "failed to load 'script' string: script is Lua code, which sixgate does not run; "
    "use plugins instead"
)
IPV6_UNBRACKETED = "invalid configuration: IPv6 address must be enclosed with '[' and ']'"


def _truthy(conf: dict[str, Any], key: str) -> bool:
    """Lua truthiness of ``conf[key]``: set and not ``false`` (JSON null counts as set)."""
    return key in conf and conf[key] is not False


def pre_schema_route(conf: Any) -> str | None:
    """Checks APISIX makes on a route before its schema (mutually exclusive fields)."""
    if not isinstance(conf, dict):
        return None
    if _truthy(conf, "host") and _truthy(conf, "hosts"):
        return "only one of host or hosts is allowed"
    if _truthy(conf, "remote_addr") and _truthy(conf, "remote_addrs"):
        return "only one of remote_addr or remote_addrs is allowed"
    return None


def vars_error(expr: Any) -> str | None:
    """Compile a ``vars`` expression; the message APISIX gives when it does not compile."""
    # Imported late: plugin_sdk.expr is another module's and may load after this one.
    from plugin_sdk.errors import ExprError
    from plugin_sdk.expr import compile_expr

    try:
        compile_expr(expr)
    except ExprError as exc:
        return f"failed to validate the 'vars' expression: {exc}"
    return None


def _is_ipv6_literal(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def _lua_tonumber(text: str) -> float | int | None:
    text = text.strip()
    if not text:
        return None
    try:
        return int(text, 0) if text.lower().startswith("0x") else int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return None


def _hash_node_error(addr: str) -> str | None:
    """Check one ``"host:port"`` key of the hash form of ``nodes``."""
    if addr.startswith("["):
        close = addr.find("]")
        rest = addr[close + 1 :] if close != -1 else ""
        port_text = rest[1:] if rest.startswith(":") else None
    else:
        if addr.count(":") > 1:
            return IPV6_UNBRACKETED
        port_text = addr.rsplit(":", 1)[1] if ":" in addr else None
    if port_text is None:
        return None
    port = _lua_tonumber(port_text)
    if port is not None and not 1 <= port <= 65535:
        return f"invalid port {lua_num(port)}"
    return None


def nodes_error(nodes: Any) -> str | None:
    """IPv6 hosts must be bracketed; ports of the hash form must be 1..65535."""
    if isinstance(nodes, dict):
        for addr in nodes:
            err = _hash_node_error(str(addr))
            if err is not None:
                return err
    elif isinstance(nodes, list):
        for node in nodes:
            host = node.get("host") if isinstance(node, dict) else None
            if isinstance(host, str) and not host.startswith("[") and _is_ipv6_literal(host):
                return IPV6_UNBRACKETED
    return None


_CHASH_KEY_SCHEMAS = {
    "vars": UPSTREAM_HASH_VARS,
    "header": UPSTREAM_HASH_HEADER,
    "cookie": UPSTREAM_HASH_HEADER,
    "vars_combinations": UPSTREAM_HASH_VARS_COMBINATIONS,
}


def check_upstream(conf: dict[str, Any]) -> str | None:
    """APISIX's ``check_upstream_conf`` after the schema (inline upstreams too)."""
    err = nodes_error(conf.get("nodes"))
    if err is not None:
        return err
    if conf.get("pass_host") == "rewrite" and conf.get("upstream_host") in (None, ""):
        return "`upstream_host` can't be empty when `pass_host` is `rewrite`"
    tls = conf.get("tls")
    if isinstance(tls, dict) and _truthy(tls, "client_cert"):
        cert, key = tls.get("client_cert"), tls.get("client_key")
        if not (is_secret_ref(cert) or is_secret_ref(key)):
            err = validate_pair(cert, key)
            if err is not None:
                return err
    if conf.get("type") != "chash":
        return None
    hash_on = conf.get("hash_on")
    if hash_on != "consumer" and not _truthy(conf, "key"):
        return "missing key"
    if hash_on == "consumer":
        return None
    key_schema = _CHASH_KEY_SCHEMAS.get(hash_on) if isinstance(hash_on, str) else None
    if key_schema is None:
        return f"type is chash, err: invalid hash_on type {hash_on}"
    err = raw_validator(key_schema)(conf.get("key"))
    if err is not None:
        return "invalid configuration: " + err
    return None


def _inline_upstream(conf: dict[str, Any]) -> str | None:
    upstream = conf.get("upstream")
    if isinstance(upstream, dict):
        return check_upstream(upstream)
    return None


def check_route(conf: dict[str, Any]) -> str | None:
    err = _inline_upstream(conf)
    if err is not None:
        return err
    if _truthy(conf, "vars"):
        err = vars_error(conf["vars"])
        if err is not None:
            return err
    if _truthy(conf, "filter_func"):
        return FILTER_FUNC_UNSUPPORTED
    if _truthy(conf, "script"):
        return SCRIPT_UNSUPPORTED
    return None


def check_service(conf: dict[str, Any]) -> str | None:
    err = _inline_upstream(conf)
    if err is not None:
        return err
    if _truthy(conf, "script"):
        return SCRIPT_UNSUPPORTED
    return None


def check_stream_route(conf: dict[str, Any]) -> str | None:
    return _inline_upstream(conf)


def check_ssl(conf: dict[str, Any]) -> str | None:
    """Certificates and keys must parse; extra ``certs``/``keys`` come in pairs."""
    cert, key = conf.get("cert"), conf.get("key")
    if not (is_secret_ref(cert) or is_secret_ref(key)):
        err = validate_pair(cert, key)
        if err is not None:
            return err
    if conf.get("type") == "client":
        return None
    certs = conf.get("certs") or []
    keys = conf.get("keys") or []
    if len(certs) != len(keys):
        return "mismatched number of certs and keys"
    for index, (extra_cert, extra_key) in enumerate(zip(certs, keys, strict=True), 1):
        if is_secret_ref(extra_cert) or is_secret_ref(extra_key):
            continue
        err = validate_pair(extra_cert, extra_key)
        if err is not None:
            return f"failed to handle cert-key pair[{index}]: {err}"
    return None


POST_SCHEMA: dict[str, Checker] = {
    "route": check_route,
    "service": check_service,
    "upstream": check_upstream,
    "stream_route": check_stream_route,
    "ssl": check_ssl,
}
"""Kind -> checker run on the validated copy (kinds absent here have no extra checks)."""
