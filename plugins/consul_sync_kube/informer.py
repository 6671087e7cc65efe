"""List + watch of one kind of object in one namespace.

A watch is a long blocking HTTP stream read by the synchronous client, so
each informer reads it in a daemon thread of its own (not a worker thread
of the limiter that bounds the sink's writes).  Everything the thread
learns is handed to the event loop with ``anyio.from_thread.run_sync``:
the store is only ever read and changed on the event loop, so the sink
needs no locks.  Watch events go through a second thread, the
dispatcher: the reader queues them and goes on reading; the dispatcher
hands over everything queued in one call and waits for the loop.  A burst
(the events of a cold start's 2,000 creates) thus costs the event loop a
hand-off per burst it was busy through, not one per event; a lone event
is handed over at once.

* :meth:`Informer.relist` (event loop) lists afresh and replaces the store;
  the watch then restarts from the new list's resourceVersion.  Events of
  a watch begun before a relist are dropped (they may be older).
* The thread watches from the latest resourceVersion, re-watches when the
  server ends a watch, lists again on ``410 Gone`` (compacted history), and
  backs off on errors (reported through ``on_error``; :mod:`consul_sync.backoff`).
* Events never move an object back to an older resourceVersion (our own
  write's answer may reach the store before the watch event that
  preceded it).
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

from consul_sync.backoff import Backoff

from .errors import KubeError
from .objects import uid as _uid
from .resources import Resource
from .watch import WatchStream

if TYPE_CHECKING:  # (the client module imports ``kubernetes``: only when a sink makes one)
    from .client import KubeClient

log = logging.getLogger("consul_sync.kubernetes.informer")

#: The wait after the n-th failed list or watch in a row: 0.4 s doubling to ``max_backoff``.
BACKOFF_BASE = 0.4

#: ``on_change(names)``: the objects with these names changed (or went away).
OnChange = Callable[[set[str]], None]


def _rv(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion", ""))


def newer_or_same(candidate: str, current: str) -> bool:
    """Whether resourceVersion ``candidate`` is not older than ``current``.

    resourceVersions are opaque; etcd's (and every API server's in
    practice) are integers, and only then are they compared.
    """
    if candidate.isdigit() and current.isdigit():
        return int(candidate) >= int(current)
    return True


class Informer:
    """The objects of one resource in one namespace (``store``), kept up to date."""

    def __init__(
        self,
        client: KubeClient,
        resource: Resource,
        namespace: str,
        *,
        label_selector: str | None,
        on_change: OnChange,
        on_error: Callable[[KubeError], None],
        timeout_seconds: float = 300,
        max_backoff: float = 30.0,
        logger: logging.Logger = log,
    ) -> None:
        self.client = client
        self.resource = resource
        self.namespace = namespace
        self.label_selector = label_selector
        self.on_change = on_change
        self.on_error = on_error
        self.timeout_seconds = timeout_seconds
        self.max_backoff = max_backoff
        self.log = logger
        #: name -> object, as the API server last showed it (event loop only).
        self.store: dict[str, dict[str, Any]] = {}
        self.synced = False
        self._generation = 0
        self._resource_version: str | None = None
        self._lock = threading.Lock()
        self._stream: WatchStream | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        #: (generation, events) read and not yet handed to the event loop
        self._queued: list[tuple[int, list[dict[str, Any]]]] = []
        self._ready = threading.Condition(threading.Lock())
        self._dispatcher: threading.Thread | None = None
        self._token: anyio.lowlevel.EventLoopToken | None = None

    def __repr__(self) -> str:
        return f"<Informer {self.resource.qualified} in {self.namespace}>"

    # --- event loop side ------------------------------------------------

    async def relist(self, limiter: anyio.CapacityLimiter | None = None) -> None:
        """List afresh and replace the store (raises :class:`KubeError`)."""
        items, resource_version = await anyio.to_thread.run_sync(
            lambda: self.client.list(self.resource, self.namespace, self.label_selector),
            limiter=limiter,
            abandon_on_cancel=True,  # a stop does not wait for an API that does not answer
        )
        self._replace(items, resource_version)

    def _replace(self, items: list[dict[str, Any]], resource_version: str) -> None:
        fresh = {obj["metadata"]["name"]: obj for obj in items}
        changed = {
            name
            for name in self.store.keys() | fresh.keys()
            if _rv(self.store.get(name, {})) != _rv(fresh.get(name, {}))
        }
        self.store = fresh
        self.synced = True
        with self._lock:
            self._generation += 1
            self._resource_version = resource_version
            stream, self._stream = self._stream, None
        if stream is not None:  # restart the watch from the new list
            stream.close()
        if changed:
            self.on_change(changed)

    def _events(self, queued: list[tuple[int, list[dict[str, Any]]]]) -> None:
        """Watch events, in the order read; one ``on_change`` for them all."""
        changed: set[str] = set()
        for generation, events in queued:
            for event in events:
                name = self._event(generation, event.get("type", ""), event.get("object") or {})
                if name is not None:
                    changed.add(name)
        if changed:
            self.on_change(changed)

    def _event(self, generation: int, kind: str, obj: dict[str, Any]) -> str | None:
        """Record one event; the name of the object it changed, if any."""
        with self._lock:
            if generation != self._generation:
                return None  # from a watch begun before the latest list
        if kind == "BOOKMARK":
            return None
        name: str = (obj.get("metadata") or {}).get("name", "")
        current = self.store.get(name)
        if kind == "DELETED":
            if current is None or _uid(current) != _uid(obj):
                return None  # already gone, or a newer object of the same name
            del self.store[name]
        else:
            if current is not None and not newer_or_same(_rv(obj), _rv(current)):
                return None
            if current is not None and _rv(current) == _rv(obj):
                return None
            self.store[name] = obj
        return name

    def put(self, obj: dict[str, Any]) -> None:
        """Record an object as a write answered it (event loop)."""
        name = obj["metadata"]["name"]
        current = self.store.get(name)
        if current is None or _uid(current) != _uid(obj) or newer_or_same(_rv(obj), _rv(current)):
            self.store[name] = obj

    def forget(self, name: str, uid: str | None = None) -> None:
        """Drop an object we deleted (event loop)."""
        current = self.store.get(name)
        if current is not None and (uid is None or _uid(current) == uid):
            del self.store[name]

    def start(self) -> None:
        """Start watching (from the event loop, after a first relist)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._token = anyio.lowlevel.current_token()
        self._stopping.clear()
        where = f"{self.resource.plural}-{self.namespace}"
        self._thread = threading.Thread(target=self._run, name=f"watch-{where}", daemon=True)
        if self._dispatcher is None or not self._dispatcher.is_alive():
            self._dispatcher = threading.Thread(
                target=self._dispatch, name=f"watch-events-{where}", daemon=True
            )
            self._dispatcher.start()
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Ask the thread to stop (any thread); see :meth:`join`."""
        self._stopping.set()
        with self._ready:
            self._ready.notify_all()
        with self._lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()

    async def join(self) -> None:
        """Wait (up to 5 seconds) for the thread to end after :meth:`stop`."""
        for thread in (self._thread, self._dispatcher):
            if thread is not None:
                await anyio.to_thread.run_sync(thread.join, 5.0, abandon_on_cancel=True)
        self._thread = self._dispatcher = None

    # --- the thread ---------------------------------------------------------

    def _to_loop(self, func: Callable[..., None], *args: Any) -> None:
        anyio.from_thread.run_sync(func, *args, token=self._token)

    def _queue(self, generation: int, events: list[dict[str, Any]]) -> None:
        """Queue events for the dispatcher (the reading thread never waits
        for the event loop); the next watch starts after them."""
        resource_version = _rv(events[-1].get("object") or {})
        with self._lock:
            if generation == self._generation and resource_version:
                self._resource_version = resource_version
        with self._ready:
            self._queued.append((generation, events))
            self._ready.notify()

    def _dispatch(self) -> None:
        """The dispatcher thread: everything queued, in one hand-off."""
        while True:
            with self._ready:
                while not self._queued and not self._stopping.is_set():
                    self._ready.wait()
                if self._stopping.is_set():
                    self._queued.clear()
                    return
                queued, self._queued = self._queued, []
            try:
                self._to_loop(self._events, queued)
            except Exception as exc:  # the event loop is gone, or a bug
                if not self._stopping.is_set():
                    self.log.debug("%r: watch event dispatcher ends: %r", self, exc)
                return

    def _run(self) -> None:
        backoff = Backoff(BACKOFF_BASE, self.max_backoff)
        while not self._stopping.is_set():
            with self._lock:
                generation, resource_version = self._generation, self._resource_version
            try:
                if resource_version is None:
                    items, resource_version = self.client.list(
                        self.resource, self.namespace, self.label_selector
                    )
                    self._to_loop(self._replace, items, resource_version)
                else:
                    self._watch(generation, resource_version)
                backoff.reset()
            except KubeError as exc:
                if exc.status == 410:  # history compacted: list again
                    self.log.info("%r: watch expired (410 Gone); listing again", self)
                    with self._lock:
                        if self._generation == generation:
                            self._resource_version = None
                    continue
                if self._stopping.is_set():
                    break
                delay = backoff.next()
                try:
                    self._to_loop(self.on_error, exc)
                except Exception:
                    break
                self._stopping.wait(delay)
            except Exception as exc:  # the event loop is gone, or a bug
                if not self._stopping.is_set():
                    self.log.debug("%r: watch thread ends: %r", self, exc)
                break

    def _watch(self, generation: int, resource_version: str) -> None:
        timeout = max(1, int(self.timeout_seconds * random.uniform(1.0, 1.2)))
        stream = self.client.watch(
            self.resource,
            self.namespace,
            resource_version,
            label_selector=self.label_selector,
            timeout_seconds=timeout,
        )
        with self._lock:
            if generation != self._generation or self._stopping.is_set():
                stream.close()
                return
            self._stream = stream
        for batch in stream.batches():
            for i, event in enumerate(batch):
                if event.get("type", "") == "ERROR":
                    if i:
                        self._queue(generation, batch[:i])
                    obj = event.get("object") or {}
                    raise KubeError(
                        int(obj.get("code") or 0),
                        str(obj.get("message") or "watch error"),
                        reason=str(obj.get("reason") or ""),
                        verb="watch",
                        resource=self.resource,
                        namespace=self.namespace,
                    )
            self._queue(generation, batch)
