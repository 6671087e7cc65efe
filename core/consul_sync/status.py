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
import html
import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode

from ._version import __version__
from .logs import REDACTOR
from .model import ServiceKey, StatusNote

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


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in ("1", "true", "yes", "on")


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
    if _truthy(params.get("problem")):
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

_CSS = """
:root{color-scheme:light dark;--bad:#c62828;--warn:#a86b00;--ok:#2e7d32;--mute:#777}
body{font:15px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;padding:12px}
h1{font-size:1.3em;margin:0 0 4px}h2{font-size:1.1em;margin:18px 0 6px}
.sub{color:var(--mute);font-size:.9em}
.wrap{overflow-x:auto;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;vertical-align:top;padding:5px 8px;border-bottom:1px solid #8884}
th{font-size:.85em;color:var(--mute);white-space:nowrap}
.bad{color:var(--bad);font-weight:600}.warn{color:var(--warn)}.ok{color:var(--ok)}
.mute{color:var(--mute)}ul{margin:2px 0;padding-left:18px}
form{display:flex;flex-wrap:wrap;gap:8px;align-items:center;margin:10px 0}
input[type=search]{flex:1 1 12em;font-size:1em;padding:6px}
button{font-size:1em;padding:6px 12px}
.num{white-space:nowrap}
@media (max-width:640px){
 table.card thead{display:none}
 table.card tr{display:block;border-bottom:1px solid #8886;padding:6px 0}
 table.card td{display:block;border:0;padding:2px 4px}
 table.card td:empty{display:none}
 table.card td[data-l]::before{content:attr(data-l) ": ";color:var(--mute);font-size:.85em}
}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _list(items: Iterable[str], cls: str = "") -> str:
    items = list(items)
    if not items:
        return ""
    attr = f' class="{cls}"' if cls else ""
    return f"<ul{attr}>" + "".join(f"<li>{_e(i)}</li>" for i in items) + "</ul>"


def _yes(flag: bool, yes: str = "yes", no: str = "no") -> str:
    return f'<span class="ok">{yes}</span>' if flag else f'<span class="bad">{no}</span>'


def render_html(document: Mapping[str, Any], params: Mapping[str, str]) -> str:
    """The page for a document already narrowed by :func:`select`."""
    out: list[str] = []
    add = out.append
    summary = document["summary"]
    add('<!doctype html><html lang="en"><head><meta charset="utf-8">')
    add('<meta name="viewport" content="width=device-width,initial-scale=1">')
    add("<title>consul-sync status</title><style>" + _CSS + "</style></head><body>")
    state = "ready" if document["ready"] else "not ready"
    cls = "ok" if document["ready"] else "bad"
    add(f'<h1>consul-sync <span class="{cls}">{state}</span></h1>')
    add(
        f'<div class="sub">{_e(document["readiness"])}<br>version {_e(document["version"])}'
        f" · {_e(document['generated_at'])}</div>"
    )
    ep = summary["endpoints"]
    add(
        f'<p id="summary">{summary["services"]} services · '
        f'<span class="{"bad" if summary["problems"] else "ok"}">{summary["problems"]} with a '
        f"problem</span> · endpoints {ep['ready']} ready, {ep['not_ready']} not ready, "
        f"{ep['total']} total</p>"
    )
    add("<h2>Sources</h2><div class=wrap><table class=card id=sources><thead><tr><th>source</th>")
    add("<th>type</th><th>complete</th><th>services</th><th>last good read</th>")
    add("<th>errors</th></tr></thead><tbody>")
    for source in document["sources"]:
        last = source["last_read"] or source["last_complete"] or "never"
        add(
            f'<tr><td data-l="source">{_e(source["name"])}</td>'
            f'<td data-l="type">{_e(source["type"])}</td>'
            f'<td data-l="complete">{_yes(source["complete"])}</td>'
            f'<td data-l="services" class=num>{source["services"]}</td>'
            f'<td data-l="last good read" class=num>{_e(last)}</td>'
            f'<td data-l="errors">{_list(source["errors"], "bad")}</td></tr>'
        )
    add("</tbody></table></div>")
    add("<h2>Sinks</h2><div class=wrap><table class=card id=sinks>")
    add("<thead><tr><th>sink</th><th>type</th>")
    add("<th>role</th><th>API reachable</th><th>held deletes</th><th>conflicts</th>")
    add("<th>notes</th></tr></thead><tbody>")
    for sink in document["sinks"]:
        role = "active" if sink["active"] else "standby"
        notes = list(sink["notes"])
        if sink["error"]:
            notes.insert(0, sink["error"])
        notes += [f"{k}: {m}" for k, m in sink["failing"].items()][:20]
        notes += [f"withheld delete {k}" for k in sink["withheld_deletes"]][:20]
        add(
            f'<tr><td data-l="sink">{_e(sink["name"])}</td>'
            f'<td data-l="type">{_e(sink["type"])}</td><td data-l="role">{role}</td>'
            f'<td data-l="API reachable">{_yes(sink["reachable"])}</td>'
            f'<td data-l="held deletes">{len(sink["held_deletes"])}'
            f"{_list(sink['held_deletes'][:20], 'warn')}</td>"
            f'<td data-l="conflicts">{len(sink["conflicts"])}'
            f"{_list(sink['conflicts'][:20], 'bad')}</td>"
            f'<td data-l="notes">{_list(notes)}</td></tr>'
        )
    add("</tbody></table></div>")
    add("<h2>Services</h2>")
    q = params.get("q", "")
    checked = " checked" if _truthy(params.get("problem")) else ""
    add(
        '<form method="get" action="/"><input type="search" name="q" placeholder="filter by '
        f'name" value="{_e(q)}" aria-label="filter by name"><label><input type="checkbox" '
        f'name="problem" value="1"{checked}> only problems</label>'
        '<button type="submit">Filter</button> <a href="/">clear</a></form>'
    )
    shown, total = document["shown"], document["total"]
    more = ""
    if shown < total:
        link = "?" + urlencode({**params, "limit": "0"})
        more = f' — <a href="{_e(link)}">show all</a>'
    add(f'<p class="sub" id="shown">{shown} of {total} shown{more}</p>')
    sink_names = [s["name"] for s in document["sinks"]]
    add('<div class=wrap><table class="card" id="services"><thead><tr><th>service</th>')
    add("<th>name in sink</th><th>endpoints</th><th>not ready / notes</th>")
    add("<th>last change</th></tr></thead><tbody>")
    for row in document["services"]:
        _row(add, row, sink_names)
    add("</tbody></table></div>")
    if not document["services"]:
        add('<p class="mute" id="none">No service matches.</p>')
    add(
        '<p class="sub">The same as JSON: <a href="/status.json">/status.json</a> · '
        '<a href="/metrics">/metrics</a> · <a href="/readyz">/readyz</a></p></body></html>'
    )
    return "".join(out)


def _row(add: Any, row: Mapping[str, Any], sink_names: Sequence[str]) -> None:
    key = f"{row['namespace']}/{row['name']}"
    title = _e(key)
    if row["source_name"] != row["name"]:
        title += f'<br><span class="mute">source: {_e(row["source_name"])}</span>'
    names = row["names"]
    distinct = sorted(set(names.values()))
    if len(distinct) <= 1:
        shown = _e(distinct[0]) if distinct else '<span class="mute">-</span>'
    else:
        shown = "<br>".join(f"{_e(s)}: {_e(names[s])}" for s in sink_names if s in names)
    ep = row["endpoints"]
    if row["skipped"]:
        counts = '<span class="bad">skipped</span>'
    else:
        cls = "bad" if ep["not_ready"] or not ep["total"] else "ok"
        counts = f'<span class="{cls}">{ep["ready"]}/{ep["total"]} ready</span>'
        if ep["not_ready"]:
            counts += f'<br><span class="bad">{ep["not_ready"]} not ready</span>'
    reasons = [
        f"{n['address']}{':' + str(n['port']) if n['port'] else ''} — {n['reason']}"
        for n in row["not_ready"]
    ]
    detail = _list(reasons, "bad") + _list(row["notes"])
    change = '<span class="mute">-</span>'
    if row["last_change"]:
        seconds = row["change_to_apply_seconds"]
        took = f"<br>applied in {seconds:.3f}s" if seconds is not None else ""
        change = f"{_e(row['last_change'])}{took}"
    cls = ' class="problem"' if row["problem"] else ""
    add(
        f'<tr{cls} data-key="{_e(key)}"><td data-l="service">{title}</td>'
        f'<td data-l="name">{shown}</td><td data-l="endpoints" class=num>{counts}</td>'
        f'<td data-l="why">{detail}</td><td data-l="last change">{change}</td></tr>'
    )


# --- the terminal ------------------------------------------------------------------


def render_table(document: Mapping[str, Any]) -> str:
    """The document as plain-text tables (``consul-sync status``)."""
    lines: list[str] = []
    state = "ready" if document["ready"] else "NOT READY"
    lines.append(f"consul-sync {document['version']}: {state} ({document['readiness']})")
    summary = document["summary"]
    ep = summary["endpoints"]
    lines.append(
        f"{summary['services']} services, {summary['problems']} with a problem; endpoints "
        f"{ep['ready']} ready, {ep['not_ready']} not ready, {ep['total']} total"
    )
    lines.append("")
    rows: list[tuple[str, ...]] = [
        ("SOURCE", "TYPE", "COMPLETE", "SERVICES", "LAST GOOD READ", "ERRORS")
    ]
    for s in document["sources"]:
        rows.append(
            (
                s["name"],
                s["type"],
                "yes" if s["complete"] else "NO",
                str(s["services"]),
                s["last_read"] or s["last_complete"] or "never",
                "; ".join(s["errors"]) or "-",
            )
        )
    lines += _table(rows)
    lines.append("")
    rows = [("SINK", "TYPE", "ROLE", "API", "HELD DELETES", "CONFLICTS", "NOTES")]
    for k in document["sinks"]:
        rows.append(
            (
                k["name"],
                k["type"],
                "active" if k["active"] else "standby",
                "ok" if k["reachable"] else "UNREACHABLE",
                str(len(k["held_deletes"])),
                str(len(k["conflicts"])),
                "; ".join(([k["error"]] if k["error"] else []) + k["notes"]) or "-",
            )
        )
    lines += _table(rows)
    lines.append("")
    rows = [("SERVICE", "SOURCE NAME", "NAME IN SINK", "READY", "LAST CHANGE", "WHY")]
    for row in document["services"]:
        ep = row["endpoints"]
        why = [
            f"{n['address']}{':' + str(n['port']) if n['port'] else ''} {n['reason']}"
            for n in row["not_ready"]
        ] + list(row["notes"])
        change = row["last_change"] or "-"
        if row["change_to_apply_seconds"] is not None:
            change += f" ({row['change_to_apply_seconds']:.3f}s)"
        rows.append(
            (
                f"{row['namespace']}/{row['name']}",
                row["source_name"],
                ", ".join(sorted(set(row["names"].values()))) or "-",
                "skipped" if row["skipped"] else f"{ep['ready']}/{ep['total']}",
                change,
                "; ".join(why) or "-",
            )
        )
    lines += _table(rows)
    if document["shown"] < document["total"]:
        lines.append(f"({document['shown']} of {document['total']} shown)")
    return "\n".join(lines) + "\n"


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r[:-1])) + "  " + r[-1]
        for r in rows
    ]
