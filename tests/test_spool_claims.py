"""Spool claims: only the file a crash left behind is recognised, never a file dropped again.

A claim is written in the transaction that queues a file and released once the file is
gone; it names the file by name, content hash, inode and ctime. These tests drive the real
ingester over a real spool directory and a real SQLite store.
"""

from __future__ import annotations

import os
from pathlib import Path

from mailsync.outbound.ingest import Ingester, prepare_spool
from mailsync.telemetry.metrics import Metrics
from tests.outbound_helpers import history, load, open_store, run_once, server_yaml, write_config

JSON = (b'{"user": "alice", "to": ["a@example.org"], "subject": "Monthly report",'
        b' "text": "the same every month"}')


def _drop_as(spool: Path, name: str, data: bytes) -> Path:
    """What an application does: write in tmp/, rename into new/ under its own name."""
    (spool / "tmp").mkdir(parents=True, exist_ok=True)
    (spool / "new").mkdir(parents=True, exist_ok=True)
    tmp = spool / "tmp" / name
    tmp.write_bytes(data)
    os.rename(tmp, spool / "new" / name)
    return spool / "new" / name


def _claims(cfg: Path) -> list[str]:
    store, outbound = open_store(cfg)
    try:
        return [r["source"] for r in outbound.query("SELECT source FROM spool_claims")]
    finally:
        store.close()


def test_a_file_dropped_again_with_the_same_name_and_content_is_sent_again(
        tmp_path, smtp_server):
    srv = smtp_server()
    cfg = write_config(tmp_path, server_yaml("main", srv.port))
    spool = tmp_path / "spool"
    _drop_as(spool, "report.json", JSON)
    assert "1 queued" in run_once(cfg).output
    _drop_as(spool, "report.json", JSON)        # next month: the same file again
    out = run_once(cfg)
    assert "1 queued" in out.output and "1 sent" in out.output, out.output
    assert [r["status"] for r in history(cfg)] == ["sent", "sent"]
    assert len(srv.wait_for(2)) == 2
    assert _claims(cfg) == []                   # released once each file was gone


def test_a_claim_left_by_a_crash_after_the_unlink_does_not_swallow_a_new_drop(
        tmp_path, smtp_server):
    srv = smtp_server()
    cfg = write_config(tmp_path, server_yaml("main", srv.port))
    spool = tmp_path / "spool"
    path = _drop_as(spool, "report.json", JSON)
    store, outbound = open_store(cfg)
    try:
        for batch in prepare_spool(load(cfg)):
            outbound.ingest([p.item for p in batch.items], batch.now)
    finally:
        store.close()
    path.unlink()              # the crash came after the removal, before the release
    assert _claims(cfg) == ["report.json"]
    _drop_as(spool, "report.json", JSON)        # while the stale claim is still there
    out = run_once(cfg)
    assert "1 queued" in out.output and "already taken" not in out.output, out.output
    # Both are sent: the new drop, and the message committed before the crash.
    assert [r["status"] for r in history(cfg)] == ["sent", "sent"]
    assert len(srv.wait_for(2)) == 2
    assert _claims(cfg) == []


def test_stale_claims_are_swept_before_the_first_pass(tmp_path):
    cfg = write_config(tmp_path, server_yaml("main", 9))
    spool = tmp_path / "spool"
    path = _drop_as(spool, "gone.json", JSON)
    store, outbound = open_store(cfg)
    try:
        for batch in prepare_spool(load(cfg)):
            outbound.ingest([p.item for p in batch.items], batch.now)
        path.unlink()
        kept = _drop_as(spool, "kept.json", JSON.replace(b"Monthly", b"Weekly"))
        for batch in prepare_spool(load(cfg)):
            outbound.ingest([p.item for p in batch.items], batch.now)
        assert sorted(r["source"] for r in outbound.query("SELECT source FROM spool_claims")) \
            == ["gone.json", "kept.json"]
        stats = Ingester(load(cfg), outbound, Metrics()).run_once()
        # gone.json's claim was swept; kept.json was recognised as taken and finished.
        assert (stats.queued, stats.taken) == (0, 1)
        assert not kept.exists()
        assert outbound.query("SELECT source FROM spool_claims") == []
        assert len(outbound.query("SELECT id FROM messages")) == 2
    finally:
        store.close()


def test_an_idempotency_duplicate_is_counted_and_recorded(tmp_path):
    from mailsync.outbound.spool import drop

    cfg = write_config(tmp_path, server_yaml("main", 9))
    spool = tmp_path / "spool"
    drop(spool, user="alice", to=["a@example.org"], subject="x", text="x",
         idempotency_key="invoice-7")
    store, outbound = open_store(cfg)
    try:
        metrics = Metrics()
        Ingester(load(cfg), outbound, metrics).run_once()
        drop(spool, user="alice", to=["a@example.org"], subject="x", text="x",
             idempotency_key="invoice-7")
        stats = Ingester(load(cfg), outbound, metrics).run_once()
        assert (stats.queued, stats.duplicates) == (0, 1)
        assert metrics.registry.get_sample_value("mailsync_spool_duplicates_total") == 1
        events = outbound.query("SELECT status, detail FROM events ORDER BY id")
        assert [e["status"] for e in events] == ["queued", "duplicate"]
        assert "invoice-7" in events[1]["detail"]
        assert not list((spool / "new").iterdir())
    finally:
        store.close()


def test_a_store_of_the_previous_release_keeps_its_records_as_claims(tmp_path):
    import sqlite3

    from mailsync.store import Store
    from mailsync.store.migrations import MIGRATIONS
    from mailsync.store.sqlitefile import _statements

    state = tmp_path / "state"
    state.mkdir()
    conn = sqlite3.connect(state / "mailsync.db", isolation_level=None)
    for number, sql in enumerate(MIGRATIONS[:4], start=1):
        for statement in _statements(sql):
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {number}")
    conn.execute("INSERT INTO ingested VALUES ('a.json', 'h1', 1, 1.0)")
    conn.execute("INSERT INTO ingested VALUES ('a.json', 'h2', 2, 2.0)")
    conn.close()
    store = Store.open(state)
    try:
        rows = store.conn.execute(
            "SELECT source, sha256, inode, message FROM spool_claims").fetchall()
        assert rows == [("a.json", "h2", None, 2)]   # the latest file of that name
        assert store.conn.execute(
            "SELECT name FROM sqlite_master WHERE name = 'ingested'").fetchone() is None
    finally:
        store.close()


def test_a_file_the_daemon_may_not_read_is_rejected_and_holds_up_nothing(tmp_path,
                                                                          smtp_server):
    """An application with umask 077 wrote its file 0600: the daemon (here root without
    CAP_DAC_OVERRIDE, as an unprivileged daemon user would be) rejects it with its mode
    and owner, and sends the files behind it."""
    import pwd
    import shutil
    import subprocess
    import sys

    from mailsync.outbound.spool import drop
    from tests.conftest import need

    need(os.geteuid() == 0 and shutil.which("setpriv") is not None,
         "needs root and setpriv (util-linux) to drop CAP_DAC_OVERRIDE")
    srv = smtp_server()
    cfg = write_config(tmp_path, server_yaml("main", srv.port))
    spool = tmp_path / "spool"
    private = _drop_as(spool, "0000-private.json", JSON)     # sorts first: the oldest
    nobody = pwd.getpwnam("nobody")
    os.chown(private, nobody.pw_uid, nobody.pw_gid)
    os.chmod(private, 0o600)
    drop(spool, user="alice", to=["b@example.org"], subject="behind it", text="x")
    caps = "-dac_override,-dac_read_search"
    done = subprocess.run(
        ["setpriv", "--bounding-set", caps, "--inh-caps", caps, "--",
         sys.executable, "-m", "mailsync", "run", "--once", "-c", str(cfg)],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "1 queued, 1 rejected" in done.stdout, done.stdout
    assert [m.rcpt_tos for m in srv.wait_for(1)] == [("b@example.org",)]
    error = (spool / "rejected" / "0000-private.json.error").read_text()
    assert error.startswith("unreadable: ") and "mode 0600, owner nobody" in error
    assert not list((spool / "new").iterdir())
    rejected = [r for r in history(cfg) if r["status"] == "rejected"]
    assert [r["reason"] for r in rejected] == ["unreadable"]
