"""Checks of the ``gateway`` sink's settings that look outside their
values: the kubeconfig it will load (as the ``kubernetes`` sink's).
Registered in :mod:`.plugin`; the configuration loader runs it."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from consul_sync import checks
from consul_sync.config import FieldProblem

from .sink import GatewayConfig


def check_kubeconfig(config: GatewayConfig, environ: Mapping[str, str]) -> Iterator[FieldProblem]:
    if config.output == "-":  # prints YAML: no cluster
        return
    try:
        checks.kubeconfig_in_use(config.kubeconfig, config.context, environ)
    except checks.ContextProblem as exc:
        yield FieldProblem("context", str(exc))
    except ValueError as exc:
        yield FieldProblem("kubeconfig", str(exc))
