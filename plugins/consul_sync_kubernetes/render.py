"""Pure rendering of desired services as Kubernetes objects, and back.

Shared by the ``manifests`` sink (YAML files or stdout) and the live
``kubernetes`` sink.  No I/O, no ``kubernetes`` import: plain dicts as the
API server speaks them.

Objects for one desired service:

* a headless ``Service`` (``clusterIP: None``) named after the service
  (sanitised to a DNS-1035 label), labelled
  ``app.kubernetes.io/managed-by: consul-sync`` and
  ``app.kubernetes.io/name: <name>``, annotated with the owner id and the
  sources;
* ``EndpointSlice``\\ s grouped as the Kubernetes EndpointSlice controller
  groups them: by address type (IPv4, IPv6, FQDN for hostnames) and by the
  port numbers the endpoints listen on, at most ``max_per_slice`` endpoints
  each, labelled ``kubernetes.io/service-name``,
  ``endpointslice.kubernetes.io/managed-by: consul-sync`` and the
  managed-by label.

``parse`` reads such objects back into the model so the planner can compare
them with ``==``: ``parse(render(s)) == s`` for every valid service.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

import attrs

from consul_sync.model import DesiredService, Endpoint, Port

MANAGED_BY = "app.kubernetes.io/managed-by"
NAME_LABEL = "app.kubernetes.io/name"
SLICE_MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGER = "consul-sync"
OWNER_ANNOTATION = "consul-sync.io/owner"
SOURCES_ANNOTATION = "consul-sync.io/sources"
NAME_ANNOTATION = "consul-sync.io/name"
OUR_LABELS = (MANAGED_BY, NAME_LABEL)
OUR_ANNOTATIONS = (OWNER_ANNOTATION, SOURCES_ANNOTATION, NAME_ANNOTATION)
DEFAULT_MAX_PER_SLICE = 100
API_MAX_PER_SLICE = 1000

_DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?"
    r"(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*\.?"
)


# --- names -----------------------------------------------------------------


def short_hash(text: str, length: int = 5) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def sanitize(name: str) -> str:
    """A DNS-1035 label for ``name``: lowercase, ``[a-z0-9-]``, starting with a
    letter, at most 63 characters.  Deterministic; a name that had to be
    shortened keeps a hash of the original so that distinct long names stay
    distinct."""
    if len(name) <= 63 and _DNS1035.fullmatch(name):
        return name
    text = re.sub(r"[^a-z0-9-]+", "-", name.lower())
    text = re.sub(r"-{2,}", "-", text).strip("-")
    text = re.sub(r"^[^a-z]+", "", text)
    if not text:
        text = "svc-" + short_hash(name)
    if len(text) > 63:
        text = text[:57].rstrip("-") + "-" + short_hash(name)
    return text


@attrs.frozen
class Naming:
    """Kubernetes names for a set of services, collisions resolved."""

    names: dict[tuple[str, str], str]
    renamed: tuple[str, ...] = ()
    collisions: tuple[str, ...] = ()


def assign_names(keys: Iterable[tuple[str, str]]) -> Naming:
    """Sanitise every name; where two different names sanitise alike, both get
    a stable hash suffix of their original name."""
    by_target: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for namespace, name in keys:
        by_target.setdefault((namespace, sanitize(name)), []).append((namespace, name))
    names: dict[tuple[str, str], str] = {}
    renamed, collisions = [], []
    for (namespace, target), originals in by_target.items():
        if len(originals) == 1:
            names[originals[0]] = target
            if target != originals[0][1]:
                renamed.append(f"{namespace}/{originals[0][1]} -> {target}")
            continue
        for original in originals:
            suffixed = f"{target[:57].rstrip('-')}-{short_hash(original[1])}"
            names[original] = suffixed
        collisions.append(
            f"{namespace}: {', '.join(repr(o[1]) for o in sorted(originals))} all sanitise to "
            f"{target!r}; each gets a hash suffix"
        )
    return Naming(names, tuple(sorted(renamed)), tuple(collisions))


class NameBook:
    """Kubernetes names for the runtime's current desired keys, recomputed
    only when the key set changes (``Context.desired_keys``)."""

    def __init__(self, desired_keys: Callable[[], tuple[int, Collection[tuple[str, str]]]]) -> None:
        self._desired_keys = desired_keys
        self._version: int | None = None
        self.naming = Naming({})
        self._told: set[str] = set()

    def refresh(self) -> list[str]:
        """Recompute if the keys changed; returns news to log (renames, collisions)."""
        version, keys = self._desired_keys()
        if version == self._version:
            return []
        self._version = version
        self.naming = assign_names(keys)
        news = [n for n in (*self.naming.collisions, *self.naming.renamed) if n not in self._told]
        self._told.update(news)
        return news

    def name(self, key: tuple[str, str]) -> str:
        return self.naming.names.get(key) or sanitize(key[1])


# --- endpoints and slices ------------------------------------------------


def address_type(address: str) -> str | None:
    """``IPv4``, ``IPv6``, ``FQDN``, or ``None`` for something that is none."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "FQDN" if _HOSTNAME.fullmatch(address) else None
    return "IPv4" if ip.version == 4 else "IPv6"


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


def endpoint_object(endpoint: Endpoint) -> dict[str, Any]:
    item: dict[str, Any] = {
        "addresses": [endpoint.address],
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


GroupKey = tuple[str, int | None]  # (address type, primary port number)


def group_endpoints(service: DesiredService) -> tuple[dict[GroupKey, list[Endpoint]], list[str]]:
    """Endpoints by (address type, port); invalid addresses reported."""
    groups: dict[GroupKey, list[Endpoint]] = {}
    problems = []
    for endpoint in service.endpoints:
        kind = address_type(endpoint.address)
        if kind is None:
            problems.append(
                f"service {service.namespace}/{service.name}: endpoint address "
                f"{endpoint.address!r} is neither an IP address nor a hostname; skipped"
            )
            continue
        groups.setdefault((kind, service.port_for(endpoint)), []).append(endpoint)
    return groups, problems


def slice_base_name(k8s_name: str, group: GroupKey) -> str:
    kind, number = group
    short = {"IPv4": "v4", "IPv6": "v6", "FQDN": "fqdn"}[kind]
    return f"{k8s_name}-{short}-{number if number is not None else 'none'}"


def pack(
    group: GroupKey,
    endpoints: Sequence[Endpoint],
    base: str,
    max_per_slice: int,
    existing: Mapping[str, Iterable[str]] | None = None,
) -> dict[str, list[Endpoint]]:
    """Assign endpoints to slices named ``base``, ``base-2``, ...

    With ``existing`` (slice name -> addresses it holds now, for this group),
    endpoints stay where they are and new ones fill existing slices with
    room before a new slice is made, so one instance change rewrites one
    slice.  Slices left empty are not returned (they are to be deleted).
    """
    slices: dict[str, list[Endpoint]] = {name: [] for name in (existing or {})}
    where: dict[str, str] = {}
    for name, addresses in (existing or {}).items():
        for address in addresses:
            where.setdefault(address, name)
    homeless = []
    for endpoint in endpoints:
        home = where.get(endpoint.address)
        if home is not None and len(slices[home]) < max_per_slice:
            slices[home].append(endpoint)
        else:
            homeless.append(endpoint)
    ordered = sorted(slices, key=_slice_order)
    for endpoint in homeless:
        room = next((n for n in ordered if len(slices[n]) < max_per_slice), None)
        if room is None:
            room = _free_name(base, slices)
            slices[room] = []
            ordered.append(room)
        slices[room].append(endpoint)
    return {name: members for name, members in slices.items() if members}


def _free_name(base: str, taken: Mapping[str, object]) -> str:
    index = 1
    while (name := base if index == 1 else f"{base}-{index}") in taken:
        index += 1
    return name


def _slice_order(name: str) -> tuple[int, str]:
    match = re.search(r"-(\d+)$", name)
    return (int(match.group(1)) if match else 1, name)


# --- objects ---------------------------------------------------------------


def service_object(service: DesiredService, k8s_name: str, owner: str) -> dict[str, Any]:
    labels = dict(service.labels)
    labels.update({MANAGED_BY: MANAGER, NAME_LABEL: k8s_name})
    annotations = dict(service.annotations)
    annotations[OWNER_ANNOTATION] = owner
    annotations[SOURCES_ANNOTATION] = ",".join(service.sources)
    if k8s_name != service.name:
        annotations[NAME_ANNOTATION] = service.name
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


def slice_object(
    service: DesiredService,
    k8s_name: str,
    owner: str,
    name: str,
    group: GroupKey,
    endpoints: Sequence[Endpoint],
) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": service.namespace,
            "labels": {
                SERVICE_NAME_LABEL: k8s_name,
                SLICE_MANAGED_BY: MANAGER,
                MANAGED_BY: MANAGER,
            },
            "annotations": {OWNER_ANNOTATION: owner},
        },
        "addressType": group[0],
        "endpoints": [endpoint_object(e) for e in endpoints],
        "ports": slice_ports(service, group[1]),
    }


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
) -> Rendered:
    """The Service and EndpointSlices for one desired service."""
    name = k8s_name or sanitize(service.name)
    groups, problems = group_endpoints(service)
    slices = []
    for group in sorted(groups, key=lambda g: (g[0], -1 if g[1] is None else g[1])):
        packed = pack(
            group,
            groups[group],
            slice_base_name(name, group),
            max_per_slice,
            (existing or {}).get(group),
        )
        for slice_name in sorted(packed, key=_slice_order):
            slices.append(slice_object(service, name, owner, slice_name, group, packed[slice_name]))
    return Rendered(service_object(service, name, owner), tuple(slices), tuple(problems))


def render_all(
    services: Sequence[DesiredService],
    *,
    owner: str = MANAGER,
    max_per_slice: int = DEFAULT_MAX_PER_SLICE,
) -> tuple[list[Rendered], Naming]:
    naming = assign_names(s.key for s in services)
    return [
        render(s, k8s_name=naming.names[s.key], owner=owner, max_per_slice=max_per_slice)
        for s in services
    ], naming


# --- back to the model -----------------------------------------------------


def service_key(obj: Mapping[str, Any]) -> tuple[str, str]:
    """The model key a Service of ours stands for."""
    meta = obj.get("metadata", {})
    annotations = meta.get("annotations") or {}
    return (meta.get("namespace", ""), annotations.get(NAME_ANNOTATION) or meta.get("name", ""))


def parse(service_obj: Mapping[str, Any], slices: Iterable[Mapping[str, Any]]) -> DesiredService:
    """Read a rendered Service and its slices back into the model."""
    namespace, name = service_key(service_obj)
    meta = service_obj.get("metadata", {})
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if k not in OUR_LABELS}
    annotations = dict(meta.get("annotations") or {})
    sources = [s for s in annotations.get(SOURCES_ANNOTATION, "").split(",") if s]
    for key in OUR_ANNOTATIONS:
        annotations.pop(key, None)
    ports = [
        Port(p.get("name", ""), int(p["port"]), p.get("protocol", "TCP"), p.get("appProtocol"))
        for p in service_obj.get("spec", {}).get("ports") or []
    ]
    primary = ports[0].port if ports else None
    endpoints = []
    for obj in slices:
        slice_ports_ = obj.get("ports") or []
        number = None
        if ports and slice_ports_:
            match = [p for p in slice_ports_ if p.get("name", "") == ports[0].name]
            number = int(match[0]["port"]) if match and "port" in match[0] else None
        override = None if number == primary else number
        for item in obj.get("endpoints") or []:
            conditions = item.get("conditions") or {}
            ready = conditions.get("ready")
            ready = True if ready is None else bool(ready)
            serving = conditions.get("serving")
            for address in item.get("addresses") or []:
                endpoints.append(
                    Endpoint(
                        address=address,
                        port=override,
                        ready=ready,
                        serving=ready if serving is None else bool(serving),
                        terminating=bool(conditions.get("terminating", False)),
                        hostname=item.get("hostname"),
                        zone=item.get("zone"),
                        node_name=item.get("nodeName"),
                    )
                )
    return DesiredService(
        name=name,
        namespace=namespace,
        ports=ports,
        endpoints=endpoints,
        labels=labels,
        annotations=annotations,
        sources=sources,
    )


def owner_of(obj: Mapping[str, Any]) -> str | None:
    return ((obj.get("metadata", {}).get("annotations")) or {}).get(OWNER_ANNOTATION)


def is_managed(obj: Mapping[str, Any]) -> bool:
    return ((obj.get("metadata", {}).get("labels")) or {}).get(MANAGED_BY) == MANAGER
