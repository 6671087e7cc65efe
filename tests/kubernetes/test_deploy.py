"""deploy/: the kustomize base grants exactly what the sink uses, and runs safely."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from consul_sync import SinkError
from consul_sync.model import Endpoint
from tests.fakes.k8s_double import KubeDouble

from .helpers import FAST_LEADER, make_sink, service

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def base() -> dict[str, dict[str, Any]]:
    kustomization = documents(DEPLOY / "base" / "kustomization.yaml")[0]
    objects = {}
    for name in kustomization["resources"]:
        for obj in documents(DEPLOY / "base" / name):
            objects[obj["kind"]] = obj
    return objects


@pytest.fixture
def kube() -> Iterator[KubeDouble]:
    with KubeDouble() as double:
        yield double


@pytest.mark.anyio
async def test_the_role_grants_exactly_the_requests_the_sink_makes(kube: KubeDouble) -> None:
    kube.create(
        "services",
        {
            "metadata": {"name": "taken", "namespace": "network"},
            "spec": {"ports": [{"name": "http", "port": 80}]},
        },
    )
    rig = make_sink(kube, leader_elect=True, identity="pod-a", **FAST_LEADER)
    await rig.sync([service("web", "10.0.0.1"), service("taken", "10.0.0.2")])
    await rig.sink.observe()  # watches and the Lease
    kube.fail_next(method="PATCH", status=409)  # re-reads: of a slice ...
    await rig.sync([service("web", "10.0.0.1", "10.0.0.3", "fd00::1")])
    kube.fail_next(method="PATCH", path_prefix="/api/v1/namespaces/network/services", status=409)
    await rig.sync([service("web", "10.0.0.1", "fd00::1", labels={"team": "a"})])  # ... a Service
    await rig.sync([service("web", "10.0.0.1")])
    with pytest.raises(SinkError):  # a rejected slice: an Event
        await rig.sync([service("web", Endpoint("10.0.0.1", hostname="Bad_Name"))])
    await rig.sync([])
    await rig.sink.aclose()
    used = {(e.verb, e.resource) for e in kube.exchanges if e.verb}
    granted = set()
    role = base()["Role"]
    assert role["kind"] == "Role"  # namespaced; no ClusterRole
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            if group == "gateway.networking.k8s.io":
                continue  # the gateway sink's (tests/gateway/test_deploy.py)
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    granted.add((verb, f"{resource}.{group}" if group else resource))
    # server-side apply of an object that does not exist yet also needs "create"
    needed = used | {("create", res) for verb, res in used if verb == "patch"}
    assert needed <= granted, f"missing: {sorted(needed - granted)}"
    assert granted <= needed, f"more than needed: {sorted(granted - needed)}"


def test_the_binding_gives_the_role_to_the_service_account() -> None:
    objects = base()
    binding, account = objects["RoleBinding"], objects["ServiceAccount"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": objects["Role"]["metadata"]["name"],
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"]}]
    assert "ClusterRole" not in objects


def test_the_deployment_runs_non_root_read_only_with_probes_and_resources() -> None:
    objects = base()
    deployment = objects["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] >= 2  # leader election: one writes, one stands by
    assert pod["serviceAccountName"] == objects["ServiceAccount"]["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    env = {e["name"]: e for e in container["env"]}
    port = int(env["METRICS_ADDR"]["value"].rsplit(":", 1)[1])
    (container_port,) = container["ports"]
    assert container_port["containerPort"] == port
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container_port["name"] == "metrics"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["TARGET_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["CONSUL_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True


def test_the_optional_service_monitor_scrapes_the_metrics_service() -> None:
    component = DEPLOY / "components" / "servicemonitor"
    assert documents(component / "kustomization.yaml")[0]["kind"] == "Component"
    (monitor,) = documents(component / "servicemonitor.yaml")
    service = base()["Service"]
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
