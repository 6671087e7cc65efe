"""The status page of the embedded default (``examples/local.toml``: the file
source over consul-server/consul.d, the manifests sink), served by a real
``consul-sync run`` and read by headless chromium and ``consul-sync status``."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from consul_sync.cli import main
from tests import browser
from tests.browser import fetch, free_port

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def serve(config: Path) -> Iterator[str]:
    """``consul-sync --config CONFIG run`` until the block ends; its METRICS_ADDR."""
    addr = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "METRICS_ADDR": addr, "LOG_LEVEL": "error"}
    process = subprocess.Popen(
        [sys.executable, "-m", "consul_sync", "--config", str(config), "run"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        browser.wait_ready(process, addr)
        yield addr
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)


@pytest.fixture
def serving() -> Iterator[str]:
    with serve(ROOT / "examples" / "local.toml") as addr:
        yield addr


def test_the_example_registrations_on_the_status_page(serving: str, tmp_path: Path) -> None:
    document = json.loads(fetch(f"http://{serving}/status.json"))
    assert [(s["name"], s["type"], s["complete"]) for s in document["sources"]] == [
        ("example-registrations", "file", True)
    ]
    assert [(s["name"], s["active"], s["reachable"]) for s in document["sinks"]] == [
        ("manifests", True, True)
    ]
    found = {row["name"]: row for row in document["services"]}
    assert set(found) == {"homeassistant", "plex"}  # grafana is not tagged
    for row in found.values():
        assert row["endpoints"] == {"ready": 1, "not_ready": 0, "total": 1}
        assert row["names"] == {"manifests": row["name"]} and row["last_change"]
    page = browser.visible_text(browser.dom(f"http://{serving}/", tmp_path / "profile"))
    assert "network/plex" in page and "network/homeassistant" in page
    assert "1/1 ready" in page and "2 of 2 shown" in page
    page = browser.visible_text(browser.dom(f"http://{serving}/?q=plex", tmp_path / "profile"))
    assert "network/plex" in page and "network/homeassistant" not in page
    out = io.StringIO()
    assert main(["status", "--addr", serving], environ={}, stdout=out) == 0
    assert "network/plex" in out.getvalue() and "network/homeassistant" in out.getvalue()


def _with_a_broken_registration(tmp_path: Path) -> Path:
    registrations = tmp_path / "consul.d"
    shutil.copytree(ROOT / "consul-server" / "consul.d", registrations)
    (registrations / "jellyfin.json").write_text(
        json.dumps(
            {
                "service": {
                    "name": "jellyfin",
                    "tags": ["kubernetes"],
                    "port": "8096",
                    "address": "10.0.10.100",
                }
            }
        )
    )
    (registrations / "sonarr.json").write_text(
        json.dumps(
            {
                "service": {
                    "name": "sonarr",
                    "tags": ["kubernetes"],
                    "port": 8989,
                    "address": "10.0.10.100",
                    "meta": {"k8s-name": "tv"},
                }
            }
        )
    )
    config = tmp_path / "local.toml"
    text = (ROOT / "examples" / "local.toml").read_text()
    config.write_text(text.replace('path = "consul-server/consul.d"', f'path = "{registrations}"'))
    return config


def test_a_skipped_and_a_renamed_registration_are_explained(tmp_path: Path) -> None:
    with serve(_with_a_broken_registration(tmp_path)) as value:
        document = json.loads(fetch(f"http://{value}/status.json?problem=1"))
        (row,) = document["services"]
        assert row["name"] == "jellyfin" and row["skipped"]
        assert "'port' must be a whole number 1-65535" in row["notes"][0]
        everything = json.loads(fetch(f"http://{value}/status.json?q=sonarr"))
        (tv,) = everything["services"]
        assert tv["name"] == "tv" and tv["source_name"] == "sonarr"
        page = browser.visible_text(browser.dom(f"http://{value}/", tmp_path / "profile"))
        assert "skipped" in page and "'port' must be a whole number" in page
        assert "source: sonarr" in page
