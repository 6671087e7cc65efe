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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from . import checks
from .errors import ConfigError
from .plan import DEFAULT_MAX_PRUNE_FRACTION, Policy
from .registry import TypeRegistry
from .structure import Provenance, class_problem, structure
from .values import (
    Duration,
    FieldProblem,
    FieldProblems,
    ValueProblem,
    format_duration,
    make_converter,
    parse_bool,
    parse_duration,
    secret,
    setting,
)

#: Public names, the value helpers of :mod:`consul_sync.values` among them
#: (sources and sinks declare their fields with ``setting`` and ``secret``).
__all__ = [
    "GLOBAL_KEYS",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "MASK",
    "Component",
    "Duration",
    "FieldProblem",
    "FieldProblems",
    "Settings",
    "ValueProblem",
    "effective",
    "env_names",
    "format_duration",
    "load_settings",
    "make_converter",
    "parse_bool",
    "parse_duration",
    "read_file",
    "secret",
    "secrets_of",
    "setting",
]

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
    origin = Provenance(
        "",
        global_raw,
        {k: v for k, v in env_origin.items() if k not in in_file},
        interpolated,
    )
    settings = structure(Settings, global_raw, origin, problems)

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
        origin = Provenance(where, body, env_origin, interpolated)
        config = structure(cls.Config, body, origin, problems)
        if config is None:
            continue
        found = []
        for check in config_checks.get((kind[:-1], type_name), ()):
            try:
                found.extend(check(config, env))
            except Exception as exc:  # a check that breaks is a problem too
                found.append(exc)
        for problem in found:
            problems.extend(class_problem(problem, cls.Config, origin))
        if not found:
            out.append(Component(name, type_name, config))
    return tuple(out)


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
