"""The ``gateway`` sink's own metrics (routes managed, routes the gateways accept)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge

from consul_sync_kube.metrics import PerRegistry


class GatewayMetrics(PerRegistry):
    """The gateway sink's own metrics, registered once per registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.httproutes = Gauge(
            "consul_sync_httproutes_total",
            "HTTPRoutes consul-sync manages",
            ["sink"],
            registry=registry,
        )
        self.grpcroutes = Gauge(
            "consul_sync_grpcroutes_total",
            "GRPCRoutes consul-sync manages",
            ["sink"],
            registry=registry,
        )
        self.accepted = Gauge(
            "consul_sync_httproute_accepted",
            "1 when the gateway accepted the route (status Accepted and ResolvedRefs), else 0",
            ["route", "gateway"],
            registry=registry,
        )
