"""Public test helpers: an in-memory source and sink, and a plugin that
registers them, for testing consul-sync and third-party plugins.

``FakeSink`` behaves like a careful real sink: it owns what it wrote, keeps
foreign objects it is told about, refuses nothing unless told to, and
counts every write.  ``FakeSource`` publishes whatever a test pushes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import anyio
import attrs

from . import hookimpl
from .errors import SinkError
from .model import (
    Action,
    Change,
    DesiredService,
    Endpoint,
    Observed,
    Port,
    Publish,
    ServiceKey,
    Snapshot,
)
from .registry import Context, TypeRegistry


def service(
    name: str,
    *addresses: str | Endpoint,
    namespace: str = "network",
    port: int = 8080,
    source: str = "fake",
    **kwargs: Any,
) -> DesiredService:
    """A desired service with one ``http`` port and ready endpoints (an
    address, or an :class:`Endpoint` as it is)."""
    return DesiredService(
        name=name,
        namespace=namespace,
        ports=[Port("http", port)],
        endpoints=[a if isinstance(a, Endpoint) else Endpoint(a) for a in addresses],
        sources=[source],
        **kwargs,
    )


@attrs.frozen
class FakeSourceConfig:
    pass


class FakeSource:
    type_name: ClassVar[str] = "fake"
    Config: ClassVar[type[FakeSourceConfig]] = FakeSourceConfig

    def __init__(
        self, name: str = "fake", config: Any = None, context: Context | None = None
    ) -> None:
        self.name = name
        self.services: dict[ServiceKey, DesiredService] = {}
        self.complete = True
        self._publish: Publish | None = None
        self.fail_snapshot: Exception | None = None
        self.closed = False

    def current(self, changed: Iterable[ServiceKey] | None = None) -> Snapshot:
        return Snapshot(
            self.name,
            dict(self.services),
            self.complete,
            None if changed is None else frozenset(changed),
        )

    async def push(
        self,
        services: Iterable[DesiredService] | None = None,
        *,
        complete: bool = True,
        upsert: Iterable[DesiredService] = (),
        remove: Iterable[ServiceKey] = (),
    ) -> None:
        """Replace (``services``) or edit (``upsert``/``remove``) and publish."""
        changed: set[ServiceKey] | None = None
        if services is not None:
            self.services = {s.key: s for s in services}
        else:
            changed = set()
            for item in upsert:
                self.services[item.key] = item
                changed.add(item.key)
            for key in remove:
                self.services.pop(key, None)
                changed.add(key)
        self.complete = complete
        if self._publish is not None:
            await self._publish(self.current(changed))

    async def run(self, publish: Publish) -> None:
        self._publish = publish
        await publish(self.current())
        await anyio.sleep_forever()

    async def snapshot(self) -> Snapshot:
        if self.fail_snapshot is not None:
            raise self.fail_snapshot
        return self.current()

    async def aclose(self) -> None:
        self.closed = True


@attrs.frozen
class FakeSinkConfig:
    concurrency: int = 4


class FakeSink:
    type_name: ClassVar[str] = "fake"
    Config: ClassVar[type[FakeSinkConfig]] = FakeSinkConfig

    def __init__(
        self,
        name: str = "fake",
        config: FakeSinkConfig | None = None,
        context: Context | None = None,
    ) -> None:
        self.name = name
        self.concurrency = (config or FakeSinkConfig()).concurrency
        self.objects: dict[ServiceKey, Observed] = {}
        self.writes: list[Change] = []
        self.observes: list[bool] = []
        #: key -> error raised by the next applies of that key
        self.failures: dict[ServiceKey, SinkError] = {}
        #: seconds each apply takes (for shutdown tests)
        self.delay = 0.0
        self.in_flight = 0
        self.peak_in_flight = 0
        self.finished_writes = 0
        self.closed = False
        self.fail_observe: Exception | None = None

    def add_foreign(self, key: ServiceKey) -> None:
        self.objects[key] = Observed(key, owned=False)

    def add_owned(self, item: DesiredService) -> None:
        self.objects[item.key] = Observed(item.key, True, item, item.sources)

    def owned(self) -> dict[ServiceKey, DesiredService]:
        return {k: o.service for k, o in self.objects.items() if o.owned and o.service is not None}

    def count(self, action: Action | None = None) -> int:
        return sum(1 for w in self.writes if action is None or w.action is action)

    async def open(self) -> None:
        return None

    async def observe(self, *, fresh: bool = False) -> Mapping[ServiceKey, Observed]:
        self.observes.append(fresh)
        if self.fail_observe is not None:
            raise self.fail_observe
        return self.objects

    async def apply(self, change: Change) -> None:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            if self.delay:
                await anyio.sleep(self.delay)
            error = self.failures.get(change.key)
            if error is not None:
                raise error
            current = self.objects.get(change.key)
            if current is not None and not current.owned:
                raise SinkError(f"{change.key} is not ours", retryable=False)
            self.writes.append(change)
            if change.action is Action.DELETE:
                self.objects.pop(change.key, None)
            else:
                assert change.desired is not None
                self.add_owned(change.desired)
            self.finished_writes += 1
        finally:
            self.in_flight -= 1

    def render(self, services: Sequence[DesiredService]) -> list[dict[str, Any]]:
        return [
            {
                "kind": "Fake",
                "name": s.name,
                "namespace": s.namespace,
                "endpoints": [e.address for e in s.endpoints],
            }
            for s in services
        ]

    async def aclose(self) -> None:
        self.closed = True


class FakePlugin:
    """Registers ``FakeSource`` and ``FakeSink`` as type ``fake``."""

    @hookimpl
    def consul_sync_add_source_types(self, registry: TypeRegistry) -> None:
        registry.add_source_type(FakeSource)

    @hookimpl
    def consul_sync_add_sink_types(self, registry: TypeRegistry) -> None:
        registry.add_sink_type(FakeSink)
