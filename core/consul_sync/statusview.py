"""The status page's two faces: HTML for ``/`` and a table for ``consul-sync status``.

Both render the document :func:`consul_sync.status.collect` gathers (schema there).  The page is
rendered server-side: no scripts, no external assets, readable on a phone; every value is escaped.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

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
    checked = " checked" if truthy(params.get("problem")) else ""
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


def truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in ("1", "true", "yes", "on")
