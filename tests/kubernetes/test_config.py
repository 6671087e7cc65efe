"""The sink's settings, its registration, and the import boundary."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from consul_sync.config import load_settings
from consul_sync.errors import ConfigError
from consul_sync.metrics import Metrics
from consul_sync.plugins import collect_types, make_plugin_manager
from consul_sync.registry import Context
from consul_sync_kube.informer import newer_or_same
from consul_sync_kubernetes.sink import KubernetesConfig, KubernetesSink

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"
#: the plugins' Kubernetes plumbing (client, informer), shared by the kubernetes and gateway sinks
PACKAGES = ("consul_sync_kube", "consul_sync_kubernetes", "consul_sync_gateway")


def settings(environ: dict[str, str]) -> KubernetesConfig:
    registry = collect_types(make_plugin_manager(environ={}))
    loaded = load_settings(registry, environ={"CONSUL_ADDR": "http://127.0.0.1:1", **environ})
    sink = loaded.sinks[0]  # the gateway sink runs beside it (ENABLE_HTTPROUTES)
    assert sink.type == "kubernetes"
    config = sink.config
    assert isinstance(config, KubernetesConfig)
    return config


def test_the_default_layout_writes_through_the_kubernetes_sink_configured_by_env(
    tmp_path: Path,
) -> None:
    kubeconfig = tmp_path / "kubeconfig"  # it must exist and parse: check-config reads it
    kubeconfig.write_text(
        "current-context: c\ncontexts: [{name: c, context: {cluster: k}}]\n"
        "clusters: [{name: k, cluster: {server: 'https://k8s:6443'}}]\n"
    )
    config = settings(
        {
            "MAX_ENDPOINTS_PER_SLICE": "250",
            "OWNER_ID": "me",
            "LEADER_ELECT": "false",
            "KUBECONFIG": str(kubeconfig),
            "INSTANCE_NAME": "site-b",
            "LEADER_ELECT_LEASE_DURATION": "30s",
        }
    )
    assert config.max_endpoints_per_slice == 250
    assert config.owner_id == "me" and config.instance == "site-b"
    assert config.leader_elect is False and config.kubeconfig == str(kubeconfig)
    assert config.lease_duration == 30
    assert settings({}).leader_elect is None  # automatic


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        ({"MAX_ENDPOINTS_PER_SLICE": "1001"}, "1-1000"),
        ({"MAX_ENDPOINTS_PER_SLICE": "0"}, "1-1000"),
        ({"INSTANCE_NAME": "Not_A_Name"}, "lowercase DNS label"),
        ({"LEADER_ELECT_RENEW_DEADLINE": "20s"}, "retry_period < renew_deadline < lease_duration"),
        ({"KUBE_CONCURRENCY": "0"}, "at least 1"),
    ],
)
def test_bad_settings_are_refused_before_anything_starts(
    environ: dict[str, str], problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        settings(environ)
    assert problem in str(caught.value)


def test_the_owner_id_defaults_to_namespace_and_instance_and_only_the_default_adopts() -> None:
    def sink(**config: object) -> KubernetesSink:
        return KubernetesSink(
            "k",
            KubernetesConfig(**config),
            Context(metrics=Metrics(), namespace="network"),  # type: ignore[arg-type]
        )

    assert sink().owner == "network/consul-sync" and sink().adopt
    assert sink(instance="site-b").owner == "network/site-b" and not sink(instance="site-b").adopt
    assert sink(owner_id="x").owner == "x" and not sink(owner_id="x").adopt


def test_both_sinks_are_registered_by_the_plugin() -> None:
    registry = collect_types(make_plugin_manager(environ={}))
    assert registry.sinks["kubernetes"] is KubernetesSink
    assert "manifests" in registry.sinks


def test_only_the_client_wrapper_imports_kubernetes() -> None:
    importers = []
    for path in sorted(p for package in PACKAGES for p in (PLUGINS / package).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            modules = []
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            if any(m == "kubernetes" or m.startswith("kubernetes.") for m in modules):
                importers.append(f"{path.parent.name}/{path.name}")
    assert sorted(set(importers)) == ["consul_sync_kube/client.py"]


def test_loading_the_plugins_does_not_import_the_kubernetes_client() -> None:
    # (cold start: ~0.3 s that `consul-sync --help` and a check-config without these sinks
    # should not pay; the sinks import it when they make a client)
    code = (
        "import sys\n"
        "from consul_sync.plugins import collect_types, make_plugin_manager\n"
        "import consul_sync_kubernetes.plugin, consul_sync_gateway.plugin\n"
        "registry = collect_types(make_plugin_manager(environ={}))\n"
        "assert {'kubernetes', 'manifests', 'gateway'} <= set(registry.sinks)\n"
        "print(sorted(m for m in sys.modules if m.partition('.')[0] == 'kubernetes'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_resource_versions_compare_as_numbers_when_they_are() -> None:
    assert newer_or_same("10", "9") and newer_or_same("9", "9") and not newer_or_same("9", "10")
    assert newer_or_same("abc", "10")  # opaque: never considered older
