"""The ``kubernetes`` sink: headless Services and EndpointSlices, live.

How it works (docs/kubernetes-sink.md has the long version):

* **Observe**: two informers (list + watch, see :mod:`.informer`) keep the
  target namespace's Services and consul-sync's EndpointSlices (label
  ``endpointslice.kubernetes.io/managed-by=consul-sync``) in memory.
  Services are watched without a selector: the only way to know, without a
  GET per create, that a Service of a desired name already exists and is
  somebody else's.  From those objects the sink keeps a view,
  ``key -> Observed``, updated per event; ``observe()`` returns it (and
  lists afresh when asked for a fresh view).  An object changed or deleted
  behind our back marks its key dirty, so the runtime repairs it.
* **Apply**: render the service (:mod:`.render`), with endpoints kept in
  the slices that hold them now, and send only the objects that differ
  from what the view holds (server-side apply, field manager
  ``consul-sync``); delete slices that became empty.  A no-change pass
  sends nothing; one instance change rewrites one slice.
* **Ownership**: only objects with our managed-by label *and* our owner id
  are ours.  Objects with the label but no owner id come from the Go
  consul-sync: the default owner adopts them.  Anything else is never
  written: a foreign Service of a desired name is reported (log, metric,
  Event) and left alone.
* **Leader election** (optional, :mod:`.leader`): only the leader writes;
  ``active`` tells the runtime to plan nothing for a standby replica, whose
  view stays warm.
"""

from __future__ import annotations

import logging
import re
import socket
import time
import uuid
import weakref
from collections.abc import (
    Callable,
    Collection,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from functools import partial
from typing import Any, ClassVar, TypeVar

import anyio
import anyio.to_thread
import attrs
from prometheus_client import CollectorRegistry, Counter, Gauge

from consul_sync import Context, DesiredService, Duration, Observed, SinkError, setting
from consul_sync.model import Action, Change, ServiceKey, StatusNote

from . import render as r
from .client import KubeClient, KubeError, Outage, Resource, unavailable
from .informer import Informer
from .leader import LeaderElector, micro_time

log = logging.getLogger("consul_sync.kubernetes")

FIELD_MANAGER = "consul-sync"
DEFAULT_INSTANCE = "consul-sync"
SLICE_SELECTOR = f"{r.SLICE_MANAGED_BY}={r.MANAGER}"
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_T = TypeVar("_T")


def default_owner(namespace: str, instance: str) -> str:
    return f"{namespace}/{instance}"


@attrs.frozen
class KubernetesConfig:
    kubeconfig: str = setting(
        "",
        env="KUBECONFIG",
        help="kubeconfig path; empty: the in-cluster service account when in a pod, "
        "else ~/.kube/config",
    )
    context: str = setting("", env="KUBE_CONTEXT", help="kubeconfig context (default: current)")
    instance: str = setting(
        DEFAULT_INSTANCE,
        env="INSTANCE_NAME",
        help="name of this consul-sync deployment: the default owner id is "
        "<namespace>/<instance>, and the leader-election Lease is named after it",
    )
    owner_id: str = setting(
        "",
        env="OWNER_ID",
        help="owner id written on every object (default <namespace>/<instance>); two "
        "deployments writing to one namespace need different ones",
    )
    max_endpoints_per_slice: int = setting(
        r.DEFAULT_MAX_PER_SLICE,
        env="MAX_ENDPOINTS_PER_SLICE",
        help="endpoints per EndpointSlice (1-1000)",
    )
    concurrency: int = setting(
        16, env="KUBE_CONCURRENCY", help="parallel API writes (see docs/kubernetes-sink.md)"
    )
    leader_elect: bool | None = setting(
        None,
        env="LEADER_ELECT",
        help="elect a leader among replicas on a Lease (default: on when running in a cluster)",
    )
    lease_duration: Duration = setting(
        Duration(15), env="LEADER_ELECT_LEASE_DURATION", help="how long a leader's Lease is valid"
    )
    renew_deadline: Duration = setting(
        Duration(10),
        env="LEADER_ELECT_RENEW_DEADLINE",
        help="a leader that cannot renew this long stops",
    )
    retry_period: Duration = setting(
        Duration(2), env="LEADER_ELECT_RETRY_PERIOD", help="how often replicas try the Lease"
    )
    identity: str = setting(
        "", env="POD_NAME", help="leader-election identity (default: host name and a random id)"
    )
    watch_timeout: Duration = setting(
        Duration(300), help="the server ends each watch after about this long; it restarts"
    )
    event_interval: Duration = setting(
        Duration(600), help="at most one Kubernetes Event per object and reason this often"
    )

    def __attrs_post_init__(self) -> None:
        if not 1 <= self.max_endpoints_per_slice <= r.API_MAX_PER_SLICE:
            raise ValueError("max_endpoints_per_slice must be 1-1000")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if len(self.instance) > 63 or not _DNS1123_LABEL.fullmatch(self.instance):
            raise ValueError("instance must be a lowercase DNS label (it names the Lease)")
        if not self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError("need retry_period < renew_deadline < lease_duration")


class SinkMetrics:
    """The sink's own metrics, registered once per registry."""

    _by_registry: ClassVar[weakref.WeakKeyDictionary[CollectorRegistry, SinkMetrics]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "consul_sync_kubernetes_requests",
            "Kubernetes API requests made by a sink (code 0: no answer)",
            ["sink", "verb", "resource", "code"],
            registry=registry,
        )
        self.leader = Gauge(
            "consul_sync_kubernetes_leader",
            "1 while this replica leads (or leader election is off)",
            ["sink"],
            registry=registry,
        )
        self.renamed = Gauge(
            "consul_sync_kubernetes_renamed_services",
            "Services whose name had to be changed into a valid Kubernetes name",
            ["sink"],
            registry=registry,
        )
        self.collisions = Gauge(
            "consul_sync_kubernetes_name_collisions",
            "Groups of services whose names became equal when sanitised (hash-suffixed)",
            ["sink"],
            registry=registry,
        )
        self.skipped = Counter(
            "consul_sync_kubernetes_skipped",
            "Endpoints or services left out because Kubernetes would refuse them",
            ["sink", "what"],
            registry=registry,
        )
        self.events = Counter(
            "consul_sync_kubernetes_events",
            "Kubernetes Events consul-sync recorded",
            ["sink", "reason"],
            registry=registry,
        )

    @classmethod
    def of(cls, registry: CollectorRegistry) -> SinkMetrics:
        metrics = cls._by_registry.get(registry)
        if metrics is None:
            metrics = cls._by_registry[registry] = cls(registry)
        return metrics


#: Where a Service stands for us.
MINE, LEGACY, FOREIGN = "mine", "legacy", "foreign"


class _Reserved(Collection[str]):
    """Slice names a new slice of ``service`` must not take: held by
    another Service's slices, or found to be somebody else's."""

    def __init__(self, store: Mapping[str, Mapping[str, Any]], service: str, foreign: set[str]):
        self.store, self.service, self.foreign = store, service, foreign

    def __contains__(self, name: object) -> bool:
        if name in self.foreign:
            return True
        obj = self.store.get(name) if isinstance(name, str) else None
        return obj is not None and _service_of(obj) != self.service

    def __iter__(self) -> Iterator[str]:
        return iter(n for n in [*self.store, *self.foreign] if n in self)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _uid(obj: Mapping[str, Any]) -> str:
    return str(_meta(obj).get("uid", ""))


def _service_of(slice_obj: Mapping[str, Any]) -> str:
    return str((_meta(slice_obj).get("labels") or {}).get(r.SERVICE_NAME_LABEL, ""))


_FORBIDDEN = re.compile(
    r'cannot (\S+) resource "([^"]+)" in API group "([^"]*)"(?: in the namespace "([^"]*)")?'
)


async def gather(calls: Iterable[Callable[[], Coroutine[Any, Any, None]]]) -> None:
    """Run ``calls`` concurrently; the first :class:`KubeError` or
    :class:`SinkError` among their failures is raised as itself (not in an
    exception group), once all of them have ended: a write that fails does
    not cancel its siblings, whose answers are stored (a create cancelled
    after the API server made the object would be posted again by the
    retry, and answered 409)."""
    calls = list(calls)
    if len(calls) <= 1:
        for call in calls:
            await call()
        return
    failed: list[KubeError | SinkError] = []

    async def run(call: Callable[[], Coroutine[Any, Any, None]]) -> None:
        try:
            await call()
        except (KubeError, SinkError) as exc:
            failed.append(exc)

    try:
        async with anyio.create_task_group() as tg:
            for call in calls:
                tg.start_soon(run, call)
    except BaseExceptionGroup as group:
        found = _first(group)
        if found is not None:
            raise found from None
        raise
    if failed:
        raise failed[0]


def _first(group: BaseExceptionGroup[BaseException]) -> KubeError | SinkError | None:
    for exc in group.exceptions:
        if isinstance(exc, KubeError | SinkError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first(exc)
            if found is not None:
                return found
    return None


def rbac_hint(error: KubeError) -> str:
    """The RBAC rule a 403 says is missing, as a Role rule."""
    match = _FORBIDDEN.search(error.message)
    if match:
        verb, resource, group, namespace = match.groups()
    else:
        verb = error.verb
        resource = error.resource.plural if error.resource else "?"
        group = error.resource.group if error.resource else ""
        namespace = error.namespace
    return (
        f"missing RBAC permission: verb {verb!r} on {resource!r} (API group "
        f"{group or 'core'!r}) in namespace {namespace or '(cluster)'!r}; add "
        f'{{apiGroups: ["{group}"], resources: ["{resource}"], verbs: ["{verb}"]}} to the '
        "consul-sync Role (deploy/base/rbac.yaml)"
    )


class KubernetesSink:
    type_name: ClassVar[str] = "kubernetes"
    Config: ClassVar[type[KubernetesConfig]] = KubernetesConfig

    def __init__(self, name: str, config: KubernetesConfig, context: Context) -> None:
        self.name = name
        self.config = config
        self.context = context
        self.namespace = context.namespace
        self.owner = config.owner_id or default_owner(self.namespace, config.instance)
        #: The default owner adopts objects of the Go consul-sync (no owner id).
        self.adopt = self.owner == default_owner(self.namespace, DEFAULT_INSTANCE)
        self.concurrency = config.concurrency
        # The runtime sets context.desired_keys after making its sinks: look it up late.
        self.names = r.NameBook(lambda: context.desired_keys(), self._held)  # noqa: PLW0108
        self.metrics = SinkMetrics.of(context.metrics.registry)
        #: an API outage is logged once, then summed up when the API is back
        self.outage = Outage(name, log)
        self.client: KubeClient | None = context.extras.get("kubernetes_client")
        self._own_client = self.client is None
        if self.client is not None:
            self.client.listeners.append(self._count_request)
        self._limiter = anyio.CapacityLimiter(config.concurrency)
        self.services: Informer | None = None
        self.slices: Informer | None = None
        self.elector: LeaderElector | None = None
        self._leading = False
        self._closed = False
        self._view: dict[ServiceKey, Observed] = {}
        self._key_of: dict[str, ServiceKey] = {}
        self._names_of: dict[ServiceKey, set[str]] = {}
        #: key -> names of our Services that stand for it (their annotation)
        self._standing: dict[ServiceKey, set[str]] = {}
        self._stands_for: dict[str, ServiceKey] = {}
        self._slices_of: dict[str, set[str]] = {}
        self._slice_service: dict[str, str] = {}
        #: key -> (desired service last applied, what it reads back as)
        self._accepted: dict[ServiceKey, tuple[DesiredService, DesiredService]] = {}
        #: key -> the resourceVersions of its Service and slices right after
        #: our write: while they stand, the view is what we wrote (no parse,
        #: no re-render per watch event of our own writes)
        self._written: dict[ServiceKey, tuple[str, tuple[tuple[str, str], ...]]] = {}
        #: keys being written now: their watch events are ours, not repairs
        self._writing: set[ServiceKey] = set()
        #: keys changed behind our back while being written (e.g. the garbage
        #: collector deleting the slices of a Service we re-create): our
        #: write was planned without that change, so they are planned again.
        self._changed_while_writing: set[ServiceKey] = set()
        self._foreign_slices: set[str] = set()
        self._events_sent: dict[tuple[str, str], float] = {}
        self._conflicts_told: set[str] = set()
        self._names_version: int | None = None
        #: key -> instances its last write left out, and why (status page)
        self._left_out: dict[ServiceKey, tuple[str, ...]] = {}
        self._watching = False
        self.identity = config.identity or f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"
        self.leader_elect = (
            KubeClient.in_cluster() if config.leader_elect is None else config.leader_elect
        )
        self.metrics.leader.labels(sink=name).set(0)

    # --- the protocol ----------------------------------------------------

    @property
    def active(self) -> bool:
        """False on a standby replica: the runtime plans nothing for it."""
        return not self.leader_elect or self._leading

    async def open(self) -> None:
        await self._client()

    async def observe(self, *, fresh: bool = False) -> Mapping[ServiceKey, Observed]:
        client = await self._client()
        services, slices = self._informers(client)
        if fresh or not (services.synced and slices.synced):
            try:
                await gather(
                    [partial(services.relist, self._limiter), partial(slices.relist, self._limiter)]
                )
            except KubeError as exc:
                self._count_error(exc)
                what = exc.resource.qualified if exc.resource else "objects"
                detail = rbac_hint(exc) if exc.status == 403 else str(exc)
                raise SinkError(f"cannot list {what} in {self.namespace}: {detail}") from exc
        if not fresh:
            await self._start_background()
        self._refresh_names()
        await self._tell_conflicts()
        return self._view

    async def apply(self, change: Change) -> None:
        if not self.active:
            raise SinkError(
                f"standby replica (leader: {self.elector.holder if self.elector else '?'}); "
                "the leader writes",
                retryable=True,
            )
        if change.key[0] != self.namespace:
            raise SinkError(
                f"service {change.key[0]}/{change.key[1]} is in namespace {change.key[0]!r}; "
                f"this sink writes to {self.namespace!r} only",
                retryable=False,
            )
        await self._client()
        self._refresh_names()
        self._writing.add(change.key)
        try:
            if change.action is Action.DELETE:
                await self._delete(change.key)
            else:
                assert change.desired is not None
                try:
                    await self._upsert(change.key, change.desired)
                except KubeError as exc:
                    if exc.status != 409:
                        raise
                    # Somebody changed an object since we saw it: read it
                    # again and retry once with what is there now.
                    await self._reread(exc)
                    await self._upsert(change.key, change.desired)
        except KubeError as exc:
            self._accepted.pop(change.key, None)
            self._written.pop(change.key, None)
            raise await self._sink_error(exc, change) from exc
        finally:
            self._writing.discard(change.key)
            self._reindex(
                self._names_of.get(change.key, set()) | {self.names.name(change.key)},
                also=(change.key,),
            )
            if change.key in self._changed_while_writing:
                self._changed_while_writing.discard(change.key)
                self.context.mark_dirty([change.key])

    def render(self, services: Sequence[DesiredService]) -> list[dict[str, Any]]:
        objects, problems = r.render_named(
            services,
            self.names,
            owner=self.owner,
            max_per_slice=self.config.max_endpoints_per_slice,
        )
        for problem in problems:
            log.warning(problem, extra={"sink": self.name})
        return objects

    def status_notes(self, keys: Iterable[ServiceKey]) -> dict[ServiceKey, StatusNote]:
        """For the status page: Kubernetes names that differ from the key's,
        and why; instances left out of the slices, and why."""
        return r.name_notes(self.names, keys, {k: v for k, v in self._left_out.items() if v})

    async def aclose(self) -> None:
        self._closed = True
        for informer in (self.services, self.slices):
            if informer is not None:
                informer.stop()
        if self.elector is not None:
            await self.elector.stop(release=True)
            self._set_leading(False)
        for informer in (self.services, self.slices):
            if informer is not None:
                await informer.join()
        if self._own_client and self.client is not None:
            self.client.close()

    # --- start-up ---------------------------------------------------------

    async def _client(self) -> KubeClient:
        if self.client is None:
            config = self.config
            try:
                self.client = await anyio.to_thread.run_sync(
                    partial(
                        KubeClient.from_environment,
                        kubeconfig=config.kubeconfig,
                        context=config.context,
                        pool_size=config.concurrency + 4,
                    )
                )
            except Exception as exc:
                raise SinkError(f"cannot configure the Kubernetes client: {exc}") from exc
            self.client.listeners.append(self._count_request)
            log.info(
                "sink %s: Kubernetes API via %s; writing to namespace %s as owner %r",
                self.name,
                self.client.description,
                self.namespace,
                self.owner,
                extra={"sink": self.name},
            )
        return self.client

    def _informers(self, client: KubeClient) -> tuple[Informer, Informer]:
        if self.services is None or self.slices is None:
            common: dict[str, Any] = {
                "on_error": self._watch_error,
                "timeout_seconds": self.config.watch_timeout,
            }
            self.services = Informer(
                client,
                Resource.SERVICES,
                self.namespace,
                label_selector=None,
                on_change=self._services_changed,
                **common,
            )
            self.slices = Informer(
                client,
                Resource.ENDPOINTSLICES,
                self.namespace,
                label_selector=SLICE_SELECTOR,
                on_change=self._slices_changed,
                **common,
            )
        return self.services, self.slices

    async def _start_background(self) -> None:
        if self._closed:
            return
        assert self.services is not None and self.slices is not None and self.client is not None
        self.services.start()
        self.slices.start()
        self._watching = True
        if self.elector is None and self.leader_elect:
            self.elector = LeaderElector(
                self.client,
                self.namespace,
                self.config.instance,
                self.identity,
                lease_duration=self.config.lease_duration,
                renew_deadline=self.config.renew_deadline,
                retry_period=self.config.retry_period,
                on_change=self._set_leading,
                on_error=self._watch_error,
            )
            log.info(
                "sink %s: leader election on Lease %s/%s as %s",
                self.name,
                self.namespace,
                self.config.instance,
                self.identity,
                extra={"sink": self.name},
            )
            await self.elector.start()
            if not self._leading:
                log.info(
                    "sink %s: standing by; %s leads",
                    self.name,
                    self.elector.holder,
                    extra={"sink": self.name},
                )
        elif self.elector is None:
            self.metrics.leader.labels(sink=self.name).set(1)

    def _set_leading(self, leading: bool) -> None:
        if leading == self._leading:
            return
        self._leading = leading
        self.metrics.leader.labels(sink=self.name).set(1 if leading else 0)
        if leading:
            log.info("sink %s: leading; writing from now on", self.name, extra={"sink": self.name})
            # Re-plan everything: what the previous leader left may differ.
            self.context.mark_dirty(set(self._view) | set(self.context.desired_keys()[1]))
        elif not self._closed:
            log.warning(
                "sink %s: not the leader any more (leader: %s); standing by",
                self.name,
                self.elector.holder if self.elector else "?",
                extra={"sink": self.name},
            )

    def _watch_error(self, error: KubeError) -> None:
        if self._count_error(error):
            return  # part of an outage: told once by self.outage
        resource = error.resource.plural if error.resource else "?"
        detail = rbac_hint(error) if error.status == 403 else str(error)
        log.warning(
            "sink %s: %s %s: %s", self.name, error.verb, resource, detail, extra={"sink": self.name}
        )

    # --- the view ---------------------------------------------------------

    def _classify(self, obj: Mapping[str, Any]) -> str:
        if not r.is_managed(obj):
            return FOREIGN
        owner = r.owner_of(obj)
        if owner == self.owner:
            return MINE
        return LEGACY if owner is None else FOREIGN

    def _ours(self, obj: Mapping[str, Any]) -> bool:
        kind = self._classify(obj)
        return kind == MINE or (kind == LEGACY and self.adopt)

    def _refresh_names(self) -> None:
        old = dict(self.names.naming.names)
        for news in self.names.refresh():
            log.warning("sink %s: naming: %s", self.name, news, extra={"sink": self.name})
        if self.names.version == self._names_version:
            return
        self._names_version = self.names.version
        naming = self.names.naming
        self.metrics.renamed.labels(sink=self.name).set(len(naming.renamed))
        self.metrics.collisions.labels(sink=self.name).set(len(naming.collisions))
        new = naming.names
        affected: set[str] = set()
        for key in old.keys() | new.keys():
            if old.get(key) == new.get(key):
                continue
            # its names, and the objects standing or filed under it
            affected.update(n for n in (old.get(key), new.get(key)) if n is not None)
            affected.update(self._standing.get(key, ()))
            affected.update(self._names_of.get(key, ()))
        self._reindex(affected)
        # A desired key whose name changed (the valid name won it) is to be
        # written under its new name, though nothing about it changed.
        self.context.mark_dirty([k for k in new if k in old and old[k] != new[k]])

    def _held(self) -> dict[ServiceKey, ServiceKey]:
        """(namespace, name) -> the key it stands for, of every Service of ours
        (what naming keeps sticky, :func:`.render.assign_names`)."""
        store = self.services.store if self.services is not None else {}
        return {
            (self.namespace, name): r.service_key(obj)
            for name, obj in store.items()
            if self._ours(obj)
        }

    def _pseudo_key(self, k8s_name: str) -> ServiceKey:
        """The view key of a Service of ours under a name its key does not
        map to any more: ``(namespace, <its name>)``, or, when that is a
        desired key (a valid name claimed it), ``<its name>~old``."""
        key = (self.namespace, k8s_name)
        while self.names.desired(key):
            key = (self.namespace, key[1] + "~old")
        return key

    def _view_key(self, k8s_name: str, obj: Mapping[str, Any]) -> ServiceKey | None:
        """Which view entry a Service belongs to (``None``: none, somebody
        else's and in nobody's way).

        * The desired key whose name it is: the object belongs to the name,
          so a key that lands on the name of an object of ours takes it
          over in place (same object, same uid) - a rename or change of
          case in Consul, or a valid name taking its name back from a
          sanitised twin (which gets a new, suffixed object) - never a
          delete and a create.
        * A pseudo key (:meth:`_pseudo_key`) if no desired key maps to its
          name but it stands for a desired key (whose name is now another):
          the planner deletes it like anything else not desired, under the
          policy, the prune guard and the incomplete-source rule.
        * Else the key it stands for (not desired: to be deleted).
        """
        mapped = self.names.key_of(self.namespace, k8s_name)
        if self._ours(obj):
            stands_for = r.service_key(obj)
            if mapped is not None:
                return mapped
            if self.names.desired(stands_for):
                return self._pseudo_key(k8s_name)
            return stands_for
        if mapped is None and self._classify(obj) == FOREIGN:
            return None  # somebody else's, and in nobody's way
        return mapped or (self.namespace, k8s_name)

    def _services_changed(self, names: set[str]) -> None:
        assert self.services is not None
        deleted = any(name not in self.services.store for name in names)
        self._reindex(names, external=True, deleted=deleted)

    def _slices_changed(self, names: set[str]) -> None:
        assert self.slices is not None
        deleted = any(name not in self.slices.store for name in names)
        self._reindex(self._index_slices(names), external=True, deleted=deleted)

    def _index_slices(self, names: Iterable[str]) -> set[str]:
        """Update which slices belong to which Service; returns the Services."""
        assert self.slices is not None
        services = set()
        for name in names:
            old = self._slice_service.pop(name, None)
            if old is not None:
                self._slices_of[old].discard(name)
                services.add(old)
            obj = self.slices.store.get(name)
            if obj is not None:
                owner = _service_of(obj)
                self._slice_service[name] = owner
                self._slices_of.setdefault(owner, set()).add(name)
                services.add(owner)
        return services

    def _reindex(
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
        store = self.services.store if self.services is not None else {}
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
            if self._ours(obj):
                self._stands_for[name] = r.service_key(obj)
                self._standing.setdefault(self._stands_for[name], set()).add(name)
            key = self._view_key(name, obj)
            if key is None:
                continue
            self._key_of[name] = key
            self._names_of.setdefault(key, set()).add(name)
            keys.add(key)
        for key in keys:
            if external and key in self._writing:
                # Our own write's watch event, most likely: apply() computes
                # the key's view when its writes are done (not once per event
                # meanwhile, half-written).  A deletion is not ours (an
                # update's writes never delete): plan the key again after.
                if deleted:
                    self._changed_while_writing.add(key)
                continue
            before = self._view.get(key)
            after = self._observed(key)
            if after is None:
                self._view.pop(key, None)
            else:
                self._view[key] = after
            if external and self._watching and after != before:
                accepted = self._accepted.get(key)
                if after is None or accepted is None or after.service != accepted[0]:
                    self.context.mark_dirty([key])
            elif before is None and after is not None and self._is_old_name(key):
                # An old name to delete appeared (naming changed): plan it.
                self.context.mark_dirty([key])

    def _is_old_name(self, key: ServiceKey) -> bool:
        """A pseudo key: Services of ours filed under it stand for another key."""
        if self.names.desired(key) or self.services is None:
            return False
        store = self.services.store
        return any(
            name in store and self._ours(store[name]) and r.service_key(store[name]) != key
            for name in self._names_of.get(key, ())
        )

    def _observed(self, key: ServiceKey) -> Observed | None:
        names = self._names_of.get(key)
        if not names:
            self._names_of.pop(key, None)
            return None
        assert self.services is not None
        store = self.services.store
        objects = {name: store[name] for name in names if name in store}
        ours = {name for name, obj in objects.items() if self._ours(obj)}
        expected = self.names.naming.names.get(key)
        if expected is None:
            # Not desired (gone from the sources, or an old name): to be deleted.
            if not ours:
                return Observed(key, owned=False)
            held = objects[min(ours)]
            if self._classify(held) != MINE:
                return Observed(key, True, None, None)
            parsed = r.parse(held, self._slices_for(min(ours))[0])
            return Observed(key, True, parsed if parsed.key == key else None, parsed.sources)
        if expected not in objects:
            return None
        live = objects[expected]
        if expected not in ours:
            return Observed(key, owned=False)
        if self._classify(live) != MINE:
            return Observed(key, True, None, None)  # the Go version's: adopted, rewritten
        if r.service_key(live) != key:
            # It stands for a key no longer desired: to be taken over in place.
            return Observed(key, True, None, r.parse(live, []).sources)
        mine, others = self._slices_for(expected)
        accepted = self._accepted.get(key)
        if (
            not others
            and accepted is not None
            and self._written.get(key) == self._fingerprint(live, (mine, others))
        ):
            # exactly the objects our last write of this key answered
            return Observed(key, True, accepted[0], accepted[1].sources)
        parsed = r.parse(live, mine)
        canonical = not others and self._matches(parsed, expected, live, mine)
        service: DesiredService | None = parsed if canonical else None
        if canonical and accepted is not None and accepted[1] == parsed:
            service = accepted[0]
        return Observed(key, True, service, parsed.sources)

    @staticmethod
    def _fingerprint(
        live: Mapping[str, Any],
        slices: tuple[Sequence[Mapping[str, Any]], Sequence[Mapping[str, Any]]],
    ) -> tuple[str, tuple[tuple[str, str], ...]]:
        mine, others = slices
        return str(_meta(live).get("resourceVersion", "")), tuple(
            (_meta(obj)["name"], str(_meta(obj).get("resourceVersion", "")))
            for obj in (*mine, *others)
        )

    def _slices_for(self, k8s_name: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Our slices of a Service, and adopted Go-version ones (to delete)."""
        assert self.slices is not None
        mine, others = [], []
        for name in sorted(self._slices_of.get(k8s_name, ())):
            obj = self.slices.store.get(name)
            if obj is None:
                continue
            kind = self._classify(obj)
            if kind == MINE:
                mine.append(obj)
            elif kind == LEGACY and self.adopt:
                others.append(obj)
        return mine, others

    def _render(
        self,
        service: DesiredService,
        k8s_name: str,
        mine: Sequence[Mapping[str, Any]],
        uid: str | None,
        live: Mapping[str, Any] | None,
    ) -> r.Rendered:
        """``service``'s objects, endpoints kept in the slices of ``mine``
        that hold them (``live``: the Service now, whose sources say where
        unannotated slices came from)."""
        assert self.slices is not None
        primary = service.ports[0] if service.ports else None
        default = r.default_source(r.parse(live, []).sources) if live is not None else None
        return r.render(
            service,
            k8s_name=k8s_name,
            owner=self.owner,
            max_per_slice=self.config.max_endpoints_per_slice,
            existing=r.packing(mine, primary, default),
            reserved=_Reserved(self.slices.store, k8s_name, self._foreign_slices),
            service_uid=uid,
        )

    def _matches(
        self,
        parsed: DesiredService,
        k8s_name: str,
        live: Mapping[str, Any],
        mine: Sequence[Mapping[str, Any]],
    ) -> bool:
        """Whether applying ``parsed`` would write nothing (our objects are
        in the shape we write them)."""
        if r.validate(parsed):
            return False
        rendered = self._render(parsed, k8s_name, mine, _uid(live), live)
        if r.differs(rendered.service, live):
            return False
        by_name = {_meta(obj)["name"]: obj for obj in mine}
        if set(by_name) != {s["metadata"]["name"] for s in rendered.slices}:
            return False
        return not any(r.differs(s, by_name[s["metadata"]["name"]]) for s in rendered.slices)

    async def _tell_conflicts(self) -> None:
        """Report each foreign object in a desired service's way once (the
        leader does; a standby replica would only repeat it)."""
        assert self.services is not None
        if not self.active:
            return
        desired = self.names.naming.names
        for key, observed in list(self._view.items()):
            if observed.owned or key not in desired:
                continue
            name = desired[key]
            obj = self.services.store.get(name)
            if obj is None or _uid(obj) in self._conflicts_told:
                continue
            self._conflicts_told.add(_uid(obj))
            owner = r.owner_of(obj)
            whose = (
                f"consul-sync owner {owner!r}"
                if r.is_managed(obj) and owner
                else "the Go consul-sync (this owner does not adopt)"
                if r.is_managed(obj)
                else "somebody else (no consul-sync managed-by label)"
            )
            message = (
                f"Service {self.namespace}/{name} is wanted by consul-sync (owner {self.owner!r}) "
                f"for service {key[1]!r} but was made by {whose}; leaving it alone"
            )
            log.warning("sink %s: %s", self.name, message, extra={"sink": self.name})
            await self._event(obj, "NameConflict", message)

    # --- writing ---------------------------------------------------------

    async def _call(self, func: Callable[[], _T], *, expected: Collection[int] = ()) -> _T:
        """Run one blocking API call in a worker thread, behind the limiter;
        failures other than the ``expected`` statuses count as errors."""
        try:
            # abandon_on_cancel: a stop must not wait for an API that does
            # not answer (the shutdown deadline abandons writes anyway).
            result = await anyio.to_thread.run_sync(
                func, limiter=self._limiter, abandon_on_cancel=True
            )
        except KubeError as exc:
            if exc.status not in expected:
                self._count_error(exc)
            raise
        return result

    def _count_error(self, error: KubeError) -> bool:
        """Count a failed request; whether it is part of an API outage."""
        self.context.metrics.kubernetes_errors.inc()
        return self.outage.failed(error)

    def _count_request(self, verb: str, resource: Resource, status: int) -> None:
        self.metrics.requests.labels(self.name, verb, resource.plural, str(status)).inc()
        self.outage.answered(verb, resource, status)

    async def _apply_object(
        self, resource: Resource, body: dict[str, Any], *, force: bool, create: bool = False
    ) -> None:
        """Write ``body``.  With ``create`` (the watch shows no such object) a
        POST of the whole object: a POST never merges, so a name somebody
        took since the last watch event answers 409 AlreadyExists and
        ``apply`` reads the object and classifies it.  Otherwise a
        server-side apply, after handing over to it what the POST that made
        the object still owns and the apply drops (:func:`.render.hand_over`)."""
        assert self.client is not None
        client = self.client
        informer = self.services if resource is Resource.SERVICES else self.slices
        assert informer is not None
        if create:
            result = await self._call(
                lambda: client.create(resource, body, field_manager=FIELD_MANAGER),
                expected=(409,),
            )
        else:
            meta = body["metadata"]
            live = informer.store.get(meta["name"])
            residue = r.creation_residue(live, body, FIELD_MANAGER)
            if live is not None and residue:
                patch = {
                    "metadata": {
                        "resourceVersion": _meta(live).get("resourceVersion"),
                        "managedFields": r.hand_over(live, residue, FIELD_MANAGER),
                    }
                }
                informer.put(
                    await self._call(
                        lambda: client.merge_patch(resource, meta["namespace"], meta["name"], patch)
                    )
                )
            result = await self._call(
                lambda: client.apply(resource, body, field_manager=FIELD_MANAGER, force=force)
            )
        informer.put(result)
        if resource is Resource.ENDPOINTSLICES:
            self._index_slices({result["metadata"]["name"]})

    async def _create_with_slice(self, service: dict[str, Any], slice_obj: dict[str, Any]) -> None:
        """POST a new Service and then, in the same worker thread, its first
        slice, owned by the uid the Service's answer names: one hand-off to
        a worker thread and back instead of two, and the thread's next write
        follows the first one's answer at once, as a plain client's would.
        Each POST is what :meth:`_apply_object` sends with ``create``; a
        failure is raised (after storing the Service if it was made), as
        :meth:`_apply_object`'s would be."""
        assert self.client is not None and self.services is not None and self.slices is not None
        client, k8s_name = self.client, service["metadata"]["name"]

        def run() -> tuple[list[dict[str, Any]], KubeError | None]:
            made: list[dict[str, Any]] = []
            try:
                made.append(client.create(Resource.SERVICES, service, field_manager=FIELD_MANAGER))
                uid = _uid(made[0])
                slice_obj["metadata"]["ownerReferences"] = [r.owner_reference(k8s_name, uid)]
                made.append(
                    client.create(Resource.ENDPOINTSLICES, slice_obj, field_manager=FIELD_MANAGER)
                )
            except KubeError as exc:
                return made, exc
            return made, None

        made, error = await self._call(run)
        if made:
            self.services.put(made[0])
        if len(made) > 1:
            self.slices.put(made[1])
            self._index_slices({made[1]["metadata"]["name"]})
        if error is not None:
            if error.status != 409:
                self._count_error(error)
            raise error

    async def _delete_object(self, resource: Resource, obj: Mapping[str, Any]) -> None:
        assert self.client is not None
        client, name, uid = self.client, _meta(obj)["name"], _uid(obj)
        try:
            await self._call(
                lambda: client.delete(resource, self.namespace, name, uid=uid or None),
                expected=(404,),
            )
        except KubeError as exc:
            if exc.status != 404:
                raise
        informer = self.services if resource is Resource.SERVICES else self.slices
        assert informer is not None
        informer.forget(name, uid or None)
        if resource is Resource.ENDPOINTSLICES:
            self._index_slices({name})

    async def _upsert(self, key: ServiceKey, desired: DesiredService) -> None:
        assert self.services is not None and self.slices is not None
        k8s_name = self.names.name(key)
        live = self.services.store.get(k8s_name)
        if live is not None and not self._ours(live):
            self._view[key] = Observed(key, owned=False)
            await self._tell_conflicts()
            # (found while writing, e.g. made since the last watch event: plan
            # the key again so that it shows as the conflict it is)
            self.context.mark_dirty([key])
            raise SinkError(
                f"Service {self.namespace}/{k8s_name} exists and is not consul-sync's "
                f"(owner {self.owner!r}); left alone",
                retryable=False,
            )
        # A Service of ours standing for another key (a rename or change of
        # case in Consul, or a sanitised twin whose name a valid one takes
        # back) is taken over in place below: the same Service, uid kept;
        # its annotations say what it is now.
        problems = r.validate(desired)
        if problems:
            self.metrics.skipped.labels(sink=self.name, what="service").inc()
            raise SinkError(
                f"service {key[0]}/{key[1]} skipped: Kubernetes would refuse it: "
                + "; ".join(problems),
                retryable=False,
            )
        mine, legacy = self._slices_for(k8s_name)
        rendered = self._render(desired, k8s_name, mine, None, live)
        self._left_out[key] = rendered.problems  # (the status page shows them)
        for problem in rendered.problems:
            self.metrics.skipped.labels(sink=self.name, what="endpoint").inc()
            log.warning("sink %s: %s", self.name, problem, extra={"sink": self.name})
        # A new Service goes with its first new slice (the usual new key:
        # one of each) in one worker-thread call.
        chained = None
        if live is None:
            chained = next(
                (s for s in rendered.slices if s["metadata"]["name"] not in self.slices.store),
                None,
            )
        if chained is not None:
            await self._create_with_slice(rendered.service, chained)
            live = self.services.store[k8s_name]
        elif r.differs(rendered.service, live):
            await self._apply_object(
                Resource.SERVICES, rendered.service, force=True, create=live is None
            )
            live = self.services.store[k8s_name]
        assert live is not None
        uid = _uid(live)
        reference = r.owner_reference(k8s_name, uid)
        writes = []
        for obj in rendered.slices:
            obj["metadata"]["ownerReferences"] = [reference]
            if obj is chained:
                continue  # written with the Service
            current = self.slices.store.get(obj["metadata"]["name"])
            if r.differs(obj, current):
                writes.append((obj, current is not None))
        wanted = {obj["metadata"]["name"] for obj in rendered.slices}
        stale = [obj for obj in mine if _meta(obj)["name"] not in wanted] + legacy
        # (Services of this key under an old name are not deleted here: they
        # are view entries of their own, deleted when the planner says so.)
        await gather(
            partial(self._apply_object, Resource.ENDPOINTSLICES, obj, force=True, create=not exists)
            for obj, exists in writes
        )
        await gather(partial(self._delete_object, Resource.ENDPOINTSLICES, obj) for obj in stale)
        rendered_back = r.parse(rendered.service, rendered.slices)
        self._accepted[key] = (desired, rendered_back)
        live = self.services.store.get(k8s_name)
        if live is not None:
            self._written[key] = self._fingerprint(live, self._slices_for(k8s_name))

    async def _delete(self, key: ServiceKey) -> None:
        """Delete the Services of ours filed under ``key`` now: never one a
        desired key's name maps to and that is to be taken over in place
        (names are refreshed first, so this holds whichever of a rename's
        delete and upsert runs first)."""
        assert self.services is not None
        waiting = []
        for name in sorted(self._names_of.get(key, set())):
            obj = self.services.store.get(name)
            if obj is None or not self._ours(obj) or self._view_key(name, obj) != key:
                continue
            await self._delete_service(name)
            mapped = self.names.key_of(self.namespace, name)
            if mapped is not None:
                waiting.append(mapped)  # a key waiting for this name: retry it now
        self._accepted.pop(key, None)
        self._written.pop(key, None)
        self._left_out.pop(key, None)
        if waiting:
            self.context.mark_dirty(waiting)

    async def _delete_service(self, k8s_name: str) -> None:
        """Delete a Service of ours, and those of its slices the garbage
        collector would not (no ownerReference to it)."""
        assert self.services is not None and self.slices is not None
        service = self.services.store[k8s_name]
        uid = _uid(service)
        orphans = [
            self.slices.store[name]
            for name in sorted(self._slices_of.get(k8s_name, ()))
            if self._ours(self.slices.store[name])
            and not any(
                ref.get("uid") == uid
                for ref in _meta(self.slices.store[name]).get("ownerReferences") or []
            )
        ]
        await self._delete_object(Resource.SERVICES, service)
        await gather(partial(self._delete_object, Resource.ENDPOINTSLICES, obj) for obj in orphans)

    async def _reread(self, error: KubeError) -> None:
        """After a 409: read the object again into the store."""
        resource = error.resource
        if resource not in (Resource.SERVICES, Resource.ENDPOINTSLICES) or not error.name:
            return
        assert self.client is not None
        client, name = self.client, error.name
        informer = self.services if resource is Resource.SERVICES else self.slices
        assert informer is not None
        try:
            obj = await self._call(
                lambda: client.get(resource, self.namespace, name), expected=(404,)
            )
        except KubeError as exc:
            if exc.status != 404:
                raise
            informer.forget(name)
        else:
            if resource is Resource.SERVICES or self._ours(obj):
                # (a slice of ours that lost its selector label is taken back:
                # the next apply restores the label)
                informer.put(obj)
            else:
                self._foreign_slices.add(name)  # somebody else's: never take this name
        if resource is Resource.SERVICES:
            self._reindex({name})
        else:
            self._slices_changed({name})

    # --- errors and events ----------------------------------------------

    async def _sink_error(self, error: KubeError, change: Change) -> SinkError:
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
            obj = self.services.store.get(self.names.name(key)) if self.services else None
            if obj is not None and self._ours(obj):
                await self._event(obj, "Rejected", message)
            return SinkError(message, retryable=False)
        if error.status == 403:
            return SinkError(f"{service}: {rbac_hint(error)} (API: {error.message})")
        if error.status == 429 or error.status >= 500 or error.status == 0:
            return SinkError(
                f"{service}: Kubernetes API busy or unreachable ({error}); backing off",
                retry_after=error.retry_after,
                # an outage is told once, by self.outage
                reported=unavailable(error.status),
            )
        if error.status == 409:
            return SinkError(f"{service}: {what} keeps changing under us ({error}); retrying")
        return SinkError(f"{service}: {error.verb} {what} failed: {error}")

    async def _event(self, obj: Mapping[str, Any], reason: str, message: str) -> None:
        """A Warning Event on ``obj``, at most once per ``event_interval``."""
        uid = _uid(obj)
        now = time.monotonic()
        last = self._events_sent.get((uid, reason))
        if last is not None and now - last < self.config.event_interval:
            return
        self._events_sent[(uid, reason)] = now
        meta = _meta(obj)
        stamp = micro_time()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{meta['name']}.{uuid.uuid4().hex[:16]}",
                "namespace": self.namespace,
            },
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Service",
                "name": meta["name"],
                "namespace": self.namespace,
                "uid": uid,
                "resourceVersion": str(meta.get("resourceVersion", "")),
            },
            "reason": reason,
            "message": message[:1024],
            "type": "Warning",
            "source": {"component": "consul-sync"},
            "reportingComponent": "consul-sync",
            "reportingInstance": self.identity,
            "firstTimestamp": stamp[:19] + "Z",
            "lastTimestamp": stamp[:19] + "Z",
            "count": 1,
        }
        assert self.client is not None
        client = self.client
        try:
            await self._call(lambda: client.create(Resource.EVENTS, body))
        except KubeError as exc:
            log.debug("sink %s: cannot record an Event: %s", self.name, exc)
            return
        self.metrics.events.labels(sink=self.name, reason=reason).inc()
