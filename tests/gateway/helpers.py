"""Helpers: consul-sync with the kubernetes and gateway sinks on the API double
(:func:`tests.kubernetes.helpers.kube_app` with ``gateway`` settings makes the app)."""

from __future__ import annotations

from typing import Any

from consul_sync.cli import App
from consul_sync_gateway.sink import GatewaySink
from tests.fakes.k8s_double import KubeDouble
from tests.kubernetes.helpers import NS

ROUTES = "/apis/gateway.networking.k8s.io/v1/namespaces/network/httproutes"


def gateway_sink(app: App) -> GatewaySink:
    sink = app.runtime.sinks[1]
    assert isinstance(sink, GatewaySink)
    return sink


def routes(kube: KubeDouble, resource: str = "httproutes") -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in kube.list(resource, NS)}


def metric(app: App, name: str, **labels: str) -> float:
    return app.metrics.registry.get_sample_value(name, labels) or 0.0
