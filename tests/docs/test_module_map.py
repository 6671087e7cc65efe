"""The module map in docs/architecture.md and the behaviour table in docs/development.md stay
true: every module of the packages is on the map, and every path the docs name exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {
    "consul_sync": ROOT / "core" / "consul_sync",
    "consul_sync_consul": ROOT / "plugins" / "consul_sync_consul",
    "consul_sync_kubernetes": ROOT / "plugins" / "consul_sync_kubernetes",
    "consul_sync_gateway": ROOT / "plugins" / "consul_sync_gateway",
    "consul_sync_kube": ROOT / "plugins" / "consul_sync_kube",
}
#: Modules with nothing to map: package markers and the version string.
UNMAPPED = {"__init__", "__main__", "_version", "py"}


def _section(text: str, package: str) -> str:
    """The architecture map's part for ``package`` (the core's table comes first)."""
    if package == "consul_sync":
        return text.split("**`consul_sync_consul`**", maxsplit=1)[0]
    return text.split(f"**`{package}`**", 1)[1].split("\n**`", 1)[0]


def test_every_module_is_on_the_architecture_map() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    pieces = text.split("## The pieces", 1)[1].split("\n## ", 1)[0]
    missing = []
    for package, folder in PACKAGES.items():
        named = set(re.findall(r"`([a-z_0-9]+)`", _section(pieces, package)))
        for module in sorted(p.stem for p in folder.glob("*.py")):
            if module not in UNMAPPED and module not in named:
                missing.append(f"{package}.{module}")
    assert not missing, f"modules missing from docs/architecture.md's map: {missing}"


def test_every_path_the_development_guide_names_exists() -> None:
    text = (ROOT / "docs" / "development.md").read_text()
    table = text.split("## Finding your way", 1)[1].split("\n## ", 1)[0]
    missing = []
    for row in table.splitlines():
        folder: Path | None = None  # a bare file name is in the folder named before it
        for token in re.findall(r"`([^`]+)`", row):
            if not token.endswith((".py", "/")) or "*" in token or " " in token:
                continue
            package, _, rest = token.partition("/")
            if package in PACKAGES:
                path = PACKAGES[package] / rest
            elif "/" in token:
                path = ROOT / token
            elif folder is not None:
                path = folder / token
            else:
                missing.append(token)
                continue
            folder = path if token.endswith("/") else path.parent
            if not path.exists():
                missing.append(token)
    assert not missing, f"paths in docs/development.md that do not exist: {missing}"
