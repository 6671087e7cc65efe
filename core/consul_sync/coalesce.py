"""Leading-edge coalescing — the one way changes are gathered.

The runtime's reconciler (``coalesce_window`` between passes that wrote) and the Consul
source's publisher (10 ms between snapshots) both use it: a change after a quiet window goes
at once; one that comes within the window after the last time something went waits for the
window's end, and whatever else arrives meanwhile goes with it.  So a burst costs one round
more, and no change waits longer than the window behind another.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
import anyio.lowlevel

__all__ = ["wait_out"]


async def wait_out(window: float, last: float, clock: Callable[[], float]) -> None:
    """Return at once (after one checkpoint, so that what the same moment brings goes too)
    when ``window`` seconds have passed since ``last``; else at the window's end."""
    quiet = clock() - last
    if quiet < window:
        await anyio.sleep(window - quiet)
    else:
        await anyio.lowlevel.checkpoint()
