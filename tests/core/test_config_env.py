"""Every setting an environment variable can set: an invalid value is
refused by ``check-config``, and the message names the variable.

The table must list every variable of every registered type (a new one
fails :func:`test_the_table_covers_every_variable` until it has a row):
either a value that is invalid for it, or why no value is.
"""

from __future__ import annotations

import io
from pathlib import Path

import attrs
import pytest

from consul_sync.cli import main
from consul_sync.config import Settings, env_names, load_settings
from consul_sync.errors import ConfigError
from consul_sync.plugins import collect_types, make_plugin_manager

BASE = {"CONSUL_ADDR": "127.0.0.1:8500", "KUBECONFIG": "", "CONSUL_SYNC_DISABLE_PLUGINS": ""}

#: variable -> an invalid value (str), or why no value is invalid (None, reason)
INVALID: dict[str, str | tuple[None, str]] = {
    # global settings
    "TARGET_NAMESPACE": "Not_A_Namespace",
    "METRICS_ADDR": "foo:bar",
    "RESYNC_INTERVAL": "five",
    "SYNC_POLICY": "yolo",
    "MAX_PRUNE_FRACTION": "2",
    "PRUNE_WINDOW": "soon",
    "COALESCE_WINDOW": "-1s",
    "SHUTDOWN_TIMEOUT": "ten",
    "RETRY_BASE": "0",
    "RETRY_MAX": "later",
    "LOG_FORMAT": "xml",
    "LOG_LEVEL": "loud",
    # the kubernetes plugin's types (and default_env)
    "ENABLE_HTTPROUTES": "maybe",
    "KUBECONFIG": "/nonexistent/kubeconfig",
    "KUBE_CONTEXT": "no-such-context",  # with a valid KUBECONFIG, see CONTEXT
    "INSTANCE_NAME": "Not_A_Name",
    "OWNER_ID": (None, "any string is an owner id"),
    "MAX_ENDPOINTS_PER_SLICE": "1001",
    "KUBE_CONCURRENCY": "-1",
    "LEADER_ELECT": "maybe",
    "LEADER_ELECT_LEASE_DURATION": "1s",
    "LEADER_ELECT_RENEW_DEADLINE": "20s",
    "LEADER_ELECT_RETRY_PERIOD": "1h",
    "POD_NAME": (None, "any string is a leader-election identity"),
    # the gateway sink
    "DOMAIN_SUFFIX": "Not A Domain",
    "INTERNAL_GATEWAY": "Envoy_Internal",
    "EXTERNAL_GATEWAY": "envoy external",
    "INTERNAL_TAG": (None, "any string is a Consul tag"),
    "EXTERNAL_TAG": (None, "any string is a Consul tag"),
    "GATEWAY_NAMESPACE": "Gateways!",
    "GATEWAY_LISTENER": "HTTPS_443",
    # the consul source
    "CONSUL_ADDR": "ftp://consul",
    "CONSUL_HTTP_ADDR": "consul:99999",
    "CONSUL_TOKEN": (None, "any string is a token (Consul says if it is unknown)"),
    "CONSUL_HTTP_TOKEN": (None, "any string is a token (Consul says if it is unknown)"),
    "CONSUL_HTTP_TOKEN_FILE": "/nonexistent/token",
    "CONSUL_CACERT": "/nonexistent/ca.pem",
    "CONSUL_CAPATH": "/nonexistent/cas",
    "CONSUL_CLIENT_CERT": "/nonexistent/client.pem",
    "CONSUL_CLIENT_KEY": "/nonexistent/client-key.pem",
    "CONSUL_TLS_SERVER_NAME": "not a host",
    "CONSUL_HTTP_SSL_VERIFY": "sometimes",
    "CONSUL_DATACENTER": (None, "any string names a datacenter (Consul says if it is unknown)"),
    "CONSUL_NAMESPACE": (None, "any string names a namespace (Consul says if it is unknown)"),
    "CONSUL_PARTITION": (None, "any string names a partition (Consul says if it is unknown)"),
    "CONSUL_TAG": (None, "any string is a tag; empty means every service"),
    "CONSUL_FILTER": (None, "Consul parses the filter expression and says what is wrong"),
    "CONSUL_CONSISTENCY": "eventual",
    "CONSUL_WAIT": "11m",
    "CONSUL_WARNING_READY": "perhaps",
    "CONSUL_INCLUDE_UNHEALTHY": "perhaps",
    "CONSUL_INCLUDE_PROXIES": "perhaps",
    "CONSUL_MAX_CONNECTIONS": "2",
    "CONSUL_HTTP2": "perhaps",
}

KUBECONFIG = (
    "apiVersion: v1\nkind: Config\ncurrent-context: ctx\n"
    "contexts: [{name: ctx, context: {cluster: c}}]\n"
    "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:6443'}}]\n"
)


def variables() -> set[str]:
    registry = collect_types(make_plugin_manager(environ={}))
    found = {name for f in attrs.fields(Settings) for name in env_names(f)}
    for table in (registry.sources, registry.sinks):
        for cls in table.values():
            found.update(name for f in attrs.fields(cls.Config) for name in env_names(f))
            if getattr(cls, "default_env", None):
                found.add(cls.default_env[0])
    return found


def test_the_table_covers_every_variable() -> None:
    have = variables()
    assert not have - set(INVALID), f"add a row for: {sorted(have - set(INVALID))}"
    assert not set(INVALID) - have, f"no such setting: {sorted(set(INVALID) - have)}"


def test_the_defaults_pass() -> None:
    registry = collect_types(make_plugin_manager(environ={}))
    load_settings(registry, environ=BASE)


CASES = sorted((name, value) for name, value in INVALID.items() if isinstance(value, str))


@pytest.mark.parametrize(("variable", "value"), CASES, ids=[name for name, _ in CASES])
def test_an_invalid_value_is_named_by_its_variable(
    variable: str, value: str, tmp_path: Path
) -> None:
    env = dict(BASE)
    if variable == "KUBE_CONTEXT":
        (tmp_path / "kubeconfig").write_text(KUBECONFIG)
        env["KUBECONFIG"] = str(tmp_path / "kubeconfig")
    if variable.startswith("CONSUL_HTTP_"):  # CONSUL_ADDR, CONSUL_TOKEN win over these
        env.pop(variable.replace("CONSUL_HTTP_", "CONSUL_"), None)
    env[variable] = value
    registry = collect_types(make_plugin_manager(environ={}))
    with pytest.raises(ConfigError) as caught:
        load_settings(registry, environ=env)
    problems = caught.value.problems
    assert any(p.startswith(f"{variable}:") for p in problems), problems
    # ... and not by a key path of the default layout the operator never wrote
    assert not any(p.startswith(("sources[", "sinks[", "Settings")) for p in problems), problems


def test_check_config_prints_the_operators_words(capsys: pytest.CaptureFixture[str]) -> None:
    env = {**BASE, "RESYNC_INTERVAL": "five", "KUBE_CONCURRENCY": "-1", "METRICS_ADDR": "foo:bar"}
    assert main(["check-config"], environ=env, stdout=io.StringIO()) == 1
    err = capsys.readouterr().err
    assert '  RESYNC_INTERVAL: expected a duration like 5m, got "five"\n' in err
    assert "  KUBE_CONCURRENCY: concurrency must be at least 1, got -1\n" in err
    assert '  METRICS_ADDR: expected host:port or :port, got "foo:bar"' in err


def test_a_broken_kubeconfig_is_one_configuration_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "kubeconfig"
    broken.write_text("apiVersion: v1\nclusters: [{name: a, cluster: {server: x}\n")
    for command in (["check-config"], ["run"]):
        env = {**BASE, "KUBECONFIG": str(broken)}
        assert main(command, environ=env, stdout=io.StringIO()) == 1
        lines = [line.strip() for line in capsys.readouterr().err.splitlines()[1:]]
        assert len(lines) == 1, lines
        assert lines[0].startswith(f"KUBECONFIG: {broken}: not a valid kubeconfig: ")
        assert "while parsing a flow mapping" in lines[0] and "(line 3, column 1)" in lines[0]


def test_a_file_value_is_named_by_its_key_path_and_the_variable_it_took(
    tmp_path: Path,
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        'metrics_addr = "${ADDR}"\nresync_interval = "five"\n'
        '[[sources]]\ntype = "consul"\naddress = "127.0.0.1:8500"\n'
        'token_file = "${TOKEN_FILE}"\n'
        '[[sinks]]\ntype = "manifests"\n'
    )
    registry = collect_types(make_plugin_manager(environ={}))
    env = {"ADDR": "foo:bar", "TOKEN_FILE": "/nonexistent/token", "RETRY_BASE": "0"}
    with pytest.raises(ConfigError) as caught:
        load_settings(registry, path=config, environ=env)
    problems = caught.value.problems
    assert 'resync_interval: expected a duration like 5m, got "five"' in problems
    assert any(p.startswith("metrics_addr (from ${ADDR}): expected host:port") for p in problems)
    assert "sources[0].token_file (from ${TOKEN_FILE}): /nonexistent/token: no such file" in (
        problems
    )
    # a global the file leaves out still comes from the environment, named so
    assert any(p.startswith("RETRY_BASE: ") for p in problems), problems
