"""The sinks' hot-path writes without a worker thread: create, server-side apply, merge patch,
delete and get, made from the event loop over the core's HTTP stack (:mod:`consul_sync.http`).

:class:`AsyncKubeClient` is made from a :class:`.client.KubeClient` and speaks to the same API
server the same way: the same ``kubernetes.client.Configuration`` (host, CA, ``verify_ssl``,
client certificate, ``tls_server_name``, the bearer token and its refresh hook), the same
headers, the same answers (the parsed dict) and the same failures (:class:`.errors.KubeError`,
made by :func:`.errors.answer_error`; status 0 when there is no answer), the same timeouts, and
the same listeners told of every request.  Only the cost differs: no worker thread, no model
(de)serialisation, no urllib3 -- a third of the CPU per call.  For a configuration it cannot
honour (a proxy, say), :func:`writes_for` gives a :class:`ThreadedKubeClient` instead: the same
calls, each in a worker thread through the sync client (and says why in a debug log).
"""

from __future__ import annotations

import json
import logging
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, urlencode, urlsplit

import anyio
import anyio.to_thread

from consul_sync import http

from . import client as sync
from .errors import KubeError, answer_error, sending
from .resources import Resource

if TYPE_CHECKING:
    from .client import KubeClient

log = logging.getLogger("consul_sync.kubernetes")
_T = TypeVar("_T")

#: How often, at most, a configuration's token refresh hook is run (in a worker thread: an
#: exec plugin may run a program); the token it gave is used meanwhile.
TOKEN_CHECK_INTERVAL = 1.0


def _path(resource: Resource, namespace: str, name: str = "") -> str:
    """Every group consul-sync writes is served at v1 (the core group at ``/api/v1``)."""
    prefix = f"/apis/{resource.group}/v1" if resource.group else "/api/v1"
    path = f"{prefix}/namespaces/{quote(namespace, safe='')}/{resource.plural}"
    return f"{path}/{quote(name, safe='')}" if name else path


def unsupported(configuration: Any) -> str:
    """Why the async client cannot speak as the ``configuration`` asks ('': it can)."""
    parts = urlsplit(configuration.host or "")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"host {configuration.host!r} is not an http(s) URL"
    if configuration.proxy:
        return "a proxy is configured"
    if configuration.assert_hostname is not None:
        return "assert_hostname is set"
    if configuration.socket_options is not None:
        return "socket options are set"
    if configuration.retries not in (False, 0):
        return "the configuration asks urllib3 to retry requests"
    return ""


def ssl_context(configuration: Any) -> ssl.SSLContext:
    """TLS as urllib3 would do it from ``configuration``."""
    context = ssl.create_default_context(
        cafile=configuration.ssl_ca_cert or None, cadata=configuration.ca_cert_data or None
    )
    if not configuration.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file or None)
    return context


class AsyncKubeClient:
    """The few writes (and the get) of a sink's hot path, from the event loop."""

    def __init__(self, client: KubeClient) -> None:
        configuration = client.api_client.configuration
        self.client = client
        self.configuration = configuration
        parts = urlsplit(configuration.host)
        https = parts.scheme == "https"
        self._prefix = parts.path.rstrip("/")
        headers = dict(client.api_client.default_headers)
        headers.setdefault("Accept", "application/json")
        self._http = http.Connections(
            parts.hostname or "localhost",
            parts.port or (443 if https else 80),
            tls=ssl_context(configuration) if https else None,
            server_name=configuration.tls_server_name or None,
            max_connections=configuration.connection_pool_maxsize or 16,
            max_idle=configuration.connection_pool_maxsize or 16,
            headers=headers.items(),
            peer="API server",
        )
        self.token_check_interval = TOKEN_CHECK_INTERVAL
        self._token: str | None = None
        self._token_checked = -float("inf")
        self._token_lock = anyio.Lock()

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- plumbing -----------------------------------------------------------

    def _bearer(self) -> str | None:
        """The ``authorization`` header as the client's ``auth_settings`` gives it."""
        keys = self.configuration.api_key
        if "BearerToken" in keys or "authorization" in keys:
            token: str | None = self.configuration.get_api_key_with_prefix(
                "BearerToken", alias="authorization"
            )
            return token
        return None

    async def _authorization(self) -> str | None:
        if self.configuration.refresh_api_key_hook is None:
            return self._bearer()
        if time.monotonic() - self._token_checked < self.token_check_interval:
            return self._token
        async with self._token_lock:
            if time.monotonic() - self._token_checked >= self.token_check_interval:
                self._token = await anyio.to_thread.run_sync(self._bearer)
                self._token_checked = time.monotonic()
        return self._token

    async def _call(
        self,
        verb: str,
        method: str,
        resource: Resource,
        namespace: str,
        name: str,
        path: str,
        query: dict[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        target = self._prefix + path
        if query:
            target += "?" + urlencode(query)
        headers = []
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers.append(("Content-Type", content_type))
        token = await self._authorization()
        if token:
            headers.append(("authorization", token))
        where = {"verb": verb, "resource": resource, "namespace": namespace, "name": name}
        with sending():
            try:
                answer = await self._http.request(
                    method,
                    target,
                    headers,
                    data,
                    time_limit=sync.CONNECT_TIMEOUT + sync.REQUEST_TIMEOUT,
                    connect_limit=sync.CONNECT_TIMEOUT,
                )
            except http.HTTPError as exc:
                self.client._count(verb, resource, 0)
                raise KubeError(0, f"{type(exc).__name__}: {exc}", **where) from exc  # type: ignore[arg-type]
            self.client._count(verb, resource, answer.status)
        if not 200 <= answer.status <= 299:
            try:
                text: str | None = answer.body.decode("utf-8")
            except UnicodeDecodeError:
                text = None
            raise answer_error(
                answer.status,
                answer.reason,
                text,
                answer.headers.get("retry-after"),
                verb=verb,
                resource=resource,
                namespace=namespace,
                name=name,
            )
        result: dict[str, Any] = json.loads(answer.body) if answer.body else {}
        return result

    # --- the calls (as :class:`.client.KubeClient`'s) --------------------------

    async def get(self, resource: Resource, namespace: str, name: str) -> dict[str, Any]:
        return await self._call(
            "get", "GET", resource, namespace, name, _path(resource, namespace, name)
        )

    async def create(
        self, resource: Resource, body: dict[str, Any], *, field_manager: str | None = None
    ) -> dict[str, Any]:
        """POST: creates, or fails with 409 AlreadyExists (never merges)."""
        meta = body["metadata"]
        namespace = meta["namespace"]
        query = {"fieldManager": field_manager} if field_manager else None
        return await self._call(
            "create",
            "POST",
            resource,
            namespace,
            meta.get("name", ""),
            _path(resource, namespace),
            query,
            body,
        )

    async def apply(
        self, resource: Resource, body: dict[str, Any], *, field_manager: str, force: bool
    ) -> dict[str, Any]:
        """Server-side apply of ``body`` (creates the object if absent)."""
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        return await self._call(
            "patch",
            "PATCH",
            resource,
            namespace,
            name,
            _path(resource, namespace, name),
            {"fieldManager": field_manager, "force": "true" if force else "false"},
            body,
            sync.APPLY_PATCH,
        )

    async def merge_patch(
        self, resource: Resource, namespace: str, name: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        """A JSON merge patch (``metadata.resourceVersion`` in ``body`` makes it conditional)."""
        return await self._call(
            "patch",
            "PATCH",
            resource,
            namespace,
            name,
            _path(resource, namespace, name),
            None,
            body,
            sync.MERGE_PATCH,
        )

    async def delete(
        self, resource: Resource, namespace: str, name: str, *, uid: str | None = None
    ) -> None:
        """Delete, only if the object still has ``uid`` (when given)."""
        options: dict[str, Any] = {"propagationPolicy": "Background"}
        if uid:
            options["preconditions"] = {"uid": uid}
        await self._call(
            "delete",
            "DELETE",
            resource,
            namespace,
            name,
            _path(resource, namespace, name),
            None,
            options,
        )


class ThreadedKubeClient:
    """:class:`AsyncKubeClient`'s calls, each made in a worker thread through the sync client."""

    def __init__(self, client: KubeClient) -> None:
        self.client = client

    async def aclose(self) -> None:
        pass  # (the sync client is its owner's to close)

    @staticmethod
    async def _thread(func: Callable[[], _T]) -> _T:
        # abandon_on_cancel: a stop must not wait for an API that does not answer.
        return await anyio.to_thread.run_sync(func, abandon_on_cancel=True)

    async def get(self, resource: Resource, namespace: str, name: str) -> dict[str, Any]:
        return await self._thread(lambda: self.client.get(resource, namespace, name))

    async def create(
        self, resource: Resource, body: dict[str, Any], *, field_manager: str | None = None
    ) -> dict[str, Any]:
        return await self._thread(
            lambda: self.client.create(resource, body, field_manager=field_manager)
        )

    async def apply(
        self, resource: Resource, body: dict[str, Any], *, field_manager: str, force: bool
    ) -> dict[str, Any]:
        return await self._thread(
            lambda: self.client.apply(resource, body, field_manager=field_manager, force=force)
        )

    async def merge_patch(
        self, resource: Resource, namespace: str, name: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        return await self._thread(lambda: self.client.merge_patch(resource, namespace, name, body))

    async def delete(
        self, resource: Resource, namespace: str, name: str, *, uid: str | None = None
    ) -> None:
        await self._thread(lambda: self.client.delete(resource, namespace, name, uid=uid))


def writes_for(client: KubeClient) -> AsyncKubeClient | ThreadedKubeClient:
    """The way for a sink's hot-path calls: from the event loop when the async client can
    speak as ``client`` does, else in worker threads through ``client`` itself."""
    why = unsupported(client.api_client.configuration)
    if why:
        log.debug("Kubernetes writes through worker threads: %s", why)
        return ThreadedKubeClient(client)
    return AsyncKubeClient(client)
