"""The status page: what consul-sync is doing, for people.

:func:`collect` gathers one document from a running :class:`Runtime` —
sources, sinks, one row per service — the same document ``/status.json``
serves (schema below, and in docs/operations.md), that ``/`` renders as
HTML (:func:`render_html`: server-side, no scripts, no external assets,
readable on a phone) and ``consul-sync status`` prints as a table
(:func:`render_table`).  :func:`select` applies the query string
(``?q=plex``, ``?problem=1``).

What sources and sinks add, source-neutrally (docs/plugins.md):

* ``Endpoint.reason``: why a not-ready instance is not ready;
* an optional ``status_notes(keys)`` method on a source or a sink,
  returning ``{key: StatusNote}``: the key's name there (the Consul name,
  the Kubernetes name), renamed / skipped and why, conflicts;
* an optional ``problems()`` method on a source: its current read errors;
* an optional ``last_read`` attribute on a source: wall-clock time of its
  last successful read of the registry.

Secrets: every string of the document is scrubbed with the log redactor
(:data:`consul_sync.logs.REDACTOR`), which knows every token.

Schema (``"schema": 1``)::

    {"schema": 1, "version": str, "generated_at": ISO-8601 UTC,
     "ready": bool, "readiness": str,
     "summary": {"services": int, "problems": int,
                 "endpoints": {"ready": int, "not_ready": int, "total": int}},
     "sources": [{"name", "type", "complete": bool, "services": int,
                  "last_complete": ISO|null, "last_read": ISO|null, "errors": [str]}],
     "sinks": [{"name", "type", "active": bool, "reachable": bool, "error": str|null,
                "held_deletes": ["ns/name"], "withheld_deletes": ["ns/name"],
                "conflicts": ["ns/name"], "failing": {"ns/name": str}, "notes": [str]}],
     "services": [{"namespace", "name", "source_name": str, "sources": [str],
                   "names": {sink: str}, "endpoints": {"ready", "not_ready", "total"},
                   "not_ready": [{"address", "port": int|null, "source": str|null,
                                  "reason": str}],
                   "skipped": bool, "problem": bool, "notes": [str],
                   "last_change": ISO|null, "last_change_sink": str|null,
                   "change_to_apply_seconds": float|null}],
     "shown": int, "total": int}
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from ._version import __version__
from .logs import REDACTOR
from .model import ServiceKey, StatusNote

# The page and the table (consul_sync.statusview) are re-exported here, where callers (the
# probe server, `consul-sync status`) look for the status page.
from .statusview import render_html, render_table, truthy

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger("consul_sync.status")

SCHEMA = 1
#: Rows the HTML page shows unless ``?limit=`` says otherwise (0: all).
DEFAULT_LIMIT = 1000


@functools.lru_cache(maxsize=4096)
def _iso_second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))


def _iso(when: float | None) -> str | None:
    # (cached per second: at 10,000 services most changes share a few seconds)
    return None if when is None else _iso_second(int(when))


def _key(key: ServiceKey) -> str:
    return f"{key[0]}/{key[1]}"


def _notes_of(item: object, keys: Sequence[ServiceKey]) -> Mapping[ServiceKey, StatusNote]:
    method = getattr(item, "status_notes", None)
    if method is None:
        return {}
    try:
        notes = method(keys)
    except Exception:
        log.exception("status: %s's status_notes failed", getattr(item, "name", item))
        return {}
    return notes if isinstance(notes, Mapping) else {}


def _source_problems(source: object) -> list[str]:
    method = getattr(source, "problems", None)
    if method is None:
        return []
    try:
        return [str(p) for p in method()]
    except Exception:
        log.exception("status: %s's problems failed", getattr(source, "name", source))
        return []


def collect(runtime: Runtime) -> dict[str, Any]:
    """The status document of ``runtime`` now (every service; see :func:`select`)."""
    ready, readiness = runtime.readiness()
    desired = runtime.desired
    keys = list(desired)
    sources = []
    source_notes: list[tuple[str, Mapping[ServiceKey, StatusNote]]] = []
    incomplete = runtime.incomplete_sources()
    for source in runtime.sources:
        snapshot = runtime.snapshots.get(source.name)
        track = runtime.source_track.get(source.name)
        errors = _source_problems(source)
        # A runtime-seen error counts while it is newer than the last good read.
        if (
            track is not None
            and track.error is not None
            and (track.last_complete is None or (track.error_at or 0) >= track.last_complete)
        ):
            errors.append(track.error)
        last_read = getattr(source, "last_read", None)
        sources.append(
            {
                "name": source.name,
                "type": getattr(source, "type_name", type(source).__name__),
                "complete": source.name not in incomplete,
                "services": len(snapshot.services) if snapshot is not None else 0,
                "last_complete": _iso(track.last_complete if track else None),
                "last_read": _iso(last_read if isinstance(last_read, int | float) else None),
                "errors": errors,
            }
        )
        source_notes.append((source.name, _notes_of(source, keys)))
    sinks = []
    sink_notes: list[tuple[str, Mapping[ServiceKey, StatusNote]]] = []
    troubled: dict[ServiceKey, list[str]] = {}
    #: keys a sink does not write at all (a conflict, a write it refuses)
    refused: set[ServiceKey] = set()
    for name, state in runtime.states.items():
        sink = state.sink
        note = getattr(sink, "readiness_note", None)
        failing = {**{k: m for k, (_, m) in state.rejected.items()}, **state.failing}
        sinks.append(
            {
                "name": name,
                "type": getattr(sink, "type_name", type(sink).__name__),
                "active": bool(getattr(sink, "active", True)),
                "reachable": state.error is None,
                "error": state.error,
                "held_deletes": [_key(k) for k in sorted(state.held)],
                "withheld_deletes": [_key(k) for k in sorted(state.withheld - state.held)],
                "conflicts": [_key(k) for k in sorted(state.conflicts)],
                "failing": {_key(k): failing[k] for k in sorted(failing)},
                "notes": [note] if isinstance(note, str) and note else [],
            }
        )
        sink_notes.append((name, _notes_of(sink, keys)))
        refused |= state.conflicts | state.rejected.keys()
        for key in state.conflicts:
            troubled.setdefault(key, []).append(
                f"{name}: the name is taken by an object consul-sync does not own; left alone"
            )
        for key, message in failing.items():
            troubled.setdefault(key, []).append(f"{name}: write failed: {message}")
        for key in state.held:
            troubled.setdefault(key, []).append(f"{name}: delete held by the prune guard")
        for key in state.withheld - state.held:
            troubled.setdefault(key, []).append(f"{name}: delete withheld (a source is incomplete)")
    rows_keys = set(keys) | set(troubled)
    for _, notes in (*source_notes, *sink_notes):
        rows_keys |= notes.keys()
    services = []
    totals = {"ready": 0, "not_ready": 0, "total": 0}
    problems = 0
    for key in sorted(rows_keys):
        service = desired.get(key)
        row_notes: list[str] = []
        skipped = False
        source_name = key[1]
        for source_name_, notes in source_notes:
            found = notes.get(key)
            if found is None:
                continue
            if found.name and source_name == key[1]:
                source_name = found.name
            row_notes.extend(f"{source_name_}: {n}" for n in found.notes)
            skipped = skipped or found.skipped
        names: dict[str, str] = {}
        for sink_name, notes in sink_notes:
            found = notes.get(key)
            names[sink_name] = found.name if found is not None and found.name else key[1]
            if found is not None:
                row_notes.extend(f"{sink_name}: {n}" for n in found.notes)
                skipped = skipped or found.skipped
        row_notes.extend(troubled.get(key, ()))
        not_ready = []
        ready_count = 0
        endpoints = service.endpoints if service is not None else ()
        for endpoint in endpoints:
            if endpoint.ready:
                ready_count += 1
                continue
            reason = endpoint.reason or (
                "serving, not ready" if endpoint.serving else "not ready (no reason given)"
            )
            not_ready.append(
                {
                    "address": endpoint.address,
                    "port": service.port_for(endpoint) if service is not None else endpoint.port,
                    "source": endpoint.source,
                    "reason": reason,
                }
            )
        if key in refused or (service is None and key not in troubled):
            skipped = True
        applied = runtime.applied.get(key)
        problem = bool(not_ready or skipped or key in troubled or (service and not endpoints))
        if service is not None and not endpoints:
            row_notes.append("no instances")
        problems += problem
        totals["ready"] += ready_count
        totals["not_ready"] += len(not_ready)
        totals["total"] += len(endpoints)
        services.append(
            {
                "namespace": key[0],
                "name": key[1],
                "source_name": source_name,
                "sources": list(service.sources) if service is not None else [],
                "names": names,
                "endpoints": {
                    "ready": ready_count,
                    "not_ready": len(not_ready),
                    "total": len(endpoints),
                },
                "not_ready": not_ready,
                "skipped": skipped,
                "problem": problem,
                "notes": row_notes,
                "last_change": _iso(applied.at) if applied else None,
                "last_change_sink": applied.sink if applied else None,
                "change_to_apply_seconds": (
                    round(applied.seconds, 6)
                    if applied is not None and applied.seconds is not None
                    else None
                ),
            }
        )
    document = {
        "schema": SCHEMA,
        "version": __version__,
        "generated_at": _iso(runtime.wall()),
        "ready": ready,
        "readiness": readiness,
        "summary": {"services": len(services), "problems": problems, "endpoints": totals},
        "sources": sources,
        "sinks": sinks,
        "services": services,
        "shown": len(services),
        "total": len(services),
    }
    scrubbed: dict[str, Any] = scrub(document)
    return scrubbed


def scrub(value: Any) -> Any:
    """``value`` with every registered secret masked in every string."""
    if not REDACTOR._secrets:
        return value
    if isinstance(value, str):
        return REDACTOR.scrub(value)
    if isinstance(value, dict):
        return {scrub(k): scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    return value


# --- the query -----------------------------------------------------------------


def parse_query(query: str) -> dict[str, str]:
    """``q``, ``problem`` and ``limit`` from a query string (last one wins)."""
    parsed = parse_qs(query, keep_blank_values=True)
    return {k: v[-1] for k, v in parsed.items() if k in ("q", "problem", "limit") and v}


def select(
    document: Mapping[str, Any], params: Mapping[str, str], *, default_limit: int = 0
) -> dict[str, Any]:
    """The document with only the services ``params`` ask for: ``q`` (a
    case-insensitive substring of the namespace/name, the source's or a
    sink's name for it), ``problem`` (only rows with a problem), ``limit``
    (at most that many rows; 0: all)."""
    services: Iterable[Mapping[str, Any]] = document["services"]
    text = (params.get("q") or "").strip().lower()
    if text:
        services = [s for s in services if text in _haystack(s)]
    if truthy(params.get("problem")):
        services = [s for s in services if s["problem"]]
    services = list(services)
    total = len(services)
    try:
        limit = int(params.get("limit", default_limit))
    except ValueError:
        limit = default_limit
    if limit > 0:
        services = services[:limit]
    return {**document, "services": services, "shown": len(services), "total": total}


def _haystack(service: Mapping[str, Any]) -> str:
    parts = [f"{service['namespace']}/{service['name']}", service["source_name"]]
    parts.extend(service["names"].values())
    return " ".join(parts).lower()


def to_json(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


# --- HTML ----------------------------------------------------------------------


__all__ = [
    "DEFAULT_LIMIT",
    "SCHEMA",
    "collect",
    "parse_query",
    "render_html",
    "render_table",
    "scrub",
    "select",
    "to_json",
]
