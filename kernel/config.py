"""``config.yaml``: read, substitute ``${{VAR}}``, deep-merge over the defaults, validate.

The defaults live in ``conf/config-default.yaml``. A copy ships inside the package as
``kernel/config_default.yaml`` (package data) so that an installed sixgate finds them;
a repository checkout prefers the ``conf/`` file. Both must stay identical.

Merge rules follow APISIX (``apisix/cli/file.lua``): mappings merge key by key, lists
(and empty mappings) replace, ``null`` deletes, and a scalar of another type than the
default is an error, except under ``nginx_config`` (number/string/boolean interchange),
``apisix.node_listen`` (a single number) and ``apisix.data_encryption.keyring`` (any).
"""

from __future__ import annotations

import copy
import io
import ipaddress
import json
import logging
import os
import re
import socket
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError

from kernel.envsubst import EnvSubstError, substitute_env
from kernel.schemas.messages import lua_type

log = logging.getLogger(__name__)

__all__ = [
    "Config",
    "ConfigError",
    "access_log_path",
    "deep_merge",
    "default_config_path",
    "instance_id",
    "listen_addresses",
    "load_config",
    "load_yaml",
    "parse_duration",
    "parse_flag",
    "parse_size",
    "ssl_listen_addresses",
    "worker_processes",
]

_KERNEL_DIR = Path(__file__).resolve().parent
_REPO_DEFAULT = _KERNEL_DIR.parent / "conf" / "config-default.yaml"
_PACKAGED_DEFAULT = _KERNEL_DIR / "config_default.yaml"


class ConfigError(Exception):
    """Invalid or unreadable configuration; the message is shown to the user verbatim."""


# ---------------------------------------------------------------------------------------
# YAML: YAML 1.2 booleans (only true/false), no timestamps. nginx-style `on`/`off` and
# `yes`/`no` stay strings, as in APISIX's YAML parser, and dates stay strings.

_BOOL_TAG = "tag:yaml.org,2002:bool"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"


class _Loader(yaml.SafeLoader):
    pass


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL_TAG, _TIMESTAMP_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_yaml(text: str, name: str | None = None) -> Any:
    """Parse YAML the way sixgate config files are parsed (only true/false are booleans).

    ``name`` (a file name) is used in parse error messages.
    """
    stream: Any = text
    if name is not None:
        stream = io.StringIO(text)
        stream.name = name
    return yaml.load(stream, Loader=_Loader)  # _Loader derives from SafeLoader


# ---------------------------------------------------------------------------------------
# Scalar helpers

_DURATION_UNITS = {
    "ms": 0.001,
    "s": 1,
    "m": 60,
    "h": 3600,
    "d": 86400,
    "w": 604800,
    "M": 2592000,
    "y": 31536000,
}
_DURATION_PART = r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|M|y)"
_DURATION_RE = rf"^\s*(?:\d+(?:\.\d+)?|(?:{_DURATION_PART}\s*)+)\s*$"
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_SIZE_RE = r"^\s*(\d+)\s*([kKmMgG]?)\s*$"


def parse_duration(value: int | float | str) -> float:
    """Seconds from a number (seconds) or an nginx time string: ``60s``, ``500ms``, ``1m30s``.

    Units: ms, s, m, h, d, w, M (30 days), y (365 days); a bare number is seconds.
    Raises ``ValueError`` for anything else.
    """
    if isinstance(value, bool):
        raise ValueError(f"invalid duration: {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"invalid duration: {value!r}")
        return float(value)
    if isinstance(value, str) and re.match(_DURATION_RE, value):
        text = value.strip()
        try:
            return float(text)
        except ValueError:
            return sum(float(n) * _DURATION_UNITS[u] for n, u in re.findall(_DURATION_PART, text))
    raise ValueError(f"invalid duration: {value!r}")


def parse_size(value: int | str) -> int:
    """Bytes from a number or an nginx size string: ``8k``, ``1m``, ``1g`` (1024-based)."""
    if isinstance(value, bool):
        raise ValueError(f"invalid size: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"invalid size: {value!r}")
        return value
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    if isinstance(value, str):
        match = re.match(_SIZE_RE, value)
        if match:
            return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    raise ValueError(f"invalid size: {value!r}")


def parse_flag(value: bool | str) -> bool:
    """An nginx on/off switch: ``True``/``False`` or ``"on"``/``"off"`` (also true/false)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("on", "true", "yes"):
        return True
    if text in ("off", "false", "no"):
        return False
    raise ValueError(f"invalid on/off value: {value!r}")


# ---------------------------------------------------------------------------------------
# Deep merge


def _multi_type(path: str, value: Any) -> bool:
    if path.startswith("nginx_config->") and lua_type(value) in ("number", "string", "boolean"):
        return True  # APISIX allows number/string; sixgate also booleans (nginx on/off)
    if path == "apisix->node_listen" and lua_type(value) == "number":
        return True
    return path in ("apisix->data_encryption->keyring", "apisix->plugin_watch")


def _merge_into(base: dict[Any, Any], override: Mapping[Any, Any], ppath: str) -> None:
    for key, val in override.items():
        path = f"{ppath}->{key}" if ppath else str(key)
        current = base.get(key)
        if val is None:
            base.pop(key, None)
        elif isinstance(val, list) or (isinstance(val, dict) and not val):
            base[key] = copy.deepcopy(val)
        elif isinstance(val, dict):
            if isinstance(current, dict):
                _merge_into(current, val, path)
            elif current is None or isinstance(current, list) or _multi_type(path, val):
                base[key] = {}
                _merge_into(base[key], val, path)
            else:
                raise ConfigError(
                    f"failed to merge, path[{path}] expect: {lua_type(current)}, but got: table"
                )
        elif current is None or lua_type(current) == lua_type(val) or _multi_type(path, val):
            base[key] = val
        else:
            raise ConfigError(
                f"failed to merge, path[{path}] expect: {lua_type(current)}, "
                f"but got: {lua_type(val)}"
            )


def deep_merge(base: Mapping[Any, Any], override: Mapping[Any, Any], path: str = "") -> dict:
    """Return ``override`` merged over ``base`` (neither input is modified).

    ``path`` is the ``a->b`` location of ``base`` (used in error messages).
    Raises :class:`ConfigError` ``failed to merge, path[a->b] expect: X, but got: Y``.
    """
    merged = copy.deepcopy(dict(base))
    _merge_into(merged, override, path)
    return merged


# ---------------------------------------------------------------------------------------
# Schema of the keys the kernel honours (unknown keys are allowed, as in APISIX)

# fmt: off
_PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
_BOOL = {"type": "boolean"}
_STR = {"type": "string"}
_NONEMPTY = {"type": "string", "minLength": 1}
_STRS = {"type": "array", "items": _STR}
_ADDR = {"type": "object", "properties": {"ip": _NONEMPTY, "port": _PORT}}
_DURATION = {"anyOf": [{"type": "number", "minimum": 0},
                       {"type": "string", "pattern": _DURATION_RE}],
             "x-expect": "a number of seconds or a duration such as 60s, 500ms, 1m30s"}
_SIZE = {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": _SIZE_RE}],
         "x-expect": "a number of bytes or a size such as 8k, 1m, 1g"}
_POS_SIZE = {"anyOf": [{"type": "integer", "minimum": 1},
                       {"type": "string", "pattern": r"^\s*[1-9]\d*\s*[kKmMgG]?\s*$"}],
             "x-expect": "a positive number of bytes or a size such as 8k"}
_FLAG = {"anyOf": [_BOOL, {"enum": ["on", "off"]}], "x-expect": "on, off, true or false"}
_CIDRS = {"type": "array", "items": {"type": "string", "format": "IP address or CIDR"}}
_LISTEN_ITEM = {"type": "object", "properties": {"ip": _NONEMPTY, "port": _PORT,
                                                  "enable_http2": _BOOL, "enable_http3": _BOOL}}
_PROVIDERS = {"traditional": ["etcd", "yaml"], "control_plane": ["etcd"],
              "data_plane": ["etcd", "yaml", "json", "xds"]}

_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apisix", "deployment"],
    "properties": {
        "apisix": {"type": "object", "properties": {
            "node_listen": {
                "anyOf": [_PORT, {"type": "array", "minItems": 1, "items": {
                    "anyOf": [_PORT, _LISTEN_ITEM],
                    "x-expect": "a port number (1-65535) or an {ip, port} object"}}],
                "x-expect": "a port number (1-65535), a list of port numbers "
                            "or a list of {ip, port} objects"},
            **{k: _BOOL for k in (
                "enable_admin", "enable_ipv6", "enable_http2", "enable_server_tokens",
                "enable_reuseport", "show_upstream_status_in_response_header",
                "delete_uri_tail_slash", "normalize_uri_like_servlet", "enable_control")},
            "router": {"type": "object", "properties": {
                "http": {"enum": ["radixtree_host_uri", "radixtree_uri",
                                  "radixtree_uri_with_parameter"]},
                "ssl": {"enum": ["radixtree_sni"]}}},
            "proxy_mode": {"enum": ["http", "stream", "http&stream"]},
            "dns_resolver": {"type": "array", "minItems": 1, "items": _NONEMPTY},
            "dns_resolver_valid": {"type": "integer", "minimum": 0},
            "resolver_timeout": {"type": "number", "exclusiveMinimum": 0},
            "ssl": {"type": "object", "properties": {
                "enable": _BOOL, "listen": {"type": "array", "items": _LISTEN_ITEM},
                "ssl_protocols": _STR, "ssl_trusted_certificate": _STR, "fallback_sni": _STR}},
            "control": _ADDR,
            "status": _ADDR,
            "id": {"anyOf": [_NONEMPTY, {"type": "integer"}],
                   "x-expect": "a non-empty string or an integer"},
            "data_encryption": {"type": "object", "properties": {
                "enable_encrypt_fields": _BOOL,
                "keyring": {"anyOf": [_STR, _STRS], "x-expect": "a string or a list of strings"}}},
            "plugin_dirs": {"type": "array", "items": _NONEMPTY},
            "plugin_watch": {"anyOf": [_BOOL, {"enum": ["poll"]}],
                             "x-expect": "true, false or \"poll\""},
            "pid_file": _NONEMPTY,
            "standalone_file": _NONEMPTY,
        }},
        "nginx_config": {"type": "object", "properties": {
            "error_log": _NONEMPTY,
            "error_log_level": {"enum": ["debug", "info", "notice", "warn", "error", "crit",
                                         "alert", "emerg"]},
            "worker_processes": {"anyOf": [{"type": "integer", "minimum": 1},
                                           {"type": "string", "pattern": r"^(auto|[1-9][0-9]*)$"}],
                                 "x-expect": "an integer >= 1 or auto"},
            "worker_shutdown_timeout": _DURATION,
            "http": {"type": "object", "properties": {
                "enable_access_log": _FLAG,
                "access_log": {"anyOf": [_STR, {"const": False}],
                               "x-expect": "a file path, or false/\"\" to disable"},
                "access_log_format": _STR,
                **{k: _DURATION for k in ("keepalive_timeout", "client_header_timeout",
                                          "client_body_timeout", "send_timeout")},
                "client_max_body_size": _SIZE,
                **{k: _POS_SIZE for k in ("max_request_line", "max_header_size",
                                          "max_headers_size")},
                "max_header_count": {"type": "integer", "minimum": 1},
                "real_ip_header": _NONEMPTY,
                "real_ip_from": _CIDRS,
                "real_ip_recursive": _FLAG,
                "upstream": {"type": "object", "properties": {
                    "keepalive": {"type": "integer", "minimum": 0},
                    "keepalive_requests": {"type": "integer", "minimum": 1},
                    "keepalive_timeout": _DURATION}},
            }},
        }},
        "plugins": {"type": "array", "items": _NONEMPTY},
        "stream_plugins": {"type": "array", "items": _NONEMPTY},
        "plugin_attr": {"type": "object", "additionalProperties": {"type": "object"}},
        "deployment": {
            "type": "object",
            "required": ["role"],
            "properties": {
                "role": {"enum": list(_PROVIDERS)},
                **{f"role_{role}": {"type": "object", "properties": {
                    "config_provider": {"enum": providers}}}
                   for role, providers in _PROVIDERS.items()},
                "admin": {"type": "object", "properties": {
                    "admin_key_required": _BOOL,
                    "admin_key": {"type": "array", "items": {
                        "type": "object", "required": ["name", "key", "role"],
                        "properties": {"name": _STR, "key": _STR,
                                       "role": {"enum": ["admin", "viewer"]}}}},
                    "enable_admin_cors": _BOOL,
                    "allow_admin": _CIDRS,
                    "admin_listen": _ADDR,
                    "https_admin": _BOOL,
                    "admin_api_version": {"enum": ["v3"]}}},
                "etcd": {"type": "object", "properties": {
                    "host": {"type": "array", "minItems": 1,
                             "items": {"type": "string", "pattern": "^https?://"}},
                    "prefix": {"type": "string", "pattern": "^/"},
                    **{k: {"type": "number", "exclusiveMinimum": 0} for k in (
                        "timeout", "watch_timeout", "health_check_timeout")},
                    "resync_delay": {"type": "number", "minimum": 0},
                    "startup_retry": {"type": "integer", "minimum": 0},
                    "user": _STR, "password": _STR,
                    "tls": {"type": "object", "properties": {
                        "cert": _STR, "key": _STR, "verify": _BOOL, "sni": _STR}}}},
            },
            "allOf": [
                {"if": {"properties": {"role": {"const": role}}, "required": ["role"]},
                 "then": {"required": [f"role_{role}"], "properties": {
                     f"role_{role}": {"required": ["config_provider"]}}}}
                for role in _PROVIDERS
            ],
        },
    },
}

# fmt: on

_FORMATS = FormatChecker(formats=())


@_FORMATS.checks("IP address or CIDR", raises=ValueError)
def _is_cidr(value: object) -> bool:
    if isinstance(value, str) and value != "unix:":
        ipaddress.ip_network(value, strict=False)
    return True


Draft202012Validator.check_schema(_SCHEMA)
_VALIDATOR = Draft202012Validator(_SCHEMA, format_checker=_FORMATS)
_MISMATCH = ("type", "enum", "const", "pattern", "format")


def _dotted(path: Any) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _explain(error: ValidationError) -> tuple[ValidationError, str]:
    """The error to report and its message; for anyOf, the branch the value's shape matched."""
    if error.validator in ("anyOf", "oneOf") and error.context:
        deeper = [e for e in error.context if e.relative_path or e.validator not in _MISMATCH]
        if len({e.schema_path[0] for e in deeper}) == 1:
            return _explain(max(deeper, key=lambda e: len(e.relative_path)))
        expect = error.schema.get("x-expect") if isinstance(error.schema, dict) else None
        if expect:
            return error, f"{error.instance!r} is invalid, expected {expect}"
    if error.validator == "format":
        return error, f"{error.instance!r} is not a valid {error.validator_value}"
    return error, error.message


def _validate(data: dict, source: Path) -> None:
    errors = sorted(_VALIDATOR.iter_errors(data), key=lambda e: _dotted(e.absolute_path))
    if not errors:
        return
    picked, message = _explain(errors[0])
    where = _dotted(picked.absolute_path)
    prefix = f"invalid configuration in {source}"
    raise ConfigError(f"{prefix}: {where}: {message}" if where else f"{prefix}: {message}")


# ---------------------------------------------------------------------------------------
# Loading


@dataclass(frozen=True)
class Config:
    """The merged, validated configuration and where it came from."""

    data: dict
    path: Path
    conf_dir: Path

    def resolve(self, p: str | Path) -> Path:
        """An absolute path: relative paths are taken from the directory holding config.yaml."""
        candidate = Path(p).expanduser()
        return candidate if candidate.is_absolute() else self.conf_dir / candidate

    def get(self, dotted: str, default: Any = None) -> Any:
        """``cfg.get("apisix.node_listen")``; list items by index (``a.0.b``)."""
        node: Any = self.data
        for part in dotted.split("."):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                return default
        return node


def default_config_path() -> Path:
    """The defaults file: ``conf/config-default.yaml`` of a checkout, else the packaged copy."""
    return _REPO_DEFAULT if _REPO_DEFAULT.is_file() else _PACKAGED_DEFAULT


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"failed to read {what} {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"failed to read {what} {path}: not UTF-8 ({exc.reason})") from exc


def _parse(text: str, path: Path) -> dict:
    try:
        data = load_yaml(text, str(path))
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML in {path}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"invalid {path}: the top level must be a mapping")
    return data


def _substitute(text: str, env: Mapping[str, str]) -> str:
    """``${{VAR}}`` substitution on every line that is not a whole-line comment."""
    lines = text.splitlines(keepends=True)
    for number, line in enumerate(lines, 1):
        if "${{" in line and not line.lstrip().startswith("#"):
            try:
                lines[number - 1] = substitute_env(line, env)
            except EnvSubstError as exc:
                message = re.sub(r"\(line \d+\)$", f"(line {number})", str(exc))
                raise ConfigError(message) from exc
    return "".join(lines)


def load_config(path: str | Path | None = None, env: Mapping[str, str] = os.environ) -> Config:
    """Load ``path`` (default ``conf/config.yaml`` under the cwd, ``conf/config-<p>.yaml``
    with ``APISIX_PROFILE=p``) merged over the defaults, then validate it."""
    profile = env.get("APISIX_PROFILE") or None
    if profile is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", profile):
        raise ConfigError(f"invalid APISIX_PROFILE {profile!r}: use letters, digits, _ . -")
    if path is None:
        path = Path("conf") / (f"config-{profile}.yaml" if profile else "config.yaml")
    config_path = Path(os.path.abspath(Path(path).expanduser()))

    defaults_path = default_config_path()
    defaults = _parse(_read(defaults_path, "default config file"), defaults_path)
    raw = _read(config_path, "config file")
    try:
        text = _substitute(raw, env)
    except ConfigError as exc:
        raise ConfigError(f"failed to handle configuration {config_path}: {exc}") from exc
    user = _parse(text, config_path)
    try:
        data = deep_merge(defaults, user)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (in {config_path})") from exc

    etcd_hosts = env.get("APISIX_DEPLOYMENT_ETCD_HOST")
    deployment = data.get("deployment")
    etcd = deployment.get("etcd") if isinstance(deployment, dict) else None
    if etcd_hosts and isinstance(etcd, dict):
        try:
            hosts = json.loads(etcd_hosts)
        except ValueError as exc:
            raise ConfigError(f"invalid APISIX_DEPLOYMENT_ETCD_HOST: {exc}") from exc
        if not isinstance(hosts, list):
            raise ConfigError("invalid APISIX_DEPLOYMENT_ETCD_HOST: expected a JSON array")
        etcd["host"] = hosts

    user_apisix = user.get("apisix")
    if profile and not (isinstance(user_apisix, dict) and "standalone_file" in user_apisix):
        apisix = data.get("apisix")
        if isinstance(apisix, dict) and apisix.get("standalone_file") == "apisix.yaml":
            apisix["standalone_file"] = f"apisix-{profile}.yaml"

    _validate(data, config_path)
    return Config(data=data, path=config_path, conf_dir=config_path.parent)


# ---------------------------------------------------------------------------------------
# Derived values


@lru_cache(maxsize=1)
def host_supports_ipv6() -> bool:
    """Whether an IPv6 socket can be bound on this host."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def _addresses(entries: Any, default_port: int, ipv6: bool) -> list[tuple[str, int]]:
    if not isinstance(entries, list):
        entries = [entries]
    out: list[tuple[str, int]] = []
    for entry in entries:
        ip, port = None, default_port
        if isinstance(entry, dict):
            ip = entry.get("ip")
            port = int(entry.get("port", default_port))
        else:
            port = int(entry)
        hosts = (
            ["0.0.0.0", "::"]
            if ip is None and ipv6
            else ["0.0.0.0"]
            if ip is None
            else [str(ip).strip("[]")]
        )
        for host in hosts:
            if (host, port) not in out:
                out.append((host, port))
    return out


def _ipv6(cfg: Config, ipv6: bool | None) -> bool:
    if not cfg.get("apisix.enable_ipv6", True):
        return False
    return host_supports_ipv6() if ipv6 is None else ipv6


def listen_addresses(cfg: Config, *, ipv6: bool | None = None) -> list[tuple[str, int]]:
    """``(ip, port)`` pairs of the HTTP proxy, from ``apisix.node_listen``, deduplicated.

    Entries without ``ip`` listen on ``0.0.0.0`` and, when ``apisix.enable_ipv6`` is on and
    the host supports IPv6 (``ipv6`` overrides the detection), also on ``::`` (bind those
    with ``IPV6_V6ONLY`` so both can coexist).
    """
    return _addresses(cfg.get("apisix.node_listen", [9080]), 9080, _ipv6(cfg, ipv6))


def ssl_listen_addresses(cfg: Config, *, ipv6: bool | None = None) -> list[tuple[str, int]]:
    """Same as :func:`listen_addresses` for ``apisix.ssl.listen`` (port default 9443);
    empty when ``apisix.ssl.enable`` is false."""
    if not cfg.get("apisix.ssl.enable", True):
        return []
    return _addresses(cfg.get("apisix.ssl.listen", []), 9443, _ipv6(cfg, ipv6))


def listener_conflict(cfg: Config, port: int, name: str,
                      others: Sequence[tuple[str, int]] = ()) -> str | None:
    """``sixgate start``'s check that the ``name`` port (``control``, ``prometheus``) is not
    also the Admin API's, one of ``others`` (``(name, port)``) or a proxy port, worded as
    ``apisix start`` words it (``None``: no conflict)."""
    from kernel.store.factory import admin_enabled, mode

    if admin_enabled(cfg):
        listen = cfg.get("deployment.admin.admin_listen") or {}
        if int(listen.get("port", 9180)) == port:
            return f"{name} port {port} conflicts with admin port"
    for other, other_port in others:
        if other_port == port:
            return f"{name} port {port} conflicts with {other} port"
    if mode(cfg)[0] != "control_plane":
        for _, http_port in listen_addresses(cfg, ipv6=False):
            if http_port == port:
                return f"http listen port {port} conflicts with {name} port"
        for _, https_port in ssl_listen_addresses(cfg, ipv6=False):
            if https_port == port:
                return f"https listen port {port} conflicts with {name} port"
    return None


def worker_processes(cfg: Config) -> int:
    """``nginx_config.worker_processes`` as a count (``auto`` = usable CPU cores)."""
    value = cfg.get("nginx_config.worker_processes", 1)
    if value == "auto":
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not on Linux
            return max(1, os.cpu_count() or 1)
    return int(value)


def access_log_path(cfg: Config) -> Path | None:
    """The access log file, or ``None`` when disabled (``enable_access_log`` off,
    ``access_log`` false or empty)."""
    if not parse_flag(cfg.get("nginx_config.http.enable_access_log", True)):
        return None
    target = cfg.get("nginx_config.http.access_log")
    if not target or not isinstance(target, str) or target.strip().lower() == "off":
        return None
    return cfg.resolve(target)


def instance_id(cfg: Config) -> str:
    """The instance id: ``apisix.uid`` beside config.yaml if present (trimmed, non-empty),
    else ``apisix.id``, else a new UUIDv4; a chosen id is written to ``apisix.uid``.

    Call it once, in the master process, before workers start.
    """
    uid_file = cfg.conf_dir / "apisix.uid"
    try:
        existing = uid_file.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        existing = ""
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("failed to read %s: %s", uid_file, exc)
        existing = ""
    if existing:
        return existing
    configured = cfg.get("apisix.id")
    uid = str(configured) if configured not in (None, "") else str(uuid.uuid4())
    if configured in (None, ""):
        log.info("no instance id found, generated %s", uid)
    try:
        uid_file.write_text(uid, encoding="utf-8")
    except OSError as exc:
        log.error("failed to write instance id to %s: %s", uid_file, exc)
    return uid
