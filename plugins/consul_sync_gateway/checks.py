"""Checks of the ``gateway`` sink's settings that look outside their
values: the names it will write into routes must be names Kubernetes
takes (else every route would be refused, one by one, at apply time), and
the kubeconfig it will load (as the ``kubernetes`` sink's).  Registered in
:mod:`.plugin`; the configuration loader runs it."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

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
    yield from checks.field_problems(
        *((field, _dns_name(field), value) for field, value in names.items()),
        ("gateway_namespace", checks.dns_label, config.gateway_namespace),
    )
    if config.output == "-":  # prints YAML: no cluster
        return
    yield from kubeconfig_problems(config.kubeconfig, config.context, environ)


def _dns_name(field: str) -> Callable[[str], object]:
    """The check of a name field: a DNS subdomain (``domain_suffix`` may end in a dot)."""
    if field == "domain_suffix":
        return lambda value: checks.dns_subdomain(value.rstrip("."))
    return checks.dns_subdomain
