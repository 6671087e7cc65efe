"""The async client (consul_sync_kube.aio): configured from the sync client's configuration
(bearer token and its refresh hook, CA, client certificate, server name), the same answers and
the same KubeErrors as the thread path, listeners told of every request, and the sink's writes
made through it behind the capacity limiter, without a worker thread."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from consul_sync_kube import aio as aio_module
from consul_sync_kube.aio import AsyncKubeClient, ThreadedKubeClient, writes_for
from consul_sync_kube.client import KubeClient
from consul_sync_kube.errors import KubeError
from consul_sync_kube.resources import Resource
from tests.consul.schemes import make_pki
from tests.core.tiny_http import Answer, Seen, TinyServer
from tests.fakes.k8s_double import KubeDouble

from .helpers import NS, addresses, make_sink, service

pytestmark = pytest.mark.anyio

TOKEN = "s3cret"
SERVICES = f"/api/v1/namespaces/{NS}/services"
SLICES = f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices"


@pytest.fixture
def kube() -> Iterator[KubeDouble]:
    with KubeDouble(tokens={TOKEN: "system:serviceaccount:network:consul-sync"}) as double:
        yield double


def a_service(name: str = "web") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 80}]},
    }


def fields(error: KubeError) -> tuple[Any, ...]:
    return (
        error.status,
        error.reason,
        error.message,
        error.retry_after,
        error.causes,
        error.verb,
        error.resource,
        error.namespace,
        error.name,
    )


async def both(
    client: KubeClient, aio: AsyncKubeClient, method: str, *args: Any, **kwargs: Any
) -> tuple[Any, Any]:
    """The same call through the thread path and through the async client: each one's
    answer, or its KubeError."""
    out = []
    for call in (
        lambda: anyio.to_thread.run_sync(lambda: getattr(client, method)(*args, **kwargs)),
        lambda: getattr(aio, method)(*args, **kwargs),
    ):
        try:
            out.append(await call())
        except KubeError as exc:
            out.append(exc)
    return out[0], out[1]


async def test_the_bearer_token_reaches_the_api_server(kube: KubeDouble) -> None:
    client = KubeClient.for_url(kube.url, token=TOKEN)
    aio = writes_for(client)
    assert isinstance(aio, AsyncKubeClient)
    made = await aio.create(Resource.SERVICES, a_service(), field_manager="consul-sync")
    assert made["metadata"]["uid"] == kube.get("services", NS, "web")["metadata"]["uid"]
    assert await aio.get(Resource.SERVICES, NS, "web") == kube.get("services", NS, "web")

    wrong = KubeClient.for_url(kube.url, token="wrong")
    thread_error, async_error = await both(
        wrong, AsyncKubeClient(wrong), "get", Resource.SERVICES, NS, "web"
    )
    assert isinstance(async_error, KubeError) and async_error.status == 401
    assert fields(async_error) == fields(thread_error)
    await aio.aclose()


async def test_the_refresh_hook_runs_and_its_token_is_sent() -> None:
    tokens = iter(["first", "second", "third"])
    hooked: list[str] = []

    def refresh(configuration: Any) -> None:
        hooked.append(threading.current_thread().name)
        configuration.api_key["authorization"] = next(tokens)

    with TinyServer(lambda seen: Answer(body=b'{"kind": "Service"}')) as server:
        client = KubeClient.for_url(server.url, token="initial")
        client.api_client.configuration.refresh_api_key_hook = refresh
        aio = writes_for(client)
        assert isinstance(aio, AsyncKubeClient)
        aio.token_check_interval = 0.0  # run the hook before every request, as the sync path does
        for _ in range(2):
            assert await aio.get(Resource.SERVICES, NS, "web") == {"kind": "Service"}
        aio.token_check_interval = 3600.0  # the token it gave is used meanwhile
        await aio.get(Resource.SERVICES, NS, "web")
        await aio.aclose()
    assert [s.headers["authorization"] for s in server.seen] == [
        "Bearer first",
        "Bearer second",
        "Bearer second",
    ]
    assert threading.main_thread().name not in hooked  # (an exec plugin may run a program)


async def test_a_client_certificate_over_https(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.pem"))
    server_tls.load_cert_chain(pki / "server.pem", pki / "server.key")
    server_tls.verify_mode = ssl.CERT_REQUIRED
    with TinyServer(lambda seen: Answer(body=b"{}"), tls=server_tls) as server:
        client = KubeClient.for_url(server.url)
        configuration = client.api_client.configuration
        configuration.ssl_ca_cert = str(pki / "ca.pem")
        configuration.cert_file = str(pki / "client.pem")
        configuration.key_file = str(pki / "client.key")
        configuration.tls_server_name = "consul.test"  # the name on the server's certificate
        aio = writes_for(client)
        assert isinstance(aio, AsyncKubeClient)
        await aio.delete(Resource.ENDPOINTSLICES, NS, "web-abc", uid="u-1")
        await aio.aclose()

        configuration.verify_ssl = False  # no CA, no name: not checked at all
        configuration.ssl_ca_cert = configuration.tls_server_name = None
        aio = AsyncKubeClient(client)
        await aio.get(Resource.SERVICES, NS, "web")
        await aio.aclose()
    first: Seen = server.seen[0]
    assert first.peer_cert is not None
    assert dict(x[0] for x in first.peer_cert["subject"])["commonName"] == "client"
    assert (first.method, first.target) == ("DELETE", f"{SLICES}/web-abc")
    assert first.body == b'{"propagationPolicy": "Background", "preconditions": {"uid": "u-1"}}'
    assert len(server.seen) == 2


async def test_the_same_answers_and_errors_as_the_thread_path(kube: KubeDouble) -> None:
    client = KubeClient.for_url(kube.url, token=TOKEN)
    aio = AsyncKubeClient(client)
    told: list[tuple[str, Resource, int]] = []
    client.listeners.append(lambda *args: told.append(args))

    made, error = await both(client, aio, "create", Resource.SERVICES, a_service("a"))
    assert made["metadata"]["name"] == "a" and isinstance(error, KubeError)
    assert error.status == 409 and fields(error) == fields(
        (await both(client, aio, "create", Resource.SERVICES, a_service("a")))[0]
    )
    apply = {"apiVersion": "v1", "kind": "Service", **a_service("b")}
    kwargs = {"field_manager": "consul-sync", "force": True}
    first, second = await both(client, aio, "apply", Resource.SERVICES, apply, **kwargs)
    assert first == second  # (an apply that changes nothing answers the same object)
    patch = {"metadata": {"labels": {"team": "x"}}}
    first, second = await both(client, aio, "merge_patch", Resource.SERVICES, NS, "b", patch)
    assert second["metadata"]["labels"] == {"team": "x"}

    told.clear()
    bad = a_service("Not_A_Name")
    cases: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
        ("create", (Resource.SERVICES, bad), {}),  # 422 Invalid, with causes
        ("get", (Resource.SERVICES, NS, "missing"), {}),  # 404
        ("delete", (Resource.SERVICES, NS, "a"), {"uid": "not-its-uid"}),  # 409 precondition
    ]
    for method, args, kw in cases:
        thread_error, async_error = await both(client, aio, method, *args, **kw)
        assert isinstance(async_error, KubeError), (method, async_error)
        assert fields(async_error) == fields(thread_error), method
    assert thread_error.status == 409  # (the delete's precondition)

    for status, retry_after in ((429, 7), (500, None), (503, None)):
        kube.fail_next(
            2, method="POST", path_prefix=SERVICES, status=status, retry_after=retry_after
        )
        thread_error, async_error = await both(
            client, aio, "create", Resource.SERVICES, a_service("c")
        )
        assert isinstance(async_error, KubeError) and async_error.status == status
        assert fields(async_error) == fields(thread_error)
        assert async_error.retry_after == retry_after and async_error.reason
    assert told[1::2] == told[0::2]  # each request told the same way on both paths
    assert [status for _, _, status in told[0::2]] == [422, 404, 409, 429, 500, 503]
    await aio.aclose()


async def test_no_answer_is_status_0_for_the_outage() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    client = KubeClient.for_url(url)
    told: list[tuple[str, Resource, int]] = []
    client.listeners.append(lambda *args: told.append(args))
    thread_error, async_error = await both(
        client, AsyncKubeClient(client), "create", Resource.SERVICES, a_service()
    )
    assert isinstance(async_error, KubeError)
    assert (async_error.status, async_error.verb, async_error.name) == (0, "create", "web")
    assert (thread_error.status, thread_error.verb, thread_error.name) == (0, "create", "web")
    assert told == [("create", Resource.SERVICES, 0)] * 2


async def test_a_hanging_api_server_times_out(
    kube: KubeDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("consul_sync_kube.client.CONNECT_TIMEOUT", 0.2)
    monkeypatch.setattr("consul_sync_kube.client.REQUEST_TIMEOUT", 0.3)
    kube.fail_next(1, method="POST", path_prefix=SERVICES, mode="hang", delay=5.0)
    aio = AsyncKubeClient(KubeClient.for_url(kube.url, token=TOKEN))
    with anyio.fail_after(3), pytest.raises(KubeError) as hung:
        await aio.create(Resource.SERVICES, a_service())
    assert hung.value.status == 0 and "timed out" in hung.value.message
    await aio.aclose()


def test_what_it_cannot_honour_keeps_the_thread_path(kube: KubeDouble) -> None:
    client = KubeClient.for_url(kube.url)
    assert isinstance(writes_for(client), AsyncKubeClient)
    client.api_client.configuration.proxy = "http://proxy.example:3128"
    assert isinstance(writes_for(client), ThreadedKubeClient)
    assert aio_module.unsupported(KubeClient.for_url("ftp://x").api_client.configuration)


async def test_sink_writes_from_the_event_loop_behind_the_capacity_limiter(
    kube: KubeDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_flight, peak, threads = [0], [0], set()
    create = AsyncKubeClient.create

    async def counted_create(self: AsyncKubeClient, *args: Any, **kwargs: Any) -> Any:
        in_flight[0] += 1
        peak[0] = max(peak[0], in_flight[0])
        threads.add(threading.current_thread().name)
        try:
            await anyio.sleep(0.02)  # (a limiter letting more in would show)
            return await create(self, *args, **kwargs)
        finally:
            in_flight[0] -= 1

    monkeypatch.setattr(AsyncKubeClient, "create", counted_create)
    rig = make_sink(kube, concurrency=3)
    rig.sink.client = KubeClient.for_url(kube.url, token=TOKEN)
    await rig.sync([service("big", *addresses(1500))])  # 15 slices, written in parallel
    assert rig.sink.writer is not None and isinstance(rig.sink.writer.api, AsyncKubeClient)
    assert peak[0] == 3
    assert threads == {threading.main_thread().name}
    assert len(kube.list("endpointslices", NS)) == 15
    await rig.sink.aclose()
