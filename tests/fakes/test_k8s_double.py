"""Tests of the Kubernetes API server double.

Two kinds of checks: recorded requests replayed over HTTP (the answer must match the recording
from a real kube-apiserver v1.24: 01-18 one by one, 21-43 -- server-side apply field ownership
with managedFields -- in the order they were sent, uids and resourceVersions translated), and
behaviour driven through the official ``kubernetes`` client the way the sinks use it.  One
file, over 400 lines, because it is the double's specification: each test names a behaviour
of the double that a recording or a client of it relies on.
"""

from __future__ import annotations

import base64
import copy
import datetime
import glob
import http.client
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest
import urllib3
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from tests.fakes.k8s_double import ApiError, KubeDouble

FIXTURES = str(Path(__file__).resolve().parents[1] / "fixtures" / "kubernetes")
Watch: Any = watch.Watch  # untyped in the kubernetes package
APPLY = "application/apply-patch+yaml"
NS = "fixtures"

# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def fixture(number: str) -> dict[str, Any]:
    (path,) = glob.glob(f"{FIXTURES}/{number}-*.json")
    with open(path) as handle:
        return json.load(handle)  # type: ignore[no-any-return]


def raw(
    kube: KubeDouble,
    method: str,
    path: str,
    body: Any = None,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, dict[str, str]]:
    """One plain HTTP exchange (no client library in between)."""
    connection = http.client.HTTPConnection("127.0.0.1", kube.port, timeout=10)
    data: bytes | None = None
    if body is not None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    sent = dict(headers or {})
    if data is not None:
        sent["Content-Type"] = content_type
    connection.request(method, path, body=data, headers=sent)
    response = connection.getresponse()
    payload = response.read()
    connection.close()
    try:
        parsed: Any = json.loads(payload)
    except ValueError:
        parsed = payload.decode()
    return response.status, parsed, {k.lower(): v for k, v in response.getheaders()}


def watch_events(kube: KubeDouble, path: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """A watch request read to its end: the JSON events, one per line, and the headers."""
    connection = http.client.HTTPConnection("127.0.0.1", kube.port, timeout=10)
    connection.request("GET", path)
    response = connection.getresponse()
    assert response.status == 200
    text = response.read().decode()
    connection.close()
    headers = {k.lower(): v for k, v in response.getheaders()}
    return [json.loads(line) for line in text.splitlines()], headers


def replay(kube: KubeDouble, number: str) -> tuple[int, Any]:
    request = fixture(number)["request"]
    status, body, _ = raw(
        kube, request["method"], request["path"], request["body"], request["content_type"]
    )
    return status, body


def strip_server_fields(obj: Any) -> Any:
    """Drop what differs between two servers: uid, resourceVersion, timestamps, managedFields."""
    obj = json.loads(json.dumps(obj))
    metas = [obj.get("metadata", {})] + [i.get("metadata", {}) for i in obj.get("items", [])]
    for meta in metas:
        for key in ("uid", "resourceVersion", "creationTimestamp", "managedFields"):
            meta.pop(key, None)
    return obj


def apply_body(number: str) -> dict[str, Any]:
    return json.loads(fixture(number)["request"]["body"])  # type: ignore[no-any-return]


def service_body(name: str = "web", **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {"app.kubernetes.io/managed-by": "consul-sync", **labels},
        },
        "spec": {
            "clusterIP": "None",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP", "appProtocol": "http"}],
        },
    }


def slice_body(
    name: str, service: str = "web", addresses: tuple[str, ...] = ("10.0.10.11",)
) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "consul-sync",
            },
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": [a], "conditions": {"ready": True, "serving": True, "terminating": False}}
            for a in addresses
        ],
    }


@pytest.fixture
def kube() -> Iterator[KubeDouble]:
    with KubeDouble() as double:
        yield double


@pytest.fixture
def api(kube: KubeDouble) -> Iterator[Any]:
    with client.ApiClient(client.Configuration(host=kube.url)) as api_client:
        yield api_client


@pytest.fixture
def core(api: Any) -> Any:
    return client.CoreV1Api(api)


@pytest.fixture
def discovery(api: Any) -> Any:
    return client.DiscoveryV1Api(api)


@pytest.fixture
def coordination(api: Any) -> Any:
    return client.CoordinationV1Api(api)


def apply_service(
    core: Any,
    body: dict[str, Any],
    manager: str = "consul-sync",
    force: bool = True,
    **options: Any,
) -> Any:
    return core.patch_namespaced_service(
        body["metadata"]["name"],
        NS,
        body,
        field_manager=manager,
        force=force,
        _content_type=APPLY,
        **options,
    )


def apply_slice(discovery: Any, body: dict[str, Any], manager: str = "consul-sync") -> Any:
    return discovery.patch_namespaced_endpoint_slice(
        body["metadata"]["name"],
        NS,
        body,
        field_manager=manager,
        force=True,
        _content_type=APPLY,
    )


def error_body(exc: ApiException) -> Any:
    return json.loads(exc.body or "null")


# ---------------------------------------------------------------------------------------------
# recorded exchanges replayed over plain HTTP
# ---------------------------------------------------------------------------------------------

SETUP: dict[str, list[str]] = {
    "02": ["01"],
    "04": ["03"],
    "12": ["01"],
    "14": ["01"],
    "16": ["03"],
    "17": ["01"],
}
REPLAYED = [
    "01",
    "02",
    "03",
    "04",
    "05",
    "06",
    "07",
    "08",
    "09",
    "10",
    "11",
    "12",
    "13",
    "14",
    "15",
    "16",
    "17",
    "18",
]


@pytest.mark.parametrize("number", REPLAYED)
def test_replayed_request_gets_the_recorded_answer(kube: KubeDouble, number: str) -> None:
    for before in SETUP.get(number, []):
        replay(kube, before)
    recorded = fixture(number)
    if recorded["request"]["user"] == "limited":
        kube.user = "limited"
        kube.deny("list", "services")
        kube.deny("patch", "endpointslices")
    status, body = replay(kube, number)
    assert status == recorded["response"]["status"]
    assert strip_server_fields(body) == strip_server_fields(recorded["response"]["body"])


def test_identical_apply_keeps_the_resource_version(kube: KubeDouble) -> None:
    first_status, first = replay(kube, "01")
    second_status, second = replay(kube, "02")
    assert (first_status, second_status) == (201, 200)
    assert second["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    assert kube.resource_version == first["metadata"]["resourceVersion"]


def test_answers_are_go_shaped_json(kube: KubeDouble) -> None:
    replay(kube, "03")
    request = fixture("03")["request"]
    connection = http.client.HTTPConnection("127.0.0.1", kube.port, timeout=5)
    connection.request("GET", request["path"].split("?")[0])
    response = connection.getresponse()
    text = response.read().decode()
    connection.close()
    assert response.getheader("Content-Type") == "application/json"
    assert int(response.getheader("Content-Length") or 0) == len(text.encode())
    # Go's field order and compact encoding, managedFields last in metadata
    assert text.startswith('{"kind":"EndpointSlice","apiVersion":"discovery.k8s.io/v1",')
    assert '"generation":1,"creationTimestamp":' in text
    assert text.index('"labels"') < text.index('"managedFields"') < text.index('"addressType"')


def test_list_items_have_no_type_meta_and_list_has_resource_version(kube: KubeDouble) -> None:
    replay(kube, "03")
    status, body = replay(kube, "04")
    assert status == 200
    assert body["metadata"] == {"resourceVersion": kube.resource_version}
    assert "kind" not in body["items"][0]
    assert "apiVersion" not in body["items"][0]


def test_watch_from_an_old_resource_version_replays_history(kube: KubeDouble) -> None:
    replay(kube, "03")
    replay(kube, "08")
    body = apply_body("03")
    body["endpoints"][1]["conditions"]["ready"] = True
    kube.apply("endpointslices", body, manager="consul-sync", force=True)
    kube.delete("endpointslices", NS, "nas-fqdn")
    recorded = [json.loads(line) for line in fixture("20")["response"]["body"].splitlines()]
    events, headers = watch_events(kube, fixture("20")["request"]["path"])
    assert headers.get("transfer-encoding") == "chunked"
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        (e["type"], e["object"]["metadata"]["name"]) for e in recorded
    ]
    for got, want in zip(events, recorded, strict=True):
        assert strip_server_fields(got["object"]) == strip_server_fields(want["object"])
        assert (
            got["object"]["metadata"]["managedFields"][0]["fieldsV1"]
            == want["object"]["metadata"]["managedFields"][0]["fieldsV1"]
        )
    # the DELETED event carries the resourceVersion of the deletion
    assert int(events[-1]["object"]["metadata"]["resourceVersion"]) > int(
        events[1]["object"]["metadata"]["resourceVersion"]
    )


def test_watch_from_a_compacted_resource_version_answers_410(kube: KubeDouble) -> None:
    replay(kube, "03")
    kube.compact()
    (event,), _ = watch_events(kube, fixture("20")["request"]["path"])
    assert event == {
        "type": "ERROR",
        "object": {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": f"too old resource version: 1 ({kube.resource_version})",
            "reason": "Expired",
            "code": 410,
        },
    }


# ---------------------------------------------------------------------------------------------
# recordings 21 onwards: server-side apply field ownership, replayed in the order they were sent
# ---------------------------------------------------------------------------------------------

#: The order the exchanges were sent in (the recorded resourceVersions show it): an ``a`` setup
#: step comes before the file it sets up, and 26 before 25p1.  Every recording from 21 on is here.
REPLAY_ORDER = [
    "21", "22", "23", "24", "25a", "25", "26", "25p1", "25p2", "25p3", "25p4", "25q1", "25q2",
    "25q3", "27", "28", "29", "29b", "30", "31a", "31", "31b", "32a", "32", "33", "34a", "34",
    "35", "36", "36b", "36c", "37a", "37", "38a", "38b", "38c", "38", "39", "40a", "40b", "41",
    "42", "43",
]  # fmt: skip
OWN_NS = "rec2-own-1796281572"
PAGE_NS = "rec2-page-1796281572"
_TIME_KEYS = ("creationTimestamp", "time")
_ALLOCATED_KEYS = ("clusterIP", "clusterIPs")


def recording(number: str) -> dict[str, Any]:
    """The recording ``number`` (``25a``, ``36c`` ...); missing or doubled files fail."""
    paths = [p for p in Path(FIXTURES).glob(f"{number}-*.json") if p.name.split("-")[0] == number]
    assert len(paths) == 1, f"recording {number}: {paths}"
    return json.loads(paths[0].read_text())  # type: ignore[no-any-return]


def applied_config(obj: dict[str, Any], manager: str = "consul-sync") -> dict[str, Any]:
    """What ``manager`` applied to make ``obj``: the fields its Apply entry owns."""
    (entry,) = [
        e
        for e in obj["metadata"]["managedFields"]
        if e["manager"] == manager and e["operation"] == "Apply"
    ]
    config = _owned(obj, entry["fieldsV1"])
    config["metadata"].update(name=obj["metadata"]["name"], namespace=obj["metadata"]["namespace"])
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], **config}


def _owned(value: Any, tree: dict[str, Any]) -> Any:
    if isinstance(value, list):  # an associative list: k:{...} selects elements
        out = []
        for key_text, subtree in tree.items():
            key = json.loads(key_text[2:])
            (item,) = [i for i in value if all(i.get(k) == v for k, v in key.items())]
            out.append({**key, **_owned(item, subtree)} if subtree else copy.deepcopy(item))
        return out
    out_map: dict[str, Any] = {}
    for name, subtree in tree.items():
        if name == ".":
            continue
        child = value.get(name[2:])
        out_map[name[2:]] = _owned(child, subtree) if subtree else copy.deepcopy(child or {})
    return out_map


class Translation:
    """Pairs the double's uids and resourceVersions with the recorded ones.

    Both servers hand out their own uids and resourceVersions, so requests are translated
    into the double's terms and answers back into the recording's.  resourceVersions must
    pair one to one: a write the real server skipped (a no-op apply) must be skipped by the
    double too, or one recorded version would pair with two of the double's.
    """

    def __init__(self) -> None:
        self.uids: dict[str, str] = {}  # recorded -> double
        self.rvs: dict[str, str] = {}  # recorded -> double

    def pair_rv(self, recorded: str, ours: str) -> None:
        known = {v: k for k, v in self.rvs.items()}
        assert self.rvs.get(recorded, ours) == ours, f"rv {recorded} paired twice"
        assert known.get(ours, recorded) == recorded, f"our rv {ours} paired twice"
        self.rvs[recorded] = ours

    def learn(self, recorded: Any, ours: Any) -> None:
        """Pair the uids and resourceVersions of two answers of the same shape."""
        if isinstance(recorded, dict) and isinstance(ours, dict):
            meta, our_meta = recorded.get("metadata"), ours.get("metadata")
            if isinstance(meta, dict) and isinstance(our_meta, dict):
                if "uid" in meta and "uid" in our_meta:
                    self.uids.setdefault(meta["uid"], our_meta["uid"])
                if "resourceVersion" in meta and "resourceVersion" in our_meta:
                    self.pair_rv(meta["resourceVersion"], our_meta["resourceVersion"])
            for key in ("items", "object"):
                if key in recorded and key in ours:
                    self.learn(recorded[key], ours[key])
        elif isinstance(recorded, list) and isinstance(ours, list):
            for one, other in zip(recorded, ours, strict=False):
                self.learn(one, other)

    def _token(self, token: str, rvs: dict[str, str]) -> str:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        data["rv"] = int(rvs[str(data["rv"])])
        text = json.dumps(data, separators=(",", ":"))
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    def request(self, request: dict[str, Any]) -> tuple[str, str | None]:
        """The recorded request's path and body in the double's terms."""
        path, _, query_text = request["path"].partition("?")
        query = []
        for key, value in parse_qsl(query_text, keep_blank_values=True):
            if key == "resourceVersion":
                query.append((key, self.rvs[value]))
            elif key == "continue":
                query.append((key, self._token(value, self.rvs)))
            else:
                query.append((key, value))
        body = request["body"]
        if body is not None:
            for recorded, ours in self.uids.items():
                body = body.replace(recorded, ours)
            parsed = json.loads(body)
            for holder in (parsed.get("metadata", {}), parsed.get("preconditions", {})):
                if "resourceVersion" in holder:
                    holder["resourceVersion"] = self.rvs[holder["resourceVersion"]]
            body = json.dumps(parsed)
        return path + ("?" + urlencode(query) if query else ""), body

    def answer(self, value: Any, key: str = "") -> Any:
        """The double's answer in the recording's terms, times and allocated IPs masked."""
        uids = {v: k for k, v in self.uids.items()}
        rvs = {v: k for k, v in self.rvs.items()}
        if isinstance(value, dict):
            return {self.answer(k): self.answer(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [self.answer(v, key) for v in value]
        if not isinstance(value, str):
            return value
        if key in _TIME_KEYS:
            return "<time>"
        if key in _ALLOCATED_KEYS and value != "None":
            return "<allocated>"
        if key == "continue":
            return self._token(value, rvs)
        if key == "resourceVersion":
            return rvs.get(value, value)
        for ours, recorded in uids.items():
            value = value.replace(ours, recorded)
        for ours, recorded in rvs.items():
            value = re.sub(rf"\({ours}\)", f"({recorded})", value)
        return value

    def masked(self, value: Any, key: str = "") -> Any:
        """A recorded answer with the same masks as ``answer``."""
        if isinstance(value, dict):
            return {k: self.masked(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [self.masked(v, key) for v in value]
        if key in _TIME_KEYS and isinstance(value, str):
            return "<time>"
        if key in _ALLOCATED_KEYS and value != "None":
            return "<allocated>"
        return value


def _unrecorded_steps(kube: KubeDouble, number: str, names: Translation) -> None:
    """Objects made between recorded steps, rebuilt from what the recordings show of them."""
    if number == "32a":  # del-a and del-b, applied by consul-sync
        del_a = recording("32a")["response"]["body"]
        kube.apply("services", applied_config(del_a), manager="consul-sync", force=True)
        del_b = recording("34a")["response"]["body"]
        created = kube.apply("services", applied_config(del_b), manager="consul-sync", force=True)
        names.uids[del_b["metadata"]["uid"]] = created["metadata"]["uid"]
        names.pair_rv("24863", created["metadata"]["resourceVersion"])  # 34 says so
    elif number == "35":  # five labelled Services and one without the labels
        pages = [recording(n)["response"]["body"]["items"] for n in ("35", "36", "36b")]
        for item in [item for page in pages for item in page]:
            config = applied_config({"apiVersion": "v1", "kind": "Service", **item})
            kube.apply("services", config, manager="consul-sync", force=True)
        unlabeled = applied_config({"apiVersion": "v1", "kind": "Service", **pages[0][0]})
        unlabeled["metadata"].update(name="unlabeled", labels={})
        kube.apply("services", unlabeled, manager="consul-sync", force=True)
    elif number == "37":  # w-1 applied, re-applied and deleted while the watch ran
        added, modified, _deleted, _ = recording("37")["response"]["events"]
        for event in (added, modified):
            config = applied_config(event["object"])
            kube.apply("endpointslices", config, manager="consul-sync", force=True)
        kube.delete("endpointslices", added["object"]["metadata"]["namespace"], "w-1")


def _replay_watch(kube: KubeDouble, path: str) -> list[dict[str, Any]]:
    """The recorded watch: the three events from history, then a bookmark; read four lines."""
    connection = http.client.HTTPConnection("127.0.0.1", kube.port, timeout=10)
    connection.request("GET", path)
    response = connection.getresponse()
    assert response.status == 200
    events = [json.loads(response.readline()) for _ in range(3)]
    kube.send_bookmarks()
    events.append(json.loads(response.readline()))
    connection.close()
    return events


def _replay_one(kube: KubeDouble, number: str, names: Translation) -> None:
    recorded = recording(number)
    request, response = recorded["request"], recorded["response"]
    path, body = names.request(request)
    if request["user"] == "limited":
        kube.user = "limited"
        kube.deny("*", "*")
    try:
        if "events" in response:
            got: Any = _replay_watch(kube, path)
            want: Any = response["events"]
            status = 200
        else:
            status, got, _ = raw(kube, request["method"], path, body, request["content_type"])
            want = response["body"]
    finally:
        kube.allow("*", "*")
        kube.user = "admin"
    if number == "40b":  # trimmed to four resources; the double serves one of them
        want = {**want, "resources": [r for r in want["resources"] if r["name"] == "services"]}
        got["resources"] = [r for r in got["resources"] if r["name"] == "services"]
    names.learn(want, got)
    assert status == response["status"], (number, got)
    assert names.answer(got) == names.masked(want), number


def test_recordings_with_field_ownership_replay_exactly() -> None:
    numbers = sorted(p.name.split("-")[0] for p in Path(FIXTURES).glob("*.json"))
    assert sorted(REPLAY_ORDER) == [n for n in numbers if n >= "21"]
    names = Translation()
    with KubeDouble(user="admin") as kube:
        for number in REPLAY_ORDER:
            _unrecorded_steps(kube, number, names)
            _replay_one(kube, number, names)


def test_an_identical_apply_later_keeps_resource_version_and_time() -> None:
    moment = [datetime.datetime(2026, 12, 3, 7, 6, 12, tzinfo=datetime.UTC)]
    names = Translation()
    with KubeDouble(user="admin", clock=lambda: moment[0]) as kube:
        for number in ("21", "27", "28", "29"):
            _replay_one(kube, number, names)
        before = kube.get("endpointslices", OWN_NS, "web-consul-sync-1")
        moment[0] += datetime.timedelta(seconds=2.5)
        _replay_one(kube, "29b", names)
        assert kube.get("endpointslices", OWN_NS, "web-consul-sync-1") == before


# ---------------------------------------------------------------------------------------------
# through the kubernetes client
# ---------------------------------------------------------------------------------------------


def test_client_apply_creates_then_identical_apply_is_a_no_op(kube: KubeDouble, core: Any) -> None:
    body = apply_body("01")
    created, status, _ = core.patch_namespaced_service_with_http_info(
        "web", NS, body, field_manager="consul-sync", force=True, _content_type=APPLY
    )
    again, status_again, _ = core.patch_namespaced_service_with_http_info(
        "web", NS, body, field_manager="consul-sync", force=True, _content_type=APPLY
    )
    assert (status, status_again) == (201, 200)
    assert again.metadata.resource_version == created.metadata.resource_version
    assert created.spec.ports[0].target_port == 8080
    assert created.spec.ip_family_policy == "RequireDualStack"
    (entry,) = created.metadata.managed_fields
    assert (entry.manager, entry.operation) == ("consul-sync", "Apply")
    assert (
        entry.fields_v1["f:spec"]["f:ports"]
        == fixture("12")["request"]["body"]["metadata"]["managedFields"][0]["fieldsV1"]["f:spec"][
            "f:ports"
        ]
    )
    assert kube.count("patch", "services") == 2
    assert len(kube.writes()) == 2


def test_apply_removes_fields_the_applier_dropped_but_keeps_other_owners(
    kube: KubeDouble, core: Any
) -> None:
    apply_service(core, service_body(team="a", tier="web"))
    # someone else co-owns "tier" (same value), nobody else owns "team"
    apply_service(
        core,
        {**service_body(), "metadata": {"name": "web", "labels": {"tier": "web"}}},
        manager="ops",
        force=False,
    )
    result = apply_service(core, service_body())
    assert result.metadata.labels == {"app.kubernetes.io/managed-by": "consul-sync", "tier": "web"}


def test_apply_drops_a_port_it_no_longer_applies(core: Any) -> None:
    body = service_body()
    body["spec"]["ports"].append({"name": "metrics", "port": 9100, "protocol": "TCP"})
    apply_service(core, body)
    result = apply_service(core, service_body())
    assert [(p.name, p.port) for p in result.spec.ports] == [("http", 8080)]


def test_apply_conflict_with_another_manager_and_force(kube: KubeDouble, core: Any) -> None:
    apply_service(core, service_body(owner="sync"))
    other = service_body(owner="someone")
    with pytest.raises(ApiException) as caught:
        apply_service(core, other, manager="someone-else", force=False)
    assert caught.value.status == 409
    assert error_body(caught.value) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'Apply failed with 1 conflict: conflict with "consul-sync": '
        ".metadata.labels.owner",
        "reason": "Conflict",
        "details": {
            "causes": [
                {
                    "reason": "FieldManagerConflict",
                    "message": 'conflict with "consul-sync"',
                    "field": ".metadata.labels.owner",
                }
            ]
        },
        "code": 409,
    }
    forced = apply_service(core, other, manager="someone-else", force=True)
    assert forced.metadata.labels["owner"] == "someone"
    # ownership moved: the original applier now conflicts in turn
    with pytest.raises(ApiException) as again:
        apply_service(core, service_body(owner="sync"), force=False)
    assert 'conflict with "someone-else"' in error_body(again.value)["message"]


def test_conflict_message_names_update_managers_with_their_api_version(
    kube: KubeDouble, core: Any
) -> None:
    kube.create("services", service_body(tier="a"), manager="kubectl-create")
    with pytest.raises(ApiException) as caught:
        apply_service(core, service_body(tier="b"), force=False)
    message = error_body(caught.value)["message"]
    assert message == (
        'Apply failed with 1 conflict: conflict with "kubectl-create" using v1: '
        ".metadata.labels.tier"
    )


def test_apply_without_field_manager_is_rejected(kube: KubeDouble) -> None:
    status, body, _ = raw(
        kube, "PATCH", f"/api/v1/namespaces/{NS}/services/web", service_body(), APPLY
    )
    assert status == 422
    assert body["message"] == (
        'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: '
        "is required for apply patch"
    )
    assert body["details"] == {
        "group": "meta.k8s.io",
        "kind": "PatchOptions",
        "causes": [
            {
                "reason": "FieldValueRequired",
                "message": "Required value: is required for apply patch",
                "field": "fieldManager",
            }
        ],
    }


def test_apply_rejects_unknown_fields_while_create_drops_them(kube: KubeDouble, core: Any) -> None:
    body = service_body()
    body["spec"]["colour"] = "blue"
    status, answer, _ = raw(
        kube,
        "PATCH",
        f"/api/v1/namespaces/{NS}/services/web?fieldManager=consul-sync",
        body,
        APPLY,
    )
    assert status == 500
    assert answer["message"].endswith(".spec.colour: field not declared in schema")
    status, created, _ = raw(kube, "POST", f"/api/v1/namespaces/{NS}/services", body)
    assert status == 201
    assert "colour" not in created["spec"]


def test_wrong_json_type_is_a_bad_request(kube: KubeDouble) -> None:
    body = service_body()
    body["spec"]["ports"][0]["port"] = "8080"
    status, answer, _ = raw(kube, "POST", f"/api/v1/namespaces/{NS}/services", body)
    assert status == 400
    assert answer["message"] == (
        'Service in version "v1" cannot be handled as a Service: json: cannot unmarshal string '
        "into Go struct field ServicePort.spec.ports.port of type int32"
    )


def test_list_with_label_selectors(kube: KubeDouble, discovery: Any) -> None:
    for name, service, extra in [
        ("a-1", "a", {"zone": "x"}),
        ("a-2", "a", {}),
        ("b-1", "b", {"zone": "y"}),
        ("c-1", "c", {"zone": "z"}),
    ]:
        body = slice_body(name, service)
        body["metadata"]["labels"].update(extra)
        apply_slice(discovery, body)

    def names(selector: str) -> list[str]:
        listed = discovery.list_namespaced_endpoint_slice(NS, label_selector=selector)
        return [item.metadata.name for item in listed.items]

    assert names("kubernetes.io/service-name=a") == ["a-1", "a-2"]
    assert names("kubernetes.io/service-name==b") == ["b-1"]
    assert names("kubernetes.io/service-name!=a") == ["b-1", "c-1"]
    assert names("endpointslice.kubernetes.io/managed-by=consul-sync,zone!=y") == [
        "a-1",
        "a-2",
        "c-1",
    ]
    # set-based and field selectors: no client of the double sends them
    for query in ({"label_selector": "zone in (x, z)"}, {"field_selector": "metadata.name=b"}):
        with pytest.raises(ApiException) as caught:
            discovery.list_namespaced_endpoint_slice(NS, **query)
        assert caught.value.status == 400


def test_list_pages_with_limit_and_continue(discovery: Any) -> None:
    for index in range(5):
        apply_slice(discovery, slice_body(f"s-{index}"))
    first = discovery.list_namespaced_endpoint_slice(NS, limit=2)
    assert [i.metadata.name for i in first.items] == ["s-0", "s-1"]
    assert first.metadata.remaining_item_count == 3
    second = discovery.list_namespaced_endpoint_slice(
        NS, limit=2, _continue=first.metadata._continue
    )
    third = discovery.list_namespaced_endpoint_slice(
        NS, limit=2, _continue=second.metadata._continue
    )
    assert [i.metadata.name for i in second.items + third.items] == ["s-2", "s-3", "s-4"]
    assert third.metadata._continue is None
    assert second.metadata.resource_version == first.metadata.resource_version


def test_stale_put_conflicts(core: Any) -> None:
    created = apply_service(core, service_body())
    stale = core.read_namespaced_service("web", NS)
    stale.metadata.labels["x"] = "1"
    core.replace_namespaced_service("web", NS, stale)
    stale.metadata.labels["x"] = "2"
    with pytest.raises(ApiException) as caught:
        core.replace_namespaced_service("web", NS, stale)
    assert caught.value.status == 409
    assert error_body(caught.value) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'Operation cannot be fulfilled on services "web": the object has been '
        "modified; please apply your changes to the latest version and try again",
        "reason": "Conflict",
        "details": {"name": "web", "kind": "services"},
        "code": 409,
    }
    assert created.metadata.uid == core.read_namespaced_service("web", NS).metadata.uid


def test_put_of_an_unchanged_object_keeps_the_resource_version(core: Any) -> None:
    apply_service(core, service_body())
    current = core.read_namespaced_service("web", NS)
    replaced = core.replace_namespaced_service("web", NS, current)
    assert replaced.metadata.resource_version == current.metadata.resource_version


def test_validation_texts_through_the_client(discovery: Any) -> None:
    for number in ("05", "06", "07"):
        recorded = fixture(number)
        with pytest.raises(ApiException) as caught:
            discovery.create_namespaced_endpoint_slice(NS, recorded["request"]["body"])
        assert caught.value.status == 422
        assert error_body(caught.value) == recorded["response"]["body"]


def test_more_slice_validation(kube: KubeDouble) -> None:
    body = slice_body("web-x", addresses=("127.0.0.1",))
    body["addressType"] = "IP"
    body["ports"].append({"name": "http", "port": 9, "protocol": "TCP"})
    status, answer, _ = raw(
        kube, "POST", f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices", body
    )
    assert status == 422
    assert answer["details"]["causes"] == [
        {
            "reason": "FieldValueNotSupported",
            "message": 'Unsupported value: "IP": supported values: "FQDN", "IPv4", "IPv6"',
            "field": "addressType",
        },
        {
            "reason": "FieldValueDuplicate",
            "message": 'Duplicate value: "http"',
            "field": "ports[1].name",
        },
    ]
    body = slice_body("web-y", addresses=("127.0.0.1",))
    status, answer, _ = raw(
        kube, "POST", f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices", body
    )
    assert answer["message"] == (
        'EndpointSlice.discovery.k8s.io "web-y" is invalid: endpoints[0].addresses[0]: Invalid '
        'value: "127.0.0.1": may not be in the loopback range (127.0.0.0/8, ::1/128)'
    )
    created = kube.apply("endpointslices", slice_body("web-z"), manager="consul-sync")
    changed = {
        **slice_body("web-z"),
        "addressType": "IPv6",
        "endpoints": [{"addresses": ["fd00::1"]}],
    }
    with pytest.raises(ApiError) as caught:
        kube.apply("endpointslices", changed, manager="consul-sync")
    assert caught.value.status["message"] == (
        'EndpointSlice.discovery.k8s.io "web-z" is invalid: addressType: Invalid value: "IPv6": '
        "field is immutable"
    )
    assert created["metadata"]["generation"] == 1


def test_empty_slice_is_served_with_null_endpoints(kube: KubeDouble, discovery: Any) -> None:
    body = slice_body("empty")
    body["endpoints"] = []
    apply_slice(discovery, body)
    stored = kube.get("endpointslices", NS, "empty")
    assert stored is not None
    assert stored["endpoints"] is None
    unnamed = slice_body("unnamed")
    unnamed["ports"] = [{"port": 53, "protocol": "UDP"}]
    unnamed["endpoints"] = [{"addresses": ["10.0.0.1"]}]
    created = discovery.create_namespaced_endpoint_slice(NS, unnamed)
    assert created.ports[0].name == ""
    raw_slice = kube.get("endpointslices", NS, "unnamed")
    assert raw_slice is not None
    assert raw_slice["endpoints"] == [{"addresses": ["10.0.0.1"], "conditions": {}}]


def test_slice_generation_moves_only_on_change(discovery: Any) -> None:
    first = apply_slice(discovery, slice_body("gen"))
    same = apply_slice(discovery, slice_body("gen"))
    changed = apply_slice(discovery, slice_body("gen", addresses=("10.0.10.12",)))
    assert (first.metadata.generation, same.metadata.generation) == (1, 1)
    assert same.metadata.resource_version == first.metadata.resource_version
    assert changed.metadata.generation == 2


def test_watch_through_the_client(kube: KubeDouble, discovery: Any) -> None:
    apply_slice(discovery, slice_body("web-abc12"))
    apply_slice(discovery, slice_body("nas", service="nas"))
    listed = discovery.list_namespaced_endpoint_slice(NS)
    events: list[tuple[str, str, int | None]] = []

    def consume() -> None:
        stream = Watch().stream(
            discovery.list_namespaced_endpoint_slice,
            NS,
            resource_version=listed.metadata.resource_version,
            timeout_seconds=2,
        )
        for event in stream:
            obj = event["object"]
            events.append((event["type"], obj.metadata.name, obj.metadata.generation))
            if len(events) == 3:
                break

    thread = threading.Thread(target=consume)
    thread.start()
    assert kube.wait_for_watches(1)
    apply_slice(discovery, slice_body("web-abc12", addresses=("10.0.10.11", "10.0.10.12")))
    discovery.delete_namespaced_endpoint_slice("nas", NS)
    apply_slice(discovery, slice_body("new"))
    thread.join(timeout=5)
    assert events == [
        ("MODIFIED", "web-abc12", 2),
        ("DELETED", "nas", 1),
        ("ADDED", "new", 1),
    ]


def test_held_watches_deliver_nothing_until_released_then_everything_in_order(
    kube: KubeDouble, discovery: Any
) -> None:
    listed = discovery.list_namespaced_endpoint_slice(NS)
    events: list[tuple[str, str]] = []

    def consume() -> None:
        stream = Watch().stream(
            discovery.list_namespaced_endpoint_slice,
            NS,
            resource_version=listed.metadata.resource_version,
            timeout_seconds=5,
        )
        for event in stream:
            events.append((event["type"], event["object"].metadata.name))
            if len(events) == 2:
                break

    thread = threading.Thread(target=consume)
    thread.start()
    assert kube.wait_for_watches(1)
    kube.hold_watches()
    apply_slice(discovery, slice_body("one"))  # written and answered...
    discovery.delete_namespaced_endpoint_slice("one", NS)
    thread.join(timeout=0.5)
    assert events == []  # ... but not shown yet
    kube.release_watches()
    thread.join(timeout=5)
    assert events == [("ADDED", "one"), ("DELETED", "one")]


def test_watch_without_resource_version_starts_with_added_and_ends_at_timeout(
    kube: KubeDouble, discovery: Any
) -> None:
    apply_slice(discovery, slice_body("one"))
    apply_slice(discovery, slice_body("two"))
    started = time.monotonic()
    seen = [
        (e["type"], e["object"].metadata.name)
        for e in Watch().stream(discovery.list_namespaced_endpoint_slice, NS, timeout_seconds=1)
    ]
    assert seen == [("ADDED", "one"), ("ADDED", "two")]
    assert 0.9 <= time.monotonic() - started < 3


def test_watch_with_selector_reports_objects_leaving_the_selection(
    kube: KubeDouble, discovery: Any
) -> None:
    apply_slice(discovery, slice_body("mover", service="a"))
    rv = kube.resource_version
    apply_slice(discovery, slice_body("mover", service="b"))
    apply_slice(discovery, slice_body("mover", service="a"))
    path = (
        f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices?watch=1&resourceVersion={rv}"
        "&timeoutSeconds=1&labelSelector=kubernetes.io%2Fservice-name%3Da"
    )
    events, _ = watch_events(kube, path)
    assert [e["type"] for e in events] == ["DELETED", "ADDED"]
    assert events[0]["object"]["metadata"]["labels"]["kubernetes.io/service-name"] == "a"


def test_watch_expired_raises_410_in_the_client(kube: KubeDouble, discovery: Any) -> None:
    apply_slice(discovery, slice_body("one"))
    old = kube.resource_version
    apply_slice(discovery, slice_body("two"))
    kube.compact()
    with pytest.raises(ApiException) as caught:
        list(
            Watch().stream(
                discovery.list_namespaced_endpoint_slice,
                NS,
                resource_version=old,
                timeout_seconds=1,
            )
        )
    assert caught.value.status == 410
    assert "too old resource version" in str(caught.value.reason)


def test_bookmarks(kube: KubeDouble) -> None:
    kube.bookmark_interval = 0.2
    kube.apply("endpointslices", slice_body("one"), manager="consul-sync")
    rv = kube.resource_version
    path = (
        f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices?watch=1&resourceVersion={rv}"
        "&timeoutSeconds=1&allowWatchBookmarks=true"
    )
    events, _ = watch_events(kube, path)
    assert events
    assert {e["type"] for e in events} == {"BOOKMARK"}
    assert events[0]["object"] == {
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": {"resourceVersion": rv, "creationTimestamp": None},
        "addressType": "",
        "endpoints": None,
        "ports": None,
    }


def test_service_delete_collects_owned_slices(kube: KubeDouble, core: Any, discovery: Any) -> None:
    service = apply_service(core, service_body())
    owner = {
        "apiVersion": "v1",
        "kind": "Service",
        "name": "web",
        "uid": service.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }
    for name in ("web-1", "web-2"):
        body = slice_body(name)
        body["metadata"]["ownerReferences"] = [owner]
        apply_slice(discovery, body)
    apply_slice(discovery, slice_body("unowned"))
    deleted = core.delete_namespaced_service("web", NS)
    assert deleted.metadata.name == "web"  # services answer with the deleted object
    remaining = discovery.list_namespaced_endpoint_slice(NS).items
    assert [s.metadata.name for s in remaining] == ["unowned"]
    answer = discovery.delete_namespaced_endpoint_slice("unowned", NS)
    assert answer["status"] == "Success"
    assert answer["details"]["kind"] == "endpointslices"
    assert "code" not in answer


def test_not_found_and_already_exists(core: Any) -> None:
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_service("nope", NS)
    assert error_body(missing.value) == fixture("13")["response"]["body"]
    core.create_namespaced_service(NS, fixture("14")["request"]["body"])
    with pytest.raises(ApiException) as exists:
        core.create_namespaced_service(NS, fixture("14")["request"]["body"])
    assert error_body(exists.value) == fixture("14")["response"]["body"]


def test_rbac_denials_have_the_real_texts(core: Any, discovery: Any) -> None:
    double = KubeDouble(user="limited")
    with double, client.ApiClient(client.Configuration(host=double.url)) as api_client:
        double.deny("list", "services")
        double.deny("patch", "endpointslices", NS)
        with pytest.raises(ApiException) as listing:
            client.CoreV1Api(api_client).list_namespaced_service(NS)
        assert listing.value.status == 403
        assert error_body(listing.value) == fixture("15")["response"]["body"]
        with pytest.raises(ApiException) as patching:
            apply_slice(client.DiscoveryV1Api(api_client), apply_body("16"))
        assert error_body(patching.value) == fixture("16")["response"]["body"]
        double.allow("patch", "endpointslices", NS)
        apply_slice(client.DiscoveryV1Api(api_client), apply_body("16"))
        with pytest.raises(ApiException) as everywhere:
            client.CoreV1Api(api_client).list_service_for_all_namespaces()
        assert error_body(everywhere.value)["message"] == (
            'services is forbidden: User "limited" cannot list resource "services" in API group ""'
            " at the cluster scope"
        )


def test_bearer_tokens(kube: KubeDouble) -> None:
    kube.tokens = {"secret": "system:serviceaccount:network:consul-sync"}
    status, body, _ = raw(kube, "GET", f"/api/v1/namespaces/{NS}/services")
    assert (status, body["reason"]) == (401, "Unauthorized")
    status, _, _ = raw(
        kube, "GET", f"/api/v1/namespaces/{NS}/services", headers={"Authorization": "Bearer secret"}
    )
    assert status == 200


def test_lease_updates_are_guarded_by_resource_version(kube: KubeDouble, coordination: Any) -> None:
    now = datetime.datetime(2026, 11, 24, 0, 0, 0, 123456, tzinfo=datetime.UTC)
    lease = client.V1Lease(
        metadata=client.V1ObjectMeta(name="consul-sync", namespace=NS),
        spec=client.V1LeaseSpec(
            holder_identity="pod-a",
            lease_duration_seconds=15,
            acquire_time=now,
            renew_time=now,
            lease_transitions=0,
        ),
    )
    created = coordination.create_namespaced_lease(NS, lease)
    assert kube.get("leases", NS, "consul-sync")["spec"]["renewTime"] == (  # type: ignore[index]
        "2026-11-24T00:00:00.123456Z"
    )
    with pytest.raises(ApiException) as exists:
        coordination.create_namespaced_lease(NS, lease)
    assert exists.value.status == 409
    mine = coordination.read_namespaced_lease("consul-sync", NS)
    theirs = coordination.read_namespaced_lease("consul-sync", NS)
    mine.spec.renew_time = now + datetime.timedelta(seconds=5)
    renewed = coordination.replace_namespaced_lease("consul-sync", NS, mine)
    assert int(renewed.metadata.resource_version) > int(created.metadata.resource_version)
    theirs.spec.holder_identity = "pod-b"
    with pytest.raises(ApiException) as stale:
        coordination.replace_namespaced_lease("consul-sync", NS, theirs)
    assert error_body(stale.value)["message"] == (
        'Operation cannot be fulfilled on leases.coordination.k8s.io "consul-sync": the object '
        "has been modified; please apply your changes to the latest version and try again"
    )
    assert error_body(stale.value)["details"] == {
        "name": "consul-sync",
        "group": "coordination.k8s.io",
        "kind": "leases",
    }
    coordination.delete_namespaced_lease("consul-sync", NS)
    assert kube.get("leases", NS, "consul-sync") is None


def test_micro_time_needs_six_fraction_digits(kube: KubeDouble, coordination: Any) -> None:
    """The real decoder parses MicroTime with RFC3339Micro; Python's isoformat drops zero µs."""
    whole_second = datetime.datetime(2026, 11, 24, tzinfo=datetime.UTC)
    lease = client.V1Lease(
        metadata=client.V1ObjectMeta(name="l", namespace=NS),
        spec=client.V1LeaseSpec(holder_identity="pod-a", renew_time=whole_second),
    )
    with pytest.raises(ApiException) as caught:
        coordination.create_namespaced_lease(NS, lease)
    assert caught.value.status == 400
    assert error_body(caught.value)["message"] == (
        'Lease in version "v1" cannot be handled as a Lease: parsing time '
        '"2026-11-24T00:00:00+00:00" as "2006-01-02T15:04:05.000000Z07:00": cannot parse '
        '"+00:00" as ".000000"'
    )


def test_core_events_as_the_sinks_write_them(kube: KubeDouble, api: Any) -> None:
    core_event = client.CoreV1Api(api).create_namespaced_event(
        NS,
        client.CoreV1Event(
            metadata=client.V1ObjectMeta(name="web.1"),
            involved_object=client.V1ObjectReference(kind="Service", name="web", namespace=NS),
            reason="Synced",
            message="hello",
            type="Normal",
        ),
    )
    assert core_event.event_time is None
    raw_event = kube.get("events", NS, "web.1")
    assert raw_event is not None
    assert raw_event["source"] == {}
    assert raw_event["reportingComponent"] == ""


def test_merge_patches_and_no_others(core: Any) -> None:
    apply_service(core, service_body())
    merged = core.patch_namespaced_service(
        "web",
        NS,
        {"metadata": {"labels": {"extra": "1"}}},
        _content_type="application/merge-patch+json",
    )
    assert merged.metadata.labels["extra"] == "1"
    # strategic merge and JSON patches: not served
    for body, content_type in (
        ({"metadata": {}}, "application/strategic-merge-patch+json"),
        ([], "application/json-patch+json"),
    ):
        with pytest.raises(ApiException) as caught:
            core.patch_namespaced_service("web", NS, body, _content_type=content_type)
        assert caught.value.status == 415
    patched = core.read_namespaced_service("web", NS)
    managers = {(m.manager, m.operation) for m in patched.metadata.managed_fields}
    assert managers == {("consul-sync", "Apply"), ("OpenAPI-Generator", "Update")}


def test_fault_injection(kube: KubeDouble, core: Any) -> None:
    apply_service(core, service_body())
    fault = kube.fail_next(2, method="PATCH", path_prefix="/api/v1/namespaces", status=429)
    for _ in range(2):
        with pytest.raises(ApiException) as throttled:
            apply_service(core, service_body())
        assert throttled.value.status == 429
        assert (throttled.value.headers or {})["Retry-After"] == "1"
        assert throttled.value.body == "Too many requests, please try again later.\n"
    assert (fault.remaining, fault.hits) == (0, 2)
    apply_service(core, service_body())

    kube.fail_next(status=500)
    with pytest.raises(ApiException) as broken:
        core.read_namespaced_service("web", NS)
    assert (
        error_body(broken.value)["message"]
        == "Internal error occurred: etcdserver: request timed out"
    )

    kube.fail_next(status=503, retry_after=3, method="PATCH")
    with pytest.raises(ApiException) as unavailable:
        apply_service(core, service_body())
    assert (unavailable.value.headers or {})["Retry-After"] == "3"

    kube.fail_next(status=409, method="PUT")
    current = core.read_namespaced_service("web", NS)
    with pytest.raises(ApiException) as conflicted:
        core.replace_namespaced_service("web", NS, current)
    assert error_body(conflicted.value)["reason"] == "Conflict"

    kube.fail_next(mode="drop", method="PATCH")
    with pytest.raises(urllib3.exceptions.HTTPError):
        apply_service(core, service_body(new="1"))
    assert "new" not in core.read_namespaced_service("web", NS).metadata.labels

    kube.fail_next(status=504, method="PATCH", after_commit=True)
    with pytest.raises(ApiException) as timed_out:
        apply_service(core, service_body(new="1"))
    assert timed_out.value.status == 504
    assert core.read_namespaced_service("web", NS).metadata.labels["new"] == "1"


def test_hanging_request_times_out_in_the_client(kube: KubeDouble, core: Any) -> None:
    kube.fail_next(mode="hang", delay=5, method="PATCH")
    started = time.monotonic()
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        apply_service(core, service_body(), _request_timeout=0.3)
    assert time.monotonic() - started < 2


def test_urllib3_retries_idempotent_requests_on_its_own(kube: KubeDouble, core: Any) -> None:
    """What the real client does with these answers: GETs are retried below the client."""
    kube.fail_next(status=503, retry_after=0)
    kube.fail_next(mode="hang", delay=5, method="GET")
    assert core.list_namespaced_service(NS, _request_timeout=0.3).items == []
    assert kube.count("list", "services") == 3


def test_request_log_counts_writes(kube: KubeDouble, core: Any) -> None:
    apply_service(core, service_body())
    kube.reset_log()
    core.list_namespaced_service(NS)
    core.read_namespaced_service("web", NS)
    assert kube.writes() == []
    assert (kube.count("list"), kube.count("get")) == (1, 1)
    apply_service(core, service_body())
    (logged,) = kube.writes()
    assert logged.method == "PATCH"
    assert logged.path == f"/api/v1/namespaces/{NS}/services/web"
    assert logged.query == {"fieldManager": "consul-sync", "force": "true"}
    assert logged.content_type == APPLY
    assert kube.exchanges[-1].status == 200


def test_stop_and_start_on_the_same_port(kube: KubeDouble, core: Any) -> None:
    apply_service(core, service_body())
    port = kube.port
    kube.stop()
    with pytest.raises(urllib3.exceptions.HTTPError):
        core.list_namespaced_service(NS, _request_timeout=1)
    kube.start()
    assert kube.port == port
    assert [s.metadata.name for s in core.list_namespaced_service(NS).items] == ["web"]


def test_stop_ends_open_watches(kube: KubeDouble, discovery: Any) -> None:
    finished = threading.Event()

    def consume() -> None:
        try:
            for _ in Watch().stream(
                discovery.list_namespaced_endpoint_slice, NS, timeout_seconds=30
            ):
                pass
        except Exception:  # the connection is cut: any error is fine
            pass
        finished.set()

    threading.Thread(target=consume, daemon=True).start()
    assert kube.wait_for_watches(1)
    kube.stop()
    assert finished.wait(5)


def test_discovery(kube: KubeDouble, api: Any) -> None:
    groups = {g.name for g in client.ApisApi(api).get_api_versions().groups}
    assert groups == {"discovery.k8s.io", "coordination.k8s.io"}
    status, body, _ = raw(kube, "GET", "/apis/discovery.k8s.io/v1")
    assert status == 200
    assert [r["name"] for r in body["resources"]] == ["endpointslices"]
    status, body, _ = raw(kube, "GET", "/api/v1/namespaces/fixtures/configmaps")
    assert (status, body["message"]) == (404, "the server could not find the requested resource")


def test_concurrent_appliers_from_threads(kube: KubeDouble, api: Any) -> None:
    core: Any = client.CoreV1Api(api)
    discovery: Any = client.DiscoveryV1Api(api)

    def sync(index: int) -> None:
        name = f"svc-{index}"
        apply_service(core, service_body(name))
        for part in range(3):
            apply_slice(
                discovery,
                slice_body(f"{name}-{part}", service=name, addresses=(f"10.1.{index}.{part + 1}",)),
            )

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(sync, range(40)))
    assert len(core.list_namespaced_service(NS).items) == 40
    slices = discovery.list_namespaced_endpoint_slice(NS).items
    assert len(slices) == 120
    versions = sorted(int(s.metadata.resource_version) for s in slices)
    assert len(set(versions)) == 120
    assert kube.count("patch") == 160


def test_direct_helpers(kube: KubeDouble) -> None:
    created = kube.create("services", service_body())
    assert created["spec"]["clusterIPs"] == ["None"]
    listed = kube.list("services", NS, label_selector="app.kubernetes.io/managed-by=consul-sync")
    assert [s["metadata"]["name"] for s in listed] == ["web"]
    updated = kube.update(
        "services", {**created, "metadata": {**created["metadata"], "labels": {"a": "b"}}}
    )
    assert updated["metadata"]["labels"] == {"a": "b"}
    with pytest.raises(ApiError) as caught:
        kube.update("services", created)
    assert caught.value.code == 409
    kube.delete("services", NS, "web")
    assert kube.get("services", NS, "web") is None


def test_watch_across_namespaces(kube: KubeDouble, discovery: Any) -> None:
    apply_slice(discovery, slice_body("a-1", service="a"))
    apply_slice(discovery, slice_body("b-1", service="b"))
    start = kube.resource_version
    discovery.delete_namespaced_endpoint_slice("a-1", NS)
    events, _ = watch_events(
        kube,
        f"/apis/discovery.k8s.io/v1/endpointslices?watch=1&resourceVersion={start}"
        "&timeoutSeconds=1",
    )
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("DELETED", "a-1")]


def test_apply_omitting_server_defaulted_fields_of_an_atomic_list(kube: KubeDouble) -> None:
    """Like the real server: such an apply is not a no-op; the RV moves when the second does."""
    now = [datetime.datetime(2026, 11, 24, 12, 0, 0, tzinfo=datetime.UTC)]
    with KubeDouble(clock=lambda: now[0]) as double:
        body = slice_body("web-1")
        del body["endpoints"][0]["conditions"]
        first = double.apply("endpointslices", body, manager="consul-sync")
        assert first["endpoints"][0]["conditions"] == {}
        same_second = double.apply("endpointslices", body, manager="consul-sync")
        assert same_second["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
        now[0] += datetime.timedelta(seconds=1)
        later = double.apply("endpointslices", body, manager="consul-sync")
        assert later["metadata"]["resourceVersion"] != first["metadata"]["resourceVersion"]
        assert later["metadata"]["generation"] == 1
        complete = slice_body("web-1")
        double.apply("endpointslices", complete, manager="consul-sync")
        now[0] += datetime.timedelta(seconds=1)
        settled = double.apply("endpointslices", complete, manager="consul-sync")
        again = double.apply("endpointslices", complete, manager="consul-sync")
        assert settled["metadata"]["resourceVersion"] == again["metadata"]["resourceVersion"]


def test_headful_service_gets_a_cluster_ip(core: Any) -> None:
    body = service_body()
    del body["spec"]["clusterIP"]
    body["spec"]["selector"] = {"app": "web"}
    created = core.create_namespaced_service(NS, body)
    assert created.spec.cluster_ip.startswith("10.96.")
    assert created.spec.ip_families == ["IPv4"]
    assert created.spec.ip_family_policy == "SingleStack"
    again = apply_service(core, {**body, "metadata": {"name": "web"}}, manager="consul-sync")
    assert again.spec.cluster_ip == created.spec.cluster_ip


WaitFor = Callable[[], bool]
