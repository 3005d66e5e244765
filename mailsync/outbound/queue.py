"""The outbound queue and send history in the store: ingest, claim, record, act, count.

A small interface over :class:`mailsync.store.Store` (so that a PostgreSQL backend can
take its place later); the tables are in mailsync/outbound/tables.py.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mailsync.outbound.types import Delivery
from mailsync.store import Store

# Statuses (docs/design.md §3). `sending` is only ever seen while a daemon is delivering; a crash
# leaves it behind and recover() turns it back into `queued`.
STATUSES = ("queued", "sending", "sent", "deferred", "failed", "rejected", "bounced", "held")
PENDING = ("queued", "deferred")
# What is in the queue (not yet final): the statuses of mailsync_queue_messages. The final
# ones (sent, failed, rejected, bounced) are counted by the _total counters.
IN_QUEUE = ("queued", "sending", "deferred", "held")


@dataclass(frozen=True)
class FileId:
    """Which file a spool entry was: inode and ctime of the descriptor that was read.

    A file left in ``new/`` by a crash keeps both; a file dropped again under the same
    name (written in ``tmp/``, renamed into ``new/``) has a new ctime, whatever its inode.
    """

    inode: int
    ctime_ns: int


@dataclass(frozen=True)
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


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class Outgoing:
    """A due message as the sender needs it: content and recipients still to deliver."""

    id: int
    created_at: float
    account: str
    from_address: str
    raw: bytes
    recipients: tuple[str, ...]
    attempts: int
    verp: str | None = None  # the VERP signature made at queueing (None: make it now)


@dataclass
class IngestResult:
    """What one ingest call did, by spool file name."""

    queued: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)   # idempotency key seen before
    rejected: dict[str, int] = field(default_factory=dict)
    taken: dict[str, int] = field(default_factory=dict)   # this very file, before a crash


def _event(conn: sqlite3.Connection, message: int, now: float, status: str,
           detail: str | None = None) -> None:
    conn.execute("INSERT INTO events (message, at, status, detail) VALUES (?, ?, ?, ?)",
                 (message, now, status, detail))


def _failed_over(conn: sqlite3.Connection, message: int, now: float,
                 tries: Sequence[tuple[str, str]]) -> None:
    """The servers an attempt could not use before the one it went to (or gave up on)."""
    conn.executemany("INSERT INTO events (message, at, status, detail, server)"
                     " VALUES (?, ?, 'failed_over', ?, ?)",
                     [(message, now, error, server) for server, error in tries])


class GroupCommit:
    """Writes from several threads committed together: each caller returns only once its
    own write is committed, but one COMMIT serves everyone who arrived meanwhile.

    The first waiting caller becomes the leader and commits the whole group; the others
    wait for it. A group that fails is retried write by write, so one bad write does not
    fail the others, and each caller gets its own write's exception.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._cv = threading.Condition()
        self._pending: list[tuple[int, Callable[[sqlite3.Connection], None]]] = []
        self._issued = 0
        self._done = 0
        self._leading = False
        self._errors: dict[int, BaseException] = {}

    def run(self, write: Callable[[sqlite3.Connection], None]) -> None:
        with self._cv:
            self._issued += 1
            ticket = self._issued
            self._pending.append((ticket, write))
            while self._done < ticket:
                if self._leading:
                    self._cv.wait()
                    continue
                self._leading = True
                batch, self._pending = self._pending, []
                last = batch[-1][0]
                self._cv.release()
                errors: dict[int, BaseException] = {}
                try:
                    errors = self._commit(batch)  # never raises: errors are per write
                finally:
                    self._cv.acquire()
                    self._leading = False
                    self._done = last
                    self._errors.update(errors)
                    self._cv.notify_all()
            error = self._errors.pop(ticket, None)
        if error is not None:
            raise error

    def _commit(self, batch: list[tuple[int, Callable[[sqlite3.Connection], None]]]
                ) -> dict[int, BaseException]:
        try:
            with self.store.transaction() as conn:
                for _, write in batch:
                    write(conn)
            return {}
        except Exception as exc:  # noqa: BLE001 - retried one by one below
            if len(batch) == 1:
                return {batch[0][0]: exc}
        errors: dict[int, BaseException] = {}
        for ticket, write in batch:
            try:
                with self.store.transaction() as conn:
                    write(conn)
            except Exception as exc:  # noqa: BLE001 - handed to its own caller
                errors[ticket] = exc
        return errors


class OutboundStore:
    """Queue and history queries over a :class:`Store` (the outbound half of the store)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._group = GroupCommit(store)

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
        are then given here (the next after the largest), not chosen by SQLite.

        ``release``: claims of an earlier batch whose files are gone now, released in this
        transaction (as :meth:`release_claims` would, without a commit of their own).
        """
        result = IngestResult()
        with self.store.transaction() as conn:
            if release:
                conn.executemany("DELETE FROM spool_claims WHERE source = ? AND message = ?",
                                 release)
            next_id = 0
            if sign is not None:
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
                    mid = self._insert_rejected(conn, item, now)
                    result.rejected[item.source] = mid
                    next_id = max(next_id, mid + 1)
                else:
                    dup = None
                    if item.idempotency_key is not None:
                        dup = conn.execute("SELECT id FROM messages WHERE idempotency_key = ?",
                                           (item.idempotency_key,)).fetchone()
                    if dup:
                        mid = dup[0]
                        _event(conn, mid, now, "duplicate",
                               f"spool file {item.source} has this message's idempotency key"
                               f" {item.idempotency_key!r}: not queued again")
                        result.duplicates[item.source] = mid
                    elif sign is not None:
                        mid, next_id = next_id, next_id + 1
                        self._insert_new(conn, item, now, mid, sign(mid))
                        result.queued[item.source] = mid
                    else:
                        mid = self._insert_new(conn, item, now)
                        result.queued[item.source] = mid
                claims.append((item.source, item.sha256,
                               item.file.inode if item.file else None,
                               item.file.ctime_ns if item.file else None, mid, now))
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
            conn.executemany("DELETE FROM spool_claims WHERE source = ? AND message = ?",
                             claims)

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
    def _insert_new(conn: sqlite3.Connection, m: NewMessage, now: float,
                    mid: int | None = None, verp: str | None = None) -> int:
        cur = conn.execute(
            "INSERT INTO messages (id, created_at, updated_at, status, user, account,"
            " from_address, message_id, subject, size, next_attempt_at, source,"
            " idempotency_key, verp) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (mid, now, now, m.user, m.account, m.from_address, m.message_id, m.subject,
             len(m.raw), now, m.source, m.idempotency_key, verp))
        mid = int(cur.lastrowid or 0)
        conn.execute("INSERT INTO contents (message, raw) VALUES (?, ?)", (mid, m.raw))
        conn.executemany(
            "INSERT OR IGNORE INTO recipients (message, address, status, updated_at)"
            " VALUES (?, ?, 'queued', ?)", [(mid, r, now) for r in m.recipients])
        _event(conn, mid, now, "queued", f"from spool file {m.source}")
        return mid

    @staticmethod
    def _insert_rejected(conn: sqlite3.Connection, m: RejectedMessage, now: float) -> int:
        cur = conn.execute(
            "INSERT INTO messages (created_at, updated_at, status, user, account, subject, size,"
            " last_error, reason, source) VALUES (?, ?, 'rejected', ?, ?, ?, ?, ?, ?, ?)",
            (now, now, m.user, m.account, m.subject, len(m.raw or b""), m.detail,
             m.reason, m.source))
        mid = int(cur.lastrowid or 0)
        if m.raw is not None:
            conn.execute("INSERT INTO contents (message, raw) VALUES (?, ?)", (mid, m.raw))
        _event(conn, mid, now, "rejected", f"{m.reason}: {m.detail}")
        return mid

    def recover(self, now: float) -> int:
        """After a crash: messages left `sending` go back to `queued`. Returns how many."""
        with self.store.transaction() as conn:
            ids = [r[0] for r in conn.execute("SELECT id FROM messages WHERE status = 'sending'")]
            for mid in ids:
                conn.execute("UPDATE messages SET status = 'queued', updated_at = ? WHERE id = ?",
                             (now, mid))
                _event(conn, mid, now, "queued", "requeued after an interrupted send")
        return len(ids)

    def claim_due(self, now: float, limit: int) -> list[Outgoing]:
        """Up to ``limit`` due messages, marked `sending`, oldest first."""
        with self.store.transaction() as conn:
            rows = conn.execute(
                "SELECT m.id, m.created_at, m.account, m.from_address, c.raw, m.attempts,"
                " m.verp"
                " FROM messages m JOIN contents c ON c.message = m.id"
                " WHERE m.status IN ('queued', 'deferred') AND m.next_attempt_at <= ?"
                " ORDER BY m.next_attempt_at, m.id LIMIT ?", (now, limit)).fetchall()
            if not rows:
                return []
            ids = [r[0] for r in rows]
            marks = ",".join("?" * len(ids))
            conn.execute(f"UPDATE messages SET status = 'sending', updated_at = ? "
                         f"WHERE id IN ({marks})", (now, *ids))
            pending: dict[int, list[str]] = {i: [] for i in ids}
            for mid, address in conn.execute(
                    f"SELECT message, address FROM recipients WHERE message IN ({marks})"
                    " AND status IN ('queued', 'deferred')", ids):
                pending[mid].append(address)
        return [Outgoing(r[0], r[1], r[2], r[3], r[4], tuple(pending[r[0]]), r[5], r[6])
                for r in rows]

    def unclaim(self, ids: Sequence[int], now: float) -> None:
        """Messages claimed but not tried (the sender stopped) go back to the queue."""
        with self.store.transaction() as conn:
            conn.executemany("UPDATE messages SET status = 'queued', updated_at = ?"
                             " WHERE id = ? AND status = 'sending'", [(now, i) for i in ids])

    def make_due(self, ids: Sequence[int], now: float) -> None:
        """Deferred messages come due ``now`` (their server is back up): one transaction."""
        with self.store.transaction() as conn:
            conn.executemany("UPDATE messages SET next_attempt_at = ?"
                             " WHERE id = ? AND status = 'deferred' AND next_attempt_at > ?",
                             [(now, i, now) for i in ids])

    def next_due(self) -> float | None:
        """When the next queued or deferred message is due (None: nothing waits)."""
        with self.store.lock:
            row = self.store.conn.execute(
                "SELECT MIN(next_attempt_at) FROM messages"
                " WHERE status IN ('queued', 'deferred')").fetchone()
        return row[0] if row and row[0] is not None else None

    def hold_missing_accounts(self, accounts: Sequence[str], now: float) -> dict[str, int]:
        """Hold the waiting messages of every account not in ``accounts`` (it left the
        configuration); returns how many, by account. `queue release` sends them again."""
        with self.store.transaction() as conn:
            marks = ",".join("?" * len(accounts))
            rows = conn.execute(
                "SELECT id, account FROM messages WHERE status IN ('queued', 'deferred')"
                f" AND account NOT IN ({marks})", tuple(accounts)).fetchall()
            held: dict[str, int] = {}
            for mid, account in rows:
                conn.execute("UPDATE messages SET status = 'held', updated_at = ?,"
                             " next_attempt_at = NULL WHERE id = ?", (now, mid))
                _event(conn, mid, now, "held",
                       f"account {account!r} left the configuration; "
                       f"`mailsync queue release {mid}` sends it once it is back")
                held[account] = held.get(account, 0) + 1
        return held

    def record_delivery(self, mid: int, delivery: Delivery, status: str, now: float, *,
                        next_attempt_at: float | None, error: str | None,
                        duration: float, tries: Sequence[tuple[str, str]] = ()) -> None:
        """Store one SMTP transaction's outcome: per-recipient replies, status, attempt.

        ``tries``: the servers tried before this one in the same attempt and why they
        could not be used (server, error), each kept as a ``failed_over`` event. An
        attempt with several recipients keeps each one's outcome in its event.

        Returns once it is committed (group commit: concurrent senders share one
        transaction), so a sender never has more than one accepted message unrecorded.
        """
        worst = next((r for r in delivery.recipients if r.status != "sent"), None)
        first = worst or (delivery.recipients[0] if delivery.recipients else None)
        each = json.dumps([[r.address, r.status, r.code, r.reply]
                           for r in delivery.recipients]) \
            if len(delivery.recipients) > 1 else None

        def write(conn: sqlite3.Connection) -> None:
            if len(delivery.recipients) == 1:
                r = delivery.recipients[0]
                conn.execute(
                    "UPDATE recipients SET status = ?, code = ?, reply = ?, updated_at = ?"
                    " WHERE message = ? AND address = ?",
                    (r.status, r.code, r.reply, now, mid, r.address))
            else:
                conn.executemany(
                    "UPDATE recipients SET status = ?, code = ?, reply = ?, updated_at = ?"
                    " WHERE message = ? AND address = ?",
                    [(r.status, r.code, r.reply, now, mid, r.address)
                     for r in delivery.recipients])
            conn.execute(
                "UPDATE messages SET status = ?, server = ?, attempts = attempts + 1,"
                " updated_at = ?, next_attempt_at = ?, last_error = ? WHERE id = ?",
                (status, delivery.server, now, next_attempt_at, error, mid))
            if tries:
                _failed_over(conn, mid, now, tries)
            conn.execute(
                "INSERT INTO events (message, at, status, detail, server, code, reply, duration,"
                " recipients) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (mid, now, status, error, delivery.server, first.code if first else None,
                 first.reply if first else None, duration, each))

        self._group.run(write)

    def record_failure(self, mid: int, status: str, error: str, now: float, *,
                       server: str | None = None, next_attempt_at: float | None = None,
                       count_attempt: bool = True, code: int | None = None,
                       tries: Sequence[tuple[str, str]] = (),
                       detail: str | None = None) -> None:
        """A try that reached no recipient (no server, connection failure, held).

        ``error`` is the message's last error; ``detail`` (default: ``error``) what the
        attempt's event says about ``server``; ``tries`` the servers failed over from
        before it, each a ``failed_over`` event.
        """
        with self.store.transaction() as conn:
            conn.execute(
                "UPDATE messages SET status = ?, server = COALESCE(?, server),"
                " attempts = attempts + ?, updated_at = ?, next_attempt_at = ?, last_error = ?"
                " WHERE id = ?",
                (status, server, 1 if count_attempt else 0, now, next_attempt_at, error, mid))
            if status == "failed":
                conn.execute("UPDATE recipients SET status = 'failed', reply = ?, updated_at = ?"
                             " WHERE message = ? AND status IN ('queued', 'deferred')",
                             (error, now, mid))
            if tries:
                _failed_over(conn, mid, now, tries)
            if count_attempt:
                # An attempt is an event that names the server it went to.
                conn.execute(
                    "INSERT INTO events (message, at, status, detail, server, code, reply)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (mid, now, status, detail or error, server or "-", code, None))
            else:
                _event(conn, mid, now, status, error)

    def transition(self, mid: int, to: str, allowed_from: Sequence[str], now: float,
                   detail: str) -> str:
        """Operator action: move a message to ``to`` if its status allows. Returns the old one.

        Raises KeyError for an unknown id and ValueError when the status does not allow it.
        """
        with self.store.transaction() as conn:
            row = conn.execute("SELECT status FROM messages WHERE id = ?", (mid,)).fetchone()
            if row is None:
                raise KeyError(mid)
            if row[0] not in allowed_from:
                raise ValueError(row[0])
            due = now if to == "queued" else None
            conn.execute("UPDATE messages SET status = ?, updated_at = ?, next_attempt_at = ?"
                         " WHERE id = ?", (to, now, due, mid))
            if to == "queued":
                conn.execute("UPDATE recipients SET status = 'queued', updated_at = ?"
                             " WHERE message = ? AND status IN ('deferred', 'failed')"
                             " AND (code IS NULL OR code < 500 OR ? = 'failed')",
                             (now, mid, row[0]))
            elif to == "failed":
                conn.execute("UPDATE recipients SET status = 'failed', reply = ?, updated_at = ?"
                             " WHERE message = ? AND status IN ('queued', 'deferred')",
                             (detail, now, mid))
                conn.execute("UPDATE messages SET last_error = ? WHERE id = ?", (detail, mid))
            _event(conn, mid, now, to, detail)
            return str(row[0])

    def prune(self, now: float, retention_seconds: float) -> int:
        """Drop the content of finished messages older than the retention; keep metadata."""
        with self.store.transaction() as conn:
            cur = conn.execute(
                "DELETE FROM contents WHERE message IN (SELECT id FROM messages"
                " WHERE created_at < ? AND status IN ('sent', 'failed', 'rejected', 'bounced'))",
                (now - retention_seconds,))
            return cur.rowcount

    def counts(self) -> dict[str, int]:
        """Messages by status (every status present, zero included)."""
        with self.store.lock:
            rows = self.store.conn.execute(
                "SELECT status, COUNT(*) FROM messages GROUP BY status").fetchall()
        out = dict.fromkeys(STATUSES, 0)
        out.update({r[0]: r[1] for r in rows})
        return out

    def queue_counts(self) -> dict[str, int]:
        """Messages in the queue now, by status (every one of IN_QUEUE, zero included);
        read through the (status, next_attempt_at) index, not the whole history."""
        marks = ",".join("?" * len(IN_QUEUE))
        with self.store.lock:
            rows = self.store.conn.execute(
                f"SELECT status, COUNT(*) FROM messages WHERE status IN ({marks})"
                " GROUP BY status", IN_QUEUE).fetchall()
        out = dict.fromkeys(IN_QUEUE, 0)
        out.update({r[0]: r[1] for r in rows})
        return out

    def oldest_pending(self) -> float | None:
        """created_at of the oldest queued/deferred/sending message, or None."""
        with self.store.lock:
            row = self.store.conn.execute(
                "SELECT MIN(created_at) FROM messages"
                " WHERE status IN ('queued', 'deferred', 'sending')").fetchone()
        return row[0] if row and row[0] is not None else None

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Read-only query for the history views."""
        with self.store.lock:
            cur = self.store.conn.execute(sql, args)
            cur.row_factory = sqlite3.Row
            return cur.fetchall()
