"""Faults of the Kubernetes API, through the whole of consul-sync.

One test per row of the operations fault table.  Each asserts convergence
and what must not happen: no foreign object touched, nothing wrongly
deleted, no busy loop (an idle second with no reconciler pass and no API
request).  Everything talks to the API double on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest

from consul_sync.cli import EXIT_OK, App, _once
from consul_sync.model import DesiredService
from consul_sync_kube.resources import Resource
from consul_sync_kubernetes import render as r
from tests.fakes.k8s_double import KubeDouble
from tests.kubernetes.helpers import NS, kube_app, service, source, the_sink, until

pytestmark = pytest.mark.anyio

OURS = "app.kubernetes.io/managed-by=consul-sync"
SERVICES_PATH = f"/api/v1/namespaces/{NS}/services"
SLICES_PATH = f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices"
#: generous: conditions are waited for, never timed
DEADLINE = 30.0


@pytest.fixture
def kube() -> Iterator[KubeDouble]:
    with KubeDouble() as double:
        yield double


@contextlib.asynccontextmanager
async def running(app: App) -> AsyncIterator[None]:
    async with anyio.create_task_group() as tg:
        await tg.start(app.runtime.run)
        try:
            yield
        finally:
            app.runtime.stop()


def foreign_service(kube: KubeDouble, name: str = "grafana") -> dict[str, Any]:
    """A Service somebody else made (kubectl create): never ours to touch."""
    kube.create(
        "services",
        {
            "metadata": {
                "name": name,
                "namespace": NS,
                "labels": {"team": "observability"},
                "annotations": {"owner": "the observability team"},
            },
            "spec": {"ports": [{"name": "http", "port": 3000}]},
        },
    )
    obj = kube.get("services", NS, name)
    assert obj is not None
    return obj


def addresses_of(kube: KubeDouble, name: str) -> list[str]:
    slices = kube.list("endpointslices", NS, label_selector=f"{r.SERVICE_NAME_LABEL}={name},{OURS}")
    return sorted(a for o in slices for e in o.get("endpoints") or [] for a in e["addresses"])


def holds(kube: KubeDouble, *services: DesiredService) -> bool:
    """Whether the namespace holds exactly these services of ours, each with
    exactly its addresses."""
    ours = {o["metadata"]["name"] for o in kube.list("services", NS, label_selector=OURS)}
    if ours != {s.name for s in services}:
        return False
    return all(
        addresses_of(kube, s.name) == sorted(e.address for e in s.endpoints) for s in services
    )


def requests(kube: KubeDouble) -> int:
    """API requests other than watches."""
    return kube.count() - kube.count("watch")


async def assert_idle(kube: KubeDouble, app: App) -> None:
    """No busy loop: over an idle second, no reconciler pass, no request."""
    await anyio.sleep(0.3)  # the watch events of our last writes come in
    passes, before = app.runtime.passes, requests(kube)
    await anyio.sleep(1.0)
    assert app.runtime.passes == passes
    assert requests(kube) == before


def publish(app: App, *services: DesiredService) -> None:
    source(app).services = {s.key: s for s in services}


def metric(app: App, name: str, **labels: str) -> float:
    return app.metrics.registry.get_sample_value(name, labels) or 0.0


# --- the rows ------------------------------------------------------------------


async def test_api_5xx(kube: KubeDouble) -> None:
    grafana = foreign_service(kube)
    faults = [
        kube.fail_next(2, method="POST", path_prefix=SERVICES_PATH, status=500),
        kube.fail_next(2, method="POST", path_prefix=SLICES_PATH, status=503),
    ]
    app = kube_app(kube)
    wanted = [service(f"svc{i}", f"10.0.{i}.1", f"10.0.{i}.2") for i in range(3)]
    publish(app, *wanted)
    async with running(app):
        await until(lambda: holds(kube, *wanted), DEADLINE)
        assert all(f.remaining == 0 for f in faults)
        await until(lambda: app.runtime.readiness()[0], DEADLINE)
        assert kube.get("services", NS, "grafana") == grafana
        assert kube.count("delete") == 0
        await assert_idle(kube, app)


async def test_api_429_retry_after(kube: KubeDouble) -> None:
    fault = kube.fail_next(1, method="POST", path_prefix=SERVICES_PATH, status=429, retry_after=1)
    app = kube_app(kube)
    answers: list[tuple[float, str, Resource, int]] = []
    client = the_sink(app).client
    assert client is not None
    client.listeners.append(
        lambda verb, res, code: answers.append((time.monotonic(), verb, res, code))
    )
    web = service("web", "10.0.0.1")
    publish(app, web)
    async with running(app):
        await until(lambda: holds(kube, web), DEADLINE)
        assert fault.remaining == 0
        creates = [
            (t, code)
            for t, verb, res, code in answers
            if (verb, res) == ("create", Resource.SERVICES)
        ]
        assert [code for _, code in creates] == [429, 201]
        # Retry-After honoured: no retry before it (the runtime's own backoff is 50 ms)
        assert creates[1][0] - creates[0][0] >= 1.0
        await assert_idle(kube, app)


async def test_api_409_conflict_on_apply(kube: KubeDouble) -> None:
    grafana = foreign_service(kube)
    app = kube_app(kube)
    web = service("web", "10.0.0.1")
    publish(app, web)
    async with running(app):
        await until(lambda: holds(kube, web), DEADLINE)
        # somebody else adds a label of theirs to our Service: it must stay
        live = kube.get("services", NS, "web")
        assert live is not None
        live["metadata"]["labels"]["team"] = "media"
        kube.update("services", live, manager="kubectl-edit")
        # the next two applies of the slice answer 409 (the object changed under us):
        # read again and retried at once, then retried with backoff
        fault = kube.fail_next(2, method="PATCH", path_prefix=SLICES_PATH, status=409)
        gets = kube.count("get")
        web = service("web", "10.0.0.1", "10.0.0.2")
        await source(app).push(upsert=[web])
        await until(lambda: holds(kube, web), DEADLINE)
        assert fault.remaining == 0
        assert kube.count("get") > gets  # read again after the 409
        live = kube.get("services", NS, "web")
        assert live is not None and live["metadata"]["labels"]["team"] == "media"
        assert kube.get("services", NS, "grafana") == grafana
        assert kube.count("delete") == 0
        await assert_idle(kube, app)


async def test_api_410_gone_on_watch(kube: KubeDouble) -> None:
    foreign_service(kube)
    app = kube_app(kube)
    wanted = [service(f"svc{i}", f"10.0.{i}.1") for i in range(3)]
    publish(app, *wanted)
    async with running(app):
        await until(lambda: holds(kube, *wanted), DEADLINE)
        await until(lambda: kube.active_watches >= 2, DEADLINE)
        lists = kube.count("list")
        # the watches lag; meanwhile our svc1 is deleted and grafana edited behind
        # our back, and the history the watches would need is compacted away
        kube.hold_watches()
        kube.delete("services", NS, "svc1")
        grafana = kube.get("services", NS, "grafana")
        assert grafana is not None
        grafana["metadata"]["labels"]["tier"] = "2"
        grafana = kube.update("services", grafana, manager="kubectl-edit")
        kube.compact()
        kube.release_watches()  # -> ERROR 410 Expired on both watches
        await until(lambda: kube.count("list") >= lists + 2, DEADLINE)  # relisted
        await until(lambda: holds(kube, *wanted), DEADLINE)  # svc1 repaired
        assert kube.get("services", NS, "grafana") == grafana
        await until(lambda: kube.active_watches >= 2, DEADLINE)  # watching again
        await assert_idle(kube, app)


async def test_api_server_restart_with_changes_meanwhile(
    kube: KubeDouble, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    foreign_service(kube)
    app = kube_app(kube)
    wanted = {i: service(f"svc{i}", f"10.0.{i}.1") for i in range(5)}
    publish(app, *wanted.values())
    async with running(app):
        await until(lambda: holds(kube, *wanted.values()), DEADLINE)
        await until(lambda: kube.active_watches >= 2, DEADLINE)
        kube.stop()
        # changes in the source while the API is down...
        del wanted[1]
        wanted[2] = service("svc2", "10.0.2.1", "10.0.2.2")
        wanted[9] = service("svc9", "10.0.9.1")
        await source(app).push(upsert=[wanted[2], wanted[9]], remove=[(NS, "svc1")])
        # ... and behind our back (straight into the store: the API is down)
        grafana = kube.get("services", NS, "grafana")
        assert grafana is not None
        grafana["metadata"]["labels"]["tier"] = "2"
        grafana = kube.update("services", grafana, manager="kubectl-edit")
        svc0 = kube.get("services", NS, "svc0")
        assert svc0 is not None
        svc0["metadata"]["labels"]["team"] = "media"
        kube.update("services", svc0, manager="kubectl-edit")
        kube.delete("endpointslices", NS, "svc3-v4-8080")
        # writes pending: the sink tries, fails, the runtime backs off
        await until(lambda: the_sink(app).outage.writes >= 3, DEADLINE)
        kube.start()
        await until(lambda: holds(kube, *wanted.values()), DEADLINE)
        assert kube.get("services", NS, "grafana") == grafana
        svc0 = kube.get("services", NS, "svc0")
        assert svc0 is not None and svc0["metadata"]["labels"]["team"] == "media"
        assert ("DELETE", f"{SERVICES_PATH}/svc1") in {(w.method, w.path) for w in kube.writes()}
        assert {w.path for w in kube.writes() if w.method == "DELETE"} == {f"{SERVICES_PATH}/svc1"}
        await until(lambda: kube.active_watches >= 2, DEADLINE)
        await assert_idle(kube, app)
    retrying = [
        x for x in caplog.records if x.name.startswith("urllib3") and "Retrying" in x.message
    ]
    assert retrying == []
    sink_lines = [
        x.getMessage() for x in caplog.records if x.name.startswith("consul_sync.kubernetes")
    ]
    sink_warnings = [
        x.getMessage()
        for x in caplog.records
        if x.name.startswith("consul_sync.kubernetes") and x.levelno >= logging.WARNING
    ]
    assert len([m for m in sink_lines if "Kubernetes API unavailable" in m]) == 1
    assert len([m for m in sink_lines if "Kubernetes API answers again" in m]) == 1
    summary = next(m for m in sink_lines if "Kubernetes API answers again" in m)
    assert " writes retried" in summary
    # per-request details only at debug
    assert all("unavailable" in m or "answers again" in m for m in sink_warnings if "watch" in m)


async def test_foreign_service_created_between_watch_events(kube: KubeDouble) -> None:
    app = kube_app(kube)
    db = service("db", "10.0.0.1")
    publish(app, db)
    async with running(app):
        await until(lambda: holds(kube, db), DEADLINE)
        await until(lambda: kube.active_watches >= 2, DEADLINE)
        # somebody creates "web" and our watch has not shown it yet...
        kube.hold_watches()
        web_theirs = foreign_service(kube, "web")
        # ... when "web" appears in the source
        await source(app).push(upsert=[service("web", "10.0.0.2")])
        await until(
            lambda: metric(app, "consul_sync_sink_conflicts", sink="kubernetes") == 1, DEADLINE
        )
        kube.release_watches()
        # left alone: labels, annotations, managedFields, resourceVersion
        assert kube.get("services", NS, "web") == web_theirs
        assert addresses_of(kube, "web") == []
        assert [e["reason"] for e in kube.list("events", NS)] == ["NameConflict"]
        assert holds(kube, db)
        # the one write that reached "web": our POST, refused (409 AlreadyExists)
        assert [
            (e.method, e.status)
            for e in kube.exchanges
            if e.method in ("POST", "PUT", "PATCH", "DELETE") and "web" in (e.name, _posted_name(e))
        ] == [("POST", 409)]
        await assert_idle(kube, app)
        assert kube.get("services", NS, "web") == web_theirs


def _posted_name(exchange: Any) -> str:
    try:
        return str(json.loads(exchange.body or b"{}").get("metadata", {}).get("name", ""))
    except ValueError:
        return ""


async def test_refused_addresses_left_out(
    kube: KubeDouble, caplog: pytest.LogCaptureFixture
) -> None:
    app = kube_app(kube)
    refused = [
        "127.0.0.1",
        "::1",
        "169.254.1.1",
        "fe80::1",
        "fe80::1%eth0",
        "224.0.0.251",
        "0.0.0.0",
    ]
    web = service("web", "10.0.0.1", "fd00::1", *refused)
    local = service("local", "127.0.0.1", "::1")  # every instance refused
    publish(app, web, local)
    assert await _once(app) == EXIT_OK  # run --once
    assert all(e.status != 422 for e in kube.exchanges)  # the API never refused anything
    assert addresses_of(kube, "web") == ["10.0.0.1", "fd00::1"]
    assert kube.get("services", NS, "local") is not None
    assert addresses_of(kube, "local") == []
    assert (
        metric(app, "consul_sync_kubernetes_skipped_total", sink="kubernetes", what="endpoint")
        == len(refused) + 2
    )
    warnings = [x.getMessage() for x in caplog.records if x.levelno == logging.WARNING]
    for address in refused:
        assert any(f"service {NS}/web: instance {address!r} left out: " in m for m in warnings)
    assert any("loopback range" in m for m in warnings)

    # and live, through the runtime: converged, nothing rewritten over and over
    app = kube_app(kube)
    publish(app, web, local)
    async with running(app):
        await until(lambda: app.runtime.readiness()[0], DEADLINE)
        assert app.runtime.states["kubernetes"].failing == {}
        await assert_idle(kube, app)
    assert all(e.status != 422 for e in kube.exchanges)
