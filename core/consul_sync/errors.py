"""Exceptions that cross the boundary between plugins and the core."""

from __future__ import annotations


class ConsulSyncError(Exception):
    """Base class of every error consul-sync raises on purpose."""


class ConfigError(ConsulSyncError):
    """The configuration is invalid; the message names every bad key path."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class SourceError(ConsulSyncError):
    """A source could not read; its snapshot is not complete."""


class SinkError(ConsulSyncError):
    """A sink could not apply a change.

    ``retryable`` False means retrying the same change will fail the same
    way (an invalid object, a foreign object in the way): the runtime
    reports it and moves on until the desired state changes.
    ``retry_after`` is a server's hint in seconds, if it gave one.
    ``reported`` True means the sink has already told the operator about
    the cause (e.g. one line for a whole API outage): the runtime then logs
    the failed write at debug level only, so an outage is one line.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = True,
        retry_after: float | None = None,
        reported: bool = False,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.reported = reported
