"""A small Consul HTTP API client: reads, blocking reads, and nothing else.

* Addresses as Consul's own tools take them (``CONSUL_HTTP_ADDR``):
  ``host:port`` (http), ``http://...``, ``https://...``, ``unix:///path``.
* The ACL token goes in ``X-Consul-Token``, never in a URL; where it comes
  from (a file re-read on change) is :mod:`.tokens`.
* At most ``max_connections`` connections to the agent, ever: the transport
  enforces it (a request waits for a free connection rather than opening one
  more).  The bytes go through :mod:`.h11_transport` (h11 over anyio, every
  scheme), or through :mod:`.transport`'s httpx one when a transport is
  injected (which offers HTTP/2 over https when ``h2`` is installed).
* Every failure is one of three exception types (:mod:`.errors`), so that
  callers keep their last good state and back off: :class:`Unavailable`
  (cannot connect, timeout, 5xx, 429), :class:`BadAnswer` (malformed or
  truncated JSON, a body over the size cap, an unexpected status) and
  :class:`ACLRejected` (403).
"""

from __future__ import annotations

import contextlib
import gc
import json
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote, urlencode

import attrs
import httpx

from .errors import ACLRejected, BadAnswer, ConsulError, Unavailable, Unsupported
from .h11_transport import H11Transport
from .tokens import TokenSource
from .transport import HTTPXTransport, TLSSettings, ssl_context

__all__ = [
    "CATALOG",
    "HEALTH_STATE",
    "NODES",
    "NODE_SERVICES",
    "ACLRejected",
    "BadAnswer",
    "ConsulAPI",
    "ConsulError",
    "Reply",
    "TLSSettings",
    "TokenSource",
    "Unavailable",
    "Unsupported",
    "format_wait",
    "gc_paused",
    "parse_address",
    "service_path",
]


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


#: The endpoints the ``consul`` source reads.
CATALOG = "/v1/catalog/services"
HEALTH_STATE = "/v1/health/state/any"
NODES = "/v1/catalog/nodes"
NODE_SERVICES = "/v1/catalog/node-services/"


def service_path(name: str) -> str:
    """``/v1/health/service/NAME``, for any name Consul accepts."""
    return "/v1/health/service/" + quote(name, safe="")


#: No CA, no client certificate: the system's trust store (https only).
_PLAIN = TLSSettings()


class ConsulAPI:
    """Reads from one Consul agent, through at most ``max_connections``."""

    def __init__(
        self,
        address: str,
        *,
        tokens: TokenSource,
        tls: TLSSettings = _PLAIN,
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
        self._transport: HTTPXTransport | H11Transport
        #: Path prefix of the address (an agent behind a proxy at /consul).
        self._prefix = ""
        if transport is not None:
            # An injected httpx transport (tests, plugins): through httpx.
            self._transport = HTTPXTransport(
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
            self._transport = H11Transport(
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
        raw: bool = False,
    ) -> Reply:
        """GET ``path``; a blocking read when ``index`` > 0 and ``wait`` is set.
        ``raw``: the body is handed over as bytes, for the caller to decode.

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
        data = answer.body if raw else decode(path, answer.body)
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


def decode(path: str, body: bytes) -> Any:
    """The JSON of an answer to ``GET path``; :class:`BadAnswer` when it is not JSON.

    Large answers are decoded without the cyclic garbage collector: the
    membership read (every tagged check, 9.5 MB at 10,000 services) allocates
    some 300,000 containers, which would set off several full collections
    over everything the source holds.  A decoded document holds no cycles,
    so there is nothing for a collection to find meanwhile.
    """
    try:
        if len(body) < _LARGE_BODY:
            return json.loads(body)
        with gc_paused():
            return json.loads(body)
    except ValueError as exc:
        raise BadAnswer(
            f"GET {path}: malformed or truncated JSON ({len(body)} bytes): {exc}"
        ) from None


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
