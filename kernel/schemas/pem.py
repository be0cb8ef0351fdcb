"""Light PEM checks for certificates and private keys written through the Admin API.

APISIX parses every cert/key on write with OpenSSL and reports OpenSSL's
failure (``failed to parse cert: PEM_read_bio_X509_AUX() failed``). sixgate
checks the same shape without a crypto dependency: a PEM block of the right
kind whose base64 body decodes to a DER ``SEQUENCE``. The TLS layer loads the
pair for real when it builds its contexts.
"""

from __future__ import annotations

import base64
import binascii
import re

SECRET_PREFIXES = ("$secret://", "$env://")

_BLOCK_RE = re.compile(
    r"-----BEGIN ([A-Z0-9 ]+)-----\s*(.*?)\s*-----END \1-----", re.DOTALL
)
_CERT_LABELS = frozenset({"CERTIFICATE", "TRUSTED CERTIFICATE", "X509 CERTIFICATE"})
_KEY_LABELS = frozenset({"PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY", "DSA PRIVATE KEY"})

CERT_ERROR = "PEM_read_bio_X509_AUX() failed"
KEY_ERROR = "PEM_read_bio_PrivateKey() failed"


def is_secret_ref(value: object) -> bool:
    """``$secret://...`` / ``$env://...`` values are resolved at run time, not parsed on write."""
    return isinstance(value, str) and value.startswith(SECRET_PREFIXES)


def _first_block_ok(text: str, labels: frozenset[str]) -> bool:
    for match in _BLOCK_RE.finditer(text):
        if match.group(1) not in labels:
            continue
        body = "".join(line for line in match.group(2).splitlines() if ":" not in line)
        try:
            der = base64.b64decode("".join(body.split()), validate=True)
        except (binascii.Error, ValueError):
            return False
        return len(der) > 2 and der[0] == 0x30
    return False


def cert_error(cert: str) -> str | None:
    """``None`` if ``cert`` holds a PEM certificate, else the OpenSSL-style reason."""
    return None if _first_block_ok(cert, _CERT_LABELS) else CERT_ERROR


def key_error(key: str) -> str | None:
    """``None`` if ``key`` holds an unencrypted PEM private key, else the OpenSSL-style reason."""
    return None if _first_block_ok(key, _KEY_LABELS) else KEY_ERROR


def validate_pair(cert: object, key: object) -> str | None:
    """APISIX's ``ssl.validate``: parse the certificate, then the key."""
    if isinstance(cert, str):
        err = cert_error(cert)
        if err is not None:
            return "failed to parse cert: " + err
    if isinstance(key, str):
        err = key_error(key)
        if err is not None:
            return "failed to parse key: " + err
    return None
