"""jwt-auth (APISIX priority 2510, rewrite, auth): identify the caller by a signed JSON Web Token.

The token is read from the request header ``header`` (default ``Authorization``; a ``Bearer ``
prefix, any case, is dropped), else the query argument ``query``, else the cookie ``cookie``
(both default ``jwt``). The consumer is the one whose (or whose credential's) ``jwt-auth.key``
equals the payload claim ``key_claim_name`` (default ``key``). The token header's ``alg`` must
be the consumer's ``algorithm`` (HS256/384/512 with ``secret``, base64-decoded first when
``base64_secret``; RS*/PS*/ES*/EdDSA with the PEM ``public_key``) and the signature must
verify. ``exp`` and ``nbf`` are checked when present, with ``lifetime_grace_period`` seconds of
leeway; the claims listed in ``claims_to_verify`` must be present.

Failures answer 401 ``{"message": ...}`` with ``WWW-Authenticate: Bearer realm="<realm>"``:
``Missing JWT token in request``, ``JWT token invalid`` (not a JWT), ``missing user key in
JWT token``, ``Invalid user key in JWT token``, ``failed to verify jwt`` (algorithm, signature
or claims). With ``anonymous_consumer`` a failure attaches that consumer instead (401
``Invalid user authorization`` when it does not exist).

On success, as key-auth: the consumer is attached and the upstream request gets
``X-Consumer-Username``, ``X-Credential-Identifier`` and ``X-Consumer-Custom-ID`` (unset ones
removed). ``store_in_ctx`` puts the verified payload in ``ctx.shared["jwt_auth_payload"]`` for
later plugins. ``hide_credentials`` keeps the token from the upstream: the header is removed,
the query argument dropped, or the cookie taken out of ``Cookie``.

A consumer's keys (the secret or the parsed public key) are prepared once per consumer conf and
reused by every request. ``secret`` is listed in ``encrypt_fields``. The consumer's ``exp`` is
accepted for compatibility (APISIX used it to sign tokens); sixgate does not sign tokens.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from dataclasses import dataclass
from typing import Any

from builtin_plugins._auth import anonymous, drop_query_arg, identify, unauthorized
from plugin_sdk import ConfCache, Consumer, Response, hookimpl

name = "jwt-auth"
version = "0.1"
priority = 2510
type = "auth"

HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
KEY_ALGORITHMS = (
    "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "EdDSA",
)

schema: dict[str, Any] = {
    "type": "object",
    "properties": {
        "header": {"type": "string", "default": "authorization"},
        "query": {"type": "string", "default": "jwt"},
        "cookie": {"type": "string", "default": "jwt"},
        "hide_credentials": {"type": "boolean", "default": False},
        "key_claim_name": {"type": "string", "minLength": 1, "default": "key"},
        "store_in_ctx": {"type": "boolean", "default": False},
        "realm": {"type": "string", "minLength": 1, "default": "jwt"},
        "anonymous_consumer": {"type": "string", "minLength": 1},
        "claims_to_verify": {
            "type": "array",
            "items": {"type": "string", "enum": ["exp", "nbf"]},
            "uniqueItems": True,
        },
    },
}

consumer_schema: dict[str, Any] = {
    "type": "object",
    "properties": {
        "key": {"type": "string", "minLength": 1},
        "secret": {"type": "string", "minLength": 1},
        "algorithm": {
            "type": "string",
            "enum": [*HMAC_ALGORITHMS, *KEY_ALGORITHMS],
            "default": "HS256",
        },
        "public_key": {"type": "string", "minLength": 1},
        "exp": {"type": "integer", "minimum": 1, "default": 86400},
        "base64_secret": {"type": "boolean", "default": False},
        "lifetime_grace_period": {"type": "integer", "minimum": 0, "default": 0},
    },
    "required": ["key"],
}

encrypt_fields = ("secret",)

_algorithms: dict[str, Any] = {}


def _algorithm(alg: str) -> Any:
    """PyJWT's algorithm object (signature verification and key loading) for a JWS name.
    PyJWT (and cryptography) load on the first consumer key prepared, so a gateway that lists
    jwt-auth without using it does not carry them (~12 MiB of a worker's RSS)."""
    if not _algorithms:
        from jwt.algorithms import get_default_algorithms

        _algorithms.update(get_default_algorithms())
    return _algorithms[alg]

MISSING = "Missing JWT token in request"
INVALID = "JWT token invalid"
NO_KEY = "missing user key in JWT token"
WRONG_KEY = "Invalid user key in JWT token"
FAILED = "failed to verify jwt"

# -- a consumer's verification key, prepared once per consumer conf ---------------------------


@dataclass(frozen=True, slots=True)
class _Verifier:
    alg: str
    algorithm: Any
    """pyjwt's algorithm object (``None`` when the key could not be prepared)."""
    key: Any
    grace: float
    error: str | None = None


def _prepare(conf: Any) -> _Verifier:
    """The consumer's algorithm and prepared key (defaults as ``consumer_schema``)."""
    alg = conf.get("algorithm") or "HS256"
    grace = conf.get("lifetime_grace_period") or 0
    try:
        algorithm = _algorithm(alg)
        if alg in HMAC_ALGORITHMS:
            secret = conf.get("secret")
            if not isinstance(secret, str) or not secret:
                raise ValueError('property "secret" is required')
            raw: str | bytes = secret
            if conf.get("base64_secret"):
                try:
                    raw = base64.b64decode(secret, validate=True)
                except (binascii.Error, ValueError):
                    raise ValueError(
                        "base64_secret required but the secret is not in base64 format"
                    ) from None
            key = algorithm.prepare_key(raw)
        else:
            public_key = conf.get("public_key")
            if not isinstance(public_key, str) or not public_key:
                raise ValueError('property "public_key" is required')
            key = algorithm.prepare_key(public_key)
            if hasattr(key, "private_bytes"):  # it would be stored and shown in clear
                raise ValueError("a private key was given; public_key takes the public key")
    except Exception as exc:  # pyjwt/cryptography raise various types for unusable keys
        message = str(exc) or exc.__class__.__name__
        return _Verifier(alg, None, None, float(grace), message)
    return _Verifier(alg, algorithm, key, float(grace))


_verifiers: ConfCache[_Verifier] = ConfCache(_prepare)


def check_schema(conf: dict[str, Any], schema_type: str) -> str | None:
    """A consumer's (or credential's) keys must be usable: checked at write time."""
    if schema_type != "consumer":
        return None
    verifier = _prepare(conf)
    if verifier.error is None:
        return None
    if verifier.error.startswith(("property ", "base64_secret ")):
        return verifier.error
    what = "secret" if verifier.alg in HMAC_ALGORITHMS else "public_key"
    return f"invalid {what} for algorithm {verifier.alg}: {verifier.error}"


# -- the token ------------------------------------------------------------------------------

_SEGMENT = re.compile(r"[A-Za-z0-9_-]*\Z")


def _b64url(segment: str) -> bytes:
    if _SEGMENT.match(segment) is None:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


@dataclass(frozen=True, slots=True)
class _Token:
    header: dict[str, Any]
    payload: dict[str, Any]
    signing_input: bytes
    signature: bytes


def _parse(token: str) -> _Token | None:
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        header = json.loads(_b64url(parts[0]))
        payload = json.loads(_b64url(parts[1]))
        signature = _b64url(parts[2])
    except (ValueError, RecursionError):  # binascii, JSON and UTF-8 errors are ValueErrors
        return None
    if not isinstance(header, dict) or not isinstance(payload, dict):
        return None
    if not isinstance(header.get("alg"), str):
        return None
    signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
    return _Token(header, payload, signing_input, signature)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _claims_ok(payload: dict[str, Any], required: Any, grace: float) -> bool:
    for claim in required or ():
        if claim not in payload:
            return False
    now = time.time()
    if "exp" in payload:
        exp = payload["exp"]
        if not _number(exp) or exp <= now - grace:
            return False
    if "nbf" in payload:
        nbf = payload["nbf"]
        if not _number(nbf) or nbf > now + grace:
            return False
    return True


# -- the request ------------------------------------------------------------------------------


def _drop_cookie(ctx: Any, cookie: str) -> None:
    """Send ``Cookie`` upstream without the cookie ``cookie`` (removed when nothing is left)."""
    pairs = []
    for line in ctx.request.headers.getall("Cookie"):
        for pair in line.split(";"):
            pair = pair.strip()
            if pair and pair.partition("=")[0].strip() != cookie:
                pairs.append(pair)
    ctx.upstream.set_header("Cookie", "; ".join(pairs) if pairs else None)


def _fetch(ctx: Any, conf: dict[str, Any]) -> str | None:
    """The token (hidden from the upstream when ``hide_credentials``), or ``None``."""
    hide = conf["hide_credentials"]
    token = ctx.request.headers.get(conf["header"])
    if token is not None:
        if hide:
            ctx.upstream.remove_header(conf["header"])
        if token[:7].lower() == "bearer ":
            token = token[7:]
        return str(token)
    value = ctx.var["arg_" + conf["query"]]
    if value is not None:
        if hide:
            drop_query_arg(ctx, conf["query"])
        return value if isinstance(value, str) else ""  # a flag argument (``?jwt``)
    value = ctx.var["cookie_" + conf["cookie"]]
    if value is not None:
        if hide:
            _drop_cookie(ctx, conf["cookie"])
        return str(value)
    return None


def _find(ctx: Any, conf: dict[str, Any]) -> tuple[Consumer | None, str]:
    raw = _fetch(ctx, conf)
    if raw is None:
        return None, MISSING
    token = _parse(raw)
    if token is None:
        return None, INVALID
    user_key = token.payload.get(conf["key_claim_name"])
    if user_key is None:
        return None, NO_KEY
    consumer = ctx.consumers.find(name, "key", user_key)
    if consumer is None:
        return None, WRONG_KEY
    verifier = _verifiers(consumer.plugins[name])
    if verifier.error is not None:
        ctx.log.error("consumer %s: unusable jwt-auth key: %s", consumer.username,
                      verifier.error)
        return None, FAILED
    if token.header["alg"] != verifier.alg:
        return None, FAILED
    try:
        valid = verifier.algorithm.verify(token.signing_input, verifier.key, token.signature)
    except Exception:  # a malformed signature for this key type
        valid = False
    if not valid or not _claims_ok(token.payload, conf.get("claims_to_verify"), verifier.grace):
        return None, FAILED
    if conf["store_in_ctx"]:
        ctx.shared["jwt_auth_payload"] = token.payload
    return consumer, ""


@hookimpl
def rewrite(ctx: Any, conf: dict[str, Any]) -> Response | None:
    consumer, error = _find(ctx, conf)
    if consumer is None:
        consumer, error = anonymous(ctx, conf, name, error)
        if consumer is None:
            return unauthorized("Bearer", conf, error)
    identify(ctx, consumer)
    return None
