"""Kubernetes names for desired services: the naming rules and the book that keeps them.

A Consul name that is a DNS-1035 label is used as it is; others are sanitised
(:func:`consul_sync_kube.names.sanitize`), keep the name their object has while desired,
and only they get a hash suffix when the name is taken (:func:`assign_names`).
:class:`NameBook` recomputes the names when the runtime's desired keys change; its
``held`` callback says which Services of ours stand for which key now (the sink's view).
:func:`service_key` reads back which key a Service of ours stands for.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

import attrs

from consul_sync.model import StatusNote
from consul_sync_kube.names import is_valid_name, sanitize, short_hash
from consul_sync_kube.objects import NAME_ANNOTATION


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


def service_key(obj: Mapping[str, Any]) -> tuple[str, str]:
    """The model key a Service of ours stands for."""
    meta = obj.get("metadata", {})
    annotations = meta.get("annotations") or {}
    return (meta.get("namespace", ""), annotations.get(NAME_ANNOTATION) or meta.get("name", ""))
