"""The ``gateway`` sink's settings (``[[sinks]] type = "gateway"``, or the environment)."""

from __future__ import annotations

import attrs

from consul_sync import Duration, setting
from consul_sync_kube.objects import DEFAULT_INSTANCE


@attrs.frozen
class GatewayEntry:
    """One ``gateways = [{tag, name, namespace, listener}]`` item."""

    tag: str
    name: str
    namespace: str = ""
    listener: str = ""


@attrs.frozen
class GatewayConfig:
    domain_suffix: str = setting(
        "",
        env="DOMAIN_SUFFIX",
        help="routes get hostname <service>.<domain_suffix>; no default: without it "
        "only services with Meta gateway-hostnames get a route",
    )
    internal_gateway: str = setting(
        "envoy-internal", env="INTERNAL_GATEWAY", help="Gateway for services with the internal tag"
    )
    external_gateway: str = setting(
        "envoy-external", env="EXTERNAL_GATEWAY", help="Gateway for services with the external tag"
    )
    internal_tag: str = setting("internal", env="INTERNAL_TAG", help="tag routed internally")
    external_tag: str = setting("external", env="EXTERNAL_TAG", help="tag routed externally")
    gateway_namespace: str = setting(
        "", env="GATEWAY_NAMESPACE", help="namespace of the Gateways (default: TARGET_NAMESPACE)"
    )
    listener: str = setting(
        "https", env="GATEWAY_LISTENER", help="the Gateways' listener (sectionName)"
    )
    gateways: tuple[GatewayEntry, ...] = setting(
        (),
        help="[{tag, name, namespace, listener}]: replaces the internal/external pair "
        "(namespace and listener default to the keys above)",
    )
    output: str = setting(
        "", help="empty: write to the cluster; '-': print the routes as YAML instead"
    )
    kubeconfig: str = setting("", env="KUBECONFIG", help="kubeconfig path (as the kubernetes sink)")
    context: str = setting("", env="KUBE_CONTEXT", help="kubeconfig context (default: current)")
    instance: str = setting(
        DEFAULT_INSTANCE, env="INSTANCE_NAME", help="name of this deployment (owner id)"
    )
    owner_id: str = setting(
        "", env="OWNER_ID", help="owner id written on every route (default <namespace>/<instance>)"
    )
    concurrency: int = setting(4, help="parallel API writes")
    watch_timeout: Duration = setting(
        Duration(300), help="the server ends each watch after about this long; it restarts"
    )
    event_interval: Duration = setting(
        Duration(600), help="at most one Kubernetes Event per route and reason this often"
    )

    def __attrs_post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.output not in ("", "-"):
            raise ValueError("output must be '' (the cluster) or '-' (standard output)")
        for entry in self.gateways:
            if not entry.tag or not entry.name:
                raise ValueError("every gateways item needs a tag and a name")
