"""The runtime, driven through fake source and sink plugins registered the
way a third-party plugin would be.

Over 400 lines: one short test per behaviour of the one runtime (passes,
coalescing, readiness, retries, stop, resync, hooks), all on the same fake app.
"""

from __future__ import annotations

import logging

import anyio
import pytest

from consul_sync import SinkError, hookimpl
from consul_sync.model import Action
from consul_sync.testing import service

from .helpers import DEADLINE, fake_app, metric, sink, source, until

pytestmark = pytest.mark.anyio


class CountingTransform:
    """Counts which services are re-planned (the transform hook runs per planned key)."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    @hookimpl
    def consul_sync_transform_service(self, service):
        self.seen.append(service.name)


async def test_a_plugin_defined_in_the_tests_is_used_by_the_runtime() -> None:
    app = fake_app()
    src, dst = source(app), sink(app)
    src.services = {s.key: s for s in [service("web", "10.0.0.1")]}
    async with anyio.create_task_group() as tg:
        await tg.start(app.runtime.run)
        await until(lambda: dst.count() == 1)
        app.runtime.stop()
    assert dst.owned()[("network", "web")].endpoints[0].address == "10.0.0.1"
    assert dst.closed and src.closed


async def test_incremental_change_writes_exactly_the_affected_objects() -> None:
    counter = CountingTransform()
    app = fake_app(plugins=(counter,))
    src, dst = source(app), sink(app)
    initial = [service(f"s{i}", f"10.0.0.{i}") for i in range(50)]
    src.services = {s.key: s for s in initial}
    async with anyio.create_task_group() as tg:
        await tg.start(app.runtime.run)
        await until(lambda: app.runtime.readiness()[0])  # the first full pass is over
        assert dst.count() == 50
        passes = app.runtime.passes
        observes = len(dst.observes)
        counter.seen.clear()
        await src.push(upsert=[service("s7", "10.0.9.9")])
        await until(lambda: dst.count() == 51)
        await until(lambda: app.runtime.passes > passes)  # it ends a moment after its write
        await anyio.sleep(0.05)
        assert [(w.action, w.key[1]) for w in dst.writes[50:]] == [(Action.UPDATE, "s7")]
        assert counter.seen == ["s7"]  # only the changed service was re-planned
        assert app.runtime.passes == passes + 1
        # an incremental pass reads the sink's cached view, never afresh
        assert dst.observes[observes:] == [False]
        # a full snapshot where one service changed is also planned incrementally
        changed = dict(src.services)
        changed[("network", "s3")] = service("s3", "10.0.8.8")
        counter.seen.clear()
        await src.push(changed.values())
        await until(lambda: dst.count() == 52)
        assert dst.writes[-1].key == ("network", "s3")
        assert counter.seen == ["s3"]
        app.runtime.stop()


async def test_no_change_resync_makes_zero_writes() -> None:
    app = fake_app()
    src, dst = source(app), sink(app)
    src.services = {s.key: s for s in [service(f"s{i}", f"10.0.0.{i}") for i in range(20)]}
    async with anyio.create_task_group() as tg:
        await tg.start(app.runtime.run)
        await until(lambda: app.runtime.readiness()[0])
        writes = dst.count()
        fresh = dst.observes.count(True)
        result = await app.runtime.full_pass(read_sources=True)
        assert dst.observes.count(True) == fresh + 1  # it did read the sink afresh
        assert result.ok and all(p.empty for p in result.plans.values())
        assert dst.count() == writes == 20
        app.runtime.stop()


async def test_bursts_are_coalesced_into_one_pass() -> None:
    app = fake_app(coalesce_window="100ms")
    src, dst = source(app), sink(app)
    async with anyio.create_task_group() as tg:
        await tg.start(app.runtime.run)
        await until(lambda: app.runtime.readiness()[0])
        passes = app.runtime.passes
        for i in range(10):
            await src.push(upsert=[service(f"b{i}", f"10.1.0.{i}")])
        await until(lambda: dst.count() == 10)
        # the pass ends (and is counted) a moment after its last write
        await until(lambda: app.runtime.passes > passes)
        await anyio.sleep(0.2)
        assert app.runtime.passes == passes + 1
        app.runtime.stop()


async def test_a_change_after_a_quiet_period_does_not_wait_for_the_window() -> None:
    """Leading-edge coalescing: the window only delays changes that come
    right behind another."""
    app = fake_app(coalesce_window="1h")
    src, dst = source(app), sink(app)
    async with anyio.create_task_group() as tg:
        await tg.start(app.runtime.run)
        await until(lambda: app.runtime.readiness()[0])
        app.runtime._last_pass_end = -1e9  # long quiet since the first pass
        await src.push(upsert=[service("lone", "10.1.0.1")])
        await until(lambda: dst.count() == 1)  # not in an hour
        # a change right behind it waits for the window (gathered)
        await src.push(upsert=[service("next", "10.1.0.2")])
        await anyio.sleep(0.3)
        assert dst.count() == 1
        app.runtime.stop()


async def test_a_pass_that_wrote_nothing_does_not_delay_the_next_change() -> None:
    app = fake_app(coalesce_window="1h")
    src, dst = source(app), sink(app)
    same = service("same", "10.1.0.9")
    src.services = {same.key: same}
    async with anyio.create_task_group() as tg:
        await tg.start(app.runtime.run)
        await until(lambda: app.runtime.readiness()[0])
        app.runtime._last_pass_end = -1e9  # long quiet since the first pass
        passes, writes = app.runtime.passes, dst.count()
        # a source re-publishes a service as it was: a pass, nothing to write
        await src.push(upsert=[same])
        await until(lambda: app.runtime.passes > passes)
        assert dst.count() == writes
        # the real change right behind it goes at once, not after an hour
        await src.push(upsert=[service("lone", "10.1.0.1")])
        await until(lambda: dst.count() == writes + 1)
        app.runtime.stop()


async def test_incomplete_snapshot_deletes_nothing() -> None:
    app = fake_app()
    src, dst = source(app), sink(app)
    src.services = {s.key: s for s in [service(f"s{i}", f"10.0.0.{i}") for i in range(3)]}
    async with anyio.create_task_group() as tg:
        await tg.start(app.runtime.run)
        await until(lambda: dst.count() == 3)
        await src.push([], complete=False)  # a failed read: nothing known
        await until(lambda: "incomplete sources" in app.runtime.readiness()[1])
        await app.runtime.full_pass(read_sources=False)
        assert dst.count(Action.DELETE) == 0
        assert len(dst.owned()) == 3
        assert metric(app, "consul_sync_source_complete", source="src0") == 0
        assert "incomplete sources" in app.runtime.readiness()[1]
        # once complete again, a real removal goes through
        await src.push([service("s0", "10.0.0.0"), service("s1", "10.0.0.1")])
        await until(lambda: dst.count(Action.DELETE) == 1)
        app.runtime.stop()


async def test_prune_guard_trips_and_is_reported(caplog) -> None:
    app = fake_app()
    src, dst = source(app), sink(app)
    src.services = {s.key: s for s in [service(f"s{i}", f"10.0.0.{i}") for i in range(10)]}
    async with anyio.create_task_group() as tg:
        await tg.start(app.runtime.run)
        await until(lambda: dst.count() == 10)
        with caplog.at_level(logging.WARNING):
            await src.push([])  # "everything deregistered" (an ACL-denied token looks so)
            await until(
                lambda: metric(app, "consul_sync_prune_guard_trips_total", sink="sink") >= 1
            )
        # more than the window's budget at once: nothing goes, all is held
        assert dst.count(Action.DELETE) == 0
        assert metric(app, "consul_sync_prune_withheld", sink="sink") == 10
        assert metric(app, "consul_sync_prune_held", sink="sink") == 10
        assert metric(app, "consul_sync_prune_guard_trips_total", sink="sink") == 1
        assert metric(app, "consul_sync_source_suddenly_empty_total", source="src0") == 1
        ready, why = app.runtime.readiness()
        assert ready and "prune guard" in why
        assert any("prune guard" in r.getMessage() for r in caplog.records)
        assert any("no services at all" in r.getMessage() for r in caplog.records)
        app.runtime.stop()


async def test_readiness_flips_only_after_every_source_and_the_first_apply() -> None:
    app = fake_app(sources=2)
    first, second, dst = source(app, 0), source(app, 1), sink(app)
    first.services = {s.key: s for s in [service("a", "10.0.0.1", source="src0")]}
    second.complete = False
    dst.delay = 0.2
    async with anyio.create_task_group() as tg:
        await tg.start(app.runtime.run)
        await until(lambda: "src0" in app.runtime.snapshots)
        await anyio.sleep(0.1)  # the reconciler had its chance
        ready, why = app.runtime.readiness()
        assert not ready and why == "waiting for a first complete snapshot from: src1"
        assert dst.count() == 0  # nothing is applied before every source spoke
        await second.push([service("b", "10.0.0.2", source="src1")])
        await until(lambda: dst.in_flight > 0)
        assert app.runtime.readiness() == (False, "first apply in progress")
        await until(lambda: app.runtime.readiness()[0])
        assert dst.count() == 2
        assert metric(app, "consul_sync_ready") == 1
        app.runtime.stop()


async def test_a_failing_item_is_retried_with_backoff_while_the_rest_proceeds() -> None:
    app = fake_app()
    src, dst = source(app), sink(app)
    dst.failures[("network", "bad")] = SinkError("boom", retryable=True)
    src.services = {s.key: s for s in [service("bad", "10.0.0.1"), service("good", "10.0.0.2")]}
    async with anyio.create_task_group() as tg:
        await tg.start(app.runtime.run)
        await until(lambda: ("network", "good") in dst.owned())

        def retries() -> float:
            return metric(
                app, "consul_sync_sink_changes_total", sink="sink", action="create", status="error"
            )

        await until(lambda: retries() >= 2)  # retried on its own, no new change needed
        assert metric(app, "consul_sync_reconcile_total", status="error") >= 1
        del dst.failures[("network", "bad")]
        await until(lambda: ("network", "bad") in dst.owned())
        app.runtime.stop()


async def test_a_rejected_item_is_not_retried_until_it_changes() -> None:
    app = fake_app()
    src, dst = source(app), sink(app)
    dst.failures[("network", "bad")] = SinkError("invalid", retryable=False)
    src.services = {s.key: s for s in [service("bad", "10.0.0.1"), service("good", "10.0.0.2")]}
    async with anyio.create_task_group() as tg:
        await tg.start(app.runtime.run)
        await until(lambda: ("network", "good") in dst.owned())

        def refusals() -> float:
            return metric(
                app, "consul_sync_sink_changes_total", sink="sink", action="create", status="error"
            )

        await until(lambda: refusals() >= 1)
        await anyio.sleep(0.3)  # several retry periods (50 ms here): none comes
        assert refusals() == 1
        del dst.failures[("network", "bad")]
        await src.push(upsert=[service("bad", "10.0.0.9")])
        await until(lambda: ("network", "bad") in dst.owned())
        app.runtime.stop()


async def test_writes_to_a_sink_are_bounded_by_its_concurrency() -> None:
    app = fake_app()
    src, dst = source(app), sink(app)
    dst.concurrency = 3
    app.runtime.states["sink"].limiter = anyio.CapacityLimiter(3)
    dst.delay = 0.02
    src.services = {s.key: s for s in [service(f"s{i}", f"10.0.0.{i}") for i in range(30)]}
    async with anyio.create_task_group() as tg:
        await tg.start(app.runtime.run)
        await until(lambda: dst.count() == 30)
        assert dst.peak_in_flight == 3
        app.runtime.stop()


async def test_stop_lets_in_flight_writes_finish_within_the_bound() -> None:
    app = fake_app(shutdown_timeout="1h")
    src, dst = source(app), sink(app)
    dst.delay = 0.3
    src.services = {s.key: s for s in [service(f"s{i}", f"10.0.0.{i}") for i in range(4)]}
    async with anyio.create_task_group() as tg:
        await tg.start(app.runtime.run)
        await until(lambda: dst.in_flight == 4)
        # stopped once the writes are done, long before the bound (an hour)
        with anyio.fail_after(DEADLINE):
            app.runtime.stop()
            await until(lambda: dst.in_flight == 0 and dst.closed)
    assert dst.finished_writes == 4  # finished, not torn


async def test_stop_abandons_writes_that_outlive_the_bound() -> None:
    app = fake_app(shutdown_timeout="200ms")
    src, dst = source(app), sink(app)
    dst.delay = 3600  # a write that would take an hour
    src.services = {s.key: s for s in [service("slow", "10.0.0.1")]}
    async with anyio.create_task_group() as tg:
        await tg.start(app.runtime.run)
        await until(lambda: dst.in_flight == 1)
        with anyio.fail_after(DEADLINE):  # abandoned at the bound, not waited for
            app.runtime.stop()
            await until(lambda: dst.closed)
    assert dst.finished_writes == 0 and dst.closed


async def test_periodic_resync_reads_sources_and_sinks_afresh() -> None:
    app = fake_app(resync_interval="200ms")
    src, dst = source(app), sink(app)
    src.services = {s.key: s for s in [service("a", "10.0.0.1")]}
    async with anyio.create_task_group() as tg:
        await tg.start(app.runtime.run)
        await until(lambda: dst.count() == 1)
        # somebody deletes our object behind our back; the resync repairs it
        del dst.objects[("network", "a")]
        fresh = dst.observes.count(True)
        await until(lambda: dst.count() == 2)
        assert dst.observes.count(True) > fresh
        assert dst.writes[-1].action is Action.CREATE
        app.runtime.stop()


async def test_a_sink_can_ask_for_a_key_to_be_replanned() -> None:
    app = fake_app()
    src, dst = source(app), sink(app)
    src.services = {s.key: s for s in [service("a", "10.0.0.1"), service("b", "10.0.0.2")]}
    async with anyio.create_task_group() as tg:
        await tg.start(app.runtime.run)
        await until(lambda: dst.count() == 2)
        del dst.objects[("network", "a")]
        app.context.mark_dirty([("network", "a")])
        await until(lambda: dst.count() == 3)
        assert dst.writes[-1].key == ("network", "a")
        app.runtime.stop()


async def test_a_crashing_source_is_restarted_and_marked_incomplete(monkeypatch) -> None:
    app = fake_app()
    src, dst = source(app), sink(app)
    src.services = {s.key: s for s in [service("a", "10.0.0.1")]}
    calls = []
    original = src.run

    async def flaky(publish):
        calls.append(1)
        if len(calls) == 1:
            await publish(src.current())
            raise RuntimeError("connection lost")
        await original(publish)

    monkeypatch.setattr(src, "run", flaky)
    monkeypatch.setattr("consul_sync.backoff.random.uniform", lambda a, b: 0.01)
    async with anyio.create_task_group() as tg:
        await tg.start(app.runtime.run)
        await until(lambda: len(calls) == 2)
        assert metric(app, "consul_sync_source_errors_total", source="src0") == 1
        await until(lambda: dst.count() == 1)
        app.runtime.stop()


async def test_the_transform_hook_rewrites_and_drops() -> None:
    import attrs

    from consul_sync import DROP

    class Labeller:
        @hookimpl
        def consul_sync_transform_service(self, service):
            if service.name == "secret":
                return DROP
            return attrs.evolve(service, labels={**dict(service.labels), "team": "infra"})

    app = fake_app(plugins=(Labeller(),))
    src, dst = source(app), sink(app)
    src.services = {s.key: s for s in [service("web", "10.0.0.1"), service("secret", "1.1.1.1")]}
    async with anyio.create_task_group() as tg:
        await tg.start(app.runtime.run)
        await until(lambda: app.runtime.readiness()[0])
        app.runtime.stop()
    assert set(dst.owned()) == {("network", "web")}
    assert dict(dst.owned()[("network", "web")].labels) == {"team": "infra"}


async def test_after_apply_and_lifecycle_hooks_are_called() -> None:
    seen: list = []

    class Watcher:
        @hookimpl
        def consul_sync_started(self, runtime):
            seen.append(("started", len(runtime.sinks)))

        @hookimpl
        def consul_sync_after_apply(self, sink, plan, failed):
            seen.append(("applied", sink, len(plan.changes), dict(failed)))

        @hookimpl
        def consul_sync_stopping(self):
            seen.append(("stopping",))

    app = fake_app(plugins=(Watcher(),))
    source(app).services = {s.key: s for s in [service("web", "10.0.0.1")]}
    async with anyio.create_task_group() as tg:
        await tg.start(app.runtime.run)
        await until(lambda: app.runtime.readiness()[0])
        app.runtime.stop()
    assert seen == [("started", 1), ("applied", "sink", 1, {}), ("stopping",)]


async def test_two_sources_merge_into_one_service() -> None:
    app = fake_app(sources=2)
    first, second, dst = source(app, 0), source(app, 1), sink(app)
    first.services = {s.key: s for s in [service("web", "10.0.0.1", source="src0")]}
    second.services = {s.key: s for s in [service("web", "10.0.0.2", source="src1")]}
    async with anyio.create_task_group() as tg:
        await tg.start(app.runtime.run)
        await until(lambda: app.runtime.readiness()[0])
        web = dst.owned()[("network", "web")]
        assert [e.address for e in web.endpoints] == ["10.0.0.1", "10.0.0.2"]
        assert web.sources == ("src0", "src1")
        assert metric(app, "consul_sync_services_total") == 1
        assert metric(app, "consul_sync_endpoints_total") == 2
        app.runtime.stop()


async def test_an_unreachable_sink_delays_readiness_and_is_retried_soon() -> None:
    app = fake_app()
    src, dst = source(app), sink(app)
    src.services = {s.key: s for s in [service("a", "10.0.0.1")]}
    dst.fail_observe = ConnectionError("api server down")
    async with anyio.create_task_group() as tg:
        await tg.start(app.runtime.run)
        await until(lambda: len(dst.observes) >= 1)
        ready, why = app.runtime.readiness()
        assert not ready and why == "sink sink: cannot read what it holds: api server down"
        dst.fail_observe = None
        # retried with backoff (RETRY_BASE 50ms here), not at the next 5m resync
        await until(lambda: app.runtime.readiness()[0])
        assert dst.count() == 1
        app.runtime.stop()


async def test_a_failing_resync_does_not_end_the_resync_loop(monkeypatch) -> None:
    app = fake_app(resync_interval="50ms")
    src, dst = source(app), sink(app)
    src.services = {s.key: s for s in [service("a", "10.0.0.1")]}
    calls = []

    async def resync():
        calls.append(1)
        raise RuntimeError("agent gone")

    monkeypatch.setattr(src, "resync", resync, raising=False)
    async with anyio.create_task_group() as tg:
        await tg.start(app.runtime.run)
        await until(lambda: len(calls) >= 3)
        assert metric(app, "consul_sync_source_errors_total", source="src0") >= 3
        assert dst.count() == 1
        app.runtime.stop()


async def test_a_big_pass_logs_one_summary_and_each_change_at_debug(caplog) -> None:
    app = fake_app()
    src, dst = source(app), sink(app)
    src.services = {s.key: s for s in [service(f"s{i}", f"10.0.0.{i}") for i in range(50)]}
    with caplog.at_level(logging.DEBUG, logger="consul_sync.runtime"):
        async with anyio.create_task_group() as tg:
            await tg.start(app.runtime.run)
            await until(lambda: app.runtime.readiness()[0])
            await src.push([*src.services.values(), service("s99", "10.0.1.1")])
            await until(lambda: dst.count() == 51)
            app.runtime.stop()
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    summaries = [m for m in info if "first pass: " in m]
    assert len(summaries) == 1
    assert summaries[0].startswith(
        "sink sink: first pass: 50 created, 0 updated, 0 deleted, 0 failed in "
    )
    assert not any(m.startswith("sink sink: create network/s1") for m in info)
    assert "sink sink: create network/s1" in debug
    # a small pass: one line per change, at info
    assert "sink sink: create network/s99" in info
