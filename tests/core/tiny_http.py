"""A tiny HTTP/1.1 server for the HTTP stack's tests (``consul_sync.http``, the Kubernetes
async client): TCP, TLS (optionally asking for a client certificate) or a unix socket; every
request recorded; answers from a handler; connections kept unless told otherwise."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import h11


@dataclass
class Seen:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    connection: int
    peer_cert: dict[str, Any] | None = None


@dataclass
class Answer:
    status: int = 200
    body: bytes = b"{}"
    headers: list[tuple[str, str]] = field(default_factory=list)
    reason: str = ""
    close: bool = False  # close the connection after this answer
    drop: bool = False  # close the connection instead of answering


Handler = Callable[[Seen], Answer]


class TinyServer:
    """Serves in threads of its own; ``url``, ``seen``, ``connections`` (accepted so far)."""

    def __init__(
        self,
        handler: Handler | None = None,
        *,
        tls: ssl.SSLContext | None = None,
        unix_path: str | None = None,
    ) -> None:
        self.handler = handler or (lambda seen: Answer())
        self.tls = tls
        self.seen: list[Seen] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        outer = self

        class Handle(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer._serve(self.request)

        server: socketserver.BaseServer
        if unix_path:
            server = socketserver.ThreadingUnixStreamServer(unix_path, Handle)
            self.url = f"unix://{unix_path}"
        else:
            server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handle)
            self.port = server.server_address[1]
            self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        server.daemon_threads = True  # type: ignore[attr-defined]
        self.server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()

    def close_idle(self) -> None:
        """Close every connection now (as a server dropping idle keep-alives does)."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _serve(self, sock: socket.socket) -> None:
        with self._lock:
            self.connections += 1
            number = self.connections
        peer_cert = None
        if self.tls is not None:
            try:
                sock = self.tls.wrap_socket(sock, server_side=True)
            except (ssl.SSLError, OSError):
                return
            peer_cert = sock.getpeercert()  # type: ignore[attr-defined]
        with self._lock:
            self._sockets.append(sock)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request: h11.Request | None = None
                body = b""
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        data = sock.recv(65536)
                        conn.receive_data(data)
                        if not data and conn.their_state is h11.IDLE:
                            return
                        continue
                    if isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    elif isinstance(event, h11.ConnectionClosed):
                        return
                assert request is not None
                seen = Seen(
                    request.method.decode(),
                    request.target.decode(),
                    {k.decode().lower(): v.decode() for k, v in request.headers},
                    body,
                    number,
                    peer_cert,
                )
                with self._lock:
                    self.seen.append(seen)
                answer = self.handler(seen)
                if answer.drop:
                    return
                headers = [("Content-Length", str(len(answer.body))), *answer.headers]
                if answer.close:
                    headers.append(("Connection", "close"))
                out = conn.send(
                    h11.Response(
                        status_code=answer.status, headers=headers, reason=answer.reason.encode()
                    )
                )
                out += conn.send(h11.Data(data=answer.body)) + conn.send(h11.EndOfMessage())
                sock.sendall(out)
                if answer.close or conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (OSError, h11.ProtocolError):
            return
        finally:
            with contextlib.suppress(OSError):
                sock.close()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.close_idle()

    def __enter__(self) -> TinyServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
