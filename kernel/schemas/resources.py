"""The JSON Schemas of APISIX's core resources, as Python dicts (spec §2.11, §5.1).

Field names, limits, patterns and defaults follow APISIX 3.x ``schema_def``.
Properties are listed metadata first; the validator checks them in this order.
Treat every dict here as read-only: validators are compiled from them and
cached by identity.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

PLUGINS: Schema = {"type": "object"}

ID_SCHEMA: Schema = {
    "anyOf": [
        {"type": "string", "minLength": 1, "maxLength": 64, "pattern": r"^[a-zA-Z0-9-_.]+$"},
        {"type": "integer", "minimum": 1},
    ]
}

HOST_PATTERN = r"^\*$|^\*?[0-9a-zA-Z-._\[\]:]+$"
HOST_DEF: Schema = {"type": "string", "pattern": HOST_PATTERN}

_IPV4_SEG = "([0-9]|[1-9][0-9]|1[0-9]{2}|2[0-4][0-9]|25[0-5])"
_IPV4 = r"\.".join([_IPV4_SEG] * 4)
# Loose on purpose (as upstream): a full IPv6/CIDR regex is not worth it.
_IPV6 = "([a-fA-F0-9]{0,4}:){1,8}(:[a-fA-F0-9]{0,4}){0,8}([a-fA-F0-9]{0,4})?"
IP_DEF: list[Schema] = [
    {"title": "IPv4", "type": "string", "format": "ipv4"},
    {"title": "IPv4/CIDR", "type": "string", "pattern": "^" + _IPV4 + "/([12]?[0-9]|3[0-2])$"},
    {"title": "IPv6", "type": "string", "format": "ipv6"},
    {"title": "IPv6/CIDR", "type": "string", "pattern": "^" + _IPV6 + "/[0-9]{1,3}$"},
]

TIMESTAMP: Schema = {"type": "integer"}
REMOTE_ADDR: Schema = {"description": "client IP", "type": "string", "anyOf": IP_DEF}
LABEL_VALUE: Schema = {
    "description": "value of label",
    "type": "string",
    "pattern": r"^\S+$",
    "maxLength": 256,
    "minLength": 1,
}
LABELS: Schema = {
    "description": "key/value pairs to specify attributes",
    "type": "object",
    "patternProperties": {".*": LABEL_VALUE},
}
NAME: Schema = {"type": "string", "maxLength": 256, "minLength": 1}
DESC: Schema = {"type": "string", "maxLength": 256}
TIMEOUT: Schema = {
    "type": "object",
    "properties": {
        "connect": {"type": "number", "exclusiveMinimum": 0},
        "send": {"type": "number", "exclusiveMinimum": 0},
        "read": {"type": "number", "exclusiveMinimum": 0},
    },
    "required": ["connect", "send", "read"],
}
HTTP_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE",
                "PURGE"]
METHOD: Schema = {"description": "HTTP method", "type": "string", "enum": HTTP_METHODS}


def _metadata(*, name: bool = True) -> dict[str, Schema]:
    fields: dict[str, Schema] = {"id": ID_SCHEMA}
    if name:
        fields["name"] = NAME
    fields.update(desc=DESC, labels=LABELS, create_time=TIMESTAMP, update_time=TIMESTAMP)
    return fields


def _statuses(default: list[int]) -> Schema:
    return {
        "type": "array",
        "minItems": 1,
        "items": {"type": "integer", "minimum": 200, "maximum": 599},
        "uniqueItems": True,
        "default": default,
    }


def _counter(default: int, minimum: int = 1) -> Schema:
    return {"type": "integer", "minimum": minimum, "maximum": 254, "default": default}


HEALTH_CHECK_ACTIVE: Schema = {
    "type": "object",
    "properties": {
        "type": {"type": "string", "enum": ["http", "https", "tcp"], "default": "http"},
        "timeout": {"type": "number", "default": 1},
        "concurrency": {"type": "integer", "default": 10},
        "host": HOST_DEF,
        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
        "http_path": {"type": "string", "default": "/"},
        "https_verify_certificate": {"type": "boolean", "default": True},
        "healthy": {
            "type": "object",
            "properties": {
                "interval": {"type": "integer", "minimum": 1, "default": 1},
                "http_statuses": _statuses([200, 302]),
                "successes": _counter(2),
            },
        },
        "unhealthy": {
            "type": "object",
            "properties": {
                "interval": {"type": "integer", "minimum": 1, "default": 1},
                "http_statuses": _statuses([429, 404, 500, 501, 502, 503, 504, 505]),
                "http_failures": _counter(5),
                "tcp_failures": _counter(2),
                "timeouts": _counter(3),
            },
        },
        "req_headers": {"type": "array", "minItems": 1, "items": {"type": "string"}},
    },
}

HEALTH_CHECK_PASSIVE: Schema = {
    "type": "object",
    "properties": {
        "type": {"type": "string", "enum": ["http", "https", "tcp"], "default": "http"},
        "healthy": {
            "type": "object",
            "properties": {
                "http_statuses": _statuses(
                    [200, 201, 202, 203, 204, 205, 206, 207, 208, 226,
                     300, 301, 302, 303, 304, 305, 306, 307, 308]
                ),
                "successes": _counter(5, minimum=0),
            },
        },
        "unhealthy": {
            "type": "object",
            "properties": {
                "http_statuses": _statuses([429, 500, 503]),
                "tcp_failures": _counter(2, minimum=0),
                "timeouts": _counter(7, minimum=0),
                "http_failures": _counter(5, minimum=0),
            },
        },
    },
}

HEALTH_CHECKER: Schema = {
    "type": "object",
    "properties": {"active": HEALTH_CHECK_ACTIVE, "passive": HEALTH_CHECK_PASSIVE},
    "additionalProperties": False,
    "anyOf": [{"required": ["active"]}, {"required": ["active", "passive"]}],
}

NODES: Schema = {
    "anyOf": [
        {
            "type": "object",
            "patternProperties": {
                ".*": {"description": "weight of node", "type": "integer", "minimum": 0}
            },
        },
        {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "host": HOST_DEF,
                    "port": {"description": "port of node", "type": "integer", "minimum": 1,
                             "maximum": 65535},
                    "weight": {"description": "weight of node", "type": "integer", "minimum": 0},
                    "priority": {"description": "priority of node", "type": "integer",
                                 "default": 0},
                    "metadata": {"description": "metadata of node", "type": "object"},
                },
                "required": ["host", "weight"],
            },
        },
    ]
}

CERTIFICATE: Schema = {"type": "string", "minLength": 128, "maxLength": 64 * 1024}
PRIVATE_KEY: Schema = {"type": "string", "minLength": 64, "maxLength": 64 * 1024}

UPSTREAM_SCHEMES = ["grpc", "grpcs", "http", "https", "tcp", "tls", "udp", "kafka"]

UPSTREAM: Schema = {
    "type": "object",
    "properties": {
        **_metadata(),
        "nodes": NODES,
        "retries": {"type": "integer", "minimum": 0},
        "retry_timeout": {"type": "number", "minimum": 0},
        "timeout": TIMEOUT,
        "tls": {
            "type": "object",
            "properties": {
                "client_cert_id": ID_SCHEMA,
                "client_cert": CERTIFICATE,
                "client_key": PRIVATE_KEY,
                "verify": {"type": "boolean", "default": False,
                           "description": "verify the upstream certificate (kafka only)"},
            },
            "dependencies": {
                "client_cert": {"required": ["client_key"],
                                "not": {"required": ["client_cert_id"]}},
                "client_key": {"required": ["client_cert"],
                               "not": {"required": ["client_cert_id"]}},
                "client_cert_id": {"not": {"required": ["client_cert", "client_key"]}},
            },
        },
        "keepalive_pool": {
            "type": "object",
            "properties": {
                "size": {"type": "integer", "default": 320, "minimum": 1},
                "idle_timeout": {"type": "number", "default": 60, "minimum": 0},
                "requests": {"type": "integer", "default": 1000, "minimum": 1},
            },
        },
        "type": {"description": "algorithms of load balancing", "type": "string",
                 "default": "roundrobin"},
        "checks": HEALTH_CHECKER,
        "hash_on": {
            "type": "string",
            "default": "vars",
            "enum": ["vars", "header", "cookie", "consumer", "vars_combinations"],
        },
        "key": {"description": "the key of chash for dynamic load balancing", "type": "string"},
        "scheme": {"default": "http", "enum": UPSTREAM_SCHEMES},
        "discovery_type": {"description": "discovery type", "type": "string"},
        "discovery_args": {
            "type": "object",
            "properties": {
                "namespace_id": {"description": "namespace id", "type": "string"},
                "group_name": {"description": "group name", "type": "string"},
            },
        },
        "pass_host": {"description": "mod of host passing", "type": "string",
                      "enum": ["pass", "node", "rewrite"], "default": "pass"},
        "upstream_host": HOST_DEF,
        "service_name": {"type": "string", "maxLength": 256, "minLength": 1},
    },
    "oneOf": [{"required": ["nodes"]}, {"required": ["service_name", "discovery_type"]}],
    "additionalProperties": False,
}

UPSTREAM_HASH_VARS: Schema = {
    "type": "string",
    "pattern": r"^((uri|server_name|server_addr|request_uri|remote_port|remote_addr|query_string"
               r"|host|hostname|mqtt_client_id)|arg_[0-9a-zA-z_-]+)$",
}
UPSTREAM_HASH_HEADER: Schema = {"type": "string", "pattern": r"^[a-zA-Z0-9-_]+$"}
UPSTREAM_HASH_VARS_COMBINATIONS: Schema = {"type": "string"}


def _one_of_pair(first: str, second: str) -> Schema:
    return {
        "oneOf": [
            {"not": {"anyOf": [{"required": [first]}, {"required": [second]}]}},
            {"required": [first]},
            {"required": [second]},
        ]
    }


ROUTE: Schema = {
    "type": "object",
    "properties": {
        **_metadata(),
        "uri": {"type": "string", "minLength": 1, "maxLength": 4096},
        "uris": {"type": "array", "items": {"description": "HTTP uri", "type": "string"},
                 "minItems": 1, "uniqueItems": True},
        "priority": {"type": "integer", "default": 0},
        "methods": {"type": "array", "items": METHOD, "uniqueItems": True},
        "host": HOST_DEF,
        "hosts": {"type": "array", "items": HOST_DEF, "minItems": 1, "uniqueItems": True},
        "remote_addr": REMOTE_ADDR,
        "remote_addrs": {"type": "array", "items": REMOTE_ADDR, "minItems": 1,
                         "uniqueItems": True},
        "timeout": TIMEOUT,
        "vars": {"type": "array"},
        "filter_func": {"type": "string", "minLength": 10, "pattern": "^function"},
        "script": {"type": "string", "minLength": 10, "maxLength": 102400},
        "script_id": ID_SCHEMA,
        "plugins": PLUGINS,
        "plugin_config_id": ID_SCHEMA,
        "upstream": UPSTREAM,
        "service_id": ID_SCHEMA,
        "upstream_id": ID_SCHEMA,
        "enable_websocket": {"description": "enable websocket for request", "type": "boolean"},
        "status": {"description": "route status, 1 to enable, 0 to disable", "type": "integer",
                   "enum": [1, 0], "default": 1},
    },
    "allOf": [
        {"oneOf": [{"required": ["uri"]}, {"required": ["uris"]}]},
        _one_of_pair("host", "hosts"),
        _one_of_pair("remote_addr", "remote_addrs"),
    ],
    "anyOf": [
        {"required": [what, where]}
        for where in ("uri", "uris")
        for what in ("plugins", "upstream", "upstream_id", "service_id")
    ] + [{"required": ["script", "uri"]}, {"required": ["script", "uris"]}],
    "not": {"anyOf": [{"required": ["script", "plugins"]},
                      {"required": ["script", "plugin_config_id"]}]},
    "additionalProperties": False,
}

SERVICE: Schema = {
    "type": "object",
    "properties": {
        **_metadata(),
        "plugins": PLUGINS,
        "upstream": UPSTREAM,
        "upstream_id": ID_SCHEMA,
        "script": {"type": "string", "minLength": 10, "maxLength": 102400},
        "enable_websocket": {"description": "enable websocket for request", "type": "boolean"},
        "hosts": {"type": "array", "items": HOST_DEF, "minItems": 1, "uniqueItems": True},
    },
    "additionalProperties": False,
}

CONSUMER: Schema = {
    "type": "object",
    "properties": {
        "username": {"type": "string", "minLength": 1, "maxLength": 256,
                     "pattern": r"^[a-zA-Z0-9_\-]+$"},
        "desc": DESC,
        "labels": LABELS,
        "create_time": TIMESTAMP,
        "update_time": TIMESTAMP,
        "group_id": ID_SCHEMA,
        "plugins": PLUGINS,
    },
    "required": ["username"],
    "additionalProperties": False,
}

CREDENTIAL: Schema = {
    "type": "object",
    "properties": {
        "id": {
            "oneOf": [
                ID_SCHEMA,
                {"type": "string", "minLength": 15, "maxLength": 128,
                 "pattern": r"^[a-zA-Z0-9-_]+/credentials/[a-zA-Z0-9-_.]+$"},
            ]
        },
        "name": NAME,
        "desc": DESC,
        "labels": LABELS,
        "create_time": TIMESTAMP,
        "update_time": TIMESTAMP,
        "plugins": {"type": "object", "maxProperties": 1},
    },
    "additionalProperties": False,
}


def _plugins_holder() -> Schema:
    return {
        "type": "object",
        "properties": {**_metadata(), "plugins": PLUGINS},
        "required": ["plugins"],
        "additionalProperties": False,
    }


PLUGIN_CONFIG: Schema = _plugins_holder()
CONSUMER_GROUP: Schema = _plugins_holder()

GLOBAL_RULE: Schema = {
    "type": "object",
    "properties": {
        "id": ID_SCHEMA,
        "create_time": TIMESTAMP,
        "update_time": TIMESTAMP,
        "plugins": PLUGINS,
    },
    "required": ["plugins"],
    "additionalProperties": False,
}

SSL: Schema = {
    "type": "object",
    "properties": {
        **_metadata(name=False),
        "type": {
            "description": "server: a certificate served to clients; client: one presented to "
                           "upstreams",
            "type": "string",
            "default": "server",
            "enum": ["server", "client"],
        },
        "cert": CERTIFICATE,
        "key": PRIVATE_KEY,
        "sni": {"type": "string", "pattern": HOST_PATTERN},
        "snis": {"type": "array", "items": {"type": "string", "pattern": HOST_PATTERN},
                 "minItems": 1},
        "certs": {"type": "array", "items": CERTIFICATE},
        "keys": {"type": "array", "items": PRIVATE_KEY},
        "client": {
            "type": "object",
            "properties": {
                "ca": CERTIFICATE,
                "depth": {"type": "integer", "minimum": 0, "default": 1},
                "skip_mtls_uri_regex": {
                    "type": "array",
                    "minItems": 1,
                    "uniqueItems": True,
                    "items": {"description": "uri regular expression to skip mtls",
                              "type": "string"},
                },
            },
            "required": ["ca"],
        },
        "status": {"description": "ssl status, 1 to enable, 0 to disable", "type": "integer",
                   "enum": [1, 0], "default": 1},
        "ssl_protocols": {
            "description": "set ssl protocols",
            "type": "array",
            "maxItems": 3,
            "uniqueItems": True,
            "items": {"enum": ["TLSv1.1", "TLSv1.2", "TLSv1.3"]},
        },
    },
    "if": {"properties": {"type": {"enum": ["server"]}}},
    "then": {"oneOf": [{"required": ["sni", "key", "cert"]},
                       {"required": ["snis", "key", "cert"]}]},
    "else": {"required": ["key", "cert"]},
    "additionalProperties": False,
}

PROTO: Schema = {
    "type": "object",
    "properties": {
        **_metadata(),
        "content": {"type": "string", "minLength": 1, "maxLength": 1024 * 1024},
    },
    "required": ["content"],
    "additionalProperties": False,
}

PLUGIN_METADATA: Schema = {"type": "object"}
"""Generic: the real check is the plugin's ``metadata_schema``, done where plugins are known."""

XRPC_PROTOCOL: Schema = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "superior_id": ID_SCHEMA,
        "conf": {"description": "protocol-specific configuration", "type": "object"},
        "logger": {
            "type": "array",
            "items": {
                "properties": {
                    "name": {"type": "string"},
                    "filter": {"description": "logger filter rules", "type": "array"},
                    "conf": {"description": "logger plugin configuration", "type": "object"},
                },
                "dependencies": {"name": ["conf"]},
                "additionalProperties": False,
            },
        },
    },
    "required": ["name"],
}

STREAM_ROUTE: Schema = {
    "type": "object",
    "properties": {
        **_metadata(),
        "remote_addr": REMOTE_ADDR,
        "server_addr": {"description": "server IP", "type": "string", "anyOf": IP_DEF},
        "server_port": {"description": "server port", "type": "integer", "minimum": 1,
                        "maximum": 65535},
        "sni": {"description": "server name indication", "type": "string",
                "pattern": HOST_PATTERN},
        "upstream": UPSTREAM,
        "upstream_id": ID_SCHEMA,
        "service_id": ID_SCHEMA,
        "plugins": PLUGINS,
        "protocol": XRPC_PROTOCOL,
    },
    "additionalProperties": False,
}

PLUGIN_LIST: Schema = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1},
            "stream": {"type": "boolean"},
        },
        "required": ["name"],
    },
}
"""The node's enabled-plugin list as stored in etcd ``/apisix/plugins`` (``[{name, stream?}]``)."""

SCHEMAS: dict[str, Schema] = {
    "route": ROUTE,
    "service": SERVICE,
    "upstream": UPSTREAM,
    "consumer": CONSUMER,
    "credential": CREDENTIAL,
    "consumer_group": CONSUMER_GROUP,
    "plugin_config": PLUGIN_CONFIG,
    "global_rule": GLOBAL_RULE,
    "ssl": SSL,
    "plugin_metadata": PLUGIN_METADATA,
    "proto": PROTO,
    "stream_route": STREAM_ROUTE,
    "id_schema": ID_SCHEMA,
    "plugins": PLUGIN_LIST,
}

KIND_ALIASES: dict[str, str] = {
    "routes": "route",
    "services": "service",
    "upstreams": "upstream",
    "consumers": "consumer",
    "credentials": "credential",
    "consumer_groups": "consumer_group",
    "plugin_configs": "plugin_config",
    "global_rules": "global_rule",
    "ssls": "ssl",
    "ssl": "ssl",
    "plugin_metadata": "plugin_metadata",
    "protos": "proto",
    "stream_routes": "stream_route",
}
"""Admin-API / etcd collection names (``routes``, ``global_rules``, ...) to schema kinds."""
