"""The ``kubernetes`` sink's own metrics (``consul_sync_kubernetes_*``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from consul_sync_kube.metrics import PerRegistry


class SinkMetrics(PerRegistry):
    """The sink's own metrics, registered once per registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "consul_sync_kubernetes_requests",
            "Kubernetes API requests made by a sink (code 0: no answer)",
            ["sink", "verb", "resource", "code"],
            registry=registry,
        )
        self.leader = Gauge(
            "consul_sync_kubernetes_leader",
            "1 while this replica leads (or leader election is off)",
            ["sink"],
            registry=registry,
        )
        self.renamed = Gauge(
            "consul_sync_kubernetes_renamed_services",
            "Services whose name had to be changed into a valid Kubernetes name",
            ["sink"],
            registry=registry,
        )
        self.collisions = Gauge(
            "consul_sync_kubernetes_name_collisions",
            "Groups of services whose names became equal when sanitised (hash-suffixed)",
            ["sink"],
            registry=registry,
        )
        self.skipped = Counter(
            "consul_sync_kubernetes_skipped",
            "Endpoints or services left out because Kubernetes would refuse them",
            ["sink", "what"],
            registry=registry,
        )
        self.events = Counter(
            "consul_sync_kubernetes_events",
            "Kubernetes Events consul-sync recorded",
            ["sink", "reason"],
            registry=registry,
        )
