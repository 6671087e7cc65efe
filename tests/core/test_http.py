"""The core's HTTP stack (consul_sync.http): methods, bodies, headers, kept connections, the
connection cap, failures, TLS (server name, client certificate) and unix sockets."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from pathlib import Path

import anyio
import pytest

from consul_sync import http
from tests.consul.schemes import make_pki

from .tiny_http import Answer, Seen, TinyServer

pytestmark = pytest.mark.anyio

SERVER_NAME = "consul.test"  # (the name make_pki's server certificate is for)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


def connections(server: TinyServer, **kwargs: object) -> http.Connections:
    kwargs.setdefault("max_connections", 4)
    return http.Connections("127.0.0.1", server.port, **kwargs)  # type: ignore[arg-type]


async def test_any_method_with_a_body_and_headers_both_ways() -> None:
    def answer(seen: Seen) -> Answer:
        return Answer(429, b"slow down", [("Retry-After", "3")], reason="Too Many Requests")

    with TinyServer(answer) as server:
        client = connections(server, headers=[("User-Agent", "test/1")])
        response = await client.request(
            "PATCH",
            "/things/a?force=true",
            [("Content-Type", "application/apply-patch+yaml")],
            b'{"a": 1}',
            time_limit=5,
        )
        await client.aclose()
    assert (response.status, response.reason, response.body) == (
        429,
        "Too Many Requests",
        b"slow down",
    )
    assert response.headers["retry-after"] == "3"
    assert response.version == "HTTP/1.1"
    [seen] = server.seen
    assert (seen.method, seen.target, seen.body) == ("PATCH", "/things/a?force=true", b'{"a": 1}')
    assert seen.headers["content-type"] == "application/apply-patch+yaml"
    assert seen.headers["content-length"] == "8"
    assert seen.headers["user-agent"] == "test/1"
    assert seen.headers["host"] == f"127.0.0.1:{server.port}"


async def test_every_method_and_no_body() -> None:
    with TinyServer(lambda seen: Answer(body=seen.method.encode())) as server:
        client = connections(server)
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            response = await client.request(method, "/x", time_limit=5)
            assert response.body == method.encode()
        await client.aclose()
    assert [s.body for s in server.seen] == [b""] * 5
    assert "content-length" not in server.seen[0].headers  # a GET without a body
    assert server.connections == 1  # one kept connection for all five


async def test_at_most_max_connections_and_idle_ones_kept() -> None:
    gate = threading.Event()

    def answer(seen: Seen) -> Answer:
        gate.wait(5)
        return Answer()

    with TinyServer(answer) as server:
        client = connections(server, max_connections=3, max_idle=3)
        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(lambda: client.request("GET", "/", time_limit=10))
            await anyio.sleep(0.3)
            assert server.connections == 3  # the other seven wait for a free one
            gate.set()
        await client.request("GET", "/", time_limit=5)
        await client.aclose()
    assert server.connections == 3 and len(server.seen) == 11


async def test_a_kept_connection_the_server_closed_is_replaced() -> None:
    with TinyServer() as server:
        client = connections(server)
        await client.request("POST", "/", body=b"1", time_limit=5)
        server.close_idle()
        await anyio.sleep(0.05)
        response = await client.request("POST", "/", body=b"2", time_limit=5)
        await client.aclose()
    assert response.status == 200
    assert [s.body for s in server.seen] == [b"1", b"2"]  # each sent once
    assert server.connections == 2


async def test_a_kept_connection_closed_as_the_request_goes_out() -> None:
    """Sent once more on a fresh connection when idempotent; a POST may have been acted on."""

    def answer(seen: Seen) -> Answer:
        # the second request on the first connection: closed unanswered
        first = [s for s in server.seen if s.connection == 1]
        return Answer(drop=seen.connection == 1 and len(first) == 2)

    for method, outcome in (("GET", 200), ("DELETE", 200), ("POST", None)):
        with TinyServer(answer) as server:
            client = connections(server)
            await client.request(method, "/", time_limit=5)
            if outcome is None:
                with pytest.raises(http.Unreachable, match="closed the connection"):
                    await client.request(method, "/", time_limit=5)
            else:
                assert (await client.request(method, "/", time_limit=5)).status == outcome
            await client.aclose()
        assert len(server.seen) == (2 if outcome is None else 3), method


async def test_no_answer_is_unreachable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = http.Connections("127.0.0.1", port, max_connections=1)
    with pytest.raises(http.Unreachable) as refused:
        await client.request("GET", "/", time_limit=5)
    assert not refused.value.timed_out

    with TinyServer(lambda seen: (time.sleep(1.0), Answer())[1]) as server:
        client = connections(server)
        with pytest.raises(http.Unreachable, match=r"timed out after 0\.2s") as slow:
            await client.request("GET", "/", time_limit=0.2)
        assert slow.value.timed_out


async def test_a_body_over_the_cap_and_bytes_that_are_not_http() -> None:
    with TinyServer(lambda seen: Answer(body=b"x" * 5000)) as server:
        client = connections(server, max_body=1000)
        with pytest.raises(http.TooLarge) as large:
            await client.request("GET", "/", time_limit=5)
        assert large.value.cap == 1000
        await client.aclose()

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def garbage() -> None:
            conn, _ = listener.accept()
            conn.recv(65536)
            conn.sendall(b"SSH-2.0-OpenSSH\r\n\r\n")
            conn.close()

        threading.Thread(target=garbage, daemon=True).start()
        client = http.Connections("127.0.0.1", listener.getsockname()[1], max_connections=1)
        with pytest.raises(http.BadAnswer, match=r"not an HTTP/1\.1 answer"):
            await client.request("GET", "/", time_limit=5)


async def test_tls_with_a_server_name_and_a_client_certificate(pki: Path) -> None:
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.pem"))
    server_tls.load_cert_chain(pki / "server.pem", pki / "server.key")
    server_tls.verify_mode = ssl.CERT_REQUIRED
    client_tls = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    client_tls.load_cert_chain(pki / "client.pem", pki / "client.key")
    with TinyServer(tls=server_tls) as server:
        client = connections(server, tls=client_tls, server_name=SERVER_NAME)
        response = await client.request("POST", "/secure", body=b"{}", time_limit=5)
        await client.aclose()
        assert response.status == 200
        [seen] = server.seen
        assert seen.peer_cert is not None
        assert dict(x[0] for x in seen.peer_cert["subject"])["commonName"] == "client"

        # the certificate is for consul.test, not 127.0.0.1: without the name, refused
        client = connections(server, tls=ssl.create_default_context(cafile=str(pki / "ca.pem")))
        with pytest.raises(http.Unreachable):
            await client.request("GET", "/", time_limit=5)


async def test_a_unix_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    with TinyServer(lambda seen: Answer(body=seen.headers["host"].encode()), unix_path=path):
        client = http.Connections("", 0, path, max_connections=1)
        response = await client.request("GET", "/", time_limit=5)
        await client.aclose()
    assert response.body == b"localhost"
