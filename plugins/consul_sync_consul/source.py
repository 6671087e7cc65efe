"""The ``consul`` source: services tagged in a live Consul catalog.

How it watches (docs/consul-source.md has the reasoning and measurements):

* one blocking query on ``/v1/catalog/services`` -- registrations,
  deregistrations, tag changes, and (as an index move with an unchanged
  body) re-registrations in place;
* one blocking query on ``/v1/health/state/any`` filtered to every node
  check and the tagged services' checks that are not passing (small at
  any scale) -- health flips, maintenance, node health;
* targeted non-blocking reads of ``/v1/health/service/NAME`` for exactly
  the services one of the watches named, by a pool of readers;
* one blocking query on ``/v1/catalog/nodes`` (when the budget allows a
  third long-poll) -- a node's own address, which instances without an
  address of their own use;
* when the catalog index moved with an unchanged body (an instance came or
  went, or was re-registered in place with a new address, port or meta), a
  scan of the catalog's instances: ``/v1/catalog/nodes`` then
  ``/v1/catalog/node-services/NODE`` (tagged instances only) for each node,
  whose ``ModifyIndex`` per instance names the services to read;
* a sweep (every tagged service read again, in the background, at lower
  priority) only when that scan is not available (an agent older than 1.7,
  or a failed scan): then one read of every tagged check first finds
  instances with checks that came or went.  A sweep is also what the
  initial read, the periodic resync and a recovery after an outage do.

Connections: two or three long-polls plus reads, never more than
``max_connections`` at once, whatever the number of services.

Failures keep the last good state and make the snapshot incomplete, so
that nothing is pruned on behalf of a source that cannot see.

Who does what: :mod:`.watch` (the long-polls), :mod:`.reader` (the reads),
:mod:`.explain` (in-place changes), :mod:`.status` (failures and
completeness), :mod:`.publish` (snapshots to the runtime).  This module
wires them to the catalog state, and fans a catalog answer out to them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import ClassVar

import anyio

from consul_sync import Context, Snapshot
from consul_sync.backoff import Backoff
from consul_sync.model import Publish, ServiceKey, StatusNote

from . import parse
from .api import (
    CATALOG,
    HEALTH_STATE,
    NODES,
    ConsulAPI,
    ConsulError,
    TokenSource,
)
from .config import Consistency, ConsulConfig, Filters, api_query, tls_settings
from .convert import HealthPolicy
from .explain import Explainer, ReadMemory
from .publish import Publisher
from .reader import Reader, read_once
from .state import CatalogState
from .status import Status
from .watch import CatalogWatch, HealthWatch, NodesWatch, Watcher, went_backwards

__all__ = ["Consistency", "ConsulConfig", "ConsulSource"]

log = logging.getLogger("consul_sync.consul")


class ConsulSource:
    type_name: ClassVar[str] = "consul"
    Config: ClassVar[type[ConsulConfig]] = ConsulConfig

    #: Shortest time between two published snapshots (bursts are gathered).
    publish_interval: float = 0.01
    #: First backoff delay after a failure.
    retry_base: float = 0.5
    #: How long a tagged service that reads empty waits before a re-read.
    recheck_delay: float = 1.0
    #: How often a token file is checked for a new token.
    token_poll: float = 1.0
    #: Readers that may take sweep work (the others only take urgent reads):
    #: a sweep must not crowd out the reads that carry a change.
    sweep_concurrency: int = 8

    def __init__(self, name: str, config: ConsulConfig, context: Context) -> None:
        self.name = name
        self.config = config
        self.context = context
        self.metrics = context.metrics
        self.namespace = config.namespace or context.namespace
        self.policy = HealthPolicy(config.warning_ready, config.include_unhealthy)
        self.tokens = TokenSource(config.token, config.token_file, add_secret=context.add_secret)
        assert config.address is not None  # checked by ConsulConfig
        self.api = ConsulAPI(
            config.address,
            tokens=self.tokens,
            tls=tls_settings(config),
            query=api_query(config),
            max_connections=config.max_connections,
            max_body=config.max_body,
            timeout=config.timeout,
            http2=config.http2,
            transport=context.http_transport,
        )
        self.filters = Filters.of(config)
        #: A third long-poll on catalog/nodes when the budget leaves room for
        #: it and a reader (with 3, node address changes wait for a resync).
        self.nodes_watch = config.max_connections >= 4
        #: Readers: the budget less the long-polls.
        self.read_slots = config.max_connections - (3 if self.nodes_watch else 2)
        #: Wall-clock time of the last successful answer from Consul (status page).
        self.last_read: float | None = None
        #: Consul name -> why instances of it were skipped (status page).
        self._skip_reasons: dict[str, tuple[str, ...]] = {}
        self._start_afresh()

    def _start_afresh(self) -> None:
        """A new run knows nothing yet: every part starts empty (each holds
        its own state; this only wires them)."""
        self.state = self._new_state()
        self.publisher = Publisher(
            self.name,
            self.state,
            self.complete,
            interval=self.publish_interval,
            hold_for=float(self.config.timeout),
        )
        self._notify = self.publisher.notify
        self.status = Status(
            self.name,
            self._notify,
            metrics=self.metrics,
            tokens=self.tokens,
            base_url=self.api.base_url,
        )
        self.memory = ReadMemory()
        self.reader = Reader(
            self.name,
            self.api,
            self.state,
            self.status,
            params=self.filters.service,
            filtered=bool(self.config.filter),
            recheck_delay=self.recheck_delay,
            backoff=self._new_backoff(),
            skip_reasons=self._skip_reasons,
            remember=self.memory.remember,
            answered=self._read_answered,
            done=self.publisher.read,
            swept=self._swept,
            notify=self._notify,
        )
        self.explainer = Explainer(
            self.name,
            self.api,
            self.state,
            self.memory,
            self.reader,
            node_services_params=self.filters.node_services,
            members_params=self.filters.members,
            concurrency=max(1, min(self.sweep_concurrency, self.read_slots)),
            read_timeout=float(self.config.timeout),
            count_error=self.status.count_error,
        )
        self.watcher = Watcher(
            self.api,
            self.tokens,
            wait=self.config.wait,
            new_backoff=self._new_backoff,
            failed=self.status.watch_failed,
            ok=self._watch_ok,
        )
        self.catalog_watch = CatalogWatch()
        self.health_watch = HealthWatch(self.state, self.reader, self._recover, self._notify)
        self.node_addresses = NodesWatch(self.state, self.reader, self.status, self._recover)
        self._running = False

    def _new_backoff(self) -> Backoff:
        return Backoff(self.retry_base, self.config.retry_max)

    def _new_state(self) -> CatalogState:
        return CatalogState(
            source=self.name,
            namespace=self.namespace,
            tag=self.config.tag,
            policy=self.policy,
            include_proxies=self.config.include_proxies,
            warn=self._warn_invalid,
        )

    def _warn_invalid(self, message: str) -> None:
        self.metrics.invalid.labels(source=self.name).inc()
        log.warning(message, extra={"source": self.name})

    # --- counters the tests and bench/ read ----------------------------------------

    @property
    def reads(self) -> int:
        return self.reader.reads

    @property
    def sweeps(self) -> int:
        return self.reader.sweeps

    @property
    def scans(self) -> int:
        return self.explainer.scans

    @property
    def _sweep_pending(self) -> set[str]:
        # bench/bench_consul.py waits on it between measurements.
        return self.reader.sweep_pending

    # --- the status page (consul_sync.status) -----------------------------------

    def status_notes(self, keys: object = None) -> dict[ServiceKey, StatusNote]:
        return self.state.status_notes(self._skip_reasons)

    def problems(self) -> list[str]:
        return self.status.problems()

    def complete(self) -> bool:
        return self.status.complete(self.state.catalog is not None)

    # --- the Source protocol ----------------------------------------------------

    async def run(self, publish: Publish) -> None:
        self._start_afresh()
        self._running = True
        try:
            async with anyio.create_task_group() as tg:
                watch = self.watcher.long_poll
                tg.start_soon(
                    watch, "catalog", CATALOG, {}, parse.catalog_services, self._on_catalog,
                    self.publisher.loaded.set, name=f"{self.name}:catalog",
                )  # fmt: skip
                tg.start_soon(
                    watch, "health", HEALTH_STATE, self.filters.health, parse.health_state,
                    self.health_watch.answer, self.health_watch.failed, name=f"{self.name}:health",
                )  # fmt: skip
                if self.nodes_watch:
                    tg.start_soon(
                        watch, "nodes", NODES, {}, parse.catalog_nodes, self.node_addresses.answer,
                        name=f"{self.name}:nodes",
                    )  # fmt: skip
                background = max(1, min(self.sweep_concurrency, self.read_slots // 2))
                self.reader.start(tg, self.read_slots, background)
                tg.start_soon(self.explainer.run, name=f"{self.name}:explainer")
                if self.config.token_file:
                    tg.start_soon(
                        self.watcher.follow_token_file, self.token_poll, name=f"{self.name}:token"
                    )
                await self.publisher.run(publish)
        finally:
            self._running = False
            self.reader.stop()  # a resync() waiting: no sweep will end now

    async def snapshot(self) -> Snapshot:
        """One fresh full read (``run --once``, ``plan``, ``render``)."""
        return await read_once(
            self.api,
            self._new_state(),
            self.filters.service,
            slots=self.read_slots,
            status=self.status,
            warn_once=self.state.warn_once,
        )

    async def resync(self) -> None:
        """Re-read the catalog and every tagged service inside the watch;
        return when the sweep has been read (the runtime then does a full pass)."""
        if not self._running:
            return
        try:
            reply = await self.api.get(CATALOG)
            catalog = parse.catalog_services(reply.body)
        except (ConsulError, parse.Malformed) as exc:
            self.status.watch_failed("catalog", exc)
            return
        waiter = self.reader.sweep_waiter()
        self._take_catalog(catalog, reply.index or 0, reply.index or 0, full=True)
        if not self.reader.sweep_pending:
            waiter.set()
        with anyio.move_on_after(max(60.0, float(self.config.wait))):
            await waiter.wait()

    async def aclose(self) -> None:
        await self.api.aclose()

    # --- the catalog watch --------------------------------------------------------

    def _on_catalog(self, catalog: dict[str, tuple[str, ...]], index: int, new_index: int) -> None:
        if went_backwards(index, new_index):
            self.explainer.forget_indexes("catalog", index, new_index)
        take = self.catalog_watch.answer(
            index,
            new_index,
            token=self.tokens.generation,
            failed="catalog" in self.status.errors,
            known=self.state.catalog is not None,
            empty=self.status.empty is not None,
        )
        if take is not None:
            self._take_catalog(catalog, index, new_index, full=take.full, recovery=take.recovery)

    def _take_catalog(
        self,
        catalog: dict[str, tuple[str, ...]],
        old: int,
        new: int,
        *,
        full: bool,
        recovery: bool = False,
    ) -> None:
        status = self.status
        if not catalog:
            good = self.catalog_watch.good_generation
            status.catalog_empty(
                first=self.state.catalog is None,
                token_changed=good not in (-1, self.tokens.generation),
            )
            if not self.publisher.loaded.is_set():
                self.publisher.loaded.set()
            self._notify()
            return
        if status.catalog_back(len(catalog)):
            full = recovery = True
        self.catalog_watch.good_generation = self.tokens.generation
        first = self.state.catalog is None
        diff = self.state.set_catalog(catalog)
        for name in diff.removed:
            self.memory.forget(name)
            self.reader.forget(name)
            status.forget(name)
        self.reader.push(sorted(diff.to_read), urgent=True)
        if diff.removed and diff.to_read:
            self.publisher.hold(diff.to_read)
        if full and (recovery or (first and self.publisher.loaded.is_set())):
            # Back after an error (also the very first answer, if Consul was
            # down at start and a first, incomplete snapshot went out): the
            # snapshot is complete only once every tagged service is read.
            self._recover("catalog", self.state.tagged, urgent=first)
        elif full:
            self.reader.sweep(self.state.tagged, urgent=first)
        elif not diff.body_changed and new != old and old > 0:
            self.explainer.explain(new)
        self.reader.check_sweep_done()
        self._notify()

    def _recover(self, which: str, names: Iterable[str], *, urgent: bool = False) -> None:
        """A watch is back (after an error, or an index that went backwards):
        re-read ``names`` and compare them with what was published; the
        snapshot is not complete until they have all been read, so that
        nothing is pruned on what was known before."""
        names = set(names)
        if not names:
            return
        self.status.recover(which, names)
        self.reader.sweep(names, urgent=urgent)
        self._notify()

    # --- answers ------------------------------------------------------------------

    def _watch_ok(self, which: str) -> None:
        self.last_read = time.time()
        self.status.watch_ok(which)

    def _read_answered(self) -> None:
        self.watcher.check_token()
        self.last_read = time.time()

    def _swept(self) -> None:
        if not self.publisher.loaded.is_set() and self.state.catalog is not None:
            self.publisher.loaded.set()
