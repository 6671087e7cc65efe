"""The plugin manager: hook specs, the block list, entry points, validation."""

from __future__ import annotations

import importlib.metadata
import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import pluggy

from . import hookspecs
from .model import DROP, DesiredService
from .registry import TypeRegistry

log = logging.getLogger("consul_sync.plugins")

PROJECT = "consul_sync"
ENTRY_POINT_GROUP = "consul_sync"
DISABLE_ENV = "CONSUL_SYNC_DISABLE_PLUGINS"


def blocked_from_env(environ: Mapping[str, str] | None = None) -> set[str]:
    raw = (os.environ if environ is None else environ).get(DISABLE_ENV, "")
    return {name.strip() for name in raw.split(",") if name.strip()}


def make_plugin_manager(
    *,
    plugins: Iterable[object | tuple[str, object]] = (),
    entry_points: bool = True,
    blocked: Iterable[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> pluggy.PluginManager:
    """Build the plugin manager.

    ``plugins`` are registered in addition to the entry points (tests use
    it; a ``(name, plugin)`` pair gives the name).  Names in ``blocked``
    (default: ``CONSUL_SYNC_DISABLE_PLUGINS``, comma-separated) are never
    registered, whether they come from entry points or from ``plugins``.
    Unknown hooks (``consul_sync_*`` functions matching no spec) are an
    error, raised by ``check_pending``.
    """
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in blocked_from_env(environ) if blocked is None else blocked:
        pm.set_blocked(name)
    if entry_points:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    for item in plugins:
        name, plugin = item if isinstance(item, tuple) else (None, item)
        if name is not None and pm.is_blocked(name):
            continue
        pm.register(plugin, name=name)
    pm.check_pending()
    return pm


def collect_types(pm: pluggy.PluginManager) -> TypeRegistry:
    """Ask every plugin for its source and sink types."""
    registry = TypeRegistry()
    for hook in (pm.hook.consul_sync_add_source_types, pm.hook.consul_sync_add_sink_types):
        for impl in hook.get_hookimpls():  # registration order
            registry.current_plugin = impl.plugin_name
            impl.function(registry=registry)
    registry.current_plugin = "?"
    return registry


@attrs.frozen
class PluginInfo:
    name: str
    distribution: str | None
    version: str | None
    hooks: tuple[str, ...]
    source_types: tuple[str, ...]
    sink_types: tuple[str, ...]


def describe(pm: pluggy.PluginManager, registry: TypeRegistry) -> list[PluginInfo]:
    """What ``consul-sync plugins`` prints."""
    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    infos = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda item: str(item[0])):
        if plugin is None:  # blocked
            continue
        dist = dists.get(id(plugin))
        hooks = tuple(sorted(caller.name for caller in pm.get_hookcallers(plugin) or []))
        infos.append(
            PluginInfo(
                name=str(name),
                distribution=dist.metadata["name"] if dist is not None else None,
                version=dist.version if dist is not None else None,
                hooks=hooks,
                source_types=tuple(
                    sorted(
                        t
                        for (kind, t), p in registry.origin.items()
                        if kind == "source" and p == name
                    )
                ),
                sink_types=tuple(
                    sorted(
                        t
                        for (kind, t), p in registry.origin.items()
                        if kind == "sink" and p == name
                    )
                ),
            )
        )
    return infos


def transform(pm: pluggy.PluginManager, service: DesiredService) -> DesiredService | None:
    """Run ``consul_sync_transform_service`` implementations as a chain.

    Returns ``None`` when a plugin dropped the service.  A failing
    implementation is logged and skipped.
    """
    current = service
    # pluggy would call the last registered first; a chain reads better in
    # registration order, which get_hookimpls() gives.
    for impl in pm.hook.consul_sync_transform_service.get_hookimpls():
        try:
            result: Any = impl.function(service=current)
        except Exception:
            log.exception(
                "plugin %s failed to transform service %s/%s; keeping it unchanged",
                impl.plugin_name,
                current.namespace,
                current.name,
            )
            continue
        if result is DROP:
            return None
        if result is not None:
            current = result
    return current


def distribution_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
