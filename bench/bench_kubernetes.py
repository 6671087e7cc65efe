"""Benchmark of the kubernetes sink: ours against the direct-create floor, in one run.

    python bench/bench_kubernetes.py [--services 1000] [--instances 3]
        [--concurrency 8[,16,32]] [--runs 3] [--changes 30]
        [--kubeconfig PATH --namespace NS]

Against the API double (real HTTP on loopback, in a process of its own, as a
real API server is: its request handling and watch streams do not compete
with consul-sync for this process's interpreter lock) unless
``--kubeconfig`` names a real API server (then ``--namespace`` is written to
and emptied of consul-sync's objects between runs).  For each concurrency,
``--runs`` times, in turn:

1. **Floor**: the same objects (POST Service, POST EndpointSlice per service)
   created directly with the kubernetes client, ``concurrency`` in parallel,
   answers read in full as the sink reads them.  This is the issue's floor.
   Then the **async floor**: the same creates through the sink's own async
   client (``consul_sync_kube.aio``, h11 over anyio, no worker threads), the
   same concurrency: what the writes cost on the sink's own HTTP path.
2. **Cold start**: consul-sync (the runtime, a source holding N x M) into the
   empty namespace, start to ready: time and requests.  The ratio to the floor
   of the same run is what counts (the machine's noise hits both); it is
   printed against both floors.  Each phase also prints this process's CPU
   seconds (the API double's are its own process's).

Then once: change-to-apply p50/p99 for ``--changes`` health flips (one
slice rewritten) and registrations (Service + slice), each after a quiet
period; the writes of one more instance change (must be 1) and of a full
resync with nothing changed (must be 0).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from resource import RUSAGE_SELF, getrusage
from typing import Any

import anyio
import kubernetes.client as k8s

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from consul_sync.cli import App, build_app
from consul_sync.config import load_settings
from consul_sync.metrics import Metrics
from consul_sync.model import DesiredService, Endpoint, Port
from consul_sync.plugins import collect_types, make_plugin_manager
from consul_sync.registry import Context
from consul_sync.testing import FakePlugin, FakeSource
from consul_sync_kube.aio import AsyncKubeClient
from consul_sync_kube.client import KubeClient
from consul_sync_kube.errors import WRITE_VERBS
from consul_sync_kube.resources import Resource
from consul_sync_kubernetes import render
from tests.fakes.remote import RemoteDouble


class Target:
    """Where objects are written: a fresh API double per use, or a real API
    server whose namespace is emptied of consul-sync's objects before each use."""

    def __init__(self, kubeconfig: str, namespace: str) -> None:
        self.kubeconfig, self.namespace = kubeconfig, namespace

    def describe(self) -> str:
        if self.kubeconfig:
            return f"a real API server (kubeconfig {self.kubeconfig}, namespace {self.namespace})"
        return "the API double (tests/fakes/k8s_double.py, loopback, a process of its own)"

    @contextmanager
    def client(self, concurrency: int) -> Iterator[KubeClient]:
        pool = concurrency + 4
        if not self.kubeconfig:
            kube = RemoteDouble("kubernetes")  # a fresh, empty API server per use
            client = KubeClient.for_url(kube.url, pool_size=pool)
            try:
                yield client
            finally:
                client.close()
                kube.close()
            return
        client = KubeClient.from_environment(kubeconfig=self.kubeconfig, pool_size=pool)
        self._empty(client)
        try:
            yield client
        finally:
            self._empty(client)
            client.close()

    def _empty(self, client: KubeClient) -> None:
        selector = f"{render.MANAGED_BY}={render.MANAGER}"
        for resource in (Resource.ENDPOINTSLICES, Resource.SERVICES):
            items, _ = client.list(resource, self.namespace, selector)
            with ThreadPoolExecutor(16) as pool:
                list(
                    pool.map(
                        lambda o, res=resource: client.delete(
                            res, self.namespace, o["metadata"]["name"]
                        ),
                        items,
                    )
                )


def make_services(count: int, instances: int, namespace: str) -> list[DesiredService]:
    return [
        DesiredService(
            name=f"svc-{i:04d}",
            namespace=namespace,
            ports=[Port("http", 8080)],
            endpoints=[Endpoint(f"10.{i // 250}.{i % 250}.{j + 1}") for j in range(instances)],
            sources=["consul"],
        )
        for i in range(count)
    ]


class Requests:
    """Counts a client's requests, and when each write was answered."""

    def __init__(self, client: KubeClient) -> None:
        self.counts: Counter[str] = Counter()
        self.write_times: list[float] = []
        self._lock = threading.Lock()
        client.listeners.append(self)

    def __call__(self, verb: str, resource: Resource, status: int) -> None:
        with self._lock:
            self.counts[verb] += 1
            if verb in WRITE_VERBS:
                self.write_times.append(time.perf_counter())

    def writes(self) -> int:
        with self._lock:
            return len(self.write_times)

    def show(self) -> str:
        return ", ".join(f"{verb} {n}" for verb, n in sorted(self.counts.items()))


def floor(target: Target, services: list[DesiredService], concurrency: int) -> float:
    """The same objects, created with plain POSTs, ``concurrency`` in parallel."""
    with target.client(concurrency) as client:
        api = client.api_client
        core, discovery = k8s.CoreV1Api(api), k8s.DiscoveryV1Api(api)
        objects = [render.render(s, owner="bench") for s in services]
        namespace = services[0].namespace

        def create(rendered: render.Rendered) -> None:
            # Raw answers, read in full, as the sink's client wrapper reads them.
            answer = core.create_namespaced_service(
                namespace, rendered.service, _preload_content=False
            )
            assert answer.data
            for obj in rendered.slices:
                answer = discovery.create_namespaced_endpoint_slice(
                    namespace, obj, _preload_content=False
                )
                assert answer.data

        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(create, objects))
        return time.perf_counter() - started


def async_floor(target: Target, services: list[DesiredService], concurrency: int) -> float:
    """The same POSTs through the async client (:mod:`consul_sync_kube.aio`): ``concurrency``
    tasks on one event loop, no worker thread."""
    objects = [render.render(s, owner="bench") for s in services]

    async def run(client: KubeClient) -> float:
        aio = AsyncKubeClient(client)
        send, receive = anyio.create_memory_object_stream[render.Rendered](len(objects))
        for rendered in objects:
            send.send_nowait(rendered)
        send.close()

        async def worker() -> None:
            async for rendered in receive:
                assert await aio.create(Resource.SERVICES, rendered.service)
                for obj in rendered.slices:
                    assert await aio.create(Resource.ENDPOINTSLICES, obj)

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(worker)
        elapsed = time.perf_counter() - started
        await aio.aclose()
        return elapsed

    with target.client(concurrency) as client:
        return anyio.run(run, client)


def cpu() -> float:
    """This process's CPU seconds so far (every thread, user and system)."""
    usage = getrusage(RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def make_app(client: KubeClient, namespace: str, concurrency: int) -> App:
    pm = make_plugin_manager(plugins=[("fake", FakePlugin())], environ={})
    registry = collect_types(pm)
    raw = {
        "namespace": namespace,
        "sources": [{"name": "consul", "type": "fake"}],
        "sinks": [
            {
                "name": "kubernetes",
                "type": "kubernetes",
                "leader_elect": False,
                "concurrency": concurrency,
            }
        ],
    }
    settings = load_settings(registry, raw=raw, environ={})
    metrics = Metrics()
    context = Context(metrics=metrics, extras={"kubernetes_client": client})
    return build_app(settings, pm, registry, metrics=metrics, context=context)


async def poll(condition: Callable[[], bool], limit: float, step: float = 0.0005) -> None:
    with anyio.fail_after(limit):
        while not condition():  # noqa: ASYNC110 - polling is the point
            await anyio.sleep(step)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def ours(
    target: Target,
    services: list[DesiredService],
    concurrency: int,
    changes: int,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with target.client(concurrency) as client:
        seen = Requests(client)
        app = make_app(client, services[0].namespace, concurrency)
        src = app.runtime.sources[0]
        assert isinstance(src, FakeSource)
        src.services = {s.key: s for s in services}
        async with anyio.create_task_group() as tg:
            started = time.perf_counter()
            await tg.start(app.runtime.run)
            await poll(lambda: app.runtime.readiness()[0], 600, 0.005)
            out["cold"] = time.perf_counter() - started
            out["cold_requests"] = sum(seen.counts.values()), seen.show()
            if changes:
                await anyio.sleep(1.0)  # the watch events of our own writes come in
                quiet = app.settings.coalesce_window + 0.05
                out["flip"] = await _latencies(src, seen, services, changes, quiet, flip=True)
                out["registration"] = await _latencies(
                    src, seen, services, changes, quiet, flip=False
                )
                # one more instance change: its writes
                await anyio.sleep(quiet)
                before = seen.writes()
                await src.push(upsert=[_flipped(src.services[services[1].key])])
                await poll(lambda: seen.writes() > before, 30)
                await anyio.sleep(0.5)
                out["one_change_writes"] = seen.writes() - before
                # a full resync, nothing changed: its writes
                before, passes = seen.writes(), app.runtime.passes
                app.runtime.request_resync()
                await poll(lambda: app.runtime.passes > passes, 120)
                await anyio.sleep(0.5)
                out["resync_writes"] = seen.writes() - before
            app.runtime.stop()
    return out


def _flipped(svc: DesiredService) -> DesiredService:
    return DesiredService(
        name=svc.name,
        namespace=svc.namespace,
        ports=svc.ports,
        endpoints=[
            Endpoint(e.address, ready=not e.ready if i == 0 else e.ready)
            for i, e in enumerate(svc.endpoints)
        ],
        sources=svc.sources,
    )


async def _latencies(
    src: FakeSource,
    seen: Requests,
    services: list[DesiredService],
    count: int,
    quiet: float,
    *,
    flip: bool,
) -> list[float]:
    """Push to the answer of the change's last write, each after a quiet period."""
    out = []
    for i in range(count):
        await anyio.sleep(quiet)
        if flip:
            current = src.services[services[(i * 37) % len(services)].key]
            change, writes = _flipped(current), 1
        else:
            change = DesiredService(
                name=f"new-{i:04d}",
                namespace=services[0].namespace,
                ports=[Port("http", 8080)],
                endpoints=[Endpoint(f"10.250.{i // 250}.{i % 250 + 1}")],
                sources=["consul"],
            )
            writes = 2
        last = seen.writes() + writes - 1  # index of the change's last write
        started = time.perf_counter()
        await src.push(upsert=[change])
        await poll(lambda last=last: seen.writes() > last, 30)  # type: ignore[misc]
        out.append(seen.write_times[last] - started)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--concurrency", default="16", help="one or several, comma-separated")
    parser.add_argument("--runs", type=int, default=3, help="floor + cold start pairs each")
    parser.add_argument("--changes", type=int, default=30, help="flips and registrations timed")
    parser.add_argument("--kubeconfig", default="", help="a real API server instead of the double")
    parser.add_argument("--namespace", default="network")
    args = parser.parse_args()
    target = Target(args.kubeconfig, args.namespace)
    services = make_services(args.services, args.instances, args.namespace)
    n, m = args.services, args.instances
    print(f"kubernetes sink benchmark: {n} services x {m} instances, against {target.describe()}")
    levels = [int(c) for c in args.concurrency.split(",")]
    for concurrency in levels:
        print(f"\nconcurrency {concurrency}, {args.runs} runs (each: floor, then consul-sync)")
        ratios, async_ratios, floors, async_floors, colds = [], [], [], [], []
        cpus: dict[str, list[float]] = {"floor": [], "async floor": [], "cold start": []}
        last: dict[str, Any] = {}
        for run in range(args.runs):
            used = cpu()
            base = floor(target, services, concurrency)
            cpus["floor"].append(cpu() - used)
            used = cpu()
            async_base = async_floor(target, services, concurrency)
            cpus["async floor"].append(cpu() - used)
            timed = run == args.runs - 1 and concurrency == levels[-1]
            used = cpu()
            last = anyio.run(ours, target, services, concurrency, args.changes if timed else 0)
            cpus["cold start"].append(cpu() - used)  # (with the timed changes in the last run)
            floors.append(base)
            async_floors.append(async_base)
            colds.append(last["cold"])
            ratios.append(last["cold"] / base)
            async_ratios.append(last["cold"] / async_base)
            total, shown = last["cold_requests"]
            print(
                f"  run {run + 1}: cold start {last['cold']:6.2f}s ({total} requests: {shown}); "
                f"floor {base:6.2f}s, async floor {async_base:6.2f}s ({2 * n} requests each); "
                f"ratio {ratios[-1]:.2f}x, to the async floor {async_ratios[-1]:.2f}x; CPU "
                + ", ".join(f"{what} {values[-1]:.2f}s" for what, values in cpus.items())
            )
        print(
            f"  median: cold start {statistics.median(colds):.2f}s, floor "
            f"{statistics.median(floors):.2f}s, async floor {statistics.median(async_floors):.2f}s"
            f"; ratio median {statistics.median(ratios):.2f}x "
            f"(min {min(ratios):.2f}x, max {max(ratios):.2f}x), to the async floor "
            f"{statistics.median(async_ratios):.2f}x "
            f"(min {min(async_ratios):.2f}x, max {max(async_ratios):.2f}x)"
        )
        print(
            "  CPU of this process, medians: "
            + ", ".join(f"{what} {statistics.median(v):.2f}s" for what, v in cpus.items())
        )
    if "flip" in last:
        for what in ("flip", "registration"):
            values = [v * 1000 for v in last[what]]
            print(
                f"{what:>13} -> applied: p50 {percentile(values, 0.5):6.1f} ms, "
                f"p99 {percentile(values, 0.99):6.1f} ms ({len(values)} changes)"
            )
        print(f"one instance change: {last['one_change_writes']} write(s) (must be 1)")
        print(f"no-change full resync: {last['resync_writes']} write(s) (must be 0)")


if __name__ == "__main__":
    main()
