"""What the runtime remembers about one sink between passes.

Per key: the retry of a failed write (attempts, when it is due), the message of a write that is
failing, a change the sink rejected for good (not retried until the desired service changes).
Per sink: the conflicts, withheld and held deletes the last plans reported, the prune budget's
window, and the current episode of failing writes (one log line when it begins, one summary when
it ends). The runtime (``consul_sync.runtime``) decides *when* to plan and apply; this module
keeps the books and says what they mean.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

import anyio
import attrs

from .metrics import Metrics
from .model import Change, DesiredService, Observed, ServiceKey, Sink
from .plan import Plan, PruneBudget

log = logging.getLogger("consul_sync.runtime")

#: attempts -> seconds to wait (exponential backoff with jitter).
Delay = Callable[[int], float]


@attrs.define
class Retry:
    attempts: int = 0
    due: float = 0.0


@attrs.define
class SinkState:
    sink: Sink
    limiter: anyio.CapacityLimiter
    view: Mapping[ServiceKey, Observed] | None = None
    retries: dict[ServiceKey, Retry] = attrs.field(factory=dict)
    #: key -> (desired service that was rejected, message): not retried
    #: until the desired service changes.
    rejected: dict[ServiceKey, tuple[DesiredService | None, str]] = attrs.field(factory=dict)
    failing: dict[ServiceKey, str] = attrs.field(factory=dict)
    conflicts: frozenset[ServiceKey] = frozenset()
    withheld: frozenset[ServiceKey] = frozenset()
    #: Deletes the prune budget holds back until its window rolls.
    held: frozenset[ServiceKey] = frozenset()
    #: The window rolled: held deletes go in part, up to the new budget.
    releasing: bool = False
    #: The sink's prune budget (from MAX_PRUNE_FRACTION and PRUNE_WINDOW).
    budget: PruneBudget = attrs.field(kw_only=True)
    error: str | None = None
    #: When the current episode of failing writes began, and how many
    #: failed writes it has seen (one log line per episode, one summary).
    failing_since: float | None = None
    failed_writes: int = 0
    #: Whether this episode was logged here (not only by the sink).
    told: bool = False

    @property
    def name(self) -> str:
        return self.sink.name

    # --- when the reconciler must wake for this sink -------------------------

    def next_due(self) -> float | None:
        """The earliest due retry, or when the window holding deletes rolls."""
        dues = [retry.due for retry in self.retries.values()]
        if self.held and (rolls := self.budget.rolls_at()) is not None:
            dues.append(rolls)
        return min(dues) if dues else None

    def due_keys(self, now: float) -> set[ServiceKey]:
        return {key for key, retry in self.retries.items() if retry.due <= now}

    def roll_window(self, now: float) -> frozenset[ServiceKey]:
        """If the window holding deletes rolled: open the next one and return the held keys
        (planned again, in part: up to the new budget)."""
        due = self.budget.rolls_at()
        if not self.held or due is None or due > now:
            return frozenset()
        self.budget.opened = None  # the next delete opens a new window
        self.releasing = True
        return self.held

    # --- outcomes of writes ----------------------------------------------------

    def forget(self, keys: Iterable[ServiceKey], now: float) -> None:
        """These keys have nothing left to do here: their retries and failures end."""
        for key in keys:
            self.retries.pop(key, None)
            self.failing.pop(key, None)
            self.rejected.pop(key, None)
        self.recovered(now)

    def postpone(self, keys: Iterable[ServiceKey], now: float, delay: Delay) -> None:
        """The sink could not be read: its due retries, and ``keys``, wait for the next
        attempt with backoff (not at once again)."""
        for key in keys:
            self.retries.setdefault(key, Retry(due=now))
        for retry in self.retries.values():
            if retry.due <= now:
                retry.attempts += 1
                retry.due = now + delay(retry.attempts)

    def succeeded(self, key: ServiceKey, now: float) -> None:
        self.forget((key,), now)

    def failed(
        self,
        change: Change,
        message: str,
        *,
        retryable: bool,
        retry_after: float | None,
        reported: bool,
        now: float,
        delay: Delay,
    ) -> None:
        """A write failed: rejected for good, or retried after a backoff. One log line per
        episode of failures (what the sink reported itself is not told twice)."""
        self.failing[change.key] = message
        if not retryable:
            self.rejected[change.key] = (change.desired, message)
            self.retries.pop(change.key, None)
            log.error(
                "sink %s: %s %s/%s rejected, not retrying until it changes: %s",
                self.name,
                change.action,
                *change.key,
                message,
                extra={"sink": self.name, "service": change.key[1]},
            )
            return
        retry = self.retries.setdefault(change.key, Retry())
        retry.attempts += 1
        wait = delay(retry.attempts)
        if retry_after is not None:
            wait = max(wait, retry_after)
        retry.due = now + wait
        self.failed_writes += 1
        # One line per outage, not per write and attempt: the first failure
        # says what happened, the rest go to debug, the recovery sums up.
        if self.failing_since is None:
            self.failing_since = now
            self.told = False
        first = not self.told and not reported
        self.told = self.told or first
        (log.warning if first else log.debug)(
            "sink %s: %s %s/%s failed (attempt %d), retrying in %.1fs: %s%s",
            self.name,
            change.action,
            *change.key,
            retry.attempts,
            wait,
            message,
            "; further failures until it recovers are logged at debug level" if first else "",
            extra={"sink": self.name, "service": change.key[1]},
        )

    def recovered(self, now: float) -> None:
        """Once no write of the sink is failing any more: the summary line."""
        if self.failing_since is None or any(key in self.retries for key in self.failing):
            return
        if self.told:  # (else the sink told it, and sums it up itself)
            log.info(
                "sink %s: writes succeed again after %.1fs; %d failed writes were retried",
                self.name,
                now - self.failing_since,
                self.failed_writes,
                extra={"sink": self.name},
            )
        self.failing_since, self.failed_writes = None, 0

    # --- what the plans reported -------------------------------------------------

    def held_note(self, now: float, fraction: float) -> str:
        due = self.budget.rolls_at()
        when = f"in {max(0.0, due - now):.0f}s" if due is not None else "at the next pass"
        return (
            f"prune guard: {len(self.held)} deletes held (this window's budget of "
            f"MAX_PRUNE_FRACTION {fraction:g} is spent; they go when "
            f"the window rolls, {when}, or at once with "
            "`consul-sync run --once --release-held-deletes`)"
        )

    def report(
        self,
        the_plan: Plan,
        scope: set[ServiceKey] | None,
        *,
        metrics: Metrics,
        now: float,
        fraction: float,
    ) -> None:
        """Take a plan's conflicts, withheld and held deletes into the books (a full pass
        replaces what we knew; an incremental one replaces its scope) and tell what is new."""
        name = self.name
        new = set(the_plan.conflicts) - self.conflicts
        carried_conflicts = set() if scope is None else self.conflicts - scope
        carried_withheld = set() if scope is None else self.withheld - scope
        carried_held = set() if scope is None else self.held - scope
        self.conflicts = frozenset(carried_conflicts | set(the_plan.conflicts))
        self.withheld = frozenset(carried_withheld | set(the_plan.withheld))
        held = frozenset(carried_held | set(the_plan.held))
        if held and not self.held:
            # One report per episode, not per pass (a trickle would repeat it).
            metrics.prune_guard_trips.labels(sink=name).inc()
            self.held = held
            log.error("sink %s: %s", name, self.held_note(now, fraction), extra={"sink": name})
        elif self.held and not held:
            log.info("sink %s: no deletes are held any more", name, extra={"sink": name})
        elif held - self.held:
            log.debug("sink %s: %d more deletes held", name, len(held - self.held))
        self.held = held
        for key in sorted(new):
            log.warning(
                "sink %s: %s/%s exists but is not ours (no consul-sync ownership); "
                "leaving it alone",
                name,
                *key,
                extra={"sink": name},
            )
        metrics.conflicts.labels(sink=name).set(len(self.conflicts))
        metrics.prune_withheld.labels(sink=name).set(len(self.withheld))
        metrics.prune_held.labels(sink=name).set(len(self.held))
