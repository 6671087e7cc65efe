"""The kinds of Kubernetes object consul-sync's sinks touch, as one enum."""

from __future__ import annotations

import enum

#: The Gateway API's group and the version the gateway sink speaks.
GATEWAY_GROUP = "gateway.networking.k8s.io"
GATEWAY_VERSION = "v1"


class Resource(enum.Enum):
    """(API group, plural resource) of each kind a sink reads or writes."""

    SERVICES = ("", "services")
    ENDPOINTSLICES = ("discovery.k8s.io", "endpointslices")
    EVENTS = ("", "events")
    LEASES = ("coordination.k8s.io", "leases")
    HTTPROUTES = (GATEWAY_GROUP, "httproutes")
    GRPCROUTES = (GATEWAY_GROUP, "grpcroutes")

    @property
    def group(self) -> str:
        return self.value[0]

    @property
    def plural(self) -> str:
        return self.value[1]

    @property
    def qualified(self) -> str:
        """``endpointslices.discovery.k8s.io``, ``services``: as RBAC names it."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def custom(self) -> bool:
        """Served by a CRD (the Gateway API): reached through the custom-objects API."""
        return self.group == GATEWAY_GROUP
