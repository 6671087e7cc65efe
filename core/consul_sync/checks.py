"""Checks of values an operator writes: listen addresses, ports, files, kubeconfigs.

Each function raises :class:`ValueError` with a message in the operator's
words and without the setting's name: the configuration loader puts the
name in front (the environment variable the value came from, or its key
path in the file).  Plugins use them from their config checks
(``registry.add_config_check``), so that ``check-config`` -- and every
other command, before anything starts -- refuses what would otherwise fail
later, or worse, be retried for ever.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import yaml

from .values import FieldProblem

_HOSTNAME = re.compile(
    r"[A-Za-z0-9]([A-Za-z0-9_-]{0,62})?(\.[A-Za-z0-9]([A-Za-z0-9_-]{0,62})?)*\.?"
)
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


class ContextProblem(ValueError):
    """The kubeconfig is fine; the context asked for is not in it."""


def host(text: str) -> str:
    """A host name or an IP address (IPv6 with or without brackets)."""
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        ipaddress.ip_address(bare)
        return bare
    except ValueError:
        pass
    if bare != text or not _HOSTNAME.fullmatch(text) or len(text) > 253:
        raise ValueError(f"{text!r} is not a host name or IP address")
    return text


def port(value: object, *, allow_zero: bool = False) -> int:
    """A TCP port: 1-65535 (0 too, for a listener that takes any free port)."""
    text = str(value).strip()
    if not re.fullmatch(r"\d+", text):
        raise ValueError(f"port {str(value)!r} is not a number 1-65535")
    number = int(text)
    if not (0 if allow_zero else 1) <= number <= 65535:
        raise ValueError(f"port {number} is not 1-65535")
    return number


def listen_address(addr: str) -> tuple[str, int]:
    """``:8080`` (all interfaces), ``127.0.0.1:8080``, ``[::1]:8080``,
    ``localhost:8080``; port 0 takes any free port."""
    text = addr.strip()
    where, sep, number = text.rpartition(":")
    if not sep:
        raise ValueError(f'expected host:port or :port, got "{addr}"')
    try:
        the_port = port(number, allow_zero=True)
        the_host = host(where) if where else "0.0.0.0"
    except ValueError as exc:
        raise ValueError(f'expected host:port or :port, got "{addr}" ({exc})') from None
    return the_host, the_port


def readable_file(path: str) -> str:
    """A file that exists and can be read (``~`` expanded)."""
    full = os.path.expanduser(path)
    if not os.path.exists(full):
        raise ValueError(f"{path}: no such file")
    if os.path.isdir(full):
        raise ValueError(f"{path}: is a directory, not a file")
    if not os.access(full, os.R_OK):
        raise ValueError(f"{path}: cannot be read (permission denied)")
    return full


def readable_dir(path: str) -> str:
    full = os.path.expanduser(path)
    if not os.path.isdir(full):
        raise ValueError(f"{path}: no such directory")
    if not os.access(full, os.R_OK | os.X_OK):
        raise ValueError(f"{path}: cannot be read (permission denied)")
    return full


def dns_label(value: str) -> str:
    if len(value) > 63 or not _DNS_LABEL.fullmatch(value):
        raise ValueError(
            f'expected a lowercase DNS label (a-z, 0-9, "-", at most 63), got "{value}"'
        )
    return value


def dns_subdomain(value: str) -> str:
    """A Kubernetes object name (RFC 1123 subdomain): a Gateway's name."""
    parts = value.split(".")
    if len(value) > 253 or not all(_DNS_LABEL.fullmatch(part) for part in parts):
        raise ValueError(
            f'expected a lowercase DNS name (a-z, 0-9, "-" and ".", at most 253), got "{value}"'
        )
    return value


def kubeconfig_file(paths: str, context: str = "") -> None:
    """A kubeconfig the Kubernetes client will be able to load: every file
    of ``paths`` (separated like ``KUBECONFIG``) exists and is YAML, and
    the context (``context``, else ``current-context``) names a cluster
    with a server.  Credentials are not exercised (an ``exec`` plugin is
    not run)."""
    contexts: dict[str, Any] = {}
    clusters: dict[str, Any] = {}
    current = ""
    files = [p for p in paths.split(os.pathsep) if p]
    for path in files:
        full = readable_file(path)
        try:
            with open(full, encoding="utf-8") as handle:
                data = yaml.safe_load(handle)
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not a valid kubeconfig: {_yaml_problem(exc)}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: cannot be read: {exc}") from None
        if data is None:
            raise ValueError(f"{path}: is empty")
        if not isinstance(data, Mapping):
            raise ValueError(f"{path}: not a valid kubeconfig: expected a mapping (kind: Config)")
        for key, table in (("contexts", contexts), ("clusters", clusters)):
            items = data.get(key) or []
            if not isinstance(items, list):
                raise ValueError(f"{path}: not a valid kubeconfig: {key} must be a list")
            for item in items:
                if isinstance(item, Mapping) and isinstance(item.get("name"), str):
                    table.setdefault(item["name"], item.get(key[:-1]) or {})
        current = current or str(data.get("current-context") or "")
    where = files[0] if len(files) == 1 else paths
    wanted = context or current
    if not wanted:
        raise ValueError(f"{where}: names no current-context (set one, or the context)")
    if wanted not in contexts:
        known = ", ".join(sorted(contexts)) or "none"
        raise (ContextProblem if context else ValueError)(
            f"{where}: has no context {wanted!r} (contexts: {known})"
        )
    cluster = contexts[wanted].get("cluster") if isinstance(contexts[wanted], Mapping) else None
    if cluster not in clusters:
        raise ValueError(f"{where}: context {wanted!r} names cluster {cluster!r}, which it lacks")
    if not isinstance(clusters[cluster], Mapping) or not clusters[cluster].get("server"):
        raise ValueError(f"{where}: cluster {cluster!r} has no server")


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line: what is wrong and where (``line 3, column 7``)."""
    if isinstance(exc, yaml.MarkedYAMLError):
        what = " ".join(part for part in (exc.context, exc.problem) if part)
        mark = exc.problem_mark or exc.context_mark
        if mark is not None:
            return f"{what} (line {mark.line + 1}, column {mark.column + 1})"
        return what
    return str(exc).replace("\n", " ")


#: Where a pod's service account token is mounted (in-cluster configuration).
SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def kubeconfig_in_use(kubeconfig: str, context: str, environ: Mapping[str, str]) -> None:
    """The kubeconfig a Kubernetes client will load, checked when it will
    load one: ``kubeconfig`` (a setting), else ``KUBECONFIG``, else -- outside
    a pod, and only if it exists -- ``~/.kube/config``.  In a pod without an
    explicit kubeconfig the service account is used: nothing to check."""
    if kubeconfig:
        paths, note = kubeconfig, ""
    elif environ.get("KUBECONFIG"):
        paths, note = environ["KUBECONFIG"], " (from KUBECONFIG)"
    else:
        if environ.get("KUBERNETES_SERVICE_HOST") and os.path.exists(SERVICE_ACCOUNT_TOKEN):
            return
        paths, note = os.path.expanduser("~/.kube/config"), " (the default kubeconfig)"
        if not os.path.exists(paths):
            return  # the client says so when it starts; check-config may run anywhere
    try:
        kubeconfig_file(paths, context)
    except ValueError as exc:
        raise type(exc)(f"{exc}{note}") from None


def field_problems(
    *checked: tuple[str, Callable[[str], object], str | None],
) -> Iterator[FieldProblem]:
    """Run each ``(field, check, value)`` whose value is set; a check's ``ValueError`` becomes
    that field's problem (sources and sinks use this in their config checks)."""
    for field, check, value in checked:
        if value:
            try:
                check(value)
            except ValueError as exc:
                yield FieldProblem(field, str(exc))
