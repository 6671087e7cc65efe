"""The probe and metrics server: /healthz, /readyz, /metrics, /version.

A deliberately small HTTP/1.1 server on anyio: each request is read with a
size cap and a timeout, answered, and the connection closed.  It only ever
serves these four paths, so a framework would add weight and nothing else.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
from anyio.abc import TaskStatus
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from . import status
from ._version import __version__

log = logging.getLogger("consul_sync.health")

MAX_REQUEST = 8192
READ_TIMEOUT = 5.0


def parse_listen_address(addr: str) -> tuple[str, int]:
    """``:8080`` (all interfaces), ``127.0.0.1:8080``, ``[::1]:8080``."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"METRICS_ADDR: expected host:port or :port, got {addr!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


class ProbeServer:
    def __init__(
        self,
        readiness: Callable[[], tuple[bool, str]],
        registry: CollectorRegistry,
        *,
        commit: str | None = None,
        status: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.readiness = readiness
        self.registry = registry
        self.commit = commit
        #: The status document (consul_sync.status.collect); None: no status page.
        self.status = status
        self.port: int | None = None

    def answer(self, method: str, path: str) -> tuple[int, str, bytes]:
        path, _, query = path.partition("?")
        if method not in ("GET", "HEAD"):
            return 405, "text/plain; charset=utf-8", b"method not allowed\n"
        if path == "/healthz":
            return 200, "text/plain; charset=utf-8", b"ok\n"
        if path == "/readyz":
            ready, why = self.readiness()
            return (200 if ready else 503), "text/plain; charset=utf-8", (why + "\n").encode()
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
        if path == "/version":
            body = json.dumps({"version": __version__, "commit": self.commit}).encode()
            return 200, "application/json", body
        if self.status is not None and path in ("/", "/status.json"):
            return self._status(path, query)
        return 404, "text/plain; charset=utf-8", b"not found\n"

    def _status(self, path: str, query: str) -> tuple[int, str, bytes]:
        params = status.parse_query(query)
        assert self.status is not None
        document = self.status()
        if path == "/status.json":
            return 200, "application/json", status.to_json(status.select(document, params))
        chosen = status.select(document, params, default_limit=status.DEFAULT_LIMIT)
        page = status.render_html(chosen, params)
        return 200, "text/html; charset=utf-8", page.encode()

    async def handle(self, stream: anyio.abc.ByteStream) -> None:
        async with stream:
            data = b""
            with anyio.move_on_after(READ_TIMEOUT):
                while b"\r\n\r\n" not in data and len(data) < MAX_REQUEST:
                    try:
                        chunk = await stream.receive(4096)
                    except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                        return
                    data += chunk
            line = data.split(b"\r\n", 1)[0].decode("latin-1")
            parts = line.split()
            if len(parts) != 3 or not parts[2].startswith("HTTP/"):
                status, ctype, body = 400, "text/plain; charset=utf-8", b"bad request\n"
                method = "GET"
            else:
                method = parts[0]
                status, ctype, body = self.answer(method, parts[1])
            reason = {
                200: "OK",
                400: "Bad Request",
                404: "Not Found",
                405: "Method Not Allowed",
                503: "Service Unavailable",
            }[status]
            head = (
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode()
            try:
                await stream.send(head + (b"" if method == "HEAD" else body))
            except (anyio.BrokenResourceError, OSError):
                return

    async def serve(
        self, addr: str, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        host, port = parse_listen_address(addr)
        listener = await anyio.create_tcp_listener(
            local_host=host, local_port=port, reuse_port=False
        )
        sockname = listener.extra(anyio.abc.SocketAttribute.local_address)
        self.port = int(sockname[1])
        paths = "/healthz /readyz /metrics /version" + (" / /status.json" if self.status else "")
        log.info("serving %s on %s:%d", paths, host, self.port)
        task_status.started(self.port)
        async with listener:
            await listener.serve(self.handle)
