"""A small reader of the repository's Dockerfile and .dockerignore.

No Docker engine runs where the tests run, so the tests read the Dockerfile
(instructions per stage, with line continuations and ``ARG`` defaults
resolved) and run its build-stage ``RUN`` steps themselves.  Only the
instruction forms the Dockerfile uses are understood; anything else fails
loudly rather than being skipped.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import attrs

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


@attrs.frozen
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    args: str  # the rest of the logical line, continuations joined
    line: int


@attrs.frozen
class Stage:
    base: str  # the image after ARG substitution
    name: str | None
    instructions: tuple[Instruction, ...]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None


def logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """Instructions with ``\\`` continuations joined; comments and blanks dropped."""
    buffer: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if buffer and stripped.startswith("#"):  # a comment inside a continuation
            continue
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer.append(stripped[:-1].strip())
            continue
        buffer.append(stripped)
        yield start, " ".join(part for part in buffer if part)
        buffer = []
    if buffer:
        raise ValueError("Dockerfile ends inside a line continuation")


def parse() -> tuple[dict[str, str], list[Stage]]:
    """The Dockerfile's global ``ARG`` defaults and its stages, in order."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    current: list[Instruction] | None = None
    base = name = None
    for number, line in logical_lines(text):
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        args = args.strip()
        if keyword == "FROM":
            if current is not None:
                stages.append(Stage(base or "", name, tuple(current)))
            words = args.split()
            base = substitute(words[0], global_args)
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            current = []
        elif current is None:
            if keyword != "ARG":
                raise ValueError(f"line {number}: only ARG may come before the first FROM")
            key, _, default = args.partition("=")
            global_args[key] = default.strip('"')
        else:
            current.append(Instruction(keyword, args, number))
    if current is not None:
        stages.append(Stage(base or "", name, tuple(current)))
    return global_args, stages


def substitute(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m.group(1) or m.group(2), ""), text)


def exec_form(args: str) -> list[str]:
    """The JSON array of an exec-form ENTRYPOINT/CMD."""
    value = json.loads(args)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"not an exec-form array: {args}")
    return value


def env_pairs(args: str) -> dict[str, str]:
    """``ENV A=1 B="two words"`` as a mapping."""
    pairs = {}
    for word in shlex.split(args):
        key, sep, value = word.partition("=")
        if not sep:
            raise ValueError(f"ENV without '=' is not understood here: {args}")
        pairs[key] = value
    return pairs


# --- .dockerignore -------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out.append(pattern[i : end + 1])
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


@attrs.frozen
class IgnorePattern:
    negated: bool
    text: str
    regex: re.Pattern[str]


def ignore_patterns() -> list[IgnorePattern]:
    """The patterns of .dockerignore, in order."""
    text = DOCKERIGNORE.read_text(encoding="utf-8")
    patterns = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        line = line.removeprefix("!").strip().strip("/")
        patterns.append(IgnorePattern(negated, line, _pattern_regex(line)))
    return patterns


def excluded(path: str, patterns: list[IgnorePattern]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent
    directories decides."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for pattern in patterns:
        if any(pattern.regex.fullmatch(candidate) for candidate in candidates):
            result = not pattern.negated
    return result


def context_files(patterns: list[IgnorePattern], root: Path = ROOT) -> list[str]:
    """Every file under ``root`` that the build context would hold."""
    found: list[str] = []
    for directory, dirnames, filenames in os.walk(root):
        relative_dir = Path(directory).relative_to(root).as_posix()
        prefix = "" if relative_dir == "." else relative_dir + "/"
        # Do not descend into an excluded directory that no "!" pattern reaches into.
        dirnames[:] = [
            d
            for d in dirnames
            if not excluded(prefix + d, patterns)
            or any(p.negated and p.text.startswith(prefix + d + "/") for p in patterns)
        ]
        found.extend(prefix + name for name in filenames if not excluded(prefix + name, patterns))
    return sorted(found)
