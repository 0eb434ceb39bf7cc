"""The bearer token: from a file (re-read when it changes) or the ``PHISERVE_TOKEN`` variable.

A file wins over the variable because in a cluster the token is a mounted Secret that may be
rotated during a long run; re-reading it on change keeps a run alive past one token's lifetime.
The token never appears in logs, reports or error messages.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

TOKEN_ENV = "PHISERVE_TOKEN"  # noqa: S105 - the variable name, not a token


class TokenSource:
    """Current token, if any; cheap to call per request (the file is checked once a second)."""

    def __init__(self, token_file: str = "", env_value: str | None = None) -> None:
        self.path = Path(token_file) if token_file else None
        self._env = (env_value if env_value is not None else os.environ.get(TOKEN_ENV, "")).strip()
        self._lock = threading.Lock()
        self._token = ""
        self._mtime = -1.0
        self._checked = 0.0
        if self.path is not None:
            self._reload(force=True)

    @property
    def origin(self) -> str:
        """Where the token comes from, for messages (never the token itself)."""
        if self.path is not None:
            return f"token file {self.path}"
        return f"${TOKEN_ENV}" if self._env else "no token"

    def _reload(self, force: bool = False) -> None:
        assert self.path is not None
        try:
            mtime = self.path.stat().st_mtime
        except OSError as exc:
            if force:
                raise FileNotFoundError(f"cannot read token file {self.path}: {exc}") from None
            return  # keep the last good token while a Secret update swaps the file
        if force or mtime != self._mtime:
            self._token = self.path.read_text().strip()
            self._mtime = mtime

    def token(self) -> str:
        """The token now ('' when none is configured)."""
        if self.path is None:
            return self._env
        now = time.monotonic()
        if now - self._checked >= 1.0:
            with self._lock:
                self._checked = now
                self._reload()
        return self._token

    def headers(self) -> dict[str, str]:
        """``Authorization`` header for the current token, or nothing."""
        token = self.token()
        return {"Authorization": f"Bearer {token}"} if token else {}
