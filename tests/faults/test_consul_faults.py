"""Consul faults, one test per row of the operations fault table: the
real ``ConsulSource`` against the Consul double over loopback (through the
runtime into a ``FakeSink`` where deletes matter).  Each test asserts that
consul-sync converges, and what must not happen meanwhile: nothing wrongly
deleted, no busy loop, no complete snapshot built on stale knowledge.
Every test runs against an agent over http, https and a unix socket.
Over 400 lines: the rows of one table, with the helpers they share."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from consul_sync import Duration
from consul_sync.config import Settings
from consul_sync.metrics import Metrics
from consul_sync.model import Action, DesiredService, ServiceKey
from consul_sync.plugins import make_plugin_manager
from consul_sync.runtime import Runtime
from consul_sync.testing import FakeSink
from consul_sync_consul.source import ConsulSource
from tests.consul.helpers import NS, Collector, captured, counter, make_source, ready, running
from tests.consul.schemes import double_options_fixture, pki_fixture  # noqa: F401
from tests.fakes.consul_double import ConsulDouble, FaultKind

pytestmark = pytest.mark.anyio

TAG = ["kubernetes"]
ERRORS = "consul_sync_consul_errors_total"
#: Generous deadline for convergence (a condition is waited on, never timed).
DEADLINE = 30.0
#: Most errors the source may count in an idle second while Consul fails:
#: three watches backing off (0.05 s doubling to 0.3 s, jittered) make a
#: handful each; a busy loop makes thousands.
MAX_ERRORS_PER_IDLE_SECOND = 100

SERVICES = {"web": "10.1.0.11", "db": "10.1.0.20", "api": "10.1.0.30", "cache": "10.1.0.40"}
READ_RULES = 'service_prefix "" { policy = "read" }\nnode_prefix "" { policy = "read" }'


def register_all(consul: ConsulDouble, **changed: str) -> None:
    """The four tagged services, one instance each (``changed``: other addresses)."""
    for name, address in SERVICES.items():
        consul.register(name, service_id=f"{name}-1", address=changed.get(name, address),
                        port=8080, tags=TAG, status="passing")  # fmt: skip


@pytest.fixture
def consul(double_options: dict[str, Any]) -> Iterator[ConsulDouble]:
    with ConsulDouble(seed=13, **double_options) as double:
        register_all(double)
        yield double
        assert double.errors == []


async def until(predicate: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    with anyio.move_on_after(timeout):
        while not predicate():
            await anyio.sleep(0.02)
        return
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def addresses(sink: FakeSink) -> dict[str, set[str]]:
    """Sink contents: name -> endpoint addresses."""
    return {key[1]: {e.address for e in svc.endpoints} for key, svc in sink.owned().items()}


def deletes(sink: FakeSink) -> set[ServiceKey]:
    return {w.key for w in sink.writes if w.action is Action.DELETE}


@asynccontextmanager
async def synced(source: ConsulSource, sink: FakeSink, metrics: Metrics) -> AsyncIterator[Runtime]:
    """The runtime with ``source`` and ``sink``, running until the block ends."""
    settings = Settings(coalesce_window=Duration(0.01))
    pm = make_plugin_manager(entry_points=False)
    runtime = Runtime(settings, [source], [sink], pm, metrics)
    async with anyio.create_task_group() as tg:
        await tg.start(runtime.run)
        try:
            yield runtime
        finally:
            runtime.stop()
            tg.cancel_scope.cancel()


def source_complete(runtime: Runtime) -> bool:
    snapshot = runtime.snapshots.get("consul")
    return snapshot is not None and snapshot.complete


async def assert_retrying_without_spinning(metrics: Metrics) -> None:
    """Consul fails: the source keeps trying (another error comes) and backs
    off (a handful of errors in an idle second, not a loop)."""
    before = counter(metrics, ERRORS)
    await anyio.sleep(1.0)
    errors = counter(metrics, ERRORS) - before
    assert errors <= MAX_ERRORS_PER_IDLE_SECOND, errors
    await until(lambda: counter(metrics, ERRORS) > before, "another attempt")


async def assert_idle(source: ConsulSource, consul: ConsulDouble, sink: FakeSink | None) -> None:
    """Converged and nothing changes: no read, sweep or write in a second,
    and the watches stay parked (a request or two, not a loop).

    First the work the last change set off (a read, a recheck) is let finish: the counters
    must hold still for a moment (waited for, with a deadline), then the idle second counts."""
    with anyio.fail_after(DEADLINE):
        while True:
            before = (source.reads, source.sweeps, source.scans)
            await anyio.sleep(0.3)
            if (source.reads, source.sweeps, source.scans) == before:
                break
    reads, sweeps, scans = source.reads, source.sweeps, source.scans
    writes = len(sink.writes) if sink is not None else 0
    consul.clear_requests()
    await anyio.sleep(1.0)
    assert (source.reads, source.sweeps, source.scans) == (reads, sweeps, scans)
    assert (len(sink.writes) if sink is not None else 0) == writes
    assert len(consul.requests) <= 6, [r.path for r in consul.requests]


def stale_complete(seen: Collector, start: int, fresh: Callable[[Any], bool]) -> list[int]:
    """Complete snapshots from ``start`` on that are not ``fresh`` although
    an earlier one already was (the source went back on what it knew)."""
    bad: list[int] = []
    converged = False
    for i, snapshot in enumerate(seen.snapshots[start:], start):
        if not snapshot.complete:
            continue
        if fresh(snapshot):
            converged = True
        elif converged:
            bad.append(i)
    return bad


# --- Consul unreachable ------------------------------------------------------


async def test_consul_down_at_start(double_options: dict[str, Any]) -> None:
    metrics = Metrics()
    sink = FakeSink()
    # what a previous run wrote: kept until Consul can say otherwise
    old = DesiredService(name="web", namespace=NS, ports=[], endpoints=[], sources=["consul"])
    gone = DesiredService(name="gone", namespace=NS, ports=[], endpoints=[], sources=["consul"])
    sink.add_owned(old)
    sink.add_owned(gone)
    with ConsulDouble(seed=13, **double_options) as consul:
        register_all(consul)
        consul.stop()  # the port is kept: Consul comes back where it was
        source = make_source(consul, metrics=metrics, wait=2, timeout=0.5)
        async with synced(source, sink, metrics) as runtime:
            await until(lambda: "consul" in runtime.snapshots, "a first (incomplete) snapshot")
            await until(lambda: counter(metrics, ERRORS) >= 3, "failed attempts")
            assert not source_complete(runtime)
            assert not runtime.readiness()[0]  # not ready: no complete snapshot yet
            await assert_retrying_without_spinning(metrics)
            assert sink.writes == []  # nothing deleted, nothing written on no knowledge
            # it comes back loaded: its reads of each service are slow, so the
            # catalog and the health watch answer long before them
            slow = consul.inject_fault(
                "delay", path_prefix="/v1/health/service/", seconds=0.3, times=None
            )
            consul.start()
            await until(
                lambda: addresses(sink) == {n: {a} for n, a in SERVICES.items()},
                "the sink to hold Consul's services",
            )
            assert slow.hits >= len(SERVICES)
            consul.clear_faults()
            await anyio.sleep(1.0)  # slow reads still on their way settle
            await until(lambda: source_complete(runtime), "the source complete")
            await until(lambda: runtime.readiness()[0], "ready")
            # the object Consul does not know is pruned only now, with full knowledge
            assert deletes(sink) == {(NS, "gone")}
            await assert_idle(source, consul, sink)


async def test_consul_down_mid_run(consul: ConsulDouble) -> None:
    metrics = Metrics()
    sink = FakeSink()
    source = make_source(consul, metrics=metrics, wait=2, timeout=0.5)
    async with synced(source, sink, metrics) as runtime:
        await until(lambda: len(addresses(sink)) == 4, "the first sync")
        consul.stop()
        await until(lambda: not source_complete(runtime), "the source incomplete")
        # changes nobody can see while Consul is down
        consul.deregister("db-1")
        consul.register("web", service_id="web-1", address="10.1.0.99", port=8080, tags=TAG,
                        status="passing")  # fmt: skip
        consul.set_check("service:api-1", "critical")
        await assert_retrying_without_spinning(metrics)
        assert deletes(sink) == set()  # the last good state stays
        assert addresses(sink)["web"] == {"10.1.0.11"}
        assert runtime.readiness()[0]  # still serving what it knew
        consul.start()
        await until(
            lambda: (
                source_complete(runtime)
                and addresses(sink) == {"web": {"10.1.0.99"}, "api": {"10.1.0.30"},
                                        "cache": {"10.1.0.40"}}
                and not any(e.ready for e in sink.owned()[(NS, "api")].endpoints)
            ),
            "convergence after Consul came back",
        )  # fmt: skip
        assert deletes(sink) == {(NS, "db")}  # deregistered meanwhile: the only delete
        await assert_idle(source, consul, sink)


# --- ACLs --------------------------------------------------------------------


@pytest.fixture
def acl_consul(double_options: dict[str, Any]) -> Iterator[ConsulDouble]:
    with ConsulDouble(
        acl=True, management_token="management-secret-0001", seed=5, **double_options
    ) as double:
        double.create_policy("read-only", READ_RULES)
        register_all(double)
        yield double
        assert double.errors == []


def token_source(consul: ConsulDouble, token_file: Path, metrics: Metrics) -> ConsulSource:
    source = make_source(consul, metrics=metrics, token_file=str(token_file), wait=2)
    source.token_poll = 0.05
    return source


async def test_acl_empty_answer(acl_consul: ConsulDouble, tmp_path: Path) -> None:
    consul = acl_consul
    read, none = consul.create_token(["read-only"]), consul.create_token([])
    token_file = tmp_path / "token"
    token_file.write_text(read)
    metrics = Metrics()
    sink = FakeSink()
    source = token_source(consul, token_file, metrics)
    async with synced(source, sink, metrics) as runtime:
        await until(lambda: len(addresses(sink)) == 4, "the first sync")
        token_file.write_text(none)  # the token loses every right: 200 {} and []
        await until(
            lambda: (
                counter(metrics, "consul_sync_source_suddenly_empty_total", source="consul") >= 1
            ),
            "the empty answer noticed",
        )
        await until(lambda: not source_complete(runtime), "the source incomplete")
        consul.register(
            "web", service_id="web-1", address="10.1.0.99", port=8080, tags=TAG, status="passing"
        )  # fmt: skip  (unseen meanwhile)
        consul.clear_requests()
        await anyio.sleep(1.0)
        # an empty answer still has a real index: the watches block, no loop
        assert consul.request_count("/v1/catalog/services") <= 3
        assert deletes(sink) == set()
        assert len(addresses(sink)) == 4
        token_file.write_text(read)
        await until(
            lambda: source_complete(runtime) and addresses(sink)["web"] == {"10.1.0.99"},
            "convergence once the token reads again",
        )
        assert deletes(sink) == set()
        await assert_idle(source, consul, sink)


async def test_acl_403(acl_consul: ConsulDouble, tmp_path: Path) -> None:
    consul = acl_consul
    read = consul.create_token(["read-only"])
    token_file = tmp_path / "token"
    token_file.write_text(read)
    metrics = Metrics()
    sink = FakeSink()
    source = token_source(consul, token_file, metrics)
    with captured() as lines:
        async with synced(source, sink, metrics) as runtime:
            await until(lambda: len(addresses(sink)) == 4, "the first sync")
            token_file.write_text("00000000-dead-beef-0000-000000000000")  # unknown: 403
            await until(lambda: not source_complete(runtime), "the source incomplete")
            consul.deregister("db-1")  # unseen meanwhile
            await assert_retrying_without_spinning(metrics)
            assert deletes(sink) == set()
            token_file.write_text(read)
            await until(
                lambda: source_complete(runtime) and set(addresses(sink)) == {"web", "api",
                                                                              "cache"},
                "convergence once the token is known again",
            )  # fmt: skip
            assert deletes(sink) == {(NS, "db")}
            await assert_idle(source, consul, sink)
    assert any("403" in line and str(token_file) in line for line in lines)
    assert not any(read in line for line in lines)


# --- the instance scan's answer is broken ----------------------------------------


@pytest.mark.parametrize("kind", ["truncated_json", "malformed_json"])
async def test_a_broken_instance_scan_answer_during_an_in_place_change(
    consul: ConsulDouble, kind: FaultKind
) -> None:
    """catalog/node-services is decoded from its bytes (msgspec, or json): an answer that
    does not decode fails the scan, which falls back to finding the change another way.
    Nothing is deleted, the change arrives, nothing loops."""
    source, sink, metrics = make_source(consul), FakeSink(), Metrics()
    async with synced(source, sink, metrics):
        await until(lambda: addresses(sink).get("web") == {"10.1.0.11"}, "the first sync")
        scans = source.scans
        consul.inject_fault(kind, times=None, path_prefix="/v1/catalog/node-services/")
        consul.register("web", service_id="web-1", address="10.1.0.99", port=8080, tags=TAG,
                        status="passing")  # fmt: skip
        await until(lambda: addresses(sink).get("web") == {"10.1.0.99"}, "web-1 moved")
        assert source.scans == scans  # no scan got through: the fallback found it
        assert deletes(sink) == set()
        assert set(addresses(sink)) == set(SERVICES)
        await assert_idle(source, consul, sink)
        consul.clear_faults()
        consul.register("db", service_id="db-1", address="10.1.0.21", port=8080, tags=TAG,
                        status="passing")  # fmt: skip
        await until(lambda: addresses(sink).get("db") == {"10.1.0.21"}, "db-1 moved")
        assert source.scans > scans  # the scan is back in use
        assert deletes(sink) == set()


# --- the index goes backwards --------------------------------------------------


async def test_consul_index_reset_with_in_place_changes(consul: ConsulDouble) -> None:
    consul.add_node("node-b", "10.2.0.1")
    consul.register("nas", service_id="nas-b", address="", port=5000, tags=TAG, node="node-b")
    consul.register("plain", service_id="plain-1", address="10.1.0.50", port=9000, tags=TAG)
    saved = consul.save_snapshot()
    # Later history, which the restore takes back: in-place changes only (the
    # catalog body, names and tags, stays the same).
    consul.register("web", service_id="web-1", address="10.1.0.99", port=8080, tags=TAG,
                    status="passing")  # fmt: skip
    consul.register("plain", service_id="plain-1", address="10.1.0.50", port=9001, tags=TAG,
                    meta={"k8s-port-name": "grpc"})  # fmt: skip
    consul.add_node("node-b", "10.2.0.2")
    consul.bump_index(50)
    source = make_source(consul)
    async with running(source) as seen:
        assert ready(seen.endpoints("web")) == {"10.1.0.99": True}
        assert seen.last.services[(NS, "plain")].ports[0].port == 9001
        assert set(ready(seen.endpoints("nas"))) == {"10.2.0.2"}
        names = seen.names()
        start = len(seen.snapshots)
        consul.restore_snapshot(saved)  # every index goes back

        def restored(snapshot: Any) -> bool:
            def port(name: str) -> Any:
                return snapshot.services[(NS, name)].ports[0]

            web = {e.address for e in snapshot.services[(NS, "web")].endpoints}
            nas = {e.address for e in snapshot.services[(NS, "nas")].endpoints}
            return (
                web == {"10.1.0.11"}
                and nas == {"10.2.0.1"}
                and port("plain").port == 9000
                and port("plain").name == "http"
            )

        await seen.until(
            lambda s: s.complete and restored(s), DEADLINE, "the restored catalog published"
        )
        assert all(s.services.keys() >= {(NS, n) for n in names} for s in seen.snapshots[start:])
        assert stale_complete(seen, start, restored) == []
        # and the restored history goes on: a later in-place change is seen
        consul.register("web", service_id="web-1", address="10.1.0.12", port=8080, tags=TAG,
                        status="passing")  # fmt: skip
        await seen.until(
            lambda s: ready(seen.endpoints("web")) == {"10.1.0.12": True}, DEADLINE, "web-1 moved"
        )
        await assert_idle(source, consul, None)


async def test_agent_restart_with_empty_catalog(
    consul: ConsulDouble, double_options: dict[str, Any]
) -> None:
    metrics = Metrics()
    sink = FakeSink()
    source = make_source(consul, metrics=metrics, wait=2, timeout=0.5)
    async with synced(source, sink, metrics) as runtime:
        await until(lambda: len(addresses(sink)) == 4, "the first sync")
        # A dev agent restarted: its catalog is back to {"consul": []} at index 11.
        consul.stop()
        with ConsulDouble(port=consul.port, seed=17, **double_options) as fresh:
            await until(
                lambda: source_complete(runtime) and not runtime.snapshots["consul"].services,
                "the empty catalog seen (a complete answer: Consul lists itself)",
            )
            await until(
                lambda: counter(metrics, "consul_sync_prune_guard_trips_total", sink="fake") >= 1,
                "the prune guard",
            )
            await anyio.sleep(0.5)
            assert deletes(sink) == set()  # the guard kept every object
            assert len(addresses(sink)) == 4
            # the agents re-register their services (anti-entropy), one elsewhere
            register_all(fresh, web="10.1.0.98")
            await until(
                lambda: addresses(sink) == {**{n: {a} for n, a in SERVICES.items()},
                                            "web": {"10.1.0.98"}},
                "convergence after re-registration",
            )  # fmt: skip
            assert deletes(sink) == set()
            assert source_complete(runtime)
            await assert_idle(source, fresh, sink)
            assert fresh.errors == []


# --- the health watch ----------------------------------------------------------


async def test_health_watch_outage_flip_meanwhile(consul: ConsulDouble) -> None:
    consul.register("web", service_id="web-2", address="10.1.0.12", port=8080, tags=TAG,
                    status="passing")  # fmt: skip
    consul.register(
        "other", service_id="other-1", address="10.1.0.60", port=80, status="passing"
    )  # fmt: skip  (untagged)
    metrics = Metrics()
    source = make_source(consul, metrics=metrics, wait=2)
    async with running(source) as seen:
        assert ready(seen.endpoints("web")) == {"10.1.0.11": True, "10.1.0.12": True}
        names = seen.names()
        consul.inject_fault("error", times=None, path_prefix="/v1/health/state/", status=500)
        # An unrelated check wakes the parked health watch; its next read fails.
        consul.set_check("service:other-1", "warning")
        await seen.until(lambda s: not s.complete, DEADLINE, "incomplete during the outage")
        consul.set_check("service:web-1", "critical")  # unseen: the watch is down
        await assert_retrying_without_spinning(metrics)
        assert not seen.last.complete
        start = len(seen.snapshots)
        consul.clear_faults()

        def flipped(snapshot: Any) -> bool:
            endpoints = snapshot.services[(NS, "web")].endpoints
            return {e.address: e.ready for e in endpoints} == {
                "10.1.0.11": False,
                "10.1.0.12": True,
            }

        await seen.until(
            lambda s: s.complete and flipped(s), DEADLINE, "the flip seen after recovery"
        )
        # never complete with web-1 still ready once the watch was back
        assert [i for i in range(start, len(seen.snapshots))
                if seen.snapshots[i].complete and not flipped(seen.snapshots[i])] == []  # fmt: skip
        assert all(s.services.keys() == {(NS, n) for n in names} for s in seen.snapshots)
        await assert_idle(source, consul, None)
