"""The store: the daemon's state (queue, history, fetch state, activities) in one database.

This package is the seam the backends plug into: callers import what they need from
here (:class:`Store` and the functions about a state_dir's store), never from the module
of one backend. SQLite in state_dir is the default (:mod:`mailsync.store.sqlite`, opened
by :mod:`mailsync.store.sqlitefile`); a configuration's ``daemon.store`` may name a
PostgreSQL database instead (:mod:`mailsync.store.postgres`, imported only then), which
``Store.open(..., backend=config.daemon.store)`` opens as a subclass of the same Store,
its SQL translated from SQLite's (:mod:`mailsync.store.pgsql`); the
schema is :mod:`mailsync.store.migrations`, which store a state_dir holds is
:mod:`mailsync.store.identity`, whether it can commit is :mod:`mailsync.store.health`;
the ``WHERE`` of the parts' listings is :func:`where` (:mod:`mailsync.store.sql`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from mailsync.store import sqlite, sqlitefile
from mailsync.store.sql import in_chunks, where
from mailsync.store.sqlite import AppliedConfig, Store
from mailsync.store.sqlitefile import db_path, integrity, store_error

if TYPE_CHECKING:
    from mailsync.config.tree import StoreBackend


def _open_postgresql(state_dir: Path, backend: StoreBackend, *, create: bool,
                     new_store: bool, readonly: bool, migrate: bool) -> Store:
    """The PostgreSQL store (:func:`mailsync.store.postgres.open_store`)."""
    # Imported only when a configuration names PostgreSQL: psycopg is an optional extra,
    # and SQLite users and one-shot commands never pay for loading it.
    from mailsync.store import postgres

    return postgres.open_store(state_dir, backend, create=create, new_store=new_store,
                               readonly=readonly, migrate=migrate)


sqlite.OPENERS["postgresql"] = _open_postgresql


def existed(state_dir: Path, backend: StoreBackend | None = None) -> bool:
    """Whether the store may hold anything yet (readers show "nothing yet" when not):
    SQLite's file or store-id in ``state_dir``; a PostgreSQL store always may (another
    node may have filled it): it is opened to find out."""
    if backend is not None and backend.kind == "postgresql":
        return True
    return sqlitefile.existed(state_dir)


def read_only(state_dir: Path, backend: StoreBackend | None = None) -> bool:
    """Whether this process gets the read-only view of the store: SQLite's, when it may
    not write the file or state_dir; PostgreSQL's (read-only transactions), when it may
    not write state_dir (an operator in the daemon's group)."""
    if backend is not None and backend.kind == "postgresql":
        return state_dir.is_dir() and not os.access(state_dir, os.W_OK)
    return sqlitefile.read_only(state_dir)


__all__ = ["AppliedConfig", "Store", "db_path", "existed", "in_chunks", "integrity",
           "read_only", "store_error", "where"]
