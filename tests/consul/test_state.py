"""CatalogState: catalog diffs, incremental conversion, health policy, Meta keys."""

from __future__ import annotations

import attrs

from consul_sync.model import Endpoint, Port
from consul_sync_consul import parse
from consul_sync_consul.convert import HealthPolicy
from consul_sync_consul.state import CatalogState
from tests.consul.conftest import body


def make(**kwargs: object) -> tuple[CatalogState, list[str]]:
    warnings: list[str] = []
    options: dict[str, object] = {
        "source": "consul",
        "namespace": "network",
        "tag": "kubernetes",
        "policy": HealthPolicy(),
        "warn": warnings.append,
    }
    options.update(kwargs)
    return CatalogState(**options), warnings  # type: ignore[arg-type]


def load_web(state: CatalogState, recording: str = "09") -> None:
    state.set_catalog(parse.catalog_services(body("08")))
    state.set_entries("web", parse.health_service("web", body(recording)).entries)


def test_catalog_diff_names_what_to_read_and_what_went() -> None:
    state, _ = make()
    diff = state.set_catalog(parse.catalog_services(body("08")))
    assert diff.to_read == {"db", "web"}
    assert diff.body_changed
    same = state.set_catalog({**parse.catalog_services(body("08"))})
    assert same.to_read == frozenset() and not same.body_changed
    retag = state.set_catalog(
        {"web": ("kubernetes",), "db": ("postgres",), "cache": (), "consul": ()}
    )
    assert retag.to_read == {"web"}  # tags changed
    assert retag.removed == {"db"}  # lost the tag


def test_endpoints_per_instance_ports_and_default_health_policy() -> None:
    state, _ = make()
    load_web(state)
    service = state.services[("network", "web")]
    assert service.ports == (Port("http", 8080),)
    assert service.endpoints == (
        Endpoint("10.1.0.11", None, ready=True, serving=True),
        Endpoint("10.1.0.13", 8082, ready=False, serving=False),  # critical: present, not ready
        Endpoint("127.0.0.1", 8081, ready=False, serving=True),  # warning: serving, not ready
    )
    assert state.take_changed() == {("network", "web")}
    assert state.take_changed() == frozenset()


def test_health_policy_warning_ready_and_omit_unhealthy() -> None:
    state, _ = make(policy=HealthPolicy(warning_ready=True, include_unhealthy=False))
    load_web(state)
    endpoints = state.services[("network", "web")].endpoints
    assert [(e.address, e.ready) for e in endpoints] == [("10.1.0.11", True), ("127.0.0.1", True)]


def test_maintenance_makes_endpoints_not_ready() -> None:
    state, _ = make()
    load_web(state, "15")  # node maintenance
    assert not any(e.ready or e.serving for e in state.services[("network", "web")].endpoints)


def test_node_checks_from_the_health_watch_override_and_recompute_only_that_node() -> None:
    state, _ = make()
    load_web(state)
    state.take_changed()
    state.set_node_checks({"dev-plain": (("serfHealth", "critical"),)}, ["other-node"])
    assert state.take_changed() == frozenset()  # not on that node: untouched
    state.set_node_checks({"dev-plain": (("serfHealth", "critical"),)}, ["dev-plain"])
    assert state.take_changed() == {("network", "web")}
    assert not any(e.ready for e in state.services[("network", "web")].endpoints)
    state.set_node_checks({"dev-plain": (("serfHealth", "passing"),)}, None)
    assert any(e.ready for e in state.services[("network", "web")].endpoints)


def test_proxies_are_left_out_unless_asked() -> None:
    proxies = parse.health_service("web-sidecar-proxy", body("24")).entries
    state, _ = make()
    state.set_catalog(parse.catalog_services(body("25")))
    state.set_entries("web-sidecar-proxy", proxies)
    assert ("network", "web-sidecar-proxy") not in state.services
    state, _ = make(include_proxies=True)
    state.set_catalog(parse.catalog_services(body("25")))
    state.set_entries("web-sidecar-proxy", proxies)
    assert ("network", "web-sidecar-proxy") in state.services


def _with_meta(meta: dict[str, str]) -> list[parse.Entry]:
    raw = body("09")
    raw[0]["Service"]["Meta"] = meta
    return list(parse.health_service("web", raw).entries)


def test_meta_overrides_name_port_name_and_app_protocol() -> None:
    state, warnings = make()
    state.set_catalog(parse.catalog_services(body("08")))
    meta = {"k8s-name": "frontend", "k8s-port-name": "web", "k8s-app-protocol": "kubernetes.io/h2c"}
    state.set_entries("web", _with_meta(meta))
    service = state.services[("network", "frontend")]
    assert service.ports == (Port("web", 8080, "TCP", "kubernetes.io/h2c"),)
    assert dict(service.annotations) == {"consul-sync.io/consul-service": "web"}
    assert warnings == []


def test_invalid_meta_is_warned_about_once_and_ignored() -> None:
    state, warnings = make()
    state.set_catalog(parse.catalog_services(body("08")))
    state.set_entries("web", _with_meta({"k8s-name": "Not_Valid", "k8s-port-name": "-x-"}))
    assert ("network", "web") in state.services
    assert state.services[("network", "web")].ports[0].name == "http"
    assert len(warnings) == 2
    state.set_entries("web", _with_meta({"k8s-name": "Not_Valid", "k8s-port-name": "-x-"}))
    assert len(warnings) == 2


def test_two_consul_names_on_one_kubernetes_name_keep_the_first() -> None:
    state, warnings = make()
    state.set_catalog({"a": ("kubernetes",), "b": ("kubernetes",)})
    web = _with_meta({"k8s-name": "same"})
    state.set_entries("b", [attrs.evolve(web[0], service="b")])
    state.set_entries("a", [attrs.evolve(web[0], service="a")])
    assert dict(state.services[("network", "same")].annotations)[
        "consul-sync.io/consul-service"
    ] == ("a")
    assert any("all map to" in w for w in warnings)
    state.set_entries("a", [])
    assert dict(state.services[("network", "same")].annotations)[
        "consul-sync.io/consul-service"
    ] == ("b")


def test_removed_from_catalog_removes_the_service() -> None:
    state, _ = make()
    load_web(state)
    state.take_changed()
    diff = state.set_catalog({"consul": ()})
    assert diff.removed == {"web", "db"}
    assert state.services == {}
    assert state.take_changed() == {("network", "web")}
