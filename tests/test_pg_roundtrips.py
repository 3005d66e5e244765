"""Round trips of the hot paths on a PostgreSQL store (a real server: tests/postgres.py).

The spool's batches, the claims and the senders' outcomes are what bench/outbound.py
--store postgresql measures; each statement is a round trip to the server, so these
tests count the statements each path sends (through the store's connection adapter)
and check that what they write is what SQLite's path writes, row for row.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from mailsync.config.secrets import Secret
from mailsync.config.tree import StoreBackend
from mailsync.outbound.enqueue import NewMessage, RejectedMessage
from mailsync.outbound.queue import OutboundStore
from mailsync.outbound.types import Delivery, RecipientResult
from mailsync.store import Store, postgres
from mailsync.store.pgconn import PgConnection


@pytest.fixture
def pg_store(pg_dsn: str, tmp_path) -> Iterator[Store]:
    store = Store.open(tmp_path / "pg", backend=StoreBackend("postgresql",
                                                             Secret("plain", pg_dsn)))
    yield store
    store.close()


@pytest.fixture
def lite_store(tmp_path) -> Iterator[Store]:
    store = Store.open(tmp_path / "lite")
    yield store
    store.close()


@pytest.fixture
def statements(monkeypatch) -> Counter[str]:
    """What the adapter sends, counted: each execute by its first words, each
    executemany by its rows (psycopg runs one statement a row), each COPY once."""
    seen: Counter[str] = Counter()

    def counting(name: str, how: Callable[[tuple[Any, ...]], list[str]]) -> None:
        original = getattr(PgConnection, name, None)
        if original is None:  # not in this version of the adapter
            return

        def wrapper(self: PgConnection, *args: Any) -> Any:
            for key in how(args):
                seen[key] += 1
            return original(self, *args)

        monkeypatch.setattr(PgConnection, name, wrapper)

    counting("execute", lambda a: [" ".join(a[0].split()[:2])])
    counting("executemany", lambda a: [" ".join(a[0].split()[:2])] * len(list(a[1])))
    counting("copy_rows", lambda a: [f"COPY {a[0]}"])
    return seen


def _new(source: str, *, key: str | None = None,
         to: tuple[str, ...] = ("a@example.com",)) -> NewMessage:
    return NewMessage(source, "sha-" + source, "alice", "sales", "sales@example.com",
                      f"<{source}@example.com>", f"subject of {source}",
                      f"Subject: {source}\r\n\r\nbody\r\n".encode(), to, key)


def _batch() -> list[NewMessage | RejectedMessage]:
    items: list[NewMessage | RejectedMessage] = [_new(f"m{i:03}.json") for i in range(60)]
    items.append(_new("twice.json", to=("x@example.com", "x@example.com", "y@example.com")))
    items += [_new("key-a.json", key="k-1"), _new("key-b.json", key="k-1")]  # same batch
    items.append(RejectedMessage("bad.json", "sha-bad", "oversize", "too big", b"x" * 10,
                                 "alice", "sales", "big"))
    return items


def _by_source(store: Store) -> dict[str, tuple[Any, ...]]:
    """Every row the intake wrote, keyed by spool file name instead of id."""
    queue = OutboundStore(store)
    out: dict[str, tuple[Any, ...]] = {}
    for m in queue.query("SELECT id, status, user, account, from_address, message_id,"
                         " subject, size, next_attempt_at, idempotency_key, verp, reason,"
                         " source FROM messages"):
        mid = m["id"]
        raw = queue.query("SELECT raw FROM contents WHERE message = ?", (mid,))
        recipients = sorted(tuple(r) for r in queue.query(
            "SELECT address, status, updated_at FROM recipients WHERE message = ?", (mid,)))
        events = sorted(tuple(e) for e in queue.query(
            "SELECT at, status, detail FROM events WHERE message = ?", (mid,)))
        claim = [tuple(c) for c in queue.query(
            "SELECT sha256, message, at FROM spool_claims WHERE source = ?",
            (m["source"],))]
        verp_is_own = m["verp"] == (f"sig{mid}" if m["verp"] else None)
        out[m["source"]] = (*tuple(m)[1:10], verp_is_own, m["reason"],
                            bytes(raw[0]["raw"]) if raw else None, recipients,
                            [e[:2] if e[1] == "duplicate" else e for e in events],
                            [(c[0], c[1] == mid, c[2]) for c in claim])
    return out


def test_a_spool_batch_is_a_few_statements_and_the_rows_sqlite_writes(
        pg_store, lite_store, statements):
    sign = "sig{}".format
    got = OutboundStore(pg_store).ingest(_batch(), 100.0, sign=sign)
    # Before: four statements a message (message, content, recipients, event) and a
    # claim each: ~330 for these 64 files. Now: ids, claims, a COPY per table, the
    # rejected one's rows, the claims' upsert, BEGIN and COMMIT.
    assert sum(statements.values()) <= 14, statements
    assert statements["COPY messages"] == 1 and statements["COPY events"] == 1
    lite = OutboundStore(lite_store).ingest(_batch(), 100.0, sign=sign)
    assert sorted(got.queued) == sorted(lite.queued) and len(got.queued) == 62
    assert list(got.duplicates) == ["key-b.json"] == list(lite.duplicates)
    assert got.duplicates["key-b.json"] == got.queued["key-a.json"]
    assert list(got.rejected) == ["bad.json"]
    assert _by_source(pg_store) == _by_source(lite_store)
    twice = _by_source(pg_store)["twice.json"][12]
    assert [r[0] for r in twice] == ["x@example.com", "y@example.com"]  # listed once
    # The next batch releases the claims of the files gone, in one statement.
    statements.clear()
    release = [(name, mid) for name, mid in got.queued.items()]
    again = OutboundStore(pg_store).ingest([_new("later.json")], 200.0, sign=sign,
                                           release=release)
    assert sum(statements.values()) <= 10, statements
    rows = OutboundStore(pg_store).query("SELECT source FROM spool_claims ORDER BY source")
    assert [r["source"] for r in rows] == ["bad.json", "key-b.json", "later.json"]
    assert list(again.queued) == ["later.json"]


def test_a_claim_is_one_statement_oldest_first_with_pending_recipients(pg_store, statements):
    queue = OutboundStore(pg_store)
    done = queue.ingest([_new(f"m{i}.json", to=("a@example.com", "b@example.com"))
                         for i in range(5)], 100.0)
    ids = [done.queued[f"m{i}.json"] for i in range(5)]
    with pg_store.transaction() as conn:  # the oldest due last by id, one recipient done
        conn.execute("UPDATE messages SET next_attempt_at = 50.0 WHERE id = ?", (ids[4],))
        conn.execute("UPDATE recipients SET status = 'sent' WHERE message = ?"
                     " AND address = 'a@example.com'", (ids[2],))
        conn.execute("DELETE FROM contents WHERE message = ?", (ids[3],))  # never claimed
    statements.clear()
    claimed = queue.claim_due(200.0, 3)
    # Before: BEGIN, SELECT ... FOR UPDATE SKIP LOCKED, UPDATE, SELECT recipients, COMMIT.
    assert sum(statements.values()) == 3, statements
    assert [m.id for m in claimed] == [ids[4], ids[0], ids[1]]
    assert all(m.recipients == ("a@example.com", "b@example.com") for m in claimed)
    assert claimed[0].raw == b"Subject: m4.json\r\n\r\nbody\r\n"
    rest = queue.claim_due(200.0, 10)
    assert [(m.id, m.recipients) for m in rest] == [(ids[2], ("b@example.com",))]
    status = {r["id"]: (r["status"], r["claimed_by"]) for r in queue.query(
        "SELECT id, status, claimed_by FROM messages")}
    assert status[ids[3]] == ("queued", None)
    assert all(status[i] == ("sending", "mailsync") for i in ids if i != ids[3])


def _outcome_rows(store: Store, mid: int) -> tuple[Any, ...]:
    queue = OutboundStore(store)
    message = tuple(queue.query("SELECT status, server, attempts, updated_at,"
                                " next_attempt_at, last_error FROM messages WHERE id = ?",
                                (mid,))[0])
    recipients = [tuple(r) for r in queue.query(
        "SELECT address, status, code, reply, updated_at FROM recipients WHERE message = ?"
        " ORDER BY address", (mid,))]
    events = [tuple(e) for e in queue.query(
        "SELECT at, status, detail, server, code, reply, duration, recipients FROM events"
        " WHERE message = ? ORDER BY id", (mid,))]
    return message, recipients, events


@pytest.mark.parametrize("replies", [
    (("a@example.com", "sent", 250, "2.0.0 ok"),),
    (("a@example.com", "sent", 250, "ok"), ("b@example.com", "deferred", 451, "later")),
    (("a@example.com", "failed", 550, "no such user"), ("b@example.com", "sent", 250, "ok"),
     ("c@example.com", "failed", None, "lost")),
])
def test_an_outcome_is_one_statement_committed_alone(pg_store, lite_store, statements,
                                                      replies):
    results = tuple(RecipientResult(*r) for r in replies)
    status = "deferred" if any(r.status == "deferred" for r in results) else (
        "sent" if all(r.status == "sent" for r in results) else "failed")
    error = None if status == "sent" else "some failed"
    written = []
    for store in (pg_store, lite_store):
        queue = OutboundStore(store)
        mid = queue.ingest([_new("one.json", to=tuple(r.address for r in results))],
                           100.0).queued["one.json"]
        assert [m.id for m in queue.claim_due(200.0, 10)] == [mid]
        statements.clear()
        queue.record_delivery(mid, Delivery("main", results), status, 201.0,
                              next_attempt_at=500.0 if status == "deferred" else None,
                              error=error, duration=0.25)
        if store is pg_store:
            # Before: BEGIN, recipients, message, event, COMMIT (five round trips).
            assert sum(statements.values()) == 1, statements
            assert "BEGIN" not in statements
        written.append(_outcome_rows(store, mid))
    assert written[0] == written[1]
    assert written[0][0][:3] == (status, "main", 1)


def test_a_connection_given_back_just_now_is_not_checked_again(pg_store, monkeypatch):
    from psycopg_pool import ConnectionPool

    checks: list[object] = []
    original = ConnectionPool.check_connection

    def counting(conn: Any) -> None:
        checks.append(conn)
        original(conn)

    monkeypatch.setattr(ConnectionPool, "check_connection", staticmethod(counting))
    with pg_store.transaction() as conn:  # a connection never given back yet: checked
        conn.execute("SELECT 1")
    checks.clear()
    for _ in range(5):
        with pg_store.transaction() as conn:
            conn.execute("SELECT 1")
    assert checks == []  # before: the pool's check, an empty query, at every transaction
    monkeypatch.setattr(postgres, "CHECK_IDLE", 0.0)
    time.sleep(0.01)
    with pg_store.transaction() as conn:
        conn.execute("SELECT 1")
    assert len(checks) == 1  # one idle for CHECK_IDLE or longer is checked
