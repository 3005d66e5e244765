"""`mailsync store backup FILE`: a running SQLite store copied consistently, and restored.

Real SQLite files, a writer committing while the backup runs (as the daemon does), the
real CLI; the restore of docs/store.md, then `run --once` on the restored store.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

from mailsync.outbound.queue import NewMessage, OutboundStore
from mailsync.store import Store
from tests.conftest import need
from tests.outbound_helpers import history, run, server_yaml, write_config
from tests.test_store_life import _fill, _garble, _held, _pages


def _new(i: int) -> NewMessage:
    return NewMessage(source=f"w{i}.json", sha256=f"{i:064x}", user="alice",
                      account="sales", from_address="sales@example.com",
                      message_id=f"<w{i}@example.com>", subject=f"written {i}",
                      raw=b"Subject: x\r\n\r\n" + b"y" * 4000, recipients=("b@example.org",))


def test_a_backup_taken_while_the_store_is_written_is_one_moment_of_it(tmp_path):
    cfg = write_config(tmp_path, server_yaml("main", 9))
    state = tmp_path / "state"
    _fill(state, 2000)  # ~5 MB: the copy takes long enough for many commits meanwhile
    store = Store.open(state)
    stop, written = threading.Event(), [0]

    def write() -> None:  # the daemon's queueing, one message per commit
        outbound = OutboundStore(store)
        while not stop.is_set():
            outbound.ingest([_new(written[0])], time.time())
            written[0] += 1

    writer = threading.Thread(target=write)
    old = os.umask(0)  # the backup's mode does not come from the umask
    try:
        writer.start()
        while written[0] < 20:
            time.sleep(0.01)
        out = run(["store", "backup", str(tmp_path / "b.db"), "-c", str(cfg)])
        during = written[0]
    finally:
        os.umask(old)
        stop.set()
        writer.join()
        store.close()
    assert out.exit_code == 0, out.output
    held = _held(state / "mailsync.db")
    assert out.stdout.startswith(f"ok: {tmp_path / 'b.db'}: store {held}")
    backup = tmp_path / "b.db"
    assert stat.S_IMODE(backup.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("b.db", ".b.db"))) \
        == ["b.db"]  # one file: no -wal, no temporary file left
    conn = sqlite3.connect(backup)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        count = conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
        # Every message of one moment, each with its recipients and content (no message
        # committed after the snapshot, none torn).
        assert 2000 + 20 <= count <= 2000 + during
        assert conn.execute("SELECT MAX(id) FROM messages").fetchone()[0] == count
        assert conn.execute("SELECT COUNT(*) FROM recipients").fetchone()[0] == count
        assert conn.execute("SELECT COUNT(*) FROM contents").fetchone()[0] == count
    finally:
        conn.close()
    assert f"{count:,} messages" in out.stdout and 2000 + written[0] > count  # writes went on


def test_the_documented_restore_brings_back_the_store_it_copied(tmp_path):
    cfg = write_config(tmp_path, server_yaml("main", 9))
    state = tmp_path / "state"
    _fill(state, 30)
    assert run(["store", "backup", str(tmp_path / "b.db"), "-c", str(cfg)]).exit_code == 0
    store = Store.open(state)  # after the backup: lost by the restore
    try:
        OutboundStore(store).ingest([_new(i) for i in range(10)], time.time())
    finally:
        store.close()
    assert len(history(cfg, "--limit", "1000")) == 40
    # docs/store.md, "Backups": the daemon stopped, the copy put in place.
    db = state / "mailsync.db"
    os.rename(db, state / "mailsync.db.old")
    for side in ("-wal", "-shm"):
        Path(f"{db}{side}").unlink(missing_ok=True)
    shutil.copyfile(tmp_path / "b.db", db)
    os.chmod(db, 0o640)
    once = run(["run", "--once", "-c", str(cfg)])  # the same store id: no --new-store
    assert once.exit_code == 0, once.output
    assert len(history(cfg, "--limit", "1000")) == 30


def test_a_backup_never_replaces_a_file_and_refuses_what_it_cannot_copy(tmp_path):
    cfg = write_config(tmp_path, server_yaml("main", 9))
    missing = run(["store", "backup", str(tmp_path / "b.db"), "-c", str(cfg)])
    assert missing.exit_code == 1 and "no store to back up" in missing.stderr
    state = tmp_path / "state"
    _fill(state, 400)
    there = tmp_path / "there.db"
    there.write_bytes(b"keep me")
    out = run(["store", "backup", str(there), "-c", str(cfg)])
    assert out.exit_code == 1 and "the file exists; a backup never replaces one" in out.stderr
    assert there.read_bytes() == b"keep me"
    pages = _pages(state / "mailsync.db", "messages")
    _garble(state / "mailsync.db", pages[len(pages) // 2])
    damaged = run(["store", "backup", str(tmp_path / "b.db"), "-c", str(cfg)])
    assert damaged.exit_code == 1 and "is damaged" in damaged.stderr
    assert "Traceback" not in damaged.output
    assert not any(p.name.startswith((".b.db", "b.db")) for p in tmp_path.iterdir())


def test_a_postgresql_store_is_left_to_postgresqls_tools(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(write_config(tmp_path, server_yaml("main", 9)).read_text().replace(
        "  state_dir: ./state\n",
        "  state_dir: ./state\n  store: {postgresql: {dsn: {env: MAILSYNC_TEST_DSN}}}\n"))
    out = run(["store", "backup", str(tmp_path / "b.db"), "-c", str(cfg)])
    assert out.exit_code == 1 and "pg_dump" in out.stderr
    assert not (tmp_path / "b.db").exists()


CAPS = "-dac_override,-dac_read_search"


def test_a_user_who_may_only_read_the_store_backs_it_up(tmp_path):
    """As root without CAP_DAC_OVERRIDE (file modes then bind it like any user): a
    state_dir and store it may only read, no -wal or -shm (the daemon stopped)."""
    need(os.geteuid() == 0 and shutil.which("setpriv") is not None,
         "needs root and setpriv (util-linux) to drop CAP_DAC_OVERRIDE")
    cfg = write_config(tmp_path, server_yaml("main", 9))
    state = tmp_path / "state"
    _fill(state, 12)
    assert not list(state.glob("mailsync.db-*"))  # the last connection removed them
    (state / "mailsync.db").chmod(0o444)
    state.chmod(0o555)
    try:
        done = subprocess.run(
            ["setpriv", "--bounding-set", CAPS, "--inh-caps", CAPS, "--", sys.executable,
             "-m", "mailsync", "store", "backup", "-c", str(cfg), str(tmp_path / "b.db")],
            capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        assert "12 messages" in done.stdout
        assert sorted(p.name for p in state.iterdir() if p.name.startswith("mailsync.db")) \
            == ["mailsync.db", "mailsync.db.writer"]  # nothing made in state_dir
    finally:
        state.chmod(0o750)
    conn = sqlite3.connect(tmp_path / "b.db")
    try:
        assert conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 12
    finally:
        conn.close()
