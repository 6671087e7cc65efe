"""The one backoff: doubling from base, capped, jittered within [0.5, 1.0] of the step."""

from __future__ import annotations

from consul_sync.backoff import Backoff, delay


def test_delay_doubles_from_base_up_to_the_cap() -> None:
    upper = [delay(n, 0.5, 3.0, jitter=lambda _low, high: high) for n in range(1, 7)]
    assert upper == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_delay_is_jittered_between_half_and_the_whole_step() -> None:
    lower = delay(3, 1.0, 60.0, jitter=lambda low, _high: low)
    assert lower == 2.0  # half of 4
    samples = {delay(3, 1.0, 60.0) for _ in range(200)}
    assert all(2.0 <= s <= 4.0 for s in samples)
    assert len(samples) > 1


def test_a_long_outage_stays_at_the_cap() -> None:
    assert delay(10_000, 1.0, 300.0, jitter=lambda _low, high: high) == 300.0


def test_backoff_counts_failures_and_starts_over_after_reset() -> None:
    backoff = Backoff(base=1.0, cap=8.0)
    waits = [backoff.next() for _ in range(5)]
    assert [backoff.failures] == [5]
    for wait, step in zip(waits, [1.0, 2.0, 4.0, 8.0, 8.0], strict=True):
        assert step / 2 <= wait <= step
    backoff.reset()
    assert backoff.failures == 0
    assert 0.5 <= backoff.next() <= 1.0
