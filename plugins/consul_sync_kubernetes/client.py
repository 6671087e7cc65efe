"""The Kubernetes API client lives in :mod:`consul_sync_kube.client` (shared with the gateway
plugin).  Re-exported here for bench/ and tests/faults, which import it from this module."""

from consul_sync_kube.client import KubeClient
from consul_sync_kube.errors import WRITE_VERBS, KubeError
from consul_sync_kube.resources import Resource

__all__ = ["WRITE_VERBS", "KubeClient", "KubeError", "Resource"]
