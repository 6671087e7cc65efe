"""What the ``consul`` source knows about the catalog, kept up to date by
its watches and reads, and turned into desired services incrementally.

Pure (no I/O): the source feeds it catalog answers, per-service instance
lists and node-check tables; it answers which services must be read, and
which desired-service keys changed since the last time it was asked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import attrs

from consul_sync.model import DesiredService, ServiceKey, StatusNote

from .convert import META_NAME, HealthPolicy, to_desired
from .parse import Entry, tagged_names


@attrs.frozen
class CatalogDiff:
    """How a new ``catalog/services`` answer differs from the last one."""

    #: Tagged names that are new or whose tags changed: read them.
    to_read: frozenset[str]
    #: Names no longer tagged (or gone): their services are removed.
    removed: frozenset[str]
    #: False when the answer (names and tags, any service) did not change.
    body_changed: bool


class CatalogState:
    def __init__(
        self,
        *,
        source: str,
        namespace: str,
        tag: str,
        policy: HealthPolicy,
        include_proxies: bool = False,
        warn: Callable[[str], None] = lambda _message: None,
    ) -> None:
        self.source = source
        self.namespace = namespace
        self.tag = tag
        self.policy = policy
        self.include_proxies = include_proxies
        self.warn = warn
        self.catalog: dict[str, tuple[str, ...]] | None = None
        #: The mapping the last ``set_catalog`` was given (never changed by anyone).
        self._given: Mapping[str, tuple[str, ...]] | None = None
        self.tagged: set[str] = set()
        #: Consul name -> its instances as last read (tagged ones only).
        self.entries: dict[str, tuple[Entry, ...]] = {}
        #: Node -> its node checks, from the health-state watch (``None``:
        #: not available; each entry's own node checks are used).
        self.node_checks: dict[str, tuple[tuple[str, str], ...]] | None = None
        #: Node -> Consul names with an instance there.
        self.by_node: dict[str, set[str]] = {}
        #: The desired services, by key, and who claims each key.
        self.services: dict[ServiceKey, DesiredService] = {}
        self._desired: dict[str, DesiredService] = {}
        self._key_of: dict[str, ServiceKey] = {}
        self._claims: dict[ServiceKey, set[str]] = {}
        self._told: set[str] = set()
        self.changed: set[ServiceKey] = set()

    # --- inputs ---------------------------------------------------------------

    def set_catalog(self, catalog: Mapping[str, tuple[str, ...]]) -> CatalogDiff:
        if catalog is self._given and self.catalog is not None:
            # The very mapping taken last time (the watch hands it again when the
            # answer's bytes did not change): nothing to compare.
            return CatalogDiff(frozenset(), frozenset(), body_changed=False)
        self._given = catalog
        old = self.catalog or {}
        new_tagged = tagged_names(catalog, self.tag)
        removed = self.tagged - new_tagged
        to_read = {
            name
            for name in new_tagged
            if name not in self.tagged or old.get(name) != catalog.get(name)
        }
        body_changed = self.catalog is None or dict(old) != dict(catalog)
        self.catalog = dict(catalog)
        self.tagged = new_tagged
        for name in removed:
            self.set_entries(name, ())
        return CatalogDiff(frozenset(to_read), frozenset(removed), body_changed)

    def set_entries(self, name: str, entries: Iterable[Entry]) -> None:
        """The tagged instances of ``name`` as just read (empty: none)."""
        kept = tuple(entries) if name in self.tagged else ()
        if not self.include_proxies:
            kept = tuple(e for e in kept if not e.kind)
        old = self.entries.get(name, ())
        for entry in old:
            names = self.by_node.get(entry.node)
            if names is not None:
                names.discard(name)
                if not names:
                    del self.by_node[entry.node]
        if kept:
            self.entries[name] = kept
            for entry in kept:
                self.by_node.setdefault(entry.node, set()).add(name)
        else:
            self.entries.pop(name, None)
        self._convert(name)

    def set_node_checks(
        self, table: dict[str, tuple[tuple[str, str], ...]] | None, nodes: Iterable[str] | None
    ) -> None:
        """A new node-check table; recompute the services on ``nodes``
        (``None``: on every node)."""
        self.node_checks = table
        names: set[str] = set()
        for node in self.by_node if nodes is None else nodes:
            names |= self.by_node.get(node, set())
        for name in names:
            self._convert(name)

    # --- outputs --------------------------------------------------------------

    def take_changed(self) -> frozenset[ServiceKey]:
        changed = frozenset(self.changed)
        self.changed.clear()
        return changed

    # --- conversion -----------------------------------------------------------

    def _convert(self, name: str) -> None:
        entries = self.entries.get(name, ())
        desired: DesiredService | None = None
        if entries:
            table = self.node_checks
            instances = [
                entry.instance(None if table is None else table.get(entry.node, ()))
                for entry in entries
            ]
            converted = to_desired(
                name,
                instances,
                namespace=self.namespace,
                source=self.source,
                policy=self.policy,
                where=f"consul service {name!r}",
            )
            for warning in converted.warnings:
                self.warn_once(warning)
            desired = converted.service
        self._set_desired(name, desired)

    def _set_desired(self, name: str, desired: DesiredService | None) -> None:
        old_key = self._key_of.get(name)
        new_key = desired.key if desired is not None else None
        if desired is None:
            self._desired.pop(name, None)
            self._key_of.pop(name, None)
        else:
            self._desired[name] = desired
            self._key_of[name] = desired.key
        if old_key is not None and old_key != new_key:
            claims = self._claims.get(old_key)
            if claims is not None:
                claims.discard(name)
            self._resolve(old_key)
        if new_key is not None:
            self._claims.setdefault(new_key, set()).add(name)
            self._resolve(new_key)

    def _resolve(self, key: ServiceKey) -> None:
        claims = self._claims.get(key)
        if not claims:
            self._claims.pop(key, None)
            if self.services.pop(key, None) is not None:
                self.changed.add(key)
            return
        winner = min(claims)
        if len(claims) > 1:
            self.warn_once(
                f"Consul services {', '.join(repr(n) for n in sorted(claims))} all map to "
                f"Kubernetes service {key[0]}/{key[1]} (Meta k8s-name); keeping {winner!r}"
            )
        service = self._desired[winner]
        if self.services.get(key) != service:
            self.services[key] = service
            self.changed.add(key)

    def status_notes(self, problems: Mapping[str, tuple[str, ...]]) -> dict[ServiceKey, StatusNote]:
        """For the status page: the Consul name of each key that has another
        (Meta ``k8s-name``), the names a key's winner beat, and the tagged
        services that gave no desired service (``problems``: why, per name)."""
        notes: dict[ServiceKey, StatusNote] = {}
        for key, claims in self._claims.items():
            winner = min(claims) if claims else None
            if winner is None or (winner == key[1] and len(claims) == 1):
                continue
            said = []
            if winner != key[1]:
                said.append(f"Consul service {winner!r}, named {key[1]!r} by Meta {META_NAME}")
            if len(claims) > 1:
                others = ", ".join(repr(n) for n in sorted(claims - {winner}))
                said.append(f"Consul services {others} map to the same name and are skipped")
            notes[key] = StatusNote(name=winner, notes=said)
        for name, why in problems.items():
            at = self._key_of.get(name)
            if at is not None and name in self.tagged:
                note = notes.get(at, StatusNote())
                notes[at] = attrs.evolve(note, notes=(*note.notes, *why))
        for name in sorted(self.tagged - self._key_of.keys()):
            why = problems.get(name) or ("no usable instance",)
            notes[(self.namespace, name)] = StatusNote(notes=why, skipped=True)
        return notes

    def warn_once(self, message: str) -> None:
        if message not in self._told:
            self._told.add(message)
            self.warn(message)
