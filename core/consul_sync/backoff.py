"""Exponential backoff with jitter — the one implementation every retry loop uses.

The runtime's per-key write retries and source restarts, the Consul source's reads and the
Kubernetes informers' watches all wait ``base * 2**(n-1)`` seconds after the n-th failure in a
row, capped at ``cap``, times a random factor in [0.5, 1.0] so that many retry loops started by
one outage do not hit the recovered service in step ("equal jitter").
"""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["Backoff", "delay"]


def delay(
    failures: int,
    base: float,
    cap: float,
    jitter: Callable[[float, float], float] | None = None,
) -> float:
    """The wait after the ``failures``-th failure in a row (1 for the first); ``jitter`` draws
    the random factor (``random.uniform`` unless given)."""
    exponent = max(0, failures - 1)
    # 2**exponent overflows a float only after ~1,000 failures; the cap applies long before.
    raw = cap if exponent > 64 else min(cap, base * 2.0**exponent)
    return raw * (jitter or random.uniform)(0.5, 1.0)


class Backoff:
    """A failure counter for one retry loop: ``next()`` after a failure, ``reset()`` after a
    success."""

    __slots__ = ("base", "cap", "failures")

    def __init__(self, base: float, cap: float) -> None:
        self.base, self.cap, self.failures = base, cap, 0

    def next(self) -> float:
        """Count one more failure and return how long to wait before trying again."""
        self.failures += 1
        return delay(self.failures, self.base, self.cap)

    def reset(self) -> None:
        self.failures = 0
