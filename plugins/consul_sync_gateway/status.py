"""Whether the gateways accept our routes: each route's ``status.parents`` conditions, read
from the watch.  A parent that does not accept a route (``Accepted`` or ``ResolvedRefs``
False) is a warning with the gateway's reason, an Event (queued: the sink sends it at its
next pass), and ``consul_sync_httproute_accepted{route,gateway}`` 0."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from consul_sync.model import ServiceKey
from consul_sync_kube.objects import meta
from consul_sync_kube.resources import Resource

from . import routes as rt
from .metrics import GatewayMetrics

log = logging.getLogger("consul_sync.gateway")

#: (route, reason, message) of the Events to send
PendingEvents = list[tuple[dict[str, Any], str, str]]


class RouteStatus:
    """The gateways' verdicts on the routes of one sink."""

    def __init__(
        self,
        name: str,
        namespace: str,
        metrics: GatewayMetrics,
        pending_events: PendingEvents,
        mark_dirty: Callable[[Iterable[ServiceKey]], None],
    ) -> None:
        self.name = name
        self.namespace = namespace
        self.metrics = metrics
        self.pending_events = pending_events
        self.mark_dirty = mark_dirty
        self._seen: dict[tuple[str, str], str] = {}
        self._accepted_labels: dict[str, set[tuple[str, str]]] = {}

    def read(self, resource: Resource, obj: Mapping[str, Any]) -> None:
        """Record a route of ours as the watch shows it: its parents' verdicts."""
        name = meta(obj)["name"]
        labels: set[tuple[str, str]] = set()
        for parent in (obj.get("status") or {}).get("parents") or []:
            ref = parent.get("parentRef") or {}
            gateway = f"{ref.get('namespace') or self.namespace}/{ref.get('name', '?')}"
            conditions = {c.get("type"): c for c in parent.get("conditions") or []}
            accepted = conditions.get("Accepted")
            if accepted is None:
                continue
            refused = [
                c
                for t in ("Accepted", "ResolvedRefs")
                if (c := conditions.get(t)) is not None and c.get("status") == "False"
            ]
            ok = accepted.get("status") == "True" and not refused
            self.metrics.accepted.labels(route=name, gateway=gateway).set(1 if ok else 0)
            labels.add((name, gateway))
            if not refused:
                self._seen.pop((name, gateway), None)
                continue
            why = "; ".join(
                f"{c.get('type')}=False ({c.get('reason', '?')}: {c.get('message', '')})"
                for c in refused
            )
            if self._seen.get((name, gateway)) == why:
                continue
            self._seen[(name, gateway)] = why
            message = f"Gateway {gateway} does not accept {obj.get('kind', 'route')} {name}: {why}"
            log.warning("sink %s: %s", self.name, message, extra={"sink": self.name})
            self.pending_events.append((dict(obj), "RouteNotAccepted", message))
            # A pass soon (observe) records the Event: hooks here cannot await.
            self.mark_dirty([(self.namespace, rt.service_name_of(obj))])
        for stale in self._accepted_labels.get(name, set()) - labels:
            self.metrics.accepted.remove(*stale)
        self._accepted_labels[name] = labels
        del resource

    def forget(self, resource: Resource, name: str) -> None:
        """A route went: its gauges go with it."""
        for label in self._accepted_labels.pop(name, set()):
            self.metrics.accepted.remove(*label)
        del resource
