"""The one module that imports the official ``kubernetes`` client.

:class:`KubeClient` is a small synchronous wrapper: plain dicts in and out
(exactly as the API server speaks them; nothing is deserialised into the
client's model classes), one exception type, :class:`KubeError`, for every
failure (HTTP statuses and network errors alike), and listeners told of every
request made.  Every method blocks: the sink calls them from worker threads.

Tests and the benchmark inject an instance made by :meth:`KubeClient.for_url`
(``context.extras["kubernetes_client"]``); in production
:meth:`KubeClient.from_environment` picks the in-cluster service account
when running in a pod, else a kubeconfig (``KUBECONFIG``, ``~/.kube/config``).
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from email.utils import parsedate_to_datetime
from typing import Any

import kubernetes.client as k8s
import kubernetes.config as k8s_config
import urllib3
from kubernetes.client.exceptions import ApiException
from kubernetes.config import incluster_config

log = logging.getLogger("consul_sync.kubernetes.client")

APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"
#: urllib3 retries nothing itself (its default retries a refused connection
#: three times, each with a "Retrying" warning): the runtime's backoff is
#: the only one.
NO_RETRIES = False
CONNECT_TIMEOUT = 10.0
REQUEST_TIMEOUT = 30.0


class Resource(enum.Enum):
    """The kinds the sink touches: (API group, plural resource)."""

    SERVICES = ("", "services")
    ENDPOINTSLICES = ("discovery.k8s.io", "endpointslices")
    EVENTS = ("", "events")
    LEASES = ("coordination.k8s.io", "leases")

    @property
    def group(self) -> str:
        return self.value[0]

    @property
    def plural(self) -> str:
        return self.value[1]

    @property
    def qualified(self) -> str:
        """``endpointslices.discovery.k8s.io``, ``services``: as RBAC names it."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


class KubeError(Exception):
    """A failed API request.

    ``status`` is the HTTP status (0: no answer, e.g. connection refused or
    a timeout), ``reason`` the Status reason (``Conflict``, ``Invalid``,
    ``Forbidden``...), ``message`` the API server's message,
    ``retry_after`` its Retry-After hint in seconds, ``causes`` the Status
    ``details.causes``; ``verb``, ``resource``, ``namespace`` and ``name``
    say what was attempted.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        reason: str = "",
        retry_after: float | None = None,
        causes: list[dict[str, Any]] | None = None,
        verb: str = "",
        resource: Resource | None = None,
        namespace: str = "",
        name: str = "",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason
        self.retry_after = retry_after
        self.causes = causes or []
        self.verb = verb
        self.resource = resource
        self.namespace = namespace
        self.name = name

    def __str__(self) -> str:
        code = f"{self.status} {self.reason}".strip() if self.status else "no answer"
        return f"{self.message} ({code})"


#: Verbs that change something (counted as writes in an outage summary).
WRITE_VERBS = frozenset({"create", "patch", "update", "delete"})


def unavailable(status: int) -> bool:
    """An answer that means the API is down, not that the request was wrong:
    no answer at all (0), or a 5xx."""
    return status == 0 or status >= 500


class Outage:
    """Tells an API outage once instead of once per failed request.

    :meth:`failed` is told every failed request (any thread): the first one
    of an outage (no answer, or a 5xx) is logged as a warning, the others at
    debug, and counted.  :meth:`answered` is a client listener: the first
    answer after an outage logs one summary (how long, how many writes and
    reads failed meanwhile) and ends it.
    """

    def __init__(
        self,
        name: str,
        logger: logging.Logger,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.log = logger
        self.clock = clock
        self.since: float | None = None
        self.writes = 0
        self.reads = 0
        self._lock = threading.Lock()

    def failed(self, error: KubeError) -> bool:
        """Count a failed request; whether it belongs to an outage (then it
        has been logged here, once per outage)."""
        if not unavailable(error.status):
            return False
        with self._lock:
            first = self.since is None
            if first:
                self.since = self.clock()
                self.writes = self.reads = 0
            if error.verb in WRITE_VERBS:
                self.writes += 1
            else:
                self.reads += 1
        what = f"{error.verb} {error.resource.plural if error.resource else ''} {error.name}"
        extra = {"sink": self.name}
        if first:
            self.log.warning(
                "sink %s: Kubernetes API unavailable (%s: %s); retrying with backoff, "
                "quietly until it answers again",
                self.name,
                what.strip(),
                error,
                extra=extra,
            )
        else:
            self.log.debug("sink %s: %s failed: %s", self.name, what.strip(), error, extra=extra)
        return True

    def answered(self, verb: str, resource: Resource, status: int) -> None:
        """A client listener: any answer but a 5xx ends an outage."""
        if unavailable(status):
            return
        with self._lock:
            since, self.since = self.since, None
            writes, reads = self.writes, self.reads
        if since is None:
            return
        self.log.warning(
            "sink %s: Kubernetes API answers again; it was unavailable for %.1f s: "
            "%d writes retried, %d reads and watches failed meanwhile",
            self.name,
            self.clock() - since,
            writes,
            reads,
            extra={"sink": self.name},
        )


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header: seconds, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _error(
    exc: BaseException, verb: str, resource: Resource, namespace: str, name: str
) -> KubeError:
    where = {"verb": verb, "resource": resource, "namespace": namespace, "name": name}
    if isinstance(exc, ApiException):
        body: dict[str, Any] = {}
        try:
            parsed = json.loads(exc.body or "{}")
            if isinstance(parsed, dict):
                body = parsed
        except ValueError:
            pass
        headers = exc.headers or {}
        return KubeError(
            int(exc.status or 0),
            str(body.get("message") or exc.body or exc.reason or "error"),
            reason=str(body.get("reason") or exc.reason or ""),
            retry_after=retry_after_seconds(headers.get("Retry-After")),
            causes=list((body.get("details") or {}).get("causes") or []),
            **where,  # type: ignore[arg-type]
        )
    return KubeError(0, f"{type(exc).__name__}: {exc}", **where)  # type: ignore[arg-type]


class WatchStream:
    """One watch request: iterate to get its events (dicts with ``type`` and
    ``object``) until the server ends it, or :meth:`batches` to get them as
    they arrived together; :meth:`close` from any thread stops the
    iteration."""

    def __init__(self, response: Any, describe: Callable[[BaseException], KubeError]) -> None:
        self._response = response
        self._describe = describe
        self._closed = False

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.batches():
            yield from batch

    def batches(self) -> Iterator[list[dict[str, Any]]]:
        """The events, a list per read from the socket: every event complete
        in what one read returned (a burst of our own writes' events comes
        as a few reads, so whoever hands them on does so once per read, not
        once per event)."""
        buffer = b""
        try:
            for chunk in self._response.stream(None, decode_content=True):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                batch = [json.loads(line) for line in lines if line.strip()]
                if batch:
                    yield batch
            if buffer.strip():
                yield [json.loads(buffer)]
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


class KubeClient:
    """Synchronous access to the few API calls the sink makes."""

    def __init__(self, api_client: k8s.ApiClient, *, description: str = "") -> None:
        self.api_client = api_client
        self.description = description or api_client.configuration.host
        self.core = k8s.CoreV1Api(api_client)
        self.discovery = k8s.DiscoveryV1Api(api_client)
        self.coordination = k8s.CoordinationV1Api(api_client)
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
        cls, *, kubeconfig: str = "", context: str = "", pool_size: int = 16
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
        configuration.retries = NO_RETRIES
        return cls(k8s.ApiClient(configuration), description=description)

    @classmethod
    def for_url(cls, url: str, *, token: str | None = None, pool_size: int = 16) -> KubeClient:
        """A client for an API server at ``url`` (tests, the benchmark)."""
        configuration = k8s.Configuration(host=url)
        if token:
            configuration.api_key = {"authorization": token}
            configuration.api_key_prefix = {"authorization": "Bearer"}
        configuration.connection_pool_maxsize = pool_size
        configuration.retries = NO_RETRIES
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
