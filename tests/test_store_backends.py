"""What the parts keep in the store, through the store interface, on both backends.

The ``store`` fixture is an open Store on a real SQLite file in tmp_path and on a real
PostgreSQL database (tests/postgres.py): every test here runs on both. The parts' own
SQL (written once, in SQLite's dialect) runs unchanged on each: enqueue, claims,
attempts and deliveries, the history listing and its detail, fetch state and fetched
messages with their unique key, activities, and the applied configuration.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from mailsync.activities.rules import NewActivity
from mailsync.activities.store import ActivityStore, insert
from mailsync.activities.store import Filters as ActivityFilters
from mailsync.config.secrets import Secret
from mailsync.config.tree import StoreBackend
from mailsync.errors import StoreError, StoreLost, StoreOutdated, StoreUnavailable
from mailsync.inbound import records
from mailsync.inbound.message import Summary
from mailsync.inbound.refused import StoreRefused
from mailsync.inbound.source import Cursor
from mailsync.outbound import actions, claims, history
from mailsync.outbound.enqueue import NewMessage, RejectedMessage
from mailsync.outbound.queue import OutboundStore
from mailsync.outbound.tables import RECIPIENT_DOMAIN
from mailsync.outbound.types import Delivery, RecipientResult
from mailsync.store import Store, pgschema
from mailsync.store.migrations import MIGRATIONS
from mailsync.store.pgconn import PgConnection
from mailsync.store.pgsql import translate
from tests.postgres import PASSWORD


def _backend(dsn: str) -> StoreBackend:
    return StoreBackend("postgresql", Secret("plain", dsn))


@pytest.fixture
def backend(either_backend):
    """None (SQLite in state_dir) or a fresh PostgreSQL database (tests/postgres.py)."""
    return either_backend


@pytest.fixture
def store(either_store):
    return either_store


def _new(source: str, *, key: str | None = None, to: tuple[str, ...] = ("a@example.com",),
         raw: bytes = b"Subject: hi\r\n\r\nbody\r\n") -> NewMessage:
    return NewMessage(source, "sha-" + source, "alice", "sales", "sales@example.com",
                      f"<{source}@example.com>", "hi 100% sure?", raw, to, key)


def test_enqueue_claim_and_deliver_then_history_lists_and_shows_it(store):
    queue = OutboundStore(store)
    done = queue.ingest([_new("one.json", to=("a@example.com", "b@example.com")),
                         _new("two.json", key="k-1"), _new("three.json", key="k-1"),
                         RejectedMessage("bad.json", "sha-bad", "oversize", "too big",
                                         b"x" * 10, "alice", "sales", "big")], 100.0,
                        sign=lambda mid: f"sig{mid}")
    assert sorted(done.queued) == ["one.json", "two.json"]
    assert done.duplicates == {"three.json": done.queued["two.json"]}
    assert list(done.rejected) == ["bad.json"]
    again = queue.ingest([_new("one.json")], 101.0)  # the same file after a crash: taken
    assert again.taken == {"one.json": done.queued["one.json"]}

    claimed = queue.claim_due(200.0, 10)
    assert [c.id for c in claimed] == sorted(done.queued.values())
    first = claimed[0]
    assert first.recipients == ("a@example.com", "b@example.com")
    assert first.raw == b"Subject: hi\r\n\r\nbody\r\n" and first.verp == f"sig{first.id}"
    assert queue.claim_due(200.0, 10) == []  # claimed: sending, not due again
    queue.record_delivery(first.id, Delivery("main", (
        RecipientResult("a@example.com", "sent", 250, "ok"),
        RecipientResult("b@example.com", "deferred", 451, "later"))), "deferred", 201.0,
        next_attempt_at=500.0, error="451 later", duration=0.5)
    queue.record_failure(claimed[1].id, "failed", "550 no", 202.0, server="main", code=550)
    assert queue.counts()["deferred"] == 1 and queue.counts()["failed"] == 1
    assert queue.queue_counts()["deferred"] == 1
    assert queue.next_due() == 500.0 and queue.oldest_pending() == 100.0
    assert queue.transition(claimed[1].id, "queued", ("failed",), 203.0, "retry") == "failed"

    rows = history.list_messages(queue, history.Filters(limit=10))
    assert [r["id"] for r in rows] == sorted(
        [*done.queued.values(), *done.rejected.values()], reverse=True)
    by_id = {r["id"]: r for r in rows}
    assert by_id[first.id]["status"] == "deferred"
    assert by_id[first.id]["user"] == "alice" and by_id[first.id]["subject"] == "hi 100% sure?"
    assert history.count_messages(queue, history.Filters(user="alice", limit=1)) == 3
    # The deferred one, the failed one retried (queued) and the rejected file.
    assert history.count_by_status(queue, history.Filters(user="alice")) == {
        "deferred": 1, "queued": 1, "rejected": 1}
    assert history.count_by_status(queue, history.Filters(("held",))) == {}
    detail = history.show(queue, first.id)
    assert detail is not None and detail["raw"] == b"Subject: hi\r\n\r\nbody\r\n"
    statuses = [e["status"] for e in detail["events"]]
    assert statuses[0] == "queued" and "deferred" in statuses
    assert history.show(queue, 10_000) is None
    assert queue.prune(10_000.0, 1.0) == 1  # the failed-then-queued one is not finished


def test_a_subject_search_ignores_case_on_either_backend(store):
    queue = OutboundStore(store)
    raw = b"Subject: x\r\n\r\nbody\r\n"
    done = queue.ingest([NewMessage("a.json", "sha-a", "alice", "sales", "sales@example.com",
                                    "<a@example.com>", "Invoice 42 for ACME", raw,
                                    ("a@example.com",), None)], 100.0)
    rows = history.list_messages(queue, history.Filters(search="invoice 42 for acme"))
    assert [r["id"] for r in rows] == [done.queued["a.json"]]
    assert history.list_messages(queue, history.Filters(search="invoice 43")) == []


def test_the_history_of_a_window_of_time(store):
    """``since`` keeps what was made at or after it, ``until`` what was made before it."""
    queue = OutboundStore(store)
    made = {t: queue.ingest([_new(f"at{t}.json")], float(t)).queued[f"at{t}.json"]
            for t in (100, 200, 300, 400)}

    def listed(since: float | None = None, until: float | None = None) -> list[int]:
        window = history.Filters(since=since, until=until)
        rows = history.list_messages(queue, window)
        assert history.count_messages(queue, window) == len(rows)
        return [r["id"] for r in rows]

    assert listed(until=300.0) == [made[200], made[100]]
    assert listed(since=200.0, until=400.0) == [made[300], made[200]]
    assert listed(since=200.0, until=201.0) == [made[200]]
    assert listed(until=100.0) == [] and listed(since=401.0) == []
    assert listed(since=150.0, until=160.0) == []  # a window with no message in it
    assert history.selected_ids(queue, history.Filters(("queued",), until=250.0)) == [
        made[100], made[200]]


def test_an_operators_selection_is_acted_on_a_chunk_at_a_time(store, monkeypatch):
    queue = OutboundStore(store)
    done = queue.ingest([_new(f"m{i}.json") for i in range(5)], 100.0)
    ids = sorted(done.queued.values())
    for mid in queue.claim_due(200.0, 10):
        queue.record_failure(mid.id, "deferred", "421 later", 201.0, server="main", code=421,
                             next_attempt_at=900.0)
    picked = history.selected_ids(queue, history.Filters(("deferred",), "sales", since=50.0,
                                                         server="main"))
    assert picked == ids
    assert history.statuses(queue, [ids[0], 10**9]) == {ids[0]: "deferred"}
    monkeypatch.setattr(actions, "CHUNK", 2)
    outcomes = list(actions.act_many(queue, "hold", [*picked[:4], 10**9], 300.0))
    assert outcomes[:4] == [(mid, "deferred", True) for mid in picked[:4]]
    assert outcomes[4] == (10**9, None, False)
    assert queue.counts()["held"] == 4 and queue.counts()["deferred"] == 1
    assert list(actions.act_many(queue, "release", picked[3:], 301.0)) == [
        (picked[3], "held", True), (picked[4], "deferred", False)]


def test_an_operators_retry_never_overwrites_a_claim_made_meanwhile(pg_dsn, tmp_path):
    """A retry read `deferred`, then a node's claim of the message committed first: the
    retry must not put the `sending` message back in the queue (it would go twice)."""
    store = Store.open(tmp_path / "state", backend=_backend(pg_dsn))
    try:
        queue = OutboundStore(store)
        mid = queue.ingest([_new("one.json")], 100.0).queued["one.json"]
        (claimed,) = queue.claim_due(200.0, 10)
        queue.record_failure(claimed.id, "deferred", "421 later", 201.0, server="main",
                             code=421, next_attempt_at=300.0)
        claiming = threading.Event()
        outcome: list[Any] = []

        def retry() -> None:
            claiming.wait(10)
            outcome.append(queue.transitions([mid], "queued", ("deferred",), 400.0, "retry"))

        operator = threading.Thread(target=retry)
        operator.start()
        with store.transaction() as conn:  # a node's claim, not yet committed
            got, _ = claims.claim_due(conn, "node-b", 30.0, 400.0, 10)
            assert [r[0] for r in got] == [mid]
            claiming.set()
            # Meanwhile the retry reads `deferred` (the claim is not committed) and waits
            # for the row's lock; the claim commits under it. (Were the retry slower, it
            # would read `sending` and refuse as well.)
            time.sleep(0.5)
        operator.join(10)
        assert outcome == [{mid: ("sending", False)}]
        assert queue.counts()["sending"] == 1
    finally:
        store.close()


def test_a_domain_search_finds_every_recipient_there_on_either_backend(store):
    queue = OutboundStore(store)
    done = queue.ingest([_new("a.json", to=("Ann@Shop.example", "bob@elsewhere.example")),
                         _new("b.json", to=("carl@shop.EXAMPLE",)),
                         _new("c.json", to=("dora@shop.example.net",))], 100.0)

    def found(term: str) -> list[int]:
        return sorted(r["id"] for r in history.list_messages(queue,
                                                             history.Filters(search=term)))

    assert found("@shop.example") == sorted([done.queued["a.json"], done.queued["b.json"]])
    assert found("@SHOP.example.net") == [done.queued["c.json"]]
    assert found("@example") == []  # the whole domain, not a part of it
    assert found("ann@shop.example") == [done.queued["a.json"]]  # an address, as before
    if store.dialect == "postgresql":  # the search's expression is the index's, translated
        with store.transaction() as conn:
            conn.execute("SET LOCAL enable_seqscan = off")
            plan = " ".join(str(r[0]) for r in conn.execute(
                f"EXPLAIN SELECT message FROM recipients WHERE {RECIPIENT_DOMAIN} = ?",
                ("shop.example",)).fetchall())
        assert "recipients_domain" in plan, plan


def test_ids_continue_after_explicit_ones(store, backend):
    assert store.dialect == ("sqlite" if backend is None else "postgresql")
    queue = OutboundStore(store)
    signed = queue.ingest([_new("a.json"), _new("b.json")], 1.0, sign=lambda mid: "s")
    plain = queue.ingest([_new("c.json"), RejectedMessage("d.json", "x", "bad", "no")], 2.0)
    ids = [*signed.queued.values(), *plain.queued.values(), *plain.rejected.values()]
    assert ids == [1, 2, 3, 4]
    # Refused files between queued ones of one batch (whose rows are written at its end):
    # every message its own id, each with its status and its event.
    mixed = queue.ingest([RejectedMessage("e.json", "x", "bad", "no"), _new("f.json"),
                          RejectedMessage("g.json", "y", "bad", "no"), _new("h.json")], 3.0,
                         sign=lambda mid: f"s{mid}")
    given = {**mixed.queued, **mixed.rejected}
    assert sorted(given.values()) == [5, 6, 7, 8]
    for name, mid in given.items():
        shown = history.show(queue, mid)
        assert shown is not None and shown["source"] == name
        assert shown["status"] == ("rejected" if name in mixed.rejected else "queued")
        assert [e["status"] for e in shown["events"]] == [shown["status"]]


def test_fetch_state_and_fetched_messages_keep_their_unique_key(store):
    with store.transaction() as conn:
        records.save_cursor(conn, "inbox", "INBOX", Cursor(7, 42, 1, 3), 10.0)
        fid = records.insert_fetched(conn, "inbox", "INBOX", "7/42",
                                     Summary("<m@x>", "a@x", "b@x", "s", "d", 1.5, 3),
                                     b"abc", 10.0)
        assert records.insert_skipped(conn, "inbox", "INBOX",
                                      records.Skipped("7/43", "too_large", 99), 10.0)
        assert not records.insert_skipped(conn, "inbox", "INBOX",
                                          records.Skipped("7/43", "too_large", 99), 10.0)
    assert records.load_cursor(store, "inbox", "INBOX") == Cursor(7, 42, 1, 3)
    with store.transaction() as conn:
        records.save_cursor(conn, "inbox", "INBOX", Cursor(7, 50, 2, 0), 11.0)
    assert records.load_cursor(store, "inbox", "INBOX") == Cursor(7, 50, 2, 0)
    assert records.uidvalidity_changes(store, "inbox") == 2
    assert records.list_skipped(store, "inbox") == [("INBOX", "7/43", "too_large", 99)]
    shown = records.show_fetched(store, fid)
    assert shown is not None and shown["raw"] == b"abc" and shown["source_key"] == "7/42"
    assert [r["id"] for r in records.list_fetched(store, records.InboxFilters())] == [fid]

    with pytest.raises(sqlite3.IntegrityError) as caught, store.transaction() as conn:
        records.insert_fetched(conn, "inbox", "INBOX", "7/44",
                               Summary(None, None, None, None, None, None, 1), b"n", 12.0)
        records.insert_fetched(conn, "inbox", "INBOX", "7/42",
                               Summary(None, None, None, None, None, None, 1), b"x", 12.0)
    assert StoreRefused.of(caught.value, "7/42").kind == "duplicate"
    assert not store.conn.in_transaction
    assert [r["id"] for r in records.list_fetched(store, records.InboxFilters())] == [fid]


def test_activities_and_the_applied_config(store):
    with store.transaction() as conn:
        first = insert(conn, NewActivity("call", "alice", date(2030, 1, 2), "ring"), 5.0)
        second = insert(conn, NewActivity("call", "bob", date(2020, 1, 2),
                                          previous_id=first), 6.0)
    activities = ActivityStore(store)
    assert activities.get(first).summary == "ring"
    assert [a.id for a in activities.find(ActivityFilters(user="bob"))] == [second]
    assert [a.id for a in activities.following(first)] == [second]
    assert activities.counts(date(2025, 1, 1)) == {"call": (2, 1)}

    assert store.last_applied_config() is None
    store.record_applied_config("version: 1\n", "abc", "test")
    store.record_applied_config("version: 1 # 2\n", "def", "reload")
    applied = store.last_applied_config()
    assert applied is not None and (applied.sha256, applied.source) == ("def", "reload")


def test_a_store_reopens_with_its_rows_and_its_identity(backend, tmp_path):
    store = Store.open(tmp_path / "state", backend=backend)
    OutboundStore(store).ingest([_new("a.json")], 1.0)
    store.close()
    again = Store.open(tmp_path / "state", backend=backend, create=False, migrate=False)
    try:
        assert OutboundStore(again).counts()["queued"] == 1
    finally:
        again.close()
    # Another state_dir records another store: this one is refused there.
    other = tmp_path / "other"
    Store.open(other).close()
    if backend is not None:
        with pytest.raises(StoreLost, match="was replaced"):
            Store.open(other, backend=backend)


# -- PostgreSQL only -------------------------------------------------------------------


def test_an_empty_database_with_a_recorded_store_is_refused_as_missing(pg_dsn, tmp_path):
    Store.open(tmp_path / "state", backend=_backend(pg_dsn)).close()
    with pytest.raises(StoreLost, match="is missing"):
        Store.open(tmp_path / "state", backend=_backend(_other_database(pg_dsn)))


def _other_database(dsn: str) -> str:
    from tests.postgres import _SHARED

    name = _SHARED[0].create_database()
    return dsn.rsplit("/", 1)[0] + "/" + name


def test_migrations_run_once_when_nodes_start_together(pg_dsn, tmp_path):
    errors: list[BaseException] = []

    def start(i: int) -> None:
        try:
            Store.open(tmp_path / f"node{i}", backend=_backend(pg_dsn)).close()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    ids = {(tmp_path / f"node{i}" / "store-id").read_text() for i in range(4)}
    assert len(ids) == 1  # one store, one id, every node records it


def test_an_older_schema_is_migrated_only_by_run_and_a_newer_refused_by_all(
        pg_dsn, tmp_path, monkeypatch):
    older = MIGRATIONS[:len(MIGRATIONS) - 1]
    with monkeypatch.context() as m:
        m.setattr(pgschema, "MIGRATIONS", older)
        m.setattr(pgschema, "count", lambda: len(older))
        Store.open(tmp_path / "state", backend=_backend(pg_dsn)).close()
    with pytest.raises(StoreOutdated, match="upgrade the daemons first"):
        Store.open(tmp_path / "state", backend=_backend(pg_dsn), migrate=False)
    Store.open(tmp_path / "state", backend=_backend(pg_dsn)).close()  # `run`: migrates
    Store.open(tmp_path / "state", backend=_backend(pg_dsn), migrate=False).close()
    import psycopg

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE mailsync_schema SET version = version + 1")
    for migrate in (True, False):
        with pytest.raises(StoreError, match="newer than this mailsync"):
            Store.open(tmp_path / "state", backend=_backend(pg_dsn), migrate=migrate)


def test_the_read_only_view_cannot_write(pg_dsn, tmp_path):
    Store.open(tmp_path / "state", backend=_backend(pg_dsn)).close()
    reader = Store.open(tmp_path / "state", backend=_backend(pg_dsn), create=False,
                        readonly=True)
    try:
        assert OutboundStore(reader).counts()["queued"] == 0
        with pytest.raises(StoreUnavailable, match="read-only transaction") as caught:
            OutboundStore(reader).ingest([_new("a.json")], 1.0)
        assert caught.value.kind == "readonly"  # as SQLite's read-only view says
    finally:
        reader.close()


def test_the_dsn_and_its_password_never_show(pg_dsn, tmp_path, caplog):
    wrong = pg_dsn.replace(PASSWORD, "wrong-" + PASSWORD)
    with pytest.raises(StoreError) as caught:
        Store.open(tmp_path / "state", backend=_backend(wrong))
    assert "password authentication failed" in str(caught.value)
    bad = f"host=127.0.0.1 password={PASSWORD} dbname"  # not a DSN: psycopg quotes it
    with pytest.raises(StoreError) as caught2:
        Store.open(tmp_path / "state", backend=_backend(bad))
    store = Store.open(tmp_path / "state", backend=_backend(pg_dsn))
    try:
        texts = [str(caught.value), str(caught2.value), repr(store), str(store.path),
                 repr(store.conn), caplog.text]
    finally:
        store.close()
    for text in texts:
        assert PASSWORD not in text and "wrong-" not in text
    assert str(store.path).startswith("postgresql:t")


def test_a_database_that_goes_down_defers_commits_and_recovers(tmp_path):
    from tests.postgres import Postgres, need_postgres

    server = Postgres(need_postgres()).start()
    try:
        store = Store.open(tmp_path / "state", backend=_backend(server.dsn()))
        outages: list[bool] = []
        store.on_outage = lambda started, error: outages.append(started)
        queue = OutboundStore(store)
        queue.ingest([_new("a.json")], 1.0)
        server.stop()
        with pytest.raises(StoreUnavailable) as caught:
            queue.ingest([_new("b.json")], 2.0)
        assert caught.value.kind == "io" and PASSWORD not in str(caught.value)
        assert store.health.failing and outages == [True]
        assert not store.conn.in_transaction
        assert not store.probe()
        ok, why = store.writable(1.0)
        assert not ok and "cannot commit" in why
        server.restart()
        # As the daemon does (a probe a second): the first may meet a connection of the
        # pool that died with the old server, or a server still starting up.
        deadline = time.monotonic() + 15
        while not store.probe() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not store.health.failing and outages == [True, False]
        queue.ingest([_new("b.json")], 3.0)
        assert queue.counts()["queued"] == 2  # nothing lost, nothing twice
        store.close()
    finally:
        server.cleanup()


def test_without_psycopg_the_error_says_what_to_install(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("psycopg") else real(name, *a))
    with pytest.raises(StoreError, match=r"pip install 'mailsync\[postgresql\]'"):
        Store.open(tmp_path / "state", backend=_backend("host=127.0.0.1"))
    assert not (tmp_path / "state" / "mailsync.db").exists()


def test_sqlite_users_do_not_import_psycopg(tmp_path):
    import subprocess
    import sys

    code = ("import sys; from mailsync.store import Store; "
            f"Store.open(__import__('pathlib').Path({str(tmp_path / 's')!r})).close(); "
            "print(sorted(m for m in sys.modules if m.startswith('psycopg')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=Path(__file__).parent.parent)
    assert done.stdout.strip() == "[]"


def test_the_where_clause_filters_a_real_table_of_either_backend(store):
    from mailsync.store import where

    with store.transaction() as conn:
        conn.execute("CREATE TABLE t (status TEXT, n INTEGER, user TEXT)")
        conn.executemany("INSERT INTO t VALUES (?, ?, ?)",
                         [("a", 1, "x"), ("b", 2, "y"), ("c", 3, "x"), ("a", 4, "x")])
    clause, args = where(("status IN", ("a", "b")), ("n >=", 2), ("user =", "x"))
    rows = store.conn.execute(f"SELECT n FROM t {clause} ORDER BY n", args).fetchall()
    assert [tuple(r) for r in rows] == [(4,)]


def test_claims_take_the_oldest_due_of_both_waiting_statuses_in_order(store):
    queue = OutboundStore(store)
    done = queue.ingest([_new(f"m{i}.json") for i in range(8)], 1.0)
    ids = [done.queued[f"m{i}.json"] for i in range(8)]
    # (status, next attempt) per message: queued and deferred interleaved, ties broken by
    # id, one not due yet, one held, one without content (never due).
    plan = [("queued", 30.0), ("deferred", 10.0), ("queued", 10.0), ("deferred", 50.0),
            ("queued", 500.0), ("held", 5.0), ("deferred", 20.0), ("queued", 1.0)]
    with store.transaction() as conn:
        for mid, (status, due) in zip(ids, plan, strict=True):
            conn.execute("UPDATE messages SET status = ?, next_attempt_at = ? WHERE id = ?",
                         (status, due, mid))
        conn.execute("DELETE FROM contents WHERE message = ?", (ids[7],))
    first = queue.claim_due(100.0, 3)
    assert [m.id for m in first] == [ids[1], ids[2], ids[6]]
    assert [m.id for m in queue.claim_due(100.0, 10)] == [ids[0], ids[3]]
    assert queue.claim_due(100.0, 10) == []
    assert [m.id for m in queue.claim_due(1000.0, 10)] == [ids[4]]


def test_a_claim_reads_what_it_takes_not_the_whole_queue(store, backend, monkeypatch):
    """A claim's cost does not grow with the queue: with ten times as many waiting it
    reads about as much (it used to sort every due row, with its content, at each
    claim, inside the write transaction)."""
    queue = OutboundStore(store)

    def cost_of_a_claim(waiting: int) -> int:
        with store.transaction() as conn:
            conn.execute("UPDATE messages SET status = 'sent' WHERE status = 'sending'")
        have = int(queue.query("SELECT count(*) FROM messages"
                               " WHERE status IN ('queued', 'deferred')")[0][0])
        queue.ingest([_new(f"w{waiting}-{i}.json") for i in range(waiting - have)], 1.0)
        with store.transaction() as conn:
            conn.execute("UPDATE messages SET status = 'deferred'"
                         " WHERE status = 'queued' AND id % 3 = 0")
        if backend is None:  # SQLite: the virtual machine's steps while the claim runs
            steps = [0]

            def count() -> int:
                steps[0] += 1
                return 0

            store.conn.set_progress_handler(count, 100)
            try:
                assert len(queue.claim_due(100.0, 20)) == 20
            finally:
                store.conn.set_progress_handler(None, 100)
            return steps[0]
        # PostgreSQL: the rows the claim's own statement reads from messages, run again
        # under EXPLAIN ANALYZE and rolled back (the planner's statistics current, as
        # autovacuum keeps them).
        import psycopg

        with psycopg.connect(backend.dsn.ref, autocommit=True) as conn:
            conn.execute("ANALYZE messages")
            conn.execute("ANALYZE contents")
        seen: list[tuple[str, tuple[Any, ...]]] = []
        with monkeypatch.context() as m:
            original = PgConnection.execute

            def recording(self: PgConnection, sql: str, params: Any = ()) -> Any:
                if "SKIP LOCKED" in sql:
                    seen.append((translate(sql), tuple(params)))
                return original(self, sql, params)

            m.setattr(PgConnection, "execute", recording)
            assert len(queue.claim_due(100.0, 20)) == 20
        (sql, params), = seen
        with psycopg.connect(backend.dsn.ref) as conn:
            plan = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, params).fetchone()
            conn.rollback()

        def read(node: dict[str, Any]) -> int:
            own = (node["Actual Rows"] * node["Actual Loops"]
                   if node.get("Relation Name") == "messages" else 0)
            return own + sum(read(child) for child in node.get("Plans", []))

        return read(plan[0][0]["Plan"])

    # PostgreSQL's planner rightly scans a table of a thousand rows: it is shown larger.
    sizes = (100, 1000) if backend is None else (500, 5000)
    small, large = cost_of_a_claim(sizes[0]), cost_of_a_claim(sizes[1])
    assert large < small * 2, (small, large)
