"""A poll's store error, classified: why the store did not take a batch of fetched mail.

The poll fails with :class:`StoreRefused` (its ``kind`` for the log and the metrics),
never with SQLite's bare words; nothing of the batch is kept, so the next poll fetches
it again.
"""

from __future__ import annotations

import sqlite3

from mailsync.errors import StoreError

_DUPLICATE = ("SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY")


class StoreRefused(StoreError):
    """The store did not take a batch of fetched messages (nothing of it was kept): the
    poll fails with this classified reason, never with SQLite's bare words. ``kind``:
    ``duplicate`` (a key the store already holds), a :class:`StoreUnavailable` kind
    (``full``, ``io``, ``readonly``, ``corrupt``) or ``store``."""

    def __init__(self, message: str, kind: str = "store") -> None:
        super().__init__(message)
        self.kind = kind

    @classmethod
    def duplicate(cls, key: str) -> StoreRefused:
        """A message whose key (``UIDVALIDITY/UID``, UIDL or file name) is stored already
        (another poll of the same server stored it meanwhile, or the server reused it)."""
        return cls(f"the store refused the fetched messages (message {key!r} is already "
                   "stored under that key; nothing of this batch was kept)", "duplicate")

    @classmethod
    def of(cls, exc: StoreError | sqlite3.Error, key: str | None = None) -> StoreRefused:
        """Any store error of a poll, classified (returned as is when it already is);
        ``key``: the message being stored when it was raised, if known."""
        if isinstance(exc, StoreRefused):
            return exc
        if key is not None and getattr(exc, "sqlite_errorname", "") in _DUPLICATE:
            return cls.duplicate(key)
        kind = getattr(exc, "kind", None) or "store"
        if isinstance(exc, sqlite3.Error):
            what = f"SQLite error {type(exc).__name__}: {exc}"
        else:
            what = str(exc)
        return cls(f"the store refused the fetched messages ({what})", kind)
