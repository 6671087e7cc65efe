"""Helpers for running the consul source against the HTTP double."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import httpx

from consul_sync import Context, Duration, Snapshot
from consul_sync.metrics import Metrics
from consul_sync.model import Endpoint
from consul_sync_consul.source import ConsulConfig, ConsulSource
from tests.fakes.consul_double import ConsulDouble

NS = "network"

#: How long a test waits for a condition (a change arriving, a recovery) before it
#: fails: generous, so that a loaded CI machine does not fail it.  How fast changes
#: arrive is a latency target, measured by bench/bench_consul.py, not asserted here.
DEADLINE = 10.0


class Collector:
    """The ``publish`` given to ``ConsulSource.run``: keeps every snapshot."""

    def __init__(self) -> None:
        self.snapshots: list[Snapshot] = []
        self.times: list[float] = []
        self._event = anyio.Event()

    async def __call__(self, snapshot: Snapshot) -> None:
        self.snapshots.append(snapshot)
        self.times.append(time.monotonic())
        self._event.set()
        self._event = anyio.Event()

    @property
    def last(self) -> Snapshot:
        return self.snapshots[-1]

    def names(self) -> set[str]:
        return {key[1] for key in self.last.services}

    def endpoints(self, name: str) -> tuple[Endpoint, ...]:
        service = self.last.services.get((NS, name))
        return () if service is None else service.endpoints

    async def until(
        self, predicate: Callable[[Snapshot], bool], timeout: float = DEADLINE, what: str = ""
    ) -> float:
        """Wait until the latest snapshot satisfies ``predicate``; the seconds it took."""
        started = time.monotonic()
        with anyio.move_on_after(timeout):
            while not (self.snapshots and predicate(self.last)):
                event = self._event
                with anyio.move_on_after(0.05):
                    await event.wait()
            return time.monotonic() - started
        last = self.snapshots[-1] if self.snapshots else None
        summary = None if last is None else (last.complete, sorted(k[1] for k in last.services))
        raise AssertionError(f"timed out after {timeout}s waiting for {what}: last={summary}")


def config(address: str, **overrides: Any) -> ConsulConfig:
    options: dict[str, Any] = {
        "address": address,
        "wait": Duration(5),
        "timeout": Duration(2),
        "retry_max": Duration(0.3),
    }
    options.update(overrides)
    return ConsulConfig(**options)


def make_source(
    address: str | ConsulDouble,
    *,
    metrics: Metrics | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    name: str = "consul",
    **overrides: Any,
) -> ConsulSource:
    """A consul source for ``address``, or for a double: its address and TLS options."""
    if not isinstance(address, str):
        overrides = {**address.client_options, **overrides}
        address = address.url
    context = Context(metrics=metrics or Metrics(), namespace=NS, http_transport=transport)
    source = ConsulSource(name, config(address, **overrides), context)
    source.retry_base = 0.05
    source.recheck_delay = 0.2
    return source


@asynccontextmanager
async def running(source: ConsulSource, *, first_timeout: float = 10.0) -> AsyncIterator[Collector]:
    """Run ``source`` in the background until the block ends."""
    collector = Collector()
    async with anyio.create_task_group() as tg:
        tg.start_soon(source.run, collector)
        with anyio.fail_after(first_timeout):
            while not collector.snapshots:
                await anyio.sleep(0.01)
        try:
            yield collector
        finally:
            tg.cancel_scope.cancel()
    await source.aclose()


def counter(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


@contextmanager
def captured(logger: str = "consul_sync") -> Iterator[list[str]]:
    """Formatted log messages of ``logger`` while the block runs."""
    lines: list[str] = []

    class _Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler = _Handler(logging.DEBUG)
    target = logging.getLogger(logger)
    old_level = target.level
    target.addHandler(handler)
    target.setLevel(logging.DEBUG)
    try:
        yield lines
    finally:
        target.removeHandler(handler)
        target.setLevel(old_level)


def ready(endpoints: tuple[Endpoint, ...]) -> dict[str, bool]:
    return {e.address: e.ready for e in endpoints}
