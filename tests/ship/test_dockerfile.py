"""The container image, checked without a Docker engine.

Static checks read the Dockerfile; ``test_build_stage_runs_here`` runs the
build stage's ``RUN`` steps exactly as written (absolute paths re-rooted in
a temporary directory, the build context cut by .dockerignore) and looks at
the virtual environment the final stage would copy.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from consul_sync import __version__
from consul_sync.config import Settings
from consul_sync.health import parse_listen_address
from tests.ship import dockerfile
from tests.ship.dockerfile import ROOT, Stage
from tests.ship.test_lockfile import LOCKFILE, canonical, locked_pins

COMPILERS = ("gcc", "g++", "cc", "clang", "build-essential", "make", "python3-dev", "libc-dev")


def stages() -> tuple[Stage, Stage]:
    _, found = dockerfile.parse()
    assert len(found) == 2, "expected two stages: build and final"
    return found[0], found[1]


def test_both_stages_use_one_slim_python_311_base() -> None:
    args, _ = dockerfile.parse()
    build, final = stages()
    assert build.name == "build"
    # The venv made in the build stage links to the base image's interpreter:
    # the final stage must be the very same image.
    assert build.base == final.base
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", final.base), final.base
    assert "PYTHON_IMAGE" in args


def test_final_stage_runs_as_a_numeric_non_root_user() -> None:
    _, final = stages()
    user = final.last("USER")
    assert user is not None, "the final stage sets no USER: it would run as root"
    match = re.fullmatch(r"(\d+)(?::(\d+))?", user.args)
    assert match, (
        f"USER must be numeric (uid[:gid]) so that runAsNonRoot can verify it: {user.args}"
    )
    assert int(match.group(1)) != 0
    assert match.group(2) is None or int(match.group(2)) != 0
    # Nothing after USER switches back.
    assert final.instructions[-1].keyword in ("ENTRYPOINT", "CMD", "EXPOSE", "USER")
    after = final.instructions[final.instructions.index(user) + 1 :]
    assert all(i.keyword != "RUN" for i in after)


def test_entrypoint_is_the_consul_sync_command() -> None:
    _, final = stages()
    entrypoint = final.last("ENTRYPOINT")
    assert entrypoint is not None
    assert dockerfile.exec_form(entrypoint.args) == ["consul-sync"]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "consul-sync" in pyproject["project"]["scripts"]
    # The venv's bin directory, where the script lives, is on PATH.
    path = next(
        dockerfile.env_pairs(i.args)["PATH"]
        for i in final.all("ENV")
        if "PATH" in dockerfile.env_pairs(i.args)
    )
    assert path.split(":")[0] == "/opt/venv/bin"


def test_exposed_port_is_the_metrics_addr_default() -> None:
    _, final = stages()
    exposed = [i.args for i in final.all("EXPOSE")]
    _, port = parse_listen_address(Settings().metrics_addr)
    assert exposed == [str(port)]


def test_final_stage_has_no_pip_and_no_compiler() -> None:
    build, final = stages()
    runs = [i.args for i in final.all("RUN")]
    text = " ".join(runs)
    assert "pip install" not in text and "pip3 install" not in text
    assert not re.search(r"\b(apt-get|apt|apk|yum|dnf|microdnf)\b", text), runs
    for word in COMPILERS:
        assert not re.search(rf"(^|\s){re.escape(word)}(\s|$)", text), word
    # The base image's pip goes, and so do ensurepip's bundled wheels.
    assert any(
        re.search(r"python -m pip uninstall --yes pip setuptools wheel", run) for run in runs
    ), runs
    assert any("ensurepip/_bundled" in run and "rm -rf" in run for run in runs)
    # What comes from the build stage is the venv alone (pip removed there).
    copies = [i.args for i in final.all("COPY")]
    assert copies == ["--from=build /opt/venv /opt/venv"]
    assert any(
        "/opt/venv/bin/pip uninstall --yes pip setuptools" in i.args for i in build.all("RUN")
    )


def test_oci_labels() -> None:
    _, final = stages()
    labels: dict[str, str] = {}
    for instruction in final.all("LABEL"):
        labels.update(dockerfile.env_pairs(instruction.args))
    assert labels["org.opencontainers.image.source"].startswith("https://github.com/")
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    assert any(i.args.startswith("VERSION=") for i in final.all("ARG"))
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["license"] == labels["org.opencontainers.image.licenses"]


def test_no_architecture_specific_steps() -> None:
    text = dockerfile.DOCKERFILE.read_text(encoding="utf-8")
    instructions = "\n".join(
        line for _, line in dockerfile.logical_lines(text) if not line.startswith("LABEL")
    )
    for word in ("amd64", "x86_64", "arm64", "aarch64", "--platform", "manylinux"):
        assert word not in instructions, word


def test_build_installs_the_lockfile_with_hashes_then_the_wheel_without_deps() -> None:
    build, _ = stages()
    runs = " && ".join(i.args for i in build.all("RUN"))
    steps = [step.strip() for step in runs.split("&&")]
    lock_install = next(s for s in steps if "-r requirements.lock" in s)
    assert "--require-hashes" in lock_install
    wheel_build = next(s for s in steps if " wheel " in f" {s} " and "pip wheel" in s)
    assert "--no-deps" in wheel_build
    wheel_install = next(s for s in steps if re.search(r"pip install .*\.whl", s))
    assert "--no-deps" in wheel_install
    assert steps.index(lock_install) < steps.index(wheel_install)
    copied = [i.args.split()[0] for i in build.all("COPY")]
    assert "requirements.lock" in copied
    assert LOCKFILE.is_file()


def test_dockerignore_keeps_what_the_build_copies_and_nothing_else() -> None:
    build, _ = stages()
    patterns = dockerfile.ignore_patterns()
    files = dockerfile.context_files(patterns)
    for instruction in build.all("COPY"):
        *sources, _dest = shlex.split(instruction.args)
        for raw in sources:
            source = raw.rstrip("/")
            assert any(f == source or f.startswith(source + "/") for f in files), (
                f"{source} is copied but .dockerignore keeps it out of the context"
            )
    assert "core/consul_sync/_version.py" in files
    assert "core/consul_sync/py.typed" in files
    # Secrets, history and bulk stay out.
    for path in (".git/HEAD", ".venv/bin/python", "tests/conftest.py", "consul-server/.env"):
        assert dockerfile.excluded(path, patterns), path
    assert dockerfile.excluded("core/consul_sync/__pycache__/cli.cpython-311.pyc", patterns)
    assert dockerfile.excluded("core/consul_sync.egg-info/PKG-INFO", patterns)


# --- the build stage, run here -------------------------------------------------


def _rebase(command: str, root: Path) -> str:
    """Absolute paths of the image's filesystem, moved under ``root``."""
    return re.sub(r"(?<![\w./-])(/[\w.-]+(?:/[\w.*-]+)*)", lambda m: f"{root}{m.group(1)}", command)


def run_build_stage(root: Path) -> None:
    build, _ = stages()
    patterns = dockerfile.ignore_patterns()
    context = dockerfile.context_files(patterns)
    env = dict(os.environ)
    # `python` in the image is the base interpreter; here it is the one running the tests.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    workdir = root
    for instruction in build.instructions:
        if instruction.keyword == "ENV":
            env.update(dockerfile.env_pairs(instruction.args))
        elif instruction.keyword == "WORKDIR":
            workdir = root / instruction.args.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif instruction.keyword == "COPY":
            *sources, dest = shlex.split(instruction.args)
            assert not any(s.startswith("--") for s in sources), instruction
            target = workdir / dest
            for source in sources:
                chosen = [
                    f for f in context if f == source or f.startswith(source.rstrip("/") + "/")
                ]
                assert chosen, f"COPY {source}: nothing in the build context"
                for name in chosen:
                    if name == source:
                        out = target / Path(name).name if dest.endswith("/") else target
                    else:
                        out = target / Path(name).relative_to(source.rstrip("/"))
                    out.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(ROOT / name, out)
        elif instruction.keyword == "RUN":
            command = _rebase(instruction.args, root)
            result = subprocess.run(
                ["sh", "-c", command],
                cwd=workdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            assert result.returncode == 0, (
                f"line {instruction.line}: {command}\n{result.stdout[-3000:]}\n"
                f"{result.stderr[-3000:]}"
            )
        else:
            raise AssertionError(f"the test does not know how to run {instruction.keyword}")


@pytest.mark.slow
def test_build_stage_runs_here(tmp_path: Path) -> None:
    """About 20 s with a warm pip cache: venv, locked install with hashes,
    wheel build, wheel install, pip check, pip removal."""
    root = tmp_path / "root"
    run_build_stage(root)
    venv = root / "opt" / "venv"
    python = venv / "bin" / "python"

    version = subprocess.run(
        [venv / "bin" / "consul-sync", "--version"], capture_output=True, text=True, check=True
    )
    assert version.stdout.strip() == f"consul-sync {__version__}"
    plugins = subprocess.run(
        [venv / "bin" / "consul-sync", "plugins"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "CONSUL_SYNC_DISABLE_PLUGINS": ""},
    )
    assert f"consul  (consul-sync {__version__})" in plugins.stdout
    assert f"kubernetes  (consul-sync {__version__})" in plugins.stdout

    # Exactly the locked versions, plus consul-sync itself; no pip, no setuptools.
    listing = subprocess.run(
        [
            python,
            "-c",
            "import importlib.metadata as m, json;"
            "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    installed = {canonical(k): v for k, v in json.loads(listing.stdout).items()}
    expected = {**locked_pins(), "consul-sync": __version__}
    assert installed == expected
    assert not list((venv / "bin").glob("pip*"))
    no_pip = subprocess.run([python, "-c", "import pip"], capture_output=True, check=False)
    assert no_pip.returncode != 0
    # The wheel, not the source tree, is what is installed.
    location = subprocess.run(
        [python, "-c", "import consul_sync, consul_sync_consul; print(consul_sync.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    assert str(venv) in location.stdout
