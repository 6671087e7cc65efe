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
from consul_sync_kubernetes import naming as n
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
    assert sorted(services) == ["web", n.suffixed("web", "Web")]


def _files_app(tmp_path: Path, *sources: str):  # type: ignore[no-untyped-def]
    pm = make_plugin_manager(plugins=[("fake", FakePlugin())], environ={})
    registry = collect_types(pm)
    raw = {
        "sources": [{"name": name, "type": "fake"} for name in sources],
        "sinks": [{"name": "files", "type": "manifests", "output": str(tmp_path)}],
    }
    return build_app(load_settings(registry, raw=raw, environ={}), pm, registry, metrics=Metrics())


async def test_sources_are_recorded_per_slice_and_read_back(tmp_path: Path) -> None:
    app = _files_app(tmp_path, "consul-a", "consul-b")
    a, b = app.runtime.sources
    a.services = {s.key: s for s in [service("web", "10.0.0.1", source="consul-a")]}  # type: ignore[attr-defined]
    b.services = {s.key: s for s in [service("web", "10.0.0.2", source="consul-b")]}  # type: ignore[attr-defined]
    assert (await app.runtime.run_once()).ok
    slices = {
        yaml.safe_load(p.read_text())["metadata"]["annotations"][r.SOURCE_ANNOTATION]
        for p in tmp_path.glob("network.endpointslice.*.yaml")
    }
    assert slices == {"consul-a", "consul-b"}
    # a new run reads the files back, attribution included: nothing to write
    again = _files_app(tmp_path, "consul-a", "consul-b")
    for old, new in zip(app.runtime.sources, again.runtime.sources, strict=True):
        new.services = old.services  # type: ignore[attr-defined]
    plans = await again.runtime.plan_only()
    assert plans["files"].empty


async def test_a_change_of_case_keeps_the_file(tmp_path: Path) -> None:
    app = _files_app(tmp_path, "consul")
    source(app).services = {s.key: s for s in [service("web", "10.0.0.1")]}
    assert (await app.runtime.run_once()).ok
    again = _files_app(tmp_path, "consul")
    source(again).services = {s.key: s for s in [service("Web", "10.0.0.1")]}
    assert (await again.runtime.run_once()).ok
    obj = yaml.safe_load((tmp_path / "network.service.web.yaml").read_text())
    assert n.service_key(obj) == ("network", "Web")
    assert (tmp_path / "network.endpointslice.web-v4-8080.yaml").exists()
