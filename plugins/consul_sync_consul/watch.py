"""The blocking watches: Consul's index rules, the token's rotation, and what
each watch remembers between two answers.

* :class:`Watcher` runs one blocking query in a loop (:meth:`Watcher.long_poll`)
  and restarts the parked ones when the token changes;
* :class:`HealthWatch` (``/v1/health/state/any``: every node check and the
  tagged services' checks that are not passing) and :class:`NodesWatch`
  (``/v1/catalog/nodes``) hold each watch's last answer and act on a new
  one: node checks to the state, services to read again to the reader;
* :class:`CatalogWatch` (``/v1/catalog/services``) says whether an answer
  is to be taken, and how; taking it touches every part, so the source does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar

import anyio
import attrs

from consul_sync.backoff import Backoff

from . import parse
from .api import ConsulAPI, ConsulError, Reply, decode
from .reader import Reader
from .state import CatalogState
from .status import Status
from .tokens import TokenSource

_T = TypeVar("_T")

log = logging.getLogger("consul_sync.consul")


def went_backwards(old: int, new: int) -> bool:
    """A blocking read at ``old`` answered with a smaller index (``old`` 0:
    a plain read, nothing to compare)."""
    return old > 0 and 0 < new < old


def next_index(old: int, new: int) -> int:
    """The index for the next blocking read: Consul's, unless it went
    backwards (an agent restarted or a snapshot restored): then 0, which
    makes the next read answer at once with the current index."""
    if new <= 0 or new < old:
        return 0
    return new


class Watcher:
    """Blocking queries against one agent.

    ``failed(which, exc)`` hears of each failed or malformed read, ``ok(which)``
    of each good one.  A new token (a rotated token file) changes what Consul
    shows: :meth:`check_token` starts the parked reads again at once.
    """

    def __init__(
        self,
        api: ConsulAPI,
        tokens: TokenSource,
        *,
        wait: float,
        new_backoff: Callable[[], Backoff],
        failed: Callable[[str, Exception], None],
        ok: Callable[[str], None],
    ) -> None:
        self.api = api
        self.tokens = tokens
        self.wait = wait
        self.new_backoff = new_backoff
        self.failed = failed
        self.ok = ok
        self._scopes: set[anyio.CancelScope] = set()
        self._generation = tokens.generation

    async def long_poll(
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

        An answer whose bytes are those of the last one is not decoded again:
        ``handle`` gets the very same value.  (When a service is re-registered
        in place, the catalog's index moves but its body does not; at 10,000
        services, decoding and parsing it cost ~15 ms, comparing it ~10 ms more.)
        """
        index = 0
        backoff = self.new_backoff()
        last: tuple[bytes, _T] | None = None
        while True:
            try:
                reply = await self._get(path, params, index)
                if reply is None:  # restarted: the token changed
                    index = 0
                    continue
                if last is not None and last[0] == reply.body:
                    value = last[1]
                else:
                    value = parse_body(decode(path, reply.body))
                    last = (reply.body, value)
            except (ConsulError, parse.Malformed) as exc:
                last = None
                self.failed(which, exc)
                on_error()
                index = 0
                await anyio.sleep(backoff.next())
                continue
            backoff.reset()
            new_index = reply.index or 0
            handle(value, index, new_index)
            self.ok(which)
            if new_index <= 0:
                # Consul never sends 0; do not spin on an agent that does.
                await anyio.sleep(1.0)
            index = next_index(index, new_index)

    async def _get(self, path: str, params: dict[str, str], index: int) -> Reply | None:
        """One blocking read; ``None`` when :meth:`check_token` cut it short."""
        with anyio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                return await self.api.get(path, params, index=index, wait=self.wait, raw=True)
            finally:
                self._scopes.discard(scope)
        return None

    def check_token(self) -> None:
        """The blocking reads still parked with an old token start again."""
        if self.tokens.generation != self._generation:
            self._generation = self.tokens.generation
            for scope in list(self._scopes):
                scope.cancel()

    async def follow_token_file(self, interval: float) -> None:
        while True:
            await anyio.sleep(interval)
            self.tokens.current()
            self.check_token()


@attrs.frozen
class CatalogTake:
    """An answer of the catalog watch to act on."""

    #: Every tagged service is to be read (first answer, recovery, new token).
    full: bool
    #: Back after an error or a reset index: not complete until all are read.
    recovery: bool


class CatalogWatch:
    """Which token generation the catalog's answers were read with."""

    def __init__(self) -> None:
        #: Token generation of the last answer acted on.
        self.generation = -1
        #: Token generation of the last non-empty answer.
        self.good_generation = -1

    def answer(
        self, index: int, new_index: int, *, token: int, failed: bool, known: bool, empty: bool
    ) -> CatalogTake | None:
        """What to make of an answer read at ``index`` that came back at
        ``new_index`` (``failed``: the watch failed before; ``known``: a
        catalog was taken before; ``empty``: the last one was empty);
        ``None``: nothing moved."""
        # An index that went backwards (a restored snapshot or a restarted
        # agent): indexes from before say nothing about what is there now.
        recovery = failed or went_backwards(index, new_index)
        full = not known or recovery or token != self.generation
        if not (full or new_index != index or empty):
            return None
        self.generation = token
        return CatalogTake(full, recovery)


class Recover(Protocol):
    """Re-read ``names`` after an outage of the ``which`` watch; the snapshot
    is not complete until they are read."""

    def __call__(self, which: str, names: Iterable[str], *, urgent: bool = False) -> None: ...


class HealthWatch:
    """The health watch's last answer (``None``: not watching successfully),
    and what a new one changes: node checks, and services to read again."""

    def __init__(
        self, state: CatalogState, reader: Reader, recover: Recover, notify: Callable[[], None]
    ) -> None:
        self.state = state
        self.reader = reader
        self.recover = recover
        self.notify = notify
        self.checks: parse.Checks | None = None
        #: True from a failed read until the watch answers again.
        self.lost = False

    def failed(self) -> None:
        self.lost = True
        if self.checks is not None:
            # Without the watch, each read's own node checks are the freshest.
            self.checks = None
            self.state.set_node_checks(None, None)
            self.notify()

    def answer(self, new: parse.Checks, index: int, new_index: int) -> None:
        old = self.checks
        if old is None or new_index != index:
            table = parse.node_checks(new)
            if old is None:
                self.state.set_node_checks(table, None)
            else:
                diff = parse.diff_checks(old, new)
                self.state.set_node_checks(table, diff.nodes)
                tagged = self.state.tagged
                self.reader.push(sorted(n for n in diff.services if n in tagged), urgent=True)
            self.checks = new
            self.notify()
        if self.lost:
            # Checks may have flipped while the watch was down, and this first
            # answer has nothing to compare with: read every tagged service.
            self.lost = False
            if self.state.catalog is not None:
                self.recover("health", self.state.tagged)


class NodesWatch:
    """Node -> address, from the last answer of the nodes watch.

    A node re-registered with a new address moves only the nodes table:
    the services with an instance there that used the node's address (no
    address of their own) are read again.  After an outage of the watch,
    the first answer is compared with the last one before it, and the
    snapshot stays incomplete until the services it names are read.  The
    comparison is of addresses, not indexes, so an index that went
    backwards (a restored snapshot) needs nothing more here; the catalog
    watch re-reads everything then.
    """

    def __init__(
        self, state: CatalogState, reader: Reader, status: Status, recover: Recover
    ) -> None:
        self.state = state
        self.reader = reader
        self.status = status
        self.recover = recover
        self.addresses: dict[str, str] | None = None

    def answer(self, nodes: dict[str, str], _index: int, _new_index: int) -> None:
        old = self.addresses
        recovered = "nodes" in self.status.errors
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
                    self.recover("nodes", names, urgent=True)
                else:
                    self.reader.push(sorted(names), urgent=True)
        self.addresses = nodes
