"""The monitoring that installs: deploy/components/{prometheusrule,grafana-dashboard}.

* the alerts docs/operations.md shows are the PrometheusRule's, exactly;
* every metric and label the rules and the dashboard name exists in the
  code (a live registry with the core's and the sinks' metrics);
* ``kubectl kustomize`` renders the base with every combination of the
  components (skipped where kubectl is absent; the YAML is still checked).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from consul_sync.metrics import Metrics
from consul_sync_gateway.sink import GatewayMetrics
from consul_sync_kubernetes.sink import SinkMetrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPONENTS = DEPLOY / "components"
RULE = COMPONENTS / "prometheusrule" / "prometheusrule.yaml"
DASHBOARD = COMPONENTS / "grafana-dashboard" / "dashboard.json"

#: Labels Prometheus itself adds (target labels) or that PromQL makes.
TARGET_LABELS = {"namespace", "pod", "job", "instance", "service", "container", "endpoint", "le"}
#: Suffixes the exposition adds to a family's name.
SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_info")


def rule() -> dict[str, Any]:
    (document,) = [d for d in yaml.safe_load_all(RULE.read_text()) if d]
    return document


def exposed() -> dict[str, set[str]]:
    """Every series name the code can expose, with its labels."""
    registry = CollectorRegistry()
    Metrics(registry)
    SinkMetrics.of(registry)
    GatewayMetrics.of(registry)
    names: dict[str, set[str]] = {}
    for family in registry.collect():
        labels: set[str] = set()
        for collector_labels in _declared_labels(registry, family.name):
            labels |= collector_labels
        for name in {family.name, *(family.name + s for s in SUFFIXES)}:
            names[name] = labels
    return names


def _declared_labels(registry: CollectorRegistry, name: str) -> list[set[str]]:
    found = []
    for collector in list(registry._collector_to_names):  # label names even before a sample
        if name in registry._collector_to_names[collector]:
            found.append(set(getattr(collector, "_labelnames", ())))
    return found


def expressions() -> list[tuple[str, str]]:
    """(where, PromQL) of every rule and dashboard target."""
    out = []
    for group in rule()["spec"]["groups"]:
        for item in group["rules"]:
            out.append((f"rule {item['alert']}", str(item["expr"])))
            for text in item.get("annotations", {}).values():
                out.append((f"rule {item['alert']} annotation", _template_labels(text)))
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            out.append((f"panel {panel['title']!r}", target["expr"]))
            out.append(
                (f"panel {panel['title']!r} legend", _template_labels(target["legendFormat"]))
            )
    return out


def _template_labels(text: str) -> str:
    """``{{ $labels.sink }}`` and ``{{sink}}`` as a PromQL-ish ``by (sink)``."""
    names = re.findall(r"\{\{\s*\$labels\.(\w+)\s*\}\}", text)
    names += re.findall(r"\{\{\s*(\w+)\s*\}\}", text)
    return f"by ({', '.join(names)})" if names else ""


def test_the_docs_show_the_rules_that_install() -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("## Alerts", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block, "docs/operations.md: no yaml block under ## Alerts"
    assert yaml.safe_load(block.group(1)) == rule()["spec"], (
        "docs/operations.md ## Alerts must show deploy/components/prometheusrule's spec"
    )


def test_every_metric_and_label_named_exists_in_the_code() -> None:
    have = exposed()
    all_labels = set().union(*have.values())
    problems = []
    for where, expr in expressions():
        metrics = set(re.findall(r"\bconsul_sync_\w+", expr))
        for metric in metrics:
            if metric not in have:
                problems.append(f"{where}: no metric {metric}")
        allowed = set().union(*(have.get(m, set()) for m in metrics)) if metrics else all_labels
        labels = set()
        for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
            labels |= {name.strip() for name in group.split(",") if name.strip()}
        for selector in re.findall(r"\{([^}]*)\}", expr):
            labels |= set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector))
        for label in labels - TARGET_LABELS:
            if label not in allowed | all_labels:
                problems.append(f"{where}: no label {label!r} on {sorted(metrics) or 'any metric'}")
            elif metrics and label not in allowed:
                problems.append(f"{where}: label {label!r} is not on {sorted(metrics)}")
    assert not problems, "\n".join(problems)


def test_the_dashboard_covers_what_operators_look_for() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    for needed in (
        "consul_sync_ready",  # sync state
        "consul_sync_source_complete",
        "consul_sync_change_to_apply_seconds_bucket",  # change-to-apply latency
        "consul_sync_consul_errors_total",  # errors by kind
        "consul_sync_kubernetes_errors_total",
        "consul_sync_prune_held",  # held deletes
        "consul_sync_ready_endpoints",  # endpoint readiness
    ):
        assert needed in exprs, needed
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    assert dashboard["uid"] == "consul-sync"


def test_the_components_are_kustomize_components() -> None:
    for name in ("servicemonitor", "prometheusrule", "grafana-dashboard"):
        (kustomization,) = [
            d
            for d in yaml.safe_load_all((COMPONENTS / name / "kustomization.yaml").read_text())
            if d
        ]
        assert kustomization["kind"] == "Component", name
        for resource in kustomization.get("resources", []):
            assert (COMPONENTS / name / resource).is_file(), (name, resource)
        for generator in kustomization.get("configMapGenerator", []):
            for source in generator["files"]:
                assert (COMPONENTS / name / source.split("=")[-1]).is_file(), (name, source)
    assert rule()["kind"] == "PrometheusRule"


KUBECTL = shutil.which("kubectl")
COMBINATIONS = [
    combo
    for size in range(4)
    for combo in itertools.combinations(
        ("servicemonitor", "prometheusrule", "grafana-dashboard"), size
    )
]


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not on PATH")
@pytest.mark.parametrize("components", COMBINATIONS, ids=lambda c: "+".join(c) or "base")
def test_kubectl_kustomize_renders(components: tuple[str, ...], tmp_path: Path) -> None:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    rel = os.path.relpath(DEPLOY, overlay)
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namespace": "monitoring-test",
                "resources": [f"{rel}/base"],
                "components": [f"{rel}/components/{c}" for c in components],
            }
        )
    )
    assert KUBECTL is not None
    result = subprocess.run(
        [KUBECTL, "kustomize", str(overlay)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    objects = [d for d in yaml.safe_load_all(result.stdout) if d]
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Service", "ServiceAccount", "Role", "RoleBinding"} <= kinds
    assert all(o["metadata"].get("namespace") == "monitoring-test" for o in objects)
    assert ("ServiceMonitor" in kinds) == ("servicemonitor" in components)
    assert ("PrometheusRule" in kinds) == ("prometheusrule" in components)
    maps = [o for o in objects if o["kind"] == "ConfigMap"]
    if "grafana-dashboard" in components:
        (dashboard,) = maps
        assert dashboard["metadata"]["name"] == "consul-sync-dashboard"
        assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert json.loads(dashboard["data"]["consul-sync.json"])["uid"] == "consul-sync"
    else:
        assert not maps
