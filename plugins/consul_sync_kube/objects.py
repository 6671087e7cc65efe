"""What marks an object as consul-sync's, and whose it is.

Every object a sink writes carries the managed-by label (``app.kubernetes.io/managed-by:
consul-sync``) and the owner id annotation (``consul-sync.io/owner``, default
``<namespace>/<instance>``).  :class:`Ownership` sorts what a sink finds into *mine* (label and
our owner id), *legacy* (the label, no owner id: written by the Go consul-sync, adopted by the
default owner only) and *foreign* (anything else: never written).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

MANAGED_BY = "app.kubernetes.io/managed-by"
NAME_LABEL = "app.kubernetes.io/name"
MANAGER = "consul-sync"
OWNER_ANNOTATION = "consul-sync.io/owner"
SOURCES_ANNOTATION = "consul-sync.io/sources"
#: On a Service whose Kubernetes name differs from the service's: the service's name.
NAME_ANNOTATION = "consul-sync.io/name"
#: The server-side apply field manager of every write.
FIELD_MANAGER = "consul-sync"
DEFAULT_INSTANCE = "consul-sync"

#: Where an object stands for a sink (:meth:`Ownership.classify`).
MINE, LEGACY, FOREIGN = "mine", "legacy", "foreign"


def meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def uid(obj: Mapping[str, Any]) -> str:
    return str(meta(obj).get("uid", ""))


def owner_of(obj: Mapping[str, Any]) -> str | None:
    return (meta(obj).get("annotations") or {}).get(OWNER_ANNOTATION)


def is_managed(obj: Mapping[str, Any]) -> bool:
    return (meta(obj).get("labels") or {}).get(MANAGED_BY) == MANAGER


def default_owner(namespace: str, instance: str) -> str:
    return f"{namespace}/{instance}"


@attrs.frozen
class Ownership:
    """A sink's owner id, and whether it adopts the Go consul-sync's objects."""

    owner: str
    adopt: bool

    @classmethod
    def of(cls, namespace: str, owner_id: str, instance: str) -> Ownership:
        """``owner_id`` (default ``<namespace>/<instance>``); the default owner of the
        default instance adopts objects without an owner id."""
        owner = owner_id or default_owner(namespace, instance)
        return cls(owner, owner == default_owner(namespace, DEFAULT_INSTANCE))

    def classify(self, obj: Mapping[str, Any]) -> str:
        if not is_managed(obj):
            return FOREIGN
        owner = owner_of(obj)
        if owner == self.owner:
            return MINE
        return LEGACY if owner is None else FOREIGN

    def ours(self, obj: Mapping[str, Any]) -> bool:
        kind = self.classify(obj)
        return kind == MINE or (kind == LEGACY and self.adopt)
