"""Benchmark of the status page at scale: 10,000 services by default.

    python bench/bench_status.py [--services 10000] [--instances 3] [--repeat 5]

A runtime (fake source and sink, the manifests sink's naming) holding N
services x M instances, a tenth of them with a not-ready instance and a
reason, every one applied once; then the best of ``--repeat`` runs of:

* collect: the status document (``consul_sync.status.collect``);
* /status.json: collect + select + encode (what one request costs);
* / (HTML): collect + select (the default limit of 1000 rows) + render;
* / ?limit=0: every row rendered;
* / ?q=svc-0999: a filter matching one service;

and the answer time of GET / and /status.json over loopback HTTP.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from consul_sync import status
from consul_sync.health import ProbeServer
from consul_sync.model import Endpoint
from consul_sync.testing import service
from tests.core.helpers import fake_app, sink, source, until


def best(repeat: int, work: Callable[[], Any]) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - started)
    return min(times), result


async def main(services: int, instances: int, repeat: int) -> None:
    app = fake_app(metrics_addr="127.0.0.1:0")
    fake = source(app)
    items = []
    for i in range(services):
        endpoints: list[str | Endpoint] = [
            f"10.{i >> 8 & 255}.{i & 255}.{n}" for n in range(instances)
        ]
        if i % 10 == 0:
            endpoints[-1] = Endpoint(
                f"10.{i >> 8 & 255}.{i & 255}.{instances}",
                ready=False,
                reason="check 'HTTP on :8080' is critical",
            )
        items.append(service(f"svc-{i:04d}", *endpoints, source="src0"))
    fake.services = {s.key: s for s in items}
    probes = ProbeServer(
        app.runtime.readiness, app.metrics.registry, status=lambda: status.collect(app.runtime)
    )
    async with anyio.create_task_group() as tg:
        port = await tg.start(probes.serve, "127.0.0.1:0")
        await tg.start(app.runtime.run)
        await until(lambda: sink(app).count() >= services, timeout=300)
        print(f"{services} services x {instances} instances ({services // 10} not ready)")
        seconds, document = best(repeat, lambda: status.collect(app.runtime))
        print(f"  collect:                  {seconds * 1000:8.1f} ms")
        seconds, body = best(
            repeat, lambda: status.to_json(status.select(status.collect(app.runtime), {}))
        )
        print(f"  /status.json (build):     {seconds * 1000:8.1f} ms  {len(body) / 1e6:.1f} MB")

        def page(params: dict[str, str]) -> str:
            chosen = status.select(
                status.collect(app.runtime), params, default_limit=status.DEFAULT_LIMIT
            )
            return status.render_html(chosen, params)

        for label, params in (
            ("/ (build, 1000 rows)", {}),
            ("/?limit=0 (build, all)", {"limit": "0"}),
            ("/?q=svc-0999 (build)", {"q": "svc-0999"}),
        ):
            seconds, html = best(repeat, lambda params=params: page(params))
            print(f"  {label:25} {seconds * 1000:8.1f} ms  {len(html) / 1e6:.2f} MB")
        async with httpx.AsyncClient(timeout=60) as client:
            for path in ("/", "/status.json", "/?problem=1"):
                times = []
                for _ in range(repeat):
                    started = time.perf_counter()
                    reply = await client.get(f"http://127.0.0.1:{port}{path}")
                    times.append(time.perf_counter() - started)
                    assert reply.status_code == 200
                print(f"  GET {path:22} {min(times) * 1000:8.1f} ms over loopback")
        del document
        app.runtime.stop()
        tg.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    anyio.run(main, args.services, args.instances, args.repeat)
