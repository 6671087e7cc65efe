"""The Consul double in a process of its own.

In the test process, the double's threads and the client share one GIL:
at 10,000 services that, not HTTP, is what limits both.  Run apart (as a
real agent is) each has a core.  Calls are forwarded over a pipe::

    with RemoteDouble(seed=1) as consul:
        consul.populate(10_000, 3)
        consul.call("set_check", "service:svc-00001-1", "critical")
        consul.attr("peak_connections")
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
from typing import Any


def _serve(conn: multiprocessing.connection.Connection, options: dict[str, Any]) -> None:
    from tests.fakes.consul_double import ConsulDouble

    with ConsulDouble(**options) as double:
        conn.send(("ok", double.url))
        while True:
            try:
                op, name, args, kwargs = conn.recv()
            except EOFError:
                return
            if op == "stop":
                conn.send(("ok", None))
                return
            try:
                if op == "attr":
                    result = getattr(double, name)
                else:
                    result = getattr(double, name)(*args, **kwargs)
                conn.send(("ok", result))
            except Exception as exc:
                conn.send(("error", repr(exc)))


class RemoteDouble:
    def __init__(self, **options: Any) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, options), daemon=True)
        self.url = ""

    def __enter__(self) -> RemoteDouble:
        self._process.start()
        status, url = self._conn.recv()
        assert status == "ok"
        self.url = url
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._conn.send(("stop", "", (), {}))
            self._conn.recv()
        except (OSError, EOFError):
            pass
        self._process.join(5)
        if self._process.is_alive():
            self._process.kill()

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        self._conn.send(("call", name, args, kwargs))
        status, result = self._conn.recv()
        if status != "ok":
            raise RuntimeError(f"{name}: {result}")
        return result

    def attr(self, name: str) -> Any:
        self._conn.send(("attr", name, (), {}))
        status, result = self._conn.recv()
        if status != "ok":
            raise RuntimeError(f"{name}: {result}")
        return result

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args, **kwargs: self.call(name, *args, **kwargs)
