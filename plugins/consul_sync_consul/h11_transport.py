"""The Consul client's reads through the core's HTTP stack (:mod:`consul_sync.http`: h11 over
anyio streams, TCP, TLS or a unix socket), the transport every scheme uses in production
(docs/consul-source.md, "The HTTP client").  This module only says the stack's failures in the
source's words: :class:`~.errors.Unavailable` and :class:`~.errors.BadAnswer`, each naming the
path read."""

from __future__ import annotations

import ssl

from consul_sync import http

from .errors import BadAnswer, Unavailable
from .transport import USER_AGENT, Answer, over_cap


class H11Transport:
    """GETs from one agent through at most ``max_connections`` connections, idle ones
    included; a request waits for a free one rather than opening more, and a few idle
    ones are kept for the next reads (docs/consul-source.md, "The HTTP client")."""

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
        self.max_body = max_body
        self._http = http.Connections(
            host,
            port,
            uds,
            tls=tls,
            server_name=server_name,
            max_connections=max_connections,
            max_idle=4,
            max_body=max_body,
            headers=[("User-Agent", USER_AGENT), ("Accept", "application/json")],
            peer="agent",
        )

    async def get(self, target: str, headers: dict[str, str], read_timeout: float) -> Answer:
        path = target.partition("?")[0]
        try:
            return await self._http.request("GET", target, headers.items(), time_limit=read_timeout)
        except http.TooLarge as exc:
            raise over_cap(path, exc.size, exc.cap) from None
        except http.BadAnswer as exc:
            raise BadAnswer(f"GET {path}: {exc}") from None
        except http.Unreachable as exc:
            raise Unavailable(f"GET {path}: {exc.detail}") from None

    async def aclose(self) -> None:
        await self._http.aclose()
