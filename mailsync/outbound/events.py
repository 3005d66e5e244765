"""The rows of the ``events`` table the queue writes: a message's history, one row per
status change, and one per server an attempt failed over from."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence


def event(conn: sqlite3.Connection, message: int, now: float, status: str,
          detail: str | None = None) -> None:
    """One row of ``events``: what happened to ``message`` at ``now``."""
    conn.execute("INSERT INTO events (message, at, status, detail) VALUES (?, ?, ?, ?)",
                 (message, now, status, detail))


def failed_over(conn: sqlite3.Connection, message: int, now: float,
                tries: Sequence[tuple[str, str]]) -> None:
    """The servers an attempt could not use before the one it went to (or gave up on)."""
    conn.executemany("INSERT INTO events (message, at, status, detail, server)"
                     " VALUES (?, ?, 'failed_over', ?, ?)",
                     [(message, now, error, server) for server, error in tries])
