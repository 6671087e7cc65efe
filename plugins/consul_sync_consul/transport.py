"""What the Consul client sends its reads through, and the one transport built on httpx.

A transport takes a request target and headers and hands back an :class:`Answer` (status,
headers, body), with the body capped at ``max_body`` as it arrives; it raises
:class:`~.errors.Unavailable` when the agent cannot be reached or is too slow.  Two exist:

* :class:`~.h11_transport.H11Transport` -- every scheme (http, https, unix) in production;
* :class:`HTTPXTransport` -- an injected ``httpx`` transport (tests, plugins).
"""

from __future__ import annotations

import ssl
from typing import Any

import attrs
import httpx

from consul_sync import http

from .errors import BadAnswer, Unavailable

USER_AGENT = "consul-sync"


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


#: What a transport hands back: status, headers (lower-case names), body, HTTP version.
Answer = http.Response


def over_cap(path: str, size: int, cap: int) -> BadAnswer:
    return BadAnswer(f"GET {path}: answer of {size} bytes or more is over the cap of {cap} bytes")


class HTTPXTransport:
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

    async def get(self, target: str, headers: dict[str, str], read_timeout: float) -> Answer:
        timeout = httpx.Timeout(self.timeout, read=read_timeout, pool=None)
        path = target.partition("?")[0]
        try:
            async with self._client.stream(
                "GET", target, headers=headers, timeout=timeout, extensions=self._extensions
            ) as response:
                length = response.headers.get("Content-Length")
                if length is not None and length.isdigit() and int(length) > self.max_body:
                    raise over_cap(path, int(length), self.max_body)
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > self.max_body:
                        raise over_cap(path, size, self.max_body)
                    chunks.append(chunk)
                return Answer(
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


def _describe(exc: httpx.TransportError) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text
