"""When Consul misbehaves: keep the last good state, say the snapshot is
not complete, count the errors, back off, recover by itself.  Every test
runs against an agent over http, https and a unix socket."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from consul_sync.metrics import Metrics
from tests.consul.helpers import DEADLINE, captured, counter, make_source, ready, running
from tests.consul.schemes import double_options_fixture, pki_fixture  # noqa: F401
from tests.fakes.consul_double import ConsulDouble

pytestmark = pytest.mark.anyio

TAG = ["kubernetes"]
ERRORS = "consul_sync_consul_errors_total"


@pytest.fixture
def consul(double_options: dict[str, Any]) -> Iterator[ConsulDouble]:
    with ConsulDouble(seed=3, **double_options) as double:
        double.register("web", service_id="web-1", address="10.1.0.11", port=8080, tags=TAG,
                        status="passing")  # fmt: skip
        double.register("db", service_id="db-1", address="10.1.0.20", port=5432, tags=TAG,
                        status="passing")  # fmt: skip
        yield double


FAULTS: list[tuple[str, dict[str, Any]]] = [
    ("error", {"status": 500}),
    ("error", {"status": 503, "body": "Service Unavailable"}),
    ("error", {"status": 429, "body": "Too Many Requests"}),
    ("hang", {"seconds": 30}),
    ("close", {}),
    ("reset", {}),
    ("close_mid_body", {}),
    ("truncated_json", {}),
    ("malformed_json", {}),
    ("huge_body", {"size": 300_000}),
]


def _id(item: tuple[str, dict[str, Any]]) -> str:
    kind, options = item
    return f"{kind}{options.get('status', '')}"


@pytest.mark.parametrize("fault", FAULTS, ids=[_id(f) for f in FAULTS])
async def test_catalog_watch_failure_keeps_state_and_recovers(
    consul: ConsulDouble, fault: tuple[str, dict[str, Any]]
) -> None:
    kind, options = fault
    metrics = Metrics()
    # short blocking wait and timeout so that a hung read times out quickly
    source = make_source(consul, metrics=metrics, wait=0.5, timeout=0.5, max_body=100_000)
    async with running(source) as seen:
        assert seen.last.complete
        consul.inject_fault(kind, times=None, path_prefix="/v1/catalog/services", **options)  # type: ignore[arg-type]
        consul.bump_index()  # nothing changes; the watch's next read meets the fault
        consul.deregister("db-1")  # a change made while the catalog cannot be read
        await seen.until(lambda s: not s.complete, DEADLINE, "incomplete snapshot")
        assert counter(metrics, ERRORS) >= 1
        # nothing was dropped on the strength of a failed read
        await anyio.sleep(0.3)
        assert ("network", "web") in seen.last.services
        consul.clear_faults()
        await seen.until(
            lambda s: s.complete and ("network", "db") not in s.services, DEADLINE, "recovery"
        )


HEALTH_FAULTS = [FAULTS[0], FAULTS[3], FAULTS[5], FAULTS[7], FAULTS[9]]


@pytest.mark.parametrize("fault", HEALTH_FAULTS, ids=[_id(f) for f in HEALTH_FAULTS])
async def test_service_read_failure_keeps_state_and_recovers(
    consul: ConsulDouble, fault: tuple[str, dict[str, Any]]
) -> None:
    kind, options = fault
    metrics = Metrics()
    source = make_source(consul, metrics=metrics, timeout=0.5, max_body=100_000)
    async with running(source) as seen:
        consul.inject_fault(kind, times=None, path_prefix="/v1/health/service/", **options)  # type: ignore[arg-type]
        consul.set_check("service:web-1", "critical")
        await seen.until(lambda s: not s.complete, DEADLINE, "incomplete snapshot")
        assert counter(metrics, ERRORS) >= 1
        assert ready(seen.endpoints("web")) == {"10.1.0.11": True}  # last good state
        consul.clear_faults()
        await seen.until(
            lambda s: s.complete and ready(seen.endpoints("web")) == {"10.1.0.11": False},
            DEADLINE,
            "recovery",
        )


@pytest.mark.parametrize("fault", [FAULTS[0], FAULTS[8]], ids=["error500", "malformed_json"])
async def test_health_watch_failure_is_incomplete_then_recovers(
    consul: ConsulDouble, fault: tuple[str, dict[str, Any]]
) -> None:
    kind, options = fault
    metrics = Metrics()
    source = make_source(consul, metrics=metrics, wait=0.5)
    async with running(source) as seen:
        consul.inject_fault(kind, times=None, path_prefix="/v1/health/state/", **options)  # type: ignore[arg-type]
        consul.set_check("serfHealth", "critical")  # wakes the watch; its next read fails
        await seen.until(lambda s: not s.complete, DEADLINE, "incomplete")
        assert counter(metrics, ERRORS) >= 1
        consul.clear_faults()
        await seen.until(
            lambda s: s.complete and not any(ready(seen.endpoints("web")).values()),
            DEADLINE,
            "node check seen after recovery",
        )


async def test_backoff_with_jitter_bounds_retries(consul: ConsulDouble) -> None:
    metrics = Metrics()
    source = make_source(consul, metrics=metrics, wait=0.5, retry_max=0.4)
    source.retry_base = 0.1
    async with running(source) as seen:
        consul.inject_fault("error", times=None, path_prefix="/v1/catalog/services", status=500)
        consul.bump_index()
        await seen.until(lambda s: not s.complete, DEADLINE)
        consul.clear_requests()
        await anyio.sleep(2.0)
        tries = consul.request_count("/v1/catalog/services")
        # 2 s at delays of 0.1, 0.2, then 0.2-0.4 s: a handful, not a hot loop
        assert 3 <= tries <= 12, tries
        consul.clear_faults()
        await seen.until(lambda s: s.complete, DEADLINE)


async def test_consul_down_then_back_converges_without_restart(consul: ConsulDouble) -> None:
    metrics = Metrics()
    source = make_source(consul, metrics=metrics, wait=2, timeout=0.5)
    async with running(source) as seen:
        consul.stop()
        await seen.until(lambda s: not s.complete, DEADLINE, "incomplete while down")
        # changes made while nobody could see them
        consul.deregister("db-1")
        consul.register("api", service_id="api-1", address="10.1.0.50", port=80, tags=TAG)
        consul.register("web", service_id="web-1", address="10.1.0.99", port=8080, tags=TAG,
                        status="passing")  # fmt: skip
        await anyio.sleep(1.5)  # several failed attempts
        assert {"web", "db"} <= {k[1] for k in seen.last.services}  # nothing lost meanwhile
        errors = counter(metrics, ERRORS)
        assert errors >= 2
        consul.start()
        await seen.until(
            lambda s: (
                s.complete
                and {k[1] for k in s.services} == {"web", "api"}
                and set(ready(seen.endpoints("web"))) == {"10.1.0.99"}
            ),
            DEADLINE,
            "converged",
        )


async def test_error_logs_name_the_failure(consul: ConsulDouble) -> None:
    source = make_source(consul, wait=0.5)
    with captured() as lines:
        async with running(source) as seen:
            consul.inject_fault("error", times=None, path_prefix="/v1/catalog/services")
            consul.bump_index()
            await seen.until(lambda s: not s.complete, DEADLINE)
            consul.clear_faults()
            await seen.until(lambda s: s.complete, DEADLINE)
    assert any("No cluster leader" in line and "catalog/services" in line for line in lines)
    assert any("reads Consul again" in line for line in lines)


def complete_but_stale(seen: Any, start: int, fresh: Any) -> list[int]:
    """Complete snapshots from ``start`` on that do not show ``fresh`` yet."""
    return [
        i
        for i, snapshot in enumerate(seen.snapshots[start:], start)
        if snapshot.complete and not fresh(snapshot)
    ]


async def test_catalog_watch_recovery_is_complete_only_after_its_sweep(
    consul: ConsulDouble,
) -> None:
    source = make_source(consul, wait=0.5)
    async with running(source) as seen:
        consul.inject_fault("error", times=None, path_prefix="/v1/catalog/services")
        consul.bump_index()  # nothing changes; the watch's next read meets the fault
        await seen.until(lambda s: not s.complete, DEADLINE, "incomplete")
        # in place (no check moves): only the catalog, which cannot be read, would tell
        consul.register("web", service_id="web-1", address="10.1.0.99", port=8080, tags=TAG,
                        status="passing")  # fmt: skip
        start = len(seen.snapshots)
        consul.clear_faults()
        # the recovery sweep's reads are slow: no complete snapshot before they are done
        consul.inject_fault("delay", times=None, path_prefix="/v1/health/service/", seconds=0.5)

        def fresh(s: Any) -> bool:
            return {e.address for e in s.services[("network", "web")].endpoints} == {"10.1.0.99"}

        await seen.until(lambda s: s.complete and fresh(s), DEADLINE, "recovered")
        assert complete_but_stale(seen, start, fresh) == []


async def test_nodes_watch_recovery_is_complete_only_after_its_reads(
    consul: ConsulDouble,
) -> None:
    consul.add_node("node-b", "10.2.0.1")
    consul.register("web", service_id="web-b", address="", port=8080, tags=TAG, status="passing",
                    node="node-b")  # fmt: skip
    source = make_source(consul, wait=0.5)
    async with running(source) as seen:
        assert "10.2.0.1" in ready(seen.endpoints("web"))
        consul.inject_fault("error", times=None, path_prefix="/v1/catalog/nodes")
        consul.add_node("node-c", "10.3.0.1")  # wakes the watch; its next read fails
        await seen.until(lambda s: not s.complete, DEADLINE, "incomplete")
        consul.add_node("node-b", "10.2.0.2")  # only the nodes table tells
        start = len(seen.snapshots)
        consul.clear_faults()
        consul.inject_fault("delay", times=None, path_prefix="/v1/health/service/", seconds=0.5)

        def fresh(s: Any) -> bool:
            endpoints = s.services[("network", "web")].endpoints
            return {e.address for e in endpoints} == {"10.1.0.11", "10.2.0.2"}

        await seen.until(lambda s: s.complete and fresh(s), DEADLINE, "recovered")
        assert complete_but_stale(seen, start, fresh) == []
