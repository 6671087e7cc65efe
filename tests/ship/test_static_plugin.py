"""docs/examples/consul-sync-static: a third-party plugin, installed as a user would.

The package is installed with pip (no network: ``--no-deps``, and the
interpreter's own setuptools with ``--no-build-isolation``) into a
temporary ``--target`` directory, from a copy so that the build leaves
nothing in the repository. consul-sync then runs in a subprocess with that
directory on ``PYTHONPATH``: it finds the plugin through its entry point,
exactly as after ``pip install consul-sync-static``, and nothing is left
installed in the test environment afterwards.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from packaging.version import Version

from tests.ship.dockerfile import ROOT

EXAMPLE = ROOT / "docs" / "examples" / "consul-sync-static"
PLUGINS_DOC = ROOT / "docs" / "plugins.md"

CONFIG = """\
namespace = "network"
log_format = "text"

[[sources]]
name = "lab"
type = "static"
services = [
  { name = "nas", port = 5000, addresses = ["192.0.2.10", "192.0.2.11"] },
  { name = "printer", port = 631, port_name = "ipp", addresses = ["192.0.2.20"] },
]

[[sinks]]
name = "manifests"
type = "manifests"
"""


def can_build_here() -> bool:
    """Whether the running interpreter can build the package itself (no
    network): setuptools, with bdist_wheel built in (70.1+) or from ``wheel``.
    Otherwise pip fetches the build backend into an isolated environment, as
    it does for consul-sync itself in CI."""
    try:
        setuptools_version = Version(importlib.metadata.version("setuptools"))
    except importlib.metadata.PackageNotFoundError:
        return False
    return setuptools_version >= Version("70.1") or importlib.util.find_spec("wheel") is not None


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    work = tmp_path_factory.mktemp("static-plugin")
    source = work / "src"
    shutil.copytree(
        EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    target = work / "site"
    isolation = ["--no-build-isolation"] if can_build_here() else []
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", *isolation),
            *("--target", str(target), str(source)),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    yield target


def consul_sync(
    site: Path, *args: str, cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "consul-sync"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "consul_sync"]
    environ = {**os.environ, "PYTHONPATH": str(site), "CONSUL_SYNC_DISABLE_PLUGINS": "", **env}
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        env=environ,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def test_installed_layout(site: Path) -> None:
    assert (site / "consul_sync_static" / "plugin.py").is_file()
    entry_points = next(site.glob("consul_sync_static-*.dist-info")) / "entry_points.txt"
    assert entry_points.read_text(encoding="utf-8").split() == [
        "[consul_sync]",
        "static",
        "=",
        "consul_sync_static.plugin",
    ]


def test_plugins_lists_it_with_distribution_and_version(site: Path) -> None:
    result = consul_sync(site, "plugins")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    at = lines.index("static  (consul-sync-static 0.1.0)")
    assert lines[at + 1] == "  source types: static"
    assert lines[at + 2] == "  hooks:        consul_sync_add_source_types"
    # The built-in plugins are still there.
    assert any(line.startswith("consul  (consul-sync ") for line in lines)


def test_run_once_with_the_manifests_sink(site: Path, tmp_path: Path) -> None:
    config = tmp_path / "static.toml"
    config.write_text(CONFIG, encoding="utf-8")
    result = consul_sync(site, "--config", str(config), "run", "--once")
    assert result.returncode == 0, result.stderr
    documents = [d for d in yaml.safe_load_all(result.stdout) if d]
    by_kind_name = {(d["kind"], d["metadata"]["name"]): d for d in documents}
    assert sorted(by_kind_name) == [
        ("EndpointSlice", "nas-v4-5000"),
        ("EndpointSlice", "printer-v4-631"),
        ("Service", "nas"),
        ("Service", "printer"),
    ]
    nas = by_kind_name[("Service", "nas")]
    assert nas["metadata"]["namespace"] == "network"
    assert nas["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "consul-sync"
    assert nas["metadata"]["annotations"]["consul-sync.io/sources"] == "lab"
    assert nas["spec"]["clusterIP"] == "None"
    assert nas["spec"]["ports"] == [{"name": "http", "port": 5000, "protocol": "TCP"}]
    slice_ = by_kind_name[("EndpointSlice", "nas-v4-5000")]
    assert slice_["metadata"]["labels"]["kubernetes.io/service-name"] == "nas"
    assert slice_["addressType"] == "IPv4"
    assert [e["addresses"] for e in slice_["endpoints"]] == [["192.0.2.10"], ["192.0.2.11"]]
    assert all(e["conditions"]["ready"] for e in slice_["endpoints"])
    assert slice_["ports"] == [{"name": "http", "port": 5000, "protocol": "TCP"}]
    printer = by_kind_name[("Service", "printer")]
    assert printer["spec"]["ports"] == [{"name": "ipp", "port": 631, "protocol": "TCP"}]


def test_bad_entries_are_reported_with_their_key_path(site: Path, tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(
        "[[sources]]\n"
        'type = "static"\n'
        "services = [\n"
        '  { name = "nas", port = 70000 },\n'
        '  { name = "web", port = "http" },\n'
        '  { name = "dns", port = 53, protocol = "QUIC" },\n'
        '  { name = "web", port = 80, colour = "red" },\n'
        "]\n"
        "[[sinks]]\n"
        'type = "manifests"\n',
        encoding="utf-8",
    )
    result = consul_sync(site, "--config", str(config), "check-config")
    assert result.returncode == 1
    problems = [line.strip() for line in result.stderr.splitlines()[1:]]
    assert problems == [
        "sources[0].services[0]: port must be 1-65535, got 70000",
        "sources[0].services[1].port: expected a whole number, got 'http'",
        "sources[0].services[2]: protocol must be one of TCP, UDP, SCTP, got 'QUIC'",
        "sources[0].services[3]: unknown key(s): colour",
    ]


def test_a_name_twice_is_refused(site: Path, tmp_path: Path) -> None:
    config = tmp_path / "twice.toml"
    config.write_text(
        '[[sources]]\ntype = "static"\n'
        'services = [{ name = "web", port = 80 }, { name = "web", port = 81 }]\n'
        '[[sinks]]\ntype = "manifests"\n',
        encoding="utf-8",
    )
    result = consul_sync(site, "--config", str(config), "check-config")
    assert result.returncode == 1
    assert "sources[0].services: each name may appear once; repeated: web" in result.stderr


def test_blocking_the_plugin_by_its_entry_point_name(site: Path, tmp_path: Path) -> None:
    config = tmp_path / "static.toml"
    config.write_text(CONFIG, encoding="utf-8")
    result = consul_sync(
        site, "--config", str(config), "check-config", CONSUL_SYNC_DISABLE_PLUGINS="static"
    )
    assert result.returncode == 1
    assert "sources[0].type: unknown source type 'static'" in result.stderr


# --- the walkthrough in docs/plugins.md shows this package as it is ---------------


def walkthrough() -> str:
    text = PLUGINS_DOC.read_text(encoding="utf-8")
    start = text.index("## Walkthrough: consul-sync-static")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_walkthrough_quotes_the_package_verbatim() -> None:
    """Every code block that starts with a ``# <path>`` comment naming a file of
    the package is a verbatim excerpt of that file."""
    blocks = re.findall(r"```(?:python|toml)\n(.*?)```", walkthrough(), re.S)
    quoted = 0
    for block in blocks:
        first, _, rest = block.partition("\n")
        match = re.fullmatch(r"# (docs/examples/consul-sync-static/\S+)", first.strip())
        if not match:
            continue
        quoted += 1
        source = (ROOT / match.group(1)).read_text(encoding="utf-8")
        assert rest.strip() in source, f"the excerpt of {match.group(1)} is out of date"
    assert quoted >= 3


def test_walkthrough_config_and_output_are_the_tested_ones() -> None:
    section = walkthrough()
    assert CONFIG.replace('log_format = "text"\n', "") in section
    assert "static  (consul-sync-static 0.1.0)" in section
    assert "name: nas-v4-5000" in section


def test_hook_sections_are_kept() -> None:
    text = PLUGINS_DOC.read_text(encoding="utf-8")
    for hook in (
        "consul_sync_add_source_types",
        "consul_sync_add_sink_types",
        "consul_sync_transform_service",
        "consul_sync_started",
        "consul_sync_after_apply",
        "consul_sync_stopping",
    ):
        assert f"### `{hook}`" in text
