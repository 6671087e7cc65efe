"""Pure rendering of a desired service's Gateway API routes.  No I/O.

For each gateway whose tag the service carries (``internal`` ->
``envoy-internal``, ``external`` -> ``envoy-external`` by default, or the
``gateways`` of the sink's config): an ``HTTPRoute`` (a ``GRPCRoute`` when
the service's primary port speaks ``grpc``/``h2c``) named
``<service>-<gateway>`` in the service's namespace, attached to the
gateway's listener, with hostname ``<service>.<domain_suffix>`` and one
rule sending everything to the service's Kubernetes Service.

Consul ``Meta`` keys (the service's ``meta``) override per service:

``gateway-hostnames``  comma-separated hostnames instead of ``<service>.<suffix>``
``gateway-path``       path prefix of the rule (HTTPRoute only; default ``/``)
``gateway-routes``     comma-separated gateways (by tag or name, each optionally
                       ``:<listener>``) instead of the tags; ``none`` opts out

A bad value skips the service's routes with a problem naming the key (the
Service itself still syncs).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from consul_sync.model import DesiredService
from consul_sync_kube.names import sanitize
from consul_sync_kube.objects import (
    MANAGED_BY,
    MANAGER,
    NAME_LABEL,
    OWNER_ANNOTATION,
    SOURCES_ANNOTATION,
)
from consul_sync_kube.resources import GATEWAY_GROUP, GATEWAY_VERSION

API_VERSION = f"{GATEWAY_GROUP}/{GATEWAY_VERSION}"
SERVICE_ANNOTATION = "consul-sync.io/service"

META_HOSTNAMES = "gateway-hostnames"
META_PATH = "gateway-path"
META_ROUTES = "gateway-routes"
OPT_OUT = ("none", "false", "off", "no")
GRPC_PROTOCOLS = ("grpc", "h2c", "kubernetes.io/h2c")
MAX_HOSTNAMES = 16

#: The pattern of ``spec.hostnames`` items in the Gateway API CRDs.
HOSTNAME = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


@attrs.frozen
class Gateway:
    """One gateway routes attach to: services tagged ``tag`` get a route."""

    tag: str
    name: str
    namespace: str
    listener: str


@attrs.frozen
class Route:
    kind: str  # HTTPRoute or GRPCRoute
    body: dict[str, Any] = attrs.field(eq=False)

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def plural(self) -> str:
        return "grpcroutes" if self.kind == "GRPCRoute" else "httproutes"


@attrs.frozen
class Rendered:
    routes: tuple[Route, ...] = ()
    problems: tuple[str, ...] = ()


def backend_name(name: str) -> str:
    """The Kubernetes Service name the kubernetes sink gives service ``name``
    when nothing better is known (``render``; the live sink reads the real
    name from the Service it watches): :func:`consul_sync_kube.names.sanitize`,
    the rule that sink names by (collisions between sanitised names, which that
    sink resolves with a hash suffix, are not known here)."""
    return sanitize(name)


def route_name(backend: str, gateway: str) -> str:
    name = f"{backend}-{gateway}"
    if len(name) > 253:
        digest = hashlib.sha256(name.encode()).hexdigest()[:5]
        name = name[:247].rstrip("-.") + "-" + digest
    return name


def hostname_problem(hostname: str) -> str | None:
    """Why the Gateway API would refuse ``hostname`` (``None``: it would not)."""
    if not 1 <= len(hostname) <= 253:
        return f"hostname {hostname!r} must be 1-253 characters"
    if not HOSTNAME.fullmatch(hostname):
        return (
            f"hostname {hostname!r} is not a lowercase DNS name (letters, digits, '-' and '.', "
            "optionally starting with '*.'; no '_', no uppercase, no IP address)"
        )
    if re.fullmatch(r"[0-9.]+", hostname):
        return f"hostname {hostname!r} is an IP address; Gateway API routes need a name"
    return None


def is_grpc(service: DesiredService) -> bool:
    return bool(service.ports) and (service.ports[0].app_protocol or "").lower() in GRPC_PROTOCOLS


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def select(service: DesiredService, gateways: Sequence[Gateway]) -> tuple[list[Gateway], list[str]]:
    """The gateways the service's routes attach to, and problems with its Meta."""
    meta = dict(service.meta)
    what = f"service {service.namespace}/{service.name}"
    if META_ROUTES not in meta:
        return [g for g in gateways if g.tag in service.tags], []
    value = meta[META_ROUTES].strip()
    if value.lower() in OPT_OUT:
        return [], []
    chosen: list[Gateway] = []
    for item in _split(value):
        wanted, _, listener = item.partition(":")
        match = next((g for g in gateways if wanted in (g.tag, g.name)), None)
        if match is None:
            known = ", ".join(f"{g.tag} ({g.name})" for g in gateways) or "none"
            return [], [
                f"{what}: Meta {META_ROUTES}={value!r}: no gateway {wanted!r} (known: {known}); "
                "its routes are skipped"
            ]
        if listener:
            match = attrs.evolve(match, listener=listener)
        if all(g.name != match.name or g.namespace != match.namespace for g in chosen):
            chosen.append(match)
    return chosen, []


def render(
    service: DesiredService,
    gateways: Sequence[Gateway],
    *,
    backend: str,
    domain_suffix: str,
    owner: str,
) -> Rendered:
    """The routes of ``service`` whose Kubernetes Service is ``backend``."""
    what = f"service {service.namespace}/{service.name}"
    chosen, problems = select(service, gateways)
    if problems or not chosen:
        return Rendered((), tuple(problems))
    if not service.ports:
        return Rendered((), (f"{what}: no port to route to; its routes are skipped",))
    meta = dict(service.meta)
    if META_HOSTNAMES in meta:
        hostnames = _split(meta[META_HOSTNAMES])
        bad = [p for p in map(hostname_problem, hostnames) if p]
        if not hostnames:
            bad = [f"Meta {META_HOSTNAMES} is empty"]
        if len(hostnames) > MAX_HOSTNAMES:
            bad.append(f"{len(hostnames)} hostnames; a route takes at most {MAX_HOSTNAMES}")
        if bad:
            return Rendered(
                (),
                (
                    f"{what}: Meta {META_HOSTNAMES}={meta[META_HOSTNAMES]!r}: "
                    + "; ".join(bad)
                    + "; its routes are skipped (the Service still syncs)",
                ),
            )
    elif domain_suffix:
        hostnames = [f"{backend}.{domain_suffix.strip('.')}"]
        problem = hostname_problem(hostnames[0])
        if problem:
            return Rendered(
                (), (f"{what}: {problem} (from DOMAIN_SUFFIX); its routes are skipped",)
            )
    else:
        return Rendered(
            (),
            (
                f"{what}: no hostname for its route: set DOMAIN_SUFFIX (domain_suffix) or "
                f"Consul Meta {META_HOSTNAMES}; its routes are skipped",
            ),
        )
    grpc = is_grpc(service)
    path = meta.get(META_PATH)
    if path is not None and not grpc and (not path.startswith("/") or re.search(r"\s", path)):
        return Rendered(
            (),
            (
                f"{what}: Meta {META_PATH}={path!r} must be an absolute path starting with '/'; "
                "its routes are skipped",
            ),
        )
    rule: dict[str, Any] = {"backendRefs": [{"name": backend, "port": service.ports[0].port}]}
    if path not in (None, "/") and not grpc:
        rule = {"matches": [{"path": {"type": "PathPrefix", "value": path}}], **rule}
    kind = "GRPCRoute" if grpc else "HTTPRoute"
    routes = []
    for gateway in chosen:
        annotations = {
            OWNER_ANNOTATION: owner,
            SERVICE_ANNOTATION: service.name,
            SOURCES_ANNOTATION: ",".join(service.sources),
        }
        body = {
            "apiVersion": API_VERSION,
            "kind": kind,
            "metadata": {
                "name": route_name(backend, gateway.name),
                "namespace": service.namespace,
                "labels": {MANAGED_BY: MANAGER, NAME_LABEL: backend},
                "annotations": annotations,
            },
            "spec": {
                "parentRefs": [
                    {
                        "name": gateway.name,
                        "namespace": gateway.namespace,
                        "sectionName": gateway.listener,
                    }
                ],
                "hostnames": list(hostnames),
                "rules": [rule],
            },
        }
        routes.append(Route(kind, body))
    return Rendered(tuple(routes), ())


# --- comparing with live routes ---------------------------------------------


def defaulted_spec(kind: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """``spec`` with the defaults the Gateway API CRDs fill in (recording 01)."""
    out: dict[str, Any] = {"hostnames": list(spec.get("hostnames") or [])}
    out["parentRefs"] = [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", **ref}
        for ref in spec.get("parentRefs") or []
    ]
    rules = []
    for rule in spec.get("rules") or []:
        item = dict(rule)
        item["backendRefs"] = [
            {"group": "", "kind": "Service", "weight": 1, **ref}
            for ref in rule.get("backendRefs") or []
        ]
        if kind == "HTTPRoute" and not item.get("matches"):
            item["matches"] = [{"path": {"type": "PathPrefix", "value": "/"}}]
        rules.append(item)
    out["rules"] = rules
    return out


def differs(want: Route, live: Mapping[str, Any] | None) -> bool:
    """Whether applying ``want`` would change ``live`` (``None``: absent)."""
    if live is None:
        return True
    meta, live_meta = want.body["metadata"], live.get("metadata") or {}
    for field in ("labels", "annotations"):
        have = live_meta.get(field) or {}
        if any(have.get(k) != v for k, v in meta[field].items()):
            return True
    live_spec = live.get("spec") or {}
    return defaulted_spec(want.kind, want.body["spec"]) != defaulted_spec(
        want.kind, {k: live_spec.get(k) for k in ("hostnames", "parentRefs", "rules")}
    )


def service_name_of(obj: Mapping[str, Any]) -> str:
    """The desired service a route of ours (or of the Go version) stands for."""
    meta = obj.get("metadata") or {}
    return str(
        (meta.get("annotations") or {}).get(SERVICE_ANNOTATION)
        or (meta.get("labels") or {}).get(NAME_LABEL)
        or ""
    )
