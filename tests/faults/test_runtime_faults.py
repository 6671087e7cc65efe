"""Fault matrix, runtime rows: retries that end, the prune budget over time,
merged sources of which one is unreachable.

Each test injects the fault through the public fake plugins and asserts
convergence *and* what must not happen (no busy loop, nothing wrongly
deleted).  docs/operations.md has the table these rows belong to.
"""

from __future__ import annotations

import io
import time

import anyio
import attrs
import pytest

from consul_sync import SinkError
from consul_sync.cli import _plan
from consul_sync.model import Action, DesiredService, Endpoint, Observed, Port
from consul_sync.testing import FakeSink, service
from tests.core.helpers import fake_app, metric, sink, source, until

pytestmark = pytest.mark.anyio

KEY = ("network", "flaky")


def failed_creates(app) -> float:  # type: ignore[no-untyped-def]
    return metric(
        app, "consul_sync_sink_changes_total", sink="sink", action="create", status="error"
    )


async def idle_passes(app, seconds: float = 1.0) -> int:  # type: ignore[no-untyped-def]
    """Reconciler passes while nothing happens (resync is far away), counted
    once a pass that was ending has ended."""
    await anyio.sleep(0.1)
    before = app.runtime.passes
    await anyio.sleep(seconds)
    return app.runtime.passes - before


async def failing_key_app(dst_fail: SinkError):  # type: ignore[no-untyped-def]
    app = fake_app(retry_base="20ms", retry_max="50ms")
    src, dst = source(app), sink(app)
    src.services = {s.key: s for s in [service("flaky", "10.0.0.1"), service("ok", "10.0.0.2")]}
    dst.failures[KEY] = dst_fail
    return app, src, dst


@pytest.mark.parametrize("trigger", ["gone-from-source", "now-a-conflict", "sink-inactive"])
async def test_a_retry_ends_when_its_key_has_nothing_left_to_do(trigger: str) -> None:
    """API blip: a write fails and is retried; then the retry has nothing to
    do any more.  The reconciler must go quiet, not spin on the retry."""
    app, src, dst = await failing_key_app(SinkError("API unreachable", retryable=True))
    async with anyio.create_task_group() as tg:
        await tg.start(app.runtime.run)
        await until(lambda: ("network", "ok") in dst.owned())
        await until(lambda: failed_creates(app) >= 2)
        if trigger == "gone-from-source":
            await src.push(remove=[KEY])  # deregistered while the API was down
        elif trigger == "now-a-conflict":
            dst.add_foreign(KEY)  # somebody else created it meanwhile
        else:
            dst.active = False  # type: ignore[attr-defined]  # lost leadership
        del dst.failures[KEY]  # the API is back
        state = app.runtime.states["sink"]
        # whatever was due has run, and ended the retry
        await until(lambda: KEY not in state.retries and KEY not in state.failing)
        assert await idle_passes(app) == 0  # no busy loop
        # and nothing was written on its behalf
        assert KEY not in dst.owned()
        if trigger == "now-a-conflict":
            assert not dst.objects[KEY].owned
        app.runtime.stop()


async def test_an_unreachable_sink_backs_off_instead_of_spinning() -> None:
    app = fake_app(retry_base="200ms", retry_max="400ms")
    src, dst = source(app), sink(app)
    src.services = {s.key: s for s in [service("a", "10.0.0.1")]}
    async with anyio.create_task_group() as tg:
        await tg.start(app.runtime.run)
        await until(lambda: dst.count() == 1)
        dst.fail_observe = ConnectionError("api server down")
        await src.push(upsert=[service("a", "10.0.0.9")])
        await until(lambda: len(app.runtime.states["sink"].retries) == 1)
        # at most a handful of attempts per second with backoff, never a spin
        assert await idle_passes(app) <= 6
        dst.fail_observe = None
        await until(lambda: dst.owned()[("network", "a")].endpoints[0].address == "10.0.0.9")
        await anyio.sleep(0.1)
        assert await idle_passes(app, 0.5) == 0
        app.runtime.stop()


async def test_trickling_mass_deregistration_is_held_to_the_window_budget(caplog) -> None:
    """Registrator stops containers one by one: every pass holds a few
    deletes, yet the window's budget (half of the 12 owned) holds."""
    # The first three batches must come within one window: 2 s is ample margin
    # for a loaded machine, and the two rolls are all the test waits for.
    app = fake_app(prune_window="2s")
    src, dst = source(app), sink(app)
    twelve = [service(f"s{i:02}", f"10.0.0.{i}") for i in range(12)]
    src.services = {s.key: s for s in twelve}
    deleted_at: list[float] = []
    real_apply = dst.apply

    async def apply(change):  # type: ignore[no-untyped-def]
        await real_apply(change)
        if change.action is Action.DELETE:
            deleted_at.append(time.monotonic())

    dst.apply = apply  # type: ignore[method-assign]
    async with anyio.create_task_group() as tg:
        await tg.start(app.runtime.run)
        await until(lambda: dst.count() == 12)
        for batch in range(4):  # 3 at a time, each batch in a pass of its own
            await src.push(remove=[s.key for s in twelve[batch * 3 : batch * 3 + 3]])
            await until(
                lambda b=batch: (
                    len(deleted_at) == 3 * (b + 1)  # type: ignore[misc]
                    if b < 2
                    else metric(app, "consul_sync_prune_held", sink="sink") == 3 * (b - 1)
                )
            )
        # the first two batches fit the budget (6 of 12); the next two are held
        assert len(deleted_at) == 6
        ready, why = app.runtime.readiness()
        assert ready and "6 deletes held" in why  # still serving: 200
        assert metric(app, "consul_sync_prune_guard_trips_total", sink="sink") == 1
        assert sum("deletes held" in r.getMessage() for r in caplog.records) == 1
        # the window rolls: half of the 6 left, then the floor of 3
        await until(lambda: len(dst.owned()) == 0)
        assert len(deleted_at) == 12
        assert deleted_at[6] - deleted_at[0] >= 2.0  # not before the first window rolled
        assert deleted_at[9] - deleted_at[6] >= 2.0
        await until(lambda: metric(app, "consul_sync_prune_held", sink="sink") == 0)
        assert app.runtime.readiness() == (True, "ready")
        assert await idle_passes(app, 0.5) == 0
        app.runtime.stop()


async def test_held_deletes_of_a_service_that_returns_are_dropped() -> None:
    app = fake_app()
    src, dst = source(app), sink(app)
    ten = [service(f"s{i}", f"10.0.0.{i}") for i in range(10)]
    src.services = {s.key: s for s in ten}
    async with anyio.create_task_group() as tg:
        await tg.start(app.runtime.run)
        await until(lambda: dst.count() == 10)
        await src.push([])  # an agent restarted empty (dev mode)
        await until(lambda: metric(app, "consul_sync_prune_held", sink="sink") == 10)
        assert dst.count(Action.DELETE) == 0
        await src.push(ten)  # Registrator registers them again
        await until(lambda: metric(app, "consul_sync_prune_held", sink="sink") == 0)
        assert sorted(dst.owned()) == sorted(s.key for s in ten)
        assert dst.count(Action.DELETE) == 0
        assert app.runtime.readiness() == (True, "ready")
        app.runtime.stop()


async def test_release_held_deletes_and_plan_lists_them() -> None:
    ten = [service(f"s{i}", f"10.0.0.{i}") for i in range(10)]

    def app_with_ten_owned():  # type: ignore[no-untyped-def]
        app = fake_app()
        for item in ten:
            sink(app).add_owned(item)
        source(app).services = {}
        return app

    out = io.StringIO()
    app = app_with_ten_owned()
    assert await _plan(app, out) == 2
    lines = out.getvalue().splitlines()
    assert sum(line.startswith("sink: held delete ") for line in lines) == 10
    assert not any(line.startswith("sink: delete ") for line in lines)
    assert sink(app).count() == 0  # plan writes nothing

    app = app_with_ten_owned()
    result = await app.runtime.run_once()
    assert result.ok and sink(app).count(Action.DELETE) == 0

    app = app_with_ten_owned()
    app.runtime.release_held = True
    result = await app.runtime.run_once()
    assert result.ok and sink(app).count(Action.DELETE) == 10


def merged(*endpoints: Endpoint) -> DesiredService:
    return DesiredService(
        name="web",
        namespace="network",
        ports=[Port("http", 8080)],
        endpoints=endpoints,
        sources=sorted({e.source for e in endpoints if e.source}),
    )


DC1 = Endpoint("10.0.1.1", source="src0")
DC2 = Endpoint("10.0.2.1", source="src1")
ONLY_DC2 = service("only-dc2", Endpoint("10.0.2.9", source="src1"), source="src1")


def merged_sink(app) -> FakeSink:  # type: ignore[no-untyped-def]
    dst = sink(app)
    dst.add_owned(merged(DC1, DC2))
    dst.add_owned(ONLY_DC2)
    return dst


async def test_one_of_two_merged_sources_unreachable_at_start() -> None:
    """run --once while the second agent is unreachable: exit 1, and the
    merged service keeps the second datacenter's endpoint."""
    app = fake_app(sources=2)
    first, second, dst = source(app, 0), source(app, 1), merged_sink(app)
    first.services = {("network", "web"): service("web", "10.0.1.1", source="src0")}
    second.fail_snapshot = ConnectionError("agent unreachable")
    result = await app.runtime.run_once()
    assert not result.ok  # exit 1: a source is incomplete
    assert dst.count() == 0  # web not shrunk, only-dc2 not deleted
    assert dst.owned()[("network", "web")] == merged(DC1, DC2)
    # the second agent answers again, without web: now its endpoint goes
    second.fail_snapshot = None
    second.services = {("network", "only-dc2"): service("only-dc2", "10.0.2.9", source="src1")}
    result = await app.runtime.run_once()
    assert result.ok
    assert [e.address for e in dst.owned()[("network", "web")].endpoints] == ["10.0.1.1"]


async def test_one_of_two_merged_sources_unreachable_mid_run() -> None:
    app = fake_app(sources=2)
    first, second, dst = source(app, 0), source(app, 1), merged_sink(app)
    first.services = {("network", "web"): service("web", "10.0.1.1", source="src0")}
    second.services = {
        ("network", "web"): service("web", "10.0.2.1", source="src1"),
        ("network", "only-dc2"): service("only-dc2", "10.0.2.9", source="src1"),
    }
    async with anyio.create_task_group() as tg:
        await tg.start(app.runtime.run)
        await until(lambda: app.runtime.readiness()[0])
        assert dst.count() == 0  # already as desired
        # the second agent fails and comes back knowing nothing (restarted
        # during the outage): its read is incomplete
        await second.push([], complete=False)
        # meanwhile the first datacenter's instance moves
        await first.push(upsert=[service("web", "10.0.1.7", source="src0")])
        await until(lambda: dst.count() == 1)
        web = dst.owned()[("network", "web")]
        assert [e.address for e in web.endpoints] == ["10.0.1.7", "10.0.2.1"]
        assert ("network", "only-dc2") in dst.owned()
        assert dst.count(Action.DELETE) == 0
        assert await idle_passes(app, 0.5) == 0
        # the second agent answers again (complete) and has neither any more:
        # its share goes now, without waiting for the resync
        await second.push([])
        await until(lambda: ("network", "only-dc2") not in dst.owned())
        await until(
            lambda: [e.address for e in dst.owned()[("network", "web")].endpoints] == ["10.0.1.7"]
        )
        app.runtime.stop()


async def test_a_sink_observed_read_keeps_the_unknown_source_untouched() -> None:
    """Endpoints a sink reads back with no attribution are never kept on
    behalf of an incomplete source (nothing to attribute them to)."""
    app = fake_app(sources=2)
    dst = sink(app)
    plain = merged(attrs.evolve(DC1, source=None))
    dst.objects[plain.key] = Observed(plain.key, True, plain, ("src0",))
    source(app, 0).services = {plain.key: service("web", "10.0.1.2", source="src0")}
    source(app, 1).fail_snapshot = ConnectionError("down")
    await app.runtime.run_once()
    assert [e.address for e in dst.owned()[plain.key].endpoints] == ["10.0.1.2"]


async def test_an_outage_logs_one_line_and_a_summary(caplog) -> None:
    """Many writes failing over several attempts: one warning when the
    outage starts, one summary when writes succeed again."""
    app = fake_app(retry_base="20ms", retry_max="50ms")
    src, dst = source(app), sink(app)
    keys = [("network", f"s{i}") for i in range(5)]
    for key in keys:
        dst.failures[key] = SinkError("Kubernetes API busy or unreachable", retryable=True)
    src.services = {k: service(k[1], f"10.0.0.{i}") for i, k in enumerate(keys)}
    with caplog.at_level("DEBUG", logger="consul_sync.runtime"):
        async with anyio.create_task_group() as tg:
            await tg.start(app.runtime.run)
            await until(lambda: failed_creates(app) >= 15)
            dst.failures.clear()
            await until(lambda: len(dst.owned()) == 5)
            app.runtime.stop()
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "failed" in r.msg]
    assert len(warnings) == 1
    summaries = [r.getMessage() for r in caplog.records if "succeed again" in r.getMessage()]
    assert len(summaries) == 1 and "failed writes were retried" in summaries[0]


async def test_what_the_sink_reported_itself_is_not_told_again(caplog) -> None:
    """A sink that tells an outage in its own words (SinkError.reported):
    the runtime keeps the failed writes at debug and adds no summary."""
    app = fake_app(retry_base="20ms", retry_max="50ms")
    src, dst = source(app), sink(app)
    dst.failures[KEY] = SinkError("API unavailable", retryable=True, reported=True)
    src.services = {KEY: service("flaky", "10.0.0.1")}
    with caplog.at_level("DEBUG", logger="consul_sync.runtime"):
        async with anyio.create_task_group() as tg:
            await tg.start(app.runtime.run)
            await until(lambda: len(app.runtime.states["sink"].retries) == 1)
            await anyio.sleep(0.2)
            dst.failures.clear()
            await until(lambda: KEY in dst.owned())
            app.runtime.stop()
    failures = [r for r in caplog.records if "failed (attempt" in r.msg]
    assert failures and all(r.levelname == "DEBUG" for r in failures)
    assert not any("succeed again" in r.getMessage() for r in caplog.records)
