"""Consumers: the API callers an authentication plugin identifies (spec §6.2 step 5).

An auth plugin (module attribute ``type = "auth"``) looks the caller up in ``ctx.consumers``
during ``rewrite`` and hands the result to ``ctx.attach_consumer``::

    type = "auth"
    consumer_schema = {"type": "object", "properties": {"key": {"type": "string"}},
                       "required": ["key"]}

    @hookimpl
    def rewrite(ctx, conf):
        consumer = ctx.consumers.find(name, "key", ctx.request.headers.get("apikey"))
        if consumer is None:
            return Response(401, {"message": "Invalid API key in request"})
        ctx.attach_consumer(consumer)

Once the ``rewrite`` phase is over, the kernel merges the plugins of the consumer's group and
of the consumer over the route's (same name: the consumer's conf wins; auth plugins excluded,
their consumer conf is a credential), runs the ``rewrite`` hooks of the plugins this added,
then ``access`` and the later phases with the merged set. ``$consumer_name`` and
``$consumer_group_id`` follow the attached consumer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Consumer:
    """One consumer (``/apisix/admin/consumers/<username>``) as the gateway loaded it."""

    username: str
    plugins: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    """Its ``plugins`` as stored, secrets (``encrypt_fields``) decrypted, read-only. Auth
    plugins' entries are its credentials (``{"key-auth": {"key": "..."}}``)."""
    group_id: str | None = None
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    desc: str | None = None
    credential_id: str | None = None
    """The credential (``/consumers/<username>/credentials/<id>``) that identified the caller,
    ``None`` when it was one of the consumer's own plugin confs."""

    @property
    def custom_id(self) -> str | None:
        """``labels.custom_id`` (sent upstream as ``X-Consumer-Custom-ID`` by auth plugins)."""
        value = self.labels.get("custom_id")
        return None if value is None else str(value)


class Consumers(Protocol):
    """``ctx.consumers``: the consumers of the config generation the request started on.
    Lookups are dictionary reads; the index behind :meth:`find` is built once per
    ``(plugin, field)`` and config generation, on first use."""

    def get(self, username: str) -> Consumer | None:
        """The consumer called ``username`` (e.g. an ``anonymous_consumer``), or ``None``."""
        ...

    def find(self, plugin: str, field: str, value: Any) -> Consumer | None:
        """The consumer whose ``plugin`` conf (its own, or one of its credentials') has
        ``field`` equal to ``value`` -- ``find("key-auth", "key", "auth-one")`` -- or ``None``.
        Found through a credential, the result carries that ``credential_id``."""
        ...

    def __len__(self) -> int: ...
