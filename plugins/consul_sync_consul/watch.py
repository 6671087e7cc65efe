"""The blocking watches: Consul's index rules, the token's rotation, and what
each watch remembers between two answers.

* :class:`Watcher` runs one blocking query in a loop (:meth:`Watcher.long_poll`)
  and restarts the parked ones when the token changes;
* :class:`CatalogWatch` (``/v1/catalog/services``), :class:`HealthWatch`
  (``/v1/health/state/any``, every node check and the tagged services'
  checks that are not passing) and :class:`NodesWatch`
  (``/v1/catalog/nodes``) hold each watch's memory and say what an answer
  changed; the source acts on it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio
import attrs

from consul_sync.backoff import Backoff

from . import parse
from .api import ConsulAPI, ConsulError, Reply
from .state import CatalogState
from .tokens import TokenSource

_T = TypeVar("_T")


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
        """
        index = 0
        backoff = self.new_backoff()
        while True:
            try:
                reply = await self._get(path, params, index)
                if reply is None:  # restarted: the token changed
                    index = 0
                    continue
                value = parse_body(reply.body)
            except (ConsulError, parse.Malformed) as exc:
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
                return await self.api.get(path, params, index=index, wait=self.wait)
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


class HealthWatch:
    """The health watch's last answer (``None``: not watching successfully)."""

    def __init__(self) -> None:
        self.checks: parse.Checks | None = None
        #: True from a failed read until the watch answers again.
        self.lost = False

    def failed(self) -> bool:
        """A read failed: True when the node checks it gave must be dropped
        (without the watch, each read's own node checks are the freshest)."""
        self.lost = True
        if self.checks is None:
            return False
        self.checks = None
        return True

    def answer(
        self, new: parse.Checks, index: int, new_index: int
    ) -> tuple[dict[str, tuple[tuple[str, str], ...]], parse.ChecksDiff | None] | None:
        """The new node-check table and what moved since the last answer
        (``None`` for the first); ``None`` when the index did not move."""
        old = self.checks
        if old is not None and new_index == index:
            return None
        self.checks = new
        return parse.node_checks(new), None if old is None else parse.diff_checks(old, new)

    def back(self) -> bool:
        """True once, for the first answer after a failure: checks may have
        flipped meanwhile, and it has nothing to compare with."""
        lost, self.lost = self.lost, False
        return lost


class NodesWatch:
    """Node -> address, from the last answer of the nodes watch."""

    def __init__(self) -> None:
        self.addresses: dict[str, str] | None = None

    def answer(self, nodes: dict[str, str], state: CatalogState) -> set[str]:
        """The tagged services with an instance on a node whose address
        changed that used the node's address (no address of their own).

        The comparison is of addresses, not indexes, so an index that went
        backwards (a restored snapshot) needs nothing more here."""
        old, self.addresses = self.addresses, nodes
        names: set[str] = set()
        if old is None:
            return names
        for node, address in nodes.items():
            before = old.get(node)
            if before is None or before == address:
                continue
            for name in state.by_node.get(node, ()):
                entries = state.entries.get(name, ())
                if any(e.node == node and e.address == before for e in entries):
                    names.add(name)
        return names
