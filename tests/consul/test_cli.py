"""The commands of the issue against the double:
``CONSUL_ADDR=... consul-sync render`` and ``run`` with the manifests sink."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from consul_sync.cli import main
from tests.fakes.consul_double import ConsulDouble

TAG = ["kubernetes"]


@pytest.fixture
def consul() -> Iterator[ConsulDouble]:
    with ConsulDouble(seed=4) as double:
        double.register("plex", service_id="plex-1", address="10.0.10.100", port=32400,
                        tags=TAG, status="passing")  # fmt: skip
        double.register("homeassistant", service_id="ha-1", address="10.0.10.100", port=8123,
                        tags=TAG, status="warning")  # fmt: skip
        double.register("untagged", service_id="u-1", address="10.0.10.100", port=1)
        yield double


def documents(text: str) -> list[dict[str, object]]:
    return [d for d in yaml.safe_load_all(text) if d]


def test_render_with_only_consul_addr(consul: ConsulDouble) -> None:
    out = io.StringIO()
    code = main(["render"], environ={"CONSUL_ADDR": consul.url, "LOG_LEVEL": "error"}, stdout=out)
    assert code == 0
    names = {(d["kind"], d["metadata"]["name"]) for d in documents(out.getvalue())}  # type: ignore[index]
    assert ("Service", "plex") in names
    assert ("Service", "homeassistant") in names
    assert not any(name == "untagged" for _, name in names)


def test_render_also_takes_consul_http_addr(consul: ConsulDouble) -> None:
    out = io.StringIO()
    environ = {"CONSUL_HTTP_ADDR": consul.url.removeprefix("http://"), "LOG_LEVEL": "error"}
    assert main(["render"], environ=environ, stdout=out) == 0
    assert "plex" in out.getvalue()


def test_without_an_address_the_error_names_the_variable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["render"], environ={"LOG_LEVEL": "error"}, stdout=io.StringIO()) == 1
    assert "CONSUL_ADDR" in capsys.readouterr().err


def test_render_fails_when_consul_is_unreachable(tmp_path: Path) -> None:
    with ConsulDouble() as down:
        url = down.url
    code = main(
        ["render"], environ={"CONSUL_ADDR": url, "LOG_LEVEL": "error"}, stdout=io.StringIO()
    )
    assert code == 1


def _config(tmp_path: Path, output: str) -> Path:
    path = tmp_path / "consul-sync.toml"
    path.write_text(
        'log_format = "text"\n'
        "[[sources]]\n"
        'name = "consul"\n'
        'type = "consul"\n'
        'address = "${CONSUL_ADDR}"\n'
        'token = "${CONSUL_TOKEN:-}"\n'
        "[[sinks]]\n"
        'name = "manifests"\n'
        'type = "manifests"\n'
        f'output = "{output}"\n'
    )
    return path


def test_run_once_with_the_manifests_sink(consul: ConsulDouble, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    config = _config(tmp_path, str(out_dir))
    environ = {"CONSUL_ADDR": consul.url, "LOG_LEVEL": "error"}
    assert main(["--config", str(config), "run", "--once"], environ=environ) == 0
    written = "\n".join(p.read_text() for p in sorted(out_dir.iterdir()))
    assert "plex" in written and "homeassistant" in written
    assert "untagged" not in written


def test_check_config_masks_the_token(consul: ConsulDouble, tmp_path: Path) -> None:
    config = _config(tmp_path, "-")
    out = io.StringIO()
    environ = {"CONSUL_ADDR": consul.url, "CONSUL_TOKEN": "my-secret-token"}
    assert main(["--config", str(config), "check-config"], environ=environ, stdout=out) == 0
    assert "my-secret-token" not in out.getvalue()
    assert consul.url in out.getvalue()
