"""A sink's way to its API server: the kubeconfig check run before anything starts, and the
client made when the sink first needs one.  No ``kubernetes`` import until then."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import partial
from typing import TYPE_CHECKING, Protocol

import anyio.to_thread

from consul_sync import SinkError, checks
from consul_sync.config import FieldProblem

if TYPE_CHECKING:
    from .client import KubeClient


def kubeconfig_problems(
    kubeconfig: str, context: str, environ: Mapping[str, str]
) -> Iterator[FieldProblem]:
    """What is wrong with the kubeconfig (and context) a sink will load: a kubeconfig that
    cannot be read or parsed is a configuration error, reported once before anything starts
    -- not a client that fails to configure on every retry."""
    try:
        checks.kubeconfig_in_use(kubeconfig, context, environ)
    except checks.ContextProblem as exc:
        yield FieldProblem("context", str(exc))
    except ValueError as exc:
        yield FieldProblem("kubeconfig", str(exc))


class ClientSettings(Protocol):
    """What a sink's settings say about its client."""

    @property
    def kubeconfig(self) -> str: ...
    @property
    def context(self) -> str: ...
    @property
    def concurrency(self) -> int: ...


async def connect(settings: ClientSettings, *, retries: bool | None = False) -> KubeClient:
    """A client from the environment (:meth:`.client.KubeClient.from_environment`) with a
    connection per parallel write and a few for the watches, made in a worker thread (it
    reads files); any failure is a :class:`SinkError`."""
    from .client import KubeClient  # (imports ``kubernetes``: only when a sink needs it)

    try:
        return await anyio.to_thread.run_sync(
            partial(
                KubeClient.from_environment,
                kubeconfig=settings.kubeconfig,
                context=settings.context,
                pool_size=settings.concurrency + 4,
                retries=retries,
            )
        )
    except Exception as exc:
        raise SinkError(f"cannot configure the Kubernetes client: {exc}") from exc
