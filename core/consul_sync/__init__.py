"""consul-sync: keep Kubernetes in step with where services really run.

The public API for plugin authors: ``hookimpl`` to mark hook
implementations, the model types, ``DROP``, ``SinkError`` and the config
helpers ``setting`` and ``secret``.
"""

from __future__ import annotations

import pluggy

from ._version import __version__
from .config import Duration, ValueProblem, secret, setting
from .errors import ConfigError, SinkError, SourceError
from .model import (
    DROP,
    Action,
    Change,
    DesiredService,
    Endpoint,
    Observed,
    Port,
    ServiceKey,
    Sink,
    Snapshot,
    Source,
)
from .registry import Context, TypeRegistry

hookimpl = pluggy.HookimplMarker("consul_sync")

__all__ = [
    "DROP",
    "Action",
    "Change",
    "ConfigError",
    "Context",
    "DesiredService",
    "Duration",
    "Endpoint",
    "Observed",
    "Port",
    "ServiceKey",
    "Sink",
    "SinkError",
    "Snapshot",
    "Source",
    "SourceError",
    "TypeRegistry",
    "ValueProblem",
    "__version__",
    "hookimpl",
    "secret",
    "setting",
]
