"""HTTP/1.1 through h11 over anyio streams (TCP, TLS or a unix socket): the transport
every scheme uses in production (docs/consul-source.md, "The HTTP client")."""

from __future__ import annotations

import contextlib
import ssl

import anyio
import anyio.abc
import h11

from .errors import BadAnswer, Unavailable
from .transport import USER_AGENT, Answer, over_cap


class _H11Connection:
    """One socket (TCP, TLS or unix) and h11's state for it."""

    __slots__ = ("h11", "stream")

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=_HEAD_MAX)


_HEAD_MAX = 64 * 1024
_RECEIVE = 65536


class H11Transport:
    """HTTP/1.1 through h11 over anyio streams: TCP, TLS or a unix socket.

    h11 (the HTTP/1.1 state machine httpcore itself runs on) does every
    byte of HTTP: request framing, status line and headers, chunked,
    Content-Length or close-delimited bodies, and whether the connection
    may be kept.  This class only manages connections, as cheaply as the
    reads need (docs/consul-source.md, "The HTTP client"): at most
    ``max_connections`` exist at any time, idle ones included; a request
    waits for a free one rather than opening more.
    """

    def __init__(
        self,
        host: str,
        port: int,
        uds: str | None,
        *,
        tls: ssl.SSLContext | None,
        server_name: str | None,
        max_connections: int,
        max_body: int,
    ) -> None:
        self.host, self.port, self.uds = host, port, uds
        self.tls = tls
        self.server_name = server_name or host
        self.max_body = max_body
        #: Idle keep-alive connections kept for the next reads; the rest of a
        #: burst (an initial read, a sweep) is closed when it ends.
        self.max_idle = min(4, max_connections)
        self._slots = anyio.Semaphore(max_connections)
        self._idle: list[_H11Connection] = []
        default_port = 443 if tls is not None else 80
        if uds:
            authority = "localhost"
        elif ":" in host:
            authority = f"[{host}]:{port}"
        else:
            authority = f"{host}:{port}" if port != default_port else host
        self._head: list[tuple[bytes, bytes]] = [
            (b"Host", authority.encode("idna")),
            (b"User-Agent", USER_AGENT.encode()),
            (b"Accept", b"application/json"),
        ]
        self._closed = False

    async def _connect(self) -> _H11Connection:
        stream: anyio.abc.ByteStream
        if self.uds:
            stream = await anyio.connect_unix(self.uds)
        elif self.tls is not None:
            # Not "standard compatible": no close_notify exchange on close (an
            # agent need not answer it); every body here is framed by HTTP.
            stream = await anyio.connect_tcp(
                self.host,
                self.port,
                ssl_context=self.tls,
                tls_hostname=self.server_name,
                tls_standard_compatible=False,
            )
        else:
            stream = await anyio.connect_tcp(self.host, self.port)
        return _H11Connection(stream)

    async def get(self, target: str, headers: dict[str, str], read_timeout: float) -> Answer:
        path = target.partition("?")[0]
        request = h11.Request(
            method=b"GET",
            target=target.encode("ascii"),
            headers=[*self._head, *[(k.encode(), v.encode()) for k, v in headers.items()]],
        )
        # A free slot is taken without a trip through the event loop (the
        # exchange that follows has awaits enough); otherwise wait in line.
        try:
            self._slots.acquire_nowait()
        except anyio.WouldBlock:
            await self._slots.acquire()
        try:
            return await self._get(request, path, read_timeout)
        finally:
            self._slots.release()

    async def _get(self, request: h11.Request, path: str, read_timeout: float) -> Answer:
        for attempt in (0, 1):
            reused = bool(self._idle)
            conn = self._idle.pop() if reused else None
            try:
                with anyio.fail_after(read_timeout):
                    if conn is None:
                        conn = await self._connect()
                    answer, keep = await self._exchange(conn, request, path)
            except TimeoutError:
                await _discard(conn)
                raise Unavailable(f"GET {path}: timed out after {read_timeout:g}s") from None
            except BadAnswer:
                await _discard(conn)
                raise
            except (OSError, anyio.BrokenResourceError, anyio.EndOfStream,
                    anyio.ClosedResourceError) as exc:  # fmt: skip
                await _discard(conn)
                if reused and attempt == 0 and isinstance(exc, _STALE):
                    continue  # the agent closed an idle connection: once more, fresh
                raise Unavailable(f"GET {path}: {_describe_os(exc)}") from None
            except BaseException:
                await _discard(conn)
                raise
            # Keep it for the next read when requests are waiting for a
            # slot (mid-burst: no close-then-reopen churn, which the agent
            # would briefly count twice), or when few are idle.
            busy = self._slots.statistics().tasks_waiting > 0
            if keep and not self._closed and (busy or len(self._idle) < self.max_idle):
                self._idle.append(conn)
            else:
                await _discard(conn)
            return answer
        raise AssertionError("unreachable")  # pragma: no cover

    async def _exchange(
        self, conn: _H11Connection, request: h11.Request, path: str
    ) -> tuple[Answer, bool]:
        state = conn.h11
        stream = conn.stream
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
                    raise BadAnswer(f"GET {path}: not an HTTP/1.1 answer ({exc})") from None
                if not received:
                    raise anyio.EndOfStream from None  # closed before answering (idle?)
                raise Unavailable(
                    f"GET {path}: the agent closed the connection before the answer was complete"
                ) from None
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
                if size > cap:
                    raise over_cap(path, size, cap)
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
        answer = Answer(
            response.status_code,
            {k.decode("latin-1"): v.decode("latin-1") for k, v in response.headers},
            chunks[0] if len(chunks) == 1 else b"".join(chunks),
            "HTTP/" + response.http_version.decode("ascii"),
        )
        return answer, keep

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            await _discard(conn)


_END = h11.EndOfMessage()


#: Errors that mean an idle keep-alive connection had been closed by the agent.
_STALE = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.IncompleteRead, ConnectionError)


async def _discard(conn: _H11Connection | None) -> None:
    if conn is None:
        return
    # Closing a broken connection may fail too; it is gone either way.
    with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
        await conn.stream.aclose()


def _describe_os(exc: BaseException) -> str:
    if isinstance(exc, anyio.EndOfStream | anyio.IncompleteRead):
        return "the agent closed the connection before the answer was complete"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
