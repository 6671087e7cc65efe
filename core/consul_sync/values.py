"""The value types of settings and the one cattrs converter that reads them.

Durations in Go's syntax (``30s``, ``5m``, ``1h30m``), booleans as an
operator writes them (``true``/``yes``/``1``), strings, integers and floats
that say what they expected when they get something else, and the field
helpers (``setting``, ``secret``) every source, sink and the global
``Settings`` declare their fields with.  :mod:`consul_sync.config` reads
files and the environment through these.
"""

from __future__ import annotations

import enum
import re
import typing
from typing import Any

import attrs
import cattrs

# --- value types -------------------------------------------------------------


class Duration(float):
    """Seconds, written in Go's duration syntax (``30s``, ``5m``, ``1h30m``,
    ``250ms``) or as a plain number of seconds."""

    def __repr__(self) -> str:
        return format_duration(self)


_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


class ValueProblem(ValueError):
    """A value of the right type but wrong form; its text is shown as is."""


class FieldProblem(ValueProblem):
    """A problem with the value of one field (or of several, ``fields``).

    Raised by a Config class's ``__attrs_post_init__`` (or returned by a
    registered config check): the loader names the field as the operator
    set it -- the environment variable, or the key path in the file -- and
    adds the value given when the message does not show it.
    """

    def __init__(self, fields: str | tuple[str, ...], message: str) -> None:
        self.fields = (fields,) if isinstance(fields, str) else tuple(fields)
        super().__init__(message)


class FieldProblems(ValueProblem):
    """Several :class:`FieldProblem` at once (every one is reported)."""

    def __init__(self, problems: list[FieldProblem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


def parse_duration(value: object) -> Duration:
    if isinstance(value, bool):
        raise ValueProblem(f"expected a duration like 5m, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"\d+(\.\d+)?", text):
            seconds = float(text)
        else:
            pos, seconds = 0, 0.0
            for match in _PART.finditer(text):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _UNITS[match.group(2)]
                pos = match.end()
            if not text or pos != len(text):
                raise ValueProblem(f'expected a duration like 5m, got "{value}"')
    else:
        raise ValueProblem(f"expected a duration like 5m, got {value!r}")
    if seconds < 0:
        raise ValueProblem(f'expected a positive duration, got "{value}"')
    return Duration(seconds)


def format_duration(seconds: float) -> str:
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    whole = int(seconds)
    if whole != seconds:
        return f"{seconds:g}s"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return "".join(f"{n}{u}" for n, u in ((hours, "h"), (minutes, "m"), (secs, "s")) if n)


def parse_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _BOOLS:
        return _BOOLS[value.strip().lower()]
    raise ValueProblem(f"expected true or false, got {value!r}")


_BOOLS = {
    "true": True,
    "1": True,
    "yes": True,
    "on": True,
    "false": False,
    "0": False,
    "no": False,
    "off": False,
}


def secret(default: Any = None, *, env: str | tuple[str, ...] | None = None) -> Any:
    """An attrs field whose value is masked in ``check-config`` and logs."""
    return attrs.field(default=default, metadata={"secret": True, "env": env})


def setting(
    default: Any = attrs.NOTHING,
    *,
    env: str | tuple[str, ...] | None = None,
    factory: Any = None,
    help: str = "",
) -> Any:
    """An attrs field with the environment variable(s) that may set it."""
    if factory is not None:
        return attrs.field(factory=factory, metadata={"env": env, "help": help})
    return attrs.field(default=default, metadata={"env": env, "help": help})


# --- the converter -----------------------------------------------------------


def _structure_str(value: object, tp: type) -> str:
    if isinstance(tp, type) and issubclass(tp, enum.Enum):  # a StrEnum is a str too
        return _structure_enum(value, tp)  # type: ignore[return-value]
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise ValueProblem(f"expected a string, got {value!r}")


def _structure_int(value: object, _: type) -> int:
    if isinstance(value, bool):
        raise ValueProblem(f"expected a whole number, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    raise ValueProblem(f"expected a whole number, got {value!r}")


def _structure_float(value: object, _: type) -> float:
    if isinstance(value, bool):
        raise ValueProblem(f"expected a number, got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise ValueProblem(f"expected a number, got {value!r}")


def _is_str_tuple(tp: Any) -> bool:
    return typing.get_origin(tp) is tuple and typing.get_args(tp) in ((str, ...),)


def _structure_str_tuple(value: object, _: type) -> tuple[str, ...]:
    if isinstance(value, str):  # from the environment: comma-separated
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueProblem(f"expected a list of strings, got {value!r}")


def _structure_enum(value: object, tp: type[enum.Enum]) -> enum.Enum:
    try:
        return tp(value)
    except ValueError:
        allowed = ", ".join(repr(member.value) for member in tp)
        raise ValueProblem(f"expected one of {allowed}, got {value!r}") from None


def make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    converter.register_structure_hook(Duration, lambda v, _: parse_duration(v))
    converter.register_structure_hook(bool, lambda v, _: parse_bool(v))
    converter.register_structure_hook(str, _structure_str)
    converter.register_structure_hook(int, _structure_int)
    converter.register_structure_hook(float, _structure_float)
    converter.register_structure_hook_func(_is_str_tuple, _structure_str_tuple)
    converter.register_structure_hook_func(
        lambda tp: isinstance(tp, type) and issubclass(tp, enum.Enum), _structure_enum
    )
    converter.register_unstructure_hook(Duration, format_duration)
    return converter


converter = make_converter()
