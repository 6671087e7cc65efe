"""A test double (Consul or Kubernetes API) in a process of its own.

In one process, a double's server threads and the code under test share one
interpreter lock: at thousands of services that, not HTTP, limits both.  Run
apart, as a real agent or API server is, each has a core.  Calls are
forwarded over a pipe; results come back pickled::

    with RemoteDouble("consul", seed=1) as consul:
        consul.populate(10_000, 3)                  # any method of the double
        consul.attr("peak_connections")             # any attribute
        consul.fn(stats)                            # stats(double) run over there

``fn`` takes a module-level function (pickled by name, so one defined in a
script run as ``__main__`` works too) and calls it with the double first:
several calls in one round trip, or an answer summarised before it is sent.
``setup`` is such a function run before the double starts listening.
A method that returns the double itself (``start``) answers ``None``.
Calls from several threads are taken one at a time.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import threading
from collections.abc import Callable
from typing import Any, Literal

Kind = Literal["consul", "kubernetes"]


def _make(kind: Kind, options: dict[str, Any]) -> Any:
    if kind == "consul":
        from tests.fakes.consul_double import ConsulDouble

        return ConsulDouble(**options)
    if kind == "kubernetes":
        from tests.fakes.k8s_double import KubeDouble

        return KubeDouble(**options)
    raise ValueError(f"no double of kind {kind!r}")


def _serve(
    conn: multiprocessing.connection.Connection,
    kind: Kind,
    options: dict[str, Any],
    setup: tuple[Callable[..., object], tuple[Any, ...]] | None,
) -> None:
    """The child process: make the double, start it, answer calls until stopped."""
    double = _make(kind, options)
    if setup is not None:
        function, args = setup
        function(double, *args)
    double.start()
    conn.send(("ok", double.url))
    try:
        while True:
            try:
                op, target, args, kwargs = conn.recv()
            except EOFError:
                return
            if op == "close":
                conn.send(("ok", None))
                return
            try:
                if op == "attr":
                    result = getattr(double, target)
                elif op == "fn":
                    result = target(double, *args, **kwargs)
                else:
                    result = getattr(double, target)(*args, **kwargs)
                conn.send(("ok", None if result is double else result))
            except Exception as exc:
                conn.send(("error", repr(exc)))
    finally:
        double.stop()


class RemoteDouble:
    """A double of ``kind`` made with ``options`` in a child process, started
    at once; :meth:`close` (or the end of a ``with`` block) stops it."""

    def __init__(
        self,
        kind: Kind = "consul",
        *,
        setup: Callable[..., object] | None = None,
        setup_args: tuple[Any, ...] = (),
        **options: Any,
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._lock = threading.Lock()
        self._process = context.Process(
            target=_serve,
            args=(child, kind, options, None if setup is None else (setup, setup_args)),
            daemon=True,
            name=f"{kind}-double",
        )
        self._process.start()
        child.close()
        try:
            status, answer = self._conn.recv()
        except EOFError:
            self._process.join(5)
            raise RuntimeError(f"the {kind} double did not start") from None
        if status != "ok":
            raise RuntimeError(f"the {kind} double did not start: {answer}")
        self.kind = kind
        self.url: str = answer

    def __enter__(self) -> RemoteDouble:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def _ask(self, op: str, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        with self._lock:
            self._conn.send((op, target, args, kwargs))
            status, result = self._conn.recv()
        if status != "ok":
            raise RuntimeError(f"{getattr(target, '__name__', target)}: {result}")
        return result

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """``double.name(*args, **kwargs)`` over there."""
        return self._ask("call", name, args, kwargs)

    def attr(self, name: str) -> Any:
        """``double.name`` over there."""
        return self._ask("attr", name, (), {})

    def fn(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``function(double, *args, **kwargs)`` over there."""
        return self._ask("fn", function, args, kwargs)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args, **kwargs: self.call(name, *args, **kwargs)

    def close(self) -> None:
        """Stop the double and end its process (killed if it does not end)."""
        try:
            with self._lock:
                self._conn.send(("close", "", (), {}))
                self._conn.recv()
        except (OSError, EOFError):
            pass
        self._conn.close()
        self._process.join(5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)
