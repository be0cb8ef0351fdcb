"""The value a phase returns to answer the client directly."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

Body = str | bytes | dict[str, Any] | list[Any] | None


@dataclass(slots=True)
class Response:
    """Answer the client with ``status`` instead of proxying.

    ``body``: ``str``/``bytes`` are sent as is; a ``dict``/``list`` is JSON-encoded with a trailing
    newline (as APISIX does); ``None`` gives nginx's built-in HTML page for statuses >= 300 and an
    empty body below. ``headers`` are added to the response.
    """

    status: int
    body: Body = None
    headers: Mapping[str, str | int] = field(default_factory=dict)

    def body_bytes(self) -> bytes | None:
        """The encoded body, or ``None`` when the kernel should use its default page."""
        body = self.body
        if body is None:
            return None
        if isinstance(body, bytes):
            return body
        if isinstance(body, str):
            return body.encode()
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
