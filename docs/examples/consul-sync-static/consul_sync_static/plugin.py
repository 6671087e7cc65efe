"""The ``static`` source type: services and endpoints written in the config.

This module is the plugin: the entry point ``static =
"consul_sync_static.plugin"`` (group ``consul_sync``) makes consul-sync
import it and register the hook implementations it finds here.
"""

from __future__ import annotations

from typing import ClassVar

import anyio
import attrs

from consul_sync import (
    Context,
    DesiredService,
    Endpoint,
    Port,
    Snapshot,
    TypeRegistry,
    hookimpl,
    setting,
)
from consul_sync.config import ValueProblem
from consul_sync.model import Publish

PROTOCOLS = ("TCP", "UDP", "SCTP")


# Validators raise consul-sync's ValueProblem: its text is shown as is, after
# the key path of the bad entry (``sources[0].services[1]: port must be ...``).


def _port_number(_instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 1 <= value <= 65535:
        raise ValueProblem(f"{attribute.name} must be 1-65535, got {value}")


def _protocol(_instance: object, _attribute: attrs.Attribute[str], value: str) -> None:
    if value not in PROTOCOLS:
        raise ValueProblem(f"protocol must be one of {', '.join(PROTOCOLS)}, got {value!r}")


@attrs.frozen
class StaticService:
    """One ``{name = ..., port = ..., addresses = [...]}`` entry of ``services``.

    consul-sync's cattrs converter structures a list of tables into a tuple
    of these, so a bad value is reported with its path, e.g.
    ``sources[0].services[1].port: expected a whole number, got 'http'``.
    """

    name: str
    port: int = attrs.field(validator=_port_number)
    addresses: tuple[str, ...] = ()
    port_name: str = "http"
    protocol: str = attrs.field(default="TCP", validator=_protocol)


@attrs.frozen
class StaticConfig:
    """The keys of a ``[[sources]]`` table of ``type = "static"``."""

    services: tuple[StaticService, ...] = setting((), help="the services and their endpoints")
    namespace: str | None = setting(None, help="namespace (default: TARGET_NAMESPACE)")

    def __attrs_post_init__(self) -> None:
        names = [entry.name for entry in self.services]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueProblem(f"services: each name may appear once; repeated: {', '.join(twice)}")


class StaticSource:
    """A source whose snapshot never changes: what the config file says."""

    type_name: ClassVar[str] = "static"
    Config: ClassVar[type[StaticConfig]] = StaticConfig

    def __init__(self, name: str, config: StaticConfig, context: Context) -> None:
        self.name = name
        self.config = config
        self.namespace = config.namespace or context.namespace

    def _snapshot(self) -> Snapshot:
        services = [
            DesiredService(
                name=entry.name,
                namespace=self.namespace,
                ports=[Port(entry.port_name, entry.port, entry.protocol)],
                endpoints=[Endpoint(address) for address in entry.addresses],
                sources=[self.name],
            )
            for entry in self.config.services
        ]
        return Snapshot.of(self.name, services)

    async def snapshot(self) -> Snapshot:
        return self._snapshot()

    async def run(self, publish: Publish) -> None:
        # Publish once; nothing changes until consul-sync is restarted with a
        # new config.  Sleeping (not returning) keeps the watcher alive.
        await publish(self._snapshot())
        await anyio.sleep_forever()

    async def aclose(self) -> None:
        return None


@hookimpl
def consul_sync_add_source_types(registry: TypeRegistry) -> None:
    registry.add_source_type(StaticSource)
