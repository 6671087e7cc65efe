"""A Kubernetes API server test double that answers real HTTP on loopback.

``KubeDouble`` serves what consul-sync's Kubernetes and Gateway sinks ask of a kube-apiserver
(v1.24), closely enough that the official ``kubernetes`` Python client talks to it unchanged::

    with KubeDouble() as kube:
        api = kubernetes.client.ApiClient(kubernetes.client.Configuration(host=kube.url))
        kubernetes.client.CoreV1Api(api).list_namespaced_service("default")

Where a recording from a real server exists (``tests/fixtures/kubernetes`` 01-43,
``tests/fixtures/gateway``) the double answers with its status code and body exactly, and
``tests/fakes/test_k8s_double.py`` replays them; other texts follow the v1.24 sources.
Everything here is used by the sinks, by a test or bench that drives the double, or by a
recording's replay; what none of them used (JSON and strategic merge patches, deletecollection,
events.k8s.io/v1, field and set-based label selectors, foreground/orphan deletion and
finalizers, dryRun, generateName, NodePort/LoadBalancer/ExternalName Services, namespaces,
``/version``) is not served: such a request gets a 4xx that names it.

Why it is one file of this size: it is one server, imported as one thing by a dozen test
modules and two benches; the sections below each hold one idea, in this order.

Map (section: what it is, and who needs it)
-------------------------------------------
* Go-flavoured encoding, errors, field errors: ``Status`` bodies and 422 ``causes`` texts
  byte for byte as the Go server writes them (recordings 05-17, 25, 30-34, 38-42).
* Validation primitives, Go time parsing: DNS-1035/1123 names, port names, IPs, labels,
  annotations, owner references (the texts the sinks' error handling reads); ``MicroTime``
  needing six fractional digits (the leader's Lease ``renewTime``).
* Schema: the Go structs as far as decoding (unknown fields dropped, apply rejects them,
  wrong JSON types answer 400), Go field order/omitempty and structured merge need them.
* Structured merge -- the part the sink depends on most (server-side apply of every Service
  and EndpointSlice), checked against recordings 21-29, 31 and 43 with managedFields:
  ownership per manager and operation (``Apply`` and ``Update`` of one manager differ);
  list-maps keyed like the real schema (Service ports by port+protocol: a changed port is
  another element, 25p2-25p4), atomic lists (EndpointSlice ``endpoints``/``ports``, 27-28)
  and atomic list items (``ownerReferences``, 27); a field the applier stops applying is
  removed unless another manager owns it (22, 24), and an element it owned as ``.`` goes
  whole, even a field another manager owns inside it (25q3); equal values are co-owned
  (31); an Update (merge patch, PUT, POST) takes fields without conflict (23, 25a, 31a);
  apply without force on a field another manager owns answers 409 with the real message
  and causes (25), ``force`` takes it over (26); an apply that changes nothing writes
  nothing (same resourceVersion and managedFields time, 24, 29, 29b).
* Resource types: Services, EndpointSlices, Leases (leader election), core/v1 Events (both
  sinks write them) and, with ``gateway_api=True``, HTTPRoutes/GRPCRoutes (Gateway sink);
  the discovery documents the Gateway sink reads and recordings 40a/40b and gateway 08-10
  show.
* Per-kind strategies: defaulting, cluster-IP allocation and the dual-stack fields of a
  headless Service as recorded (21, 31a), validation with the real messages (ports,
  1000-endpoint limit, address types, immutable clusterIP 31b, Lease and Event rules, the
  routes' CEL rules from the gateway recordings).
* Selectors: equality-based label selectors, all the sinks and tests send.
* Request/response plumbing and the server: verbs get, list (``limit``/``continue`` with the
  real token and ``remainingItemCount`` rule, 35-36c), watch, create (POST: Events, the
  Lease, 30/39), update (PUT with optimistic concurrency: the Lease, 38/38c), patch
  (server-side apply; JSON merge patch -- the sink hands a POST-created object's fields
  over with one, conditional on its resourceVersion, and kubectl-edit in 23/25a/25p2/25q2/
  34a), delete (uid/resourceVersion preconditions with
  the real texts, 32-34; background garbage collection of dependents by ownerReference --
  the sink relies on a Service's slices going with it).
* Watch: replay from a resourceVersion, ADDED events for ``""``/``"0"``, objects leaving a
  selector sent as DELETED, BOOKMARKs (the informers allow them; 37), ``compact(rv)`` -> 410
  Expired (the informers' relist; tests/kubernetes, tests/faults), ``timeoutSeconds``.
* Test controls: RBAC denials with the real 403 texts (``deny``/``allow``: tests/kubernetes,
  15/16/41), bearer tokens and 401 (tests/kubernetes/test_client.py), fault injection
  (``fail_next``: 429 with Retry-After, 5xx, hanging and dropped connections, faults after
  the write committed -- tests/faults, tests/kubernetes, bench/soak.py), ``hold_watches``/
  ``release_watches`` (tests/faults), ``set_status`` (a Gateway's verdict: tests/gateway),
  ``stop()``/``start()`` on the same port with the state kept (an API server restart in
  front of the same etcd: tests/faults, bench/soak.py), a request log (``exchanges``,
  ``writes()``, ``count()``) that tests and benches count writes with.

Deliberate differences from a real API server
---------------------------------------------
* Namespaces exist implicitly and are not served as objects.
* Lists always answer from the latest state: ``resourceVersion``/``resourceVersionMatch`` on
  a list are ignored and ``continue`` pages through the current state, not a snapshot.
* Garbage collection runs synchronously inside the delete request (the real collector runs a
  moment later); only background propagation is served.
* The watch history is unbounded until ``compact()`` trims it; the real watch cache keeps a
  bounded window and etcd compacts every five minutes.
* Subresources (``/status``, ``/proxy``) are not served; Service ``status`` writes through
  the main resource are ignored as on the real server.
* ``metadata.managedFields`` sent with a create is recomputed rather than honoured (updates
  and patches do honour it); Update managers are never folded into "ancient-changes".  Like
  the real server, an apply whose config differs from the stored object only in
  server-defaulted fields inside an atomic list (an endpoint without ``conditions``)
  refreshes the applier's managedFields time, so the resourceVersion moves when the
  clock's second has changed.
* Texts no recording covers (apply schema errors answered 500 "failed to create typed patch
  object", decode errors) follow the v1.24 sources as closely as could be established.
* Only JSON is spoken (apply bodies too: JSON is YAML, and the clients send JSON); no
  protobuf, no table output.
* Faults match the URL path (without query) by prefix; each matching request consumes one.

Public API
----------
``KubeDouble(*, host, port, user, tokens, bookmark_interval, clock, gateway_api)``;
``url``/``port``/``running``; ``start()``/``stop()`` (context manager); ``get``/``list``/
``create``/``apply``/``update``/``delete``/``set_status`` (direct access, same semantics as
the HTTP verbs, raising ``ApiError``); ``resource_version``; ``compact(rv)``;
``send_bookmarks()``; ``hold_watches()``/``release_watches()``; ``deny``/``allow``;
``fail_next(...) -> Fault``/``clear_faults()``; ``request_log`` (``LoggedRequest``), ``exchanges``
(``Exchange``), ``writes()``, ``count(verb, resource)``, ``reset_log()``;
``active_watches``/``wait_for_watches(n)``.
"""

from __future__ import annotations

import base64
import bisect
import builtins
import calendar
import contextlib
import copy
import ipaddress
import json
import re
import select
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, NamedTuple, cast
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = [
    "ApiError",
    "Exchange",
    "Fault",
    "KubeDouble",
    "LoggedRequest",
]

Obj = dict[str, Any]
FieldPath = tuple[str, ...]

NAMESPACE_MISMATCH_MESSAGE = (
    "the namespace of the provided object does not match the namespace sent on the request"
)
OPTIMISTIC_LOCK_MESSAGE = (
    "the object has been modified; please apply your changes to the latest version and try again"
)

# ---------------------------------------------------------------------------------------------
# Go-flavoured encoding helpers
# ---------------------------------------------------------------------------------------------

_GO_JSON_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


def go_json(value: Any) -> bytes:
    """Encode like Go's encoding/json: compact, UTF-8, HTML characters escaped."""
    return (
        json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        .translate(_GO_JSON_ESCAPES)
        .encode()
    )


_GO_QUOTE_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    "\\": "\\\\",
    '"': '\\"',
}


def go_quote(text: str) -> str:
    """Quote like Go's ``%q`` (strconv.Quote)."""
    out = ['"']
    for ch in text:
        if ch in _GO_QUOTE_ESCAPES:
            out.append(_GO_QUOTE_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        elif not ch.isprintable():
            out.append(f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _now() -> datetime:
    return datetime.now(UTC)


def format_time(moment: datetime) -> str:
    """metav1.Time wire format (RFC 3339, seconds, UTC)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_micro_time(moment: datetime) -> str:
    """metav1.MicroTime wire format (RFC 3339 with exactly six fractional digits, UTC)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


class ApiError(Exception):
    """An error answer: a ``metav1.Status`` body (or a plain-text body) with its code."""

    def __init__(
        self,
        status: Obj,
        *,
        headers: Mapping[str, str] | None = None,
        text: str | None = None,
        code: int | None = None,
    ) -> None:
        super().__init__(status.get("message", text or ""))
        self.status = status
        self.code = int(code if code is not None else status.get("code", 500))
        self.headers: dict[str, str] = dict(headers or {})
        self.text = text


def status_details(
    *,
    name: str = "",
    group: str = "",
    kind: str = "",
    uid: str = "",
    causes: list[Obj] | None = None,
    retry_after: int = 0,
) -> Obj:
    """A ``StatusDetails`` object with Go's field order and omitempty rules."""
    details: Obj = {}
    if name:
        details["name"] = name
    if group:
        details["group"] = group
    if kind:
        details["kind"] = kind
    if uid:
        details["uid"] = uid
    if causes:
        details["causes"] = causes
    if retry_after:
        details["retryAfterSeconds"] = retry_after
    return details


def status_failure(code: int, reason: str, message: str, details: Obj | None = None) -> Obj:
    """A failure ``Status`` body (field order as the Go struct)."""
    body: Obj = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure"}
    if message:
        body["message"] = message
    if reason:
        body["reason"] = reason
    if details is not None:
        body["details"] = details
    body["code"] = code
    return body


def bad_request(message: str) -> ApiError:
    return ApiError(status_failure(400, "BadRequest", message))


def internal_error(message: str) -> ApiError:
    return ApiError(
        status_failure(
            500,
            "InternalError",
            f"Internal error occurred: {message}",
            status_details(causes=[{"message": message}]),
        )
    )


def unknown_error(code: int, message: str) -> ApiError:
    """An error the Go server did not map to a Status reason (``ErrorToAPIStatus`` default)."""
    return ApiError(status_failure(code, "", message))


def not_found_path() -> ApiError:
    return ApiError(
        status_failure(404, "NotFound", "the server could not find the requested resource", {})
    )


def method_not_allowed() -> ApiError:
    return ApiError(
        status_failure(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
            {},
        )
    )


def expired(message: str) -> ApiError:
    return ApiError(status_failure(410, "Expired", message))


# ---------------------------------------------------------------------------------------------
# Field errors (k8s.io/apimachinery/pkg/util/validation/field)
# ---------------------------------------------------------------------------------------------


class GoRepr(str):
    """A bad value that is printed verbatim (Go's ``%#v`` of a composite value)."""

    __slots__ = ()


_FIELD_ERROR_TEXT = {
    "FieldValueNotFound": "Not found",
    "FieldValueRequired": "Required value",
    "FieldValueDuplicate": "Duplicate value",
    "FieldValueInvalid": "Invalid value",
    "FieldValueNotSupported": "Unsupported value",
    "FieldValueForbidden": "Forbidden",
    "FieldValueTooLong": "Too long",
    "FieldValueTooMany": "Too many",
    "InternalError": "Internal error",
}
_VALUELESS = frozenset(
    {"FieldValueRequired", "FieldValueForbidden", "FieldValueTooLong", "InternalError"}
)


def _go_value(value: Any) -> str:
    if value is None:
        return go_quote("null")
    if isinstance(value, GoRepr):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return go_quote(value)
    return go_json(value).decode()


@dataclass(frozen=True)
class FieldError:
    """One ``field.Error``: ``reason`` is the cause type (``FieldValueInvalid`` ...)."""

    reason: str
    field: str
    value: Any = None
    detail: str = ""

    def body(self) -> str:
        text = _FIELD_ERROR_TEXT[self.reason]
        if self.reason not in _VALUELESS:
            text = f"{text}: {_go_value(self.value)}"
        if self.detail:
            text += f": {self.detail}"
        return text

    def __str__(self) -> str:
        return f"{self.field}: {self.body()}"

    def cause(self) -> Obj:
        out: Obj = {"reason": self.reason, "message": self.body()}
        if self.field:
            out["field"] = self.field
        return out


def f_invalid(path: str, value: Any, detail: str) -> FieldError:
    return FieldError("FieldValueInvalid", path, value, detail)


def f_required(path: str, detail: str = "") -> FieldError:
    return FieldError("FieldValueRequired", path, "", detail)


def f_duplicate(path: str, value: Any) -> FieldError:
    return FieldError("FieldValueDuplicate", path, value)


def f_forbidden(path: str, detail: str) -> FieldError:
    return FieldError("FieldValueForbidden", path, "", detail)


def f_not_supported(path: str, value: Any, valid: Iterable[str]) -> FieldError:
    quoted = [go_quote(v) for v in valid]
    detail = ("supported values: " + ", ".join(quoted)) if quoted else ""
    return FieldError("FieldValueNotSupported", path, value, detail)


def f_too_many(path: str, actual: int, maximum: int) -> FieldError:
    return FieldError("FieldValueTooMany", path, actual, f"must have at most {maximum} items")


def f_too_long(path: str, maximum: int) -> FieldError:
    return FieldError("FieldValueTooLong", path, "", f"must have at most {maximum} bytes")


def aggregate_message(errors: Iterable[object]) -> str:
    """``utilerrors.NewAggregate(...).Error()``: de-duplicated, bracketed when several."""
    seen: list[str] = []
    for err in errors:
        text = str(err)
        if text not in seen:
            seen.append(text)
    if len(seen) == 1:
        return seen[0]
    return "[" + ", ".join(seen) + "]"


def invalid_error(kind: str, group: str, name: str, errors: list[FieldError]) -> ApiError:
    """``errors.NewInvalid``: 422 with one cause per field error."""
    group_kind = f"{kind}.{group}" if group else kind
    message = f"{group_kind} {go_quote(name)} is invalid"
    if errors:
        message += ": " + aggregate_message(errors)
    details = status_details(name=name, group=group, kind=kind, causes=[e.cause() for e in errors])
    if not errors:
        details["causes"] = []
    return ApiError(status_failure(422, "Invalid", message, details))


# ---------------------------------------------------------------------------------------------
# Validation primitives (k8s.io/apimachinery/pkg/util/validation)
# ---------------------------------------------------------------------------------------------

_DNS1123_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN_FMT = _DNS1123_LABEL_FMT + "(\\." + _DNS1123_LABEL_FMT + ")*"
_DNS1035_LABEL_FMT = "[a-z]([-a-z0-9]*[a-z0-9])?"
_QUALIFIED_NAME_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_VALUE_FMT = "(" + _QUALIFIED_NAME_FMT + ")?"

_DNS1123_LABEL_RE = re.compile(_DNS1123_LABEL_FMT)
_DNS1123_SUBDOMAIN_RE = re.compile(_DNS1123_SUBDOMAIN_FMT)
_DNS1035_LABEL_RE = re.compile(_DNS1035_LABEL_FMT)
_QUALIFIED_NAME_RE = re.compile(_QUALIFIED_NAME_FMT)
_LABEL_VALUE_RE = re.compile(_LABEL_VALUE_FMT)
_PORT_NAME_CHARSET_RE = re.compile("[-a-z0-9]+")
_PORT_NAME_ONE_LETTER_RE = re.compile("[a-z]")


def _regex_error(message: str, fmt: str, *examples: str) -> str:
    if not examples:
        return f"{message} (regex used for validation is '{fmt}')"
    text = message + " (e.g. "
    for index, example in enumerate(examples):
        if index > 0:
            text += " or "
        text += f"'{example}', "
    return text + f"regex used for validation is '{fmt}')"


def _max_len_error(length: int) -> str:
    return f"must be no more than {length} characters"


def is_dns1123_label(value: str) -> list[str]:
    errs: list[str] = []
    if len(value) > 63:
        errs.append(_max_len_error(63))
    if not _DNS1123_LABEL_RE.fullmatch(value):
        errs.append(
            _regex_error(
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters "
                "or '-', and must start and end with an alphanumeric character",
                _DNS1123_LABEL_FMT,
                "my-name",
                "123-abc",
            )
        )
    return errs


def is_dns1123_subdomain(value: str) -> list[str]:
    errs: list[str] = []
    if len(value) > 253:
        errs.append(_max_len_error(253))
    if not _DNS1123_SUBDOMAIN_RE.fullmatch(value):
        errs.append(
            _regex_error(
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                "characters, '-' or '.', and must start and end with an alphanumeric character",
                _DNS1123_SUBDOMAIN_FMT,
                "example.com",
            )
        )
    return errs


def is_dns1035_label(value: str) -> list[str]:
    errs: list[str] = []
    if len(value) > 63:
        errs.append(_max_len_error(63))
    if not _DNS1035_LABEL_RE.fullmatch(value):
        errs.append(
            _regex_error(
                "a DNS-1035 label must consist of lower case alphanumeric characters or '-', "
                "start with an alphabetic character, and end with an alphanumeric character",
                _DNS1035_LABEL_FMT,
                "my-name",
                "abc-123",
            )
        )
    return errs


def is_qualified_name(value: str) -> list[str]:
    errs: list[str] = []
    parts = value.split("/")
    name_error = _regex_error(
        "must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
        "with an alphanumeric character",
        _QUALIFIED_NAME_FMT,
        "MyName",
        "my.name",
        "123-abc",
    )
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            errs.append("prefix part must be non-empty")
        else:
            errs.extend("prefix part " + msg for msg in is_dns1123_subdomain(prefix))
    else:
        return [
            "a qualified name "
            + name_error
            + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
        ]
    if not name:
        errs.append("name part must be non-empty")
    elif len(name) > 63:
        errs.append("name part " + _max_len_error(63))
    if not _QUALIFIED_NAME_RE.fullmatch(name):
        errs.append("name part " + name_error)
    return errs


def is_valid_label_value(value: str) -> list[str]:
    errs: list[str] = []
    if len(value) > 63:
        errs.append(_max_len_error(63))
    if not _LABEL_VALUE_RE.fullmatch(value):
        errs.append(
            _regex_error(
                "a valid label must be an empty string or consist of alphanumeric characters, "
                "'-', '_' or '.', and must start and end with an alphanumeric character",
                _LABEL_VALUE_FMT,
                "MyValue",
                "my_value",
                "12345",
            )
        )
    return errs


def is_valid_port_num(port: int) -> list[str]:
    if 1 <= port <= 65535:
        return []
    return ["must be between 1 and 65535, inclusive"]


def is_valid_port_name(port: str) -> list[str]:
    """IANA_SVC_NAME (used for named target ports)."""
    errs: list[str] = []
    if len(port) > 15:
        errs.append(_max_len_error(15))
    if not _PORT_NAME_CHARSET_RE.fullmatch(port):
        errs.append("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
    if not _PORT_NAME_ONE_LETTER_RE.search(port):
        errs.append("must contain at least one letter or number (a-z, 0-9)")
    if "--" in port:
        errs.append("must not contain consecutive hyphens")
    if port and (port[0] == "-" or port[-1] == "-"):
        errs.append("must not begin or end with a hyphen")
    return errs


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_IPV4_SLOPPY_RE = re.compile(r"([0-9]+)\.([0-9]+)\.([0-9]+)\.([0-9]+)")


def parse_ip_sloppy(text: str) -> IPAddress | None:
    """``netutils.ParseIPSloppy``: Go 1.16 ``net.ParseIP`` (leading zeros allowed)."""
    if ":" in text:
        if "%" in text:
            return None
        try:
            return ipaddress.IPv6Address(text)
        except ValueError:
            return None
    match = _IPV4_SLOPPY_RE.fullmatch(text)
    if not match:
        return None
    octets = [int(part) for part in match.groups()]
    if any(octet > 255 for octet in octets):
        return None
    return ipaddress.IPv4Address(".".join(str(o) for o in octets))


def _to4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    if isinstance(ip, ipaddress.IPv4Address):
        return ip
    return ip.ipv4_mapped


def validate_ipv4_address(path: str, value: str) -> list[FieldError]:
    ip = parse_ip_sloppy(value)
    if ip is None or _to4(ip) is None:
        return [f_invalid(path, value, "must be a valid IPv4 address")]
    return []


def validate_ipv6_address(path: str, value: str) -> list[FieldError]:
    ip = parse_ip_sloppy(value)
    if ip is None or _to4(ip) is not None:
        return [f_invalid(path, value, "must be a valid IPv6 address")]
    return []


def validate_endpoint_ip(value: str, path: str) -> list[FieldError]:
    """``ValidateEndpointIP`` (v1.24): no unspecified, loopback or link-local addresses."""
    ip = parse_ip_sloppy(value)
    if ip is None:
        return [f_invalid(path, value, "must be a valid IP address")]
    errs: list[FieldError] = []
    v4 = _to4(ip)
    packed = ip.packed
    unspecified = (v4 is not None and int(v4) == 0) or (v4 is None and int(ip) == 0)
    loopback = (v4.packed[0] == 127) if v4 is not None else int(ip) == 1
    if v4 is not None:
        link_local = v4.packed[0] == 169 and v4.packed[1] == 254
        link_local_multicast = v4.packed[:3] == b"\xe0\x00\x00"
    else:
        link_local = packed[0] == 0xFE and (packed[1] & 0xC0) == 0x80
        link_local_multicast = packed[0] == 0xFF and (packed[1] & 0x0F) == 0x02
    if unspecified:
        errs.append(f_invalid(path, value, f"may not be unspecified ({value})"))
    if loopback:
        errs.append(
            f_invalid(path, value, "may not be in the loopback range (127.0.0.0/8, ::1/128)")
        )
    if link_local:
        errs.append(
            f_invalid(path, value, "may not be in the link-local range (169.254.0.0/16, fe80::/10)")
        )
    if link_local_multicast:
        errs.append(
            f_invalid(
                path,
                value,
                "may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)",
            )
        )
    return errs


def validate_fqdn(path: str, name: str) -> list[FieldError]:
    """``IsFullyQualifiedDomainName``."""
    if not name:
        return [f_required(path)]
    name = name.removesuffix(".")
    errs = is_dns1123_subdomain(name)
    if errs:
        return [f_invalid(path, name, ",".join(errs))]
    if len(name.split(".")) < 2:
        return [
            f_invalid(path, name, "should be a domain with at least two segments separated by dots")
        ]
    for label in name.split("."):
        errs = is_dns1123_label(label)
        if errs:
            return [f_invalid(path, label, ",".join(errs))]
    return []


def validate_labels(labels: Mapping[str, Any], path: str) -> list[FieldError]:
    errs: list[FieldError] = []
    for key in sorted(labels):
        errs.extend(f_invalid(path, key, msg) for msg in is_qualified_name(key))
        value = labels[key]
        errs.extend(f_invalid(path, value, msg) for msg in is_valid_label_value(str(value)))
    return errs


def validate_dns1123_label_field(value: str, path: str) -> list[FieldError]:
    return [f_invalid(path, value, msg) for msg in is_dns1123_label(value)]


def validate_object_meta(
    meta: Mapping[str, Any],
    name_fn: Callable[[str], list[str]],
    path: str = "metadata",
) -> list[FieldError]:
    """``ValidateObjectMeta`` for a namespaced object."""
    errs: list[FieldError] = []
    name = meta.get("name") or ""
    if not name:
        errs.append(f_required(f"{path}.name", "name or generateName is required"))
    else:
        errs.extend(f_invalid(f"{path}.name", name, msg) for msg in name_fn(name))
    namespace = meta.get("namespace") or ""
    if not namespace:
        errs.append(f_required(f"{path}.namespace"))
    else:
        errs.extend(
            f_invalid(f"{path}.namespace", namespace, msg) for msg in is_dns1123_label(namespace)
        )
    generation = meta.get("generation") or 0
    if generation < 0:
        errs.append(
            f_invalid(f"{path}.generation", generation, "must be greater than or equal to 0")
        )
    errs.extend(validate_labels(meta.get("labels") or {}, f"{path}.labels"))
    annotations = meta.get("annotations") or {}
    total = 0
    for key in sorted(annotations):
        errs.extend(
            f_invalid(f"{path}.annotations", key, msg) for msg in is_qualified_name(key.lower())
        )
        total += len(key) + len(str(annotations[key]))
    if total > 256 * 1024:
        errs.append(f_too_long(f"{path}.annotations", 256 * 1024))
    first_controller = ""
    for ref in meta.get("ownerReferences") or []:
        ref_path = f"{path}.ownerReferences"
        api_version = ref.get("apiVersion") or ""
        version = api_version.split("/")[-1] if api_version else ""
        if not version:
            errs.append(
                f_invalid(f"{ref_path}.apiVersion", api_version, "version must not be empty")
            )
        if not ref.get("kind"):
            errs.append(
                f_invalid(f"{ref_path}.kind", ref.get("kind") or "", "kind must not be empty")
            )
        if not ref.get("name"):
            errs.append(
                f_invalid(f"{ref_path}.name", ref.get("name") or "", "name must not be empty")
            )
        if not ref.get("uid"):
            errs.append(f_invalid(f"{ref_path}.uid", ref.get("uid") or "", "uid must not be empty"))
        if ref.get("controller"):
            current = f"{ref.get('kind', '')}/{ref.get('name', '')}"
            if first_controller:
                errs.append(
                    f_invalid(
                        ref_path,
                        first_controller,
                        'Only one reference can have Controller set to true. Found "true" in '
                        f"references for {first_controller} and {current}",
                    )
                )
            else:
                first_controller = current
    return errs


# ---------------------------------------------------------------------------------------------
# Go time parsing (time.Parse with RFC3339 / RFC3339Micro layouts, with Go's error texts)
# ---------------------------------------------------------------------------------------------


class DecodeError(Exception):
    """A request body that the Go decoder would reject."""


_RFC3339 = "2006-01-02T15:04:05Z07:00"
_RFC3339_MICRO = "2006-01-02T15:04:05.000000Z07:00"


def _getnum(value: str, fixed: bool) -> tuple[int, str] | None:
    if not value or not value[0].isdigit() or not value[0].isascii():
        return None
    if len(value) < 2 or not (value[1].isdigit() and value[1].isascii()):
        if fixed:
            return None
        return int(value[0]), value[1:]
    return int(value[:2]), value[2:]


def parse_go_time(text: str, micro: bool) -> datetime:
    """``time.Parse(RFC3339[Micro], text)`` raising DecodeError with Go's message."""
    layout = _RFC3339_MICRO if micro else _RFC3339
    chunks: list[tuple[str, str]] = [
        ("", "2006"),
        ("-", "01"),
        ("-", "02"),
        ("T", "15"),
        (":", "04"),
        (":", "05"),
    ]
    if micro:
        chunks.append(("", ".000000"))
    chunks.append(("", "Z07:00"))

    def fail(layout_elem: str, value_elem: str, message: str = "") -> DecodeError:
        if message:
            return DecodeError(f"parsing time {go_quote(text)}{message}")
        return DecodeError(
            f"parsing time {go_quote(text)} as {go_quote(layout)}: cannot parse "
            f"{go_quote(value_elem)} as {go_quote(layout_elem)}"
        )

    value = text
    parts: dict[str, int] = {}
    nanos = 0
    offset = 0
    for prefix, std in chunks:
        for ch in prefix:
            if not value or value[0] != ch:
                raise fail(prefix, value)
            value = value[1:]
        hold = value
        range_error = ""
        if std == "2006":
            if len(value) < 4 or not value[:4].isdigit():
                raise fail(std, hold)
            parts["year"], value = int(value[:4]), value[4:]
        elif std in ("01", "02", "04", "05", "15"):
            got = _getnum(value, fixed=std != "15")
            if got is None:
                raise fail(std, hold)
            number, value = got
            limits = {"01": (1, 12, "month"), "02": (0, 31, "day"), "15": (0, 23, "hour")}
            low, high, unit = limits.get(std, (0, 59, "minute" if std == "04" else "second"))
            if not low <= number <= high:
                range_error = unit
            parts[unit] = number
            if std == "05" and not micro and value[:1] in (".", ",") and value[1:2].isdigit():
                digits = 2
                while digits < len(value) and value[digits].isdigit():
                    digits += 1
                nanos = int((value[1:digits] + "000000000")[:9])
                value = value[digits:]
        elif std == ".000000":
            if len(value) < 7 or value[0] not in ".," or not value[1:7].isdigit():
                raise fail(std, hold)
            nanos = int(value[1:7]) * 1000
            value = value[7:]
        else:  # Z07:00
            if value.startswith("Z"):
                value = value[1:]
            else:
                if len(value) < 6 or value[3] != ":":
                    raise fail(std, hold)
                sign, hours, minutes = value[0], value[1:3], value[4:6]
                if not (hours.isdigit() and minutes.isdigit()) or sign not in "+-":
                    raise fail(std, hold)
                offset = (int(hours) * 60 + int(minutes)) * 60 * (1 if sign == "+" else -1)
                value = value[6:]
        if range_error:
            raise fail(std, value, f": {range_error} out of range")
    if value:
        raise fail("", value, f": extra text: {go_quote(value)}")
    year, month, day = parts["year"], parts["month"], parts["day"]
    if day < 1 or day > calendar.monthrange(year, month)[1]:
        raise fail("", value, ": day out of range")
    moment = datetime(
        year,
        month,
        day,
        parts["hour"],
        parts["minute"],
        parts["second"],
        nanos // 1000,
        tzinfo=timezone(timedelta(seconds=offset)),
    )
    return moment.astimezone(UTC)


# ---------------------------------------------------------------------------------------------
# Schema: enough of the OpenAPI/Go structure for decoding, shaping and structured merge
# ---------------------------------------------------------------------------------------------

Absent = Literal["omit", "null", "zero"]
ScalarType = Literal["string", "int32", "int64", "bool", "intstr", "time", "microtime", "any"]


@dataclass(frozen=True, eq=False)
class Scalar:
    """A leaf.  ``omit_zero``: a non-pointer ``omitempty`` field (zero value not printed)."""

    typ: ScalarType
    omit_zero: bool = False
    absent: Absent = "omit"


@dataclass(frozen=True, eq=False)
class Struct:
    """A Go struct: fields in declaration order (the JSON output order)."""

    go_name: str
    fields: dict[str, Node]
    absent: Absent = "omit"
    pkg: str = "v1"


@dataclass(frozen=True, eq=False)
class MapOf:
    """A granular ``map[string]T`` (labels, annotations)."""

    elem: Node
    absent: Absent = "omit"


@dataclass(frozen=True, eq=False)
class AssocList:
    """A ``listType=map`` list; items are identified by their key fields.

    ``atomic_items``: each item is owned and replaced as a whole (``structType=atomic``, as
    ``OwnerReference``: recording 27 shows ``k:{"uid":...}: {}``).
    """

    keys: tuple[str, ...]
    item: Struct
    key_defaults: tuple[tuple[str, Any], ...] = ()
    absent: Absent = "omit"
    atomic_items: bool = False


@dataclass(frozen=True, eq=False)
class SetList:
    """A ``listType=set`` list of scalars."""

    elem: Scalar
    absent: Absent = "omit"


@dataclass(frozen=True, eq=False)
class AtomicList:
    """A list replaced as a whole (``listType=atomic``)."""

    item: Node
    absent: Absent = "omit"


@dataclass(frozen=True, eq=False)
class Atomic:
    """A struct or map replaced as a whole."""

    inner: Node
    absent: Absent = "omit"


Node = Scalar | Struct | MapOf | AssocList | SetList | AtomicList | Atomic
_LEAF_NODES = (Scalar, Atomic, AtomicList)

S = Scalar("string", omit_zero=True)  # string `json:",omitempty"`
SP = Scalar("string")  # *string
SR = Scalar("string", absent="zero")  # string without omitempty
I32 = Scalar("int32", omit_zero=True)
I32P = Scalar("int32")
I32R = Scalar("int32", absent="zero")
I64 = Scalar("int64", omit_zero=True)
I64P = Scalar("int64")
B = Scalar("bool", omit_zero=True)
BP = Scalar("bool")
TIME = Scalar("time", absent="null")  # metav1.Time (struct: printed as null when zero)
TIME_P = Scalar("time")  # *metav1.Time
MICRO = Scalar("microtime", absent="null")
MICRO_P = Scalar("microtime")
ANY = Scalar("any")

OWNER_REFERENCE = Struct(
    "OwnerReference",
    {
        "apiVersion": SR,
        "kind": SR,
        "name": SR,
        "uid": SR,
        "controller": BP,
        "blockOwnerDeletion": BP,
    },
)
MANAGED_FIELDS_ENTRY = Struct(
    "ManagedFieldsEntry",
    {
        "manager": S,
        "operation": S,
        "apiVersion": S,
        "time": TIME_P,
        "fieldsType": S,
        "fieldsV1": ANY,
        "subresource": S,
    },
)
OBJECT_META = Struct(
    "ObjectMeta",
    {
        "name": S,
        "generateName": S,
        "namespace": S,
        "selfLink": S,
        "uid": S,
        "resourceVersion": S,
        "generation": I64,
        "creationTimestamp": TIME,
        "deletionTimestamp": TIME_P,
        "deletionGracePeriodSeconds": I64P,
        "labels": MapOf(S),
        "annotations": MapOf(S),
        "ownerReferences": AssocList(("uid",), OWNER_REFERENCE, atomic_items=True),
        "finalizers": SetList(S),
        "managedFields": AtomicList(MANAGED_FIELDS_ENTRY),
    },
    absent="zero",
)
OBJECT_REFERENCE = Struct(
    "ObjectReference",
    {
        "kind": S,
        "namespace": S,
        "name": S,
        "uid": S,
        "apiVersion": S,
        "resourceVersion": S,
        "fieldPath": S,
    },
)


def _object(go_name: str, pkg: str, fields: dict[str, Node]) -> Struct:
    return Struct(go_name, {"kind": S, "apiVersion": S, "metadata": OBJECT_META, **fields}, pkg=pkg)


SERVICE_PORT = Struct(
    "ServicePort",
    {
        "name": S,
        "protocol": S,
        "appProtocol": SP,
        "port": I32R,
        "targetPort": Scalar("intstr"),
        "nodePort": I32,
    },
)
SERVICE = _object(
    "Service",
    "v1",
    {
        "spec": Struct(
            "ServiceSpec",
            {
                "ports": AssocList(
                    ("port", "protocol"),
                    SERVICE_PORT,
                    key_defaults=(("protocol", "TCP"),),
                ),
                "selector": Atomic(MapOf(S)),
                "clusterIP": S,
                "clusterIPs": AtomicList(S),
                "type": S,
                "externalIPs": AtomicList(S),
                "sessionAffinity": S,
                "loadBalancerIP": S,
                "loadBalancerSourceRanges": AtomicList(S),
                "externalName": S,
                "externalTrafficPolicy": S,
                "healthCheckNodePort": I32,
                "publishNotReadyAddresses": B,
                "sessionAffinityConfig": Struct(
                    "SessionAffinityConfig",
                    {"clientIP": Struct("ClientIPConfig", {"timeoutSeconds": I32P})},
                ),
                "ipFamilies": AtomicList(S),
                "ipFamilyPolicy": SP,
                "allocateLoadBalancerNodePorts": BP,
                "loadBalancerClass": SP,
                "internalTrafficPolicy": SP,
            },
            absent="zero",
        ),
        "status": Atomic(
            Struct(
                "ServiceStatus",
                {
                    "loadBalancer": Struct(
                        "LoadBalancerStatus", {"ingress": AtomicList(ANY)}, absent="zero"
                    ),
                    "conditions": AtomicList(ANY),
                },
            ),
            absent="zero",
        ),
    },
)
ENDPOINT = Struct(
    "Endpoint",
    {
        "addresses": AtomicList(S, absent="null"),
        "conditions": Struct(
            "EndpointConditions", {"ready": BP, "serving": BP, "terminating": BP}, absent="zero"
        ),
        "hostname": SP,
        "targetRef": OBJECT_REFERENCE,
        "deprecatedTopology": MapOf(S),
        "nodeName": SP,
        "zone": SP,
        "hints": Struct("EndpointHints", {"forZones": AtomicList(Struct("ForZone", {"name": SR}))}),
    },
)
ENDPOINT_PORT = Struct(
    "EndpointPort", {"name": SP, "protocol": SP, "port": I32P, "appProtocol": SP}
)
ENDPOINT_SLICE = _object(
    "EndpointSlice",
    "v1",
    {
        "addressType": SR,
        "endpoints": AtomicList(ENDPOINT, absent="null"),
        "ports": AtomicList(ENDPOINT_PORT, absent="null"),
    },
)
LEASE = _object(
    "Lease",
    "v1",
    {
        "spec": Struct(
            "LeaseSpec",
            {
                "holderIdentity": SP,
                "leaseDurationSeconds": I32P,
                "acquireTime": MICRO_P,
                "renewTime": MICRO_P,
                "leaseTransitions": I32P,
            },
            absent="zero",
        )
    },
)
EVENT_SOURCE = Struct("EventSource", {"component": S, "host": S})
EVENT_SERIES = Struct("EventSeries", {"count": I32, "lastObservedTime": MICRO})
CORE_EVENT = _object(
    "Event",
    "v1",
    {
        "involvedObject": Atomic(OBJECT_REFERENCE, absent="zero"),
        "reason": S,
        "message": S,
        "source": Atomic(EVENT_SOURCE, absent="zero"),
        "firstTimestamp": TIME,
        "lastTimestamp": TIME,
        "count": I32,
        "type": S,
        "eventTime": MICRO,
        "series": Atomic(EVENT_SERIES),
        "action": S,
        "related": Atomic(OBJECT_REFERENCE),
        "reportingComponent": SR,
        "reportingInstance": SR,
    },
)


def _go_type(node: Node) -> str:
    if isinstance(node, Scalar):
        return {
            "string": "string",
            "int32": "int32",
            "int64": "int64",
            "bool": "bool",
            "intstr": "intstr.IntOrString",
            "time": "v1.Time",
            "microtime": "v1.MicroTime",
            "any": "interface {}",
        }[node.typ]
    if isinstance(node, Struct):
        return f"{node.pkg}.{node.go_name}"
    if isinstance(node, MapOf):
        return "map[string]" + _go_type(node.elem)
    if isinstance(node, Atomic):
        return _go_type(node.inner)
    if isinstance(node, AssocList):
        return "[]" + _go_type(node.item)
    if isinstance(node, SetList):
        return "[]" + _go_type(node.elem)
    return "[]" + _go_type(node.item)


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def _smd_kind(node: Node) -> str:
    if isinstance(node, Scalar):
        return {
            "string": "string",
            "int32": "numeric (int or float)",
            "int64": "numeric (int or float)",
            "bool": "boolean",
        }.get(node.typ, "string")
    if isinstance(node, Struct | MapOf):
        return "map"
    if isinstance(node, Atomic):
        return _smd_kind(node.inner)
    return "list"


@dataclass(frozen=True)
class _DecodeContext:
    apply: bool
    struct: str = ""
    json_path: str = ""
    smd_path: str = ""

    def child(self, name: str, struct: str | None = None) -> _DecodeContext:
        json_path = f"{self.json_path}.{name}" if self.json_path else name
        return _DecodeContext(
            self.apply, struct or self.struct, json_path, f"{self.smd_path}.{name}"
        )

    def item(self, label: str) -> _DecodeContext:
        return _DecodeContext(self.apply, self.struct, self.json_path, f"{self.smd_path}{label}")

    def type_error(self, value: Any, node: Node) -> DecodeError:
        if self.apply:
            return DecodeError(
                f"{self.smd_path}: expected {_smd_kind(node)}, got {_json_kind(value)}"
            )
        kind = _json_kind(value)
        if kind == "number" and isinstance(node, Scalar) and node.typ in ("int32", "int64"):
            kind = f"number {value}"
        where = f"Go struct field {self.struct}.{self.json_path}" if self.struct else "Go value"
        return DecodeError(f"json: cannot unmarshal {kind} into {where} of type {_go_type(node)}")


_INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


def _decode_scalar(value: Any, node: Scalar, ctx: _DecodeContext) -> Any:
    typ = node.typ
    if typ == "any":
        return value
    if typ == "string":
        ok = isinstance(value, str)
    elif typ in _INT_RANGES:
        low, high = _INT_RANGES[typ]
        ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    elif typ == "bool":
        ok = isinstance(value, bool)
    elif typ == "intstr":
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise DecodeError(
                f"json: cannot unmarshal {_json_kind(value)} into Go value of type int32"
            )
        return value
    else:  # time, microtime
        if not isinstance(value, str):
            raise ctx.type_error(value, node)
        moment = parse_go_time(value, micro=typ == "microtime")
        return format_micro_time(moment) if typ == "microtime" else format_time(moment)
    if not ok:
        raise ctx.type_error(value, node)
    return value


def decode_value(value: Any, node: Node, ctx: _DecodeContext) -> Any:
    """Type-check ``value`` against ``node``; drop (json) or reject (apply) unknown fields."""
    if value is None:
        return None
    if isinstance(node, Scalar):
        return _decode_scalar(value, node, ctx)
    if isinstance(node, Atomic):
        return decode_value(value, node.inner, ctx)
    if isinstance(node, Struct):
        if not isinstance(value, dict):
            raise ctx.type_error(value, node)
        out: Obj = {}
        for key, child_value in value.items():
            child = node.fields.get(key)
            if child is None:
                if ctx.apply:
                    raise DecodeError(f"{ctx.smd_path}.{key}: field not declared in schema")
                continue
            out[key] = decode_value(child_value, child, ctx.child(key, node.go_name))
        return out
    if isinstance(node, MapOf):
        if not isinstance(value, dict):
            raise ctx.type_error(value, node)
        return {
            str(k): decode_value(v, node.elem, ctx.item(f".{k}") if ctx.apply else ctx)
            for k, v in value.items()
        }
    if not isinstance(value, list):
        raise ctx.type_error(value, node)
    item_node: Node = node.elem if isinstance(node, SetList) else node.item
    items = [decode_value(v, item_node, ctx.item(f"[{i}]")) for i, v in enumerate(value)]
    if isinstance(node, AssocList) and ctx.apply:
        seen: set[str] = set()
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                continue
            for key in node.keys:
                if key not in item and key not in dict(node.key_defaults):
                    raise DecodeError(
                        f"{ctx.smd_path}[{index}]: associative list with keys has an element "
                        f'that omits key field "{key}" (and doesn\'t have default value)'
                    )
            element = key_element(item, node)
            if element in seen:
                raise DecodeError(
                    f"{ctx.smd_path}: duplicate entries for key {_element_text(element)}"
                )
            seen.add(element)
    return items


def _zero(node: Node) -> Any:
    if isinstance(node, Scalar):
        return {"string": "", "int32": 0, "int64": 0, "bool": False}.get(node.typ)
    if isinstance(node, Struct | MapOf):
        return {}
    if isinstance(node, Atomic):
        return _zero(node.inner)
    return []


def _is_zero_scalar(value: Any) -> bool:
    if isinstance(value, bool):
        return value is False
    return value == "" or (isinstance(value, int) and value == 0)


def shape(value: Any, node: Node) -> Any:
    """Normalise like a Go round trip: field order, omitempty, always-printed fields."""
    if isinstance(node, Atomic):
        return shape(value, node.inner)
    if isinstance(node, Struct):
        if not isinstance(value, dict):
            return value
        out: Obj = {}
        for key, child in node.fields.items():
            child_value = value.get(key)
            if child_value is not None:
                child_value = shape(child_value, child)
                if _omit(child_value, child):
                    child_value = None
            if child_value is None:
                if child.absent == "null":
                    out[key] = None
                elif child.absent == "zero":
                    out[key] = shape(_zero(child), child)
                continue
            out[key] = child_value
        return out
    if isinstance(node, MapOf):
        if not isinstance(value, dict):
            return value
        return {k: shape(value[k], node.elem) for k in sorted(value) if value[k] is not None}
    if isinstance(node, Scalar):
        return value
    if not isinstance(value, list):
        return value
    item_node: Node = node.elem if isinstance(node, SetList) else node.item
    return [shape(v, item_node) for v in value]


def _omit(value: Any, node: Node) -> bool:
    if isinstance(node, Scalar):
        return node.omit_zero and _is_zero_scalar(value)
    if isinstance(node, AssocList | SetList | AtomicList):
        return isinstance(value, list) and not value
    if isinstance(node, MapOf):
        return isinstance(value, dict) and not value and node.absent == "omit"
    if isinstance(node, Atomic) and isinstance(node.inner, MapOf):
        return isinstance(value, dict) and not value
    return False


# ---------------------------------------------------------------------------------------------
# Structured merge: field sets, merge, prune, compare, managedFields (sigs.k8s.io/structured-
# merge-diff semantics, reduced to what these resources need)
# ---------------------------------------------------------------------------------------------


def _compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def key_element(item: Mapping[str, Any], node: AssocList) -> str:
    defaults = dict(node.key_defaults)
    keys = {k: item.get(k, defaults.get(k)) for k in sorted(node.keys)}
    return "k:" + _compact_json(keys)


def _value_text(value: Any) -> str:
    if isinstance(value, str):
        return go_quote(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


def _element_text(element: str) -> str:
    kind, _, rest = element.partition(":")
    if kind == "f":
        return "." + rest
    if kind == "k":
        keys = json.loads(rest)
        return "[" + ",".join(f"{k}={_value_text(v)}" for k, v in keys.items()) + "]"
    if kind == "v":
        return "[=" + _value_text(json.loads(rest)) + "]"
    return f"[{rest}]"


def path_text(path: FieldPath) -> str:
    """structured-merge-diff ``Path.String()``: ``.spec.ports[port=80,protocol="TCP"].name``."""
    return "".join(_element_text(element) for element in path)


_ELEMENT_ORDER = {"f": 0, "k": 1, "v": 2, "i": 3}


def _path_sort_key(path: FieldPath) -> tuple[tuple[int, str], ...]:
    return tuple((_ELEMENT_ORDER.get(e[:1], 9), e[2:]) for e in path)


def field_set(value: Any, node: Node, prefix: FieldPath = ()) -> set[FieldPath]:
    """The set of fields a configuration sets (``TypedValue.ToFieldSet``)."""
    out: set[FieldPath] = set()
    _collect_fields(value, node, prefix, out)
    return out


def _collect_fields(value: Any, node: Node, prefix: FieldPath, out: set[FieldPath]) -> None:
    if isinstance(node, _LEAF_NODES) or value is None:
        out.add(prefix)
        return
    if isinstance(node, Struct | MapOf):
        if not isinstance(value, dict):
            out.add(prefix)
            return
        for key, child_value in value.items():
            child = node.fields.get(key) if isinstance(node, Struct) else node.elem
            if child is None:
                continue
            path = (*prefix, "f:" + key)
            _collect_fields(child_value, child, path, out)
            if child_value is None or child_value == {} or isinstance(node, MapOf):
                out.add(path)
        return
    if not isinstance(value, list):
        out.add(prefix)
        return
    if isinstance(node, AssocList):
        for item in value:
            if not isinstance(item, dict):
                continue
            path = (*prefix, key_element(item, node))
            if not node.atomic_items:
                _collect_fields(item, node.item, path, out)
            out.add(path)
    elif isinstance(node, SetList):
        for item in value:
            out.add((*prefix, "v:" + _compact_json(item)))


def all_paths(value: Any, node: Node) -> dict[FieldPath, tuple[Any, bool]]:
    """Every node of ``value``: path -> (value, is-leaf)."""
    out: dict[FieldPath, tuple[Any, bool]] = {}
    _walk_paths(value, node, (), out)
    out.pop((), None)
    return out


def _walk_paths(
    value: Any, node: Node, prefix: FieldPath, out: dict[FieldPath, tuple[Any, bool]]
) -> None:
    leaf = isinstance(node, _LEAF_NODES)
    out[prefix] = (value, leaf)
    if leaf or value is None:
        return
    if isinstance(node, Struct | MapOf) and isinstance(value, dict):
        for key, child_value in value.items():
            child = node.fields.get(key) if isinstance(node, Struct) else node.elem
            if child is not None:
                _walk_paths(child_value, child, (*prefix, "f:" + key), out)
    elif isinstance(node, AssocList) and isinstance(value, list):
        for item in value:
            if isinstance(item, dict) and node.atomic_items:
                out[(*prefix, key_element(item, node))] = (item, True)
            elif isinstance(item, dict):
                _walk_paths(item, node.item, (*prefix, key_element(item, node)), out)
    elif isinstance(node, SetList) and isinstance(value, list):
        for item in value:
            out[(*prefix, "v:" + _compact_json(item))] = (item, True)


def same_value(a: Any, b: Any) -> bool:
    """Deep equality that does not confuse ``True`` with ``1``."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@dataclass(frozen=True)
class Comparison:
    added: frozenset[FieldPath]
    removed: frozenset[FieldPath]
    modified: frozenset[FieldPath]

    @property
    def same(self) -> bool:
        return not (self.added or self.removed or self.modified)


def compare(old: Any, new: Any, node: Node) -> Comparison:
    before = all_paths(old, node)
    after = all_paths(new, node)
    modified = {
        path
        for path in before.keys() & after.keys()
        if before[path][1] and after[path][1] and not same_value(before[path][0], after[path][0])
    }
    return Comparison(
        frozenset(after.keys() - before.keys()),
        frozenset(before.keys() - after.keys()),
        frozenset(modified),
    )


def merge_values(live: Any, config: Any, node: Node) -> Any:
    """``TypedValue.Merge``: the applied configuration layered over the live object."""
    if isinstance(node, _LEAF_NODES) or config is None:
        return copy.deepcopy(config)
    if isinstance(node, Struct | MapOf):
        if not isinstance(config, dict):
            return copy.deepcopy(config)
        out: Obj = dict(live) if isinstance(live, dict) else {}
        for key, child_value in config.items():
            child = node.fields.get(key) if isinstance(node, Struct) else node.elem
            if child is None:
                out[key] = copy.deepcopy(child_value)
            else:
                out[key] = merge_values(out.get(key), child_value, child)
        return out
    if not isinstance(config, list):
        return copy.deepcopy(config)
    lhs = live if isinstance(live, list) else []
    if isinstance(node, SetList):

        def element(item: Any) -> str:
            return "v:" + _compact_json(item)

        def merge_item(left: Any, right: Any) -> Any:
            del left
            return copy.deepcopy(right)

    else:
        assoc = node

        def element(item: Any) -> str:
            return key_element(item, assoc) if isinstance(item, dict) else "?"

        def merge_item(left: Any, right: Any) -> Any:
            if assoc.atomic_items:
                return copy.deepcopy(right)
            return merge_values(left, right, assoc.item)

    return _merge_list(lhs, config, element, merge_item)


def _merge_list(
    lhs: list[Any],
    rhs: list[Any],
    element: Callable[[Any], str],
    merge_item: Callable[[Any, Any], Any],
) -> list[Any]:
    """The ordering of structured-merge-diff's ``visitListItems``."""
    lhs_keys = [element(item) for item in lhs]
    rhs_keys = [element(item) for item in rhs]
    lhs_by_key: dict[str, Any] = {}
    for key, item in zip(lhs_keys, lhs, strict=True):
        lhs_by_key.setdefault(key, item)
    rhs_by_key = dict(zip(rhs_keys, rhs, strict=True))
    shared = [key for key in rhs_keys if key in lhs_by_key]
    next_shared = shared.pop(0) if shared else None
    out: list[Any] = []
    left = right = 0
    while left < len(lhs_keys) or right < len(rhs_keys):
        if left < len(lhs_keys) and right < len(rhs_keys):
            key = lhs_keys[left]
            if key == rhs_keys[right]:
                out.append(merge_item(lhs_by_key[key], rhs_by_key[key]))
                left += 1
                right += 1
                next_shared = shared.pop(0) if shared else None
                continue
            if key in rhs_by_key and next_shared is not None and next_shared != key:
                left += 1
                continue
        if left < len(lhs_keys):
            key = lhs_keys[left]
            if key not in rhs_by_key:
                out.append(copy.deepcopy(lhs[left]))
                left += 1
                continue
        if right < len(rhs_keys):
            key = rhs_keys[right]
            out.append(merge_item(lhs_by_key.get(key), rhs_by_key[key]))
            right += 1
            if next_shared is not None and next_shared == key:
                next_shared = shared.pop(0) if shared else None
    return out


def remove_path(obj: Obj, path: FieldPath, node: Node) -> None:
    """Remove the field, map entry or list item at ``path`` (in place)."""
    current: Any = obj
    current_node: Node = node
    for index, element in enumerate(path):
        last = index == len(path) - 1
        kind, _, rest = element.partition(":")
        if isinstance(current_node, Atomic):
            current_node = current_node.inner
        if kind == "f" and isinstance(current, dict):
            if last:
                current.pop(rest, None)
                return
            child = (
                current_node.fields.get(rest)
                if isinstance(current_node, Struct)
                else current_node.elem
                if isinstance(current_node, MapOf)
                else None
            )
            if child is None or rest not in current:
                return
            current, current_node = current[rest], child
        elif kind == "k" and isinstance(current, list) and isinstance(current_node, AssocList):
            assoc = current_node
            matches = [
                i
                for i, item in enumerate(current)
                if isinstance(item, dict) and key_element(item, assoc) == element
            ]
            if not matches:
                return
            if last:
                del current[matches[0]]
                return
            current, current_node = current[matches[0]], assoc.item
        elif kind == "v" and isinstance(current, list) and last:
            target = json.loads(rest)
            current[:] = [item for item in current if not same_value(item, target)]
            return
        else:
            return


def prune(
    merged: Obj, candidates: Iterable[FieldPath], owned: Iterable[FieldPath], node: Node
) -> Obj:
    """Remove what the applier stopped applying, then add back what a manager still owns.

    structured-merge-diff's ``prune`` + ``addBackOwnedItems``: each field the applier no
    longer applies is removed with everything below it (a list element it owned as ``.``
    goes whole, even a field another manager owns inside it, recording 25q3); a removed
    field that some manager owns on its own stays (recording 24).
    """
    pruned = copy.deepcopy(merged)
    for path in sorted(candidates, key=len):
        remove_path(pruned, path, node)
    gone = field_set(merged, node) - field_set(pruned, node) - set(owned)
    for path in sorted(gone, key=len):
        remove_path(merged, path, node)
    return merged


def encode_fields_v1(paths: Iterable[FieldPath]) -> Obj:
    """A field set as ``FieldsV1`` JSON."""
    root: Obj = {}
    members: list[FieldPath] = []
    for path in paths:
        members.append(path)
        current = root
        for element in path:
            current = current.setdefault(element, {})
    for path in members:
        current = root
        for element in path:
            current = current[element]
        if current and "." not in current:
            current["."] = {}

    def ordered(tree: Obj) -> Obj:
        keys = sorted(k for k in tree if k != ".")
        out: Obj = {".": {}} if "." in tree else {}
        for key in keys:
            out[key] = ordered(tree[key])
        return out

    return ordered(root)


def decode_fields_v1(tree: Any, prefix: FieldPath = ()) -> set[FieldPath]:
    out: set[FieldPath] = set()
    if not isinstance(tree, dict):
        return out
    for key, child in tree.items():
        if key == ".":
            out.add(prefix)
            continue
        path = (*prefix, key)
        if not child:
            out.add(path)
        else:
            out |= decode_fields_v1(child, path)
    return out


@dataclass(frozen=True)
class ManagerEntry:
    """One ``metadata.managedFields`` entry."""

    manager: str
    operation: str
    api_version: str
    time: str
    fields: frozenset[FieldPath]
    subresource: str = ""

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.manager, self.operation, self.subresource)

    def describe(self) -> str:
        """``printManager`` of the conflict message."""
        text = go_quote(self.manager)
        if self.subresource:
            text += f" with subresource {go_quote(self.subresource)}"
        if self.operation == "Update":
            text += f" using {self.api_version}"
        return text

    def encode(self) -> Obj:
        entry: Obj = {
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "time": self.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": encode_fields_v1(self.fields),
        }
        if self.subresource:
            entry["subresource"] = self.subresource
        return entry


Managers = dict[tuple[str, str, str], ManagerEntry]


def encode_managers(managers: Managers) -> list[Obj]:
    entries = sorted(
        managers.values(),
        key=lambda m: (m.operation, m.time, m.manager, m.api_version, m.subresource),
    )
    return [entry.encode() for entry in entries]


def decode_managers(entries: Any) -> Managers:
    out: Managers = {}
    if not isinstance(entries, list):
        return out
    for raw in entries:
        if not isinstance(raw, dict):
            continue
        entry = ManagerEntry(
            manager=str(raw.get("manager") or ""),
            operation=str(raw.get("operation") or "Update"),
            api_version=str(raw.get("apiVersion") or ""),
            time=str(raw.get("time") or ""),
            fields=frozenset(decode_fields_v1(raw.get("fieldsV1") or {})),
            subresource=str(raw.get("subresource") or ""),
        )
        out[entry.key] = entry
    return out


_STRIPPED_META = frozenset(
    {
        "f:name",
        "f:namespace",
        "f:creationTimestamp",
        "f:selfLink",
        "f:uid",
        "f:clusterName",
        "f:generation",
        "f:managedFields",
        "f:resourceVersion",
    }
)


def strip_fields(paths: Iterable[FieldPath], reset: Iterable[str] = ()) -> set[FieldPath]:
    """Drop the fields the field manager never tracks (``stripMeta``, reset fields)."""
    reset_elements = {"f:" + name for name in reset}
    out: set[FieldPath] = set()
    for path in paths:
        if not path or path[0] in ("f:apiVersion", "f:kind") or path[0] in reset_elements:
            continue
        if path[0] == "f:metadata" and (len(path) == 1 or path[1] in _STRIPPED_META):
            continue
        out.add(path)
    return out


# ---------------------------------------------------------------------------------------------
# Resource types
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    schema: Struct
    storage: str
    return_deleted_object: bool = False
    allow_create_on_update: bool = False
    reset_fields: tuple[str, ...] = ()
    short_names: tuple[str, ...] = ()
    #: Discovery: ``categories`` and ``storageVersionHash`` where a recording shows them (40a/b).
    categories: tuple[str, ...] = ()
    storage_version_hash: str = ""
    #: A custom resource (Gateway API): typed list items, status subresource.
    custom: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """``GroupResource.String()``: ``services`` or ``endpointslices.discovery.k8s.io``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def gvk_text(self) -> str:
        return f"{self.group}/{self.version}, Kind={self.kind}"


SERVICES = ResourceType(
    "",
    "v1",
    "services",
    "Service",
    SERVICE,
    "services",
    return_deleted_object=True,
    reset_fields=("status",),
    short_names=("svc",),
    categories=("all",),
    storage_version_hash="0/CO1lhkEBI=",
)
ENDPOINT_SLICES = ResourceType(
    "discovery.k8s.io",
    "v1",
    "endpointslices",
    "EndpointSlice",
    ENDPOINT_SLICE,
    "endpointslices",
    storage_version_hash="Nx3SIv6I0mE=",
)
LEASES = ResourceType("coordination.k8s.io", "v1", "leases", "Lease", LEASE, "leases")
CORE_EVENTS = ResourceType(
    "",
    "v1",
    "events",
    "Event",
    CORE_EVENT,
    "events",
    allow_create_on_update=True,
    short_names=("ev",),
)
GATEWAY_GROUP = "gateway.networking.k8s.io"


def _route_schema(kind: str) -> Struct:
    # Custom resources are unstructured: JSON keys come out sorted; lists are
    # atomic (listType unset), labels and annotations granular as usual.
    return Struct(
        kind,
        {
            "apiVersion": S,
            "kind": S,
            "metadata": OBJECT_META,
            "spec": Struct(
                f"{kind}Spec",
                {
                    "hostnames": AtomicList(S),
                    "parentRefs": AtomicList(ANY),
                    "rules": AtomicList(ANY),
                },
            ),
            "status": Atomic(ANY),
        },
        pkg="v1",
    )


HTTPROUTES = ResourceType(
    GATEWAY_GROUP,
    "v1",
    "httproutes",
    "HTTPRoute",
    _route_schema("HTTPRoute"),
    "httproutes",
    reset_fields=("status",),
    custom=True,
)
GRPCROUTES = ResourceType(
    GATEWAY_GROUP,
    "v1",
    "grpcroutes",
    "GRPCRoute",
    _route_schema("GRPCRoute"),
    "grpcroutes",
    reset_fields=("status",),
    custom=True,
)
GATEWAY_TYPES = (HTTPROUTES, GRPCROUTES)
RESOURCE_TYPES: tuple[ResourceType, ...] = (
    SERVICES,
    ENDPOINT_SLICES,
    LEASES,
    CORE_EVENTS,
    HTTPROUTES,
    GRPCROUTES,
)
_BY_GROUP_VERSION: dict[tuple[str, str, str], ResourceType] = {
    (rt.group, rt.version, rt.plural): rt for rt in RESOURCE_TYPES
}
_STORAGE_TYPE: dict[str, ResourceType] = {
    "services": SERVICES,
    "endpointslices": ENDPOINT_SLICES,
    "leases": LEASES,
    "events": CORE_EVENTS,
    "httproutes": HTTPROUTES,
    "grpcroutes": GRPCROUTES,
}


#: ``/apis/gateway.networking.k8s.io/v1`` as recorded (10).
GATEWAY_RESOURCE_LIST: Obj = {
    "kind": "APIResourceList",
    "apiVersion": "v1",
    "groupVersion": "gateway.networking.k8s.io/v1",
    "resources": [
        {
            "name": "gatewayclasses",
            "singularName": "gatewayclass",
            "namespaced": False,
            "kind": "GatewayClass",
            "verbs": [
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "create",
                "update",
                "watch",
            ],
            "shortNames": ["gc"],
            "categories": ["gateway-api"],
            "storageVersionHash": "YwVCumQdey0=",
        },
        {
            "name": "gatewayclasses/status",
            "singularName": "",
            "namespaced": False,
            "kind": "GatewayClass",
            "verbs": ["get", "patch", "update"],
        },
        {
            "name": "gateways",
            "singularName": "gateway",
            "namespaced": True,
            "kind": "Gateway",
            "verbs": [
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "create",
                "update",
                "watch",
            ],
            "shortNames": ["gtw"],
            "categories": ["gateway-api"],
            "storageVersionHash": "vTT6VZ2LmOo=",
        },
        {
            "name": "gateways/status",
            "singularName": "",
            "namespaced": True,
            "kind": "Gateway",
            "verbs": ["get", "patch", "update"],
        },
        {
            "name": "grpcroutes",
            "singularName": "grpcroute",
            "namespaced": True,
            "kind": "GRPCRoute",
            "verbs": [
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "create",
                "update",
                "watch",
            ],
            "categories": ["gateway-api"],
            "storageVersionHash": "bkxdI4yJ1yQ=",
        },
        {
            "name": "grpcroutes/status",
            "singularName": "",
            "namespaced": True,
            "kind": "GRPCRoute",
            "verbs": ["get", "patch", "update"],
        },
        {
            "name": "httproutes",
            "singularName": "httproute",
            "namespaced": True,
            "kind": "HTTPRoute",
            "verbs": [
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "create",
                "update",
                "watch",
            ],
            "categories": ["gateway-api"],
            "storageVersionHash": "s9TOoTqdPlk=",
        },
        {
            "name": "httproutes/status",
            "singularName": "",
            "namespaced": True,
            "kind": "HTTPRoute",
            "verbs": ["get", "patch", "update"],
        },
        {
            "name": "referencegrants",
            "singularName": "referencegrant",
            "namespaced": True,
            "kind": "ReferenceGrant",
            "verbs": [
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "create",
                "update",
                "watch",
            ],
            "shortNames": ["refgrant"],
            "categories": ["gateway-api"],
            "storageVersionHash": "yiMy9EZI11Y=",
        },
    ],
}


def resource_type(name: str) -> ResourceType:
    """Look a resource up by ``plural`` or ``plural.group`` (``events.events.k8s.io``)."""
    for rt in RESOURCE_TYPES:
        if name in (rt.qualified, f"{rt.plural}.{rt.group}", rt.kind):
            return rt
    for rt in RESOURCE_TYPES:
        if name == rt.plural or name in rt.short_names:
            return rt
    raise KeyError(f"unknown resource {name!r}")


def _empty_object(rt: ResourceType) -> Obj:
    """What ``New()`` of the Go type looks like once converted (the live side of a create)."""
    obj = cast(Obj, shape({"metadata": {}}, rt.schema))
    obj.pop("kind", None)
    obj.pop("apiVersion", None)
    return obj


# ---------------------------------------------------------------------------------------------
# Per-kind strategies: defaulting, preparation, validation
# ---------------------------------------------------------------------------------------------

_PROTOCOLS = ("SCTP", "TCP", "UDP")
_IP_FAMILY_POLICIES = ("PreferDualStack", "RequireDualStack", "SingleStack")


def default_object(rt: ResourceType, obj: Obj) -> None:
    """Decode-time defaulting (``SetDefaults_*``)."""
    if rt is SERVICES:
        _default_service(obj)
    elif rt in GATEWAY_TYPES:
        _default_route(rt, obj)
    elif rt is ENDPOINT_SLICES:
        for port in obj.get("ports") or []:
            if isinstance(port, dict):
                if port.get("name") is None:
                    port["name"] = ""
                if port.get("protocol") is None:
                    port["protocol"] = "TCP"


def _sorted_json(value: Any) -> Any:
    """As an unstructured object prints: map keys sorted."""
    if isinstance(value, dict):
        return {k: _sorted_json(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted_json(v) for v in value]
    return value


def _default_route(rt: ResourceType, obj: Obj) -> None:
    """The Gateway API v1.6.1 CRD defaults, as recording 01 shows them."""
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return
    for ref in spec.get("parentRefs") or []:
        if isinstance(ref, dict):
            ref.setdefault("group", GATEWAY_GROUP)
            ref.setdefault("kind", "Gateway")
    if rt is HTTPROUTES and spec.get("rules") is None:
        spec["rules"] = [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}]}]
    for rule in spec.get("rules") or []:
        if not isinstance(rule, dict):
            continue
        for ref in rule.get("backendRefs") or []:
            if isinstance(ref, dict):
                ref.setdefault("group", "")
                ref.setdefault("kind", "Service")
                ref.setdefault("weight", 1)
        if rt is HTTPROUTES:
            if not rule.get("matches"):
                rule["matches"] = [{"path": {"type": "PathPrefix", "value": "/"}}]
            for match in rule["matches"]:
                if isinstance(match, dict) and "path" not in match:
                    match["path"] = {"type": "PathPrefix", "value": "/"}
    for key in ("parentRefs", "rules"):
        if key in spec:
            spec[key] = _sorted_json(spec[key])


_ROUTE_HOSTNAME = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


def _go_map_repr(value: Any) -> str:
    """Go's ``%#v`` of a decoded JSON value (``map[string]interface {}{...}``)."""
    if isinstance(value, dict):
        inner = ", ".join(f"{go_quote(k)}:{_go_map_repr(value[k])}" for k in sorted(value))
        return "map[string]interface {}{" + inner + "}"
    if isinstance(value, list):
        return "[]interface {}{" + ", ".join(_go_map_repr(v) for v in value) + "}"
    if isinstance(value, str):
        return go_quote(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def validate_route(rt: ResourceType, obj: Obj) -> list[FieldError]:
    """The CRD schema (OpenAPI) and CEL rules the recordings exercise, with
    their recorded texts (05, 06, 07, 17, 20, 21)."""
    errs = validate_object_meta(obj.get("metadata") or {}, is_dns1123_subdomain)
    spec = obj.get("spec") or {}
    hostnames = spec.get("hostnames") or []
    if len(hostnames) > 16:
        errs.append(
            f_invalid(
                "spec.hostnames",
                len(hostnames),
                "spec.hostnames in body should have at most 16 items",
            )
        )
    for hostname in hostnames:
        if not re.fullmatch(_ROUTE_HOSTNAME, str(hostname)):
            errs.append(
                f_invalid(
                    "spec.hostnames",
                    hostname,
                    f"spec.hostnames in body should match '{_ROUTE_HOSTNAME}'",
                )
            )
    for i, rule in enumerate(spec.get("rules") or []):
        for j, ref in enumerate(rule.get("backendRefs") or []):
            if "port" in ref and int(ref["port"]) < 1:
                errs.append(
                    f_invalid(
                        "spec.rules.backendRefs.port",
                        ref["port"],
                        "spec.rules.backendRefs.port in body should be greater than or equal to 1",
                    )
                )
            elif ref.get("group", "") == "" and ref.get("kind") == "Service" and "port" not in ref:
                errs.append(
                    f_invalid(
                        f"spec.rules[{i}].backendRefs[{j}]",
                        GoRepr(_go_map_repr(ref)),
                        "Must have port for Service reference",
                    )
                )
        for j, match in enumerate(rule.get("matches") or []):
            path = match.get("path") or {}
            if path.get("type") in ("Exact", "PathPrefix") and not str(
                path.get("value", "")
            ).startswith("/"):
                errs.append(
                    f_invalid(
                        f"spec.rules[{i}].matches[{j}].path",
                        GoRepr(_go_map_repr(path)),
                        "value must be an absolute path and start with '/' when type one of "
                        "['Exact', 'PathPrefix']",
                    )
                )
    refs = spec.get("parentRefs") or []
    seen: set[tuple[Any, ...]] = set()
    for ref in refs:
        ident = (ref.get("group"), ref.get("kind"), ref.get("namespace"), ref.get("name"))
        if (*ident, ref.get("sectionName")) in seen:
            errs.append(
                f_invalid(
                    "spec.parentRefs",
                    GoRepr(_go_map_repr(refs)),
                    "sectionName must be unique when parentRefs includes 2 or more references "
                    "to the same parent",
                )
            )
            break
        seen.add((*ident, ref.get("sectionName")))
    return errs


def _default_service(obj: Obj) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        spec = obj["spec"] = {}
    if not spec.get("sessionAffinity"):
        spec["sessionAffinity"] = "None"
    if not spec.get("type"):
        spec["type"] = "ClusterIP"
    for port in spec.get("ports") or []:
        if not isinstance(port, dict):
            continue
        if not port.get("protocol"):
            port["protocol"] = "TCP"
        if port.get("targetPort") in (None, 0, ""):
            port["targetPort"] = port.get("port", 0)
    if spec.get("internalTrafficPolicy") is None:
        spec["internalTrafficPolicy"] = "Cluster"


class _Allocator:
    """Cluster IPs (10.96.0.0/12 and fd00:10:96::/112)."""

    def __init__(self) -> None:
        self.next_v4 = int(ipaddress.IPv4Address("10.96.0.10"))
        self.next_v6 = int(ipaddress.IPv6Address("fd00:10:96::a"))

    def ip(self, family: str) -> str:
        if family == "IPv6":
            self.next_v6 += 1
            return str(ipaddress.IPv6Address(self.next_v6 - 1))
        self.next_v4 += 1
        return str(ipaddress.IPv4Address(self.next_v4 - 1))


def _is_headless(spec: Mapping[str, Any]) -> bool:
    return spec.get("clusterIP") == "None"


def prepare_service(obj: Obj, old: Obj | None, alloc: _Allocator) -> None:
    """PrepareForCreate/Update plus the allocation done in BeginCreate/BeginUpdate."""
    spec = obj.setdefault("spec", {})
    obj["status"] = copy.deepcopy(old.get("status")) if old else {"loadBalancer": {}}
    if old is not None:
        old_spec = old.get("spec") or {}
        if not spec.get("clusterIP"):
            spec["clusterIP"] = old_spec.get("clusterIP", "")
        if not spec.get("clusterIPs") and old_spec.get("clusterIPs"):
            spec["clusterIPs"] = list(old_spec["clusterIPs"])
        if spec.get("ipFamilyPolicy") is None and old_spec.get("ipFamilyPolicy"):
            spec["ipFamilyPolicy"] = old_spec["ipFamilyPolicy"]
        if not spec.get("ipFamilies") and old_spec.get("ipFamilies"):
            spec["ipFamilies"] = list(old_spec["ipFamilies"])
    # NormalizeClusterIPs
    if not spec.get("clusterIPs") and spec.get("clusterIP"):
        spec["clusterIPs"] = [spec["clusterIP"]]
    elif spec.get("clusterIPs") and not spec.get("clusterIP"):
        spec["clusterIP"] = spec["clusterIPs"][0]
    families = list(spec.get("ipFamilies") or [])
    policy = spec.get("ipFamilyPolicy")
    headless_selectorless = _is_headless(spec) and not spec.get("selector")
    if policy is None:
        if headless_selectorless or len(families) == 2 or len(spec.get("clusterIPs") or []) == 2:
            policy = "RequireDualStack"
        else:
            policy = "SingleStack"
        spec["ipFamilyPolicy"] = policy
    if not families:
        for ip_text in spec.get("clusterIPs") or []:
            ip = parse_ip_sloppy(ip_text)
            if ip is not None:
                families.append("IPv6" if _to4(ip) is None else "IPv4")
        if not families:
            families = ["IPv4"]
    if len(families) < 2 and policy in ("RequireDualStack", "PreferDualStack"):
        families.append("IPv6" if families[0] == "IPv4" else "IPv4")
    spec["ipFamilies"] = families
    if not _is_headless(spec):
        ips = list(spec.get("clusterIPs") or [])
        for family in families[len(ips) :]:
            ips.append(alloc.ip(family))
        spec["clusterIPs"] = ips
        spec["clusterIP"] = ips[0]
    else:
        spec["clusterIPs"] = ["None"]


def _service_port_repr(protocol: str, port: int) -> GoRepr:
    return GoRepr(
        f'core.ServicePort{{Name:"", Protocol:{go_quote(protocol)}, AppProtocol:(*string)(nil), '
        f'Port:{port}, TargetPort:intstr.IntOrString{{Type:0, IntVal:0, StrVal:""}}, '
        "NodePort:0}"
    )


def validate_service(obj: Obj, old: Obj | None) -> list[FieldError]:
    """``ValidateService`` / ``ValidateServiceUpdate`` (v1.24), the parts a sink can hit."""
    errs: list[FieldError] = []
    spec = obj.get("spec") or {}
    if old is not None:
        old_spec = old.get("spec") or {}
        old_ips = list(old_spec.get("clusterIPs") or [])
        new_ips = list(spec.get("clusterIPs") or [])
        if not (_is_headless(old_spec) and _is_headless(spec)):
            ips_repr = GoRepr("[]string{" + ", ".join(go_quote(ip) for ip in new_ips) + "}")
            if len(old_ips) == len(new_ips):
                for index, ip in enumerate(old_ips):
                    if ip != new_ips[index]:
                        errs.append(
                            f_invalid(
                                f"spec.clusterIPs[{index}]", ips_repr, "may not change once set"
                            )
                        )
            elif len(old_ips) > len(new_ips) and not new_ips:
                errs.append(
                    f_invalid("spec.clusterIPs[0]", ips_repr, "primary clusterIP can not be unset")
                )
    errs.extend(validate_object_meta(obj.get("metadata") or {}, is_dns1035_label))
    service_type = spec.get("type") or ""
    ports = [p for p in spec.get("ports") or [] if isinstance(p, dict)]
    if not ports and not _is_headless(spec):
        errs.append(f_required("spec.ports"))
    names: set[str] = set()
    for index, port in enumerate(ports):
        path = f"spec.ports[{index}]"
        name = port.get("name") or ""
        if len(ports) > 1 and not name:
            errs.append(f_required(f"{path}.name"))
        elif name:
            errs.extend(validate_dns1123_label_field(name, f"{path}.name"))
            if name in names:
                errs.append(f_duplicate(f"{path}.name", name))
            else:
                names.add(name)
        port_number = port.get("port", 0)
        errs.extend(
            f_invalid(f"{path}.port", port_number, m) for m in is_valid_port_num(port_number)
        )
        protocol = port.get("protocol") or ""
        if not protocol:
            errs.append(f_required(f"{path}.protocol"))
        elif protocol not in _PROTOCOLS:
            errs.append(f_not_supported(f"{path}.protocol", protocol, _PROTOCOLS))
        target = port.get("targetPort")
        if isinstance(target, str):
            errs.extend(
                f_invalid(f"{path}.targetPort", target, m) for m in is_valid_port_name(target)
            )
        else:
            target_number = int(target or 0)
            errs.extend(
                f_invalid(f"{path}.targetPort", GoRepr(str(target_number)), m)
                for m in is_valid_port_num(target_number)
            )
        app_protocol = port.get("appProtocol")
        if app_protocol is not None:
            errs.extend(
                f_invalid(f"{path}.appProtocol", app_protocol, m)
                for m in is_qualified_name(app_protocol)
            )
    selector = spec.get("selector")
    if selector:
        errs.extend(validate_labels(selector, "spec.selector"))
    affinity = spec.get("sessionAffinity") or ""
    if not affinity:
        errs.append(f_required("spec.sessionAffinity"))
    elif affinity not in ("ClientIP", "None"):
        errs.append(f_not_supported("spec.sessionAffinity", affinity, ("ClientIP", "None")))
    for index, ip_text in enumerate(spec.get("clusterIPs") or []):
        path = f"spec.clusterIPs[{index}]"
        if index == 0 and ip_text == "None":
            if len(spec.get("clusterIPs") or []) > 1:
                errs.append(f_invalid(path, ip_text, "'None' must be the first and only value"))
            continue
        if parse_ip_sloppy(ip_text) is None:
            errs.append(
                f_invalid(
                    path, ip_text, "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
                )
            )
    if service_type != "ClusterIP":  # NodePort, LoadBalancer, ExternalName: not served
        errs.append(f_not_supported("spec.type", service_type, ("ClusterIP",)))
    seen_keys: set[tuple[str, int]] = set()
    for index, port in enumerate(ports):
        key = (port.get("protocol") or "", port.get("port", 0))
        if key in seen_keys:
            errs.append(f_duplicate(f"spec.ports[{index}]", _service_port_repr(*key)))
        seen_keys.add(key)
    internal_policy = spec.get("internalTrafficPolicy")
    if internal_policy is not None and internal_policy not in ("Cluster", "Local"):
        errs.append(
            f_not_supported("spec.internalTrafficPolicy", internal_policy, ("Cluster", "Local"))
        )
    family_policy = spec.get("ipFamilyPolicy")
    if family_policy is not None and family_policy not in _IP_FAMILY_POLICIES:
        errs.append(f_not_supported("spec.ipFamilyPolicy", family_policy, _IP_FAMILY_POLICIES))
    seen_families: set[str] = set()
    for index, family in enumerate(spec.get("ipFamilies") or []):
        if family not in ("IPv4", "IPv6"):
            errs.append(f_not_supported(f"spec.ipFamilies[{index}]", family, ("IPv4", "IPv6")))
        elif family in seen_families:
            errs.append(f_duplicate(f"spec.ipFamilies[{index}]", family))
        seen_families.add(family)
    return errs


_ADDRESS_TYPES = ("FQDN", "IPv4", "IPv6")


def validate_endpoint_slice(obj: Obj, old: Obj | None) -> list[FieldError]:
    """``ValidateEndpointSlice`` (+ ``addressType`` immutability on update)."""
    errs = validate_object_meta(obj.get("metadata") or {}, is_dns1123_subdomain)
    address_type = obj.get("addressType") or ""
    if not address_type:
        errs.append(f_required("addressType"))
    elif address_type not in _ADDRESS_TYPES:
        errs.append(f_not_supported("addressType", address_type, _ADDRESS_TYPES))
    endpoints = obj.get("endpoints") or []
    if len(endpoints) > 1000:
        errs.append(f_too_many("endpoints", len(endpoints), 1000))
    else:
        for index, endpoint in enumerate(endpoints):
            errs.extend(_validate_endpoint(endpoint, address_type, f"endpoints[{index}]"))
    ports = obj.get("ports") or []
    if len(ports) > 20000:
        errs.append(f_too_many("ports", len(ports), 20000))
    else:
        names: set[str] = set()
        for index, port in enumerate(ports):
            path = f"ports[{index}]"
            name = port.get("name") or ""
            if name:
                errs.extend(validate_dns1123_label_field(name, f"{path}.name"))
            if name in names:
                errs.append(f_duplicate(f"{path}.name", name))
            names.add(name)
            protocol = port.get("protocol")
            if protocol is None:
                errs.append(f_required(f"{path}.protocol"))
            elif protocol not in _PROTOCOLS:
                errs.append(f_not_supported(f"{path}.protocol", protocol, _PROTOCOLS))
            app_protocol = port.get("appProtocol")
            if app_protocol is not None:
                errs.extend(
                    f_invalid(f"{path}.appProtocol", app_protocol, m)
                    for m in is_qualified_name(app_protocol)
                )
    if old is not None and address_type != (old.get("addressType") or ""):
        errs.append(f_invalid("addressType", address_type, "field is immutable"))
    return errs


def _validate_endpoint(endpoint: Obj, address_type: str, path: str) -> list[FieldError]:
    errs: list[FieldError] = []
    addresses = endpoint.get("addresses") or []
    address_path = f"{path}.addresses"
    if not addresses:
        errs.append(f_required(address_path, "must contain at least 1 address"))
    elif len(addresses) > 100:
        errs.append(f_too_many(address_path, len(addresses), 100))
    for index, address in enumerate(addresses):
        item_path = f"{address_path}[{index}]"
        if address_type == "IPv4":
            errs.extend(validate_ipv4_address(item_path, address))
            errs.extend(validate_endpoint_ip(address, item_path))
        elif address_type == "IPv6":
            errs.extend(validate_ipv6_address(item_path, address))
            errs.extend(validate_endpoint_ip(address, item_path))
        elif address_type == "FQDN":
            errs.extend(validate_fqdn(item_path, address))
    node_name = endpoint.get("nodeName")
    if node_name is not None:
        errs.extend(
            f_invalid(f"{path}.nodeName", node_name, m) for m in is_dns1123_subdomain(node_name)
        )
    topology = endpoint.get("deprecatedTopology") or {}
    if len(topology) > 16:
        errs.append(f_too_many(f"{path}.deprecatedTopology", len(topology), 16))
    errs.extend(validate_labels(topology, f"{path}.deprecatedTopology"))
    hostname = endpoint.get("hostname")
    if hostname is not None:
        errs.extend(validate_dns1123_label_field(hostname, f"{path}.hostname"))
    hints = endpoint.get("hints")
    if hints is not None:
        zones = hints.get("forZones") or []
        zones_path = f"{path}.hints.forZones"
        if len(zones) > 8:
            errs.append(f_too_many(zones_path, len(zones), 8))
        else:
            seen: set[str] = set()
            for index, zone in enumerate(zones):
                zone_name = zone.get("name") or ""
                zone_path = f"{zones_path}[{index}].name"
                if zone_name in seen:
                    errs.append(f_duplicate(zone_path, zone_name))
                seen.add(zone_name)
                errs.extend(
                    f_invalid(zone_path, zone_name, m) for m in is_valid_label_value(zone_name)
                )
    return errs


def validate_lease(obj: Obj, _old: Obj | None) -> list[FieldError]:
    errs = validate_object_meta(obj.get("metadata") or {}, is_dns1123_subdomain)
    spec = obj.get("spec") or {}
    duration = spec.get("leaseDurationSeconds")
    if duration is not None and duration <= 0:
        errs.append(f_invalid("spec.leaseDurationSeconds", duration, "must be greater than 0"))
    transitions = spec.get("leaseTransitions")
    if transitions is not None and transitions < 0:
        errs.append(
            f_invalid("spec.leaseTransitions", transitions, "must be greater than or equal to 0")
        )
    return errs


def validate_event(obj: Obj, rt: ResourceType) -> list[FieldError]:
    """``ValidateEventCreate`` for core/v1 Events."""
    errs: list[FieldError] = []
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace") or ""
    involved = obj.get("involvedObject") or {}
    involved_ns = involved.get("namespace") or ""
    if obj.get("eventTime") is None:
        if not involved_ns:
            if namespace not in ("", "default"):
                errs.append(
                    f_invalid(
                        "involvedObject.namespace", involved_ns, "does not match event.namespace"
                    )
                )
        elif namespace != involved_ns:
            errs.append(
                f_invalid("involvedObject.namespace", involved_ns, "does not match event.namespace")
            )
    else:
        if not involved_ns and namespace not in ("default", "kube-system"):
            errs.append(
                f_invalid("involvedObject.namespace", involved_ns, "does not match event.namespace")
            )
        controller = obj.get("reportingComponent") or ""
        if not controller:
            errs.append(f_required("reportingComponent"))
        errs.extend(
            f_invalid("reportingComponent", controller, m) for m in is_qualified_name(controller)
        )
        instance = obj.get("reportingInstance") or ""
        if not instance:
            errs.append(f_required("reportingInstance"))
        if len(instance) > 128:
            errs.append(f_invalid("reportingInstance", "", "can have at most 128 characters"))
        action = obj.get("action") or ""
        if not action:
            errs.append(f_required("action"))
        if len(action) > 128:
            errs.append(f_invalid("action", "", "can have at most 128 characters"))
        reason = obj.get("reason") or ""
        if not reason:
            errs.append(f_required("reason"))
        if len(reason) > 128:
            errs.append(f_invalid("reason", "", "can have at most 128 characters"))
        if len(obj.get("message") or "") > 1024:
            errs.append(f_invalid("message", "", "can have at most 1024 characters"))
    errs.extend(f_invalid("namespace", namespace, m) for m in is_dns1123_subdomain(namespace))
    return errs


def validate_common_meta(meta: Mapping[str, Any]) -> list[FieldError]:
    """The generic checks run after the strategy (``ValidateObjectMetaAccessor``)."""
    name = meta.get("name") or ""
    if not name:
        return [f_required("metadata.name", "name or generateName is required")]
    errs: list[FieldError] = []
    if name in (".", ".."):
        errs.append(f_invalid("metadata.name", name, f"may not be {go_quote(name)}"))
    for bad in ("/", "%"):
        if bad in name:
            errs.append(f_invalid("metadata.name", name, f"may not contain {go_quote(bad)}"))
    return errs


def validate_object(rt: ResourceType, obj: Obj, old: Obj | None) -> list[FieldError]:
    if rt is SERVICES:
        errs = validate_service(obj, old)
    elif rt is ENDPOINT_SLICES:
        errs = validate_endpoint_slice(obj, old)
    elif rt is LEASES:
        errs = validate_lease(obj, old)
    elif rt in GATEWAY_TYPES:
        errs = validate_route(rt, obj)
    else:
        errs = validate_event(obj, rt) if old is None else []
    if not errs:
        errs = validate_common_meta(obj.get("metadata") or {})
    return errs


# ---------------------------------------------------------------------------------------------
# Selectors
# ---------------------------------------------------------------------------------------------


class SelectorError(Exception):
    pass


class Requirement(NamedTuple):
    key: str
    equal: bool  # ``=``/``==`` or ``!=``
    value: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.equal:
            return self.key in labels and labels[self.key] == self.value
        return labels.get(self.key) != self.value


def parse_label_selector(text: str) -> list[Requirement]:
    """Equality-based label selectors (``a=b,c!=d``): all the sink and the tests send.

    Set-based ones (``in``, ``notin``, ``!key``, ``key``) answer 400 here though a real server
    takes them.
    """
    requirements: list[Requirement] = []
    for term in (t.strip() for t in text.split(",")):
        if not term and text.strip():
            raise SelectorError("found '', expected: identifier after ','")
        if not term:
            continue
        match = re.fullmatch(r"([^=!]+)(!=|==|=)([^=!]*)", term)
        if match is None:
            raise SelectorError(f"the double serves only equality-based selectors: {term!r}")
        key, operator, value = match.groups()
        requirements.append(Requirement(key.strip(), operator != "!=", value.strip()))
    return requirements


@dataclass(frozen=True)
class Selection:
    """Namespace and label filters of a list or watch."""

    namespace: str = ""
    labels: tuple[Requirement, ...] = ()

    def matches(self, obj: Obj) -> bool:
        meta = obj.get("metadata") or {}
        if self.namespace and meta.get("namespace") != self.namespace:
            return False
        labels = meta.get("labels") or {}
        return all(req.matches(labels) for req in self.labels)


# ---------------------------------------------------------------------------------------------
# Request/response plumbing
# ---------------------------------------------------------------------------------------------


class LoggedRequest(NamedTuple):
    """One request as received: ``(method, path, query, content_type)``."""

    method: str
    path: str
    query: dict[str, str]
    content_type: str | None


@dataclass
class Exchange:
    """A request with what the double made of it and what it answered."""

    method: str
    path: str
    query: dict[str, str]
    content_type: str | None
    verb: str = ""
    resource: str = ""
    namespace: str = ""
    name: str = ""
    user: str = ""
    status: int = 0
    faulted: bool = False
    body: bytes = b""


FaultMode = Literal["status", "hang", "drop"]


@dataclass
class Fault:
    """An injected failure for the next ``remaining`` matching requests.

    ``mode``: ``status`` answers ``status``; ``hang`` keeps the connection silent for
    ``delay`` seconds and then closes it (a client-side timeout); ``drop`` closes the
    connection without an answer.  With ``after_commit`` the request is carried out first
    (the write happens) and only the answer is replaced by the fault.
    """

    method: str | None
    path_prefix: str
    remaining: int
    status: int = 500
    mode: FaultMode = "status"
    retry_after: int | None = None
    delay: float = 0.0
    message: str | None = None
    after_commit: bool = False
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.remaining <= 0:
            return False
        if self.method is not None and self.method.upper() != method:
            return False
        return path.startswith(self.path_prefix)


@dataclass
class _Request:
    method: str
    path: str
    query: dict[str, str]
    content_type: str | None = None
    body: bytes = b""
    user_agent: str = ""
    authorization: str | None = None


@dataclass
class _Reply:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _WatchPlan:
    rt: ResourceType
    selection: Selection
    start_rv: int
    initial: list[bytes]
    error: bytes | None
    deadline: float
    bookmarks: bool


@dataclass
class _Drop:
    delay: float


@dataclass
class _Route:
    verb: str
    rt: ResourceType
    namespace: str
    name: str


@dataclass
class _Stored:
    obj: Obj
    managers: Managers
    managed_json: list[Obj] | None = None


class _WatchEvent(NamedTuple):
    rv: int
    storage: str
    type: str
    obj: Obj
    prev: Obj | None


MERGE_PATCH = "application/merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
#: Served patch types: JSON and strategic merge patches are not (no client sends them).
_PATCH_TYPES = (MERGE_PATCH, APPLY_PATCH)
_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
_FLOW_SCHEMA_UID = "5d3b1b9e-7c3c-4bd8-9a4d-8e1a4c1f6a51"
_PRIORITY_LEVEL_UID = "0b0b6f3c-2f7d-4f6f-8f44-0d5c8d3e6e21"


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("1", "t", "true", "y", "yes")


def _json_reply(status: int, body: Any) -> _Reply:
    return _Reply(status, go_json(body))


def _error_reply(err: ApiError) -> _Reply:
    if err.text is not None:
        return _Reply(
            err.code,
            err.text.encode(),
            "text/plain; charset=utf-8",
            {"X-Content-Type-Options": "nosniff", **err.headers},
        )
    return _Reply(err.code, go_json(err.status), headers=dict(err.headers))


def not_found(rt: ResourceType, name: str) -> ApiError:
    return ApiError(
        status_failure(
            404,
            "NotFound",
            f"{rt.qualified} {go_quote(name)} not found",
            status_details(name=name, group=rt.group, kind=rt.plural),
        )
    )


def already_exists(rt: ResourceType, name: str) -> ApiError:
    return ApiError(
        status_failure(
            409,
            "AlreadyExists",
            f"{rt.qualified} {go_quote(name)} already exists",
            status_details(name=name, group=rt.group, kind=rt.plural),
        )
    )


def conflict(rt: ResourceType, name: str, message: str = OPTIMISTIC_LOCK_MESSAGE) -> ApiError:
    return ApiError(
        status_failure(
            409,
            "Conflict",
            f"Operation cannot be fulfilled on {rt.qualified} {go_quote(name)}: {message}",
            status_details(name=name, group=rt.group, kind=rt.plural),
        )
    )


def forbidden(user: str, verb: str, rt: ResourceType, namespace: str, name: str) -> ApiError:
    scope = f"in the namespace {go_quote(namespace)}" if namespace else "at the cluster scope"
    reason = (
        f"User {go_quote(user)} cannot {verb} resource {go_quote(rt.plural)} "
        f"in API group {go_quote(rt.group)} {scope}"
    )
    subject = f"{rt.qualified} {go_quote(name)}" if name else rt.qualified
    return ApiError(
        status_failure(
            403,
            "Forbidden",
            f"{subject} is forbidden: {reason}",
            status_details(name=name, group=rt.group, kind=rt.plural),
        )
    )


def apply_conflict(
    conflicts: Mapping[tuple[str, str, str], frozenset[FieldPath]], managers: Managers
) -> ApiError:
    ordered = sorted(conflicts, key=lambda k: (k[0], k[1], k[2]))
    pairs = [
        (managers[key], path)
        for key in ordered
        for path in sorted(conflicts[key], key=_path_sort_key)
    ]
    causes = [
        {
            "reason": "FieldManagerConflict",
            "message": f"conflict with {entry.describe()}",
            "field": path_text(path),
        }
        for entry, path in pairs
    ]
    if len(pairs) == 1:
        entry, path = pairs[0]
        message = (
            f"Apply failed with 1 conflict: conflict with {entry.describe()}: {path_text(path)}"
        )
    else:
        lines: list[str] = []
        for key in ordered:
            lines.append(f"conflicts with {managers[key].describe()}:")
            lines.extend(f"- {path_text(p)}" for p in sorted(conflicts[key], key=_path_sort_key))
        message = f"Apply failed with {len(pairs)} conflicts: " + "\n".join(lines)
    return ApiError(status_failure(409, "Conflict", message, status_details(causes=causes)))


def _options_invalid(kind: str, errors: list[FieldError]) -> ApiError:
    return invalid_error(kind, "meta.k8s.io", "", errors)


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out: Obj = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge_patch(out.get(key), value)
    return out


def _continue_token(rv: int, start: str) -> str:
    raw = _compact_json({"v": "meta.k8s.io/v1", "rv": rv, "start": start})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_continue(token: str) -> tuple[int, str]:
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if data.get("v") != "meta.k8s.io/v1":
            raise ValueError("incorrect encoded start resourceVersion (version meta.k8s.io/v1)")
        return int(data["rv"]), str(data["start"])
    except (ValueError, KeyError, TypeError) as exc:
        raise bad_request(f"continue key is not valid: {exc}") from None


# ---------------------------------------------------------------------------------------------
# The double
# ---------------------------------------------------------------------------------------------


class KubeDouble:
    """A fake kube-apiserver on ``127.0.0.1``; see the module docstring.

    ``user`` is the identity RBAC denials are reported for; with ``tokens`` (bearer token ->
    user name) requests must authenticate or get 401.  ``gateway_api``: the HTTPRoute and
    GRPCRoute CRDs are installed.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        user: str = "system:serviceaccount:network:consul-sync",
        tokens: Mapping[str, str] | None = None,
        bookmark_interval: float = 60.0,
        clock: Callable[[], datetime] = _now,
        gateway_api: bool = False,
    ) -> None:
        #: Whether the Gateway API CRDs (httproutes, grpcroutes) are installed.
        self._served = tuple(rt for rt in RESOURCE_TYPES if gateway_api or not rt.custom)
        self.user = user
        self.tokens = dict(tokens) if tokens is not None else None
        self.bookmark_interval = bookmark_interval
        self._clock = clock
        self._host = host
        self._port = port
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._objects: dict[str, dict[tuple[str, str], _Stored]] = {
            storage: {} for storage in _STORAGE_TYPE
        }
        self._uids: dict[str, tuple[str, str, str]] = {}
        self._owned_by: dict[str, set[tuple[str, str, str]]] = {}
        self._rv = 1
        self._compacted = 0
        self._history: builtins.list[_WatchEvent] = []
        self._history_rvs: builtins.list[int] = []
        self._alloc = _Allocator()
        self._denials: set[tuple[str, str, str | None]] = set()
        self._faults: builtins.list[Fault] = []
        self._bookmark_epoch = 0
        self._active_watches = 0
        self._watches_held = False
        self._stopping = False
        self._stop_event = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self.request_log: builtins.list[LoggedRequest] = []
        self.exchanges: builtins.list[Exchange] = []

    # -- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> KubeDouble:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def port(self) -> int:
        return self._port

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        """Listen (again) on the same port; stored objects survive ``stop()``."""
        if self._server is not None:
            return
        with self._lock:
            self._stopping = False
        self._stop_event.clear()
        server = _Server((self._host, self._port), self)
        self._port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name=f"kube-double-{self._port}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop listening, end watches and cut open connections (like a server restart)."""
        server = self._server
        if server is None:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._stop_event.set()
        server.shutdown()
        server.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    close = stop

    def _track(self, connection: socket.socket, opened: bool) -> None:
        with self._lock:
            if opened:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    # -- observation ----------------------------------------------------------------------

    @property
    def resource_version(self) -> str:
        """The current global resourceVersion."""
        with self._lock:
            return str(self._rv)

    def writes(self) -> builtins.list[LoggedRequest]:
        """Logged POST/PUT/PATCH/DELETE requests."""
        with self._lock:
            return [r for r in self.request_log if r.method in ("POST", "PUT", "PATCH", "DELETE")]

    def count(self, verb: str | None = None, resource: str | None = None) -> int:
        """How many API requests had this Kubernetes verb and/or resource (plural)."""
        with self._lock:
            return sum(
                1
                for e in self.exchanges
                if e.verb
                and (verb is None or e.verb == verb)
                and (resource is None or resource in (e.resource, e.resource.split(".")[0]))
            )

    def reset_log(self) -> None:
        with self._lock:
            self.request_log.clear()
            self.exchanges.clear()

    @property
    def active_watches(self) -> int:
        with self._lock:
            return self._active_watches

    def wait_for_watches(self, count: int = 1, timeout: float = 5.0) -> bool:
        """Block until at least ``count`` watch streams are open."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._active_watches < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.05))
            return True

    # -- RBAC and faults ------------------------------------------------------------------

    def deny(self, verb: str, resource: str, namespace: str | None = None) -> None:
        """Answer 403 for ``verb`` (or ``*``) on ``resource`` (plural, plural.group or ``*``)."""
        with self._lock:
            self._denials.add((verb, resource, namespace))

    def allow(self, verb: str, resource: str, namespace: str | None = None) -> None:
        with self._lock:
            self._denials.discard((verb, resource, namespace))

    def fail_next(
        self,
        count: int = 1,
        *,
        method: str | None = None,
        path_prefix: str = "",
        status: int = 500,
        mode: FaultMode = "status",
        retry_after: int | None = None,
        delay: float = 0.0,
        message: str | None = None,
        after_commit: bool = False,
    ) -> Fault:
        """Make the next ``count`` requests matching ``method`` and ``path_prefix`` fail.

        429 answers like API Priority and Fairness (plain text, ``Retry-After: 1`` unless
        ``retry_after`` says otherwise; with ``message`` a ``TooManyRequests`` Status); 409,
        500, 503 and 504 answer the Status bodies the real server uses for those failures.
        """
        fault = Fault(
            method=method.upper() if method else None,
            path_prefix=path_prefix,
            remaining=count,
            status=status,
            mode=mode,
            retry_after=retry_after,
            delay=delay if delay or mode != "hang" else 30.0,
            message=message,
            after_commit=after_commit,
        )
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Forget every pending fault (bench/soak.py ends its outages with it)."""
        with self._lock:
            self._faults.clear()

    # -- watch control --------------------------------------------------------------------

    def compact(self, rv: int | str | None = None) -> None:
        """Forget history up to ``rv`` (default: now); older watches answer 410 Gone."""
        with self._cond:
            target = self._rv if rv is None else int(rv)
            self._compact_locked(target)
            self._cond.notify_all()

    def _compact_locked(self, target: int) -> None:
        self._compacted = max(self._compacted, target)
        cut = bisect.bisect_right(self._history_rvs, self._compacted)
        del self._history[:cut]
        del self._history_rvs[:cut]

    def hold_watches(self) -> None:
        """Open watches deliver nothing until :meth:`release_watches` (a lagging
        watch cache: writes are committed and answered, their events come
        later, in order; bookmarks wait too)."""
        with self._cond:
            self._watches_held = True

    def release_watches(self) -> None:
        with self._cond:
            self._watches_held = False
            self._cond.notify_all()

    def send_bookmarks(self) -> None:
        """Make every watch that allowed bookmarks send one now."""
        with self._cond:
            self._bookmark_epoch += 1
            self._cond.notify_all()

    # -- direct access (no HTTP, no RBAC, no faults, not logged) --------------------------

    def get(self, resource: str, namespace: str, name: str) -> Obj | None:
        """The object as the API would answer it, or None."""
        rt = resource_type(resource)
        with self._lock:
            stored = self._objects[rt.storage].get((namespace, name))
            if stored is None:
                return None
            return cast(Obj, json.loads(go_json(self._typed(rt, self._view(stored)))))

    def list(
        self, resource: str, namespace: str | None = None, *, label_selector: str = ""
    ) -> builtins.list[Obj]:
        """Matching objects (with kind/apiVersion), ordered like the API lists them."""
        rt = resource_type(resource)
        try:
            selection = Selection(namespace or "", tuple(parse_label_selector(label_selector)))
        except SelectorError as exc:
            raise ValueError(str(exc)) from None
        with self._lock:
            items = [self._typed(rt, view) for _, view in self._matching(rt, selection)]
            return cast(list[Obj], json.loads(go_json(items)))

    def create(
        self,
        resource: str,
        obj: Mapping[str, Any],
        *,
        namespace: str | None = None,
        manager: str = "kubectl-create",
    ) -> Obj:
        """Create like ``POST`` (validation included); raises ApiError."""
        rt = resource_type(resource)
        ns = namespace or (obj.get("metadata") or {}).get("namespace") or "default"
        request = _Request("POST", "", {"fieldManager": manager}, "application/json", go_json(obj))
        _, body = self._create(rt, ns, request)
        return body

    def apply(
        self,
        resource: str,
        obj: Mapping[str, Any],
        *,
        manager: str,
        force: bool = False,
        namespace: str | None = None,
    ) -> Obj:
        """Server-side apply like ``PATCH application/apply-patch+yaml``; raises ApiError."""
        rt = resource_type(resource)
        meta = obj.get("metadata") or {}
        ns = namespace or meta.get("namespace") or "default"
        query = {"fieldManager": manager}
        if force:
            query["force"] = "true"
        request = _Request("PATCH", "", query, APPLY_PATCH, go_json(obj))
        _, body = self._apply(rt, ns, str(meta.get("name") or ""), request, manager, force)
        return body

    def update(
        self, resource: str, obj: Mapping[str, Any], *, manager: str = "kubectl-edit"
    ) -> Obj:
        """Replace like ``PUT`` (resourceVersion checked when given); raises ApiError."""
        rt = resource_type(resource)
        meta = obj.get("metadata") or {}
        ns = meta.get("namespace") or "default"
        request = _Request("PUT", "", {"fieldManager": manager}, "application/json", go_json(obj))
        _, body = self._update(rt, ns, str(meta.get("name") or ""), request)
        return body

    def delete(self, resource: str, namespace: str, name: str) -> None:
        """Delete like ``DELETE`` (garbage collection included); raises ApiError."""
        self._delete(resource_type(resource), namespace, name, _Request("DELETE", "", {}))

    def set_status(self, resource: str, namespace: str, name: str, status: Obj) -> Obj:
        """Write ``status`` as a controller does through the ``/status``
        subresource of a custom resource (a Gateway's verdict on a route);
        watchers see a MODIFIED event."""
        rt = resource_type(resource)
        with self._cond:
            live = self._objects[rt.storage].get((namespace, name))
            if live is None:
                raise not_found(rt, name)
            obj = copy.deepcopy(live.obj)
            obj["status"] = copy.deepcopy(status)
            stored = self._commit(rt.storage, namespace, name, obj, live.managers, "MODIFIED")
            return self._typed(rt, self._view(stored))

    # -- HTTP entry point -------------------------------------------------------------------

    def _serve(self, request: _Request) -> _Reply | _WatchPlan | _Drop:
        exchange = Exchange(
            request.method,
            request.path,
            dict(request.query),
            request.content_type,
            body=request.body,
        )
        with self._lock:
            self.request_log.append(
                LoggedRequest(
                    request.method, request.path, dict(request.query), request.content_type
                )
            )
            self.exchanges.append(exchange)
        result: _Reply | _WatchPlan | _Drop
        try:
            result = self._serve_inner(request, exchange)
        except ApiError as err:
            result = _error_reply(err)
        except Exception as exc:  # a bug in the double must not hang the client
            result = _error_reply(internal_error(f"kube double: {exc!r}"))
        if isinstance(result, _Reply):
            exchange.status = result.status
        elif isinstance(result, _WatchPlan):
            exchange.status = 200
        return result

    def _serve_inner(self, request: _Request, exchange: Exchange) -> _Reply | _WatchPlan | _Drop:
        user = self._authenticate(request)
        exchange.user = user
        route = self._route(request)
        if isinstance(route, _Reply):
            return route
        exchange.verb, exchange.resource = route.verb, route.rt.qualified
        exchange.namespace, exchange.name = route.namespace, route.name
        with self._lock:
            denied = self._denied(route)
            fault = None if denied else self._take_fault(request)
        if denied:
            raise forbidden(user, route.verb, route.rt, route.namespace, route.name)
        if fault is not None:
            exchange.faulted = True
            if not fault.after_commit:
                return self._fault_reply(fault, route)
            with contextlib.suppress(ApiError):
                self._dispatch(route, request)
            return self._fault_reply(fault, route)
        return self._dispatch(route, request)

    def _authenticate(self, request: _Request) -> str:
        if self.tokens is None:
            return self.user
        header = request.authorization or ""
        if header.startswith("Bearer ") and header[7:] in self.tokens:
            return self.tokens[header[7:]]
        raise ApiError(status_failure(401, "Unauthorized", "Unauthorized"))

    def _denied(self, route: _Route) -> bool:
        for verb, resource, namespace in self._denials:
            if verb not in ("*", route.verb):
                continue
            if resource not in ("*", route.rt.plural, route.rt.qualified):
                continue
            if namespace is not None and namespace != route.namespace:
                continue
            return True
        return False

    def _take_fault(self, request: _Request) -> Fault | None:
        for fault in self._faults:
            if fault.matches(request.method, request.path):
                fault.remaining -= 1
                fault.hits += 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _fault_reply(self, fault: Fault, route: _Route) -> _Reply | _Drop:
        if fault.mode == "drop":
            return _Drop(fault.delay)
        if fault.mode == "hang":
            return _Drop(fault.delay)
        code = fault.status
        headers: dict[str, str] = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = str(fault.retry_after)
        if code == 429:
            headers.setdefault("Retry-After", "1")
            if fault.message is None:
                err = ApiError(
                    {"code": 429},
                    headers=headers,
                    text="Too many requests, please try again later.\n",
                    code=429,
                )
            else:
                err = ApiError(
                    status_failure(
                        429,
                        "TooManyRequests",
                        fault.message,
                        status_details(retry_after=int(headers["Retry-After"])),
                    ),
                    headers=headers,
                )
        elif code == 409:
            err = conflict(route.rt, route.name, fault.message or OPTIMISTIC_LOCK_MESSAGE)
        elif code == 500:
            err = internal_error(fault.message or "etcdserver: request timed out")
        elif code == 503:
            err = ApiError(
                status_failure(
                    503,
                    "ServiceUnavailable",
                    fault.message or "the server is currently unable to handle the request",
                ),
            )
        elif code == 504:
            err = ApiError(
                status_failure(
                    504,
                    "Timeout",
                    "Timeout: "
                    + (
                        fault.message
                        or "request did not complete within requested timeout - "
                        "context deadline exceeded"
                    ),
                    {},
                )
            )
        else:
            err = unknown_error(code, fault.message or f"injected failure {code}")
        err.headers.update(headers)
        return _error_reply(err)

    # -- routing ----------------------------------------------------------------------------

    def _route(self, request: _Request) -> _Route | _Reply:
        segments = [unquote(s) for s in request.path.split("/") if s]
        head = segments[0] if segments else ""
        if head == "api":
            if len(segments) == 1 or segments[1] != "v1":
                raise not_found_path()
            group, version, rest = "", "v1", segments[2:]
        elif head == "apis":
            groups = sorted({rt.group for rt in self._served if rt.group})
            if len(segments) == 1:
                return _json_reply(
                    200,
                    {
                        "kind": "APIGroupList",
                        "apiVersion": "v1",
                        "groups": [self._api_group(g) for g in groups],
                    },
                )
            group = segments[1]
            if group not in groups:
                raise not_found_path()
            if len(segments) == 2:
                return _json_reply(
                    200, {"kind": "APIGroup", "apiVersion": "v1", **self._api_group(group)}
                )
            version, rest = segments[2], segments[3:]
            if version != "v1" and group == GATEWAY_GROUP:
                # a version a CRD does not serve: the plain-text 404 (recording 08)
                return _Reply(404, b"404 page not found\n", "text/plain; charset=utf-8")
            if version != "v1":
                raise not_found_path()
        else:
            return _Reply(404, b"404 page not found\n", "text/plain; charset=utf-8")
        if not rest:
            if group == GATEWAY_GROUP:
                return _json_reply(200, GATEWAY_RESOURCE_LIST)
            return _json_reply(200, self._resource_list(group))
        watch = False
        if rest[0] == "watch":
            watch, rest = True, rest[1:]
            if not rest:
                raise not_found_path()
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, plural, tail = rest[1], rest[2], rest[3:]
        else:
            namespace, plural, tail = "", rest[0], rest[1:]
        rt = _BY_GROUP_VERSION.get((group, version, plural))
        if group == GATEWAY_GROUP and (rt is None or rt not in self._served):
            # an uninstalled custom resource: plain text (recording 25)
            return _Reply(404, b"404 page not found\n", "text/plain; charset=utf-8")
        if rt is None or len(tail) > 1 or (tail and not namespace):
            raise not_found_path()
        name = tail[0] if tail else ""
        method = request.method
        if method in ("GET", "HEAD"):
            if name:
                verb = "get"
            else:
                verb = "watch" if watch or _truthy(request.query.get("watch")) else "list"
        elif method == "POST" and not name and namespace:
            verb = "create"
        elif method == "PUT" and name:
            verb = "update"
        elif method == "PATCH" and name:
            verb = "patch"
        elif method == "DELETE" and name:
            verb = "delete"
        else:
            raise method_not_allowed()
        return _Route(verb, rt, namespace, name)

    @staticmethod
    def _api_group(group: str) -> Obj:
        gv = {"groupVersion": f"{group}/v1", "version": "v1"}
        if group == GATEWAY_GROUP:  # recording 09
            beta = {"groupVersion": f"{group}/v1beta1", "version": "v1beta1"}
            return {"name": group, "versions": [gv, beta], "preferredVersion": gv}
        return {"name": group, "versions": [gv], "preferredVersion": gv}

    @staticmethod
    def _resource_list(group: str) -> Obj:
        resources: builtins.list[Obj] = []
        if group == "":
            resources.append(
                {
                    "name": "namespaces",
                    "singularName": "",
                    "namespaced": False,
                    "kind": "Namespace",
                    "verbs": ["get", "list"],
                    "shortNames": ["ns"],
                }
            )
        for rt in RESOURCE_TYPES:
            if rt.group != group or rt.custom:
                continue
            entry: Obj = {
                "name": rt.plural,
                "singularName": "",
                "namespaced": True,
                "kind": rt.kind,
                "verbs": list(_VERBS),
            }
            if rt.short_names:
                entry["shortNames"] = list(rt.short_names)
            if rt.categories:
                entry["categories"] = list(rt.categories)
            if rt.storage_version_hash:
                entry["storageVersionHash"] = rt.storage_version_hash
            resources.append(entry)
        if group == "":  # the core list has no apiVersion (recording 40b)
            return {"kind": "APIResourceList", "groupVersion": "v1", "resources": resources}
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/v1",
            "resources": resources,
        }

    # -- verbs ------------------------------------------------------------------------------

    def _dispatch(self, route: _Route, request: _Request) -> _Reply | _WatchPlan:
        rt, ns, name = route.rt, route.namespace, route.name
        if route.verb == "get":
            return _json_reply(200, self._get(rt, ns, name))
        if route.verb == "list":
            return _json_reply(200, self._list(rt, ns, request.query))
        if route.verb == "watch":
            return self._watch_plan(rt, ns, request.query)
        if route.verb == "create":
            code, body = self._create(rt, ns, request)
        elif route.verb == "update":
            code, body = self._update(rt, ns, name, request)
        elif route.verb == "patch":
            code, body = self._patch(rt, ns, name, request)
        else:
            code, body = self._delete(rt, ns, name, request)
        return _json_reply(code, body)

    def _view(self, stored: _Stored) -> Obj:
        """The stored object with ``managedFields`` (storage shape, no type meta)."""
        if not stored.managers:
            return stored.obj
        if stored.managed_json is None:
            stored.managed_json = encode_managers(stored.managers)
        view = dict(stored.obj)
        view["metadata"] = {**stored.obj["metadata"], "managedFields": stored.managed_json}
        return view

    @staticmethod
    def _typed(rt: ResourceType, view: Obj, typed: bool = True) -> Obj:
        rest = {k: v for k, v in view.items() if k not in ("kind", "apiVersion")}
        if not typed:
            return rest
        return {"kind": rt.kind, "apiVersion": rt.api_version, **rest}

    def _get(self, rt: ResourceType, ns: str, name: str) -> Obj:
        with self._lock:
            stored = self._objects[rt.storage].get((ns, name))
            if stored is None:
                raise not_found(rt, name)
            return self._typed(rt, self._view(stored))

    def _selection(self, rt: ResourceType, ns: str, query: Mapping[str, str]) -> Selection:
        try:
            labels = parse_label_selector(query.get("labelSelector", ""))
        except SelectorError as exc:
            raise bad_request(str(exc)) from None
        if query.get("fieldSelector"):
            raise bad_request("the double serves no field selectors")
        return Selection(ns, tuple(labels))

    def _matching(self, rt: ResourceType, selection: Selection) -> builtins.list[tuple[str, Obj]]:
        """(etcd key, view) of the matching objects in etcd key order."""
        out: builtins.list[tuple[str, Obj]] = []
        for (ns, name), stored in self._objects[rt.storage].items():
            if selection.namespace and ns != selection.namespace:
                continue
            view = self._view(stored)
            if selection.matches(view):
                out.append((f"{ns}/{name}", view))
        out.sort(key=lambda item: item[0])
        return out

    def _list(self, rt: ResourceType, ns: str, query: Mapping[str, str]) -> Obj:
        selection = self._selection(rt, ns, query)
        try:
            limit = int(query.get("limit") or 0)
        except ValueError:
            raise bad_request(f"invalid limit: {query.get('limit')}") from None
        token = query.get("continue") or ""
        prefix = f"{ns}/" if ns else ""
        with self._lock:
            items = self._matching(rt, selection)
            list_rv = self._rv
            if token:
                token_rv, start = _decode_continue(token)
                if token_rv < self._compacted:
                    raise expired(
                        "The provided continue parameter is too old to display a consistent list "
                        "result. You can start a new list without the continue parameter, or use "
                        "the continue token in this response to retrieve the remainder of the "
                        "results. Continuing with the provided token results in an inconsistent "
                        "list - objects that were created, modified, or deleted between the time "
                        "the first chunk was returned and now may show up in the list."
                    )
                list_rv = token_rv
                items = [item for item in items if item[0] >= prefix + start]
            meta: Obj = {"resourceVersion": str(list_rv)}
            if limit and len(items) > limit:
                page = items[:limit]
                # the storage key after the list's own prefix (recording 35)
                meta["continue"] = _continue_token(list_rv, page[-1][0][len(prefix) :] + "\x00")
                if not selection.labels:
                    meta["remainingItemCount"] = len(items) - limit
                items = page
            return {
                "kind": f"{rt.kind}List",
                "apiVersion": rt.api_version,
                "metadata": meta,
                "items": [self._typed(rt, view, typed=rt.custom) for _, view in items],
            }

    # -- body decoding and options ----------------------------------------------------------

    def _decode_body(self, rt: ResourceType, request: _Request) -> Obj:
        body = request.body
        if not body.strip():
            raise bad_request(f"Object 'Kind' is missing in '{body.decode(errors='replace')}'")
        try:
            raw = json.loads(body)
        except ValueError as exc:
            raise bad_request(f"couldn't get version/kind; json parse error: {exc}") from None
        if not isinstance(raw, dict):
            raise bad_request(
                "couldn't get version/kind; json parse error: json: cannot unmarshal "
                f"{_json_kind(raw)} into Go value of type struct {{ APIVersion string "
                '"json:\\"apiVersion,omitempty\\""; Kind string "json:\\"kind,omitempty\\"" }'
            )
        api_version = raw.get("apiVersion") or rt.api_version
        kind = raw.get("kind") or rt.kind
        if api_version != rt.api_version:
            raise bad_request(
                f"the API version in the data ({api_version}) does not match the expected API "
                f"version ({rt.api_version})"
            )
        if kind != rt.kind:
            raise bad_request(
                f"{kind} in version {go_quote(rt.version)} cannot be handled as a {rt.kind}: "
                f"no kind {go_quote(kind)} is registered for version {go_quote(api_version)}"
            )
        try:
            obj = cast(Obj, decode_value(raw, rt.schema, _DecodeContext(apply=False)))
        except DecodeError as exc:
            raise bad_request(
                f"{rt.kind} in version {go_quote(rt.version)} cannot be handled as a "
                f"{rt.kind}: {exc}"
            ) from None
        obj.pop("kind", None)
        obj.pop("apiVersion", None)
        if not isinstance(obj.get("metadata"), dict):
            obj["metadata"] = {}
        return obj

    @staticmethod
    def _options(request: _Request, options_kind: str, *, patch_type: str = "") -> tuple[str, bool]:
        """(field manager, force) with ``ValidatePatchOptions``-style checks."""
        query = request.query
        errors: builtins.list[FieldError] = []
        force_text = query.get("force")
        force = _truthy(force_text)
        if options_kind == "PatchOptions":
            if patch_type != APPLY_PATCH:
                if force_text is not None:
                    errors.append(f_forbidden("force", "may not be specified for non-apply patch"))
            elif not query.get("fieldManager"):
                errors.append(f_required("fieldManager", "is required for apply patch"))
        manager = query.get("fieldManager") or request.user_agent.split("/")[0]
        if len(manager) > 128:
            errors.append(f_too_long("fieldManager", 128))
        elif any(not ch.isprintable() for ch in manager):
            errors.append(
                f_invalid("fieldManager", manager, "must only contain printable characters")
            )
        if "dryRun" in query:
            errors.append(f_not_supported("dryRun", query["dryRun"], []))  # not served
        if errors:
            raise _options_invalid(options_kind, errors)
        return manager, force

    # -- create -----------------------------------------------------------------------------

    def _create(self, rt: ResourceType, ns: str, request: _Request) -> tuple[int, Obj]:
        manager, _ = self._options(request, "CreateOptions")
        obj = self._decode_body(rt, request)
        meta = obj["metadata"]
        if meta.get("namespace") and meta["namespace"] != ns:
            raise bad_request(NAMESPACE_MISMATCH_MESSAGE)
        with self._cond:
            return 201, self._create_locked(rt, ns, obj, manager, None)

    def _create_locked(
        self,
        rt: ResourceType,
        ns: str,
        obj: Obj,
        manager: str,
        managers: Managers | None,
    ) -> Obj:
        meta = obj.setdefault("metadata", {})
        meta["namespace"] = ns
        if meta.get("resourceVersion"):
            raise unknown_error(500, "resourceVersion should not be set on objects to be created")
        name = str(meta.get("name") or "")
        default_object(rt, obj)
        obj = cast(Obj, shape(obj, rt.schema))
        if managers is None:
            managers = self._update_managers(rt, _empty_object(rt), obj, {}, manager)
        meta = obj["metadata"]
        meta.pop("managedFields", None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = format_time(self._clock())
        meta.pop("deletionTimestamp", None)
        meta.pop("deletionGracePeriodSeconds", None)
        meta.pop("generation", None)
        if rt.storage == "endpointslices" or rt.custom:
            meta["generation"] = 1
        if rt.custom:
            obj.pop("status", None)  # the status subresource: not written here
        if rt.storage == "services":
            prepare_service(obj, None, self._alloc)
        obj = cast(Obj, shape(obj, rt.schema))
        errors = validate_object(rt, obj, None)
        if errors:
            raise invalid_error(rt.kind, rt.group, name, errors)
        if (ns, name) in self._objects[rt.storage]:
            raise already_exists(rt, name)
        stored = self._commit(rt.storage, ns, name, obj, managers, "ADDED")
        return self._typed(rt, self._view(stored))

    def _update_managers(
        self, rt: ResourceType, old: Obj, new: Obj, managers: Managers, manager: str
    ) -> Managers:
        """managedFields after an ``Update`` operation (PUT, POST, non-apply PATCH)."""
        diff = compare(old, new, rt.schema)
        removed = strip_fields(diff.removed, rt.reset_fields)
        changed = strip_fields(diff.added | diff.modified, rt.reset_fields)
        key = (manager, "Update", "")
        out: Managers = {}
        for other_key, entry in managers.items():
            if other_key == key:
                continue
            remaining = entry.fields - changed - removed
            if remaining == entry.fields:
                out[other_key] = entry
            elif remaining:
                out[other_key] = replace(entry, fields=frozenset(remaining))
        previous = managers.get(key)
        fields = set(previous.fields - removed) if previous else set()
        if changed:
            fields |= changed
            out[key] = ManagerEntry(
                manager, "Update", rt.api_version, format_time(self._clock()), frozenset(fields)
            )
        elif previous is not None and fields:
            out[key] = replace(previous, fields=frozenset(fields))
        return out

    # -- update -----------------------------------------------------------------------------

    def _update(self, rt: ResourceType, ns: str, name: str, request: _Request) -> tuple[int, Obj]:
        manager, _ = self._options(request, "UpdateOptions")
        obj = self._decode_body(rt, request)
        meta = obj["metadata"]
        if (meta.get("name") or "") != name:
            raise bad_request(
                f"the name of the object ({meta.get('name') or ''}) does not match the name on "
                f"the URL ({name})"
            )
        if meta.get("namespace") and meta["namespace"] != ns:
            raise bad_request(NAMESPACE_MISMATCH_MESSAGE)
        with self._cond:
            live = self._objects[rt.storage].get((ns, name))
            if live is None:
                if rt.allow_create_on_update:
                    meta.pop("resourceVersion", None)
                    return 201, self._create_locked(rt, ns, obj, manager, None)
                raise not_found(rt, name)
            self._check_preconditions(rt, name, live, meta)
            override = meta.get("managedFields")
            managers = decode_managers(override) if override is not None else live.managers
            return 200, self._update_locked(rt, ns, name, live, obj, manager, managers)

    def _check_preconditions(
        self, rt: ResourceType, name: str, live: _Stored, meta: Mapping[str, Any]
    ) -> None:
        live_meta = live.obj["metadata"]
        rv = meta.get("resourceVersion") or ""
        if rv and rv != live_meta.get("resourceVersion"):
            raise conflict(rt, name)
        uid = meta.get("uid") or ""
        if uid and uid != live_meta.get("uid"):
            raise conflict(
                rt,
                name,
                f"Precondition failed: UID in precondition: {uid}, UID in object meta: "
                f"{live_meta.get('uid')}",
            )

    def _update_locked(
        self,
        rt: ResourceType,
        ns: str,
        name: str,
        live: _Stored,
        obj: Obj,
        manager: str,
        managers: Managers,
        *,
        applied: bool = False,
    ) -> Obj:
        meta = obj.setdefault("metadata", {})
        meta["name"], meta["namespace"] = name, ns
        meta.pop("managedFields", None)
        default_object(rt, obj)
        obj = cast(Obj, shape(obj, rt.schema))
        if not applied:
            managers = self._update_managers(rt, live.obj, obj, managers, manager)
        live_meta = live.obj["metadata"]
        meta = obj["metadata"]
        for key in ("uid", "creationTimestamp", "resourceVersion"):
            meta[key] = live_meta.get(key)
        for key in ("deletionTimestamp", "deletionGracePeriodSeconds", "generation"):
            if key in live_meta:
                meta[key] = live_meta[key]
            else:
                meta.pop(key, None)
        if rt.storage == "services":
            prepare_service(obj, live.obj, self._alloc)
        if rt.custom:
            # The status subresource: writes of the main resource keep the
            # stored status; a spec change bumps the generation.
            obj.pop("status", None)
            if "status" in live.obj:
                obj["status"] = copy.deepcopy(live.obj["status"])
            if not same_value(obj.get("spec"), live.obj.get("spec")):
                obj["metadata"]["generation"] = int(live_meta.get("generation") or 0) + 1
        obj = cast(Obj, shape(obj, rt.schema))
        if rt.storage == "endpointslices":
            new_rest = {k: v for k, v in obj.items() if k != "metadata"}
            old_rest = {k: v for k, v in live.obj.items() if k != "metadata"}
            labels_changed = not same_value(
                obj["metadata"].get("labels") or {}, live_meta.get("labels") or {}
            )
            if labels_changed or not same_value(new_rest, old_rest):
                obj["metadata"]["generation"] = int(live_meta.get("generation") or 0) + 1
                obj = cast(Obj, shape(obj, rt.schema))
        errors = validate_object(rt, obj, live.obj)
        if errors:
            raise invalid_error(rt.kind, rt.group, name, errors)
        if same_value(obj, live.obj) and managers == live.managers:
            return self._typed(rt, self._view(live))
        stored = self._commit(rt.storage, ns, name, obj, managers, "MODIFIED")
        return self._typed(rt, self._view(stored))

    # -- patch ------------------------------------------------------------------------------

    def _patch(self, rt: ResourceType, ns: str, name: str, request: _Request) -> tuple[int, Obj]:
        patch_type = (request.content_type or "").split(";")[0].strip()
        if patch_type not in _PATCH_TYPES:
            raise ApiError(
                status_failure(
                    415,
                    "UnsupportedMediaType",
                    "the body of the request was in an unknown format - accepted media types "
                    "include: " + ", ".join(_PATCH_TYPES),
                )
            )
        manager, force = self._options(request, "PatchOptions", patch_type=patch_type)
        if patch_type == APPLY_PATCH:
            return self._apply(rt, ns, name, request, manager, force)
        try:
            patch = json.loads(request.body or b"null")
        except ValueError as exc:
            raise bad_request(str(exc)) from None
        with self._cond:
            live = self._objects[rt.storage].get((ns, name))
            if live is None:
                raise not_found(rt, name)
            current = self._typed(rt, self._view(live))
            patched = _merge_patch(current, patch)
            if not isinstance(patched, dict):
                raise bad_request("the patched object is not a JSON object")
            request_after = _Request("PUT", "", {}, "application/json", go_json(patched))
            obj = self._decode_body(rt, request_after)
            meta = obj["metadata"]
            if (meta.get("name") or "") != name:
                raise bad_request(
                    f"the name of the object ({meta.get('name') or ''}) does not match the name "
                    f"on the URL ({name})"
                )
            self._check_preconditions(rt, name, live, meta)
            managers = live.managers
            patched_managed = meta.get("managedFields")
            current_managed = (current.get("metadata") or {}).get("managedFields")
            if patched_managed is not None and not same_value(patched_managed, current_managed):
                managers = decode_managers(patched_managed)
            return 200, self._update_locked(rt, ns, name, live, obj, manager, managers)

    def _apply(
        self,
        rt: ResourceType,
        ns: str,
        name: str,
        request: _Request,
        manager: str,
        force: bool,
    ) -> tuple[int, Obj]:
        try:
            config = json.loads(request.body.decode() or "{}")
        except ValueError as exc:  # YAML proper is not read here: the clients send JSON
            raise bad_request(f"error decoding YAML: {exc}") from None
        if not isinstance(config, dict):
            raise bad_request(
                "error decoding YAML: error unmarshaling JSON: while decoding JSON: json: cannot "
                f"unmarshal {_json_kind(config)} into Go value of type map[string]interface {{}}"
            )
        api_version = config.get("apiVersion") or ""
        if api_version != rt.api_version:
            raise bad_request(
                "Incorrect version specified in apply patch. Specified patch version: "
                f"{api_version}, expected: {rt.api_version}"
            )
        kind = config.get("kind") or ""
        if kind != rt.kind:
            raise unknown_error(
                500,
                f"failed to create typed patch object ({ns}/{name}; {rt.group}/{rt.version}, "
                f"Kind={kind}): no corresponding type for {rt.group}/{rt.version}, Kind={kind}",
            )
        try:
            decoded = cast(Obj, decode_value(config, rt.schema, _DecodeContext(apply=True)))
        except DecodeError as exc:
            raise unknown_error(
                500, f"failed to create typed patch object ({ns}/{name}; {rt.gvk_text()}): {exc}"
            ) from None
        decoded.pop("kind", None)
        decoded.pop("apiVersion", None)
        config_meta = decoded.get("metadata")
        if not isinstance(config_meta, dict):
            config_meta = decoded["metadata"] = {}
        if (config_meta.get("name") or name) != name:
            raise bad_request(
                f"the name of the object ({config_meta.get('name')}) does not match the name on "
                f"the URL ({name})"
            )
        if (config_meta.get("namespace") or ns) != ns:
            raise bad_request(NAMESPACE_MISMATCH_MESSAGE)
        config_meta.pop("managedFields", None)
        schema = rt.schema
        with self._cond:
            live = self._objects[rt.storage].get((ns, name))
            rv = config_meta.get("resourceVersion") or ""
            if live is not None and rv and rv != live.obj["metadata"].get("resourceVersion"):
                raise conflict(rt, name)
            if live is None:
                base = _empty_object(rt)
                base["metadata"] = {**base["metadata"], "name": name, "namespace": ns}
                managers: Managers = {}
            else:
                base = live.obj
                managers = dict(live.managers)
            key = (manager, "Apply", "")
            previous = managers.get(key)
            last = previous.fields if previous else frozenset()
            new_set = frozenset(strip_fields(field_set(decoded, schema), rt.reset_fields))
            merged = cast(Obj, merge_values(copy.deepcopy(base), decoded, schema))
            owned: set[FieldPath] = set(new_set)
            for other_key, entry in managers.items():
                if other_key != key:
                    owned |= entry.fields
            merged = prune(merged, last - new_set, owned, schema)
            diff = compare(base, merged, schema)
            changed = diff.added | diff.modified
            conflicts = {
                other_key: entry.fields & changed
                for other_key, entry in managers.items()
                if other_key != key and entry.fields & changed
            }
            if conflicts and not force:
                raise apply_conflict(conflicts, managers)
            result: Managers = {}
            for other_key, entry in managers.items():
                if other_key == key:
                    continue
                remaining = entry.fields - conflicts.get(other_key, frozenset()) - diff.removed
                if remaining == entry.fields:
                    result[other_key] = entry
                elif remaining:
                    result[other_key] = replace(entry, fields=frozenset(remaining))
            if new_set:
                stamp = (
                    previous.time
                    if previous is not None and diff.same and previous.fields == new_set
                    else format_time(self._clock())
                )
                result[key] = ManagerEntry(manager, "Apply", rt.api_version, stamp, new_set)
            if live is None:
                merged["metadata"].pop("resourceVersion", None)
                return 201, self._create_locked(rt, ns, merged, manager, result)
            return 200, self._update_locked(
                rt, ns, name, live, merged, manager, result, applied=True
            )

    # -- delete -----------------------------------------------------------------------------

    def _delete_options(self, request: _Request) -> Obj:
        """The preconditions; only background propagation (the sink's) is served."""
        options: Obj = {}
        if request.body.strip():
            try:
                loaded = json.loads(request.body)
            except ValueError as exc:
                raise bad_request(f"couldn't get version/kind; json parse error: {exc}") from None
            if isinstance(loaded, dict):
                options = loaded
        policy = request.query.get("propagationPolicy") or options.get("propagationPolicy")
        errors: builtins.list[FieldError] = []
        if policy not in (None, "Background"):
            errors.append(f_not_supported("propagationPolicy", policy, ["Background", "nil"]))
        for unserved in ("orphanDependents", "dryRun"):
            if unserved in request.query or options.get(unserved) is not None:
                errors.append(f_not_supported(unserved, GoRepr("set"), []))
        if errors:
            raise _options_invalid("DeleteOptions", errors)
        preconditions = options.get("preconditions") or {}
        return preconditions if isinstance(preconditions, dict) else {}

    def _delete(self, rt: ResourceType, ns: str, name: str, request: _Request) -> tuple[int, Obj]:
        preconditions = self._delete_options(request)
        with self._cond:
            live = self._objects[rt.storage].get((ns, name))
            if live is None:
                raise not_found(rt, name)
            live_meta = live.obj["metadata"]
            # rest.BeforeDelete's texts, the resource named by its Kind (recordings 33, 34;
            # gateway 13).
            uid = preconditions.get("uid")
            rv = preconditions.get("resourceVersion")
            failed = ""
            if uid and uid != live_meta.get("uid"):
                failed = (
                    f"the UID in the precondition ({uid}) does not match the UID in record "
                    f"({live_meta.get('uid')}). The object might have been deleted and then "
                    "recreated"
                )
            elif rv and rv != live_meta.get("resourceVersion"):
                failed = (
                    f"the ResourceVersion in the precondition ({rv}) does not match the "
                    f"ResourceVersion in record ({live_meta.get('resourceVersion')}). The object "
                    "might have been modified"
                )
            if failed:
                kind = f"{rt.kind}.{rt.group}" if rt.group else rt.kind
                raise ApiError(
                    status_failure(
                        409,
                        "Conflict",
                        f"Operation cannot be fulfilled on {kind} {go_quote(name)}: {failed}",
                        status_details(name=name, group=rt.group, kind=rt.kind),
                    )
                )
            return 200, self._delete_locked(rt, ns, name, live)

    def _deleted_answer(self, rt: ResourceType, stored: _Stored) -> Obj:
        if rt.return_deleted_object:
            return self._typed(rt, self._view(stored))
        meta = stored.obj["metadata"]
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": status_details(
                name=meta.get("name", ""), group=rt.group, kind=rt.plural, uid=meta.get("uid", "")
            ),
        }

    def _delete_locked(self, rt: ResourceType, ns: str, name: str, live: _Stored) -> Obj:
        self._remove(rt.storage, ns, name)
        self._collect_dependents(ns, str(live.obj["metadata"].get("uid", "")))
        return self._deleted_answer(rt, live)

    # -- garbage collection ----------------------------------------------------------------

    def _uid_alive(self, ns: str, uid: str) -> bool:
        where = self._uids.get(uid)
        return where is not None and where[1] == ns

    def _dependents(self, ns: str, uid: str) -> builtins.list[tuple[str, str]]:
        return sorted(
            (storage, name) for storage, obj_ns, name in self._owned_by.get(uid, ()) if obj_ns == ns
        )

    def _index_owners(
        self, storage: str, ns: str, name: str, stored: _Stored | None, add: bool
    ) -> None:
        if stored is None:
            return
        for ref in stored.obj["metadata"].get("ownerReferences") or []:
            uid = str(ref.get("uid", ""))
            entries = self._owned_by.setdefault(uid, set())
            if add:
                entries.add((storage, ns, name))
            else:
                entries.discard((storage, ns, name))
                if not entries:
                    del self._owned_by[uid]

    def _set_owner_refs(self, storage: str, ns: str, name: str, refs: builtins.list[Obj]) -> None:
        stored = self._objects[storage][(ns, name)]
        obj = copy.deepcopy(stored.obj)
        obj["metadata"]["ownerReferences"] = refs
        obj = cast(Obj, shape(obj, _STORAGE_TYPE[storage].schema))
        rt = _STORAGE_TYPE[storage]
        managers = self._update_managers(
            rt, stored.obj, obj, stored.managers, "kube-controller-manager"
        )
        self._commit(storage, ns, name, obj, managers, "MODIFIED")

    def _gc_delete(self, storage: str, ns: str, name: str) -> None:
        stored = self._objects[storage].get((ns, name))
        if stored is None:
            return
        self._delete_locked(_STORAGE_TYPE[storage], ns, name, stored)

    def _collect_dependents(self, ns: str, uid: str) -> None:
        """Background deletion of dependents once their owner is gone."""
        for storage, name in self._dependents(ns, uid):
            stored = self._objects[storage].get((ns, name))
            if stored is None:
                continue
            refs = stored.obj["metadata"].get("ownerReferences") or []
            remaining = [r for r in refs if r.get("uid") != uid]
            if any(self._uid_alive(ns, str(r.get("uid", ""))) for r in remaining):
                self._set_owner_refs(storage, ns, name, remaining)
            else:
                self._gc_delete(storage, ns, name)

    # -- storage and history ----------------------------------------------------------------

    def _commit(
        self, storage: str, ns: str, name: str, obj: Obj, managers: Managers, event_type: str
    ) -> _Stored:
        previous = self._objects[storage].get((ns, name))
        self._rv += 1
        obj["metadata"] = shape({**obj["metadata"], "resourceVersion": str(self._rv)}, OBJECT_META)
        stored = _Stored(obj, managers)
        self._index_owners(storage, ns, name, previous, add=False)
        self._index_owners(storage, ns, name, stored, add=True)
        self._objects[storage][(ns, name)] = stored
        self._uids[str(obj["metadata"].get("uid", ""))] = (storage, ns, name)
        prev_view = self._view(previous) if previous is not None else None
        self._record(storage, event_type, self._view(stored), prev_view)
        return stored

    def _remove(self, storage: str, ns: str, name: str) -> _Stored:
        stored = self._objects[storage].pop((ns, name))
        self._index_owners(storage, ns, name, stored, add=False)
        self._uids.pop(str(stored.obj["metadata"].get("uid", "")), None)
        self._rv += 1
        view = dict(self._view(stored))
        view["metadata"] = {**view["metadata"], "resourceVersion": str(self._rv)}
        self._record(storage, "DELETED", view, None)
        return stored

    def _record(self, storage: str, event_type: str, view: Obj, prev: Obj | None) -> None:
        self._history.append(_WatchEvent(self._rv, storage, event_type, view, prev))
        self._history_rvs.append(self._rv)
        self._cond.notify_all()

    # -- watch ------------------------------------------------------------------------------

    def _watch_plan(self, rt: ResourceType, ns: str, query: Mapping[str, str]) -> _WatchPlan:
        selection = self._selection(rt, ns, query)
        rv_text = query.get("resourceVersion") or ""
        try:
            timeout = float(query.get("timeoutSeconds") or 1800)
        except ValueError:
            raise bad_request(f"invalid timeoutSeconds: {query.get('timeoutSeconds')}") from None
        with self._lock:
            initial: builtins.list[bytes] = []
            error: bytes | None = None
            if rv_text in ("", "0"):
                start = self._rv
                initial = [
                    self._event_line("ADDED", rt, view) for _, view in self._matching(rt, selection)
                ]
            else:
                try:
                    start = int(rv_text)
                except ValueError:
                    raise bad_request(f"invalid resource version: {go_quote(rv_text)}") from None
                if start < self._compacted:
                    error = (
                        go_json(
                            {
                                "type": "ERROR",
                                "object": status_failure(
                                    410,
                                    "Expired",
                                    f"too old resource version: {start} ({self._compacted})",
                                ),
                            }
                        )
                        + b"\n"
                    )
            return _WatchPlan(
                rt,
                selection,
                start,
                initial,
                error,
                time.monotonic() + timeout,
                _truthy(query.get("allowWatchBookmarks")),
            )

    def _event_line(self, event_type: str, rt: ResourceType, view: Obj) -> bytes:
        return go_json({"type": event_type, "object": self._typed(rt, view)}) + b"\n"

    def _bookmark_line(self, rt: ResourceType) -> bytes:
        body = cast(Obj, shape({"metadata": {"resourceVersion": str(self._rv)}}, rt.schema))
        return go_json({"type": "BOOKMARK", "object": self._typed(rt, body)}) + b"\n"

    def _watch_lines(self, plan: _WatchPlan, event: _WatchEvent) -> builtins.list[bytes]:
        rt = plan.rt
        if event.storage != rt.storage:
            return []
        matches_now = plan.selection.matches(event.obj)
        if event.type == "MODIFIED" and event.prev is not None:
            matched_before = plan.selection.matches(event.prev)
            if matches_now and matched_before:
                return [self._event_line("MODIFIED", rt, event.obj)]
            if matches_now:
                return [self._event_line("ADDED", rt, event.obj)]
            if matched_before:
                prev = dict(event.prev)
                prev["metadata"] = {**prev["metadata"], "resourceVersion": str(event.rv)}
                return [self._event_line("DELETED", rt, prev)]
            return []
        return [self._event_line(event.type, rt, event.obj)] if matches_now else []

    def _stream(
        self,
        plan: _WatchPlan,
        write: Callable[[bytes], None],
        client_gone: Callable[[], bool],
    ) -> None:
        """Feed a watch; returns when it times out, the client leaves or the double stops."""
        with self._cond:
            self._active_watches += 1
            self._cond.notify_all()
            epoch = self._bookmark_epoch
        try:
            for line in plan.initial:
                write(line)
            if plan.error is not None:
                write(plan.error)
                return
            last = plan.start_rv
            next_bookmark = time.monotonic() + self.bookmark_interval
            while True:
                lines: builtins.list[bytes] = []
                finished = False
                with self._cond:
                    while not lines:
                        now = time.monotonic()
                        if self._stopping or now >= plan.deadline:
                            return
                        if self._watches_held:
                            self._cond.wait(0.05)
                            if client_gone():
                                return
                            continue
                        if last < self._compacted:
                            lines = [
                                go_json(
                                    {
                                        "type": "ERROR",
                                        "object": status_failure(
                                            410,
                                            "Expired",
                                            f"too old resource version: {last} ({self._compacted})",
                                        ),
                                    }
                                )
                                + b"\n"
                            ]
                            finished = True
                            break
                        index = bisect.bisect_right(self._history_rvs, last)
                        if index < len(self._history):
                            for event in self._history[index:]:
                                lines.extend(self._watch_lines(plan, event))
                            last = self._history[-1].rv
                            if lines:
                                break
                        if plan.bookmarks and (
                            epoch != self._bookmark_epoch or now >= next_bookmark
                        ):
                            epoch = self._bookmark_epoch
                            next_bookmark = now + self.bookmark_interval
                            lines.append(self._bookmark_line(plan.rt))
                            break
                        wait = plan.deadline - now
                        if plan.bookmarks:
                            wait = min(wait, next_bookmark - now)
                        self._cond.wait(max(0.0, min(wait, 0.25)))
                        if client_gone():
                            return
                for line in lines:
                    write(line)
                if finished:
                    return
        finally:
            with self._cond:
                self._active_watches -= 1
                self._cond.notify_all()


# ---------------------------------------------------------------------------------------------
# HTTP server
# ---------------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], double: KubeDouble) -> None:
        self.double = double
        super().__init__(address, _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        """Connections cut by the client or by ``stop()`` are not errors."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.double._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.double._track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length:
            return self.rfile.read(int(length))
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return b""

    def _handle(self) -> None:
        body = self._read_body()
        split = urlsplit(self.path)
        request = _Request(
            method=self.command,
            path=split.path,
            query=dict(parse_qsl(split.query, keep_blank_values=True)),
            content_type=self.headers.get("Content-Type"),
            body=body,
            user_agent=self.headers.get("User-Agent") or "",
            authorization=self.headers.get("Authorization"),
        )
        result = self.server.double._serve(request)
        if isinstance(result, _Reply):
            self._send(result)
        elif isinstance(result, _WatchPlan):
            self._watch(result)
        else:
            self._drop(result)

    def _common_headers(self) -> None:
        self.send_header("Audit-Id", str(uuid.uuid4()))
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("X-Kubernetes-Pf-Flowschema-Uid", _FLOW_SCHEMA_UID)
        self.send_header("X-Kubernetes-Pf-Prioritylevel-Uid", _PRIORITY_LEVEL_UID)

    def _send(self, reply: _Reply) -> None:
        try:
            self.send_response(reply.status)
            self._common_headers()
            self.send_header("Content-Type", reply.content_type)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(reply.body)
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    def _watch(self, plan: _WatchPlan) -> None:
        try:
            self.send_response(200)
            self._common_headers()
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.flush()

            def write(data: bytes) -> None:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

            self.server.double._stream(plan, write, self._client_gone)
            if self.server.double._stopping:
                self.close_connection = True
                return
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    def _client_gone(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return False
            peeked: bytes = self.connection.recv(1, socket.MSG_PEEK)
            return peeked == b""
        except OSError:
            return True

    def _drop(self, drop: _Drop) -> None:
        if drop.delay:
            self.server.double._stop_event.wait(drop.delay)
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
