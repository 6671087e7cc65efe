"""One watch request's stream of events, read by whoever holds it (an informer's thread).
No ``kubernetes`` import: it reads the urllib3 response the client hands it."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any

from .errors import KubeError


class WatchStream:
    """One watch request: iterate to get its events (dicts with ``type`` and
    ``object``) until the server ends it, or :meth:`batches` to get them as
    they arrived together; :meth:`close` from any thread stops the
    iteration."""

    def __init__(self, response: Any, describe: Callable[[BaseException], KubeError]) -> None:
        self._response = response
        self._describe = describe
        self._closed = False

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.batches():
            yield from batch

    def batches(self) -> Iterator[list[dict[str, Any]]]:
        """The events, a list per read from the socket: every event complete
        in what one read returned (a burst of our own writes' events comes
        as a few reads, so whoever hands them on does so once per read, not
        once per event)."""
        buffer = b""
        try:
            for chunk in self._response.stream(None, decode_content=True):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                batch = [json.loads(line) for line in lines if line.strip()]
                if batch:
                    yield batch
            if buffer.strip():
                yield [json.loads(buffer)]
        except Exception as exc:
            if self._closed:
                return
            raise self._describe(exc) from exc
        finally:
            self.close()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(Exception):
            self._response.shutdown()
        with contextlib.suppress(Exception):
            self._response.release_conn()
