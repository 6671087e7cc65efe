"""The registry that source and sink type hooks fill in, and the context
handed to every source and sink a type creates."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from .errors import ConsulSyncError
from .model import DesiredService, ServiceKey

if TYPE_CHECKING:
    import httpx

    from .metrics import Metrics


class RegistrationError(ConsulSyncError):
    pass


#: ``check(config, environ)`` -> problems (``consul_sync.config.FieldProblem``).
ConfigCheck = Callable[[Any, Mapping[str, str]], Iterable[Exception]]


_REQUIRED = ("type_name", "Config")


@attrs.define
class TypeRegistry:
    """Source and sink types by ``type_name``, with the plugin that gave each."""

    sources: dict[str, type[Any]] = attrs.field(factory=dict)
    sinks: dict[str, type[Any]] = attrs.field(factory=dict)
    origin: dict[tuple[str, str], str] = attrs.field(factory=dict)
    current_plugin: str = "?"
    #: ``(kind, type_name)`` -> checks of a structured config (see
    #: :meth:`add_config_check`).
    checks: dict[tuple[str, str], list[ConfigCheck]] = attrs.field(factory=dict)

    def add_config_check(self, kind: str, type_name: str, check: ConfigCheck) -> None:
        """Run ``check(config, environ)`` on every configured ``kind``
        (``"source"`` or ``"sink"``) of type ``type_name`` once its config
        is structured, before anything starts (``check-config`` too).

        It returns (or yields) ``consul_sync.config.FieldProblem`` objects:
        the field and the operator's words; the loader names the field by
        the environment variable or key path the value came from.  For
        checks that look outside the value (files exist, a kubeconfig
        parses) -- a Config's own validator can only see its values.
        """
        if kind not in ("source", "sink"):
            raise RegistrationError(f"config check for {kind!r}: kind is 'source' or 'sink'")
        self.checks.setdefault((kind, type_name), []).append(check)

    def add_source_type(self, cls: type[Any]) -> None:
        self._add("source", self.sources, cls)

    def add_sink_type(self, cls: type[Any]) -> None:
        self._add("sink", self.sinks, cls)

    def _add(self, kind: str, table: dict[str, type[Any]], cls: type[Any]) -> None:
        missing = [name for name in _REQUIRED if not hasattr(cls, name)]
        if missing:
            raise RegistrationError(
                f"plugin {self.current_plugin!r}: {kind} type {cls.__name__} lacks "
                f"{', '.join(missing)}; see docs/plugins.md"
            )
        if not attrs.has(cls.Config):
            raise RegistrationError(
                f"plugin {self.current_plugin!r}: {kind} type {cls.type_name!r}: Config "
                "must be an attrs class"
            )
        name = cls.type_name
        if name in table and table[name] is not cls:
            raise RegistrationError(
                f"{kind} type {name!r} is registered by both plugin "
                f"{self.origin[(kind, name)]!r} and plugin {self.current_plugin!r}; "
                "block one with CONSUL_SYNC_DISABLE_PLUGINS"
            )
        table[name] = cls
        self.origin[(kind, name)] = self.current_plugin


@attrs.define
class Context:
    """What the runtime lends to every source and sink.

    Every I/O boundary is injectable here: tests pass an httpx transport or
    a factory for the Kubernetes client wrapper instead of the real ones.
    """

    metrics: Metrics
    namespace: str = "network"
    logger: logging.Logger = attrs.field(factory=lambda: logging.getLogger("consul_sync"))
    #: An ``httpx.AsyncBaseTransport`` for HTTP sources (tests: a mock transport).
    http_transport: httpx.AsyncBaseTransport | None = None
    #: Extra objects keyed by name, for plugins' own injectable boundaries
    #: (the Kubernetes sink looks up ``"kubernetes_client"`` here).
    extras: dict[str, Any] = attrs.field(factory=dict)
    #: Register a secret so that it never appears in a log line.
    add_secret: Callable[[str], None] = lambda _secret: None
    #: Ask the runtime to re-plan these keys soon (a sink saw its objects
    #: edited or deleted behind its back).  Set by the runtime.
    mark_dirty: Callable[[Iterable[ServiceKey]], None] = lambda _keys: None
    #: ``(version, keys)`` of every desired service; the version changes
    #: whenever a key is added or removed (sinks that must resolve name
    #: collisions across all services use it).  Set by the runtime.
    desired_keys: Callable[[], tuple[int, Collection[ServiceKey]]] = lambda: (0, ())
    #: The current desired service of a key (merged and transformed), or
    #: ``None``.  Sinks whose objects are derived from only part of a
    #: service (the gateway sink's routes) use it to tell the planner which
    #: desired service their objects satisfy.  Set by the runtime.
    desired_service: Callable[[ServiceKey], DesiredService | None] = lambda _key: None
    #: The sync policy (``sync``, ``upsert-only``, ``create-only``), for
    #: sinks that want to say what the planner will do.  Set from the
    #: settings.
    policy: str = "sync"
