"""Configuration: the seed's variables, the TOML file, and the error messages."""

from __future__ import annotations

import json

import pytest

from consul_sync.cli import main
from consul_sync.config import (
    Duration,
    effective,
    format_duration,
    load_settings,
    parse_duration,
)
from consul_sync.errors import ConfigError
from consul_sync.plan import Policy
from consul_sync.plugins import collect_types, make_plugin_manager
from consul_sync.testing import FakePlugin


@pytest.fixture
def registry():
    return collect_types(make_plugin_manager(plugins=[("fake", FakePlugin())], environ={}))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("5m", 300),
        ("1h30m", 5400),
        ("250ms", 0.25),
        ("1.5h", 5400),
        ("90", 90),
        (45, 45),
        ("2m30s", 150),
    ],
)
def test_go_durations(text, seconds) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["five", "5 m", "m5", "", "5x", "-5s", True])
def test_bad_durations(bad) -> None:
    with pytest.raises(ValueError, match="expected a"):
        parse_duration(bad)


def test_format_duration_round_trips() -> None:
    for text in ("5m", "1h30m", "30s", "250ms"):
        assert format_duration(parse_duration(text)) == text


def test_seed_defaults_without_a_file(registry) -> None:
    settings = load_settings(
        registry, raw={"sources": [{"type": "fake"}], "sinks": [{"type": "fake"}]}, environ={}
    )
    assert settings.namespace == "network"
    assert settings.metrics_addr == ":8080"
    assert settings.resync_interval == 300
    assert settings.policy is Policy.SYNC
    assert settings.max_prune_fraction == 0.5


def test_seed_variables_are_read(registry) -> None:
    env = {
        "TARGET_NAMESPACE": "edge",
        "METRICS_ADDR": "127.0.0.1:9100",
        "RESYNC_INTERVAL": "1h30m",
        "SYNC_POLICY": "upsert-only",
        "MAX_PRUNE_FRACTION": "0.2",
    }
    settings = load_settings(
        registry, raw={"sources": [{"type": "fake"}], "sinks": [{"type": "fake"}]}, environ=env
    )
    assert (settings.namespace, settings.metrics_addr) == ("edge", "127.0.0.1:9100")
    assert settings.resync_interval == Duration(5400)
    assert settings.policy is Policy.UPSERT_ONLY and settings.max_prune_fraction == 0.2


def test_file_keys_win_over_the_environment(registry, tmp_path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        'namespace = "from-file"\n[[sources]]\ntype = "fake"\n[[sinks]]\ntype = "fake"\n'
    )
    settings = load_settings(
        registry, path=path, environ={"TARGET_NAMESPACE": "env", "RESYNC_INTERVAL": "1m"}
    )
    assert settings.namespace == "from-file"
    assert settings.resync_interval == 60  # not in the file: from the environment


def test_every_problem_is_reported_with_its_key_path(registry) -> None:
    raw = {
        "resync_interval": "five",
        "bogus": 1,
        "policy": "yolo",
        "sources": [
            {"name": "a", "type": "fake"},
            {"name": "b", "type": "nope"},
            {"name": "a", "type": "fake"},
        ],
        "sinks": [{"type": "fake", "concurrency": "many"}],
    }
    with pytest.raises(ConfigError) as info:
        load_settings(registry, raw=raw, environ={})
    problems = info.value.problems
    assert 'resync_interval: expected a duration like 5m, got "five"' in problems
    assert "unknown key(s): bogus" in "\n".join(problems)
    assert any(
        p.startswith("policy: expected one of 'sync', 'upsert-only', 'create-only'")
        for p in problems
    )
    assert any(
        p.startswith("sources[1].type: unknown source type 'nope'; known: ") and "fake" in p
        for p in problems
    )
    assert "sources[2].name: 'a' is used twice; names must be unique" in problems
    assert "sinks[0].concurrency: expected a whole number, got 'many'" in problems


def test_a_source_key_path_points_into_the_list(tmp_path) -> None:
    import attrs

    from consul_sync import hookimpl, setting

    @attrs.frozen
    class WaitConfig:
        wait: Duration = setting(Duration(60))

    class Waiter:
        type_name = "waiter"
        Config = WaitConfig

    class Plugin:
        @hookimpl
        def consul_sync_add_source_types(self, registry):
            registry.add_source_type(Waiter)

    registry = collect_types(make_plugin_manager(plugins=[FakePlugin(), Plugin()], environ={}))
    raw = {
        "sources": [{"type": "waiter"}, {"name": "two", "type": "waiter", "wait": "five"}],
        "sinks": [{"type": "fake"}],
    }
    with pytest.raises(ConfigError) as info:
        load_settings(registry, raw=raw, environ={})
    assert info.value.problems == ['sources[1].wait: expected a duration like 5m, got "five"']


def test_environment_interpolation(registry, tmp_path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        'namespace = "${NS:-fallback}"\nlog_level = "${LEVEL}"\n'
        '[[sources]]\ntype = "fake"\n[[sinks]]\ntype = "fake"\n'
    )
    settings = load_settings(registry, path=path, environ={"LEVEL": "debug"})
    assert (settings.namespace, settings.log_level) == ("fallback", "debug")
    with pytest.raises(ConfigError, match="log_level: environment variable LEVEL is not set"):
        load_settings(registry, path=path, environ={})


def test_unreadable_files_are_clear(registry, tmp_path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_settings(registry, path=tmp_path / "missing.toml", environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("namespace = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(registry, path=bad, environ={})


def test_check_config_masks_secrets_and_bad_config_exits_1(tmp_path, capsys) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[[sources]]\nname = "one"\ntype = "file"\npath = "x"\n[[sinks]]\ntype = "manifests"\n'
    )
    import io

    out = io.StringIO()
    assert main(["--config", str(path), "check-config"], environ={}, stdout=out) == 0
    data = json.loads(out.getvalue())
    assert data["namespace"] == "network" and data["resync_interval"] == "5m"
    assert data["sources"][0] == {
        "name": "one",
        "type": "file",
        "path": "x",
        "tag": "kubernetes",
        "namespace": None,
        "node_address": None,
        "poll_interval": "2s",
    }
    path.write_text(
        'resync_interval = "five"\n[[sources]]\ntype = "file"\n[[sinks]]\ntype = "manifests"\n'
    )
    assert main(["--config", str(path), "check-config"], environ={}, stdout=out) == 1
    err = capsys.readouterr().err
    assert 'resync_interval: expected a duration like 5m, got "five"' in err
    assert "sources[0].path: required key missing" in err


def test_effective_masks_secret_fields() -> None:
    import attrs

    from consul_sync import secret
    from consul_sync.config import Component, Settings

    @attrs.frozen
    class WithToken:
        token: str | None = secret()

    settings = Settings(sources=(Component("c", "x", WithToken("s3cr3t-token")),))
    assert effective(settings)["sources"][0]["token"] == "********"
    assert "s3cr3t" not in json.dumps(effective(settings))


def test_a_validator_in_a_config_class_speaks_for_itself() -> None:
    registry = collect_types(make_plugin_manager(environ={}))
    raw = {
        "sources": [{"type": "file", "path": "x"}],
        "sinks": [{"type": "manifests", "max_endpoints_per_slice": 5000}],
    }
    with pytest.raises(ConfigError) as info:
        load_settings(registry, raw=raw, environ={})
    assert info.value.problems == ["sinks[0]: max_endpoints_per_slice must be 1-1000"]
