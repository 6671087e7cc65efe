"""The double's Gateway API agrees with the recordings of a real API server
(kube-apiserver 1.24 with the Gateway API v1.6.1 CRDs, ../shared/fixtures/gateway)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.k8s_double import KubeDouble

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "gateway"
NS = "gateway-fixtures"


def recording(prefix: str) -> dict[str, Any]:
    (path,) = FIXTURES.glob(f"{prefix}-*.json")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


class Ticking:
    """A clock whose second changes on every read (applies 1.1 s apart)."""

    def __init__(self) -> None:
        self.now = datetime(2026, 12, 3, 7, 2, 51, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=2)
        return self.now


@pytest.fixture
def kube() -> Iterator[KubeDouble]:
    with KubeDouble(gateway_api=True, clock=Ticking()) as double:
        yield double


def send(kube: KubeDouble, prefix: str) -> httpx.Response:
    request = recording(prefix)["request"]
    return httpx.request(
        request["method"],
        kube.url + request["path"],
        content=request["body"].encode() if request["body"] else None,
        headers={"Content-Type": request["content_type"]},
    )


def same_object(answer: dict[str, Any], recorded: dict[str, Any]) -> None:
    for field in ("apiVersion", "kind", "spec"):
        assert answer.get(field) == recorded.get(field), field
    assert "status" not in answer  # no controller: no status at all (16)
    for field in ("labels", "generation", "name", "namespace"):
        assert answer["metadata"].get(field) == recorded["metadata"].get(field), field


def test_apply_create_and_repeat_as_recorded(kube: KubeDouble) -> None:
    created = send(kube, "01")
    assert created.status_code == 201
    same_object(created.json(), recording("01")["response"]["body"])
    # 02: the same body again is not a no-op: defaults inside atomic lists
    again = send(kube, "02")
    assert again.status_code == 200
    same_object(again.json(), recording("02")["response"]["body"])
    assert (
        again.json()["metadata"]["resourceVersion"] != created.json()["metadata"]["resourceVersion"]
    )
    # 27/28: a fully defaulted body is a true no-op the second time
    first = send(kube, "27")
    assert first.status_code == 201
    same_object(first.json(), recording("27")["response"]["body"])
    second = send(kube, "28")
    assert second.status_code == 200
    assert (
        second.json()["metadata"]["resourceVersion"] == first.json()["metadata"]["resourceVersion"]
    )
    listed = httpx.get(kube.url + recording("04")["request"]["path"]).json()
    recorded = recording("04")["response"]["body"]
    assert listed["kind"] == recorded["kind"] == "HTTPRouteList"
    assert [i["kind"] for i in listed["items"]] == ["HTTPRoute", "HTTPRoute"]


@pytest.mark.parametrize("prefix", ["05", "06", "07", "17", "20", "21"])
def test_validation_errors_have_the_recorded_texts(kube: KubeDouble, prefix: str) -> None:
    answer = send(kube, prefix)
    expected = recording(prefix)["response"]
    assert answer.status_code == expected["status"] == 422
    assert answer.json() == expected["body"]


@pytest.mark.parametrize("prefix", ["08", "09", "10", "25"])
def test_discovery_and_unserved_paths_as_recorded(kube: KubeDouble, prefix: str) -> None:
    answer = send(kube, prefix)
    expected = recording(prefix)["response"]
    assert answer.status_code == expected["status"]
    if isinstance(expected["body"], str):
        assert answer.text == expected["body"]
    else:
        assert answer.json() == expected["body"]


def test_without_the_crds_the_group_is_not_served() -> None:
    with KubeDouble() as kube:
        answer = httpx.get(kube.url + "/apis/gateway.networking.k8s.io/v1")
        assert answer.status_code == 404
        groups = httpx.get(kube.url + "/apis").json()["groups"]
        assert "gateway.networking.k8s.io" not in [g["name"] for g in groups]


def test_not_found_conflicts_and_deletes_as_recorded(kube: KubeDouble) -> None:
    assert send(kube, "01").status_code == 201
    missing = send(kube, "24")
    assert (missing.status_code, missing.json()) == (404, recording("24")["response"]["body"])
    conflict = send(kube, "11")
    assert (conflict.status_code, conflict.json()) == (409, recording("11")["response"]["body"])
    modified = send(kube, "26")
    assert modified.status_code == 200
    assert modified.json()["metadata"]["generation"] == 2
    uid = modified.json()["metadata"]["uid"]
    wrong = send(kube, "13")
    expected = recording("13")["response"]["body"]
    assert wrong.status_code == 409
    recorded_uid = "701e6529-6654-4b33-bb67-dc43b235f2e3"
    assert wrong.json() == json.loads(json.dumps(expected).replace(recorded_uid, uid))
    request = recording("12")["request"]
    deleted = httpx.request(
        "DELETE",
        kube.url + request["path"],
        content=json.dumps({"preconditions": {"uid": uid}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert deleted.status_code == 200
    assert deleted.json() == json.loads(
        json.dumps(recording("12")["response"]["body"]).replace(recorded_uid, uid)
    )


def test_watch_sees_modification_and_deletion_and_status_is_kept(kube: KubeDouble) -> None:
    created = send(kube, "01").json()
    rv = created["metadata"]["resourceVersion"]
    send(kube, "26")
    kube.set_status("httproutes", NS, "plex-envoy-internal", {"parents": []})
    assert send(kube, "26").json()["status"] == {"parents": []}  # apply keeps the status
    kube.delete("httproutes", NS, "plex-envoy-internal")
    path = f"/apis/gateway.networking.k8s.io/v1/namespaces/{NS}/httproutes"
    answer = httpx.get(
        kube.url + path, params={"watch": "1", "resourceVersion": rv, "timeoutSeconds": "1"}
    )
    events = [json.loads(line) for line in answer.text.splitlines() if line.strip()]
    recorded = recording("15")["response"]["events"]
    # 26, the status write, 26 again (not a no-op: see 02), the delete
    assert [e["type"] for e in events] == ["MODIFIED", "MODIFIED", "MODIFIED", "DELETED"]
    assert events[0]["object"]["spec"] == recorded[0]["object"]["spec"]
    assert events[0]["object"]["metadata"]["generation"] == 2
