"""Probes and metrics over real loopback HTTP."""

from __future__ import annotations

import anyio
import httpx
import pytest

from consul_sync.cli import serve
from consul_sync.health import ProbeServer, parse_listen_address
from consul_sync.testing import service

from .helpers import fake_app, sink, source, until

pytestmark = pytest.mark.anyio


def test_listen_addresses() -> None:
    assert parse_listen_address(":8080") == ("0.0.0.0", 8080)
    assert parse_listen_address("127.0.0.1:9") == ("127.0.0.1", 9)
    assert parse_listen_address("[::1]:8080") == ("::1", 8080)
    with pytest.raises(ValueError, match="METRICS_ADDR"):
        parse_listen_address("8080")


async def test_probes_follow_readiness_and_metrics_have_the_seed_names() -> None:
    app = fake_app(metrics_addr="127.0.0.1:0")
    src = source(app)
    src.complete = False
    probes = ProbeServer(app.runtime.readiness, app.metrics.registry, commit="abc123")
    async with anyio.create_task_group() as tg, httpx.AsyncClient() as client:
        port = await tg.start(probes.serve, "127.0.0.1:0")
        await tg.start(app.runtime.run)
        base = f"http://127.0.0.1:{port}"
        assert (await client.get(base + "/healthz")).status_code == 200
        not_ready = await client.get(base + "/readyz")
        assert not_ready.status_code == 503
        assert "complete snapshot" in not_ready.text
        await src.push([service("web", "10.0.0.1", source="src0")])
        await until(lambda: app.runtime.readiness()[0])
        assert (await client.get(base + "/readyz")).status_code == 200
        metrics = (await client.get(base + "/metrics")).text
        for name in (
            "consul_sync_services_total 1.0",
            "consul_sync_endpoints_total 1.0",
            'consul_sync_reconcile_total{status="success"}',
            'consul_sync_reconcile_total{status="error"}',
            "consul_sync_consul_errors_total 0.0",
            "consul_sync_kubernetes_errors_total 0.0",
            "consul_sync_reconcile_duration_seconds_bucket",
            "consul_sync_change_to_apply_seconds_bucket",
        ):
            assert name in metrics, name
        version = (await client.get(base + "/version")).json()
        assert version["commit"] == "abc123" and version["version"]
        assert (await client.get(base + "/nope")).status_code == 404
        assert (await client.post(base + "/healthz")).status_code == 405
        app.runtime.stop()
        tg.cancel_scope.cancel()


async def test_serve_runs_probes_and_runtime_until_stopped() -> None:
    app = fake_app(metrics_addr="127.0.0.1:0")
    source(app).services = {s.key: s for s in [service("web", "10.0.0.1", source="src0")]}
    async with anyio.create_task_group() as tg:
        tg.start_soon(serve, app)
        await until(lambda: app.runtime.readiness()[0])
        assert sink(app).count() == 1
        app.runtime.stop()
    # serve() returned by itself once the runtime stopped
    assert sink(app).closed


async def test_a_garbage_request_gets_400_and_the_server_lives_on() -> None:
    probes = ProbeServer(lambda: (True, "ready"), __import__("prometheus_client").REGISTRY)
    async with anyio.create_task_group() as tg:
        port = await tg.start(probes.serve, "127.0.0.1:0")
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(b"garbage\r\n\r\n")
            reply = await stream.receive()
        assert reply.startswith(b"HTTP/1.1 400")
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"http://127.0.0.1:{port}/readyz")).text == "ready\n"
        tg.cancel_scope.cancel()
