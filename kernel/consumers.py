"""The consumers of one config generation: lookups for auth plugins and the compiled plugin
set each consumer (with its group) merges over a route (spec §4.7 step 5, §6.2 step 5).

Built with the state, once per change of ``consumers`` or ``consumer_groups`` (an unchanged
generation reuses the previous directory as it is). Requests only read it:
``ctx.consumers.get``/``find`` (``plugin_sdk.Consumers``) and
:meth:`ConsumerDirectory.chain_of`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from kernel.chain import EMPTY_CHAIN, Chain, compile_chain, plaintext_conf
from plugin_sdk.consumer import Consumer

if TYPE_CHECKING:
    from kernel.plugins.manager import PluginRegistry
    from kernel.store.base import Snapshot

log = logging.getLogger("sixgate.consumers")

_Index = dict[Any, Consumer]


class ConsumerDirectory:
    """Consumers by username, credential lookups by plugin field, and per-consumer chains."""

    __slots__ = ("_chains", "_consumers", "_credentials", "_indexes", "groups_raw", "raw",
                 "registry")

    def __init__(
        self,
        consumers: Mapping[str, Consumer],
        credentials: tuple[Consumer, ...],
        chains: Mapping[str, Chain],
        registry: PluginRegistry | None = None,
        raw: Any = None,
        groups_raw: Any = None,
    ) -> None:
        self._consumers = consumers
        self._credentials = credentials
        self._chains = chains
        self._indexes: dict[tuple[str, str], _Index] = {}
        self.registry = registry
        self.raw = raw
        self.groups_raw = groups_raw

    # -- plugin_sdk.Consumers ---------------------------------------------------------------
    def get(self, username: str) -> Consumer | None:
        return self._consumers.get(username)

    def find(self, plugin: str, field: str, value: Any) -> Consumer | None:
        index = self._indexes.get((plugin, field))
        if index is None:
            index = self._indexes[(plugin, field)] = self._index(plugin, field)
        try:
            return index.get(value)
        except TypeError:  # unhashable value: nothing can match
            return None

    def __len__(self) -> int:
        return len(self._consumers)

    def _index(self, plugin: str, field: str) -> _Index:
        """``value -> consumer`` for one plugin field; a consumer's own conf wins over a
        credential with the same value (the Admin API refuses duplicates anyway)."""
        index: _Index = {}
        for consumer in (*self._credentials, *self._consumers.values()):
            conf = consumer.plugins.get(plugin)
            if not isinstance(conf, Mapping) or field not in conf:
                continue
            try:
                index[conf[field]] = consumer
            except TypeError:
                continue
        return index

    # -- for the request path ---------------------------------------------------------------
    def chain_of(self, username: str) -> Chain:
        """The compiled non-auth plugins of the consumer's group then the consumer (its
        conf wins per name); :data:`EMPTY_CHAIN` when it has none."""
        return self._chains.get(username, EMPTY_CHAIN)


EMPTY_DIRECTORY = ConsumerDirectory({}, (), {})


def directory_of(consumers: Iterable[Consumer]) -> ConsumerDirectory:
    """A directory of ready-made consumers (those with a ``credential_id`` are credentials),
    without plugin chains: what the test kit's ``make_context(consumers=...)`` gives."""
    own: dict[str, Consumer] = {}
    creds: list[Consumer] = []
    for consumer in consumers:
        if consumer.credential_id is None:
            own[consumer.username] = consumer
        else:
            creds.append(consumer)
    return ConsumerDirectory(own, tuple(creds), {})


def build_directory(
    snapshot: Snapshot, registry: PluginRegistry, previous: ConsumerDirectory | None = None
) -> ConsumerDirectory:
    """The directory of ``snapshot``; ``previous`` is returned as it is when neither consumers
    nor consumer groups changed and the registry is the same."""
    raw = snapshot.items("consumers")
    groups_raw = snapshot.items("consumer_groups")
    if (
        previous is not None
        and previous.registry is registry
        and _same(previous.raw, raw)
        and _same(previous.groups_raw, groups_raw)
    ):
        return previous
    groups = {str(g.get("id")): g for g in groups_raw}
    consumers: dict[str, Consumer] = {}
    credentials: list[tuple[str, str, dict[str, Any]]] = []
    chains: dict[str, Chain] = {}
    memo: dict[Any, Any] = {}
    for item in raw:
        ident = str(item.get("id", ""))
        if "username" not in item and "/credentials/" in ident:
            user, _, cred_id = ident.partition("/credentials/")
            credentials.append((user, cred_id, _plaintext(item.get("plugins"), registry)))
            continue
        username = str(item.get("username", ident))
        group_id = item.get("group_id")
        consumer = Consumer(
            username=username,
            plugins=MappingProxyType(_plaintext(item.get("plugins"), registry)),
            group_id=None if group_id is None else str(group_id),
            labels=MappingProxyType(dict(item.get("labels") or {})),
            desc=item.get("desc"),
        )
        consumers[username] = consumer
        group = groups.get(consumer.group_id) if consumer.group_id is not None else None
        chain = _consumer_chain(username, group, item.get("plugins"), registry, memo)
        if not chain.empty:
            chains[username] = chain
    creds = tuple(
        Consumer(
            username=user,
            plugins=MappingProxyType(plugins),
            group_id=owner.group_id,
            labels=owner.labels,
            desc=owner.desc,
            credential_id=cred_id,
        )
        for user, cred_id, plugins in credentials
        if (owner := consumers.get(user)) is not None
    )
    return ConsumerDirectory(consumers, creds, chains, registry, raw, groups_raw)


def _consumer_chain(
    username: str,
    group: Mapping[str, Any] | None,
    plugins: Mapping[str, Any] | None,
    registry: PluginRegistry,
    memo: dict[Any, Any],
) -> Chain:
    merged: dict[str, Any] = {}
    if group is not None and isinstance(group.get("plugins"), Mapping):
        merged.update(group["plugins"])
    if isinstance(plugins, Mapping):
        merged.update(plugins)
    for name in list(merged):
        info = registry.get(name)
        if info is not None and info.type == "auth":
            del merged[name]
    if not merged:
        return EMPTY_CHAIN
    chain, errors = compile_chain(merged, registry, memo)
    for message in errors:
        log.error("consumer %s: %s", username, message)
    return chain


def _plaintext(plugins: Any, registry: PluginRegistry) -> dict[str, Any]:
    """A consumer's plugin confs with each loaded plugin's ``encrypt_fields`` decrypted."""
    if not isinstance(plugins, Mapping):
        return {}
    out: dict[str, Any] = {}
    for name, conf in plugins.items():
        info = registry.get(name)
        out[name] = conf if info is None else plaintext_conf(info, conf, registry)
    return out


def _same(a: Any, b: Any) -> bool:
    return a is b or a == b
