"""The reader pool: targeted reads of ``/v1/health/service/NAME`` (and
:func:`read_once`, the one-off read of everything a snapshot is).

The watches and the explainer name services; readers take them off a
:class:`WorkQueue` (urgent ones first, then background sweep work) and
give each answer to the catalog state.  A failed read keeps what was
known and is retried with backoff (:mod:`consul_sync.backoff`).  A
tagged service that reads empty keeps its last instances and is read
again once after ``recheck_delay`` (a deregistration the catalog watch is
about to confirm, or a token that may read the service but not its nodes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

import anyio
import anyio.abc

from consul_sync import Snapshot, SourceError
from consul_sync.backoff import Backoff

from . import parse
from .api import CATALOG, ConsulAPI, ConsulError, service_path
from .state import CatalogState
from .status import Status, empty_message

log = logging.getLogger("consul_sync.consul")


class WorkQueue:
    """Service names to read: urgent ones first, then background (sweep) ones."""

    def __init__(self) -> None:
        self.urgent: dict[str, None] = {}
        self.background: dict[str, None] = {}
        self._event = anyio.Event()

    def push(self, names: Iterable[str], *, urgent: bool) -> None:
        for name in names:
            if urgent:
                self.background.pop(name, None)
                self.urgent[name] = None
            elif name not in self.urgent:
                self.background[name] = None
        self._event.set()
        self._event = anyio.Event()

    async def get(self, background_ok: bool) -> str:
        while True:
            if self.urgent:
                name = next(iter(self.urgent))
                del self.urgent[name]
                return name
            if background_ok and self.background:
                name = next(iter(self.background))
                del self.background[name]
                return name
            await self._event.wait()


class Reader:
    """The readers, their queue, and who waits for which reads.

    ``remember(name, index, entries)`` gets every successful read (what
    the explainer compares with), ``answered()`` every answer; ``done(name)``
    is called once a name was read, failed, or turned out untagged;
    ``swept()`` whenever no sweep read is left.
    """

    def __init__(
        self,
        source: str,
        api: ConsulAPI,
        state: CatalogState,
        status: Status,
        *,
        params: Mapping[str, str],
        filtered: bool,
        recheck_delay: float,
        backoff: Backoff,
        skip_reasons: dict[str, tuple[str, ...]],
        remember: Callable[[str, int | None, tuple[parse.Entry, ...]], None],
        answered: Callable[[], None],
        done: Callable[[str], None],
        swept: Callable[[], None],
        notify: Callable[[], None],
    ) -> None:
        self.source = source
        self.api = api
        self.state = state
        self.status = status
        self.params = dict(params)
        #: A filter expression may leave a tagged service without instances.
        self.filtered = filtered
        self.recheck_delay = recheck_delay
        self.backoff = backoff
        self.skip_reasons = skip_reasons
        self.remember = remember
        self.answered = answered
        self.done = done
        self.swept = swept
        self.notify = notify
        self.queue = WorkQueue()
        #: Names whose sweep read is still to come.
        self.sweep_pending: set[str] = set()
        self._sweep_waiters: list[anyio.Event] = []
        self._read_waiters: dict[str, list[anyio.Event]] = {}
        self._rechecks: set[str] = set()
        #: Names whose empty read was reported once (later ones wait quietly).
        self._warned_empty: set[str] = set()
        self._failed_event = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None
        self.reads = 0
        self.sweeps = 0

    def start(self, tg: anyio.abc.TaskGroup, slots: int, background: int) -> None:
        """``slots`` readers, of which ``background`` may take sweep work."""
        self._tg = tg
        for slot in range(slots):
            tg.start_soon(self._reader, slot < background, name=f"{self.source}:reader")
        tg.start_soon(self._retry_loop, name=f"{self.source}:retry")

    def stop(self) -> None:
        self._tg = None
        self._release_sweep_waiters()

    # --- what to read -----------------------------------------------------------

    def push(self, names: Iterable[str], *, urgent: bool) -> None:
        self.queue.push(names, urgent=urgent)

    def sweep(self, names: Iterable[str], *, urgent: bool) -> None:
        """Read ``names`` again, all of them (``urgent``: before other work)."""
        names = set(names)
        self.sweeps += 1
        self.sweep_pending |= names
        self.queue.push(sorted(names), urgent=urgent)

    def sweep_waiter(self) -> anyio.Event:
        """An event set once no sweep read is left (or the readers stop)."""
        waiter = anyio.Event()
        self._sweep_waiters.append(waiter)
        return waiter

    def forget(self, name: str) -> None:
        """``name`` left the catalog."""
        self.sweep_pending.discard(name)

    async def read_now(self, names: Iterable[str], *, limit: float) -> None:
        """Read ``names`` first of all and wait until they have been read
        (``limit``: at most that many seconds)."""
        waiters = []
        for name in names:
            event = anyio.Event()
            self._read_waiters.setdefault(name, []).append(event)
            waiters.append(event)
        self.queue.push(sorted(set(names)), urgent=True)
        with anyio.move_on_after(limit):
            for event in waiters:
                await event.wait()

    def check_sweep_done(self) -> None:
        if self.sweep_pending:
            return
        self.swept()
        self._release_sweep_waiters()

    def _release_sweep_waiters(self) -> None:
        for waiter in self._sweep_waiters:
            waiter.set()
        self._sweep_waiters.clear()

    # --- reading ----------------------------------------------------------------

    async def _reader(self, background_ok: bool) -> None:
        while True:
            await self._read(await self.queue.get(background_ok))

    async def _read(self, name: str) -> None:
        if name not in self.state.tagged:
            self.state.set_entries(name, ())
            self._read_done(name)
            return
        try:
            reply = await self.api.get(service_path(name), self.params)
            parsed = parse.health_service(name, reply.body)
        except (ConsulError, parse.Malformed) as exc:
            self._read_failed(name, exc)
            self._read_done(name)
            return
        self.reads += 1
        self.answered()
        self.status.read_ok(name)
        self.backoff.reset()
        self.remember(name, reply.index, parsed.entries)
        for problem in parsed.problems:
            self.state.warn_once(problem)
        if parsed.problems:
            self.skip_reasons[name] = parsed.problems
        else:
            self.skip_reasons.pop(name, None)
        if not parsed.raw_count and not self.filtered and name in self.state.tagged:
            # Listed with the tag, yet no instance: a deregistration the
            # catalog watch is about to confirm, or a token that may read the
            # service but not its nodes.  Keep what we had until one is sure.
            self.status.unconfirmed.add(name)
            if name not in self._warned_empty:
                self._schedule_recheck(name)
        else:
            self.status.unconfirmed.discard(name)
            self._warned_empty.discard(name)
            self.state.set_entries(name, parsed.entries)
        self._read_done(name)
        self.notify()

    def _schedule_recheck(self, name: str) -> None:
        if name in self._rechecks or self._tg is None:
            return
        self._rechecks.add(name)

        async def recheck() -> None:
            await anyio.sleep(self.recheck_delay)
            self._rechecks.discard(name)
            if name not in self.status.unconfirmed:
                return
            if name not in self.state.tagged:
                self.status.unconfirmed.discard(name)
                self.notify()
                return
            # Once: later empty reads wait for a watch, a sweep or the catalog
            # to settle it.
            self._warned_empty.add(name)
            log.warning(
                "source %s: Consul lists %r with tag %r but returns no instance of it; "
                "keeping its last known instances (does the token lack node:read?)",
                self.source,
                name,
                self.state.tag,
                extra={"source": self.source},
            )
            self.queue.push([name], urgent=True)

        self._tg.start_soon(recheck)

    def _read_done(self, name: str) -> None:
        for event in self._read_waiters.pop(name, ()):
            event.set()
        self.done(name)
        self.sweep_pending.discard(name)
        self.status.recovery_read(name)
        self.check_sweep_done()

    # --- failures -----------------------------------------------------------------

    def _read_failed(self, name: str, exc: Exception) -> None:
        self.status.read_failed(name, self.status.error(f"health/service/{name}", exc))
        self._failed_event.set()
        self.notify()

    async def _retry_loop(self) -> None:
        while True:
            await self._failed_event.wait()
            self._failed_event = anyio.Event()
            await anyio.sleep(self.backoff.next())
            names = self.status.to_retry(self.state.tagged)
            if names:
                self.queue.push(names, urgent=True)
            self.notify()


async def read_once(
    api: ConsulAPI,
    state: CatalogState,
    params: Mapping[str, str],
    *,
    slots: int,
    status: Status,
    warn_once: Callable[[str], None],
) -> Snapshot:
    """The catalog, then every tagged service, read once into ``state``,
    ``slots`` at a time (no watch: ``run --once``, ``plan``, ``render``).
    Problems with what was read go to ``warn_once``."""
    source = status.source
    try:
        reply = await api.get(CATALOG)
        catalog = parse.catalog_services(reply.body)
    except (ConsulError, parse.Malformed) as exc:
        raise SourceError(status.error("catalog/services", exc)) from None
    if not catalog:
        status.metrics.source_empty.labels(source=source).inc()
        raise SourceError(empty_message(source, status.tokens, first=True, token_changed=False))
    state.set_catalog(catalog)
    limiter = anyio.CapacityLimiter(slots)
    failures: list[str] = []

    async def one(name: str) -> None:
        async with limiter:
            try:
                reply = await api.get(service_path(name), params)
                parsed = parse.health_service(name, reply.body)
            except (ConsulError, parse.Malformed) as exc:
                failures.append(status.error(f"health/service/{name}", exc))
                return
        for problem in parsed.problems:
            warn_once(problem)
        state.set_entries(name, parsed.entries)

    async with anyio.create_task_group() as tg:
        for name in sorted(state.tagged):
            tg.start_soon(one, name)
    for failure in failures[:5]:
        log.error("source %s: %s", source, failure, extra={"source": source})
    return Snapshot(source, dict(state.services), complete=not failures)
