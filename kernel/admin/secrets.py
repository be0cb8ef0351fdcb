"""Secret managers accepted by ``/apisix/admin/secrets/<manager>/<id>`` (spec §2.11 "Secret").

Only the configuration is checked here (APISIX's ``apisix/secret/<manager>.lua`` schemas);
resolving ``$secret://`` references is the data plane's business.
"""

from __future__ import annotations

from typing import Any

from kernel.schemas.engine import check_and_fill

_URI_DEF: dict[str, Any] = {
    "type": "string",
    "pattern": r"^[^\/]+:\/\/([\da-zA-Z.-]+|\[[\da-fA-F:]+\])(:\d+)?",
}

MANAGER_SCHEMAS: dict[str, dict[str, Any]] = {
    "vault": {
        "type": "object",
        "properties": {
            "uri": _URI_DEF,
            "prefix": {"type": "string"},
            "token": {"type": "string"},
            "namespace": {"type": "string"},
        },
        "required": ["uri", "prefix", "token"],
    },
    "aws": {
        "type": "object",
        "properties": {
            "access_key_id": {"type": "string"},
            "secret_access_key": {"type": "string"},
            "session_token": {"type": "string"},
            "region": {"type": "string", "default": "us-east-1"},
            "endpoint_url": _URI_DEF,
        },
        "required": ["access_key_id", "secret_access_key"],
    },
    "gcp": {
        "type": "object",
        "properties": {
            "auth_config": {
                "type": "object",
                "properties": {
                    "client_email": {"type": "string"},
                    "private_key": {"type": "string"},
                    "project_id": {"type": "string"},
                    "token_uri": {"type": "string"},
                    "scope": {"type": "array", "items": {"type": "string"}},
                    "entries_uri": {"type": "string"},
                },
                "required": ["client_email", "private_key", "project_id"],
            },
            "auth_file": {"type": "string"},
            "ssl_verify": {"type": "boolean", "default": True},
        },
        "oneOf": [{"required": ["auth_config"]}, {"required": ["auth_file"]}],
    },
}


def secret_error(manager: str, conf: Any) -> str | None:
    """APISIX's message for a secret configuration, or ``None`` when it is acceptable."""
    schema = MANAGER_SCHEMAS.get(manager)
    if schema is None:
        return f"invalid secret manager: {manager}"
    err = check_and_fill(schema, conf)[1]
    return None if err is None else "invalid configuration: " + err
