"""Pure rendering of desired services as Kubernetes objects, and back.

Shared by the ``manifests`` sink (YAML files or stdout) and the live
``kubernetes`` sink.  No I/O, no ``kubernetes`` import: plain dicts as the
API server speaks them.

Objects for one desired service:

* a headless ``Service`` (``clusterIP: None``) named after the service
  (sanitised to a DNS-1035 label), labelled
  ``app.kubernetes.io/managed-by: consul-sync`` and
  ``app.kubernetes.io/name: <name>``, annotated with the owner id and the
  sources (and, when the service carries labels or annotations of its own,
  the keys of those, so that a key dropped later is known to be ours to
  remove and keys other people add are never mistaken for ours);
* ``EndpointSlice``\\ s grouped as the Kubernetes EndpointSlice controller
  groups them: by address type (IPv4, IPv6, FQDN for hostnames) and by the
  port numbers the endpoints listen on, at most ``max_per_slice`` endpoints
  each, labelled ``kubernetes.io/service-name``,
  ``endpointslice.kubernetes.io/managed-by: consul-sync`` and the
  managed-by label, annotated with the owner id, and (when the Service's
  uid is known) with an ownerReference to the Service.  Slices are also
  grouped by the source their endpoints came from (``Endpoint.source``):
  a slice whose source is not the Service's only source says so in
  ``consul-sync.io/source``; a service of several sources gets per-source
  slice names (base name plus a short hash of the source), a service of one
  keeps the names it always had.

Names come from :mod:`.naming`; what Kubernetes would refuse is left out by
:mod:`.validate`; reading objects back and comparing them is :mod:`.compare`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any

import attrs

from consul_sync.model import DesiredService, Endpoint
from consul_sync_kube.names import sanitize, short_hash
from consul_sync_kube.objects import (
    MANAGED_BY,
    MANAGER,
    NAME_ANNOTATION,
    NAME_LABEL,
    OWNER_ANNOTATION,
    SOURCES_ANNOTATION,
)

from .naming import NameBook
from .validate import address_check

SLICE_MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
#: On an EndpointSlice: the source its endpoints came from (an annotation, not
#: a label: source names are free text).  Left out when it is the Service's
#: only source, so single-source services look as they always did.
SOURCE_ANNOTATION = "consul-sync.io/source"
#: Keys of the service's own labels / annotations (comma-separated), written
#: only when there are some.
LABEL_KEYS_ANNOTATION = "consul-sync.io/labels"
ANNOTATION_KEYS_ANNOTATION = "consul-sync.io/annotations"
OUR_LABELS = (MANAGED_BY, NAME_LABEL)
OUR_ANNOTATIONS = (
    OWNER_ANNOTATION,
    SOURCES_ANNOTATION,
    NAME_ANNOTATION,
    LABEL_KEYS_ANNOTATION,
    ANNOTATION_KEYS_ANNOTATION,
)
DEFAULT_MAX_PER_SLICE = 100
API_MAX_PER_SLICE = 1000


# --- endpoints and slices ------------------------------------------------


def slice_ports(service: DesiredService, number: int | None) -> list[dict[str, Any]]:
    ports = []
    for index, port in enumerate(service.ports):
        item: dict[str, Any] = {"name": port.name, "port": port.port, "protocol": port.protocol}
        if index == 0 and number is not None:
            item["port"] = number
        if port.app_protocol:
            item["appProtocol"] = port.app_protocol
        ports.append(item)
    return ports


def endpoint_object(endpoint: Endpoint, address: str | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {
        "addresses": [address or endpoint.address],
        "conditions": {
            "ready": endpoint.ready,
            "serving": endpoint.serving,
            "terminating": endpoint.terminating,
        },
    }
    if endpoint.hostname:
        item["hostname"] = endpoint.hostname
    if endpoint.node_name:
        item["nodeName"] = endpoint.node_name
    if endpoint.zone:
        item["zone"] = endpoint.zone
    return item


GroupKey = tuple[str, int | None, str | None]  # (address type, primary port number, source)


def default_source(sources: Sequence[str]) -> str | None:
    """The source a slice without :data:`SOURCE_ANNOTATION` stands for: the
    Service's only source, if it has exactly one (objects written before
    slices were attributed, or by the Go version, read back so)."""
    return sources[0] if len(sources) == 1 else None


def _address(kind: str, endpoint: Endpoint) -> str:
    # The API server only accepts lowercase hostnames; DNS does not care.
    return endpoint.address.lower() if kind == "FQDN" else endpoint.address


def group_endpoints(service: DesiredService) -> tuple[dict[GroupKey, list[Endpoint]], list[str]]:
    """Endpoints by (address type, port); invalid addresses and duplicates
    within one slice group are reported and left out."""
    groups: dict[GroupKey, list[Endpoint]] = {}
    seen: set[tuple[GroupKey, str]] = set()
    problems = []
    where = f"service {service.namespace}/{service.name}"
    fallback = default_source(service.sources)
    for endpoint in service.endpoints:
        kind, refusal = address_check(endpoint.address)
        if kind is None:
            problems.append(f"{where}: instance {endpoint.address!r} left out: {refusal}")
            continue
        # and by source: an endpoint without one is the service's only source's
        group = (kind, service.port_for(endpoint), endpoint.source or fallback)
        address = _address(kind, endpoint)
        if (group, address) in seen:
            problems.append(
                f"{where}: endpoint {address} port {group[1]} is listed twice; keeping the first"
            )
            continue
        seen.add((group, address))
        groups.setdefault(group, []).append(endpoint)
    return groups, problems


def slice_base_name(k8s_name: str, group: GroupKey, *, per_source: bool = False) -> str:
    """``<service>-v4-<port>``; with ``per_source`` (a service of several
    sources), plus a short hash of the source."""
    kind, number, source = group
    short = {"IPv4": "v4", "IPv6": "v6", "FQDN": "fqdn"}[kind]
    base = f"{k8s_name}-{short}-{number if number is not None else 'none'}"
    if per_source and source is not None:
        base += "-" + short_hash(source)
    return base


def pack(
    group: GroupKey,
    endpoints: Sequence[Endpoint],
    base: str,
    max_per_slice: int,
    existing: Mapping[str, Iterable[str]] | None = None,
    reserved: Collection[str] = (),
) -> dict[str, list[Endpoint]]:
    """Assign endpoints to slices named ``base``, ``base-2``, ...

    With ``existing`` (slice name -> addresses it holds now, for this group),
    endpoints stay where they are and new ones fill existing slices with
    room before a new slice is made, so one instance change rewrites one
    slice.  Slices left empty are not returned (they are to be deleted).
    New slices never take a name in ``reserved`` (held by someone else).
    """
    slices: dict[str, list[Endpoint]] = {name: [] for name in (existing or {})}
    where: dict[str, str] = {}
    for name, addresses in (existing or {}).items():
        for address in addresses:
            where.setdefault(address, name)
    kind = group[0]
    homeless = []
    for endpoint in endpoints:
        home = where.get(_address(kind, endpoint))
        if home is not None and len(slices[home]) < max_per_slice:
            slices[home].append(endpoint)
        else:
            homeless.append(endpoint)
    ordered = sorted(slices, key=_slice_order(base))
    for endpoint in homeless:
        room = next((n for n in ordered if len(slices[n]) < max_per_slice), None)
        if room is None:
            room = _free_name(base, lambda n: n in slices or n in reserved)
            slices[room] = []
            ordered.append(room)
        slices[room].append(endpoint)
    return {name: members for name, members in slices.items() if members}


def _free_name(base: str, taken: Callable[[str], bool]) -> str:
    index = 1
    while taken(name := base if index == 1 else f"{base}-{index}"):
        index += 1
    return name


def _slice_order(base: str) -> Callable[[str], tuple[int, str]]:
    """Sort key: ``base``, ``base-2``, ``base-3``, ..., then other names."""

    def key(name: str) -> tuple[int, str]:
        if name == base:
            return (1, name)
        rest = name.removeprefix(base + "-")
        return (int(rest), name) if rest != name and rest.isdigit() else (1 << 30, name)

    return key


# --- objects ---------------------------------------------------------------


def service_object(service: DesiredService, k8s_name: str, owner: str) -> dict[str, Any]:
    labels = dict(service.labels)
    labels.update({MANAGED_BY: MANAGER, NAME_LABEL: k8s_name})
    annotations = dict(service.annotations)
    annotations[OWNER_ANNOTATION] = owner
    annotations[SOURCES_ANNOTATION] = ",".join(service.sources)
    if k8s_name != service.name:
        annotations[NAME_ANNOTATION] = service.name
    own_labels = sorted(k for k, _ in service.labels if k not in OUR_LABELS)
    own_annotations = sorted(k for k, _ in service.annotations if k not in OUR_ANNOTATIONS)
    if own_labels:
        annotations[LABEL_KEYS_ANNOTATION] = ",".join(own_labels)
    if own_annotations:
        annotations[ANNOTATION_KEYS_ANNOTATION] = ",".join(own_annotations)
    ports = []
    for port in service.ports:
        item: dict[str, Any] = {"name": port.name, "port": port.port, "protocol": port.protocol}
        if port.app_protocol:
            item["appProtocol"] = port.app_protocol
        ports.append(item)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": k8s_name,
            "namespace": service.namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": {"clusterIP": "None", "ports": ports},
    }


def owner_reference(k8s_name: str, uid: str) -> dict[str, Any]:
    """The ownerReference of a slice to its Service (garbage collection)."""
    return {"apiVersion": "v1", "kind": "Service", "name": k8s_name, "uid": uid, "controller": True}


def slice_object(
    service: DesiredService,
    k8s_name: str,
    owner: str,
    name: str,
    group: GroupKey,
    endpoints: Sequence[Endpoint],
    service_uid: str | None = None,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": service.namespace,
        "labels": {
            SERVICE_NAME_LABEL: k8s_name,
            SLICE_MANAGED_BY: MANAGER,
            MANAGED_BY: MANAGER,
        },
        "annotations": {OWNER_ANNOTATION: owner},
    }
    if group[2] is not None and group[2] != default_source(service.sources):
        metadata["annotations"][SOURCE_ANNOTATION] = group[2]
    if service_uid:
        metadata["ownerReferences"] = [owner_reference(k8s_name, service_uid)]
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": metadata,
        "addressType": group[0],
        "endpoints": [endpoint_object(e, _address(group[0], e)) for e in endpoints],
        "ports": slice_ports(service, group[1]),
    }


class _AnyOf(Collection[str]):
    """Names in any of two collections (only ``in`` is used)."""

    def __init__(self, first: Collection[str], second: Collection[str]) -> None:
        self.first, self.second = first, second

    def __contains__(self, name: object) -> bool:
        return name in self.second or name in self.first

    def __iter__(self) -> Iterator[str]:
        return iter({*self.first, *self.second})

    def __len__(self) -> int:
        return len({*self.first, *self.second})


@attrs.frozen
class Rendered:
    service: dict[str, Any]
    slices: tuple[dict[str, Any], ...]
    problems: tuple[str, ...] = ()

    def objects(self) -> list[dict[str, Any]]:
        return [self.service, *self.slices]


def render(
    service: DesiredService,
    *,
    k8s_name: str | None = None,
    owner: str = MANAGER,
    max_per_slice: int = DEFAULT_MAX_PER_SLICE,
    existing: Mapping[GroupKey, Mapping[str, Iterable[str]]] | None = None,
    reserved: Collection[str] = (),
    service_uid: str | None = None,
) -> Rendered:
    """The Service and EndpointSlices for one desired service.

    ``existing`` is the current packing of the service's slices (see
    :func:`packing`), ``reserved`` slice names that others hold, and
    ``service_uid`` the uid of the live Service, for the slices'
    ownerReferences.
    """
    name = k8s_name or sanitize(service.name)
    groups, problems = group_endpoints(service)
    existing = existing or {}
    per_source = len(service.sources) > 1
    # A new slice takes no name another group holds or was given, whatever
    # the groups' base names.
    held = {slice_name for packed in existing.values() for slice_name in packed}
    slices = []
    for group in sorted(groups, key=lambda g: (g[0], -1 if g[1] is None else g[1], g[2] or "")):
        base = slice_base_name(name, group, per_source=per_source)
        own = existing.get(group) or {}
        others = _AnyOf(reserved, held.difference(own))
        packed = pack(group, groups[group], base, max_per_slice, own, others)
        held.update(packed)
        for slice_name in sorted(packed, key=_slice_order(base)):
            slices.append(
                slice_object(
                    service, name, owner, slice_name, group, packed[slice_name], service_uid
                )
            )
    return Rendered(service_object(service, name, owner), tuple(slices), tuple(problems))


def render_named(
    services: Sequence[DesiredService],
    names: NameBook,
    *,
    owner: str,
    max_per_slice: int = DEFAULT_MAX_PER_SLICE,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Every object for ``services``, named by ``names``; and the problems."""
    names.refresh()
    objects: list[dict[str, Any]] = []
    problems: list[str] = []
    for service in services:
        rendered = render(
            service, k8s_name=names.name(service.key), owner=owner, max_per_slice=max_per_slice
        )
        objects.extend(rendered.objects())
        problems.extend(rendered.problems)
    return objects, problems


def render_logged(
    services: Sequence[DesiredService],
    names: NameBook,
    *,
    owner: str,
    max_per_slice: int,
    log: logging.Logger,
    sink: str,
) -> list[dict[str, Any]]:
    """:func:`render_named` for a sink's ``render``: the problems go to ``log`` as warnings."""
    objects, problems = render_named(services, names, owner=owner, max_per_slice=max_per_slice)
    for problem in problems:
        log.warning(problem, extra={"sink": sink})
    return objects
