"""A psycopg connection that the parts use as they use SQLite's (the store's ``conn``).

The parts run their SQL through ``conn.execute(sql, params)`` / ``executemany``, read
``fetchone``/``fetchall``/iteration, ``rowcount``, ``lastrowid``, set
``row_factory = sqlite3.Row`` for rows read by column name, and catch ``sqlite3.Error``
and ``sqlite3.IntegrityError``. :class:`PgConnection` gives them the same on PostgreSQL:
each statement translated (:func:`mailsync.store.pgsql.translate`, cached), psycopg's
errors raised as subclasses of sqlite3's with the ``sqlite_errorname`` SQLite would give
(so ``health.classify`` and the duplicate detection of fetched mail work unchanged) and
their text scrubbed of the DSN's password.

It holds one connection of the pool at a time and keeps it between statements (the
store serialises its use under ``Store.lock``, as SQLite's one connection); a broken one
(the server went away) goes back to the pool, which discards it, and the next statement
takes a fresh one. A connection lost inside a transaction fails every later statement
of that transaction: none of them may run, half-done, on another connection.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from mailsync.store.backend import scrub
from mailsync.store.pgsql import translate

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool

# Imports inside functions: psycopg loads only when a PostgreSQL store is used (it is an
# optional extra); TYPE_CHECKING imports give its types to mypy.

# How long a statement waits for a connection of the pool (the server down: an outage).
CONNECT_WAIT = 5.0
# The attribute of a psycopg connection saying when (time.monotonic()) it was last given
# back to the pool (the pool's check skips one given back moments ago: postgres._pool).
RETURNED_AT = "_mailsync_returned_at"


class PgIntegrityError(sqlite3.IntegrityError):
    """A constraint PostgreSQL refused (unique, foreign key, not null, check)."""


class PgOperationalError(sqlite3.OperationalError):
    """The database cannot be reached or cannot commit (down, disk full, read only)."""


class PgDatabaseError(sqlite3.DatabaseError):
    """Any other error PostgreSQL reports (a statement's own)."""


# SQLSTATE (or its class, the first two characters) -> the SQLite error name it stands
# for: what health.classify and inbound/refused.py read.
_STATES = {"23505": "SQLITE_CONSTRAINT_UNIQUE", "23503": "SQLITE_CONSTRAINT_FOREIGNKEY",
           "23502": "SQLITE_CONSTRAINT_NOTNULL", "23514": "SQLITE_CONSTRAINT_CHECK",
           "53100": "SQLITE_FULL", "25006": "SQLITE_READONLY", "08": "SQLITE_IOERR",
           "57": "SQLITE_IOERR", "53": "SQLITE_IOERR", "58": "SQLITE_IOERR",
           "XX001": "SQLITE_CORRUPT", "XX002": "SQLITE_CORRUPT"}


def sqlite_error(exc: BaseException, dsn: str | None) -> sqlite3.Error:
    """``exc`` (psycopg's, or the pool's timeout) as the sqlite3 error the parts catch."""
    state = getattr(exc, "sqlstate", None) or ""
    name = _STATES.get(state) or _STATES.get(state[:2]) or ""
    text = scrub(str(exc).strip() or type(exc).__name__, dsn)
    error: sqlite3.Error
    if state.startswith("23"):
        error = PgIntegrityError(text)
    elif name or not state:  # no SQLSTATE: the connection failed, or no connection came
        error = PgOperationalError(text)
        name = name or "SQLITE_IOERR"
    else:
        error = PgDatabaseError(text)
    error.sqlite_errorname = name or f"PG_{state}"
    return error


class PgRow(tuple):  # type: ignore[type-arg]
    """A row read by index or by column name, as ``sqlite3.Row``."""

    _names: tuple[str, ...]

    def __new__(cls, names: tuple[str, ...], values: Sequence[Any]) -> PgRow:
        row = super().__new__(cls, values)
        row._names = names
        return row

    def keys(self) -> list[str]:
        return list(self._names)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return super().__getitem__(self._names.index(key))
        return super().__getitem__(key)


class PgCursor:
    """The rows of one statement (read at once: a client-side psycopg cursor)."""

    def __init__(self, rows: list[tuple[Any, ...]], names: tuple[str, ...], rowcount: int,
                 lastrowid: int | None) -> None:
        self._rows = rows
        self._names = names
        self._next = 0
        self.rowcount = rowcount
        self.lastrowid = lastrowid
        self.row_factory: Any = None

    def _shape(self, row: tuple[Any, ...]) -> Any:
        return row if self.row_factory is None else PgRow(self._names, row)

    def fetchone(self) -> Any:
        if self._next >= len(self._rows):
            return None
        self._next += 1
        return self._shape(self._rows[self._next - 1])

    def fetchall(self) -> list[Any]:
        rest, self._next = self._rows[self._next:], len(self._rows)
        return [self._shape(row) for row in rest]

    def __iter__(self) -> Iterator[Any]:
        while (row := self.fetchone()) is not None:
            yield row


class PgConnection:
    """The sqlite3.Connection-like face of a PostgreSQL store (see the module doc)."""

    def __init__(self, pool: ConnectionPool[psycopg.Connection[Any]], dsn: str) -> None:
        self._pool = pool
        self._dsn = dsn
        self._raw: psycopg.Connection[Any] | None = None
        self._open = False  # a transaction is open (BEGIN ran, no COMMIT/ROLLBACK yet)
        self._lost = False  # ... and its connection broke: it can only be rolled back
        self.total_changes = 0

    @property
    def in_transaction(self) -> bool:
        return self._open

    def raw(self) -> psycopg.Connection[Any]:
        """The connection held now, or a fresh one of the pool."""
        if self._raw is None:
            try:
                self._raw = self._pool.getconn(timeout=CONNECT_WAIT)
            except Exception as exc:  # noqa: BLE001 - PoolTimeout, psycopg.Error
                raise sqlite_error(exc, self._dsn) from None
        return self._raw

    def _failed(self, exc: BaseException) -> sqlite3.Error:
        """Give a broken connection back to the pool (it discards it)."""
        raw = self._raw
        if raw is not None and (raw.closed or raw.broken):
            self._lost = self._open
            self._raw = None
            self._pool.putconn(raw)
        return sqlite_error(exc, self._dsn)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> PgCursor:
        text = translate(sql)
        if text == "BEGIN":
            self._lost = False
        elif text in ("COMMIT", "ROLLBACK"):
            lost, self._lost = self._lost, False
            if lost:
                self._open = False
                if text == "ROLLBACK":
                    return PgCursor([], (), -1, None)
                raise PgOperationalError("the connection to the database was lost in the "
                                         "transaction; nothing of it was committed")
        elif self._lost:
            raise PgOperationalError("the connection to the database was lost in this "
                                     "transaction")
        import psycopg

        try:
            cur = self.raw().execute(text, tuple(params))
        except psycopg.Error as exc:
            raise self._failed(exc) from None
        finally:
            if text in ("COMMIT", "ROLLBACK"):
                self._open = False
        if text == "BEGIN":
            self._open = True
        names = tuple(c.name for c in cur.description or ())
        rows = cur.fetchall() if cur.description else []
        lastrowid = None
        if text.endswith(" RETURNING id") and rows:
            lastrowid = int(rows[0][0])
            rows, names = [], ()
        if cur.rowcount > 0 and not names:
            self.total_changes += cur.rowcount
        return PgCursor(rows, names, cur.rowcount, lastrowid)

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> PgCursor:
        import psycopg

        if self._lost:
            raise PgOperationalError("the connection to the database was lost in this "
                                     "transaction")
        params = [tuple(p) for p in seq]
        if not params:
            return PgCursor([], (), 0, None)
        raw = self.raw()
        try:
            with raw.cursor() as cur:
                cur.executemany(translate(sql, returning=False), params)
                count = cur.rowcount
        except psycopg.Error as exc:
            raise self._failed(exc) from None
        if count > 0:
            self.total_changes += count
        return PgCursor([], (), count, None)

    def copy_rows(self, table: str, columns: Sequence[str],
                  rows: Sequence[Sequence[Any]]) -> int:
        """``rows`` into ``table`` by ``COPY ... FROM STDIN``: one statement and one
        stream for them all (a batch of the spool's messages), instead of one statement
        per row. No conflict clause and no ids read back: the caller gives every key.
        Returns how many rows."""
        import psycopg
        from psycopg import sql

        if self._lost:
            raise PgOperationalError("the connection to the database was lost in this "
                                     "transaction")
        if not rows:
            return 0
        statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
            sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns)))
        try:
            with self.raw().cursor() as cur, cur.copy(statement) as copy:
                for row in rows:
                    copy.write_row(row)
        except psycopg.Error as exc:
            raise self._failed(exc) from None
        self.total_changes += len(rows)
        return len(rows)

    def close(self) -> None:
        """Give the connection back to the pool (rolled back if a transaction is open)."""
        raw, self._raw = self._raw, None
        if raw is not None:
            setattr(raw, RETURNED_AT, time.monotonic())
            self._pool.putconn(raw)


def numeric_loader() -> type[Any]:
    """psycopg's loader of ``numeric`` returning int or float, as SQLite gives them
    (``SUM`` of an integer column is numeric in PostgreSQL, a Decimal in psycopg)."""
    from psycopg.types.numeric import NumericLoader

    class Loader(NumericLoader):
        def load(self, data: Any) -> Any:
            value = super().load(data)
            if isinstance(value, Decimal):
                return int(value) if value == value.to_integral_value() else float(value)
            return value

    return Loader
