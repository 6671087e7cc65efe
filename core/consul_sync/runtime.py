"""The anyio runtime: watch -> diff -> apply -> prune.

One root task group holds a task per source, the reconciler, the resync
timer and (in ``serve``) the probe server and the signal watcher.

Sources publish snapshots.  The runtime keeps each source's latest one,
works out which keys changed and marks them *dirty*.  The reconciler waits
for dirty keys (a change after a quiet period goes at once; what comes
during a pass or within ``coalesce_window`` after it is gathered), merges and
transforms only the dirty keys, plans them against each sink's view, and
applies the changes with at most ``sink.concurrency`` writes in flight.  A
failed write is retried for that key alone, with exponential backoff and
jitter, while the rest proceeds; a change the sink rejects for good is not
retried until the desired service changes again.  Every
``resync_interval`` a full pass reads every source and sink afresh and
plans every key.

Readiness: after every source has delivered a complete snapshot and the
first full pass that followed has finished.

Why this module is long (~750 lines): it is one state machine — the snapshots,
the desired services, the dirty keys and the wake-up event are shared by
intake (``accept``), the passes (``reconcile``) and the tasks (``run``), and
splitting them would pass that state around rather than simplify it.  What a
sink's books mean (retries, failures, held deletes) lives in
``consul_sync.sinkstate``; planning is ``consul_sync.plan``.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

import anyio
import attrs
import pluggy
from anyio.abc import TaskStatus

from . import backoff
from .coalesce import wait_out
from .config import Settings
from .errors import SinkError
from .metrics import Metrics
from .model import Action, Change, DesiredService, Observed, ServiceKey, Sink, Snapshot, Source
from .plan import Plan, PruneBudget, merge, owned_count, plan
from .plugins import transform
from .sinkstate import SinkState

log = logging.getLogger("consul_sync.runtime")

#: A pass with more changes than this logs each applied change at debug and
#: one summary line at info (a cold start: "first pass: 1000 created ...").
SUMMARY_OVER = 20
#: A source that stopped with an error restarts after 2 s, doubling up to a minute.
SOURCE_RESTART_BASE, SOURCE_RESTART_MAX = 2.0, 60.0


@attrs.define
class SourceTrack:
    """What the status page shows of a source (wall-clock times)."""

    #: When the source last delivered a complete snapshot.
    last_complete: float | None = None
    #: The last error the runtime saw from it (a crash or a failed resync read).
    error: str | None = None
    error_at: float | None = None


@attrs.frozen
class Applied:
    """The last change applied to a key: when (wall clock), by which sink,
    and how long from the source's change to the apply (``None``: unknown)."""

    at: float
    sink: str
    action: str
    seconds: float | None


@attrs.define
class PassResult:
    """What one reconcile pass did, per sink."""

    plans: dict[str, Plan] = attrs.field(factory=dict)
    failed: dict[str, dict[ServiceKey, str]] = attrs.field(factory=dict)
    unreachable: dict[str, str] = attrs.field(factory=dict)

    @property
    def ok(self) -> bool:
        return not self.unreachable and not any(self.failed.values())


class Runtime:
    def __init__(
        self,
        settings: Settings,
        sources: Sequence[Source],
        sinks: Sequence[Sink],
        pm: pluggy.PluginManager,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.sources = list(sources)
        self.sinks = list(sinks)
        self.pm = pm
        self.metrics = metrics
        self.clock = clock
        self.snapshots: dict[str, Snapshot] = {}
        self.ever_complete: set[str] = set()
        self.desired: dict[ServiceKey, DesiredService] = {}
        self.states = {
            sink.name: SinkState(
                sink,
                anyio.CapacityLimiter(max(1, sink.concurrency)),
                budget=PruneBudget(settings.max_prune_fraction, float(settings.prune_window)),
            )
            for sink in self.sinks
        }
        #: ``run --once --release-held-deletes``: no prune budget this run.
        self.release_held = False
        self._dirty: dict[ServiceKey, float] = {}
        self._full_requested = True
        self._full_due: float | None = None
        self._full_failures = 0
        self._wake = anyio.Event()
        self._ready = False
        self._stopping = False
        self._pass_scope: anyio.CancelScope | None = None
        self._run_scope: anyio.CancelScope | None = None
        self._last_pass_end = -math.inf
        self._endpoints = 0
        self._ready_endpoints = 0
        self.passes = 0
        #: Changes whenever a desired key appears or disappears.
        self.keys_version = 0
        #: For the status page (consul_sync.status): per source, and per key
        #: the last change applied; wall-clock times from ``wall``.
        self.wall: Callable[[], float] = time.time
        self.source_track: dict[str, SourceTrack] = {s.name: SourceTrack() for s in self.sources}
        self.applied: dict[ServiceKey, Applied] = {}

    # --- publishing -------------------------------------------------------

    def _order(self) -> list[Snapshot]:
        return [self.snapshots[s.name] for s in self.sources if s.name in self.snapshots]

    async def publish(self, snapshot: Snapshot) -> None:
        """Take a source's new snapshot (the ``publish`` given to ``Source.run``)."""
        self.accept(snapshot)

    def accept(self, snapshot: Snapshot) -> set[ServiceKey]:
        name = snapshot.source
        previous = self.snapshots.get(name)
        services = snapshot.services
        if not snapshot.complete and previous is not None:
            # A failed or partial read loses nothing: keep what we knew.
            services = {**previous.services, **services}
            snapshot = attrs.evolve(snapshot, services=services, changed=None)
        if previous is None:
            changed = set(services)
        elif snapshot.changed is not None:
            changed = set(snapshot.changed)
        else:
            old = previous.services
            changed = {k for k in old.keys() | services.keys() if old.get(k) != services.get(k)}
        if snapshot.complete and not services and previous is not None and previous.services:
            self.metrics.source_empty.labels(source=name).inc()
            log.warning(
                "source %s now reports no services at all (it had %d); deletes go through "
                "the prune guard. If this is unexpected, check the source's token and ACLs.",
                name,
                len(previous.services),
                extra={"source": name},
            )
        self.snapshots[name] = snapshot
        if snapshot.complete:
            self.source_track.setdefault(name, SourceTrack()).last_complete = self.wall()
        self.metrics.source_services.labels(source=name).set(len(services))
        self.metrics.source_complete.labels(source=name).set(1 if snapshot.complete else 0)
        if snapshot.complete and previous is not None and not previous.complete:
            # What the sinks kept on this source's behalf while it was
            # incomplete (its share of merged services, withheld deletes)
            # is planned again now that it answered.
            changed |= self._held_for(name)
        if snapshot.complete and name not in self.ever_complete:
            self.ever_complete.add(name)
            if self._all_sources_complete_once():
                self._full_requested = True
        self.mark_dirty(changed)
        return changed

    def _held_for(self, source: str) -> set[ServiceKey]:
        """Keys a sink holds on behalf of ``source`` (or of an unknown one)."""
        return {
            key
            for state in self.states.values()
            for key, observed in (state.view or {}).items()
            if observed.owned and (observed.sources is None or source in observed.sources)
        }

    def mark_dirty(self, keys: Iterable[ServiceKey]) -> None:
        now = self.clock()
        for key in keys:
            self._dirty.setdefault(key, now)
        if self._dirty or self._full_requested:
            self._wake.set()

    def request_resync(self) -> None:
        self._full_requested = True
        self._wake.set()

    def _all_sources_complete_once(self) -> bool:
        return all(s.name in self.ever_complete for s in self.sources)

    def incomplete_sources(self) -> set[str]:
        return {
            s.name
            for s in self.sources
            if s.name not in self.snapshots or not self.snapshots[s.name].complete
        }

    # --- readiness ----------------------------------------------------------

    def readiness(self) -> tuple[bool, str]:
        if not self._ready:
            waiting = [s.name for s in self.sources if s.name not in self.ever_complete]
            if waiting:
                return False, "waiting for a first complete snapshot from: " + ", ".join(waiting)
            errors = [f"sink {n}: {st.error}" for n, st in self.states.items() if st.error]
            if errors:
                return False, "; ".join(errors)
            return False, "first apply in progress"
        notes = []
        for name, state in self.states.items():
            if state.held:
                notes.append(
                    f"sink {name}: "
                    + state.held_note(self.clock(), self.settings.max_prune_fraction)
                )
            if state.error:
                notes.append(f"sink {name}: {state.error}")
            # A sink may say something that does not make it unready (the
            # gateway sink: the Gateway API is not installed).
            note = getattr(state.sink, "readiness_note", None)
            if note:
                notes.append(f"sink {name}: {note}")
        incomplete = sorted(self.incomplete_sources())
        if incomplete:
            notes.append(
                "incomplete sources (nothing is pruned for them): " + ", ".join(incomplete)
            )
        return True, "ready" + ("; " + "; ".join(notes) if notes else "")

    def _set_ready(self) -> None:
        if not self._ready:
            log.info(
                "ready: every source delivered a complete snapshot and the first apply finished"
            )
        self._ready = True
        self.metrics.ready.set(1)

    # --- desired state ----------------------------------------------------

    def _recompute(self, keys: Iterable[ServiceKey] | None) -> None:
        merged = merge(self._order(), keys)
        for warning in merged.warnings:
            self.metrics.merge_warnings.inc()
            log.warning(warning)
        targets = set(self.desired) | set(merged.services) if keys is None else set(keys)
        before = len(self.desired)
        added = False
        for key in targets:
            old = self.desired.pop(key, None)
            if old is not None:
                self._endpoints -= len(old.endpoints)
                self._ready_endpoints -= sum(1 for e in old.endpoints if e.ready)
            service = merged.services.get(key)
            if service is not None:
                service = transform(self.pm, service)
            if service is not None:
                if service.key != key:
                    log.error(
                        "a transform hook changed the key of %s/%s; ignoring its result", *key
                    )
                    service = merged.services[key]
                self.desired[key] = service
                self._endpoints += len(service.endpoints)
                self._ready_endpoints += sum(1 for e in service.endpoints if e.ready)
                added = added or old is None
        if added or len(self.desired) != before:
            self.keys_version += 1

    def desired_keys(self) -> tuple[int, Collection[ServiceKey]]:
        return self.keys_version, self.desired.keys()

    # --- the reconciler -----------------------------------------------------

    def _next_retry(self) -> float | None:
        dues = [due for st in self.states.values() if (due := st.next_due()) is not None]
        return min(dues) if dues else None

    def _release_rolled_windows(self) -> None:
        """Held deletes whose prune window rolled are planned again."""
        now = self.clock()
        for state in self.states.values():
            self.mark_dirty(state.roll_window(now))

    def _take_due_retries(self) -> set[ServiceKey]:
        now = self.clock()
        return {key for state in self.states.values() for key in state.due_keys(now)}

    async def _reconcile_loop(self) -> None:
        while not self._stopping:
            dues = [d for d in (self._next_retry(), self._full_due) if d is not None]
            timeout = max(0.0, min(dues) - self.clock()) if dues else math.inf
            with anyio.move_on_after(timeout):
                await self._wake.wait()
            if self._wake.is_set():
                # Leading-edge coalescing (consul_sync.coalesce): changes that come while
                # a pass runs, or within the window after it, go together.
                window = float(self.settings.coalesce_window)
                await wait_out(window, self._last_pass_end, self.clock)
            self._wake = anyio.Event()
            result = await self._guarded_pass()
            if result is not None and any(p.changes for p in result.plans.values()):
                # Only a pass that wrote opens the window: one that found
                # nothing to do (a source re-publishing what it had) must
                # not delay the change right behind it.
                self._last_pass_end = self.clock()

    async def _guarded_pass(self) -> PassResult | None:
        # A pass runs shielded so that a stop lets in-flight writes finish;
        # stop() gives it a deadline of shutdown_timeout.
        with anyio.CancelScope(shield=True) as scope:
            self._pass_scope = scope
            try:
                if not self._all_sources_complete_once():
                    return None  # nothing is applied before every source spoke
                if self._full_requested and (self._full_due or 0) <= self.clock():
                    self._full_requested, self._full_due = False, None
                    result = await self.full_pass(read_sources=False)
                    if result.unreachable:
                        # Try the full pass again soon, not at the next resync.
                        self._full_failures += 1
                        self._full_requested = True
                        self._full_due = self.clock() + self._backoff(self._full_failures)
                    else:
                        self._full_failures = 0
                    return result
                self._release_rolled_windows()
                keys = set(self._dirty) | self._take_due_retries()
                if keys:
                    return await self.reconcile(keys)
                return None
            finally:
                self._pass_scope = None
        return None  # cancelled at the shutdown deadline: writes abandoned

    async def full_pass(self, *, read_sources: bool = True) -> PassResult:
        """Read sources (optionally) and every sink afresh; plan every key."""
        if read_sources:
            await self.read_sources()
        for state in self.states.values():
            await self._observe(state, fresh=True)
        result = await self.reconcile(None)
        if self._all_sources_complete_once() and not result.unreachable:
            self._set_ready()
        return result

    async def read_sources(self) -> None:
        """One fresh read of every source, published as usual."""
        for source in self.sources:
            try:
                snapshot = await source.snapshot()
            except Exception as exc:
                self.metrics.source_errors.labels(source=source.name).inc()
                self._source_error(source.name, f"fresh read failed: {exc}")
                log.error(
                    "source %s: fresh read failed: %s",
                    source.name,
                    exc,
                    extra={"source": source.name},
                )
                previous = self.snapshots.get(source.name)
                snapshot = Snapshot(source.name, previous.services if previous else {}, False)
            self.accept(snapshot)

    async def _observe(self, state: SinkState, *, fresh: bool) -> bool:
        try:
            state.view = await state.sink.observe(fresh=fresh)
        except Exception as exc:
            state.error = f"cannot read what it holds: {exc}"
            log.error("sink %s: %s", state.sink.name, state.error, extra={"sink": state.sink.name})
            return False
        state.error = None
        return True

    async def reconcile(self, keys: set[ServiceKey] | None) -> PassResult:
        """Plan and apply ``keys`` (``None``: every key) in every sink."""
        started = self.clock()
        kind = "full" if keys is None else "incremental"
        dirty_times = dict(self._dirty)
        if keys is None:
            self._dirty.clear()
        else:
            for key in keys:
                self._dirty.pop(key, None)
        self._recompute(keys)
        result = PassResult()
        incomplete = self.incomplete_sources()
        for name, state in self.states.items():
            if not await self._observe(state, fresh=False) or state.view is None:
                result.unreachable[name] = state.error or "unreachable"
                self._postpone(state, keys)
                continue
            if not getattr(state.sink, "active", True):
                # A standby replica (leader election): the leader writes, so
                # nothing is left to retry here; the sink marks every key
                # dirty when it becomes the leader.
                self._forget(state, set(state.retries) | set(state.failing))
                continue
            scope = keys
            if keys is not None:
                scope = keys | state.due_keys(self.clock())
            the_plan = self._plan(state, state.view, incomplete, scope)
            # A key whose plan has nothing to do for this sink any more (gone
            # from the source, now a conflict, already as desired) is done:
            # its retry and failure end here, or the reconciler would wake
            # for it for ever.
            planned = {change.key for change in the_plan.changes}
            considered = set(state.retries) | set(state.failing) if scope is None else scope
            self._forget(state, considered - planned)
            failed = await self._apply(state, the_plan, dirty_times)
            result.plans[name] = the_plan
            result.failed[name] = failed
            self._report(state, the_plan, scope)
            if the_plan.changes or the_plan.conflicts or the_plan.withheld:
                self._hook("consul_sync_after_apply", sink=name, plan=the_plan, failed=failed)
        status = "success" if result.ok else "error"
        self.metrics.reconciles.labels(status=status).inc()
        self.metrics.reconcile_duration.labels(kind=kind).observe(self.clock() - started)
        self._update_gauges()
        self.passes += 1
        return result

    def _plan(
        self,
        state: SinkState,
        view: Mapping[ServiceKey, Observed],
        incomplete: Collection[str],
        scope: set[ServiceKey] | None,
    ) -> Plan:
        """Plan one sink, its deletes within what its prune window has left
        (and the budget spent by them)."""
        now = self.clock()
        owned = owned_count(view)
        budget = len(view) if self.release_held else state.budget.remaining(now, owned)
        the_plan = plan(
            self.desired,
            view,
            policy=self.settings.policy,
            incomplete_sources=incomplete,
            scope=scope,
            max_prune_fraction=self.settings.max_prune_fraction,
            delete_budget=budget,
            partial=state.releasing,
        )
        state.releasing = False
        if self.release_held and state.held:
            log.warning(
                "sink %s: releasing %d held deletes (--release-held-deletes)",
                state.sink.name,
                len(state.held),
                extra={"sink": state.sink.name},
            )
        state.budget.spend(now, owned, the_plan.count(Action.DELETE), held=bool(the_plan.held))
        return the_plan

    def _forget(self, state: SinkState, keys: Iterable[ServiceKey]) -> None:
        state.forget(keys, self.clock())

    def _postpone(self, state: SinkState, keys: set[ServiceKey] | None) -> None:
        state.postpone(keys or (), self.clock(), self._backoff)

    def _report(self, state: SinkState, the_plan: Plan, scope: set[ServiceKey] | None) -> None:
        state.report(
            the_plan,
            scope,
            metrics=self.metrics,
            now=self.clock(),
            fraction=self.settings.max_prune_fraction,
        )

    async def _apply(
        self, state: SinkState, the_plan: Plan, dirty_times: Mapping[ServiceKey, float]
    ) -> dict[ServiceKey, str]:
        failed: dict[ServiceKey, str] = {}
        sink = state.sink
        started = self.clock()
        summarise = len(the_plan.changes) > SUMMARY_OVER
        done: Counter[Action] = Counter()

        async def one(change: Change) -> None:
            rejected = state.rejected.get(change.key)
            if rejected is not None and rejected[0] == change.desired:
                failed[change.key] = rejected[1]
                return
            async with state.limiter:
                try:
                    await sink.apply(change)
                except SinkError as exc:
                    self._failed(
                        state, change, str(exc), exc.retryable, exc.retry_after, exc.reported
                    )
                    failed[change.key] = str(exc)
                    return
                except Exception as exc:
                    log.exception(
                        "sink %s: unexpected error applying %s %s/%s",
                        sink.name,
                        change.action,
                        *change.key,
                    )
                    self._failed(state, change, repr(exc), True, None)
                    failed[change.key] = repr(exc)
                    return
            state.succeeded(change.key, self.clock())
            self.metrics.applies.labels(
                sink=sink.name, action=change.action.value, status="success"
            ).inc()
            since = dirty_times.get(change.key)
            if since is not None:
                self.metrics.change_latency.labels(sink=sink.name).observe(self.clock() - since)
            done[change.action] += 1
            self._record_applied(sink.name, change, since)
            (log.debug if summarise else log.info)(
                "sink %s: %s %s/%s",
                sink.name,
                change.action,
                *change.key,
                extra={
                    "sink": sink.name,
                    "action": change.action.value,
                    "service": change.key[1],
                    "namespace": change.key[0],
                },
            )

        async with anyio.create_task_group() as tg:
            for change in the_plan.changes:
                tg.start_soon(one, change)
        if summarise:
            log.info(
                "sink %s: %s: %d created, %d updated, %d deleted, %d failed in %.1f s",
                sink.name,
                "first pass" if self.passes == 0 else "pass",
                done[Action.CREATE],
                done[Action.UPDATE],
                done[Action.DELETE],
                len(failed),
                self.clock() - started,
                extra={"sink": sink.name},
            )
        return failed

    def _record_applied(self, sink: str, change: Change, since: float | None) -> None:
        if change.action is Action.DELETE:
            self.applied.pop(change.key, None)
            return
        seconds = None if since is None else max(0.0, self.clock() - since)
        self.applied[change.key] = Applied(self.wall(), sink, change.action.value, seconds)

    def _source_error(self, name: str, message: str) -> None:
        track = self.source_track.setdefault(name, SourceTrack())
        track.error, track.error_at = message, self.wall()

    def _failed(
        self,
        state: SinkState,
        change: Change,
        message: str,
        retryable: bool,
        retry_after: float | None,
        reported: bool = False,
    ) -> None:
        self.metrics.applies.labels(
            sink=state.name, action=change.action.value, status="error"
        ).inc()
        state.failed(
            change,
            message,
            retryable=retryable,
            retry_after=retry_after,
            reported=reported,
            now=self.clock(),
            delay=self._backoff,
        )

    def _backoff(self, attempts: int) -> float:
        """Exponential backoff with jitter: RETRY_BASE doubling up to RETRY_MAX."""
        return backoff.delay(attempts, self.settings.retry_base, float(self.settings.retry_max))

    def _update_gauges(self) -> None:
        troubled: set[ServiceKey] = set()
        for state in self.states.values():
            troubled |= state.conflicts | set(state.failing)
        self.metrics.services.set(len(self.desired.keys() - troubled))
        self.metrics.endpoints.set(self._endpoints)
        self.metrics.ready_endpoints.set(self._ready_endpoints)

    def _hook(self, name: str, **kwargs: Any) -> None:
        try:
            getattr(self.pm.hook, name)(**kwargs)
        except Exception:
            log.exception("a plugin's %s hook failed", name)

    # --- tasks ------------------------------------------------------------

    async def _run_source(self, source: Source) -> None:
        attempt = 0
        while not self._stopping:
            started = self.clock()
            try:
                await source.run(self.publish)
                return
            except Exception as exc:
                self.metrics.source_errors.labels(source=source.name).inc()
                self._source_error(source.name, str(exc))
                previous = self.snapshots.get(source.name)
                if previous is not None and previous.complete:
                    self.accept(attrs.evolve(previous, complete=False, changed=frozenset()))
                attempt = 0 if self.clock() - started > 60 else attempt + 1
                delay = backoff.delay(attempt, SOURCE_RESTART_BASE, SOURCE_RESTART_MAX)
                log.error(
                    "source %s stopped with an error, restarting in %.1fs: %s",
                    source.name,
                    delay,
                    exc,
                    extra={"source": source.name},
                )
                await anyio.sleep(delay)

    async def _resync_loop(self) -> None:
        while True:
            await anyio.sleep(self.settings.resync_interval)
            log.debug("periodic full resync")
            for source in self.sources:
                resync = getattr(source, "resync", None)
                try:
                    if resync is not None:
                        await resync()
                    else:
                        self.accept(await source.snapshot())
                except Exception as exc:  # a failing source must not end the resync loop
                    self.metrics.source_errors.labels(source=source.name).inc()
                    self._source_error(source.name, f"resync read failed: {exc}")
                    log.error("source %s: resync read failed: %s", source.name, exc)
            self.request_resync()

    async def open_sinks(self) -> None:
        for sink in self.sinks:
            try:
                await sink.open()
            except Exception as exc:
                self.states[sink.name].error = f"cannot open: {exc}"
                log.error("sink %s: cannot open: %s", sink.name, exc)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Watch and reconcile until :meth:`stop` (or cancellation).

        :meth:`stop` may come at any moment, also while sinks are still
        opening: one cancel scope covers all of start-up.
        """
        with anyio.CancelScope() as scope:
            self._run_scope = scope
            if self._stopping:
                scope.cancel()
            try:
                await self.open_sinks()
                self._hook("consul_sync_started", runtime=self)
                async with anyio.create_task_group() as tg:
                    self._tg = tg
                    for source in self.sources:
                        tg.start_soon(self._run_source, source, name=f"source:{source.name}")
                    tg.start_soon(self._reconcile_loop, name="reconciler")
                    tg.start_soon(self._resync_loop, name="resync")
                    task_status.started()
            finally:
                self._run_scope = None
                await self.close()

    def stop(self) -> None:
        """Stop watching; let an in-flight pass finish within shutdown_timeout."""
        if self._stopping:
            return
        log.info("stopping: in-flight writes get %.0fs to finish", self.settings.shutdown_timeout)
        self._stopping = True
        if self._pass_scope is not None:
            self._pass_scope.deadline = anyio.current_time() + self.settings.shutdown_timeout
        if self._run_scope is not None:
            self._run_scope.cancel()

    async def close(self) -> None:
        self._hook("consul_sync_stopping")
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            items: list[Source | Sink] = [*self.sources, *self.sinks]
            for item in items:
                try:
                    await item.aclose()
                except Exception:
                    log.exception("closing %s failed", item.name)

    async def run_once(self) -> PassResult:
        """One full reconcile: read every source and sink, apply, return."""
        await self.open_sinks()
        try:
            result = await self.full_pass(read_sources=True)
            incomplete = self.incomplete_sources()
            if incomplete:
                result.unreachable.update(
                    {f"source:{name}": "incomplete snapshot" for name in incomplete}
                )
            return result
        finally:
            await self.close()

    async def plan_only(self) -> dict[str, Plan]:
        """Read everything, plan every key, write nothing."""
        await self.open_sinks()
        try:
            await self.read_sources()
            self._recompute(None)
            plans = {}
            for name, state in self.states.items():
                if not await self._observe(state, fresh=True) or state.view is None:
                    raise SinkError(f"sink {name}: {state.error}")
                plans[name] = self._plan(state, state.view, self.incomplete_sources(), None)
            return plans
        finally:
            await self.close()


async def watch_signals(
    runtime: Runtime, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    """SIGTERM or SIGINT -> ``runtime.stop()``; a second one stops at once."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        async for signum in signals:
            log.info("received %s", signal.Signals(signum).name)
            if runtime._stopping:
                raise SystemExit(1)
            runtime.stop()
            return
