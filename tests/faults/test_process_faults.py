"""Fault matrix, process rows: consul-sync killed with SIGKILL in the middle
of its writes, and a leader replica killed.  Real processes against the
Consul and Kubernetes doubles; what must not happen: duplicate objects,
deletes of live objects, a standby that writes."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from tests.fakes.consul_double import ConsulDouble
from tests.fakes.k8s_double import KubeDouble

from .test_signals import NS, Process, kubeconfig, settings

SERVICE_LABEL = "kubernetes.io/service-name"


def until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def ours(kube: KubeDouble, resource: str) -> list[dict]:  # type: ignore[type-arg]
    return [
        obj
        for obj in kube.list(resource, NS)
        if (obj["metadata"].get("labels") or {}).get("app.kubernetes.io/managed-by")
        == "consul-sync"
    ]


def converged(kube: KubeDouble, count: int) -> bool:
    """Every service has its Service and exactly one slice with its address."""
    services = {o["metadata"]["name"] for o in ours(kube, "services")}
    if services != {f"svc{i}" for i in range(count)}:
        return False
    slices = ours(kube, "endpointslices")
    per_service = Counter(s["metadata"]["labels"][SERVICE_LABEL] for s in slices)
    if any(per_service[name] != 1 for name in services) or len(slices) != count:
        return False
    return all(
        [e["addresses"][0] for e in s.get("endpoints") or []]
        == [f"10.1.{int(s['metadata']['labels'][SERVICE_LABEL][3:])}.1"]
        for s in slices
    )


def register(consul: ConsulDouble, count: int, start: int = 0) -> None:
    for i in range(start, count):
        consul.register(
            f"svc{i}", address=f"10.1.{i}.1", port=8080, tags=["kubernetes"], status="passing"
        )


def test_kill_9_mid_apply_then_restart(tmp_path: Path) -> None:
    count = 200
    with ConsulDouble() as consul, KubeDouble() as kube:
        register(consul, count)
        env = settings(consul.url, kubeconfig(tmp_path / "kc", kube.url), KUBE_CONCURRENCY="1")
        first = Process(env)
        until(lambda: len(ours(kube, "services")) >= 10, "the first writes")
        first.proc.kill()  # SIGKILL: no cleanup, writes cut short
        first.proc.wait()
        assert not converged(kube, count), "killed too late to test anything"
        services_before = {
            o["metadata"]["name"]: o["metadata"]["uid"] for o in ours(kube, "services")
        }
        kube.reset_log()

        second = Process(env)
        until(lambda: converged(kube, count), "convergence after the restart")
        assert second.terminate() == 0
        # what the first process made was kept (same uid), nothing was deleted
        after = {o["metadata"]["name"]: o["metadata"]["uid"] for o in ours(kube, "services")}
        assert all(after[name] == uid for name, uid in services_before.items())
        assert not [w for w in kube.writes() if w.method == "DELETE"]


def test_two_replicas_leader_killed(tmp_path: Path) -> None:
    with ConsulDouble() as consul, KubeDouble() as kube:
        register(consul, 5)
        common = settings(
            consul.url,
            kubeconfig(tmp_path / "kc", kube.url),
            LEADER_ELECT="true",
            LEADER_ELECT_LEASE_DURATION="3s",
            LEADER_ELECT_RENEW_DEADLINE="2s",
            LEADER_ELECT_RETRY_PERIOD="200ms",
        )
        a = Process({**common, "POD_NAME": "replica-a"})
        a.wait_for("leading; writing")
        until(lambda: converged(kube, 5), "the leader's first sync")
        b = Process({**common, "POD_NAME": "replica-b"})
        b.wait_for("standing by")
        uids = {o["metadata"]["name"]: o["metadata"]["uid"] for o in ours(kube, "services")}
        kube.reset_log()

        a.proc.kill()  # the leader dies without releasing its Lease
        a.proc.wait()
        register(consul, 6, start=5)  # a change while nobody leads
        b.wait_for("leading; writing")
        until(lambda: converged(kube, 6), "the new leader's sync")
        assert b.terminate() == 0
        after = {o["metadata"]["name"]: o["metadata"]["uid"] for o in ours(kube, "services")}
        assert all(after[name] == uid for name, uid in uids.items())
        assert not [w for w in kube.writes() if w.method == "DELETE"]
        # b released the Lease on its way out (a's was taken over, not released)
        lease = kube.get("leases", NS, "consul-sync")
        assert lease is not None and not lease["spec"].get("holderIdentity")
        assert lease["spec"]["leaseTransitions"] >= 1
