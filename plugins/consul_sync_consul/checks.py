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

#: Settings naming files that must be readable.
FILES = ("token_file", "ca_file", "client_cert", "client_key")


def check_consul(config: ConsulConfig, _environ: Mapping[str, str]) -> Iterator[FieldProblem]:
    address = (config.address or "").strip()
    if address and not address.startswith("unix://"):
        url = urlsplit(address if "://" in address else "http://" + address)
        try:
            checks.host(url.hostname or "")
            checks.port(url.netloc.rpartition(":")[2]) if _has_port(url.netloc) else None
        except ValueError as exc:
            yield FieldProblem("address", f'"{address}": {exc}')
    yield from checks.field_problems(
        ("tls_server_name", checks.host, config.tls_server_name),
        *((field, checks.readable_file, getattr(config, field)) for field in FILES),
        ("ca_path", checks.readable_dir, config.ca_path),
    )


def _has_port(netloc: str) -> bool:
    host = netloc.rpartition("@")[2]
    return ":" in host.rpartition("]")[2]
