"""Checks of a ``consul`` source's settings that look outside their values:
the address's host and port, and the files that must exist (token, CA,
client certificate).  Run by the configuration loader before anything
starts (registered in :mod:`.plugin`)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from urllib.parse import urlsplit

from consul_sync import checks
from consul_sync.config import FieldProblem

from .config import ConsulConfig


def check_consul(config: ConsulConfig, _environ: Mapping[str, str]) -> Iterator[FieldProblem]:
    address = (config.address or "").strip()
    if address and not address.startswith("unix://"):
        url = urlsplit(address if "://" in address else "http://" + address)
        try:
            checks.host(url.hostname or "")
            checks.port(url.netloc.rpartition(":")[2]) if _has_port(url.netloc) else None
        except ValueError as exc:
            yield FieldProblem("address", f'"{address}": {exc}')
    if config.tls_server_name:
        try:
            checks.host(config.tls_server_name)
        except ValueError as exc:
            yield FieldProblem("tls_server_name", str(exc))
    for field in ("token_file", "ca_file", "client_cert", "client_key"):
        path = getattr(config, field)
        if path:
            try:
                checks.readable_file(path)
            except ValueError as exc:
                yield FieldProblem(field, str(exc))
    if config.ca_path:
        try:
            checks.readable_dir(config.ca_path)
        except ValueError as exc:
            yield FieldProblem("ca_path", str(exc))


def _has_port(netloc: str) -> bool:
    host = netloc.rpartition("@")[2]
    return ":" in host.rpartition("]")[2]
