"""Benchmark of the consul source against the Consul double (real HTTP on loopback).

    python bench/bench_consul.py [--services 100 1000 10000] [--samples 30] [--idle 10]

For each N, the double (in a process of its own, as an agent is) holds N
tagged services x 3 instances with passing TTL checks; consul-sync (the
consul source and the runtime, into an in-memory sink) runs in this process
with its defaults (a budget of 64 connections, wait 5m, coalesce 100 ms).
It reports:

* connections held to the agent: the peak during the run and while idle;
* health flip -> the runtime receiving it (the source's publish), and -> the
  sink having applied it: median and p99 over ``--samples`` flips;
* registration of a new service -> the runtime / the sink (same);
* an address change in place (found by the instance scan, no sweep) -> the
  runtime / the sink (same, over ``--moves`` changes);
* a node's own address changing (the nodes watch), for an instance without
  an address of its own -> the runtime / the sink;
* consul-sync's CPU (percent of one core) and memory (RSS) while idle.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from consul_sync import Snapshot
from consul_sync.config import Settings
from consul_sync.metrics import Metrics
from consul_sync.model import DesiredService, ServiceKey
from consul_sync.plugins import make_plugin_manager
from consul_sync.runtime import Runtime
from tests.consul.helpers import make_source
from tests.consul.remote_double import RemoteDouble
from tests.consul.sinks import MemorySink

TAG = ["kubernetes"]


def rss_mib() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


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
    ) -> tuple[float, float]:
        """(seconds to the runtime, seconds to the sink)."""
        started = time.monotonic()
        act()
        to_runtime = None
        with anyio.fail_after(limit):
            while True:
                snap = self.latest
                if to_runtime is None and snap is not None and condition(dict(snap.services)):
                    to_runtime = self.published_at - started
                if to_runtime is not None and condition(self.sink.objects):
                    return to_runtime, time.monotonic() - started
                await anyio.sleep(0.002)


def ready_of(objects: dict[ServiceKey, DesiredService], name: str, address: str) -> bool | None:
    service = objects.get(("network", name))
    if service is None:
        return None
    return next((e.ready for e in service.endpoints if e.address == address), None)


async def bench(n: int, samples: int, idle: float, sweeps: int) -> dict[str, Any]:
    out: dict[str, Any] = {"services": n}
    with RemoteDouble(seed=n, max_conns_per_client=200) as consul:
        started = time.monotonic()
        names = consul.populate(n, 3)
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
                while len(sink.objects) < n + 1:  # noqa: ASYNC110 - polling the sink is the point
                    await anyio.sleep(0.01)
            out["initial_sync_s"] = time.monotonic() - started

            flips: list[tuple[float, float]] = []
            for index in rng.sample(range(n), min(samples, n)):
                name, address = names[index], populated_address(index, 1)
                # a fresh instance each time: passing -> critical
                flips.append(
                    await watch.measure(
                        lambda name=name: consul.set_check(f"service:{name}-1", "critical"),
                        lambda o, name=name, address=address: ready_of(o, name, address) is False,
                    )
                )
            registrations: list[tuple[float, float]] = []
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
                    )
                )
            moves: list[tuple[float, float]] = []
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
                    )
                )
            node_moves: list[tuple[float, float]] = []
            for i in range(samples):
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


def row(label: str, pairs: list[tuple[float, float]]) -> str:
    runtime = [p[0] * 1000 for p in pairs]
    sink = [p[1] * 1000 for p in pairs]
    return (
        f"  {label:<28} runtime: median {statistics.median(runtime):7.1f} ms  "
        f"p99 {percentile(runtime, 0.99):7.1f} ms   sink: median {statistics.median(sink):7.1f} ms"
        f"  p99 {percentile(sink, 0.99):7.1f} ms   (n={len(pairs)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument(
        "--moves", "--sweeps", type=int, default=30, help="address changes in place"
    )
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle measured")
    args = parser.parse_args()
    print(f"consul-sync consul source benchmark (pid {os.getpid()}, {os.cpu_count()} CPUs)")
    for n in args.services:
        result = anyio.run(bench, n, args.samples, args.idle, args.moves)
        print(f"\nN = {n} services x 3 instances (budget 64 connections)")
        print(
            f"  populate {result['populate_s']:.1f} s; initial sync to the sink "
            f"{result['initial_sync_s']:.2f} s"
        )
        print(
            f"  connections: peak {result['peak_connections']}, idle "
            f"{result['idle_connections']}, refused by the agent {result['rejected_connections']}"
        )
        print(row("health flip", result["flip"]))
        print(row("registration (new service)", result["registration"]))
        print(row("address change in place", result["address_change"]))
        print(row("node address change", result["node_address_change"]))
        print(
            f"  idle: CPU {result['idle_cpu_pct']:.2f} % of one core, RSS "
            f"{result['idle_rss_mib']:.0f} MiB; sweeps run {result['sweeps']}"
        )


if __name__ == "__main__":
    main()
