"""Benchmark of the consul source against the Consul double (real HTTP on loopback), or a
real agent with ``--consul-addr`` (it says which it used).

    python bench/bench_consul.py [--services 100 1000 10000] [--samples 30] [--idle 10]
        [--churn SERVICES PER_SECOND SECONDS] [--consul-addr http://agent:8500]

For each N, the double (in a process of its own, as an agent is) holds N
tagged services x 3 instances with passing TTL checks; consul-sync (the
consul source and the runtime, into an in-memory sink) runs in this process
with its defaults (a budget of 64 connections, wait 5m, coalesce 100 ms).
It reports:

* connections held to the agent: the peak during the run and while idle;
* health flip -> the runtime receiving it (the source's publish), and -> the
  sink having applied it: median and p99 over ``--samples`` flips, beside
  the floor: Consul's own wake, a blocking query on the same endpoint
  parked by the bench before each change (registrations likewise, on
  catalog/services);
* registration of a new service -> the runtime / the sink (same);
* an address change in place (found by the instance scan, no sweep) -> the
  runtime / the sink, over ``--moves`` changes; its floor is Consul's wake on
  catalog/services (the index moves, the body does not: what follows is the
  scan, one ``catalog/node-services`` answer per node);
* a node's own address changing (the nodes watch), for an instance without
  an address of its own -> the runtime / the sink;
* consul-sync's CPU (percent of one core) and memory (RSS) while idle.

Before that, the per-read cost of the HTTP client: reads per second of
``health/service/NAME`` (the readers' read, JSON decoded, through
``ConsulAPI.get``) and the client's CPU per read, with 1 and with 62 reads
in flight, over each scheme (``--read-schemes http unix https``), for the
current client and for the old one in the same run, as new/old ratios.
"The old one" is ``api.py`` of ``--old-ref`` (default: the last commit with
the hand-written HTTP/1.1 client, and httpx for https), taken with
``git show`` into a temporary module under ``bench/`` for the run and
removed afterwards; ``--old-ref ''`` measures the current client only.
Old and new alternate within each round (``--rounds``); the best and the
median round of each are printed (the machine may be shared).

The current api.py has one client (h11 over anyio, every scheme).
``--client new`` (default) runs the N-service bench with it in the source,
``--client old`` with ``--old-ref``'s api.py (same exception classes), for
comparing the 10,000-service figures.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.measure import rss_mib

from consul_sync import Snapshot
from consul_sync.config import Settings
from consul_sync.metrics import Metrics
from consul_sync.model import DesiredService, ServiceKey
from consul_sync.plugins import make_plugin_manager
from consul_sync.runtime import Runtime
from consul_sync_consul import api
from consul_sync_consul import source as consul_source
from tests.consul.helpers import make_source
from tests.consul.schemes import double_tls, make_pki
from tests.consul.sinks import MemorySink
from tests.fakes.remote import RemoteDouble

TAG = ["kubernetes"]
BENCH = Path(__file__).resolve().parent
#: The last commit whose api.py has the hand-written HTTP/1.1 client (_H1Transport).
OLD_REF = "0a8e656"
#: Names the old module takes from the current one, so that the source
#: catches its errors and takes its settings as its own.
SHARED = ("ConsulError", "Unavailable", "BadAnswer", "Unsupported", "ACLRejected",
          "TokenSource", "TLSSettings", "Reply")  # fmt: skip


@contextlib.contextmanager
def old_api(ref: str) -> Iterator[ModuleType | None]:
    """``api.py`` as it was at ``ref``, imported from a temporary copy under bench/."""
    if not ref:
        yield None
        return
    try:
        text = subprocess.run(
            ["git", "show", f"{ref}:plugins/consul_sync_consul/api.py"],
            cwd=BENCH.parent, check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"  (old client not measured: cannot read {ref}'s api.py: {exc})")
        yield None
        return
    with tempfile.NamedTemporaryFile(
        "w", suffix=".py", prefix="_old_consul_api_", dir=BENCH, delete=False
    ) as handle:
        handle.write(text)
    path = Path(handle.name)
    try:
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for name in SHARED:  # looked up at call time: the old code raises ours
            setattr(module, name, getattr(api, name))
        yield module
    finally:
        path.unlink()


async def read_rate(
    module: ModuleType,
    url: str,
    tls: Any,
    names: list[str],
    in_flight: int,
    seconds: float,
) -> tuple[float, float]:
    """(reads per second, client CPU microseconds per read) through ``module.ConsulAPI``."""
    consul = module.ConsulAPI(url, tokens=api.TokenSource(None, None), tls=tls, max_connections=64)
    count = 0
    end = 0.0

    async def reader(start: int) -> None:
        nonlocal count
        i = start
        while time.monotonic() < end:
            await consul.get(f"/v1/health/service/{names[i % len(names)]}", {"tag": TAG[0]})
            count += 1
            i += in_flight

    try:
        end = time.monotonic() + 0.3  # warm up: connections opened, caches filled
        async with anyio.create_task_group() as tg:
            for k in range(in_flight):
                tg.start_soon(reader, k)
        count = 0
        cpu0, wall0 = time.process_time(), time.monotonic()
        end = wall0 + seconds
        async with anyio.create_task_group() as tg:
            for k in range(in_flight):
                tg.start_soon(reader, k)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    finally:
        await consul.aclose()
    return count / wall, 1e6 * cpu / max(count, 1)


def _double_options(scheme: str, tmp: Path) -> dict[str, Any]:
    if scheme == "https":
        return {"tls": double_tls(make_pki(tmp))}
    if scheme == "unix":
        return {"unix_path": str(tmp / "consul.sock")}
    return {}


def read_costs(
    old_ref: str, seconds: float, rounds: int, services: int, schemes: list[str]
) -> None:
    print(f"\nPer-read cost: health/service/NAME through ConsulAPI.get ({services} services x 3)")
    print(f"  {rounds} rounds of {seconds:g} s each, old and new alternating; best (median)")
    with old_api(old_ref) as old:
        clients: list[tuple[str, ModuleType]] = [("new (h11 over anyio)", api)]
        if old is not None:
            clients.insert(0, (f"old ({old_ref})", old))
        for scheme in schemes:
            with tempfile.TemporaryDirectory() as tmp:
                options = _double_options(scheme, Path(tmp))
                with RemoteDouble(seed=7, max_conns_per_client=200, **options) as consul:
                    names = consul.populate(services, 3)
                    dtls = options.get("tls")
                    tls = api.TLSSettings(
                        ca_file=dtls.ca_file if dtls else None,
                        server_name=dtls.server_name if dtls else None,
                    )
                    for in_flight in (1, 62):
                        _rates(scheme, clients, consul.url, tls, names, in_flight, seconds, rounds)


def _rates(
    scheme: str,
    clients: list[tuple[str, ModuleType]],
    url: str,
    tls: Any,
    names: list[str],
    in_flight: int,
    seconds: float,
    rounds: int,
) -> None:
    runs: dict[str, list[tuple[float, float]]] = {label: [] for label, _ in clients}
    for _round in range(rounds):
        for label, module in clients:
            runs[label].append(anyio.run(read_rate, module, url, tls, names, in_flight, seconds))
    summary: dict[str, tuple[float, float, float, float]] = {}
    for label, results in runs.items():
        rates = [r for r, _ in results]
        cpus = [c for _, c in results]
        summary[label] = (max(rates), statistics.median(rates), min(cpus), statistics.median(cpus))
        best_rate, median_rate, best_cpu, median_cpu = summary[label]
        print(f"  {scheme:<5} {in_flight:>2} in flight  {label:<22} {best_rate:6.0f} "
              f"({median_rate:6.0f}) reads/s  client CPU {best_cpu:5.0f} ({median_cpu:5.0f}) "
              "us/read")  # fmt: skip
    if len(summary) == 2:
        (ob, om, oc, ocm), (nb, nm, nc, ncm) = summary.values()
        print(f"  {scheme:<5} {in_flight:>2} in flight  new/old: reads/s x{nb / ob:.2f} "
              f"(x{nm / om:.2f}), CPU per read x{nc / oc:.2f} (x{ncm / ocm:.2f})")  # fmt: skip


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def populated_address(service: int, instance: int) -> str:
    n = service * 3 + instance
    return f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


class Watch:
    """Times when the runtime received (publish) and the sink applied a condition."""

    def __init__(self, runtime: Runtime, sink: MemorySink) -> None:
        self.runtime, self.sink = runtime, sink
        self.latest: Snapshot | None = None
        self.published_at = 0.0
        original = runtime.publish

        async def publish(snapshot: Snapshot) -> None:
            self.latest = snapshot
            self.published_at = time.monotonic()
            await original(snapshot)

        runtime.publish = publish  # type: ignore[method-assign]

    async def measure(
        self,
        act: Callable[[], object],
        condition: Callable[[dict[ServiceKey, DesiredService]], bool],
        limit: float = 60.0,
        wake: tuple[str, str] | None = None,
    ) -> tuple[float, ...]:
        """(seconds to the runtime, seconds to the sink[, seconds to Consul's
        own wake]).  ``wake`` is ``(agent URL, path)`` of a blocking query
        the bench parks before ``act``: when Consul answers it is the floor
        (what no watcher of that endpoint can beat).

        Each change comes after a quiet period (the coalescing window since the
        last write), so it measures one change alone: a change right
        behind another written one waits for the window by design (gathered with
        whatever else comes), which is what COALESCE_WINDOW means, not latency."""
        floor: list[float] = []
        quiet = float(self.runtime.settings.coalesce_window) + 0.01
        # Quiet since the last write: the sink's own record of it, since the pass
        # that wrote may not have ended (and set the runtime's mark) when the
        # bench saw the previous change arrive.
        while (gap := time.monotonic() - self._last_write()) < quiet:  # noqa: ASYNC110
            await anyio.sleep(quiet - gap)
        async with anyio.create_task_group() as tg:
            if wake is not None:
                parked = anyio.Event()
                tg.start_soon(_blocking_wake, wake, parked, floor)
                await parked.wait()
            started = time.monotonic()
            act()
            to_runtime = None
            with anyio.fail_after(limit):
                while True:
                    snap = self.latest
                    if to_runtime is None and snap is not None and condition(dict(snap.services)):
                        to_runtime = self.published_at - started
                    if to_runtime is not None and condition(self.sink.objects):
                        done = time.monotonic() - started
                        break
                    await anyio.sleep(0.002)
        if wake is None:
            return to_runtime, done
        return to_runtime, done, floor[0] - started

    def _last_write(self) -> float:
        ends = [self.runtime._last_pass_end, *self.sink.written.values()]
        return max(ends)


async def _blocking_wake(wake: tuple[str, str], parked: anyio.Event, out: list[float]) -> None:
    """A blocking query on ``wake`` parked at the current index; appends
    the moment Consul answered it."""
    url, path = wake
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        first = await client.get(path)
        index = first.headers["X-Consul-Index"]

        async def query() -> None:
            await client.get(path, params={"index": index, "wait": "60s"})
            out.append(time.monotonic())

        async with anyio.create_task_group() as tg:
            tg.start_soon(query)
            await anyio.sleep(0.05)  # the query is parked at the agent
            parked.set()


class AgentConsul:
    """A real Consul agent (``--consul-addr``) in the double's place, through its agent API:
    services registered on the agent's own node with TTL checks (IDs and addresses as the
    double's ``populate`` makes them), checks set with ``/v1/agent/check/*``.  What only the
    double can do (another node, its connection counters) answers ``None``; the bench leaves
    those figures out and says so.  Every service it registered is deregistered at the end."""

    def __init__(self, url: str, token: str = "") -> None:
        self.url = url.rstrip("/")
        headers = {"X-Consul-Token": token} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=30)
        self.registered: list[str] = []

    def __enter__(self) -> AgentConsul:
        return self

    def __exit__(self, *_exc: object) -> None:
        for service_id in self.registered:
            with contextlib.suppress(httpx.HTTPError):
                self._http.put(f"/v1/agent/service/deregister/{service_id}")
        self._http.close()

    def register(
        self,
        name: str,
        *,
        service_id: str,
        address: str,
        port: int,
        tags: list[str],
        status: str = "passing",
        node: str | None = None,
    ) -> None:
        if node is not None:
            raise NotImplementedError("the agent API registers on the agent's own node")
        body = {
            "ID": service_id,
            "Name": name,
            "Tags": tags,
            "Address": address,
            "Port": port,
            "Check": {"CheckID": f"service:{service_id}", "TTL": "24h", "Status": status},
        }
        self._http.put("/v1/agent/service/register", json=body).raise_for_status()
        if service_id not in self.registered:
            self.registered.append(service_id)

    def populate(self, services: int, instances: int = 3) -> list[str]:
        names = [f"svc-{i:05d}" for i in range(services)]
        for s, name in enumerate(names):
            for i in range(instances):
                self.register(name, service_id=f"{name}-{i + 1}",
                              address=populated_address(s, i + 1), port=20000 + i,
                              tags=TAG)  # fmt: skip
        return names

    def set_check(self, check_id: str, status: str) -> None:
        verb = {"passing": "pass", "warning": "warn", "critical": "fail"}[status]
        self._http.put(f"/v1/agent/check/{verb}/{check_id}").raise_for_status()

    def passing(self, names: list[str]) -> list[bool]:
        answer = self._http.get("/v1/health/state/any")
        answer.raise_for_status()
        status = {check["CheckID"]: check["Status"] for check in answer.json()}
        return [status.get(f"service:{name}-1") == "passing" for name in names]

    def add_node(self, name: str, address: str) -> None:
        raise NotImplementedError("the agent API cannot add another node")

    def attr(self, name: str) -> Any:
        return None  # connection counters are the double's


def _flips(
    set_check: Callable[[str, str], object], names: list[str], rate: float, seconds: float
) -> int:
    """Flip instance 1 of each service (check ``service:NAME-1``, address
    ``populated_address(s, 1)``) round-robin over ``names``, ``rate`` per second for
    ``seconds``: critical on the first round, passing on the next, ...  Returns how many."""
    start, i = time.monotonic(), 0
    while (now := time.monotonic()) - start < seconds:
        name = names[i % len(names)]
        set_check(f"service:{name}-1", "critical" if (i // len(names)) % 2 == 0 else "passing")
        i += 1
        time.sleep(max(0.0, start + i / rate - now))
    return i


def _churn_against_agent(url: str, token: str, names: list[str], rate: float, seconds: float,
                         done: Any) -> None:  # fmt: skip
    """In a process of its own (its CPU is not consul-sync's): flips at ``rate`` per second."""
    with AgentConsul(url, token) as agent:
        done.value = _flips(agent.set_check, names, rate, seconds)


@contextlib.contextmanager
def consul_target(addr: str, seed: int) -> Iterator[Any]:
    """The Consul double (a process of its own) or, with ``--consul-addr``, a real agent."""
    if addr:
        with AgentConsul(addr, os.environ.get("CONSUL_HTTP_TOKEN", "")) as agent:
            yield agent
    else:
        with RemoteDouble(seed=seed, max_conns_per_client=200) as double:
            yield double


def _churn_in_double(double: Any, names: list[str], rate: float, seconds: float) -> None:
    """Runs in the double's process: flips one instance's check every 1/rate s for
    ``seconds``, round-robin over ``names`` (so the churn costs consul-sync nothing but
    the watching)."""
    import threading

    def run() -> None:
        double.churn_done = _flips(double.set_check, names, rate, seconds)

    double.churn_done = None
    threading.Thread(target=run, daemon=True).start()


async def churn(services: int, rate: float, seconds: float, addr: str = "") -> dict[str, Any]:
    """CPU per applied change under sustained churn: ``rate`` health flips per second over
    ``services`` services for ``seconds``; consul-sync's process CPU from the churn's start
    until the sink holds the last state, divided by the changes the sink applied."""
    out: dict[str, Any] = {"services": services, "rate": rate, "seconds": seconds}
    with consul_target(addr, services) as consul:
        names = consul.populate(services, 3)
        source = make_source(consul.url, wait=300, timeout=10, retry_max=10)
        sink = MemorySink()
        applied = 0
        original = sink.apply

        async def counting(change: Any) -> None:
            nonlocal applied
            await original(change)
            applied += 1

        sink.apply = counting  # type: ignore[method-assign]
        runtime = Runtime(
            Settings(), [source], [sink], make_plugin_manager(entry_points=False), Metrics()
        )
        async with anyio.create_task_group() as tg:
            await tg.start(runtime.run)
            with anyio.fail_after(600):
                while len(sink.objects) < services:  # noqa: ASYNC110 - polling the sink
                    await anyio.sleep(0.01)
            await anyio.sleep(1.0)
            applied = 0
            cpu0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
            done = start_churn(consul, names, rate, seconds)
            with anyio.fail_after(seconds + 120):
                while done() is None:  # noqa: ASYNC110 - polling the churn
                    await anyio.sleep(0.2)
                expected = consul_ready_states(consul, names)
                while any(  # noqa: ASYNC110 - polling the sink
                    ready_of(sink.objects, name, populated_address(i, 1)) != ready
                    for i, (name, ready) in enumerate(expected)
                ):
                    await anyio.sleep(0.02)
            cpu1, wall1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
            cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
            out["changes"] = done()
            out["applied"] = applied
            out["cpu_s"] = cpu
            out["wall_s"] = wall1 - wall0
            out["passes"] = runtime.passes
            runtime.stop()
    return out


def consul_ready_states(consul: Any, names: list[str]) -> list[tuple[str, bool]]:
    """(name, whether instance 1 passes) for each name, as Consul holds it now."""
    states = (
        consul.passing(names) if isinstance(consul, AgentConsul) else consul.fn(_passing, names)
    )
    return list(zip(names, states, strict=True))


def start_churn(consul: Any, names: list[str], rate: float, seconds: float) -> Callable[[], Any]:
    """Start the flips where they cost consul-sync nothing (inside the double's process, or a
    process of their own against a real agent); returns how to ask whether they are done."""
    if isinstance(consul, AgentConsul):
        import multiprocessing

        done = multiprocessing.Value("q", -1)
        token = os.environ.get("CONSUL_HTTP_TOKEN", "")
        process = multiprocessing.Process(
            target=_churn_against_agent, args=(consul.url, token, names, rate, seconds, done)
        )
        process.start()
        return lambda: None if done.value < 0 else done.value
    consul.fn(_churn_in_double, names, rate, seconds)
    return lambda: consul.attr("churn_done")


def _passing(double: Any, names: list[str]) -> list[bool]:
    return [double.check_status(f"service:{name}-1") == "passing" for name in names]


def ready_of(objects: dict[ServiceKey, DesiredService], name: str, address: str) -> bool | None:
    service = objects.get(("network", name))
    if service is None:
        return None
    return next((e.ready for e in service.endpoints if e.address == address), None)


async def bench(n: int, samples: int, idle: float, sweeps: int, addr: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"services": n}
    with consul_target(addr, n) as consul:
        double = not isinstance(consul, AgentConsul)
        started = time.monotonic()
        names = consul.populate(n, 3)
        if double:  # another node: catalog writes only the double takes here
            consul.add_node("bench-node", "10.252.0.1")
            consul.register("bench-on-node", service_id="bench-on-node-1", address="", port=80,
                            tags=TAG, status="passing", node="bench-node")  # fmt: skip
        out["populate_s"] = time.monotonic() - started
        source = make_source(consul.url, wait=300, timeout=10, retry_max=10)
        source.retry_base = 0.5
        source.recheck_delay = 1.0
        sink = MemorySink()
        metrics = Metrics()
        runtime = Runtime(
            Settings(), [source], [sink], make_plugin_manager(entry_points=False), metrics
        )
        watch = Watch(runtime, sink)
        rng = random.Random(n)
        async with anyio.create_task_group() as tg:
            started = time.monotonic()
            await tg.start(runtime.run)
            with anyio.fail_after(600):
                while len(sink.objects) < n + double:  # noqa: ASYNC110 - polling the sink
                    await anyio.sleep(0.01)
            out["initial_sync_s"] = time.monotonic() - started

            flips: list[tuple[float, ...]] = []
            for index in rng.sample(range(n), min(samples, n)):
                name, address = names[index], populated_address(index, 1)
                # a fresh instance each time: passing -> critical
                flips.append(
                    await watch.measure(
                        lambda name=name: consul.set_check(f"service:{name}-1", "critical"),
                        lambda o, name=name, address=address: ready_of(o, name, address) is False,
                        wake=(consul.url, "/v1/health/state/any"),
                    )
                )
            registrations: list[tuple[float, ...]] = []
            for i in range(samples):
                new = f"bench-new-{i}"
                registrations.append(
                    await watch.measure(
                        lambda new=new: consul.register(
                            new,
                            service_id=f"{new}-1",
                            address="10.250.0.1",
                            port=80,
                            tags=TAG,
                            status="passing",
                        ),
                        lambda o, new=new: ("network", new) in o,
                        wake=(consul.url, "/v1/catalog/services"),
                    )
                )
            moves: list[tuple[float, ...]] = []
            for i, index in enumerate(rng.sample(range(n), min(sweeps, n))):
                name = names[index]
                address = f"10.251.0.{i + 1}"
                moves.append(
                    await watch.measure(
                        lambda name=name, address=address: consul.register(
                            name,
                            service_id=f"{name}-2",
                            address=address,
                            port=20001,
                            tags=TAG,
                            status="passing",
                        ),
                        lambda o, name=name, address=address: (
                            ready_of(o, name, address) is not None
                        ),
                        limit=300,
                        wake=(consul.url, "/v1/catalog/services"),
                    )
                )
            node_moves: list[tuple[float, float]] = []
            for i in range(samples if double else 0):
                address = f"10.252.{1 + i // 250}.{1 + i % 250}"
                node_moves.append(
                    await watch.measure(
                        lambda address=address: consul.add_node("bench-node", address),
                        lambda o, address=address: (
                            ready_of(o, "bench-on-node", address) is not None
                        ),
                    )
                )
            # let sweeps and publishes settle, then measure idle
            with anyio.fail_after(600):
                while source._sweep_pending:  # noqa: ASYNC110 - polling the source
                    await anyio.sleep(0.05)
            await anyio.sleep(1.0)
            out["peak_connections"] = consul.attr("peak_connections")
            cpu0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
            await anyio.sleep(idle)
            cpu1, wall1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
            cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
            out["idle_cpu_pct"] = 100.0 * cpu / (wall1 - wall0)
            out["idle_rss_mib"] = rss_mib()
            out["idle_connections"] = consul.attr("current_connections")
            out["rejected_connections"] = consul.attr("rejected_connections")
            runtime.stop()
        out["flip"] = flips
        out["registration"] = registrations
        out["address_change"] = moves
        out["node_address_change"] = node_moves
        out["sweeps"] = source.sweeps
    return out


def row(label: str, pairs: list[tuple[float, ...]]) -> str:
    runtime = [p[0] * 1000 for p in pairs]
    sink = [p[1] * 1000 for p in pairs]
    line = (
        f"  {label:<28} runtime: median {statistics.median(runtime):7.1f} ms  "
        f"p90 {percentile(runtime, 0.9):7.1f}  p99 {percentile(runtime, 0.99):7.1f} ms   "
        f"sink: median {statistics.median(sink):7.1f} ms  p90 {percentile(sink, 0.9):7.1f}  "
        f"p99 {percentile(sink, 0.99):7.1f} ms   (n={len(pairs)})"
    )
    if all(len(p) == 3 for p in pairs):
        wake = [p[2] * 1000 for p in pairs]
        line += (
            f"\n  {'':<28} Consul's own wake (the floor): median {statistics.median(wake):6.1f}"
            f" ms  p90 {percentile(wake, 0.9):6.1f}  p99 {percentile(wake, 0.99):6.1f} ms;"
            f" to the sink: median {statistics.median(sink) - statistics.median(wake):+.1f} ms,"
            f" p90 {percentile(sink, 0.9) - percentile(wake, 0.9):+.1f} ms over the floor"
            f" (x{statistics.median(sink) / max(statistics.median(wake), 0.001):.1f})"
        )
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, nargs="*", default=[100, 1000, 10000])
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument(
        "--moves", "--sweeps", type=int, default=30, help="address changes in place"
    )
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle measured")
    parser.add_argument(
        "--old-ref", default=OLD_REF, help="git ref of the old client ('': do not measure it)"
    )
    parser.add_argument(
        "--read-seconds", type=float, default=2.0, help="seconds per read-rate round (0: skip)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="read-rate rounds")
    parser.add_argument(
        "--churn",
        type=float,
        nargs=3,
        default=[300, 30, 10],
        metavar=("SERVICES", "PER_SECOND", "SECONDS"),
        help="CPU per applied change under sustained churn (SERVICES 0: skip)",
    )
    parser.add_argument("--read-services", type=int, default=1000)
    parser.add_argument("--read-schemes", nargs="+", default=["http", "unix", "https"])
    parser.add_argument(
        "--client", choices=["new", "old"], default="new", help="the client the source uses"
    )
    parser.add_argument(
        "--consul-addr",
        default="",
        help="a real Consul agent (http://host:8500) instead of the double; services are "
        "registered on its node and deregistered at the end (token: CONSUL_HTTP_TOKEN)",
    )
    args = parser.parse_args()
    print(f"consul-sync consul source benchmark (pid {os.getpid()}, {os.cpu_count()} CPUs)")
    if args.consul_addr:
        print(f"against a real Consul agent at {args.consul_addr} (agent API writes)")
        if args.read_seconds > 0:
            print("  (per-read client costs are measured against the double only: skipped)")
            args.read_seconds = 0
    else:
        print("against the Consul double (tests/fakes/consul_double.py, a process of its own)")
    if args.read_seconds > 0:
        read_costs(
            args.old_ref, args.read_seconds, args.rounds, args.read_services, args.read_schemes
        )
    with contextlib.ExitStack() as stack:
        if args.client == "old" and args.services:
            old = stack.enter_context(old_api(args.old_ref or OLD_REF))
            assert old is not None
            stack.enter_context(_source_uses(old.ConsulAPI))
        for n in args.services:
            _run_bench(n, args, args.client)
    services, rate, seconds = args.churn
    if services > 0:
        result = anyio.run(churn, int(services), rate, seconds, args.consul_addr)
        print(
            f"\nSustained churn: {result['changes']} health flips at {rate:g}/s over "
            f"{int(services)} services for {seconds:g} s"
        )
        share = 100 * result["cpu_s"] / result["wall_s"]
        print(
            f"  consul-sync CPU {result['cpu_s']:.2f} s ({share:.1f} % of one core until"
            f" converged, {result['wall_s']:.1f} s); {result['applied']}"
            f" changes applied in {result['passes']} passes: "
            f"{1000 * result['cpu_s'] / max(result['applied'], 1):.2f} ms CPU per applied change"
        )


@contextlib.contextmanager
def _source_uses(client: Any) -> Iterator[None]:
    saved = consul_source.ConsulAPI  # type: ignore[attr-defined]
    consul_source.ConsulAPI = client  # type: ignore[attr-defined]
    try:
        yield
    finally:
        consul_source.ConsulAPI = saved  # type: ignore[attr-defined]


def _run_bench(n: int, args: argparse.Namespace, client: str) -> None:
    result = anyio.run(bench, n, args.samples, args.idle, args.moves, args.consul_addr)
    print(f"\nN = {n} services x 3 instances (budget 64 connections, {client} client)")
    print(
        f"  populate {result['populate_s']:.1f} s; initial sync to the sink "
        f"{result['initial_sync_s']:.2f} s"
    )
    if result["peak_connections"] is not None:  # (the double counts them; an agent does not)
        print(
            f"  connections: peak {result['peak_connections']}, idle "
            f"{result['idle_connections']}, refused by the agent {result['rejected_connections']}"
        )
    print(row("health flip", result["flip"]))
    print(row("registration (new service)", result["registration"]))
    print(row("address change in place", result["address_change"]))
    if result["node_address_change"]:
        print(row("node address change", result["node_address_change"]))
    else:
        print("  node address change: not measured (needs a second node: the double only)")
    print(
        f"  idle: CPU {result['idle_cpu_pct']:.2f} % of one core, RSS "
        f"{result['idle_rss_mib']:.0f} MiB; sweeps run {result['sweeps']}"
    )


if __name__ == "__main__":
    main()
