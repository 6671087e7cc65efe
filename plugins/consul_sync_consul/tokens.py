"""The ACL token: from the configuration, or from a file re-read whenever its
modification time, size or inode changes (``CONSUL_HTTP_TOKEN_FILE``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping

log = logging.getLogger("consul_sync.consul")


class TokenSource:
    """The ACL token, from the configuration or a file re-read on change.

    ``describe()`` names where the token comes from, never the token.
    ``generation`` grows each time the token's value changes.
    """

    def __init__(
        self,
        token: str | None,
        token_file: str | None,
        *,
        add_secret: Callable[[str], None] = lambda _secret: None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._token = token or None
        self._file = token_file or None
        self._add_secret = add_secret
        self._stamp: tuple[float, int, int] | None = None
        self._from_file: str | None = None
        self.generation = 0
        self.file_error: str | None = None
        env = os.environ if environ is None else environ
        self._env_name = None
        if token:
            self._env_name = next(
                (n for n in ("CONSUL_TOKEN", "CONSUL_HTTP_TOKEN") if env.get(n) == token), None
            )
            add_secret(token)

    def describe(self) -> str:
        if self._file:
            return f"the token file {self._file}"
        if self._token:
            if self._env_name:
                return f"the token in {self._env_name}"
            return "the configured token (token)"
        return "no token (anonymous access)"

    def current(self) -> str | None:
        """The token to send now (a token file, when set, wins)."""
        if self._file:
            self._reread()
            if self._from_file:
                return self._from_file
        return self._token

    def _reread(self) -> None:
        assert self._file is not None
        try:
            stat = os.stat(self._file)
        except OSError as exc:
            self._set_file_error(f"cannot read the token file {self._file}: {exc.strerror}")
            return
        stamp = (stat.st_mtime, stat.st_size, stat.st_ino)
        if stamp == self._stamp:
            return
        try:
            with open(self._file, encoding="utf-8") as handle:
                value = handle.read().strip() or None
        except (OSError, UnicodeDecodeError) as exc:
            self._set_file_error(f"cannot read the token file {self._file}: {exc}")
            return
        self._stamp = stamp
        self.file_error = None
        if value != self._from_file:
            if value:
                self._add_secret(value)
            if self._from_file is not None or self.generation:
                log.info("the token file %s changed; using its new token", self._file)
            self._from_file = value
            self.generation += 1

    def _set_file_error(self, message: str) -> None:
        if message != self.file_error:
            log.error("%s; keeping the token read before", message)
        self.file_error = message
