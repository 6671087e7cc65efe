"""Structuring one table of settings into its class, every problem named as the operator wrote it.

cattrs reports what went wrong by attribute and item; this module turns that into lines such as
``RESYNC_INTERVAL: expected a duration like 5m, got "five"`` (a value from the environment, by
its variable), ``sources[1].wait: ...`` (a value from the file, by its key path) or
``sources[0].token_file (from ${TOKEN_FILE}): ...`` (both), and runs a class's own validation on
the fields that did structure, so that every problem is reported at once.
:mod:`consul_sync.config` decides where values come from; this module only names them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs
import cattrs
from cattrs.errors import (
    AttributeValidationNote,
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)

from .values import FieldProblem, FieldProblems, ValueProblem, converter


@attrs.define
class Provenance:
    """Where the values of one class came from, to name them in messages."""

    where: str = ""  #: key path of the table (``sinks[0]``; ``""``: the top)
    body: Mapping[str, Any] = attrs.field(factory=dict)  #: field -> value given
    env: Mapping[str, str] = attrs.field(factory=dict)  #: field -> its variable
    #: full key path -> the variables ``${...}`` put into it
    interpolated: Mapping[str, list[str]] = attrs.field(factory=dict)


def structure(
    cls: type[Any], body: Mapping[str, Any], origin: Provenance, problems: list[str]
) -> Any:
    try:
        return converter.structure(dict(body), cls)
    except ClassValidationError as exc:
        if all(not _noted(e) for e in exc.exceptions):  # the class's own validation
            for own in exc.exceptions:
                problems.extend(class_problem(own, cls, origin))
        else:
            problems.extend(_messages(exc, cls, origin))
            problems.extend(_also_own(exc, cls, body, origin))
    except (IterableValidationError, ForbiddenExtraKeysError) as exc:
        problems.extend(_messages(exc, cls, origin))
    except Exception as exc:  # raised by the class itself: __attrs_post_init__
        problems.extend(class_problem(exc, cls, origin))
    return None


def _also_own(
    exc: ClassValidationError, cls: type[Any], body: Mapping[str, Any], origin: Provenance
) -> list[str]:
    """The class's own validation, run on the fields that structured (the
    others at their defaults): every problem is reported at once, not the
    class's only after its fields' are fixed."""
    failed = set()
    for error in exc.exceptions:
        for note in getattr(error, "__notes__", ()):
            if isinstance(note, AttributeValidationNote):
                failed.add(note.name)
    rest = {k: v for k, v in body.items() if k not in failed}
    try:
        converter.structure(rest, cls)
    except ClassValidationError as again:
        if any(_noted(e) for e in again.exceptions):
            return []  # a required field is among the failed ones
        lines = []
        for own in again.exceptions:
            for problem in own.problems if isinstance(own, FieldProblems) else [own]:
                fields = (
                    problem.fields
                    if isinstance(problem, FieldProblem)
                    else _fields_named(str(problem), cls)[0]
                )
                if not failed & set(fields):  # about a field at its default: not news
                    lines.extend(class_problem(problem, cls, origin))
        return lines
    except Exception:
        return []
    return []


def _noted(exc: BaseException) -> bool:
    """True for an error cattrs tied to an attribute or an item."""
    return any(
        isinstance(note, AttributeValidationNote | IterableValidationNote)
        for note in getattr(exc, "__notes__", ())
    )


def class_problem(exc: BaseException, cls: type[Any], origin: Provenance) -> list[str]:
    """Lines for a problem the class (or a check) found, naming its field(s)."""
    if isinstance(exc, FieldProblems):
        return [line for p in exc.problems for line in class_problem(p, cls, origin)]
    message = str(exc)
    if isinstance(exc, FieldProblem):
        fields, path = exc.fields, exc.fields[0] if len(exc.fields) == 1 else ""
    else:
        fields, stripped = _fields_named(message, cls)
        # "address: ..." names its key; "concurrency must ..." reads as is.
        path = fields[0] if stripped != message else ""
        message = stripped
    return [_line(origin, path, message, fields, cls)]


def _fields_named(message: str, cls: type[Any]) -> tuple[tuple[str, ...], str]:
    """The fields a validator's message is about: the one it starts with
    (``concurrency must be ...``, ``address: ...``; a ``field:`` prefix is
    dropped), else every one it mentions."""
    names = [f.name for f in attrs.fields(cls)]
    lead = re.match(r"([A-Za-z_][A-Za-z0-9_]*)(:\s*|\s)", message)
    if lead and lead.group(1) in names:
        if lead.group(2).startswith(":"):
            message = message[lead.end() :]
        return (lead.group(1),), message
    mentioned = [n for n in names if re.search(rf"\b{re.escape(n)}\b", message)]
    return tuple(mentioned), message


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return value if re.fullmatch(r"-?\d+(\.\d+)?", value.strip()) else f'"{value}"'
    return repr(value)


def _line(
    origin: Provenance, path: str, message: str, fields: tuple[str, ...], cls: type[Any]
) -> str:
    """One problem, named as the operator set the value: the variable, the
    key path, or both (a file value that took a ``${VAR}``)."""
    env_fields = [f for f in fields if f in origin.env]
    if env_fields:
        raw = [origin.body[f] for f in env_fields if f in origin.body]
        if "got" not in message and not any(str(v) in message for v in raw):
            shown = " ".join(_shown(v) for v in raw)
            message = f"{message}, got {shown}" if shown else message
        return ", ".join(origin.env[f] for f in env_fields) + f": {message}"
    full = ".".join(part for part in (origin.where, path) if part)
    taken = origin.interpolated.get(full)
    if not taken and len(fields) == 1:
        taken = origin.interpolated.get(".".join(p for p in (origin.where, fields[0]) if p))
    name = full or origin.where or cls.__name__
    if taken:
        name += " (from " + ", ".join(f"${{{v}}}" for v in taken) + ")"
    return f"{name}: {message}"


def _format(exc: BaseException, tp: type | None) -> str:
    if isinstance(exc, ValueProblem):
        return str(exc)
    if isinstance(exc, ForbiddenExtraKeysError):
        return f"unknown key(s): {', '.join(sorted(exc.extra_fields))}"
    if isinstance(exc, KeyError):
        return "required key missing"
    if isinstance(exc, TypeError | ValueError):
        if tp is None:  # raised by the class itself (an attrs validator): its own words
            return str(exc)
        name = getattr(tp, "__name__", str(tp))
        return f"expected {name}: {exc}"
    return str(exc)


def _messages(exc: Exception, cls: type[Any], origin: Provenance) -> list[str]:
    out = []
    for line in cattrs.transform_error(exc, path="$", format_exception=_format):
        message, _, path = line.rpartition(" @ ")
        path = path.removeprefix("$").lstrip(".")
        field = re.split(r"[.\[]", path, maxsplit=1)[0]
        fields = (field,) if field else ()
        if fields and field not in origin.env:
            out.append(_line(origin, path, message, (), cls))
        else:
            out.append(_line(origin, path, message, fields, cls))
    return out


# --- presenting --------------------------------------------------------------
