"""The status page of a real ``consul-sync run`` against the Consul double:
why each not-ready instance is not ready (a critical check by name, service
maintenance, node health), a renamed and a skipped service explained, in
/status.json, in headless chromium and in ``consul-sync status``; the token
never shows."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from consul_sync.cli import main
from tests import browser
from tests.browser import fetch, free_port
from tests.fakes.consul_double import ConsulDouble

TAG = ["kubernetes"]
TOKEN = "b1946ac9-2b8e-4f4c-secret-9b2c4a8f6d1e"


@pytest.fixture
def consul() -> Iterator[ConsulDouble]:
    with ConsulDouble(seed=11) as double:
        double.register("plex", service_id="plex-1", address="10.0.10.100", port=32400,
                        tags=TAG, status="passing")  # fmt: skip
        identity = {"Name": "Plex identity", "TTL": "10m", "Status": "critical"}
        double.register("plex", service_id="plex-2", address="10.0.10.101", port=32400,
                        tags=TAG, check=identity)  # fmt: skip
        double.register("homeassistant", service_id="ha-1", address="10.0.10.102", port=8123,
                        tags=TAG, status="passing")  # fmt: skip
        double.service_maintenance("ha-1", True, "upgrading")
        double.add_node("n2", "10.0.20.1")
        double.register("grafana", service_id="g-1", address="10.0.20.1", port=3000, tags=TAG,
                        status="passing", node="n2")  # fmt: skip
        double.set_check("serfHealth", "critical", node="n2")
        double.register("Media_Server", service_id="m-1", address="10.0.10.103", port=8096,
                        tags=TAG, status="passing")  # fmt: skip
        double.register("broken", service_id="b-1", address="10.0.10.104", port=0, tags=TAG)
        yield double


@pytest.fixture
def running(consul: ConsulDouble, tmp_path: Path) -> Iterator[str]:
    out = tmp_path / "out"
    out.mkdir()
    config = tmp_path / "consul-sync.toml"
    config.write_text(
        'log_format = "text"\n[[sources]]\nname = "consul"\ntype = "consul"\n'
        'address = "${CONSUL_ADDR}"\ntoken = "${CONSUL_TOKEN}"\n'
        f'[[sinks]]\nname = "cluster"\ntype = "manifests"\noutput = "{out}"\n'
    )
    addr = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "CONSUL_ADDR": consul.url,
        "CONSUL_TOKEN": TOKEN,
        "METRICS_ADDR": addr,
        "LOG_LEVEL": "warning",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "consul_sync", "--config", str(config), "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        browser.wait_ready(process, addr)
        yield addr
    finally:
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=20)
        assert TOKEN not in errors


def rows(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in document["services"]}


def test_status_json_explains_the_consul_services(running: str) -> None:
    document = json.loads(fetch(f"http://{running}/status.json"))
    (source,) = document["sources"]
    assert source["type"] == "consul" and source["complete"] and source["last_read"]
    assert source["errors"] == []
    found = rows(document)
    plex = found["plex"]
    assert plex["endpoints"] == {"ready": 1, "not_ready": 1, "total": 2}
    assert plex["not_ready"][0]["address"] == "10.0.10.101"
    assert plex["not_ready"][0]["reason"] == "check 'Plex identity' is critical"
    assert found["homeassistant"]["not_ready"][0]["reason"] == "in maintenance"
    assert found["grafana"]["not_ready"][0]["reason"] == "node n2: serfHealth is critical"
    media = found["Media_Server"]
    assert media["names"] == {"cluster": "media-server"}
    assert "is not a DNS-1035 label" in " ".join(media["notes"])
    broken = found["broken"]
    assert broken["skipped"] and broken["problem"]
    assert "port 0 is not 1-65535" in " ".join(broken["notes"])
    assert TOKEN not in json.dumps(document)


def test_a_person_sees_why_in_a_browser_and_the_terminal(running: str, tmp_path: Path) -> None:
    page = browser.visible_text(browser.dom(f"http://{running}/", tmp_path / "profile"))
    for seen in (
        "network/plex",
        "10.0.10.101:32400 — check 'Plex identity' is critical",
        "in maintenance",
        "node n2: serfHealth is critical",
        "media-server",
        "skipped",
        "port 0 is not 1-65535",
    ):
        assert seen in page, seen
    assert TOKEN not in page
    problems = browser.visible_text(
        browser.dom(f"http://{running}/?problem=1&q=plex", tmp_path / "profile")
    )
    assert "network/plex" in problems and "network/grafana" not in problems
    out = io.StringIO()
    assert main(["status", "--addr", running], environ={}, stdout=out) == 0
    text = out.getvalue()
    assert "check 'Plex identity' is critical" in text and "skipped" in text
    assert TOKEN not in text
