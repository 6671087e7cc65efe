"""What a change would change: the field-by-field difference between what
a sink holds (the observed service) and what it should hold (the desired
one), as ``kubectl diff`` or a Terraform plan shows it.

Pure: model types in, :class:`FieldChange` values out.  ``consul-sync plan``
prints them under each change and puts them in its JSON output.

Paths name what changed in the model's terms, keyed so that they read the
same from one run to the next (not by list position)::

    endpoints[10.0.0.1:8080].ready      an endpoint, by address[:port]
    ports[http].port                    a port, by name
    labels[app.kubernetes.io/part-of]   a label (annotations, meta alike)
    tags                                a tag added or removed (sources alike)
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from .model import Change, DesiredService, Endpoint, Port
from .plan import as_held_by


class Op(enum.StrEnum):
    ADD = "add"
    REMOVE = "remove"
    CHANGE = "change"


#: The sign a line of the text form starts with (Terraform's).
SIGNS = {Op.ADD: "+", Op.REMOVE: "-", Op.CHANGE: "~"}


@attrs.frozen
class FieldChange:
    """One difference: ``old`` is ``None`` for an addition, ``new`` for a
    removal.  Values are plain data (str, int, bool, None, dict)."""

    op: Op
    path: str
    old: Any = None
    new: Any = None

    def to_json(self) -> dict[str, Any]:
        return {"op": self.op.value, "path": self.path, "old": self.old, "new": self.new}

    def text(self) -> str:
        sign = SIGNS[self.op]
        if self.op is Op.ADD:
            return f"{sign} {self.path}: {_show(self.new)}"
        if self.op is Op.REMOVE:
            return f"{sign} {self.path}: {_show(self.old)}"
        return f"{sign} {self.path}: {_show(self.old)} -> {_show(self.new)}"


_ENDPOINT_FIELDS = ("ready", "serving", "terminating", "hostname", "zone", "node_name", "source")
_PORT_FIELDS = ("port", "protocol", "app_protocol")


def endpoint_id(endpoint: Endpoint) -> str:
    address = f"[{endpoint.address}]" if ":" in endpoint.address else endpoint.address
    return address if endpoint.port is None else f"{address}:{endpoint.port}"


def endpoint_data(endpoint: Endpoint) -> dict[str, Any]:
    data: dict[str, Any] = {"address": endpoint.address}
    if endpoint.port is not None:
        data["port"] = endpoint.port
    data["ready"] = endpoint.ready
    if endpoint.serving != endpoint.ready:
        data["serving"] = endpoint.serving
    for name in ("terminating", "hostname", "zone", "node_name"):
        value = getattr(endpoint, name)
        if value:
            data[name] = value
    return data


def port_data(port: Port) -> dict[str, Any]:
    data: dict[str, Any] = {"port": port.port, "protocol": port.protocol}
    if port.app_protocol:
        data["app_protocol"] = port.app_protocol
    return data


def diff_services(old: DesiredService | None, new: DesiredService | None) -> list[FieldChange]:
    """Every difference from ``old`` (``None``: nothing yet) to ``new``
    (``None``: gone), in a stable order: ports, endpoints, labels,
    annotations, tags, meta, sources."""
    out: list[FieldChange] = []
    if old and new:
        new = as_held_by(old, new)  # as the planner compares
    old_ports = {p.name: p for p in old.ports} if old else {}
    new_ports = {p.name: p for p in new.ports} if new else {}
    out += _keyed("ports", old_ports, new_ports, port_data, _PORT_FIELDS)
    if old and new and old_ports.keys() == new_ports.keys():
        order_old, order_new = [p.name for p in old.ports], [p.name for p in new.ports]
        if order_old != order_new:  # the first port is the primary one
            out.append(FieldChange(Op.CHANGE, "ports (order)", order_old, order_new))
    old_eps = {endpoint_id(e): e for e in old.endpoints} if old else {}
    new_eps = {endpoint_id(e): e for e in new.endpoints} if new else {}
    out += _keyed("endpoints", old_eps, new_eps, endpoint_data, _ENDPOINT_FIELDS)
    for name in ("labels", "annotations"):
        out += _pairs(name, getattr(old, name, ()), getattr(new, name, ()))
    out += _members("tags", old.tags if old else (), new.tags if new else ())
    out += _pairs("meta", old.meta if old else (), new.meta if new else ())
    out += _members("sources", old.sources if old else (), new.sources if new else ())
    return out


def diff_change(change: Change) -> list[FieldChange]:
    """The differences one planned change makes (a delete: everything goes;
    an update of objects that cannot be read back: all of the desired, as
    additions)."""
    observed = change.observed.service if change.observed is not None else None
    return diff_services(observed, change.desired)


def summary(changes: Iterable[FieldChange]) -> dict[str, int]:
    """Counts by kind, e.g. ``{"endpoints added": 1, "ready flips": 2}``."""
    counts: dict[str, int] = {}
    for item in changes:
        area = item.path.split("[", 1)[0].split(" ", 1)[0]
        if area == "endpoints" and item.path.endswith(".ready"):
            key = "ready flips"
        else:
            key = f"{area} {dict(add='added', remove='removed', change='changed')[item.op]}"
        counts[key] = counts.get(key, 0) + 1
    return counts


# --- helpers -------------------------------------------------------------------


def _keyed(
    name: str,
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    data: Any,
    fields: tuple[str, ...],
) -> list[FieldChange]:
    out = []
    for key in sorted(old.keys() | new.keys(), key=_natural):
        path = f"{name}[{key}]"
        if key not in old:
            out.append(FieldChange(Op.ADD, path, None, data(new[key])))
        elif key not in new:
            out.append(FieldChange(Op.REMOVE, path, data(old[key]), None))
        else:
            for field in fields:
                if field == "serving" and _serving_follows(old[key]) and _serving_follows(new[key]):
                    continue  # serving is ready's shadow unless set apart: one flip, not two
                before, after = getattr(old[key], field), getattr(new[key], field)
                if before != after:
                    out.append(FieldChange(Op.CHANGE, f"{path}.{field}", before, after))
    return out


def _serving_follows(item: Any) -> bool:
    return bool(item.serving == item.ready)


def _pairs(
    name: str, old: Iterable[tuple[str, str]], new: Iterable[tuple[str, str]]
) -> list[FieldChange]:
    before, after = dict(old), dict(new)
    out = []
    for key in sorted(before.keys() | after.keys()):
        path = f"{name}[{key}]"
        if key not in before:
            out.append(FieldChange(Op.ADD, path, None, after[key]))
        elif key not in after:
            out.append(FieldChange(Op.REMOVE, path, before[key], None))
        elif before[key] != after[key]:
            out.append(FieldChange(Op.CHANGE, path, before[key], after[key]))
    return out


def _members(name: str, old: Iterable[str], new: Iterable[str]) -> list[FieldChange]:
    before, after = set(old), set(new)
    return [FieldChange(Op.ADD, name, None, v) for v in sorted(after - before)] + [
        FieldChange(Op.REMOVE, name, v, None) for v in sorted(before - after)
    ]


def _natural(key: str) -> tuple[Any, ...]:
    """10.0.0.9 before 10.0.0.10."""
    parts: list[Any] = []
    for chunk in key.replace(":", ".").split("."):
        parts.append((0, int(chunk), "") if chunk.isdigit() else (1, 0, chunk))
    return tuple(parts)


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return str(value)
