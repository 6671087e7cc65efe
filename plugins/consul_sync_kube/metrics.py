"""A sink plugin's own metrics: made once per registry, however many sinks share it."""

from __future__ import annotations

import weakref
from typing import Any, ClassVar, Self

from prometheus_client import CollectorRegistry


class PerRegistry:
    """Base of a plugin's metrics class: ``of(registry)`` makes the metrics (the subclass's
    ``__init__(registry)``) the first time a registry asks, and hands them out after."""

    _by_registry: ClassVar[weakref.WeakKeyDictionary[CollectorRegistry, Any]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._by_registry = weakref.WeakKeyDictionary()

    def __init__(self, registry: CollectorRegistry) -> None:
        del registry

    @classmethod
    def of(cls, registry: CollectorRegistry) -> Self:
        metrics = cls._by_registry.get(registry)
        if metrics is None:
            metrics = cls._by_registry[registry] = cls(registry)
        assert isinstance(metrics, cls)
        return metrics
