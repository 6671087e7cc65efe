"""How the kubernetes sink tells what went wrong: a :class:`SinkError` for the runtime from
each failed API request (what Kubernetes rejected and why, the RBAC rule a 403 misses, an
outage to back off from), Warning Events on the Services concerned (at most one per object
and reason an interval, :class:`consul_sync_kube.events.Events`), and each foreign Service in
a desired service's way (a name conflict), told once."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from consul_sync import SinkError
from consul_sync.model import Change
from consul_sync_kube.errors import KubeError, rbac_hint, unavailable
from consul_sync_kube.events import Events
from consul_sync_kube.informer import Informer
from consul_sync_kube.objects import is_managed, owner_of, uid
from consul_sync_kube.resources import Resource

from .metrics import SinkMetrics
from .view import View

if TYPE_CHECKING:
    from consul_sync_kube.client import KubeClient

log = logging.getLogger("consul_sync.kubernetes")

_T = TypeVar("_T")


class Call(Protocol):
    """Runs one blocking API call in a worker thread (the sink's ``_call``): the report's
    Events go through it (the writer's writes go through its own ``api``)."""

    def __call__(
        self, func: Callable[[], _T], *, expected: Collection[int] = ()
    ) -> Awaitable[_T]: ...


class Report:
    """Errors, Events and name conflicts of one sink."""

    def __init__(
        self,
        name: str,
        client: KubeClient,
        services: Informer,
        view: View,
        *,
        call: Call,
        events: Events,
        metrics: SinkMetrics,
        active: Callable[[], bool],
    ) -> None:
        self.name = name
        self.namespace = view.namespace
        self.owner = view.ownership.owner
        self.client = client
        self.services = services
        self.view = view
        self.names = view.names
        self.call = call
        self.events = events
        self.metrics = metrics
        self.active = active
        self._conflicts_told: set[str] = set()

    async def sink_error(self, error: KubeError, change: Change) -> SinkError:
        key = change.key
        what = f"{error.resource.qualified if error.resource else 'object'} "
        what += f"{error.namespace}/{error.name}" if error.name else error.namespace
        service = f"service {key[0]}/{key[1]}"
        if error.status == 422:
            causes = "; ".join(
                f"{c.get('field', '?')}: {c.get('message', '')}" for c in error.causes
            )
            message = (
                f"Kubernetes rejected {what} for {service} ({error.reason or 'Invalid'}): "
                f"{causes or error.message}"
            )
            obj = self.services.store.get(self.names.name(key))
            if obj is not None and self.view.ours(obj):
                await self.event(obj, "Rejected", message)
            return SinkError(message, retryable=False)
        if error.status == 403:
            return SinkError(f"{service}: {rbac_hint(error)} (API: {error.message})")
        if error.status == 429 or error.status >= 500 or error.status == 0:
            return SinkError(
                f"{service}: Kubernetes API busy or unreachable ({error}); backing off",
                retry_after=error.retry_after,
                # an outage is told once, by the sink's Outage
                reported=unavailable(error.status),
            )
        if error.status == 409:
            return SinkError(f"{service}: {what} keeps changing under us ({error}); retrying")
        return SinkError(f"{service}: {error.verb} {what} failed: {error}")

    async def event(self, obj: Mapping[str, Any], reason: str, message: str) -> None:
        """A Warning Event on Service ``obj``, unless one was recorded lately."""
        body = self.events.warning(obj, reason, message, api_version="v1", kind="Service")
        if body is None:
            return
        client = self.client
        try:
            await self.call(lambda: client.create(Resource.EVENTS, body))
        except KubeError as exc:
            log.debug("sink %s: cannot record an Event: %s", self.name, exc)
            return
        self.metrics.events.labels(sink=self.name, reason=reason).inc()

    async def tell_conflicts(self) -> None:
        """Report each foreign object in a desired service's way once (the
        leader does; a standby replica would only repeat it)."""
        if not self.active():
            return
        desired = self.names.naming.names
        for key, observed in list(self.view.entries.items()):
            if observed.owned or key not in desired:
                continue
            name = desired[key]
            obj = self.services.store.get(name)
            if obj is None or uid(obj) in self._conflicts_told:
                continue
            self._conflicts_told.add(uid(obj))
            owner = owner_of(obj)
            whose = (
                f"consul-sync owner {owner!r}"
                if is_managed(obj) and owner
                else "the Go consul-sync (this owner does not adopt)"
                if is_managed(obj)
                else "somebody else (no consul-sync managed-by label)"
            )
            message = (
                f"Service {self.namespace}/{name} is wanted by consul-sync (owner {self.owner!r}) "
                f"for service {key[1]!r} but was made by {whose}; leaving it alone"
            )
            log.warning("sink %s: %s", self.name, message, extra={"sink": self.name})
            await self.event(obj, "NameConflict", message)
