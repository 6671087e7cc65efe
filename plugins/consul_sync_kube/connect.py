"""A sink's way to its API server: the kubeconfig check run before anything starts, and the
client made when the sink first needs one.  No ``kubernetes`` import until then."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import partial
from typing import TYPE_CHECKING

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


async def connect(
    *, kubeconfig: str, context: str, pool_size: int, retries: bool | None = False
) -> KubeClient:
    """A client from the environment (:meth:`.client.KubeClient.from_environment`), made in
    a worker thread (it reads files); any failure is a :class:`SinkError`."""
    from .client import KubeClient  # (imports ``kubernetes``: only when a sink needs it)

    try:
        return await anyio.to_thread.run_sync(
            partial(
                KubeClient.from_environment,
                kubeconfig=kubeconfig,
                context=context,
                pool_size=pool_size,
                retries=retries,
            )
        )
    except Exception as exc:
        raise SinkError(f"cannot configure the Kubernetes client: {exc}") from exc
