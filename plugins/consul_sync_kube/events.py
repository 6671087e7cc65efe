"""Kubernetes Warning Events about objects, at most one per object and reason an interval."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from .objects import MANAGER, meta, uid


class Events:
    """Makes the Event bodies a sink sends: :meth:`warning` answers ``None`` when one about
    the same object and reason was made less than ``interval`` seconds ago."""

    def __init__(
        self,
        namespace: str,
        interval: float,
        reporting_instance: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.namespace = namespace
        self.interval = interval
        self.reporting_instance = reporting_instance
        self.clock = clock
        self._sent: dict[tuple[str, str], float] = {}

    def warning(
        self, obj: Mapping[str, Any], reason: str, message: str, *, api_version: str, kind: str
    ) -> dict[str, Any] | None:
        """A Warning Event on ``obj`` (of ``api_version``/``kind``), if one is due."""
        involved = uid(obj)
        now = self.clock()
        last = self._sent.get((involved, reason))
        if last is not None and now - last < self.interval:
            return None
        self._sent[(involved, reason)] = now
        metadata = meta(obj)
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{metadata['name']}.{uuid.uuid4().hex[:16]}",
                "namespace": self.namespace,
            },
            "involvedObject": {
                "apiVersion": api_version,
                "kind": kind,
                "name": metadata["name"],
                "namespace": self.namespace,
                "uid": involved,
                "resourceVersion": str(metadata.get("resourceVersion", "")),
            },
            "reason": reason,
            "message": message[:1024],
            "type": "Warning",
            "source": {"component": MANAGER},
            "reportingComponent": MANAGER,
            "reportingInstance": self.reporting_instance,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
