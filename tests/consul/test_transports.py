"""Addresses other than plain http: a unix socket, https (CA, server name,
client certificates). Real sockets, forwarded to the double."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from anyio.streams.tls import TLSListener

from consul_sync import SourceError
from tests.consul.helpers import DEADLINE, make_source, running
from tests.consul.schemes import double_options_fixture, pki_fixture  # noqa: F401
from tests.fakes.consul_double import ConsulDouble

pytestmark = pytest.mark.anyio

TAG = ["kubernetes"]


@pytest.fixture
def consul() -> Iterator[ConsulDouble]:
    with ConsulDouble(seed=9) as double:
        double.register("web", service_id="web-1", address="10.1.0.11", port=8080, tags=TAG,
                        status="passing")  # fmt: skip
        yield double


async def _pipe(source: anyio.abc.ByteStream, target: anyio.abc.ByteStream) -> None:
    try:
        async for chunk in source:
            await target.send(chunk)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError, ssl.SSLError):
        pass
    finally:
        await target.aclose()


@asynccontextmanager
async def forwarding(
    listener: anyio.abc.Listener[anyio.abc.ByteStream], port: int
) -> AsyncIterator[None]:
    """Every connection accepted by ``listener`` goes to the double on ``port``."""

    async def handle(client: anyio.abc.ByteStream) -> None:
        try:
            upstream = await anyio.connect_tcp("127.0.0.1", port)
        except OSError:
            await client.aclose()
            return
        async with anyio.create_task_group() as tg:
            tg.start_soon(_pipe, client, upstream)
            tg.start_soon(_pipe, upstream, client)

    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        try:
            yield
        finally:
            tg.cancel_scope.cancel()


async def test_unix_socket(consul: ConsulDouble, tmp_path: Path) -> None:
    path = tmp_path / "consul.sock"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # asyncio's own server: anyio's unix listener streams can trip over a
        # reader callback firing on a cancelled future when torn down.
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", consul.port)

        async def pipe(source: asyncio.StreamReader, target: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    target.write(data)
                    await target.drain()
            except OSError:
                pass
            finally:
                target.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_unix_server(handle, str(path))
    try:
        source = make_source(f"unix://{path}")
        async with running(source) as seen:
            assert seen.last.complete and seen.names() == {"web"}
            consul.register("api", service_id="api-1", address="10.1.0.50", port=80, tags=TAG)
            await seen.until(lambda s: ("network", "api") in s.services, DEADLINE, "api")
    finally:
        server.close()


@asynccontextmanager
async def tls_front(consul: ConsulDouble, pki: Path, *, require_client: bool) -> AsyncIterator[int]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki / "server.pem", pki / "server.key")
    if require_client:
        context.load_verify_locations(pki / "ca.pem")
        context.verify_mode = ssl.CERT_REQUIRED
    tcp = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = tcp.extra(anyio.abc.SocketAttribute.local_port)
    listener = TLSListener(tcp, context, standard_compatible=False)
    async with forwarding(listener, consul.port):
        yield port


async def test_https_with_ca_and_server_name(consul: ConsulDouble, pki: Path) -> None:
    async with tls_front(consul, pki, require_client=False) as port:
        source = make_source(
            f"https://127.0.0.1:{port}", ca_file=str(pki / "ca.pem"), tls_server_name="consul.test"
        )
        async with running(source) as seen:
            assert seen.last.complete and seen.names() == {"web"}
            consul.register("api", service_id="api-1", address="10.1.0.50", port=80, tags=TAG)
            await seen.until(lambda s: ("network", "api") in s.services, DEADLINE, "api over https")


async def test_https_verifies_the_certificate(consul: ConsulDouble, pki: Path) -> None:
    async with tls_front(consul, pki, require_client=False) as port:
        address = f"https://127.0.0.1:{port}"
        unknown_ca = make_source(address, tls_server_name="consul.test")
        with pytest.raises(SourceError, match="catalog/services"):
            await unknown_ca.snapshot()
        await unknown_ca.aclose()
        wrong_name = make_source(address, ca_file=str(pki / "ca.pem"))  # 127.0.0.1 is not in it
        with pytest.raises(SourceError):
            await wrong_name.snapshot()
        await wrong_name.aclose()
        unverified = make_source(address, tls_verify=False)
        assert (await unverified.snapshot()).complete
        await unverified.aclose()


async def test_https_client_certificate(consul: ConsulDouble, pki: Path) -> None:
    async with tls_front(consul, pki, require_client=True) as port:
        options = {"ca_file": str(pki / "ca.pem"), "tls_server_name": "consul.test"}
        address = f"https://127.0.0.1:{port}"
        without = make_source(address, **options)
        with pytest.raises(SourceError):
            await without.snapshot()
        await without.aclose()
        with_cert = make_source(
            address,
            client_cert=str(pki / "client.pem"),
            client_key=str(pki / "client.key"),
            **options,
        )
        snapshot = await with_cert.snapshot()
        assert snapshot.complete and {k[1] for k in snapshot.services} == {"web"}
        await with_cert.aclose()


async def test_the_double_serves_each_scheme(double_options: dict[str, Any]) -> None:
    """What the fault tests rely on: the double answers over the scheme asked
    for, and only the client options it names reach it over https."""
    with ConsulDouble(seed=9, **double_options) as consul:
        consul.register("web", service_id="web-1", address="10.1.0.11", port=8080, tags=TAG)
        scheme = "https" if "tls" in double_options else "unix" if double_options else "http"
        assert consul.url.startswith(f"{scheme}://")
        source = make_source(consul)
        assert {k[1] for k in (await source.snapshot()).services} == {"web"}
        await source.aclose()
        if scheme == "https":
            untrusted = make_source(consul.url)  # no CA: the certificate is not trusted
            with pytest.raises(SourceError, match="CERTIFICATE_VERIFY_FAILED"):
                await untrusted.snapshot()
            await untrusted.aclose()
