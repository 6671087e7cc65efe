"""Helpers: consul-sync with the kubernetes and gateway sinks on the API double."""

from __future__ import annotations

from typing import Any

from consul_sync.cli import App, build_app
from consul_sync.config import load_settings
from consul_sync.metrics import Metrics
from consul_sync.plugins import collect_types, make_plugin_manager
from consul_sync.registry import Context
from consul_sync.testing import FakePlugin
from consul_sync_gateway.client import GatewayClient
from consul_sync_gateway.sink import GatewaySink
from consul_sync_kubernetes.client import KubeClient
from tests.fakes.k8s_double import KubeDouble

NS = "network"
ROUTES = "/apis/gateway.networking.k8s.io/v1/namespaces/network/httproutes"


def gateway_app(
    kube: KubeDouble, *, gateway: dict[str, Any] | None = None, **global_settings: Any
) -> App:
    pm = make_plugin_manager(plugins=[("fake", FakePlugin())], environ={})
    registry = collect_types(pm)
    raw = {
        "namespace": NS,
        "coalesce_window": "10ms",
        "retry_base": "50ms",
        "retry_max": "500ms",
        **global_settings,
        "sources": [{"name": "consul", "type": "fake"}],
        "sinks": [
            {"name": "kubernetes", "type": "kubernetes", "leader_elect": False},
            {
                "name": "gateway",
                "type": "gateway",
                "domain_suffix": "example.test",
                **(gateway or {}),
            },
        ],
    }
    settings = load_settings(registry, raw=raw, environ={})
    metrics = Metrics()
    context = Context(
        metrics=metrics,
        extras={
            "kubernetes_client": KubeClient.for_url(kube.url),
            "gateway_client": GatewayClient.for_url(kube.url),
        },
    )
    return build_app(settings, pm, registry, metrics=metrics, context=context)


def gateway_sink(app: App) -> GatewaySink:
    sink = app.runtime.sinks[1]
    assert isinstance(sink, GatewaySink)
    return sink


def routes(kube: KubeDouble, resource: str = "httproutes") -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in kube.list(resource, NS)}


def metric(app: App, name: str, **labels: str) -> float:
    return app.metrics.registry.get_sample_value(name, labels) or 0.0
