"""/metrics as Prometheus scrapes it: the seed's names, no ``_created`` series."""

from __future__ import annotations

import anyio
import httpx
import pytest

from consul_sync.health import ProbeServer
from consul_sync.model import Endpoint
from consul_sync.testing import service
from consul_sync_gateway.sink import GatewayMetrics
from consul_sync_kubernetes.sink import SinkMetrics

from .helpers import fake_app, source, until

pytestmark = pytest.mark.anyio


async def test_no_created_series_on_any_registry() -> None:
    app = fake_app(metrics_addr="127.0.0.1:0")
    # The plugins' own metrics live on the same registry: they count too.
    kube = SinkMetrics.of(app.metrics.registry)
    kube.requests.labels(sink="k", verb="get", resource="services", code="200").inc()
    kube.skipped.labels(sink="k", what="endpoint").inc()
    GatewayMetrics.of(app.metrics.registry).httproutes.labels(sink="g").set(1)
    probes = ProbeServer(app.runtime.readiness, app.metrics.registry)
    async with anyio.create_task_group() as tg, httpx.AsyncClient() as client:
        port = await tg.start(probes.serve, "127.0.0.1:0")
        await tg.start(app.runtime.run)
        not_ready = Endpoint("10.0.0.2", ready=False)
        await source(app).push([service("web", "10.0.0.1", not_ready, source="src0")])
        await until(lambda: app.runtime.readiness()[0])
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
        app.runtime.stop()
        tg.cancel_scope.cancel()
    assert "_created" not in text
    assert "consul_sync_endpoints_total 2.0" in text
    assert "consul_sync_ready_endpoints 1.0" in text  # the dashboard's readiness panel
    # The seed's counters keep their names (the exposition adds ``_total``).
    for name in (
        'consul_sync_reconcile_total{status="success"}',
        "consul_sync_consul_errors_total",
        "consul_sync_kubernetes_errors_total",
        "consul_sync_kubernetes_requests_total",
        "consul_sync_change_to_apply_seconds_bucket",
    ):
        assert name in text, name
