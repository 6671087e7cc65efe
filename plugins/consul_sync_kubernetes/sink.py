"""The ``kubernetes`` sink: headless Services and EndpointSlices, live.

How it works (docs/kubernetes-sink.md has the long version):

* **Observe**: two informers (list + watch, :mod:`consul_sync_kube.informer`) keep the
  target namespace's Services and consul-sync's EndpointSlices (label
  ``endpointslice.kubernetes.io/managed-by=consul-sync``) in memory.
  Services are watched without a selector: the only way to know, without a
  GET per create, that a Service of a desired name already exists and is
  somebody else's.  From those objects the sink keeps a view
  (:mod:`.view`), ``key -> Observed``, updated per event; ``observe()``
  returns it (and lists afresh when asked for a fresh view).  An object
  changed or deleted behind our back marks its key dirty, so the runtime
  repairs it.
* **Apply** (:mod:`.writer`): render the service (:mod:`.render`), with endpoints kept in
  the slices that hold them now, and send only the objects that differ
  from what the view holds (server-side apply, field manager
  ``consul-sync``); delete slices that became empty.  A no-change pass
  sends nothing; one instance change rewrites one slice.
* **Ownership**: only objects with our managed-by label *and* our owner id
  are ours.  Objects with the label but no owner id come from the Go
  consul-sync: the default owner adopts them.  Anything else is never
  written: a foreign Service of a desired name is reported (log, metric,
  Event: :mod:`.report`) and left alone.
* **Leader election** (optional, :mod:`.leader`): only the leader writes;
  ``active`` tells the runtime to plan nothing for a standby replica, whose
  view stays warm.

This module wires those together and holds start-up and leadership: the
client is made (and ``kubernetes`` imported) when the sink first needs it.
"""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import anyio
import anyio.to_thread

from consul_sync import Context, DesiredService, Observed, SinkError
from consul_sync.model import Action, Change, ServiceKey, StatusNote
from consul_sync_kube.connect import connect
from consul_sync_kube.errors import KubeError, Outage, rbac_hint
from consul_sync_kube.events import Events
from consul_sync_kube.gather import gather
from consul_sync_kube.informer import Informer
from consul_sync_kube.objects import MANAGER, Ownership
from consul_sync_kube.resources import Resource

from . import render as r
from .config import KubernetesConfig
from .leader import LeaderElector
from .metrics import SinkMetrics
from .naming import NameBook, name_notes
from .report import Report
from .view import View
from .writer import Writer

if TYPE_CHECKING:
    from consul_sync_kube.client import KubeClient

# (SinkMetrics: tests/core and tests/docs import it from here)
__all__ = ["KubernetesConfig", "KubernetesSink", "SinkMetrics"]

log = logging.getLogger("consul_sync.kubernetes")

SLICE_SELECTOR = f"{r.SLICE_MANAGED_BY}={MANAGER}"
_T = TypeVar("_T")


class KubernetesSink:
    type_name: ClassVar[str] = "kubernetes"
    Config: ClassVar[type[KubernetesConfig]] = KubernetesConfig

    def __init__(self, name: str, config: KubernetesConfig, context: Context) -> None:
        self.name = name
        self.config = config
        self.context = context
        self.namespace = context.namespace
        #: The default owner adopts objects of the Go consul-sync (no owner id).
        self.ownership = Ownership.of(self.namespace, config.owner_id, config.instance)
        self.owner, self.adopt = self.ownership.owner, self.ownership.adopt
        self.concurrency = config.concurrency
        # The runtime sets context.desired_keys after making its sinks: look it up late.
        self.names = NameBook(lambda: context.desired_keys(), lambda: self.view.held())  # noqa: PLW0108
        self.view = View(
            self.namespace,
            self.ownership,
            self.names,
            max_per_slice=config.max_endpoints_per_slice,
            services=lambda: self.services.store if self.services is not None else {},
            slices=lambda: self.slices.store if self.slices is not None else {},
            mark_dirty=context.mark_dirty,
        )
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
        #: made with the informers, once there is a client (:meth:`_wire`)
        self.writer: Writer | None = None
        self.report: Report | None = None
        self.elector: LeaderElector | None = None
        self._leading = False
        self._closed = False
        self._names_version: int | None = None
        #: key -> instances its last write left out, and why (status page)
        self._left_out: dict[ServiceKey, tuple[str, ...]] = {}
        self.identity = config.identity or f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"
        self.events = Events(self.namespace, config.event_interval, self.identity)
        if config.leader_elect is None:
            from consul_sync_kube.client import KubeClient

            self.leader_elect = KubeClient.in_cluster()
        else:
            self.leader_elect = config.leader_elect
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
        services, slices, report = self._wire(client)
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
        await report.tell_conflicts()
        return self.view.entries

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
        view, writer, report = self.view, self.writer, self.report
        assert writer is not None and report is not None  # (observe() came first)
        view.writing.add(change.key)
        try:
            if change.action is Action.DELETE:
                await writer.delete(change.key)
            else:
                assert change.desired is not None
                try:
                    await writer.upsert(change.key, change.desired)
                except KubeError as exc:
                    if exc.status != 409:
                        raise
                    # Somebody changed an object since we saw it: read it
                    # again and retry once with what is there now.
                    await writer.reread(exc)
                    await writer.upsert(change.key, change.desired)
        except KubeError as exc:
            view.accepted.pop(change.key, None)
            view.written.pop(change.key, None)
            raise await report.sink_error(exc, change) from exc
        finally:
            view.writing.discard(change.key)
            view.reindex(
                view.names_of(change.key) | {self.names.name(change.key)}, also=(change.key,)
            )
            if change.key in view.changed_while_writing:
                view.changed_while_writing.discard(change.key)
                self.context.mark_dirty([change.key])

    def render(self, services: Sequence[DesiredService]) -> list[dict[str, Any]]:
        return r.render_logged(
            services,
            self.names,
            owner=self.owner,
            max_per_slice=self.config.max_endpoints_per_slice,
            log=log,
            sink=self.name,
        )

    def status_notes(self, keys: Iterable[ServiceKey]) -> dict[ServiceKey, StatusNote]:
        """For the status page: Kubernetes names that differ from the key's,
        and why; instances left out of the slices, and why."""
        return name_notes(self.names, keys, {k: v for k, v in self._left_out.items() if v})

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
        if self.writer is not None:
            await self.writer.aclose()
        if self._own_client and self.client is not None:
            self.client.close()

    # --- start-up ---------------------------------------------------------

    async def _client(self) -> KubeClient:
        if self.client is None:
            self.client = await connect(self.config)
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

    def _wire(self, client: KubeClient) -> tuple[Informer, Informer, Report]:
        """The informers, and the writer and reporter that use them (made once)."""
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
                on_change=self.view.services_changed,
                **common,
            )
            self.slices = Informer(
                client,
                Resource.ENDPOINTSLICES,
                self.namespace,
                label_selector=SLICE_SELECTOR,
                on_change=self.view.slices_changed,
                **common,
            )
            self.report = Report(
                self.name,
                client,
                self.services,
                self.view,
                call=self._call,
                events=self.events,
                metrics=self.metrics,
                active=lambda: self.active,
            )
            self.writer = Writer(
                self.name,
                self.context,
                client,
                self.services,
                self.slices,
                self.view,
                limiter=self._limiter,
                count_error=self._count_error,
                tell_conflicts=self.report.tell_conflicts,
                metrics=self.metrics,
                left_out=self._left_out,
            )
        assert self.report is not None
        return self.services, self.slices, self.report

    async def _start_background(self) -> None:
        if self._closed:
            return
        assert self.services is not None and self.slices is not None and self.client is not None
        self.services.start()
        self.slices.start()
        self.view.watching = True
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
            self.context.mark_dirty(set(self.view.entries) | set(self.context.desired_keys()[1]))
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

    # --- names, API calls ---------------------------------------------------

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
        self.view.names_changed(old, naming.names)

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
