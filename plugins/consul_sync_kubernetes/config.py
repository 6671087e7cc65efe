"""The ``kubernetes`` sink's settings (``[[sinks]] type = "kubernetes"``, or the environment)."""

from __future__ import annotations

import re

import attrs

from consul_sync import Duration, setting
from consul_sync_kube.objects import DEFAULT_INSTANCE

from . import render as r

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


@attrs.frozen
class KubernetesConfig:
    kubeconfig: str = setting(
        "",
        env="KUBECONFIG",
        help="kubeconfig path; empty: the in-cluster service account when in a pod, "
        "else ~/.kube/config",
    )
    context: str = setting("", env="KUBE_CONTEXT", help="kubeconfig context (default: current)")
    instance: str = setting(
        DEFAULT_INSTANCE,
        env="INSTANCE_NAME",
        help="name of this consul-sync deployment: the default owner id is "
        "<namespace>/<instance>, and the leader-election Lease is named after it",
    )
    owner_id: str = setting(
        "",
        env="OWNER_ID",
        help="owner id written on every object (default <namespace>/<instance>); two "
        "deployments writing to one namespace need different ones",
    )
    max_endpoints_per_slice: int = setting(
        r.DEFAULT_MAX_PER_SLICE,
        env="MAX_ENDPOINTS_PER_SLICE",
        help="endpoints per EndpointSlice (1-1000)",
    )
    concurrency: int = setting(
        16, env="KUBE_CONCURRENCY", help="parallel API writes (see docs/kubernetes-sink.md)"
    )
    leader_elect: bool | None = setting(
        None,
        env="LEADER_ELECT",
        help="elect a leader among replicas on a Lease (default: on when running in a cluster)",
    )
    lease_duration: Duration = setting(
        Duration(15), env="LEADER_ELECT_LEASE_DURATION", help="how long a leader's Lease is valid"
    )
    renew_deadline: Duration = setting(
        Duration(10),
        env="LEADER_ELECT_RENEW_DEADLINE",
        help="a leader that cannot renew this long stops",
    )
    retry_period: Duration = setting(
        Duration(2), env="LEADER_ELECT_RETRY_PERIOD", help="how often replicas try the Lease"
    )
    identity: str = setting(
        "", env="POD_NAME", help="leader-election identity (default: host name and a random id)"
    )
    watch_timeout: Duration = setting(
        Duration(300), help="the server ends each watch after about this long; it restarts"
    )
    event_interval: Duration = setting(
        Duration(600), help="at most one Kubernetes Event per object and reason this often"
    )

    def __attrs_post_init__(self) -> None:
        if not 1 <= self.max_endpoints_per_slice <= r.API_MAX_PER_SLICE:
            raise ValueError("max_endpoints_per_slice must be 1-1000")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if len(self.instance) > 63 or not _DNS1123_LABEL.fullmatch(self.instance):
            raise ValueError("instance must be a lowercase DNS label (it names the Lease)")
        if not self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError("need retry_period < renew_deadline < lease_duration")
