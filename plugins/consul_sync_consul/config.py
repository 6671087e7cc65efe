"""The ``consul`` source's settings (``ConsulConfig``), checked as they are loaded, and
what they mean for the requests it makes."""

from __future__ import annotations

import enum

import attrs

from consul_sync import Duration, secret, setting
from consul_sync.config import ValueProblem

from . import parse
from .api import TLSSettings, parse_address

MAX_WAIT = 600.0  # Consul caps ``wait`` at 10 minutes


class Consistency(enum.StrEnum):
    DEFAULT = "default"
    STALE = "stale"
    CONSISTENT = "consistent"


@attrs.frozen
class ConsulConfig:
    address: str | None = setting(
        None,
        env=("CONSUL_ADDR", "CONSUL_HTTP_ADDR"),
        help="Consul HTTP address: host:port, http://..., https://... or unix:///path",
    )
    token: str | None = secret(None, env=("CONSUL_TOKEN", "CONSUL_HTTP_TOKEN"))
    token_file: str | None = setting(
        None, env="CONSUL_HTTP_TOKEN_FILE", help="file holding the token (re-read on change)"
    )
    ca_file: str | None = setting(None, env="CONSUL_CACERT", help="CA bundle for https")
    ca_path: str | None = setting(None, env="CONSUL_CAPATH", help="directory of CA certificates")
    client_cert: str | None = setting(None, env="CONSUL_CLIENT_CERT", help="client certificate")
    client_key: str | None = setting(None, env="CONSUL_CLIENT_KEY", help="client certificate key")
    tls_server_name: str | None = setting(
        None, env="CONSUL_TLS_SERVER_NAME", help="server name for SNI and verification"
    )
    tls_verify: bool = setting(
        True, env="CONSUL_HTTP_SSL_VERIFY", help="verify the agent's certificate"
    )
    datacenter: str | None = setting(None, env="CONSUL_DATACENTER", help="datacenter (dc=)")
    consul_namespace: str | None = setting(
        None, env="CONSUL_NAMESPACE", help="Consul Enterprise namespace (ns=)"
    )
    partition: str | None = setting(
        None, env="CONSUL_PARTITION", help="Consul Enterprise admin partition"
    )
    tag: str = setting(
        "kubernetes", env="CONSUL_TAG", help="only services with this tag (empty: all)"
    )
    filter: str | None = setting(
        None,
        env="CONSUL_FILTER",
        help='extra filter expression on health/service entries, e.g. Service.Meta.env == "prod"',
    )
    consistency: Consistency = setting(
        Consistency.DEFAULT, env="CONSUL_CONSISTENCY", help="default, stale or consistent"
    )
    wait: Duration = setting(
        Duration(300), env="CONSUL_WAIT", help="blocking-query wait (at most 10m)"
    )
    warning_ready: bool = setting(
        False, env="CONSUL_WARNING_READY", help="instances in warning count as ready"
    )
    include_unhealthy: bool = setting(
        True,
        env="CONSUL_INCLUDE_UNHEALTHY",
        help="keep critical and maintenance instances as not-ready endpoints (false: omit them)",
    )
    include_proxies: bool = setting(
        False, env="CONSUL_INCLUDE_PROXIES", help="sync Connect proxies and gateways (Kind set)"
    )
    max_connections: int = setting(
        64, env="CONSUL_MAX_CONNECTIONS", help="most connections held to the agent at once"
    )
    http2: bool = setting(True, env="CONSUL_HTTP2", help="offer HTTP/2 over https (needs h2)")
    timeout: Duration = setting(Duration(10), help="timeout of a non-blocking read")
    max_body: int = setting(64 * 1024 * 1024, help="largest answer accepted, in bytes")
    retry_max: Duration = setting(Duration(10), help="longest backoff after a failed read")
    namespace: str | None = setting(None, help="Kubernetes namespace (default: TARGET_NAMESPACE)")

    def __attrs_post_init__(self) -> None:
        if self.address is None or not self.address.strip():
            raise ValueProblem(
                "address: the Consul address is required: set CONSUL_ADDR (or "
                "CONSUL_HTTP_ADDR), e.g. http://10.0.10.100:8500"
            )
        try:
            parse_address(self.address)
        except ValueError as exc:
            raise ValueProblem(f"address: {exc}") from None
        if not 0 < self.wait <= MAX_WAIT:
            raise ValueProblem(f"wait: must be more than 0 and at most 10m, got {self.wait!r}")
        if self.max_connections < 3:
            raise ValueProblem(
                "max_connections: at least 3 (two watches and one reader), got "
                f"{self.max_connections}"
            )
        if self.max_body < 1024:
            raise ValueProblem(f"max_body: at least 1024 bytes, got {self.max_body}")
        if self.client_key and not self.client_cert:
            raise ValueProblem("client_key: given without client_cert")


# --- what the settings mean for the reads ---------------------------------------------


def api_query(config: ConsulConfig) -> dict[str, str]:
    """The parameters every request carries: datacenter, namespace, partition, consistency."""
    query: dict[str, str] = {}
    if config.datacenter:
        query["dc"] = config.datacenter
    if config.consul_namespace:
        query["ns"] = config.consul_namespace
    if config.partition:
        query["partition"] = config.partition
    if config.consistency is not Consistency.DEFAULT:
        query[config.consistency.value] = ""
    return query


def tls_settings(config: ConsulConfig) -> TLSSettings:
    return TLSSettings(
        ca_file=config.ca_file,
        ca_path=config.ca_path,
        client_cert=config.client_cert,
        client_key=config.client_key,
        server_name=config.tls_server_name,
        verify=config.tls_verify,
    )


@attrs.frozen
class Filters:
    """The parameters that select the tagged services, per kind of read."""

    #: ``health/service/NAME``: the tag, and the filter expression if any.
    service: dict[str, str]
    #: The health watch: every node check and the tagged services' checks
    #: that are not passing -- small however many services there are, and
    #: any status change moves a check into or out of it.
    health: dict[str, str]
    #: Every check of a tagged service: which instances (with checks) exist.
    members: dict[str, str]
    #: The tagged instances of a node, for the in-place scan.
    node_services: dict[str, str]

    @classmethod
    def of(cls, config: ConsulConfig) -> Filters:
        service = {"tag": config.tag} if config.tag else {}
        if config.filter:
            service["filter"] = config.filter
        tag = parse.bexpr_string(config.tag)
        tagged = f" and {tag} in ServiceTags" if config.tag else ""
        return cls(
            service=service,
            health={"filter": f'ServiceID == "" or (Status != "passing"{tagged})'},
            members={"filter": f'ServiceID != ""{tagged}'},
            node_services={"filter": f"{tag} in Tags"} if config.tag else {},
        )
