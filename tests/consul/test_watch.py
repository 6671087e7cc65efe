"""The consul source against the Consul HTTP double, over loopback HTTP:
every kind of change arrives, indexes are handled as Consul wants."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import httpx
import pytest

from consul_sync.metrics import Metrics
from consul_sync_consul.source import Consistency
from tests.consul.helpers import DEADLINE, make_source, ready, running
from tests.fakes.consul_double import ConsulDouble

pytestmark = pytest.mark.anyio

TAG = ["kubernetes"]


@pytest.fixture
def consul() -> Iterator[ConsulDouble]:
    with ConsulDouble(seed=7) as double:
        double.register("web", service_id="web-1", address="10.1.0.11", port=8080, tags=TAG,
                        status="passing")  # fmt: skip
        double.register("web", service_id="web-2", address="10.1.0.12", port=8080, tags=TAG,
                        status="passing")  # fmt: skip
        double.register("db", service_id="db-1", address="10.1.0.20", port=5432, tags=TAG,
                        status="passing")  # fmt: skip
        double.register("cache", service_id="cache-1", address="10.1.0.30", port=6379,
                        status="passing")  # fmt: skip
        # no checks at all: only the catalog index tells when it changes
        double.register("plain", service_id="plain-1", address="10.1.0.40", port=9000, tags=TAG)
        yield double
        assert double.errors == []


async def test_first_snapshot_holds_the_tagged_services_only(consul: ConsulDouble) -> None:
    async with running(make_source(consul.url)) as seen:
        assert seen.last.complete
        assert seen.names() == {"web", "db", "plain"}  # not cache (untagged), not consul
        assert ready(seen.endpoints("web")) == {"10.1.0.11": True, "10.1.0.12": True}
        assert seen.last.services[("network", "db")].ports[0].port == 5432


async def test_registration_of_a_new_service(consul: ConsulDouble) -> None:
    async with running(make_source(consul.url)) as seen:
        consul.register("api", service_id="api-1", address="10.1.0.50", port=80, tags=TAG,
                        status="passing")  # fmt: skip
        await seen.until(lambda s: ("network", "api") in s.services, DEADLINE, "api registered")


async def test_new_instance_with_and_without_checks(consul: ConsulDouble) -> None:
    source = make_source(consul.url)
    async with running(source) as seen:
        consul.register("web", service_id="web-3", address="10.1.0.13", port=8080, tags=TAG,
                        status="passing")  # fmt: skip
        await seen.until(lambda s: len(seen.endpoints("web")) == 3, DEADLINE, "web-3")
        # An instance without checks changes neither the catalog body nor any
        # check: only the catalog index moves, and the instance scan finds it.
        sweeps = source.sweeps
        consul.register("plain", service_id="plain-2", address="10.1.0.41", port=9000, tags=TAG)
        await seen.until(lambda s: len(seen.endpoints("plain")) == 2, DEADLINE, "plain-2")
        assert source.sweeps == sweeps


async def test_deregistration_of_an_instance_and_of_a_service(consul: ConsulDouble) -> None:
    async with running(make_source(consul.url)) as seen:
        consul.deregister("web-2")
        await seen.until(lambda s: len(seen.endpoints("web")) == 1, DEADLINE, "web-2 gone")
        consul.deregister("db-1")
        await seen.until(lambda s: ("network", "db") not in s.services, DEADLINE, "db gone")
        consul.deregister("plain-1")
        await seen.until(lambda s: ("network", "plain") not in s.services, DEADLINE, "plain gone")
        assert seen.last.complete


async def test_tag_added_and_removed(consul: ConsulDouble) -> None:
    async with running(make_source(consul.url)) as seen:
        consul.register("cache", service_id="cache-1", address="10.1.0.30", port=6379, tags=TAG,
                        status="passing")  # fmt: skip
        await seen.until(lambda s: ("network", "cache") in s.services, DEADLINE, "cache tagged")
        consul.register("db", service_id="db-1", address="10.1.0.20", port=5432, tags=["x"],
                        status="passing")  # fmt: skip
        await seen.until(lambda s: ("network", "db") not in s.services, DEADLINE, "db untagged")
        # one instance of two loses the tag: the union still has it
        consul.register("web", service_id="web-2", address="10.1.0.12", port=8080,
                        status="passing")  # fmt: skip
        await seen.until(lambda s: len(seen.endpoints("web")) == 1, DEADLINE, "web-2 untagged")


async def test_address_port_and_meta_change_in_place(consul: ConsulDouble) -> None:
    async with running(make_source(consul.url)) as seen:
        consul.register("web", service_id="web-1", address="10.1.0.99", port=8080, tags=TAG,
                        status="passing")  # fmt: skip
        await seen.until(
            lambda s: "10.1.0.99" in ready(seen.endpoints("web")), DEADLINE, "web-1 address"
        )
        consul.register("plain", service_id="plain-1", address="10.1.0.40", port=9001, tags=TAG)
        await seen.until(
            lambda s: s.services[("network", "plain")].ports[0].port == 9001, DEADLINE, "port"
        )
        consul.register("plain", service_id="plain-1", address="10.1.0.40", port=9001, tags=TAG,
                        meta={"k8s-port-name": "grpc", "k8s-app-protocol": "grpc"})  # fmt: skip
        await seen.until(
            lambda s: s.services[("network", "plain")].ports[0].name == "grpc", DEADLINE, "meta"
        )
        assert s_port(seen.last, "plain").app_protocol == "grpc"


def s_port(snapshot: object, name: str):  # type: ignore[no-untyped-def]
    return snapshot.services[("network", name)].ports[0]  # type: ignore[attr-defined]


async def test_per_instance_ports_ipv6_and_hostnames(consul: ConsulDouble) -> None:
    async with running(make_source(consul.url)) as seen:
        consul.register("nas", service_id="nas-1", address="fd00:10::5", port=5000, tags=TAG)
        consul.register("nas", service_id="nas-2", address="nas.home.arpa", port=5001, tags=TAG)
        consul.register("nas", service_id="nas-3", address="", port=5000, tags=TAG)
        await seen.until(lambda s: len(seen.endpoints("nas")) == 3, DEADLINE, "nas")
        endpoints = {e.address: e.port for e in seen.endpoints("nas")}
        # the node's address for an instance without one; its own port when it differs
        assert endpoints == {"fd00:10::5": None, "nas.home.arpa": 5001, "127.0.0.1": None}
        assert seen.last.services[("network", "nas")].ports[0].port == 5000


async def test_health_flips(consul: ConsulDouble) -> None:
    async with running(make_source(consul.url)) as seen:
        consul.set_check("service:web-1", "critical")
        await seen.until(
            lambda s: ready(seen.endpoints("web"))["10.1.0.11"] is False, DEADLINE, "critical"
        )
        (critical,) = [e for e in seen.endpoints("web") if e.address == "10.1.0.11"]
        assert not critical.serving
        consul.set_check("service:web-1", "warning")
        await seen.until(
            lambda s: any(e.serving and not e.ready for e in seen.endpoints("web")),
            DEADLINE,
            "warning: serving, not ready",
        )
        consul.set_check("service:web-1", "passing")
        await seen.until(
            lambda s: all(ready(seen.endpoints("web")).values()), DEADLINE, "passing again"
        )


async def test_unhealthy_instances_omitted_when_asked(consul: ConsulDouble) -> None:
    async with running(make_source(consul.url, include_unhealthy=False)) as seen:
        consul.set_check("service:web-1", "critical")
        await seen.until(lambda s: len(seen.endpoints("web")) == 1, DEADLINE, "web-1 omitted")


async def test_service_maintenance(consul: ConsulDouble) -> None:
    async with running(make_source(consul.url)) as seen:
        consul.service_maintenance("web-1", True, "upgrading")
        await seen.until(
            lambda s: ready(seen.endpoints("web")) == {"10.1.0.11": False, "10.1.0.12": True},
            DEADLINE,
            "web-1 in maintenance",
        )
        consul.service_maintenance("web-1", False)
        await seen.until(
            lambda s: all(ready(seen.endpoints("web")).values()), DEADLINE, "maintenance over"
        )


async def test_node_health_and_node_maintenance(consul: ConsulDouble) -> None:
    consul.add_node("node-b", "10.2.0.1")
    consul.register("web", service_id="web-b", address="", port=8080, tags=TAG, status="passing",
                    node="node-b")  # fmt: skip
    async with running(make_source(consul.url)) as seen:
        assert ready(seen.endpoints("web"))["10.2.0.1"] is True
        consul.set_check("serfHealth", "critical", node="node-b")
        await seen.until(
            lambda s: ready(seen.endpoints("web"))["10.2.0.1"] is False, DEADLINE, "node down"
        )
        assert ready(seen.endpoints("web"))["10.1.0.11"] is True  # other node unaffected
        consul.set_check("serfHealth", "passing", node="node-b")
        await seen.until(
            lambda s: ready(seen.endpoints("web"))["10.2.0.1"] is True, DEADLINE, "node up"
        )
        consul.node_maintenance(True, "kernel patching", node="node-b")
        await seen.until(
            lambda s: ready(seen.endpoints("web"))["10.2.0.1"] is False, DEADLINE, "node maint"
        )
        consul.node_maintenance(False, node="node-b")
        await seen.until(
            lambda s: ready(seen.endpoints("web"))["10.2.0.1"] is True, DEADLINE, "maint over"
        )


async def test_connect_proxies_only_when_asked(consul: ConsulDouble) -> None:
    proxy = {"DestinationServiceName": "web", "DestinationServiceID": "web-1"}
    consul.register("web-sidecar-proxy", service_id="web-1-sidecar-proxy", address="10.1.0.11",
                    port=21000, tags=TAG, kind="connect-proxy", proxy=proxy)  # fmt: skip
    async with running(make_source(consul.url)) as seen:
        assert "web-sidecar-proxy" not in seen.names()
        assert seen.last.complete
    async with running(make_source(consul.url, include_proxies=True)) as seen:
        assert "web-sidecar-proxy" in seen.names()


async def test_filter_expression_and_odd_names(consul: ConsulDouble) -> None:
    consul.register("Home_Assistant.v2", service_id="ha-1", address="10.1.0.60", port=8123,
                    tags=TAG, meta={"env": "prod"})  # fmt: skip
    source = make_source(consul.url, filter='Service.Meta.env == "prod"')
    async with running(source) as seen:
        assert seen.names() == {"Home_Assistant.v2"}
        assert seen.last.complete


class IndexShift(httpx.AsyncBaseTransport):
    """Real loopback HTTP, with every X-Consul-Index shifted by ``offset``:
    dropping the offset makes the agent's index go backwards, as after a
    restore or against another server."""

    def __init__(self, offset: int) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.offset = offset
        self.sent: list[httpx.URL] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request.url)
        if "index" in request.url.params:
            shifted = int(request.url.params["index"]) - self.offset
            request.url = request.url.copy_set_param("index", str(max(1, shifted)))
        response = await self.inner.handle_async_request(request)
        if "X-Consul-Index" in response.headers:
            response.headers["X-Consul-Index"] = str(
                int(response.headers["X-Consul-Index"]) + self.offset
            )
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_index_going_backwards_resets_to_zero(consul: ConsulDouble) -> None:
    shift = IndexShift(1000)
    source = make_source(consul.url, transport=shift)
    async with running(source) as seen:
        shift.offset = 0  # the agent's index is now far below ours
        consul.register("api", service_id="api-1", address="10.1.0.50", port=80, tags=TAG)
        await seen.until(lambda s: ("network", "api") in s.services, DEADLINE, "api")
        catalog = [u for u in shift.sent if u.path == "/v1/catalog/services"]
        # after the smaller index came back, the next read was a plain read (no index)
        assert any("index" not in u.params for u in catalog[2:]), catalog
        # and blocking resumed at the agent's real index: the next change is prompt
        consul.register("api2", service_id="api2-1", address="10.1.0.51", port=80, tags=TAG)
        await seen.until(lambda s: ("network", "api2") in s.services, DEADLINE, "api2")


async def test_index_zero_is_never_sent_and_waits_are_bounded(consul: ConsulDouble) -> None:
    shift = IndexShift(0)
    async with running(make_source(consul.url, transport=shift, wait=30)) as seen:
        consul.set_check("service:web-1", "critical")
        await seen.until(lambda s: not all(ready(seen.endpoints("web")).values()), DEADLINE)
    blocking = [u for u in shift.sent if "wait" in u.params]
    assert blocking, "no blocking query was made"
    assert all(int(u.params["index"]) > 0 for u in blocking)
    assert {u.params["wait"] for u in blocking} == {"30000ms"}


async def test_consistency_datacenter_namespace_partition_are_passed(
    consul: ConsulDouble,
) -> None:
    shift = IndexShift(0)
    source = make_source(
        consul.url,
        transport=shift,
        consistency=Consistency.STALE,
        datacenter="dc1",
        consul_namespace="team-a",
        partition="p1",
    )
    async with running(source) as seen:
        assert seen.last.services  # the double ignores ns/partition, as Consul OSS does
    assert shift.sent
    for url in shift.sent:
        params = url.params
        assert "stale" in params and params["dc"] == "dc1"
        assert params["ns"] == "team-a" and params["partition"] == "p1"


async def test_snapshot_and_resync(consul: ConsulDouble) -> None:
    metrics = Metrics()
    source = make_source(consul.url, metrics=metrics)
    snapshot = await source.snapshot()
    assert snapshot.complete
    assert {k[1] for k in snapshot.services} == {"web", "db", "plain"}
    await source.aclose()
    source = make_source(consul.url)
    async with running(source) as seen:
        reads = source.reads
        await source.resync()
        assert source.reads >= reads + 3
        assert seen.last.complete


# --- in-place changes: found by the instance scan, never by a sweep ---------------


def service_reads(consul: ConsulDouble) -> int:
    return consul.request_count("/v1/health/service/")


async def test_in_place_address_port_and_meta_change_without_a_sweep(
    consul: ConsulDouble,
) -> None:
    source = make_source(consul.url)
    async with running(source) as seen:
        sweeps, scans, reads = source.sweeps, source.scans, service_reads(consul)
        consul.register("web", service_id="web-1", address="10.1.0.99", port=8080, tags=TAG,
                        status="passing")  # fmt: skip
        await seen.until(lambda s: "10.1.0.99" in ready(seen.endpoints("web")), DEADLINE, "addr")
        consul.register("db", service_id="db-1", address="10.1.0.20", port=5433, tags=TAG,
                        status="passing")  # fmt: skip
        await seen.until(lambda s: s_port(s, "db").port == 5433, DEADLINE, "port")
        consul.register("db", service_id="db-1", address="10.1.0.20", port=5433, tags=TAG,
                        status="passing", meta={"k8s-port-name": "pg"})  # fmt: skip
        await seen.until(lambda s: s_port(s, "db").name == "pg", DEADLINE, "meta")
        assert source.sweeps == sweeps
        assert source.scans >= scans + 3
        # only the services that changed were read (not every tagged one each time)
        assert service_reads(consul) - reads <= 4


async def test_unchecked_instance_appearing_and_vanishing_without_a_sweep(
    consul: ConsulDouble,
) -> None:
    source = make_source(consul.url)
    async with running(source) as seen:
        sweeps, reads = source.sweeps, service_reads(consul)
        consul.register("plain", service_id="plain-2", address="10.1.0.41", port=9000, tags=TAG)
        await seen.until(lambda s: len(seen.endpoints("plain")) == 2, DEADLINE, "plain-2 came")
        consul.deregister("plain-2")
        await seen.until(lambda s: len(seen.endpoints("plain")) == 1, DEADLINE, "plain-2 went")
        # an instance (of two) that loses the tag in place
        consul.register("plain", service_id="plain-3", address="10.1.0.42", port=9000, tags=TAG)
        await seen.until(lambda s: len(seen.endpoints("plain")) == 2, DEADLINE, "plain-3 came")
        consul.register("plain", service_id="plain-3", address="10.1.0.42", port=9000)
        await seen.until(lambda s: len(seen.endpoints("plain")) == 1, DEADLINE, "plain-3 untagged")
        assert source.sweeps == sweeps
        assert service_reads(consul) - reads <= 6


async def test_untagged_change_in_place_reads_nothing(consul: ConsulDouble) -> None:
    source = make_source(consul.url)
    async with running(source) as seen:
        sweeps, scans, reads = source.sweeps, source.scans, service_reads(consul)
        consul.register("cache", service_id="cache-1", address="10.1.0.31", port=6379,
                        status="passing")  # fmt: skip
        with anyio.fail_after(DEADLINE):
            while source.scans == scans:
                await anyio.sleep(0.02)
        await anyio.sleep(0.1)
        assert source.sweeps == sweeps
        assert service_reads(consul) == reads
        assert seen.last.complete


async def test_node_address_change_without_a_sweep(consul: ConsulDouble) -> None:
    consul.add_node("node-b", "10.2.0.1")
    consul.register("web", service_id="web-b", address="", port=8080, tags=TAG, status="passing",
                    node="node-b")  # fmt: skip
    consul.register("db", service_id="db-b", address="10.2.0.20", port=5432, tags=TAG,
                    node="node-b")  # fmt: skip
    source = make_source(consul.url)
    async with running(source) as seen:
        assert "10.2.0.1" in ready(seen.endpoints("web"))
        sweeps, reads = source.sweeps, consul.request_count("/v1/health/service/db")
        catalog_index = consul.catalog_index
        consul.add_node("node-b", "10.2.0.2")  # re-registered with a new address
        assert consul.catalog_index == catalog_index  # only the nodes table moved
        await seen.until(
            lambda s: ready(seen.endpoints("web")) == {"10.1.0.11": True, "10.1.0.12": True,
                                                      "10.2.0.2": True},
            DEADLINE,
            "web-b at the node's new address",
        )  # fmt: skip
        assert source.sweeps == sweeps
        # db-b has an address of its own: not read again
        assert consul.request_count("/v1/health/service/db") == reads


async def test_without_node_services_in_place_changes_fall_back_to_a_sweep(
    consul: ConsulDouble,
) -> None:
    consul.inject_fault("error", times=None, path_prefix="/v1/catalog/node-services/",
                        status=404)  # fmt: skip
    source = make_source(consul.url)
    async with running(source) as seen:
        sweeps = source.sweeps
        consul.register("web", service_id="web-1", address="10.1.0.99", port=8080, tags=TAG,
                        status="passing")  # fmt: skip
        await seen.until(lambda s: "10.1.0.99" in ready(seen.endpoints("web")), DEADLINE, "addr")
        assert source.sweeps > sweeps
        assert source.scans == 0


async def test_a_budget_of_three_has_no_nodes_watch(consul: ConsulDouble) -> None:
    source = make_source(consul.url, max_connections=3)
    assert not source.nodes_watch and source.read_slots == 1
    async with running(source) as seen:
        consul.register("web", service_id="web-1", address="10.1.0.99", port=8080, tags=TAG,
                        status="passing")  # fmt: skip
        await seen.until(lambda s: "10.1.0.99" in ready(seen.endpoints("web")), DEADLINE, "addr")
    assert consul.request_count("/v1/catalog/nodes") >= 1  # the scan's, never blocking
    assert all("index" not in r.query for r in consul.requests if r.path == "/v1/catalog/nodes")
    assert consul.peak_connections <= 3


async def test_a_rename_is_published_whole(consul: ConsulDouble) -> None:
    """One service ID re-registered under another name (a change of case, a
    rename): no snapshot lacks both names, so the runtime sees one rename,
    never a delete and then a create."""
    consul.register("api", service_id="api-1", address="10.1.0.50", port=80, tags=TAG,
                    status="passing")  # fmt: skip
    async with running(make_source(consul.url)) as seen:
        first = len(seen.snapshots)
        # the new name's read is slow (a loaded agent)
        consul.inject_fault("delay", path_prefix="/v1/health/service/Api", seconds=0.5)
        consul.register("Api", service_id="api-1", address="10.1.0.50", port=80, tags=TAG,
                        status="passing")  # fmt: skip
        await seen.until(
            lambda s: ("network", "Api") in s.services and ("network", "api") not in s.services,
            DEADLINE,
            "the rename",
        )
        for snapshot in seen.snapshots[first:]:
            assert {("network", "api"), ("network", "Api")} & set(snapshot.services)


async def test_an_answer_with_the_bytes_of_the_last_is_not_decoded_again(
    consul: ConsulDouble,
) -> None:
    """In place, the catalog's index moves and its body does not: the watch hands the
    value it already has (and the catalog state compares nothing); a new body is parsed."""
    source = make_source(consul)
    parsed: list[object] = []
    seen: list[tuple[object, int]] = []

    def parse_body(body: object) -> object:
        parsed.append(body)
        return dict(body)  # type: ignore[call-overload]

    async def until(count: int) -> None:
        with anyio.fail_after(DEADLINE):
            while len(seen) < count:
                await anyio.sleep(0.01)

    watch = source.watcher.long_poll
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch, "catalog", "/v1/catalog/services", {}, parse_body,
                      lambda value, _old, new: seen.append((value, new)))  # fmt: skip
        await until(1)
        consul.register("web", service_id="web-1", address="10.1.0.99", port=8080, tags=TAG,
                        status="passing")  # fmt: skip
        await until(2)
        consul.register("api", service_id="api-1", address="10.1.0.50", port=80, tags=TAG)
        await until(3)
        tg.cancel_scope.cancel()
    await source.aclose()
    (first, index1), (again, index2), (new, _) = seen
    assert index2 > index1 and again is first  # the index moved; the same value, not parsed
    assert new is not first and "api" in new  # type: ignore[operator]
    assert len(parsed) == 2
