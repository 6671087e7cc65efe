"""Shared helpers for the core tests: an app of fake plugins, polling."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio

from consul_sync.cli import App, build_app
from consul_sync.config import load_settings
from consul_sync.metrics import Metrics
from consul_sync.plugins import collect_types, make_plugin_manager
from consul_sync.testing import FakePlugin, FakeSink, FakeSource


def fake_app(*, sources: int = 1, plugins: tuple[Any, ...] = (), **global_settings: Any) -> App:
    """An app whose sources and sinks are the test suite's own fake plugin."""
    pm = make_plugin_manager(plugins=[("fake", FakePlugin()), *plugins], environ={})
    registry = collect_types(pm)
    raw = {
        "coalesce_window": "10ms",
        "retry_base": "50ms",
        "retry_max": "200ms",
        **global_settings,
        "sources": [{"name": f"src{i}", "type": "fake"} for i in range(sources)],
        "sinks": [{"name": "sink", "type": "fake"}],
    }
    settings = load_settings(registry, raw=raw, environ={})
    return build_app(settings, pm, registry, metrics=Metrics())


def source(app: App, index: int = 0) -> FakeSource:
    item = app.runtime.sources[index]
    assert isinstance(item, FakeSource)
    return item


def sink(app: App) -> FakeSink:
    item = app.runtime.sinks[0]
    assert isinstance(item, FakeSink)
    return item


#: Generous: a condition is waited for, never timed (a loaded CI machine is slow,
#: not wrong).  Latency targets live in bench/.
DEADLINE = 30.0


async def until(condition: Callable[[], bool], timeout: float = DEADLINE) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.005)


def metric(app: App, name: str, **labels: str) -> float:
    value = app.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value
