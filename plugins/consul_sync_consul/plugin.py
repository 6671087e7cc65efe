"""Entry point of the built-in Consul plugin (group ``consul_sync``)."""

from __future__ import annotations

from consul_sync import TypeRegistry, hookimpl

from .file import FileSource
from .source import ConsulSource


@hookimpl
def consul_sync_add_source_types(registry: TypeRegistry) -> None:
    registry.add_source_type(FileSource)
    registry.add_source_type(ConsulSource)
