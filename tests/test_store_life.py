"""A store that was deleted, replaced or damaged is refused, not silently replaced (#11).

Real SQLite files in tmp_path, damaged for real (a page overwritten in the file, a file
of random bytes), the real CLI (click's runner and the daemon as a subprocess), and
Debian's sqlite3 CLI for the documented recovery.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mailsync.outbound.queue import NewMessage, OutboundStore
from mailsync.store import Store
from mailsync.store.migrations import MIGRATIONS
from mailsync.store.sqlitefile import _statements
from tests.conftest import need
from tests.daemon_helpers import DaemonProcess, daemon_config
from tests.outbound_helpers import history, run, server_yaml, write_config
from tests.sqlitedb import sqlite_file


def _config(tmp_path: Path, port: int = 9) -> Path:
    return write_config(tmp_path, server_yaml("main", port))


def _fill(state: Path, count: int, *, size: int = 2048) -> None:
    """``count`` queued messages of ``size`` bytes, through the store's own API."""
    store = Store.open(state)
    body = (b"x" * 62 + b"\r\n") * (size // 64)
    try:
        OutboundStore(store).ingest([NewMessage(
            source=f"m{i}.json", sha256=f"{i:064x}", user="alice", account="sales",
            from_address="sales@example.com", message_id=f"<{i}@example.com>",
            subject=f"message {i} " + "s" * 80, raw=b"Subject: x\r\n\r\n" + body,
            recipients=("ann@example.org",)) for i in range(count)], time.time())
    finally:
        store.close()


def _recorded(state: Path) -> dict[str, str]:
    doc: dict[str, str] = json.loads((state / "store-id").read_text())
    return doc


def _held(db: Path) -> str:
    with sqlite_file(db) as conn:
        return str(conn.execute("SELECT value FROM store_meta WHERE key = 'store_id'")
                   .fetchone()[0])


def _one_error_line(text: str, start: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert lines[0].startswith(start), text
    assert "Traceback" not in text
    return lines[0]


# -- the store id ------------------------------------------------------------------------
def test_a_first_start_creates_the_store_and_records_its_id(tmp_path):
    cfg = _config(tmp_path)
    assert run(["run", "--once", "-c", str(cfg)]).exit_code == 0
    state = tmp_path / "state"
    recorded = _recorded(state)
    assert recorded["store_id"] == _held(state / "mailsync.db")
    assert len(recorded["store_id"]) == 32 and recorded["created_at"].endswith("Z")
    assert (state / "store-id").stat().st_mode & 0o777 == 0o640
    again = run(["run", "--once", "-c", str(cfg)])  # the same store: no complaint
    assert again.exit_code == 0 and _recorded(state) == recorded


def test_a_deleted_store_refuses_to_start_until_new_store(tmp_path):
    cfg = _config(tmp_path)
    state = tmp_path / "state"
    _fill(state, 3)
    old = _recorded(state)
    for suffix in ("", "-wal", "-shm"):
        (state / f"mailsync.db{suffix}").unlink(missing_ok=True)

    refused = run(["run", "--once", "-c", str(cfg)])
    assert refused.exit_code == 1
    line = _one_error_line(refused.stderr, "cannot start: the store ")
    assert f"{state / 'mailsync.db'} is missing" in line
    assert f"{state / 'store-id'} records store {old['store_id']} created {old['created_at']}"\
        in line
    assert "--new-store" in line and "lost" in line
    assert not (state / "mailsync.db").exists()  # nothing created in its place

    accepted = run(["run", "--once", "--new-store", "-c", str(cfg)])
    assert accepted.exit_code == 0, accepted.output
    new = _recorded(state)
    assert new["store_id"] != old["store_id"] == old["store_id"]
    assert new["store_id"] == _held(state / "mailsync.db")
    assert run(["run", "--once", "-c", str(cfg)]).exit_code == 0  # accepted for good


def test_the_daemon_refuses_a_deleted_store_in_one_log_line(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(daemon_config(tmp_path, server_yaml("main", 9)))
    _fill(tmp_path / "state", 1)
    (tmp_path / "state" / "mailsync.db").unlink()
    proc = subprocess.run([sys.executable, "-m", "mailsync", "run", "-c", str(cfg)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "cannot start: the store " in errors[0], proc.stderr
    assert "is missing, but" in errors[0] and "--new-store" in errors[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "state" / "mailsync.db").exists()


def test_a_replaced_store_is_refused_and_new_store_accepts_it(tmp_path):
    cfg = _config(tmp_path)
    state = tmp_path / "state"
    _fill(state, 2)
    other = tmp_path / "other"
    _fill(other, 5)
    shutil.copy(other / "mailsync.db", state / "mailsync.db")
    mine, theirs = _recorded(state)["store_id"], _held(other / "mailsync.db")

    refused = run(["run", "--once", "-c", str(cfg)])
    assert refused.exit_code == 1
    line = _one_error_line(refused.stderr, "cannot start: the store ")
    assert "was replaced" in line and f"store {theirs}" in line and f"store {mine}" in line
    assert "--new-store" in line

    accepted = run(["run", "--once", "--new-store", "-c", str(cfg)])
    assert accepted.exit_code == 0, accepted.output
    assert _recorded(state)["store_id"] == theirs
    assert len(history(cfg)) == 5  # the other store's messages


def test_a_store_from_before_store_ids_is_adopted(tmp_path):
    """An upgrade: a store with data, no store_meta and no store-id starts and gets an id."""
    cfg = _config(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    conn = sqlite3.connect(state / "mailsync.db", isolation_level=None)
    for number, sql in enumerate(MIGRATIONS[:4], start=1):
        for statement in _statements(sql):
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {number}")
    conn.execute("INSERT INTO messages (created_at, updated_at, status, subject) "
                 "VALUES (1, 1, 'sent', 'from the old release')")
    conn.close()

    result = run(["run", "--once", "-c", str(cfg)])
    assert result.exit_code == 0, result.output
    assert _recorded(state)["store_id"] == _held(state / "mailsync.db")
    assert [r["subject"] for r in history(cfg)] == ["from the old release"]


def test_a_store_whose_id_row_was_removed_is_refused_in_one_line(tmp_path):
    cfg = _config(tmp_path)
    state = tmp_path / "state"
    _fill(state, 1)
    with sqlite_file(state / "mailsync.db") as conn:
        conn.execute("DELETE FROM store_meta")
    result = run(["run", "--once", "-c", str(cfg)])
    assert result.exit_code == 1
    assert "the store has no id" in _one_error_line(result.stderr, "cannot start: ")


READERS = [
    ["history"], ["history", "show", "1"], ["queue", "list"], ["queue", "retry", "1"],
    ["inbox"], ["inbox", "show", "1"], ["activity", "list"], ["activity", "show", "1"],
    ["plan"],
]


@pytest.mark.parametrize("args", READERS, ids=" ".join)
def test_readers_report_a_deleted_store_and_create_nothing(tmp_path, args):
    cfg = _config(tmp_path)
    state = tmp_path / "state"
    _fill(state, 1)
    (state / "mailsync.db").unlink()
    result = run([*args, "-c", str(cfg)])
    assert result.exit_code == 1
    line = _one_error_line(result.stderr, "error: the store ")
    assert "is missing, but" in line
    assert not (state / "mailsync.db").exists()


@pytest.mark.parametrize("args", [["history"], ["queue", "list"], ["inbox"],
                                  ["activity", "list"]], ids=" ".join)
def test_readers_report_a_replaced_store(tmp_path, args):
    cfg = _config(tmp_path)
    state, other = tmp_path / "state", tmp_path / "other"
    _fill(state, 1)
    _fill(other, 1)
    shutil.copy(other / "mailsync.db", state / "mailsync.db")
    result = run([*args, "-c", str(cfg)])
    assert result.exit_code == 1
    assert "was replaced" in _one_error_line(result.stderr, "error: the store ")


def test_readers_before_any_start_show_nothing_and_create_nothing(tmp_path):
    cfg = _config(tmp_path)
    assert run(["history", "-c", str(cfg)]).output == "(no messages)\n"
    retry = run(["queue", "retry", "1", "-c", str(cfg)])
    assert retry.exit_code == 1 and retry.stderr == "error: no message 1\n"
    assert not (tmp_path / "state").exists()


# -- a damaged store ---------------------------------------------------------------------
def _pages(db: Path, table: str) -> list[int]:
    """The leaf pages of ``table`` (SQLite's dbstat)."""
    with sqlite_file(db) as conn:
        return [r[0] for r in conn.execute(
            "SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' ORDER BY pageno",
            (table,))]


def _garble(db: Path, page: int) -> None:
    """Overwrite page ``page`` (1-based) of the closed database file with garbage."""
    with sqlite_file(db) as conn:
        size = conn.execute("PRAGMA page_size").fetchone()[0]
    fd = os.open(db, os.O_WRONLY)
    try:
        os.pwrite(fd, os.urandom(size), size * (page - 1))
    finally:
        os.close(fd)


@pytest.fixture
def damaged(tmp_path: Path) -> Path:
    """A config whose store has 400 messages, a page in the middle of `messages` garbled."""
    cfg = _config(tmp_path)
    state = tmp_path / "state"
    _fill(state, 400)
    pages = _pages(state / "mailsync.db", "messages")
    assert len(pages) > 4
    _garble(state / "mailsync.db", pages[len(pages) // 2])
    return cfg


def test_a_damaged_page_refuses_run_once_in_one_line(damaged):
    result = run(["run", "--once", "-c", str(damaged)])
    assert result.exit_code == 1
    line = _one_error_line(result.stderr, "cannot start: the store ")
    assert "is damaged: " in line and "`mailsync store check`" in line
    assert "docs/store.md" in line


def test_the_daemon_refuses_a_damaged_store_in_one_log_line(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(daemon_config(tmp_path, server_yaml("main", 9)))
    state = tmp_path / "state"
    _fill(state, 400)
    pages = _pages(state / "mailsync.db", "messages")
    _garble(state / "mailsync.db", pages[len(pages) // 2])
    proc = subprocess.run([sys.executable, "-m", "mailsync", "run", "-c", str(cfg)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, proc.stderr
    assert "cannot start: the store " in errors[0] and "is damaged: " in errors[0]
    assert "Traceback" not in proc.stderr


def test_a_file_of_random_bytes_is_not_a_database(tmp_path):
    cfg = _config(tmp_path)
    state = tmp_path / "state"
    _fill(state, 1)
    (state / "mailsync.db").write_bytes(os.urandom(64 * 1024))
    result = run(["run", "--once", "-c", str(cfg)])
    assert result.exit_code == 1
    line = _one_error_line(result.stderr, "cannot start: the store ")
    assert "is damaged: file is not a database" in line
    hist = run(["history", "-c", str(cfg)])
    assert hist.exit_code == 1
    assert "is damaged: file is not a database" in _one_error_line(hist.stderr, "error: ")


@pytest.mark.parametrize("args", [["history", "--limit", "1000"], ["queue", "list"]],
                         ids=" ".join)
def test_readers_of_a_damaged_store_say_so_instead_of_a_traceback(damaged, args):
    result = run([*args, "-c", str(damaged)])
    assert result.exit_code == 1
    line = _one_error_line(result.stderr, "error: the store ")
    assert "is damaged: database disk image is malformed" in line
    assert result.stdout == ""  # no partial list


def test_a_damaged_content_page_fails_that_message_clearly(tmp_path):
    """Contents are not checked at start (they are most of the file): reading a damaged
    one says so; `store check` finds it."""
    cfg = _config(tmp_path)
    state = tmp_path / "state"
    _fill(state, 50)
    _garble(state / "mailsync.db", _pages(state / "mailsync.db", "contents")[20])
    shown = [run(["history", "show", str(i), "-c", str(cfg)]) for i in range(1, 51)]
    failed = [r for r in shown if r.exit_code == 1]
    assert failed and len(failed) < 50
    assert "is damaged: " in _one_error_line(failed[0].stderr, "error: the store ")
    check = run(["store", "check", "-c", str(cfg)])
    assert check.exit_code == 1 and check.stdout.strip()


def test_store_check_says_ok_or_lists_the_problems(tmp_path, damaged):
    sound = tmp_path / "sound"
    sound.mkdir()
    cfg = _config(sound)
    _fill(sound / "state", 10)
    ok = run(["store", "check", "-c", str(cfg)])
    assert (ok.exit_code, ok.stdout) == (0, "ok\n")

    bad = run(["store", "check", "-c", str(damaged)])
    assert bad.exit_code == 1
    assert bad.stdout.strip() and "ok" not in bad.stdout.splitlines()
    assert "is damaged" in bad.stderr and "docs/store.md" in bad.stderr
    by_file = run(["store", "check", "--db", str(sound / "state" / "mailsync.db")])
    assert (by_file.exit_code, by_file.stdout) == (0, "ok\n")
    missing = run(["store", "check", "--db", str(tmp_path / "nope.db")])
    assert missing.exit_code == 1 and "no such file" in missing.stderr


# The commands of docs/store.md, run in state_dir with the daemon stopped.
RECOVER = {
    # Debian's sqlite3 (3.40.1) has no sqlite_dbpage, so no .recover: .dump salvages the
    # rows before and after a damaged page, but ends with ROLLBACK and loses user_version.
    "dump": """
        sqlite3 mailsync.db .dump | sed 's/^ROLLBACK; -- due to errors$/COMMIT;/' \\
            | sqlite3 recovered.db
        sqlite3 recovered.db "PRAGMA user_version = $(sqlite3 mailsync.db "PRAGMA user_version")"
        chmod 0640 recovered.db
    """,
    "recover": "sqlite3 mailsync.db .recover | sqlite3 recovered.db; chmod 0640 recovered.db",
}


@pytest.mark.parametrize("way", sorted(RECOVER))
def test_the_documented_recovery_brings_the_daemon_back_with_its_messages(tmp_path,
                                                                         smtp_server, way):
    """docs/store.md: salvage into a new file, check it, swap it in, start."""
    need(shutil.which("sqlite3") is not None, "Debian's sqlite3 CLI is not installed")
    if way == "recover" and subprocess.run(
            ["sqlite3", ":memory:", "SELECT 1 FROM sqlite_dbpage"],
            capture_output=True).returncode != 0:
        pytest.skip("this sqlite3 CLI has no sqlite_dbpage, so no .recover (Debian 12's)")
    srv = smtp_server()
    cfg = tmp_path / "config.yaml"
    cfg.write_text(daemon_config(tmp_path, server_yaml("main", srv.port)))
    state = tmp_path / "state"
    _fill(state, 400)
    recorded = _recorded(state)
    db = state / "mailsync.db"
    pages = _pages(db, "messages")
    _garble(db, pages[len(pages) // 2])
    assert run(["run", "--once", "-c", str(cfg)]).exit_code == 1

    subprocess.run(RECOVER[way], shell=True, cwd=state, check=True, timeout=120)
    recovered = state / "recovered.db"
    check = run(["store", "check", "--db", str(recovered)])
    assert (check.exit_code, check.stdout) == (0, "ok\n")
    os.rename(db, state / "mailsync.db.damaged")
    os.rename(recovered, db)

    daemon = DaemonProcess(cfg)
    try:
        daemon.wait_healthy()
        rows = history(cfg, "--limit", "1000")
        assert 300 < len(rows) < 400  # all but the rows of the garbled page
        srv.wait_for(len(rows), timeout=60)  # and they are sent
    finally:
        assert daemon.stop() == 0
    assert _recorded(state) == recorded  # the store id was recovered with the rest
