"""Parsing the recorded Consul 1.10 answers (pure, no I/O)."""

from __future__ import annotations

import json

import pytest

from consul_sync_consul import parse
from consul_sync_consul.convert import Health, health_of
from tests.consul.conftest import body


def test_catalog_services_sorts_tags_and_keeps_untagged_names() -> None:
    catalog = parse.catalog_services(body("08"))
    assert catalog == {
        "cache": (),
        "consul": (),
        "db": ("kubernetes", "postgres"),
        "web": ("canary", "kubernetes"),
    }


def test_tag_filter_is_ours_because_consul_ignores_it() -> None:
    # 08 was asked with ?tag=kubernetes and still lists cache and consul.
    catalog = parse.catalog_services(body("08"))
    assert parse.tagged_names(catalog, "kubernetes") == {"db", "web"}
    assert parse.tagged_names(catalog, "") == {"cache", "consul", "db", "web"}


def test_catalog_services_with_odd_names_keeps_them_as_given() -> None:
    assert "Home_Assistant.v2" in parse.catalog_services(body("20"))


@pytest.mark.parametrize("bad", [[], "x", {"web": "kubernetes"}, {"web": [1]}])
def test_catalog_services_rejects_other_shapes(bad: object) -> None:
    with pytest.raises(parse.Malformed):
        parse.catalog_services(bad)


def test_health_service_address_port_and_health_per_instance() -> None:
    parsed = parse.health_service("web", body("09"))
    by_id = {e.id: e for e in parsed.entries}
    assert by_id["web-1"].address == "10.1.0.11"
    assert by_id["web-1"].port == 8080
    assert by_id["web-1"].health is Health.PASSING
    assert dict(by_id["web-1"].meta) == {"version": "1.4.2", "zone": "a"}
    # Service.Address "" -> Node.Address
    assert by_id["web-2"].address == "127.0.0.1"
    assert by_id["web-2"].port == 8081
    assert by_id["web-2"].health is Health.WARNING
    assert by_id["web-3"].health is Health.CRITICAL
    # serfHealth is a node check (ServiceID ""), kept apart
    assert by_id["web-1"].node_checks == (("serfHealth", "passing"),)
    assert by_id["web-1"].service_checks == (("service:web-1", "passing"),)
    assert parsed.problems == ()
    assert parsed.raw_count == 3


def test_service_maintenance_is_maintenance_for_that_instance_only() -> None:
    by_id = {e.id: e for e in parse.health_service("web", body("13")).entries}
    assert by_id["web-1"].health is Health.MAINTENANCE
    assert by_id["web-2"].health is Health.WARNING


def test_node_maintenance_is_maintenance_for_every_instance() -> None:
    entries = parse.health_service("web", body("15")).entries
    assert {e.health for e in entries} == {Health.MAINTENANCE}


def test_addresses_ipv6_hostname_and_tagged_are_carried_as_given() -> None:
    by_id = {e.id: e for e in parse.health_service("nas", body("18")).entries}
    assert by_id["nas-v6"].address == "fd00:10::5"
    assert by_id["nas-host"].address == "nas.home.arpa"
    assert by_id["nas-tagged"].address == "10.1.0.50"
    # no checks at all: passing, as Consul counts it
    assert by_id["nas-host"].health is Health.PASSING


def test_connect_proxy_kind_is_read() -> None:
    (entry,) = parse.health_service("web-sidecar-proxy", body("24")).entries
    assert entry.kind == "connect-proxy"


def test_unusable_instances_are_skipped_with_a_problem() -> None:
    good = body("21")[0]
    no_port = {**good, "Service": {**good["Service"], "ID": "p0", "Port": 0}}
    no_address = {
        **good,
        "Node": {**good["Node"], "Address": ""},
        "Service": {**good["Service"], "ID": "a0", "Address": ""},
    }
    parsed = parse.health_service("Home_Assistant.v2", [good, no_port, no_address])
    assert [e.id for e in parsed.entries] == ["ha-1"]
    assert len(parsed.problems) == 2
    assert "port 0" in parsed.problems[0]
    assert "Address" in parsed.problems[1]


@pytest.mark.parametrize(
    "bad", [{}, [1], [{"Node": {}, "Checks": []}], [{"Node": {"Node": "n"}, "Service": {}}]]
)
def test_health_service_rejects_other_shapes(bad: object) -> None:
    with pytest.raises(parse.Malformed):
        parse.health_service("web", bad)


def test_health_state_and_diff_names_the_service_whose_check_moved() -> None:
    before = parse.health_state(body("80"))
    after = parse.health_state(body("81"))
    assert ("vm", "serfHealth") in before
    diff = parse.diff_checks(before, after)
    # 81 adds api-1's check (a new instance with a check) and nothing else moved
    assert diff.services == frozenset({"api"})
    assert diff.nodes == frozenset()
    flipped = dict(after)
    flipped[("vm", "web-2-ttl")] = parse.Check("vm", "web-2-ttl", "passing", "web-2", "web")
    flipped[("vm", "serfHealth")] = parse.Check("vm", "serfHealth", "critical", "", "")
    diff = parse.diff_checks(after, flipped)
    assert diff.services == frozenset({"web"})
    assert diff.nodes == frozenset({"vm"})
    assert parse.node_checks(flipped) == {"vm": (("serfHealth", "critical"),)}


def test_health_of_maintenance_beats_everything() -> None:
    assert health_of([("service:x", "passing"), ("_node_maintenance", "critical")]) is (
        Health.MAINTENANCE
    )
    assert health_of([("_service_maintenance:x", "critical")]) is Health.MAINTENANCE
    assert health_of([("a", "passing"), ("b", "warning")]) is Health.WARNING
    assert health_of([("a", "passing"), ("b", "bogus")]) is Health.CRITICAL
    assert health_of([]) is Health.PASSING


def test_bexpr_string_escapes() -> None:
    assert parse.bexpr_string('a"b\\c') == '"a\\"b\\\\c"'


# --- catalog/node-services, read from its bytes --------------------------------

#: One instance as Consul 1.10 encodes it (every field of a NodeService), with Meta keys
#: that share the names of the fields read: only the instance's own fields count.
_WEB_1 = {
    "ID": "web-1",
    "Service": "web",
    "Tags": ["kubernetes"],
    "Address": "10.1.0.11",
    "TaggedAddresses": {"lan_ipv4": {"Address": "10.1.0.11", "Port": 8080}},
    "Meta": {"ID": "other", "Service": "other", "ModifyIndex": "7"},
    "Port": 8080,
    "Weights": {"Passing": 1, "Warning": 1},
    "EnableTagOverride": False,
    "Proxy": {"Mode": "", "MeshGateway": {}, "Expose": {}},
    "Connect": {},
    "CreateIndex": 12,
    "ModifyIndex": 40,
}


@pytest.fixture(params=["msgspec", "json"])
def decoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways the scan's answer is decoded: msgspec, and the json module where msgspec
    has no wheel. They must agree."""
    if request.param == "json":
        monkeypatch.setattr(parse, "MSGSPEC", False)
    else:
        assert parse.MSGSPEC, "msgspec is a dependency on this platform"
    return str(request.param)


def test_node_services_bytes_reads_each_instance_s_own_id_name_and_index(decoder: str) -> None:
    db = {**_WEB_1, "ID": "db-1", "Service": "db", "Meta": None, "ModifyIndex": 41}
    answer = {"Node": {"Node": "node-a", "Address": "10.1.0.1"}, "Services": [_WEB_1, db]}
    into = parse.Scan()
    into.add("web", "node-b", "web-2", 30)
    parse.node_services_bytes("node-a", json.dumps(answer).encode(), into)
    key = parse.instance_key
    assert into.indexes == {
        key("web", "node-b", "web-2"): 30,
        key("web", "node-a", "web-1"): 40,
        key("db", "node-a", "db-1"): 41,
    }
    assert into.top == {"web": 40, "db": 41}
    assert parse.name_of(key("web", "node-a", "web-1")) == "web"


@pytest.mark.parametrize(
    "raw",
    [b'{"Node": null, "Services": []}', b'{"Node": null, "Services": null}', b'{"Node": null}'],
)
def test_node_services_bytes_of_an_unknown_or_empty_node_adds_nothing(
    decoder: str, raw: bytes
) -> None:
    into = parse.Scan()
    parse.node_services_bytes("gone", raw, into)
    assert into == parse.Scan()


@pytest.mark.parametrize(
    "raw",
    [
        b'{"Services": [{"ID": "web-1", "Service": "web"',  # truncated
        b"<html>proxy error</html>",
        b'{"Services": {"web-1": {}}}',
        b'{"Services": [{"ID": "web-1", "Service": "web"}]}',  # no ModifyIndex
        b'{"Services": [{"ID": "web-1", "Service": "web", "ModifyIndex": "40"}]}',
        b"[]",
    ],
)
def test_node_services_bytes_rejects_other_shapes_naming_the_node(decoder: str, raw: bytes) -> None:
    with pytest.raises(parse.Malformed, match="catalog/node-services/node-a"):
        parse.node_services_bytes("node-a", raw, parse.Scan())
