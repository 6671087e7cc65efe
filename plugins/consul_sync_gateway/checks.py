"""Checks of the ``gateway`` sink's settings that look outside their
values: the names it will write into routes must be names Kubernetes
takes (else every route would be refused, one by one, at apply time), and
the kubeconfig it will load (as the ``kubernetes`` sink's).  Registered in
:mod:`.plugin`; the configuration loader runs it."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from consul_sync import checks
from consul_sync.config import FieldProblem
from consul_sync_kube.connect import kubeconfig_problems

from .config import GatewayConfig


def check_gateway(config: GatewayConfig, environ: Mapping[str, str]) -> Iterator[FieldProblem]:
    names = {
        "domain_suffix": config.domain_suffix,
        "internal_gateway": config.internal_gateway,
        "external_gateway": config.external_gateway,
        "listener": config.listener,
    }
    for field, value in names.items():
        if value:
            try:
                checks.dns_subdomain(value.rstrip(".") if field == "domain_suffix" else value)
            except ValueError as exc:
                yield FieldProblem(field, str(exc))
    if config.gateway_namespace:
        try:
            checks.dns_label(config.gateway_namespace)
        except ValueError as exc:
            yield FieldProblem("gateway_namespace", str(exc))
    if config.output == "-":  # prints YAML: no cluster
        return
    yield from kubeconfig_problems(config.kubeconfig, config.context, environ)
