"""Spool files into the queue: a batch queued (or recorded as rejected) in one
transaction with each file's claim, and the claims released or swept once the files are gone.

The other side of the queue (claiming what is due, recording outcomes, operator actions,
counts) is :class:`mailsync.outbound.queue.OutboundStore`, which is a :class:`SpoolIntake`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, cast

from mailsync.outbound.events import event
from mailsync.store import Store
from mailsync.store.sql import indexed
from mailsync.values import field, valueclass

if TYPE_CHECKING:
    from mailsync.store.pgconn import PgConnection


@valueclass
class FileId:
    """Which file a spool entry was: inode and ctime of the descriptor that was read.

    A file left in ``new/`` by a crash keeps both; a file dropped again under the same
    name (written in ``tmp/``, renamed into ``new/``) has a new ctime, whatever its inode.
    """

    inode: int
    ctime_ns: int


@valueclass
class NewMessage:
    """A message taken from the spool, composed and ready to queue."""

    source: str
    sha256: str
    user: str
    account: str
    from_address: str
    message_id: str
    subject: str
    raw: bytes
    recipients: tuple[str, ...]
    idempotency_key: str | None = None
    file: FileId | None = None


@valueclass
class RejectedMessage:
    """A spool file refused at ingestion: recorded in the history with its reason."""

    source: str
    sha256: str
    reason: str
    detail: str
    raw: bytes | None = None
    user: str | None = None
    account: str | None = None
    subject: str | None = None
    file: FileId | None = None

@valueclass(frozen=False)
class IngestResult:
    """What one ingest call did, by spool file name."""

    queued: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)   # idempotency key seen before
    rejected: dict[str, int] = field(default_factory=dict)
    taken: dict[str, int] = field(default_factory=dict)   # this very file, before a crash


def _release(conn: sqlite3.Connection, dialect: str,
             claims: Sequence[tuple[str, int]]) -> None:
    """Delete these (source, message) claims: one statement on PostgreSQL (its
    executemany is a statement a row), SQLite's executemany elsewhere."""
    if dialect == "postgresql":
        conn.execute("DELETE FROM spool_claims WHERE (source, message) IN"
                     " (SELECT * FROM unnest(?::text[], ?::bigint[]))",
                     ([c[0] for c in claims], [c[1] for c in claims]))
    else:
        conn.executemany("DELETE FROM spool_claims WHERE source = ? AND message = ?", claims)


class _Bulk:
    """A batch's new messages, kept until the batch's end and then written table by
    table: on PostgreSQL with one COPY each
    (:meth:`mailsync.store.pgconn.PgConnection.copy_rows`), on SQLite with one
    ``executemany`` each (a C loop, where a statement a row was four Python calls a
    message); every id is given (the caller's)."""

    MESSAGES = ("id", "created_at", "updated_at", "status", "user", "account",
                "from_address", "message_id", "subject", "size", "next_attempt_at", "source",
                "idempotency_key", "verp")

    def __init__(self) -> None:
        self.messages: list[tuple[object, ...]] = []
        self.contents: list[tuple[int, bytes]] = []
        self.recipients: list[tuple[int, str, str, float]] = []
        self.events: list[tuple[int, float, str, str | None]] = []
        self.keys: dict[str, tuple[int]] = {}  # idempotency keys queued in this batch

    def add(self, m: NewMessage, now: float, mid: int, verp: str | None) -> None:
        self.messages.append((mid, now, now, "queued", m.user, m.account, m.from_address,
                              indexed(m.message_id), indexed(m.subject), len(m.raw), now,
                              m.source,
                              m.idempotency_key, verp))
        self.contents.append((mid, m.raw))
        # INSERT OR IGNORE's effect: a recipient listed twice is one row.
        self.recipients += [(mid, r, "queued", now) for r in dict.fromkeys(m.recipients)]
        self.events.append((mid, now, "queued", f"from spool file {m.source}"))
        if m.idempotency_key is not None:
            self.keys[m.idempotency_key] = (mid,)

    def write(self, conn: sqlite3.Connection, dialect: str) -> None:
        """The rows, messages first (the others refer to them)."""
        tables = (("messages", self.MESSAGES, self.messages),
                  ("contents", ("message", "raw"), self.contents),
                  ("recipients", ("message", "address", "status", "updated_at"),
                   self.recipients),
                  ("events", ("message", "at", "status", "detail"), self.events))
        for table, columns, rows in tables:
            if not rows:
                continue
            if dialect == "postgresql":
                cast("PgConnection", conn).copy_rows(table, columns, rows)
            else:
                conn.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                                 f"({', '.join('?' * len(columns))})", rows)


class SpoolIntake:
    """The spool side of the queue over a :class:`Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def ingest(self, items: Sequence[NewMessage | RejectedMessage], now: float,
               sign: Callable[[int], str] | None = None,
               release: Sequence[tuple[str, int]] = ()) -> IngestResult:
        """Queue (or record as rejected) a batch of spool files in one transaction.

        Each file is claimed in the same transaction (see :meth:`release_claims`). A file
        already claimed (the same file, left in ``new/`` by a crash between the commit and
        its removal) is ``taken``: not queued twice. A message whose idempotency key was
        seen before is a ``duplicate``: not queued, and an event on the earlier message
        says so. Anything else is a new message, even under an old name and content.

        ``sign`` makes the VERP signature of a new message's id, stored with it: the ids
        are then given here (the next after the largest), not chosen by the store. On
        PostgreSQL, which several nodes share, the ids are always the next of the
        ``messages`` sequence, taken for the whole batch, whose new messages are written
        at its end with one COPY per table (and its claims with one statement).

        ``release``: claims of an earlier batch whose files are gone now, released in this
        transaction (as :meth:`release_claims` would, without a commit of their own).
        """
        result = IngestResult()
        # The batch's new messages are written at its end, a statement per table (one
        # COPY each on PostgreSQL, one executemany each on SQLite), with their ids given:
        # on PostgreSQL taken first from the sequence (unique across nodes), on SQLite the
        # next after the largest (this transaction is the only writer), as SQLite itself
        # would choose them.
        dialect = self.store.dialect
        bulk = _Bulk()
        with self.store.transaction() as conn:
            if release:
                _release(conn, dialect, release)
            next_id = 0
            shared: list[int] = []  # PostgreSQL: ids from the sequence, unique across nodes
            if dialect == "postgresql":
                shared = [r[0] for r in conn.execute(
                    "SELECT nextval('messages_id_seq') FROM generate_series(1, ?)",
                    (sum(isinstance(i, NewMessage) for i in items),))]
                shared.reverse()
            else:
                next_id = conn.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM messages"
                                       ).fetchone()[0]
            # The batch's claims in one query (a spool name is at most ~250 characters and a
            # batch at most 256 files: well within SQLite's parameter limit).
            marks = ",".join("?" * len(items))
            claimed = {row[0]: row[1:] for row in conn.execute(
                "SELECT source, sha256, message, inode, ctime_ns FROM spool_claims"
                f" WHERE source IN ({marks})", [item.source for item in items])}
            claims: list[tuple[str, str, int | None, int | None, int, float]] = []
            for item in items:
                seen = claimed.get(item.source)
                if seen and seen[0] == item.sha256 and (
                        seen[2] is None or item.file is None
                        or (seen[2], seen[3]) == (item.file.inode, item.file.ctime_ns)):
                    result.taken[item.source] = seen[1]
                    continue
                if isinstance(item, RejectedMessage):
                    # SQLite: its id given too, so that it takes none a queued one of this
                    # batch has (those are inserted at the end).
                    mid = self._insert_rejected(conn, item, now, next_id or None)
                    result.rejected[item.source] = mid
                    next_id = max(next_id, mid + 1) if next_id else 0
                else:
                    dup = None
                    if item.idempotency_key is not None:
                        dup = bulk.keys.get(item.idempotency_key) or conn.execute(
                            "SELECT id FROM messages WHERE idempotency_key = ?",
                            (item.idempotency_key,)).fetchone()
                    if dup:
                        mid = dup[0]
                        detail = (f"spool file {item.source} has this message's idempotency"
                                  f" key {item.idempotency_key!r}: not queued again")
                        bulk.events.append((mid, now, "duplicate", detail))
                        result.duplicates[item.source] = mid
                    else:
                        if dialect == "postgresql":
                            mid = shared.pop()  # one taken for each new message
                        else:
                            mid, next_id = next_id, next_id + 1
                        bulk.add(item, now, mid, sign(mid) if sign is not None else None)
                        result.queued[item.source] = mid
                claims.append((item.source, item.sha256,
                               item.file.inode if item.file else None,
                               item.file.ctime_ns if item.file else None, mid, now))
            bulk.write(conn, dialect)
            if dialect == "postgresql":
                if claims:
                    conn.execute(
                        "INSERT OR REPLACE INTO spool_claims"
                        " (source, sha256, inode, ctime_ns, message, at) SELECT * FROM"
                        " unnest(?::text[], ?::text[], ?::bigint[], ?::bigint[], ?::bigint[],"
                        " ?::float8[])", [list(column) for column in zip(*claims, strict=True)])
            else:
                conn.executemany(
                    "INSERT OR REPLACE INTO spool_claims"
                    " (source, sha256, inode, ctime_ns, message, at) VALUES (?, ?, ?, ?, ?, ?)",
                    claims)
        return result

    def release_claims(self, claims: Sequence[tuple[str, int]]) -> None:
        """Forget the claims of files now gone from ``new/``: (name, message id) pairs.

        From here on a file of that name is a new submission, whatever its content.
        """
        if not claims:
            return
        with self.store.transaction() as conn:
            _release(conn, self.store.dialect, claims)

    def sweep_claims(self, waiting: Callable[[], set[str]]) -> int:
        """Forget every claim whose file is no longer in ``new/`` (a crash came after the
        file's removal but before its claim was released). ``waiting`` lists ``new/``;
        it is called inside the transaction, so no claim committed meanwhile is lost."""
        with self.store.transaction() as conn:
            claimed = [r[0] for r in conn.execute("SELECT source FROM spool_claims")]
            if not claimed:
                return 0
            present = waiting()
            stale = [(name,) for name in claimed if name not in present]
            conn.executemany("DELETE FROM spool_claims WHERE source = ?", stale)
        return len(stale)

    @staticmethod
    def _insert_rejected(conn: sqlite3.Connection, m: RejectedMessage, now: float,
                         mid: int | None = None) -> int:
        cur = conn.execute(
            "INSERT INTO messages (id, created_at, updated_at, status, user, account, subject,"
            " size, last_error, reason, source)"
            " VALUES (?, ?, ?, 'rejected', ?, ?, ?, ?, ?, ?, ?)",
            (mid, now, now, m.user, m.account, indexed(m.subject), len(m.raw or b""), m.detail,
             m.reason, m.source))
        mid = int(cur.lastrowid or 0)
        if m.raw is not None:
            conn.execute("INSERT INTO contents (message, raw) VALUES (?, ?)", (mid, m.raw))
        event(conn, mid, now, "rejected", f"{m.reason}: {m.detail}")
        return mid
