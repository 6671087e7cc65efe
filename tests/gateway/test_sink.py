"""The gateway sink against the API double, driven by the whole runtime."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from consul_sync.cli import App
from tests.fakes.k8s_double import KubeDouble
from tests.kubernetes.helpers import NS, kube_app, kubeconfig, service, source, until, writes

from .helpers import ROUTES, gateway_sink, metric, routes

pytestmark = pytest.mark.anyio


@pytest.fixture
def kube() -> Iterator[KubeDouble]:
    with KubeDouble(gateway_api=True) as double:
        yield double


@pytest.fixture
async def app(kube: KubeDouble) -> AsyncIterator[App]:
    application = kube_app(kube, gateway={})
    async with anyio.create_task_group() as tg:
        await tg.start(application.runtime.run)
        yield application
        application.runtime.stop()


def plex(**kwargs):  # type: ignore[no-untyped-def]
    return service("plex", "10.0.10.100", port=32400, **kwargs)


async def test_tag_added_route_created_removed_deleted_both_tags_two(
    kube: KubeDouble, app: App
) -> None:
    await source(app).push([plex()])
    await until(lambda: app.runtime.readiness()[0])
    assert routes(kube) == {}
    await source(app).push(upsert=[plex(tags=["internal"])])
    await until(lambda: "plex-envoy-internal" in routes(kube))
    route = routes(kube)["plex-envoy-internal"]
    assert route["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "consul-sync",
        "app.kubernetes.io/name": "plex",
    }
    assert route["spec"]["parentRefs"] == [
        {
            "group": "gateway.networking.k8s.io",
            "kind": "Gateway",
            "name": "envoy-internal",
            "namespace": NS,
            "sectionName": "https",
        }
    ]
    assert route["spec"]["hostnames"] == ["plex.example.test"]
    assert route["spec"]["rules"][0]["backendRefs"][0]["name"] == "plex"
    assert route["spec"]["rules"][0]["backendRefs"][0]["port"] == 32400
    assert route["metadata"]["annotations"]["consul-sync.io/owner"] == "network/consul-sync"
    await until(lambda: metric(app, "consul_sync_httproutes_total", sink="gateway") == 1)

    await source(app).push(upsert=[plex(tags=["internal", "external"])])
    await until(lambda: set(routes(kube)) == {"plex-envoy-internal", "plex-envoy-external"})
    await source(app).push(upsert=[plex(tags=["external"])])
    await until(lambda: set(routes(kube)) == {"plex-envoy-external"})
    await source(app).push([])
    await until(lambda: routes(kube) == {})
    assert kube.list("services", NS) == []


async def test_upsert_only_keeps_the_route_of_a_removed_tag(kube: KubeDouble) -> None:
    app = kube_app(kube, gateway={}, policy="upsert-only")
    async with anyio.create_task_group() as tg:
        await tg.start(app.runtime.run)
        await source(app).push([plex(tags=["internal", "external"])])
        await until(lambda: set(routes(kube)) == {"plex-envoy-internal", "plex-envoy-external"})
        kube.reset_log()
        await source(app).push(upsert=[plex(tags=["external"])])
        await until(lambda: app.runtime.passes > 0 and not app.runtime._dirty)
        await anyio.sleep(0.3)
        assert set(routes(kube)) == {"plex-envoy-internal", "plex-envoy-external"}
        assert not [w for w in writes(kube) if w[0] == "DELETE"]
        app.runtime.stop()


async def test_no_change_resync_writes_nothing(kube: KubeDouble, app: App) -> None:
    await source(app).push([plex(tags=["internal"]), service("hass", "10.0.0.2", tags=["x"])])
    await until(lambda: "plex-envoy-internal" in routes(kube))
    await until(lambda: app.runtime.readiness()[0])
    await anyio.sleep(0.3)
    kube.reset_log()
    passes = app.runtime.passes
    app.runtime.request_resync()
    await until(lambda: app.runtime.passes > passes)
    await anyio.sleep(0.3)
    assert writes(kube) == []


async def test_meta_overrides_hostnames_path_and_gateways(kube: KubeDouble, app: App) -> None:
    meta = {
        "gateway-hostnames": "media.example.test,plex.home.test",
        "gateway-path": "/web",
        "gateway-routes": "external:web",
    }
    await source(app).push([plex(tags=["internal"], meta=meta)])
    await until(lambda: "plex-envoy-external" in routes(kube))
    route = routes(kube)["plex-envoy-external"]
    assert route["spec"]["hostnames"] == ["media.example.test", "plex.home.test"]
    assert route["spec"]["parentRefs"][0]["sectionName"] == "web"
    assert route["spec"]["rules"][0]["matches"] == [
        {"path": {"type": "PathPrefix", "value": "/web"}}
    ]
    assert set(routes(kube)) == {"plex-envoy-external"}
    await source(app).push([plex(tags=["internal"], meta={"gateway-routes": "none"})])
    await until(lambda: routes(kube) == {})


async def test_bad_hostname_warns_and_skips_the_route_but_the_service_syncs(
    kube: KubeDouble, app: App, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    bad = plex(tags=["internal"], meta={"gateway-hostnames": "Plex_Server.example.test"})
    await source(app).push([bad])
    await until(lambda: app.runtime.readiness()[0])
    await until(lambda: [s["metadata"]["name"] for s in kube.list("services", NS)] == ["plex"])
    await anyio.sleep(0.2)
    assert routes(kube) == {}
    assert not [e for e in kube.exchanges if "httproutes/" in e.path and e.method == "PATCH"]
    found = [r.getMessage() for r in caplog.records if "Plex_Server" in r.getMessage()]
    assert len(found) == 1 and "gateway-hostnames" in found[0] and "plex" in found[0]


async def test_no_domain_suffix_one_warning_naming_the_fix(
    kube: KubeDouble, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    app = kube_app(kube, gateway={"domain_suffix": ""})
    async with anyio.create_task_group() as tg:
        await tg.start(app.runtime.run)
        await source(app).push([plex(tags=["internal"])])
        await until(lambda: app.runtime.readiness()[0])
        app.runtime.request_resync()
        await anyio.sleep(0.3)
        app.runtime.stop()
    assert routes(kube) == {}
    found = [r.getMessage() for r in caplog.records if "DOMAIN_SUFFIX" in r.getMessage()]
    assert len(found) == 1 and "network/plex" in found[0] and "gateway-hostnames" in found[0]


async def test_foreign_route_is_left_alone_with_a_conflict_event(kube: KubeDouble) -> None:
    kube.apply(
        "httproutes",
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": "plex-envoy-internal", "namespace": NS},
            "spec": {"hostnames": ["mine.example.test"]},
        },
        manager="kubectl",
    )
    app = kube_app(kube, gateway={})
    async with anyio.create_task_group() as tg:
        await tg.start(app.runtime.run)
        await source(app).push([plex(tags=["internal"])])
        await until(lambda: app.runtime.readiness()[0])
        await until(lambda: any(e["reason"] == "NameConflict" for e in kube.list("events", NS)))
        await until(lambda: metric(app, "consul_sync_sink_conflicts", sink="gateway") == 1)
        app.runtime.stop()
    route = routes(kube)["plex-envoy-internal"]
    assert route["spec"]["hostnames"] == ["mine.example.test"]
    assert [m["manager"] for m in route["metadata"]["managedFields"]] == ["kubectl"]
    event = next(e for e in kube.list("events", NS) if e["reason"] == "NameConflict")
    assert event["involvedObject"]["kind"] == "HTTPRoute"


async def test_route_of_the_go_version_is_adopted(kube: KubeDouble) -> None:
    go_route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {
            "name": "plex-envoy-internal",
            "namespace": NS,
            "labels": {
                "app.kubernetes.io/managed-by": "consul-sync",
                "app.kubernetes.io/name": "plex",
            },
        },
        "spec": {
            "parentRefs": [{"name": "envoy-internal", "namespace": NS, "sectionName": "https"}],
            "hostnames": ["plex.example.test"],
            "rules": [{"backendRefs": [{"name": "plex", "port": 32400}]}],
        },
    }
    uid = kube.apply("httproutes", go_route, manager="consul-sync", force=True)["metadata"]["uid"]
    app = kube_app(kube, gateway={})
    async with anyio.create_task_group() as tg:
        await tg.start(app.runtime.run)
        await source(app).push([plex(tags=["internal"])])
        await until(
            lambda: (
                (routes(kube)["plex-envoy-internal"]["metadata"].get("annotations") or {}).get(
                    "consul-sync.io/owner"
                )
                == "network/consul-sync"
            )
        )
        app.runtime.stop()
    assert routes(kube)["plex-envoy-internal"]["metadata"]["uid"] == uid  # adopted, not replaced
    assert not [e for e in kube.list("events", NS) if e["reason"] == "NameConflict"]


async def test_without_the_crds_ready_with_a_note_and_checked_again_at_resync(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    with KubeDouble() as kube:
        app = kube_app(kube, gateway={})
        async with anyio.create_task_group() as tg:
            await tg.start(app.runtime.run)
            await source(app).push([plex(tags=["internal"])])
            await until(lambda: app.runtime.readiness()[0])
            _, body = app.runtime.readiness()
            assert "Gateway API is not installed" in body
            assert [s["metadata"]["name"] for s in kube.list("services", NS)] == ["plex"]
            kube.reset_log()
            passes = app.runtime.passes
            app.runtime.request_resync()
            await until(lambda: app.runtime.passes > passes)
            asked = [e for e in kube.exchanges if e.path == "/apis/gateway.networking.k8s.io/v1"]
            assert asked  # asked again at the resync
            app.runtime.stop()
    found = [r for r in caplog.records if "Gateway API is not installed" in r.getMessage()]
    assert len(found) == 1


async def test_rejected_route_warns_records_an_event_and_the_metric(
    kube: KubeDouble, app: App, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    await source(app).push([plex(tags=["internal"])])
    await until(lambda: "plex-envoy-internal" in routes(kube))

    def verdict(status: str, reason: str) -> dict:  # type: ignore[type-arg]
        return {
            "parents": [
                {
                    "parentRef": {
                        "name": "envoy-internal",
                        "namespace": NS,
                        "sectionName": "https",
                    },
                    "controllerName": "gateway.envoyproxy.io/gatewayclass-controller",
                    "conditions": [
                        {"type": "Accepted", "status": status, "reason": reason, "message": "m"},
                        {"type": "ResolvedRefs", "status": "True", "reason": "ResolvedRefs"},
                    ],
                }
            ]
        }

    labels = {"route": "plex-envoy-internal", "gateway": f"{NS}/envoy-internal"}
    kube.set_status("httproutes", NS, "plex-envoy-internal", verdict("True", "Accepted"))
    await until(lambda: metric(app, "consul_sync_httproute_accepted", **labels) == 1)
    kube.set_status(
        "httproutes", NS, "plex-envoy-internal", verdict("False", "NotAllowedByListeners")
    )
    await until(
        lambda: app.metrics.registry.get_sample_value("consul_sync_httproute_accepted", labels) == 0
    )
    await until(lambda: any(e["reason"] == "RouteNotAccepted" for e in kube.list("events", NS)))
    assert any("NotAllowedByListeners" in r.getMessage() for r in caplog.records)


async def test_grpc_services_get_a_grpcroute(kube: KubeDouble, app: App) -> None:
    await source(app).push([plex(tags=["internal"], app_protocol="grpc")])
    await until(lambda: "plex-envoy-internal" in routes(kube, "grpcroutes"))
    assert routes(kube) == {}
    assert "matches" not in routes(kube, "grpcroutes")["plex-envoy-internal"]["spec"]["rules"][0]


async def test_route_follows_the_services_kubernetes_name(kube: KubeDouble, app: App) -> None:
    await source(app).push([service("Plex_Media", "10.0.0.1", tags=["internal"])])
    await until(lambda: "plex-media-envoy-internal" in routes(kube))
    route = routes(kube)["plex-media-envoy-internal"]
    assert route["spec"]["rules"][0]["backendRefs"][0]["name"] == "plex-media"
    assert route["spec"]["hostnames"] == ["plex-media.example.test"]
    assert gateway_sink(app).available is True
    assert ROUTES


async def test_plan_shows_the_routes_to_make(kube: KubeDouble) -> None:
    app = kube_app(kube, gateway={})
    source(app).services = {s.key: s for s in [plex(tags=["internal"])]}
    kube.create(
        "services",
        {
            "metadata": {
                "name": "plex",
                "namespace": NS,
                "labels": {"app.kubernetes.io/managed-by": "consul-sync"},
            },
            "spec": {"ports": [{"name": "http", "port": 32400}]},
        },
    )
    plans = await app.runtime.plan_only()
    assert [(c.action.value, c.key) for c in plans["gateway"].changes] == [("create", (NS, "plex"))]


async def test_routes_of_a_removed_tag_go_through_the_prune_budget(kube: KubeDouble) -> None:
    """A route a service no longer wants is deleted by the planner: a mass
    tag removal (a mistyped INTERNAL_TAG, say) is held, not applied."""
    app = kube_app(kube, gateway={})
    tagged = [service(f"s{i}", f"10.0.0.{i}", tags=["internal"]) for i in range(8)]
    async with anyio.create_task_group() as tg:
        await tg.start(app.runtime.run)
        await source(app).push(
            [*tagged, service("plain0", "10.0.1.1"), service("plain1", "10.0.1.2")]
        )
        await until(lambda: len(routes(kube)) == 8)
        kube.reset_log()
        # every tag goes at once: 8 route deletes of 10 services' worth
        await source(app).push(
            [service(f"s{i}", f"10.0.0.{i}") for i in range(8)]
            + [service("plain0", "10.0.1.1"), service("plain1", "10.0.1.2")]
        )
        await until(lambda: metric(app, "consul_sync_prune_held", sink="gateway") == 8)
        assert len(routes(kube)) == 8
        assert not [w for w in writes(kube) if w[0] == "DELETE"]
        # released (as --release-held-deletes does), they go
        app.runtime.release_held = True
        app.runtime.request_resync()
        await until(lambda: routes(kube) == {})
        assert kube.list("services", NS) != []  # the Services stay
        app.runtime.stop()


async def test_an_api_outage_costs_no_urllib3_retries(
    kube: KubeDouble, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The sink's own client (from its kubeconfig) retries nothing itself: a refused
    connection fails at once and the runtime retries with backoff, as for the kubernetes
    sink -- not three quick urllib3 retries, each a "Retrying" warning, per request."""
    caplog.set_level(logging.DEBUG)
    config = kubeconfig(tmp_path / "kubeconfig", kube.url)
    app = kube_app(kube, gateway={"kubeconfig": str(config)}, gateway_client=False)
    async with anyio.create_task_group() as tg:
        await tg.start(app.runtime.run)
        await source(app).push([plex(tags=["internal"])])
        await until(lambda: "plex-envoy-internal" in routes(kube))
        kube.stop()
        await source(app).push(upsert=[plex(tags=["internal", "external"])])
        await until(lambda: bool(app.runtime.states["gateway"].failing))
        kube.start()
        await until(lambda: set(routes(kube)) == {"plex-envoy-internal", "plex-envoy-external"})
        app.runtime.stop()
    retrying = [r for r in caplog.records if r.name.startswith("urllib3") and "Retrying" in r.msg]
    assert retrying == []
