"""Soak test: the real Consul source and kubernetes sink under random churn and faults.

    python bench/soak.py [--services 1000] [--seconds 60] [--seed 1] [--quick]

consul-sync runs in this process as ``consul-sync run`` would (``build_app`` with
the default consul source and kubernetes sink, ``Runtime.run``), pointed at the
Consul double and the Kubernetes API double, each in a process of its own (so
that the CPU and memory measured here are consul-sync's, not the doubles').

1. Set-up: N services (1-3 instances each, a few untagged ones as noise) in
   Consul; a few foreign objects in the namespace (a plain Service, a Service
   and an EndpointSlice of another controller, a Service labelled as another
   consul-sync deployment's).  Wait for the initial sync.
2. Churn for ``--seconds``: register, deregister (an instance or a whole
   service), health flips, re-registration in place (new address / port /
   meta, same catalog), renames (casing change ``svc-1``->``Svc-1``, and to a
   new name) -- while faults are injected one after another: Consul
   unreachable, Consul 500s, a Consul index reset (the agent replaced by one
   holding the same state with lower raft indexes), Kubernetes API 503 and
   429 bursts, the API unreachable.
3. Stop churn and faults; wait (bounded) for convergence; then check:
   desired (what Consul holds) == observed (what the API double holds),
   the foreign objects untouched (before/after and the request log), no
   service deleted that never left Consul, services that never left kept
   their uid (no delete+create), idle CPU / passes / requests (busy loops),
   no unexpected exceptions logged.

Exit status 0 when every check passes, 1 otherwise (each failed check is
printed with example keys).

One file of ~1,100 lines on purpose: a script run on its own whose model,
churn, faults and report are read together.  The doubles' processes are
tests/fakes/remote.py.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import random
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.measure import rss_mib

from consul_sync.cli import App, build_app
from consul_sync.config import load_settings
from consul_sync.metrics import Metrics
from consul_sync.plugins import collect_types, make_plugin_manager
from consul_sync.registry import Context
from consul_sync_kube.client import KubeClient
from tests.fakes.remote import RemoteDouble

NS = "network"
TAG = "kubernetes"
OWNER = f"{NS}/consul-sync"
MANAGED_BY = "app.kubernetes.io/managed-by"
OWNER_ANNOTATION = "consul-sync.io/owner"
NAME_ANNOTATION = "consul-sync.io/name"
SLICE_MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"

log = logging.getLogger("soak")


# --- the doubles, each in a process of its own (tests/fakes/remote.py) ---------------------

# Functions run inside the double's process (``RemoteDouble.fn``): the first argument is the
# double.


def consul_register(double: Any, definitions: list[dict[str, Any]]) -> None:
    double.register_many(definitions)


def consul_batch(double: Any, ops: list[tuple[str, Any]]) -> None:
    """Several mutations as one raft write (a rename moves every instance at once)."""
    with double.batch():
        for op, arg in ops:
            if op == "register":
                double.register_definition(arg)
            elif op == "deregister":
                double.deregister(arg)


def consul_stats(double: Any) -> dict[str, Any]:
    return {
        "requests": len(double.requests),
        "errors": list(double.errors),
        "peak_connections": double.peak_connections,
        "index": double.index,
    }


def kube_create(double: Any, items: list[tuple[str, dict[str, Any]]]) -> None:
    for resource_name, obj in items:
        double.create(resource_name, obj, namespace=NS, manager="kubectl-client-side-apply")


def kube_get(double: Any, refs: list[tuple[str, str]]) -> dict[str, Any]:
    return {f"{r}/{n}": double.get(r, NS, n) for r, n in refs}


def kube_observed(double: Any) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """Services (all) and consul-sync's EndpointSlices, summarised."""
    services: dict[str, Any] = {}
    for obj in double.list("services", NS):
        meta = obj["metadata"]
        labels = meta.get("labels") or {}
        annotations = meta.get("annotations") or {}
        services[meta["name"]] = {
            "ours": labels.get(MANAGED_BY) == "consul-sync"
            and annotations.get(OWNER_ANNOTATION) == OWNER,
            "key": annotations.get(NAME_ANNOTATION) or meta["name"],
            "uid": meta.get("uid"),
            "ports": sorted(
                (p.get("name", ""), p.get("port"), p.get("protocol", "TCP"))
                for p in (obj.get("spec") or {}).get("ports") or []
            ),
        }
    slices: dict[str, list[Any]] = collections.defaultdict(list)
    for obj in double.list("endpointslices", NS, label_selector=f"{SLICE_MANAGED_BY}=consul-sync"):
        meta = obj["metadata"]
        service = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL, "")
        ports = obj.get("ports") or []
        port = ports[0].get("port") if ports else None
        for endpoint in obj.get("endpoints") or []:
            ready = (endpoint.get("conditions") or {}).get("ready")
            for address in endpoint.get("addresses") or []:
                slices[service].append((address, port, True if ready is None else bool(ready)))
        if not obj.get("endpoints"):
            slices.setdefault(service, [])
    return services, dict(slices)


def kube_log(double: Any, foreign: list[str]) -> dict[str, Any]:
    """What the request log says: counts, writes to foreign names, Service deletes."""
    import json

    verbs: collections.Counter[str] = collections.Counter()
    statuses: collections.Counter[int] = collections.Counter()
    foreign_writes: list[tuple[str, str, int]] = []
    deletes: list[tuple[str, int]] = []
    writes = 0
    for e in list(double.exchanges):
        verbs[e.verb or e.method] += 1
        statuses[e.status] += 1
        if e.method not in ("POST", "PUT", "PATCH", "DELETE"):
            continue
        writes += 1
        name = e.name
        if not name and e.body:
            try:
                name = (json.loads(e.body).get("metadata") or {}).get("name", "")
            except (ValueError, AttributeError):
                name = ""
        if name in foreign:
            foreign_writes.append((e.method, e.path, e.status))
        if e.method == "DELETE" and e.resource.split(".")[0] == "services" and e.name:
            deletes.append((e.name, e.status))
    return {
        "total": sum(verbs.values()),
        "writes": writes,
        "verbs": dict(verbs),
        "statuses": dict(statuses),
        "foreign_writes": foreign_writes,
        "service_deletes": deletes,
    }


def kube_count(double: Any) -> int:
    return len(double.exchanges)


# --- the model of what the bench put in Consul --------------------------------------------


class Model:
    """What Consul should hold: services by lower-cased name -> (name, instances)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.services: dict[str, dict[str, Any]] = {}  # lname -> {"name", "tagged", "inst"}
        self.address_counter = 0
        self.name_counter = 0
        self.ever_gone: set[str] = set()  # k8s names that left Consul at some point
        self.casing_renamed: set[str] = set()  # k8s names whose Consul name changed case
        self.known: set[str] = set()  # every k8s name Consul ever held
        self.ops: collections.Counter[str] = collections.Counter()
        #: k8s name -> what the churn did to it (time since churn start, op, phase)
        self.history: dict[str, list[str]] = collections.defaultdict(list)
        self.clock: Callable[[], str] = lambda: "setup"

    def note(self, name: str, what: str) -> None:
        self.history[name.lower()].append(f"{self.clock()} {what}")

    def address(self) -> str:
        self.address_counter += 1
        n = self.address_counter
        return f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"

    def new_name(self, prefix: str = "svc") -> str:
        self.name_counter += 1
        return f"{prefix}-{self.name_counter:05d}"

    @staticmethod
    def definition(name: str, sid: str, inst: dict[str, Any], tagged: bool) -> dict[str, Any]:
        return {
            "Name": name,
            "ID": sid,
            "Address": inst["address"],
            "Port": inst["port"],
            "Tags": [TAG] if tagged else ["other"],
            "Meta": dict(inst["meta"]),
            "Check": {"TTL": "10m", "Status": inst["status"]},
        }

    def definitions(self) -> list[dict[str, Any]]:
        return [
            self.definition(s["name"], sid, inst, s["tagged"])
            for s in self.services.values()
            for sid, inst in s["inst"].items()
        ]

    def add_service(self, name: str, tagged: bool = True, count: int | None = None) -> list[Any]:
        count = count or self.rng.choice((1, 2, 2, 3, 3))
        port = self.rng.choice((8080, 8080, 9000, 443))
        instances: dict[str, dict[str, Any]] = {}
        service: dict[str, Any] = {"name": name, "tagged": tagged, "inst": instances}
        for i in range(count):
            instances[f"{name.lower()}-{i + 1}"] = {
                "address": self.address(),
                "port": port,
                "meta": {"rev": "0"},
                "status": self.rng.choice(("passing", "passing", "passing", "critical")),
            }
        self.services[name.lower()] = service
        self.known.add(name.lower())
        return [
            ("register", self.definition(name, sid, inst, tagged))
            for sid, inst in instances.items()
        ]

    def expected(self) -> dict[str, Any]:
        return expected_of(
            {
                s["name"]: [(i["address"], i["port"], i["status"]) for i in s["inst"].values()]
                for s in self.services.values()
                if s["tagged"]
            }
        )


def expected_of(services: dict[str, list[tuple[str, int, str]]]) -> dict[str, Any]:
    """k8s name -> {"key", "port", "endpoints": {(address, port, ready)}}."""
    out: dict[str, Any] = {}
    for name, instances in services.items():
        counts = collections.Counter(port for _, port, _ in instances)
        service_port = min(counts, key=lambda p: (-counts[p], p))
        out[name.lower()] = {
            "key": name,
            "port": service_port,
            "endpoints": sorted((a, p, status == "passing") for a, p, status in instances),
        }
    return out


def consul_expected(url: str) -> dict[str, Any]:
    """The same, read from the Consul double over HTTP (what Consul holds)."""
    services: dict[str, list[tuple[str, int, str]]] = {}
    with httpx.Client(base_url=url, timeout=30) as client:
        catalog = client.get("/v1/catalog/services").json()
        for name, tags in catalog.items():
            if TAG not in (tags or []):
                continue
            entries = client.get(f"/v1/health/service/{name}").json()
            instances = []
            for entry in entries:
                svc = entry["Service"]
                if TAG not in (svc.get("Tags") or []):
                    continue
                statuses = {c["Status"] for c in entry.get("Checks") or []}
                status = (
                    "critical"
                    if "critical" in statuses
                    else "warning"
                    if "warning" in statuses
                    else "passing"
                )
                address = svc.get("Address") or entry["Node"]["Address"]
                instances.append((address, svc["Port"], status))
            if instances:
                services[name] = instances
    return expected_of(services)


def diff(
    expected: dict[str, Any], observed: tuple[dict[str, Any], dict[str, list[Any]]]
) -> dict[str, list[str]]:
    """Problems by kind -> example keys (empty: converged)."""
    services, slices = observed
    problems: dict[str, list[str]] = collections.defaultdict(list)
    for name, want in sorted(expected.items()):
        have = services.get(name)
        if have is None:
            problems["missing Service"].append(name)
            continue
        if not have["ours"]:
            problems["Service not ours"].append(name)
            continue
        if have["key"] != want["key"]:
            problems["wrong Consul name on Service"].append(f"{name}: {have['key']}!={want['key']}")
        ports = [p[1] for p in have["ports"]]
        if ports != [want["port"]]:
            problems["wrong Service port"].append(f"{name}: {ports}!={want['port']}")
        got = sorted((a, p, r) for a, p, r in slices.get(name, []))
        if got != want["endpoints"]:
            wanted = {(a, p): r for a, p, r in want["endpoints"]}
            seen = {(a, p): r for a, p, r in got}
            if len(got) != len(seen):
                problems["duplicate endpoints"].append(name)
            if wanted.keys() - seen.keys():
                problems["missing endpoints"].append(
                    f"{name}: {sorted(wanted.keys() - seen.keys())[:2]}"
                )
            if seen.keys() - wanted.keys():
                problems["stale endpoints"].append(
                    f"{name}: {sorted(seen.keys() - wanted.keys())[:2]}"
                )
            wrong = [k for k in wanted.keys() & seen.keys() if wanted[k] != seen[k]]
            if wrong:
                problems["wrong readiness"].append(f"{name}: {sorted(wrong)[:2]}")
    for name, have in sorted(services.items()):
        if have["ours"] and name not in expected:
            problems["stale Service (not in Consul)"].append(name)
    for name in sorted(slices):
        if name not in expected:
            problems["stale EndpointSlices (service not in Consul)"].append(name)
    return dict(problems)


def show_problems(problems: dict[str, list[str]], limit: int = 5) -> list[str]:
    return [
        f"{kind}: {len(keys)} (e.g. {', '.join(keys[:limit])})"
        for kind, keys in sorted(problems.items())
    ]


# --- measurements -------------------------------------------------------------------------


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def histogram(metrics: Metrics, name: str) -> dict[float, float]:
    buckets: dict[float, float] = collections.defaultdict(float)
    for metric in metrics.registry.collect():
        for sample in metric.samples:
            if sample.name == f"{name}_bucket":
                buckets[float(sample.labels["le"])] += sample.value
    return dict(buckets)


def quantile(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """A quantile of the observations between two snapshots of a histogram."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0
    if total <= 0:
        return None
    rank = q * total
    previous_bound, previous_count = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if bound == float("inf"):
                return previous_bound
            inside = count - previous_count
            fraction = (rank - previous_count) / inside if inside else 1.0
            return previous_bound + (bound - previous_bound) * fraction
        previous_bound, previous_count = bound, count
    return previous_bound


def spin_state(runtime: Any) -> str:
    """What the reconciler had to do (private state, for diagnosis only)."""
    now = runtime.clock()
    parts = [f"dirty {len(getattr(runtime, '_dirty', {}))}"]
    parts.append(f"full_requested {getattr(runtime, '_full_requested', '?')}")
    for name, state in runtime.states.items():
        due = sorted(k[1] for k, r in state.retries.items() if r.due <= now)
        parts.append(
            f"{name}: {len(state.retries)} retries ({len(due)} due, e.g. {due[:3]}), "
            f"failing {sorted(k[1] for k in state.failing)[:3]}, "
            f"rejected {sorted(k[1] for k in state.rejected)[:3]}, "
            f"withheld {sorted(k[1] for k in state.withheld)[:3]}"
        )
    return "; ".join(parts)


def busy_windows(samples: list[tuple[float, int, str]], limit: float) -> dict[str, Any]:
    """Reconcile passes per second over 1 s windows; the phases where it exceeded ``limit``."""
    peak, by_phase = 0.0, collections.Counter[str]()
    for i, (t0, p0, _) in enumerate(samples):
        j = i
        while j < len(samples) - 1 and samples[j][0] - t0 < 1.0:
            j += 1
        t1, p1, _ = samples[j]
        if t1 - t0 < 0.9:
            break
        rate = (p1 - p0) / (t1 - t0)
        peak = max(peak, rate)
        if rate > limit:
            by_phase[samples[i][2]] += 1
    return {"peak": peak, "phases": dict(by_phase)}


class LogTally(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.levels: collections.Counter[str] = collections.Counter()
        self.exceptions: list[str] = []
        self.messages: collections.Counter[str] = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.levels[record.levelname] += 1
        text = record.getMessage()
        self.messages[text[:90]] += 1
        if record.exc_info:
            self.exceptions.append(f"{text} ({record.exc_info[1]!r})")


# --- the soak ---------------------------------------------------------------------------


FOREIGN: list[tuple[str, dict[str, Any]]] = [
    (
        "services",
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "legacy-db", "labels": {"app": "legacy-db"}},
            "spec": {"ports": [{"port": 5432, "protocol": "TCP"}], "selector": {"app": "db"}},
        },
    ),
    (
        "services",
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": "vendor-cache",
                "labels": {MANAGED_BY: "helm", "app.kubernetes.io/name": "vendor-cache"},
            },
            "spec": {"clusterIP": "None", "ports": [{"name": "redis", "port": 6379}]},
        },
    ),
    (
        "endpointslices",
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "vendor-cache-x7k2p",
                "labels": {
                    SERVICE_NAME_LABEL: "vendor-cache",
                    SLICE_MANAGED_BY: "endpointslice-controller.k8s.io",
                },
            },
            "addressType": "IPv4",
            "ports": [{"name": "redis", "port": 6379, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["192.168.7.10"], "conditions": {"ready": True}}],
        },
    ),
    (
        # Another consul-sync deployment's Service: our label, not our owner id.
        "services",
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": "other-team-api",
                "labels": {MANAGED_BY: "consul-sync", "app.kubernetes.io/name": "other-team-api"},
                "annotations": {OWNER_ANNOTATION: "other-team/consul-sync"},
            },
            "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 8080}]},
        },
    ),
]
FOREIGN_NAMES = [obj["metadata"]["name"] for _, obj in FOREIGN]
FOREIGN_REFS = [(r, obj["metadata"]["name"]) for r, obj in FOREIGN]


def build(consul_url: str, kube_url: str, args: argparse.Namespace) -> App:
    pm = make_plugin_manager(environ={})
    registry = collect_types(pm)
    raw: dict[str, Any] = {
        "namespace": NS,
        "max_prune_fraction": args.max_prune_fraction,
        "sources": [{"name": "consul", "type": "consul", "address": consul_url}],
        "sinks": [{"name": "kubernetes", "type": "kubernetes", "leader_elect": False}],
    }
    if args.resync:
        raw["resync_interval"] = args.resync
    for item in args.set:
        key, _, value = item.partition("=")
        raw[key] = value
    settings = load_settings(registry, raw=raw, environ={})
    metrics = Metrics()
    context = Context(metrics=metrics, extras={"kubernetes_client": KubeClient.for_url(kube_url)})
    return build_app(settings, pm, registry, metrics=metrics, context=context)


class Churn:
    """Random churn and the fault schedule, run in a thread (the doubles' calls block)."""

    def __init__(self, soak: Soak, seconds: float, rate: float) -> None:
        self.soak, self.seconds, self.rate = soak, seconds, rate
        self.model = soak.model
        self.rng = soak.rng
        self.faults: collections.Counter[str] = collections.Counter()
        self.fault_log: list[str] = []
        self.stop = threading.Event()
        self.phase = "churn"

    # churn operations: each returns a list of batch ops for the Consul double
    def _pick(self, tagged_only: bool = True, multi: bool = False) -> dict[str, Any] | None:
        candidates = [
            s
            for s in self.model.services.values()
            if (s["tagged"] or not tagged_only) and (len(s["inst"]) > 1 or not multi)
        ]
        return self.rng.choice(candidates) if candidates else None

    def op_flip(self) -> None:
        s = self._pick()
        if s is None:
            return
        sid = self.rng.choice(sorted(s["inst"]))
        inst = s["inst"][sid]
        inst["status"] = self.rng.choice(
            [x for x in ("passing", "critical", "warning") if x != inst["status"]]
        )
        self.soak.consul.call("set_check", f"service:{sid}", inst["status"])
        self.model.note(s["name"], f"flip {sid} -> {inst['status']}")

    def op_reregister(self) -> None:
        s = self._pick()
        if s is None:
            return
        sid = self.rng.choice(sorted(s["inst"]))
        inst = s["inst"][sid]
        what = self.rng.choice(("address", "port", "meta", "address+port"))
        if "address" in what:
            inst["address"] = self.model.address()
        if "port" in what:
            inst["port"] = self.rng.choice((8080, 9000, 9090, 443))
        inst["meta"] = {"rev": str(int(inst["meta"]["rev"]) + 1)}
        self.model.note(s["name"], f"re-register {sid} ({what})")
        self._register([("register", Model.definition(s["name"], sid, inst, s["tagged"]))])

    def op_register(self) -> None:
        name = self.model.new_name("new")
        self._register(self.model.add_service(name))
        self.model.note(name, "register")

    def op_add_instance(self) -> None:
        s = self._pick()
        if s is None:
            return
        sid = f"{s['name'].lower()}-x{self.model.address_counter}"
        inst = {
            "address": self.model.address(),
            "port": next(iter(s["inst"].values()))["port"],
            "meta": {"rev": "0"},
            "status": "passing",
        }
        s["inst"][sid] = inst
        self.model.note(s["name"], f"add instance {sid}")
        self._register([("register", Model.definition(s["name"], sid, inst, s["tagged"]))])

    def op_deregister_instance(self) -> None:
        s = self._pick(multi=True)
        if s is None:
            return
        sid = self.rng.choice(sorted(s["inst"]))
        del s["inst"][sid]
        self.model.note(s["name"], f"deregister instance {sid}")
        self._register([("deregister", sid)])

    def op_deregister_service(self) -> None:
        s = self._pick(tagged_only=False)
        if s is None:
            return
        del self.model.services[s["name"].lower()]
        if s["tagged"]:
            self.model.ever_gone.add(s["name"].lower())
        self.model.note(s["name"], "deregister service")
        self._register([("deregister", sid) for sid in s["inst"]])

    def _rename(self, s: dict[str, Any], new: str) -> None:
        old = s["name"]
        del self.model.services[old.lower()]
        s["name"] = new
        self.model.services[new.lower()] = s
        self.model.known.add(new.lower())
        self.model.note(old, f"rename {old} -> {new}")
        if new.lower() != old.lower():
            self.model.note(new, f"rename {old} -> {new}")
        self._register(
            [
                ("register", Model.definition(new, sid, i, s["tagged"]))
                for sid, i in s["inst"].items()
            ]
        )

    def op_rename_case(self) -> None:
        s = self._pick()
        if s is None:
            return
        old = s["name"]
        new = old[0].upper() + old[1:] if old[0].islower() else old[0].lower() + old[1:]
        self.model.casing_renamed.add(old.lower())
        self._rename(s, new)

    def op_rename_new(self) -> None:
        s = self._pick()
        if s is None:
            return
        self.model.ever_gone.add(s["name"].lower())
        self._rename(s, self.model.new_name("renamed"))

    def _register(self, ops: list[tuple[str, Any]]) -> None:
        self.soak.consul.fn(consul_batch, ops)

    OPS: list[tuple[str, float]] = [
        ("op_flip", 35),
        ("op_reregister", 15),
        ("op_register", 10),
        ("op_add_instance", 5),
        ("op_deregister_instance", 7),
        ("op_deregister_service", 7),
        ("op_rename_case", 8),
        ("op_rename_new", 6),
    ]

    # faults: each starts, lasts ``duration`` seconds, then ends
    def faults_plan(self) -> list[str]:
        kinds = [
            "consul_down",
            "kube_503",
            "consul_index_reset",
            "kube_429",
            "consul_500",
            "kube_down",
        ]
        return kinds

    def fault_start(self, kind: str, duration: float) -> Callable[[], None]:
        soak = self.soak
        self.faults[kind] += 1
        self.fault_log.append(f"{time.monotonic() - self.started:5.1f}s {kind} ({duration:.1f}s)")
        if kind == "consul_down":
            soak.consul.call("stop")
            return lambda: soak.consul.call("start")
        if kind == "consul_500":
            soak.consul.call("inject_fault", "error", times=None, status=500)
            return lambda: soak.consul.call("clear_faults")
        if kind == "consul_index_reset":
            # The agent replaced by one restored from the same state: lower raft indexes.
            before = soak.consul.fn(consul_stats)["index"]
            soak.consul_requests_before_reset += soak.consul.fn(consul_stats)["requests"]
            port = soak.consul.port
            soak.consul.close()
            soak.consul = RemoteDouble(
                "consul",
                setup=consul_register,
                setup_args=(self.model.definitions(),),
                port=port,
                seed=soak.args.seed,
            )
            after = soak.consul.fn(consul_stats)["index"]
            self.fault_log[-1] += f" index {before} -> {after}"
            return lambda: None
        if kind == "kube_503":
            soak.kube.call("fail_next", 10**9, status=503)
            return lambda: soak.kube.call("clear_faults")
        if kind == "kube_429":
            soak.kube.call("fail_next", 10**9, status=429, retry_after=1)
            return lambda: soak.kube.call("clear_faults")
        if kind == "kube_down":
            soak.kube.call("stop")
            return lambda: soak.kube.call("start")
        raise ValueError(kind)

    def run(self) -> None:
        self.started = time.monotonic()
        self.model.clock = lambda: f"{time.monotonic() - self.started:5.1f}s [{self.phase}]"
        end = self.started + self.seconds
        names, weights = zip(*self.OPS, strict=True)
        kinds = self.faults_plan()
        # Faults spread over the churn: one every ``slot`` seconds, the last ending
        # well before the churn does.
        slot = self.seconds / (len(kinds) + 1)
        duration = min(self.soak.args.fault_seconds, slot * 0.6)
        schedule = [(self.started + slot * (i + 0.5), k) for i, k in enumerate(kinds)]
        ending: tuple[float, Callable[[], None]] | None = None
        interval = 1.0 / self.rate
        next_op = self.started
        while not self.stop.is_set():
            now = time.monotonic()
            if now >= end:
                break
            if ending is not None and now >= ending[0]:
                ending[1]()
                ending = None
                self.phase = f"churn (after {self.phase.split()[0]})"
            if ending is None and schedule and now >= schedule[0][0]:
                _, kind = schedule.pop(0)
                ending = (now + duration, self.fault_start(kind, duration))
                self.phase = kind
            if now >= next_op:
                name = self.rng.choices(names, weights)[0]
                getattr(self, name)()
                self.model.ops[name[3:]] += 1
                next_op += interval
            time.sleep(max(0.0, min(next_op, end) - time.monotonic()))
        if ending is not None:
            ending[1]()
        # make sure every fault is over
        self.soak.consul.call("clear_faults")
        self.soak.consul.call("start")
        self.soak.kube.call("clear_faults")
        self.soak.kube.call("start")


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.model = Model(self.rng)
        self.consul_requests_before_reset = 0
        self.consul: RemoteDouble
        self.kube: RemoteDouble

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await anyio.to_thread.run_sync(fn, *args)

    async def observed(self) -> Any:
        return await self.call(self.kube.fn, kube_observed)

    async def wait_converged(
        self, limit: float, step: float
    ) -> tuple[float | None, dict[str, list[str]]]:
        started = time.monotonic()
        problems: dict[str, list[str]] = {}
        while time.monotonic() - started < limit:
            problems = diff(self.model.expected(), await self.observed())
            if not problems:
                return time.monotonic() - started, {}
            await anyio.sleep(step)
        return None, problems

    async def run(self) -> int:
        args = self.args
        out: dict[str, Any] = {}
        failures: list[str] = []
        # --- set-up
        initial: list[Any] = []
        for i in range(args.services):
            initial += self.model.add_service(self.model.new_name(), tagged=i % 20 != 7)
        self.consul = RemoteDouble(
            "consul", setup=consul_register, setup_args=([d for _, d in initial],), seed=args.seed
        )
        self.kube = RemoteDouble("kubernetes")
        await self.call(self.kube.fn, kube_create, FOREIGN)
        foreign_before = await self.call(self.kube.fn, kube_get, FOREIGN_REFS)
        out["rss_before"] = rss_mib()
        app = build(self.consul.url, self.kube.url, args)
        runtime = app.runtime
        tally = LogTally()
        logging.getLogger("consul_sync").addHandler(tally)
        try:
            async with anyio.create_task_group() as tg:
                started = time.monotonic()
                await tg.start(runtime.run)
                took, problems = await self.wait_converged(args.converge_timeout, 0.25)
                if took is None:
                    print("initial sync did not converge:", *show_problems(problems), sep="\n  ")
                    runtime.stop()
                    return 1
                out["initial_sync"] = time.monotonic() - started
                services0, _ = await self.observed()
                uids0 = {n: s["uid"] for n, s in services0.items() if s["ours"]}
                out["rss_start"] = rss_mib()
                hist0 = histogram(app.metrics, "consul_sync_change_to_apply_seconds")
                passes0 = runtime.passes
                requests0 = await self.call(self.kube.fn, kube_count)
                print(
                    f"initial sync of {args.services} services: {out['initial_sync']:.1f}s; "
                    f"churn for {args.seconds:.0f}s at {args.rate:g} ops/s with faults ..."
                )

                # --- churn and faults
                churn = Churn(self, args.seconds, args.rate)
                samples: list[tuple[float, int, str]] = []

                spins: list[str] = []

                async def sample() -> None:
                    while True:
                        samples.append((time.monotonic(), runtime.passes, churn.phase))
                        if len(samples) > 1 and samples[-1][1] - samples[-2][1] > 0.25 * (
                            args.busy_passes
                        ):
                            spins.append(f"[{churn.phase}] {spin_state(runtime)}")
                        await anyio.sleep(0.25)

                async with anyio.create_task_group() as sampler:
                    sampler.start_soon(sample)
                    await self.call(churn.run)
                    churn.phase = "convergence"
                    took, problems = await self.wait_converged(args.converge_timeout, 0.5)
                    churn.phase = "settling"
                    await anyio.sleep(2.0)
                    sampler.cancel_scope.cancel()
                out["busy"] = busy_windows(samples, args.busy_passes)
                out["spins"] = spins
                for line in churn.fault_log:
                    print(f"  fault at {line}")

                out["converge"] = took
                hist1 = histogram(app.metrics, "consul_sync_change_to_apply_seconds")
                out["passes_soak"] = runtime.passes - passes0
                out["requests_soak"] = await self.call(self.kube.fn, kube_count) - requests0
                # (trailing watch events arrived while settling) measure idle
                passes1 = runtime.passes
                kube1 = await self.call(self.kube.fn, kube_count)
                consul1 = (await self.call(self.consul.fn, consul_stats))["requests"]
                cpu0, wall0 = cpu_seconds(), time.monotonic()
                await anyio.sleep(args.idle)
                cpu1, wall1 = cpu_seconds(), time.monotonic()
                out["idle_cpu"] = 100.0 * (cpu1 - cpu0) / (wall1 - wall0)
                out["idle_passes"] = runtime.passes - passes1
                out["idle_kube"] = await self.call(self.kube.fn, kube_count) - kube1
                out["idle_consul"] = (await self.call(self.consul.fn, consul_stats))[
                    "requests"
                ] - consul1
                out["rss_after"] = rss_mib()

                # --- end-to-end probes: a health flip -> the API double shows it
                out["probes"] = await self.probes(args.probes)

                # --- the final checks, against what Consul holds
                final_expected = await self.call(consul_expected, self.consul.url)
                model_expected = self.model.expected()
                if final_expected != model_expected:
                    d = sorted(
                        k
                        for k in final_expected.keys() | model_expected.keys()
                        if final_expected.get(k) != model_expected.get(k)
                    )
                    failures.append(
                        f"bench model differs from what Consul holds (a bench or double bug): "
                        f"{len(d)} services, e.g. {d[:5]}"
                    )
                observed = await self.observed()
                final = diff(final_expected, observed)
                runtime.stop()
        finally:
            logging.getLogger("consul_sync").removeHandler(tally)
        foreign_after = await self.call(self.kube.fn, kube_get, FOREIGN_REFS)
        klog = await self.call(self.kube.fn, kube_log, FOREIGN_NAMES)
        cstats = await self.call(self.consul.fn, consul_stats)
        self.consul.close()
        self.kube.close()

        # --- report
        services1, _ = observed
        print()
        conv = out["converge"]
        print(f"converged: {'yes' if conv is not None else 'NO'}", end="")
        print(f" ({conv:.2f}s after churn and faults stopped)" if conv is not None else "")
        if conv is None:
            failures.append(
                f"no convergence within {args.converge_timeout:.0f}s: "
                + "; ".join(show_problems(problems))
            )
        if final:
            failures.append(
                "desired (Consul) != observed (API double) at the end: "
                + "; ".join(show_problems(final))
            )
        changed = [k for k in foreign_before if foreign_before[k] != foreign_after[k]]
        print(
            f"foreign objects: {len(FOREIGN_REFS)}; changed {len(changed)}; "
            f"writes to their names in the request log: {len(klog['foreign_writes'])}"
        )
        if changed:
            failures.append(f"foreign objects changed: {changed}")
        if klog["foreign_writes"]:
            failures.append(f"writes to foreign objects: {klog['foreign_writes'][:5]}")
        # deletes of services that never left Consul
        deleted = collections.Counter(n for n, status in klog["service_deletes"] if status < 300)
        wrong = sorted(
            n for n in deleted if n in self.model.known and n not in self.model.ever_gone
        )
        # names Consul never had: objects under a collision name (hash suffix)
        suffixed = sorted(n for n in deleted if n not in self.model.known)
        wrong_case = [n for n in wrong if n in self.model.casing_renamed]
        wrong_other = [n for n in wrong if n not in self.model.casing_renamed]
        print(
            f"Service deletes: {sum(deleted.values())} ({len(deleted)} names); of names that "
            f"never left Consul: {len(wrong)} ({len(wrong_case)} after a casing rename); "
            f"of names Consul never had (collision hash suffix): {len(suffixed)} {suffixed[:3]}"
        )
        if wrong_case:
            failures.append(
                f"casing rename deleted the Service (delete+create instead of an update): "
                f"{len(wrong_case)} of {len(self.model.casing_renamed)} renamed, e.g. "
                f"{wrong_case[:5]}"
            )
        if wrong_other:
            failures.append(
                f"Services deleted that never left Consul: {len(wrong_other)}, "
                f"e.g. {wrong_other[:5]}"
            )
        # uid stability of services that never left Consul
        recreated = sorted(
            n
            for n, uid in uids0.items()
            if n not in self.model.ever_gone
            and n in services1
            and services1[n]["uid"] != uid
            and n not in wrong  # already reported
        )
        if recreated:
            failures.append(
                f"Services re-created (new uid) without a reported delete: {recreated[:5]}"
            )
        busy = out["busy"]
        print(
            f"reconcile passes per second (1 s windows, soak+convergence): peak "
            f"{busy['peak']:.0f}/s; windows above {args.busy_passes:g}/s by phase: "
            f"{busy['phases'] or 'none'}"
        )
        spin_lines = list(dict.fromkeys(out["spins"]))
        for line in spin_lines[:2] + spin_lines[2:][-1:]:  # the first ones and the last
            print(f"  while spinning: {line}")
        if busy["phases"]:
            failures.append(
                f"busy loop: more than {args.busy_passes:g} reconcile passes/s (peak "
                f"{busy['peak']:.0f}/s) in phases {busy['phases']} (0.25 s samples)"
            )
        # idle
        print(
            f"idle ({args.idle:.0f}s after convergence): CPU {out['idle_cpu']:.2f} % of one core, "
            f"{out['idle_passes']} passes, {out['idle_kube']} API requests, "
            f"{out['idle_consul']} Consul requests"
        )
        if out["idle_cpu"] > args.idle_cpu_limit:
            failures.append(
                f"idle CPU {out['idle_cpu']:.1f} % > {args.idle_cpu_limit:g} % (busy loop?)"
            )
        if out["idle_passes"] > 2:
            failures.append(f"{out['idle_passes']} reconcile passes while idle (busy loop?)")
        if out["idle_kube"] > 5 + args.idle:
            failures.append(f"{out['idle_kube']} API requests while idle (busy loop?)")
        if out["idle_consul"] > 20 + 2 * args.idle:
            failures.append(f"{out['idle_consul']} Consul requests while idle (busy loop?)")
        print(
            f"RSS: before start {out['rss_before']:.0f} MiB, after initial sync "
            f"{out['rss_start']:.0f} MiB, after soak {out['rss_after']:.0f} MiB "
            f"(growth {out['rss_after'] - out['rss_start']:+.1f} MiB)"
        )
        p50, p99 = quantile(hist0, hist1, 0.5), quantile(hist0, hist1, 0.99)
        n_obs = (hist1.get(float("inf"), 0) - hist0.get(float("inf"), 0)) if hist1 else 0

        def fmt(v: float | None) -> str:
            return "n/a" if v is None else f"{v * 1000:.0f} ms"

        print(
            f"change-to-apply (consul_sync_change_to_apply_seconds, during soak, n={n_obs:.0f}): "
            f"p50 {fmt(p50)}, p99 {fmt(p99)}"
        )
        probes = out["probes"]
        if probes:
            print(
                f"end-to-end health flip (Consul write -> API double), n={len(probes)}: "
                f"p50 {statistics.median(probes) * 1000:.0f} ms, max {max(probes) * 1000:.0f} ms"
            )
        else:
            print("end-to-end health flip probes: none completed")
            if args.probes:
                failures.append("end-to-end probes timed out")
        print(
            f"passes: {out['passes_soak']} during soak+convergence ({runtime.passes} in all); "
            f"API requests: {out['requests_soak']} during soak+convergence, {klog['total']} in all "
            f"({', '.join(f'{v} {k}' for k, v in sorted(klog['verbs'].items()))}); "
            f"Consul requests: {self.consul_requests_before_reset + cstats['requests']}"
        )
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(klog["statuses"].items()))
        print(f"API answers by status: {answers}")
        print(
            "churn ops: "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.model.ops.items()))
            + f"; faults injected: {sum(churn.faults.values())} ("
            + ", ".join(f"{k} {v}" for k, v in sorted(churn.faults.items()))
            + ")"
        )
        print(
            f"consul-sync log: {dict(tally.levels)}; unexpected exceptions: {len(tally.exceptions)}"
        )
        for text, count in tally.messages.most_common(args.show_log):
            print(f"  {count:5d} x {text}")
        if tally.exceptions:
            failures.append(
                f"{len(tally.exceptions)} unexpected exceptions logged, e.g. {tally.exceptions[:2]}"
            )
        if cstats["errors"]:
            failures.append(f"the Consul double logged errors: {cstats['errors'][:3]}")
        print()
        if failures:
            print(f"FAILED ({len(failures)} checks):")
            for failure in failures:
                print(f"  - {failure}")
            keys = sorted({k for keys in final.values() for k in keys})
            keys = [k.split(":")[0] for k in keys] + wrong_case + wrong_other + recreated
            shown = list(dict.fromkeys(keys))[: args.show_history]
            if shown:
                print("history of some keys involved (time since churn start [phase]):")
            for key in shown:
                print(f"  {key}:")
                for line in self.model.history.get(key, ["(never touched by the churn)"]):
                    print(f"    {line}")
            return 1
        print("OK: every check passed")
        return 0

    async def probes(self, count: int) -> list[float]:
        """Health flips on stable services, timed until the API double shows them."""
        times: list[float] = []
        for _ in range(count):
            s = self.rng.choice([s for s in self.model.services.values() if s["tagged"]])
            sid = sorted(s["inst"])[0]
            inst = s["inst"][sid]
            inst["status"] = "critical" if inst["status"] == "passing" else "passing"
            want = inst["status"] == "passing"
            name = s["name"].lower()
            started = time.monotonic()
            await self.call(self.consul.call, "set_check", f"service:{sid}", inst["status"])
            with anyio.move_on_after(30):
                while True:
                    _, slices = await self.observed()
                    if any(a == inst["address"] and r == want for a, _, r in slices.get(name, [])):
                        times.append(time.monotonic() - started)
                        break
                    await anyio.sleep(0.01)
            await anyio.sleep(0.2)
        return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60.0, help="duration of the churn")
    parser.add_argument("--rate", type=float, default=None, help="churn operations per second")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a ~15 s run: 100 services, 8 s churn, 45 s convergence limit",
    )
    parser.add_argument(
        "--fault-seconds", type=float, default=4.0, help="how long each fault lasts"
    )
    parser.add_argument("--converge-timeout", type=float, default=180.0)
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of idle measured")
    parser.add_argument("--idle-cpu-limit", type=float, default=5.0, help="percent of one core")
    parser.add_argument(
        "--busy-passes", type=float, default=50.0, help="passes/s taken for a busy loop"
    )
    parser.add_argument("--probes", type=int, default=10, help="end-to-end flip probes")
    parser.add_argument("--max-prune-fraction", type=float, default=0.5)
    parser.add_argument("--resync", default="", help="resync_interval (default: consul-sync's)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="another global setting"
    )
    parser.add_argument("--log", default="/tmp/consul-sync-soak.log", help="consul-sync's log")
    parser.add_argument("--show-history", type=int, default=6, help="keys whose history is shown")
    parser.add_argument("--show-log", type=int, default=8, help="most frequent warnings shown")
    args = parser.parse_args()
    if args.quick:
        if "--services" not in sys.argv:
            args.services = 100
        if "--seconds" not in sys.argv:
            args.seconds = 8.0
        if "--fault-seconds" not in sys.argv:
            args.fault_seconds = 1.0
        args.idle = min(args.idle, 3.0)
        if "--converge-timeout" not in sys.argv:
            args.converge_timeout = 45.0
        args.probes = min(args.probes, 5)
    if args.rate is None:
        args.rate = max(5.0, min(50.0, args.services / 50))
    logger = logging.getLogger("consul_sync")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    handler = logging.FileHandler(args.log, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logger.addHandler(handler)
    print(
        f"consul-sync soak: {args.services} services, churn {args.seconds:g}s, seed {args.seed} "
        f"(pid {os.getpid()}, {os.cpu_count()} CPUs; consul-sync log: {args.log})"
    )
    sys.exit(anyio.run(Soak(args).run))


if __name__ == "__main__":
    main()
