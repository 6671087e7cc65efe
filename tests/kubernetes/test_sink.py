"""The kubernetes sink against the API double (real HTTP, the real client)."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest

from consul_sync import SinkError
from consul_sync.model import Action, Change, DesiredService, Endpoint, Observed, Port
from consul_sync.plan import Policy, plan
from consul_sync_kube.names import short_hash
from consul_sync_kubernetes import naming as n
from consul_sync_kubernetes import render as r
from tests.fakes.k8s_double import KubeDouble

from .helpers import NS, addresses, make_sink, names, service, until, writes

pytestmark = pytest.mark.anyio

SLICES = "endpointslices"
OURS = "endpointslice.kubernetes.io/managed-by=consul-sync"


@pytest.fixture
def kube() -> Iterator[KubeDouble]:
    with KubeDouble() as double:
        yield double


# --- objects the API server accepts --------------------------------------------


async def test_creates_a_headless_service_and_slices_the_seed_commands_show(
    kube: KubeDouble,
) -> None:
    rig = make_sink(kube)
    web = service("web", "10.0.10.11", Endpoint("10.0.10.12", ready=False), app_protocol="http")
    await rig.sync([web])
    assert names(kube, "services", "app.kubernetes.io/managed-by=consul-sync") == ["web"]
    assert names(kube, SLICES, OURS) == ["web-v4-8080"]
    svc = kube.get("services", NS, "web")
    assert svc is not None
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["ports"][0]["appProtocol"] == "http"
    assert svc["metadata"]["annotations"][r.OWNER_ANNOTATION] == "network/consul-sync"
    slice_obj = kube.get(SLICES, NS, "web-v4-8080")
    assert slice_obj is not None
    assert slice_obj["metadata"]["ownerReferences"][0]["uid"] == svc["metadata"]["uid"]
    assert [e["conditions"]["ready"] for e in slice_obj["endpoints"]] == [True, False]
    # each new object: one POST of the whole object (never merging into
    # somebody else's), field manager consul-sync
    assert [(w.method, w.path.rsplit("/", 1)[-1]) for w in kube.writes()] == [
        ("POST", "services"),
        ("POST", "endpointslices"),
    ]
    assert {w.query.get("fieldManager") for w in kube.writes()} == {"consul-sync"}
    # later changes: server-side apply
    kube.reset_log()
    await rig.sync([service("web", "10.0.10.11", app_protocol="http")])
    assert [(w.method, w.path.rsplit("/", 1)[-1]) for w in kube.writes()] == [
        ("PATCH", "web-v4-8080")
    ]
    assert {w.content_type for w in kube.writes()} == {"application/apply-patch+yaml"}
    await rig.sync([web])
    assert rig.sink.view.entries[web.key].service == web
    # the watch-fed view answers every question: no GET per object
    assert kube.count("get") == 0
    assert {e.verb for e in kube.exchanges} <= {"list", "watch", "create", "patch"}


async def test_labels_the_service_stops_carrying_are_removed(kube: KubeDouble) -> None:
    rig = make_sink(kube)
    await rig.sync([service("web", "10.0.0.1", labels={"team": "media", "tier": "1"})])
    await rig.sync([service("web", "10.0.0.1", labels={"team": "media"})])
    live = kube.get("services", NS, "web")
    assert live is not None and "tier" not in live["metadata"]["labels"]
    assert live["metadata"]["labels"]["team"] == "media"
    kube.reset_log()
    assert (await rig.sync([service("web", "10.0.0.1", labels={"team": "media"})])).empty


async def test_what_the_creating_post_wrote_is_removed_when_a_later_apply_drops_it(
    kube: KubeDouble,
) -> None:
    """The POST that creates an object owns its fields under an ``Update``
    entry: a field a later rendering drops is handed over to the apply first
    (one merge patch of managedFields), so the apply removes it; a change
    that drops nothing is one apply."""
    rig = make_sink(kube)
    two_ports = DesiredService(
        name="web",
        namespace=NS,
        ports=[Port("http", 80, "TCP", "http"), Port("admin", 9000)],
        endpoints=[Endpoint("10.0.0.1")],
        sources=["consul"],
    )
    await rig.sync([two_ports])
    kube.reset_log()
    one_port = DesiredService(
        name="web",
        namespace=NS,
        ports=[Port("http", 80)],
        endpoints=[Endpoint("10.0.0.1"), Endpoint("10.0.0.2")],
        sources=["consul"],
    )
    await rig.sync([one_port])
    live = kube.get("services", NS, "web")
    assert live is not None
    assert [(p["port"], p.get("appProtocol")) for p in live["spec"]["ports"]] == [(80, None)]
    assert [(w.method, w.content_type) for w in kube.writes()] == [
        ("PATCH", "application/merge-patch+json"),  # the Service: handed over ...
        ("PATCH", "application/apply-patch+yaml"),  # ... and applied
        ("PATCH", "application/apply-patch+yaml"),  # the slice (atomic lists: nothing to hand)
    ]
    managers = {(m["manager"], m["operation"]) for m in live["metadata"]["managedFields"]}
    assert managers <= {("consul-sync", "Update"), ("consul-sync", "Apply")}
    kube.reset_log()
    assert (await rig.sync([one_port])).empty
    assert writes(kube) == []
    await rig.sync([two_ports])  # back: an apply alone
    assert [w.content_type for w in kube.writes()] == ["application/apply-patch+yaml"] * 2


async def test_ipv4_ipv6_and_hostname_instances_make_three_address_types(
    kube: KubeDouble,
) -> None:
    rig = make_sink(kube)
    await rig.sync([service("nas", "10.0.0.5", "fd00::5", "nas.home.arpa")])
    types = {o["addressType"] for o in kube.list(SLICES, NS, label_selector=OURS)}
    assert types == {"IPv4", "IPv6", "FQDN"}


async def test_2500_instances_make_25_slices_and_one_change_one_write(kube: KubeDouble) -> None:
    rig = make_sink(kube)
    many = addresses(2500)
    await rig.sync([service("big", *many)])
    assert len(names(kube, SLICES, OURS)) == 25
    kube.reset_log()
    flipped = [Endpoint(a, ready=(a != many[1234])) for a in many]
    await rig.sync([service("big", *flipped)])
    assert len(writes(kube)) == 1 and writes(kube)[0][0] == "PATCH"
    kube.reset_log()
    await rig.sync([service("big", *flipped[:-1])])  # one instance leaves
    assert len(writes(kube)) == 1
    kube.reset_log()
    await rig.sync([service("big", *flipped)])  # and comes back
    assert len(writes(kube)) == 1
    assert len(names(kube, SLICES, OURS)) == 25


async def test_a_no_change_resync_writes_nothing(kube: KubeDouble) -> None:
    rig = make_sink(kube)
    services = [service(f"s{i}", f"10.0.0.{i}", "fd00::1") for i in range(1, 20)]
    await rig.sync(services)
    kube.reset_log()
    plan = await rig.sync(services, fresh=True)
    assert plan.empty and writes(kube) == []
    assert kube.count("list") == 2  # a fresh view: one list of each kind


async def test_slices_emptied_are_deleted_and_deleting_the_service_collects_them(
    kube: KubeDouble,
) -> None:
    rig = make_sink(kube)
    await rig.sync([service("web", "10.0.0.1", "fd00::1"), service("db", "10.0.0.2")])
    await rig.sync([service("web", "10.0.0.1"), service("db", "10.0.0.2")])
    assert names(kube, SLICES, OURS) == ["db-v4-8080", "web-v4-8080"]
    kube.reset_log()
    await rig.sync([service("db", "10.0.0.2")])
    # one DELETE of the Service; the garbage collector takes its slice
    assert writes(kube) == [("DELETE", f"/api/v1/namespaces/{NS}/services/web")]
    assert names(kube, SLICES, OURS) == ["db-v4-8080"]
    assert ("network", "web") not in rig.sink.view.entries


async def test_renamed_and_colliding_names(kube: KubeDouble) -> None:
    rig = make_sink(kube)
    three = [
        service("Web", "10.0.0.1"),
        service("web", "10.0.0.2"),
        service("Home_Assistant", "10.0.0.3"),
    ]
    await rig.sync(three)
    suffixed = n.suffixed("web", "Web")
    # the valid name is kept as it is; only the sanitised twin gets a suffix
    assert names(kube, "services") == ["home-assistant", "web", suffixed]
    assert rig.metric("consul_sync_kubernetes_name_collisions", sink="kubernetes") == 1
    assert rig.metric("consul_sync_kubernetes_renamed_services", sink="kubernetes") == 2
    # read back under their own names: nothing more to do
    assert (await rig.sync(three)).empty
    # the collision goes away ("web" deregistered): "Web" takes its sanitised
    # name back - the Service "web" in place (same uid), and the suffixed
    # one goes by a planned delete
    uid = kube.get("services", NS, "web")["metadata"]["uid"]
    kube.reset_log()
    result = await rig.sync([service("Web", "10.0.0.1"), service("Home_Assistant", "10.0.0.3")])
    assert sorted((c.action.value, c.key[1]) for c in result.changes) == [
        ("delete", suffixed),
        ("update", "Web"),
    ]
    assert names(kube, "services") == ["home-assistant", "web"]
    assert kube.get("services", NS, "web")["metadata"]["uid"] == uid
    assert ("DELETE", f"/api/v1/namespaces/{NS}/services/web") not in writes(kube)
    assert ("DELETE", f"/api/v1/namespaces/{NS}/services/{suffixed}") in writes(kube)
    assert rig.metric("consul_sync_kubernetes_name_collisions", sink="kubernetes") == 0
    assert (
        await rig.sync([service("Web", "10.0.0.1"), service("Home_Assistant", "10.0.0.3")])
    ).empty


async def test_invalid_endpoints_are_skipped_and_counted(kube: KubeDouble) -> None:
    rig = make_sink(kube)
    await rig.sync([service("web", "10.0.0.1", "nas")])
    assert names(kube, SLICES, OURS) == ["web-v4-8080"]
    assert rig.metric("consul_sync_kubernetes_skipped_total", sink="kubernetes", what="endpoint")
    kube.reset_log()
    assert (await rig.sync([service("web", "10.0.0.1", "nas")])).empty  # not rewritten


# --- repair ------------------------------------------------------------------


async def test_external_edits_and_deletions_are_seen_and_repaired(kube: KubeDouble) -> None:
    rig = make_sink(kube)
    web = service("web", "10.0.0.1", labels={"team": "media"})
    await rig.sync([web])
    await rig.sink.observe()  # watching from now on
    await anyio.to_thread.run_sync(kube.wait_for_watches, 2)

    edited = kube.get(SLICES, NS, "web-v4-8080")
    assert edited is not None
    edited["endpoints"][0]["conditions"]["ready"] = False
    kube.update(SLICES, edited)
    await until(lambda: ("network", "web") in rig.dirty)
    assert rig.sink.view.entries[web.key].service != web
    rig.dirty.clear()
    await rig.sync([web])
    live = kube.get(SLICES, NS, "web-v4-8080")
    assert live is not None and live["endpoints"][0]["conditions"]["ready"] is True

    kube.delete("services", NS, "web")  # and its slice with it
    await until(lambda: ("network", "web") in rig.dirty)
    await rig.sync([web])
    assert names(kube, SLICES, OURS) == ["web-v4-8080"]

    # labels others add are not ours to remove, and cause no rewrite
    svc = kube.get("services", NS, "web")
    assert svc is not None
    svc["metadata"]["labels"]["kustomize.toolkit.fluxcd.io/name"] = "apps"
    kube.update("services", svc)
    await anyio.sleep(0.2)
    kube.reset_log()
    assert (await rig.sync([web])).empty and writes(kube) == []


async def test_a_compacted_watch_lists_again(kube: KubeDouble) -> None:
    rig = make_sink(kube)
    web = service("web", "10.0.0.1")
    await rig.sync([web])
    await rig.sink.observe()
    await anyio.to_thread.run_sync(kube.wait_for_watches, 2)
    kube.stop()  # the watches end; when they come back their history is gone
    kube.compact()
    kube.start()
    kube.delete("services", NS, "web")
    await until(lambda: web.key not in rig.sink.view.entries, timeout=10)
    assert web.key in rig.dirty


# --- ownership ---------------------------------------------------------------


async def test_a_foreign_service_of_the_same_name_is_left_alone_and_reported(
    kube: KubeDouble,
) -> None:
    kube.create(
        "services",
        {
            "metadata": {"name": "web", "namespace": NS},
            "spec": {"ports": [{"name": "http", "port": 80}]},
        },
    )
    before = kube.get("services", NS, "web")
    rig = make_sink(kube)
    the_plan = await rig.sync([service("web", "10.0.0.1"), service("db", "10.0.0.2")])
    assert the_plan.conflicts == (("network", "web"),)
    assert kube.get("services", NS, "web") == before
    assert names(kube, SLICES, OURS) == ["db-v4-8080"]
    (event,) = kube.list("events", NS)
    assert event["reason"] == "NameConflict" and event["involvedObject"]["name"] == "web"
    assert event["type"] == "Warning"
    # reported once
    await rig.sync([service("web", "10.0.0.1"), service("db", "10.0.0.2")], fresh=True)
    assert len(kube.list("events", NS)) == 1
    # asked to write it anyway (a race): refused, not retried, nothing written
    kube.reset_log()
    with pytest.raises(SinkError) as caught:
        await rig.sink.apply(Change(Action.CREATE, ("network", "web"), service("web")))
    assert not caught.value.retryable and "not consul-sync's" in str(caught.value)
    assert writes(kube) == []


async def test_a_foreign_slice_with_our_slice_name_is_left_alone(kube: KubeDouble) -> None:
    kube.create(
        SLICES,
        {
            "metadata": {
                "name": "web-v4-8080",
                "namespace": NS,
                "labels": {"kubernetes.io/service-name": "other"},
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["192.168.1.1"]}],
        },
        manager="someone",
    )
    before = kube.get(SLICES, NS, "web-v4-8080")
    rig = make_sink(kube)
    # the POST of the slice: 409 AlreadyExists, read, not ours, another name
    await rig.sync([service("web", "10.0.0.1")])
    assert [(e.verb, e.name, e.status) for e in kube.exchanges if e.verb != "watch"] == [
        ("list", "", 200),
        ("list", "", 200),
        ("create", "", 201),
        ("create", "", 409),
        ("get", "web-v4-8080", 200),
        ("create", "", 201),
    ]
    assert kube.get(SLICES, NS, "web-v4-8080") == before
    assert names(kube, SLICES, OURS) == ["web-v4-8080-2"]
    assert (await rig.sync([service("web", "10.0.0.1")])).empty


async def test_two_owner_ids_in_one_namespace_do_not_prune_each_other(kube: KubeDouble) -> None:
    a = make_sink(kube, "a", instance="site-a")
    b = make_sink(kube, "b", instance="site-b")
    await a.sync([service("alpha", "10.0.0.1"), service("shared", "10.0.0.3")])
    plan_b = await b.sync([service("beta", "10.0.0.2"), service("shared", "10.0.0.4")])
    assert plan_b.conflicts == (("network", "shared"),)  # a's; b leaves it alone
    # each side's source now has nothing: each prunes only its own
    await a.sync([])
    assert names(kube, "services") == ["beta"]
    await b.sync([])
    assert names(kube, "services") == []
    assert names(kube, SLICES, OURS) == []


def _go_version_objects(kube: KubeDouble, name: str, address: str) -> None:
    labels = {"app.kubernetes.io/managed-by": "consul-sync"}
    kube.create(
        "services",
        {
            "metadata": {"name": name, "namespace": NS, "labels": labels},
            "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 8080}]},
        },
        manager="consul-sync",
    )
    kube.create(
        SLICES,
        {
            "metadata": {
                "name": f"{name}-consul",
                "namespace": NS,
                "labels": {
                    **labels,
                    "kubernetes.io/service-name": name,
                    "endpointslice.kubernetes.io/managed-by": "consul-sync",
                },
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
        },
        manager="consul-sync",
    )


async def test_objects_of_the_go_version_are_adopted_without_leftovers(
    kube: KubeDouble,
) -> None:
    _go_version_objects(kube, "plex", "10.0.10.100")
    _go_version_objects(kube, "gone", "10.0.10.101")
    uid = (kube.get("services", NS, "plex") or {})["metadata"]["uid"]
    rig = make_sink(kube)
    plex = service("plex", "10.0.10.100")
    the_plan = await rig.sync([plex])
    assert {(c.action, c.key[1]) for c in the_plan.changes} == {
        (Action.UPDATE, "plex"),
        (Action.DELETE, "gone"),
    }
    assert names(kube, "services") == ["plex"]
    assert names(kube, SLICES, OURS) == ["plex-v4-8080"]
    adopted = kube.get("services", NS, "plex")
    assert adopted is not None and adopted["metadata"]["uid"] == uid  # the same Service
    assert adopted["metadata"]["annotations"][r.OWNER_ANNOTATION] == "network/consul-sync"
    assert (await rig.sync([plex])).empty


async def test_another_owner_does_not_adopt_the_go_version(kube: KubeDouble) -> None:
    _go_version_objects(kube, "plex", "10.0.10.100")
    rig = make_sink(kube, instance="site-b")
    the_plan = await rig.sync([service("plex", "10.0.10.100")])
    assert the_plan.conflicts == (("network", "plex"),) and the_plan.empty
    assert names(kube, SLICES, OURS) == ["plex-consul"]


# --- errors ------------------------------------------------------------------


async def test_a_409_is_read_again_and_retried(kube: KubeDouble) -> None:
    rig = make_sink(kube)
    await rig.sync([service("web", "10.0.0.1")])
    kube.reset_log()
    kube.fail_next(method="PATCH", status=409)
    await rig.sync([service("web", "10.0.0.2")])
    assert [e.verb for e in kube.exchanges if e.verb != "list"] == ["patch", "get", "patch"]
    live = kube.get(SLICES, NS, "web-v4-8080")
    assert live is not None and live["endpoints"][0]["addresses"] == ["10.0.0.2"]
    assert rig.metric("consul_sync_kubernetes_errors_total") == 1
    assert (
        rig.metric(
            "consul_sync_kubernetes_requests_total",
            sink="kubernetes",
            verb="patch",
            resource="endpointslices",
            code="409",
        )
        == 1
    )


async def test_429_and_5xx_back_off_honouring_retry_after(kube: KubeDouble) -> None:
    rig = make_sink(kube)
    kube.fail_next(method="POST", status=429, retry_after=7)
    with pytest.raises(SinkError) as caught:
        await rig.sync([service("web", "10.0.0.1")])
    assert caught.value.retryable and caught.value.retry_after == 7
    kube.fail_next(method="POST", status=503)
    with pytest.raises(SinkError) as caught:
        await rig.sync([service("web", "10.0.0.1")])
    assert caught.value.retryable and "busy or unreachable" in str(caught.value)
    assert rig.metric("consul_sync_kubernetes_errors_total") == 2
    await rig.sync([service("web", "10.0.0.1")])
    assert names(kube, "services") == ["web"]


async def test_a_422_names_the_service_and_the_reason_and_is_not_retried(
    kube: KubeDouble,
) -> None:
    rig = make_sink(kube)
    bad = service("web", Endpoint("10.0.0.1", hostname="Not_A_Label"))
    with pytest.raises(SinkError) as caught:
        await rig.sync([bad])
    message = str(caught.value)
    assert not caught.value.retryable
    assert "service network/web" in message and "endpointslices" in message
    assert "endpoints[0].hostname" in message
    (event,) = kube.list("events", NS)
    assert event["reason"] == "Rejected" and event["involvedObject"]["name"] == "web"
    with pytest.raises(SinkError):  # rejected again: no second Event (rate-limited)
        await rig.sink.apply(Change(Action.UPDATE, bad.key, bad))
    assert len(kube.list("events", NS)) == 1
    # others proceed
    await rig.sync([service("db", "10.0.0.2")])
    assert "db" in names(kube, "services")


async def test_a_403_names_the_missing_rbac_rule(kube: KubeDouble) -> None:
    kube.deny("create", "endpointslices")
    rig = make_sink(kube)
    with pytest.raises(SinkError) as caught:
        await rig.sync([service("web", "10.0.0.1")])
    message = str(caught.value)
    assert "verb 'create' on 'endpointslices' (API group 'discovery.k8s.io')" in message
    assert "namespace 'network'" in message
    assert rig.metric("consul_sync_kubernetes_errors_total") == 1


async def test_a_service_kubernetes_would_refuse_is_skipped_with_the_reason(
    kube: KubeDouble,
) -> None:
    rig = make_sink(kube)
    bad = DesiredService(name="web", namespace=NS, ports=[Port("Web_UI", 80)], sources=["x"])
    with pytest.raises(SinkError) as caught:
        await rig.sync([bad])
    assert not caught.value.retryable and "'Web_UI'" in str(caught.value)
    assert writes(kube) == []


# --- renames: one object name, one decision ----------------------------------------


@pytest.mark.parametrize("delete_first", [True, False])
async def test_a_change_of_case_is_one_in_place_update_in_either_order(
    kube: KubeDouble, delete_first: bool
) -> None:
    rig = make_sink(kube)
    await rig.sync([service("web", "10.0.0.1")])
    uid = (kube.get("services", NS, "web") or {})["metadata"]["uid"]
    # the runtime applies a stale plan's delete of "web" and the upsert of
    # "Web" concurrently: whichever runs first, the Service stays
    rig.keys.set([(NS, "Web")])
    await rig.sink.observe()
    upsert = Change(Action.CREATE, (NS, "Web"), service("Web", "10.0.0.1"))
    delete = Change(Action.DELETE, (NS, "web"))
    kube.reset_log()
    for change in [delete, upsert] if delete_first else [upsert, delete]:
        await rig.sink.apply(change)
    live = kube.get("services", NS, "web")
    assert live is not None and live["metadata"]["uid"] == uid
    assert live["metadata"]["annotations"][r.NAME_ANNOTATION] == "Web"
    assert [w for w in writes(kube) if w[0] == "DELETE"] == []
    assert names(kube, SLICES, OURS) == ["web-v4-8080"]
    assert set(rig.sink.view.entries) == {(NS, "Web")}
    assert (await rig.sync([service("Web", "10.0.0.1")])).empty


async def test_a_rename_in_consul_onto_the_same_name_is_planned_as_one_update(
    kube: KubeDouble,
) -> None:
    rig = make_sink(kube)
    await rig.sync([service("Home_Assistant", "10.0.0.1")])
    uid = (kube.get("services", NS, "home-assistant") or {})["metadata"]["uid"]
    kube.reset_log()
    the_plan = await rig.sync([service("home-assistant", "10.0.0.1")])
    assert [(c.action, c.key) for c in the_plan.changes] == [
        (Action.UPDATE, (NS, "home-assistant"))
    ]
    live = kube.get("services", NS, "home-assistant")
    assert live is not None and live["metadata"]["uid"] == uid
    assert r.NAME_ANNOTATION not in live["metadata"]["annotations"]  # stands for itself now
    # the annotation the POST that made the Service wrote (and so still owns
    # under its Update entry) is handed over to the apply first, which then
    # removes it: a merge patch of managedFields, then the apply
    assert writes(kube) == [("PATCH", f"/api/v1/namespaces/{NS}/services/home-assistant")] * 2
    assert [w.content_type for w in kube.writes()] == [
        "application/merge-patch+json",
        "application/apply-patch+yaml",
    ]
    kube.reset_log()
    assert (await rig.sync([service("home-assistant", "10.0.0.1")])).empty
    await rig.sync([service("Home_Assistant", "10.0.0.1")])  # back: one apply, nothing to hand
    assert [w.content_type for w in kube.writes()] == ["application/apply-patch+yaml"]


async def test_an_old_name_is_its_own_view_entry_planned_as_a_delete(kube: KubeDouble) -> None:
    """A Service of ours under a name no desired key maps to any more (a
    suffix whose collision ended) is a view entry of its own: the planner
    deletes it like anything else, under the policy and the prune budget."""
    rig = make_sink(kube)
    await rig.sync([service("web", "10.0.0.1"), service("WEB", "10.0.0.2")])
    suffixed = n.suffixed("web", "WEB")
    assert names(kube, "services") == ["web", suffixed]
    # "web" leaves: "WEB" takes the plain name back (in place) ...
    rig.keys.set([(NS, "WEB")])
    view = await rig.sink.observe()
    old = (NS, suffixed)
    assert view[old] == Observed(old, True, None, ("consul",))
    assert view[(NS, "WEB")].owned and (NS, "web") not in view
    # ... and the suffixed Service goes only by a planned delete
    the_plan = plan({(NS, "WEB"): service("WEB", "10.0.0.2")}, view, policy=Policy.UPSERT_ONLY)
    assert [(c.action.value, c.key[1]) for c in the_plan.changes] == [("update", "WEB")]
    kube.reset_log()
    await rig.sync([service("WEB", "10.0.0.2")])
    assert writes(kube)[-1] == ("DELETE", f"/api/v1/namespaces/{NS}/services/{suffixed}")
    assert names(kube, "services") == ["web"]
    assert n.service_key(kube.get("services", NS, "web")) == (NS, "WEB")


# --- attribution: which source each endpoint came from -----------------------------


def _stamped(
    name: str, *items: tuple[str, str], sources: list[str] | None = None
) -> DesiredService:
    """A service as the runtime's merge hands it over: endpoints stamped."""
    return DesiredService(
        name=name,
        namespace=NS,
        ports=[Port("http", 8080)],
        endpoints=[Endpoint(address, source=source) for address, source in items],
        sources=sources or sorted({source for _, source in items}),
    )


async def test_slices_of_a_multi_source_service_record_their_source(kube: KubeDouble) -> None:
    web = _stamped("web", ("10.0.0.1", "consul-a"), ("10.0.0.2", "consul-b"))
    await make_sink(kube).sync([web])
    slices = {o["metadata"]["name"]: o for o in kube.list(SLICES, NS, label_selector=OURS)}
    assert set(slices) == {
        f"web-v4-8080-{short_hash('consul-a')}",
        f"web-v4-8080-{short_hash('consul-b')}",
    }
    assert sorted(
        (o["metadata"]["annotations"][r.SOURCE_ANNOTATION], o["endpoints"][0]["addresses"][0])
        for o in slices.values()
    ) == [("consul-a", "10.0.0.1"), ("consul-b", "10.0.0.2")]
    # a fresh replica reads it back exactly, attribution included: nothing to do
    fresh = make_sink(kube)
    view = await fresh.sink.observe()
    assert view[web.key].service == web
    kube.reset_log()
    assert (await fresh.sync([web])).empty and writes(kube) == []


async def test_upgrading_a_single_source_deployment_writes_nothing(kube: KubeDouble) -> None:
    """Objects as the version before attribution wrote them (no source
    annotation) read back with the Service's only source."""
    svc = kube.create(
        "services",
        {
            "metadata": {
                "name": "web",
                "namespace": NS,
                "labels": {
                    "app.kubernetes.io/managed-by": "consul-sync",
                    "app.kubernetes.io/name": "web",
                },
                "annotations": {
                    r.OWNER_ANNOTATION: "network/consul-sync",
                    r.SOURCES_ANNOTATION: "consul",
                },
            },
            "spec": {
                "clusterIP": "None",
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            },
        },
        manager="consul-sync",
    )
    kube.create(
        SLICES,
        {
            "metadata": {
                "name": "web-v4-8080",
                "namespace": NS,
                "labels": {
                    "kubernetes.io/service-name": "web",
                    "endpointslice.kubernetes.io/managed-by": "consul-sync",
                    "app.kubernetes.io/managed-by": "consul-sync",
                },
                "annotations": {r.OWNER_ANNOTATION: "network/consul-sync"},
                "ownerReferences": [r.owner_reference("web", svc["metadata"]["uid"])],
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {
                    "addresses": [a],
                    "conditions": {"ready": True, "serving": True, "terminating": False},
                }
                for a in ("10.0.0.1", "10.0.0.2")
            ],
        },
        manager="consul-sync",
    )
    web = _stamped("web", ("10.0.0.1", "consul"), ("10.0.0.2", "consul"))
    rig = make_sink(kube)
    view = await rig.sink.observe()
    assert view[web.key].service == web
    kube.reset_log()
    assert (await rig.sync([web])).empty and writes(kube) == []
    # and a second source joining keeps the old slice where it is (no churn)
    both = _stamped("web", ("10.0.0.1", "consul"), ("10.0.0.2", "consul"), ("10.0.0.3", "nas"))
    await rig.sync([both])
    assert names(kube, SLICES, OURS) == ["web-v4-8080", f"web-v4-8080-{short_hash('nas')}"]
    kept = kube.get(SLICES, NS, "web-v4-8080")
    assert kept is not None and kept["metadata"]["annotations"][r.SOURCE_ANNOTATION] == "consul"
    assert (await make_sink(kube).sink.observe())[both.key].service == both
