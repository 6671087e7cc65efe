"""Entry point of the built-in Consul plugin (group ``consul_sync``)."""

from __future__ import annotations

from consul_sync import TypeRegistry, hookimpl

from .checks import check_consul
from .file import FileSource
from .source import ConsulSource


@hookimpl
def consul_sync_add_source_types(registry: TypeRegistry) -> None:
    registry.add_source_type(FileSource)
    registry.add_source_type(ConsulSource)
    registry.add_config_check("source", ConsulSource.type_name, check_consul)
