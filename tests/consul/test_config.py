"""Settings of the consul source: environment, file, validation, secrets."""

from __future__ import annotations

import os
from pathlib import Path

import attrs
import pytest

from consul_sync import hookimpl
from consul_sync.config import effective, load_settings
from consul_sync.errors import ConfigError
from consul_sync.plugins import collect_types, make_plugin_manager
from consul_sync.registry import TypeRegistry
from consul_sync_consul import plugin as consul_plugin
from consul_sync_consul.api import TokenSource, format_wait, parse_address
from consul_sync_consul.source import Consistency, ConsulConfig
from consul_sync_consul.watch import next_index
from consul_sync_kubernetes.manifests import ManifestsSink


class _StubSink:
    """Stands for the kubernetes sink of the default layout (another plugin)."""

    type_name = "kubernetes"

    @attrs.frozen
    class Config:
        pass


class _StubPlugin:
    @hookimpl
    def consul_sync_add_sink_types(self, registry: TypeRegistry) -> None:
        registry.add_sink_type(_StubSink)
        registry.add_sink_type(ManifestsSink)


@pytest.fixture(scope="module")
def registry() -> TypeRegistry:
    pm = make_plugin_manager(
        entry_points=False,
        plugins=[("consul", consul_plugin), ("stub", _StubPlugin())],
        environ={},
    )
    return collect_types(pm)


def consul_config(registry: TypeRegistry, environ: dict[str, str]) -> ConsulConfig:
    settings = load_settings(registry, environ=environ)
    (source,) = settings.sources
    assert source.type == "consul"
    config: ConsulConfig = source.config
    return config


def test_default_layout_reads_the_seed_variables(registry: TypeRegistry) -> None:
    config = consul_config(
        registry,
        {
            "CONSUL_ADDR": "http://10.0.10.100:8500",
            "CONSUL_TOKEN": "s3cr3t-token",
            "CONSUL_TAG": "k8s",
        },
    )
    assert config.address == "http://10.0.10.100:8500"
    assert config.token == "s3cr3t-token"
    assert config.tag == "k8s"
    assert config.max_connections == 64
    assert config.consistency is Consistency.DEFAULT


def test_consuls_own_variables_work_too(registry: TypeRegistry, tmp_path: Path) -> None:
    # The files must exist: check-config refuses a path that does not.
    for name in ("token", "ca.pem", "c.pem", "k.pem"):
        (tmp_path / name).write_text("x")
    (tmp_path / "cas").mkdir()
    config = consul_config(
        registry,
        {
            "CONSUL_HTTP_ADDR": "https://consul.example:8501",
            "CONSUL_HTTP_TOKEN": "t0ken-value",
            "CONSUL_HTTP_TOKEN_FILE": f"{tmp_path}/token",
            "CONSUL_CACERT": f"{tmp_path}/ca.pem",
            "CONSUL_CAPATH": f"{tmp_path}/cas",
            "CONSUL_CLIENT_CERT": f"{tmp_path}/c.pem",
            "CONSUL_CLIENT_KEY": f"{tmp_path}/k.pem",
            "CONSUL_TLS_SERVER_NAME": "consul.internal",
            "CONSUL_HTTP_SSL_VERIFY": "false",
            "CONSUL_CONSISTENCY": "stale",
            "CONSUL_WAIT": "2m",
            "CONSUL_MAX_CONNECTIONS": "16",
        },
    )
    assert config.address == "https://consul.example:8501"
    assert config.token == "t0ken-value"
    assert config.token_file == f"{tmp_path}/token"
    assert (config.ca_file, config.ca_path) == (f"{tmp_path}/ca.pem", f"{tmp_path}/cas")
    assert (config.client_cert, config.client_key) == (f"{tmp_path}/c.pem", f"{tmp_path}/k.pem")
    assert config.tls_server_name == "consul.internal"
    assert config.tls_verify is False
    assert config.consistency is Consistency.STALE
    assert config.wait == 120
    assert config.max_connections == 16


def test_missing_address_is_a_clear_config_error(registry: TypeRegistry) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(registry, environ={})
    assert "CONSUL_ADDR" in str(info.value)
    assert "sources[0]" in str(info.value)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"CONSUL_WAIT": "11m"}, "at most 10m"),
        ({"CONSUL_MAX_CONNECTIONS": "2"}, "at least 3"),
        ({"CONSUL_CONSISTENCY": "eventual"}, "'stale'"),
        ({"CONSUL_ADDR": "ftp://x"}, "scheme must be"),
    ],
)
def test_bad_values_are_reported(
    registry: TypeRegistry, environ: dict[str, str], expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(registry, environ={"CONSUL_ADDR": "127.0.0.1:8500", **environ})
    assert expected in str(info.value)


def test_token_is_masked_in_check_config(registry: TypeRegistry) -> None:
    settings = load_settings(
        registry, environ={"CONSUL_ADDR": "127.0.0.1:8500", "CONSUL_TOKEN": "very-secret"}
    )
    assert "very-secret" not in repr(effective(settings))


def test_config_file_source(registry: TypeRegistry) -> None:
    settings = load_settings(
        registry,
        raw={
            "sources": [
                {
                    "name": "dc2",
                    "type": "consul",
                    "address": "unix:///run/consul.sock",
                    "datacenter": "dc2",
                    "consul_namespace": "team-a",
                    "partition": "p1",
                    "filter": 'Service.Meta.env == "prod"',
                    "warning_ready": True,
                    "include_unhealthy": False,
                    "include_proxies": True,
                }
            ],
            "sinks": [{"name": "m", "type": "manifests"}],
        },
        environ={},
    )
    config = settings.sources[0].config
    assert config.datacenter == "dc2"
    assert config.include_unhealthy is False


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:8500", ("http://127.0.0.1:8500", None)),
        ("http://10.0.10.100:8500/", ("http://10.0.10.100:8500", None)),
        ("https://consul.example:8501", ("https://consul.example:8501", None)),
        ("http://[fd00::1]:8500", ("http://[fd00::1]:8500", None)),
        ("unix:///run/consul/http.sock", ("http://consul", "/run/consul/http.sock")),
    ],
)
def test_addresses(address: str, expected: tuple[str, str | None]) -> None:
    assert parse_address(address) == expected


def test_next_index_resets_when_it_goes_backwards_and_never_blocks_on_zero() -> None:
    assert next_index(0, 37) == 37
    assert next_index(37, 38) == 38
    assert next_index(1037, 37) == 0  # recorded: an index ahead returns a smaller one
    assert next_index(37, 0) == 0


def test_wait_is_sent_in_whole_milliseconds() -> None:
    assert format_wait(300) == "300000ms"
    assert format_wait(0.0001) == "1ms"


def test_token_file_is_reread_when_it_changes_and_named_not_shown(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("first-token\n")
    secrets: list[str] = []
    tokens = TokenSource("env-token", str(path), add_secret=secrets.append, environ={})
    assert tokens.current() == "first-token"  # the file wins, as in Consul's CLI
    generation = tokens.generation
    path.write_text("second-token-longer\n")
    assert tokens.current() == "second-token-longer"
    assert tokens.generation == generation + 1
    assert "second-token-longer" in secrets and "env-token" in secrets
    assert str(path) in tokens.describe()
    assert "token" not in tokens.describe().replace("token file", "").replace(str(path), "")
    os.remove(path)
    assert tokens.current() == "second-token-longer"  # keeps the last good token
    assert tokens.file_error is not None


def test_token_source_names_the_variable() -> None:
    tokens = TokenSource("abcd-1234", None, environ={"CONSUL_HTTP_TOKEN": "abcd-1234"})
    assert tokens.describe() == "the token in CONSUL_HTTP_TOKEN"
    assert TokenSource(None, None).describe() == "no token (anonymous access)"
