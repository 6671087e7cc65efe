"""A Consul HTTP API test double that speaks real HTTP/1.1 on loopback.

What it models
==============
The subset of the HTTP API of a single **Consul 1.10.12** dev agent (one server, datacenter
``dc1``) that a catalog-watching client uses, reproducing the exchanges recorded from a real
agent in ``tests/fixtures/consul`` (see the README there; when this file and a recording
disagree, the recording is right):

* State: nodes (default ``dev-plain`` at ``127.0.0.1`` with a passing ``serfHealth`` check, and
  the agent's own ``consul`` service), service instances, node and service health checks, and
  service / node maintenance checks, with Consul's raft indexes: one global raft index, the
  services-table index (``catalog/services``), the checks-table index (``health/state``) and a
  per-service index (``health/service/<name>``) that also moves with node-level checks.
* Reads: ``GET /v1/catalog/services``, ``/v1/catalog/nodes``, ``/v1/catalog/node-services/<node>``
  (not recorded: modelled on Consul 1.10's documented shapes, its index being the catalog's, max
  of the nodes and services tables), ``/v1/catalog/datacenters``, ``/v1/health/service/<name>``,
  ``/v1/health/state/<any|passing|warning|critical>``, ``/v1/status/leader``, ``/v1/status/peers``,
  ``/v1/agent/self`` (trimmed), with the recorded headers (``X-Consul-Index``, ``-Knownleader``,
  ``-Lastcontact``, ``-Effective-Consistency``, ``-Query-Backend``, ``X-Cache``/``Age``, and
  ``X-Consul-Default-Acl-Policy`` on every response), blocking queries (``index``/``wait``, with
  the blocking-query jitter or the streaming backend's exact wait), ``?stale``/``?consistent``/
  ``?cached``, ``?tag=``, ``?passing``, ``?filter=`` (a subset of go-bexpr) and ``?pretty``.
* Agent writes: ``PUT /v1/agent/service/register``, ``/v1/agent/service/deregister/<id>``,
  ``/v1/agent/check/<pass|warn|fail|update>/<id>``, ``/v1/agent/service/maintenance/<id>``,
  ``/v1/agent/maintenance``: 200 with an empty body and no ``Content-Type``.
* ACLs (``acl=True``): default-deny, tokens via ``X-Consul-Token``, ``Authorization: Bearer`` or
  ``?token=``, response filtering, 403 ``ACL not found`` / ``Permission denied: ...``, and the ACL
  API needed by a setup script (bootstrap, policies, tokens). Rules are HCL (the block subset
  Consul's own docs use) or JSON.
* Transports: plain HTTP on TCP (the default), HTTPS (``tls=DoubleTLS(...)``: a server
  certificate, TLS done in the connection's thread) or a unix socket (``unix_path=...``); the
  faults, statistics and ``stop()``/``start()`` behave the same on each.
  :attr:`ConsulDouble.client_options` are the consul source options that reach it.
* The per-client-IP connection limit (``limits.http_max_conns_per_client``): excess connections
  get the recorded raw ``429`` at accept time, before a byte is read.
* Python-side helpers for tests: fast state mutation without HTTP (:meth:`ConsulDouble.register`,
  :meth:`ConsulDouble.batch`, :meth:`ConsulDouble.populate`, ...), connection statistics, a
  request log, a record of the blocking queries that parked (:attr:`ConsulDouble.parked_queries`:
  the wait each chose, what ended it), fault injection (:meth:`ConsulDouble.inject_fault`),
  ``stop()``/``start()`` on the same port, ``save_snapshot()``/``restore_snapshot()`` (indexes go
  backwards, as after ``consul snapshot restore``), and a ``time_scale`` knob that shrinks every
  blocking wait.

Where it deliberately differs from real Consul
==============================================
* Health checks are never executed: TTL checks never expire and HTTP/TCP/script checks keep the
  status they were registered with until changed through the API (tests drive them).
* As on a real agent, a TTL update that keeps the status but changes the note does not reach the
  catalog (the agent would sync it only after ``check_update_interval``, 5 min); the double never
  syncs it.
* Background raft writes (coordinate updates, autopilot, ...) do not happen, so indexes advance
  only on the writes made here; :meth:`ConsulDouble.bump_index` simulates unrelated writes.
* ``catalog/services`` ignores ``?filter=`` (Consul < 1.14 does too); ``health/service`` applies
  ``?filter=`` with dotted selectors (``Service.Tags``, ``Node.Node``, ``Checks.Status``, ...).
  Filter syntax errors answer 500 like Consul, but with messages that only resemble go-bexpr's.
* A blocking query on a service name that does not exist is only woken by a registration of that
  name (real Consul also wakes it on unrelated catalog changes); it returns at its timeout.
* Streaming views and agent-cache entries never expire; ``X-Cache`` is ``HIT`` with ``Age: 0``
  once a view exists, as recorded.
* Only one datacenter exists; any other ``dc`` answers 500 ``No path to datacenter``.
* JSON is compact unless ``pretty=True`` or ``?pretty`` (a real ``-dev`` agent always indents).
* Messages for errors that were not recorded follow Consul 1.10's source where known, else are
  close approximations. Inferred from the 1.10 source rather than recorded: ``health/state``
  errors (bad token, unknown dc, bad filter) carry the ``X-Consul-Index: 1`` error headers like
  ``catalog/services``; ACL-API and ``agent/self`` denials say just ``Permission denied``.
* Re-registering an instance keeps its checks' status and output (as the agent's check-state
  snapshot does), drops checks no longer in the definition but keeps a maintenance check. An
  identical re-registration consumes a raft index but moves no table index.
* ``agent/self`` returns a small subset of the real document (a superset of the recording).
"""

from __future__ import annotations

import base64
import collections
import copy
import hashlib
import http
import ipaddress
import json
import os
import random
import re
import socket
import socketserver
import ssl
import struct
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final, Literal, cast

__all__ = [
    "CONNECTION_LIMIT_BODY",
    "CONNECTION_LIMIT_RESPONSE",
    "CONSUL_VERSION",
    "ConsulDouble",
    "DoubleTLS",
    "Fault",
    "FaultKind",
    "FilterError",
    "ParkedQuery",
    "PolicyError",
    "RecordedRequest",
    "compile_filter",
    "go_json",
    "parse_go_duration",
    "parse_rules",
]

CONSUL_VERSION: Final = "1.10.12"
DEFAULT_NODE_ID: Final = "6e7bf748-16bc-29f0-e90d-c2169a31f7f7"
DEFAULT_WAIT_S: Final = 300.0
MAX_WAIT_S: Final = 600.0
JITTER_FRACTION: Final = 16
LEADER_ADDRESS: Final = "127.0.0.1:8300"

CONNECTION_LIMIT_BODY: Final = (
    "Your IP is issuing too many concurrent connections, please rate limit your calls\n"
)
CONNECTION_LIMIT_RESPONSE: Final = (
    b"HTTP/1.1 429 Too Many Requests\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: 81\r\n"
    b"Connection: close\r\n"
    b"\r\n" + CONNECTION_LIMIT_BODY.encode()
)

PASSING: Final = "passing"
WARNING: Final = "warning"
CRITICAL: Final = "critical"
_STATUSES: Final = frozenset({PASSING, WARNING, CRITICAL})

NODE_MAINT_CHECK_ID: Final = "_node_maintenance"
SERVICE_MAINT_PREFIX: Final = "_service_maintenance:"
_DEFAULT_NODE_MAINT_REASON: Final = (
    "Maintenance mode is enabled for this node, but no reason was provided. "
    "This is a default message."
)
_DEFAULT_SERVICE_MAINT_REASON: Final = (
    "Maintenance mode is enabled for this service, but no reason was provided. "
    "This is a default message."
)

GLOBAL_MANAGEMENT_POLICY_ID: Final = "00000000-0000-0000-0000-000000000001"
ANONYMOUS_ACCESSOR_ID: Final = "00000000-0000-0000-0000-000000000002"
_GLOBAL_MANAGEMENT_RULES: Final = """
acl = "write"
agent_prefix "" {
  policy = "write"
}
event_prefix "" {
  policy = "write"
}
key_prefix "" {
  policy = "write"
}
keyring = "write"
node_prefix "" {
  policy = "write"
}
operator = "write"
query_prefix "" {
  policy = "write"
}
service_prefix "" {
  policy = "write"
  intentions = "write"
}
session_prefix "" {
  policy = "write"
}
"""

# Recorded read headers (Go canonicalises header names this way).
H_ACL_POLICY: Final = "X-Consul-Default-Acl-Policy"
H_INDEX: Final = "X-Consul-Index"
H_KNOWN_LEADER: Final = "X-Consul-Knownleader"
H_LAST_CONTACT: Final = "X-Consul-Lastcontact"
H_CONSISTENCY: Final = "X-Consul-Effective-Consistency"
H_BACKEND: Final = "X-Consul-Query-Backend"
_TEXT_PLAIN: Final = "text/plain; charset=utf-8"

# Fields of a HealthCheck that a ?filter= on health/state may select.
CHECK_FILTER_FIELDS: Final = frozenset(
    {
        "Node",
        "CheckID",
        "Name",
        "Status",
        "Notes",
        "Output",
        "ServiceID",
        "ServiceName",
        "ServiceTags",
        "Type",
        "Interval",
        "Timeout",
        "ExposedPort",
        "Definition",
    }
)
# Fields of a Node (catalog/nodes entries).
NODE_FILTER_FIELDS: Final = frozenset(
    {"ID", "Node", "Address", "Datacenter", "TaggedAddresses", "Meta"}
)
# Fields of a NodeService (catalog/node-services entries).
NODE_SERVICE_FILTER_FIELDS: Final = frozenset(
    {
        "Kind",
        "ID",
        "Service",
        "Tags",
        "Address",
        "TaggedAddresses",
        "Meta",
        "Port",
        "Weights",
        "EnableTagOverride",
        "Proxy",
        "Connect",
    }
)
# Top-level fields of a CheckServiceNode (health/service entries).
SERVICE_NODE_FILTER_FIELDS: Final = frozenset({"Node", "Service", "Checks"})

JSONDict = dict[str, Any]


# --------------------------------------------------------------------------------------------
# Go compatibility helpers
# --------------------------------------------------------------------------------------------

_DUR_UNITS: Final[dict[str, float]] = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,
    "\u03bcs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DUR_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")


def parse_go_duration(text: str) -> float:
    """Parse a Go ``time.ParseDuration`` string ("10s", "1m30s", "250ms") into seconds."""
    s = text
    sign = 1.0
    if s[:1] in ("+", "-"):
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f"time: invalid duration {text!r}")
    total = 0.0
    pos = 0
    while pos < len(s):
        m = _DUR_PART.match(s, pos)
        if m is None:
            raise ValueError(f"time: invalid duration {text!r}")
        total += float(m.group(1)) * _DUR_UNITS[m.group(2)]
        pos = m.end()
    return sign * total


def _go_parse_bool(text: str) -> bool:
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise ValueError(text)


def go_json(obj: Any, *, pretty: bool = False) -> bytes:
    """Encode like Go's ``encoding/json`` (HTML-safe escapes; ``MarshalIndent`` when pretty)."""
    if pretty:
        text = json.dumps(obj, indent=4, ensure_ascii=False) + "\n"
    else:
        text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    for raw, esc in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        if raw in text:
            text = text.replace(raw, esc)
    return text.encode("utf-8", "surrogatepass")


def _ip_family(address: str) -> int:
    """4, 6, or 0 when ``address`` is not an IP literal (Go's ``net.ParseIP`` + ``To4``)."""
    if not address or "%" in address:
        return 0
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return 0
    if ip.version == 4:
        return 4
    return 4 if ip.ipv4_mapped is not None else 6


def _go_time_now() -> str:
    """``time.Now().UTC()`` formatted as RFC 3339 with nanoseconds, as Go's JSON does."""
    ns = time.time_ns()
    secs, frac = divmod(ns, 1_000_000_000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    digits = f"{frac:09d}".rstrip("0")
    return f"{base}.{digits}Z" if digits else f"{base}Z"


def _hash(*parts: Any) -> str:
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()
    return base64.b64encode(digest).decode()


def _norm_key(key: str) -> str:
    return key.replace("_", "").replace("-", "").lower()


def _field(obj: Mapping[str, Any], name: str, default: Any = None) -> Any:
    """Look a struct field up the way Consul decodes bodies: case- and snake_case-insensitive."""
    if name in obj:
        return obj[name]
    want = _norm_key(name)
    for key, value in obj.items():
        if _norm_key(key) == want:
            return value
    return default


# --------------------------------------------------------------------------------------------
# go-bexpr subset
# --------------------------------------------------------------------------------------------


class FilterError(ValueError):
    """An invalid ``?filter=`` expression."""


Predicate = Callable[[Mapping[str, Any]], bool]
_MISSING: Final = object()

_FILTER_TOKEN = re.compile(
    r"""(?P<lp>\()|(?P<rp>\))|(?P<lb>\[)|(?P<rb>\])|(?P<op>==|!=)
        |(?P<str>"(?:[^"\\]|\\.)*")|(?P<raw>`[^`]*`)|(?P<word>[^\s()\[\]"`=!]+)""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str
    pos: int


def _filter_tokens(expr: str) -> list[_Tok]:
    toks: list[_Tok] = []
    pos = 0
    while True:
        while pos < len(expr) and expr[pos].isspace():
            pos += 1
        if pos >= len(expr):
            return toks
        m = _FILTER_TOKEN.match(expr, pos)
        if m is None:
            raise FilterError(
                f"1:{pos + 1} ({pos}): no match found, unexpected character {expr[pos]!r}"
            )
        kind = cast(str, m.lastgroup)
        text = m.group(kind)
        if kind == "str":
            try:
                text = cast(str, json.loads(text))
            except ValueError as exc:
                raise FilterError(f"1:{pos + 1} ({pos}): invalid string literal") from exc
        elif kind == "raw":
            text = text[1:-1]
            kind = "str"
        toks.append(_Tok(kind, text, pos))
        pos = m.end()


def _resolve(obj: Any, path: Sequence[str]) -> Any:
    cur = obj
    for i, part in enumerate(path):
        if isinstance(cur, Mapping):
            cur = cur.get(part, _MISSING)
            if cur is _MISSING:
                return _MISSING
        elif isinstance(cur, list):
            out: list[Any] = []
            for element in cur:
                value = _resolve(element, path[i:])
                if isinstance(value, list):
                    out.extend(value)
                elif value is not _MISSING:
                    out.append(value)
            return out
        else:
            return _MISSING
    return cur


def _value_equals(actual: Any, wanted: str) -> bool:
    if actual is _MISSING:
        return False
    if isinstance(actual, list):
        return any(_value_equals(item, wanted) for item in actual)
    if isinstance(actual, bool):
        return wanted.lower() == ("true" if actual else "false")
    if isinstance(actual, int | float):
        try:
            return float(wanted) == float(actual)
        except ValueError:
            return False
    if actual is None:
        return wanted == ""
    return str(actual) == wanted


def _contains(container: Any, wanted: str) -> bool:
    if isinstance(container, list):
        return any(_value_equals(item, wanted) for item in container)
    if isinstance(container, Mapping):
        return wanted in container
    if isinstance(container, str):
        return wanted in container
    return False


def _is_empty(value: Any) -> bool:
    if value is _MISSING or value is None:
        return True
    if isinstance(value, list | dict | str):
        return len(value) == 0
    return False


class _FilterParser:
    def __init__(self, expr: str, roots: frozenset[str] | None) -> None:
        self.expr = expr
        self.toks = _filter_tokens(expr)
        self.i = 0
        self.roots = roots

    def _peek(self, offset: int = 0) -> _Tok | None:
        j = self.i + offset
        return self.toks[j] if j < len(self.toks) else None

    def _is_word(self, tok: _Tok | None, word: str) -> bool:
        return tok is not None and tok.kind == "word" and tok.text == word

    def _error(self, expected: str) -> FilterError:
        tok = self._peek()
        pos = tok.pos if tok is not None else len(self.expr)
        found = repr(tok.text) if tok is not None else "end of input"
        return FilterError(
            f"1:{pos + 1} ({pos}): no match found, expected: {expected}, found {found}"
        )

    def _next(self) -> _Tok:
        tok = self._peek()
        if tok is None:
            raise self._error("more input")
        self.i += 1
        return tok

    def parse(self) -> Predicate:
        pred = self._or()
        if self._peek() is not None:
            raise self._error('"and", "or" or end of input')
        return pred

    def _or(self) -> Predicate:
        preds = [self._and()]
        while self._is_word(self._peek(), "or"):
            self.i += 1
            preds.append(self._and())
        if len(preds) == 1:
            return preds[0]
        return lambda obj: any(p(obj) for p in preds)

    def _and(self) -> Predicate:
        preds = [self._not()]
        while self._is_word(self._peek(), "and"):
            self.i += 1
            preds.append(self._not())
        if len(preds) == 1:
            return preds[0]
        return lambda obj: all(p(obj) for p in preds)

    def _not(self) -> Predicate:
        if self._is_word(self._peek(), "not"):
            self.i += 1
            inner = self._not()
            return lambda obj: not inner(obj)
        return self._primary()

    def _primary(self) -> Predicate:
        tok = self._peek()
        if tok is None:
            raise self._error('"(", "not" or a match expression')
        if tok.kind == "lp":
            self.i += 1
            inner = self._or()
            if self._next().kind != "rp":
                self.i -= 1
                raise self._error('")"')
            return inner
        nxt = self._peek(1)
        value_first = tok.kind == "str" or (
            tok.kind == "word"
            and (
                self._is_word(nxt, "in")
                or (self._is_word(nxt, "not") and self._is_word(self._peek(2), "in"))
            )
        )
        if value_first:
            value = self._value()
            negate = False
            if self._is_word(self._peek(), "not"):
                self.i += 1
                negate = True
            if not self._is_word(self._peek(), "in"):
                raise self._error('"in" or "not in"')
            self.i += 1
            path = self._selector()
            if negate:
                return lambda obj: not _contains(_resolve(obj, path), value)
            return lambda obj: _contains(_resolve(obj, path), value)
        path = self._selector()
        op = self._next()
        if op.kind == "op":
            value = self._value()
            if op.text == "==":
                return lambda obj: _value_equals(_resolve(obj, path), value)
            return lambda obj: not _value_equals(_resolve(obj, path), value)
        if op.kind == "word":
            negate = False
            if op.text == "not":
                negate = True
                op = self._next()
            if op.kind == "word" and op.text == "contains":
                value = self._value()
                if negate:
                    return lambda obj: not _contains(_resolve(obj, path), value)
                return lambda obj: _contains(_resolve(obj, path), value)
            if op.kind == "word" and op.text == "matches":
                pattern_text = self._value()
                try:
                    pattern = re.compile(pattern_text)
                except re.error as exc:
                    raise FilterError(f"Invalid regular expression {pattern_text!r}") from exc

                def _matches(obj: Mapping[str, Any]) -> bool:
                    actual = _resolve(obj, path)
                    if isinstance(actual, list):
                        return any(pattern.search(str(a)) for a in actual)
                    return actual is not _MISSING and bool(pattern.search(str(actual)))

                if negate:
                    return lambda obj: not _matches(obj)
                return _matches
            if op.kind == "word" and op.text == "is" and not negate:
                empty_negated = False
                if self._is_word(self._peek(), "not"):
                    self.i += 1
                    empty_negated = True
                if not self._is_word(self._peek(), "empty"):
                    raise self._error('"empty"')
                self.i += 1
                if empty_negated:
                    return lambda obj: not _is_empty(_resolve(obj, path))
                return lambda obj: _is_empty(_resolve(obj, path))
        self.i -= 1
        raise self._error('"==", "!=", "contains", "matches", "is empty" or "is not empty"')

    def _value(self) -> str:
        tok = self._next()
        if tok.kind not in ("str", "word"):
            self.i -= 1
            raise self._error("a value")
        return tok.text

    def _selector(self) -> list[str]:
        tok = self._next()
        if tok.kind != "word":
            self.i -= 1
            raise self._error("a selector")
        path = [p for p in tok.text.split(".")]
        if any(not p for p in path):
            raise FilterError(f"Selector {tok.text!r} is not valid")
        while (lb := self._peek()) is not None and lb.kind == "lb":
            self.i += 1
            key = self._next()
            if key.kind != "str" or self._next().kind != "rb":
                raise FilterError(f"Selector {tok.text!r} has an invalid index")
            path.append(key.text)
        if self.roots is not None and path[0] not in self.roots:
            raise FilterError(f'Selector "{".".join(path)}" is not valid')
        return path


def compile_filter(expr: str, roots: frozenset[str] | None = None) -> Predicate:
    """Compile a go-bexpr subset into a predicate over JSON-shaped dicts.

    Supported: ``==``, ``!=``, ``in``, ``not in``, ``contains``, ``not contains``, ``matches``,
    ``not matches``, ``is empty``, ``is not empty``, ``and``, ``or``, ``not``, parentheses;
    values quoted (``"x"``, backticks) or bare; selectors ``A.B.C`` or ``A["key"]``. ``roots``
    restricts the first selector component (unknown ones are an error, as in Consul).
    """
    return _FilterParser(expr, roots).parse()


# --------------------------------------------------------------------------------------------
# ACL rules
# --------------------------------------------------------------------------------------------


class PolicyError(ValueError):
    """Rules that could not be parsed."""


_RESOURCE_KINDS: Final = frozenset({"service", "node", "key", "agent", "session", "event", "query"})
_TOP_LEVEL_RULES: Final = frozenset({"acl", "operator", "keyring", "mesh"})
_LEVELS: Final = frozenset({"read", "write", "deny", "list"})
_PRECEDENCE: Final = {"deny": 4, "write": 3, "read": 2, "list": 1}
_HCL_TOKEN = re.compile(
    r"(?P<ws>\s+|#[^\n]*|//[^\n]*|/\*.*?\*/)|(?P<str>\"(?:[^\"\\]|\\.)*\")"
    r"|(?P<ident>[A-Za-z_][A-Za-z0-9_\-]*)|(?P<punct>[{}=,])",
    re.DOTALL,
)


@dataclass
class Rules:
    """Parsed ACL rules: ``exact[kind][name]``, ``prefix[kind][prefix]`` and top-level rules."""

    exact: dict[str, dict[str, str]] = field(default_factory=dict)
    prefix: dict[str, dict[str, str]] = field(default_factory=dict)
    top: dict[str, str] = field(default_factory=dict)

    def add(self, kind: str, name: str, level: str, *, is_prefix: bool) -> None:
        table = (self.prefix if is_prefix else self.exact).setdefault(kind, {})
        old = table.get(name)
        if old is None or _PRECEDENCE[level] > _PRECEDENCE[old]:
            table[name] = level

    def set_top(self, name: str, level: str) -> None:
        old = self.top.get(name)
        if old is None or _PRECEDENCE[level] > _PRECEDENCE[old]:
            self.top[name] = level

    def merge(self, other: Rules) -> None:
        for kind, table in other.exact.items():
            for name, level in table.items():
                self.add(kind, name, level, is_prefix=False)
        for kind, table in other.prefix.items():
            for name, level in table.items():
                self.add(kind, name, level, is_prefix=True)
        for name, level in other.top.items():
            self.set_top(name, level)


def _rule_kind(ident: str) -> tuple[str, bool]:
    is_prefix = ident.endswith("_prefix")
    kind = ident[: -len("_prefix")] if is_prefix else ident
    if kind not in _RESOURCE_KINDS:
        raise PolicyError(f"unknown rule type {ident!r}")
    return kind, is_prefix


def _check_level(level: Any, where: str) -> str:
    if not isinstance(level, str) or level not in _LEVELS:
        raise PolicyError(f"Invalid {where} policy: {level!r}")
    return level


def parse_rules(text: str) -> Rules:
    """Parse ACL rules (HCL block subset or JSON) as accepted by ``PUT /v1/acl/policy``."""
    rules = Rules()
    stripped = text.strip()
    if not stripped:
        return rules
    if stripped.startswith("{"):
        try:
            doc = json.loads(stripped)
        except ValueError as exc:
            raise PolicyError(f"Failed to parse ACL rules: {exc}") from exc
        if not isinstance(doc, dict):
            raise PolicyError("Failed to parse ACL rules: not an object")
        for ident, value in doc.items():
            if ident in _TOP_LEVEL_RULES:
                rules.set_top(ident, _check_level(value, ident))
                continue
            kind, is_prefix = _rule_kind(ident)
            if not isinstance(value, dict):
                raise PolicyError(f"Failed to parse ACL rules: {ident} must be an object")
            for name, body in value.items():
                policy = body.get("policy") if isinstance(body, dict) else None
                rules.add(kind, str(name), _check_level(policy, ident), is_prefix=is_prefix)
        return rules
    toks: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _HCL_TOKEN.match(text, pos)
        if m is None:
            raise PolicyError(f"Failed to parse ACL rules: unexpected {text[pos]!r} at {pos}")
        pos = m.end()
        kind = cast(str, m.lastgroup)
        if kind == "ws":
            continue
        value = m.group(kind)
        if kind == "str":
            value = cast(str, json.loads(value))
        toks.append((kind, value))

    i = 0

    def take(expected_kind: str, expected: str | None = None) -> str:
        nonlocal i
        if i >= len(toks):
            raise PolicyError("Failed to parse ACL rules: unexpected end of input")
        kind, value = toks[i]
        if kind != expected_kind or (expected is not None and value != expected):
            raise PolicyError(f"Failed to parse ACL rules: unexpected {value!r}")
        i += 1
        return value

    while i < len(toks):
        ident = take("ident")
        if i < len(toks) and toks[i] == ("punct", "="):
            i += 1
            level = take("str")
            if ident not in _TOP_LEVEL_RULES:
                raise PolicyError(f"Failed to parse ACL rules: unknown rule {ident!r}")
            rules.set_top(ident, _check_level(level, ident))
            continue
        kind, is_prefix = _rule_kind(ident)
        name = take("str")
        take("punct", "{")
        attrs: dict[str, str] = {}
        while i < len(toks) and toks[i] != ("punct", "}"):
            key = take("ident")
            take("punct", "=")
            attrs[key] = take("str")
            if i < len(toks) and toks[i] == ("punct", ","):
                i += 1
        take("punct", "}")
        if "policy" in attrs:
            rules.add(kind, name, _check_level(attrs["policy"], ident), is_prefix=is_prefix)
    return rules


class _Authorizer:
    """Answers ``<kind>:<access>`` on a name from merged rules (exact beats longest prefix)."""

    def __init__(
        self, rules: Rules | None, *, management: bool = False, default_allow: bool = False
    ) -> None:
        self.rules = rules or Rules()
        self.management = management
        self.default_allow = default_allow

    @property
    def allow_all(self) -> bool:
        return self.management or (
            self.default_allow and not self.rules.exact and not self.rules.prefix
        )

    def _level(self, kind: str, name: str) -> str | None:
        exact = self.rules.exact.get(kind)
        if exact is not None and name in exact:
            return exact[name]
        best: str | None = None
        best_len = -1
        for prefix, level in self.rules.prefix.get(kind, {}).items():
            if len(prefix) > best_len and name.startswith(prefix):
                best, best_len = level, len(prefix)
        return best

    def allowed(self, kind: str, name: str, access: Literal["read", "write"]) -> bool:
        if self.management:
            return True
        level = self._level(kind, name)
        if level is None:
            return self.default_allow
        if access == "read":
            return level in ("read", "write", "list")
        return level == "write"

    def top_allowed(self, name: str, access: Literal["read", "write"]) -> bool:
        if self.management:
            return True
        level = self.rules.top.get(name)
        if level is None:
            return False
        return level in ("read", "write") if access == "read" else level == "write"


_ALLOW_ALL: Final = _Authorizer(None, management=True)


@dataclass
class _Policy:
    id: str
    name: str
    description: str
    rules_text: str
    datacenters: list[str]
    rules: Rules
    create_index: int
    modify_index: int

    @property
    def hash(self) -> str:
        return _hash(self.name, self.description, self.rules_text, self.datacenters)

    def to_json(self, *, stub: bool = False) -> JSONDict:
        out: JSONDict = {"ID": self.id, "Name": self.name, "Description": self.description}
        if not stub:
            out["Rules"] = self.rules_text
        if self.datacenters:
            out["Datacenters"] = list(self.datacenters)
        out.update(Hash=self.hash, CreateIndex=self.create_index, ModifyIndex=self.modify_index)
        return out


@dataclass
class _Token:
    accessor_id: str
    secret_id: str
    description: str
    policy_ids: list[str]
    local: bool
    create_time: str
    create_index: int
    modify_index: int

    @property
    def hash(self) -> str:
        return _hash(self.description, self.policy_ids, self.local)


# --------------------------------------------------------------------------------------------
# Catalog records
# --------------------------------------------------------------------------------------------


class _Check:
    __slots__ = (
        "_json",
        "check_id",
        "create_index",
        "interval",
        "modify_index",
        "name",
        "node",
        "notes",
        "output",
        "service_id",
        "service_name",
        "service_tags",
        "status",
        "timeout",
        "type",
    )

    def __init__(
        self,
        *,
        node: str,
        check_id: str,
        name: str,
        status: str,
        notes: str = "",
        output: str = "",
        service_id: str = "",
        service_name: str = "",
        service_tags: Sequence[str] = (),
        type: str = "",
        interval: str = "",
        timeout: str = "",
        index: int = 0,
    ) -> None:
        self.node = node
        self.check_id = check_id
        self.name = name
        self.status = status
        self.notes = notes
        self.output = output
        self.service_id = service_id
        self.service_name = service_name
        self.service_tags = list(service_tags)
        self.type = type
        self.interval = interval
        self.timeout = timeout
        self.create_index = index
        self.modify_index = index
        self._json: JSONDict | None = None

    def content(self) -> tuple[Any, ...]:
        return (
            self.name,
            self.status,
            self.notes,
            self.output,
            self.service_id,
            self.service_name,
            tuple(self.service_tags),
            self.type,
            self.interval,
            self.timeout,
        )

    def touch(self, index: int) -> None:
        self.modify_index = index
        self._json = None

    def to_json(self) -> JSONDict:
        if self._json is None:
            self._json = {
                "Node": self.node,
                "CheckID": self.check_id,
                "Name": self.name,
                "Status": self.status,
                "Notes": self.notes,
                "Output": self.output,
                "ServiceID": self.service_id,
                "ServiceName": self.service_name,
                "ServiceTags": list(self.service_tags),
                "Type": self.type,
                "Interval": self.interval,
                "Timeout": self.timeout,
                "ExposedPort": 0,
                "Definition": {},
                "CreateIndex": self.create_index,
                "ModifyIndex": self.modify_index,
            }
        return self._json


def _check_sort_key(check: _Check) -> str:
    return check.check_id.lower()


_PROXY_FIELD_ORDER: Final = (
    "DestinationServiceName",
    "DestinationServiceID",
    "LocalServiceAddress",
    "LocalServicePort",
    "LocalServiceSocketPath",
    "Mode",
    "TransparentProxy",
    "Config",
    "Upstreams",
    "MeshGateway",
    "Expose",
)
_PROXY_ALWAYS: Final = {"Mode": "", "MeshGateway": {}, "Expose": {}}


def _normalise_proxy(raw: Mapping[str, Any] | None) -> JSONDict:
    given = dict(raw or {})
    out: JSONDict = {}
    for name in _PROXY_FIELD_ORDER:
        value = _field(given, name, _MISSING)
        if value is _MISSING or value is None:
            if name in _PROXY_ALWAYS:
                default = _PROXY_ALWAYS[name]
                out[name] = dict(default) if isinstance(default, dict) else default
            continue
        if name not in _PROXY_ALWAYS and value in ("", 0, {}, []):
            continue
        out[name] = value
    return out


class _Service:
    __slots__ = (
        "_json",
        "address",
        "agent_owned",
        "checks",
        "connect",
        "create_index",
        "enable_tag_override",
        "id",
        "kind",
        "meta",
        "modify_index",
        "name",
        "node",
        "port",
        "proxy",
        "tagged_addresses",
        "tags",
        "weights",
    )

    def __init__(
        self,
        *,
        node: str,
        id: str,
        name: str,
        tags: Sequence[str],
        address: str,
        port: int,
        meta: Mapping[str, str] | None,
        tagged_addresses: Mapping[str, Mapping[str, Any]],
        kind: str,
        proxy: JSONDict,
        connect: JSONDict,
        weights: Mapping[str, int],
        enable_tag_override: bool,
        agent_owned: bool = True,
    ) -> None:
        self.node = node
        self.id = id
        self.name = name
        self.tags = list(tags)
        self.address = address
        self.port = port
        self.meta = dict(meta) if meta is not None else None
        self.tagged_addresses = {k: dict(v) for k, v in tagged_addresses.items()}
        self.kind = kind
        self.proxy = proxy
        self.connect = connect
        self.weights = dict(weights)
        self.enable_tag_override = enable_tag_override
        self.agent_owned = agent_owned
        self.create_index = 0
        self.modify_index = 0
        self.checks: dict[str, _Check] = {}
        self._json: JSONDict | None = None

    def definition(self) -> JSONDict:
        out: JSONDict = {}
        if self.kind:
            out["Kind"] = self.kind
        out["ID"] = self.id
        out["Service"] = self.name
        out["Tags"] = list(self.tags)
        out["Address"] = self.address
        if self.tagged_addresses:
            out["TaggedAddresses"] = {
                k: dict(self.tagged_addresses[k]) for k in sorted(self.tagged_addresses)
            }
        meta = self.meta
        out["Meta"] = {k: meta[k] for k in sorted(meta)} if meta is not None else None
        out["Port"] = self.port
        out["Weights"] = dict(self.weights)
        out["EnableTagOverride"] = self.enable_tag_override
        out["Proxy"] = self.proxy
        out["Connect"] = self.connect
        return out

    def to_json(self) -> JSONDict:
        if self._json is None:
            out = self.definition()
            out["CreateIndex"] = self.create_index
            out["ModifyIndex"] = self.modify_index
            self._json = out
        return self._json


def _service_sort_key(svc: _Service) -> tuple[str, str]:
    return (svc.node.lower(), svc.id.lower())


class _Node:
    __slots__ = (
        "_checks_json",
        "_json",
        "address",
        "check_owners",
        "checks",
        "create_index",
        "id",
        "meta",
        "modify_index",
        "name",
        "services",
        "tagged_addresses",
    )

    def __init__(
        self, *, name: str, id: str, address: str, index: int, meta: Mapping[str, str] | None = None
    ) -> None:
        self.name = name
        self.id = id
        self.address = address
        self.tagged_addresses = self._default_tagged(address)
        self.meta = dict(meta) if meta is not None else {"consul-network-segment": ""}
        self.create_index = index
        self.modify_index = index
        self.checks: dict[str, _Check] = {}  # node-level checks only
        self.services: dict[str, _Service] = {}
        # Every check ID on the node -> the owning service ID ("" for node-level checks).
        self.check_owners: dict[str, str] = {}
        self._json: JSONDict | None = None
        self._checks_json: list[JSONDict] | None = None

    @staticmethod
    def _default_tagged(address: str) -> dict[str, str]:
        tagged = {"lan": address, "wan": address}
        family = _ip_family(address)
        if family == 4:
            tagged.update(lan_ipv4=address, wan_ipv4=address)
        elif family == 6:
            tagged.update(lan_ipv6=address, wan_ipv6=address)
        return {k: tagged[k] for k in sorted(tagged)}

    def check_owner(self, check_id: str) -> _Service | Literal[False] | None:
        """The service owning ``check_id`` on this node, None for a node check, False if none."""
        owner = self.check_owners.get(check_id)
        if owner is None:
            return False
        return self.services[owner] if owner else None

    def set_node_check(self, check: _Check) -> None:
        self.checks[check.check_id] = check
        self.check_owners[check.check_id] = ""

    def drop_node_check(self, check_id: str) -> None:
        self.checks.pop(check_id, None)
        self.check_owners.pop(check_id, None)

    def set_service_check(self, svc: _Service, check: _Check) -> None:
        svc.checks[check.check_id] = check
        self.check_owners[check.check_id] = svc.id

    def drop_service_check(self, svc: _Service, check_id: str) -> None:
        svc.checks.pop(check_id, None)
        self.check_owners.pop(check_id, None)

    def invalidate(self) -> None:
        self._json = None

    def invalidate_checks(self) -> None:
        self._checks_json = None

    def to_json(self, datacenter: str) -> JSONDict:
        if self._json is None:
            self._json = {
                "ID": self.id,
                "Node": self.name,
                "Address": self.address,
                "Datacenter": datacenter,
                "TaggedAddresses": dict(self.tagged_addresses),
                "Meta": {k: self.meta[k] for k in sorted(self.meta)},
                "CreateIndex": self.create_index,
                "ModifyIndex": self.modify_index,
            }
        return self._json

    def node_checks_json(self) -> list[JSONDict]:
        if self._checks_json is None:
            self._checks_json = [
                c.to_json() for c in sorted(self.checks.values(), key=_check_sort_key)
            ]
        return self._checks_json


# --------------------------------------------------------------------------------------------
# Faults, request log, errors
# --------------------------------------------------------------------------------------------

FaultKind = Literal[
    "error",
    "delay",
    "hang",
    "close",
    "reset",
    "close_mid_body",
    "truncated_json",
    "malformed_json",
    "huge_body",
]
_BODY_FAULTS: Final = frozenset({"close_mid_body", "truncated_json", "malformed_json", "huge_body"})


#: What :meth:`ConsulDouble.save_snapshot` keeps (the raft index is handled apart).
_SNAPSHOT_STATE: Final = (
    "_services_idx",
    "_checks_idx",
    "_nodes_idx",
    "_svc_idx",
    "_node_level_idx",
    "_extinction",
    "_nodes",
    "_by_name",
    "_node_names",
)


@dataclass
class Fault:
    """One injected failure; see :meth:`ConsulDouble.inject_fault` for the kinds."""

    kind: FaultKind
    times: int | None = None
    path_prefix: str = ""
    method: str | None = None
    status: int = 500
    body: str = "rpc error making call: No cluster leader"
    seconds: float = 0.0
    size: int = 8 * 1024 * 1024
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method:
            return False
        return path.startswith(self.path_prefix)


@dataclass(frozen=True)
class RecordedRequest:
    """A request as received by the double (query values keep repeats; bare keys map to '')."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    received_at: float


@dataclass(frozen=True)
class ParkedQuery:
    """One blocking query that parked, as the double decided and ended it.

    Tests read these (:attr:`ConsulDouble.parked_queries`) to check the double's timing
    decisions without timing it: the wait it chose and whether a change or the clock ended it.
    """

    path: str
    index: int
    """The ``?index=`` it waited past."""
    wait: float
    """The wait chosen, in agent seconds: ``?wait=`` (5 min by default, at most 10 min), plus
    the blocking-query backend's jitter (up to wait/16); the streaming backend adds none."""
    timeout: float
    """``wait * time_scale``: the wall-clock seconds it would park at most."""
    outcome: Literal["changed", "timeout", "restored", "stopped"]
    """``changed``: its index moved before the deadline; ``timeout``: the deadline came first;
    ``restored``: a snapshot restore answered it; ``stopped``: the double stopped."""


class _HTTPError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        meta: bool = False,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.meta = meta
        self.headers = list(headers)


class _Abort(Exception):
    """Close the connection without answering (server stopping, hang/close faults)."""

    def __init__(self, *, reset: bool = False) -> None:
        super().__init__("abort")
        self.reset = reset


@dataclass
class _Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    declared_length: int | None = None
    close: bool = False


@dataclass
class _Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Mapping[str, str]
    body: bytes
    client: str

    def q(self, name: str) -> str:
        values = self.query.get(name)
        return values[0] if values else ""

    def has(self, name: str) -> bool:
        return name in self.query

    @property
    def pretty(self) -> bool:
        return "pretty" in self.query


@dataclass
class _Opts:
    dc: str
    token: str
    filter: str
    stale: bool
    consistent: bool
    cached: bool
    wait: float | None
    index: int

    @property
    def consistency(self) -> str:
        if self.stale:
            return "stale"
        if self.consistent:
            return "consistent"
        return "leader"


@dataclass
class _CondEntry:
    cond: threading.Condition
    waiters: int = 0


# --------------------------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------------------------


def _reject_connection(sock: socket.socket) -> None:
    """Write the recorded 429, half-close, drain what the client sent, close (no RST)."""
    try:
        sock.sendall(CONNECTION_LIMIT_RESPONSE)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(1.0)
        while sock.recv(65536):
            pass
    except OSError:
        pass
    finally:
        sock.close()


@dataclass(frozen=True)
class DoubleTLS:
    """HTTPS for the double: its certificate and key, and what a client needs to trust it."""

    cert_file: str
    key_file: str
    ca_file: str
    server_name: str


def _client_ip(client_address: Any) -> str:
    """The peer's IP (``"unix"`` for a unix socket peer, which has no address)."""
    if isinstance(client_address, tuple) and client_address:
        return str(client_address[0])
    return "unix"


class _ServerMixin:
    """What the TCP and the unix-socket servers share: admission, TLS, release."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024
    double: ConsulDouble
    tls_context: ssl.SSLContext | None = None

    def get_request(self) -> tuple[Any, Any]:
        sock, address = super().get_request()  # type: ignore[misc]
        if self.tls_context is not None:
            # The handshake happens in the connection's thread (_Handler.setup).
            sock = self.tls_context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
        return sock, address

    def process_request(self, request: Any, client_address: Any) -> None:
        sock = cast(socket.socket, request)
        if not self.double._admit(sock, _client_ip(client_address)):
            return
        super().process_request(request, client_address)  # type: ignore[misc]

    def shutdown_request(self, request: Any) -> None:
        self.double._release(cast(socket.socket, request))
        super().shutdown_request(request)  # type: ignore[misc]

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # connection-level errors (client went away, server stopping) are normal


class _Server(_ServerMixin, ThreadingHTTPServer):
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], double: ConsulDouble) -> None:
        self.double = double
        self.tls_context = double._tls_context
        super().__init__(address, _Handler)


class _UnixServer(_ServerMixin, socketserver.ThreadingUnixStreamServer):
    def __init__(self, path: str, double: ConsulDouble) -> None:
        self.double = double
        self.tls_context = double._tls_context
        with suppress(FileNotFoundError):
            os.unlink(path)  # left by a previous start
        super().__init__(path, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = None

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()  # a failure ends the connection (handle_error)
        super().setup()
        with suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _serve(self) -> None:
        double = cast(_ServerMixin, self.server).double
        try:
            body = self._read_body()
        except (ValueError, OSError):
            self.close_connection = True
            return
        split = urllib.parse.urlsplit(self.path)
        req = _Request(
            method=self.command,
            path=urllib.parse.unquote(split.path),
            query=urllib.parse.parse_qs(split.query, keep_blank_values=True),
            headers={k: v for k, v in self.headers.items()},
            body=body,
            client=_client_ip(self.client_address),
        )
        try:
            resp = double._handle(req)
        except _Abort as abort:
            self.close_connection = True
            if abort.reset:
                try:
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    self.connection.close()
                except OSError:
                    pass
            return
        try:
            self._send(resp, head=self.command == "HEAD")
        except OSError:
            self.close_connection = True

    def _send(self, resp: _Response, *, head: bool) -> None:
        try:
            phrase = http.HTTPStatus(resp.status).phrase
        except ValueError:
            phrase = ""
        lines = [f"HTTP/1.1 {resp.status} {phrase}"]
        lines.extend(f"{k}: {v}" for k, v in sorted(resp.headers, key=lambda kv: kv[0]))
        if resp.close:
            self.close_connection = True
        if self.close_connection:
            lines.append("Connection: close")
        lines.append(f"Date: {formatdate(usegmt=True)}")
        length = resp.declared_length if resp.declared_length is not None else len(resp.body)
        lines.append(f"Content-Length: {length}")
        head_bytes = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")
        self.wfile.write(head_bytes if head else head_bytes + resp.body)


# --------------------------------------------------------------------------------------------
# The double
# --------------------------------------------------------------------------------------------


class ConsulDouble:
    """A Consul 1.10 agent double over loopback HTTP; use as a context manager.

    ``with ConsulDouble() as consul: consul.url  # "http://127.0.0.1:<port>"``

    Args:
        node_name / node_address / node_id: the agent's own node.
        datacenter: the only datacenter.
        acl: enable ACLs (default policy ``acl_default_policy``, "deny" by default).
        management_token: with ``acl``, a pre-created management token (as
            ``acl.tokens.initial_management`` does; ``/v1/acl/bootstrap`` is then refused).
        max_conns_per_client: per-client-IP connection limit (0 disables it).
        time_scale: multiplies every blocking-query wait (0.01 turns ``wait=10s`` into 0.1 s).
        shuffle_tags: give ``catalog/services`` tags in a random order per call, as Consul does.
        pretty: indent JSON like a ``-dev`` agent (``?pretty`` works regardless).
        seed: seed for jitter and tag shuffling.
        port: port to bind (0: any free port; kept across ``stop()``/``start()``).
    """

    def __init__(
        self,
        *,
        node_name: str = "dev-plain",
        node_address: str = "127.0.0.1",
        node_id: str = DEFAULT_NODE_ID,
        datacenter: str = "dc1",
        acl: bool = False,
        management_token: str | None = None,
        acl_default_policy: Literal["allow", "deny"] = "deny",
        max_conns_per_client: int = 200,
        time_scale: float = 1.0,
        shuffle_tags: bool = True,
        pretty: bool = False,
        seed: int | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: DoubleTLS | None = None,
        unix_path: str | None = None,
    ) -> None:
        self.host = host
        self._port = port
        self.tls = tls
        self.unix_path = unix_path
        self._tls_context: ssl.SSLContext | None = None
        if tls is not None:
            self._tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._tls_context.load_cert_chain(tls.cert_file, tls.key_file)
        self.datacenter = datacenter
        self.acl_enabled = acl
        self.acl_default_policy: str = acl_default_policy if acl else "allow"
        self.max_conns_per_client = max_conns_per_client
        self.time_scale = time_scale
        self.shuffle_tags = shuffle_tags
        self.pretty = pretty
        self._random = random.Random(seed)

        self._lock = threading.RLock()
        self._conds: dict[str, _CondEntry] = {}
        self._blocked_cond = threading.Condition(self._lock)
        self._blocked: collections.Counter[str] = collections.Counter()
        self._parked: collections.deque[ParkedQuery] = collections.deque(maxlen=100_000)
        self._generation = 0
        #: Bumped by :meth:`restore_snapshot`: parked blocking queries answer at once.
        self._abandoned = 0
        self._dirty: set[str] = set()
        self._dirty_nodes: set[str] = set()
        self._batch_depth = 0
        self._batch_index = 0

        # Raft / table indexes, as a freshly started dev agent reports them.
        self._raft = 13
        self._services_idx = 11
        self._checks_idx = 11
        self._nodes_idx = 13
        #: id(_Service) -> (its JSON, that JSON encoded, filter -> matches) for node-services.
        self._node_service_cache: dict[int, tuple[JSONDict, bytes, dict[str, bool]]] = {}
        #: id(check JSON) -> (that JSON, filter -> matches) for health/state.
        self._check_filter_cache: dict[int, tuple[JSONDict, dict[str, bool]]] = {}
        self._acl_idx = 0
        self._extinction = 0
        self._svc_idx: dict[str, int] = {}
        self._node_level_idx: dict[str, int] = {}

        self._nodes: dict[str, _Node] = {}
        self._by_name: dict[str, dict[tuple[str, str], _Service]] = {}
        self._node_names: dict[str, collections.Counter[str]] = {}

        self._views: dict[str, tuple[int, list[JSONDict]]] = {}
        self._catalog_cache: tuple[int, dict[str, list[str]]] | None = None
        self._checks_cache: tuple[int, list[JSONDict]] | None = None
        self._state_cache: dict[tuple[Any, ...], tuple[int, list[JSONDict], dict[bool, bytes]]] = {}
        self._materialized: set[tuple[Any, ...]] = set()

        # ACL state.
        self._policies: dict[str, _Policy] = {}
        self._tokens: dict[str, _Token] = {}  # by secret
        self._authz_cache: dict[tuple[str, int], _Authorizer] = {}
        self._bootstrap_reset_index = 0

        # Connections, faults, log.
        self._conn_cond = threading.Condition()
        self._open_socks: dict[socket.socket, str] = {}
        self._conns_by_ip: collections.Counter[str] = collections.Counter()
        self._current = 0
        self._peak = 0
        self._total = 0
        self._rejected = 0
        self._fault_lock = threading.Lock()
        self._faults: list[Fault] = []
        self._sleepers: set[threading.Event] = set()
        self._log: collections.deque[RecordedRequest] = collections.deque(maxlen=100_000)
        self.errors: list[str] = []
        """Unexpected exceptions raised while handling requests (a test should expect none)."""

        self._server: _Server | _UnixServer | None = None
        self._thread: threading.Thread | None = None

        node = _Node(name=node_name, id=node_id, address=node_address, index=11)
        node.modify_index = 13
        node.set_node_check(self._serf_check(node_name, 11))
        self._nodes[node_name.lower()] = node
        self._node_names[node_name.lower()] = collections.Counter()
        self.node_name = node_name
        consul = _Service(
            node=node_name,
            id="consul",
            name="consul",
            tags=(),
            address="",
            port=8300,
            meta={
                "non_voter": "false",
                "raft_version": "3",
                "read_replica": "false",
                "serf_protocol_current": "2",
                "serf_protocol_max": "5",
                "serf_protocol_min": "1",
                "version": CONSUL_VERSION,
            },
            tagged_addresses={},
            kind="",
            proxy=_normalise_proxy(None),
            connect={},
            weights={"Passing": 1, "Warning": 1},
            enable_tag_override=False,
            agent_owned=False,
        )
        consul.create_index = consul.modify_index = 11
        self._add_instance(consul, node)
        self._svc_idx["consul"] = 11
        self._dirty.clear()

        if acl:
            self._init_acl(management_token)

    # ---------------------------------------------------------------- lifecycle

    def __enter__(self) -> ConsulDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8500``, ``https://...``, ``unix:///path``
        (valid once started; stable across restarts)."""
        if self.unix_path is not None:
            return f"unix://{self.unix_path}"
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{self.host}:{self._port}"

    @property
    def client_options(self) -> dict[str, str]:
        """The consul source options that reach this double (its CA and server name)."""
        if self.tls is None:
            return {}
        return {"ca_file": self.tls.ca_file, "tls_server_name": self.tls.server_name}

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> ConsulDouble:
        """Start listening (again on the same port after :meth:`stop`). State is kept."""
        if self._server is not None:
            return self
        server: _Server | _UnixServer
        if self.unix_path is not None:
            server = _UnixServer(self.unix_path, self)
        else:
            server = _Server((self.host, self._port), self)
            self._port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name=f"consul-double-{self._port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Close the listener and every open connection; parked blocking queries are dropped."""
        server = self._server
        if server is None:
            return
        self._server = None
        server.shutdown()
        server.server_close()
        if self.unix_path is not None:
            with suppress(FileNotFoundError):
                os.unlink(self.unix_path)  # connecting now fails, as to a stopped agent
        with self._lock:
            self._generation += 1
            for entry in self._conds.values():
                entry.cond.notify_all()
            self._blocked_cond.notify_all()
        with self._fault_lock:
            for event in self._sleepers:
                event.set()
        with self._conn_cond:
            socks = list(self._open_socks)
        for sock in socks:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        with self._conn_cond:
            while self._current > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._conn_cond.wait(remaining)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # ---------------------------------------------------------------- connections

    @property
    def current_connections(self) -> int:
        """Connections accepted and not yet closed (rejected ones are not counted)."""
        with self._conn_cond:
            return self._current

    @property
    def peak_connections(self) -> int:
        """The most connections held open at the same time since start / :meth:`reset_peak`."""
        with self._conn_cond:
            return self._peak

    @property
    def total_connections(self) -> int:
        with self._conn_cond:
            return self._total

    @property
    def rejected_connections(self) -> int:
        """Connections refused with the 429 of the per-client limit."""
        with self._conn_cond:
            return self._rejected

    def reset_peak(self) -> None:
        with self._conn_cond:
            self._peak = self._current

    def wait_for_connections(self, count: int, timeout: float = 5.0) -> bool:
        """Wait until exactly ``count`` connections are open; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._conn_cond:
            while self._current != count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._conn_cond.wait(remaining)
            return True

    def _admit(self, sock: socket.socket, ip: str) -> bool:
        with self._conn_cond:
            limit = self.max_conns_per_client
            if limit <= 0 or self._conns_by_ip[ip] < limit:
                self._conns_by_ip[ip] += 1
                self._open_socks[sock] = ip
                self._current += 1
                self._total += 1
                self._peak = max(self._peak, self._current)
                self._conn_cond.notify_all()
                return True
            self._rejected += 1
        threading.Thread(target=_reject_connection, args=(sock,), daemon=True).start()
        return False

    def _release(self, sock: socket.socket) -> None:
        with self._conn_cond:
            ip = self._open_socks.pop(sock, None)
            if ip is None:
                return
            self._conns_by_ip[ip] -= 1
            if self._conns_by_ip[ip] <= 0:
                del self._conns_by_ip[ip]
            self._current -= 1
            self._conn_cond.notify_all()

    # ---------------------------------------------------------------- request log / faults

    @property
    def requests(self) -> list[RecordedRequest]:
        """Requests received so far (oldest first; the last 100,000 are kept)."""
        with self._fault_lock:
            return list(self._log)

    def clear_requests(self) -> None:
        with self._fault_lock:
            self._log.clear()

    def request_count(self, path_prefix: str = "", method: str | None = None) -> int:
        with self._fault_lock:
            return sum(
                1
                for r in self._log
                if r.path.startswith(path_prefix) and (method is None or r.method == method)
            )

    def inject_fault(
        self,
        kind: FaultKind,
        *,
        times: int | None = 1,
        path_prefix: str = "",
        method: str | None = None,
        status: int = 500,
        body: str | None = None,
        seconds: float = 30.0,
        size: int = 8 * 1024 * 1024,
    ) -> Fault:
        """Make matching requests fail. Faults are tried in injection order.

        Kinds:
            ``error``: answer ``status`` (500, 503, 429, ...) with a text ``body``.
            ``delay``: wait ``seconds`` (real seconds), then answer normally.
            ``hang``: hold the request ``seconds`` (or until :meth:`clear_faults`/:meth:`stop`),
                then close the connection without an answer.
            ``close``: close the connection without answering (FIN).
            ``reset``: abort the connection (RST).
            ``close_mid_body``: send the headers with the full Content-Length, half the body,
                then close.
            ``truncated_json``: a complete HTTP answer whose JSON body is cut in half.
            ``malformed_json``: a complete HTTP answer with ``body`` (default ``{"consul": [``).
            ``huge_body``: a valid JSON answer of about ``size`` bytes, same top-level type.

        ``times``: how many requests it applies to (None: until cleared). ``path_prefix`` and
        ``method`` restrict which requests match.
        """
        if body is None:
            if kind == "malformed_json":
                body = '{"consul": ['
            elif status == 500:
                body = "rpc error making call: No cluster leader"
            else:
                try:
                    body = http.HTTPStatus(status).phrase
                except ValueError:
                    body = "error"
        fault = Fault(
            kind=kind,
            times=times,
            path_prefix=path_prefix,
            method=method,
            status=status,
            body=body,
            seconds=seconds,
            size=size,
        )
        with self._fault_lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Remove every fault and release requests held by ``hang``/``delay`` faults."""
        with self._fault_lock:
            self._faults.clear()
            for event in self._sleepers:
                event.set()

    def _take_fault(self, req: _Request) -> Fault | None:
        with self._fault_lock:
            for fault in self._faults:
                if fault.matches(req.method, req.path):
                    fault.hits += 1
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times <= 0:
                            self._faults.remove(fault)
                    return fault
        return None

    def _sleep(self, seconds: float) -> bool:
        """Sleep interruptibly; True when interrupted (stop/clear_faults)."""
        event = threading.Event()
        with self._fault_lock:
            self._sleepers.add(event)
        try:
            return event.wait(seconds)
        finally:
            with self._fault_lock:
                self._sleepers.discard(event)

    def _apply_body_fault(self, fault: Fault, resp: _Response) -> _Response:
        body = resp.body
        if fault.kind == "close_mid_body":
            full = body if len(body) >= 2 else b'{"padding": "' + b"x" * 64 + b'"}'
            return _Response(
                resp.status,
                resp.headers,
                full[: len(full) // 2],
                declared_length=len(full),
                close=True,
            )
        if fault.kind == "truncated_json":
            return _Response(resp.status, resp.headers, body[: max(1, len(body) // 2)])
        if fault.kind == "malformed_json":
            headers = [h for h in resp.headers if h[0] != "Content-Type"]
            headers.append(("Content-Type", "application/json"))
            return _Response(resp.status, headers, fault.body.encode())
        # huge_body
        is_list = body.lstrip()[:1] == b"["
        pad = "x" * 1000
        count = max(1, fault.size // (len(pad) + 16))
        huge: Any = [pad] * count if is_list else {f"pad-{i:08d}": [pad] for i in range(count)}
        headers = [h for h in resp.headers if h[0] != "Content-Type"]
        headers.append(("Content-Type", "application/json"))
        return _Response(200, headers, go_json(huge))

    # ---------------------------------------------------------------- indexes

    @property
    def index(self) -> int:
        """The global raft index (the index of the last write)."""
        with self._lock:
            return self._raft

    @property
    def catalog_index(self) -> int:
        """The services-table index that ``catalog/services`` reports."""
        with self._lock:
            return max(1, self._services_idx)

    @property
    def checks_index(self) -> int:
        """The checks-table index that ``health/state/*`` reports."""
        with self._lock:
            return max(1, self._checks_idx)

    def service_index(self, name: str) -> int:
        """The index ``health/service/<name>`` reports now."""
        with self._lock:
            return self._service_index(name.lower())

    def bump_index(self, count: int = 1) -> int:
        """Simulate ``count`` unrelated raft writes (coordinate updates, ...); returns the index."""
        with self._lock:
            self._raft += count
            return self._raft

    def _alloc(self) -> int:
        if self._batch_depth and self._batch_index:
            return self._batch_index
        self._raft += 1
        if self._batch_depth:
            self._batch_index = self._raft
        return self._raft

    def _service_index(self, lname: str) -> int:
        instances = self._by_name.get(lname)
        if not instances:
            return max(
                1, self._extinction or max(self._nodes_idx, self._services_idx, self._checks_idx)
            )
        idx = self._svc_idx.get(lname, 0)
        for node in {key[0] for key in instances}:
            idx = max(idx, self._node_level_idx.get(node, 0))
        return max(1, idx)

    # ---------------------------------------------------------------- snapshot / restore

    def save_snapshot(self) -> object:
        """The catalog as ``consul snapshot save`` keeps it: nodes, services, checks and the
        table indexes (an opaque value for :meth:`restore_snapshot`)."""
        with self._lock:
            return copy.deepcopy({name: getattr(self, name) for name in _SNAPSHOT_STATE})

    def restore_snapshot(self, snapshot: object) -> None:
        """Put back a catalog saved by :meth:`save_snapshot`, as ``consul snapshot restore``
        does (not recorded; modelled on Consul 1.10's source): the table indexes, hence
        ``X-Consul-Index`` and every ``ModifyIndex``, go back to the snapshot's; the raft index
        does not (hashicorp/raft's ``Restore`` numbers the restore above the last log entry, so
        later writes get indexes above every earlier one); and every parked blocking query
        answers at once with the restored, smaller index (the FSM abandons the old state store,
        and ``blockingQuery`` returns when its ``AbandonCh`` closes). ACL state is untouched."""
        state = cast(dict[str, Any], copy.deepcopy(snapshot))
        with self._lock:
            raft = self._raft
            for name in _SNAPSHOT_STATE:
                setattr(self, name, state[name])
            self._raft = max(raft, self._services_idx, self._checks_idx, self._nodes_idx)
            self._node_service_cache.clear()
            self._check_filter_cache.clear()
            self._views.clear()
            self._catalog_cache = None
            self._checks_cache = None
            self._state_cache.clear()
            self._abandoned += 1
            for entry in self._conds.values():
                entry.cond.notify_all()

    # ---------------------------------------------------------------- notifications

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Group mutations into one raft index and one round of wake-ups (for bulk set-up)."""
        with self._lock:
            self._batch_depth += 1
            try:
                yield
            finally:
                self._batch_depth -= 1
                if self._batch_depth == 0:
                    self._batch_index = 0
                    self._flush()

    def _flush(self) -> None:
        if self._batch_depth:
            return
        for node_key in self._dirty_nodes:
            names = self._node_names.get(node_key, collections.Counter())
            waiting = [k for k in self._conds if k.startswith("svc:")]
            if len(waiting) < len(names):
                self._dirty.update(k for k in waiting if k[4:] in names)
            else:
                self._dirty.update(f"svc:{n}" for n in names)
        self._dirty_nodes.clear()
        for key in self._dirty:
            entry = self._conds.get(key)
            if entry is not None:
                entry.cond.notify_all()
        self._dirty.clear()

    def _wait_for_change(
        self,
        key: str,
        index_fn: Callable[[], int],
        min_index: int,
        wait: float,
        generation: int,
        path: str,
    ) -> None:
        timeout = wait * self.time_scale
        entry = self._conds.get(key)
        if entry is None:
            entry = self._conds[key] = _CondEntry(threading.Condition(self._lock))
        entry.waiters += 1
        self._blocked[path] += 1
        self._blocked_cond.notify_all()
        deadline = time.monotonic() + timeout
        abandoned = self._abandoned
        outcome: Literal["changed", "timeout", "restored", "stopped"] = "stopped"
        try:
            while index_fn() <= min_index:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                entry.cond.wait(remaining)
                if generation != self._generation:
                    raise _Abort()
                if abandoned != self._abandoned:
                    break  # a snapshot was restored: answer now, with the restored index
            if abandoned != self._abandoned:
                outcome = "restored"
            elif index_fn() > min_index and time.monotonic() < deadline:
                outcome = "changed"
            else:
                outcome = "timeout"
        finally:
            self._parked.append(ParkedQuery(path, min_index, wait, timeout, outcome))
            entry.waiters -= 1
            if entry.waiters == 0:
                self._conds.pop(key, None)
            self._blocked[path] -= 1
            if self._blocked[path] <= 0:
                del self._blocked[path]
            self._blocked_cond.notify_all()

    @property
    def parked_queries(self) -> list[ParkedQuery]:
        """Blocking queries that parked and have answered, oldest first (the last 100,000)."""
        with self._lock:
            return list(self._parked)

    @property
    def blocked_queries(self) -> int:
        """Blocking queries currently parked waiting for a change."""
        with self._lock:
            return sum(self._blocked.values())

    def wait_for_blocked(self, count: int, timeout: float = 5.0, path_prefix: str = "") -> bool:
        """Wait until at least ``count`` blocking queries (on ``path_prefix``) are parked."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while sum(n for p, n in self._blocked.items() if p.startswith(path_prefix)) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._blocked_cond.wait(remaining)
            return True

    def _block(
        self,
        req: _Request,
        key: str,
        index_fn: Callable[[], int],
        opts: _Opts,
        *,
        streaming: bool,
        generation: int,
    ) -> int:
        if opts.index > 0 and index_fn() <= opts.index:
            wait = opts.wait if opts.wait is not None and opts.wait > 0 else DEFAULT_WAIT_S
            wait = min(wait, MAX_WAIT_S)
            if not streaming:
                wait += self._random.random() * wait / JITTER_FRACTION
            self._wait_for_change(key, index_fn, opts.index, wait, generation, req.path)
        return max(1, index_fn())

    # ---------------------------------------------------------------- state mutation (internal)

    @staticmethod
    def _serf_check(node: str, index: int) -> _Check:
        return _Check(
            node=node,
            check_id="serfHealth",
            name="Serf Health Status",
            status=PASSING,
            output="Agent alive and reachable",
            index=index,
        )

    def _node(self, node: str | None) -> _Node:
        found = self._nodes.get((node or self.node_name).lower())
        if found is None:
            raise KeyError(f"unknown node {node!r}")
        return found

    def _add_instance(self, svc: _Service, node: _Node) -> None:
        node.services[svc.id] = svc
        for check_id in svc.checks:
            node.check_owners[check_id] = svc.id
        lname = svc.name.lower()
        self._by_name.setdefault(lname, {})[(node.name.lower(), svc.id)] = svc
        self._node_names.setdefault(node.name.lower(), collections.Counter())[lname] += 1

    def _remove_instance(self, svc: _Service, node: _Node, index: int) -> None:
        self._node_service_cache.pop(id(svc), None)
        node.services.pop(svc.id, None)
        for check_id in svc.checks:
            node.check_owners.pop(check_id, None)
        lname = svc.name.lower()
        instances = self._by_name.get(lname, {})
        instances.pop((node.name.lower(), svc.id), None)
        counter = self._node_names.get(node.name.lower())
        if counter is not None:
            counter[lname] -= 1
            if counter[lname] <= 0:
                del counter[lname]
        if not instances:
            self._by_name.pop(lname, None)
            self._svc_idx.pop(lname, None)
            self._extinction = index
        else:
            self._svc_idx[lname] = index
        self._dirty.add(f"svc:{lname}")

    def _touch_service(self, lname: str, index: int) -> None:
        if lname in self._by_name:
            self._svc_idx[lname] = index
        self._dirty.add(f"svc:{lname}")

    def _touch_services_table(self, index: int) -> None:
        self._services_idx = index
        self._dirty.add("services")

    def _touch_nodes_table(self, index: int) -> None:
        self._nodes_idx = index
        # ``catalog/node-services`` blocks on the services key with max(nodes, services).
        self._dirty.update(("nodes", "services"))

    def _touch_checks_table(self, index: int) -> None:
        self._checks_idx = index
        self._dirty.add("checks")

    def _touch_node_level(self, node: _Node, index: int) -> None:
        key = node.name.lower()
        self._node_level_idx[key] = index
        self._dirty_nodes.add(key)
        node.invalidate_checks()

    def _build_service(self, body: Mapping[str, Any], node: _Node) -> _Service:
        name = _field(body, "Name")
        if not isinstance(name, str) or not name:
            raise _HTTPError(400, "Missing service name")
        sid = _field(body, "ID") or name
        if not isinstance(sid, str):
            raise _HTTPError(400, "Request decode failed: ID must be a string")
        tags = _field(body, "Tags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise _HTTPError(400, "Request decode failed: Tags must be a list of strings")
        address = _field(body, "Address") or ""
        port = _field(body, "Port") or 0
        if not isinstance(address, str) or not isinstance(port, int) or isinstance(port, bool):
            raise _HTTPError(400, "Request decode failed: invalid Address or Port")
        meta = _field(body, "Meta")
        if meta is not None and (
            not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values())
        ):
            raise _HTTPError(400, "Request decode failed: Meta must map strings to strings")
        raw_tagged = _field(body, "TaggedAddresses") or {}
        if not isinstance(raw_tagged, dict):
            raise _HTTPError(400, "Request decode failed: TaggedAddresses must be an object")
        tagged: dict[str, dict[str, Any]] = {}
        for key, value in raw_tagged.items():
            if not isinstance(value, dict):
                raise _HTTPError(400, "Request decode failed: invalid TaggedAddresses entry")
            tagged[key] = {
                "Address": _field(value, "Address") or "",
                "Port": _field(value, "Port") or 0,
            }
        family = _ip_family(address)
        if family:
            suffix = "ipv4" if family == 4 else "ipv6"
            for scope in ("lan", "wan"):
                tagged.setdefault(f"{scope}_{suffix}", {"Address": address, "Port": port})
        kind = _field(body, "Kind") or ""
        proxy_raw = _field(body, "Proxy")
        weights_raw = _field(body, "Weights") or {}
        if not isinstance(weights_raw, dict):
            raise _HTTPError(400, "Request decode failed: Weights must be an object")
        weights = {
            "Passing": int(_field(weights_raw, "Passing") or 1),
            "Warning": int(_field(weights_raw, "Warning") or 1),
        }
        connect = _field(body, "Connect") or {}
        return _Service(
            node=node.name,
            id=sid,
            name=name,
            tags=tags,
            address=address,
            port=port,
            meta=meta,
            tagged_addresses=tagged,
            kind=str(kind),
            proxy=_normalise_proxy(proxy_raw if isinstance(proxy_raw, dict) else None),
            connect=dict(connect) if isinstance(connect, dict) else {},
            weights=weights,
            enable_tag_override=bool(_field(body, "EnableTagOverride") or False),
        )

    @staticmethod
    def _check_specs(body: Mapping[str, Any], svc: _Service) -> list[_Check]:
        raw: list[Mapping[str, Any]] = []
        single = _field(body, "Check")
        if isinstance(single, dict) and single:
            raw.append(single)
        many = _field(body, "Checks") or []
        if not isinstance(many, list):
            raise _HTTPError(400, "Request decode failed: Checks must be a list")
        raw.extend(c for c in many if isinstance(c, dict) and c)
        specs: list[_Check] = []
        for i, spec in enumerate(raw):
            if _field(spec, "TTL"):
                ctype = "ttl"
            elif _field(spec, "HTTP"):
                ctype = "http"
            elif _field(spec, "TCP"):
                ctype = "tcp"
            elif _field(spec, "GRPC"):
                ctype = "grpc"
            elif _field(spec, "Args") or _field(spec, "ScriptArgs"):
                ctype = "script"
            elif _field(spec, "DockerContainerID"):
                ctype = "docker"
            elif _field(spec, "AliasService") or _field(spec, "AliasNode"):
                ctype = "alias"
            elif _field(spec, "H2PING"):
                ctype = "h2ping"
            else:
                raise _HTTPError(400, "Invalid check: TTL must be > 0 for TTL checks")
            status = _field(spec, "Status") or CRITICAL
            if status not in _STATUSES:
                raise _HTTPError(400, "Status for checks must 'passing', 'warning', 'critical'")
            check_id = _field(spec, "CheckID") or _field(spec, "ID") or ""
            if not check_id:
                check_id = f"service:{svc.id}" + (f":{i + 1}" if len(raw) > 1 else "")
            specs.append(
                _Check(
                    node=svc.node,
                    check_id=str(check_id),
                    name=str(_field(spec, "Name") or f"Service '{svc.name}' check"),
                    status=str(status),
                    notes=str(_field(spec, "Notes") or ""),
                    output=str(_field(spec, "Output") or ""),
                    service_id=svc.id,
                    service_name=svc.name,
                    service_tags=svc.tags,
                    type=ctype,
                    interval=str(_field(spec, "Interval") or "") if ctype != "ttl" else "",
                    timeout=str(_field(spec, "Timeout") or "") if ctype != "ttl" else "",
                )
            )
        return specs

    def _do_register(self, body: Mapping[str, Any], node: _Node) -> str:
        new = self._build_service(body, node)
        specs = self._check_specs(body, new)
        idx = self._alloc()
        existing = node.services.get(new.id)
        svc = new
        if existing is not None and not existing.agent_owned:
            raise _HTTPError(400, f"Service ID {new.id!r} is reserved")
        if existing is None:
            new.create_index = new.modify_index = idx
            self._add_instance(new, node)
            self._touch_services_table(idx)
            self._touch_service(new.name.lower(), idx)
        elif existing.definition() != new.definition():
            new.create_index = existing.create_index
            new.modify_index = idx
            new.checks = existing.checks
            if existing.name.lower() == new.name.lower():
                node.services[new.id] = new
                self._by_name[new.name.lower()][(node.name.lower(), new.id)] = new
            else:
                self._remove_instance(existing, node, idx)
                self._add_instance(new, node)
            self._touch_services_table(idx)
            self._touch_service(new.name.lower(), idx)
        else:
            svc = existing
        # Reconcile the service's checks; status and output survive a re-registration.
        checks_changed = False
        wanted = {c.check_id for c in specs}
        for spec in specs:
            current = svc.checks.get(spec.check_id)
            if current is None:
                owner = node.check_owner(spec.check_id)
                if owner is None:
                    node.drop_node_check(spec.check_id)
                    self._touch_node_level(node, idx)
                elif owner is not False:
                    node.drop_service_check(owner, spec.check_id)
                    self._touch_service(owner.name.lower(), idx)
                spec.create_index = spec.modify_index = idx
                node.set_service_check(svc, spec)
                checks_changed = True
                continue
            spec.status, spec.output = current.status, current.output
            if spec.content() != current.content():
                spec.create_index, spec.modify_index = current.create_index, idx
                node.set_service_check(svc, spec)
                checks_changed = True
        for check_id in list(svc.checks):
            check = svc.checks[check_id]
            if check_id in wanted:
                continue
            if check_id.startswith(SERVICE_MAINT_PREFIX):
                if (check.service_tags, check.service_name) != (svc.tags, svc.name):
                    check.service_tags, check.service_name = list(svc.tags), svc.name
                    check.touch(idx)
                    checks_changed = True
                continue
            node.drop_service_check(svc, check_id)
            checks_changed = True
        if checks_changed:
            self._touch_checks_table(idx)
            self._touch_service(svc.name.lower(), idx)
        self._flush()
        return svc.id

    def _do_deregister(self, node: _Node, service_id: str, *, agent: bool) -> bool:
        svc = node.services.get(service_id)
        if svc is None or (agent and not svc.agent_owned):
            return False
        idx = self._alloc()
        self._remove_instance(svc, node, idx)
        self._touch_services_table(idx)
        if svc.checks:
            self._touch_checks_table(idx)
        self._flush()
        return True

    @staticmethod
    def _find_check(node: _Node, check_id: str) -> tuple[_Check, _Service | None] | None:
        owner = node.check_owner(check_id)
        if owner is False:
            return None
        if owner is None:
            return node.checks[check_id], None
        return owner.checks[check_id], owner

    def _do_set_check(
        self, node: _Node, check: _Check, owner: _Service | None, status: str, output: str
    ) -> bool:
        if check.status == status:
            return False  # the agent defers output-only changes (check_update_interval)
        idx = self._alloc()
        check.status = status
        check.output = output
        check.touch(idx)
        self._touch_checks_table(idx)
        if owner is None:
            self._touch_node_level(node, idx)
        else:
            self._touch_service(owner.name.lower(), idx)
        self._flush()
        return True

    def _do_service_maintenance(
        self, node: _Node, svc: _Service, enable: bool, reason: str
    ) -> None:
        check_id = SERVICE_MAINT_PREFIX + svc.id
        if enable == (check_id in svc.checks):
            return
        idx = self._alloc()
        if enable:
            check = _Check(
                node=node.name,
                check_id=check_id,
                name="Service Maintenance Mode",
                status=CRITICAL,
                notes=reason or _DEFAULT_SERVICE_MAINT_REASON,
                service_id=svc.id,
                service_name=svc.name,
                service_tags=svc.tags,
                type="maintenance",
                index=idx,
            )
            node.set_service_check(svc, check)
        else:
            node.drop_service_check(svc, check_id)
        self._touch_checks_table(idx)
        self._touch_service(svc.name.lower(), idx)
        self._flush()

    def _do_node_maintenance(self, node: _Node, enable: bool, reason: str) -> None:
        if enable == (NODE_MAINT_CHECK_ID in node.checks):
            return
        idx = self._alloc()
        if enable:
            node.set_node_check(
                _Check(
                    node=node.name,
                    check_id=NODE_MAINT_CHECK_ID,
                    name="Node Maintenance Mode",
                    status=CRITICAL,
                    notes=reason or _DEFAULT_NODE_MAINT_REASON,
                    type="maintenance",
                    index=idx,
                )
            )
        else:
            node.drop_node_check(NODE_MAINT_CHECK_ID)
        self._touch_checks_table(idx)
        self._touch_node_level(node, idx)
        self._flush()

    # ---------------------------------------------------------------- public state API

    def register(
        self,
        name: str,
        *,
        service_id: str | None = None,
        address: str = "",
        port: int = 0,
        tags: Sequence[str] = (),
        meta: Mapping[str, str] | None = None,
        tagged_addresses: Mapping[str, Mapping[str, Any]] | None = None,
        kind: str = "",
        proxy: Mapping[str, Any] | None = None,
        check: Mapping[str, Any] | None = None,
        checks: Sequence[Mapping[str, Any]] = (),
        status: str | None = None,
        node: str | None = None,
    ) -> str:
        """Register (or update) a service instance as the agent endpoint would; returns its ID.

        ``status`` is a shortcut for ``check={"TTL": "10m", "Status": status}``. ``check`` and
        ``checks`` are Consul check definitions. ``node`` defaults to the agent's node.
        """
        body: JSONDict = {"Name": name, "Tags": list(tags), "Address": address, "Port": port}
        if service_id is not None:
            body["ID"] = service_id
        if meta is not None:
            body["Meta"] = dict(meta)
        if tagged_addresses is not None:
            body["TaggedAddresses"] = {k: dict(v) for k, v in tagged_addresses.items()}
        if kind:
            body["Kind"] = kind
        if proxy is not None:
            body["Proxy"] = dict(proxy)
        if status is not None and check is None:
            check = {"TTL": "10m", "Status": status}
        if check is not None:
            body["Check"] = dict(check)
        if checks:
            body["Checks"] = [dict(c) for c in checks]
        return self.register_definition(body, node=node)

    def register_definition(self, body: Mapping[str, Any], *, node: str | None = None) -> str:
        """Register from a ``PUT /v1/agent/service/register`` body; returns the service ID."""
        with self._lock:
            try:
                return self._do_register(body, self._node(node))
            except _HTTPError as exc:
                raise ValueError(exc.message) from exc

    def register_many(
        self, definitions: Iterable[Mapping[str, Any]], *, node: str | None = None
    ) -> list[str]:
        """Register many definitions as one raft write (one index, one wake-up round)."""
        with self.batch():
            return [self.register_definition(d, node=node) for d in definitions]

    def populate(
        self,
        services: int,
        instances: int = 3,
        *,
        name_format: str = "svc-{:05d}",
        tags: Sequence[str] = ("kubernetes",),
        status: str | None = PASSING,
        base_port: int = 20000,
    ) -> list[str]:
        """Bulk-create ``services`` names x ``instances`` instances (IDs ``<name>-<i>``).

        Addresses are unique IPv4 literals in 10.0.0.0/8. Returns the service names.
        """
        names = [name_format.format(i) for i in range(services)]
        n = 0
        with self.batch():
            for name in names:
                for i in range(instances):
                    n += 1
                    address = f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"
                    self.register(
                        name,
                        service_id=f"{name}-{i + 1}",
                        address=address,
                        port=base_port + i,
                        tags=tags,
                        status=status,
                    )
        return names

    def deregister(self, service_id: str, *, node: str | None = None) -> bool:
        """Remove a service instance and its checks; False if it did not exist."""
        with self._lock:
            return self._do_deregister(self._node(node), service_id, agent=False)

    def set_check(
        self, check_id: str, status: str, output: str = "", *, node: str | None = None
    ) -> bool:
        """Set a check's status (any check type, node checks included).

        Like the agent, a call that keeps the status changes nothing (the new ``output`` is not
        synced). Returns whether the catalog changed. Raises KeyError for an unknown check.
        """
        if status not in _STATUSES:
            raise ValueError(f"invalid status {status!r}")
        with self._lock:
            target = self._node(node)
            found = self._find_check(target, check_id)
            if found is None:
                raise KeyError(check_id)
            return self._do_set_check(target, found[0], found[1], status, output)

    def set_checks(self, updates: Iterable[tuple[str, str]], *, node: str | None = None) -> None:
        """Apply many ``(check_id, status)`` updates as one raft write."""
        with self.batch():
            for check_id, status in updates:
                self.set_check(check_id, status, node=node)

    def check_status(self, check_id: str, *, node: str | None = None) -> str:
        with self._lock:
            found = self._find_check(self._node(node), check_id)
            if found is None:
                raise KeyError(check_id)
            return found[0].status

    def service_maintenance(
        self, service_id: str, enable: bool, reason: str = "", *, node: str | None = None
    ) -> None:
        """Toggle ``_service_maintenance:<id>`` (critical) on a service instance."""
        with self._lock:
            target = self._node(node)
            svc = target.services.get(service_id)
            if svc is None:
                raise KeyError(service_id)
            self._do_service_maintenance(target, svc, enable, reason)

    def node_maintenance(self, enable: bool, reason: str = "", *, node: str | None = None) -> None:
        """Toggle ``_node_maintenance`` (critical) on a node (default: the agent's)."""
        with self._lock:
            self._do_node_maintenance(self._node(node), enable, reason)

    def add_node(
        self,
        name: str,
        address: str,
        *,
        node_id: str | None = None,
        meta: Mapping[str, str] | None = None,
    ) -> None:
        """Add a node (with a passing serfHealth check), or change an existing node's address."""
        with self._lock:
            idx = self._alloc()
            key = name.lower()
            existing = self._nodes.get(key)
            if existing is not None:
                existing.address = address
                existing.tagged_addresses = _Node._default_tagged(address)
                if meta is not None:
                    existing.meta = dict(meta)
                existing.modify_index = idx
                existing.invalidate()
                self._touch_nodes_table(idx)
                self._touch_node_level(existing, idx)
            else:
                node = _Node(
                    name=name,
                    id=node_id or str(uuid.uuid4()),
                    address=address,
                    index=idx,
                    meta=meta,
                )
                node.set_node_check(self._serf_check(name, idx))
                self._nodes[key] = node
                self._node_names.setdefault(key, collections.Counter())
                self._touch_nodes_table(idx)
                self._touch_checks_table(idx)
            self._flush()

    def remove_node(self, name: str) -> None:
        """Deregister a node with all its services and checks."""
        with self._lock:
            node = self._node(name)
            if node.name.lower() == self.node_name.lower():
                raise ValueError("the agent's own node cannot be removed")
            idx = self._alloc()
            for svc in list(node.services.values()):
                self._remove_instance(svc, node, idx)
            del self._nodes[node.name.lower()]
            self._node_names.pop(node.name.lower(), None)
            self._touch_nodes_table(idx)
            self._touch_services_table(idx)
            self._touch_checks_table(idx)
            self._flush()

    def service_ids(self, name: str | None = None) -> list[str]:
        """IDs of registered instances (of one service name, case-insensitive, if given)."""
        with self._lock:
            if name is None:
                return sorted(s.id for n in self._nodes.values() for s in n.services.values())
            return sorted(s.id for s in self._by_name.get(name.lower(), {}).values())

    # ---------------------------------------------------------------- ACL (internal + API)

    def _init_acl(self, management_token: str | None) -> None:
        index = 12
        self._policies[GLOBAL_MANAGEMENT_POLICY_ID] = _Policy(
            id=GLOBAL_MANAGEMENT_POLICY_ID,
            name="global-management",
            description="Builtin Policy that grants unlimited access",
            rules_text=_GLOBAL_MANAGEMENT_RULES,
            datacenters=[],
            rules=parse_rules(_GLOBAL_MANAGEMENT_RULES),
            create_index=index,
            modify_index=index,
        )
        self._tokens["anonymous"] = _Token(
            accessor_id=ANONYMOUS_ACCESSOR_ID,
            secret_id="anonymous",
            description="Anonymous Token",
            policy_ids=[],
            local=False,
            create_time=_go_time_now(),
            create_index=index,
            modify_index=index,
        )
        if management_token:
            self._tokens[management_token] = _Token(
                accessor_id=str(uuid.uuid4()),
                secret_id=management_token,
                description="Initial Management Token",
                policy_ids=[GLOBAL_MANAGEMENT_POLICY_ID],
                local=False,
                create_time=_go_time_now(),
                create_index=index,
                modify_index=index,
            )
            self._bootstrap_reset_index = index
        self._acl_idx = index

    @property
    def management_token(self) -> str | None:
        """The secret of a management token, if one exists."""
        with self._lock:
            for token in self._tokens.values():
                if GLOBAL_MANAGEMENT_POLICY_ID in token.policy_ids:
                    return token.secret_id
            return None

    def _token_json(self, token: _Token, *, stub: bool = False) -> JSONDict:
        out: JSONDict = {
            "AccessorID": token.accessor_id,
            "SecretID": token.secret_id,
            "Description": token.description,
        }
        policies = [
            {"ID": pid, "Name": self._policies[pid].name}
            for pid in token.policy_ids
            if pid in self._policies
        ]
        if policies:
            out["Policies"] = policies
        out["Local"] = token.local
        out["CreateTime"] = token.create_time
        out["Hash"] = token.hash
        out["CreateIndex"] = token.create_index
        out["ModifyIndex"] = token.modify_index
        if stub:
            out["Legacy"] = False
        return out

    def _resolve_authz(self, secret: str, *, meta: bool) -> _Authorizer:
        if not self.acl_enabled:
            return _ALLOW_ALL
        token = self._tokens.get(secret or "anonymous")
        if token is None:
            raise _HTTPError(403, "ACL not found", meta=meta)
        key = (token.accessor_id, self._acl_idx)
        cached = self._authz_cache.get(key)
        if cached is not None:
            return cached
        rules = Rules()
        management = False
        for pid in token.policy_ids:
            policy = self._policies.get(pid)
            if policy is None:
                continue
            if pid == GLOBAL_MANAGEMENT_POLICY_ID:
                management = True
            rules.merge(policy.rules)
        authz = _Authorizer(
            rules, management=management, default_allow=self.acl_default_policy == "allow"
        )
        if len(self._authz_cache) > 256:
            self._authz_cache.clear()
        self._authz_cache[key] = authz
        return authz

    def _acl_write(self) -> int:
        idx = self._alloc()
        self._acl_idx = idx
        self._dirty.add("acl")
        return idx

    def _policy_by_link(self, link: Mapping[str, Any]) -> _Policy:
        pid = _field(link, "ID")
        if pid:
            policy = self._policies.get(str(pid))
            if policy is None:
                raise _HTTPError(500, f"cannot find policy {pid}")
            return policy
        name = _field(link, "Name")
        for policy in self._policies.values():
            if policy.name == name:
                return policy
        raise _HTTPError(500, f"cannot find policy {name}")

    def _do_create_policy(self, body: Mapping[str, Any], policy_id: str | None = None) -> _Policy:
        name = _field(body, "Name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9\-_]{1,128}", name):
            raise _HTTPError(400, "Invalid Policy: invalid Name")
        rules_text = _field(body, "Rules") or ""
        try:
            rules = parse_rules(str(rules_text))
        except PolicyError as exc:
            raise _HTTPError(500, f"Invalid Policy: {exc}") from exc
        for other in self._policies.values():
            if other.name == name and other.id != policy_id:
                raise _HTTPError(500, f"Invalid Policy: A Policy with Name {name!r} already exists")
        idx = self._acl_write()
        existing = self._policies.get(policy_id) if policy_id else None
        policy = _Policy(
            id=policy_id or str(uuid.uuid4()),
            name=name,
            description=str(_field(body, "Description") or ""),
            rules_text=str(rules_text),
            datacenters=list(_field(body, "Datacenters") or []),
            rules=rules,
            create_index=existing.create_index if existing else idx,
            modify_index=idx,
        )
        self._policies[policy.id] = policy
        self._flush()
        return policy

    def _do_create_token(self, body: Mapping[str, Any], accessor_id: str | None = None) -> _Token:
        links = _field(body, "Policies") or []
        if not isinstance(links, list):
            raise _HTTPError(400, "Request decode failed: Policies must be a list")
        policy_ids = []
        for link in links:
            if not isinstance(link, dict):
                raise _HTTPError(400, "Request decode failed: invalid policy link")
            policy_ids.append(self._policy_by_link(link).id)
        existing = None
        if accessor_id is not None:
            existing = next(
                (t for t in self._tokens.values() if t.accessor_id == accessor_id), None
            )
            if existing is None:
                raise _HTTPError(403, "ACL not found")
        secret = str(
            _field(body, "SecretID") or (existing.secret_id if existing else "") or uuid.uuid4()
        )
        if existing is None and secret in self._tokens:
            raise _HTTPError(500, "Invalid Token: SecretID is already in use")
        idx = self._acl_write()
        token = _Token(
            accessor_id=accessor_id or str(_field(body, "AccessorID") or uuid.uuid4()),
            secret_id=secret,
            description=str(_field(body, "Description") or ""),
            policy_ids=policy_ids,
            local=bool(_field(body, "Local") or False),
            create_time=existing.create_time if existing else _go_time_now(),
            create_index=existing.create_index if existing else idx,
            modify_index=idx,
        )
        if existing is not None:
            del self._tokens[existing.secret_id]
        self._tokens[token.secret_id] = token
        self._flush()
        return token

    def create_policy(self, name: str, rules: str, description: str = "") -> JSONDict:
        """Create an ACL policy (as ``PUT /v1/acl/policy``); returns the policy JSON."""
        self._require_acl()
        with self._lock:
            try:
                policy = self._do_create_policy(
                    {"Name": name, "Rules": rules, "Description": description}
                )
            except _HTTPError as exc:
                raise ValueError(exc.message) from exc
            return policy.to_json()

    def create_token(
        self, policies: Sequence[str] = (), *, description: str = "", secret_id: str | None = None
    ) -> str:
        """Create an ACL token linked to the named policies; returns its SecretID."""
        self._require_acl()
        body: JSONDict = {"Description": description, "Policies": [{"Name": p} for p in policies]}
        if secret_id is not None:
            body["SecretID"] = secret_id
        with self._lock:
            try:
                return self._do_create_token(body).secret_id
            except _HTTPError as exc:
                raise ValueError(exc.message) from exc

    def _require_acl(self) -> None:
        if not self.acl_enabled:
            raise RuntimeError("ACLs are not enabled on this ConsulDouble")

    # ---------------------------------------------------------------- HTTP: common helpers

    def _base_headers(self) -> list[tuple[str, str]]:
        return [(H_ACL_POLICY, self.acl_default_policy)]

    def _meta_error_headers(self) -> list[tuple[str, str]]:
        return [
            (H_INDEX, "1"),
            (H_KNOWN_LEADER, "false"),
            (H_LAST_CONTACT, "0"),
            (H_BACKEND, "blocking-query"),
        ]

    def _read_headers(self, index: int, opts: _Opts, *, streaming: bool) -> list[tuple[str, str]]:
        return [
            (H_CONSISTENCY, opts.consistency),
            (H_INDEX, str(max(1, index))),
            (H_KNOWN_LEADER, "false" if streaming else "true"),
            (H_LAST_CONTACT, "0"),
            (H_BACKEND, "streaming" if streaming else "blocking-query"),
        ]

    def _text(self, status: int, message: str, extra: Sequence[tuple[str, str]] = ()) -> _Response:
        headers = self._base_headers()
        headers.extend(extra)
        headers.append(("Content-Type", _TEXT_PLAIN))
        return _Response(status, headers, message.encode())

    def _empty(self, status: int = 200) -> _Response:
        return _Response(status, self._base_headers())

    def _json(
        self, req: _Request, obj: Any, extra: Sequence[tuple[str, str]] = (), status: int = 200
    ) -> _Response:
        headers = self._base_headers()
        headers.extend(extra)
        headers.append(("Content-Type", "application/json"))
        return _Response(status, headers, go_json(obj, pretty=self.pretty or req.pretty))

    @staticmethod
    def _require_method(req: _Request, *methods: str) -> None:
        if req.method not in methods and not (req.method == "HEAD" and "GET" in methods):
            raise _HTTPError(
                405, f"method {req.method} not allowed", headers=[("Allow", ",".join(methods))]
            )

    @staticmethod
    def _request_token(req: _Request) -> str:
        token = req.q("token")
        if token:
            return token
        token = _header(req.headers, "X-Consul-Token")
        if token:
            return token
        auth = _header(req.headers, "Authorization")
        parts = auth.split(" ")
        if len(parts) == 2 and parts[0].lower() == "bearer":
            return parts[1]
        return ""

    def _parse_opts(self, req: _Request) -> _Opts:
        stale, consistent, cached = req.has("stale"), req.has("consistent"), req.has("cached")
        if stale and consistent:
            raise _HTTPError(400, "Cannot specify ?stale with ?consistent, conflicting semantics.")
        if cached and consistent:
            raise _HTTPError(400, "Cannot specify ?cached with ?consistent, conflicting semantics.")
        wait: float | None = None
        if wait_text := req.q("wait"):
            try:
                wait = parse_go_duration(wait_text)
            except ValueError:
                raise _HTTPError(400, "Invalid wait time") from None
        index = 0
        if index_text := req.q("index"):
            if not index_text.isdigit() or not index_text.isascii() or int(index_text) >= 2**64:
                raise _HTTPError(400, "Invalid index")
            index = int(index_text)
        return _Opts(
            dc=req.q("dc") or self.datacenter,
            token=self._request_token(req),
            filter=req.q("filter"),
            stale=stale,
            consistent=consistent,
            cached=cached,
            wait=wait,
            index=index,
        )

    def _check_dc(self, opts: _Opts, *, meta: bool) -> None:
        if opts.dc != self.datacenter:
            raise _HTTPError(500, "No path to datacenter", meta=meta)

    def _shuffled(self, tags: list[str]) -> list[str]:
        if self.shuffle_tags and len(tags) > 1:
            return self._random.sample(tags, len(tags))
        return list(tags)

    # ---------------------------------------------------------------- HTTP: dispatch

    def _handle(self, req: _Request) -> _Response:
        with self._fault_lock:
            self._log.append(
                RecordedRequest(
                    method=req.method,
                    path=req.path,
                    query={k: list(v) for k, v in req.query.items()},
                    headers=dict(req.headers),
                    body=req.body,
                    received_at=time.time(),
                )
            )
        generation = self._generation
        fault = self._take_fault(req)
        if fault is not None:
            if fault.kind == "error":
                return self._text(fault.status, fault.body)
            if fault.kind == "delay":
                if self._sleep(fault.seconds) and generation != self._generation:
                    raise _Abort()
            elif fault.kind == "hang":
                self._sleep(fault.seconds)
                raise _Abort()
            elif fault.kind == "close":
                raise _Abort()
            elif fault.kind == "reset":
                raise _Abort(reset=True)
        try:
            resp = self._route(req)
        except _HTTPError as exc:
            extra = list(exc.headers)
            if exc.meta:
                extra.extend(self._meta_error_headers())
            resp = self._text(exc.status, exc.message, extra)
        except _Abort:
            raise
        except Exception as exc:  # a bug in the double: answer 500 and remember it
            message = f"consul double internal error: {exc!r}"
            self.errors.append(message)
            resp = self._text(500, message)
        if fault is not None and fault.kind in _BODY_FAULTS:
            resp = self._apply_body_fault(fault, resp)
        return resp

    def _route(self, req: _Request) -> _Response:
        path = req.path
        if path == "/v1/catalog/services":
            return self._h_catalog_services(req)
        if path == "/v1/catalog/nodes":
            return self._h_catalog_nodes(req)
        if path.startswith("/v1/catalog/node-services/"):
            return self._h_node_services(req, path[len("/v1/catalog/node-services/") :])
        if path.startswith("/v1/health/service/"):
            return self._h_health_service(req, path[len("/v1/health/service/") :])
        if path.startswith("/v1/health/state/"):
            return self._h_health_state(req, path[len("/v1/health/state/") :])
        if path == "/v1/agent/service/register":
            return self._h_register(req)
        if path.startswith("/v1/agent/service/deregister/"):
            return self._h_deregister(req, path[len("/v1/agent/service/deregister/") :])
        if path.startswith("/v1/agent/check/"):
            return self._h_check_update(req, path[len("/v1/agent/check/") :])
        if path.startswith("/v1/agent/service/maintenance/"):
            return self._h_service_maintenance(req, path[len("/v1/agent/service/maintenance/") :])
        if path == "/v1/agent/maintenance":
            return self._h_node_maintenance(req)
        if path == "/v1/catalog/datacenters":
            self._require_method(req, "GET")
            return self._json(req, [self.datacenter])
        if path == "/v1/status/leader":
            self._require_method(req, "GET")
            return self._json(req, LEADER_ADDRESS)
        if path == "/v1/status/peers":
            self._require_method(req, "GET")
            return self._json(req, [LEADER_ADDRESS])
        if path == "/v1/agent/self":
            return self._h_agent_self(req)
        if path.startswith("/v1/acl/"):
            return self._h_acl(req, path[len("/v1/acl/") :])
        return _Response(404, self._base_headers())

    # ---------------------------------------------------------------- HTTP: reads

    def _h_catalog_services(self, req: _Request) -> _Response:
        self._require_method(req, "GET")
        opts = self._parse_opts(req)
        extra: list[tuple[str, str]] = []
        with self._lock:
            self._check_dc(opts, meta=True)
            authz = self._resolve_authz(opts.token, meta=True)
            generation = self._generation
            if opts.cached:
                key = ("catalog/services", opts.dc, opts.token)
                extra = (
                    [("X-Cache", "HIT"), ("Age", "0")]
                    if key in self._materialized
                    else [("X-Cache", "MISS")]
                )
                self._materialized.add(key)
            index = self._block(
                req,
                "services",
                lambda: self._services_idx,
                opts,
                streaming=False,
                generation=generation,
            )
            base = self._catalog_base()
        if authz.allow_all:
            body = {name: self._shuffled(tags) for name, tags in base.items()}
        else:
            body = {
                name: self._shuffled(tags)
                for name, tags in base.items()
                if authz.allowed("service", name, "read")
            }
        return self._json(req, body, self._read_headers(index, opts, streaming=False) + extra)

    def _h_catalog_nodes(self, req: _Request) -> _Response:
        """``GET /v1/catalog/nodes``: every node (``node:read``), sorted by name; blocks on the
        nodes-table index."""
        self._require_method(req, "GET")
        opts = self._parse_opts(req)
        predicate: Predicate | None = None
        if opts.filter:
            try:
                predicate = compile_filter(opts.filter, NODE_FILTER_FIELDS)
            except FilterError as exc:
                raise _HTTPError(500, str(exc), meta=True) from exc
        with self._lock:
            self._check_dc(opts, meta=True)
            authz = self._resolve_authz(opts.token, meta=True)
            generation = self._generation
            index = self._block(
                req,
                "nodes",
                lambda: self._nodes_idx,
                opts,
                streaming=False,
                generation=generation,
            )
            nodes = [
                self._nodes[key].to_json(self.datacenter)
                for key in sorted(self._nodes)
                if authz.allow_all or authz.allowed("node", self._nodes[key].name, "read")
            ]
        if predicate is not None:
            nodes = [n for n in nodes if predicate(n)]
        return self._json(req, nodes, self._read_headers(index, opts, streaming=False))

    def _node_services_index(self) -> int:
        return max(self._nodes_idx, self._services_idx)

    def _h_node_services(self, req: _Request, name: str) -> _Response:
        """``GET /v1/catalog/node-services/<node>`` (Consul >= 1.7):
        ``{"Node": {...}, "Services": [...]}``, services sorted by ID; an unknown node (or one
        the token may not read) gives ``{"Node": null, "Services": []}``. The index is the
        catalog's (max of the nodes and services tables), so any registration anywhere wakes
        a blocking read."""
        self._require_method(req, "GET")
        opts = self._parse_opts(req)
        if not name:
            raise _HTTPError(400, "Missing node name")
        predicate: Predicate | None = None
        if opts.filter:
            try:
                predicate = compile_filter(opts.filter, NODE_SERVICE_FILTER_FIELDS)
            except FilterError as exc:
                raise _HTTPError(500, str(exc), meta=True) from exc
        with self._lock:
            self._check_dc(opts, meta=True)
            authz = self._resolve_authz(opts.token, meta=True)
            generation = self._generation
            index = self._block(
                req,
                "services",
                self._node_services_index,
                opts,
                streaming=False,
                generation=generation,
            )
            node = self._nodes.get(name.lower())
            if node is not None and not (
                authz.allow_all or authz.allowed("node", node.name, "read")
            ):
                node = None
            node_json: JSONDict | None = None
            services: list[_Service] = []
            if node is not None:
                node_json = node.to_json(self.datacenter)
                services = [
                    svc
                    for svc in sorted(node.services.values(), key=lambda s: s.id.lower())
                    if authz.allow_all or authz.allowed("service", svc.name, "read")
                ]
            headers = self._base_headers() + self._read_headers(index, opts, streaming=False)
            headers.append(("Content-Type", "application/json"))
            if self.pretty or req.pretty:
                shown = [s.to_json() for s in services]
                if predicate is not None:
                    shown = [s for s in shown if predicate(s)]
                body = {"Node": node_json, "Services": shown}
                return _Response(200, headers, go_json(body, pretty=True))
            # At 10,000 services on one node the answer is ~12 MB: each service's encoding
            # (and whether it passes the filter) is kept until that service changes.
            parts: list[bytes] = []
            for svc in services:
                data = svc.to_json()
                cached = self._node_service_cache.get(id(svc))
                if cached is None or cached[0] is not data:
                    cached = (data, go_json(data), {})
                    self._node_service_cache[id(svc)] = cached
                if predicate is not None:
                    keep = cached[2].get(opts.filter)
                    if keep is None:
                        keep = cached[2][opts.filter] = predicate(data)
                    if not keep:
                        continue
                parts.append(cached[1])
        encoded = b'{"Node":' + go_json(node_json) + b',"Services":[' + b",".join(parts) + b"]}"
        return _Response(200, headers, encoded)

    def _catalog_base(self) -> dict[str, list[str]]:
        cached = self._catalog_cache
        if cached is not None and cached[0] == self._services_idx:
            return cached[1]
        acc: dict[str, dict[str, None]] = {}
        for instances in self._by_name.values():
            for svc in instances.values():
                union = acc.setdefault(svc.name, {})
                for tag in svc.tags:
                    union[tag] = None
        base = {name: list(acc[name]) for name in sorted(acc)}
        self._catalog_cache = (self._services_idx, base)
        return base

    def _view(self, lname: str, index: int) -> list[JSONDict]:
        cached = self._views.get(lname)
        if cached is not None and cached[0] == index:
            return cached[1]
        entries: list[JSONDict] = []
        for svc in sorted(self._by_name.get(lname, {}).values(), key=_service_sort_key):
            node = self._nodes[svc.node.lower()]
            checks = node.node_checks_json() + [
                c.to_json() for c in sorted(svc.checks.values(), key=_check_sort_key)
            ]
            entries.append(
                {"Node": node.to_json(self.datacenter), "Service": svc.to_json(), "Checks": checks}
            )
        if entries:
            self._views[lname] = (index, entries)
        else:
            self._views.pop(lname, None)
        return entries

    def _h_health_service(self, req: _Request, name: str) -> _Response:
        self._require_method(req, "GET")
        opts = self._parse_opts(req)
        if not name:
            raise _HTTPError(400, "Missing service name")
        tags = req.query.get("tag") if req.has("tag") else None
        predicate: Predicate | None = None
        if opts.filter:
            try:
                predicate = compile_filter(opts.filter, SERVICE_NODE_FILTER_FIELDS)
            except FilterError as exc:
                raise _HTTPError(500, str(exc)) from exc
        lname = name.lower()
        streaming = (opts.index > 0 or opts.cached) and not opts.consistent
        extra: list[tuple[str, str]] = []
        with self._lock:
            self._check_dc(opts, meta=False)
            authz = self._resolve_authz(opts.token, meta=False)
            generation = self._generation
            view_key = (
                "health/service",
                lname,
                tuple(tags or ()),
                opts.filter,
                opts.dc,
                opts.token,
            )
            if opts.cached:
                extra = (
                    [("X-Cache", "HIT"), ("Age", "0")]
                    if view_key in self._materialized
                    else [("X-Cache", "MISS")]
                )
            if streaming:
                self._materialized.add(view_key)
            index = self._block(
                req,
                f"svc:{lname}",
                lambda: self._service_index(lname),
                opts,
                streaming=streaming,
                generation=generation,
            )
            entries = self._view(lname, index)
        headers = self._read_headers(index, opts, streaming=streaming) + extra
        # Consul 1.10 parses ?passing only after the query ran (headers are already set).
        passing = False
        if req.has("passing"):
            value = req.q("passing")
            try:
                passing = True if value == "" else _go_parse_bool(value)
            except ValueError:
                return self._text(400, "Invalid value for ?passing", headers)
        if tags:
            wanted = [t.lower() for t in tags]
            entries = [
                e
                for e in entries
                if all(w in {t.lower() for t in e["Service"]["Tags"]} for w in wanted)
            ]
        if predicate is not None:
            entries = [e for e in entries if predicate(e)]
        if not authz.allow_all:
            entries = [
                e
                for e in entries
                if authz.allowed("service", e["Service"]["Service"], "read")
                and authz.allowed("node", e["Node"]["Node"], "read")
            ]
        if passing:
            entries = [e for e in entries if all(c["Status"] == PASSING for c in e["Checks"])]
        return self._json(req, entries, headers)

    def _all_checks(self) -> list[JSONDict]:
        cached = self._checks_cache
        if cached is not None and cached[0] == self._checks_idx:
            return cached[1]
        checks: list[_Check] = []
        for node in self._nodes.values():
            checks.extend(node.checks.values())
            for svc in node.services.values():
                checks.extend(svc.checks.values())
        checks.sort(key=lambda c: (c.node.lower(), c.check_id.lower()))
        result = [c.to_json() for c in checks]
        self._checks_cache = (self._checks_idx, result)
        return result

    def _check_matches(self, expr: str, predicate: Predicate, check: JSONDict) -> bool:
        """``predicate(check)``, remembered while the check's JSON is unchanged (at 10,000
        services, filtering 30,000 checks after every change is the double's main cost)."""
        cached = self._check_filter_cache.get(id(check))
        if cached is None or cached[0] is not check:
            if len(self._check_filter_cache) > 200_000:
                self._check_filter_cache.clear()
            cached = self._check_filter_cache[id(check)] = (check, {})
        keep = cached[1].get(expr)
        if keep is None:
            keep = cached[1][expr] = predicate(check)
        return keep

    def _h_health_state(self, req: _Request, state: str) -> _Response:
        self._require_method(req, "GET")
        opts = self._parse_opts(req)
        if state not in ("any", PASSING, WARNING, CRITICAL):
            raise _HTTPError(400, "Bad check state")
        predicate: Predicate | None = None
        if opts.filter:
            try:
                predicate = compile_filter(opts.filter, CHECK_FILTER_FIELDS)
            except FilterError as exc:
                raise _HTTPError(500, str(exc), meta=True) from exc
        with self._lock:
            self._check_dc(opts, meta=True)
            authz = self._resolve_authz(opts.token, meta=True)
            generation = self._generation
            index = self._block(
                req,
                "checks",
                lambda: self._checks_idx,
                opts,
                streaming=False,
                generation=generation,
            )
            key = (state, opts.filter, opts.token, self._acl_idx)
            cached = self._state_cache.get(key)
            if cached is not None and cached[0] == self._checks_idx:
                result, encoded = cached[1], cached[2]
            else:
                result = self._all_checks()
                if state != "any":
                    result = [c for c in result if c["Status"] == state]
                if predicate is not None:
                    result = [
                        c for c in result if self._check_matches(opts.filter or "", predicate, c)
                    ]
                if not authz.allow_all:
                    result = [
                        c
                        for c in result
                        if authz.allowed("node", c["Node"], "read")
                        and (
                            not c["ServiceName"]
                            or authz.allowed("service", c["ServiceName"], "read")
                        )
                    ]
                if len(self._state_cache) >= 64:
                    self._state_cache.clear()
                encoded = {}
                self._state_cache[key] = (self._checks_idx, result, encoded)
        pretty = self.pretty or req.pretty
        body = encoded.get(pretty)
        if body is None:  # serialised outside the lock; the list is never mutated
            body = encoded[pretty] = go_json(result, pretty=pretty)
        headers = self._base_headers() + self._read_headers(index, opts, streaming=False)
        headers.append(("Content-Type", "application/json"))
        return _Response(200, headers, body)

    def _h_agent_self(self, req: _Request) -> _Response:
        self._require_method(req, "GET")
        with self._lock:
            authz = self._resolve_authz(self._request_token(req), meta=False)
            if not authz.allowed("agent", self.node_name, "read"):
                raise _HTTPError(403, "Permission denied")
            node = self._node(None)
        body = {
            "Config": {
                "Datacenter": self.datacenter,
                "NodeName": self.node_name,
                "NodeID": node.id,
                "PrimaryDatacenter": self.datacenter,
                "Revision": "",
                "Server": True,
                "Version": CONSUL_VERSION,
            },
            "DebugConfig": {
                "ACLsEnabled": self.acl_enabled,
                "ACLDefaultPolicy": self.acl_default_policy,
                "Datacenter": self.datacenter,
                "HTTPMaxConnsPerClient": self.max_conns_per_client,
                "NodeName": self.node_name,
            },
            "Member": {
                "Name": self.node_name,
                "Addr": node.address,
                "Port": 8301,
                "Tags": {"dc": self.datacenter, "role": "consul", "build": CONSUL_VERSION},
                "Status": 1,
            },
            "Meta": dict(node.meta),
        }
        return self._json(req, body)

    # ---------------------------------------------------------------- HTTP: agent writes

    def _h_register(self, req: _Request) -> _Response:
        self._require_method(req, "PUT")
        try:
            body = json.loads(req.body or b"null")
        except ValueError as exc:
            raise _HTTPError(400, f"Request decode failed: {exc}") from exc
        if not isinstance(body, dict):
            raise _HTTPError(400, "Request decode failed: body must be a JSON object")
        with self._lock:
            authz = self._resolve_authz(self._request_token(req), meta=False)
            name = _field(body, "Name")
            if isinstance(name, str) and name:
                if not authz.allowed("service", name, "write"):
                    raise _HTTPError(403, f"Permission denied: Missing service:write on {name}")
                proxy = _field(body, "Proxy")
                dest = _field(proxy, "DestinationServiceName") if isinstance(proxy, dict) else None
                if (
                    _field(body, "Kind") == "connect-proxy"
                    and isinstance(dest, str)
                    and dest
                    and not authz.allowed("service", dest, "write")
                ):
                    raise _HTTPError(403, f"Permission denied: Missing service:write on {dest}")
            self._do_register(body, self._node(None))
        return self._empty()

    def _h_deregister(self, req: _Request, service_id: str) -> _Response:
        self._require_method(req, "PUT")
        with self._lock:
            authz = self._resolve_authz(self._request_token(req), meta=False)
            node = self._node(None)
            svc = node.services.get(service_id)
            if svc is not None and svc.agent_owned:
                if not authz.allowed("service", svc.name, "write"):
                    raise _HTTPError(403, f"Permission denied: Missing service:write on {svc.name}")
                self._do_deregister(node, service_id, agent=True)
        return self._empty()

    def _h_check_update(self, req: _Request, rest: str) -> _Response:
        self._require_method(req, "PUT")
        verb, _, check_id = rest.partition("/")
        statuses = {"pass": PASSING, "warn": WARNING, "fail": CRITICAL}
        if verb in statuses:
            status, output = statuses[verb], req.q("note")
        elif verb == "update":
            try:
                body = json.loads(req.body or b"{}")
            except ValueError as exc:
                raise _HTTPError(400, f"Request decode failed: {exc}") from exc
            if not isinstance(body, dict):
                raise _HTTPError(400, "Request decode failed: body must be a JSON object")
            status = str(_field(body, "Status") or "")
            output = str(_field(body, "Output") or "")
            if status not in _STATUSES:
                raise _HTTPError(400, f"Invalid check status: {status!r}")
        else:
            return _Response(404, self._base_headers())
        with self._lock:
            authz = self._resolve_authz(self._request_token(req), meta=False)
            node = self._node(None)
            found = self._find_check(node, check_id)
            if found is None or found[0].type != "ttl":
                raise _HTTPError(500, f'CheckID "{check_id}" does not have associated TTL')
            check, owner = found
            if owner is None:
                if not authz.allowed("node", node.name, "write"):
                    raise _HTTPError(403, f"Permission denied: Missing node:write on {node.name}")
            elif not authz.allowed("service", owner.name, "write"):
                raise _HTTPError(403, f"Permission denied: Missing service:write on {owner.name}")
            self._do_set_check(node, check, owner, status, output)
        return self._empty()

    @staticmethod
    def _enable_param(req: _Request) -> bool:
        if not req.has("enable") or req.q("enable") == "":
            raise _HTTPError(400, "Missing value for enable")
        try:
            return _go_parse_bool(req.q("enable"))
        except ValueError:
            raise _HTTPError(400, f"Invalid value for enable: {req.q('enable')!r}") from None

    def _h_service_maintenance(self, req: _Request, service_id: str) -> _Response:
        self._require_method(req, "PUT")
        if not service_id:
            raise _HTTPError(400, "Missing service ID")
        enable = self._enable_param(req)
        with self._lock:
            authz = self._resolve_authz(self._request_token(req), meta=False)
            node = self._node(None)
            svc = node.services.get(service_id)
            if svc is None or not svc.agent_owned:
                raise _HTTPError(404, f'No service registered with ID "{service_id}"')
            if not authz.allowed("service", svc.name, "write"):
                raise _HTTPError(403, f"Permission denied: Missing service:write on {svc.name}")
            self._do_service_maintenance(node, svc, enable, req.q("reason"))
        return self._empty()

    def _h_node_maintenance(self, req: _Request) -> _Response:
        self._require_method(req, "PUT")
        enable = self._enable_param(req)
        with self._lock:
            authz = self._resolve_authz(self._request_token(req), meta=False)
            node = self._node(None)
            if not authz.allowed("node", node.name, "write"):
                raise _HTTPError(403, f"Permission denied: Missing node:write on {node.name}")
            self._do_node_maintenance(node, enable, req.q("reason"))
        return self._empty()

    # ---------------------------------------------------------------- HTTP: ACL API

    def _h_acl(self, req: _Request, rest: str) -> _Response:
        if not self.acl_enabled:
            return self._text(401, "ACL support disabled")
        if rest == "bootstrap":
            self._require_method(req, "PUT", "POST")
            with self._lock:
                if self._bootstrap_reset_index:
                    raise _HTTPError(
                        403,
                        "Permission denied: ACL bootstrap no longer allowed "
                        f"(reset index: {self._bootstrap_reset_index})",
                    )
                token = self._do_create_token(
                    {
                        "Description": "Bootstrap Token (Global Management)",
                        "Policies": [{"ID": GLOBAL_MANAGEMENT_POLICY_ID}],
                    }
                )
                self._bootstrap_reset_index = token.create_index
                return self._json(req, self._token_json(token))
        with self._lock:
            authz = self._resolve_authz(self._request_token(req), meta=False)
            writing = req.method in ("PUT", "POST", "DELETE")
            if not authz.top_allowed("acl", "write" if writing else "read"):
                raise _HTTPError(403, "Permission denied")
            return self._acl_route(req, rest)

    def _acl_list_headers(self, req: _Request) -> list[tuple[str, str]]:
        opts = self._parse_opts(req)
        return self._read_headers(max(1, self._acl_idx), opts, streaming=False)

    def _acl_route(self, req: _Request, rest: str) -> _Response:
        if rest == "policy":
            self._require_method(req, "PUT")
            policy = self._do_create_policy(self._json_body(req))
            return self._json(req, policy.to_json())
        if rest == "policies":
            self._require_method(req, "GET")
            stubs = [
                p.to_json(stub=True)
                for p in sorted(self._policies.values(), key=lambda p: p.create_index)
            ]
            return self._json(req, stubs, self._acl_list_headers(req))
        if rest.startswith("policy/name/"):
            self._require_method(req, "GET")
            name = rest[len("policy/name/") :]
            for policy in self._policies.values():
                if policy.name == name:
                    return self._json(req, policy.to_json(), self._acl_list_headers(req))
            raise _HTTPError(403, "ACL not found")
        if rest.startswith("policy/"):
            pid = rest[len("policy/") :]
            self._require_method(req, "GET", "PUT", "DELETE")
            existing = self._policies.get(pid)
            if existing is None:
                raise _HTTPError(403, "ACL not found")
            if req.method == "GET":
                return self._json(req, existing.to_json(), self._acl_list_headers(req))
            if req.method == "PUT":
                return self._json(req, self._do_create_policy(self._json_body(req), pid).to_json())
            if pid == GLOBAL_MANAGEMENT_POLICY_ID:
                raise _HTTPError(500, "Delete operation not permitted on the builtin policy")
            del self._policies[pid]
            self._acl_write()
            self._flush()
            return self._json(req, True)
        if rest == "token":
            self._require_method(req, "PUT")
            created = self._do_create_token(self._json_body(req))
            return self._json(req, self._token_json(created))
        if rest == "tokens":
            self._require_method(req, "GET")
            stubs = [
                self._token_json(t, stub=True)
                for t in sorted(self._tokens.values(), key=lambda t: t.create_index)
            ]
            return self._json(req, stubs, self._acl_list_headers(req))
        if rest.startswith("token/"):
            accessor = rest[len("token/") :]
            self._require_method(req, "GET", "PUT", "DELETE")
            token: _Token | None
            if accessor == "self":
                token = self._tokens.get(self._request_token(req) or "anonymous")
            else:
                token = next((t for t in self._tokens.values() if t.accessor_id == accessor), None)
            if token is None:
                raise _HTTPError(403, "ACL not found")
            if req.method == "GET":
                return self._json(req, self._token_json(token), self._acl_list_headers(req))
            if req.method == "PUT":
                updated = self._do_create_token(self._json_body(req), token.accessor_id)
                return self._json(req, self._token_json(updated))
            if token.accessor_id == ANONYMOUS_ACCESSOR_ID:
                raise _HTTPError(
                    500, "Deletion of the request's authorization token is not permitted"
                )
            del self._tokens[token.secret_id]
            self._acl_write()
            self._flush()
            return self._json(req, True)
        return _Response(404, self._base_headers())

    @staticmethod
    def _json_body(req: _Request) -> JSONDict:
        try:
            body = json.loads(req.body or b"{}")
        except ValueError as exc:
            raise _HTTPError(400, f"Request decode failed: {exc}") from exc
        if not isinstance(body, dict):
            raise _HTTPError(400, "Request decode failed: body must be a JSON object")
        return body


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, val in headers.items():
        if key.lower() == lowered:
            return val
    return ""
