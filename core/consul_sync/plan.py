"""The planner: desired state versus what a sink owns, as a list of changes.

Pure functions, no I/O (import-linter checks it).  Two steps:

``merge``
    Sources are merged per key ``(namespace, name)`` in configuration
    order.  The first source that has a key is its *primary*: its ports,
    and on a clash its labels and annotations, win; endpoints are the union
    of every source's endpoints.  An endpoint from another source whose
    primary port number differs keeps its own number (as a per-endpoint
    port), so traffic still reaches it.  Every clash is reported as a
    warning; the result does not depend on the order snapshots arrived in.

``plan``
    For each key in scope: absent in the sink -> create; owned and
    different -> update; held by an object we do not own -> a conflict
    (reported, never touched); owned but no longer desired -> delete, subject
    to the policy and the prune guard:

    * ``sync`` creates, updates and deletes; ``upsert-only`` never deletes;
      ``create-only`` neither updates nor deletes.
    * Nothing is deleted on behalf of a source whose snapshot is not
      complete (an object whose origin is unknown waits for every source to
      be complete), and nothing it contributed to a merged service is
      removed: endpoints (and ports) the sink reads back as coming from an
      incomplete source are kept as they are until it answers again.
    * Deletes are budgeted (:class:`PruneBudget`): a pass whose deletes
      exceed what the budget has left deletes none of them; they are *held*
      (:attr:`Plan.held`) and :attr:`Plan.guard` says why.  Only held
      deletes planned again when their window rolled (``partial``) go in
      part, up to the budget, so that a real mass decommission completes in
      bounded steps while a sudden mass disappearance deletes nothing.  A
      pass planned on its own gets the budget of a fresh window: at most
      ``max_prune_fraction`` of what the sink owns, or ``prune_floor``
      objects if that is more.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping, Sequence

import attrs

from .model import Action, Change, DesiredService, Endpoint, Observed, ServiceKey, Snapshot


class Policy(enum.StrEnum):
    SYNC = "sync"
    UPSERT_ONLY = "upsert-only"
    CREATE_ONLY = "create-only"


DEFAULT_MAX_PRUNE_FRACTION = 0.5
DEFAULT_PRUNE_FLOOR = 3


@attrs.frozen
class Plan:
    """The outcome of one planning pass for one sink."""

    changes: tuple[Change, ...] = ()
    #: Desired keys occupied by an object the sink does not own.
    conflicts: tuple[ServiceKey, ...] = ()
    #: Owned keys that would have been deleted but were held back (an
    #: incomplete source, or the prune budget).
    withheld: tuple[ServiceKey, ...] = ()
    #: Why the prune budget held deletes back (``None``: it did not).
    guard: str | None = None
    #: The deletes the prune budget held back (also in ``withheld``).
    held: tuple[ServiceKey, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.changes

    def count(self, action: Action) -> int:
        return sum(1 for change in self.changes if change.action is action)


# --- merge -------------------------------------------------------------------


@attrs.frozen
class Merged:
    services: dict[ServiceKey, DesiredService]
    warnings: tuple[str, ...] = ()


def merge(snapshots: Sequence[Snapshot], keys: Iterable[ServiceKey] | None = None) -> Merged:
    """Merge snapshots given in configuration order; only ``keys`` if given."""
    if keys is None:
        wanted: set[ServiceKey] = set()
        for snapshot in snapshots:
            wanted.update(snapshot.services)
    else:
        wanted = set(keys)
    services: dict[ServiceKey, DesiredService] = {}
    warnings: list[str] = []
    for key in sorted(wanted):
        parts = [_stamped(s.services[key], s.source) for s in snapshots if key in s.services]
        if not parts:
            continue
        if len(parts) == 1:
            services[key] = parts[0]
            continue
        service, clashes = _merge_one(parts)
        services[key] = service
        warnings.extend(clashes)
    return Merged(services, tuple(warnings))


def _stamped(service: DesiredService, source: str) -> DesiredService:
    """``service`` with every endpoint attributed to ``source`` (unless a
    source already named its own)."""
    if all(endpoint.source is not None for endpoint in service.endpoints):
        return service
    endpoints = [
        endpoint if endpoint.source is not None else attrs.evolve(endpoint, source=source)
        for endpoint in service.endpoints
    ]
    return attrs.evolve(service, endpoints=endpoints)


def _merge_one(parts: list[DesiredService]) -> tuple[DesiredService, list[str]]:
    primary = parts[0]
    where = f"{primary.namespace}/{primary.name}"
    warnings: list[str] = []
    endpoints: list[Endpoint] = list(primary.endpoints)
    labels = dict(primary.labels)
    annotations = dict(primary.annotations)
    meta = dict(primary.meta)  # the primary's value wins, as for labels
    tags = set(primary.tags)
    primary_number = primary.ports[0].port if primary.ports else None
    for other in parts[1:]:
        if other.ports != primary.ports:
            warnings.append(
                f"service {where}: sources {_names(primary)} and {_names(other)} declare "
                f"different ports; using those of {_names(primary)} (the first in the "
                "configuration) and keeping each endpoint's own port number"
            )
        for endpoint in other.endpoints:
            number = other.port_for(endpoint)
            if endpoint.port is None and number != primary_number:
                endpoints.append(attrs.evolve(endpoint, port=number))
            else:
                endpoints.append(endpoint)
        for mine, theirs, what in (
            (labels, other.labels, "label"),
            (annotations, other.annotations, "annotation"),
        ):
            for name, value in theirs:
                if name not in mine:
                    mine[name] = value
                elif mine[name] != value:
                    warnings.append(
                        f"service {where}: {what} {name!r} is {mine[name]!r} in "
                        f"{_names(primary)} and {value!r} in {_names(other)}; "
                        f"keeping {mine[name]!r}"
                    )
        tags.update(other.tags)
        for name, value in other.meta:
            meta.setdefault(name, value)
    merged = DesiredService(
        name=primary.name,
        namespace=primary.namespace,
        ports=primary.ports,
        endpoints=endpoints,
        labels=labels,
        annotations=annotations,
        sources=[name for part in parts for name in part.sources],
        tags=tags,
        meta=meta,
    )
    return merged, warnings


def _names(service: DesiredService) -> str:
    return "+".join(service.sources) or "?"


# --- plan --------------------------------------------------------------------


def plan(
    desired: Mapping[ServiceKey, DesiredService],
    observed: Mapping[ServiceKey, Observed],
    *,
    policy: Policy = Policy.SYNC,
    incomplete_sources: Iterable[str] = (),
    scope: Iterable[ServiceKey] | None = None,
    max_prune_fraction: float = DEFAULT_MAX_PRUNE_FRACTION,
    prune_floor: int = DEFAULT_PRUNE_FLOOR,
    delete_budget: int | None = None,
    partial: bool = False,
) -> Plan:
    """Changes that make ``observed`` equal ``desired`` for the keys in scope.

    ``scope`` limits planning to the keys that changed (``None``: all keys
    of both sides).  ``delete_budget`` is how many deletes this pass may
    make (the runtime's :class:`PruneBudget` says); ``None``: the budget of
    a fresh window, measured against everything the sink owns, not just
    the scope.  Deletes past it are held: all of them, or with
    ``partial`` all but the first ``delete_budget`` in key order.
    """
    incomplete = frozenset(incomplete_sources)
    keys = set(desired) | set(observed) if scope is None else set(scope)
    changes: list[Change] = []
    deletes: list[Change] = []
    conflicts: list[ServiceKey] = []
    withheld: list[ServiceKey] = []
    for key in sorted(keys):
        want = desired.get(key)
        have = observed.get(key)
        if want is not None:
            if have is not None and incomplete and have.owned and have.service is not None:
                want = keep_contributions(want, have.service, incomplete)
            if have is None:
                changes.append(Change(Action.CREATE, key, want))
            elif not have.owned:
                conflicts.append(key)
            elif _differs(have.service, want) and policy is not Policy.CREATE_ONLY:
                changes.append(Change(Action.UPDATE, key, want, have))
        elif have is not None and have.owned and policy is Policy.SYNC:
            if _origin_incomplete(have, incomplete):
                withheld.append(key)
            else:
                deletes.append(Change(Action.DELETE, key, None, have))

    guard = None
    held: list[ServiceKey] = []
    if delete_budget is None:
        owned = owned_count(observed)
        delete_budget = window_allowance(owned, max_prune_fraction, prune_floor)
    if len(deletes) > delete_budget:
        budget = max(0, delete_budget) if partial else 0
        held = [change.key for change in deletes[budget:]]
        deletes = deletes[:budget]
        guard = (
            f"prune guard: holding {len(held)} deletes back (this window's budget allows "
            f"{max(0, delete_budget)} more: MAX_PRUNE_FRACTION {max_prune_fraction:g} of what "
            f"the sink owned, at least {prune_floor}); they are planned again when the window "
            "rolls, or go at once with `consul-sync run --once --release-held-deletes`"
        )
        withheld.extend(held)
    return Plan(
        changes=tuple(changes + deletes),
        conflicts=tuple(conflicts),
        withheld=tuple(sorted(withheld)),
        guard=guard,
        held=tuple(held),
    )


def _differs(have: DesiredService | None, want: DesiredService) -> bool:
    """Whether the sink's reading ``have`` differs from ``want``."""
    return have is None or have != as_held_by(have, want)


def as_held_by(have: DesiredService, want: DesiredService) -> DesiredService:
    """``want`` as a sink whose reading is ``have`` can hold it.

    ``tags`` and ``meta`` are compared only when the sink reads them back
    (its reading carries some): a sink whose objects do not depend on them
    (the kubernetes and manifests sinks) reads them back empty, and must not
    be rewritten for a tag it has no use for.  A sink that routes on them
    (the gateway sink) reports the desired service it satisfies, tags and
    all.
    """
    if not have.tags and not have.meta and (want.tags or want.meta):
        return attrs.evolve(want, tags=(), meta=())
    return want


def owned_count(observed: Mapping[ServiceKey, Observed]) -> int:
    """What the prune budget measures: the entries a sink owns (counted)."""
    return sum(1 for item in observed.values() if item.owned and item.counted)


def window_allowance(owned: int, fraction: float, floor: int = DEFAULT_PRUNE_FLOOR) -> int:
    """Deletes one prune window allows a sink that owned ``owned`` objects
    when it opened."""
    return max(floor, math.floor(fraction * owned + 1e-9))


@attrs.define
class PruneBudget:
    """Deletes of one sink, budgeted over a window of time, not per pass.

    A window opens with the first delete after the previous one closed and
    lasts ``window`` seconds; within it at most ``max(floor, fraction x
    owned)`` objects may be deleted, ``owned`` counted when it opened.  So a
    trickle of deregistrations (one per pass) is held to the same budget as
    a burst.  ``now`` is passed in: the budget keeps no clock of its own.
    """

    fraction: float
    window: float
    floor: int = DEFAULT_PRUNE_FLOOR
    opened: float | None = None
    allowed: int = 0
    used: int = 0

    def _open(self, now: float) -> bool:
        return self.opened is not None and now < self.opened + self.window

    def remaining(self, now: float, owned: int) -> int:
        """How many deletes a pass at ``now`` may make."""
        if not self._open(now):
            return window_allowance(owned, self.fraction, self.floor)
        return max(0, self.allowed - self.used)

    def spend(self, now: float, owned: int, count: int, *, held: bool = False) -> None:
        """Record ``count`` deletes made at ``now`` (``owned`` before them);
        ``held``: deletes were held back, so a window opens (to roll) even
        if none was made."""
        if count <= 0 and not held:
            return
        if not self._open(now):
            self.opened = now
            self.allowed = window_allowance(owned, self.fraction, self.floor)
            self.used = 0
        self.used += count

    def rolls_at(self) -> float | None:
        """When the open window closes (``None``: none is open)."""
        return None if self.opened is None else self.opened + self.window


def keep_contributions(
    want: DesiredService, have: DesiredService, incomplete: frozenset[str]
) -> DesiredService:
    """``want`` plus what the sink holds from sources that are incomplete now.

    An unreachable source's endpoints (and ports) are not *removed* on its
    behalf: removing them is a delete for that source, and nothing is
    deleted for a source that has not answered.  A source that contributes
    to ``want`` itself answered for this service (its last known reading is
    in ``want``): what it says now stands.
    """
    incomplete = frozenset(s for s in incomplete if s not in want.sources)
    present = {(e.address, want.port_for(e)) for e in want.endpoints}
    names = {port.name for port in want.ports}
    primary = want.ports[0].port if want.ports else None
    kept: list[Endpoint] = []
    for endpoint in have.endpoints:
        if endpoint.source not in incomplete:
            continue
        number = have.port_for(endpoint)
        if (endpoint.address, number) in present:
            continue
        if endpoint.port is None and number != primary:
            kept.append(attrs.evolve(endpoint, port=number))  # it keeps its port
        else:
            kept.append(endpoint)
    held_sources = [s for s in have.sources if s in incomplete and s not in want.sources]
    ports = [port for port in have.ports if port.name not in names] if held_sources else []
    if not kept and not held_sources:
        return want
    return attrs.evolve(
        want,
        ports=[*want.ports, *ports],
        endpoints=[*want.endpoints, *kept],
        sources=[*want.sources, *held_sources],
    )


def _origin_incomplete(have: Observed, incomplete: frozenset[str]) -> bool:
    if not incomplete:
        return False
    if have.sources is None:  # origin unknown: wait until every source is complete
        return True
    return any(source in incomplete for source in have.sources)


def observed_after(change: Change) -> Observed | None:
    """What the sink holds under ``change.key`` once ``change`` was applied."""
    if change.action is Action.DELETE or change.desired is None:
        return None
    return Observed(change.key, True, change.desired, change.desired.sources)


def apply_to(observed: Mapping[ServiceKey, Observed], result: Plan) -> dict[ServiceKey, Observed]:
    """``observed`` with every change of ``result`` applied (a model sink)."""
    after = dict(observed)
    for change in result.changes:
        new = observed_after(change)
        if new is None:
            after.pop(change.key, None)
        else:
            after[change.key] = new
    return after
