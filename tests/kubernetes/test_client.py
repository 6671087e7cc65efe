"""The client wrapper: configuration chosen automatically, the capacity limiter."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.config import incluster_config

from consul_sync_kube import aio
from consul_sync_kube.client import KubeClient
from consul_sync_kube.resources import Resource
from tests.fakes.k8s_double import KubeDouble

from .helpers import NS, addresses, kubeconfig, make_sink, service


@pytest.fixture
def kube() -> Iterator[KubeDouble]:
    with KubeDouble(tokens={"s3cret": "system:serviceaccount:network:consul-sync"}) as double:
        yield double


def test_a_kubeconfig_is_used_outside_a_cluster(
    kube: KubeDouble, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    path = kubeconfig(tmp_path / "config", kube.url, token="s3cret")
    monkeypatch.setenv("KUBECONFIG", str(path))  # KUBECONFIG, as kubectl reads it
    client = KubeClient.from_environment()
    assert client.list(Resource.SERVICES, NS) == ([], kube.resource_version)
    assert "kubeconfig" in client.description
    explicit = KubeClient.from_environment(kubeconfig=str(path), context="ctx")
    assert explicit.list(Resource.SERVICES, NS)[0] == []


def test_the_service_account_is_used_in_a_pod(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token, ca = tmp_path / "token", tmp_path / "ca.crt"
    token.write_text("pod-token")
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(token))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(ca))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.43.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "does-not-exist"))
    assert KubeClient.in_cluster()
    client = KubeClient.from_environment()
    assert client.description == "in-cluster service account"
    assert client.api_client.configuration.host == "https://10.43.0.1:443"


@pytest.mark.anyio
async def test_writes_run_in_worker_threads_behind_the_capacity_limiter(
    kube: KubeDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The thread path: what a configuration the async client cannot speak (a proxy, say)
    # writes through (tests/kubernetes/test_aio.py has the event loop's path).
    monkeypatch.setattr(aio, "writes_for", aio.ThreadedKubeClient)
    rig = make_sink(kube, concurrency=3)
    rig.sink.client = KubeClient.for_url(kube.url, token="s3cret")
    client = rig.sink.client
    changed = threading.Condition()
    in_flight, peak, calls, threads = [0], [0], [0], set()
    create = client.create

    def slow_create(*args: Any, **kwargs: Any) -> dict[str, Any]:
        with changed:
            calls[0] += 1
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
            threads.add(threading.current_thread().name)
            changed.notify_all()
            # The Service and its first slice are written one after the other (one call);
            # the other slices wait until the limiter has let three writes in at once, then
            # stay a moment, so that a limiter letting more in would show.
            if calls[0] > 2:
                changed.wait_for(lambda: peak[0] >= 3, timeout=10.0)
        time.sleep(0.02)
        try:
            return create(*args, **kwargs)
        finally:
            with changed:
                in_flight[0] -= 1

    client.create = slow_create  # type: ignore[method-assign]
    await rig.sync([service("big", *addresses(1500))])  # 15 slices, written in parallel
    assert peak[0] == 3
    assert threading.main_thread().name not in threads
