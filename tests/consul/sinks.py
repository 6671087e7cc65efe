"""A fake sink that keeps what it is given in memory (for runtime tests)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio

from consul_sync.model import Action, Change, DesiredService, Observed, ServiceKey
from tests.consul.helpers import DEADLINE


class MemorySink:
    name = "memory"
    concurrency = 8

    def __init__(self) -> None:
        self.objects: dict[ServiceKey, DesiredService] = {}
        self.deletes = 0
        #: key -> time (monotonic) of its last write
        self.written: dict[ServiceKey, float] = {}
        self._event = anyio.Event()
        #: The last view: an entry is made again only for an object that changed (a real
        #: sink keeps its view up to date; at 10,000 services making it afresh every pass
        #: would be this fake's cost, not the runtime's).
        self._view: dict[ServiceKey, Observed] = {}

    async def open(self) -> None:
        return None

    async def observe(self, *, fresh: bool = False) -> Mapping[ServiceKey, Observed]:
        last = self._view
        view = {}
        for key, service in self.objects.items():
            entry = last.get(key)
            if entry is None or entry.service is not service:
                entry = Observed(key, True, service, service.sources)
            view[key] = entry
        self._view = view
        return view

    async def apply(self, change: Change) -> None:
        if change.action is Action.DELETE:
            self.objects.pop(change.key, None)
            self.deletes += 1
        else:
            assert change.desired is not None
            self.objects[change.key] = change.desired
        self.written[change.key] = time.monotonic()
        self._event.set()
        self._event = anyio.Event()

    def render(self, services: Sequence[DesiredService]) -> list[dict[str, Any]]:
        return []

    async def aclose(self) -> None:
        return None

    async def until(
        self,
        predicate: Callable[[dict[ServiceKey, DesiredService]], bool],
        timeout: float = DEADLINE,
    ) -> float:
        started = time.monotonic()
        with anyio.fail_after(timeout):
            while not predicate(self.objects):
                event = self._event
                with anyio.move_on_after(0.05):
                    await event.wait()
        return time.monotonic() - started
