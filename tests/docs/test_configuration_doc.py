"""docs/configuration.md cannot drift from the settings classes.

Every key of the global settings and of every registered source and sink
type must have a row in its section, with its environment variable(s) and
its default exactly as the code has them.  When this fails it prints the
rows the document should contain.
"""

from __future__ import annotations

import enum
import re
from pathlib import Path
from typing import Any

import attrs

from consul_sync.config import Duration, Settings, env_names, format_duration
from consul_sync.plugins import collect_types, make_plugin_manager

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def default_text(field: attrs.Attribute[Any]) -> str:
    default = field.default
    if default is attrs.NOTHING:
        return "required"
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        default = default.factory()
    if default is None or default == () or default == "":
        return "—"
    if isinstance(default, Duration):
        return f"`{format_duration(default)}`"
    if isinstance(default, enum.Enum):
        return f"`{default.value}`"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, tuple):
        return "`" + ",".join(map(str, default)) + "`"
    return f"`{default}`"


def row(field: attrs.Attribute[Any]) -> str:
    envs = ", ".join(f"`{name}`" for name in env_names(field)) or "—"
    return f"| `{field.name}` | {envs} | {default_text(field)} |"


def sections() -> dict[str, list[str]]:
    registry = collect_types(make_plugin_manager(environ={}))
    wanted = {
        "Global settings": [
            row(f) for f in attrs.fields(Settings) if f.name not in ("sources", "sinks")
        ]
    }
    for kind, table in (("Source", registry.sources), ("Sink", registry.sinks)):
        for name, cls in sorted(table.items()):
            wanted[f"{kind} `{name}`"] = [row(f) for f in attrs.fields(cls.Config)]
    return wanted


def doc_sections() -> dict[str, str]:
    text = DOC.read_text()
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def test_every_setting_is_documented_with_its_variable_and_default() -> None:
    have = doc_sections()
    problems = []
    for title, rows in sections().items():
        body = have.get(title)
        if body is None:
            problems.append(f"missing section '## {title}' with rows:\n" + "\n".join(rows))
            continue
        lines = [line.strip() for line in body.splitlines()]
        for expected in rows:
            if not any(line.startswith(expected) for line in lines):
                problems.append(f"section '{title}' needs a row starting with:\n{expected}")
    assert not problems, "\n\n".join(problems)
