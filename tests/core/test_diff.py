"""``plan``'s differences: a pure function of observed and desired."""

from __future__ import annotations

import io
import json

import pytest

from consul_sync.diff import FieldChange, Op, diff_change, diff_services, summary
from consul_sync.model import Action, Change, DesiredService, Endpoint, Observed, Port

WEB = DesiredService(
    "web",
    "network",
    [Port("http", 80)],
    [Endpoint("10.0.0.1"), Endpoint("10.0.0.2", ready=False)],
    labels={"team": "a"},
    tags=["kubernetes"],
)


def svc(**changes: object) -> DesiredService:
    import attrs

    return attrs.evolve(WEB, **changes)  # type: ignore[arg-type]


C, A, R = Op.CHANGE, Op.ADD, Op.REMOVE


@pytest.mark.parametrize(
    ("new", "expected"),
    [
        pytest.param(WEB, [], id="unchanged"),
        pytest.param(
            svc(endpoints=[Endpoint("10.0.0.1", ready=False), Endpoint("10.0.0.2", ready=False)]),
            [FieldChange(C, "endpoints[10.0.0.1].ready", True, False)],
            id="ready flip",
        ),
        pytest.param(
            svc(endpoints=[Endpoint("10.0.0.1", ready=False, serving=True), WEB.endpoints[1]]),
            [FieldChange(C, "endpoints[10.0.0.1].ready", True, False)],
            id="ready flip, still serving",
        ),
        pytest.param(
            svc(endpoints=[*WEB.endpoints, Endpoint("10.0.0.10", port=8080)]),
            [
                FieldChange(
                    A,
                    "endpoints[10.0.0.10:8080]",
                    None,
                    {"address": "10.0.0.10", "port": 8080, "ready": True},
                )
            ],
            id="endpoint added",
        ),
        pytest.param(
            svc(endpoints=[WEB.endpoints[0]]),
            [FieldChange(R, "endpoints[10.0.0.2]", {"address": "10.0.0.2", "ready": False}, None)],
            id="endpoint removed",
        ),
        pytest.param(
            svc(ports=[Port("http", 8080)]),
            [FieldChange(C, "ports[http].port", 80, 8080)],
            id="port number",
        ),
        pytest.param(
            svc(ports=[Port("http", 80), Port("grpc", 9090, app_protocol="kubernetes.io/h2c")]),
            [
                FieldChange(
                    A,
                    "ports[grpc]",
                    None,
                    {"port": 9090, "protocol": "TCP", "app_protocol": "kubernetes.io/h2c"},
                )
            ],
            id="port added",
        ),
        pytest.param(
            svc(labels={"team": "b", "tier": "web"}, annotations={"note": "x"}),
            [
                FieldChange(C, "labels[team]", "a", "b"),
                FieldChange(A, "labels[tier]", None, "web"),
                FieldChange(A, "annotations[note]", None, "x"),
            ],
            id="labels and annotations",
        ),
        pytest.param(
            svc(tags=["internal"]),
            [FieldChange(A, "tags", None, "internal"), FieldChange(R, "tags", "kubernetes", None)],
            id="tags",
        ),
    ],
)
def test_differences(new: DesiredService, expected: list[FieldChange]) -> None:
    assert diff_services(WEB, new) == expected


def test_port_order_is_a_change_the_primary_port_moves() -> None:
    two = svc(ports=[Port("http", 80), Port("admin", 81)])
    swapped = svc(ports=[Port("admin", 81), Port("http", 80)])
    assert diff_services(two, swapped) == [
        FieldChange(C, "ports (order)", ["http", "admin"], ["admin", "http"])
    ]


def test_a_create_adds_everything_and_a_delete_removes_everything() -> None:
    created = diff_services(None, WEB)
    assert {c.op for c in created} == {A}
    assert [c.path for c in created] == [
        "ports[http]",
        "endpoints[10.0.0.1]",
        "endpoints[10.0.0.2]",
        "labels[team]",
        "tags",
    ]
    assert {c.op for c in diff_services(WEB, None)} == {R}


def test_endpoints_sort_naturally() -> None:
    many = svc(endpoints=[Endpoint(f"10.0.0.{i}") for i in (2, 10, 9)])
    paths = [c.path for c in diff_services(None, many) if c.path.startswith("endpoints")]
    assert paths == ["endpoints[10.0.0.2]", "endpoints[10.0.0.9]", "endpoints[10.0.0.10]"]


def test_a_change_is_diffed_against_what_the_sink_observed() -> None:
    flipped = svc(endpoints=[Endpoint("10.0.0.1"), Endpoint("10.0.0.2")])
    change = Change(Action.UPDATE, WEB.key, flipped, Observed(WEB.key, service=WEB))
    fields = diff_change(change)
    assert fields == [FieldChange(C, "endpoints[10.0.0.2].ready", False, True)]
    assert summary(fields) == {"ready flips": 1}
    assert fields[0].text() == "~ endpoints[10.0.0.2].ready: false -> true"
    assert fields[0].to_json() == {
        "op": "change",
        "path": "endpoints[10.0.0.2].ready",
        "old": False,
        "new": True,
    }


def test_plan_prints_and_reports_json(tmp_path) -> None:
    """End to end through ``plan``: an edited registration is an update with
    its differences; ``--output json`` carries the same, exit codes kept."""
    from consul_sync.cli import main

    reg = tmp_path / "reg"
    reg.mkdir()
    (reg / "web.json").write_text(
        json.dumps(
            {"service": {"name": "web", "tags": ["kubernetes"], "port": 80, "address": "10.0.0.1"}}
        )
    )
    config = tmp_path / "c.toml"
    config.write_text(
        f'[[sources]]\nname = "files"\ntype = "file"\npath = "{reg}"\n'
        f'[[sinks]]\nname = "out"\ntype = "manifests"\noutput = "{tmp_path / "out"}"\n'
    )
    assert main(["--config", str(config), "run", "--once"], environ={}) == 0
    (reg / "web.json").write_text(
        json.dumps(
            {
                "service": {
                    "name": "web",
                    "tags": ["kubernetes"],
                    "port": 8080,
                    "address": "10.0.0.1",
                }
            }
        )
    )
    text = io.StringIO()
    assert main(["--config", str(config), "plan"], environ={}, stdout=text) == 2
    assert text.getvalue().splitlines() == [
        "out: update network/web (1 endpoints)",
        "    ~ ports[http].port: 80 -> 8080",
    ]
    out = io.StringIO()
    assert main(["--config", str(config), "plan", "--output", "json"], environ={}, stdout=out) == 2
    report = json.loads(out.getvalue())
    assert report["schema"] == 1 and report["pending"] == 1 and report["guards"] == {}
    (item,) = report["items"]
    assert item == {
        "sink": "out",
        "action": "update",
        "namespace": "network",
        "name": "web",
        "endpoints": 1,
        "ready": 1,
        "observed": True,
        "summary": {"ports changed": 1},
        "diff": [{"op": "change", "path": "ports[http].port", "old": 80, "new": 8080}],
    }
    assert main(["--config", str(config), "run", "--once"], environ={}) == 0
    out = io.StringIO()
    assert main(["--config", str(config), "plan", "--output", "json"], environ={}, stdout=out) == 0
    assert json.loads(out.getvalue()) == {"schema": 1, "pending": 0, "items": [], "guards": {}}
