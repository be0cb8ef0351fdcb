"""Upstream selection: nodes, DNS resolution and load balancing (spec §5)."""

from .balancer import Picker, make_picker
from .nodes import Node, has_domain, normalize_nodes
from .resolver import ResolveError, Resolver, resolve_nodes

__all__ = [
    "Node",
    "Picker",
    "ResolveError",
    "Resolver",
    "has_domain",
    "make_picker",
    "normalize_nodes",
    "resolve_nodes",
]
