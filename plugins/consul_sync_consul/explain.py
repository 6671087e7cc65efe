"""In-place change detection: the catalog index moved, but no name or tag changed.

Then an instance came or went, or was re-registered in place (a new
address, port or meta), and nothing in the catalog's body says which
service.  The :class:`Explainer` finds out, cheapest first:

1. a scan of every node's tagged instances (``catalog/node-services``,
   Consul >= 1.7): :func:`moved_names` compares it with the previous scan and
   with what each service's last read returned (:class:`ReadMemory`);
2. without the scan (agent too old, or it failed): a read that a watch
   triggered may already have returned that very index; then one read of
   every tagged check (:func:`membership_changes`) shows instances with
   checks that came or went;
3. what is still unexplained is found by a sweep (every tagged service
   read again, in the background).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from urllib.parse import quote

import anyio

from . import parse
from .api import HEALTH_STATE, NODE_SERVICES, NODES, ConsulAPI, ConsulError, Unsupported, gc_paused
from .reader import Reader
from .state import CatalogState

log = logging.getLogger("consul_sync.consul")

#: (node, service ID) of instances.
Members = frozenset[tuple[str, str]]


def moved_names(
    tagged: AbstractSet[str],
    scan: parse.Scan,
    previous: parse.Scan | None,
    read_index: Mapping[str, int],
    read_keys: Mapping[str, frozenset[str]],
) -> set[str]:
    """The ``tagged`` names to read again after the instance scan ``scan``.

    A name is read when one of its instances has a ``ModifyIndex`` above the index its
    last read returned (changed or new since), when an instance its last read gave
    (``read_keys``: :func:`parse.instance_key` of each) is gone (deregistered, or lost
    the tag), or when its instances differ from the ``previous`` scan's.
    """
    names = {name for name, top in scan.top.items() if top > read_index.get(name, top)}
    now = scan.indexes.keys()
    names.update(name for name, keys in read_keys.items() if not keys <= now)
    if previous is not None:
        names.update(
            parse.name_of(key) for key, _ in scan.indexes.items() ^ previous.indexes.items()
        )
    return names & tagged


def membership_changes(
    tagged: AbstractSet[str], now: Mapping[str, Members], before: Mapping[str, Members]
) -> set[str]:
    """Tagged names whose instances with checks (``now``, from every tagged
    check) differ from what their last reads gave (``before``)."""
    return {
        name
        for name in (now.keys() | before.keys())
        if name in tagged and now.get(name, frozenset()) != before.get(name)
    }


class ReadMemory:
    """What each service's last read returned, to tell what moved since."""

    def __init__(self) -> None:
        #: Consul name -> the index its last read returned.
        self.index: dict[str, int] = {}
        #: Consul name -> every instance its last read gave (:func:`parse.instance_key`).
        self.members: dict[str, frozenset[str]] = {}
        #: Consul name -> its instances that have checks.
        self.checked: dict[str, Members] = {}
        #: The indexes recent reads returned.
        self.indexes: collections.deque[int] = collections.deque(maxlen=4096)

    def remember(self, name: str, index: int | None, entries: Iterable[parse.Entry]) -> None:
        entries = tuple(entries)
        if index:
            self.indexes.append(index)
            self.index[name] = index
        self.members[name] = frozenset(parse.instance_key(name, e.node, e.id) for e in entries)
        self.checked[name] = frozenset((e.node, e.id) for e in entries if e.service_checks)

    def forget(self, name: str) -> None:
        """``name`` left the catalog."""
        self.checked.pop(name, None)
        self.members.pop(name, None)
        self.index.pop(name, None)


class Explainer:
    """Explains catalog index moves (see the module's docstring); holds the
    indexes nothing explained yet and the last instance scan."""

    def __init__(
        self,
        source: str,
        api: ConsulAPI,
        state: CatalogState,
        memory: ReadMemory,
        reader: Reader,
        *,
        node_services_params: dict[str, str],
        members_params: dict[str, str],
        concurrency: int,
        read_timeout: float,
        count_error: Callable[[], None],
    ) -> None:
        self.source = source
        self.api = api
        self.state = state
        self.memory = memory
        self.reader = reader
        self.node_services_params = node_services_params
        self.members_params = members_params
        self.concurrency = concurrency
        self.read_timeout = read_timeout
        self.count_error = count_error
        #: Catalog indexes nothing has explained yet.
        self.unexplained: set[int] = set()
        self._event = anyio.Event()
        #: The last in-place scan's tagged instances.
        self.scan: parse.Scan | None = None
        #: False once the agent answered 404/405 to catalog/node-services.
        self.scan_supported = True
        self.scans = 0

    def explain(self, index: int) -> None:
        """The catalog moved to ``index`` with an unchanged body."""
        self.unexplained.add(index)
        self._event.set()

    def forget_indexes(self, which: str, old: int, new: int) -> None:
        """The ``which`` watch's index went backwards: the read indexes and
        the last scan belong to the old history, and would hide changes
        whose new indexes are below them."""
        log.info(
            "source %s: the %s index went backwards (%d -> %d: a restored snapshot or a "
            "restarted agent); re-reading",
            self.source,
            which,
            old,
            new,
            extra={"source": self.source},
        )
        self.memory.index.clear()
        self.memory.indexes.clear()
        self.scan = None
        self.unexplained.clear()

    async def run(self) -> None:
        while True:
            await self._event.wait()
            self._event = anyio.Event()
            if not self.unexplained:
                continue
            target = max(self.unexplained)
            changed = await self._instance_changes(target)
            if changed is not None:
                self.unexplained = {i for i in self.unexplained if i > target}
                if changed:
                    log.debug("catalog index %s: reading %d services", target, len(changed))
                    self.reader.push(sorted(changed), urgent=True)
                continue
            # The membership read takes a while at scale: by the time it is
            # back, reads the health watch triggered are back too.
            names = await self._membership_changes()
            pending = self.unexplained - set(self.memory.indexes)
            self.unexplained.clear()
            if not pending:
                continue
            if names:
                await self.reader.read_now(names, limit=self.read_timeout * 2)
                pending -= set(self.memory.indexes)
                if not pending:
                    continue
            log.debug(
                "catalog index %s unexplained: sweeping %d services",
                max(pending),
                len(self.state.tagged),
            )
            self.reader.sweep(self.state.tagged, urgent=False)

    async def _instance_changes(self, target: int) -> set[str] | None:
        """Tagged names whose instances moved, from a scan of every node's
        tagged instances; ``None`` when the scan is unavailable or did not
        reach ``target``."""
        if not self.scan_supported:
            return None
        instances = parse.Scan()
        indexes: list[int] = []
        failures: list[Exception] = []
        try:
            reply = await self.api.get(NODES)
            nodes = parse.catalog_nodes(reply.body)
        except (ConsulError, parse.Malformed) as exc:
            failures.append(exc)
            nodes = {}
        limiter = anyio.CapacityLimiter(self.concurrency)

        async def one(node: str) -> None:
            async with limiter:
                if failures:
                    return
                try:
                    reply = await self.api.get(
                        NODE_SERVICES + quote(node, safe=""), self.node_services_params, raw=True
                    )
                    with gc_paused():  # 30,000 instances at 10,000 services
                        parse.node_services_bytes(node, reply.body, instances)
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
                self.scan_supported = False
                log.info(
                    "source %s: the agent does not serve catalog/node-services (Consul < 1.7?): "
                    "in-place changes are found by sweeps (%s)",
                    self.source,
                    error,
                    extra={"source": self.source},
                )
            else:
                self.count_error()
                log.debug("instance scan failed: %s", error)
            return None
        if not nodes or min(indexes, default=0) < target:
            return None  # no node visible (ACL), or an agent behind the catalog watch
        self.scans += 1
        previous, self.scan = self.scan, instances
        memory = self.memory
        return moved_names(self.state.tagged, instances, previous, memory.index, memory.members)

    async def _membership_changes(self) -> set[str] | None:
        """Names whose instances with checks differ from what we read last."""
        try:
            reply = await self.api.get(HEALTH_STATE, self.members_params)
            now = parse.check_members(reply.body)
        except (ConsulError, parse.Malformed) as exc:
            self.count_error()
            log.debug("membership read failed: %s", exc)
            return None
        return membership_changes(self.state.tagged, now, self.memory.checked)
