"""How a Kubernetes API request fails, told once: :class:`KubeError` (every failure, HTTP
statuses and network errors alike), :class:`Outage` (an API outage logged once, then summed
up), and :func:`rbac_hint` (the Role rule a 403 says is missing).  No ``kubernetes`` import:
the sinks' modules use these without loading the client library."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from email.utils import parsedate_to_datetime
from typing import Any

from .resources import Resource


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


def answer_error(
    status: int,
    reason: str | None,
    text: str | None,
    retry_after: str | None,
    *,
    verb: str,
    resource: Resource,
    namespace: str,
    name: str,
) -> KubeError:
    """The :class:`KubeError` for an API server's answer other than 2xx: ``status``, the
    HTTP ``reason`` phrase, the body as ``text`` (a ``Status`` object, or plain text as a
    429 of API Priority and Fairness is) and the ``Retry-After`` header.  Both ways to the
    API server (the client's threads and :mod:`.aio`) say a failure with this one."""
    body: dict[str, Any] = {}
    try:
        parsed = json.loads(text or "{}")
        if isinstance(parsed, dict):
            body = parsed
    except ValueError:
        pass
    return KubeError(
        status,
        str(body.get("message") or text or reason or "error"),
        reason=str(body.get("reason") or reason or ""),
        retry_after=retry_after_seconds(retry_after),
        causes=list((body.get("details") or {}).get("causes") or []),
        verb=verb,
        resource=resource,
        namespace=namespace,
        name=name,
    )


#: Verbs that change something (counted as writes in an outage summary).
WRITE_VERBS = frozenset({"create", "patch", "update", "delete"})


def unavailable(status: int) -> bool:
    """An answer that means the API is down, not that the request was wrong:
    no answer at all (0), or a 5xx."""
    return status == 0 or status >= 500


#: When the request being answered was sent (``time.monotonic()``), for the listeners told of
#: its answer: set by both clients around each request (a context variable: per thread, and
#: per task on the event loop).
SENT_AT: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "consul_sync_kube_sent_at", default=None
)


@contextlib.contextmanager
def sending() -> Iterator[None]:
    """Mark the request made inside as sent now (see :data:`SENT_AT`)."""
    token = SENT_AT.set(time.monotonic())
    try:
        yield
    finally:
        SENT_AT.reset(token)


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
        """A client listener: any answer but a 5xx ends an outage -- unless its request was
        sent before the outage began (a write in flight when the API went away says nothing
        about now; counting it would end the outage early and tell it twice)."""
        if unavailable(status):
            return
        sent = SENT_AT.get()
        with self._lock:
            since = self.since
            if since is None or (sent is not None and sent < since):
                return
            self.since = None
            writes, reads = self.writes, self.reads
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


_FORBIDDEN = re.compile(
    r'cannot (\S+) resource "([^"]+)" in API group "([^"]*)"(?: in the namespace "([^"]*)")?'
)


def rbac_hint(error: KubeError) -> str:
    """The RBAC rule a 403 says is missing, as a Role rule."""
    match = _FORBIDDEN.search(error.message)
    if match:
        verb, resource, group, namespace = match.groups()
    else:
        verb = error.verb
        resource = error.resource.plural if error.resource else "?"
        group = error.resource.group if error.resource else ""
        namespace = error.namespace
    return (
        f"missing RBAC permission: verb {verb!r} on {resource!r} (API group "
        f"{group or 'core'!r}) in namespace {namespace or '(cluster)'!r}; add "
        f'{{apiGroups: ["{group}"], resources: ["{resource}"], verbs: ["{verb}"]}} to the '
        "consul-sync Role (deploy/base/rbac.yaml)"
    )
