"""Fault rows: service identity and names (issue 8).

Each row runs the whole of consul-sync (runtime, fake source) against the
Kubernetes API double, injects the fault, waits for convergence and checks
what must not happen: no delete of a live Service, no foreign object
touched.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from consul_sync.cli import App
from consul_sync_kubernetes import naming as r
from tests.fakes.k8s_double import KubeDouble
from tests.kubernetes.helpers import NS, kube_app, names, service, source, until, writes

pytestmark = pytest.mark.anyio

SLICES = "endpointslices"


@pytest.fixture
def kube() -> Iterator[KubeDouble]:
    with KubeDouble() as double:
        yield double


def _foreign(kube: KubeDouble) -> list[dict[str, Any]]:
    """Somebody else's Service and slice, next to ours."""
    service_obj = kube.create(
        "services",
        {
            "metadata": {"name": "web-ui", "namespace": NS},
            "spec": {"ports": [{"name": "http", "port": 80}]},
        },
    )
    slice_obj = kube.create(
        SLICES,
        {
            "metadata": {
                "name": "web-ui-abcde",
                "namespace": NS,
                "labels": {"kubernetes.io/service-name": "web-ui"},
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["192.168.1.1"]}],
        },
        manager="someone",
    )
    return [service_obj, slice_obj]


def _untouched(kube: KubeDouble, foreign: list[dict[str, Any]]) -> None:
    for before in foreign:
        resource = "services" if before["kind"] == "Service" else SLICES
        assert kube.get(resource, NS, before["metadata"]["name"]) == before
        assert not [w for w in writes(kube) if w[1].endswith("/" + before["metadata"]["name"])]


def _stands_for(kube: KubeDouble, name: str) -> str | None:
    obj = kube.get("services", NS, name)
    return None if obj is None else r.service_key(obj)[1]


@asynccontextmanager
async def _running(app: App) -> AsyncIterator[None]:
    async with anyio.create_task_group() as tg:
        await tg.start(app.runtime.run)
        await until(lambda: app.runtime.readiness()[0])
        yield
        app.runtime.stop()


async def _settled(app: App) -> None:
    """A full pass ran after the fault converged (a wrong write would show)."""
    passes = app.runtime.passes
    app.runtime.request_resync()
    await until(lambda: app.runtime.passes > passes, timeout=15)
    assert not app.runtime.states["kubernetes"].failing


async def test_rename_by_casing(kube: KubeDouble) -> None:
    """Consul's ``web`` is re-registered as ``Web``: both map to the
    Kubernetes name ``web``; the Service is updated in place."""
    foreign = _foreign(kube)
    app = kube_app(kube)
    source(app).services = {s.key: s for s in [service("web", "10.0.0.1", "10.0.0.2")]}
    async with _running(app):
        live = kube.get("services", NS, "web")
        assert live is not None
        kube.reset_log()
        await source(app).push([service("Web", "10.0.0.1", "10.0.0.2")])
        await until(lambda: _stands_for(kube, "web") == "Web", timeout=15)
        await _settled(app)
        after = kube.get("services", NS, "web")
        assert after is not None and after["metadata"]["uid"] == live["metadata"]["uid"]
        assert [w for w in writes(kube) if w[0] == "DELETE"] == []
        assert names(kube, "services", "app.kubernetes.io/managed-by=consul-sync") == ["web"]
        assert kube.get(SLICES, NS, "web-v4-8080") is not None
        _untouched(kube, foreign)


async def test_sanitised_name_collision(kube: KubeDouble) -> None:
    """``Home_Assistant`` is registered next to a healthy ``home-assistant``:
    the existing Service keeps its name and stays untouched; the newcomer
    gets a hash-suffixed name."""
    foreign = _foreign(kube)
    app = kube_app(kube)
    source(app).services = {s.key: s for s in [service("home-assistant", "10.0.0.1")]}
    async with _running(app):
        before = kube.get("services", NS, "home-assistant")
        slice_before = kube.get(SLICES, NS, "home-assistant-v4-8080")
        kube.reset_log()
        await source(app).push(upsert=[service("Home_Assistant", "10.0.0.2")])
        newcomer = r.suffixed("home-assistant", "Home_Assistant")
        await until(lambda: _stands_for(kube, newcomer) == "Home_Assistant", timeout=15)
        await _settled(app)
        assert kube.get("services", NS, "home-assistant") == before
        assert kube.get(SLICES, NS, "home-assistant-v4-8080") == slice_before
        assert [w for w in writes(kube) if w[0] == "DELETE"] == []
        assert not [w for w in writes(kube) if w[1].endswith("/home-assistant")]
        _untouched(kube, foreign)
