"""Whether the store can commit: what its writers saw of the disk (full, I/O errors).

A store on a full disk still opens, begins transactions and answers queries; only the
commits fail, and with WAL they may fail for one writer and pass for the next (a commit
that fits in the WAL's space already allocated needs no new block). So the store counts
every failed commit here, is *failing* from the first one, and is healthy again only once
a commit passed **and** its filesystem has room again (``reserve`` bytes free): a lucky
small commit on a still-full disk does not turn a daemon healthy that would fail the next
batch. The daemon reads :meth:`CommitHealth.state` for ``/healthz``, pauses the spool
intake while failing, and calls :meth:`CommitHealth.probe` (a real one-page commit) to
find out when the disk has room again.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

# SQLite's primary result codes that mean "the disk, not the statement" (sqlite3.Error's
# sqlite_errorname carries extended codes such as SQLITE_IOERR_WRITE).
_KINDS = (("SQLITE_FULL", "full"), ("SQLITE_IOERR", "io"), ("SQLITE_READONLY", "readonly"),
          ("SQLITE_CANTOPEN", "io"), ("SQLITE_CORRUPT", "corrupt"), ("SQLITE_NOTADB", "corrupt"))
_MESSAGES = (("disk is full", "full"), ("disk i/o error", "io"), ("readonly", "readonly"),
             ("malformed", "corrupt"), ("not a database", "corrupt"))
KINDS = ("full", "io", "readonly", "corrupt")

# Free bytes the filesystem needs before a failing store counts as recovered: a few WAL
# checkpoints' worth, so that the next batch does not fill it again at once.
RESERVE = 4 * 1024 * 1024


def classify(exc: BaseException) -> str | None:
    """The kind of disk failure ``exc`` is (``full``, ``io``, ``readonly``, ``corrupt``),
    or None for an error of the statement itself (a constraint, a bug)."""
    if not isinstance(exc, sqlite3.Error) or isinstance(exc, sqlite3.IntegrityError):
        return None
    name = getattr(exc, "sqlite_errorname", None) or ""
    for prefix, kind in _KINDS:
        if name.startswith(prefix):
            return kind
    text = str(exc).lower()
    return next((kind for needle, kind in _MESSAGES if needle in text), None)


def free_bytes(directory: Path) -> int | None:
    """Bytes an unprivileged writer may still use on ``directory``'s filesystem."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


class CommitHealth:
    """Failed and passed commits of one store, as seen by this process. Thread-safe."""

    def __init__(self, directory: Path, *, reserve: int = RESERVE,
                 clock: Callable[[], float] = time.monotonic,
                 free: Callable[[Path], int | None] = free_bytes) -> None:
        self.directory = directory
        self.reserve = reserve
        self.clock = clock
        self._free = free
        self._lock = threading.Lock()
        self.errors: dict[str, int] = dict.fromkeys(KINDS, 0)
        self.failing_since: float | None = None
        self.last_error = ""

    @property
    def failing(self) -> bool:
        return self.failing_since is not None

    def failed(self, kind: str, error: str) -> bool:
        """Record a commit that failed; True when this starts an outage."""
        with self._lock:
            self.errors[kind] = self.errors.get(kind, 0) + 1
            self.last_error = error
            if self.failing_since is None:
                self.failing_since = self.clock()
                return True
            return False

    def committed(self) -> bool:
        """Record a commit that passed; True when this ends an outage."""
        if self.failing_since is None:
            return False
        free = self._free(self.directory)
        if free is not None and free < self.reserve:
            return False
        with self._lock:
            ended = self.failing_since is not None
            self.failing_since = None
            return ended

    def state(self) -> tuple[bool, str]:
        """(True, "ok"), or (False, why) while commits fail."""
        since = self.failing_since
        if since is None:
            return True, "ok"
        free = self._free(self.directory)
        room = "" if free is None else f"; {free // 1024} KiB free on its filesystem"
        return False, (f"the store cannot commit for {self.clock() - since:.0f}s: "
                       f"{self.last_error}{room}")
