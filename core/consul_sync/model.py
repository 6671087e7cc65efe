"""Value types shared by the core, sources and sinks.

Everything here is frozen, slotted and compared by value, so a desired
service read twice from an unchanged source compares equal and the planner
can decide "nothing to do" with ``==``.  This module imports only attrs and
the standard library (checked by import-linter in CI).

Canonical forms
    Collections are normalised by converters so that two services that mean
    the same thing are equal: endpoints are sorted, duplicate endpoints are
    dropped, labels and annotations are stored as sorted tuples of pairs.
    Port order is kept as given (the first port is the *primary* port that
    :attr:`Endpoint.port` overrides).
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import attrs

#: A desired or observed service is identified by ``(namespace, name)``.
ServiceKey = tuple[str, str]

Pairs = tuple[tuple[str, str], ...]


def freeze_pairs(value: Mapping[str, str] | Iterable[tuple[str, str]] | None) -> Pairs:
    """Turn a mapping (or pairs) into a sorted tuple of ``(key, value)`` pairs."""
    if value is None:
        return ()
    items = value.items() if isinstance(value, Mapping) else value
    return tuple(sorted((str(k), str(v)) for k, v in items))


@attrs.frozen
class Port:
    """A port of the service, as a Kubernetes Service port.

    ``name`` must be unique within the service; ``port`` is 1-65535.
    """

    name: str
    port: int
    protocol: str = "TCP"
    app_protocol: str | None = None


@attrs.frozen(order=True)
class Endpoint:
    """One instance of a service.

    ``port`` overrides the number of the service's first (primary) port for
    this instance only: instances of one service may listen on different
    ports.  ``None`` means "the service port's own number".

    ``serving`` defaults to ``ready`` (as Kubernetes reads it when unset).

    ``source`` names the source the endpoint came from.  Sources need not
    set it: the planner's merge stamps every endpoint with its snapshot's
    source, and sinks that can record it (the ``kubernetes`` and
    ``manifests`` sinks do, per EndpointSlice) read it back, so that what a
    source that is unreachable now contributed can be kept
    (:func:`consul_sync.plan.plan`).

    ``reason`` says, in the operator's words, why a not-ready instance is
    not ready (``check 'HTTP on :8123' is critical``, ``in maintenance``,
    ``node n1: serfHealth is critical``); ``None`` for a ready one or when
    the source cannot tell.  It is for people (the status page), never
    written to a sink, and left out of ``==`` and ordering (``eq=False``):
    a check whose output or name changes while the instance stays
    not-ready causes no write and no re-plan.  The text shown is therefore
    the one of the service's last re-plan (any change of the service, or
    the periodic full resync).
    """

    address: str
    port: int | None = None
    ready: bool = True
    serving: bool = attrs.field(default=attrs.Factory(lambda self: self.ready, takes_self=True))
    terminating: bool = False
    hostname: str | None = None
    zone: str | None = None
    node_name: str | None = None
    source: str | None = attrs.field(default=None, order=False)
    reason: str | None = attrs.field(default=None, eq=False, order=False)


def _sorted_endpoints(value: Iterable[Endpoint]) -> tuple[Endpoint, ...]:
    seen: dict[tuple[str, int | None], Endpoint] = {}
    for endpoint in value:
        # The same address and port twice is one endpoint; keep the first.
        seen.setdefault((endpoint.address, endpoint.port), endpoint)
    return tuple(sorted(seen.values(), key=_endpoint_sort_key))


def _endpoint_sort_key(endpoint: Endpoint) -> tuple[str, int]:
    return (endpoint.address, -1 if endpoint.port is None else endpoint.port)


def _tuple_of_ports(value: Iterable[Port]) -> tuple[Port, ...]:
    return tuple(value)


def _tuple_of_str(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(value)))


@attrs.frozen
class DesiredService:
    """What one service should look like in every sink.

    ``sources`` names the source instance(s) it came from (several after a
    merge); ``labels`` and ``annotations`` are carried onto the sink's
    objects in addition to the sink's own bookkeeping labels.

    ``tags`` and ``meta`` are what the source knows about the service to
    route on, source-neutrally: its tags (a sorted set of strings; Consul
    service tags) and its key/value metadata (sorted pairs; Consul service
    ``Meta``).  Sinks may read them (the ``gateway`` sink makes routes from
    them); they are compared by value like everything else, and
    ``consul_sync_transform_service`` may rewrite them.
    """

    name: str
    namespace: str
    ports: tuple[Port, ...] = attrs.field(converter=_tuple_of_ports)
    endpoints: tuple[Endpoint, ...] = attrs.field(converter=_sorted_endpoints, default=())
    labels: Pairs = attrs.field(converter=freeze_pairs, default=())
    annotations: Pairs = attrs.field(converter=freeze_pairs, default=())
    sources: tuple[str, ...] = attrs.field(converter=_tuple_of_str, default=())
    tags: tuple[str, ...] = attrs.field(converter=_tuple_of_str, default=())
    meta: Pairs = attrs.field(converter=freeze_pairs, default=())

    @property
    def key(self) -> ServiceKey:
        return (self.namespace, self.name)

    def port_for(self, endpoint: Endpoint) -> int | None:
        """The number the endpoint serves the primary port on."""
        if endpoint.port is not None:
            return endpoint.port
        return self.ports[0].port if self.ports else None


@attrs.frozen
class Snapshot:
    """Everything a source knows at one moment.

    ``complete`` is False when the read failed or was partial: the planner
    never deletes anything on behalf of an incomplete source.  ``changed``
    is an optional hint naming the keys that differ from the source's
    previous snapshot (``None``: unknown, the runtime compares).
    """

    source: str
    services: Mapping[ServiceKey, DesiredService] = attrs.field(hash=False, eq=False)
    complete: bool = True
    changed: frozenset[ServiceKey] | None = None

    # Note for sources: an incomplete snapshot is overlaid on the previous
    # one and its ``changed`` hint is dropped (the runtime compares), so the
    # first complete snapshot after an incomplete one should carry no hint.

    @classmethod
    def of(
        cls, source: str, services: Iterable[DesiredService], *, complete: bool = True
    ) -> Snapshot:
        return cls(source, {service.key: service for service in services}, complete)


@attrs.frozen
class Observed:
    """What a sink holds under one key.

    ``owned`` is False for an object the sink must not touch (made by
    somebody else).  ``service`` is the sink's reading of its objects back
    into the model (``None`` if it cannot be read back: it will be
    rewritten).  ``sources`` is what the sink recorded as the objects'
    origin; ``None`` when unknown (e.g. adopted from the Go consul-sync).
    ``counted`` False: an entry that splits out part of another entry's
    objects (the gateway sink's route a service no longer wants); the prune
    budget measures what a sink owns without it, so splitting does not
    raise the budget.
    """

    key: ServiceKey
    owned: bool = True
    service: DesiredService | None = None
    sources: tuple[str, ...] | None = None
    counted: bool = True


class Action(enum.StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"


@attrs.frozen
class Change:
    """One write a sink is asked to make."""

    action: Action
    key: ServiceKey
    desired: DesiredService | None = None
    observed: Observed | None = None


def _tuple_of_notes(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@attrs.frozen
class StatusNote:
    """What a source or a sink has to say about one key on the status page.

    Returned by the optional ``status_notes(keys)`` method of a source or a
    sink (see ``docs/plugins.md``): ``name`` is what the key is called
    there when that differs from the key's name (the Kubernetes name of a
    sanitised Consul name); ``notes`` are short sentences for people
    (renamed and why, instances left out and why, a name conflict);
    ``skipped`` is True when the service is not written there at all.
    Never put secrets in them.
    """

    name: str | None = None
    notes: tuple[str, ...] = attrs.field(converter=_tuple_of_notes, default=())
    skipped: bool = False


class _Drop(enum.Enum):
    DROP = "DROP"


#: Returned by ``consul_sync_transform_service`` to keep a service out of every sink.
DROP = _Drop.DROP


# --- protocols ---------------------------------------------------------------

Publish = Callable[[Snapshot], Awaitable[None]]


@runtime_checkable
class Source(Protocol):
    """A running source (made by a source type's constructor).

    ``run`` watches until cancelled and calls ``publish`` with a new
    snapshot whenever something changed (the first call should come as soon
    as a first read finished, complete or not).  ``snapshot`` performs one
    fresh full read, used by ``run --once``, ``plan``, ``render`` and the
    periodic resync.  ``aclose`` releases connections.
    """

    name: str

    async def run(self, publish: Publish) -> None: ...

    async def snapshot(self) -> Snapshot: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class Sink(Protocol):
    """A running sink.

    ``observe`` reports what the sink owns now (``fresh=True`` re-reads it,
    otherwise a cached view may be returned).  ``apply`` makes one change
    and raises :class:`consul_sync.errors.SinkError` when it cannot.
    ``render`` turns desired services into the objects the sink would write,
    without contacting anything.  ``concurrency`` bounds parallel applies.
    An optional ``active`` attribute, when False, makes the runtime plan and
    apply nothing for the sink (a standby replica under leader election; it
    marks every key dirty when it becomes active).
    """

    name: str
    concurrency: int

    async def open(self) -> None: ...

    async def observe(self, *, fresh: bool = False) -> Mapping[ServiceKey, Observed]: ...

    async def apply(self, change: Change) -> None: ...

    def render(self, services: Sequence[DesiredService]) -> list[dict[str, Any]]: ...

    async def aclose(self) -> None: ...
