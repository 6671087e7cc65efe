"""The file source: Consul service definitions read from disk."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import anyio
import pytest

from consul_sync.metrics import Metrics
from consul_sync.model import Endpoint, Port
from consul_sync.registry import Context
from consul_sync_consul.file import FileConfig, FileSource

ROOT = Path(__file__).resolve().parents[2]
#: Generous: conditions are waited for, never timed.
DEADLINE = 30.0


def make(path: Path, **kwargs) -> FileSource:
    return FileSource("files", FileConfig(path=str(path), **kwargs), Context(metrics=Metrics()))


def write(path: Path, data) -> None:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)


def test_the_shipped_examples_tagged_only() -> None:
    snap = make(ROOT / "consul-server" / "consul.d").read()
    assert snap.complete
    assert sorted(name for _, name in snap.services) == ["homeassistant", "plex"]
    plex = snap.services[("network", "plex")]
    assert plex.ports == (Port("http", 32400, "TCP", "http"),)
    assert plex.endpoints == (Endpoint("10.0.10.100"),)
    assert plex.sources == ("files",)


def test_services_list_form_and_tag_filter(tmp_path) -> None:
    write(
        tmp_path / "many.json",
        {
            "services": [
                {"name": "a", "tags": ["kubernetes"], "port": 80, "address": "10.0.0.1"},
                {"Name": "b", "Tags": ["other"], "Port": 81, "Address": "10.0.0.2"},
                {
                    "name": "a",
                    "id": "a-2",
                    "tags": ["kubernetes"],
                    "port": 80,
                    "address": "10.0.0.3",
                },
            ]
        },
    )
    snap = make(tmp_path).read()
    assert list(snap.services) == [("network", "a")]
    assert [e.address for e in snap.services[("network", "a")].endpoints] == [
        "10.0.0.1",
        "10.0.0.3",
    ]
    everything = make(tmp_path, tag="").read()
    assert sorted(k[1] for k in everything.services) == ["a", "b"]


def test_agent_configuration_files_are_not_registrations(tmp_path) -> None:
    write(tmp_path / "server.json", {"server": True, "bootstrap_expect": 1})
    write(
        tmp_path / "web.json",
        {"service": {"name": "web", "tags": ["kubernetes"], "port": 80, "address": "10.0.0.1"}},
    )
    snap = make(tmp_path).read()
    assert snap.complete and list(snap.services) == [("network", "web")]


def test_invalid_service_is_skipped_with_a_clear_message_others_flow(tmp_path, caplog) -> None:
    write(
        tmp_path / "a.json",
        {
            "services": [
                {"name": "good", "tags": ["kubernetes"], "port": 80, "address": "10.0.0.1"},
                {"name": "bad", "tags": ["kubernetes"], "port": 0, "address": "10.0.0.2"},
                {"name": "worse", "tags": ["kubernetes"], "port": "eighty", "address": "10.0.0.3"},
                {"name": "homeless", "tags": ["kubernetes"], "port": 80},
            ]
        },
    )
    source = make(tmp_path)
    with caplog.at_level(logging.ERROR):
        snap = source.read()
    assert list(snap.services) == [("network", "good")]
    messages = [r.getMessage() for r in caplog.records]
    where = str(tmp_path / "a.json")
    assert f"{where}: services[1] ('bad'): port 0 is out of range 1-65535; skipped" in messages
    assert any(
        m.startswith(f"{where}: services[2] ('worse'): 'port' must be a whole number")
        for m in messages
    )
    assert any("services[3] ('homeless'): no 'address'" in m for m in messages)
    # the same problems are not repeated on every read
    caplog.clear()
    source.read()
    assert caplog.records == []


def test_malformed_file_keeps_its_last_good_services_and_marks_incomplete(tmp_path, caplog) -> None:
    write(
        tmp_path / "a.json",
        {"service": {"name": "a", "tags": ["kubernetes"], "port": 80, "address": "10.0.0.1"}},
    )
    write(
        tmp_path / "b.json",
        {"service": {"name": "b", "tags": ["kubernetes"], "port": 80, "address": "10.0.0.2"}},
    )
    source = make(tmp_path)
    assert source.read().complete
    write(tmp_path / "a.json", '{"service": {"name": "a", "port": 8')  # truncated
    with caplog.at_level(logging.ERROR):
        snap = source.read()
    assert not snap.complete
    assert sorted(k[1] for k in snap.services) == ["a", "b"]
    assert any(
        str(tmp_path / "a.json") in r.getMessage() and "cannot be read as JSON" in r.getMessage()
        for r in caplog.records
    )


def test_missing_path_is_incomplete_not_empty(tmp_path) -> None:
    snap = make(tmp_path / "nope").read()
    assert not snap.complete and not snap.services


def test_meta_overrides_and_invalid_meta_warns(tmp_path, caplog) -> None:
    write(
        tmp_path / "a.json",
        {
            "services": [
                {
                    "name": "Home_Assistant",
                    "tags": ["kubernetes"],
                    "port": 8123,
                    "address": "10.0.0.1",
                    "meta": {
                        "k8s-name": "hass",
                        "k8s-port-name": "web",
                        "k8s-app-protocol": "http",
                    },
                },
                {
                    "name": "plex",
                    "tags": ["kubernetes"],
                    "port": 32400,
                    "address": "10.0.0.2",
                    "meta": {"k8s-name": "Not_Valid", "k8s-port-name": "way-too-long-port-name"},
                },
            ]
        },
    )
    with caplog.at_level(logging.WARNING):
        snap = make(tmp_path).read()
    hass = snap.services[("network", "hass")]
    assert hass.ports == (Port("web", 8123, "TCP", "http"),)
    assert ("network", "plex") in snap.services
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "k8s-name='Not_Valid' is not a DNS-1035 label" in text
    assert "k8s-port-name='way-too-long-port-name' is not a valid port name" in text


def test_instances_on_different_ports_keep_their_port(tmp_path) -> None:
    write(
        tmp_path / "a.json",
        {
            "services": [
                {
                    "name": "web",
                    "id": "w1",
                    "tags": ["kubernetes"],
                    "port": 80,
                    "address": "10.0.0.1",
                },
                {
                    "name": "web",
                    "id": "w2",
                    "tags": ["kubernetes"],
                    "port": 80,
                    "address": "10.0.0.2",
                },
                {
                    "name": "web",
                    "id": "w3",
                    "tags": ["kubernetes"],
                    "port": 81,
                    "address": "10.0.0.3",
                },
            ]
        },
    )
    web = make(tmp_path).read().services[("network", "web")]
    assert web.ports[0].port == 80
    assert {(e.address, web.port_for(e)) for e in web.endpoints} == {
        ("10.0.0.1", 80),
        ("10.0.0.2", 80),
        ("10.0.0.3", 81),
    }


@pytest.mark.anyio
async def test_watch_notices_changes(tmp_path) -> None:
    write(
        tmp_path / "a.json",
        {"service": {"name": "a", "tags": ["kubernetes"], "port": 80, "address": "10.0.0.1"}},
    )
    source = make(tmp_path, poll_interval=0.02)
    seen = []

    async def publish(snapshot):
        seen.append(snapshot)

    async with anyio.create_task_group() as tg:
        tg.start_soon(source.run, publish)
        with anyio.fail_after(DEADLINE):
            while not seen:
                await anyio.sleep(0.01)
        write(
            tmp_path / "b.json",
            {"service": {"name": "b", "tags": ["kubernetes"], "port": 80, "address": "10.0.0.2"}},
        )
        with anyio.fail_after(DEADLINE):
            while len(seen) < 2:
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert sorted(k[1] for k in seen[-1].services) == ["a", "b"]
