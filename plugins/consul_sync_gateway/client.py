"""The gateway plugin's small Kubernetes API wrapper (the only module here
that imports the official ``kubernetes`` client).

Modelled on the kubernetes plugin's client (plugins do not import each
other): plain dicts in and out, one exception type :class:`KubeError` for
every failure, listeners told of every request, every method blocking (the
sink calls them from worker threads).  Routes go through
``CustomObjectsApi``; Services are only read (the backends routes point
at); Events are created.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import kubernetes.client as k8s
import kubernetes.config as k8s_config
import urllib3
from kubernetes.client.exceptions import ApiException
from kubernetes.config import incluster_config

APPLY_PATCH = "application/apply-patch+yaml"
CONNECT_TIMEOUT = 10.0
REQUEST_TIMEOUT = 30.0
GROUP = "gateway.networking.k8s.io"
VERSION = "v1"


class Resource(enum.Enum):
    """The kinds the gateway sink touches: (API group, plural resource)."""

    HTTPROUTES = (GROUP, "httproutes")
    GRPCROUTES = (GROUP, "grpcroutes")
    SERVICES = ("", "services")
    EVENTS = ("", "events")

    @property
    def group(self) -> str:
        return self.value[0]

    @property
    def plural(self) -> str:
        return self.value[1]

    @property
    def qualified(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


class KubeError(Exception):
    """A failed API request (``status`` 0: no answer)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        reason: str = "",
        causes: list[dict[str, Any]] | None = None,
        verb: str = "",
        resource: Resource | None = None,
        namespace: str = "",
        name: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason
        self.causes = causes or []
        self.verb = verb
        self.resource = resource
        self.namespace = namespace
        self.name = name
        self.retry_after = retry_after

    def __str__(self) -> str:
        code = f"{self.status} {self.reason}".strip() if self.status else "no answer"
        return f"{self.message} ({code})"


def _error(
    exc: BaseException, verb: str, resource: Resource, namespace: str, name: str
) -> KubeError:
    where: dict[str, Any] = {
        "verb": verb,
        "resource": resource,
        "namespace": namespace,
        "name": name,
    }
    if isinstance(exc, ApiException):
        body: dict[str, Any] = {}
        with contextlib.suppress(ValueError):
            parsed = json.loads(exc.body or "{}")
            if isinstance(parsed, dict):
                body = parsed
        retry_after = None
        with contextlib.suppress(TypeError, ValueError):
            retry_after = float(str((exc.headers or {}).get("Retry-After")))
        return KubeError(
            int(exc.status or 0),
            str(body.get("message") or exc.body or exc.reason or "error").strip(),
            reason=str(body.get("reason") or exc.reason or ""),
            causes=list((body.get("details") or {}).get("causes") or []),
            retry_after=retry_after,
            **where,
        )
    return KubeError(0, f"{type(exc).__name__}: {exc}", **where)


class WatchStream:
    """One watch request: iterate for its events until the server ends it;
    :meth:`close` from any thread stops the iteration."""

    def __init__(self, response: Any, describe: Callable[[BaseException], KubeError]) -> None:
        self._response = response
        self._describe = describe
        self._closed = False

    def __iter__(self) -> Iterator[dict[str, Any]]:
        buffer = b""
        try:
            for chunk in self._response.stream(None, decode_content=True):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
            if buffer.strip():
                yield json.loads(buffer)
        except Exception as exc:
            if self._closed:
                return
            raise self._describe(exc) from exc
        finally:
            self.close()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(Exception):
            self._response.shutdown()
        with contextlib.suppress(Exception):
            self._response.release_conn()


class GatewayClient:
    """Synchronous access to the few API calls the gateway sink makes."""

    def __init__(self, api_client: k8s.ApiClient, *, description: str = "") -> None:
        self.api_client = api_client
        self.description = description or api_client.configuration.host
        self.core = k8s.CoreV1Api(api_client)
        self.custom = k8s.CustomObjectsApi(api_client)
        self.listeners: list[Callable[[str, Resource, int], None]] = []

    @classmethod
    def from_environment(
        cls, *, kubeconfig: str = "", context: str = "", pool_size: int = 8
    ) -> GatewayClient:
        configuration = k8s.Configuration()
        in_cluster = bool(os.environ.get(incluster_config.SERVICE_HOST_ENV_NAME)) and (
            os.path.exists(incluster_config.SERVICE_TOKEN_FILENAME)
        )
        if not kubeconfig and in_cluster:
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            description = "in-cluster service account"
        else:
            kubeconfig = kubeconfig or os.environ.get("KUBECONFIG", "")
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig or None,
                context=context or None,
                client_configuration=configuration,
            )
            description = f"kubeconfig {kubeconfig or '~/.kube/config'}"
        configuration.connection_pool_maxsize = pool_size
        return cls(k8s.ApiClient(configuration), description=description)

    @classmethod
    def for_url(cls, url: str, *, token: str | None = None, pool_size: int = 8) -> GatewayClient:
        configuration = k8s.Configuration(host=url)
        if token:
            configuration.api_key = {"authorization": token}
            configuration.api_key_prefix = {"authorization": "Bearer"}
        configuration.connection_pool_maxsize = pool_size
        return cls(k8s.ApiClient(configuration), description=url)

    def close(self) -> None:
        self.api_client.close()  # type: ignore[no-untyped-call]

    # --- plumbing -----------------------------------------------------------

    def _call(
        self,
        verb: str,
        resource: Resource,
        namespace: str,
        name: str,
        func: Callable[..., Any],
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        kwargs.setdefault("_request_timeout", (CONNECT_TIMEOUT, REQUEST_TIMEOUT))
        try:
            response = func(*args, _preload_content=False, **kwargs)
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            error = _error(exc, verb, resource, namespace, name)
            for listener in self.listeners:
                listener(verb, resource, error.status)
            raise error from exc
        for listener in self.listeners:
            listener(verb, resource, response.status)
        if kwargs.get("watch"):
            return response
        try:
            data = response.data
        finally:
            response.release_conn()
        return json.loads(data) if data else {}

    def _custom(self, resource: Resource) -> tuple[str, str, str]:
        return (resource.group, VERSION, resource.plural)

    # --- the calls ----------------------------------------------------------

    def served(self) -> set[str] | None:
        """The resources ``gateway.networking.k8s.io/v1`` serves, or ``None``
        when the API server does not serve that group version (404)."""
        try:
            body = self._call(
                "get",
                Resource.HTTPROUTES,
                "",
                "",
                self.custom.get_api_resources,
                GROUP,
                VERSION,
            )
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise
        return {str(r.get("name", "")) for r in body.get("resources") or []}

    def list(
        self, resource: Resource, namespace: str, label_selector: str | None = None
    ) -> tuple[list[dict[str, Any]], str]:
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": 500}
            if label_selector:
                kwargs["label_selector"] = label_selector
            if token:
                kwargs["_continue"] = token
            if resource is Resource.SERVICES:
                body = self._call(
                    "list",
                    resource,
                    namespace,
                    "",
                    self.core.list_namespaced_service,
                    namespace,
                    **kwargs,
                )
            else:
                body = self._call(
                    "list",
                    resource,
                    namespace,
                    "",
                    self.custom.list_namespaced_custom_object,
                    *self._custom(resource)[:2],
                    namespace,
                    resource.plural,
                    **kwargs,
                )
            items.extend(body.get("items") or [])
            meta = body.get("metadata") or {}
            token = meta.get("continue")
            if not token:
                return items, str(meta.get("resourceVersion", ""))

    def watch(
        self,
        resource: Resource,
        namespace: str,
        resource_version: str,
        *,
        label_selector: str | None = None,
        timeout_seconds: int = 300,
    ) -> WatchStream:
        kwargs: dict[str, Any] = {
            "watch": True,
            "resource_version": resource_version,
            "allow_watch_bookmarks": True,
            "timeout_seconds": timeout_seconds,
            "_request_timeout": (CONNECT_TIMEOUT, timeout_seconds + 30),
        }
        if label_selector:
            kwargs["label_selector"] = label_selector
        if resource is Resource.SERVICES:
            response = self._call(
                "watch", resource, namespace, "", self.core.list_namespaced_service, namespace,
                **kwargs,
            )  # fmt: skip
        else:
            response = self._call(
                "watch",
                resource,
                namespace,
                "",
                self.custom.list_namespaced_custom_object,
                resource.group,
                VERSION,
                namespace,
                resource.plural,
                **kwargs,
            )
        return WatchStream(response, lambda exc: _error(exc, "watch", resource, namespace, ""))

    def apply(self, resource: Resource, body: dict[str, Any], *, field_manager: str) -> Any:
        """Server-side apply (with force: the route is ours) of a route."""
        meta = body["metadata"]
        return self._call(
            "patch",
            resource,
            meta["namespace"],
            meta["name"],
            self.custom.patch_namespaced_custom_object,
            resource.group,
            VERSION,
            meta["namespace"],
            resource.plural,
            meta["name"],
            body,
            field_manager=field_manager,
            force=True,
            _content_type=APPLY_PATCH,
        )

    def delete(self, resource: Resource, namespace: str, name: str, *, uid: str | None) -> None:
        """Delete a route, only if it still has ``uid`` (when given)."""
        options = k8s.V1DeleteOptions(
            propagation_policy="Background",
            preconditions=k8s.V1Preconditions(uid=uid) if uid else None,
        )
        self._call(
            "delete",
            resource,
            namespace,
            name,
            self.custom.delete_namespaced_custom_object,
            resource.group,
            VERSION,
            namespace,
            resource.plural,
            name,
            body=options,
        )

    def create_event(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        self._call(
            "create",
            Resource.EVENTS,
            meta["namespace"],
            meta["name"],
            self.core.create_namespaced_event,
            meta["namespace"],
            body,
        )
