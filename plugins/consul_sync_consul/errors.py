"""The Consul client's failures: every failed read is one of these, so that callers
keep their last good state and back off."""

from __future__ import annotations


class ConsulError(Exception):
    """A read from Consul failed; the reader keeps what it knew."""


class Unavailable(ConsulError):
    """Consul could not be reached or answered 5xx / 429 / too slowly."""


class BadAnswer(ConsulError):
    """Consul's answer cannot be used (malformed, truncated, too large)."""


class Unsupported(BadAnswer):
    """404 or 405: the agent does not serve this endpoint (too old)."""


class ACLRejected(ConsulError):
    """403: the token is unknown to Consul (or lacks a right it needs)."""
