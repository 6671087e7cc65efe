"""The gateway sink's view: per desired service, whether its routes are as they should be.

``Observed.service`` is the desired service itself (``Context.desired_service``) when its
routes are in place, so the planner plans nothing; a service that needs no route (no tag, no
Service yet) is satisfied by no route at all.  A route of ours that its service no longer
wants (a tag removed) is an entry of its own, ``<namespace>/<kind plural>/<route name>``:
the planner deletes it like anything else (policy, prune budget, incomplete sources).  Reads
only the informer stores (routes, and the kubernetes sink's Services the routes point at).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import Any

from consul_sync import Context, DesiredService, Observed
from consul_sync.model import ServiceKey
from consul_sync_kube.informer import Informer
from consul_sync_kube.objects import (
    MINE,
    NAME_ANNOTATION,
    SOURCES_ANNOTATION,
    Ownership,
    meta,
    uid,
)
from consul_sync_kube.resources import Resource

from . import routes as rt
from .metrics import GatewayMetrics
from .status import PendingEvents, RouteStatus

log = logging.getLogger("consul_sync.gateway")

ROUTE_RESOURCES = (Resource.HTTPROUTES, Resource.GRPCROUTES)
#: The annotation the kubernetes sink writes on a Service whose Kubernetes
#: name differs from the service's name.
SERVICE_NAME_ANNOTATION = NAME_ANNOTATION


def resource_of(route: rt.Route) -> Resource:
    return Resource.GRPCROUTES if route.kind == "GRPCRoute" else Resource.HTTPROUTES


class RouteView:
    """``entries``: what ``observe()`` returns, recomputed per watch event and write."""

    def __init__(
        self,
        name: str,
        context: Context,
        ownership: Ownership,
        gateways: tuple[rt.Gateway, ...],
        domain_suffix: str,
        informers: Mapping[Resource, Informer],
        *,
        metrics: GatewayMetrics,
        status: RouteStatus,
        pending_events: PendingEvents,
    ) -> None:
        self.name = name
        self.context = context
        self.namespace = context.namespace
        self.ownership = ownership
        self.owner = ownership.owner
        self.gateways = gateways
        self.domain_suffix = domain_suffix
        self.informers = informers
        self.metrics = metrics
        self.status = status
        self.pending_events = pending_events
        self.entries: dict[ServiceKey, Observed] = {}
        #: keys being written now: their watch events are ours, not repairs
        self.writing: set[ServiceKey] = set()
        #: the informers watch: a change from now on is somebody else's
        self.watching = False
        self._told: set[str] = set()
        self._conflicts_told: set[str] = set()

    def satisfied(self) -> dict[ServiceKey, Observed]:
        """Nothing can be written: every desired service counts as done."""
        view = {}
        for key in self.context.desired_keys()[1]:
            service = self.context.desired_service(key)
            if service is not None:
                view[key] = Observed(key, True, service, service.sources)
        return view

    def ours(self, obj: Mapping[str, Any]) -> bool:
        return self.ownership.ours(obj)

    def all_routes(self) -> list[tuple[Resource, dict[str, Any]]]:
        return [
            (resource, obj)
            for resource in ROUTE_RESOURCES
            if resource in self.informers
            for obj in self.informers[resource].store.values()
        ]

    def route_entry(self, resource: Resource, obj: Mapping[str, Any]) -> ServiceKey:
        """The view key of one route of ours no longer wanted."""
        return (self.namespace, f"{resource.plural}/{meta(obj)['name']}")

    def route_of_entry(self, key: ServiceKey) -> tuple[Resource, dict[str, Any]] | None:
        """The route a :meth:`route_entry` key stands for (``None``: not one)."""
        plural, _, name = key[1].partition("/")
        for resource in ROUTE_RESOURCES:
            if resource.plural == plural and resource in self.informers and name:
                obj = self.informers[resource].store.get(name)
                return (resource, obj) if obj is not None and self.ours(obj) else None
        return None

    def stale(self, key: ServiceKey) -> list[tuple[Resource, dict[str, Any]]]:
        """Routes of ours for a desired service that does not want them."""
        service = self.context.desired_service(key)
        backend = self.backend(key) if service is not None else None
        if service is None or backend is None:
            return []
        names = {(r.plural, r.name) for r in self.wanted(service, backend)}
        return [(r, o) for r, o in self.routes_of(key) if (r.plural, meta(o)["name"]) not in names]

    def routes_of(self, key: ServiceKey) -> list[tuple[Resource, dict[str, Any]]]:
        return [
            (resource, obj)
            for resource, obj in self.all_routes()
            if self.ours(obj) and rt.service_name_of(obj) == key[1]
        ]

    def backend(self, key: ServiceKey) -> str | None:
        """The name of the Service of ``key`` the kubernetes sink made, if any."""
        informer = self.informers.get(Resource.SERVICES)
        if informer is None:
            return None
        for name, obj in informer.store.items():
            annotations = meta(obj).get("annotations") or {}
            if annotations.get(SERVICE_NAME_ANNOTATION, name) == key[1]:
                return name
        return None

    def wanted(self, service: DesiredService, backend: str | None) -> tuple[rt.Route, ...]:
        if backend is None:
            return ()
        rendered = rt.render(
            service,
            self.gateways,
            backend=backend,
            domain_suffix=self.domain_suffix,
            owner=self.owner,
        )
        for problem in rendered.problems:
            if problem not in self._told:
                self._told.add(problem)
                log.warning("sink %s: %s", self.name, problem, extra={"sink": self.name})
        return rendered.routes

    def entry(self, key: ServiceKey) -> Observed | None:
        entry = self.route_of_entry(key) if "/" in key[1] else None
        if entry is not None:
            if entry not in self.stale((self.namespace, rt.service_name_of(entry[1]))):
                return None  # wanted again, or its service went (deleted with it)
            sources = (meta(entry[1]).get("annotations") or {}).get(SOURCES_ANNOTATION)
            split = tuple(s for s in (sources or "").split(",") if s)
            return Observed(key, True, None, split, counted=False)
        if "/" in key[1]:
            return None  # a route entry whose route is gone
        service = self.context.desired_service(key)
        mine = self.routes_of(key)
        if service is None:
            if not mine:
                return None
            sources = (meta(mine[0][1]).get("annotations") or {}).get(SOURCES_ANNOTATION)
            known = tuple(s for s in (sources or "").split(",") if s) if sources else None
            return Observed(key, True, None, known)
        backend = self.backend(key)
        if backend is None:
            # No Service (yet): no route is made; routes that exist already
            # (the Go version's, at a migration) wait for it, not deleted.
            return Observed(key, True, service, service.sources)
        wanted = self.wanted(service, backend)
        names = {(r.plural, r.name) for r in wanted}
        # (a route it no longer wants is an entry of its own: the planner
        # deletes it, under the policy and the prune budget)
        live = {(r.plural, meta(o)["name"]): o for r, o in mine}
        live = {which: obj for which, obj in live.items() if which in names}
        for route in wanted:
            obj = self.informers[resource_of(route)].store.get(route.name)
            if obj is not None and not self.ours(obj):
                return Observed(key, owned=False)
        if not wanted and not live:
            return Observed(key, True, service, service.sources)
        if not live:
            return None  # to be created
        done = set(live) == {(r.plural, r.name) for r in wanted} and not any(
            rt.differs(r, live[(r.plural, r.name)]) for r in wanted
        )
        done = done and all(self.ownership.classify(o) == MINE for o in live.values())
        return Observed(key, True, service if done else None, service.sources)

    def recompute(self, keys: Collection[ServiceKey] | None, *, external: bool = False) -> None:
        if keys is None:
            keys = set(self.entries) | set(self.context.desired_keys()[1])
            keys |= {(self.namespace, rt.service_name_of(o)) for _, o in self.all_routes()}
        keys = set(keys)
        for key in list(keys):  # with the entries of the routes it no longer wants
            keys |= {self.route_entry(r, o) for r, o in self.stale(key)}
            keys |= {k for k in self.entries if "/" in k[1]}
        for key in keys:
            before = self.entries.get(key)
            after = self.entry(key)
            if after is None:
                self.entries.pop(key, None)
            else:
                self.entries[key] = after
            if external and self.watching and after != before and key not in self.writing:
                self.context.mark_dirty([key])
            elif after is not None and before is None and "/" in key[1]:
                # a route its service no longer wants: the planner's to delete
                self.context.mark_dirty([key])
        counts = {resource: 0 for resource in ROUTE_RESOURCES}
        for resource, obj in self.all_routes():
            if self.ours(obj):
                counts[resource] += 1
        self.metrics.httproutes.labels(sink=self.name).set(counts[Resource.HTTPROUTES])
        self.metrics.grpcroutes.labels(sink=self.name).set(counts[Resource.GRPCROUTES])
        self.note_conflicts()

    def changed(self, resource: Resource, names: set[str]) -> None:
        informer = self.informers[resource]
        keys: set[ServiceKey] = set()
        if resource is Resource.SERVICES:
            # A Service came or went: the routes of its service follow.
            keys = {k for k in self.entries} | set(self.context.desired_keys()[1])
        else:
            for name in names:
                obj = informer.store.get(name)
                if obj is None:  # gone: whose it was is no longer known
                    self.status.forget(resource, name)
                    keys |= set(self.entries)
                    continue
                keys.add((self.namespace, rt.service_name_of(obj)))
                if self.ours(obj):
                    self.status.read(resource, obj)
        self.recompute(keys, external=True)

    def note_conflicts(self) -> None:
        for key, observed in self.entries.items():
            if observed.owned:
                continue
            service = self.context.desired_service(key)
            if service is None:
                continue
            for route in self.wanted(service, self.backend(key)):
                obj = self.informers[resource_of(route)].store.get(route.name)
                if obj is None or self.ours(obj) or uid(obj) in self._conflicts_told:
                    continue
                self._conflicts_told.add(uid(obj))
                message = (
                    f"{route.kind} {self.namespace}/{route.name} is wanted by consul-sync "
                    f"(owner {self.owner!r}) for service {key[1]!r} but was made by somebody "
                    "else; leaving it alone"
                )
                log.warning("sink %s: %s", self.name, message, extra={"sink": self.name})
                self.pending_events.append((obj, "NameConflict", message))
