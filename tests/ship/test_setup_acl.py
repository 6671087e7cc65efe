"""consul-server/setup-acl.sh against the Consul HTTP double, as ``sh`` runs it.

The script needs curl and a POSIX shell, and uses jq when it is on PATH.
Each run gets a PATH holding only the tools it may use (so "without jq"
really is without jq) and talks to a ``ConsulDouble(acl=True)`` on loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.consul_double import ConsulDouble
from tests.ship.dockerfile import ROOT

SCRIPT = ROOT / "consul-server" / "setup-acl.sh"
#: Everything the script may call besides the shell's built-ins.
TOOLS = ("curl", "sed", "tr", "grep", "head", "sleep")
#: jq is used when present; on a machine without it only the sed parser is tested.
PARSERS = ["sed", "jq"] if shutil.which("jq") else ["sed"]

READ_RULES = 'service_prefix "" { policy = "read" }\nnode_prefix "" { policy = "read" }'


@pytest.fixture(params=PARSERS)
def parser(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def tools(tmp_path: Path, parser: str) -> Path:
    """A directory of the allowed tools, plus jq for the jq runs."""
    directory = tmp_path / f"bin-{parser}"
    directory.mkdir()
    for name in (*TOOLS, "jq") if parser == "jq" else TOOLS:
        found = shutil.which(name)
        assert found, f"{name} is needed to test setup-acl.sh"
        (directory / name).symlink_to(found)
    return directory


@pytest.fixture(params=[False, True], ids=["compact", "pretty"])
def consul(request: pytest.FixtureRequest) -> Iterator[ConsulDouble]:
    # pretty: indented JSON, as a -dev agent answers; compact, as a server does.
    with ConsulDouble(acl=True, pretty=request.param) as double:
        double.register("plex", address="10.0.10.100", port=32400, tags=["kubernetes"])
        yield double
        assert double.errors == []


def run(
    tools: Path, address: str, token: str | None = None, **extra: str
) -> subprocess.CompletedProcess[str]:
    env = {"PATH": str(tools), "CONSUL_HTTP_ADDR": address, "CONSUL_WAIT": "5", **extra}
    if token is not None:
        env["CONSUL_HTTP_TOKEN"] = token
    sh = shutil.which("sh")
    assert sh
    return subprocess.run(
        [sh, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def api(consul: ConsulDouble, token: str) -> httpx.Client:
    return httpx.Client(base_url=consul.url, headers={"X-Consul-Token": token}, timeout=10)


def printed_secrets(stdout: str) -> list[str]:
    return [line.strip() for line in stdout.splitlines() if line.startswith("  ") and "-" in line]


def acl_state(
    consul: ConsulDouble, management: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    with api(consul, management) as client:
        policies = client.get("/v1/acl/policies").json()
        tokens = client.get("/v1/acl/tokens").json()
    return policies, tokens


def test_first_run_bootstraps_and_creates_least_privilege_tokens(
    consul: ConsulDouble, tools: Path, parser: str
) -> None:
    result = run(tools, consul.url)
    assert result.returncode == 0, result.stderr
    assert f"(JSON parsed with {parser})" in result.stderr
    management, read, agent = printed_secrets(result.stdout)
    assert consul.management_token == management
    assert "ACL system bootstrapped" in result.stderr
    # Each secret printed once.
    for secret in (management, read, agent):
        assert result.stdout.count(secret) == 1
        assert secret not in result.stderr

    policies, tokens = acl_state(consul, management)
    by_name = {p["Name"]: p for p in policies}
    assert sorted(by_name) == ["consul-agent", "consul-sync-read", "global-management"]
    with api(consul, management) as client:
        read_policy = client.get(f"/v1/acl/policy/{by_name['consul-sync-read']['ID']}").json()
        agent_policy = client.get(f"/v1/acl/policy/{by_name['consul-agent']['ID']}").json()
    assert read_policy["Rules"] == READ_RULES
    node = consul.node_name
    assert agent_policy["Rules"] == (
        f'node "{node}" {{ policy = "write" }}\n'
        f'agent "{node}" {{ policy = "write" }}\n'
        'service_prefix "" { policy = "write" }'
    )
    descriptions = sorted(t["Description"] for t in tokens)
    assert descriptions == [
        "Anonymous Token",
        "Bootstrap Token (Global Management)",
        "consul agent and registration",
        "consul-sync read-only",
    ]

    # The read token reads everything consul-sync needs and writes nothing.
    with api(consul, read) as client:
        assert "plex" in client.get("/v1/catalog/services").json()
        health = client.get("/v1/health/service/plex").json()
        assert health[0]["Service"]["Port"] == 32400
        denied = client.put(
            "/v1/agent/service/register", json={"Name": "evil", "Port": 1, "Address": "10.0.0.1"}
        )
        assert denied.status_code == 403
        assert client.get("/v1/acl/tokens").status_code == 403
    # The agent token registers services (Registrator, consul.d files), and
    # cannot touch ACLs.
    with api(consul, agent) as client:
        registered = client.put(
            "/v1/agent/service/register",
            json={"Name": "whoami", "Port": 8081, "Address": "10.0.10.100", "Tags": ["kubernetes"]},
        )
        assert registered.status_code == 200, registered.text
        assert client.get("/v1/acl/tokens").status_code == 403

    # It asked the agent to use the agent token for itself and for consul.d services.
    sets = {
        r.path: json.loads(r.body)
        for r in consul.requests
        if r.method == "PUT" and r.path.startswith("/v1/agent/token/")
    }
    assert sets == {
        "/v1/agent/token/agent": {"Token": agent},
        "/v1/agent/token/config_file_service_registration": {"Token": agent},
    }


def test_second_run_asks_for_the_management_token_then_reuses_everything(
    consul: ConsulDouble, tools: Path
) -> None:
    first = run(tools, consul.url)
    assert first.returncode == 0, first.stderr
    management, read, agent = printed_secrets(first.stdout)
    before = acl_state(consul, management)

    again = run(tools, consul.url)
    assert again.returncode == 2
    assert "already bootstrapped" in again.stderr
    assert "CONSUL_HTTP_TOKEN=<management token>" in again.stderr
    assert again.stdout == ""

    resumed = run(tools, consul.url, token=management)
    assert resumed.returncode == 0, resumed.stderr
    assert "already bootstrapped; going on with CONSUL_HTTP_TOKEN" in resumed.stderr
    assert printed_secrets(resumed.stdout) == [read, agent]
    assert management not in resumed.stdout
    assert "re-used" in resumed.stderr

    policies, tokens = acl_state(consul, management)
    assert sorted(p["ID"] for p in policies) == sorted(p["ID"] for p in before[0])
    assert sorted(t["AccessorID"] for t in tokens) == sorted(t["AccessorID"] for t in before[1])

    # A third run changes nothing either.
    third = run(tools, consul.url, token=management)
    assert third.returncode == 0
    assert printed_secrets(third.stdout) == [read, agent]
    assert len(acl_state(consul, management)[1]) == len(tokens)


def test_policy_rules_are_brought_back_when_edited(consul: ConsulDouble, tools: Path) -> None:
    management, _, _ = printed_secrets(run(tools, consul.url).stdout)
    with api(consul, management) as client:
        policy = client.get("/v1/acl/policy/name/consul-sync-read").json()
        edited = client.put(
            f"/v1/acl/policy/{policy['ID']}",
            json={"Name": "consul-sync-read", "Rules": 'service "plex" { policy = "read" }'},
        )
        assert edited.status_code == 200
    assert run(tools, consul.url, token=management).returncode == 0
    with api(consul, management) as client:
        assert client.get("/v1/acl/policy/name/consul-sync-read").json()["Rules"] == READ_RULES


def test_newer_consul_answers_404_for_a_missing_policy(tools: Path) -> None:
    # Consul 1.11+ answers GET /v1/acl/policy/name/<missing> with 404 (1.10: 403
    # "ACL not found", as the double does); the script creates the policy either way.
    with ConsulDouble(acl=True) as consul:
        consul.inject_fault(
            "error",
            times=None,
            path_prefix="/v1/acl/policy/name/",
            method="GET",
            status=404,
            body="Requested policy does not exist: ACL not found",
        )
        result = run(tools, consul.url)
        assert result.returncode == 0, result.stderr
        management = printed_secrets(result.stdout)[0]
        names = sorted(p["Name"] for p in acl_state(consul, management)[0])
        assert names == ["consul-agent", "consul-sync-read", "global-management"]


def test_waits_for_a_leader_and_retries_bootstrap(tools: Path) -> None:
    # Right after `docker compose up -d`: no leader yet, then "No cluster leader".
    with ConsulDouble(acl=True) as consul:
        consul.inject_fault("error", times=2, path_prefix="/v1/status/leader", status=500)
        consul.inject_fault(
            "error", times=1, path_prefix="/v1/acl/bootstrap", status=500, body="No cluster leader"
        )
        result = run(tools, consul.url)
        assert result.returncode == 0, result.stderr
        assert consul.request_count("/v1/status/leader") == 3
        assert consul.request_count("/v1/acl/bootstrap") == 2
        assert printed_secrets(result.stdout)[0] == consul.management_token


def test_address_without_scheme_means_http(tools: Path) -> None:
    with ConsulDouble(acl=True) as consul:
        result = run(tools, f"127.0.0.1:{consul.port}")
        assert result.returncode == 0, result.stderr
        assert f"Consul at http://127.0.0.1:{consul.port}" in result.stderr


def test_a_token_that_is_not_known(tools: Path) -> None:
    with ConsulDouble(acl=True, management_token="the-real-one") as consul:
        result = run(tools, consul.url, token="made-up")
        assert result.returncode == 1
        assert "not a token this Consul knows" in result.stderr
        assert consul.request_count("/v1/acl/policy", method="PUT") == 0


def test_a_token_that_may_not_manage_acls(tools: Path) -> None:
    with ConsulDouble(acl=True, management_token="root") as consul:
        consul.create_policy("reader", 'service_prefix "" { policy = "read" }')
        reader = consul.create_token(["reader"])
        result = run(tools, consul.url, token=reader)
        assert result.returncode == 1
        assert "may not manage ACLs" in result.stderr
        assert consul.request_count("/v1/acl/token", method="PUT") == 0


def test_acls_not_enabled(tools: Path) -> None:
    with ConsulDouble(acl=False) as consul:
        result = run(tools, consul.url)
        assert result.returncode == 1
        assert "ACLs are not enabled" in result.stderr


def test_nothing_listening(tools: Path) -> None:
    with ConsulDouble() as consul:
        address = consul.url
    # The double has stopped: its port refuses connections.
    result = run(tools, address, CONSUL_WAIT="1")
    assert result.returncode == 1
    assert f"no Consul agent answers at {address}" in result.stderr


def test_script_is_a_posix_shell_script() -> None:
    text = SCRIPT.read_text(encoding="utf-8")
    assert text.startswith("#!/bin/sh\n")
    assert os.access(SCRIPT, os.X_OK), "setup-acl.sh must be executable (./setup-acl.sh)"
    for bashism in ("[[ ", "function ", "local ", "pipefail", "$'", "<<<", "declare ", "echo -"):
        assert bashism not in text, bashism
    syntax = subprocess.run(["sh", "-n", str(SCRIPT)], capture_output=True, text=True, check=False)
    assert syntax.returncode == 0, syntax.stderr
