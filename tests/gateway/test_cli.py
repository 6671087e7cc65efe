"""render, plan and the default layout include the gateway sink; a
third-party sink reads tags and meta through the hooks."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, ClassVar

import attrs
import yaml

from consul_sync import DesiredService, Observed, hookimpl
from consul_sync.cli import main
from consul_sync.model import Change
from consul_sync.plan import plan
from consul_sync_consul.convert import Instance, to_desired

GO_README_ROUTE = {
    "parentRefs": [{"name": "envoy-internal", "namespace": "network", "sectionName": "https"}],
    "hostnames": ["plex.k8s.alexieff.io"],
    "rules": [{"backendRefs": [{"name": "plex", "port": 32400}]}],
}


def plex_file(folder: Path, **extra: Any) -> None:
    """plex's service definition (tags kubernetes and internal) in ``folder``."""
    service = {"name": "plex", "tags": ["kubernetes", "internal"], "port": 32400,
               "address": "10.0.10.100", **extra}  # fmt: skip
    (folder / "plex.json").write_text(json.dumps({"service": service}))


def registrator_example(tmp_path: Path) -> Path:
    """What Registrator registers for `SERVICE_TAGS=kubernetes,internal`."""
    plex_file(tmp_path)
    config = tmp_path / "local.toml"
    config.write_text(
        f"""namespace = "network"
[[sources]]
name = "files"
type = "file"
path = "{tmp_path}"
[[sinks]]
name = "kubernetes"
type = "kubernetes"
[[sinks]]
name = "gateway"
type = "gateway"
domain_suffix = "${{DOMAIN_SUFFIX}}"
"""
    )
    return config


def test_render_prints_the_route_of_the_go_readme(tmp_path: Path) -> None:
    out = io.StringIO()
    config = registrator_example(tmp_path)
    code = main(
        ["--config", str(config), "render"],
        environ={"DOMAIN_SUFFIX": "k8s.alexieff.io"},
        stdout=out,
    )
    assert code == 0
    documents = list(yaml.safe_load_all(out.getvalue()))
    (route,) = [d for d in documents if d["kind"] == "HTTPRoute"]
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["metadata"]["name"] == "plex-envoy-internal"
    assert route["metadata"]["namespace"] == "network"
    assert route["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "consul-sync",
        "app.kubernetes.io/name": "plex",
    }
    assert route["spec"] == GO_README_ROUTE
    assert [d["kind"] for d in documents].count("Service") == 1


def test_the_default_layout_runs_the_gateway_sink_unless_disabled() -> None:
    base = {"CONSUL_ADDR": "http://127.0.0.1:8500"}
    out = io.StringIO()
    assert main(["check-config"], environ=base, stdout=out) == 0
    sinks = json.loads(out.getvalue())["sinks"]
    assert [(s["name"], s["type"]) for s in sinks] == [
        ("kubernetes", "kubernetes"),
        ("gateway", "gateway"),
    ]
    assert sinks[1]["domain_suffix"] == ""  # no surprise hostnames
    out = io.StringIO()
    env = {**base, "ENABLE_HTTPROUTES": "false", "DOMAIN_SUFFIX": "example.test"}
    assert main(["check-config"], environ=env, stdout=out) == 0
    assert [s["type"] for s in json.loads(out.getvalue())["sinks"]] == ["kubernetes"]
    out = io.StringIO()
    env = {**base, "DOMAIN_SUFFIX": "example.test", "INTERNAL_GATEWAY": "gw-in"}
    assert main(["check-config"], environ=env, stdout=out) == 0
    gateway = json.loads(out.getvalue())["sinks"][1]
    assert (gateway["domain_suffix"], gateway["internal_gateway"]) == ("example.test", "gw-in")


def test_consul_tags_and_meta_reach_the_model() -> None:
    instances = [
        Instance("plex", "b", "10.0.0.2", 32400, tags=("kubernetes", "external"), meta={"a": "2"}),
        Instance("plex", "a", "10.0.0.1", 32400, tags=("kubernetes", "internal"), meta={"a": "1"}),
    ]
    service = to_desired("plex", instances, namespace="network", source="consul").service
    assert service is not None
    assert service.tags == ("external", "internal", "kubernetes")
    assert dict(service.meta) == {"a": "1"}  # the first instance in ID order wins


def test_sinks_that_do_not_read_tags_back_are_not_rewritten_for_them() -> None:
    want = DesiredService("plex", "network", [], tags=["internal"], meta={"k": "v"})
    bare = attrs.evolve(want, tags=(), meta=())
    assert plan({want.key: want}, {want.key: Observed(want.key, True, bare)}).empty
    routing = attrs.evolve(want, tags=["external"])
    assert not plan({want.key: want}, {want.key: Observed(want.key, True, routing)}).empty


# --- a third-party sink --------------------------------------------------------


@attrs.frozen
class RecorderConfig:
    pass


class RecorderSink:
    """Routes on tags and meta, as a third-party sink would."""

    type_name: ClassVar[str] = "recorder"
    Config: ClassVar[type[RecorderConfig]] = RecorderConfig
    concurrency = 1
    seen: ClassVar[list[tuple[str, tuple[str, ...], dict[str, str]]]] = []

    def __init__(self, name: str, config: RecorderConfig, context: Any) -> None:
        self.name = name

    async def open(self) -> None:
        return None

    async def observe(self, *, fresh: bool = False) -> dict[Any, Observed]:
        return {}

    async def apply(self, change: Change) -> None:
        assert change.desired is not None
        self.seen.append((change.desired.name, change.desired.tags, dict(change.desired.meta)))

    def render(self, services: Any) -> list[dict[str, Any]]:
        return [{"name": s.name, "tags": list(s.tags), "meta": dict(s.meta)} for s in services]

    async def aclose(self) -> None:
        return None


class ThirdParty:
    @hookimpl
    def consul_sync_add_sink_types(self, registry: Any) -> None:
        registry.add_sink_type(RecorderSink)

    @hookimpl
    def consul_sync_transform_service(self, service: DesiredService) -> DesiredService:
        return attrs.evolve(
            service, tags=[*service.tags, "seen"], meta={**dict(service.meta), "team": "media"}
        )


def test_a_third_party_sink_reads_tags_and_meta_through_the_hooks(tmp_path: Path) -> None:
    plex_file(tmp_path, meta={"gateway-path": "/web"})
    config = tmp_path / "c.toml"
    config.write_text(
        f'[[sources]]\nname = "files"\ntype = "file"\npath = "{tmp_path}"\n'
        '[[sinks]]\nname = "recorder"\ntype = "recorder"\n'
    )
    RecorderSink.seen.clear()
    assert main(["--config", str(config), "run", "--once"], environ={}, plugins=[ThirdParty()]) == 0
    assert RecorderSink.seen == [
        ("plex", ("internal", "kubernetes", "seen"), {"gateway-path": "/web", "team": "media"})
    ]
