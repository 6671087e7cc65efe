"""The whole of consul-sync (runtime, fake source) writing through the sink."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from consul_sync.model import Endpoint
from consul_sync_kubernetes import naming as n
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


# --- names: renames and collisions through the runtime ---------------------------


def _live(kube: KubeDouble, name: str) -> dict[str, Any]:
    obj = kube.get("services", NS, name)
    assert obj is not None, name
    return obj


def _stands_for(kube: KubeDouble, name: str) -> str | None:
    obj = kube.get("services", NS, name)
    return None if obj is None else n.service_key(obj)[1]


async def _settled(app) -> None:  # type: ignore[no-untyped-def]
    """A full pass ran after everything above (a wrong write would have happened)."""
    passes = app.runtime.passes
    app.runtime.request_resync()
    await until(lambda: app.runtime.passes > passes)


async def test_a_change_of_case_in_consul_updates_the_service_in_place(kube: KubeDouble) -> None:
    app = kube_app(kube)
    source(app).services = {s.key: s for s in [service("web", "10.0.0.1", "10.0.0.2")]}
    async with anyio.create_task_group() as tg:
        await tg.start(app.runtime.run)
        await until(lambda: app.runtime.readiness()[0])
        uid = _live(kube, "web")["metadata"]["uid"]
        kube.reset_log()
        await source(app).push([service("Web", "10.0.0.1", "10.0.0.2")])
        await until(lambda: _stands_for(kube, "web") == "Web")
        await _settled(app)
        assert _live(kube, "web")["metadata"]["uid"] == uid  # the same Service
        assert [w for w in writes(kube) if w[0] == "DELETE"] == []
        assert names(kube, "services") == ["web"]
        assert names(kube, "endpointslices") == ["web-v4-8080"]
        assert not app.runtime.states["kubernetes"].failing
        view = app.runtime.states["kubernetes"].view
        assert view is not None and set(view) == {(NS, "Web")}
        app.runtime.stop()


async def test_a_sanitised_newcomer_leaves_the_existing_service_alone(kube: KubeDouble) -> None:
    app = kube_app(kube)
    source(app).services = {s.key: s for s in [service("home-assistant", "10.0.0.1")]}
    async with anyio.create_task_group() as tg:
        await tg.start(app.runtime.run)
        await until(lambda: app.runtime.readiness()[0])
        before = _live(kube, "home-assistant")
        slice_before = kube.get("endpointslices", NS, "home-assistant-v4-8080")
        kube.reset_log()
        await source(app).push(upsert=[service("Home_Assistant", "10.0.0.2")])
        newcomer = n.suffixed("home-assistant", "Home_Assistant")
        await until(lambda: _stands_for(kube, newcomer) == "Home_Assistant")
        await _settled(app)
        assert _live(kube, "home-assistant") == before  # uid, spec, resourceVersion
        assert kube.get("endpointslices", NS, "home-assistant-v4-8080") == slice_before
        assert not [w for w in writes(kube) if w[1].endswith("/home-assistant")]
        assert metric(app, "consul_sync_kubernetes_name_collisions", sink="kubernetes") == 1
        app.runtime.stop()


@pytest.mark.parametrize("policy", ["sync", "upsert-only"])
async def test_a_valid_name_takes_its_name_back_in_place(kube: KubeDouble, policy: str) -> None:
    """``Home_Assistant`` holds ``home-assistant``; then ``home-assistant``
    registers: the valid name wins, and as the object belongs to its name,
    it is one in-place update (uid kept, nothing deleted, under any policy);
    the sanitised twin gets a new, suffixed Service."""
    app = kube_app(kube, policy=policy)
    source(app).services = {s.key: s for s in [service("Home_Assistant", "10.0.0.1")]}
    async with anyio.create_task_group() as tg:
        await tg.start(app.runtime.run)
        await until(lambda: app.runtime.readiness()[0])
        uid = _live(kube, "home-assistant")["metadata"]["uid"]
        kube.reset_log()
        await source(app).push(upsert=[service("home-assistant", "10.0.0.2")])
        renamed = n.suffixed("home-assistant", "Home_Assistant")
        await until(
            lambda: (
                _stands_for(kube, "home-assistant") == "home-assistant"
                and _stands_for(kube, renamed) == "Home_Assistant"
            ),
            timeout=15,
        )
        await _settled(app)
        assert _live(kube, "home-assistant")["metadata"]["uid"] == uid
        assert [w for w in writes(kube) if w[0] == "DELETE"] == []
        served = kube.get("endpointslices", NS, "home-assistant-v4-8080")
        assert served is not None and served["endpoints"][0]["addresses"] == ["10.0.0.2"]
        twin = kube.get("endpointslices", NS, f"{renamed}-v4-8080")
        assert twin is not None and twin["endpoints"][0]["addresses"] == ["10.0.0.1"]
        assert not app.runtime.states["kubernetes"].failing
        app.runtime.stop()
