"""Prometheus metrics, on a registry that tests can inject.

The first five are the seed's, with its exact names and labels; the rest
add per-source and per-sink detail.

Counters, histograms and summaries carry no ``_created`` series: a
timestamp per series is noise on every dashboard and is not what anyone
alerts on.  prometheus_client decides that per process, at scrape time, so
switching it off here covers every registry, the plugins' too.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)

disable_created_metrics()  # type: ignore[no-untyped-call]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # again, if a test re-enabled it
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # --- the seed's metrics --------------------------------------------
        self.services = Gauge(
            "consul_sync_services_total", "Number of currently synced services", registry=r
        )
        self.endpoints = Gauge(
            "consul_sync_endpoints_total",
            "Total endpoints across all synced services",
            registry=r,
        )
        self.reconciles = Counter(
            "consul_sync_reconcile", "Reconciliations performed", ["status"], registry=r
        )
        self.consul_errors = Counter(
            "consul_sync_consul_errors", "Errors communicating with Consul", registry=r
        )
        self.kubernetes_errors = Counter(
            "consul_sync_kubernetes_errors",
            "Errors communicating with the Kubernetes API",
            registry=r,
        )
        for status in ("success", "error"):
            self.reconciles.labels(status=status)
        # --- more detail ---------------------------------------------------
        self.reconcile_duration = Histogram(
            "consul_sync_reconcile_duration_seconds",
            "Time one reconcile pass took (plan and apply, all sinks)",
            ["kind"],
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.change_latency = Histogram(
            "consul_sync_change_to_apply_seconds",
            "Time from a source publishing a change to the sink having applied it",
            ["sink"],
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.source_services = Gauge(
            "consul_sync_source_services",
            "Services in a source's latest snapshot",
            ["source"],
            registry=r,
        )
        self.source_complete = Gauge(
            "consul_sync_source_complete",
            "1 when the source's latest snapshot is complete, 0 when it is partial or failed",
            ["source"],
            registry=r,
        )
        self.source_errors = Counter(
            "consul_sync_source_errors", "Errors reading a source", ["source"], registry=r
        )
        self.source_empty = Counter(
            "consul_sync_source_suddenly_empty",
            "Times a source's answer dropped to nothing while it had services",
            ["source"],
            registry=r,
        )
        self.applies = Counter(
            "consul_sync_sink_changes",
            "Changes applied to a sink",
            ["sink", "action", "status"],
            registry=r,
        )
        self.conflicts = Gauge(
            "consul_sync_sink_conflicts",
            "Desired services held by an object consul-sync does not own",
            ["sink"],
            registry=r,
        )
        self.prune_withheld = Gauge(
            "consul_sync_prune_withheld",
            "Deletes held back (incomplete source or prune guard)",
            ["sink"],
            registry=r,
        )
        self.prune_guard_trips = Counter(
            "consul_sync_prune_guard_trips",
            "Times the prune budget began holding deletes back",
            ["sink"],
            registry=r,
        )
        self.prune_held = Gauge(
            "consul_sync_prune_held",
            "Deletes the prune budget holds until its window rolls",
            ["sink"],
            registry=r,
        )
        self.merge_warnings = Counter(
            "consul_sync_merge_warnings",
            "Conflicts between sources merging one service",
            registry=r,
        )
        self.invalid = Counter(
            "consul_sync_invalid_services",
            "Services or registrations skipped because they were invalid",
            ["source"],
            registry=r,
        )
        self.ready_endpoints = Gauge(
            "consul_sync_ready_endpoints",
            "Endpoints across all desired services that are ready (the rest are not)",
            registry=r,
        )
        self.ready = Gauge(
            "consul_sync_ready", "1 when the readiness probe answers 200", registry=r
        )
        self.build = Info("consul_sync_build", "Version of consul-sync", registry=r)
