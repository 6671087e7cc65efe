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
from collections.abc import Callable, Collection, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import anyio
import anyio.to_thread
import attrs
import yaml
from prometheus_client import CollectorRegistry, Gauge

from consul_sync import Context, DesiredService, Duration, Observed, SinkError, setting
from consul_sync.model import Action, Change, ServiceKey
from consul_sync_kube.connect import connect
from consul_sync_kube.errors import KubeError
from consul_sync_kube.events import Events
from consul_sync_kube.gather import gather
from consul_sync_kube.informer import Informer
from consul_sync_kube.metrics import PerRegistry
from consul_sync_kube.objects import (
    DEFAULT_INSTANCE,
    FIELD_MANAGER,
    MANAGED_BY,
    MANAGER,
    MINE,
    NAME_ANNOTATION,
    SOURCES_ANNOTATION,
    Ownership,
    meta,
    uid,
)
from consul_sync_kube.resources import GATEWAY_GROUP, GATEWAY_VERSION, Resource

from . import routes as rt

if TYPE_CHECKING:
    from consul_sync_kube.client import KubeClient

log = logging.getLogger("consul_sync.gateway")
informer_log = logging.getLogger("consul_sync.gateway.informer")

SERVICE_SELECTOR = f"{MANAGED_BY}={MANAGER}"
#: The annotation the kubernetes sink writes on a Service whose Kubernetes
#: name differs from the service's name.
SERVICE_NAME_ANNOTATION = NAME_ANNOTATION
#: urllib3's own retries (three quick retries of a refused connection), as this sink's client
#: always had; the kubernetes sink's client has none (``consul_sync_kube.client.NO_RETRIES``).
URLLIB3_RETRIES = None
ROUTE_RESOURCES = (Resource.HTTPROUTES, Resource.GRPCROUTES)
MISSING_CRDS = (
    "the Gateway API is not installed (the API server does not serve "
    "gateway.networking.k8s.io/v1 httproutes): no routes are written; install the "
    "Gateway API CRDs (standard channel) or set ENABLE_HTTPROUTES=false"
)
_T = TypeVar("_T")


@attrs.frozen
class GatewayEntry:
    """One ``gateways = [{tag, name, namespace, listener}]`` item."""

    tag: str
    name: str
    namespace: str = ""
    listener: str = ""


@attrs.frozen
class GatewayConfig:
    domain_suffix: str = setting(
        "",
        env="DOMAIN_SUFFIX",
        help="routes get hostname <service>.<domain_suffix>; no default: without it "
        "only services with Meta gateway-hostnames get a route",
    )
    internal_gateway: str = setting(
        "envoy-internal", env="INTERNAL_GATEWAY", help="Gateway for services with the internal tag"
    )
    external_gateway: str = setting(
        "envoy-external", env="EXTERNAL_GATEWAY", help="Gateway for services with the external tag"
    )
    internal_tag: str = setting("internal", env="INTERNAL_TAG", help="tag routed internally")
    external_tag: str = setting("external", env="EXTERNAL_TAG", help="tag routed externally")
    gateway_namespace: str = setting(
        "", env="GATEWAY_NAMESPACE", help="namespace of the Gateways (default: TARGET_NAMESPACE)"
    )
    listener: str = setting(
        "https", env="GATEWAY_LISTENER", help="the Gateways' listener (sectionName)"
    )
    gateways: tuple[GatewayEntry, ...] = setting(
        (),
        help="[{tag, name, namespace, listener}]: replaces the internal/external pair "
        "(namespace and listener default to the keys above)",
    )
    output: str = setting(
        "", help="empty: write to the cluster; '-': print the routes as YAML instead"
    )
    kubeconfig: str = setting("", env="KUBECONFIG", help="kubeconfig path (as the kubernetes sink)")
    context: str = setting("", env="KUBE_CONTEXT", help="kubeconfig context (default: current)")
    instance: str = setting(
        DEFAULT_INSTANCE, env="INSTANCE_NAME", help="name of this deployment (owner id)"
    )
    owner_id: str = setting(
        "", env="OWNER_ID", help="owner id written on every route (default <namespace>/<instance>)"
    )
    concurrency: int = setting(4, help="parallel API writes")
    watch_timeout: Duration = setting(
        Duration(300), help="the server ends each watch after about this long; it restarts"
    )
    event_interval: Duration = setting(
        Duration(600), help="at most one Kubernetes Event per route and reason this often"
    )

    def __attrs_post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.output not in ("", "-"):
            raise ValueError("output must be '' (the cluster) or '-' (standard output)")
        for entry in self.gateways:
            if not entry.tag or not entry.name:
                raise ValueError("every gateways item needs a tag and a name")


class GatewayMetrics(PerRegistry):
    """The gateway sink's own metrics, registered once per registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.httproutes = Gauge(
            "consul_sync_httproutes_total",
            "HTTPRoutes consul-sync manages",
            ["sink"],
            registry=registry,
        )
        self.grpcroutes = Gauge(
            "consul_sync_grpcroutes_total",
            "GRPCRoutes consul-sync manages",
            ["sink"],
            registry=registry,
        )
        self.accepted = Gauge(
            "consul_sync_httproute_accepted",
            "1 when the gateway accepted the route (status Accepted and ResolvedRefs), else 0",
            ["route", "gateway"],
            registry=registry,
        )


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
        self.client: KubeClient | None = context.extras.get("gateway_client")
        self._own_client = self.client is None
        self._limiter = anyio.CapacityLimiter(config.concurrency)
        self.informers: dict[Resource, Informer] = {}
        #: None: not asked yet; False: the Gateway API is not served.
        self.available: bool | None = None
        self._view: dict[ServiceKey, Observed] = {}
        self._writing: set[ServiceKey] = set()
        self._told: set[str] = set()
        self.events = Events(self.namespace, config.event_interval, self.owner)
        self._pending_events: list[tuple[dict[str, Any], str, str]] = []
        self._status_seen: dict[tuple[str, str], str] = {}
        self._accepted_labels: dict[str, set[tuple[str, str]]] = {}
        self._conflicts_told: set[str] = set()
        self._watching = False
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
            return self._view
        client = await self._client()
        if fresh or self.available is None:
            await self._discover(client)
        if not self.available:
            self._view = self._satisfied_view()
            return self._view
        informers = self._informers(client)
        if fresh or not all(i.synced for i in informers.values()):
            try:
                await gather(partial(i.relist, self._limiter) for i in informers.values())
            except KubeError as exc:
                raise SinkError(f"cannot list {_what(exc)} in {self.namespace}: {exc}") from exc
        if not fresh and not self._closed:
            for informer in informers.values():
                informer.start()
            self._watching = True
        self._recompute(None)
        await self._flush_events()
        return self._view

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
        self._writing.add(change.key)
        try:
            if change.action is Action.DELETE:
                route = self._route_of_entry(change.key)
                await self._delete_routes([route] if route else self._routes_of(change.key))
            else:
                assert change.desired is not None
                await self._upsert(change.key, change.desired)
        except KubeError as exc:
            raise self._sink_error(exc, change) from exc
        finally:
            self._writing.discard(change.key)
            self._recompute({change.key})
        await self._flush_events()

    def render(self, services: Sequence[DesiredService]) -> list[dict[str, Any]]:
        objects: list[dict[str, Any]] = []
        for service in services:
            for route in self._wanted(service, rt.backend_name(service.name)):
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
            config = self.config
            self.client = await connect(
                kubeconfig=config.kubeconfig,
                context=config.context,
                pool_size=config.concurrency + 4,
                retries=URLLIB3_RETRIES,
            )
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
                    on_change=partial(self._changed, resource),
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

    # --- the view ---------------------------------------------------------

    def _satisfied_view(self) -> dict[ServiceKey, Observed]:
        """Nothing can be written: every desired service counts as done."""
        view = {}
        for key in self.context.desired_keys()[1]:
            service = self.context.desired_service(key)
            if service is not None:
                view[key] = Observed(key, True, service, service.sources)
        return view

    def _ours(self, obj: Mapping[str, Any]) -> bool:
        return self.ownership.ours(obj)

    def _all_routes(self) -> list[tuple[Resource, dict[str, Any]]]:
        return [
            (resource, obj)
            for resource in ROUTE_RESOURCES
            if resource in self.informers
            for obj in self.informers[resource].store.values()
        ]

    def _route_entry(self, resource: Resource, obj: Mapping[str, Any]) -> ServiceKey:
        """The view key of one route of ours no longer wanted."""
        return (self.namespace, f"{resource.plural}/{meta(obj)['name']}")

    def _route_of_entry(self, key: ServiceKey) -> tuple[Resource, dict[str, Any]] | None:
        """The route a :meth:`_route_entry` key stands for (``None``: not one)."""
        plural, _, name = key[1].partition("/")
        for resource in ROUTE_RESOURCES:
            if resource.plural == plural and resource in self.informers and name:
                obj = self.informers[resource].store.get(name)
                return (resource, obj) if obj is not None and self._ours(obj) else None
        return None

    def _stale(self, key: ServiceKey) -> list[tuple[Resource, dict[str, Any]]]:
        """Routes of ours for a desired service that does not want them."""
        service = self.context.desired_service(key)
        backend = self._backend(key) if service is not None else None
        if service is None or backend is None:
            return []
        names = {(r.plural, r.name) for r in self._wanted(service, backend)}
        return [(r, o) for r, o in self._routes_of(key) if (r.plural, meta(o)["name"]) not in names]

    def _routes_of(self, key: ServiceKey) -> list[tuple[Resource, dict[str, Any]]]:
        return [
            (resource, obj)
            for resource, obj in self._all_routes()
            if self._ours(obj) and rt.service_name_of(obj) == key[1]
        ]

    def _backend(self, key: ServiceKey) -> str | None:
        """The name of the Service of ``key`` the kubernetes sink made, if any."""
        informer = self.informers.get(Resource.SERVICES)
        if informer is None:
            return None
        for name, obj in informer.store.items():
            annotations = meta(obj).get("annotations") or {}
            if annotations.get(SERVICE_NAME_ANNOTATION, name) == key[1]:
                return name
        return None

    def _wanted(self, service: DesiredService, backend: str | None) -> tuple[rt.Route, ...]:
        if backend is None:
            return ()
        rendered = rt.render(
            service,
            self.gateways,
            backend=backend,
            domain_suffix=self.config.domain_suffix,
            owner=self.owner,
        )
        for problem in rendered.problems:
            if problem not in self._told:
                self._told.add(problem)
                log.warning("sink %s: %s", self.name, problem, extra={"sink": self.name})
        return rendered.routes

    def _entry(self, key: ServiceKey) -> Observed | None:
        entry = self._route_of_entry(key) if "/" in key[1] else None
        if entry is not None:
            if entry not in self._stale((self.namespace, rt.service_name_of(entry[1]))):
                return None  # wanted again, or its service went (deleted with it)
            sources = (meta(entry[1]).get("annotations") or {}).get(SOURCES_ANNOTATION)
            split = tuple(s for s in (sources or "").split(",") if s)
            return Observed(key, True, None, split, counted=False)
        if "/" in key[1]:
            return None  # a route entry whose route is gone
        service = self.context.desired_service(key)
        mine = self._routes_of(key)
        if service is None:
            if not mine:
                return None
            sources = (meta(mine[0][1]).get("annotations") or {}).get(SOURCES_ANNOTATION)
            known = tuple(s for s in (sources or "").split(",") if s) if sources else None
            return Observed(key, True, None, known)
        backend = self._backend(key)
        if backend is None:
            # No Service (yet): no route is made; routes that exist already
            # (the Go version's, at a migration) wait for it, not deleted.
            return Observed(key, True, service, service.sources)
        wanted = self._wanted(service, backend)
        names = {(r.plural, r.name) for r in wanted}
        # (a route it no longer wants is an entry of its own: the planner
        # deletes it, under the policy and the prune budget)
        live = {(r.plural, meta(o)["name"]): o for r, o in mine}
        live = {which: obj for which, obj in live.items() if which in names}
        for route in wanted:
            obj = self.informers[_resource(route)].store.get(route.name)
            if obj is not None and not self._ours(obj):
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

    def _recompute(self, keys: Collection[ServiceKey] | None, *, external: bool = False) -> None:
        if keys is None:
            keys = set(self._view) | set(self.context.desired_keys()[1])
            keys |= {(self.namespace, rt.service_name_of(o)) for _, o in self._all_routes()}
        keys = set(keys)
        for key in list(keys):  # with the entries of the routes it no longer wants
            keys |= {self._route_entry(r, o) for r, o in self._stale(key)}
            keys |= {k for k in self._view if "/" in k[1]}
        for key in keys:
            before = self._view.get(key)
            after = self._entry(key)
            if after is None:
                self._view.pop(key, None)
            else:
                self._view[key] = after
            if external and self._watching and after != before and key not in self._writing:
                self.context.mark_dirty([key])
            elif after is not None and before is None and "/" in key[1]:
                # a route its service no longer wants: the planner's to delete
                self.context.mark_dirty([key])
        counts = {resource: 0 for resource in ROUTE_RESOURCES}
        for resource, obj in self._all_routes():
            if self._ours(obj):
                counts[resource] += 1
        self.metrics.httproutes.labels(sink=self.name).set(counts[Resource.HTTPROUTES])
        self.metrics.grpcroutes.labels(sink=self.name).set(counts[Resource.GRPCROUTES])
        self._note_conflicts()

    def _changed(self, resource: Resource, names: set[str]) -> None:
        informer = self.informers[resource]
        keys: set[ServiceKey] = set()
        if resource is Resource.SERVICES:
            # A Service came or went: the routes of its service follow.
            keys = {k for k in self._view} | set(self.context.desired_keys()[1])
        else:
            for name in names:
                obj = informer.store.get(name)
                if obj is None:  # gone: whose it was is no longer known
                    self._forget_status(resource, name)
                    keys |= set(self._view)
                    continue
                keys.add((self.namespace, rt.service_name_of(obj)))
                if self._ours(obj):
                    self._read_status(resource, obj)
        self._recompute(keys, external=True)

    def _note_conflicts(self) -> None:
        for key, observed in self._view.items():
            if observed.owned:
                continue
            service = self.context.desired_service(key)
            if service is None:
                continue
            for route in self._wanted(service, self._backend(key)):
                obj = self.informers[_resource(route)].store.get(route.name)
                if obj is None or self._ours(obj) or uid(obj) in self._conflicts_told:
                    continue
                self._conflicts_told.add(uid(obj))
                message = (
                    f"{route.kind} {self.namespace}/{route.name} is wanted by consul-sync "
                    f"(owner {self.owner!r}) for service {key[1]!r} but was made by somebody "
                    "else; leaving it alone"
                )
                log.warning("sink %s: %s", self.name, message, extra={"sink": self.name})
                self._pending_events.append((obj, "NameConflict", message))

    # --- status -----------------------------------------------------------

    def _read_status(self, resource: Resource, obj: Mapping[str, Any]) -> None:
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
                self._status_seen.pop((name, gateway), None)
                continue
            why = "; ".join(
                f"{c.get('type')}=False ({c.get('reason', '?')}: {c.get('message', '')})"
                for c in refused
            )
            if self._status_seen.get((name, gateway)) == why:
                continue
            self._status_seen[(name, gateway)] = why
            message = f"Gateway {gateway} does not accept {obj.get('kind', 'route')} {name}: {why}"
            log.warning("sink %s: %s", self.name, message, extra={"sink": self.name})
            self._pending_events.append((dict(obj), "RouteNotAccepted", message))
            # A pass soon (observe) records the Event: hooks here cannot await.
            self.context.mark_dirty([(self.namespace, rt.service_name_of(obj))])
        for stale in self._accepted_labels.get(name, set()) - labels:
            self.metrics.accepted.remove(*stale)
        self._accepted_labels[name] = labels
        del resource

    def _forget_status(self, resource: Resource, name: str) -> None:
        for label in self._accepted_labels.pop(name, set()):
            self.metrics.accepted.remove(*label)
        del resource

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
        backend = self._backend(key)
        if backend is None:
            return  # no Service yet: its watch event brings this key back
        wanted = self._wanted(desired, backend)
        for route in wanted:
            obj = self.informers[_resource(route)].store.get(route.name)
            if obj is not None and not self._ours(obj):
                self._note_conflicts()
                raise SinkError(
                    f"{route.kind} {self.namespace}/{route.name} exists and is not "
                    f"consul-sync's (owner {self.owner!r}); left alone",
                    retryable=False,
                )
        writes = []
        for route in wanted:
            informer = self.informers[_resource(route)]
            live = informer.store.get(route.name)
            adopted = live is not None and self.ownership.classify(live) != MINE
            if rt.differs(route, live) or adopted:
                writes.append(route)
        for route in writes:
            resource = _resource(route)
            result = await self._call(
                partial(client.apply, resource, route.body, field_manager=FIELD_MANAGER, force=True)
            )
            self.informers[resource].put(result)
        names = {(r.plural, r.name) for r in wanted}
        # Routes it no longer wants are deleted by the planner, as entries of
        # their own (policy, prune budget): plan them now.
        stale = {
            self._route_entry(r, o)
            for r, o in self._routes_of(key)
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
            self._forget_status(resource, name)

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
        pending, self._pending_events = self._pending_events, []
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
        self._view[change.key] = Observed(change.key, True, change.desired, change.desired.sources)


def _resource(route: rt.Route) -> Resource:
    return Resource.GRPCROUTES if route.kind == "GRPCRoute" else Resource.HTTPROUTES


def _what(error: KubeError) -> str:
    return error.resource.qualified if error.resource else "objects"
