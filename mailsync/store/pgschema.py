"""The store's schema on PostgreSQL: the same migrations as SQLite's, in its dialect.

There is one schema, :data:`mailsync.store.migrations.MIGRATIONS`; migration N on
PostgreSQL is :func:`migration` (N), the SQLite text with its types made PostgreSQL's
(``INTEGER`` is ``BIGINT``: inodes and nanosecond times do not fit 32 bits; ``REAL`` is
``DOUBLE PRECISION``: epoch seconds do not fit a 4-byte float; ``BLOB`` is ``BYTEA``),
``WITHOUT ROWID`` dropped, the column ``user`` quoted, and SQLite's functions in
:data:`_FUNCTIONS` replaced. An ``id INTEGER PRIMARY KEY`` is, as in SQLite, given when
an INSERT leaves it NULL (a sequence, by the trigger :data:`BOOTSTRAP` defines), and an
explicit id moves the sequence past it.

The version is the one row of ``mailsync_schema`` (SQLite's ``PRAGMA user_version``),
created by :data:`BOOTSTRAP`; :mod:`mailsync.store.postgres` applies the missing
migrations under an advisory lock (:data:`MIGRATION_LOCK`), one transaction each.
"""

from __future__ import annotations

import re

from mailsync.store.migrations import MIGRATIONS
from mailsync.store.pgsql import translate

# pg_advisory_lock key of the migrations: 'mailsync' in ASCII.
MIGRATION_LOCK = 0x6D61696C73796E63

BOOTSTRAP = """
CREATE TABLE IF NOT EXISTS mailsync_schema (
    one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
    version INTEGER NOT NULL
);
INSERT INTO mailsync_schema (version) VALUES (0) ON CONFLICT DO NOTHING;
CREATE OR REPLACE FUNCTION mailsync_row_id() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
    IF NEW.id IS NULL THEN
        NEW.id := nextval(TG_ARGV[0]::regclass);
    ELSIF NEW.id > COALESCE(pg_sequence_last_value(TG_ARGV[0]::regclass), 0) THEN
        PERFORM setval(TG_ARGV[0]::regclass, NEW.id);
    END IF;
    RETURN NEW;
END
$f$;
"""

_TYPES = ((r"\bINTEGER\b", "BIGINT"), (r"\bREAL\b", "DOUBLE PRECISION"),
          (r"\bBLOB\b", "BYTEA"), (r"\)\s*WITHOUT ROWID", ")"))
_FUNCTIONS = {
    "lower(hex(randomblob(16)))": "replace(gen_random_uuid()::text, '-', '')",
    "strftime('%Y-%m-%dT%H:%M:%SZ', 'now')":
        "to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')",
    "instr(": "strpos(",
}
_ID_TABLE = re.compile(r"^CREATE TABLE (\w+) \(\s*id INTEGER PRIMARY KEY", re.IGNORECASE)


def statements(sql: str) -> list[str]:
    """A migration's statements (migrations contain no ';' inside literals)."""
    return [s.strip() for s in sql.split(";") if s.strip()]


def migration(number: int) -> list[str]:
    """Migration ``number`` (1-based) as PostgreSQL statements."""
    out: list[str] = []
    for statement in statements(MIGRATIONS[number - 1]):
        table = _ID_TABLE.match(statement)
        for sqlite, postgres in _FUNCTIONS.items():
            statement = statement.replace(sqlite, postgres)
        for pattern, replacement in _TYPES:
            statement = re.sub(pattern, replacement, statement)
        if statement.upper().startswith(("INSERT", "UPDATE", "DELETE")):
            out.append(translate(statement, returning=False).replace("%%", "%"))
        else:
            out.append(re.sub(r'(?<![\w"])user(?![\w"])', '"user"', statement))
        if table is not None:
            name = table.group(1)
            out += [f"CREATE SEQUENCE {name}_id_seq OWNED BY {name}.id",
                    f"CREATE TRIGGER {name}_id BEFORE INSERT ON {name} FOR EACH ROW"
                    f" EXECUTE FUNCTION mailsync_row_id('{name}_id_seq')"]
    return out


def count() -> int:
    """The schema version this mailsync uses (the same number on both backends)."""
    return len(MIGRATIONS)
