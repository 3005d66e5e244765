"""The store: the daemon's state (queue, history, fetch state, activities) in one database.

This package is the seam a second backend plugs into: callers import what they need from
here (:class:`Store` and the functions about a state_dir's store), never from the module
of one backend. Today there is one backend, SQLite (:mod:`mailsync.store.sqlite`, opened by
:mod:`mailsync.store.sqlitefile`); the
schema is :mod:`mailsync.store.migrations`, which store a state_dir holds is
:mod:`mailsync.store.identity`, whether it can commit is :mod:`mailsync.store.health`;
the ``WHERE`` of the parts' listings is :func:`where` (:mod:`mailsync.store.sql`).
"""

from __future__ import annotations

from mailsync.store.sql import where
from mailsync.store.sqlite import AppliedConfig, Store
from mailsync.store.sqlitefile import db_path, existed, integrity, read_only, store_error

__all__ = ["AppliedConfig", "Store", "db_path", "existed", "integrity", "read_only",
           "store_error", "where"]
