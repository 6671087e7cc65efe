"""Names Kubernetes takes: a service's name as a DNS-1035 label (a Service's name).

The kubernetes sink names its Services so (:mod:`consul_sync_kubernetes.naming` adds the
collision rules); the gateway sink points routes at them by the same rule when it cannot read
the real name.
"""

from __future__ import annotations

import hashlib
import re

_DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


def short_hash(text: str, length: int = 5) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def is_valid_name(name: str) -> bool:
    """Whether ``name`` is a DNS-1035 label already (it is used as it is)."""
    return len(name) <= 63 and _DNS1035.fullmatch(name) is not None


def sanitize(name: str) -> str:
    """A DNS-1035 label for ``name``: lowercase, ``[a-z0-9-]``, starting with a
    letter, at most 63 characters.  Deterministic; a name that had to be
    shortened keeps a hash of the original so that distinct long names stay
    distinct."""
    if is_valid_name(name):
        return name
    text = re.sub(r"[^a-z0-9-]+", "-", name.lower())
    text = re.sub(r"-{2,}", "-", text).strip("-")
    text = re.sub(r"^[^a-z]+", "", text)
    if not text:
        text = "svc-" + short_hash(name)
    if len(text) > 63:
        text = text[:57].rstrip("-") + "-" + short_hash(name)
    return text
