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
"""

from __future__ import annotations

import collections
import enum
import logging
import random
import time
from collections.abc import Callable, Iterable
from typing import ClassVar, TypeVar
from urllib.parse import quote

import anyio
import attrs

from consul_sync import Context, Duration, Snapshot, SourceError, secret, setting
from consul_sync.config import ValueProblem
from consul_sync.model import Publish, ServiceKey, StatusNote

from . import parse
from .api import (
    ACLRejected,
    ConsulAPI,
    ConsulError,
    Reply,
    TLSSettings,
    TokenSource,
    Unsupported,
    gc_paused,
    parse_address,
)
from .convert import HealthPolicy
from .state import CatalogState

_T = TypeVar("_T")

log = logging.getLogger("consul_sync.consul")

MAX_WAIT = 600.0  # Consul caps ``wait`` at 10 minutes


class Consistency(enum.StrEnum):
    DEFAULT = "default"
    STALE = "stale"
    CONSISTENT = "consistent"


@attrs.frozen
class ConsulConfig:
    address: str | None = setting(
        None,
        env=("CONSUL_ADDR", "CONSUL_HTTP_ADDR"),
        help="Consul HTTP address: host:port, http://..., https://... or unix:///path",
    )
    token: str | None = secret(None, env=("CONSUL_TOKEN", "CONSUL_HTTP_TOKEN"))
    token_file: str | None = setting(
        None, env="CONSUL_HTTP_TOKEN_FILE", help="file holding the token (re-read on change)"
    )
    ca_file: str | None = setting(None, env="CONSUL_CACERT", help="CA bundle for https")
    ca_path: str | None = setting(None, env="CONSUL_CAPATH", help="directory of CA certificates")
    client_cert: str | None = setting(None, env="CONSUL_CLIENT_CERT", help="client certificate")
    client_key: str | None = setting(None, env="CONSUL_CLIENT_KEY", help="client certificate key")
    tls_server_name: str | None = setting(
        None, env="CONSUL_TLS_SERVER_NAME", help="server name for SNI and verification"
    )
    tls_verify: bool = setting(
        True, env="CONSUL_HTTP_SSL_VERIFY", help="verify the agent's certificate"
    )
    datacenter: str | None = setting(None, env="CONSUL_DATACENTER", help="datacenter (dc=)")
    consul_namespace: str | None = setting(
        None, env="CONSUL_NAMESPACE", help="Consul Enterprise namespace (ns=)"
    )
    partition: str | None = setting(
        None, env="CONSUL_PARTITION", help="Consul Enterprise admin partition"
    )
    tag: str = setting(
        "kubernetes", env="CONSUL_TAG", help="only services with this tag (empty: all)"
    )
    filter: str | None = setting(
        None,
        env="CONSUL_FILTER",
        help='extra filter expression on health/service entries, e.g. Service.Meta.env == "prod"',
    )
    consistency: Consistency = setting(
        Consistency.DEFAULT, env="CONSUL_CONSISTENCY", help="default, stale or consistent"
    )
    wait: Duration = setting(
        Duration(300), env="CONSUL_WAIT", help="blocking-query wait (at most 10m)"
    )
    warning_ready: bool = setting(
        False, env="CONSUL_WARNING_READY", help="instances in warning count as ready"
    )
    include_unhealthy: bool = setting(
        True,
        env="CONSUL_INCLUDE_UNHEALTHY",
        help="keep critical and maintenance instances as not-ready endpoints (false: omit them)",
    )
    include_proxies: bool = setting(
        False, env="CONSUL_INCLUDE_PROXIES", help="sync Connect proxies and gateways (Kind set)"
    )
    max_connections: int = setting(
        64, env="CONSUL_MAX_CONNECTIONS", help="most connections held to the agent at once"
    )
    http2: bool = setting(True, env="CONSUL_HTTP2", help="offer HTTP/2 over https (needs h2)")
    timeout: Duration = setting(Duration(10), help="timeout of a non-blocking read")
    max_body: int = setting(64 * 1024 * 1024, help="largest answer accepted, in bytes")
    retry_max: Duration = setting(Duration(10), help="longest backoff after a failed read")
    namespace: str | None = setting(None, help="Kubernetes namespace (default: TARGET_NAMESPACE)")

    def __attrs_post_init__(self) -> None:
        if self.address is None or not self.address.strip():
            raise ValueProblem(
                "address: the Consul address is required: set CONSUL_ADDR (or "
                "CONSUL_HTTP_ADDR), e.g. http://10.0.10.100:8500"
            )
        try:
            parse_address(self.address)
        except ValueError as exc:
            raise ValueProblem(f"address: {exc}") from None
        if not 0 < self.wait <= MAX_WAIT:
            raise ValueProblem(f"wait: must be more than 0 and at most 10m, got {self.wait!r}")
        if self.max_connections < 3:
            raise ValueProblem(
                "max_connections: at least 3 (two watches and one reader), got "
                f"{self.max_connections}"
            )
        if self.max_body < 1024:
            raise ValueProblem(f"max_body: at least 1024 bytes, got {self.max_body}")
        if self.client_key and not self.client_cert:
            raise ValueProblem("client_key: given without client_cert")


class _WorkQueue:
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


class _Backoff:
    def __init__(self, base: float, cap: float) -> None:
        self.base, self.cap, self.attempt = base, cap, 0

    def next(self) -> float:
        delay: float = min(self.cap, self.base * 2.0**self.attempt) * random.uniform(0.5, 1.0)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0


CATALOG = "/v1/catalog/services"
HEALTH_STATE = "/v1/health/state/any"
NODES = "/v1/catalog/nodes"
NODE_SERVICES = "/v1/catalog/node-services/"


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
        query: dict[str, str] = {}
        if config.datacenter:
            query["dc"] = config.datacenter
        if config.consul_namespace:
            query["ns"] = config.consul_namespace
        if config.partition:
            query["partition"] = config.partition
        if config.consistency is not Consistency.DEFAULT:
            query[config.consistency.value] = ""
        assert config.address is not None  # checked by ConsulConfig
        self.api = ConsulAPI(
            config.address,
            tokens=self.tokens,
            tls=TLSSettings(
                ca_file=config.ca_file,
                ca_path=config.ca_path,
                client_cert=config.client_cert,
                client_key=config.client_key,
                server_name=config.tls_server_name,
                verify=config.tls_verify,
            ),
            query=query,
            max_connections=config.max_connections,
            max_body=config.max_body,
            timeout=config.timeout,
            http2=config.http2,
            transport=context.http_transport,
        )
        self._service_params: dict[str, str] = {}
        if config.tag:
            self._service_params["tag"] = config.tag
        if config.filter:
            self._service_params["filter"] = config.filter
        # The health watch sees every node check and the tagged services'
        # checks that are not passing: small however many services there
        # are, and any status change moves a check into or out of it.
        tagged = f" and {parse.bexpr_string(config.tag)} in ServiceTags" if config.tag else ""
        self._health_params = {"filter": f'ServiceID == "" or (Status != "passing"{tagged})'}
        # Every check of a tagged service: which instances (with checks) exist.
        self._members_params = {"filter": f'ServiceID != ""{tagged}'}
        #: The tagged instances of a node, for the in-place scan.
        self._node_services_params: dict[str, str] = (
            {"filter": f"{parse.bexpr_string(config.tag)} in Tags"} if config.tag else {}
        )
        #: A third long-poll on catalog/nodes when the budget leaves room for
        #: it and a reader (with 3, node address changes wait for a resync).
        self.nodes_watch = config.max_connections >= 4
        #: Readers: the budget less the long-polls.
        self.read_slots = config.max_connections - (3 if self.nodes_watch else 2)
        #: Wall-clock time of the last successful answer from Consul (status page).
        self.last_read: float | None = None
        #: Consul name -> why instances of it were skipped (status page).
        self._skip_reasons: dict[str, tuple[str, ...]] = {}
        self._reset_state()

    # --- the status page (consul_sync.status) -----------------------------------

    def status_notes(self, keys: object = None) -> dict[ServiceKey, StatusNote]:
        return self.state.status_notes(self._skip_reasons)

    def problems(self) -> list[str]:
        found = list(self._errors.values())
        found += list(self._failed.values())[:5]
        if len(self._failed) > 5:
            found.append(f"... and {len(self._failed) - 5} more services cannot be read")
        if self._empty:
            found.append(self._empty)
        return found

    def _reset_state(self) -> None:
        self.state = self._new_state()
        self.queue = _WorkQueue()
        self._errors: dict[str, str] = {}
        self._failed: dict[str, str] = {}
        self._unconfirmed: set[str] = set()
        self._rechecks: set[str] = set()
        self._warned_empty: set[str] = set()
        self._watch_scopes: set[anyio.CancelScope] = set()
        #: Catalog indexes nothing has explained yet.
        self._unexplained: set[int] = set()
        self._explain_event = anyio.Event()
        self._read_waiters: dict[str, list[anyio.Event]] = {}
        #: Consul name -> (node, service ID) of its instances that have checks.
        self._members: dict[str, frozenset[tuple[str, str]]] = {}
        #: Consul name -> (node, service ID) of every instance its last read gave.
        self._read_members: dict[str, frozenset[tuple[str, str]]] = {}
        #: Consul name -> the index its last read returned.
        self._read_index: dict[str, int] = {}
        #: The last in-place scan's tagged instances (see :meth:`_instance_changes`).
        self._scan: parse.Instances | None = None
        #: False once the agent answered 404/405 to catalog/node-services.
        self._scan_supported = True
        #: Node -> address, from the nodes watch.
        self._node_addresses: dict[str, str] | None = None
        #: The health watch's last answer (None: not watching successfully).
        self._checks: parse.Checks | None = None
        #: True from a failed health-watch read until the watch answers again.
        self._health_lost = False
        #: Watch -> the names its recovery must still re-read; the snapshot
        #: is not complete until every recovery has read them all.
        self._recovering: dict[str, set[str]] = {}
        self._watch_generation = self.tokens.generation
        self._empty: str | None = None
        self._sweep_pending: set[str] = set()
        #: Names read for a catalog change that also removed names (a rename:
        #: one ID re-registered under another name): the removal is not
        #: published before they are read, so the runtime sees the rename
        #: whole (one in-place update), never a delete and then a create.
        self._holding: set[str] = set()
        self._holding_until = 0.0
        self._sweep_waiters: list[anyio.Event] = []
        self._read_indexes: collections.deque[int] = collections.deque(maxlen=4096)
        self._loaded = anyio.Event()
        self._publish_event = anyio.Event()
        self._failed_event = anyio.Event()
        self._read_backoff = _Backoff(self.retry_base, self.config.retry_max)
        self._catalog_generation = -1
        #: Token generation of the last non-empty catalog answer.
        self._good_generation = -1
        self._last_complete: bool | None = None
        self._running = False
        self._tg: anyio.abc.TaskGroup | None = None
        self.sweeps = 0
        self.reads = 0
        self.scans = 0

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

    # --- the Source protocol ----------------------------------------------------

    async def run(self, publish: Publish) -> None:
        self._reset_state()
        self._running = True
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._catalog_loop, name=f"{self.name}:catalog")
                tg.start_soon(self._health_loop, name=f"{self.name}:health")
                if self.nodes_watch:
                    tg.start_soon(self._nodes_loop, name=f"{self.name}:nodes")
                background = max(1, min(self.sweep_concurrency, self.read_slots // 2))
                for slot in range(self.read_slots):
                    tg.start_soon(self._reader, slot < background, name=f"{self.name}:reader")
                tg.start_soon(self._retry_loop, name=f"{self.name}:retry")
                tg.start_soon(self._explainer, name=f"{self.name}:explainer")
                if self.config.token_file:
                    tg.start_soon(self._token_loop, name=f"{self.name}:token")
                await self._publisher(publish)
        finally:
            self._running = False
            self._tg = None
            for waiter in self._sweep_waiters:  # a resync() waiting: no sweep will end now
                waiter.set()
            self._sweep_waiters.clear()

    async def snapshot(self) -> Snapshot:
        """One fresh full read (``run --once``, ``plan``, ``render``)."""
        state = self._new_state()
        try:
            reply = await self.api.get(CATALOG)
            catalog = parse.catalog_services(reply.body)
        except (ConsulError, parse.Malformed) as exc:
            self._count_error()
            raise SourceError(self._describe_error("catalog/services", exc)) from None
        if not catalog:
            self.metrics.source_empty.labels(source=self.name).inc()
            raise SourceError(self._empty_message(first=True, token_changed=False))
        state.set_catalog(catalog)
        limiter = anyio.CapacityLimiter(self.read_slots)
        failures: list[str] = []

        async def one(name: str) -> None:
            async with limiter:
                try:
                    reply = await self.api.get(self._service_path(name), self._service_params)
                    parsed = parse.health_service(name, reply.body)
                except (ConsulError, parse.Malformed) as exc:
                    self._count_error()
                    failures.append(self._describe_error(f"health/service/{name}", exc))
                    return
            self._report_problems(parsed.problems)
            state.set_entries(name, parsed.entries)

        async with anyio.create_task_group() as tg:
            for name in sorted(state.tagged):
                tg.start_soon(one, name)
        for failure in failures[:5]:
            log.error("source %s: %s", self.name, failure, extra={"source": self.name})
        return Snapshot(self.name, dict(state.services), complete=not failures)

    async def resync(self) -> None:
        """Re-read the catalog and every tagged service inside the watch;
        return when the sweep has been read (the runtime then does a full pass)."""
        if not self._running:
            return
        try:
            reply = await self.api.get(CATALOG)
            catalog = parse.catalog_services(reply.body)
        except (ConsulError, parse.Malformed) as exc:
            self._watch_failed("catalog", exc)
            return
        waiter = anyio.Event()
        self._sweep_waiters.append(waiter)
        self._take_catalog(catalog, reply.index or 0, reply.index or 0, full=True)
        if not self._sweep_pending:
            waiter.set()
        with anyio.move_on_after(max(60.0, float(self.config.wait))):
            await waiter.wait()

    async def aclose(self) -> None:
        await self.api.aclose()

    # --- watches ------------------------------------------------------------------

    async def _long_poll(
        self,
        which: str,
        path: str,
        params: dict[str, str],
        parse_body: Callable[[object], _T],
        handle: Callable[[_T, int, int], None],
        on_error: Callable[[], None] = lambda: None,
    ) -> None:
        """One blocking-query watch, with Consul's index rules in one place.

        ``handle(value, old_index, new_index)`` gets each parsed answer; a
        failed read or a malformed answer calls ``on_error`` and backs off,
        and the next read starts again from index 0 (a plain read).  The
        index is never sent back as 0, and goes back to 0 when it decreases.
        """
        index = 0
        backoff = _Backoff(self.retry_base, self.config.retry_max)
        while True:
            try:
                reply = await self._watch_get(path, params, index)
                if reply is None:  # restarted: the token changed
                    index = 0
                    continue
                value = parse_body(reply.body)
            except (ConsulError, parse.Malformed) as exc:
                self._watch_failed(which, exc)
                on_error()
                index = 0
                await anyio.sleep(backoff.next())
                continue
            backoff.reset()
            new_index = reply.index or 0
            handle(value, index, new_index)
            self._watch_ok(which)
            if new_index <= 0:
                # Consul never sends 0; do not spin on an agent that does.
                await anyio.sleep(1.0)
            index = _next_index(index, new_index)

    async def _catalog_loop(self) -> None:
        await self._long_poll(
            "catalog", CATALOG, {}, parse.catalog_services, self._on_catalog, self._loaded.set
        )

    def _on_catalog(self, catalog: dict[str, tuple[str, ...]], index: int, new_index: int) -> None:
        token_changed = self.tokens.generation != self._catalog_generation
        recovered = "catalog" in self._errors
        if _went_backwards(index, new_index):
            # A restored snapshot or a restarted agent: indexes from before
            # say nothing about what is there now.
            self._forget_indexes("catalog", index, new_index)
            recovered = True
        full = self.state.catalog is None or recovered or token_changed
        if full or new_index != index or self._empty:
            self._catalog_generation = self.tokens.generation
            self._take_catalog(catalog, index, new_index, full=full, recovery=recovered)

    def _take_catalog(
        self,
        catalog: dict[str, tuple[str, ...]],
        old: int,
        new: int,
        *,
        full: bool,
        recovery: bool = False,
    ) -> None:
        if not catalog:
            # Not even Consul's own "consul" service: an ACL-filtered answer
            # (no token, or one without rights) looks exactly like this.
            if self._empty is None:
                self._empty = self._empty_message(
                    first=self.state.catalog is None,
                    token_changed=self._good_generation not in (-1, self.tokens.generation),
                )
                self.metrics.source_empty.labels(source=self.name).inc()
                log.error(self._empty, extra={"source": self.name})
            if not self._loaded.is_set():
                self._loaded.set()
            self._notify()
            return
        if self._empty is not None:
            log.info(
                "source %s: Consul lists services again (%d)",
                self.name,
                len(catalog),
                extra={"source": self.name},
            )
            self._empty = None
            full = recovery = True
        self._good_generation = self.tokens.generation
        first = self.state.catalog is None
        diff = self.state.set_catalog(catalog)
        for name in diff.removed:
            self._members.pop(name, None)
            self._read_members.pop(name, None)
            self._read_index.pop(name, None)
            self._failed.pop(name, None)
            self._unconfirmed.discard(name)
            self._sweep_pending.discard(name)
            self._recovery_read(name)
        self.queue.push(sorted(diff.to_read), urgent=True)
        if diff.removed and diff.to_read:
            self._holding |= set(diff.to_read)
            self._holding_until = anyio.current_time() + float(self.config.timeout)
        if full and (recovery or (first and self._loaded.is_set())):
            # Back after an error (also the very first answer, if Consul was
            # down at start and a first, incomplete snapshot went out): the
            # snapshot is complete only once every tagged service is read.
            self._recover("catalog", self.state.tagged, urgent=first)
        elif full:
            self._sweep(self.state.tagged, urgent=first)
        elif not diff.body_changed and new != old and old > 0:
            self._unexplained.add(new)
            self._explain_event.set()
        self._check_sweep_done()
        self._notify()

    async def _explainer(self) -> None:
        """The catalog index moved but no name or tag changed: an instance
        came or went, or was re-registered in place (address, port, meta).

        A scan of every node's tagged instances names the services whose
        instances moved (:meth:`_instance_changes`); they are read, and the
        move is explained.  Without the scan (agent too old, or it failed):
        a read that a watch triggered may already have returned that very
        index; then one read of every tagged check shows instances with
        checks that came or went; what is still unexplained is found by a
        sweep.
        """
        while True:
            await self._explain_event.wait()
            self._explain_event = anyio.Event()
            if not self._unexplained:
                continue
            target = max(self._unexplained)
            changed = await self._instance_changes(target)
            if changed is not None:
                self._unexplained = {i for i in self._unexplained if i > target}
                if changed:
                    log.debug("catalog index %s: reading %d services", target, len(changed))
                    self.queue.push(sorted(changed), urgent=True)
                continue
            # The membership read takes a while at scale: by the time it is
            # back, reads the health watch triggered are back too.
            names = await self._membership_changes()
            pending = self._unexplained - set(self._read_indexes)
            self._unexplained.clear()
            if not pending:
                continue
            if names:
                await self._read_now(names)
                pending -= set(self._read_indexes)
                if not pending:
                    continue
            log.debug(
                "catalog index %s unexplained: sweeping %d services",
                max(pending),
                len(self.state.tagged),
            )
            self._sweep(self.state.tagged, urgent=False)

    async def _instance_changes(self, target: int) -> set[str] | None:
        """Tagged names whose instances moved, from a scan of every node's
        tagged instances (``catalog/node-services``, Consul >= 1.7);
        ``None`` when the scan is unavailable or did not reach ``target``.

        A name is read when one of its instances has a ``ModifyIndex``
        above the index its last read returned (changed or new since), when
        an instance its last read gave is gone (deregistered, or lost the
        tag), or when its instances differ from the previous scan's.
        """
        if not self._scan_supported:
            return None
        instances: parse.Instances = {}
        indexes: list[int] = []
        failures: list[Exception] = []
        try:
            reply = await self.api.get(NODES)
            nodes = parse.catalog_nodes(reply.body)
        except (ConsulError, parse.Malformed) as exc:
            failures.append(exc)
            nodes = {}
        limiter = anyio.CapacityLimiter(max(1, min(self.sweep_concurrency, self.read_slots)))

        async def one(node: str) -> None:
            async with limiter:
                if failures:
                    return
                try:
                    reply = await self.api.get(
                        NODE_SERVICES + quote(node, safe=""), self._node_services_params
                    )
                    with gc_paused():  # 30,000 instances at 10,000 services
                        parse.node_services(node, reply.body, instances)
                except (ConsulError, parse.Malformed) as exc:
                    failures.append(exc)
                    return
                indexes.append(reply.index or 0)

        async with anyio.create_task_group() as tg:
            for node in nodes:
                tg.start_soon(one, node)
        if failures:
            error = failures[0]
            if isinstance(error, Unsupported):
                self._scan_supported = False
                log.info(
                    "source %s: the agent does not serve catalog/node-services (Consul < 1.7?): "
                    "in-place changes are found by sweeps (%s)",
                    self.name,
                    error,
                    extra={"source": self.name},
                )
            else:
                self._count_error()
                log.debug("instance scan failed: %s", error)
            return None
        if not nodes or min(indexes, default=0) < target:
            return None  # no node visible (ACL), or an agent behind the catalog watch
        self.scans += 1
        previous, self._scan = self._scan, instances
        return {
            name
            for name in self.state.tagged
            if self._moved(name, instances.get(name, {}), previous)
        }

    def _moved(
        self, name: str, now: dict[tuple[str, str], int], previous: parse.Instances | None
    ) -> bool:
        read = self._read_index.get(name)
        if read is not None and any(index > read for index in now.values()):
            return True  # re-registered, or new, since its last read
        if not self._read_members.get(name, frozenset()) <= now.keys():
            return True  # an instance it had is gone, or lost the tag
        return previous is not None and previous.get(name, {}) != now

    async def _membership_changes(self) -> set[str] | None:
        """Names whose instances with checks differ from what we read last."""
        try:
            reply = await self.api.get(HEALTH_STATE, self._members_params)
            now = parse.check_members(reply.body)
        except (ConsulError, parse.Malformed) as exc:
            self._count_error()
            log.debug("membership read failed: %s", exc)
            return None
        return {
            name
            for name in (now.keys() | self._members.keys())
            if name in self.state.tagged and now.get(name, frozenset()) != self._members.get(name)
        }

    async def _read_now(self, names: Iterable[str]) -> None:
        """Read ``names`` first of all and wait until they have been read."""
        waiters = []
        for name in names:
            event = anyio.Event()
            self._read_waiters.setdefault(name, []).append(event)
            waiters.append(event)
        self.queue.push(sorted(set(names)), urgent=True)
        with anyio.move_on_after(float(self.config.timeout) * 2):
            for event in waiters:
                await event.wait()

    async def _watch_get(self, path: str, params: dict[str, str], index: int) -> Reply | None:
        """One blocking read; ``None`` when :meth:`_check_token` cut it short."""
        with anyio.CancelScope() as scope:
            self._watch_scopes.add(scope)
            try:
                return await self.api.get(path, params, index=index, wait=self.config.wait)
            finally:
                self._watch_scopes.discard(scope)
        return None

    def _check_token(self) -> None:
        """A new token (file rotated) changes what Consul shows: the blocking
        reads still parked with the old one start again at once."""
        if self.tokens.generation != self._watch_generation:
            self._watch_generation = self.tokens.generation
            for scope in list(self._watch_scopes):
                scope.cancel()

    async def _token_loop(self) -> None:
        while True:
            await anyio.sleep(self.token_poll)
            self.tokens.current()
            self._check_token()

    def _sweep(self, names: Iterable[str], *, urgent: bool) -> None:
        names = set(names)
        self.sweeps += 1
        self._sweep_pending |= names
        self.queue.push(sorted(names), urgent=urgent)

    def _recover(self, which: str, names: Iterable[str], *, urgent: bool = False) -> None:
        """A watch is back (after an error, or an index that went backwards):
        re-read ``names`` and compare them with what was published; the
        snapshot is not complete until they have all been read, so that
        nothing is pruned on what was known before."""
        names = set(names)
        if not names:
            return
        log.info(
            "source %s: the %s watch recovered: re-reading %d services",
            self.name,
            which,
            len(names),
            extra={"source": self.name},
        )
        self._recovering.setdefault(which, set()).update(names)
        self._sweep(names, urgent=urgent)
        self._notify()

    def _recovery_read(self, name: str) -> None:
        """``name`` was read (or is gone): tick it off every recovery."""
        for which in list(self._recovering):
            pending = self._recovering[which]
            pending.discard(name)
            if not pending:
                del self._recovering[which]
                log.debug("%s watch recovery: every service re-read", which)
                self._notify()

    def _forget_indexes(self, which: str, old: int, new: int) -> None:
        """The ``which`` watch's index went backwards: the per-service read
        indexes and the last instance scan belong to the old history, and
        would hide changes whose new indexes are below them."""
        log.info(
            "source %s: the %s index went backwards (%d -> %d: a restored snapshot or a "
            "restarted agent); re-reading",
            self.name,
            which,
            old,
            new,
            extra={"source": self.name},
        )
        self._read_index.clear()
        self._read_indexes.clear()
        self._scan = None
        self._unexplained.clear()

    async def _health_loop(self) -> None:
        await self._long_poll(
            "health",
            HEALTH_STATE,
            self._health_params,
            parse.health_state,
            self._on_checks,
            self._on_health_error,
        )

    def _on_health_error(self) -> None:
        self._health_lost = True
        if self._checks is not None:
            # Without the watch, each read's own node checks are the freshest.
            self._checks = None
            self.state.set_node_checks(None, None)
            self._notify()

    def _on_checks(self, new_checks: parse.Checks, index: int, new_index: int) -> None:
        checks = self._checks
        if checks is None or new_index != index:
            table = parse.node_checks(new_checks)
            if checks is None:
                self.state.set_node_checks(table, None)
            else:
                diff = parse.diff_checks(checks, new_checks)
                self.state.set_node_checks(table, diff.nodes)
                self.queue.push(
                    sorted(n for n in diff.services if n in self.state.tagged), urgent=True
                )
            self._checks = new_checks
            self._notify()
        if self._health_lost:
            # Checks may have flipped while the watch was down, and this first
            # answer has nothing to compare with: read every tagged service.
            self._health_lost = False
            if self.state.catalog is not None:
                self._recover("health", self.state.tagged)

    async def _nodes_loop(self) -> None:
        await self._long_poll("nodes", NODES, {}, parse.catalog_nodes, self._on_nodes)

    def _on_nodes(self, nodes: dict[str, str], _index: int, _new_index: int) -> None:
        """A node re-registered with a new address moves only the nodes
        table: re-read the services with an instance there that used the
        node's address (no address of their own).

        After an outage of the watch, the first answer is compared with the
        last one before it, and the snapshot stays incomplete until the
        services it names are read.  The comparison is of addresses, not
        indexes, so an index that went backwards (a restored snapshot)
        needs nothing more here; the catalog watch re-reads everything then."""
        old = self._node_addresses
        recovered = "nodes" in self._errors
        if old is not None:
            names: set[str] = set()
            for node, address in nodes.items():
                before = old.get(node)
                if before is None or before == address:
                    continue
                for name in self.state.by_node.get(node, ()):
                    entries = self.state.entries.get(name, ())
                    if any(e.node == node and e.address == before for e in entries):
                        names.add(name)
            if names:
                log.debug("node addresses changed: reading %d services", len(names))
                if recovered:
                    self._recover("nodes", names, urgent=True)
                else:
                    self.queue.push(sorted(names), urgent=True)
        self._node_addresses = nodes

    # --- reads --------------------------------------------------------------------

    def _service_path(self, name: str) -> str:
        return "/v1/health/service/" + quote(name, safe="")

    async def _reader(self, background_ok: bool) -> None:
        while True:
            await self._read(await self.queue.get(background_ok))

    async def _read(self, name: str) -> None:
        if name not in self.state.tagged:
            self.state.set_entries(name, ())
            self._read_done(name)
            return
        try:
            reply = await self.api.get(self._service_path(name), self._service_params)
            parsed = parse.health_service(name, reply.body)
        except (ConsulError, parse.Malformed) as exc:
            self._read_failed(name, exc)
            self._read_done(name)
            return
        self.reads += 1
        self._check_token()
        if self._failed.pop(name, None) is not None and not self._failed:
            log.info("source %s: reads succeed again", self.name, extra={"source": self.name})
        self._read_backoff.reset()
        if reply.index:
            self._read_indexes.append(reply.index)
            self._read_index[name] = reply.index
        self._read_members[name] = frozenset((e.node, e.id) for e in parsed.entries)
        self._report_problems(parsed.problems)
        self.last_read = time.time()
        if parsed.problems:
            self._skip_reasons[name] = parsed.problems
        else:
            self._skip_reasons.pop(name, None)
        self._members[name] = frozenset((e.node, e.id) for e in parsed.entries if e.service_checks)
        if not parsed.raw_count and not self.config.filter and name in self.state.tagged:
            # Listed with the tag, yet no instance: a deregistration the
            # catalog watch is about to confirm, or a token that may read the
            # service but not its nodes.  Keep what we had until one is sure.
            self._unconfirmed.add(name)
            if name not in self._warned_empty:
                self._schedule_recheck(name)
        else:
            self._unconfirmed.discard(name)
            self._warned_empty.discard(name)
            self.state.set_entries(name, parsed.entries)
        self._read_done(name)
        self._notify()

    def _schedule_recheck(self, name: str) -> None:
        if name in self._rechecks or self._tg is None:
            return
        self._rechecks.add(name)

        async def recheck() -> None:
            await anyio.sleep(self.recheck_delay)
            self._rechecks.discard(name)
            if name not in self._unconfirmed:
                return
            if name not in self.state.tagged:
                self._unconfirmed.discard(name)
                self._notify()
                return
            # Once: later empty reads wait for a watch, a sweep or the catalog
            # to settle it.
            self._warned_empty.add(name)
            log.warning(
                "source %s: Consul lists %r with tag %r but returns no instance of it; "
                "keeping its last known instances (does the token lack node:read?)",
                self.name,
                name,
                self.config.tag,
                extra={"source": self.name},
            )
            self.queue.push([name], urgent=True)

        self._tg.start_soon(recheck)

    def _read_done(self, name: str) -> None:
        for event in self._read_waiters.pop(name, ()):
            event.set()
        if name in self._holding:
            self._holding.discard(name)
            if not self._holding:
                self._notify()
        self._sweep_pending.discard(name)
        self._recovery_read(name)
        self._check_sweep_done()

    def _check_sweep_done(self) -> None:
        if self._sweep_pending:
            return
        if not self._loaded.is_set() and self.state.catalog is not None:
            self._loaded.set()
        for waiter in self._sweep_waiters:
            waiter.set()
        self._sweep_waiters.clear()

    def _read_failed(self, name: str, exc: Exception) -> None:
        self._count_error()
        message = self._describe_error(f"health/service/{name}", exc)
        first = not self._failed
        self._failed[name] = message
        if first:
            log.error(
                "source %s: %s (retrying with backoff; nothing is pruned meanwhile)",
                self.name,
                message,
                extra={"source": self.name},
            )
        self._failed_event.set()
        self._notify()

    async def _retry_loop(self) -> None:
        while True:
            await self._failed_event.wait()
            self._failed_event = anyio.Event()
            await anyio.sleep(self._read_backoff.next())
            names = [n for n in self._failed if n in self.state.tagged]
            for name in list(self._failed):
                if name not in self.state.tagged:
                    del self._failed[name]
            if names:
                self.queue.push(names, urgent=True)
            self._notify()

    # --- failures -----------------------------------------------------------------

    def _count_error(self) -> None:
        self.metrics.consul_errors.inc()
        self.metrics.source_errors.labels(source=self.name).inc()

    def _describe_error(self, what: str, exc: Exception) -> str:
        if isinstance(exc, ACLRejected):
            return (
                f"Consul rejected {self.tokens.describe()} reading {what}: 403 {exc}. "
                "Fix the token (token / CONSUL_TOKEN / CONSUL_HTTP_TOKEN / "
                "CONSUL_HTTP_TOKEN_FILE); nothing is deleted meanwhile"
            )
        if isinstance(exc, parse.Malformed):
            return f"unusable answer from Consul: {exc}"
        text = str(exc)
        if self.tokens.file_error:
            text += f" ({self.tokens.file_error})"
        return f"cannot read {what} from {self.api.base_url}: {text}"

    def _watch_failed(self, which: str, exc: Exception) -> None:
        self._count_error()
        what = {"catalog": "catalog/services", "nodes": "catalog/nodes"}.get(
            which, "health/state/any"
        )
        message = self._describe_error(what, exc)
        if self._errors.get(which) != message:
            log.error(
                "source %s: %s (retrying with backoff; keeping the last known services, "
                "nothing is pruned meanwhile)",
                self.name,
                message,
                extra={"source": self.name},
            )
        self._errors[which] = message
        self._notify()

    def _watch_ok(self, which: str) -> None:
        self.last_read = time.time()
        if self._errors.pop(which, None) is not None:
            log.info(
                "source %s: the %s watch reads Consul again",
                self.name,
                which,
                extra={"source": self.name},
            )
            self._notify()

    def _empty_message(self, *, first: bool, token_changed: bool) -> str:
        who = self.tokens.describe()
        if first:
            what = "Consul lists no service at all, not even its own 'consul' service"
        elif token_changed:
            what = "after the token changed, Consul lists no service at all (not even 'consul')"
        else:
            what = (
                "Consul suddenly lists no service at all (not even 'consul') although the "
                "token did not change"
            )
        return (
            f"source {self.name}: {what}. This is what an ACL token without read rights "
            f"gets (using {who}). Keeping the last known services and deleting nothing "
            "until Consul lists services again."
        )

    def _report_problems(self, problems: Iterable[str]) -> None:
        for problem in problems:
            self.state.warn_once(problem)

    # --- publishing ---------------------------------------------------------------

    def _notify(self) -> None:
        self._publish_event.set()

    def complete(self) -> bool:
        return (
            self.state.catalog is not None
            and not self._errors
            and self._empty is None
            and not self._failed
            and not self._unconfirmed
            and not self._recovering
        )

    async def _publisher(self, publish: Publish) -> None:
        await self._loaded.wait()
        first = True
        while True:
            self._publish_event = anyio.Event()
            held = self._holding_until - anyio.current_time() if self._holding else 0.0
            if held > 0 and not first:
                # A rename's removal waits for its new name's read (bounded
                # by the read timeout).
                with anyio.move_on_after(held):
                    await self._publish_event.wait()
                continue
            self._holding.clear()
            complete = self.complete()
            changed = self.state.take_changed()
            if first or changed or complete != self._last_complete:
                # The runtime ignores hints of incomplete snapshots: after one,
                # let it compare everything once.
                hint = changed if (not first and complete and self._last_complete) else None
                await publish(Snapshot(self.name, dict(self.state.services), complete, hint))
                self._last_complete = complete
                first = False
            await self._publish_event.wait()
            await anyio.sleep(self.publish_interval)


def _went_backwards(old: int, new: int) -> bool:
    """A blocking read at ``old`` answered with a smaller index (``old`` 0:
    a plain read, nothing to compare)."""
    return old > 0 and 0 < new < old


def _next_index(old: int, new: int) -> int:
    """The index for the next blocking read: Consul's, unless it went
    backwards (an agent restarted or a snapshot restored): then 0, which
    makes the next read answer at once with the current index."""
    if new <= 0 or new < old:
        return 0
    return new
