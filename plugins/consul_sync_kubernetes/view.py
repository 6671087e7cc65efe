"""The kubernetes sink's view: ``key -> Observed`` over the two informer stores.

Nearly pure: it reads the stores (Services, our EndpointSlices) through the callables it is
given, never the API, and keeps per name which key a Service is filed under and which slices
belong to which Service.  :meth:`View.reindex` recomputes the entries of the keys a change
touches; a change behind our back (``external``) marks its key dirty, so the runtime repairs
it.  Ownership (:class:`consul_sync_kube.objects.Ownership`) decides what is ours: anything
else is shown as not owned and never written.

While the objects of a key stand exactly as our last write answered them (``written``, their
resourceVersions), its entry is what we wrote (``accepted``): no parse, no re-render per watch
event of our own writes.  Otherwise the live objects are parsed back (:mod:`.compare`) and a
service counts as in place only if applying it would write nothing (:meth:`View.matches`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any

from consul_sync import DesiredService, Observed
from consul_sync.model import ServiceKey
from consul_sync_kube.objects import FOREIGN, LEGACY, MINE, Ownership, meta, uid

from . import compare as c
from . import render as r
from .naming import NameBook, service_key
from .validate import validate

Store = Mapping[str, dict[str, Any]]


def service_of(slice_obj: Mapping[str, Any]) -> str:
    """The name of the Service a slice belongs to (its service-name label)."""
    return str((meta(slice_obj).get("labels") or {}).get(r.SERVICE_NAME_LABEL, ""))


class Reserved(Collection[str]):
    """Slice names a new slice of ``service`` must not take: held by
    another Service's slices, or found to be somebody else's."""

    def __init__(self, store: Store, service: str, foreign: set[str]):
        self.store, self.service, self.foreign = store, service, foreign

    def __contains__(self, name: object) -> bool:
        if name in self.foreign:
            return True
        obj = self.store.get(name) if isinstance(name, str) else None
        return obj is not None and service_of(obj) != self.service

    def __iter__(self) -> Iterator[str]:
        return iter(n for n in [*self.store, *self.foreign] if n in self)

    def __len__(self) -> int:
        return sum(1 for _ in self)


class View:
    """What the sink sees in its namespace, per service key (``entries``)."""

    def __init__(
        self,
        namespace: str,
        ownership: Ownership,
        names: NameBook,
        *,
        max_per_slice: int,
        services: Callable[[], Store],
        slices: Callable[[], Store],
        mark_dirty: Callable[[Iterable[ServiceKey]], None],
    ) -> None:
        self.namespace = namespace
        self.ownership = ownership
        self.names = names
        self.max_per_slice = max_per_slice
        self.services = services
        self.slices = slices
        self.mark_dirty = mark_dirty
        #: key -> what is there for it: what ``observe()`` returns
        self.entries: dict[ServiceKey, Observed] = {}
        self._key_of: dict[str, ServiceKey] = {}
        self._names_of: dict[ServiceKey, set[str]] = {}
        #: key -> names of our Services that stand for it (their annotation)
        self._standing: dict[ServiceKey, set[str]] = {}
        self._stands_for: dict[str, ServiceKey] = {}
        self._slices_of: dict[str, set[str]] = {}
        self._slice_service: dict[str, str] = {}
        #: key -> (desired service last applied, what it reads back as)
        self.accepted: dict[ServiceKey, tuple[DesiredService, DesiredService]] = {}
        #: key -> the resourceVersions of its Service and slices right after
        #: our write: while they stand, the view is what we wrote (no parse,
        #: no re-render per watch event of our own writes)
        self.written: dict[ServiceKey, tuple[str, tuple[tuple[str, str], ...]]] = {}
        #: keys being written now: their watch events are ours, not repairs
        self.writing: set[ServiceKey] = set()
        #: keys changed behind our back while being written (e.g. the garbage
        #: collector deleting the slices of a Service we re-create): our
        #: write was planned without that change, so they are planned again.
        self.changed_while_writing: set[ServiceKey] = set()
        #: slice names found to be somebody else's: never taken
        self.foreign_slices: set[str] = set()
        #: the informers watch: a change from now on is somebody else's
        self.watching = False

    def ours(self, obj: Mapping[str, Any]) -> bool:
        return self.ownership.ours(obj)

    def names_of(self, key: ServiceKey) -> set[str]:
        """The Kubernetes names of the Services filed under ``key``."""
        return set(self._names_of.get(key, ()))

    def slice_names(self, k8s_name: str) -> list[str]:
        """The names of the slices of Service ``k8s_name``, sorted."""
        return sorted(self._slices_of.get(k8s_name, ()))

    def names_changed(self, old: Mapping[ServiceKey, str], new: Mapping[ServiceKey, str]) -> None:
        """The naming changed from ``old`` to ``new``: refile what it moves."""
        affected: set[str] = set()
        for key in old.keys() | new.keys():
            if old.get(key) == new.get(key):
                continue
            # its names, and the objects standing or filed under it
            affected.update(n for n in (old.get(key), new.get(key)) if n is not None)
            affected.update(self._standing.get(key, ()))
            affected.update(self._names_of.get(key, ()))
        self.reindex(affected)
        # A desired key whose name changed (the valid name won it) is to be
        # written under its new name, though nothing about it changed.
        self.mark_dirty([k for k in new if k in old and old[k] != new[k]])

    def held(self) -> dict[ServiceKey, ServiceKey]:
        """(namespace, name) -> the key it stands for, of every Service of ours
        (what naming keeps sticky, :func:`.naming.assign_names`)."""
        store = self.services()
        return {
            (self.namespace, name): service_key(obj)
            for name, obj in store.items()
            if self.ours(obj)
        }

    def pseudo_key(self, k8s_name: str) -> ServiceKey:
        """The view key of a Service of ours under a name its key does not
        map to any more: ``(namespace, <its name>)``, or, when that is a
        desired key (a valid name claimed it), ``<its name>~old``."""
        key = (self.namespace, k8s_name)
        while self.names.desired(key):
            key = (self.namespace, key[1] + "~old")
        return key

    def view_key(self, k8s_name: str, obj: Mapping[str, Any]) -> ServiceKey | None:
        """Which view entry a Service belongs to (``None``: none, somebody
        else's and in nobody's way).

        * The desired key whose name it is: the object belongs to the name,
          so a key that lands on the name of an object of ours takes it
          over in place (same object, same uid) - a rename or change of
          case in Consul, or a valid name taking its name back from a
          sanitised twin (which gets a new, suffixed object) - never a
          delete and a create.
        * A pseudo key (:meth:`pseudo_key`) if no desired key maps to its
          name but it stands for a desired key (whose name is now another):
          the planner deletes it like anything else not desired, under the
          policy, the prune guard and the incomplete-source rule.
        * Else the key it stands for (not desired: to be deleted).
        """
        mapped = self.names.key_of(self.namespace, k8s_name)
        if self.ours(obj):
            stands_for = service_key(obj)
            if mapped is not None:
                return mapped
            if self.names.desired(stands_for):
                return self.pseudo_key(k8s_name)
            return stands_for
        if mapped is None and self.ownership.classify(obj) == FOREIGN:
            return None  # somebody else's, and in nobody's way
        return mapped or (self.namespace, k8s_name)

    def services_changed(self, names: set[str]) -> None:
        deleted = any(name not in self.services() for name in names)
        self.reindex(names, external=True, deleted=deleted)

    def slices_changed(self, names: set[str]) -> None:
        deleted = any(name not in self.slices() for name in names)
        self.reindex(self.index_slices(names), external=True, deleted=deleted)

    def index_slices(self, names: Iterable[str]) -> set[str]:
        """Update which slices belong to which Service; returns the Services."""
        services = set()
        for name in names:
            old = self._slice_service.pop(name, None)
            if old is not None:
                self._slices_of[old].discard(name)
                services.add(old)
            obj = self.slices().get(name)
            if obj is not None:
                owner = service_of(obj)
                self._slice_service[name] = owner
                self._slices_of.setdefault(owner, set()).add(name)
                services.add(owner)
        return services

    def reindex(
        self,
        names: Iterable[str],
        *,
        external: bool = False,
        deleted: bool = False,
        also: Iterable[ServiceKey] = (),
    ) -> None:
        """Recompute the view for the keys of these Kubernetes Service names
        (and of the keys ``also``; ``deleted``: an object of theirs was
        deleted, which our own writes of an update never do)."""
        store = self.services()
        keys: set[ServiceKey] = set(also)
        for name in names:
            old = self._key_of.pop(name, None)
            if old is not None:
                self._names_of[old].discard(name)
                keys.add(old)
            stood_for = self._stands_for.pop(name, None)
            if stood_for is not None:
                self._standing[stood_for].discard(name)
                if not self._standing[stood_for]:
                    del self._standing[stood_for]
            obj = store.get(name)
            if obj is None:
                continue
            if self.ours(obj):
                self._stands_for[name] = service_key(obj)
                self._standing.setdefault(self._stands_for[name], set()).add(name)
            key = self.view_key(name, obj)
            if key is None:
                continue
            self._key_of[name] = key
            self._names_of.setdefault(key, set()).add(name)
            keys.add(key)
        for key in keys:
            if external and key in self.writing:
                # Our own write's watch event, most likely: apply() computes
                # the key's view when its writes are done (not once per event
                # meanwhile, half-written).  A deletion is not ours (an
                # update's writes never delete): plan the key again after.
                if deleted:
                    self.changed_while_writing.add(key)
                continue
            before = self.entries.get(key)
            after = self.observed(key)
            if after is None:
                self.entries.pop(key, None)
            else:
                self.entries[key] = after
            if external and self.watching and after != before:
                accepted = self.accepted.get(key)
                if after is None or accepted is None or after.service != accepted[0]:
                    self.mark_dirty([key])
            elif before is None and after is not None and self.is_old_name(key):
                # An old name to delete appeared (naming changed): plan it.
                self.mark_dirty([key])

    def is_old_name(self, key: ServiceKey) -> bool:
        """A pseudo key: Services of ours filed under it stand for another key."""
        if self.names.desired(key):
            return False
        store = self.services()
        return any(
            name in store and self.ours(store[name]) and service_key(store[name]) != key
            for name in self._names_of.get(key, ())
        )

    def observed(self, key: ServiceKey) -> Observed | None:
        names = self._names_of.get(key)
        if not names:
            self._names_of.pop(key, None)
            return None
        store = self.services()
        objects = {name: store[name] for name in names if name in store}
        ours = {name for name, obj in objects.items() if self.ours(obj)}
        expected = self.names.naming.names.get(key)
        if expected is None:
            # Not desired (gone from the sources, or an old name): to be deleted.
            if not ours:
                return Observed(key, owned=False)
            held = objects[min(ours)]
            if self.ownership.classify(held) != MINE:
                return Observed(key, True, None, None)
            parsed = c.parse(held, self.slices_for(min(ours))[0])
            return Observed(key, True, parsed if parsed.key == key else None, parsed.sources)
        if expected not in objects:
            return None
        live = objects[expected]
        if expected not in ours:
            return Observed(key, owned=False)
        if self.ownership.classify(live) != MINE:
            return Observed(key, True, None, None)  # the Go version's: adopted, rewritten
        if service_key(live) != key:
            # It stands for a key no longer desired: to be taken over in place.
            return Observed(key, True, None, c.parse(live, []).sources)
        mine, others = self.slices_for(expected)
        accepted = self.accepted.get(key)
        if (
            not others
            and accepted is not None
            and self.written.get(key) == self.fingerprint(live, (mine, others))
        ):
            # exactly the objects our last write of this key answered
            return Observed(key, True, accepted[0], accepted[1].sources)
        parsed = c.parse(live, mine)
        canonical = not others and self.matches(parsed, expected, live, mine)
        service: DesiredService | None = parsed if canonical else None
        if canonical and accepted is not None and accepted[1] == parsed:
            service = accepted[0]
        return Observed(key, True, service, parsed.sources)

    @staticmethod
    def fingerprint(
        live: Mapping[str, Any],
        slices: tuple[Sequence[Mapping[str, Any]], Sequence[Mapping[str, Any]]],
    ) -> tuple[str, tuple[tuple[str, str], ...]]:
        mine, others = slices
        return str(meta(live).get("resourceVersion", "")), tuple(
            (meta(obj)["name"], str(meta(obj).get("resourceVersion", "")))
            for obj in (*mine, *others)
        )

    def slices_for(self, k8s_name: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Our slices of a Service, and adopted Go-version ones (to delete)."""
        mine, others = [], []
        for name in sorted(self._slices_of.get(k8s_name, ())):
            obj = self.slices().get(name)
            if obj is None:
                continue
            kind = self.ownership.classify(obj)
            if kind == MINE:
                mine.append(obj)
            elif kind == LEGACY and self.ownership.adopt:
                others.append(obj)
        return mine, others

    def render(
        self,
        service: DesiredService,
        k8s_name: str,
        mine: Sequence[Mapping[str, Any]],
        service_uid: str | None,
        live: Mapping[str, Any] | None,
    ) -> r.Rendered:
        """``service``'s objects, endpoints kept in the slices of ``mine``
        that hold them (``live``: the Service now, whose sources say where
        unannotated slices came from)."""
        primary = service.ports[0] if service.ports else None
        default = r.default_source(c.parse(live, []).sources) if live is not None else None
        return r.render(
            service,
            k8s_name=k8s_name,
            owner=self.ownership.owner,
            max_per_slice=self.max_per_slice,
            existing=c.packing(mine, primary, default),
            reserved=Reserved(self.slices(), k8s_name, self.foreign_slices),
            service_uid=service_uid,
        )

    def matches(
        self,
        parsed: DesiredService,
        k8s_name: str,
        live: Mapping[str, Any],
        mine: Sequence[Mapping[str, Any]],
    ) -> bool:
        """Whether applying ``parsed`` would write nothing (our objects are
        in the shape we write them)."""
        if validate(parsed):
            return False
        rendered = self.render(parsed, k8s_name, mine, uid(live), live)
        if c.differs(rendered.service, live):
            return False
        by_name = {meta(obj)["name"]: obj for obj in mine}
        if set(by_name) != {s["metadata"]["name"] for s in rendered.slices}:
            return False
        return not any(c.differs(s, by_name[s["metadata"]["name"]]) for s in rendered.slices)
