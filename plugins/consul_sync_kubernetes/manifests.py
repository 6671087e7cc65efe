"""The ``manifests`` sink: the objects the live sink would create, as YAML.

``output = "-"`` (the default) prints each written object to standard
output as a YAML document; it owns nothing it could read back, so every
run prints everything.  ``output = "DIR"`` keeps one file per object in
``DIR`` (``<namespace>.<kind>.<name>.yaml``), reads them back to know what
it owns, rewrites only what changed and prunes files of services that are
gone.  Files without consul-sync's managed-by label and owner id are never
touched.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TextIO

import attrs
import yaml

from consul_sync import Context, DesiredService, Observed, setting
from consul_sync.errors import SinkError
from consul_sync.model import Action, Change, ServiceKey, StatusNote
from consul_sync_kube.objects import MANAGER, is_managed, owner_of

from .compare import parse
from .naming import NameBook, name_notes, service_key
from .render import DEFAULT_MAX_PER_SLICE, SERVICE_NAME_LABEL, render_logged

log = logging.getLogger("consul_sync.manifests")


@attrs.frozen
class ManifestsConfig:
    output: str = setting("-", help="'-' for standard output, or a directory of YAML files")
    owner: str = setting(
        "",
        help="owner id written on every object (default: <namespace>/consul-sync, "
        "as the kubernetes sink's default)",
    )
    max_endpoints_per_slice: int = setting(
        DEFAULT_MAX_PER_SLICE,
        help="endpoints per EndpointSlice (1-1000)",
    )

    def __attrs_post_init__(self) -> None:
        if not 1 <= self.max_endpoints_per_slice <= 1000:
            raise ValueError("max_endpoints_per_slice must be 1-1000")


def dump(objects: Sequence[Mapping[str, Any]]) -> str:
    return yaml.safe_dump_all(list(objects), sort_keys=False, explicit_start=True)


class ManifestsSink:
    type_name: ClassVar[str] = "manifests"
    Config: ClassVar[type[ManifestsConfig]] = ManifestsConfig
    concurrency = 1

    def __init__(
        self, name: str, config: ManifestsConfig, context: Context, stream: TextIO | None = None
    ) -> None:
        self.name = name
        self.config = config
        self.context = context
        self.stream = stream
        # The same default owner as the kubernetes sink's, so that what this
        # sink renders is what that one would write.
        self.owner = config.owner or f"{context.namespace}/{MANAGER}"
        #: (namespace, file's Service name) -> the key it stands for: names stay sticky
        self._held: dict[ServiceKey, ServiceKey] = {}
        self.names = NameBook(lambda: context.desired_keys(), lambda: self._held)  # noqa: PLW0108
        self._view: dict[ServiceKey, Observed] = {}
        self._files: dict[ServiceKey, list[Path]] = {}

    @property
    def directory(self) -> Path | None:
        return None if self.config.output == "-" else Path(self.config.output)

    async def open(self) -> None:
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)

    def _ours(self, obj: Mapping[str, Any]) -> bool:
        return is_managed(obj) and owner_of(obj) == self.owner

    async def observe(self, *, fresh: bool = False) -> Mapping[ServiceKey, Observed]:
        if self.directory is None or (self._view and not fresh):
            return self._view
        services: dict[tuple[str, str], tuple[dict[str, Any], Path]] = {}
        slices: dict[tuple[str, str], list[tuple[dict[str, Any], Path]]] = {}
        for path in sorted(self.directory.glob("*.yaml")):
            try:
                obj = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError) as exc:
                raise SinkError(f"{path}: cannot read ({exc})") from exc
            if not isinstance(obj, dict):
                continue
            meta = obj.get("metadata") or {}
            namespace = meta.get("namespace", "")
            if obj.get("kind") == "Service":
                services[(namespace, meta.get("name", ""))] = (obj, path)
            elif obj.get("kind") == "EndpointSlice" and self._ours(obj):
                owner = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL, "")
                slices.setdefault((namespace, owner), []).append((obj, path))
        view: dict[ServiceKey, Observed] = {}
        files: dict[ServiceKey, list[Path]] = {}
        self._held = {}
        for (namespace, name), (obj, path) in services.items():
            mine = slices.get((namespace, name), [])
            if self._ours(obj):
                self._held[(namespace, name)] = service_key(obj)
                service = parse(obj, [o for o, _ in mine])
                view[service.key] = Observed(service.key, True, service, service.sources)
                files[service.key] = [path, *(p for _, p in mine)]
            else:
                key = service_key(obj)
                view[key] = Observed(key, owned=False)
        self._view, self._files = view, files
        return view

    def render(self, services: Sequence[DesiredService]) -> list[dict[str, Any]]:
        return render_logged(
            services,
            self.names,
            owner=self.owner,
            max_per_slice=self.config.max_endpoints_per_slice,
            log=log,
            sink=self.name,
        )

    async def apply(self, change: Change) -> None:
        for news in self.names.refresh():
            log.warning("naming: %s", news, extra={"sink": self.name})
        if change.action is Action.DELETE:
            self._delete(change.key)
            self._view.pop(change.key, None)
            return
        assert change.desired is not None
        objects = self.render([change.desired])
        if self.directory is None:
            out = self.stream or sys.stdout
            out.write(dump(objects))
            out.flush()
        else:
            self._write(change.key, objects)
        self._view[change.key] = Observed(change.key, True, change.desired, change.desired.sources)

    def _write(self, key: ServiceKey, objects: list[dict[str, Any]]) -> None:
        assert self.directory is not None
        written = []
        for obj in objects:
            meta = obj["metadata"]
            path = self.directory / f"{meta['namespace']}.{obj['kind'].lower()}.{meta['name']}.yaml"
            tmp = path.with_suffix(".tmp")
            try:
                tmp.write_text(dump([obj]), encoding="utf-8")
                os.replace(tmp, path)
            except OSError as exc:
                raise SinkError(f"{path}: cannot write ({exc.strerror})") from exc
            written.append(path)
        for stale in set(self._files.get(key, ())) - set(written):
            stale.unlink(missing_ok=True)
        # A file another key held (a change of case in Consul maps both keys
        # to one name) is this key's now: deleting that key must not take it.
        for other, paths in self._files.items():
            if other != key and any(path in written for path in paths):
                self._files[other] = [path for path in paths if path not in written]
        self._files[key] = written

    def _delete(self, key: ServiceKey) -> None:
        if self.directory is None:
            (self.stream or sys.stdout).write(f"# deleted {key[0]}/{key[1]}\n")
            return
        for path in self._files.pop(key, []):
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                raise SinkError(f"{path}: cannot delete ({exc.strerror})") from exc

    def status_notes(self, keys: Iterable[ServiceKey]) -> dict[ServiceKey, StatusNote]:
        """For the status page: Kubernetes names that differ from the key's, and why."""
        return name_notes(self.names, keys)

    async def aclose(self) -> None:
        return None
