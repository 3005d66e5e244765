"""The outbound queue and send history in the store: claim, record, act, count.

A small interface over :class:`mailsync.store.Store` (so that a PostgreSQL backend can
take its place later); the tables are in mailsync/outbound/tables.py. Spool files enter
it through :mod:`mailsync.outbound.enqueue` (:class:`OutboundStore` is a
:class:`SpoolIntake`), its history rows are :mod:`mailsync.outbound.events`', and the
senders' outcomes share commits through :mod:`mailsync.outbound.groupcommit`.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from mailsync.config.deliverability import Webhook
from mailsync.outbound import claims
from mailsync.outbound.enqueue import (
    FileId,
    IngestResult,
    NewMessage,
    RejectedMessage,
    SpoolIntake,
)
from mailsync.outbound.events import event, failed_over
from mailsync.outbound.groupcommit import GroupCommit
from mailsync.outbound.lease import SendLease
from mailsync.outbound.types import Delivery
from mailsync.outbound.webhooks import enqueue, recipients_of
from mailsync.store import Store
from mailsync.values import valueclass

__all__ = ["IN_QUEUE", "PENDING", "STATUSES", "FileId", "GroupCommit", "IngestResult",
           "NewMessage", "OutboundStore", "Outgoing", "RejectedMessage"]

# What the claim asks which of its rows go now (mailsync/outbound/ratelimit.py's Gate).
Admit = Callable[[sqlite3.Connection, list[Any], float], list[Any]]

# Statuses (docs/design.md §3). `sending` is only ever seen while a daemon is delivering; a crash
# leaves it behind and recover() turns it back into `queued`.
STATUSES = ("queued", "sending", "sent", "deferred", "failed", "rejected", "bounced", "held")
PENDING = ("queued", "deferred")
# What is in the queue (not yet final): the statuses of mailsync_queue_messages. The final
# ones (sent, failed, rejected, bounced) are counted by the _total counters.
IN_QUEUE = ("queued", "sending", "deferred", "held")


@valueclass
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
    claimed_at: float = 0.0  # by the node's lease clock (a shared store: SendLease)


class OutboundStore(SpoolIntake):
    """Queue and history queries over a :class:`Store` (the outbound half of the store)."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self._group: GroupCommit | claims.OwnTransactions = GroupCommit(store) \
            if store.dialect != "postgresql" else claims.OwnTransactions(store)
        # On a store several nodes share (PostgreSQL): this node's name and its sending
        # lease (set by its heartbeat, mailsync/daemon/node.py: no claim before the first
        # renewal, nor after a lapse). An SQLite store has one node: no lease.
        self.shared = store.dialect == "postgresql"
        self.node = "mailsync"
        self.send_lease: SendLease | None = None
        # The webhooks in force (set by the daemon's runtime): each status change puts its
        # event in their outbox in its own transaction (outbound/webhooks.py).
        self.webhooks: tuple[Webhook, ...] = ()

    def recover(self, now: float) -> int:
        """After a crash: messages left `sending` go back to `queued`. Returns how many.
        On a shared store only this node's own (another node's are still being sent)."""
        if self.shared:
            with self.store.transaction() as conn:
                return claims.recover(conn, self.node, now)
        with self.store.transaction() as conn:
            ids = [r[0] for r in conn.execute("SELECT id FROM messages WHERE status = 'sending'")]
            for mid in ids:
                conn.execute("UPDATE messages SET status = 'queued', updated_at = ? WHERE id = ?",
                             (now, mid))
                event(conn, mid, now, "queued", "requeued after an interrupted send")
        return len(ids)

    def claim_due(self, now: float, limit: int, admit: Admit | None = None) -> list[Outgoing]:
        """Up to ``limit`` due messages, marked `sending`, oldest first. ``admit`` (the
        deliverer's :class:`mailsync.outbound.ratelimit.Gate`) decides, in the same
        transaction, which of them go now (suppression list, rate limits). On a shared
        store, claimed by this node for its lease, skipping rows another node is claiming
        (:func:`mailsync.outbound.claims.claim_due`)."""
        if self.shared:
            lease = self.send_lease
            if lease is not None and not lease.may_claim():  # not (yet, or any longer) valid
                return []
            claimed_at = lease.clock() if lease else 0.0
            seconds = lease.lease if lease else claims.DEFAULT_LEASE  # no heartbeat: tests
            with self.store.transaction() as conn:
                got, todo = claims.claim_due(conn, self.node, seconds, now, limit, admit)
            return [Outgoing(r[0], r[1], r[2], r[3], r[4], tuple(todo[r[0]]), r[5], r[6],
                             claimed_at) for r in got]
        with self.store.transaction() as conn:
            rows = claims.due_rows(conn, now, limit)
            if rows and admit is not None:
                rows = admit(conn, rows, now)
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
        if self.shared:
            with self.store.transaction() as conn:
                claims.unclaim(conn, self.node, ids, now)
            return
        with self.store.transaction() as conn:
            conn.executemany("UPDATE messages SET status = 'queued', updated_at = ?"
                             " WHERE id = ? AND status = 'sending'", [(now, i) for i in ids])

    def renew(self, now: float, *, give_back: bool) -> int:
        """A shared store: extend this node's claims' lease (after a lapse, give them
        back first: :func:`mailsync.outbound.claims.renew`); how many were given back."""
        seconds = self.send_lease.lease if self.send_lease else claims.DEFAULT_LEASE
        with self.store.transaction() as conn:
            return claims.renew(conn, self.node, seconds, now, give_back=give_back)

    def reclaim_expired(self, now: float) -> dict[str, int]:
        """A shared store: the claims of nodes whose lease ended back to the queue; how
        many, by node."""
        with self.store.transaction() as conn:
            return claims.reclaim_expired(conn, now)

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
                event(conn, mid, now, "held",
                       f"account {account!r} left the configuration; "
                       f"`mailsync queue release {mid}` sends it once it is back")
                held[account] = held.get(account, 0) + 1
        return held

    def record_delivery(self, mid: int, delivery: Delivery, status: str, now: float, *,
                        next_attempt_at: float | None, error: str | None,
                        duration: float, tries: Sequence[tuple[str, str]] = (),
                        also: Callable[[sqlite3.Connection], None] | None = None) -> None:
        """Store one SMTP transaction's outcome: per-recipient replies, status, attempt.

        ``tries``: the servers tried before this one in the same attempt and why they
        could not be used (server, error), each kept as a ``failed_over`` event. An
        attempt with several recipients keeps each one's outcome in its event.

        Returns once it is committed (group commit: concurrent senders share one
        transaction), so a sender never has more than one accepted message unrecorded.
        ``also`` writes more in the same transaction (the rate limits' send time, the
        suppression of recipients refused at RCPT: mailsync/outbound/ratelimit.py).
        """
        self._group.run(self._delivery_write(mid, delivery, status, now,
                                             next_attempt_at, error, duration, tries, also))

    def submit_delivery(self, mid: int, delivery: Delivery, status: str, now: float, *,
                        next_attempt_at: float | None, error: str | None,
                        duration: float, tries: Sequence[tuple[str, str]] = (),
                        also: Callable[[sqlite3.Connection], None] | None = None
                        ) -> Callable[[], None]:
        """:meth:`record_delivery` handed to the group commit without waiting: returns
        the wait for its commit (which raises as record_delivery would), to be called
        before the sender's next message can be accepted by a server."""
        ticket = self._group.submit(self._delivery_write(
            mid, delivery, status, now, next_attempt_at, error, duration, tries, also))
        return functools.partial(self._group.wait, ticket)

    def _delivery_write(self, mid: int, delivery: Delivery, status: str, now: float,
                        next_attempt_at: float | None, error: str | None,
                        duration: float, tries: Sequence[tuple[str, str]],
                        also: Callable[[sqlite3.Connection], None] | None = None
                        ) -> Callable[[sqlite3.Connection], None]:
        worst = next((r for r in delivery.recipients if r.status != "sent"), None)
        first = worst or (delivery.recipients[0] if delivery.recipients else None)
        each = json.dumps([[r.address, r.status, r.code, r.reply]
                           for r in delivery.recipients]) \
            if len(delivery.recipients) > 1 else None
        # PostgreSQL: one statement, committed alone, when nothing else goes with it (no
        # failover tries, rate-limit slots, RCPT suppressions or webhook events).
        if self.shared and not tries and also is None and not self.webhooks:
            return claims.delivery(mid, delivery, status, now, next_attempt_at, error,
                                   duration, first.code if first else None,
                                   first.reply if first else None, each)

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
                failed_over(conn, mid, now, tries)
            conn.execute(
                "INSERT INTO events (message, at, status, detail, server, code, reply, duration,"
                " recipients) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (mid, now, status, error, delivery.server, first.code if first else None,
                 first.reply if first else None, duration, each))
            if also is not None:
                also(conn)
            if hooks:
                enqueue(conn, hooks, status, mid, now, status=status, detail=error,
                        recipients=({"address": r.address, "status": r.status, "code": r.code,
                                     "reply": r.reply} for r in delivery.recipients))

        hooks = self.webhooks
        return write

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
                failed_over(conn, mid, now, tries)
            if count_attempt:
                # An attempt is an event that names the server it went to.
                conn.execute(
                    "INSERT INTO events (message, at, status, detail, server, code, reply)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (mid, now, status, detail or error, server or "-", code, None))
            else:
                event(conn, mid, now, status, error)
            if self.webhooks and any(h.wants(status) for h in self.webhooks):
                enqueue(conn, self.webhooks, status, mid, now, status=status, detail=error,
                        recipients=recipients_of(conn, mid))

    def transition(self, mid: int, to: str, allowed_from: Sequence[str], now: float,
                   detail: str) -> str:
        """Operator action: move a message to ``to`` if its status allows. Returns the old one.

        Raises KeyError for an unknown id and ValueError when the status does not allow it.
        """
        ((old, moved),) = self.transitions((mid,), to, allowed_from, now, detail).values()
        if old is None:
            raise KeyError(mid)
        if not moved:
            raise ValueError(old)
        return old

    def transitions(self, mids: Sequence[int], to: str, allowed_from: Sequence[str],
                    now: float, detail: str) -> dict[int, tuple[str | None, bool]]:
        """:meth:`transition` of each of ``mids``, in one transaction: per message, the
        status it had (None: no such message) and whether it moved. Rows are taken in
        the order of their ids, so that two of these at once never deadlock."""
        out: dict[int, tuple[str | None, bool]] = {}
        with self.store.transaction() as conn:
            for mid in sorted(set(mids)):
                row = conn.execute("SELECT status FROM messages WHERE id = ?", (mid,)).fetchone()
                if row is None or row[0] not in allowed_from:
                    out[mid] = (None if row is None else str(row[0]), False)
                    continue
                due = now if to == "queued" else None
                # Only from the status read: on a shared store a node may have claimed the
                # message since (PostgreSQL re-reads the row once its claim commits); a
                # retry over its `sending` would have it sent twice.
                if conn.execute("UPDATE messages SET status = ?, updated_at = ?,"
                                " next_attempt_at = ? WHERE id = ? AND status = ?",
                                (to, now, due, mid, row[0])).rowcount != 1:
                    now_row = conn.execute("SELECT status FROM messages WHERE id = ?",
                                           (mid,)).fetchone()
                    out[mid] = (None if now_row is None else str(now_row[0]), False)
                    continue
                if to == "queued":
                    conn.execute("UPDATE recipients SET status = 'queued', updated_at = ?"
                                 " WHERE message = ? AND status IN ('deferred', 'failed',"
                                 " 'suppressed')"
                                 " AND (code IS NULL OR code < 500 OR ? = 'failed')",
                                 (now, mid, row[0]))
                elif to == "failed":
                    conn.execute("UPDATE recipients SET status = 'failed', reply = ?,"
                                 " updated_at = ? WHERE message = ?"
                                 " AND status IN ('queued', 'deferred')", (detail, now, mid))
                    conn.execute("UPDATE messages SET last_error = ? WHERE id = ?",
                                 (detail, mid))
                event(conn, mid, now, to, detail)
                out[mid] = (str(row[0]), True)
        return out

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
