"""Settings: environment variables, an optional TOML file, one cattrs converter.

Without ``--config``, consul-sync runs as the seed describes: one ``consul``
source into one ``kubernetes`` sink, configured by environment variables
(``CONSUL_ADDR``, ``CONSUL_TOKEN``, ``CONSUL_TAG``, ``TARGET_NAMESPACE``,
``METRICS_ADDR``, ``RESYNC_INTERVAL``, ...).  Each source and sink type
declares which variables feed which of its fields (field metadata ``env``).

With ``--config FILE`` the file declares named ``[[sources]]`` and
``[[sinks]]``; global keys the file leaves out still come from the
environment, then from defaults.  String values may use ``${VAR}`` or
``${VAR:-default}`` to take a value (a token, say) from the environment.

Every problem is reported at once, before anything starts, each named as
the operator wrote it: a value from the environment by its variable
(``RESYNC_INTERVAL: expected a duration like 5m, got "five"``), a value from
the file by its key path (``sources[1].wait: expected a duration like 5m,
got "five"``), and a file value that took a variable by both
(``sources[0].token_file (from ${TOKEN_FILE}): ...``).  Beyond types and
forms, listen addresses, URLs, ports and files that must exist are checked
here too (:mod:`consul_sync.checks`, and the checks plugins register).
"""

from __future__ import annotations

import enum
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
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

from . import checks
from .errors import ConfigError
from .plan import DEFAULT_MAX_PRUNE_FRACTION, Policy
from .registry import TypeRegistry

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


# --- settings ----------------------------------------------------------------


@attrs.frozen
class Component:
    """One configured source or sink: its unique name, its type, its config."""

    name: str
    type: str
    config: Any


@attrs.frozen
class Settings:
    """Global settings (keys at the top of the config file)."""

    namespace: str = setting(
        "network", env="TARGET_NAMESPACE", help="Kubernetes namespace for created resources"
    )
    metrics_addr: str = setting(
        ":8080", env="METRICS_ADDR", help="listen address for probes and metrics"
    )
    resync_interval: Duration = setting(
        Duration(300), env="RESYNC_INTERVAL", help="interval of the full resync"
    )
    policy: Policy = setting(
        Policy.SYNC, env="SYNC_POLICY", help="sync, upsert-only or create-only"
    )
    max_prune_fraction: float = setting(
        DEFAULT_MAX_PRUNE_FRACTION,
        env="MAX_PRUNE_FRACTION",
        help="largest share of what a sink owned that one prune window may delete "
        "(at least 3); deletes past it are held until the window rolls",
    )
    prune_window: Duration = setting(
        Duration(600),
        env="PRUNE_WINDOW",
        help="the prune budget's window: it opens with a delete and lasts this long",
    )
    coalesce_window: Duration = setting(
        Duration(0.1), env="COALESCE_WINDOW", help="how long a burst of changes is gathered"
    )
    shutdown_timeout: Duration = setting(
        Duration(10), env="SHUTDOWN_TIMEOUT", help="how long in-flight writes may finish on stop"
    )
    retry_base: Duration = setting(
        Duration(1), env="RETRY_BASE", help="first retry delay of a failed write"
    )
    retry_max: Duration = setting(
        Duration(300), env="RETRY_MAX", help="longest retry delay of a failed write"
    )
    log_format: str = setting("json", env="LOG_FORMAT", help="json or text")
    log_level: str = setting("info", env="LOG_LEVEL", help="debug, info, warning, error")
    sources: tuple[Component, ...] = ()
    sinks: tuple[Component, ...] = ()

    def __attrs_post_init__(self) -> None:
        problems: list[FieldProblem] = []

        def check(field: str, ok: bool, message: str) -> None:
            if not ok:
                problems.append(FieldProblem(field, message))

        try:
            checks.dns_label(self.namespace)
        except ValueError as exc:
            problems.append(FieldProblem("namespace", str(exc)))
        try:
            checks.listen_address(self.metrics_addr)
        except ValueError as exc:
            problems.append(FieldProblem("metrics_addr", str(exc)))
        check("resync_interval", self.resync_interval > 0, "must be more than 0")
        check("max_prune_fraction", 0 <= self.max_prune_fraction <= 1, "must be 0-1")
        check("prune_window", self.prune_window > 0, "must be more than 0")
        check("retry_base", self.retry_base > 0, "must be more than 0")
        check(
            "retry_max",
            self.retry_max >= self.retry_base,
            f"must be at least retry_base ({format_duration(self.retry_base)})",
        )
        check("log_format", self.log_format in LOG_FORMATS, 'expected "json" or "text"')
        check(
            "log_level",
            self.log_level.lower() in LOG_LEVELS,
            "expected one of " + ", ".join(LOG_LEVELS),
        )
        if problems:
            raise FieldProblems(problems)


LOG_FORMATS = ("json", "text")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

GLOBAL_KEYS = tuple(f.name for f in attrs.fields(Settings) if f.name not in ("sources", "sinks"))

DEFAULT_LAYOUT: dict[str, Any] = {
    "sources": [{"name": "consul", "type": "consul"}],
    "sinks": [{"name": "kubernetes", "type": "kubernetes"}],
}


def env_names(field: attrs.Attribute[Any]) -> tuple[str, ...]:
    names = field.metadata.get("env")
    if names is None:
        return ()
    return (names,) if isinstance(names, str) else tuple(names)


def _from_env(
    cls: type[Any], environ: Mapping[str, str], origin: dict[str, str] | None = None
) -> dict[str, Any]:
    """The fields the environment sets; ``origin`` gets field -> variable."""
    values: dict[str, Any] = {}
    for field in attrs.fields(cls):
        for name in env_names(field):
            if environ.get(name, "") != "":
                values[field.name] = environ[name]
                if origin is not None:
                    origin[field.name] = name
                break
    return values


@attrs.define
class _Provenance:
    """Where the values of one class came from, to name them in messages."""

    where: str = ""  #: key path of the table (``sinks[0]``; ``""``: the top)
    body: Mapping[str, Any] = attrs.field(factory=dict)  #: field -> value given
    env: Mapping[str, str] = attrs.field(factory=dict)  #: field -> its variable
    #: full key path -> the variables ``${...}`` put into it
    interpolated: Mapping[str, list[str]] = attrs.field(factory=dict)


_INTERPOLATE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(
    value: Any,
    environ: Mapping[str, str],
    path: str,
    problems: list[str],
    used: dict[str, list[str]] | None = None,
) -> Any:
    if used is None:
        used = {}
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            used.setdefault(path, []).append(name)
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            problems.append(f"{path}: environment variable {name} is not set")
            return ""

        return _INTERPOLATE.sub(replace, value)
    if isinstance(value, dict):
        return {
            k: _interpolate(v, environ, f"{path}.{k}" if path else k, problems, used)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [
            _interpolate(v, environ, f"{path}[{i}]", problems, used) for i, v in enumerate(value)
        ]
    return value


def read_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such config file"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None


def load_settings(
    registry: TypeRegistry,
    *,
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    raw: Mapping[str, Any] | None = None,
) -> Settings:
    """Read, validate and structure the whole configuration.

    Raises :class:`ConfigError` listing every problem with its key path.
    """
    env = os.environ if environ is None else environ
    problems: list[str] = []
    from_file = raw is not None or path is not None
    if raw is None:
        raw = read_file(path) if path is not None else DEFAULT_LAYOUT
    interpolated: dict[str, list[str]] = {}
    data = _interpolate(dict(raw), env, "", problems, interpolated)

    env_origin: dict[str, str] = {}
    in_file = {k: v for k, v in data.items() if k not in ("sources", "sinks")}
    global_raw = {**_from_env(Settings, env, env_origin), **in_file}
    origin = _Provenance(
        "",
        global_raw,
        {k: v for k, v in env_origin.items() if k not in in_file},
        interpolated,
    )
    settings = _structure(Settings, global_raw, origin, problems)

    components: dict[str, tuple[Component, ...]] = {}
    for kind, table in (("sources", registry.sources), ("sinks", registry.sinks)):
        items = data.get(kind, [])
        if not isinstance(items, list):
            problems.append(f"{kind}: expected a list of tables ([[{kind}]]), got {items!r}")
            items = []
        if not items:
            problems.append(f"{kind}: at least one is needed ([[{kind}]] with name and type)")
        if not from_file:
            items = [*items, *_default_extras(kind, table, env, problems)]
        components[kind] = _components(
            kind, items, table, env, from_file, problems, interpolated, registry.checks
        )

    if problems or not isinstance(settings, Settings):
        raise ConfigError(list(dict.fromkeys(problems)))  # two sinks, one kubeconfig: once
    return attrs.evolve(settings, sources=components["sources"], sinks=components["sinks"])


def _default_extras(
    kind: str, table: Mapping[str, type[Any]], env: Mapping[str, str], problems: list[str]
) -> list[dict[str, Any]]:
    """Without a config file: the types that ask to run beside the default
    source and sink (class attribute ``default_env = ("VAR", default)``:
    they run, named after their type, when the variable is true -- e.g. the
    ``gateway`` sink with ``ENABLE_HTTPROUTES``)."""
    extras = []
    for type_name, cls in sorted(table.items()):
        spec = getattr(cls, "default_env", None)
        if spec is None:
            continue
        variable, default = spec
        raw = env.get(variable, "")
        try:
            enabled = parse_bool(raw) if raw != "" else bool(default)
        except ValueProblem as exc:
            problems.append(f"{variable}: {exc}")
            continue
        if enabled:
            extras.append({"name": type_name, "type": type_name})
    return extras


def _components(
    kind: str,
    items: list[Any],
    table: Mapping[str, type[Any]],
    env: Mapping[str, str],
    from_file: bool,
    problems: list[str],
    interpolated: Mapping[str, list[str]],
    config_checks: Mapping[tuple[str, str], list[Any]],
) -> tuple[Component, ...]:
    seen: set[str] = set()
    out = []
    for index, item in enumerate(items):
        where = f"{kind}[{index}]"
        if not isinstance(item, dict):
            problems.append(f"{where}: expected a table with name and type, got {item!r}")
            continue
        body = dict(item)
        type_name = body.pop("type", None)
        name = body.pop("name", type_name)
        if type_name not in table:
            known = ", ".join(sorted(table)) or "none (are the plugins installed?)"
            problems.append(f"{where}.type: unknown {kind[:-1]} type {type_name!r}; known: {known}")
            continue
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            problems.append(
                f"{where}.name: expected a name of letters, digits, '-', '_' or '.', got {name!r}"
            )
            continue
        if name in seen:
            problems.append(f"{where}.name: {name!r} is used twice; names must be unique")
            continue
        seen.add(name)
        cls = table[type_name]
        env_origin: dict[str, str] = {}
        if not from_file:
            body = {**_from_env(cls.Config, env, env_origin), **body}
            env_origin = {k: v for k, v in env_origin.items() if k not in item}
        origin = _Provenance(where, body, env_origin, interpolated)
        config = _structure(cls.Config, body, origin, problems)
        if config is None:
            continue
        found = []
        for check in config_checks.get((kind[:-1], type_name), ()):
            try:
                found.extend(check(config, env))
            except Exception as exc:  # a check that breaks is a problem too
                found.append(exc)
        for problem in found:
            problems.extend(_class_problem(problem, cls.Config, origin))
        if not found:
            out.append(Component(name, type_name, config))
    return tuple(out)


def _structure(
    cls: type[Any], body: Mapping[str, Any], origin: _Provenance, problems: list[str]
) -> Any:
    try:
        return converter.structure(dict(body), cls)
    except ClassValidationError as exc:
        if all(not _noted(e) for e in exc.exceptions):  # the class's own validation
            for own in exc.exceptions:
                problems.extend(_class_problem(own, cls, origin))
        else:
            problems.extend(_messages(exc, cls, origin))
            problems.extend(_also_own(exc, cls, body, origin))
    except (IterableValidationError, ForbiddenExtraKeysError) as exc:
        problems.extend(_messages(exc, cls, origin))
    except Exception as exc:  # raised by the class itself: __attrs_post_init__
        problems.extend(_class_problem(exc, cls, origin))
    return None


def _also_own(
    exc: ClassValidationError, cls: type[Any], body: Mapping[str, Any], origin: _Provenance
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
                    lines.extend(_class_problem(problem, cls, origin))
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


def _class_problem(exc: BaseException, cls: type[Any], origin: _Provenance) -> list[str]:
    """Lines for a problem the class (or a check) found, naming its field(s)."""
    if isinstance(exc, FieldProblems):
        return [line for p in exc.problems for line in _class_problem(p, cls, origin)]
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
    origin: _Provenance, path: str, message: str, fields: tuple[str, ...], cls: type[Any]
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


def _messages(exc: Exception, cls: type[Any], origin: _Provenance) -> list[str]:
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

MASK = "********"


def _masked(obj: Any) -> Any:
    if attrs.has(type(obj)):
        out: dict[str, Any] = {}
        for field in attrs.fields(type(obj)):
            value = getattr(obj, field.name)
            if field.metadata.get("secret") and value:
                out[field.name] = MASK
            else:
                out[field.name] = _masked(value)
        return out
    if isinstance(obj, tuple | list):
        return [_masked(v) for v in obj]
    if isinstance(obj, Duration):
        return format_duration(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, Path):
        return str(obj)
    return obj


def effective(settings: Settings) -> dict[str, Any]:
    """The configuration as plain data, secrets masked (``check-config``)."""
    data = {key: _masked(getattr(settings, key)) for key in GLOBAL_KEYS}
    for kind in ("sources", "sinks"):
        data[kind] = [
            {"name": c.name, "type": c.type, **_masked(c.config)} for c in getattr(settings, kind)
        ]
    return data


def secrets_of(settings: Settings) -> list[str]:
    """Every secret value in the configuration, to keep out of logs."""
    found = []
    for component in (*settings.sources, *settings.sinks):
        for field in attrs.fields(type(component.config)):
            value = getattr(component.config, field.name)
            if field.metadata.get("secret") and isinstance(value, str) and value:
                found.append(value)
    return found
