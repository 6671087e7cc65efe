"""Pure conversion from Consul's view of a service to the model.

Shared by the ``consul`` source (instances from ``/v1/health/service``)
and the ``file`` source (service definitions from ``consul.d/*.json``).

Consul ``Meta`` keys that steer the Kubernetes side (on any instance; the
first instance in ID order that sets a key wins):

``k8s-name``          the Kubernetes Service name (default: the Consul name)
``k8s-port-name``     the Service port name (default ``http``)
``k8s-app-protocol``  the port's appProtocol (default: none)
``k8s-protocol``      TCP, UDP or SCTP (default TCP)

Invalid values are warned about and ignored.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Mapping, Sequence

import attrs

from consul_sync.model import DesiredService, Endpoint, Port, freeze_pairs

META_NAME = "k8s-name"
META_PORT_NAME = "k8s-port-name"
META_APP_PROTOCOL = "k8s-app-protocol"
META_PROTOCOL = "k8s-protocol"
DEFAULT_PORT_NAME = "http"

_DNS1035 = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
_IANA_SVC = re.compile(r"(?=.{1,15}$)[a-z0-9]([a-z0-9-]*[a-z0-9])?")
_APP_PROTOCOL = re.compile(r"([a-z0-9.-]+/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")


class Health(enum.StrEnum):
    PASSING = "passing"
    WARNING = "warning"
    CRITICAL = "critical"
    MAINTENANCE = "maintenance"


@attrs.frozen
class HealthPolicy:
    """How an instance's health shows in the endpoint conditions.

    passing -> ready; warning -> serving but not ready (``warning_ready``
    makes it ready); critical and maintenance -> present with ready=False,
    or left out when ``include_unhealthy`` is False.
    """

    warning_ready: bool = False
    include_unhealthy: bool = True

    def conditions(self, health: Health) -> tuple[bool, bool] | None:
        """``(ready, serving)``, or ``None`` to leave the instance out."""
        if health is Health.PASSING:
            return True, True
        if health is Health.WARNING:
            return self.warning_ready, True
        if not self.include_unhealthy:
            return None
        return False, False


@attrs.frozen
class Instance:
    """One instance of a Consul service, whatever API it came from."""

    service: str
    id: str
    address: str
    port: int
    tags: tuple[str, ...] = ()
    meta: tuple[tuple[str, str], ...] = attrs.field(converter=freeze_pairs, default=())
    health: Health = Health.PASSING
    node: str | None = None
    #: Why it is not passing, for people (:func:`reason_of`); not compared.
    reason: str | None = attrs.field(default=None, eq=False)


@attrs.frozen
class Converted:
    service: DesiredService | None
    warnings: tuple[str, ...] = ()


def to_desired(
    name: str,
    instances: Sequence[Instance],
    *,
    namespace: str,
    source: str,
    policy: HealthPolicy = HealthPolicy(),
    where: str = "",
) -> Converted:
    """Build the desired service for Consul service ``name``.

    ``instances`` must all belong to ``name``; ``where`` prefixes warnings
    (e.g. the file or the agent they came from).
    """
    prefix = f"{where}: " if where else ""
    ordered = sorted(instances, key=lambda i: i.id)
    overrides, warnings = _valid_overrides(_first_meta(ordered), f"{prefix}service {name!r}")
    k8s_name = overrides.get(META_NAME, name)
    port_name = overrides.get(META_PORT_NAME, DEFAULT_PORT_NAME)
    app_protocol = overrides.get(META_APP_PROTOCOL)
    protocol = overrides.get(META_PROTOCOL, "TCP").upper()
    if not ordered:
        return Converted(None, tuple(warnings))
    # The service port is the most common instance port (ties: the lowest);
    # instances on other ports carry their own number.
    counts: dict[int, int] = {}
    for instance in ordered:
        counts[instance.port] = counts.get(instance.port, 0) + 1
    service_port = min(counts, key=lambda p: (-counts[p], p))
    endpoints = []
    for instance in ordered:
        conditions = policy.conditions(instance.health)
        if conditions is None:
            continue
        ready, serving = conditions
        endpoints.append(
            Endpoint(
                address=instance.address,
                port=None if instance.port == service_port else instance.port,
                ready=ready,
                serving=serving,
                node_name=None,
                reason=None if ready else instance.reason,
            )
        )
    service = DesiredService(
        name=k8s_name,
        namespace=namespace,
        ports=[Port(port_name, service_port, protocol, app_protocol)],
        endpoints=endpoints,
        annotations={"consul-sync.io/consul-service": name} if k8s_name != name else {},
        sources=[source],
        # What a sink may route on: every instance's tags, and the Meta keys
        # (the first instance in ID order that sets a key wins).
        tags=[tag for instance in ordered for tag in instance.tags],
        meta=_first_meta(ordered),
    )
    return Converted(service, tuple(warnings))


#: Meta key -> (is the value valid?, what is wrong with it otherwise).
_OVERRIDES: dict[str, tuple[Callable[[str], bool], str]] = {
    META_NAME: (
        lambda v: _DNS1035.fullmatch(v) is not None,
        "is not a DNS-1035 label (lowercase letters, digits, '-', starting with a letter, "
        "at most 63)",
    ),
    META_PORT_NAME: (
        lambda v: _IANA_SVC.fullmatch(v) is not None and re.search("[a-z]", v) is not None,
        "is not a valid port name (lowercase letters, digits and '-', at most 15, with a letter)",
    ),
    META_APP_PROTOCOL: (
        lambda v: _APP_PROTOCOL.fullmatch(v) is not None,
        "is not a valid appProtocol",
    ),
    META_PROTOCOL: (lambda v: v.upper() in ("TCP", "UDP", "SCTP"), "is not TCP, UDP or SCTP"),
}


def _valid_overrides(meta: Mapping[str, str], what: str) -> tuple[dict[str, str], list[str]]:
    """The ``k8s-*`` Meta overrides that are valid, and a warning per invalid one."""
    valid: dict[str, str] = {}
    warnings: list[str] = []
    for key, (is_valid, problem) in _OVERRIDES.items():
        if key not in meta:
            continue
        if is_valid(meta[key]):
            valid[key] = meta[key]
        else:
            warnings.append(f"{what}: Meta {key}={meta[key]!r} {problem}; ignored")
    return valid, warnings


def _first_meta(instances: Iterable[Instance]) -> dict[str, str]:
    meta: dict[str, str] = {}
    for instance in instances:
        for key, value in instance.meta:
            meta.setdefault(key, value)
    return meta


def group(instances: Iterable[Instance]) -> dict[str, list[Instance]]:
    by_name: dict[str, list[Instance]] = {}
    for instance in instances:
        by_name.setdefault(instance.service, []).append(instance)
    return by_name


def has_tag(tags: Iterable[str], tag: str | None) -> bool:
    return tag is None or tag == "" or tag in tags


def worst(statuses: Iterable[str]) -> Health:
    """The health of an instance from its checks' statuses (none: passing)."""
    order = {"passing": 0, "warning": 1, "critical": 2}
    level = max((order.get(status, 2) for status in statuses), default=0)
    return (Health.PASSING, Health.WARNING, Health.CRITICAL)[level]


#: CheckID of the critical check Consul adds to every instance of a node in
#: maintenance, and the prefix of the one it adds to a service instance.
NODE_MAINTENANCE = "_node_maintenance"
SERVICE_MAINTENANCE_PREFIX = "_service_maintenance:"


def is_maintenance(check_id: str) -> bool:
    return check_id == NODE_MAINTENANCE or check_id.startswith(SERVICE_MAINTENANCE_PREFIX)


def health_of(checks: Iterable[tuple[str, str]]) -> Health:
    """The health of an instance from its ``(CheckID, Status)`` pairs, node
    checks included: maintenance (node or service) wins over every status;
    otherwise the worst status (an unknown status counts as critical; no
    checks at all: passing, as Consul counts it)."""
    statuses = []
    for check_id, status in checks:
        if is_maintenance(check_id) and status != "passing":
            return Health.MAINTENANCE
        statuses.append(status)
    return worst(statuses)


def reason_of(
    service_checks: Iterable[tuple[str, str]],
    node_checks: Iterable[tuple[str, str]],
    *,
    node: str | None = None,
    names: Mapping[str, str] | None = None,
) -> str | None:
    """Why an instance is not passing, in the operator's words (``None``
    when it is): maintenance first, then each check that is not passing,
    the worst first — ``check 'HTTP on :8123' is critical``, ``node n1:
    serfHealth is critical``.  ``names`` maps a service check's CheckID to
    its Name (the CheckID is shown when there is none)."""
    names = names or {}
    where = f"node {node}" if node else "the node"
    rank = {"passing": 0, "warning": 1}
    found: list[tuple[int, str]] = []
    for check_id, status in node_checks:
        if check_id == NODE_MAINTENANCE and status != "passing":
            return f"{where} is in maintenance"
        if status != "passing":
            found.append((rank.get(status, 2), f"{where}: {check_id} is {status}"))
    for check_id, status in service_checks:
        if is_maintenance(check_id) and status != "passing":
            return "in maintenance"
        if status != "passing":
            label = names.get(check_id) or check_id
            found.append((rank.get(status, 2), f"check {label!r} is {status}"))
    if not found:
        return None
    found.sort(key=lambda item: -item[0])
    return "; ".join(text for _, text in found)


def str_map(value: object) -> Mapping[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items()}
