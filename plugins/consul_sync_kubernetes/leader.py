"""Leader election on a ``coordination.k8s.io/v1`` Lease, as client-go does it.

Every replica runs an elector.  Each ``retry_period`` it reads the Lease:

* absent -> create it holding it (the create fails if another got there first);
* held by another identity whose record changed less than
  ``leaseDurationSeconds`` ago (measured on this replica's own clock from the
  moment it *saw* the record change, so clocks need not agree) -> follow;
* held by us, released (no holder), or expired -> write it with us as holder,
  conditional on the resourceVersion read (a 409 means another replica won).

A leader that cannot renew for ``renew_deadline`` steps down (stops
writing) before its lease can expire for the others; one that sees another
holder steps down at once.  On shutdown the leader releases the Lease (no
holder, one-second duration), so a follower takes over at its next retry.

The elector runs in a daemon thread and tells the event loop about changes
through ``on_change(leading)``.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

from consul_sync_kube.errors import KubeError
from consul_sync_kube.resources import Resource

if TYPE_CHECKING:
    from consul_sync_kube.client import KubeClient

log = logging.getLogger("consul_sync.kubernetes.leader")


def micro_time(moment: datetime | None = None) -> str:
    """A Kubernetes MicroTime: ``2026-11-24T00:00:00.000000Z``."""
    return (moment or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Step(enum.Enum):
    LEADING = "leading"
    FOLLOWING = "following"  # another replica holds a valid lease
    FAILED = "failed"  # could not read or write the Lease


class LeaderElector:
    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        on_change: Callable[[bool], None] = lambda _leading: None,
        on_error: Callable[[KubeError], None] = lambda _error: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.on_change = on_change
        self.on_error = on_error
        self.clock = clock
        #: Whether this replica leads (written by the elector's thread).
        self.leading = False
        self.holder: str | None = None
        self._record: dict[str, Any] | None = None
        self._seen_at = 0.0
        self._renewed_at = 0.0
        self._resource_version = ""
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._token: anyio.lowlevel.EventLoopToken | None = None

    # --- one round -------------------------------------------------------

    def _body(self, spec: dict[str, Any]) -> dict[str, Any]:
        metadata: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if self._resource_version:
            metadata["resourceVersion"] = self._resource_version
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": spec,
        }

    def step(self) -> Step:
        """Try to acquire or renew the Lease once (blocking)."""
        now = micro_time()
        try:
            lease = self.client.get(Resource.LEASES, self.namespace, self.name)
        except KubeError as exc:
            if exc.status != 404:
                raise
            fresh: dict[str, Any] = {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": max(1, round(self.lease_duration)),
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": 0,
            }
            self._resource_version = ""
            try:
                created = self.client.create(Resource.LEASES, self._body(fresh))
            except KubeError as exc2:
                if exc2.status == 409:  # another replica created it first
                    return Step.FAILED
                raise
            self._observe(created)
            return Step.LEADING
        self._observe(lease)
        spec: dict[str, Any] = dict(lease.get("spec") or {})
        holder = spec.get("holderIdentity") or ""
        duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
        if holder and holder != self.identity and self._seen_at + duration > self.clock():
            return Step.FOLLOWING
        if holder != self.identity:
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        spec.update(
            holderIdentity=self.identity,
            leaseDurationSeconds=max(1, round(self.lease_duration)),
            renewTime=now,
        )
        try:
            updated = self.client.update(Resource.LEASES, self._body(spec))
        except KubeError as exc:
            if exc.status == 409:  # somebody else wrote it since we read it
                return Step.FAILED
            raise
        self._observe(updated)
        return Step.LEADING

    def _observe(self, lease: dict[str, Any]) -> None:
        spec = lease.get("spec") or {}
        record = {k: spec.get(k) for k in ("holderIdentity", "renewTime", "leaseTransitions")}
        if record != self._record:
            self._record = record
            self._seen_at = self.clock()
        self.holder = spec.get("holderIdentity") or None
        self._resource_version = str((lease.get("metadata") or {}).get("resourceVersion", ""))

    def round(self) -> bool:
        """One round: step, then decide whether we lead; returns ``leading``."""
        try:
            result = self.step()
        except KubeError as exc:
            self._tell(self.on_error, exc)
            result = Step.FAILED
        now = self.clock()
        if result is Step.LEADING:
            self._renewed_at = now
            self._set(True)
        elif result is Step.FOLLOWING or now - self._renewed_at > self.renew_deadline:
            self._set(False)
        return self.leading

    def _set(self, leading: bool) -> None:
        if leading != self.leading:
            self.leading = leading
            self._tell(self.on_change, leading)

    def _tell(self, func: Callable[[Any], None], arg: Any) -> None:
        if self._token is None:
            func(arg)
            return
        try:
            anyio.from_thread.run_sync(func, arg, token=self._token)
        except Exception:  # the event loop is gone
            self._stopping.set()

    def release(self) -> None:
        """Give the Lease up (blocking), if we hold it."""
        if not self.leading:
            return
        now = micro_time()
        spec = {
            "holderIdentity": None,
            "leaseDurationSeconds": 1,
            "acquireTime": now,
            "renewTime": now,
            "leaseTransitions": int((self._record or {}).get("leaseTransitions") or 0),
        }
        try:
            self.client.update(Resource.LEASES, self._body(spec))
            log.info("released the leader lease %s/%s", self.namespace, self.name)
        except KubeError as exc:
            log.warning("could not release the leader lease: %s", exc)
        self.leading = False

    # --- the thread ---------------------------------------------------------

    async def start(self) -> None:
        """A first round now (so a lone replica leads at once), then a thread."""
        self._token = anyio.lowlevel.current_token()
        await anyio.to_thread.run_sync(self.round, abandon_on_cancel=True)
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"leader-{self.namespace}-{self.name}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.wait(self.retry_period):
            self.round()

    async def stop(self, *, release: bool = True) -> None:
        """Stop the thread; release the Lease if we lead (and ``release``)."""
        self._stopping.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            await anyio.to_thread.run_sync(thread.join, 5.0, abandon_on_cancel=True)
        if release and self.leading:
            await anyio.to_thread.run_sync(self.release, abandon_on_cancel=True)
