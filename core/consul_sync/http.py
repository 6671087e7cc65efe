"""One well-kept HTTP/1.1 stack: h11 over anyio streams (TCP, TLS or a unix socket).

The Consul source reads through it and the Kubernetes sink writes through it, so both get the
same connection management and the same failure vocabulary:

* :class:`Connections` -- at most ``max_connections`` connections to one server at any time,
  idle ones included; a request waits for a free one rather than opening more.  A few idle
  connections are kept for the next requests (all of them while requests are waiting).
* :meth:`Connections.request` -- any method, a request body, the answer's status, reason,
  headers (lower-case names) and body, capped at ``max_body`` as it arrives.
* :class:`Unreachable` -- no (complete) answer: refused, reset, closed early, timed out;
  :class:`BadAnswer` -- bytes that are not HTTP/1.1, or a body over the cap (:class:`TooLarge`).

h11 (the HTTP/1.1 state machine httpcore itself runs on) does every byte of HTTP: request
framing, status line and headers, chunked, Content-Length or close-delimited bodies, and
whether the connection may be kept.  This module only manages connections.
"""

from __future__ import annotations

import contextlib
import select
import ssl
from collections.abc import Iterable

import anyio
import anyio.abc
import h11

__all__ = ["BadAnswer", "Connections", "HTTPError", "Response", "TooLarge", "Unreachable"]

_HEAD_MAX = 64 * 1024
_RECEIVE = 65536
_END = h11.EndOfMessage()


class HTTPError(Exception):
    """A request that got no usable answer."""


class Unreachable(HTTPError):
    """No (complete) answer: the server could not be reached, went away, or was too slow.

    ``timed_out`` says it was too slow; ``closed_early`` that it closed the connection before
    the answer was complete."""

    def __init__(self, detail: str, *, timed_out: bool = False, closed_early: bool = False) -> None:
        super().__init__(detail)
        self.detail = detail
        self.timed_out = timed_out
        self.closed_early = closed_early


class BadAnswer(HTTPError):
    """An answer that is not HTTP/1.1."""


class TooLarge(BadAnswer):
    """An answer whose body reached ``size`` bytes, over the cap of ``cap``."""

    def __init__(self, size: int, cap: int) -> None:
        super().__init__(f"answer of {size} bytes or more is over the cap of {cap} bytes")
        self.size = size
        self.cap = cap


class Response:
    """Status, reason phrase, headers (lower-case names), body and HTTP version."""

    __slots__ = ("body", "headers", "reason", "status", "version")

    def __init__(
        self, status: int, headers: dict[str, str], body: bytes, version: str, reason: str = ""
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.version = version
        self.reason = reason


class _Connection:
    """One socket (TCP, TLS or unix) and h11's state for it."""

    __slots__ = ("h11", "stream")

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=_HEAD_MAX)


class Connections:
    """HTTP/1.1 to one server (``host:port``, or the unix socket ``uds``), through at most
    ``max_connections`` connections.

    ``tls`` makes it https (the server's certificate checked against ``server_name``, else
    ``host``); ``headers`` go with every request (``Host`` is added); ``peer`` names the server
    in error texts ("the agent closed the connection ...")."""

    def __init__(
        self,
        host: str,
        port: int,
        uds: str | None = None,
        *,
        tls: ssl.SSLContext | None = None,
        server_name: str | None = None,
        max_connections: int,
        max_idle: int = 4,
        max_body: int | None = None,
        headers: Iterable[tuple[str, str]] = (),
        peer: str = "server",
    ) -> None:
        self.host, self.port, self.uds = host, port, uds
        self.tls = tls
        self.server_name = server_name or host
        self.max_body = max_body
        self.peer = peer
        #: Idle keep-alive connections kept for the next requests; the rest of a
        #: burst is closed when it ends.
        self.max_idle = min(max_idle, max_connections)
        self._slots = anyio.Semaphore(max_connections)
        self._idle: list[_Connection] = []
        default_port = 443 if tls is not None else 80
        if uds:
            authority = "localhost"
        elif ":" in host:
            authority = f"[{host}]:{port}"
        else:
            authority = f"{host}:{port}" if port != default_port else host
        self._head: list[tuple[bytes, bytes]] = [
            (b"Host", authority.encode("idna")),
            *[(k.encode(), v.encode()) for k, v in headers],
        ]
        self._closed = False

    async def _connect(self) -> _Connection:
        stream: anyio.abc.ByteStream
        if self.uds:
            stream = await anyio.connect_unix(self.uds)
        elif self.tls is not None:
            # Not "standard compatible": no close_notify exchange on close (a
            # server need not answer it); every body here is framed by HTTP.
            stream = await anyio.connect_tcp(
                self.host,
                self.port,
                ssl_context=self.tls,
                tls_hostname=self.server_name,
                tls_standard_compatible=False,
            )
        else:
            stream = await anyio.connect_tcp(self.host, self.port)
        return _Connection(stream)

    async def request(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes | None = None,
        *,
        time_limit: float,
        connect_limit: float | None = None,
    ) -> Response:
        """``method target`` with ``headers`` and ``body``; the whole exchange (connecting
        included) takes at most ``time_limit`` seconds, connecting at most ``connect_limit``.

        A kept connection the server had closed meanwhile is noticed before it is used; when
        the server closes one as the request goes out (no byte of an answer), an idempotent
        request (GET, PUT, DELETE...) is sent once more on a fresh one, a POST or PATCH is
        not (the server may have acted on it): that fails as :class:`Unreachable`."""
        head = [*self._head, *[(k.encode(), v.encode()) for k, v in headers]]
        if body is not None:
            head.append((b"Content-Length", str(len(body)).encode()))
        request = h11.Request(method=method.encode(), target=target.encode("ascii"), headers=head)
        # A free slot is taken without a trip through the event loop (the
        # exchange that follows has awaits enough); otherwise wait in line.
        try:
            self._slots.acquire_nowait()
        except anyio.WouldBlock:
            await self._slots.acquire()
        try:
            return await self._request(
                request, body, time_limit, connect_limit, retry=method in _IDEMPOTENT
            )
        finally:
            self._slots.release()

    async def _request(
        self,
        request: h11.Request,
        body: bytes | None,
        time_limit: float,
        connect_limit: float | None,
        retry: bool,
    ) -> Response:
        for attempt in (0, 1):
            conn = None
            while self._idle and conn is None:
                conn = self._idle.pop()
                if not _alive(conn):
                    await _discard(conn)
                    conn = None
            reused = conn is not None
            try:
                with anyio.fail_after(time_limit):
                    if conn is None:
                        if connect_limit is None:
                            conn = await self._connect()
                        else:
                            with anyio.fail_after(connect_limit):
                                conn = await self._connect()
                    answer, keep = await self._exchange(conn, request, body)
            except TimeoutError:
                await _discard(conn)
                raise Unreachable(f"timed out after {time_limit:g}s", timed_out=True) from None
            except BadAnswer:
                await _discard(conn)
                raise
            except Unreachable:
                await _discard(conn)
                raise
            except (OSError, anyio.BrokenResourceError, anyio.EndOfStream,
                    anyio.ClosedResourceError) as exc:  # fmt: skip
                await _discard(conn)
                if retry and reused and attempt == 0 and isinstance(exc, _STALE):
                    continue  # the server closed a kept connection: once more, fresh
                raise Unreachable(
                    self._describe(exc), closed_early=isinstance(exc, _EARLY)
                ) from None
            except BaseException:
                await _discard(conn)
                raise
            # Keep it for the next request when requests are waiting for a
            # slot (mid-burst: no close-then-reopen churn), or when few are idle.
            busy = self._slots.statistics().tasks_waiting > 0
            if keep and not self._closed and (busy or len(self._idle) < self.max_idle):
                self._idle.append(conn)
            else:
                await _discard(conn)
            return answer
        raise AssertionError("unreachable")  # pragma: no cover

    async def _exchange(
        self, conn: _Connection, request: h11.Request, body: bytes | None
    ) -> tuple[Response, bool]:
        state = conn.h11
        stream = conn.stream
        if body:
            await stream.send(
                state.send(request) + state.send(h11.Data(data=body)) + state.send(_END)
            )
        else:
            await stream.send(state.send(request) + state.send(_END))
        cap = self.max_body
        response: h11.Response | None = None
        chunks: list[bytes] = []
        size = 0
        received = 0
        eof = False
        while True:
            try:
                event = state.next_event()
            except h11.RemoteProtocolError as exc:
                if not eof:
                    raise BadAnswer(f"not an HTTP/1.1 answer ({exc})") from None
                if not received:
                    raise anyio.EndOfStream from None  # closed before answering (kept?)
                raise Unreachable(self._closed_early(), closed_early=True) from None
            if event is h11.NEED_DATA:
                try:
                    data = await stream.receive(_RECEIVE)
                except anyio.EndOfStream:
                    data = b""
                    eof = True
                received += len(data)
                state.receive_data(data)
            elif type(event) is h11.Data:
                size += len(event.data)
                if cap is not None and size > cap:
                    raise TooLarge(size, cap)
                chunks.append(event.data)
            elif type(event) is h11.Response:
                response = event  # the body is capped as it arrives (64 KiB at a time)
            elif type(event) is h11.EndOfMessage:
                break
            elif type(event) is h11.ConnectionClosed:  # pragma: no cover - h11 raises first
                raise anyio.EndOfStream
            # InformationalResponse (1xx): nothing to do
        assert response is not None
        keep = state.our_state is h11.DONE and state.their_state is h11.DONE
        if keep:
            state.start_next_cycle()
        answer = Response(
            response.status_code,
            {k.decode("latin-1"): v.decode("latin-1") for k, v in response.headers},
            chunks[0] if len(chunks) == 1 else b"".join(chunks),
            "HTTP/" + response.http_version.decode("ascii"),
            response.reason.decode("latin-1"),
        )
        return answer, keep

    def _closed_early(self) -> str:
        return f"the {self.peer} closed the connection before the answer was complete"

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, anyio.EndOfStream | anyio.IncompleteRead):
            return self._closed_early()
        if isinstance(exc, OSError) and exc.strerror:
            return exc.strerror
        return str(exc) or type(exc).__name__

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            await _discard(conn)


#: Methods sent again when a kept connection turns out closed (RFC 9110, 9.2.2).
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
#: Errors that mean a kept connection had been closed by the server.
_STALE = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.IncompleteRead, ConnectionError)
#: Errors that mean the server went away before its answer was complete.
_EARLY = (anyio.EndOfStream, anyio.IncompleteRead)


def _alive(conn: _Connection) -> bool:
    """Whether a kept connection still looks usable: an idle socket with something to
    read has been closed by the server (or is out of step); it is not sent a request."""
    sock = conn.stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
    if sock is None:
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable


async def _discard(conn: _Connection | None) -> None:
    if conn is None:
        return
    # Closing a broken connection may fail too; it is gone either way.
    with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
        await conn.stream.aclose()
