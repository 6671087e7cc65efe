"""Helpers: a sink (or a whole app) wired to the Kubernetes API double."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs
import yaml

from consul_sync.cli import App, build_app
from consul_sync.config import load_settings
from consul_sync.metrics import Metrics
from consul_sync.model import DesiredService, Endpoint, Port, ServiceKey
from consul_sync.plan import Plan, plan
from consul_sync.plugins import collect_types, make_plugin_manager
from consul_sync.registry import Context
from consul_sync.testing import FakePlugin
from consul_sync_kube.client import KubeClient
from consul_sync_kubernetes.sink import KubernetesConfig, KubernetesSink
from tests.core.helpers import source, until
from tests.fakes.k8s_double import KubeDouble

#: ``source`` and ``until`` are the core helpers' (one way to wait, one deadline).
__all__ = [
    "FAST_LEADER",
    "NS",
    "addresses",
    "kube_app",
    "kubeconfig",
    "make_sink",
    "names",
    "service",
    "source",
    "the_sink",
    "until",
    "writes",
]

NS = "network"
FAST_LEADER = {"lease_duration": 1.0, "renew_deadline": 0.6, "retry_period": 0.1}


def service(
    name: str, *addresses: str, port: int = 8080, source: str = "consul", **kwargs: Any
) -> DesiredService:
    return DesiredService(
        name=name,
        namespace=NS,
        ports=[Port("http", port, "TCP", kwargs.pop("app_protocol", None))],
        endpoints=[a if isinstance(a, Endpoint) else Endpoint(a) for a in addresses],
        sources=[source],
        **kwargs,
    )


def addresses(count: int, prefix: str = "10.1") -> list[str]:
    return [f"{prefix}.{i // 250}.{i % 250 + 1}" for i in range(count)]


@attrs.define
class Keys:
    """Stands in for the runtime's desired keys (``Context.desired_keys``)."""

    keys: set[ServiceKey] = attrs.field(factory=set)
    version: int = 0

    def set(self, keys: Iterable[ServiceKey]) -> None:
        new = set(keys)
        if new != self.keys:
            self.keys, self.version = new, self.version + 1

    def __call__(self) -> tuple[int, set[ServiceKey]]:
        return self.version, self.keys


@attrs.define
class Rig:
    """One sink on the double, driven by hand like the runtime drives it."""

    sink: KubernetesSink
    keys: Keys
    dirty: list[ServiceKey]
    metrics: Metrics

    async def sync(self, services: Iterable[DesiredService], *, fresh: bool = False) -> Plan:
        desired = {s.key: s for s in services}
        self.keys.set(desired)
        view = await self.sink.observe(fresh=fresh)
        the_plan = plan(desired, view)
        for change in the_plan.changes:
            await self.sink.apply(change)
        return the_plan

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


def make_sink(kube: KubeDouble, name: str = "kubernetes", **config: Any) -> Rig:
    config.setdefault("leader_elect", False)
    metrics = Metrics()
    keys = Keys()
    dirty: list[ServiceKey] = []
    context = Context(
        metrics=metrics,
        namespace=NS,
        extras={"kubernetes_client": KubeClient.for_url(kube.url)},
        mark_dirty=dirty.extend,
        desired_keys=keys,
    )
    sink = KubernetesSink(name, KubernetesConfig(**config), context)
    return Rig(sink, keys, dirty, metrics)


def kube_app(
    kube: KubeDouble,
    *,
    sink: dict[str, Any] | None = None,
    gateway: dict[str, Any] | None = None,
    gateway_client: bool = True,
    **global_settings: Any,
) -> App:
    """A whole consul-sync: a fake source into the kubernetes sink on the double (and, with
    ``gateway`` settings, the gateway sink after it)."""
    pm = make_plugin_manager(plugins=[("fake", FakePlugin())], environ={})
    registry = collect_types(pm)
    sinks: list[dict[str, Any]] = [
        {"name": "kubernetes", "type": "kubernetes", "leader_elect": False, **(sink or {})}
    ]
    extras: dict[str, Any] = {"kubernetes_client": KubeClient.for_url(kube.url)}
    if gateway is not None:
        sinks.append(
            {"name": "gateway", "type": "gateway", "domain_suffix": "example.test", **gateway}
        )
        if gateway_client:  # (else the sink makes its own, from its kubeconfig setting)
            extras["gateway_client"] = KubeClient.for_url(kube.url)
    raw = {
        "namespace": NS,
        "coalesce_window": "10ms",
        "retry_base": "50ms",
        "retry_max": "500ms",
        **global_settings,
        "sources": [{"name": "consul", "type": "fake"}],
        "sinks": sinks,
    }
    settings = load_settings(registry, raw=raw, environ={})
    metrics = Metrics()
    context = Context(metrics=metrics, extras=extras)
    return build_app(settings, pm, registry, metrics=metrics, context=context)


def the_sink(app: App) -> KubernetesSink:
    item = app.runtime.sinks[0]
    assert isinstance(item, KubernetesSink)
    return item


def writes(kube: KubeDouble) -> list[tuple[str, str]]:
    """(method, path) of every write the double received."""
    return [(w.method, w.path) for w in kube.writes()]


def names(kube: KubeDouble, resource: str, selector: str = "") -> list[str]:
    return sorted(o["metadata"]["name"] for o in kube.list(resource, NS, label_selector=selector))


def kubeconfig(path: Path, url: str, token: str | None = None) -> Path:
    """A kubeconfig at ``path`` for the API at ``url`` (with a bearer ``token`` if given)."""
    user: dict[str, Any] = {"token": token} if token else {}
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": url}}],
                "users": [{"name": "u", "user": user}],
                "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "ctx",
            }
        )
    )
    return path
