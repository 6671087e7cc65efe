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

Names (:func:`assign_names`): a Consul name that is a DNS-1035 label is
used as it is; others are sanitised, keep the name their object has while
desired, and only they get a hash suffix when the name is taken.

``parse`` reads such objects back into the model so the planner can compare
them with ``==``: ``parse(render(s)) == s`` for every valid service in
canonical form.  ``differs`` tells whether a live object already holds
everything a rendered one would write (the live sink sends only objects
that differ).
"""

from __future__ import annotations

import copy
import hashlib
import ipaddress
import json
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any

import attrs

from consul_sync.model import DesiredService, Endpoint, Port, StatusNote

MANAGED_BY = "app.kubernetes.io/managed-by"
NAME_LABEL = "app.kubernetes.io/name"
SLICE_MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGER = "consul-sync"
OWNER_ANNOTATION = "consul-sync.io/owner"
SOURCES_ANNOTATION = "consul-sync.io/sources"
NAME_ANNOTATION = "consul-sync.io/name"
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
PROTOCOLS = ("TCP", "UDP", "SCTP")

_DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_FQDN = re.compile(
    r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)+"
)


# --- names -----------------------------------------------------------------


def short_hash(text: str, length: int = 5) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def is_valid_name(name: str) -> bool:
    """Whether ``name`` is a DNS-1035 label already (it is used as it is)."""
    return len(name) <= 63 and _DNS1035.fullmatch(name) is not None


def sanitize(name: str) -> str:
    """A DNS-1035 label for ``name``: lowercase, ``[a-z0-9-]``, starting with a
    letter, at most 63 characters.  Deterministic; a name that had to be
    shortened keeps a hash of the original so that distinct long names stay
    distinct."""
    if is_valid_name(name):
        return name
    text = re.sub(r"[^a-z0-9-]+", "-", name.lower())
    text = re.sub(r"-{2,}", "-", text).strip("-")
    text = re.sub(r"^[^a-z]+", "", text)
    if not text:
        text = "svc-" + short_hash(name)
    if len(text) > 63:
        text = text[:57].rstrip("-") + "-" + short_hash(name)
    return text


def suffixed(target: str, name: str, length: int = 5) -> str:
    """``target`` with a stable hash of the original ``name``: the name of a
    sanitised service whose sanitised name is taken."""
    return f"{target[: 62 - length].rstrip('-')}-{short_hash(name, length)}"


Key = tuple[str, str]


@attrs.frozen
class Naming:
    """Kubernetes names for a set of services, collisions resolved."""

    names: dict[Key, str]
    renamed: tuple[str, ...] = ()
    collisions: tuple[str, ...] = ()


def assign_names(keys: Iterable[Key], held: Mapping[Key, Key] | None = None) -> Naming:
    """The Kubernetes name of each key (``(namespace, name)``).

    ``held`` is what exists now: ``(namespace, Kubernetes name) -> the key
    the object of ours under that name stands for``.  The rules, in order:

    1. A name that is a DNS-1035 label already is the Kubernetes name,
       always.
    2. A sanitised key that holds an object of ours under its sanitised
       name (:func:`sanitize`) keeps it while desired, unless a name of
       rule 1 claims it.
    3. Other sanitised keys get their sanitised name when it is free:
       claimed by no name of rules 1-2, not held by an object of ours that
       stands for another desired key, and wanted by no other key of this
       rule.  Otherwise a key that holds an object of ours under another
       name (a suffixed one) keeps it (sticky), and a newcomer gets
       :func:`suffixed` (a collision).

    So an existing object is never renamed because a newcomer arrived; a
    suffix lasts only as long as the collision that made it (then the key
    takes its sanitised name back, through a planned delete of the
    suffixed object); and the result depends on the keys and the
    holdings, not on their order.
    """
    wanted = sorted(set(keys))
    desired = set(wanted)
    held = held or {}
    names: dict[Key, str] = {}
    claimed: set[Key] = set()
    sanitised: list[Key] = []
    for key in wanted:
        if is_valid_name(key[1]):
            names[key] = key[1]
            claimed.add(key)
        else:
            sanitised.append(key)
    holdings: dict[Key, list[str]] = {}
    for (_, k8s_name), stands_for in sorted(held.items()):
        if stands_for in desired and stands_for not in names:
            holdings.setdefault(stands_for, []).append(k8s_name)
    newcomers = []
    #: sanitised keys holding only other (suffixed) names: key -> that name
    sticky: dict[Key, str] = {}
    for key in sanitised:
        free = [n for n in holdings.get(key, ()) if (key[0], n) not in claimed]
        preferred = sanitize(key[1])
        if preferred in free:
            names[key] = preferred
            claimed.add((key[0], preferred))
        else:
            if free:
                sticky[key] = free[0]
            newcomers.append(key)
    occupied = claimed | {
        where
        for where, stands_for in held.items()
        if stands_for in desired and stands_for not in sticky
    }
    occupied |= {(key[0], name) for key, name in sticky.items()}
    by_target: dict[Key, list[Key]] = {}
    for key in newcomers:
        by_target.setdefault((key[0], sanitize(key[1])), []).append(key)
    collisions = []
    for (namespace, target), group in sorted(by_target.items()):
        if len(group) == 1 and (namespace, target) not in occupied:
            names[group[0]] = target  # (a sticky one takes its name back)
            occupied.add((namespace, target))
            continue
        for key in group:
            if key in sticky:  # still colliding: keeps the name it holds
                names[key] = sticky[key]
                continue
            length = 5
            while (namespace, name := suffixed(target, key[1], length)) in occupied:
                length += 1
            names[key] = name
            occupied.add((namespace, name))
        collisions.append(
            f"{namespace}: {', '.join(repr(k[1]) for k in group)} sanitise to {target!r}, "
            "which is taken or wanted by another; "
            + ", ".join(f"{k[1]!r} -> {names[k]!r}" for k in group)
        )
    renamed = sorted(f"{k[0]}/{k[1]} -> {names[k]}" for k in sanitised)
    return Naming(names, tuple(renamed), tuple(collisions))


class NameBook:
    """Kubernetes names for the runtime's current desired keys, recomputed
    only when the key set changes (``Context.desired_keys``); ``held``
    reports what the sink holds then (see :func:`assign_names`)."""

    def __init__(
        self,
        desired_keys: Callable[[], tuple[int, Collection[Key]]],
        held: Callable[[], Mapping[Key, Key]] | None = None,
    ) -> None:
        self._desired_keys = desired_keys
        self._held = held or dict
        self._version: int | None = None
        self.naming = Naming({})
        self.owners: dict[Key, Key] = {}
        self._told: set[str] = set()

    def refresh(self) -> list[str]:
        """Recompute if the keys changed; returns news to log (renames, collisions)."""
        version, keys = self._desired_keys()
        if version == self._version:
            return []
        self._version = version
        self.naming = assign_names(keys, self._held())
        self.owners = {(key[0], name): key for key, name in self.naming.names.items()}
        news = [n for n in (*self.naming.collisions, *self.naming.renamed) if n not in self._told]
        self._told.update(news)
        return news

    @property
    def version(self) -> int | None:
        return self._version

    def desired(self, key: Key) -> bool:
        return key in self.naming.names

    def name(self, key: Key) -> str:
        return self.naming.names.get(key) or sanitize(key[1])

    def key_of(self, namespace: str, k8s_name: str) -> Key | None:
        """The desired key whose Kubernetes name is ``k8s_name``, if any."""
        return self.owners.get((namespace, k8s_name))


def name_notes(
    names: NameBook, keys: Iterable[Key], left_out: Mapping[Key, Sequence[str]] | None = None
) -> dict[Key, StatusNote]:
    """For the status page: the Kubernetes name of each key whose name had
    to change, and why; and the instances ``left_out`` of a key's slices."""
    notes: dict[Key, StatusNote] = {}
    for key in keys:
        name = names.name(key)
        said: list[str] = []
        if name != key[1]:
            target = sanitize(key[1])
            if name == target:
                said.append(f"renamed to {name!r}: {key[1]!r} is not a DNS-1035 label")
            else:
                said.append(
                    f"renamed to {name!r}: {key[1]!r} is not a DNS-1035 label and its "
                    f"sanitised name {target!r} is taken (hash suffix)"
                )
        said.extend((left_out or {}).get(key, ()))
        if said:
            notes[key] = StatusNote(name=name, notes=said)
    return notes


# --- validation ------------------------------------------------------------


_DOTTED_QUAD = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+")


def _ip_refusal(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why ``ValidateEndpointIP`` (k8s ``pkg/apis/core/validation``, used by
    EndpointSlice validation) refuses ``ip``: Go's ``IsUnspecified``,
    ``IsLoopback``, ``IsLinkLocalUnicast``, ``IsLinkLocalMulticast``, the
    IPv4 tests applying to IPv4-mapped IPv6 addresses too."""
    v4 = ip if isinstance(ip, ipaddress.IPv4Address) else ip.ipv4_mapped
    packed = (v4 or ip).packed
    if int(v4 or ip) == 0:
        return "unspecified (0.0.0.0, ::)"
    if (v4 is not None and packed[0] == 127) or (v4 is None and int(ip) == 1):
        return "in the loopback range (127.0.0.0/8, ::1/128)"
    if (v4 is not None and packed[:2] == b"\xa9\xfe") or (
        v4 is None and packed[0] == 0xFE and packed[1] & 0xC0 == 0x80
    ):
        return "in the link-local range (169.254.0.0/16, fe80::/10)"
    # IPv6: multicast of link-local scope whatever the flags (ff02::/16,
    # ff12::/16, ...); the API's message says "ff02::/10".
    if (v4 is not None and packed[:3] == b"\xe0\x00\x00") or (
        v4 is None and packed[0] == 0xFF and packed[1] & 0x0F == 0x02
    ):
        return "in the link-local multicast range (224.0.0.0/24, ffX2::/16)"
    return None


def address_check(address: str) -> tuple[str | None, str]:
    """The EndpointSlice address type of ``address`` (``IPv4``, ``IPv6``,
    ``FQDN``) and ``""``, or ``None`` and why the API server would refuse it
    in any EndpointSlice (kube-apiserver's validation, see
    :func:`_ip_refusal`), or why it must not be written anyway."""
    if _DOTTED_QUAD.fullmatch(address):
        octets = address.split(".")
        if any(int(o) > 255 for o in octets):
            return None, "not a valid IPv4 address (Kubernetes would refuse it)"
        if any(len(o) > 1 and o.startswith("0") for o in octets):
            # Go's ParseIP of Kubernetes <= 1.29 reads them as decimal, other
            # tools as octal; newer API servers refuse them.
            return None, (
                "an IPv4 address with leading zeros (ambiguous: decimal or octal; "
                "newer Kubernetes versions refuse it)"
            )
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        if "%" in address and ":" in address:
            return None, "a zone-scoped IPv6 address (Kubernetes refuses a zone)"
        if _FQDN.fullmatch(address.lower().removesuffix(".")):
            return "FQDN", ""
        return None, "neither an IP address nor a fully qualified hostname Kubernetes accepts"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id is not None:
            return None, "a zone-scoped IPv6 address (Kubernetes refuses a zone)"
        if ip.ipv4_mapped is not None and not _ip_refusal(ip):
            return None, (
                "an IPv4-mapped IPv6 address (Kubernetes refuses it in an IPv6 slice; "
                "register the IPv4 address)"
            )
    refusal = _ip_refusal(ip)
    if refusal:
        return None, f"Kubernetes refuses endpoint addresses that are {refusal}"
    return ("IPv6" if isinstance(ip, ipaddress.IPv6Address) else "IPv4"), ""


def address_type(address: str) -> str | None:
    """``IPv4``, ``IPv6``, ``FQDN``, or ``None`` for something the API server
    would refuse in any EndpointSlice (see :func:`address_check`)."""
    return address_check(address)[0]


def validate(service: DesiredService) -> list[str]:
    """What the API server would reject in the Service (the EndpointSlice
    problems -- bad addresses -- are skipped per endpoint instead)."""
    problems = []
    names: set[str] = set()
    for index, port in enumerate(service.ports):
        where = f"port {index} ({port.name or 'unnamed'})"
        if not 1 <= port.port <= 65535:
            problems.append(f"{where}: number {port.port} is not between 1 and 65535")
        if port.protocol not in PROTOCOLS:
            problems.append(f"{where}: protocol {port.protocol!r} is not TCP, UDP or SCTP")
        if port.name:
            if len(port.name) > 63 or not _DNS1123_LABEL.fullmatch(port.name):
                problems.append(
                    f"{where}: name {port.name!r} is not a lowercase RFC 1123 label "
                    "(lowercase letters, digits and '-', at most 63)"
                )
            if port.name in names:
                problems.append(f"{where}: name {port.name!r} is used twice")
            names.add(port.name)
        elif len(service.ports) > 1:
            problems.append(f"{where}: a service with several ports needs a name for each")
    for endpoint in service.endpoints:
        if endpoint.port is not None and not 1 <= endpoint.port <= 65535:
            problems.append(
                f"endpoint {endpoint.address}: port {endpoint.port} is not between 1 and 65535"
            )
    return problems


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


# --- what a create leaves behind ---------------------------------------------
#
# The live sink creates an object with a POST of the whole rendering (a POST
# never merges into an object somebody else made meanwhile: the name taken
# answers 409 AlreadyExists).  The POST leaves a ``managedFields`` entry of
# operation ``Update`` for our field manager; later server-side applies are
# another owner (``Apply``).  Both own the fields the apply writes unchanged,
# so a field a later rendering drops would stay, held by the ``Update``
# entry.  :func:`creation_residue` finds such fields before an apply, and
# :func:`hand_over` moves them to the ``Apply`` entry (one patch of
# ``managedFields``), so that the apply removes them as it removes any field
# it stopped writing.  Only fields a rendering can drop are looked at: our
# labels and annotations, ownerReferences, and the Service's ports (per
# port+protocol, and their ``name`` / ``appProtocol``); everything else we
# write (``clusterIP``, ``addressType``, the slice's atomic ``endpoints`` and
# ``ports``) is written by every apply, so its value changes hand it over.

FieldPath = tuple[str, ...]


def _update_entry(live: Mapping[str, Any], manager: str) -> Mapping[str, Any] | None:
    for entry in (live.get("metadata") or {}).get("managedFields") or []:
        if (
            entry.get("manager") == manager
            and entry.get("operation") == "Update"
            and not entry.get("subresource")
        ):
            found: Mapping[str, Any] = entry
            return found
    return None


def _key_of(element: str) -> dict[str, Any]:
    try:
        value = json.loads(element[2:])
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def creation_residue(
    live: Mapping[str, Any] | None, want: Mapping[str, Any], manager: str
) -> list[FieldPath]:
    """Paths (``fieldsV1`` elements) that ``manager``'s ``Update`` entry on
    ``live`` owns and ``want`` no longer writes (see above)."""
    entry = _update_entry(live, manager) if live is not None else None
    if entry is None:
        return []
    fields = entry.get("fieldsV1") or {}
    meta_fields = fields.get("f:metadata") or {}
    want_meta = want.get("metadata") or {}
    out: list[FieldPath] = []
    for field in ("labels", "annotations"):
        wanted = want_meta.get(field) or {}
        for element in meta_fields.get(f"f:{field}") or {}:
            if element.startswith("f:") and element[2:] not in wanted:
                out.append(("f:metadata", f"f:{field}", element))
    uids = {ref.get("uid") for ref in want_meta.get("ownerReferences") or []}
    for element in meta_fields.get("f:ownerReferences") or {}:
        if element.startswith("k:") and _key_of(element).get("uid") not in uids:
            out.append(("f:metadata", "f:ownerReferences", element))
    if want.get("kind") == "Service":
        ports = {
            (p["port"], p.get("protocol", "TCP")): p for p in want.get("spec", {}).get("ports", [])
        }
        for element, sub in ((fields.get("f:spec") or {}).get("f:ports") or {}).items():
            if not element.startswith("k:"):
                continue
            key = _key_of(element)
            port = ports.get((key.get("port"), key.get("protocol", "TCP")))
            if port is None:
                out.append(("f:spec", "f:ports", element))
                continue
            for name in ("name", "appProtocol"):
                if f"f:{name}" in (sub or {}) and name not in port:
                    out.append(("f:spec", "f:ports", element, f"f:{name}"))
    return out


def _take(fields: dict[str, Any], path: FieldPath) -> Any:
    """Remove ``path`` from a ``fieldsV1`` tree (and parents left empty)."""
    node = fields
    parents = []
    for element in path[:-1]:
        child = node.get(element)
        if not isinstance(child, dict):
            return None
        parents.append((node, element))
        node = child
    taken = node.pop(path[-1], None)
    for parent, element in reversed(parents):
        if parent[element]:
            break
        del parent[element]
    return taken


def _put(fields: dict[str, Any], path: FieldPath, value: Any) -> None:
    node = fields
    for element in path[:-1]:
        node = node.setdefault(element, {})
    node[path[-1]] = value if isinstance(value, dict) else {}


def hand_over(live: Mapping[str, Any], paths: Sequence[FieldPath], manager: str) -> list[Any]:
    """``live``'s ``managedFields`` with ``paths`` moved from ``manager``'s
    ``Update`` entry to its ``Apply`` entry (made if there is none)."""
    entries = copy.deepcopy(list((live.get("metadata") or {}).get("managedFields") or []))
    update = next(
        (
            e
            for e in entries
            if e.get("manager") == manager
            and e.get("operation") == "Update"
            and not e.get("subresource")
        ),
        None,
    )
    if update is None:
        return entries
    apply = next(
        (
            e
            for e in entries
            if e.get("manager") == manager
            and e.get("operation") == "Apply"
            and not e.get("subresource")
        ),
        None,
    )
    if apply is None:
        apply = {
            "manager": manager,
            "operation": "Apply",
            "apiVersion": update.get("apiVersion"),
            "time": update.get("time"),
            "fieldsType": "FieldsV1",
            "fieldsV1": {},
        }
        entries.append(apply)
    source = update.setdefault("fieldsV1", {})
    target = apply.setdefault("fieldsV1", {})
    for path in paths:
        _put(target, path, _take(source, path))
    if not source:
        entries.remove(update)
    return entries


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


# --- back to the model -----------------------------------------------------


def service_key(obj: Mapping[str, Any]) -> tuple[str, str]:
    """The model key a Service of ours stands for."""
    meta = obj.get("metadata", {})
    annotations = meta.get("annotations") or {}
    return (meta.get("namespace", ""), annotations.get(NAME_ANNOTATION) or meta.get("name", ""))


def _keys(annotations: Mapping[str, str], which: str) -> list[str]:
    return [k for k in annotations.get(which, "").split(",") if k]


def _ports(obj: Mapping[str, Any]) -> list[Port]:
    return [
        Port(p.get("name", ""), int(p["port"]), p.get("protocol", "TCP"), p.get("appProtocol"))
        for p in obj.get("spec", {}).get("ports") or []
    ]


def slice_source(obj: Mapping[str, Any], default: str | None) -> str | None:
    """The source a slice's endpoints came from: its annotation, else
    ``default`` (see :func:`default_source`)."""
    annotations = obj.get("metadata", {}).get("annotations") or {}
    return annotations.get(SOURCE_ANNOTATION) or default


def slice_group(
    obj: Mapping[str, Any], primary: Port | None, default: str | None = None
) -> GroupKey:
    """The (address type, primary port number, source) group a slice belongs to."""
    number = None
    if primary is not None:
        for port in obj.get("ports") or []:
            if port.get("name", "") == primary.name and "port" in port:
                number = int(port["port"])
                break
    return (str(obj.get("addressType", "")), number, slice_source(obj, default))


def parse(service_obj: Mapping[str, Any], slices: Iterable[Mapping[str, Any]]) -> DesiredService:
    """Read a rendered Service and its slices back into the model.

    Only labels and annotations the Service records as its own are read:
    whatever others add to the objects is not part of the service.
    """
    namespace, name = service_key(service_obj)
    meta = service_obj.get("metadata", {})
    live_labels = meta.get("labels") or {}
    live_annotations = meta.get("annotations") or {}
    labels = {
        k: live_labels[k]
        for k in _keys(live_annotations, LABEL_KEYS_ANNOTATION)
        if k in live_labels
    }
    annotations = {
        k: live_annotations[k]
        for k in _keys(live_annotations, ANNOTATION_KEYS_ANNOTATION)
        if k in live_annotations
    }
    sources = [s for s in live_annotations.get(SOURCES_ANNOTATION, "").split(",") if s]
    ports = _ports(service_obj)
    primary = ports[0] if ports else None
    fallback = default_source(sources)
    endpoints = []
    for obj in slices:
        _, number, source = slice_group(obj, primary, fallback)
        override = None if primary is None or number == primary.port else number
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
                        source=source,
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


def packing(
    slices: Iterable[Mapping[str, Any]], primary: Port | None, default: str | None = None
) -> dict[GroupKey, dict[str, list[str]]]:
    """Group -> slice name -> addresses, of a service's live slices
    (``default``: the source of unannotated slices, see :func:`default_source`).

    A slice with neither ports nor endpoints is a :func:`claim` whose apply
    did not happen (it failed, or the process died): it belongs to no group,
    so its name is free for the group that claimed it (and not stale)."""
    out: dict[GroupKey, dict[str, list[str]]] = {}
    for obj in slices:
        if not obj.get("ports") and not obj.get("endpoints"):
            continue
        addresses = [a for e in obj.get("endpoints") or [] for a in e.get("addresses") or []]
        group = slice_group(obj, primary, default)
        out.setdefault(group, {})[obj["metadata"]["name"]] = addresses
    return out


def owner_of(obj: Mapping[str, Any]) -> str | None:
    return ((obj.get("metadata", {}).get("annotations")) or {}).get(OWNER_ANNOTATION)


def is_managed(obj: Mapping[str, Any]) -> bool:
    return ((obj.get("metadata", {}).get("labels")) or {}).get(MANAGED_BY) == MANAGER


# --- comparing with live objects -------------------------------------------

_EXACT_ANNOTATIONS = (NAME_ANNOTATION, SOURCE_ANNOTATION)
_ENDPOINT_FIELDS = ("addresses", "hostname", "nodeName", "zone")
_CONDITIONS = ("ready", "serving", "terminating")


def _endpoint_view(item: Mapping[str, Any]) -> tuple[Any, ...]:
    conditions = item.get("conditions") or {}
    return (
        *(tuple(item.get(f) or ()) if f == "addresses" else item.get(f) for f in _ENDPOINT_FIELDS),
        *(conditions.get(c) for c in _CONDITIONS),
    )


def _port_view(item: Mapping[str, Any]) -> tuple[Any, ...]:
    return (
        item.get("name", ""),
        item.get("port"),
        item.get("protocol", "TCP"),
        item.get("appProtocol"),
    )


def _contains(live: Mapping[str, Any] | None, want: Mapping[str, Any]) -> bool:
    live = live or {}
    return all(live.get(k) == v for k, v in want.items())


def _stale_keys(live_meta: Mapping[str, Any], want_meta: Mapping[str, Any]) -> bool:
    """Keys the live object records as ours that the new rendering drops."""
    live_annotations = live_meta.get("annotations") or {}
    want_annotations = want_meta.get("annotations") or {}
    for record, field in (
        (LABEL_KEYS_ANNOTATION, "labels"),
        (ANNOTATION_KEYS_ANNOTATION, "annotations"),
    ):
        dropped = set(_keys(live_annotations, record)) - set(_keys(want_annotations, record))
        if dropped & set(live_meta.get(field) or {}):
            return True
    return False


def differs(want: Mapping[str, Any], live: Mapping[str, Any] | None) -> bool:
    """Whether applying ``want`` would change ``live`` (``None``: absent).

    Compares only what consul-sync writes: its labels, annotations and
    ownerReferences (others may add theirs), the Service's ``clusterIP``
    and ports, the slice's address type, endpoints and ports.  Server
    defaults (``targetPort``, ``ipFamilies``, ...) are ignored.
    """
    if live is None:
        return True
    want_meta, live_meta = want["metadata"], live.get("metadata") or {}
    if not _contains(live_meta.get("labels"), want_meta.get("labels") or {}):
        return True
    if not _contains(live_meta.get("annotations"), want_meta.get("annotations") or {}):
        return True
    if _stale_keys(live_meta, want_meta):
        return True
    # Annotations whose absence means something: the original name, the source.
    live_annotations = live_meta.get("annotations") or {}
    want_annotations = want_meta.get("annotations") or {}
    if any(live_annotations.get(k) != want_annotations.get(k) for k in _EXACT_ANNOTATIONS):
        return True
    live_refs = [
        (r.get("apiVersion"), r.get("kind"), r.get("name"), r.get("uid"), bool(r.get("controller")))
        for r in live_meta.get("ownerReferences") or []
    ]
    for ref in want_meta.get("ownerReferences") or []:
        wanted = (ref["apiVersion"], ref["kind"], ref["name"], ref["uid"], bool(ref["controller"]))
        if wanted not in live_refs:
            return True
    if want["kind"] == "Service":
        live_spec = live.get("spec") or {}
        if live_spec.get("clusterIP") != want["spec"]["clusterIP"]:
            return True
        return [_port_view(p) for p in want["spec"]["ports"]] != [
            _port_view(p) for p in live_spec.get("ports") or []
        ]
    if live.get("addressType") != want["addressType"]:
        return True
    if [_port_view(p) for p in want["ports"]] != [_port_view(p) for p in live.get("ports") or []]:
        return True
    return [_endpoint_view(e) for e in want["endpoints"]] != [
        _endpoint_view(e) for e in live.get("endpoints") or []
    ]
