"""consul-server/: the Docker host's Consul, Registrator and example registrations."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from consul_sync import Context
from consul_sync.metrics import Metrics
from consul_sync_consul.file import FileConfig, FileSource, parse_definitions
from tests.ship.dockerfile import ROOT

KIT = ROOT / "consul-server"
CONSUL_D = KIT / "consul.d"


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((KIT / "docker-compose.yaml").read_text(encoding="utf-8"))
    return data


def file_source(tag: str = "kubernetes") -> tuple[FileSource, Metrics]:
    metrics = Metrics()
    source = FileSource("consul.d", FileConfig(path=str(CONSUL_D), tag=tag), Context(metrics))
    return source, metrics


def invalid_count(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value(
        "consul_sync_invalid_services_total", {"source": "consul.d"}
    )
    return value or 0.0


# --- the example registrations -------------------------------------------------


def test_every_file_in_consul_d_is_json() -> None:
    files = sorted(p.name for p in CONSUL_D.iterdir())
    assert files == ["grafana.json", "homeassistant.json", "plex.json", "server.json"]
    for name in files:
        json.loads((CONSUL_D / name).read_text(encoding="utf-8"))


def test_file_source_reads_the_tagged_examples_and_skips_the_rest() -> None:
    source, metrics = file_source()
    snapshot = source.read()
    assert snapshot.complete
    assert invalid_count(metrics) == 0  # server.json skipped without a complaint
    services = {name: service for (_, name), service in snapshot.services.items()}
    assert sorted(services) == ["homeassistant", "plex"]  # grafana is not tagged
    plex = services["plex"]
    assert [p.port for p in plex.ports] == [32400]
    assert plex.ports[0].app_protocol == "http"  # meta k8s-app-protocol
    assert [e.address for e in plex.endpoints] == ["10.0.10.100"]
    assert [p.port for p in services["homeassistant"].ports] == [8123]


def test_grafana_is_left_out_by_its_tag_not_by_an_error() -> None:
    source, metrics = file_source(tag="")  # every service
    services = sorted(name for _, name in source.read().services)
    assert services == ["grafana", "homeassistant", "plex"]
    assert invalid_count(metrics) == 0


def test_server_json_is_agent_configuration_not_a_registration() -> None:
    data = json.loads((CONSUL_D / "server.json").read_text(encoding="utf-8"))
    parsed = parse_definitions(data, "server.json", None)
    assert parsed.instances == ()
    assert parsed.problems == ()


# --- the server ----------------------------------------------------------------


def test_server_config_enables_acls_with_default_deny() -> None:
    server = json.loads((CONSUL_D / "server.json").read_text(encoding="utf-8"))
    assert server["server"] is True
    assert server["bootstrap_expect"] == 1
    assert server["ui_config"] == {"enabled": True}
    assert server["client_addr"] == "0.0.0.0"  # reachable through the published ports
    assert server["ports"] == {"http": 8500, "dns": 8600}
    acl = server["acl"]
    assert acl["enabled"] is True
    assert acl["default_policy"] == "deny"
    # setup-acl.sh sets the agent's tokens through the API; they must survive restarts.
    assert acl["enable_token_persistence"] is True


def test_compose_runs_consul_with_the_config_directory_and_ports() -> None:
    consul = compose()["services"]["consul"]
    image, _, version = consul["image"].partition(":")
    assert image == "hashicorp/consul"
    assert re.fullmatch(r"1\.\d+(\.\d+)?", version), "pin a Consul version"
    # The README's `docker exec consul consul reload` needs this name.
    assert consul["container_name"] == "consul"
    assert set(consul["ports"]) == {"8500:8500", "8600:8600/tcp", "8600:8600/udp"}
    config_dir = re.search(r"-config-dir=(\S+)", consul["command"])
    assert config_dir
    assert f"./consul.d:{config_dir.group(1)}:ro" in consul["volumes"]
    # Not mounted over /consul/config: the image's entrypoint chowns that
    # directory, which fails on a read-only mount.
    assert not any(":/consul/config" in v for v in consul["volumes"])
    assert any(v.endswith(":/consul/data") for v in consul["volumes"])
    assert consul["labels"]["SERVICE_IGNORE"] == "true"


def test_compose_runs_registrator_with_opt_in_kubernetes_tags() -> None:
    services = compose()["services"]
    registrator = services["registrator"]
    assert registrator["image"].startswith("gliderlabs/registrator:")
    assert registrator["network_mode"] == "host"
    command = registrator["command"]
    assert command[-1] == "consul://127.0.0.1:8500"
    assert any(arg.startswith("-ip=${HOST_IP") for arg in command)
    # No -tags: that would put `kubernetes` on every container.
    assert not any(arg.startswith("-tags") for arg in command)
    assert "/var/run/docker.sock:/tmp/docker.sock:ro" in registrator["volumes"]
    # Registrator and `docker exec consul consul reload` take the agent token
    # from tokens.env (written by hand from setup-acl.sh's output).
    for name in ("consul", "registrator"):
        assert services[name]["env_file"] == [{"path": "tokens.env", "required": False}]
    assert "tokens.env" in (KIT / ".gitignore").read_text(encoding="utf-8").split()
    assert re.search(r"^HOST_IP=\S+$", (KIT / ".env").read_text(encoding="utf-8"), re.M)
    # The example container asks for the tag.
    example = services["whoami"]
    assert example["environment"]["SERVICE_TAGS"] == "kubernetes"
    assert example["profiles"] == ["example"]


def test_readme_documents_the_kubernetes_tag_and_the_setup() -> None:
    readme = (KIT / "README.md").read_text(encoding="utf-8")
    for needle in (
        "SERVICE_TAGS=kubernetes",
        "docker compose up -d",
        "./setup-acl.sh",
        "CONSUL_HTTP_TOKEN",
        "tokens.env",
        "docker exec consul consul reload",
    ):
        assert needle in readme, needle
