"""The parts' SQL (written for SQLite) as PostgreSQL runs it: a pure, cached translation.

The parts write their queries once, in SQLite's dialect, with ``?`` placeholders
(``outbound/*``, ``inbound/*``, ``activities/*``); on a PostgreSQL store the connection
adapter (:mod:`mailsync.store.postgres`) runs each through :func:`translate`, which
changes only what differs, outside string literals:

- ``?`` becomes ``%s`` (and every ``%`` becomes ``%%``, psycopg's escape, in literals too);
- the column ``user`` (a reserved word in PostgreSQL: ``current_user``) is quoted;
- ``group_concat(x[, sep])`` is ``string_agg(x::text, sep)`` (default separator ``,``);
- ``INSERT OR IGNORE`` is ``ON CONFLICT DO NOTHING``; ``INSERT OR REPLACE`` is
  ``ON CONFLICT (key) DO UPDATE`` of every other column (the keys: :data:`CONFLICT_KEYS`);
- an ``INSERT`` into a table with an ``id`` returns it (``RETURNING id``), which is the
  cursor's ``lastrowid`` as with SQLite;
- ``BEGIN IMMEDIATE`` is ``BEGIN``;
- ``LIKE`` is ``ILIKE``: SQLite's LIKE ignores the case of (ASCII) letters, PostgreSQL's
  does not (the history's subject search relies on it);
- ``instr(x, y)`` is ``strpos(x, y)`` (a recipient's domain:
  :data:`mailsync.outbound.tables.RECIPIENT_DOMAIN`).

A statement SQLite alone understands (``PRAGMA``) raises ValueError naming it: every
statement of mailsync's is meant to run on both backends (tests/test_store_backends.py).
"""

from __future__ import annotations

import re
from functools import lru_cache

# The primary key of each table that an INSERT OR REPLACE writes (its conflict target).
CONFLICT_KEYS: dict[str, tuple[str, ...]] = {
    "spool_claims": ("source",),
    "fetch_state": ("server", "folder"),
    "fetch_skipped": ("server", "folder", "source_key"),
    "recipients": ("message", "address"),
    "store_meta": ("key",),
    "nodes": ("name",),
}
# Tables whose rows have an integer ``id`` (filled by the store when the INSERT gives none).
ID_TABLES = frozenset({"applied_config", "messages", "events", "fetched", "activities"})

_LITERAL = re.compile(r"('(?:[^']|'')*')")
_USER = re.compile(r'(?<![\w"])user(?![\w"])')
_GROUP_CONCAT = re.compile(
    r"group_concat\(\s*([\w.]+)\s*(?:,\s*('(?:[^']|'')*'))?\s*\)", re.IGNORECASE)
_INSERT_OR = re.compile(r"^\s*INSERT\s+OR\s+(IGNORE|REPLACE)\s+INTO\s+(\w+)", re.IGNORECASE)
_INSERT = re.compile(r"^\s*INSERT\s+INTO\s+(\w+)", re.IGNORECASE)
_COLUMNS = re.compile(r"^\s*INSERT\s+INTO\s+\w+\s*\(([^)]*)\)", re.IGNORECASE)
_RETURNING = re.compile(r"\bRETURNING\b", re.IGNORECASE)
_LIKE = re.compile(r"(?<![\w\"])LIKE(?![\w\"])", re.IGNORECASE)
_INSTR = re.compile(r"(?<![\w\"])instr\(", re.IGNORECASE)


@lru_cache(maxsize=4096)
def translate(sql: str, returning: bool = True) -> str:
    """``sql`` (SQLite's dialect, ``?`` placeholders) as PostgreSQL runs it with psycopg.

    ``returning``: add ``RETURNING id`` to an INSERT into a table with ids (the cursor's
    ``lastrowid``); not for ``executemany``, which reads no rows."""
    stripped = sql.strip().rstrip(";")
    head = stripped.split(None, 1)[0].upper() if stripped else ""
    if head == "PRAGMA":
        raise ValueError(f"SQLite-only statement on a PostgreSQL store: {stripped[:60]!r}")
    if re.fullmatch(r"BEGIN(\s+(IMMEDIATE|DEFERRED|EXCLUSIVE))?", stripped, re.IGNORECASE):
        return "BEGIN"
    text = _GROUP_CONCAT.sub(_string_agg, stripped)
    suffix = ""
    mode = _INSERT_OR.match(text)
    if mode is not None:
        table = mode.group(2)
        text = f"INSERT INTO {table}{text[mode.end():]}"
        suffix = _on_conflict(text, table, mode.group(1).upper())
    parts = _LITERAL.split(text.replace("%", "%%"))  # psycopg reads % in literals too
    for i in range(0, len(parts), 2):  # the even parts are outside literals
        parts[i] = _INSTR.sub("strpos(", _LIKE.sub(
            "ILIKE", _USER.sub('"user"', parts[i].replace("?", "%s"))))
    text = "".join(parts) + suffix
    insert = _INSERT.match(text)
    if (returning and insert is not None and insert.group(1).lower() in ID_TABLES
            and not _RETURNING.search(text)):
        text += " RETURNING id"
    return text


def _string_agg(match: re.Match[str]) -> str:
    return f"string_agg({match.group(1)}::text, {match.group(2) or repr(',')})"


def _on_conflict(text: str, table: str, mode: str) -> str:
    if mode == "IGNORE":
        return " ON CONFLICT DO NOTHING"
    keys = CONFLICT_KEYS.get(table.lower())
    columns = _COLUMNS.match(text)
    if keys is None or columns is None:
        raise ValueError(f"INSERT OR REPLACE INTO {table}: no conflict key known for it "
                         f"on PostgreSQL (known: {', '.join(sorted(CONFLICT_KEYS))})")
    names = [c.strip() for c in columns.group(1).split(",")]
    rest = [c for c in names if c not in keys]
    quoted = [f'"{c}"' if c == "user" else c for c in rest]
    update = ", ".join(f"{q} = EXCLUDED.{q}" for q in quoted)
    action = f"DO UPDATE SET {update}" if update else "DO NOTHING"
    return f" ON CONFLICT ({', '.join(keys)}) {action}"
