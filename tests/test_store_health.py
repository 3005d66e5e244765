"""The store's commit health and WAL bounds, on real SQLite files."""

from __future__ import annotations

import os
import sqlite3

import pytest

from mailsync.errors import StoreUnavailable
from mailsync.store import Store
from mailsync.store.health import CommitHealth, classify
from mailsync.store.sqlitefile import WAL_MAX_PAGES, WAL_MIN_PAGES, wal_pages
from tests.sqlitedb import sqlite_file


def test_disk_errors_are_told_apart_from_statement_errors(tmp_path):
    with sqlite_file(tmp_path / "x.db") as conn:
        conn.execute("CREATE TABLE t (x UNIQUE)")
        conn.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(sqlite3.IntegrityError) as unique:
            conn.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(sqlite3.OperationalError) as syntax:
            conn.execute("SELEC 1")
    assert classify(unique.value) is None and classify(syntax.value) is None
    (tmp_path / "junk.db").write_bytes(os.urandom(8192))
    with pytest.raises(sqlite3.DatabaseError) as junk, sqlite_file(tmp_path / "junk.db") as bad:
        bad.execute("SELECT * FROM sqlite_master")
    assert classify(junk.value) == "corrupt"
    assert classify(sqlite3.OperationalError("database or disk is full")) == "full"


def test_an_outage_ends_only_with_a_commit_and_room_on_the_disk(tmp_path):
    free = {"bytes": 0}
    health = CommitHealth(tmp_path, reserve=1000, free=lambda _: free["bytes"])
    assert health.state() == (True, "ok")
    assert health.failed("full", "database or disk is full") is True
    assert health.failed("full", "database or disk is full") is False
    ok, why = health.state()
    assert not ok and "cannot commit" in why and "disk is full" in why
    assert health.committed() is False          # a lucky small commit on a full disk
    assert health.failing
    free["bytes"] = 5000
    assert health.committed() is True
    assert health.state() == (True, "ok") and health.errors["full"] == 2


def test_a_failed_commit_leaves_no_transaction_open(tmp_path):
    store = Store.open(tmp_path / "state")
    try:
        outages = []
        store.on_outage = lambda started, error: outages.append(started)

        def fill(conn: sqlite3.Connection) -> None:
            conn.execute("CREATE TABLE IF NOT EXISTS big (x BLOB)")
            conn.execute("INSERT INTO big VALUES (zeroblob(100000))")

        with store.transaction() as conn:
            fill(conn)
        # The database may not grow past its current size: the next commit is refused
        # by SQLite as a full disk would refuse it.
        pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
        store.conn.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(StoreUnavailable), store.transaction() as conn:
            fill(conn)
        assert not store.conn.in_transaction
        assert store.health.failing and outages == [True]
        store.conn.execute("PRAGMA max_page_count = 1000000")
        with store.transaction() as conn:       # the same write passes once there is room
            fill(conn)
        assert outages == [True, False] and not store.health.failing
    finally:
        store.close()


def test_the_wal_stays_bounded_and_a_quiet_store_truncates_it(tmp_path, monkeypatch):
    import mailsync.store.sqlite

    store = Store.open(tmp_path / "state")
    wal = tmp_path / "state" / "mailsync.db-wal"
    try:
        with store.transaction() as conn:
            conn.execute("CREATE TABLE big (x BLOB)")
        largest = 0
        for _ in range(400):                  # 20 MB written, 50 KB a transaction
            with store.transaction() as conn:
                conn.execute("INSERT INTO big VALUES (zeroblob(50000))")
            largest = max(largest, wal.stat().st_size)
        page = store.conn.execute("PRAGMA page_size").fetchone()[0]
        pages = store.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        assert pages == wal_pages(os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize)
        assert largest <= (pages + 64) * page
        # A roomy disk: the whole WAL is checkpointed, and kept to be rewritten from its start.
        assert store.checkpoint() == wal.stat().st_size > 0
        busy, frames, done = store.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert busy == 0 and frames == done
        assert store.checkpoint() == 0              # nothing written since: nothing to do
        # A disk short of space: a quiet store holds no WAL there.
        monkeypatch.setattr(mailsync.store.sqlite, "TRUNCATE_BELOW", 1 << 62)
        with store.transaction() as conn:
            conn.execute("INSERT INTO big VALUES (zeroblob(50000))")
        assert store.checkpoint() > 0
        assert wal.stat().st_size == 0
    finally:
        store.close()


def test_the_wal_takes_a_small_share_of_the_free_space():
    mib = 1024 * 1024
    assert wal_pages(80_000 * mib) == WAL_MAX_PAGES        # 16 MiB on a roomy disk
    assert wal_pages(128 * mib) == 128 * mib // 64 // 4096  # 2 MiB of 128 MiB free
    assert wal_pages(15 * mib) == WAL_MIN_PAGES            # 1 MiB on a nearly full disk
    assert wal_pages(None) == WAL_MAX_PAGES
