"""API failures as the sink reports them, from the recorded Status bodies."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from kubernetes.client.exceptions import ApiException

from consul_sync_kube.client import _error
from consul_sync_kube.errors import KubeError, Outage, rbac_hint, retry_after_seconds, sending
from consul_sync_kube.resources import Resource

from .recordings import recording


def api_exception(prefix: str, headers: dict[str, str] | None = None) -> ApiException:
    response = recording(prefix)["response"]
    exc = ApiException(status=response["status"], reason="x")
    exc.body = json.dumps(response["body"])
    exc.headers = headers or {}
    return exc


def test_status_bodies_become_kube_errors_with_reason_message_and_causes() -> None:
    error = _error(api_exception("05"), "patch", Resource.ENDPOINTSLICES, "fixtures", "web-big")
    assert (error.status, error.reason) == (422, "Invalid")
    assert error.message.endswith("endpoints: Too many: 1001: must have at most 1000 items")
    assert error.causes == [
        {
            "reason": "FieldValueTooMany",
            "message": "Too many: 1001: must have at most 1000 items",
            "field": "endpoints",
        }
    ]
    assert (error.verb, error.resource, error.name) == ("patch", Resource.ENDPOINTSLICES, "web-big")
    assert "(422 Invalid)" in str(error)


def test_network_failures_are_status_zero() -> None:
    error = _error(ConnectionRefusedError("refused"), "list", Resource.SERVICES, "network", "")
    assert error.status == 0 and "refused" in str(error) and "no answer" in str(error)


@pytest.mark.parametrize(
    ("prefix", "rule"),
    [
        ("15", "verb 'list' on 'services' (API group 'core') in namespace 'fixtures'"),
        (
            "16",
            "verb 'patch' on 'endpointslices' (API group 'discovery.k8s.io') "
            "in namespace 'fixtures'",
        ),
    ],
)
def test_a_403_names_the_missing_rbac_rule(prefix: str, rule: str) -> None:
    error = _error(api_exception(prefix), "patch", Resource.ENDPOINTSLICES, "fixtures", "x")
    hint = rbac_hint(error)
    assert rule in hint
    assert "Role" in hint and "deploy/base/rbac.yaml" in hint


def test_rbac_hint_without_an_rbac_message_uses_what_was_attempted() -> None:
    error = KubeError(403, "forbidden", verb="create", resource=Resource.LEASES, namespace="net")
    assert "verb 'create' on 'leases' (API group 'coordination.k8s.io') in namespace 'net'" in (
        rbac_hint(error)
    )


def test_retry_after_in_seconds_or_as_a_date() -> None:
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 < (retry_after_seconds(later) or 0) <= 30
    error = _error(api_exception("12", {"Retry-After": "2"}), "patch", Resource.SERVICES, "n", "w")
    assert error.retry_after == 2.0 and error.reason == "Conflict"


# --- one line per outage, also with writes in flight when it began -------------------


def test_an_answer_to_a_request_sent_before_the_outage_does_not_end_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A write in flight when the API went away may still be answered after the first failure
    was seen; that answer says nothing about now. Only an answer to a request sent after the
    outage began ends it: one "unavailable" line and one "answers again" line per outage."""
    log = logging.getLogger("consul_sync.kubernetes.test")
    outage = Outage("kubernetes", log)
    down = KubeError(0, "Unreachable: connection refused", verb="watch", resource=Resource.SERVICES)
    caplog.set_level(logging.DEBUG, logger=log.name)
    with sending():  # the write goes out before the outage...
        assert outage.failed(down)  # ... the watch fails meanwhile ...
        outage.answered("create", Resource.SERVICES, 201)  # ... then the write is answered
    assert outage.since is not None  # the outage goes on
    retry = KubeError(0, "Unreachable", verb="delete", resource=Resource.SERVICES, name="svc1")
    assert outage.failed(retry)  # counted in the same outage, not told again
    with sending():  # a request sent now, answered: the API is back
        outage.answered("delete", Resource.SERVICES, 200)
    assert outage.since is None
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert sum("Kubernetes API unavailable" in line for line in lines) == 1
    assert sum("Kubernetes API answers again" in line for line in lines) == 1
    assert "1 writes retried, 1 reads and watches failed" in lines[-1]
