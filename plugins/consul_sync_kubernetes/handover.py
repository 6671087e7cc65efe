"""What a create leaves behind, and how an apply takes it over (``managedFields``).

The live sink creates an object with a POST of the whole rendering (a POST
never merges into an object somebody else made meanwhile: the name taken
answers 409 AlreadyExists).  The POST leaves a ``managedFields`` entry of
operation ``Update`` for our field manager; later server-side applies are
another owner (``Apply``).  Both own the fields the apply writes unchanged,
so a field a later rendering drops would stay, held by the ``Update``
entry.  :func:`creation_residue` finds such fields before an apply, and
:func:`hand_over` moves them to the ``Apply`` entry (one patch of
``managedFields``), so that the apply removes them as it removes any field
it stopped writing.  Only fields a rendering can drop are looked at: our
labels and annotations, ownerReferences, and the Service's ports (per
port+protocol, and their ``name`` / ``appProtocol``); everything else we
write (``clusterIP``, ``addressType``, the slice's atomic ``endpoints`` and
``ports``) is written by every apply, so its value changes hand it over.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from typing import Any

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
    update = _entry(entries, manager, "Update")
    if update is None:
        return entries
    apply = _entry(entries, manager, "Apply")
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


def _entry(entries: Sequence[Any], manager: str, operation: str) -> Any:
    """``manager``'s ``operation`` entry of the object itself (not a subresource's), if any."""
    return next(
        (
            e
            for e in entries
            if e.get("manager") == manager
            and e.get("operation") == operation
            and not e.get("subresource")
        ),
        None,
    )
