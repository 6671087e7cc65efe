"""What the API server would refuse in a desired service: endpoint addresses no
EndpointSlice takes (:func:`address_check`, skipped per endpoint) and Service ports it rejects
(:func:`validate`, the whole service skipped).  Pure; mirrors kube-apiserver's validation."""

from __future__ import annotations

import ipaddress
import re

from consul_sync.model import DesiredService

PROTOCOLS = ("TCP", "UDP", "SCTP")

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_FQDN = re.compile(
    r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)+"
)


_DOTTED_QUAD = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+")


def _ip_refusal(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why ``ValidateEndpointIP`` (k8s ``pkg/apis/core/validation``, used by
    EndpointSlice validation) refuses ``ip``: Go's ``IsUnspecified``,
    ``IsLoopback``, ``IsLinkLocalUnicast``, ``IsLinkLocalMulticast``, the
    IPv4 tests applying to IPv4-mapped IPv6 addresses too."""
    v4 = ip if isinstance(ip, ipaddress.IPv4Address) else ip.ipv4_mapped
    packed = (v4 or ip).packed
    if int(v4 or ip) == 0:
        return "unspecified (0.0.0.0, ::)"
    if (v4 is not None and packed[0] == 127) or (v4 is None and int(ip) == 1):
        return "in the loopback range (127.0.0.0/8, ::1/128)"
    if (v4 is not None and packed[:2] == b"\xa9\xfe") or (
        v4 is None and packed[0] == 0xFE and packed[1] & 0xC0 == 0x80
    ):
        return "in the link-local range (169.254.0.0/16, fe80::/10)"
    # IPv6: multicast of link-local scope whatever the flags (ff02::/16,
    # ff12::/16, ...); the API's message says "ff02::/10".
    if (v4 is not None and packed[:3] == b"\xe0\x00\x00") or (
        v4 is None and packed[0] == 0xFF and packed[1] & 0x0F == 0x02
    ):
        return "in the link-local multicast range (224.0.0.0/24, ffX2::/16)"
    return None


def address_check(address: str) -> tuple[str | None, str]:
    """The EndpointSlice address type of ``address`` (``IPv4``, ``IPv6``,
    ``FQDN``) and ``""``, or ``None`` and why the API server would refuse it
    in any EndpointSlice (kube-apiserver's validation, see
    :func:`_ip_refusal`), or why it must not be written anyway."""
    if _DOTTED_QUAD.fullmatch(address):
        octets = address.split(".")
        if any(int(o) > 255 for o in octets):
            return None, "not a valid IPv4 address (Kubernetes would refuse it)"
        if any(len(o) > 1 and o.startswith("0") for o in octets):
            # Go's ParseIP of Kubernetes <= 1.29 reads them as decimal, other
            # tools as octal; newer API servers refuse them.
            return None, (
                "an IPv4 address with leading zeros (ambiguous: decimal or octal; "
                "newer Kubernetes versions refuse it)"
            )
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        if "%" in address and ":" in address:
            return None, "a zone-scoped IPv6 address (Kubernetes refuses a zone)"
        if _FQDN.fullmatch(address.lower().removesuffix(".")):
            return "FQDN", ""
        return None, "neither an IP address nor a fully qualified hostname Kubernetes accepts"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id is not None:
            return None, "a zone-scoped IPv6 address (Kubernetes refuses a zone)"
        if ip.ipv4_mapped is not None and not _ip_refusal(ip):
            return None, (
                "an IPv4-mapped IPv6 address (Kubernetes refuses it in an IPv6 slice; "
                "register the IPv4 address)"
            )
    refusal = _ip_refusal(ip)
    if refusal:
        return None, f"Kubernetes refuses endpoint addresses that are {refusal}"
    return ("IPv6" if isinstance(ip, ipaddress.IPv6Address) else "IPv4"), ""


def address_type(address: str) -> str | None:
    """``IPv4``, ``IPv6``, ``FQDN``, or ``None`` for something the API server
    would refuse in any EndpointSlice (see :func:`address_check`)."""
    return address_check(address)[0]


def validate(service: DesiredService) -> list[str]:
    """What the API server would reject in the Service (the EndpointSlice
    problems -- bad addresses -- are skipped per endpoint instead)."""
    problems = []
    names: set[str] = set()
    for index, port in enumerate(service.ports):
        where = f"port {index} ({port.name or 'unnamed'})"
        if not 1 <= port.port <= 65535:
            problems.append(f"{where}: number {port.port} is not between 1 and 65535")
        if port.protocol not in PROTOCOLS:
            problems.append(f"{where}: protocol {port.protocol!r} is not TCP, UDP or SCTP")
        if port.name:
            if len(port.name) > 63 or not _DNS1123_LABEL.fullmatch(port.name):
                problems.append(
                    f"{where}: name {port.name!r} is not a lowercase RFC 1123 label "
                    "(lowercase letters, digits and '-', at most 63)"
                )
            if port.name in names:
                problems.append(f"{where}: name {port.name!r} is used twice")
            names.add(port.name)
        elif len(service.ports) > 1:
            problems.append(f"{where}: a service with several ports needs a name for each")
    for endpoint in service.endpoints:
        if endpoint.port is not None and not 1 <= endpoint.port <= 65535:
            problems.append(
                f"endpoint {endpoint.address}: port {endpoint.port} is not between 1 and 65535"
            )
    return problems
