"""Pure parsing of the Consul HTTP API bodies the ``consul`` source reads.

No I/O here: every function takes the decoded JSON of one answer and
returns plain values, or raises :class:`Malformed` when the answer's shape
is not what Consul sends (the caller then treats the read as failed and
keeps its last good state).  A single bad entry inside a good answer is
skipped with a message instead, so that one odd registration cannot hide
all the others.

The shapes are those recorded from Consul 1.10 (see the fixtures' README):

``/v1/catalog/services``   ``{"name": ["tag", ...], ...}``
``/v1/health/service/N``   ``[{"Node": {...}, "Service": {...}, "Checks": [...]}, ...]``
``/v1/health/state/any``   ``[{"Node", "CheckID", "Status", "ServiceID", "ServiceName", ...}]``
``/v1/catalog/nodes``       ``[{"Node": "n1", "Address": "10.0.0.1", ...}, ...]``
``/v1/catalog/node-services/N``  ``{"Node": {...} | null, "Services": [{"ID", "Service",
"ModifyIndex", ...}]}`` (Consul >= 1.7; not recorded: the documented shape).  This one is
read from its bytes (:func:`node_services_bytes`): at scale it is the largest answer.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

try:
    import msgspec
except ImportError:  # no wheel for this platform (see pyproject.toml): the json module reads it
    MSGSPEC = False
else:
    MSGSPEC = True

from .convert import Health, Instance, health_of, reason_of, str_map


class Malformed(ValueError):
    """The answer does not have the shape Consul gives."""


# --- /v1/catalog/services -----------------------------------------------------


def catalog_services(body: Any) -> dict[str, tuple[str, ...]]:
    """Service name -> its tags (sorted: Consul's order is not stable)."""
    if not isinstance(body, dict):
        raise Malformed(f"catalog/services: expected an object, got {type(body).__name__}")
    out: dict[str, tuple[str, ...]] = {}
    for name, raw in body.items():
        tags = [] if raw is None else raw
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise Malformed(f"catalog/services: tags of {name!r} are not a list of strings")
        out[name] = tuple(sorted(set(tags)))
    return out


def tagged_names(catalog: Mapping[str, tuple[str, ...]], tag: str) -> set[str]:
    """The names whose tag union holds ``tag`` (every name when ``tag`` is empty)."""
    if not tag:
        return set(catalog)
    return {name for name, tags in catalog.items() if tag in tags}


# --- /v1/health/service/NAME --------------------------------------------------


@attrs.frozen
class Entry:
    """One instance as ``health/service`` gives it, before the health policy.

    ``service_checks`` are the instance's own checks and ``node_checks`` its
    node's, each as ``(CheckID, Status)`` pairs sorted by CheckID.  ``kind``
    is Consul's ``Service.Kind`` ("" for a typical service; "connect-proxy",
    "mesh-gateway", ... otherwise).
    """

    service: str
    id: str
    node: str
    address: str
    port: int
    tags: tuple[str, ...] = ()
    meta: tuple[tuple[str, str], ...] = ()
    kind: str = ""
    service_checks: tuple[tuple[str, str], ...] = ()
    node_checks: tuple[tuple[str, str], ...] = ()
    #: CheckID -> Name of the service checks (for the status page's reasons).
    check_names: tuple[tuple[str, str], ...] = attrs.field(default=(), eq=False)

    def instance(self, node_checks: Iterable[tuple[str, str]] | None = None) -> Instance:
        """The instance for :func:`convert.to_desired`; ``node_checks``
        overrides the node checks read with the entry (a fresher view)."""
        nodes = self.node_checks if node_checks is None else tuple(node_checks)
        health = health_of((*self.service_checks, *nodes))
        return Instance(
            service=self.service,
            id=self.id,
            address=self.address,
            port=self.port,
            tags=self.tags,
            meta=self.meta,
            health=health,
            node=self.node,
            reason=None
            if health is Health.PASSING
            else reason_of(
                self.service_checks, nodes, node=self.node, names=dict(self.check_names)
            ),
        )

    @property
    def health(self) -> Health:
        return health_of((*self.service_checks, *self.node_checks))


@attrs.frozen
class ParsedService:
    entries: tuple[Entry, ...]
    problems: tuple[str, ...] = ()
    #: Entries in the answer, usable or not (0: Consul returned ``[]``).
    raw_count: int = 0


def health_service(name: str, body: Any) -> ParsedService:
    """Instances of ``name`` from a ``health/service/NAME`` answer.

    The address is ``Service.Address``, or ``Node.Address`` when it is
    empty; IPv4, IPv6 literals and host names are all kept as given.  An
    entry without a usable port or address is skipped with a problem
    message.
    """
    if not isinstance(body, list):
        raise Malformed(f"health/service/{name}: expected a list, got {type(body).__name__}")
    entries: list[Entry] = []
    problems: list[str] = []
    for position, item in enumerate(body):
        if not isinstance(item, dict):
            raise Malformed(f"health/service/{name}: entry {position} is not an object")
        node = item.get("Node")
        service = item.get("Service")
        checks = item.get("Checks") or []
        if not isinstance(node, dict) or not isinstance(service, dict):
            raise Malformed(f"health/service/{name}: entry {position} lacks Node or Service")
        if not isinstance(checks, list):
            raise Malformed(f"health/service/{name}: Checks of entry {position} is not a list")
        sid = service.get("ID")
        node_name = node.get("Node")
        if not isinstance(sid, str) or not isinstance(node_name, str):
            raise Malformed(f"health/service/{name}: entry {position} lacks Service.ID or Node")
        label = f"service {name!r} instance {sid!r} on node {node_name!r}"
        port = service.get("Port")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            problems.append(f"{label}: port {port!r} is not 1-65535; instance skipped")
            continue
        address = service.get("Address") or node.get("Address") or ""
        if not isinstance(address, str) or not address.strip():
            problems.append(f"{label}: neither Service.Address nor Node.Address is set; skipped")
            continue
        tags = service.get("Tags") or []
        if not isinstance(tags, list):
            tags = []
        service_checks: list[tuple[str, str]] = []
        node_checks: list[tuple[str, str]] = []
        check_names: list[tuple[str, str]] = []
        for check in checks:
            if not isinstance(check, dict):
                raise Malformed(f"health/service/{name}: a check of {label} is not an object")
            pair = (str(check.get("CheckID", "")), str(check.get("Status", "critical")))
            (service_checks if check.get("ServiceID") else node_checks).append(pair)
            if check.get("ServiceID") and check.get("Name") and pair[1] != "passing":
                check_names.append((pair[0], str(check["Name"])))
        kind = service.get("Kind") or ""
        entries.append(
            Entry(
                service=str(service.get("Service") or name),
                id=sid,
                node=node_name,
                address=address.strip(),
                port=port,
                tags=tuple(str(t) for t in tags),
                meta=tuple(sorted(str_map(service.get("Meta")).items())),
                kind=kind if isinstance(kind, str) else str(kind),
                service_checks=tuple(sorted(service_checks)),
                node_checks=tuple(sorted(node_checks)),
                check_names=tuple(check_names),
            )
        )
    return ParsedService(tuple(entries), tuple(problems), len(body))


# --- /v1/health/state/any -------------------------------------------------------


@attrs.frozen
class Check:
    node: str
    check_id: str
    status: str
    service_id: str
    service_name: str


#: ``(node, CheckID)`` -> check.
Checks = dict[tuple[str, str], Check]


def health_state(body: Any) -> Checks:
    """Every check of a ``health/state/any`` answer, by ``(Node, CheckID)``."""
    if not isinstance(body, list):
        raise Malformed(f"health/state/any: expected a list, got {type(body).__name__}")
    out: Checks = {}
    for position, item in enumerate(body):
        if not isinstance(item, dict):
            raise Malformed(f"health/state/any: entry {position} is not an object")
        node, check_id = item.get("Node"), item.get("CheckID")
        if not isinstance(node, str) or not isinstance(check_id, str):
            raise Malformed(f"health/state/any: entry {position} lacks Node or CheckID")
        out[(node, check_id)] = Check(
            node=node,
            check_id=check_id,
            status=str(item.get("Status", "critical")),
            service_id=str(item.get("ServiceID") or ""),
            service_name=str(item.get("ServiceName") or ""),
        )
    return out


@attrs.frozen
class ChecksDiff:
    """What moved between two ``health/state/any`` answers."""

    #: Services one of whose checks appeared, went or changed status.
    services: frozenset[str]
    #: Nodes one of whose node checks (``ServiceID == ""``) did.
    nodes: frozenset[str]


def diff_checks(old: Checks, new: Checks) -> ChecksDiff:
    services: set[str] = set()
    nodes: set[str] = set()
    for key in old.keys() | new.keys():
        before, after = old.get(key), new.get(key)
        if before is not None and after is not None and before.status == after.status:
            continue
        for check in (before, after):
            if check is None:
                continue
            if check.service_id:
                services.add(check.service_name)
            else:
                nodes.add(check.node)
    return ChecksDiff(frozenset(services), frozenset(nodes))


def check_members(body: Any) -> dict[str, frozenset[tuple[str, str]]]:
    """Service name -> ``(Node, ServiceID)`` of its instances, from the
    service checks of a ``health/state/any`` answer (a lean pass: at scale
    the answer holds every check of every tagged instance)."""
    if not isinstance(body, list):
        raise Malformed(f"health/state/any: expected a list, got {type(body).__name__}")
    members: dict[str, set[tuple[str, str]]] = {}
    try:
        for item in body:
            service_id = item["ServiceID"]
            if service_id:
                members.setdefault(item["ServiceName"], set()).add((item["Node"], service_id))
    except (TypeError, KeyError):
        raise Malformed("health/state/any: an entry lacks Node, ServiceID or ServiceName") from None
    return {name: frozenset(ids) for name, ids in members.items()}


# --- /v1/catalog/nodes and /v1/catalog/node-services/NODE ----------------------


def catalog_nodes(body: Any) -> dict[str, str]:
    """Node name -> its address."""
    if not isinstance(body, list):
        raise Malformed(f"catalog/nodes: expected a list, got {type(body).__name__}")
    out: dict[str, str] = {}
    for position, item in enumerate(body):
        if not isinstance(item, dict) or not isinstance(item.get("Node"), str):
            raise Malformed(f"catalog/nodes: entry {position} lacks Node")
        address = item.get("Address")
        out[item["Node"]] = address if isinstance(address, str) else ""
    return out


def instance_key(name: str, node: str, service_id: str) -> str:
    """One instance as a single string (name first: :func:`name_of` takes it back)."""
    return f"{name}\x00{node}\x00{service_id}"


def name_of(key: str) -> str:
    """The service name of an :func:`instance_key`."""
    return key.partition("\x00")[0]


@attrs.define
class Scan:
    """An instance scan's tagged instances: :func:`instance_key` -> ``ModifyIndex``, and
    each service name's highest ``ModifyIndex``.

    Flat string keys because of the size: at 30,000 instances, comparing per-name dicts
    of ``(node, ID)`` tuples made of freshly decoded strings took ~60 ms a scan; a dict of
    strings compares with the previous one in a few ms (and holds nothing the garbage
    collector walks)."""

    indexes: dict[str, int] = attrs.field(factory=dict)
    top: dict[str, int] = attrs.field(factory=dict)

    def add(self, name: str, node: str, service_id: str, index: int) -> None:
        self.indexes[instance_key(name, node, service_id)] = index
        if index > self.top.get(name, -1):
            self.top[name] = index


def node_services(node: str, body: Any, into: Scan) -> None:
    """Add the instances of a decoded ``catalog/node-services/NODE`` answer to ``into``."""
    if not isinstance(body, dict) or not isinstance(body.get("Services") or [], list):
        raise Malformed(f"catalog/node-services/{node}: expected an object with Services")
    for position, item in enumerate(body.get("Services") or ()):
        try:
            name, sid, index = item["Service"], item["ID"], item["ModifyIndex"]
        except (TypeError, KeyError):
            name = sid = index = None
        if not (isinstance(name, str) and isinstance(sid, str) and type(index) is int):
            raise Malformed(
                f"catalog/node-services/{node}: service {position} lacks a string ID and "
                "Service or an integer ModifyIndex"
            )
        into.add(name, node, sid, index)


if MSGSPEC:

    class _Instance(msgspec.Struct, gc=False):
        ID: str
        Service: str
        ModifyIndex: int

    class _NodeServices(msgspec.Struct, gc=False):
        Services: list[_Instance] | None = None

    _node_services_decoder = msgspec.json.Decoder(_NodeServices)


def node_services_bytes(node: str, raw: bytes, into: Scan) -> None:
    """:func:`node_services` from the answer's bytes, decoding only each instance's ``ID``,
    ``Service`` and ``ModifyIndex``.

    With msgspec, the 11.7 MB answer of 30,000 instances decodes in ~12 ms into 30,000
    small objects the garbage collector does not track; ``json.loads`` takes ~140 ms and
    makes ~300,000 dicts and lists (every field of every instance), whose collection
    afterwards cost as much again.  Without msgspec (a platform it has no wheel for) the
    json module reads it, with the same results."""
    if not MSGSPEC:
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise Malformed(f"catalog/node-services/{node}: not JSON: {exc}") from None
        node_services(node, body, into)
        return
    try:
        answer = _node_services_decoder.decode(raw)
    except msgspec.DecodeError as exc:  # ValidationError included: a field missing or odd
        raise Malformed(f"catalog/node-services/{node}: {exc}") from None
    for item in answer.Services or ():
        into.add(item.Service, node, item.ID, item.ModifyIndex)


def node_checks(checks: Checks) -> dict[str, tuple[tuple[str, str], ...]]:
    """Node -> its node checks as sorted ``(CheckID, Status)`` pairs."""
    out: dict[str, list[tuple[str, str]]] = {}
    for check in checks.values():
        if not check.service_id:
            out.setdefault(check.node, []).append((check.check_id, check.status))
    return {node: tuple(sorted(pairs)) for node, pairs in out.items()}


def bexpr_string(value: str) -> str:
    """``value`` as a double-quoted string of Consul's filter language."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
