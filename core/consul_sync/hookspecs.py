"""Every hook consul-sync calls: the plugin author's reference.

A plugin is a module (or object) with functions decorated by
``consul_sync.hookimpl`` whose names are the hooks below.  It is found
through the ``consul_sync`` entry-point group::

    [project.entry-points.consul_sync]
    static = "consul_sync_static.plugin"

Hooks are synchronous: pluggy cannot await.  Anything asynchronous (watching,
writing) lives on the source and sink *objects* a plugin's types create; the
runtime drives those.  Arguments are passed by name, so an implementation
may accept any subset of a hook's parameters.

The built-in ``consul`` (sources ``consul`` and ``file``) and ``kubernetes``
(sinks ``kubernetes`` and ``manifests``) plugins use nothing but these hooks.
``docs/plugins.md`` documents each hook; a test fails when one is missing.

The status page asks nothing of hooks: sources say why an instance is not
ready in ``Endpoint.reason`` (declared ``eq=False``: a reason that changes
alone causes no write and no re-plan), and sources and sinks may add an
optional ``status_notes(keys) -> {key: StatusNote}`` method (names, renamed
or skipped and why); see ``docs/plugins.md``, "What the status page asks".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .model import DesiredService
    from .plan import Plan
    from .registry import TypeRegistry
    from .runtime import Runtime

hookspec = pluggy.HookspecMarker("consul_sync")


@hookspec
def consul_sync_add_source_types(registry: TypeRegistry) -> None:
    """Register source types with ``registry.add_source_type(cls)``.

    :param registry: the registry of source and sink types.

    Called once, when the plugin manager is built, before the configuration
    is read: a source's ``type`` key in the configuration names one of the
    types registered here.

    A source type is a class with

    * ``type_name`` (class attribute, ``str``): the name used in the config;
    * ``Config`` (class attribute): an attrs class of its settings; every
      field needs a default or is required in the config file.  Field
      metadata ``{"secret": True}`` masks a value in ``check-config`` and in
      logs; ``{"env": "VAR"}`` lets an environment variable provide the
      value when consul-sync runs without a config file;
    * ``__init__(self, name: str, config: Config, context: Context)``;
    * the methods of :class:`consul_sync.model.Source`.

    Registering a ``type_name`` that is already taken raises an error
    naming both plugins.
    """


@hookspec
def consul_sync_add_sink_types(registry: TypeRegistry) -> None:
    """Register sink types with ``registry.add_sink_type(cls)``.

    :param registry: the registry of source and sink types.

    Called once, when the plugin manager is built.  A sink type is a class
    like a source type (``type_name``, ``Config``, ``__init__(name, config,
    context)``) whose instances implement :class:`consul_sync.model.Sink`.
    """


@hookspec
def consul_sync_transform_service(service: DesiredService) -> DesiredService | None:
    """Rewrite or drop one desired service before it is planned.

    :param service: the merged desired service.
    :return: ``None`` to leave it as it is, a new
        :class:`~consul_sync.model.DesiredService` (``attrs.evolve(service,
        ...)``) to replace it, or :data:`consul_sync.DROP` to keep it out of
        every sink (an existing object of ours is then pruned as if the
        source no longer had it).

    The service carries what a sink may route on, source-neutrally:
    ``service.tags`` (the source's tags, a sorted tuple; Consul service
    tags) and ``service.meta`` (its key/value metadata, sorted pairs;
    Consul ``Meta``).  They may be rewritten like any field
    (``attrs.evolve(service, tags=[...], meta={...})``); they are compared
    by value, so a changed tag re-plans the service in every sink.

    Called for every service that changed, each time it changed, before
    planning, and for every service on a full resync.  Implementations run
    in plugin registration order, each seeing the previous one's result.
    Must be fast and free of I/O: it runs on the reconciler's hot path.
    An exception drops nothing: it is logged, and the service goes on as it
    was before this implementation.
    """


@hookspec
def consul_sync_started(runtime: Runtime) -> None:
    """The runtime has started its sources and sinks.

    :param runtime: the running :class:`consul_sync.runtime.Runtime`;
        ``runtime.settings``, ``runtime.sources``, ``runtime.sinks`` and
        ``runtime.metrics`` may be read.

    Called once per process after every sink opened, before the first
    reconcile.  Not called by ``plan``, ``render`` or ``check-config``.
    """


@hookspec
def consul_sync_after_apply(sink: str, plan: Plan, failed: dict[Any, str]) -> None:
    """A reconcile pass finished writing to one sink.

    :param sink: the sink's configured name.
    :param plan: the :class:`consul_sync.plan.Plan` that was carried out
        (its ``changes``, ``conflicts``, ``withheld`` keys and ``guard``).
    :param failed: key -> error message for each change that failed (they
        are retried with backoff when retryable).

    Called after every pass that planned at least one change, conflict or
    held-back delete, including passes of ``run --once``.  Exceptions are
    logged and ignored.
    """


@hookspec
def consul_sync_stopping() -> None:
    """The process is shutting down (signal received or ``--once`` done).

    Called once, before sources and sinks are closed.
    """
