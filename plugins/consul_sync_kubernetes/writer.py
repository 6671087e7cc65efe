"""The kubernetes sink's writer: one change's objects sent to the API server.

:meth:`Writer.upsert` renders the service (through the :class:`.view.View`, which knows which
slice holds which endpoint now) and sends only the objects that differ from the view: a new
Service and its first slice as two POSTs, one after the other, an existing object as a
server-side apply (after handing over what its creating POST still owns, :mod:`.handover`);
slices that became empty are deleted.  :meth:`Writer.delete` deletes a key's Services (and the
slices the garbage collector would not).  Every answer is put in the informer stores at once,
so the view is current before the watch event arrives.

The writes go from the event loop through :class:`consul_sync_kube.aio.AsyncKubeClient` (for a
configuration it cannot honour, each in a worker thread: :func:`consul_sync_kube.aio.writes_for`),
behind the sink's concurrency limiter (``concurrency`` writes in flight).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from consul_sync import Context, DesiredService, Observed, SinkError
from consul_sync.model import ServiceKey
from consul_sync_kube.errors import KubeError
from consul_sync_kube.gather import gather
from consul_sync_kube.informer import Informer
from consul_sync_kube.objects import FIELD_MANAGER, meta, uid
from consul_sync_kube.resources import Resource

from . import compare as c
from . import handover
from . import render as r
from .metrics import SinkMetrics
from .naming import NameBook
from .validate import validate
from .view import View

if TYPE_CHECKING:
    from consul_sync_kube.client import KubeClient

log = logging.getLogger("consul_sync.kubernetes")

_T = TypeVar("_T")


class Writer:
    """Writes and deletes the objects of one key at a time (the runtime's ``apply``)."""

    def __init__(
        self,
        name: str,
        context: Context,
        client: KubeClient,
        services: Informer,
        slices: Informer,
        view: View,
        *,
        limiter: anyio.CapacityLimiter,
        count_error: Callable[[KubeError], bool],
        tell_conflicts: Callable[[], Awaitable[None]],
        metrics: SinkMetrics,
        left_out: dict[ServiceKey, tuple[str, ...]],
    ) -> None:
        self.name = name
        self.context = context
        self.namespace = context.namespace
        from consul_sync_kube.aio import writes_for  # (imports ``kubernetes``)

        #: the way of the writes: the async client, or worker threads through ``client``
        self.api = writes_for(client)
        self.services = services
        self.slices = slices
        self.view = view
        self.names: NameBook = view.names
        self.owner = view.ownership.owner
        self.limiter = limiter
        self.count_error = count_error
        self.tell_conflicts = tell_conflicts
        self.metrics = metrics
        #: key -> instances its last write left out, and why (status page)
        self.left_out = left_out

    async def apply_object(
        self, resource: Resource, body: dict[str, Any], *, force: bool, create: bool = False
    ) -> None:
        """Write ``body``.  With ``create`` (the watch shows no such object) a
        POST of the whole object: a POST never merges, so a name somebody
        took since the last watch event answers 409 AlreadyExists and
        ``apply`` reads the object and classifies it.  Otherwise a
        server-side apply, after handing over to it what the POST that made
        the object still owns and the apply drops (:func:`.handover.hand_over`)."""
        informer = self.services if resource is Resource.SERVICES else self.slices
        if create:
            result = await self._run(
                partial(self.api.create, resource, body, field_manager=FIELD_MANAGER),
                expected=(409,),
            )
        else:
            metadata = body["metadata"]
            live = informer.store.get(metadata["name"])
            residue = handover.creation_residue(live, body, FIELD_MANAGER)
            if live is not None and residue:
                patch = {
                    "metadata": {
                        "resourceVersion": meta(live).get("resourceVersion"),
                        "managedFields": handover.hand_over(live, residue, FIELD_MANAGER),
                    }
                }
                informer.put(
                    await self._run(
                        partial(
                            self.api.merge_patch,
                            resource,
                            metadata["namespace"],
                            metadata["name"],
                            patch,
                        )
                    )
                )
            result = await self._run(
                partial(self.api.apply, resource, body, field_manager=FIELD_MANAGER, force=force)
            )
        informer.put(result)
        if resource is Resource.ENDPOINTSLICES:
            self.view.index_slices({result["metadata"]["name"]})

    async def create_with_slice(self, service: dict[str, Any], slice_obj: dict[str, Any]) -> None:
        """POST a new Service and then, in the same place behind the limiter,
        its first slice, owned by the uid the Service's answer names: the
        second write follows the first one's answer at once, as a plain
        client's would.
        Each POST is what :meth:`apply_object` sends with ``create``; a
        failure is raised (after storing the Service if it was made), as
        :meth:`apply_object`'s would be."""
        api, k8s_name = self.api, service["metadata"]["name"]

        async def run() -> tuple[list[dict[str, Any]], KubeError | None]:
            made: list[dict[str, Any]] = []
            try:
                made.append(
                    await api.create(Resource.SERVICES, service, field_manager=FIELD_MANAGER)
                )
                slice_obj["metadata"]["ownerReferences"] = [
                    r.owner_reference(k8s_name, uid(made[0]))
                ]
                made.append(
                    await api.create(
                        Resource.ENDPOINTSLICES, slice_obj, field_manager=FIELD_MANAGER
                    )
                )
            except KubeError as exc:
                return made, exc
            return made, None

        made, error = await self._run(run)
        if made:
            self.services.put(made[0])
        if len(made) > 1:
            self.slices.put(made[1])
            self.view.index_slices({made[1]["metadata"]["name"]})
        if error is not None:
            if error.status != 409:
                self.count_error(error)
            raise error

    async def delete_object(self, resource: Resource, obj: Mapping[str, Any]) -> None:
        name, obj_uid = meta(obj)["name"], uid(obj)
        try:
            await self._run(
                partial(self.api.delete, resource, self.namespace, name, uid=obj_uid or None),
                expected=(404,),
            )
        except KubeError as exc:
            if exc.status != 404:
                raise
        informer = self.services if resource is Resource.SERVICES else self.slices
        informer.forget(name, obj_uid or None)
        if resource is Resource.ENDPOINTSLICES:
            self.view.index_slices({name})

    async def upsert(self, key: ServiceKey, desired: DesiredService) -> None:
        k8s_name = self.names.name(key)
        live = self.services.store.get(k8s_name)
        if live is not None and not self.view.ours(live):
            self.view.entries[key] = Observed(key, owned=False)
            await self.tell_conflicts()
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
        problems = validate(desired)
        if problems:
            self.metrics.skipped.labels(sink=self.name, what="service").inc()
            raise SinkError(
                f"service {key[0]}/{key[1]} skipped: Kubernetes would refuse it: "
                + "; ".join(problems),
                retryable=False,
            )
        mine, legacy = self.view.slices_for(k8s_name)
        rendered = self.view.render(desired, k8s_name, mine, None, live)
        self.left_out[key] = rendered.problems  # (the status page shows them)
        for problem in rendered.problems:
            self.metrics.skipped.labels(sink=self.name, what="endpoint").inc()
            log.warning("sink %s: %s", self.name, problem, extra={"sink": self.name})
        # A new Service goes with its first new slice (the usual new key:
        # one of each) in one place behind the limiter.
        chained = None
        if live is None:
            chained = next(
                (s for s in rendered.slices if s["metadata"]["name"] not in self.slices.store),
                None,
            )
        if chained is not None:
            await self.create_with_slice(rendered.service, chained)
            live = self.services.store[k8s_name]
        elif c.differs(rendered.service, live):
            await self.apply_object(
                Resource.SERVICES, rendered.service, force=True, create=live is None
            )
            live = self.services.store[k8s_name]
        assert live is not None
        reference = r.owner_reference(k8s_name, uid(live))
        writes = []
        for obj in rendered.slices:
            obj["metadata"]["ownerReferences"] = [reference]
            if obj is chained:
                continue  # written with the Service
            current = self.slices.store.get(obj["metadata"]["name"])
            if c.differs(obj, current):
                writes.append((obj, current is not None))
        wanted = {obj["metadata"]["name"] for obj in rendered.slices}
        stale = [obj for obj in mine if meta(obj)["name"] not in wanted] + legacy
        # (Services of this key under an old name are not deleted here: they
        # are view entries of their own, deleted when the planner says so.)
        await gather(
            partial(self.apply_object, Resource.ENDPOINTSLICES, obj, force=True, create=not exists)
            for obj, exists in writes
        )
        await gather(partial(self.delete_object, Resource.ENDPOINTSLICES, obj) for obj in stale)
        rendered_back = c.parse(rendered.service, rendered.slices)
        self.view.accepted[key] = (desired, rendered_back)
        live = self.services.store.get(k8s_name)
        if live is not None:
            self.view.written[key] = self.view.fingerprint(live, self.view.slices_for(k8s_name))

    async def delete(self, key: ServiceKey) -> None:
        """Delete the Services of ours filed under ``key`` now: never one a
        desired key's name maps to and that is to be taken over in place
        (names are refreshed first, so this holds whichever of a rename's
        delete and upsert runs first)."""
        waiting = []
        for name in sorted(self.view.names_of(key)):
            obj = self.services.store.get(name)
            if obj is None or not self.view.ours(obj) or self.view.view_key(name, obj) != key:
                continue
            await self.delete_service(name)
            mapped = self.names.key_of(self.namespace, name)
            if mapped is not None:
                waiting.append(mapped)  # a key waiting for this name: retry it now
        self.view.accepted.pop(key, None)
        self.view.written.pop(key, None)
        self.left_out.pop(key, None)
        if waiting:
            self.context.mark_dirty(waiting)

    async def delete_service(self, k8s_name: str) -> None:
        """Delete a Service of ours, and those of its slices the garbage
        collector would not (no ownerReference to it)."""
        service = self.services.store[k8s_name]
        service_uid = uid(service)
        orphans = [
            self.slices.store[name]
            for name in self.view.slice_names(k8s_name)
            if self.view.ours(self.slices.store[name])
            and not any(
                ref.get("uid") == service_uid
                for ref in meta(self.slices.store[name]).get("ownerReferences") or []
            )
        ]
        await self.delete_object(Resource.SERVICES, service)
        await gather(partial(self.delete_object, Resource.ENDPOINTSLICES, obj) for obj in orphans)

    async def reread(self, error: KubeError) -> None:
        """After a 409: read the object again into the store."""
        resource = error.resource
        if resource not in (Resource.SERVICES, Resource.ENDPOINTSLICES) or not error.name:
            return
        name = error.name
        informer = self.services if resource is Resource.SERVICES else self.slices
        try:
            obj = await self._run(
                partial(self.api.get, resource, self.namespace, name), expected=(404,)
            )
        except KubeError as exc:
            if exc.status != 404:
                raise
            informer.forget(name)
        else:
            if resource is Resource.SERVICES or self.view.ours(obj):
                # (a slice of ours that lost its selector label is taken back:
                # the next apply restores the label)
                informer.put(obj)
            else:
                self.view.foreign_slices.add(name)  # somebody else's: never take this name
        if resource is Resource.SERVICES:
            self.view.reindex({name})
        else:
            self.view.slices_changed({name})

    async def aclose(self) -> None:
        await self.api.aclose()

    async def _run(
        self, func: Callable[[], Awaitable[_T]], *, expected: Collection[int] = ()
    ) -> _T:
        """One API call (or a Service and its first slice) behind the limiter; failures
        other than the ``expected`` statuses count as errors."""
        try:
            async with self.limiter:
                return await func()
        except KubeError as exc:
            if exc.status not in expected:
                self.count_error(exc)
            raise
