"""Claims of due messages on a store shared by several nodes (PostgreSQL): leased, exact.

:class:`~mailsync.outbound.queue.OutboundStore` calls these on a PostgreSQL store
instead of its SQLite statements (SQLite has one node, whose claims need no lease):

- :func:`claim_due` takes a batch with ``SELECT ... FOR UPDATE OF m SKIP LOCKED``, so
  two nodes claiming at once get disjoint batches, never wait for each other and never
  take the same message; each claimed row says which node holds it (``claimed_by``) and
  until when (``lease_until``, epoch seconds of the *database's* clock, so that the
  nodes' own clocks do not matter).
- :func:`renew` extends the lease of every claim of a node (its heartbeat, every
  ``lease / 4`` seconds); after a lapse it first gives them back to the queue.
- :func:`reclaim_expired` gives back the claims whose lease has ended (their node died
  or lost the database): any live node runs it with its heartbeat. A dead node's
  messages are then sent by another, at most those it was sending when it died twice.
- :func:`unclaim` and :func:`recover` give back only this node's own claims.
- :class:`OwnTransactions` commits each sender's outcome on its own connection, as one
  statement (:func:`delivery`) when it can.

Statements in SQLite's dialect with PostgreSQL-only parts (``FOR UPDATE``, ``= ANY``,
``clock_timestamp()``), run through the store's translating connection.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

from mailsync.outbound.types import Delivery
from mailsync.store import Store

if TYPE_CHECKING:
    from mailsync.store.postgres import PgStore

# The database's clock, in epoch seconds (one clock for every node's leases).
DB_NOW = "EXTRACT(EPOCH FROM clock_timestamp())"
RECLAIM_BATCH = 1000
_SKIP_LOCKED = " FOR UPDATE OF m SKIP LOCKED"
DEFAULT_LEASE = 30.0  # seconds: a claim by a store without a heartbeat (daemon.send_lease)


def due_ids(lock: str = "") -> str:
    """The ids and next attempts of the first ``limit`` due messages, oldest first (their
    order is the caller's to restore: a join keeps none), without sorting the whole queue.

    One arm per waiting status, each read in the order of the ``messages_due`` index
    (status, next attempt, id) and cut at the limit, then merged and cut again: a claim
    reads about ``limit`` rows however long the queue is. ``status IN ('queued',
    'deferred') ORDER BY next_attempt_at, id LIMIT n`` instead sorted every due row, with
    its content, at each claim, inside the write transaction (SQLite: 275-333 ms a claim
    of 200 with 200,000 waiting, against 1.7 ms; bench/claims.py).

    ``lock`` is appended to each arm (``FOR UPDATE OF m SKIP LOCKED`` on PostgreSQL, so
    that the limit counts rows this node can take; the arms may lock up to twice
    ``limit`` rows, those past it until the claim commits). A message without content is
    never due, as before. Parameters: :func:`due_params`."""
    arm = ("SELECT id, next_attempt_at FROM (SELECT m.id, m.next_attempt_at FROM messages m"
           " JOIN contents c ON c.message = m.id"
           " WHERE m.status = '{}' AND m.next_attempt_at <= ?"
           " ORDER BY m.next_attempt_at, m.id LIMIT ?" + lock + ") AS {}")
    return (arm.format("queued", "q") + " UNION ALL " + arm.format("deferred", "d")
            + " ORDER BY next_attempt_at, id LIMIT ?")


def due_params(now: float, limit: int) -> tuple[float | int, ...]:
    """The parameters of :func:`due_ids`."""
    return (now, limit, now, limit, limit)


def due_rows(conn: sqlite3.Connection, now: float, limit: int,
             lock: str = "") -> list[tuple[Any, ...]]:
    """The first ``limit`` due messages with their content, oldest first, as the claims
    read them: (id, created_at, account, from_address, raw, attempts, verp). ``lock``: as
    in :func:`due_ids`."""
    due = conn.execute(
        "SELECT m.id, m.created_at, m.account, m.from_address, c.raw, m.attempts, m.verp,"
        f" due.next_attempt_at FROM ({due_ids(lock)}) AS due"
        " JOIN messages m ON m.id = due.id JOIN contents c ON c.message = m.id",
        due_params(now, limit)).fetchall()
    return _oldest_first(due)  # a join keeps no order


def _oldest_first(rows: list[Any]) -> list[tuple[Any, ...]]:
    """Claimed rows (id, ... 7 columns, next attempt, ...) by next attempt then id, each
    cut to its 7 claim columns."""
    rows.sort(key=lambda r: (r[7], r[0]))
    return [tuple(r[:7]) for r in rows]


def claim_due(conn: sqlite3.Connection, node: str, lease: float, now: float, limit: int,
              admit: Callable[[sqlite3.Connection, list[Any], float], list[Any]] | None = None
              ) -> tuple[list[tuple[Any, ...]], dict[int, list[str]]]:
    """Up to ``limit`` due messages claimed by ``node`` for ``lease`` seconds, oldest
    first (rows as OutboundStore reads them), and each one's pending recipients; those
    ``admit`` lets go now (suppression list, rate limits: it writes the others). Inside
    the caller's transaction: the rows stay locked until it commits.

    Without ``admit``, one statement (one round trip): the due rows locked with ``FOR
    UPDATE SKIP LOCKED`` in a materialised CTE (evaluated once: never more than ``limit``
    rows), marked ``sending`` by the UPDATE, which returns each one's content and pending
    recipients. With it, the locked rows are read first, ``admit`` decides, and only what
    it lets go is marked (the recipients it suppressed are no longer pending)."""
    if admit is None:
        rows = conn.execute(
            f"WITH due AS MATERIALIZED ({due_ids(_SKIP_LOCKED)})"
            " UPDATE messages AS m SET status = 'sending', updated_at = ?, claimed_by = ?,"
            f" lease_until = {DB_NOW} + ? FROM due WHERE m.id = due.id"
            " RETURNING m.id, m.created_at, m.account, m.from_address,"
            " (SELECT c.raw FROM contents c WHERE c.message = m.id), m.attempts, m.verp,"
            " m.next_attempt_at, ARRAY(SELECT r.address FROM recipients r"
            " WHERE r.message = m.id AND r.status IN ('queued', 'deferred'))",
            (*due_params(now, limit), now, node, lease)).fetchall()
        # RETURNING keeps no order.
        return _oldest_first(rows), {r[0]: list(r[8]) for r in rows}
    rows = due_rows(conn, now, limit, _SKIP_LOCKED)
    if rows:
        rows = admit(conn, rows, now)
    if not rows:
        return [], {}
    ids = [r[0] for r in rows]
    conn.execute(f"UPDATE messages SET status = 'sending', updated_at = ?, claimed_by = ?,"
                 f" lease_until = {DB_NOW} + ? WHERE id = ANY(?)", (now, node, lease, ids))
    pending: dict[int, list[str]] = {i: [] for i in ids}
    for mid, address in conn.execute(
            "SELECT message, address FROM recipients WHERE message = ANY(?)"
            " AND status IN ('queued', 'deferred')", (ids,)):
        pending[mid].append(address)
    return rows, pending


def renew(conn: sqlite3.Connection, node: str, lease: float, now: float, *,
          give_back: bool) -> int:
    """Extend the lease of ``node``'s claims to ``lease`` seconds from now (the
    database's clock); with ``give_back`` (its lease lapsed: some may have been taken
    meanwhile, and it will not send what it held) first put them back in the queue.
    Returns how many were given back."""
    back = 0
    if give_back:
        back = _requeue(conn, now, "queued again: its node's sending lease lapsed",
                        "claimed_by = ?", (node,))
    conn.execute(f"UPDATE messages SET lease_until = {DB_NOW} + ?"
                 " WHERE claimed_by = ? AND status = 'sending'", (lease, node))
    return back


def reclaim_expired(conn: sqlite3.Connection, now: float) -> dict[str, int]:
    """Give back the claims whose lease ended (by the database's clock): how many, by
    the node that held them."""
    rows = conn.execute(
        "SELECT id, claimed_by FROM messages WHERE status = 'sending'"
        f" AND lease_until < {DB_NOW} ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED",
        (RECLAIM_BATCH,)).fetchall()
    if not rows:
        return {}
    by_node: dict[str, int] = {}
    for _, holder in rows:
        by_node[str(holder)] = by_node.get(str(holder), 0) + 1
    ids = [r[0] for r in rows]
    conn.execute("UPDATE messages SET status = 'queued', updated_at = ?, claimed_by = NULL,"
                 " lease_until = NULL WHERE id = ANY(?)", (now, ids))
    conn.executemany("INSERT INTO events (message, at, status, detail) VALUES (?, ?, ?, ?)",
                     [(mid, now, "queued", f"queued again: the sending lease of node "
                       f"{holder} ended") for mid, holder in rows])
    return by_node


def unclaim(conn: sqlite3.Connection, node: str, ids: Sequence[int], now: float) -> None:
    """``node``'s claims of ``ids`` (not tried) back to the queue; another node's claim
    of the same message (this one's lapsed meanwhile) stays."""
    conn.execute("UPDATE messages SET status = 'queued', updated_at = ?, claimed_by = NULL,"
                 " lease_until = NULL WHERE id = ANY(?) AND status = 'sending'"
                 " AND claimed_by = ?", (now, list(ids), node))


def recover(conn: sqlite3.Connection, node: str, now: float) -> int:
    """At start: the claims left by this node's previous run (and any without a node,
    from an SQLite store copied in) back to the queue; other nodes' stay theirs."""
    return _requeue(conn, now, "requeued after an interrupted send",
                    "(claimed_by = ? OR claimed_by IS NULL)", (node,))


def _requeue(conn: sqlite3.Connection, now: float, detail: str, which: str,
             args: tuple[Any, ...]) -> int:
    ids = [r[0] for r in conn.execute(
        f"SELECT id FROM messages WHERE status = 'sending' AND {which} FOR UPDATE", args)]
    if not ids:
        return 0
    conn.execute("UPDATE messages SET status = 'queued', updated_at = ?, claimed_by = NULL,"
                 " lease_until = NULL WHERE id = ANY(?)", (now, ids))
    conn.executemany("INSERT INTO events (message, at, status, detail) VALUES (?, ?, ?, ?)",
                     [(mid, now, "queued", detail) for mid in ids])
    return len(ids)


class Statement:
    """One statement and its arguments: a write that is, on PostgreSQL, a transaction of
    its own (:meth:`mailsync.store.postgres.PgStore.commit_statement`: one round trip,
    no BEGIN or COMMIT), or one more statement inside a caller's transaction."""

    __slots__ = ("params", "sql")

    def __init__(self, sql: str, params: Sequence[Any]) -> None:
        self.sql = sql
        self.params = params

    def __call__(self, conn: sqlite3.Connection) -> None:
        conn.execute(self.sql, self.params)


# A sender's outcome (no failover tries) in one statement: the recipients' replies, the
# message's status and attempt, the attempt's event; the CTEs and the INSERT touch
# different tables, and the statement is atomic.
_DELIVERY = (
    "WITH r AS (UPDATE recipients AS r SET status = u.status, code = u.code,"
    " reply = u.reply, updated_at = ? FROM unnest(?::text[], ?::text[], ?::bigint[],"
    " ?::text[]) AS u(address, status, code, reply)"
    " WHERE r.message = ? AND r.address = u.address),"
    " m AS (UPDATE messages SET status = ?, server = ?, attempts = attempts + 1,"
    " updated_at = ?, next_attempt_at = ?, last_error = ? WHERE id = ?)"
    " INSERT INTO events (message, at, status, detail, server, code, reply, duration,"
    " recipients) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")


def delivery(mid: int, delivery: Delivery, status: str, now: float,
             next_attempt_at: float | None, error: str | None, duration: float,
             code: int | None, reply: str | None, each: str | None) -> Statement:
    """What :meth:`OutboundStore.record_delivery` writes (without failover tries), as one
    statement: each recipient's reply, the message's status, the attempt's event
    (``code``, ``reply``: the worst recipient's; ``each``: every one's, as JSON)."""
    rs = delivery.recipients
    return Statement(_DELIVERY, (
        now, [r.address for r in rs], [r.status for r in rs], [r.code for r in rs],
        [r.reply for r in rs], mid,
        status, delivery.server, now, next_attempt_at, error, mid,
        mid, now, status, error, delivery.server, code, reply, duration, each))


class OwnTransactions:
    """The senders' outcomes on a shared store: each in a transaction of its own, on its
    thread's connection (:meth:`mailsync.store.postgres.PgStore.transaction`), committed
    at the same time as the other senders' (PostgreSQL's WAL flush groups concurrent
    commits), where SQLite's one connection needs :class:`GroupCommit`'s groups. One
    message's rows a transaction: no lock order to keep with the lease renewals."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._issued = 0
        self._pending: dict[int, Callable[[sqlite3.Connection], None]] = {}

    def run(self, write: Callable[[sqlite3.Connection], None]) -> None:
        """Commit ``write``: a :class:`Statement` alone (one round trip), else in a
        transaction."""
        if isinstance(write, Statement):
            cast("PgStore", self.store).commit_statement(write.sql, write.params)
            return
        with self.store.transaction() as conn:
            write(conn)

    def submit(self, write: Callable[[sqlite3.Connection], None]) -> int:
        """GroupCommit's ``submit``: keep ``write`` for :meth:`wait`, which commits it (in
        the waiting sender's thread: before its next message's content goes)."""
        with self._lock:
            self._issued += 1
            self._pending[self._issued] = write
            return self._issued

    def wait(self, ticket: int) -> None:
        """Commit the write of ``ticket`` in a transaction of its own (once)."""
        with self._lock:
            write = self._pending.pop(ticket, None)
        if write is not None:
            self.run(write)
