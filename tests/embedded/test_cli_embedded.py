"""The embedded default end to end: file source -> manifests sink, via the CLI."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from consul_sync.cli import main

ROOT = Path(__file__).resolve().parents[2]
#: Generous: conditions are waited for, never timed.
DEADLINE = 60.0


def config(
    tmp_path: Path, output: str = "-", source_dir: Path | None = None, extra: str = ""
) -> Path:
    path = tmp_path / "consul-sync.toml"
    path.write_text(
        f'{extra}\n[[sources]]\nname = "files"\ntype = "file"\n'
        f'path = "{source_dir or ROOT / "consul-server" / "consul.d"}"\n'
        f'[[sinks]]\nname = "out"\ntype = "manifests"\noutput = "{output}"\n'
    )
    return path


def kinds(documents) -> list[tuple[str, str]]:
    return [(d["kind"], d["metadata"]["name"]) for d in documents]


def test_readme_first_command_renders_each_tagged_example(tmp_path) -> None:
    out = io.StringIO()
    code = main(
        ["--config", str(ROOT / "examples" / "local.toml"), "run", "--once"], environ={}, stdout=out
    )
    assert code == 0
    # run --once prints through the sink to the real stdout; render prints to `out`
    out = io.StringIO()
    os.chdir(ROOT)
    assert main(["--config", "examples/local.toml", "render"], environ={}, stdout=out) == 0
    documents = list(yaml.safe_load_all(out.getvalue()))
    assert kinds(documents) == [
        ("Service", "homeassistant"),
        ("EndpointSlice", "homeassistant-v4-8123"),
        ("Service", "plex"),
        ("EndpointSlice", "plex-v4-32400"),
    ]
    service = documents[2]
    assert service["spec"]["clusterIP"] == "None"
    assert service["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "consul-sync"
    slice_ = documents[3]
    assert slice_["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] == "consul-sync"
    assert slice_["metadata"]["labels"]["kubernetes.io/service-name"] == "plex"
    assert slice_["endpoints"][0]["addresses"] == ["10.0.10.100"]
    assert "grafana" not in out.getvalue()  # untagged example


def test_run_once_prints_the_objects(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "consul_sync", "--config", str(config(tmp_path)), "run", "--once"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "LOG_FORMAT": "json"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    documents = list(yaml.safe_load_all(result.stdout))
    assert [d["kind"] for d in documents] == ["Service", "EndpointSlice"] * 2
    # logs are JSON lines on stderr
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert any(e["msg"].startswith("ready") for e in lines)
    assert all({"time", "level", "logger", "msg"} <= set(e) for e in lines)


def test_directory_output_plans_writes_and_prunes_only_its_own(tmp_path) -> None:
    registrations = tmp_path / "consul.d"
    shutil.copytree(ROOT / "consul-server" / "consul.d", registrations)
    out_dir = tmp_path / "manifests"
    path = config(tmp_path, output=str(out_dir), source_dir=registrations)
    text = io.StringIO()
    assert main(["--config", str(path), "plan"], environ={}, stdout=text) == 2
    assert text.getvalue().splitlines() == [
        "out: create network/homeassistant (1 endpoints)",
        '    + ports[http]: {port: 8123, protocol: "TCP"}',
        '    + endpoints[10.0.10.100]: {address: "10.0.10.100", ready: true}',
        '    + tags: "kubernetes"',
        '    + sources: "files"',
        "out: create network/plex (1 endpoints)",
        '    + ports[http]: {port: 32400, protocol: "TCP", app_protocol: "http"}',
        '    + endpoints[10.0.10.100]: {address: "10.0.10.100", ready: true}',
        '    + tags: "kubernetes"',
        '    + meta[k8s-app-protocol]: "http"',
        '    + sources: "files"',
    ]
    assert main(["--config", str(path), "run", "--once"], environ={}) == 0
    files = sorted(p.name for p in out_dir.iterdir())
    assert files == [
        "network.endpointslice.homeassistant-v4-8123.yaml",
        "network.endpointslice.plex-v4-32400.yaml",
        "network.service.homeassistant.yaml",
        "network.service.plex.yaml",
    ]
    # nothing changed: plan says so, exit 0, and a run rewrites nothing
    text = io.StringIO()
    assert main(["--config", str(path), "plan"], environ={}, stdout=text) == 0
    assert text.getvalue() == "no changes\n"
    stamps = {p: p.stat().st_mtime_ns for p in out_dir.iterdir()}
    assert main(["--config", str(path), "run", "--once"], environ={}) == 0
    assert {p: p.stat().st_mtime_ns for p in out_dir.iterdir()} == stamps
    # a foreign Service file with a desired name is left alone and reported
    foreign = out_dir / "network.service.foreign.yaml"
    foreign.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "grafana", "namespace": "network"},
            }
        )
    )
    (registrations / "grafana.json").write_text(
        json.dumps(
            {
                "service": {
                    "name": "grafana",
                    "tags": ["kubernetes"],
                    "port": 3000,
                    "address": "10.0.10.100",
                }
            }
        )
    )
    text = io.StringIO()
    assert main(["--config", str(path), "plan"], environ={}, stdout=text) == 0
    assert "out: conflict network/grafana (exists, not ours: left alone)" in text.getvalue()
    # a deregistration prunes our files only
    (registrations / "plex.json").unlink()
    assert main(["--config", str(path), "run", "--once"], environ={}) == 0
    files = sorted(p.name for p in out_dir.iterdir())
    assert files == [
        "network.endpointslice.homeassistant-v4-8123.yaml",
        "network.service.foreign.yaml",
        "network.service.homeassistant.yaml",
    ]


def test_a_broken_registration_file_fails_run_once_but_loses_nothing(tmp_path) -> None:
    registrations = tmp_path / "consul.d"
    shutil.copytree(ROOT / "consul-server" / "consul.d", registrations)
    out_dir = tmp_path / "manifests"
    path = config(tmp_path, output=str(out_dir), source_dir=registrations)
    assert main(["--config", str(path), "run", "--once"], environ={}) == 0
    (registrations / "plex.json").write_text("{ not json")
    assert main(["--config", str(path), "run", "--once"], environ={}) == 1
    assert (out_dir / "network.service.plex.yaml").exists()  # nothing pruned


def test_sigterm_exits_cleanly_within_the_bound(tmp_path) -> None:
    # The bound is an hour: a stop that waited for it, rather than for what
    # is in flight, would miss the deadline below.
    path = config(
        tmp_path,
        output=str(tmp_path / "out"),
        extra='metrics_addr = "127.0.0.1:0"\nshutdown_timeout = "1h"',
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "consul_sync", "--config", str(path), "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + DEADLINE
        while not (tmp_path / "out" / "network.service.plex.yaml").exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=DEADLINE)  # one signal is enough
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0
    assert "stopped" in (proc.stderr.read() if proc.stderr else "")


def test_missing_consul_addr_is_one_clear_message(capsys) -> None:
    code = main(["check-config"], environ={"CONSUL_SYNC_DISABLE_PLUGINS": ""})
    err = capsys.readouterr().err
    assert code == 1
    assert "invalid configuration (environment)" in err
    assert "the Consul address is required: set CONSUL_ADDR (or CONSUL_HTTP_ADDR)" in err
