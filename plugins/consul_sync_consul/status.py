"""Failures and completeness: what keeps the ``consul`` source's snapshot from
being complete, counted, logged and described for an operator.

A snapshot is complete only while every watch reads, Consul lists services,
every tagged service's last read succeeded and gave instances, and every
recovery after an outage has re-read what it must; otherwise the runtime
prunes nothing on the source's behalf.  The same facts are the source's
problems on the status page.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from collections.abc import Set as AbstractSet

from consul_sync.metrics import Metrics

from . import parse
from .api import ACLRejected
from .tokens import TokenSource

log = logging.getLogger("consul_sync.consul")


#: What each watch reads, as error messages name it.
_WATCHED = {"catalog": "catalog/services", "health": "health/state/any", "nodes": "catalog/nodes"}


class Status:
    """Why the snapshot is not complete now; ``notify`` asks for a publish."""

    def __init__(
        self,
        source: str,
        notify: Callable[[], None],
        *,
        metrics: Metrics,
        tokens: TokenSource,
        base_url: str,
    ) -> None:
        self.source = source
        self._notify = notify
        self.metrics = metrics
        self.tokens = tokens
        self.base_url = base_url
        #: Watch ("catalog", "health", "nodes") -> why its last read failed.
        self.errors: dict[str, str] = {}
        #: Service -> why its last read failed (retried with backoff).
        self.failed: dict[str, str] = {}
        #: Tagged services whose last read gave no instance (kept as they were).
        self.unconfirmed: set[str] = set()
        #: Why the catalog is empty (an ACL-filtered answer), or None.
        self.empty: str | None = None
        #: Watch -> the names its recovery must still re-read.
        self.recovering: dict[str, set[str]] = {}

    def complete(self, catalog_known: bool) -> bool:
        return (
            catalog_known
            and not self.errors
            and self.empty is None
            and not self.failed
            and not self.unconfirmed
            and not self.recovering
        )

    def problems(self) -> list[str]:
        found = list(self.errors.values())
        found += list(self.failed.values())[:5]
        if len(self.failed) > 5:
            found.append(f"... and {len(self.failed) - 5} more services cannot be read")
        if self.empty:
            found.append(self.empty)
        return found

    # --- failures -------------------------------------------------------------------

    def count_error(self) -> None:
        self.metrics.consul_errors.inc()
        self.metrics.source_errors.labels(source=self.source).inc()

    def error(self, what: str, exc: Exception) -> str:
        """Count a failed read of ``what`` and describe it."""
        self.count_error()
        return describe_error(what, exc, self.tokens, self.base_url)

    # --- the watches ----------------------------------------------------------------

    def watch_failed(self, which: str, exc: Exception) -> None:
        message = self.error(_WATCHED.get(which, "health/state/any"), exc)
        if self.errors.get(which) != message:
            log.error(
                "source %s: %s (retrying with backoff; keeping the last known services, "
                "nothing is pruned meanwhile)",
                self.source,
                message,
                extra={"source": self.source},
            )
        self.errors[which] = message
        self._notify()

    def watch_ok(self, which: str) -> None:
        if self.errors.pop(which, None) is not None:
            log.info(
                "source %s: the %s watch reads Consul again",
                self.source,
                which,
                extra={"source": self.source},
            )
            self._notify()

    def catalog_empty(self, *, first: bool, token_changed: bool) -> None:
        """Consul lists no service at all (not even its own ``consul``): an
        ACL-filtered answer (no token, or one without rights) looks exactly
        like this."""
        if self.empty is None:
            message = empty_message(
                self.source, self.tokens, first=first, token_changed=token_changed
            )
            self.empty = message
            self.metrics.source_empty.labels(source=self.source).inc()
            log.error(message, extra={"source": self.source})

    def catalog_back(self, count: int) -> bool:
        """Consul lists ``count`` services; True when it listed none before."""
        if self.empty is None:
            return False
        log.info(
            "source %s: Consul lists services again (%d)",
            self.source,
            count,
            extra={"source": self.source},
        )
        self.empty = None
        return True

    def recover(self, which: str, names: set[str]) -> None:
        """The ``which`` watch is back: not complete until ``names`` are all re-read."""
        log.info(
            "source %s: the %s watch recovered: re-reading %d services",
            self.source,
            which,
            len(names),
            extra={"source": self.source},
        )
        self.recovering.setdefault(which, set()).update(names)

    def recovery_read(self, name: str) -> None:
        """``name`` was read (or is gone): tick it off every recovery."""
        for which in list(self.recovering):
            pending = self.recovering[which]
            pending.discard(name)
            if not pending:
                del self.recovering[which]
                log.debug("%s watch recovery: every service re-read", which)
                self._notify()

    # --- the reads ------------------------------------------------------------------

    def read_failed(self, name: str, message: str) -> None:
        first = not self.failed
        self.failed[name] = message
        if first:
            log.error(
                "source %s: %s (retrying with backoff; nothing is pruned meanwhile)",
                self.source,
                message,
                extra={"source": self.source},
            )

    def read_ok(self, name: str) -> None:
        if self.failed.pop(name, None) is not None and not self.failed:
            log.info("source %s: reads succeed again", self.source, extra={"source": self.source})

    def to_retry(self, tagged: AbstractSet[str]) -> list[str]:
        """The failed names still tagged (to read again); the others are dropped."""
        names = [n for n in self.failed if n in tagged]
        for name in list(self.failed):
            if name not in tagged:
                del self.failed[name]
        return names

    def forget(self, name: str) -> None:
        """``name`` left the catalog: nothing about it is pending any more."""
        self.failed.pop(name, None)
        self.unconfirmed.discard(name)
        self.recovery_read(name)


def describe_error(what: str, exc: Exception, tokens: TokenSource, base_url: str) -> str:
    """A failed read of ``what``, as an operator should read it."""
    if isinstance(exc, ACLRejected):
        return (
            f"Consul rejected {tokens.describe()} reading {what}: 403 {exc}. "
            "Fix the token (token / CONSUL_TOKEN / CONSUL_HTTP_TOKEN / "
            "CONSUL_HTTP_TOKEN_FILE); nothing is deleted meanwhile"
        )
    if isinstance(exc, parse.Malformed):
        return f"unusable answer from Consul: {exc}"
    text = str(exc)
    if tokens.file_error:
        text += f" ({tokens.file_error})"
    return f"cannot read {what} from {base_url}: {text}"


def empty_message(source: str, tokens: TokenSource, *, first: bool, token_changed: bool) -> str:
    """Consul listed no service at all: most likely what the token may see."""
    who = tokens.describe()
    if first:
        what = "Consul lists no service at all, not even its own 'consul' service"
    elif token_changed:
        what = "after the token changed, Consul lists no service at all (not even 'consul')"
    else:
        what = (
            "Consul suddenly lists no service at all (not even 'consul') although the "
            "token did not change"
        )
    return (
        f"source {source}: {what}. This is what an ACL token without read rights "
        f"gets (using {who}). Keeping the last known services and deleting nothing "
        "until Consul lists services again."
    )
