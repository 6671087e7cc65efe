"""Leader election on a Lease: one writer among replicas, hand-over, release."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from consul_sync import SinkError
from consul_sync.model import Action, Change
from tests.fakes.k8s_double import KubeDouble

from .helpers import FAST_LEADER, NS, kube_app, make_sink, service, source, the_sink, until

pytestmark = pytest.mark.anyio

#: A Lease that outlives every deadline below: whatever happens within them happens before it
#: could expire (a take-over is the release's, a step-down the renew deadline's), however
#: slow the machine.
LONG_LEASE: dict[str, Any] = {"lease_duration": 30.0, "renew_deadline": 0.6, "retry_period": 0.1}
#: generous: the conditions waited for come within a second on an idle machine
DEADLINE = 10.0


@pytest.fixture
def kube() -> Iterator[KubeDouble]:
    with KubeDouble() as double:
        yield double


def holder(kube: KubeDouble) -> str | None:
    lease = kube.get("leases", NS, "consul-sync")
    return None if lease is None else lease["spec"].get("holderIdentity")


async def test_one_replica_leads_the_other_stands_by_and_takes_over_on_release(
    kube: KubeDouble,
) -> None:
    a = make_sink(kube, "a", leader_elect=True, identity="pod-a", **LONG_LEASE)
    b = make_sink(kube, "b", leader_elect=True, identity="pod-b", **LONG_LEASE)
    await a.sink.observe()
    await b.sink.observe()
    assert a.sink.active and not b.sink.active
    assert holder(kube) == "pod-a"
    assert a.metric("consul_sync_kubernetes_leader", sink="a") == 1
    assert b.metric("consul_sync_kubernetes_leader", sink="b") == 0
    lease = kube.get("leases", NS, "consul-sync")
    assert lease is not None and lease["spec"]["leaseDurationSeconds"] == 30
    # a standby never writes, even when asked to
    with pytest.raises(SinkError) as caught:
        await b.sink.apply(Change(Action.CREATE, ("network", "web"), service("web", "10.0.0.1")))
    assert caught.value.retryable and "standby" in str(caught.value)
    assert kube.get("services", NS, "web") is None
    # the leader stops (SIGTERM): it releases the Lease and b takes over at its next
    # retry, long before the 30-second lease could have run out
    await a.sink.aclose()
    assert holder(kube) != "pod-a"
    await until(lambda: b.sink.active, timeout=DEADLINE)
    assert holder(kube) == "pod-b"
    await b.sink.aclose()


async def test_a_crashed_leader_is_replaced_after_the_lease_expires(kube: KubeDouble) -> None:
    a = make_sink(kube, "a", leader_elect=True, identity="pod-a", **FAST_LEADER)
    b = make_sink(kube, "b", leader_elect=True, identity="pod-b", **FAST_LEADER)
    await a.sink.observe()
    await b.sink.observe()
    assert a.sink.elector is not None
    await a.sink.elector.stop(release=False)  # a dies without a word
    started = time.monotonic()
    await until(lambda: b.sink.active, timeout=DEADLINE)
    # not before the lease (1s) ran out (a lower bound: a slow machine only adds to it)
    assert time.monotonic() - started > 0.7
    assert holder(kube) == "pod-b"
    lease = kube.get("leases", NS, "consul-sync")
    assert lease is not None and lease["spec"]["leaseTransitions"] == 1
    await b.sink.aclose()


async def test_a_leader_that_cannot_renew_steps_down_before_its_lease_expires(
    kube: KubeDouble,
) -> None:
    a = make_sink(kube, "a", leader_elect=True, identity="pod-a", **LONG_LEASE)
    await a.sink.observe()
    assert a.sink.active
    kube.deny("get", "leases")
    # the renew deadline (0.6s) steps it down, long before its 30-second lease expires
    await until(lambda: not a.sink.active, timeout=DEADLINE)
    assert a.metric("consul_sync_kubernetes_errors_total") >= 1
    kube.allow("get", "leases")
    await until(lambda: a.sink.active, timeout=DEADLINE)
    await a.sink.aclose()


async def test_with_a_runtime_only_the_leader_writes_and_the_standby_is_ready(
    kube: KubeDouble,
) -> None:
    apps = [
        kube_app(kube, sink={"leader_elect": True, "identity": f"pod-{n}", **FAST_LEADER})
        for n in "ab"
    ]
    for app in apps:
        source(app).services = {s.key: s for s in [service("web", "10.0.0.1")]}
    async with anyio.create_task_group() as tg:
        await tg.start(apps[0].runtime.run)
        await until(lambda: apps[0].runtime.readiness()[0])
        await tg.start(apps[1].runtime.run)
        await until(lambda: apps[1].runtime.readiness()[0])
        assert the_sink(apps[0]).active and not the_sink(apps[1]).active
        assert kube.get("services", NS, "web") is not None

        def applied(index: int) -> float:
            value = apps[index].metrics.registry.get_sample_value(
                "consul_sync_sink_changes_total",
                {"sink": "kubernetes", "action": "create", "status": "success"},
            )
            return value or 0.0

        assert applied(0) == 1 and applied(1) == 0
        # the standby plans nothing while the leader lives
        await source(apps[1]).push([service("web", "10.0.0.1"), service("db", "10.0.0.2")])
        await anyio.sleep(0.3)
        assert kube.get("services", NS, "db") is None
        # the leader stops; the standby takes over and catches up at once
        apps[0].runtime.stop()
        await until(lambda: applied(1) == 1, timeout=DEADLINE)
        assert the_sink(apps[1]).active
        assert kube.get("services", NS, "db") is not None
        apps[1].runtime.stop()
    assert holder(kube) is None  # released on the way out
