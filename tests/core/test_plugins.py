"""The plugin host: entry points, block list, validation, the author's guide."""

from __future__ import annotations

import io
import re
from pathlib import Path

import attrs
import pluggy
import pytest

from consul_sync import hookimpl, hookspecs
from consul_sync.cli import main
from consul_sync.plugins import collect_types, describe, make_plugin_manager
from consul_sync.registry import RegistrationError
from consul_sync.testing import FakePlugin, FakeSink

ROOT = Path(__file__).resolve().parents[2]


def test_default_plugins_load_from_entry_points() -> None:
    pm = make_plugin_manager(environ={})
    registry = collect_types(pm)
    assert {"consul", "kubernetes"} <= {name for name, _ in pm.list_name_plugin()}
    assert "file" in registry.sources and "manifests" in registry.sinks
    info = {i.name: i for i in describe(pm, registry)}
    assert info["consul"].distribution == "consul-sync"
    assert "file" in info["consul"].source_types
    assert "manifests" in info["kubernetes"].sink_types


def test_block_list_from_the_environment() -> None:
    pm = make_plugin_manager(
        environ={"CONSUL_SYNC_DISABLE_PLUGINS": " kubernetes , fake"},
        plugins=[("fake", FakePlugin())],
    )
    registry = collect_types(pm)
    assert "manifests" not in registry.sinks and "fake" not in registry.sinks
    assert "file" in registry.sources


def test_unknown_hook_is_refused() -> None:
    class Typo:
        @hookimpl
        def consul_sync_add_sauce_types(self, registry):
            pass

    with pytest.raises(pluggy.PluginValidationError):
        make_plugin_manager(plugins=[Typo()], environ={})


def test_type_registration_is_validated() -> None:
    class NoConfig:
        type_name = "broken"

    class Bad:
        @hookimpl
        def consul_sync_add_sink_types(self, registry):
            registry.add_sink_type(NoConfig)

    pm = make_plugin_manager(plugins=[("bad", Bad())], entry_points=False, environ={})
    with pytest.raises(RegistrationError, match="plugin 'bad': sink type NoConfig lacks Config"):
        collect_types(pm)


def test_duplicate_type_names_name_both_plugins() -> None:
    @attrs.frozen
    class C:
        pass

    class Other:
        type_name = "fake"
        Config = C

    class Clash:
        @hookimpl
        def consul_sync_add_sink_types(self, registry):
            registry.add_sink_type(Other)

    pm = make_plugin_manager(
        plugins=[("fake", FakePlugin()), ("clash", Clash())], entry_points=False, environ={}
    )
    with pytest.raises(RegistrationError, match="both plugin 'fake' and plugin 'clash'"):
        collect_types(pm)


def test_plugins_command_lists_entry_point_plugins() -> None:
    out = io.StringIO()
    assert main(["plugins"], environ={}, stdout=out) == 0
    text = out.getvalue()
    assert re.search(r"^consul  \(consul-sync \d", text, re.M)
    assert re.search(r"^kubernetes  \(consul-sync \d", text, re.M)
    assert "source types: file" in text or "source types: consul, file" in text


def test_every_hook_is_in_the_plugin_authors_guide() -> None:
    guide = (ROOT / "docs" / "plugins.md").read_text()
    hooks = [name for name in dir(hookspecs) if name.startswith("consul_sync_")]
    assert len(hooks) >= 6
    missing = [name for name in hooks if f"### `{name}`" not in guide]
    assert missing == [], f"document these hooks in docs/plugins.md: {missing}"


def test_fake_sink_satisfies_the_sink_protocol() -> None:
    from consul_sync.model import Sink

    assert isinstance(FakeSink(), Sink)
