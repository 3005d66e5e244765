"""The ``on_message`` hook: a message fetched from a server with an ``activity`` rule
schedules that rule's activity, in the poller's storing transaction.

One hook for every poller of a process (the daemon's, ``run --once``'s, ``inbox poll``'s),
handed the configuration in force by :meth:`ActivityHook.reconfigure`, so a reload that
changes the activity types applies to the next message of an unchanged mailbox.
"""

from __future__ import annotations

import sqlite3

from mailsync.config.model import Config, IncomingServer


class ActivityHook:
    """An ``inbound.poller.OnMessage``: schedules the activity of ``server``'s rule under
    the configuration last handed to it (the types, their users and delays)."""

    def __init__(self, config: Config) -> None:
        self._config = config

    def reconfigure(self, config: Config) -> None:
        """Schedule the next messages' activities under ``config`` (any thread: the
        reference is swapped whole)."""
        self._config = config

    def __call__(self, conn: sqlite3.Connection, server: IncomingServer, fetched_id: int,
                 subject: str, now: float) -> None:
        # Imported by the first message fetched: a poll that finds nothing does not pay
        # for the activities' code (#19).
        from mailsync.activities.store import schedule_for_fetched

        schedule_for_fetched(conn, self._config, server, fetched_id, subject, now)
