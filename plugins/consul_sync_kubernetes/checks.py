"""Checks of the ``kubernetes`` sink's settings that look outside their
values: the kubeconfig it will load.  A kubeconfig that cannot be read or
parsed is a configuration error, reported once before anything starts --
not a client that fails to configure on every retry.  Registered in
:mod:`.plugin`; the configuration loader runs it."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from consul_sync.config import FieldProblem
from consul_sync_kube.connect import kubeconfig_problems

from .config import KubernetesConfig


def check_kubeconfig(
    config: KubernetesConfig, environ: Mapping[str, str]
) -> Iterator[FieldProblem]:
    yield from kubeconfig_problems(config.kubeconfig, config.context, environ)
