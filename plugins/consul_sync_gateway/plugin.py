"""Entry point of the built-in Gateway API plugin (group ``consul_sync``)."""

from __future__ import annotations

from consul_sync import TypeRegistry, hookimpl

from .checks import check_gateway
from .sink import GatewaySink


@hookimpl
def consul_sync_add_sink_types(registry: TypeRegistry) -> None:
    registry.add_sink_type(GatewaySink)
    registry.add_config_check("sink", GatewaySink.type_name, check_gateway)
