"""SQL text shared by the parts' queries: a listing's ``WHERE`` from its filters, and
long lists of values a chunk at a time.

The listings (`mailsync history`, `mailsync inbox`, `mailsync activities`) each filter
on a few optional columns; :func:`where` makes the clause and its arguments from the
filters that are set, so that no query builds it by hand (:func:`and_where` adds the
conditions written by hand); :func:`id_window` bounds a time window's ids and
:func:`contains` makes a text search's pattern; :func:`indexed` cuts a text to what an
index takes on either backend. :func:`in_chunks` splits the values of an ``IN (...)``
so that no statement has more arguments than SQLite allows.
Placeholders are SQLite's ``?``, as in the parts' queries.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

IN_CHUNK = 500  # values of one IN (...): far below SQLite's limit on a statement's arguments

# PostgreSQL's B-tree refuses an entry over 2,704 bytes (a third of a page: "index row
# size exceeds btree version 4 maximum"), where SQLite has no bound: a message whose
# Message-ID or Subject were longer would fail the whole batch it came in, at every
# poll or pickup. The indexed copy of such a header is cut to this many bytes of UTF-8,
# on both backends alike; the message's own bytes keep it whole.
INDEXED_BYTES = 1000


def in_chunks(values: Sequence[T]) -> Iterator[tuple[str, list[T]]]:
    """``values`` :data:`IN_CHUNK` at a time, each chunk with its placeholders
    (``?,?,?``) for ``IN ({marks})``."""
    for start in range(0, len(values), IN_CHUNK):
        chunk = list(values[start:start + IN_CHUNK])
        yield ",".join("?" * len(chunk)), chunk


def where(*conditions: tuple[str, Any]) -> tuple[str, list[Any]]:
    """``WHERE a AND b ...`` of the conditions that are set, and their arguments in order.

    A condition is ``(sql, value)``: ``("m.account =", "ops")`` is ``m.account = ?``;
    ``("state IN", ("open", "done"))`` is ``state IN (?,?)``. One whose value is None,
    or an empty tuple or list, is left out; the clause is ``""`` when none is left.
    """
    parts: list[str] = []
    args: list[Any] = []
    for sql, value in conditions:
        if value is None:
            continue
        if isinstance(value, tuple | list):
            if not value:
                continue
            parts.append(f"{sql} ({','.join('?' * len(value))})")
            args.extend(value)
        else:
            parts.append(f"{sql} ?")
            args.append(value)
    return (f"WHERE {' AND '.join(parts)}" if parts else ""), args


def and_where(clause: str, conditions: Sequence[str]) -> str:
    """``clause`` (a :func:`where`'s, or ``""``) with ``conditions`` ANDed to it: SQL
    written by hand (subqueries, ORs), whose arguments follow the :func:`where`'s."""
    if not conditions:
        return clause
    joined = " AND ".join(conditions)
    return f"{clause} AND {joined}" if clause else f"WHERE {joined}"


def indexed(text: str | None) -> str | None:
    """``text`` as an indexed column holds it: at most :data:`INDEXED_BYTES` bytes of
    UTF-8, cut at a character's boundary (None stays None)."""
    if text is None or len(text) * 4 <= INDEXED_BYTES:  # the common case: nothing to cut
        return text
    data = text.encode("utf-8", "surrogateescape")
    if len(data) <= INDEXED_BYTES:
        return text
    return data[:INDEXED_BYTES].decode("utf-8", "ignore")


def id_window(table: str, column: str, alias: str, since: float | None,
              until: float | None) -> tuple[list[str], list[Any]]:
    """Conditions on ``alias.id`` that bound it to the ids of ``table``'s rows whose
    ``column`` (a time, indexed) is in ``[since, until)``, and their arguments; none
    without ``since``. They add nothing to the time conditions themselves (which stay
    in the query) but let a newest-first page by id stop at the window's oldest row
    instead of reading the older rows to the table's start, and (with ``until``) start
    at its newest, not at the table's newest: ``id + 0`` makes the MIN and MAX read
    ``column``'s index rather than the ids in order."""
    if since is None:
        return [], []
    window, times = (f"{column} >= ? AND {column} < ?", [since, until]) \
        if until is not None else (f"{column} >= ?", [since])
    conditions = [f"{alias}.id >= (SELECT MIN(id + 0) FROM {table} WHERE {window})"]
    args = list(times)
    if until is not None:
        conditions.append(f"{alias}.id <= (SELECT MAX(id + 0) FROM {table} WHERE {window})")
        args.extend(times)
    return conditions, args


def contains(text: str) -> str:
    """The ``LIKE ? ESCAPE '\\'`` pattern of a part of a text: ``%`` and ``_`` are
    characters, not wildcards. (SQLite's LIKE ignores the case of ASCII letters; on
    PostgreSQL the store says ILIKE.)"""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"
