"""requirements.lock: the runtime dependencies the image installs, pinned with hashes."""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement
from packaging.version import Version

from tests.ship.dockerfile import ROOT

LOCKFILE = ROOT / "requirements.lock"
DEVELOPMENT_DOC = ROOT / "docs" / "development.md"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_entries() -> dict[str, tuple[str, list[str]]]:
    """``name -> (version, hashes)`` of every requirement in the lockfile."""
    text = LOCKFILE.read_text(encoding="utf-8")
    joined = re.sub(r"\\\n", " ", text)
    entries: dict[str, tuple[str, list[str]]] = {}
    for raw in joined.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        assert not line.startswith("-"), f"options do not belong in the lockfile: {line}"
        # name==version, an environment marker perhaps (msgspec: where it has wheels), hashes
        match = re.fullmatch(
            r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)(?:\s*;[^-]+?)?((?:\s+--hash=\S+)*)", line
        )
        assert match, f"not an exact pin with hashes: {line}"
        hashes = re.findall(r"--hash=(\S+)", match.group(3))
        entries[canonical(match.group(1))] = (match.group(2), hashes)
    return entries


def locked_pins() -> dict[str, str]:
    return {name: version for name, (version, _) in lock_entries().items()}


def runtime_requirements() -> list[Requirement]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return [Requirement(spec) for spec in pyproject["project"]["dependencies"]]


def test_every_runtime_dependency_is_pinned_in_the_lock() -> None:
    pins = locked_pins()
    missing, unsatisfied = [], []
    for requirement in runtime_requirements():
        version = pins.get(canonical(requirement.name))
        if version is None:
            missing.append(requirement.name)
        elif Version(version) not in requirement.specifier:
            unsatisfied.append(f"{requirement.name}=={version} (wants {requirement.specifier})")
    refresh = lock_refresh_command()
    assert not missing, f"not in requirements.lock: {missing}; refresh it: {refresh}"
    assert not unsatisfied, f"stale pins: {unsatisfied}; refresh the lock: {refresh}"


def test_every_pin_has_sha256_hashes() -> None:
    entries = lock_entries()
    assert len(entries) >= len(runtime_requirements())
    for name, (_, hashes) in entries.items():
        assert hashes, f"{name} has no hash: pip --require-hashes would refuse the lock"
        assert all(h.startswith("sha256:") for h in hashes), name


def test_lock_names_no_index_or_local_paths() -> None:
    # The image is built elsewhere: a local --find-links or file:// index in
    # the lock would break that build.
    text = LOCKFILE.read_text(encoding="utf-8")
    assert "file://" not in text
    assert not re.search(r"^\s*--(extra-)?index-url|^\s*--find-links", text, re.M)


def lock_refresh_command() -> str:
    """The pip-compile command recorded in the lock's header."""
    text = LOCKFILE.read_text(encoding="utf-8")
    match = re.search(r"^#\s+(pip-compile .+)$", text, re.M)
    assert match, "requirements.lock has no pip-compile header"
    return match.group(1).strip()


def test_the_refresh_command_is_documented_as_the_lock_records_it() -> None:
    command = lock_refresh_command()
    for flag in ("--generate-hashes", "--strip-extras", "pyproject.toml"):
        assert flag in command
    doc = DEVELOPMENT_DOC.read_text(encoding="utf-8")
    assert "## Dependencies" in doc
    assert command in doc, f"docs/development.md should show: {command}"
