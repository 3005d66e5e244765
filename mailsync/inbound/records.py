"""SQL of the inbound tables: fetch state, fetched messages, and their listings.

Writes take the connection of an open transaction (the poller's, one per batch); reads
take the store and hold its lock, as the outbound store's readers do.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mailsync.config.units import iso
from mailsync.inbound.source import Cursor, Skipped
from mailsync.store import Store, in_chunks, where
from mailsync.store.sql import IN_CHUNK, and_where, contains, id_window
from mailsync.values import valueclass

if TYPE_CHECKING:  # the email package: imported when a poll fetches a message
    from mailsync.inbound.message import Summary

_CACHE_RATIO = 4  # cache the keys stored while they are at most 4x the keys listed

LIST_COLUMNS = ("id", "server", "fetched_at", "from", "subject", "size", "bounce_of")
# The keys of a listed message (--format json and csv), in order: _summary's.
SUMMARY_KEYS = ("id", "server", "folder", "source_key", "fetched_at", "message_id", "from",
                "to", "subject", "date", "size", "bounce_of")


class StoreKnown:
    """The :class:`~mailsync.inbound.source.Known` view of one server and folder.

    A POP3 server lists the UIDL of every message it holds on each poll (thousands when
    messages are kept), and looking each of them up costs ~1 µs of SQL. So when the
    listing is long and the store holds not many more keys than it, the keys of this
    server and folder are kept in memory, checked at each call against the number of
    rows stored (one COUNT over the index, ~35 µs per 1,000 rows) and loaded again in
    one query when it differs (after a poll that stored something, or a row removed).
    The answer stays exact where it matters: a key the cache lacks is looked up in the
    store before it is called new, and every key in the cache was read from a
    committed row. (Rows removed and as many added by others between two calls leave
    the count equal: the removed keys are still called stored, as they were once.)
    """

    def __init__(self, store: Store, server: str, folder: str) -> None:
        self.store = store
        self.server = server
        self.folder = folder
        self._cache: set[str] | None = None

    def keys(self, keys: Sequence[str]) -> set[str]:
        """Those of ``keys`` stored for this server and folder."""
        if len(keys) <= IN_CHUNK:
            return self._lookup(keys)  # a short listing: as cheap as checking a cache
        with self.store.lock:
            rows = self._count()
            if self._cache is None or len(self._cache) != rows:
                self._cache = self._load() if rows <= _CACHE_RATIO * len(keys) else None
            if self._cache is None:
                return self._lookup(keys)
            found = self._cache.intersection(keys)
            if len(found) < len(keys):  # "new": make sure, in the store itself
                extra = self._lookup([k for k in keys if k not in found])
                self._cache.update(extra)
                found.update(extra)
        return found

    def _count(self) -> int:
        row = self.store.conn.execute(
            "SELECT count(*) FROM fetched WHERE server = ? AND folder = ?",
            (self.server, self.folder)).fetchone()
        return int(row[0])

    def _load(self) -> set[str]:
        """Every key stored for this server and folder (one consistent read)."""
        return {r[0] for r in self.store.conn.execute(
            "SELECT source_key FROM fetched WHERE server = ? AND folder = ?",
            (self.server, self.folder))}

    def _lookup(self, keys: Sequence[str]) -> set[str]:
        found: set[str] = set()
        with self.store.lock:
            for marks, chunk in in_chunks(keys):
                found.update(r[0] for r in self.store.conn.execute(
                    f"SELECT source_key FROM fetched WHERE server = ? AND folder = ?"
                    f" AND source_key IN ({marks})", (self.server, self.folder, *chunk)))
        return found

    def messages(self, pairs: Sequence[tuple[str, int]]) -> set[tuple[str, int]]:
        """Those (Message-ID, size) pairs stored for this server (any folder)."""
        wanted = set(pairs)
        ids = sorted({mid for mid, _ in wanted})
        found: set[tuple[str, int]] = set()
        with self.store.lock:
            for marks, chunk in in_chunks(ids):
                found.update((r[0], r[1]) for r in self.store.conn.execute(
                    f"SELECT message_id, size FROM fetched WHERE server = ?"
                    f" AND message_id IN ({marks})", (self.server, *chunk)))
        return found & wanted

    def skipped(self) -> set[str]:
        """The keys skipped at this server and folder (few: one query for all of them)."""
        with self.store.lock:
            return {r[0] for r in self.store.conn.execute(
                "SELECT source_key FROM fetch_skipped WHERE server = ? AND folder = ?",
                (self.server, self.folder))}


def insert_skipped(conn: sqlite3.Connection, server: str, folder: str, skipped: Skipped,
                   now: float) -> bool:
    """Record a message not fetched (inside the batch's transaction); False when it was
    recorded before (a poll that did not commit came across it too)."""
    cur = conn.execute(
        "INSERT OR IGNORE INTO fetch_skipped (server, folder, source_key, reason, size,"
        " skipped_at) VALUES (?, ?, ?, ?, ?, ?)",
        (server, folder, skipped.key, skipped.reason, skipped.size, now))
    return cur.rowcount > 0


def list_skipped(store: Store, server: str) -> list[tuple[str, str, str, int]]:
    """(folder, key, reason, size) of each message skipped at ``server``, oldest first."""
    with store.lock:
        return [(r[0], r[1], r[2], int(r[3])) for r in store.conn.execute(
            "SELECT folder, source_key, reason, size FROM fetch_skipped WHERE server = ?"
            " ORDER BY skipped_at, source_key", (server,))]


def load_cursor(store: Store, server: str, folder: str) -> Cursor:
    """The stored cursor of an IMAP folder (an empty one before the first poll)."""
    with store.lock:
        row = store.conn.execute(
            "SELECT uidvalidity, last_uid, uidvalidity_changes, recognise_below"
            " FROM fetch_state WHERE server = ? AND folder = ?", (server, folder)).fetchone()
    return Cursor(*row) if row else Cursor()


def save_cursor(conn: sqlite3.Connection, server: str, folder: str, cursor: Cursor,
                now: float) -> None:
    """Write the cursor (inside the transaction that stores the batch it ends)."""
    conn.execute(
        "INSERT INTO fetch_state (server, folder, uidvalidity, last_uid, uidvalidity_changes,"
        " recognise_below, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (server, folder) DO UPDATE SET uidvalidity = excluded.uidvalidity,"
        " last_uid = excluded.last_uid, uidvalidity_changes = excluded.uidvalidity_changes,"
        " recognise_below = excluded.recognise_below, updated_at = excluded.updated_at",
        (server, folder, cursor.uidvalidity, cursor.last_uid, cursor.changes,
         cursor.recognise_below, now))


def insert_fetched(conn: sqlite3.Connection, server: str, folder: str, key: str,
                   summary: Summary, raw: bytes, now: float) -> int:
    """Store one fetched message; its id. A key stored before raises IntegrityError."""
    cur = conn.execute(
        "INSERT INTO fetched (server, folder, source_key, fetched_at, message_id,"
        " from_address, to_address, subject, date, sent_at, size, raw)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (server, folder, key, now, summary.message_id, summary.from_address,
         summary.to_address, summary.subject, summary.date, summary.sent_at, summary.size,
         raw))
    return int(cur.lastrowid or 0)


def mark_bounce_of(conn: sqlite3.Connection, fetched_id: int, message: int) -> None:
    conn.execute("UPDATE fetched SET bounce_of = ? WHERE id = ?", (message, fetched_id))


@valueclass
class InboxFilters:
    """Listing filters of ``mailsync inbox`` and the Inbox page; None means any.
    ``since`` and ``until`` (epoch seconds) keep the messages fetched at or after the one
    and before the other; ``search`` matches a part of the From, To or Subject header
    (any case) or a Message-ID (with or without its ``<>``); ``bounces`` keeps only those
    that bounced a message this daemon sent; ``before`` is the keyset of the next page:
    ids below it."""

    server: str | None = None
    since: float | None = None
    limit: int = 100
    until: float | None = None
    search: str | None = None
    bounces: bool = False
    before: int | None = None


# What a listing reads of each fetched message (the columns _summary turns into an object).
_LIST_SELECT = ("SELECT f.id, f.server, f.folder, f.source_key, f.fetched_at, f.message_id,"
                " f.from_address, f.to_address, f.subject, f.date, f.size, f.bounce_of")


def _where(f: InboxFilters) -> tuple[str, list[Any]]:
    clause, args = where(("f.server =", f.server), ("f.fetched_at >=", f.since),
                         ("f.fetched_at <", f.until), ("f.id <", f.before))
    # A page stops at the window's oldest message instead of reading the rows (each with
    # its raw bytes) to the table's start: store.sql.id_window.
    extra, window_args = id_window("fetched", "fetched_at", "f", f.since, f.until)
    args.extend(window_args)
    if f.bounces:
        extra.append("f.bounce_of IS NOT NULL")
    term = (f.search or "").strip()
    if term:
        # Each through its index (migration 18): the headers alone are read, not the rows.
        args.extend((term, f"<{term.strip('<>')}>", *[contains(term)] * 3))
        extra.append("(f.message_id IN (?, ?)" + "".join(
            f" OR f.id IN (SELECT id FROM fetched WHERE {column} LIKE ? ESCAPE '\\')"
            for column in ("from_address", "to_address", "subject")) + ")")
    return and_where(clause, extra), args


def list_fetched(store: Store, f: InboxFilters, *, linked: bool = False
                 ) -> list[dict[str, Any]]:
    """Fetched messages, newest first, as objects with stable keys; ``linked`` adds the
    subject and status of the message each one bounced (``bounced_subject``,
    ``bounced_status``: None when it bounced none), as the Inbox page shows them."""
    clause, args = _where(f)
    sql = f"{_LIST_SELECT} FROM fetched f {clause} ORDER BY f.id DESC LIMIT ?"
    if linked:
        sql = (f"{_LIST_SELECT}, m.subject AS bounced_subject, m.status AS bounced_status"
               f" FROM fetched f LEFT JOIN messages m ON m.id = f.bounce_of {clause}"
               " ORDER BY f.id DESC LIMIT ?")
    with store.lock:
        cur = store.conn.execute(sql, (*args, f.limit))
        cur.row_factory = sqlite3.Row
        rows = cur.fetchall()
    if not linked:
        return [_summary(r) for r in rows]
    return [{**_summary(r), "bounced_subject": r["bounced_subject"],
             "bounced_status": r["bounced_status"]} for r in rows]


def count_fetched(store: Store, f: InboxFilters) -> int:
    """How many fetched messages the filters match, whatever the limit."""
    clause, args = _where(f)
    with store.lock:
        row = store.conn.execute(f"SELECT COUNT(*) FROM fetched f {clause}", args).fetchone()
    return int(row[0])


def last_fetched(store: Store, server: str) -> float | None:
    """When a message was last fetched from ``server`` (epoch seconds; None: never)."""
    with store.lock:
        row = store.conn.execute("SELECT MAX(fetched_at) FROM fetched WHERE server = ?",
                                 (server,)).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def show_fetched(store: Store, fid: int) -> dict[str, Any] | None:
    """One fetched message: its summary and ``raw`` bytes."""
    with store.lock:
        cur = store.conn.execute(
            "SELECT id, server, folder, source_key, fetched_at, message_id, from_address,"
            " to_address, subject, date, size, bounce_of, raw FROM fetched WHERE id = ?",
            (fid,))
        cur.row_factory = sqlite3.Row
        row = cur.fetchone()
    if row is None:
        return None
    out = _summary(row)
    out["raw"] = row["raw"]
    return out


def uidvalidity_changes(store: Store, server: str) -> int:
    """How many UIDVALIDITY changes were seen on this server's folders."""
    with store.lock:
        row = store.conn.execute("SELECT COALESCE(SUM(uidvalidity_changes), 0) FROM"
                                 " fetch_state WHERE server = ?", (server,)).fetchone()
    return int(row[0])


def _summary(r: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": r["id"],
        "server": r["server"],
        "folder": r["folder"] or None,
        "source_key": r["source_key"],
        "fetched_at": iso(r["fetched_at"]),
        "message_id": r["message_id"],
        "from": r["from_address"],
        "to": r["to_address"],
        "subject": r["subject"],
        "date": r["date"],
        "size": r["size"],
        "bounce_of": r["bounce_of"],
    }
