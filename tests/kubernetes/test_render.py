"""The pure renderer: objects, grouping, packing, names, parse-back, comparison."""

from __future__ import annotations

import copy
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consul_sync.model import DesiredService, Endpoint, Port
from consul_sync_kube.names import is_valid_name, sanitize, short_hash
from consul_sync_kubernetes import compare as c
from consul_sync_kubernetes import naming as n
from consul_sync_kubernetes import render as r
from consul_sync_kubernetes import validate as v

from .recordings import request_body, response_body


def svc(*endpoints: Endpoint, name: str = "web", port: int = 8080, **kwargs: Any) -> DesiredService:
    """A service in canonical form: endpoints stamped with their source, as
    ``consul_sync.plan.merge`` stamps them."""
    sources = kwargs.pop("sources", ["consul"])
    return DesiredService(
        name=name,
        namespace="network",
        ports=kwargs.pop("ports", [Port("http", port, "TCP", "http")]),
        endpoints=[e if e.source else attrs.evolve(e, source=sources[0]) for e in endpoints],
        sources=sources,
        **kwargs,
    )


def many(count: int, *, prefix: str = "10.1") -> list[Endpoint]:
    return [Endpoint(f"{prefix}.{i // 250}.{i % 250 + 1}") for i in range(count)]


# --- objects --------------------------------------------------------------


def test_service_is_headless_with_ports_labels_and_annotations() -> None:
    service = svc(Endpoint("10.0.0.1"), labels={"team": "media"}, annotations={"note": "x"})
    obj = r.render(service, owner="network/consul-sync").service
    assert obj["spec"] == {
        "clusterIP": "None",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP", "appProtocol": "http"}],
    }
    meta = obj["metadata"]
    assert meta["labels"] == {
        "team": "media",
        "app.kubernetes.io/managed-by": "consul-sync",
        "app.kubernetes.io/name": "web",
    }
    assert meta["annotations"][r.OWNER_ANNOTATION] == "network/consul-sync"
    assert meta["annotations"][r.SOURCES_ANNOTATION] == "consul"
    assert meta["annotations"][r.LABEL_KEYS_ANNOTATION] == "team"
    assert meta["annotations"][r.ANNOTATION_KEYS_ANNOTATION] == "note"


def test_slices_carry_the_labels_the_seed_selects_on_and_an_owner_reference() -> None:
    rendered = r.render(svc(Endpoint("10.0.0.1")), owner="o", service_uid="uid-1")
    (obj,) = rendered.slices
    assert obj["metadata"]["labels"] == {
        "kubernetes.io/service-name": "web",
        "endpointslice.kubernetes.io/managed-by": "consul-sync",
        "app.kubernetes.io/managed-by": "consul-sync",
    }
    assert obj["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Service", "name": "web", "uid": "uid-1", "controller": True}
    ]
    # without a uid (consul-sync render): no reference
    assert "ownerReferences" not in r.render(svc(Endpoint("10.0.0.1"))).slices[0]["metadata"]


def test_conditions_hostname_node_and_zone_are_carried() -> None:
    endpoint = Endpoint(
        "10.0.10.11",
        ready=False,
        serving=True,
        terminating=True,
        hostname="web-1",
        zone="home",
        node_name="docker-1",
    )
    (obj,) = r.render(svc(endpoint)).slices
    assert obj["endpoints"] == [
        {
            "addresses": ["10.0.10.11"],
            "conditions": {"ready": False, "serving": True, "terminating": True},
            "hostname": "web-1",
            "nodeName": "docker-1",
            "zone": "home",
        }
    ]


# --- grouping like the EndpointSlice controller ------------------------------


def test_ipv4_ipv6_and_hostnames_go_to_three_address_types() -> None:
    service = svc(Endpoint("10.0.0.1"), Endpoint("fd00::1"), Endpoint("nas.home.arpa"))
    rendered = r.render(service)
    assert [(s["metadata"]["name"], s["addressType"]) for s in rendered.slices] == [
        ("web-fqdn-8080", "FQDN"),
        ("web-v4-8080", "IPv4"),
        ("web-v6-8080", "IPv6"),
    ]
    assert [s["endpoints"][0]["addresses"] for s in rendered.slices] == [
        ["nas.home.arpa"],
        ["10.0.0.1"],
        ["fd00::1"],
    ]


def test_instances_on_other_ports_get_their_own_slice_with_the_same_port_name() -> None:
    service = svc(Endpoint("10.0.0.1"), Endpoint("10.0.0.2", port=9090), Endpoint("10.0.0.3"))
    slices = r.render(service).slices
    assert [(s["metadata"]["name"], s["ports"]) for s in slices] == [
        ("web-v4-8080", [{"name": "http", "port": 8080, "protocol": "TCP", "appProtocol": "http"}]),
        ("web-v4-9090", [{"name": "http", "port": 9090, "protocol": "TCP", "appProtocol": "http"}]),
    ]
    assert [len(s["endpoints"]) for s in slices] == [2, 1]


def test_2500_instances_make_25_slices_of_at_most_100() -> None:
    rendered = r.render(svc(*many(2500)))
    assert len(rendered.slices) == 25
    assert {len(s["endpoints"]) for s in rendered.slices} == {100}
    assert r.render(svc(*many(2500)), max_per_slice=1000).slices[0]["endpoints"].__len__() == 1000


def _existing(rendered: r.Rendered) -> dict[r.GroupKey, dict[str, list[str]]]:
    return c.packing(rendered.slices, Port("http", 8080), "consul")


def _changed(before: r.Rendered, after: r.Rendered) -> list[str]:
    old = {s["metadata"]["name"]: s for s in before.slices}
    new = {s["metadata"]["name"]: s for s in after.slices}
    return sorted(n for n in old.keys() | new.keys() if old.get(n) != new.get(n))


def test_one_instance_change_rewrites_one_slice() -> None:
    endpoints = many(2500)
    before = r.render(svc(*endpoints))
    # health flip
    flipped = [attrs.evolve(e, ready=False) if i == 1234 else e for i, e in enumerate(endpoints)]
    after = r.render(svc(*flipped), existing=_existing(before))
    assert len(_changed(before, after)) == 1
    # one instance gone: its slice only (the others keep their members)
    after = r.render(svc(*endpoints[:700], *endpoints[701:]), existing=_existing(before))
    assert len(_changed(before, after)) == 1
    # one instance more fills the slice with room before making a new one
    gone = r.render(svc(*endpoints[:700], *endpoints[701:]), existing=_existing(before))
    back = r.render(
        svc(*endpoints[:700], *endpoints[701:], Endpoint("10.9.9.9")), existing=_existing(gone)
    )
    assert _changed(gone, back) == _changed(before, gone)
    assert len(back.slices) == 25
    # ... and a new slice only when all are full
    full = r.render(svc(*endpoints, Endpoint("10.9.9.9")), existing=_existing(before))
    assert _changed(before, full) == ["web-v4-8080-26"]


def test_slices_left_empty_are_dropped_and_overfull_ones_repacked() -> None:
    before = r.render(svc(*many(150)))
    assert [len(s["endpoints"]) for s in before.slices] == [100, 50]
    second = {e["addresses"][0] for e in before.slices[1]["endpoints"]}
    after = r.render(
        svc(*(e for e in many(150) if e.address not in second)), existing=_existing(before)
    )
    assert [s["metadata"]["name"] for s in after.slices] == ["web-v4-8080"]
    smaller = r.render(svc(*many(150)), max_per_slice=60, existing=_existing(before))
    assert all(len(s["endpoints"]) <= 60 for s in smaller.slices)


def test_new_slices_avoid_names_held_by_others() -> None:
    rendered = r.render(svc(Endpoint("10.0.0.1")), reserved={"web-v4-8080"})
    assert [s["metadata"]["name"] for s in rendered.slices] == ["web-v4-8080-2"]


# --- addresses the API server refuses -----------------------------------------


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("10.0.0.1", "IPv4"),
        ("fd00::1", "IPv6"),
        ("nas.home.arpa", "FQDN"),
        ("NAS.Home.Arpa", "FQDN"),
        ("nas.home.arpa.", "FQDN"),
        ("nas", None),  # not fully qualified
        ("::ffff:10.0.0.1", None),  # IPv4-mapped
        ("fe80::1%eth0", None),  # scoped
        ("not an address", None),
        ("under_score.example", None),
    ],
)
def test_address_types(address: str, kind: str | None) -> None:
    assert v.address_type(address) == kind


#: (address, what render makes of it, why it is left out): the classes of
#: ``ValidateEndpointIP`` and the address-type checks of EndpointSlice validation.
ADDRESS_CLASSES = [
    ("10.0.0.1", "IPv4", ""),
    ("224.0.1.1", "IPv4", ""),  # multicast, but not link-local: accepted
    ("fd00::1", "IPv6", ""),
    ("FD00:0:0::1", "IPv6", ""),  # not canonical, but accepted
    ("ff05::1", "IPv6", ""),  # site-local multicast: accepted
    ("nas.home.arpa", "FQDN", ""),
    ("0.0.0.0", None, "unspecified"),
    ("::", None, "unspecified"),
    ("127.0.0.1", None, "loopback"),
    ("127.255.0.9", None, "loopback"),
    ("::1", None, "loopback"),
    ("0:0:0:0:0:0:0:1", None, "loopback"),  # ::1 written out
    ("::ffff:127.0.0.1", None, "loopback"),  # IPv4-mapped loopback
    ("169.254.1.1", None, "link-local range"),
    ("169.254.169.254", None, "link-local range"),
    ("fe80::1", None, "link-local range"),
    ("febf::1", None, "link-local range"),
    ("224.0.0.251", None, "link-local multicast"),
    ("ff02::1", None, "link-local multicast"),
    ("ff12::fb", None, "link-local multicast"),  # transient flag, link-local scope
    ("::ffff:10.0.0.1", None, "IPv4-mapped"),
    ("fe80::1%eth0", None, "zone-scoped"),
    ("fd00::1%2", None, "zone-scoped"),
    ("010.0.0.1", None, "leading zeros"),
    ("300.1.1.1", None, "not a valid IPv4 address"),
    ("nas", None, "fully qualified"),
]


@pytest.mark.parametrize(("address", "kind", "why"), ADDRESS_CLASSES)
def test_addresses_endpointslice_validation_refuses_are_left_out_with_the_reason(
    address: str, kind: str | None, why: str
) -> None:
    rendered = r.render(svc(Endpoint("10.9.9.9"), Endpoint(address)))
    written = [a for s in rendered.slices for e in s["endpoints"] for a in e["addresses"]]
    if kind is None:
        assert written == ["10.9.9.9"]
        assert len(rendered.problems) == 1
        assert f"service network/web: instance {address!r} left out: " in rendered.problems[0]
        assert why in rendered.problems[0]
    else:
        assert rendered.problems == ()
        assert {s["addressType"] for s in rendered.slices if address in str(s)} == {kind}


@pytest.mark.parametrize(("address", "kind", "why"), ADDRESS_CLASSES)
def test_address_classes_agree_with_the_api_double(
    address: str, kind: str | None, why: str
) -> None:
    """What render writes, the double (the API server's rules) accepts; what
    the API server refuses in every slice type, render leaves out."""
    from tests.fakes.k8s_double import validate_endpoint_slice

    def refused(address_type: str) -> bool:
        slice_obj = {
            "metadata": {"name": "s", "namespace": "network"},
            "addressType": address_type,
            "endpoints": [{"addresses": [address]}],
        }
        return bool(validate_endpoint_slice(slice_obj, None))

    if kind is not None:
        assert not refused(kind)
    elif why not in ("IPv4-mapped", "leading zeros", "not a valid IPv4 address"):
        # (those three: ours to refuse; an FQDN or IPv4 slice of 1.24 takes them)
        assert refused("IPv4") and refused("IPv6")
        if not v._DOTTED_QUAD.fullmatch(address):  # an FQDN slice takes "0.0.0.0"
            assert refused("FQDN")


def test_invalid_addresses_are_skipped_with_a_reason_and_hostnames_lowercased() -> None:
    rendered = r.render(svc(Endpoint("10.0.0.1"), Endpoint("nas"), Endpoint("NAS.Home.Arpa")))
    assert [s["endpoints"][0]["addresses"] for s in rendered.slices] == [
        ["nas.home.arpa"],
        ["10.0.0.1"],
    ]
    assert len(rendered.problems) == 1 and "'nas'" in rendered.problems[0]


def test_validate_names_what_the_api_server_would_refuse() -> None:
    assert v.validate(svc(Endpoint("10.0.0.1"))) == []
    bad = svc(ports=[Port("Web_UI", 80), Port("Web_UI", 0, "ICMP"), Port("", 81)])
    problems = v.validate(bad)
    assert any("'Web_UI' is not a lowercase RFC 1123 label" in p for p in problems)
    assert any("used twice" in p for p in problems)
    assert any("number 0" in p for p in problems)
    assert any("'ICMP'" in p for p in problems)
    assert any("needs a name" in p for p in problems)


# --- names ----------------------------------------------------------------------


def test_sanitised_names_are_dns_1035_labels_and_deterministic() -> None:
    assert sanitize("web") == "web"
    assert sanitize("Home_Assistant.v2") == "home-assistant-v2"
    assert sanitize("2fa") == "fa"
    assert sanitize("___") == sanitize("___") == "svc-" + short_hash("___")
    long = "a" * 80
    assert len(sanitize(long)) == 63 and sanitize(long) != sanitize("a" * 81)


NS = "network"


def _suffixed(name: str) -> str:
    return n.suffixed(sanitize(name), name)


@pytest.mark.parametrize(
    ("keys", "held", "expected"),
    [
        # valid DNS-1035 names are kept exactly, whatever else is there
        (["web", "db"], {}, {"web": "web", "db": "db"}),
        # a casing twin of a valid name is the one suffixed, never the valid one
        (["Web", "web"], {}, {"web": "web", "Web": _suffixed("Web")}),
        # ... even when the sanitised twin held the name first: the valid name wins
        (["Web", "web"], {"web": "Web"}, {"web": "web", "Web": _suffixed("Web")}),
        # a newcomer does not rename what exists: Home_Assistant next to home-assistant
        (
            ["home-assistant", "Home_Assistant"],
            {"home-assistant": "home-assistant"},
            {"home-assistant": "home-assistant", "Home_Assistant": _suffixed("Home_Assistant")},
        ),
        # a sanitised name alone takes its sanitised name
        (["Home_Assistant"], {}, {"Home_Assistant": "home-assistant"}),
        # a casing rename (web -> Web, web gone) takes over the same name
        (["Web"], {"web": "web"}, {"Web": "web"}),
        # two sanitised newcomers that sanitise alike: both suffixed, order-free
        (["Web", "WEB"], {}, {"Web": _suffixed("Web"), "WEB": _suffixed("WEB")}),
        # sticky: a sanitised key holding its name keeps it when a twin arrives
        (["Web", "WEB"], {"web": "Web"}, {"Web": "web", "WEB": _suffixed("WEB")}),
        # a suffix lasts as long as its collision: then the sanitised name
        # comes back (the suffixed object goes by a planned delete)
        (["WEB"], {_suffixed("WEB"): "WEB"}, {"WEB": "web"}),
        # ... and not before: while the twin is there, the suffixed name stays
        (
            ["WEB", "Web"],
            {_suffixed("WEB"): "WEB", "web": "Web"},
            {"WEB": _suffixed("WEB"), "Web": "web"},
        ),
        # ... nor while a valid name holds it
        (["WEB", "web"], {_suffixed("WEB"): "WEB"}, {"WEB": _suffixed("WEB"), "web": "web"}),
    ],
)
def test_naming_rules(keys: list[str], held: dict[str, str], expected: dict[str, str]) -> None:
    naming = n.assign_names([(NS, k) for k in keys], {(NS, n): (NS, k) for n, k in held.items()})
    assert {k[1]: v for k, v in naming.names.items()} == expected
    # the same in any order
    again = n.assign_names(
        [(NS, k) for k in reversed(keys)], {(NS, n): (NS, k) for n, k in held.items()}
    )
    assert again.names == naming.names


def test_occupied_names_and_what_naming_reports() -> None:
    held = {(NS, "home-assistant"): (NS, "Home.Assistant")}
    # the holder is still desired: the newcomer is suffixed, the holder keeps its name
    both = n.assign_names([(NS, "Home_Assistant"), (NS, "Home.Assistant")], held)
    assert both.names[(NS, "Home.Assistant")] == "home-assistant"
    assert both.names[(NS, "Home_Assistant")] == _suffixed("Home_Assistant")
    assert len(both.collisions) == 1 and "'Home_Assistant'" in both.collisions[0]
    assert len(both.renamed) == 2
    # the holder is gone: the newcomer takes the name over
    alone = n.assign_names([(NS, "Home_Assistant")], held)
    assert alone.names == {(NS, "Home_Assistant"): "home-assistant"}
    assert alone.collisions == ()
    # every name is a DNS-1035 label
    assert all(is_valid_name(n) for n in both.names.values())
    long = [(NS, "A" * 80), (NS, "a" * 80)]
    assert all(is_valid_name(n) for n in n.assign_names(long).names.values())


def test_a_renamed_service_reads_back_under_its_own_name() -> None:
    service = svc(Endpoint("10.0.0.1"), name="Home_Assistant.v2")
    rendered = r.render(service)
    assert rendered.service["metadata"]["name"] == "home-assistant-v2"
    assert c.parse(rendered.service, rendered.slices) == service


# --- parse-back -----------------------------------------------------------------

_port_names = st.from_regex(r"[a-z]([-a-z0-9]{0,8}[a-z0-9])?", fullmatch=True)
_label = st.from_regex(r"[a-z]{1,6}(\.io/[a-z]{1,6})?", fullmatch=True)
_ipv6 = st.ip_addresses(v=6).filter(lambda ip: ip.ipv4_mapped is None).map(str)
_fqdn = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?(\.[a-z]{1,6}){1,3}", fullmatch=True)
# (addresses the API server accepts: no loopback, link-local... see ADDRESS_CLASSES)
_address = st.one_of(st.ip_addresses(v=4).map(str), _ipv6, _fqdn).filter(
    lambda a: v.address_type(a) is not None
)
_text = st.text(alphabet="abcdefghij-0123456789", min_size=1, max_size=8)


@st.composite
def services(draw: st.DrawFn) -> DesiredService:
    names = draw(st.lists(_port_names, min_size=1, max_size=3, unique=True))
    ports = [
        Port(
            name,
            draw(st.integers(1, 65535)),
            draw(st.sampled_from(v.PROTOCOLS)),
            draw(st.sampled_from([None, "http", "kubernetes.io/h2c"])),
        )
        for name in names
    ]
    primary = ports[0].port
    endpoints = [
        Endpoint(
            address=draw(_address),
            port=draw(st.one_of(st.none(), st.integers(1, 65535).filter(lambda p: p != primary))),
            ready=draw(st.booleans()),
            serving=draw(st.booleans()),
            terminating=draw(st.booleans()),
            hostname=draw(st.one_of(st.none(), _port_names)),
            zone=draw(st.one_of(st.none(), _text)),
            node_name=draw(st.one_of(st.none(), _text)),
        )
        for _ in range(draw(st.integers(0, 12)))
    ]
    ours = set(r.OUR_LABELS) | set(r.OUR_ANNOTATIONS)
    sources = draw(st.lists(st.from_regex(r"[a-z][a-z0-9-]{0,5}", fullmatch=True), max_size=3))
    if sources:  # canonical form: stamped by merge with one of the service's sources
        endpoints = [attrs.evolve(e, source=draw(st.sampled_from(sources))) for e in endpoints]
    return DesiredService(
        name=draw(st.from_regex(r"[A-Za-z][A-Za-z0-9_.-]{0,70}", fullmatch=True)),
        namespace="network",
        ports=ports,
        endpoints=endpoints,
        labels=draw(st.dictionaries(_label.filter(lambda k: k not in ours), _text, max_size=3)),
        annotations=draw(
            st.dictionaries(_label.filter(lambda k: k not in ours), st.text(max_size=8), max_size=3)
        ),
        sources=sources,
    )


@settings(max_examples=100, deadline=None)
@given(services(), st.integers(1, 5))
def test_parse_reads_back_exactly_what_render_wrote(
    service: DesiredService, max_per_slice: int
) -> None:
    rendered = r.render(service, max_per_slice=max_per_slice, service_uid="u")
    assert rendered.problems == ()
    assert c.parse(rendered.service, rendered.slices) == service
    # and the live sink's comparison agrees: the objects hold what they would be written with
    again = r.render(
        service,
        max_per_slice=max_per_slice,
        service_uid="u",
        existing=c.packing(rendered.slices, service.ports[0], r.default_source(service.sources)),
    )
    assert not c.differs(again.service, rendered.service)
    assert [s["metadata"]["name"] for s in again.slices] == [
        s["metadata"]["name"] for s in rendered.slices
    ]
    assert not any(c.differs(a, b) for a, b in zip(again.slices, rendered.slices, strict=True))


def test_parse_reads_a_recorded_fqdn_slice_without_conditions_as_ready() -> None:
    service_obj = r.render(svc()).service
    (endpoint,) = c.parse(service_obj, [response_body("08")]).endpoints
    # (no source annotation: the Service's only source, as the old version wrote it)
    assert endpoint == Endpoint(
        "nas.home.arpa", ready=True, serving=True, terminating=False, source="consul"
    )


def test_parse_ignores_labels_and_annotations_others_added() -> None:
    service = svc(Endpoint("10.0.0.1"), labels={"team": "media"})
    rendered = r.render(service)
    live = copy.deepcopy(rendered.service)
    live["metadata"]["labels"]["kustomize.toolkit.fluxcd.io/name"] = "apps"
    live["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] = "{}"
    assert c.parse(live, rendered.slices) == service
    assert not c.differs(rendered.service, live)


# --- comparing with live objects ---------------------------------------------------


def test_recorded_server_answers_hold_what_was_applied() -> None:
    """The server adds defaults (targetPort, ipFamilies, uid...): not a difference."""
    assert not c.differs(request_body("01"), response_body("01"))
    assert not c.differs(request_body("03"), response_body("03"))
    assert not c.differs(request_body("03"), response_body("04")["items"][0])


def test_differs_sees_every_field_we_write() -> None:
    service = svc(Endpoint("10.0.0.1"), labels={"team": "media"})
    rendered = r.render(service, service_uid="u1")
    svc_obj, slice_obj = rendered.service, rendered.slices[0]

    def changed(obj: dict[str, Any], edit: Any) -> bool:
        live = copy.deepcopy(obj)
        edit(live)
        return c.differs(obj, live)

    assert not c.differs(svc_obj, svc_obj) and not c.differs(slice_obj, slice_obj)
    assert c.differs(svc_obj, None)
    assert changed(svc_obj, lambda o: o["metadata"]["labels"].pop("team"))
    assert changed(svc_obj, lambda o: o["metadata"]["annotations"].pop(r.OWNER_ANNOTATION))
    assert changed(svc_obj, lambda o: o["spec"]["ports"][0].update(port=1))
    assert changed(svc_obj, lambda o: o["spec"]["ports"].append({"name": "x", "port": 2}))
    assert changed(slice_obj, lambda o: o["endpoints"][0]["conditions"].update(ready=False))
    assert changed(slice_obj, lambda o: o["metadata"].pop("ownerReferences"))
    assert changed(slice_obj, lambda o: o["metadata"]["ownerReferences"][0].update(uid="u2"))
    assert changed(slice_obj, lambda o: o["metadata"]["labels"].pop(r.SLICE_MANAGED_BY))
    assert changed(slice_obj, lambda o: o.update(addressType="IPv6"))
    # a label of ours that the service dropped is still on the live object: rewrite
    assert c.differs(r.render(svc(Endpoint("10.0.0.1"))).service, svc_obj)


# --- attribution ------------------------------------------------------------------


def test_single_source_slices_keep_their_names_and_need_no_annotation() -> None:
    rendered = r.render(svc(Endpoint("10.0.0.1"), Endpoint("10.0.0.2", port=9090)))
    assert [s["metadata"]["name"] for s in rendered.slices] == ["web-v4-8080", "web-v4-9090"]
    assert all(r.SOURCE_ANNOTATION not in s["metadata"]["annotations"] for s in rendered.slices)
    # read back with the Service's only source
    assert {e.source for e in c.parse(rendered.service, rendered.slices).endpoints} == {"consul"}


def test_several_sources_get_a_slice_each_named_by_a_hash_of_the_source() -> None:
    service = svc(
        Endpoint("10.0.0.1", source="a"),
        Endpoint("10.0.0.2", source="b"),
        Endpoint("10.0.0.3", source="a"),
        sources=["a", "b"],
    )
    rendered = r.render(service)
    assert [
        (
            s["metadata"]["name"],
            s["metadata"]["annotations"][r.SOURCE_ANNOTATION],
            len(s["endpoints"]),
        )
        for s in rendered.slices
    ] == [
        (f"web-v4-8080-{short_hash('a')}", "a", 2),
        (f"web-v4-8080-{short_hash('b')}", "b", 1),
    ]
    assert c.parse(rendered.service, rendered.slices) == service
    # deterministic, and one source's change rewrites only its slice
    again = r.render(
        attrs.evolve(service, endpoints=[*service.endpoints, Endpoint("10.0.0.4", source="b")]),
        existing=c.packing(rendered.slices, service.ports[0]),
    )
    assert _changed(rendered, again) == [f"web-v4-8080-{short_hash('b')}"]


def test_a_slice_keeps_its_name_when_its_service_gains_a_source() -> None:
    one = r.render(svc(Endpoint("10.0.0.1")))
    both = r.render(
        svc(Endpoint("10.0.0.1"), Endpoint("10.0.0.2", source="nas"), sources=["consul", "nas"]),
        existing=c.packing(one.slices, Port("http", 8080), "consul"),
    )
    assert [s["metadata"]["name"] for s in both.slices] == [
        "web-v4-8080",
        f"web-v4-8080-{short_hash('nas')}",
    ]
    # new slices never take a name another group holds, whatever the bases
    crowded = r.render(
        svc(Endpoint("10.0.0.1", source="x"), Endpoint("10.0.0.2", source="y"), sources=["x"]),
    )
    names = [s["metadata"]["name"] for s in crowded.slices]
    assert len(set(names)) == 2
