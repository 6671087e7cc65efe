"""Measurements the benches share; imports nothing heavy, so importing it does not move the
figures it takes (a bench's RSS)."""

from __future__ import annotations


def rss_mib() -> float:
    """This process's resident memory, MiB (``nan`` if /proc/self/status has no VmRSS)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")
