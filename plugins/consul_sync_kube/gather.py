"""Run a sink's API calls side by side without losing any of their answers."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable
from typing import Any

import anyio

from consul_sync import SinkError

from .errors import KubeError


async def gather(calls: Iterable[Callable[[], Coroutine[Any, Any, None]]]) -> None:
    """Run ``calls`` concurrently; the first :class:`KubeError` or
    :class:`SinkError` among their failures is raised as itself (not in an
    exception group), once all of them have ended: a write that fails does
    not cancel its siblings, whose answers are stored (a create cancelled
    after the API server made the object would be posted again by the
    retry, and answered 409)."""
    calls = list(calls)
    if len(calls) <= 1:
        for call in calls:
            await call()
        return
    failed: list[KubeError | SinkError] = []

    async def run(call: Callable[[], Coroutine[Any, Any, None]]) -> None:
        try:
            await call()
        except (KubeError, SinkError) as exc:
            failed.append(exc)

    try:
        async with anyio.create_task_group() as tg:
            for call in calls:
                tg.start_soon(run, call)
    except BaseExceptionGroup as group:
        found = _first(group)
        if found is not None:
            raise found from None
        raise
    if failed:
        raise failed[0]


def _first(group: BaseExceptionGroup[BaseException]) -> KubeError | SinkError | None:
    for exc in group.exceptions:
        if isinstance(exc, KubeError | SinkError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first(exc)
            if found is not None:
                return found
    return None
