"""Benchmark of the kubernetes sink against the API double (real HTTP, the real client).

    python bench/bench_kubernetes.py [--services 1000] [--instances 3] [--concurrency 8]

1. Cold start: consul-sync (the runtime, a source holding N services x M
   instances) into an empty namespace: time and API requests, against the
   same objects created directly (POST Service, POST EndpointSlice) with the
   kubernetes client and the same concurrency.
2. One health flip among the N services: the requests it makes (expect 1).
3. A full resync with nothing changed: the writes it makes (expect 0).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import kubernetes.client as k8s

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from consul_sync.model import DesiredService, Endpoint
from consul_sync_kubernetes import render
from tests.fakes.k8s_double import KubeDouble
from tests.kubernetes.helpers import NS, kube_app, service, source


async def poll(condition: Callable[[], bool], limit: float, step: float = 0.001) -> None:
    with anyio.fail_after(limit):
        while not condition():  # noqa: ASYNC110 - polling the double's log is the point
            await anyio.sleep(step)


def make_services(count: int, instances: int) -> list[DesiredService]:
    return [
        service(f"svc-{i:04d}", *(f"10.{i // 250}.{i % 250}.{j + 1}" for j in range(instances)))
        for i in range(count)
    ]


def requests(kube: KubeDouble) -> Counter[str]:
    return Counter(e.verb for e in kube.exchanges if e.verb)


def show(counts: Counter[str]) -> str:
    return ", ".join(f"{verb} {n}" for verb, n in sorted(counts.items()))


def direct(services: list[DesiredService], concurrency: int) -> tuple[float, Counter[str]]:
    """The same objects, created with plain POSTs and the same concurrency."""
    with KubeDouble() as kube:
        configuration = k8s.Configuration(host=kube.url)
        configuration.connection_pool_maxsize = concurrency + 4
        api = k8s.ApiClient(configuration)
        core, discovery = k8s.CoreV1Api(api), k8s.DiscoveryV1Api(api)
        objects = [render.render(s, owner="bench") for s in services]

        def create(rendered: render.Rendered) -> None:
            # Raw answers, read in full, as the sink's client wrapper reads them.
            answer = core.create_namespaced_service(NS, rendered.service, _preload_content=False)
            assert answer.data
            for obj in rendered.slices:
                answer = discovery.create_namespaced_endpoint_slice(NS, obj, _preload_content=False)
                assert answer.data

        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(create, objects))
        elapsed = time.perf_counter() - started
        api.close()
        return elapsed, requests(kube)


async def consul_sync(
    services: list[DesiredService], instances: int, concurrency: int
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with KubeDouble() as kube:
        app = kube_app(kube, sink={"concurrency": concurrency}, coalesce_window="10ms")
        src = source(app)
        src.services = {s.key: s for s in services}
        async with anyio.create_task_group() as tg:
            started = time.perf_counter()
            await tg.start(app.runtime.run)
            await poll(lambda: app.runtime.readiness()[0], 600)
            out["cold"] = time.perf_counter() - started, requests(kube)
            await anyio.sleep(1.0)  # the watch events of our own writes come in

            # one health flip
            kube.reset_log()
            target = services[len(services) // 2]
            flipped = DesiredService(
                name=target.name,
                namespace=target.namespace,
                ports=target.ports,
                endpoints=[
                    Endpoint(e.address, ready=i != 0) for i, e in enumerate(target.endpoints)
                ],
                sources=target.sources,
            )
            started = time.perf_counter()
            await src.push(upsert=[flipped])
            await poll(lambda: bool(kube.writes()), 30)
            out["flip_latency"] = time.perf_counter() - started
            await anyio.sleep(0.5)
            out["flip"] = requests(kube), len(kube.writes())

            # a full resync, nothing changed
            kube.reset_log()
            passes = app.runtime.passes
            started = time.perf_counter()
            app.runtime.request_resync()
            await poll(lambda: app.runtime.passes > passes, 120)
            out["resync_time"] = time.perf_counter() - started
            await anyio.sleep(0.5)
            out["resync"] = requests(kube), len(kube.writes())
            app.runtime.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    services = make_services(args.services, args.instances)
    n, m, c = args.services, args.instances, args.concurrency
    print(f"kubernetes sink benchmark: {n} services x {m} instances, concurrency {c}")

    result = anyio.run(consul_sync, services, m, c)
    base_time, base_requests = direct(services, c)
    cold_time, cold_requests = result["cold"]
    print()
    print(
        f"cold start, consul-sync:      {cold_time:7.2f}s  {sum(cold_requests.values()):5d} "
        f"requests ({show(cold_requests)})"
    )
    print(
        f"cold start, direct creates:   {base_time:7.2f}s  {sum(base_requests.values()):5d} "
        f"requests ({show(base_requests)})"
    )
    print(
        f"  ratio (consul-sync/direct): {cold_time / base_time:7.2f}x time, "
        f"{sum(cold_requests.values()) / sum(base_requests.values()):.2f}x requests"
    )
    flip_requests, flip_writes = result["flip"]
    print(
        f"one health flip:              {flip_writes} write(s) ({show(flip_requests)}), "
        f"first write after {result['flip_latency'] * 1000:.0f}ms"
    )
    resync_requests, resync_writes = result["resync"]
    print(
        f"no-change full resync:        {resync_writes} write(s) ({show(resync_requests)}), "
        f"{result['resync_time'] * 1000:.0f}ms"
    )


if __name__ == "__main__":
    main()
