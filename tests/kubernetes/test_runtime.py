"""The whole of consul-sync (runtime, fake source) writing through the sink."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest

from consul_sync.model import Endpoint
from tests.fakes.k8s_double import KubeDouble

from .helpers import NS, kube_app, names, service, source, the_sink, until, writes

pytestmark = pytest.mark.anyio


@pytest.fixture
def kube() -> Iterator[KubeDouble]:
    with KubeDouble() as double:
        yield double


def metric(app, name: str, **labels: str) -> float:  # type: ignore[no-untyped-def]
    return app.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_sync_flip_resync_and_prune_through_the_runtime(kube: KubeDouble) -> None:
    kube.create(
        "services",
        {
            "metadata": {"name": "grafana", "namespace": NS},
            "spec": {"ports": [{"name": "http", "port": 3000}]},
        },
    )
    app = kube_app(kube)
    services = [service(f"svc{i}", f"10.0.{i}.1", f"10.0.{i}.2") for i in range(30)]
    source(app).services = {s.key: s for s in [*services, service("grafana", "10.0.9.9")]}
    async with anyio.create_task_group() as tg:
        await tg.start(app.runtime.run)
        await until(lambda: app.runtime.readiness()[0])
        assert len(names(kube, "services", "app.kubernetes.io/managed-by=consul-sync")) == 30
        assert metric(app, "consul_sync_services_total") == 30
        assert metric(app, "consul_sync_sink_conflicts", sink="kubernetes") == 1
        assert [e["reason"] for e in kube.list("events", NS)] == ["NameConflict"]
        await anyio.sleep(0.2)  # the watch events of our own writes come in

        # one health flip: one request
        kube.reset_log()
        flipped = service("svc7", Endpoint("10.0.7.1", ready=False), "10.0.7.2")
        await source(app).push(upsert=[flipped])
        await until(lambda: len(writes(kube)) >= 1)
        await anyio.sleep(0.2)
        assert writes(kube) == [
            ("PATCH", f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices/svc7-v4-8080")
        ]

        # a full resync with nothing changed: reads, zero writes
        kube.reset_log()
        passes = app.runtime.passes
        app.runtime.request_resync()
        await until(lambda: app.runtime.passes > passes)
        await anyio.sleep(0.2)
        assert writes(kube) == []

        # a service leaves Consul: its Service goes, the garbage collector takes the slice
        kube.reset_log()
        await source(app).push(remove=[("network", "svc3")])
        await until(lambda: kube.get("services", NS, "svc3") is None)
        assert "svc3-v4-8080" not in names(kube, "endpointslices")
        assert kube.get("services", NS, "grafana") is not None
        # an external delete is repaired without waiting for the resync
        kube.delete("services", NS, "svc5")
        await until(lambda: kube.get("services", NS, "svc5") is not None)
        await until(lambda: kube.get("endpointslices", NS, "svc5-v4-8080") is not None)
        app.runtime.stop()
    assert the_sink(app).services is not None and not the_sink(app).services.running
