"""List + watch of one kind of object in one namespace (a copy of the
kubernetes plugin's informer: plugins do not import each other).

A watch is a long blocking HTTP stream read by the synchronous client, so
each informer reads it in a daemon thread of its own (not a worker thread
of the limiter that bounds the sink's writes).  Everything the thread
learns is handed to the event loop with ``anyio.from_thread.run_sync``:
the store is only ever read and changed on the event loop, so the sink
needs no locks.

* :meth:`Informer.relist` (event loop) lists afresh and replaces the store;
  the watch then restarts from the new list's resourceVersion.  Events of
  a watch begun before a relist are dropped (they may be older).
* The thread watches from the latest resourceVersion, re-watches when the
  server ends a watch, lists again on ``410 Gone`` (compacted history), and
  backs off on errors (reported through ``on_error``).
* Events never move an object back to an older resourceVersion (our own
  write's answer may reach the store before the watch event that
  preceded it).
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

from .client import GatewayClient as KubeClient
from .client import KubeError, Resource, WatchStream

log = logging.getLogger("consul_sync.gateway.informer")

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
    ) -> None:
        self.client = client
        self.resource = resource
        self.namespace = namespace
        self.label_selector = label_selector
        self.on_change = on_change
        self.on_error = on_error
        self.timeout_seconds = timeout_seconds
        self.max_backoff = max_backoff
        #: name -> object, as the API server last showed it (event loop only).
        self.store: dict[str, dict[str, Any]] = {}
        self.synced = False
        self._generation = 0
        self._resource_version: str | None = None
        self._lock = threading.Lock()
        self._stream: WatchStream | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
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

    def _event(self, generation: int, kind: str, obj: dict[str, Any]) -> None:
        with self._lock:
            if generation != self._generation:
                return  # from a watch begun before the latest list
            self._resource_version = _rv(obj) or self._resource_version
        if kind == "BOOKMARK":
            return
        name = (obj.get("metadata") or {}).get("name", "")
        current = self.store.get(name)
        if kind == "DELETED":
            if current is None or _uid(current) != _uid(obj):
                return  # already gone, or a newer object of the same name
            del self.store[name]
        else:
            if current is not None and not newer_or_same(_rv(obj), _rv(current)):
                return
            if current is not None and _rv(current) == _rv(obj):
                return
            self.store[name] = obj
        self.on_change({name})

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
        self._thread = threading.Thread(
            target=self._run, name=f"watch-{self.resource.plural}-{self.namespace}", daemon=True
        )
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Ask the thread to stop (any thread); see :meth:`join`."""
        self._stopping.set()
        with self._lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()

    async def join(self) -> None:
        """Wait (up to 5 seconds) for the thread to end after :meth:`stop`."""
        thread, self._thread = self._thread, None
        if thread is not None:
            await anyio.to_thread.run_sync(thread.join, 5.0, abandon_on_cancel=True)

    # --- the thread ---------------------------------------------------------

    def _to_loop(self, func: Callable[..., None], *args: Any) -> None:
        anyio.from_thread.run_sync(func, *args, token=self._token)

    def _run(self) -> None:
        failures = 0
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
                failures = 0
            except KubeError as exc:
                if exc.status == 410:  # history compacted: list again
                    log.info("%r: watch expired (410 Gone); listing again", self)
                    with self._lock:
                        if self._generation == generation:
                            self._resource_version = None
                    continue
                if self._stopping.is_set():
                    break
                failures += 1
                try:
                    self._to_loop(self.on_error, exc)
                except Exception:
                    break
                delay = min(self.max_backoff, 0.2 * 2**failures) * random.uniform(0.5, 1.0)
                self._stopping.wait(delay)
            except Exception as exc:  # the event loop is gone, or a bug
                if not self._stopping.is_set():
                    log.debug("%r: watch thread ends: %r", self, exc)
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
        for event in stream:
            kind = event.get("type", "")
            obj = event.get("object") or {}
            if kind == "ERROR":
                code = int(obj.get("code") or 0)
                raise KubeError(
                    code,
                    str(obj.get("message") or "watch error"),
                    reason=str(obj.get("reason") or ""),
                    verb="watch",
                    resource=self.resource,
                    namespace=self.namespace,
                )
            self._to_loop(self._event, generation, kind, obj)


def _uid(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("uid", ""))
