"""The resource table of the Admin API (spec §2.3): kinds, etcd directories, methods, id rules."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ResourceKind:
    """One ``/apisix/admin/<name>`` collection."""

    name: str
    """URL segment and etcd directory (``routes``)."""
    kind: str
    """The word in messages: ``missing route id``, ``not supported `POST` method for consumer``."""
    schema: str
    """Schema kind for :func:`kernel.schemas.validate_resource`."""
    unsupported: frozenset[str] = frozenset()
    """Methods answered with 405."""
    has_id: bool = True
    """False for consumers and plugin_metadata: keyed by ``username`` / the plugin name."""
    list_filter_fields: frozenset[str] = frozenset()
    """Keys accepted in ``?filter=`` on list requests."""


RESOURCES: dict[str, ResourceKind] = {
    r.name: r
    for r in (
        ResourceKind(
            "routes", "route", "route", list_filter_fields=frozenset({"service_id", "upstream_id"})
        ),
        ResourceKind("services", "service", "service"),
        ResourceKind("upstreams", "upstream", "upstream"),
        ResourceKind(
            "consumers",
            "consumer",
            "consumer",
            unsupported=frozenset({"POST", "PATCH"}),
            has_id=False,
        ),
        ResourceKind(
            "credentials", "credential", "credential", unsupported=frozenset({"POST", "PATCH"})
        ),
        ResourceKind(
            "consumer_groups", "consumer group", "consumer_group", unsupported=frozenset({"POST"})
        ),
        ResourceKind("ssls", "ssl", "ssl"),
        ResourceKind(
            "plugin_configs", "plugin config", "plugin_config", unsupported=frozenset({"POST"})
        ),
        ResourceKind(
            "plugin_metadata",
            "plugin_metadata",
            "plugin_metadata",
            unsupported=frozenset({"POST", "PATCH"}),
            has_id=False,
        ),
        ResourceKind("global_rules", "global rule", "global_rule", unsupported=frozenset({"POST"})),
        ResourceKind("protos", "proto", "proto", unsupported=frozenset({"PATCH"})),
        ResourceKind("secrets", "secret", "secret", unsupported=frozenset({"POST"})),
        ResourceKind(
            "stream_routes",
            "stream route",
            "stream_route",
            unsupported=frozenset({"PATCH"}),
            list_filter_fields=frozenset({"service_id", "upstream_id"}),
        ),
    )
}
"""Store-backed resources, by URL name."""

META_RESOURCES = frozenset({"schema", "plugins"})
"""Resources served by :mod:`kernel.admin.meta` (GET only)."""

RESOURCE_METHODS = frozenset({"GET", "PUT", "POST", "DELETE", "PATCH"})
"""Methods the ``/apisix/admin/*`` route accepts; others get nginx's 404 page."""
