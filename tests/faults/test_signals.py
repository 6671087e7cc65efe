"""Fault matrix: SIGTERM at any moment of start-up exits 0 within
SHUTDOWN_TIMEOUT (sources connecting, sinks opening, leader election
standing by), and does not need a second signal."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from consul_sync import hookimpl
from consul_sync.cli import main
from tests.fakes.consul_double import ConsulDouble
from tests.fakes.k8s_double import KubeDouble
from tests.kubernetes.helpers import kubeconfig

NS = "network"


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A TCP server that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()


class Process:
    """consul-sync run as a subprocess; stderr lines collected in a thread."""

    def __init__(self, env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "consul_sync", "run"],
            env={**os.environ, "LOG_FORMAT": "text", "LOG_LEVEL": "debug", **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert self.proc.poll() is None, "".join(self.lines)
            assert time.monotonic() < deadline, f"never logged {text!r}:\n" + "".join(self.lines)
            time.sleep(0.02)

    def terminate(self, timeout: float = 20) -> int:
        """SIGTERM once; the exit code (a hang fails the test)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail("SIGTERM did not stop consul-sync:\n" + "".join(self.lines))


def settings(consul: str, kube: Path, **extra: str) -> dict[str, str]:
    return {
        "CONSUL_ADDR": consul,
        "KUBECONFIG": str(kube),
        "TARGET_NAMESPACE": NS,
        "METRICS_ADDR": "127.0.0.1:0",
        "SHUTDOWN_TIMEOUT": "2s",
        "LEADER_ELECT": "false",
        **extra,
    }


def test_sigterm_while_plugins_load() -> None:
    """A signal that arrives while plugins load (before the runtime watches
    signals) ends consul-sync cleanly (exit 0)."""

    class SlowPlugin:
        @hookimpl
        def consul_sync_add_source_types(self, registry):  # type: ignore[no-untyped-def]
            os.kill(os.getpid(), signal.SIGTERM)  # the pod is deleted right now

    previous = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as stopped:
            main(["run"], environ={"CONSUL_ADDR": "http://127.0.0.1:1"}, plugins=[SlowPlugin()])
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert stopped.value.code == 0


def test_sigterm_while_the_source_connects(tmp_path: Path, blackhole: str) -> None:
    with KubeDouble() as kube:
        proc = Process(settings(blackhole, kubeconfig(tmp_path / "kc", kube.url)))
        proc.wait_for("Kubernetes API via")  # the sink is open; Consul never answers
        assert proc.terminate() == 0
    assert "stopped" in "".join(proc.lines)


def test_sigterm_while_the_sink_opens(tmp_path: Path, blackhole: str) -> None:
    with ConsulDouble() as consul:
        consul.register("web", address="10.0.0.1", port=80, tags=["kubernetes"])
        proc = Process(settings(consul.url, kubeconfig(tmp_path / "kc", blackhole)))
        proc.wait_for("Kubernetes API via")  # its first list never gets an answer
        time.sleep(0.3)
        assert proc.terminate() == 0


def test_sigterm_while_standing_by_for_the_leader(tmp_path: Path) -> None:
    with ConsulDouble() as consul, KubeDouble() as kube:
        consul.register("web", address="10.0.0.1", port=80, tags=["kubernetes"])
        now = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
        kube.create(
            "leases",
            {
                "metadata": {"name": "consul-sync", "namespace": NS},
                "spec": {
                    "holderIdentity": "the-other-replica",
                    "leaseDurationSeconds": 3600,
                    "acquireTime": now,
                    "renewTime": now,
                },
            },
        )
        env = settings(consul.url, kubeconfig(tmp_path / "kc", kube.url), LEADER_ELECT="true")
        proc = Process(env)
        proc.wait_for("standing by")
        assert proc.terminate() == 0
        assert kube.get("services", NS, "web") is None  # a standby never wrote
