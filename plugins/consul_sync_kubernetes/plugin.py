"""Entry point of the built-in Kubernetes plugin (group ``consul_sync``)."""

from __future__ import annotations

from consul_sync import TypeRegistry, hookimpl

from .checks import check_kubeconfig
from .manifests import ManifestsSink
from .sink import KubernetesSink


@hookimpl
def consul_sync_add_sink_types(registry: TypeRegistry) -> None:
    registry.add_sink_type(KubernetesSink)
    registry.add_config_check("sink", KubernetesSink.type_name, check_kubeconfig)
    registry.add_sink_type(ManifestsSink)
