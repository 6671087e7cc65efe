"""deploy/: the Role grants the gateway sink exactly the requests it makes."""

from __future__ import annotations

import anyio
import pytest

from tests.fakes.k8s_double import KubeDouble
from tests.kubernetes.helpers import NS, kube_app, service, source, until
from tests.kubernetes.test_deploy import base

from .helpers import routes

pytestmark = pytest.mark.anyio


async def test_the_role_grants_the_gateway_sinks_requests() -> None:
    with KubeDouble(gateway_api=True) as kube:
        app = kube_app(kube, gateway={})
        grpc = service("vault", "10.0.0.3", tags=["internal"], app_protocol="grpc")
        async with anyio.create_task_group() as tg:
            await tg.start(app.runtime.run)
            await source(app).push([service("plex", "10.0.0.1", tags=["internal"]), grpc])
            await until(lambda: "plex-envoy-internal" in routes(kube))
            await until(lambda: "vault-envoy-internal" in routes(kube, "grpcroutes"))
            await source(app).push([])
            await until(lambda: routes(kube) == {} and routes(kube, "grpcroutes") == {})
            app.runtime.stop()
        gateway = "gateway.networking.k8s.io"
        used = {(e.verb, e.resource) for e in kube.exchanges if e.verb and gateway in e.resource}
    granted = set()
    for rule in base()["Role"]["rules"]:
        for group in rule["apiGroups"]:
            if group != gateway:
                continue
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    granted.add((verb, f"{resource}.{group}"))
    needed = used | {("create", res) for verb, res in used if verb == "patch"}
    assert needed == granted, (sorted(needed - granted), sorted(granted - needed))
    assert NS
