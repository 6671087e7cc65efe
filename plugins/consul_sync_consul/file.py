"""The ``file`` source: Consul service-definition JSON files, no Consul needed.

It reads the files an agent would load from ``consul.d/`` — a file holding
``{"service": {...}}`` or ``{"services": [...]}`` — from one file or every
``*.json`` in a directory.  Other JSON (agent configuration such as
``server.json``) is skipped.  Fields used: ``name``, ``id``, ``tags``,
``address``, ``port``, ``meta``; a ``check`` is accepted and ignored (the
instance counts as passing, as an instance without checks does in Consul).

A file that cannot be read or parsed keeps its last good services and makes
the snapshot incomplete (nothing is pruned); an invalid service is skipped
with a message naming the file and the service, and the others flow.
Changes are noticed by polling modification times every ``poll_interval``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import anyio
import attrs

from consul_sync import Context, DesiredService, Duration, Snapshot, setting
from consul_sync.model import Publish, ServiceKey, StatusNote

from .convert import META_NAME, Instance, group, has_tag, str_map, to_desired

log = logging.getLogger("consul_sync.file")


@attrs.frozen
class FileConfig:
    path: str = setting(help="a service-definition JSON file or a directory of them")
    tag: str = setting("kubernetes", help="only services with this tag (empty: all)")
    namespace: str | None = setting(None, help="namespace (default: TARGET_NAMESPACE)")
    node_address: str | None = setting(
        None, help="address for services that give none (Consul would use the node's)"
    )
    poll_interval: Duration = setting(Duration(2), help="how often files are checked")


@attrs.frozen
class _Parsed:
    instances: tuple[Instance, ...]
    problems: tuple[str, ...]
    #: (name, tags, problem) of each named service that was skipped.
    skipped: tuple[tuple[str, tuple[str, ...], str], ...] = ()


def parse_definitions(data: Any, where: str, node_address: str | None) -> _Parsed:
    """Instances from one file's JSON, and a message per invalid service."""
    if not isinstance(data, dict):
        return _Parsed((), (f"{where}: expected a JSON object with 'service' or 'services'",))
    if "service" in data:
        entries: list[tuple[str, Any]] = [("service", data["service"])]
    elif "services" in data:
        raw = data["services"]
        if not isinstance(raw, list):
            return _Parsed((), (f"{where}: 'services' must be a list",))
        entries = [(f"services[{i}]", item) for i, item in enumerate(raw)]
    else:
        return _Parsed((), ())  # agent configuration, not a registration
    instances, problems, skipped = [], [], []
    for path, entry in entries:
        instance, problem = _instance(entry, f"{where}: {path}", node_address)
        if problem:
            problems.append(problem)
            name = _field(entry, "name") if isinstance(entry, dict) else None
            raw = _field(entry, "tags") if isinstance(entry, dict) else None
            if isinstance(name, str) and name.strip():
                tags = tuple(t for t in raw if isinstance(t, str)) if isinstance(raw, list) else ()
                skipped.append((name, tags, problem))
        if instance is not None:
            instances.append(instance)
    return _Parsed(tuple(instances), tuple(problems), tuple(skipped))


def _field(entry: dict[str, Any], name: str) -> Any:
    # Consul accepts both snake_case/lowercase and the API's CamelCase.
    for key in (name, name.capitalize(), name.upper()):
        if key in entry:
            return entry[key]
    return None


def _instance(
    entry: Any, where: str, node_address: str | None
) -> tuple[Instance | None, str | None]:
    if not isinstance(entry, dict):
        return None, f"{where}: expected an object, got {type(entry).__name__}"
    name = _field(entry, "name")
    if not isinstance(name, str) or not name.strip():
        return None, f"{where}: 'name' is missing or not a string; skipped"
    label = f"{where} ({name!r})"
    port = _field(entry, "port")
    if isinstance(port, bool) or not isinstance(port, int):
        return None, f"{label}: 'port' must be a whole number 1-65535, got {port!r}; skipped"
    if not 1 <= port <= 65535:
        return None, f"{label}: port {port} is out of range 1-65535; skipped"
    tags = _field(entry, "tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        return None, f"{label}: 'tags' must be a list of strings; skipped"
    address = _field(entry, "address") or node_address
    if not isinstance(address, str) or not address.strip():
        return None, (
            f"{label}: no 'address' (and the file source has no node_address "
            "to fall back on); skipped"
        )
    ident = _field(entry, "id") or name
    return Instance(
        service=name,
        id=str(ident),
        address=address.strip(),
        port=port,
        tags=tuple(tags),
        meta=str_map(_field(entry, "meta")),
    ), None


class FileSource:
    type_name: ClassVar[str] = "file"
    Config: ClassVar[type[FileConfig]] = FileConfig

    def __init__(self, name: str, config: FileConfig, context: Context) -> None:
        self.name = name
        self.config = config
        self.context = context
        self.namespace = config.namespace or context.namespace
        self._good: dict[Path, tuple[Instance, ...]] = {}
        self._reported: set[str] = set()
        #: For the status page: wall-clock time of the last good read, the
        #: services skipped (name -> why) and the Consul names of renamed keys.
        self.last_read: float | None = None
        self._skipped: dict[str, list[str]] = {}
        self._names: dict[ServiceKey, str] = {}

    def _files(self) -> Iterator[Path]:
        root = Path(self.config.path)
        if root.is_dir():
            yield from sorted(p for p in root.iterdir() if p.suffix == ".json" and p.is_file())
        else:
            yield root

    def _stamp(self) -> tuple[tuple[str, float, int], ...]:
        stamps = []
        try:
            for path in self._files():
                try:
                    stat = path.stat()
                    stamps.append((str(path), stat.st_mtime, stat.st_size))
                except OSError:
                    stamps.append((str(path), -1.0, -1))
        except OSError:
            return ()
        return tuple(stamps)

    def read(self) -> Snapshot:
        complete = True
        problems: list[str] = []
        instances: list[Instance] = []
        skipped: dict[str, list[str]] = {}
        seen: set[Path] = set()
        root = Path(self.config.path)
        if not root.exists():
            problems.append(f"{root}: no such file or directory")
            complete = False
        for path in self._files() if root.exists() else ():
            seen.add(path)
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                problems.append(
                    f"{path}: cannot be read as JSON ({exc}); keeping its last "
                    "good services, nothing is pruned until it is fixed"
                )
                complete = False
                instances.extend(self._good.get(path, ()))
                continue
            parsed = parse_definitions(data, str(path), self.config.node_address)
            problems.extend(parsed.problems)
            for name, tags, problem in parsed.skipped:
                if has_tag(tags, self.config.tag):
                    skipped.setdefault(name, []).append(problem)
            self._good[path] = parsed.instances
            instances.extend(parsed.instances)
        for gone in set(self._good) - seen:
            del self._good[gone]
        for problem in problems:
            if problem not in self._reported:
                log.error(problem, extra={"source": self.name})
                self.context.metrics.invalid.labels(source=self.name).inc()
        self._reported = set(problems)
        self._skipped = skipped
        if complete:
            self.last_read = time.time()
        return Snapshot.of(self.name, self._services(instances), complete=complete)

    def status_notes(self, keys: object = None) -> dict[ServiceKey, StatusNote]:
        """For the status page: renamed keys (Meta k8s-name) and skipped services."""
        notes = {
            key: StatusNote(name=name, notes=[f"named {key[1]!r} by Meta {META_NAME}"])
            for key, name in self._names.items()
        }
        for name, why in self._skipped.items():
            key = (self.namespace, name)
            if key not in notes:
                notes[key] = StatusNote(notes=why, skipped=True)
        return notes

    def _services(self, instances: list[Instance]) -> list[DesiredService]:
        services: dict[ServiceKey, DesiredService] = {}
        self._names = {}
        for name, members in sorted(group(instances).items()):
            if not any(has_tag(i.tags, self.config.tag) for i in members):
                continue
            tagged = [i for i in members if has_tag(i.tags, self.config.tag)]
            converted = to_desired(
                name, tagged, namespace=self.namespace, source=self.name, where=self.config.path
            )
            for warning in converted.warnings:
                log.warning(warning, extra={"source": self.name})
            service = converted.service
            if service is None:
                continue
            if service.key in services:
                log.error(
                    "%s: services %r and %r both map to Kubernetes name %r; keeping the first",
                    self.config.path,
                    services[service.key].annotations,
                    name,
                    service.name,
                    extra={"source": self.name},
                )
                continue
            services[service.key] = service
            if service.name != name:
                self._names[service.key] = name
        return list(services.values())

    async def snapshot(self) -> Snapshot:
        return self.read()

    async def run(self, publish: Publish) -> None:
        stamp = self._stamp()
        await publish(self.read())
        while True:
            await anyio.sleep(self.config.poll_interval)
            new = self._stamp()
            if new != stamp:
                stamp = new
                await publish(self.read())

    async def aclose(self) -> None:
        return None
