"""The one module that imports the official ``kubernetes`` client (~0.3 s to import): the
sinks import it only when they make a client, so that loading the plugins stays cheap.

:class:`KubeClient` is a small synchronous wrapper: plain dicts in and out (exactly as the API
server speaks them; nothing is deserialised into the client's model classes), one exception
type, :class:`.errors.KubeError`, for every failure (HTTP statuses and network errors alike),
and listeners told of every request made.  Every method blocks: the sinks call them from worker
threads.  The Gateway API's routes (:attr:`.Resource.custom`) go through the custom-objects API,
the rest through the typed ones; the calls take and give the same dicts either way.

Tests and the benchmark inject an instance made by :meth:`KubeClient.for_url`
(``context.extras["kubernetes_client"]``, ``["gateway_client"]``); in production
:meth:`KubeClient.from_environment` picks the in-cluster service account when running in a
pod, else a kubeconfig (``KUBECONFIG``, ``~/.kube/config``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import kubernetes.client as k8s
import kubernetes.config as k8s_config
import urllib3
from kubernetes.client.exceptions import ApiException
from kubernetes.config import incluster_config

from .errors import KubeError, answer_error, sending
from .resources import GATEWAY_VERSION, Resource
from .watch import WatchStream

APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"
#: urllib3 retries nothing itself (its default retries a refused connection
#: three times, each with a "Retrying" warning): the runtime's backoff is
#: the only one.  (``retries=None`` asks for urllib3's default instead.)
NO_RETRIES = False
CONNECT_TIMEOUT = 10.0
REQUEST_TIMEOUT = 30.0


def _error(
    exc: BaseException, verb: str, resource: Resource, namespace: str, name: str
) -> KubeError:
    if isinstance(exc, ApiException):
        headers = exc.headers or {}
        return answer_error(
            int(exc.status or 0),
            exc.reason,
            exc.body,
            headers.get("Retry-After"),
            verb=verb,
            resource=resource,
            namespace=namespace,
            name=name,
        )
    where = {"verb": verb, "resource": resource, "namespace": namespace, "name": name}
    return KubeError(0, f"{type(exc).__name__}: {exc}", **where)  # type: ignore[arg-type]


class KubeClient:
    """Synchronous access to the few API calls the sinks make."""

    def __init__(self, api_client: k8s.ApiClient, *, description: str = "") -> None:
        self.api_client = api_client
        self.description = description or api_client.configuration.host
        self.core = k8s.CoreV1Api(api_client)
        self.discovery = k8s.DiscoveryV1Api(api_client)
        self.coordination = k8s.CoordinationV1Api(api_client)
        self.custom = k8s.CustomObjectsApi(api_client)
        #: Called (in the calling thread) after every request with
        #: ``(verb, resource, status)``; status 0: no answer.
        self.listeners: list[Callable[[str, Resource, int], None]] = []

    # --- construction -------------------------------------------------------

    @staticmethod
    def in_cluster(environ: dict[str, str] | None = None) -> bool:
        env = os.environ if environ is None else environ
        return bool(env.get(incluster_config.SERVICE_HOST_ENV_NAME)) and os.path.exists(
            incluster_config.SERVICE_TOKEN_FILENAME
        )

    @classmethod
    def from_environment(
        cls,
        *,
        kubeconfig: str = "",
        context: str = "",
        pool_size: int = 16,
        retries: bool | None = NO_RETRIES,
    ) -> KubeClient:
        """In-cluster service account when in a pod (unless ``kubeconfig`` is
        given), else the kubeconfig (``KUBECONFIG`` or ``~/.kube/config``)."""
        configuration = k8s.Configuration()
        if not kubeconfig and cls.in_cluster():
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            description = "in-cluster service account"
        else:
            # The client reads KUBECONFIG when it is imported; read it now.
            kubeconfig = kubeconfig or os.environ.get("KUBECONFIG", "")
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig or None,
                context=context or None,
                client_configuration=configuration,
            )
            description = f"kubeconfig {kubeconfig or '~/.kube/config'}"
        configuration.connection_pool_maxsize = pool_size
        configuration.retries = retries
        return cls(k8s.ApiClient(configuration), description=description)

    @classmethod
    def for_url(
        cls,
        url: str,
        *,
        token: str | None = None,
        pool_size: int = 16,
        retries: bool | None = NO_RETRIES,
    ) -> KubeClient:
        """A client for an API server at ``url`` (tests, the benchmark)."""
        configuration = k8s.Configuration(host=url)
        if token:
            configuration.api_key = {"authorization": token}
            configuration.api_key_prefix = {"authorization": "Bearer"}
        configuration.connection_pool_maxsize = pool_size
        configuration.retries = retries
        return cls(k8s.ApiClient(configuration), description=url)

    def close(self) -> None:
        self.api_client.close()  # type: ignore[no-untyped-call]

    # --- plumbing -----------------------------------------------------------

    def _count(self, verb: str, resource: Resource, status: int) -> None:
        for listener in self.listeners:
            listener(verb, resource, status)

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
        with sending():
            try:
                response = func(*args, _preload_content=False, **kwargs)
            except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
                error = _error(exc, verb, resource, namespace, name)
                self._count(verb, resource, error.status)
                raise error from exc
            self._count(verb, resource, response.status)
        if kwargs.get("watch"):
            return response
        try:
            data = response.data
        finally:
            response.release_conn()
        return json.loads(data) if data else {}

    def _functions(self, resource: Resource) -> dict[str, Callable[..., Any]]:
        """The API functions for ``resource``, each called as the typed APIs' are:
        ``list(namespace)``, ``get(name, namespace)``, ``patch(name, namespace, body)``,
        ``create(namespace, body)``, ``update(name, namespace, body)``,
        ``delete(name, namespace)`` (plus keyword arguments)."""
        if resource.custom:
            return self._custom_functions(resource)
        if resource is Resource.SERVICES:
            c = self.core
            return {
                "list": c.list_namespaced_service,
                "get": c.read_namespaced_service,
                "patch": c.patch_namespaced_service,
                "create": c.create_namespaced_service,
                "delete": c.delete_namespaced_service,
            }
        if resource is Resource.ENDPOINTSLICES:
            d = self.discovery
            return {
                "list": d.list_namespaced_endpoint_slice,
                "get": d.read_namespaced_endpoint_slice,
                "patch": d.patch_namespaced_endpoint_slice,
                "create": d.create_namespaced_endpoint_slice,
                "delete": d.delete_namespaced_endpoint_slice,
            }
        if resource is Resource.LEASES:
            o = self.coordination
            return {
                "get": o.read_namespaced_lease,
                "create": o.create_namespaced_lease,
                "update": o.replace_namespaced_lease,
            }
        return {"create": self.core.create_namespaced_event}

    def _custom_functions(self, resource: Resource) -> dict[str, Callable[..., Any]]:
        """The custom-objects API's functions (group, version, namespace, plural, name
        first), called as the typed ones are (see :meth:`_functions`)."""
        c, kind = self.custom, (resource.group, GATEWAY_VERSION)

        def named(func: Callable[..., Any]) -> Callable[..., Any]:
            def call(name: str, namespace: str, *args: Any, **kwargs: Any) -> Any:
                return func(*kind, namespace, resource.plural, name, *args, **kwargs)

            return call

        return {
            "list": lambda namespace, **kwargs: c.list_namespaced_custom_object(
                *kind, namespace, resource.plural, **kwargs
            ),
            "get": named(c.get_namespaced_custom_object),
            "patch": named(c.patch_namespaced_custom_object),
            "delete": named(c.delete_namespaced_custom_object),
        }

    # --- the calls ----------------------------------------------------------

    def list(
        self, resource: Resource, namespace: str, label_selector: str | None = None
    ) -> tuple[list[dict[str, Any]], str]:
        """Every object (paged through), and the list's resourceVersion."""
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": 500}
            if label_selector:
                kwargs["label_selector"] = label_selector
            if token:
                kwargs["_continue"] = token
            body = self._call(
                "list",
                resource,
                namespace,
                "",
                self._functions(resource)["list"],
                namespace,
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
        """Start a watch from ``resource_version`` (bookmarks allowed)."""
        kwargs: dict[str, Any] = {
            "watch": True,
            "resource_version": resource_version,
            "allow_watch_bookmarks": True,
            "timeout_seconds": timeout_seconds,
            "_request_timeout": (CONNECT_TIMEOUT, timeout_seconds + 30),
        }
        if label_selector:
            kwargs["label_selector"] = label_selector
        response = self._call(
            "watch", resource, namespace, "", self._functions(resource)["list"], namespace, **kwargs
        )
        return WatchStream(response, lambda exc: _error(exc, "watch", resource, namespace, ""))

    def get(self, resource: Resource, namespace: str, name: str) -> dict[str, Any]:
        func = self._functions(resource)["get"]
        result: dict[str, Any] = self._call("get", resource, namespace, name, func, name, namespace)
        return result

    def apply(
        self, resource: Resource, body: dict[str, Any], *, field_manager: str, force: bool
    ) -> dict[str, Any]:
        """Server-side apply of ``body`` (creates the object if absent)."""
        meta = body["metadata"]
        func = self._functions(resource)["patch"]
        result: dict[str, Any] = self._call(
            "patch",
            resource,
            meta["namespace"],
            meta["name"],
            func,
            meta["name"],
            meta["namespace"],
            body,
            field_manager=field_manager,
            force=force,
            _content_type=APPLY_PATCH,
        )
        return result

    def merge_patch(
        self, resource: Resource, namespace: str, name: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        """A JSON merge patch (``metadata.resourceVersion`` in ``body`` makes it conditional)."""
        func = self._functions(resource)["patch"]
        result: dict[str, Any] = self._call(
            "patch",
            resource,
            namespace,
            name,
            func,
            name,
            namespace,
            body,
            _content_type=MERGE_PATCH,
        )
        return result

    def create(
        self, resource: Resource, body: dict[str, Any], *, field_manager: str | None = None
    ) -> dict[str, Any]:
        """POST: creates, or fails with 409 AlreadyExists (never merges)."""
        meta = body["metadata"]
        func = self._functions(resource)["create"]
        kwargs = {"field_manager": field_manager} if field_manager else {}
        result: dict[str, Any] = self._call(
            "create",
            resource,
            meta["namespace"],
            meta.get("name", ""),
            func,
            meta["namespace"],
            body,
            **kwargs,
        )
        return result

    def update(self, resource: Resource, body: dict[str, Any]) -> dict[str, Any]:
        """A full replace (PUT); ``metadata.resourceVersion`` makes it conditional."""
        meta = body["metadata"]
        func = self._functions(resource)["update"]
        result: dict[str, Any] = self._call(
            "update",
            resource,
            meta["namespace"],
            meta["name"],
            func,
            meta["name"],
            meta["namespace"],
            body,
        )
        return result

    def served(self, group: str, version: str) -> set[str] | None:
        """The resources ``group/version`` serves, or ``None`` when the API server does not
        serve that group version (404)."""
        try:
            body = self._call(
                "get", Resource.HTTPROUTES, "", "", self.custom.get_api_resources, group, version
            )
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise
        return {str(r.get("name", "")) for r in body.get("resources") or []}

    def delete(
        self, resource: Resource, namespace: str, name: str, *, uid: str | None = None
    ) -> None:
        """Delete, only if the object still has ``uid`` (when given)."""
        options = k8s.V1DeleteOptions(
            propagation_policy="Background",
            preconditions=k8s.V1Preconditions(uid=uid) if uid else None,
        )
        func = self._functions(resource)["delete"]
        self._call("delete", resource, namespace, name, func, name, namespace, body=options)
