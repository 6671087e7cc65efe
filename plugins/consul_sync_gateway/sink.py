"""The ``gateway`` sink: Gateway API HTTPRoutes (and GRPCRoutes), live.

* **Observe**: three informers (list + watch): HTTPRoutes and GRPCRoutes of
  the target namespace (all of them: a route of a wanted name made by
  somebody else must never be written over), and consul-sync's Services
  (label ``app.kubernetes.io/managed-by=consul-sync``): a route only exists
  while the Service it sends traffic to does, and it follows that
  Service's Kubernetes name.  The view holds, per desired service, whether
  its routes are as they should be: ``Observed.service`` is then the
  desired service itself (``Context.desired_service``), so the planner
  plans nothing; a service that needs no route (no tag, no Service yet)
  is satisfied by no route at all.
* **Apply**: render the service's routes (:mod:`.routes`), server-side apply
  (field manager ``consul-sync``) only those that differ from the live
  ones.  Every delete goes through the planner (policy, prune budget,
  incomplete sources): a service that went, and a route of ours a service
  no longer wants (a tag removed) - the latter shown in the view as an
  entry of its own, ``<namespace>/<kind plural>/<route name>``.
* **Ownership**: as the kubernetes sink: managed-by label and owner id
  annotation; routes of the Go version (label, no owner) are adopted by
  the default owner; anything else is left alone (a conflict, an Event).
* **Status**: each route's ``status.parents`` conditions, read from the
  watch: a parent that does not accept the route (``Accepted`` or
  ``ResolvedRefs`` False) is a warning with the gateway's reason, an Event,
  and ``consul_sync_httproute_accepted{route,gateway}`` 0.
* **No CRDs**: if ``gateway.networking.k8s.io/v1`` is not served, the sink
  says so once, in the log and in ``/readyz``'s body (still ready), plans
  nothing, and asks again at every full resync.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import anyio
import anyio.to_thread
import yaml

from consul_sync import Context, DesiredService, Observed, SinkError
from consul_sync.model import Action, Change, ServiceKey
from consul_sync_kube.connect import connect
from consul_sync_kube.errors import KubeError
from consul_sync_kube.events import Events
from consul_sync_kube.gather import gather
from consul_sync_kube.informer import Informer
from consul_sync_kube.objects import (
    FIELD_MANAGER,
    MANAGED_BY,
    MANAGER,
    MINE,
    Ownership,
    meta,
    uid,
)
from consul_sync_kube.resources import GATEWAY_GROUP, GATEWAY_VERSION, Resource

from . import routes as rt
from .config import GatewayConfig, GatewayEntry
from .metrics import GatewayMetrics
from .status import PendingEvents, RouteStatus
from .view import ROUTE_RESOURCES, RouteView, resource_of

# (GatewayMetrics: tests/core and tests/docs import it from here)
__all__ = ["ROUTE_RESOURCES", "GatewayConfig", "GatewayEntry", "GatewayMetrics", "GatewaySink"]

if TYPE_CHECKING:
    from consul_sync_kube.client import KubeClient

log = logging.getLogger("consul_sync.gateway")
informer_log = logging.getLogger("consul_sync.gateway.informer")

SERVICE_SELECTOR = f"{MANAGED_BY}={MANAGER}"
MISSING_CRDS = (
    "the Gateway API is not installed (the API server does not serve "
    "gateway.networking.k8s.io/v1 httproutes): no routes are written; install the "
    "Gateway API CRDs (standard channel) or set ENABLE_HTTPROUTES=false"
)
_T = TypeVar("_T")


class GatewaySink:
    type_name: ClassVar[str] = "gateway"
    Config: ClassVar[type[GatewayConfig]] = GatewayConfig
    #: Without a config file, runs beside the kubernetes sink unless
    #: ENABLE_HTTPROUTES is false.
    default_env: ClassVar[tuple[str, bool]] = ("ENABLE_HTTPROUTES", True)

    def __init__(self, name: str, config: GatewayConfig, context: Context) -> None:
        self.name = name
        self.config = config
        self.context = context
        self.namespace = context.namespace
        self.concurrency = config.concurrency
        self.ownership = Ownership.of(self.namespace, config.owner_id, config.instance)
        self.owner, self.adopt = self.ownership.owner, self.ownership.adopt
        gateway_ns = config.gateway_namespace or self.namespace
        entries = config.gateways or (
            GatewayEntry(config.internal_tag, config.internal_gateway),
            GatewayEntry(config.external_tag, config.external_gateway),
        )
        self.gateways = tuple(
            rt.Gateway(e.tag, e.name, e.namespace or gateway_ns, e.listener or config.listener)
            for e in entries
        )
        self.metrics = GatewayMetrics.of(context.metrics.registry)
        #: Events found while the watch hands over (hooks there cannot await): sent by a pass
        self._pending_events: PendingEvents = []
        self.status = RouteStatus(
            name, self.namespace, self.metrics, self._pending_events, context.mark_dirty
        )
        self.client: KubeClient | None = context.extras.get("gateway_client")
        self._own_client = self.client is None
        self._limiter = anyio.CapacityLimiter(config.concurrency)
        self.informers: dict[Resource, Informer] = {}
        #: None: not asked yet; False: the Gateway API is not served.
        self.available: bool | None = None
        self.view = RouteView(
            name,
            context,
            self.ownership,
            self.gateways,
            config.domain_suffix,
            self.informers,
            metrics=self.metrics,
            status=self.status,
            pending_events=self._pending_events,
        )
        self.events = Events(self.namespace, config.event_interval, self.owner)
        self._closed = False

    # --- the protocol -----------------------------------------------------

    @property
    def readiness_note(self) -> str | None:
        return MISSING_CRDS if self.available is False else None

    async def open(self) -> None:
        if self.config.output == "":
            await self._client()

    async def observe(self, *, fresh: bool = False) -> Mapping[ServiceKey, Observed]:
        if self.config.output == "-":
            return self.view.entries
        client = await self._client()
        if fresh or self.available is None:
            await self._discover(client)
        if not self.available:
            self.view.entries = self.view.satisfied()
            return self.view.entries
        informers = self._informers(client)
        if fresh or not all(i.synced for i in informers.values()):
            try:
                await gather(partial(i.relist, self._limiter) for i in informers.values())
            except KubeError as exc:
                raise SinkError(f"cannot list {_what(exc)} in {self.namespace}: {exc}") from exc
        if not fresh and not self._closed:
            for informer in informers.values():
                informer.start()
            self.view.watching = True
        self.view.recompute(None)
        await self._flush_events()
        return self.view.entries

    async def apply(self, change: Change) -> None:
        if self.config.output == "-":
            self._print(change)
            return
        if change.key[0] != self.namespace:
            raise SinkError(
                f"service {change.key[0]}/{change.key[1]} is in namespace {change.key[0]!r}; "
                f"this sink writes to {self.namespace!r} only",
                retryable=False,
            )
        client = await self._client()
        if not self.available:
            return
        self._informers(client)
        self.view.writing.add(change.key)
        try:
            if change.action is Action.DELETE:
                route = self.view.route_of_entry(change.key)
                await self._delete_routes([route] if route else self.view.routes_of(change.key))
            else:
                assert change.desired is not None
                await self._upsert(change.key, change.desired)
        except KubeError as exc:
            raise self._sink_error(exc, change) from exc
        finally:
            self.view.writing.discard(change.key)
            self.view.recompute({change.key})
        await self._flush_events()

    def render(self, services: Sequence[DesiredService]) -> list[dict[str, Any]]:
        objects: list[dict[str, Any]] = []
        for service in services:
            for route in self.view.wanted(service, rt.backend_name(service.name)):
                objects.append(route.body)
        return objects

    async def aclose(self) -> None:
        self._closed = True
        for informer in self.informers.values():
            informer.stop()
        for informer in self.informers.values():
            await informer.join()
        if self._own_client and self.client is not None:
            self.client.close()

    # --- start-up ---------------------------------------------------------

    async def _client(self) -> KubeClient:
        if self.client is None:
            self.client = await connect(self.config)  # urllib3 retries nothing: the runtime does
        return self.client

    async def _discover(self, client: KubeClient) -> None:
        try:
            served = await self._call(partial(client.served, GATEWAY_GROUP, GATEWAY_VERSION))
        except KubeError as exc:
            raise SinkError(f"cannot ask the API server for the Gateway API: {exc}") from exc
        was = self.available
        self.available = served is not None and "httproutes" in served
        if not self.available and was is not False:
            log.warning("sink %s: %s", self.name, MISSING_CRDS, extra={"sink": self.name})
        elif self.available and was is False:
            log.info(
                "sink %s: the Gateway API is served now; writing routes",
                self.name,
                extra={"sink": self.name},
            )

    def _informers(self, client: KubeClient) -> dict[Resource, Informer]:
        if not self.informers:
            for resource, selector in (
                (Resource.HTTPROUTES, None),
                (Resource.GRPCROUTES, None),
                (Resource.SERVICES, SERVICE_SELECTOR),
            ):
                self.informers[resource] = Informer(
                    client,
                    resource,
                    self.namespace,
                    label_selector=selector,
                    on_change=partial(self.view.changed, resource),
                    on_error=self._watch_error,
                    timeout_seconds=self.config.watch_timeout,
                    logger=informer_log,
                )
        return self.informers

    def _watch_error(self, error: KubeError) -> None:
        self.context.metrics.kubernetes_errors.inc()
        log.warning(
            "sink %s: %s %s: %s",
            self.name,
            error.verb,
            error.resource.plural if error.resource else "?",
            error,
            extra={"sink": self.name},
        )

    # --- writing ----------------------------------------------------------

    async def _call(self, func: Callable[[], _T]) -> _T:
        try:
            return await anyio.to_thread.run_sync(
                func, limiter=self._limiter, abandon_on_cancel=True
            )
        except KubeError as exc:
            if exc.status != 404:
                self.context.metrics.kubernetes_errors.inc()
            raise

    async def _upsert(self, key: ServiceKey, desired: DesiredService) -> None:
        assert self.client is not None
        client = self.client
        backend = self.view.backend(key)
        if backend is None:
            return  # no Service yet: its watch event brings this key back
        wanted = self.view.wanted(desired, backend)
        for route in wanted:
            obj = self.informers[resource_of(route)].store.get(route.name)
            if obj is not None and not self.view.ours(obj):
                self.view.note_conflicts()
                raise SinkError(
                    f"{route.kind} {self.namespace}/{route.name} exists and is not "
                    f"consul-sync's (owner {self.owner!r}); left alone",
                    retryable=False,
                )
        writes = []
        for route in wanted:
            informer = self.informers[resource_of(route)]
            live = informer.store.get(route.name)
            adopted = live is not None and self.ownership.classify(live) != MINE
            if rt.differs(route, live) or adopted:
                writes.append(route)
        for route in writes:
            resource = resource_of(route)
            result = await self._call(
                partial(client.apply, resource, route.body, field_manager=FIELD_MANAGER, force=True)
            )
            self.informers[resource].put(result)
        names = {(r.plural, r.name) for r in wanted}
        # Routes it no longer wants are deleted by the planner, as entries of
        # their own (policy, prune budget): plan them now.
        stale = {
            self.view.route_entry(r, o)
            for r, o in self.view.routes_of(key)
            if (r.plural, meta(o)["name"]) not in names
        }
        if stale:
            self.context.mark_dirty(stale)

    async def _delete_routes(self, items: Sequence[tuple[Resource, Mapping[str, Any]]]) -> None:
        assert self.client is not None
        client = self.client
        for resource, obj in items:
            name, route_uid = meta(obj)["name"], uid(obj)
            try:
                await self._call(
                    partial(client.delete, resource, self.namespace, name, uid=route_uid or None)
                )
            except KubeError as exc:
                if exc.status != 404:
                    raise
            self.informers[resource].forget(name, route_uid or None)
            self.status.forget(resource, name)

    def _sink_error(self, error: KubeError, change: Change) -> SinkError:
        service = f"service {change.key[0]}/{change.key[1]}"
        what = f"{_what(error)} {error.namespace}/{error.name}".rstrip("/")
        if error.status == 422:
            causes = "; ".join(
                f"{c.get('field', '?')}: {c.get('message', '')}" for c in error.causes
            )
            return SinkError(
                f"the API server rejected {what} for {service}: {causes or error.message}",
                retryable=False,
            )
        if error.status == 403:
            return SinkError(
                f"{service}: missing RBAC permission to {error.verb} {_what(error)} in "
                f"{self.namespace} (deploy/base/rbac.yaml): {error.message}"
            )
        if error.status == 429 or error.status >= 500 or error.status == 0:
            return SinkError(
                f"{service}: Kubernetes API busy or unreachable ({error}); backing off",
                retry_after=error.retry_after,
            )
        return SinkError(f"{service}: {error.verb} {what} failed: {error}")

    # --- events -----------------------------------------------------------

    async def _flush_events(self) -> None:
        pending = list(self._pending_events)
        self._pending_events.clear()  # (the list the view and status append to)
        for obj, reason, message in pending:
            await self._event(obj, reason, message)

    async def _event(self, obj: Mapping[str, Any], reason: str, message: str) -> None:
        """A Warning Event on route ``obj``, unless one was recorded lately."""
        kind = obj.get("kind") or "HTTPRoute"
        body = self.events.warning(obj, reason, message, api_version=rt.API_VERSION, kind=kind)
        if body is None:
            return
        assert self.client is not None
        client = self.client
        try:
            await self._call(partial(client.create, Resource.EVENTS, body))
        except KubeError as exc:
            log.debug("sink %s: cannot record an Event: %s", self.name, exc)

    # --- printing (output = "-") ------------------------------------------

    def _print(self, change: Change) -> None:
        if change.action is Action.DELETE or change.desired is None:
            return
        objects = self.render([change.desired])
        if objects:
            sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=False, explicit_start=True))
            sys.stdout.flush()
        self.view.entries[change.key] = Observed(
            change.key, True, change.desired, change.desired.sources
        )


def _what(error: KubeError) -> str:
    return error.resource.qualified if error.resource else "objects"
