"""When the ``consul`` source publishes a snapshot, and what it hands the runtime.

* Nothing goes out before the first catalog answer has been read through
  (or has failed: then a first, incomplete snapshot goes out at once).
* Leading edge: a change after a quiet ``interval`` goes out at once; what
  comes sooner after a publish waits for the interval's end and goes
  together (a burst of reads costs one snapshot per interval, and no change
  waits longer than the interval). A snapshot goes out when a service
  changed or completeness did, with the changed keys as a hint while it
  stays complete.
* A rename (one ID re-registered under another name) is published whole:
  the removal waits for the new name's read, bounded by the read timeout.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import anyio

from consul_sync import Snapshot
from consul_sync.coalesce import wait_out
from consul_sync.model import Publish

from .state import CatalogState


class Publisher:
    """``notify()`` asks for a publish; :meth:`run` publishes to the runtime."""

    def __init__(
        self,
        source: str,
        state: CatalogState,
        complete: Callable[[], bool],
        *,
        interval: float,
        hold_for: float,
        clock: Callable[[], float] = anyio.current_time,
    ) -> None:
        self.source = source
        self.state = state
        self.complete = complete
        self.interval = interval
        self.hold_for = hold_for
        self.clock = clock
        #: Set once a first snapshot may go out.
        self.loaded = anyio.Event()
        self._event = anyio.Event()
        #: Names read for a catalog change that also removed names: the
        #: removal is not published before they are read, so the runtime sees
        #: the rename whole (one in-place update), never a delete and a create.
        self._holding: set[str] = set()
        self._holding_until = 0.0
        self._last_complete: bool | None = None

    def notify(self) -> None:
        self._event.set()

    def hold(self, names: Iterable[str]) -> None:
        """Publish nothing (for at most ``hold_for``) until ``names`` are read."""
        self._holding |= set(names)
        self._holding_until = self.clock() + self.hold_for

    def read(self, name: str) -> None:
        """``name`` was read (or failed, or is gone)."""
        if name in self._holding:
            self._holding.discard(name)
            if not self._holding:
                self.notify()

    async def run(self, publish: Publish) -> None:
        await self.loaded.wait()
        first = True
        last = -math.inf
        while True:
            self._event = anyio.Event()
            held = self._holding_until - self.clock() if self._holding else 0.0
            if held > 0 and not first:
                # A rename's removal waits for its new name's read (bounded
                # by the read timeout).
                with anyio.move_on_after(held):
                    await self._event.wait()
                continue
            self._holding.clear()
            complete = self.complete()
            changed = self.state.take_changed()
            if first or changed or complete != self._last_complete:
                # The runtime ignores hints of incomplete snapshots: after one,
                # let it compare everything once.
                hint = changed if (not first and complete and self._last_complete) else None
                await publish(Snapshot(self.source, dict(self.state.services), complete, hint))
                self._last_complete = complete
                first = False
                last = self.clock()
            await self._event.wait()
            await wait_out(self.interval, last, self.clock)
