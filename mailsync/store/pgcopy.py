"""``mailsync store copy``: an SQLite store's every table into an empty PostgreSQL store.

The source is opened read only and must be at this mailsync's schema version (an older
one: run the daemon once first, it migrates; a newer one: upgrade). The target gets the
schema (the same migrations) if it has none, and must be empty: any row in a table but
``store_meta`` refuses the copy. ``store_meta`` is the source's (its store id), so a
state_dir whose ``store-id`` records the SQLite store accepts the PostgreSQL one. Every
table goes over with ``COPY``, in one transaction holding the migration lock (a daemon
starting on the target meanwhile waits); the rows per table are counted on both sides
before the commit, and any difference rolls everything back. The tables are analysed in
the same transaction, so that the planner knows their rows from the first claim.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mailsync.errors import StoreError
from mailsync.store import pgschema
from mailsync.store.backend import describe, missing_driver, scrub
from mailsync.store.migrations import MIGRATIONS
from mailsync.store.pgsql import ID_TABLES
from mailsync.store.sql import indexed
from mailsync.values import valueclass

# Imports inside functions: the PostgreSQL store (and so psycopg) loads only when a copy
# runs, after the driver was found.

# Parents before children (foreign keys); every other table follows in name order.
_ORDER = ("applied_config", "messages", "contents", "recipients", "events", "activities")
_SKIP = ("sqlite_sequence", "sqlite_stat1", "sqlite_stat4")
_BATCH = 1000


@valueclass
class Copied:
    """What a copy did: rows per table (the same on both sides), and the target's name."""

    tables: dict[str, int]
    target: str


def parse_target(value: str, environ: dict[str, str] | None = None) -> str:
    """The DSN of ``--to``: ``postgresql:env:NAME`` (the DSN in $NAME),
    ``postgresql:KEY=VALUE ...`` or a ``postgresql://`` URI. ValueError saying what is
    allowed for anything else (the value is not repeated: it may hold a password)."""
    env = os.environ if environ is None else environ
    if value.startswith(("postgresql://", "postgres://")):
        return value
    if value.startswith("postgresql:"):
        rest = value[len("postgresql:"):]
        if rest.startswith("env:"):
            name = rest[len("env:"):]
            if not name:
                raise ValueError("--to postgresql:env:NAME needs the variable's NAME")
            if name not in env:
                raise ValueError(f"--to postgresql:env:{name}: environment variable {name} "
                                 "is not set")
            return env[name]
        if rest:
            return rest
    raise ValueError("--to must be postgresql:env:NAME (the DSN in an environment "
                     "variable), postgresql:DSN or a postgresql:// URI")


def parse_source(value: str) -> Path:
    """The file of ``--from sqlite:PATH``; ValueError for anything else."""
    if not value.startswith("sqlite:") or not value[len("sqlite:"):]:
        raise ValueError(f"--from {value!r}: expected sqlite:PATH (the SQLite store file, "
                         "e.g. sqlite:/var/lib/mailsync/mailsync.db)")
    return Path(value[len("sqlite:"):])


def copy(source: Path, dsn: str, progress: Callable[[str, int], None] | None = None) -> Copied:
    """Copy the SQLite store ``source`` into the PostgreSQL database ``dsn``; StoreError
    (scrubbed of the DSN) when it cannot, the target untouched but for its schema."""
    missing = missing_driver()
    if missing is not None:
        raise StoreError(missing)
    src = _open_source(source)
    try:
        tables = _tables(src)
        from mailsync.store.postgres import connect, migrate_schema

        label = describe(dsn)
        conn = connect(dsn)
        try:
            migrate_schema(conn, label)
            conn.execute("SELECT pg_advisory_lock(%s)", (pgschema.MIGRATION_LOCK,))
            try:
                with conn.transaction():
                    _refuse_non_empty(conn, tables, label)
                    conn.execute("DELETE FROM store_meta")
                    counts = {t: _copy_table(src, conn, t, progress) for t in tables}
                    _verify(src, conn, counts, label)
                    # The planner's statistics, now: without them a claim would take the
                    # copied backlog for a few rows and sort all of it until autovacuum
                    # analyses the tables (docs/postgresql.md).
                    for table in tables:
                        conn.execute(f"ANALYZE {table}")
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (pgschema.MIGRATION_LOCK,))
        except StoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - psycopg's, scrubbed
            raise StoreError(f"{label}: the copy failed, nothing was copied: "
                             f"{scrub(str(exc).strip(), dsn)}") from None
        finally:
            conn.close()
    finally:
        src.close()
    return Copied(counts, label)


def _open_source(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise StoreError(f"--from sqlite:{path}: no such file")
    try:
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot read the store: {exc}") from None
    if version != len(MIGRATIONS):
        conn.close()
        what = ("older: run `mailsync run --once` on it first (it upgrades the store)"
                if version < len(MIGRATIONS) else "newer: upgrade mailsync")
        raise StoreError(f"{path}: the store is at schema version {version} and this "
                         f"mailsync uses {len(MIGRATIONS)} ({what})")
    return conn


def _tables(src: sqlite3.Connection) -> list[str]:
    names = [r[0] for r in src.execute(
        "SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")]
    names = [n for n in names if n not in _SKIP]
    return sorted(names, key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n))


def _refuse_non_empty(conn: Any, tables: list[str], label: str) -> None:
    full = []
    for table in tables:
        if table == "store_meta":
            continue
        if conn.execute(f"SELECT EXISTS (SELECT 1 FROM {table})").fetchone()[0]:
            rows = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            full.append(f"{table}: {rows}")
    if full:
        raise StoreError(f"{label}: the target store is not empty ({', '.join(full)} rows); "
                         "copy into an empty database only (nothing was copied)")


# The indexed text columns: a store written before their copies were cut (store.sql.indexed)
# can hold values longer than PostgreSQL's B-tree takes, which would fail the whole copy.
_INDEXED = {"messages": ("message_id", "subject"),
            "fetched": ("message_id", "from_address", "to_address", "subject")}


def _quote(column: str) -> str:
    return f'"{column}"'


def _copy_table(src: sqlite3.Connection, conn: Any, table: str,
                progress: Callable[[str, int], None] | None) -> int:
    columns = [r[1] for r in src.execute(f'PRAGMA table_info("{table}")')]
    names = ", ".join(_quote(c) for c in columns)
    rows = 0
    reader = src.execute(f'SELECT {names} FROM "{table}"')
    cut = [columns.index(c) for c in _INDEXED.get(table, ())]
    with conn.cursor() as cur, cur.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
        while batch := reader.fetchmany(_BATCH):
            for row in batch:
                if cut:
                    row = list(row)
                    for i in cut:
                        row[i] = indexed(row[i])
                copy.write_row(row)
            rows += len(batch)
    if "id" in columns and table in ID_TABLES:
        conn.execute(f"SELECT setval('{table}_id_seq', COALESCE(MAX(id), 0) + 1, false)"
                     f" FROM {table}")
    if progress is not None:
        progress(table, rows)
    return rows


def _verify(src: sqlite3.Connection, conn: Any, counts: dict[str, int], label: str) -> None:
    for table, copied in counts.items():
        there = int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
        here = int(src.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0])
        if not here == there == copied:
            raise StoreError(f"{label}: table {table}: {here} rows in the source, {there} in "
                             "the target: the copy was rolled back")
