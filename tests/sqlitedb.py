"""A test's own look into a store's SQLite file, closed when done."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def sqlite_file(path: Any, **kwargs: Any) -> Iterator[sqlite3.Connection]:
    """A connection to the SQLite file ``path`` (``sqlite3.connect``'s arguments) that
    commits when the block succeeds and is closed on leaving it. sqlite3's own ``with``
    only ends the transaction and leaves the connection open (Python 3.13 warns about it
    when it is collected)."""
    conn = sqlite3.connect(path, **kwargs)
    try:
        with conn:
            yield conn
    finally:
        conn.close()
