"""The ``consul-sync`` command.

``run`` (default), ``run --once``, ``plan``, ``render``, ``plugins``,
``check-config``, ``status``; ``--config FILE``; ``--version``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

import anyio
import attrs
import pluggy
import yaml

from . import logs
from . import status as status_page
from ._version import __version__
from .config import Settings, effective, load_settings, secrets_of
from .diff import FieldChange, Op, diff_change, summary
from .errors import ConfigError, ConsulSyncError
from .health import ProbeServer, parse_listen_address
from .metrics import Metrics
from .model import Sink, Source
from .plan import Plan
from .plugins import collect_types, describe, make_plugin_manager
from .registry import Context, TypeRegistry
from .runtime import Runtime, watch_signals

log = logging.getLogger("consul_sync")

EXIT_OK, EXIT_FAILED, EXIT_CHANGES = 0, 1, 2


@attrs.define
class App:
    """Everything one invocation needs, built in one place (tests reuse it)."""

    pm: pluggy.PluginManager
    registry: TypeRegistry
    settings: Settings
    metrics: Metrics
    context: Context
    runtime: Runtime


def build_app(
    settings: Settings,
    pm: pluggy.PluginManager,
    registry: TypeRegistry,
    *,
    metrics: Metrics | None = None,
    context: Context | None = None,
) -> App:
    metrics = metrics or Metrics()
    metrics.build.info({"version": __version__})
    context = context or Context(metrics=metrics)
    context.metrics = metrics
    context.namespace = settings.namespace
    context.policy = str(settings.policy)
    context.add_secret = logs.REDACTOR.add
    for value in secrets_of(settings):
        logs.REDACTOR.add(value)
    # Sources and sinks may keep these callables from their constructors, so
    # they are wired before any is made and reach the runtime once it exists.
    box: list[Runtime] = []
    context.mark_dirty = lambda keys: box[0].mark_dirty(keys) if box else None
    context.desired_keys = lambda: box[0].desired_keys() if box else (0, ())
    context.desired_service = lambda key: box[0].desired.get(key) if box else None
    sources: list[Source] = [
        registry.sources[c.type](c.name, c.config, context) for c in settings.sources
    ]
    sinks: list[Sink] = [registry.sinks[c.type](c.name, c.config, context) for c in settings.sinks]
    runtime = Runtime(settings, sources, sinks, pm, metrics)
    box.append(runtime)
    return App(pm, registry, settings, metrics, context, runtime)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="consul-sync",
        description="Sync services tagged in Consul into Kubernetes headless Services and "
        "EndpointSlices.",
    )
    parser.add_argument("--version", action="version", version=f"consul-sync {__version__}")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="TOML file declaring sources and sinks (default: environment "
        "variables, one consul source into one kubernetes sink)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser("run", help="watch and sync until stopped (the default)")
    run.add_argument(
        "--once",
        action="store_true",
        help="one full reconcile, then exit 0 on success, 1 on failure",
    )
    run.add_argument(
        "--release-held-deletes",
        action="store_true",
        help="with --once: apply the deletes the prune budget holds, all of them, now",
    )
    plan = commands.add_parser(
        "plan",
        help="print the changes a sync would make, field by field; write nothing "
        "(exit 0: none, 2: some, 1: error)",
    )
    plan.add_argument(
        "--output",
        choices=("text", "json"),
        default="text",
        help="text (default): one line per object, its differences indented below; "
        "json: the same for scripts (docs/operations.md has the schema)",
    )
    commands.add_parser("render", help="print the desired objects as YAML; contact no sink")
    commands.add_parser("plugins", help="list loaded plugins and their source and sink types")
    commands.add_parser(
        "check-config", help="validate and print the effective configuration (secrets masked)"
    )
    status = commands.add_parser(
        "status",
        help="print the status page of a running consul-sync (its /status.json) as a table",
    )
    status.add_argument(
        "--addr",
        metavar="HOST:PORT",
        help="where it serves METRICS_ADDR (default: METRICS_ADDR, else 127.0.0.1:8080)",
    )
    status.add_argument("-q", "--query", metavar="TEXT", help="only services whose name has TEXT")
    status.add_argument("--problems", action="store_true", help="only services with a problem")
    status.add_argument("--json", action="store_true", help="print the JSON document as it is")
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    plugins: Sequence[Any] = (),
) -> int:
    args = _parser().parse_args(argv)
    env = os.environ if environ is None else environ
    out = stdout or sys.stdout
    command = args.command or "run"
    serving = command == "run" and not getattr(args, "once", False)
    if serving and threading.current_thread() is threading.main_thread():
        # Until the runtime watches signals itself (serve), SIGTERM during
        # start-up (plugins loading, configuration) ends the process cleanly.
        signal.signal(signal.SIGTERM, _exit_on_signal)
    logs.setup(env.get("LOG_LEVEL", "info"), env.get("LOG_FORMAT", "json"))
    try:
        pm = make_plugin_manager(plugins=plugins, environ=env)
        registry = collect_types(pm)
    except Exception as exc:
        print(f"consul-sync: cannot load plugins: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if command == "plugins":
        return _plugins(pm, registry, out)
    if command == "status":
        return _status(args, env, out)
    try:
        settings = load_settings(registry, path=args.config, environ=env)
    except ConfigError as exc:
        where = args.config or "environment"
        print(f"consul-sync: invalid configuration ({where}):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_FAILED
    logs.setup(settings.log_level, settings.log_format)
    if command == "check-config":
        print(json.dumps(effective(settings), indent=2), file=out)
        return EXIT_OK
    try:
        app = build_app(settings, pm, registry)
    except ConsulSyncError as exc:
        print(f"consul-sync: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if command == "render":
        return anyio.run(_render, app, out)
    if command == "plan":
        return anyio.run(_plan, app, out, getattr(args, "output", "text"))
    if getattr(args, "release_held_deletes", False):
        if not args.once:
            print("consul-sync: --release-held-deletes goes with run --once", file=sys.stderr)
            return EXIT_FAILED
        app.runtime.release_held = True
    if getattr(args, "once", False):
        return anyio.run(_once, app)
    code: int = anyio.run(serve, app, env.get("CONSUL_SYNC_COMMIT"))
    _leave_abandoned_calls(code)
    return code


def _leave_abandoned_calls(code: int) -> None:
    """After a stop, API calls abandoned at the shutdown deadline may still
    block worker threads (an API server that accepts but never answers):
    the process must not wait for them, so it exits now."""
    lingering = [
        t for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon
    ]
    if lingering:
        log.debug("exiting without waiting for %d abandoned calls", len(lingering))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _exit_on_signal(signum: int, _frame: object) -> None:
    log.info("received %s during start-up; exiting", signal.Signals(signum).name)
    raise SystemExit(EXIT_OK)


def _status(args: argparse.Namespace, env: Mapping[str, str], out: TextIO) -> int:
    """``consul-sync status``: GET /status.json from a running consul-sync."""
    addr = args.addr or env.get("METRICS_ADDR") or "127.0.0.1:8080"
    try:
        host, port = parse_listen_address(addr if ":" in addr else f"{addr}:8080")
    except ValueError as exc:
        print(f"consul-sync: --addr: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"  # a listen address: ask it on this machine
    params = {"q": args.query or "", "problem": "1" if args.problems else ""}
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v})
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/status.json" + (f"?{query}" if query else "")
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            document = json.loads(reply.read())
    except (OSError, ValueError) as exc:
        print(f"consul-sync: cannot read {url}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(document, indent=2), file=out)
    else:
        out.write(status_page.render_table(document))
    return EXIT_OK


def _plugins(pm: pluggy.PluginManager, registry: TypeRegistry, out: TextIO) -> int:
    for info in describe(pm, registry):
        origin = (
            f"{info.distribution} {info.version}"
            if info.distribution
            else "registered directly (no distribution)"
        )
        print(f"{info.name}  ({origin})", file=out)
        if info.source_types:
            print(f"  source types: {', '.join(info.source_types)}", file=out)
        if info.sink_types:
            print(f"  sink types:   {', '.join(info.sink_types)}", file=out)
        print(f"  hooks:        {', '.join(info.hooks) or '-'}", file=out)
    return EXIT_OK


async def _render(app: App, out: TextIO) -> int:
    runtime = app.runtime
    try:
        await runtime.read_sources()
        runtime._recompute(None)
        services = [runtime.desired[key] for key in sorted(runtime.desired)]
        documents: list[dict[str, Any]] = []
        for sink in runtime.sinks:
            documents.extend(sink.render(services))
        out.write(yaml.safe_dump_all(documents, sort_keys=False) if documents else "")
    finally:
        await runtime.close()
    incomplete = runtime.incomplete_sources()
    if incomplete:
        log.error("incomplete sources: %s", ", ".join(sorted(incomplete)))
        return EXIT_FAILED
    return EXIT_OK


#: Detail lines printed under one object in the text form (JSON has all).
PLAN_DETAIL_LINES = 50


async def _plan(app: App, out: TextIO, output: str = "text") -> int:
    try:
        plans = await app.runtime.plan_only()
    except ConsulSyncError as exc:
        print(f"consul-sync: {exc}", file=sys.stderr)
        return EXIT_FAILED
    report = plan_report(plans)
    if output == "json":
        print(json.dumps(report, indent=2), file=out)
    else:
        for line in plan_text(report):
            print(line, file=out)
    return EXIT_CHANGES if report["pending"] else EXIT_OK


def plan_report(plans: Mapping[str, Plan]) -> dict[str, Any]:
    """``plan --output json``: schema 1 (docs/operations.md).  Items in the
    order the text form prints them; ``pending`` counts what the exit code
    reports (changes and held deletes)."""
    items: list[dict[str, Any]] = []
    guards: dict[str, str] = {}
    pending = 0
    for sink, the_plan in plans.items():
        for change in the_plan.changes:
            pending += 1
            desired = change.desired
            fields = diff_change(change)
            items.append(
                {
                    "sink": sink,
                    "action": change.action.value,
                    "namespace": change.key[0],
                    "name": change.key[1],
                    "endpoints": None if desired is None else len(desired.endpoints),
                    "ready": None
                    if desired is None
                    else sum(1 for e in desired.endpoints if e.ready),
                    "observed": change.observed is not None and change.observed.service is not None,
                    "summary": summary(fields),
                    "diff": [item.to_json() for item in fields],
                }
            )
        for action, keys in (
            ("conflict", the_plan.conflicts),
            ("held-delete", the_plan.held),
            ("withheld-delete", sorted(set(the_plan.withheld) - set(the_plan.held))),
        ):
            for key in keys:
                pending += action == "held-delete"  # pending, if not now
                items.append({"sink": sink, "action": action, "namespace": key[0], "name": key[1]})
        if the_plan.guard:
            guards[sink] = the_plan.guard
    return {"schema": 1, "pending": pending, "items": items, "guards": guards}


def plan_text(report: Mapping[str, Any]) -> list[str]:
    """The text form: the lines ``plan`` always printed, each create and
    update followed by its differences (``+`` added, ``-`` removed, ``~``
    changed), and a sink's guard after its objects."""
    lines: list[str] = []
    guards = dict(report["guards"])
    previous = None
    for item in report["items"]:
        if previous is not None and item["sink"] != previous and previous in guards:
            lines.append(f"{previous}: {guards.pop(previous)}")
        previous = item["sink"]
        where = f"{item['sink']}: "
        key = f"{item['namespace']}/{item['name']}"
        action = item["action"]
        if action == "conflict":
            lines.append(f"{where}conflict {key} (exists, not ours: left alone)")
        elif action == "held-delete":
            lines.append(f"{where}held delete {key} (prune budget)")
        elif action == "withheld-delete":
            lines.append(f"{where}withheld delete {key} (incomplete source)")
        else:
            detail = "" if item["endpoints"] is None else f" ({item['endpoints']} endpoints)"
            lines.append(f"{where}{action} {key}{detail}")
            if action != "delete":
                diff = [
                    FieldChange(Op(d["op"]), d["path"], d["old"], d["new"]) for d in item["diff"]
                ]
                if action == "update" and not item["observed"]:
                    lines.append("    (the objects there cannot be read back: rewritten whole)")
                lines.extend(f"    {d.text()}" for d in diff[:PLAN_DETAIL_LINES])
                if len(diff) > PLAN_DETAIL_LINES:
                    lines.append(
                        f"    ... and {len(diff) - PLAN_DETAIL_LINES} more (--output json)"
                    )
    lines.extend(f"{sink}: {guard}" for sink, guard in guards.items())
    if not report["pending"]:
        lines.append("no changes")
    return lines


async def _once(app: App) -> int:
    result = await app.runtime.run_once()
    for name, reason in result.unreachable.items():
        log.error("%s: %s", name, reason)
    return EXIT_OK if result.ok else EXIT_FAILED


async def serve(app: App, commit: str | None = None) -> int:
    """Run until SIGTERM/SIGINT: probes, signals and the runtime in one task group."""
    probes = ProbeServer(
        app.runtime.readiness,
        app.metrics.registry,
        commit=commit,
        status=lambda: status_page.collect(app.runtime),
    )
    try:
        parse_listen_address(app.settings.metrics_addr)
    except ValueError as exc:
        print(f"consul-sync: {exc}", file=sys.stderr)
        return EXIT_FAILED
    async with anyio.create_task_group() as tg:
        # Signals first: a SIGTERM while anything below starts must stop it.
        await tg.start(watch_signals, app.runtime)
        await tg.start(probes.serve, app.settings.metrics_addr)
        await app.runtime.run()
        tg.cancel_scope.cancel()
    log.info("stopped")
    return EXIT_OK
