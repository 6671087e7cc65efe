"""Observed objects read back into the model, and compared with what we would write.

``parse`` reads a rendered Service and its slices back so the planner can compare them with
``==``: ``parse(render(s)) == s`` for every valid service in canonical form.  ``packing``
says which live slice holds which addresses (the renderer keeps endpoints where they are).
``differs`` tells whether a live object already holds everything a rendered one would write
(the live sink sends only objects that differ).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from consul_sync.model import DesiredService, Endpoint, Port
from consul_sync_kube.objects import NAME_ANNOTATION, SOURCES_ANNOTATION

from .naming import service_key
from .render import (
    ANNOTATION_KEYS_ANNOTATION,
    LABEL_KEYS_ANNOTATION,
    SOURCE_ANNOTATION,
    GroupKey,
    default_source,
)


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
