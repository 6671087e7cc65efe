"""The manifests sink keeps its behaviour on the shared renderer."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from consul_sync.cli import build_app
from consul_sync.config import load_settings
from consul_sync.metrics import Metrics
from consul_sync.plugins import collect_types, make_plugin_manager
from consul_sync.testing import FakePlugin
from consul_sync_kubernetes import render as r

from .helpers import service, source

pytestmark = pytest.mark.anyio


async def test_colliding_names_get_suffixes_when_run_by_the_runtime(tmp_path: Path) -> None:
    """The runtime wires ``desired_keys`` after making its sinks; names must see it."""
    pm = make_plugin_manager(plugins=[("fake", FakePlugin())], environ={})
    registry = collect_types(pm)
    raw = {
        "sources": [{"name": "consul", "type": "fake"}],
        "sinks": [{"name": "files", "type": "manifests", "output": str(tmp_path)}],
    }
    app = build_app(load_settings(registry, raw=raw, environ={}), pm, registry, metrics=Metrics())
    source(app).services = {
        s.key: s for s in [service("Web", "10.0.0.1"), service("web", "10.0.0.2")]
    }
    result = await app.runtime.run_once()
    assert result.ok
    services = [
        yaml.safe_load(p.read_text())["metadata"]["name"]
        for p in sorted(tmp_path.glob("network.service.*.yaml"))
    ]
    # the valid name keeps its name; the one that had to be sanitised is suffixed
    assert sorted(services) == ["web", r.suffixed("web", "Web")]
