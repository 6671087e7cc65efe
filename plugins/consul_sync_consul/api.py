"""A small Consul HTTP API client: reads, blocking reads, and nothing else.

* Addresses as Consul's own tools take them (``CONSUL_HTTP_ADDR``):
  ``host:port`` (http), ``http://...``, ``https://...``, ``unix:///path``.
* The ACL token goes in ``X-Consul-Token``, never in a URL; a token file is
  re-read whenever its modification time, size or inode changes.
* At most ``max_connections`` connections to the agent, ever: httpx's
  pool enforces it (a request waits for a free connection rather than
  opening one more).  Over https the client offers HTTP/2 when the ``h2``
  package is installed, so that many requests share one connection.
* Every failure is one of three exception types, so that callers keep their
  last good state and back off: :class:`Unavailable` (cannot connect,
  timeout, 5xx, 429), :class:`BadAnswer` (malformed or truncated JSON, a
  body over the size cap, an unexpected status) and :class:`ACLRejected`
  (403).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import ssl
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import quote, urlencode

import anyio
import anyio.abc
import attrs
import h11
import httpx

log = logging.getLogger("consul_sync.consul")


class ConsulError(Exception):
    """A read from Consul failed; the reader keeps what it knew."""


class Unavailable(ConsulError):
    """Consul could not be reached or answered 5xx / 429 / too slowly."""


class BadAnswer(ConsulError):
    """Consul's answer cannot be used (malformed, truncated, too large)."""


class Unsupported(BadAnswer):
    """404 or 405: the agent does not serve this endpoint (too old)."""


class ACLRejected(ConsulError):
    """403: the token is unknown to Consul (or lacks a right it needs)."""


def parse_address(address: str) -> tuple[str, str | None]:
    """``(base URL, unix socket path or None)`` for a Consul address."""
    text = address.strip()
    if not text:
        raise ValueError("is empty")
    if text.startswith("unix://"):
        path = text[len("unix://") :]
        if not path:
            raise ValueError(f"{address!r} names no socket path (unix:///path/to/consul.sock)")
        return "http://consul", path
    if "://" not in text:
        text = "http://" + text
    try:
        url = httpx.URL(text)
    except httpx.InvalidURL as exc:
        raise ValueError(f"{address!r} is not a valid address: {exc}") from None
    if url.scheme not in ("http", "https"):
        raise ValueError(f"{address!r}: scheme must be http, https or unix, not {url.scheme!r}")
    if not url.host:
        raise ValueError(f"{address!r} names no host")
    return str(url.copy_with(query=None, fragment=None)).rstrip("/"), None


def format_wait(seconds: float) -> str:
    """A ``wait`` parameter Consul accepts (Go duration, whole milliseconds)."""
    return f"{max(1, round(seconds * 1000))}ms"


class TokenSource:
    """The ACL token, from the configuration or a file re-read on change.

    ``describe()`` names where the token comes from, never the token.
    ``generation`` grows each time the token's value changes.
    """

    def __init__(
        self,
        token: str | None,
        token_file: str | None,
        *,
        add_secret: Callable[[str], None] = lambda _secret: None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._token = token or None
        self._file = token_file or None
        self._add_secret = add_secret
        self._stamp: tuple[float, int, int] | None = None
        self._from_file: str | None = None
        self.generation = 0
        self.file_error: str | None = None
        env = os.environ if environ is None else environ
        self._env_name = None
        if token:
            self._env_name = next(
                (n for n in ("CONSUL_TOKEN", "CONSUL_HTTP_TOKEN") if env.get(n) == token), None
            )
            add_secret(token)

    def describe(self) -> str:
        if self._file:
            return f"the token file {self._file}"
        if self._token:
            if self._env_name:
                return f"the token in {self._env_name}"
            return "the configured token (token)"
        return "no token (anonymous access)"

    def current(self) -> str | None:
        """The token to send now (a token file, when set, wins)."""
        if self._file:
            self._reread()
            if self._from_file:
                return self._from_file
        return self._token

    def _reread(self) -> None:
        assert self._file is not None
        try:
            stat = os.stat(self._file)
        except OSError as exc:
            self._set_file_error(f"cannot read the token file {self._file}: {exc.strerror}")
            return
        stamp = (stat.st_mtime, stat.st_size, stat.st_ino)
        if stamp == self._stamp:
            return
        try:
            with open(self._file, encoding="utf-8") as handle:
                value = handle.read().strip() or None
        except (OSError, UnicodeDecodeError) as exc:
            self._set_file_error(f"cannot read the token file {self._file}: {exc}")
            return
        self._stamp = stamp
        self.file_error = None
        if value != self._from_file:
            if value:
                self._add_secret(value)
            if self._from_file is not None or self.generation:
                log.info("the token file %s changed; using its new token", self._file)
            self._from_file = value
            self.generation += 1

    def _set_file_error(self, message: str) -> None:
        if message != self.file_error:
            log.error("%s; keeping the token read before", message)
        self.file_error = message


@attrs.frozen
class TLSSettings:
    ca_file: str | None = None
    ca_path: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    server_name: str | None = None
    verify: bool = True


def ssl_context(tls: TLSSettings) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=tls.ca_file, capath=tls.ca_path)
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if tls.client_cert:
        context.load_cert_chain(tls.client_cert, tls.client_key)
    return context


@attrs.frozen
class Reply:
    """A 200 answer: its decoded JSON body and ``X-Consul-Index``."""

    body: Any
    index: int | None
    http_version: str = "HTTP/1.1"
    headers: Mapping[str, str] = attrs.field(factory=dict, repr=False)


def _h2_available() -> bool:
    try:
        import h2  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        return False
    return True


class _Answer:
    """What a transport hands back: status, headers (lower-case names), body."""

    __slots__ = ("body", "headers", "status", "version")

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes, version: str) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.version = version


def _over_cap(path: str, size: int, cap: int) -> BadAnswer:
    return BadAnswer(f"GET {path}: answer of {size} bytes or more is over the cap of {cap} bytes")


class _HTTPXTransport:
    """https (with HTTP/2 where ``h2`` is installed), or an injected transport."""

    def __init__(
        self,
        base_url: str,
        *,
        transport: httpx.AsyncBaseTransport | None,
        uds: str | None,
        tls: TLSSettings,
        http2: bool,
        max_connections: int,
        max_body: int,
        timeout: float,
    ) -> None:
        https = base_url.startswith("https://")
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        if transport is None:
            verify: ssl.SSLContext | bool = ssl_context(tls) if https else True
            transport = httpx.AsyncHTTPTransport(
                verify=verify, http2=http2, limits=limits, uds=uds, retries=0
            )
        self._extensions: dict[str, Any] = {}
        if https and tls.server_name:
            self._extensions["sni_hostname"] = tls.server_name
        self.max_body = max_body
        self.timeout = timeout
        self._client = httpx.AsyncClient(
            base_url=base_url,
            transport=transport,
            timeout=httpx.Timeout(timeout, pool=None),
            headers={"Accept": "application/json", "User-Agent": USER_AGENT},
            follow_redirects=False,
        )

    async def get(self, target: str, headers: dict[str, str], read_timeout: float) -> _Answer:
        timeout = httpx.Timeout(self.timeout, read=read_timeout, pool=None)
        path = target.partition("?")[0]
        try:
            async with self._client.stream(
                "GET", target, headers=headers, timeout=timeout, extensions=self._extensions
            ) as response:
                length = response.headers.get("Content-Length")
                if length is not None and length.isdigit() and int(length) > self.max_body:
                    raise _over_cap(path, int(length), self.max_body)
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > self.max_body:
                        raise _over_cap(path, size, self.max_body)
                    chunks.append(chunk)
                return _Answer(
                    response.status_code,
                    {k.lower(): v for k, v in response.headers.items()},
                    b"".join(chunks),
                    response.http_version,
                )
        except httpx.TimeoutException as exc:
            raise Unavailable(f"GET {path}: timed out ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise Unavailable(f"GET {path}: {_describe(exc)}") from None

    async def aclose(self) -> None:
        await self._client.aclose()


class _H11Connection:
    """One socket (TCP, TLS or unix) and h11's state for it."""

    __slots__ = ("h11", "stream")

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=_HEAD_MAX)


_HEAD_MAX = 64 * 1024
_RECEIVE = 65536


class _H11Transport:
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

    async def get(self, target: str, headers: dict[str, str], read_timeout: float) -> _Answer:
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

    async def _get(self, request: h11.Request, path: str, read_timeout: float) -> _Answer:
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
    ) -> tuple[_Answer, bool]:
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
                    raise _over_cap(path, size, cap)
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
        answer = _Answer(
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


USER_AGENT = "consul-sync"


class ConsulAPI:
    """Reads from one Consul agent, through at most ``max_connections``."""

    def __init__(
        self,
        address: str,
        *,
        tokens: TokenSource,
        tls: TLSSettings = TLSSettings(),
        query: Mapping[str, str] | None = None,
        max_connections: int = 64,
        max_body: int = 64 * 1024 * 1024,
        timeout: float = 10.0,
        http2: bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url, uds = parse_address(address)
        self.tokens = tokens
        self.query = dict(query or {})
        self.timeout = timeout
        self.max_connections = max_connections
        https = self.base_url.startswith("https://")
        self.http2 = bool(http2 and https and _h2_available())
        self._transport: _HTTPXTransport | _H11Transport
        #: Path prefix of the address (an agent behind a proxy at /consul).
        self._prefix = ""
        if transport is not None:
            # An injected httpx transport (tests, plugins): through httpx.
            self._transport = _HTTPXTransport(
                self.base_url,
                transport=transport,
                uds=uds,
                tls=tls,
                http2=self.http2,
                max_connections=max_connections,
                max_body=max_body,
                timeout=timeout,
            )
        else:
            # One stack for every scheme (http, https, unix): h11 over anyio
            # streams, HTTP/1.1 (docs/consul-source.md, "The HTTP client").
            self.http2 = False
            url = httpx.URL(self.base_url)
            self._prefix = url.raw_path.decode().rstrip("/")
            self._transport = _H11Transport(
                url.host or "localhost",
                url.port or (443 if https else 80),
                uds,
                tls=ssl_context(tls) if https else None,
                server_name=tls.server_name,
                max_connections=max_connections,
                max_body=max_body,
            )

    async def get(
        self,
        path: str,
        params: Mapping[str, str] | None = None,
        *,
        index: int = 0,
        wait: float | None = None,
    ) -> Reply:
        """GET ``path``; a blocking read when ``index`` > 0 and ``wait`` is set.

        An index of 0 is never sent: Consul would answer at once anyway, and
        the caller's loop would spin.
        """
        query = {**self.query, **(params or {})}
        read_timeout = self.timeout
        if index > 0 and wait:
            query["index"] = str(index)
            query["wait"] = format_wait(wait)
            # Consul adds up to wait/16 of jitter before answering.
            read_timeout = wait + wait / 16 + self.timeout
        headers = {}
        token = self.tokens.current()
        if token:
            headers["X-Consul-Token"] = token
        target = self._prefix + path
        if query:
            target += "?" + urlencode(query, quote_via=quote)
        answer = await self._transport.get(target, headers, read_timeout)
        if answer.status != 200:
            raise _status_error(path, answer.status, answer.body)
        try:
            data = _decode(answer.body)
        except ValueError as exc:
            raise BadAnswer(
                f"GET {path}: malformed or truncated JSON ({len(answer.body)} bytes): {exc}"
            ) from None
        raw_index = answer.headers.get("x-consul-index")
        parsed_index: int | None = None
        if raw_index is not None:
            try:
                parsed_index = int(raw_index)
            except ValueError:
                raise BadAnswer(
                    f"GET {path}: X-Consul-Index {raw_index!r} is not a number"
                ) from None
        return Reply(data, parsed_index, answer.version, answer.headers)

    async def aclose(self) -> None:
        await self._transport.aclose()


#: Answers at least this large are decoded with the cyclic GC paused.
_LARGE_BODY = 1024 * 1024


def _decode(body: bytes) -> Any:
    """JSON, decoded without the cyclic garbage collector for large answers.

    Decoding a 12 MB answer (``catalog/node-services`` at 10,000 services)
    allocates some 300,000 containers, which would set off several full
    collections over everything the source holds: about 0.2 s at 10,000
    services, and most of the tail.  A decoded document holds no cycles,
    so there is nothing for a collection to find meanwhile.
    """
    if len(body) < _LARGE_BODY:
        return json.loads(body)
    with gc_paused():
        return json.loads(body)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off for a synchronous burst of
    allocations that makes no cycles (no ``await`` inside)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _describe(exc: httpx.TransportError) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text


def _status_error(path: str, status: int, body: bytes) -> ConsulError:
    text = body[:300].decode("utf-8", "replace").strip()
    if status == 403:
        return ACLRejected(text or "403 Forbidden")
    if status == 429:
        return Unavailable(
            f"GET {path}: 429 {text or 'Too Many Requests'} (the agent's "
            "limits.http_max_conns_per_client is lower than max_connections)"
        )
    if status >= 500:
        return Unavailable(f"GET {path}: HTTP {status}: {text}")
    if status in (404, 405):
        return Unsupported(f"GET {path}: HTTP {status}: {text}")
    return BadAnswer(f"GET {path}: HTTP {status}: {text}")
