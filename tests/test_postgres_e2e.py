"""The daemon on a PostgreSQL store, end to end: `mailsync run --once` sends spooled mail
to a real SMTP server (aiosmtpd) and `history` reads it back; `validate` and `plan`
handle ``daemon.store``; `store copy` moves an SQLite store into PostgreSQL."""

from __future__ import annotations

import sqlite3
from email import message_from_bytes

import psycopg
import pytest

from mailsync.outbound.spool import drop
from tests.outbound_helpers import history, run, run_once, server_yaml, show, write_config
from tests.postgres import PASSWORD

PG_STORE = "  store: {postgresql: {dsn: {env: MAILSYNC_DSN}}}\n"


def _on_postgres(cfg):
    text = cfg.read_text().replace("daemon:\n", "daemon:\n" + PG_STORE, 1)
    cfg.write_text(text)
    return cfg


def test_run_once_sends_spooled_mail_and_history_reads_it(tmp_path, smtp_server, pg_dsn,
                                                         monkeypatch):
    monkeypatch.setenv("MAILSYNC_DSN", pg_dsn)
    srv = smtp_server()
    cfg = _on_postgres(write_config(tmp_path, server_yaml("main", srv.port)))
    for i in range(3):
        drop(tmp_path / "spool", user="alice", to=[f"r{i}@example.org"], subject=f"PG {i}",
             text="Hello")

    out = run_once(cfg)
    assert "3 queued" in out.output and "3 sent" in out.output
    got = srv.wait_for(3)
    assert sorted(message_from_bytes(m.data)["Subject"] for m in got) == ["PG 0", "PG 1",
                                                                           "PG 2"]
    assert not (tmp_path / "state" / "mailsync.db").exists()  # the store is PostgreSQL's

    rows = history(cfg)
    assert sorted(r["subject"] for r in rows) == ["PG 0", "PG 1", "PG 2"]
    assert {r["status"] for r in rows} == {"sent"}
    detail = show(cfg, rows[0]["id"])
    assert [e["status"] for e in detail["events"]][-1] == "sent"
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM messages WHERE status = 'sent'"
                            ).fetchone()[0] == 3
    assert PASSWORD not in out.output


def test_validate_and_plan_handle_daemon_store_without_showing_the_dsn(tmp_path, pg_dsn,
                                                                      monkeypatch):
    monkeypatch.setenv("MAILSYNC_DSN", pg_dsn)
    cfg = write_config(tmp_path, server_yaml("main", 2525))
    plain = cfg.read_text().replace(
        "daemon:\n", f"daemon:\n  store: {{postgresql: {{dsn: '{pg_dsn}'}}}}\n", 1)
    new = tmp_path / "new.yaml"
    new.write_text(plain)
    checked = run(["validate", "-c", str(new)])
    assert checked.exit_code == 0, checked.output
    assert "plain-text DSN" in checked.output and PASSWORD not in checked.output
    planned = run(["plan", "-c", str(new), "--against", str(cfg)])
    assert "store" in planned.output and PASSWORD not in planned.output

    bad = tmp_path / "bad.yaml"
    bad.write_text(cfg.read_text().replace("daemon:\n", "daemon:\n  store: {mysql: {}}\n", 1))
    refused = run(["validate", "-c", str(bad)])
    assert refused.exit_code == 1 and "mysql" in refused.output and "postgresql" in refused.output


def test_store_copy_moves_an_sqlite_store_and_refuses_a_non_empty_target(
        tmp_path, smtp_server, pg_dsn, monkeypatch):
    srv = smtp_server()
    cfg = write_config(tmp_path, server_yaml("main", srv.port))
    for i in range(4):
        drop(tmp_path / "spool", user="alice", to=[f"r{i}@example.org"], subject=f"S {i}",
             text="Hello")
    run_once(cfg)
    before = history(cfg)
    monkeypatch.setenv("TARGET_DSN", pg_dsn)
    db = tmp_path / "state" / "mailsync.db"

    done = run(["store", "copy", "--from", f"sqlite:{db}", "--to", "postgresql:env:TARGET_DSN"])
    assert done.exit_code == 0, done.output
    assert "messages: 4 rows" in done.output and "counted on both sides" in done.output
    assert PASSWORD not in done.output
    import psycopg

    with psycopg.connect(pg_dsn) as conn:  # the planner knows the copied rows at once
        analysed = dict(conn.execute("SELECT relname, last_analyze IS NOT NULL"
                                     " FROM pg_stat_user_tables").fetchall())
    assert analysed["messages"] and analysed["recipients"] and analysed["contents"]

    again = run(["store", "copy", "--from", f"sqlite:{db}", "--to", pg_dsn])
    assert again.exit_code == 1
    assert "not empty" in again.output and "messages: 4" in again.output
    assert PASSWORD not in again.output

    # The same state_dir on the copy: its store-id records the copied store's id.
    monkeypatch.setenv("MAILSYNC_DSN", pg_dsn)
    _on_postgres(cfg)
    db.rename(tmp_path / "old.db")
    after = history(cfg)
    assert [(r["id"], r["status"], r["subject"]) for r in after] == \
        [(r["id"], r["status"], r["subject"]) for r in before]
    drop(tmp_path / "spool", user="alice", to=["new@example.org"], subject="after copy",
         text="x")
    run_once(cfg)
    ids = [r["id"] for r in history(cfg)]
    assert max(ids) == max(r["id"] for r in before) + 1 and len(ids) == 5


def test_store_copy_cuts_what_an_older_store_kept_longer_than_an_index_takes(
        tmp_path, smtp_server, pg_dsn, monkeypatch):
    # A store written before the indexed copies were cut (store.sql.indexed): a subject
    # of 6,000 characters there must not fail the whole copy on PostgreSQL's B-tree.
    srv = smtp_server()
    cfg = write_config(tmp_path, server_yaml("main", srv.port))
    drop(tmp_path / "spool", user="alice", to=["r@example.org"], subject="short", text="x")
    run_once(cfg)
    db = tmp_path / "state" / "mailsync.db"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE messages SET subject = ?, message_id = ?",
                     ("S" * 6000, "<" + "i" * 6000 + ">"))
    monkeypatch.setenv("TARGET_DSN", pg_dsn)
    done = run(["store", "copy", "--from", f"sqlite:{db}", "--to", "postgresql:env:TARGET_DSN"])
    assert done.exit_code == 0, done.output
    assert "messages: 1 rows" in done.output
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT length(subject), length(message_id), status"
                            " FROM messages").fetchall() == [(1000, 1000, "sent")]


@pytest.mark.parametrize(("target", "says"), [
    ("mysql://x", "--to must be postgresql:env:NAME"),
    ("postgresql:", "--to must be postgresql:env:NAME"),
    ("postgresql:env:NOPE_UNSET", "environment variable NOPE_UNSET is not set")])
def test_store_copy_says_which_targets_are_allowed(tmp_path, target, says):
    done = run(["store", "copy", "--from", f"sqlite:{tmp_path / 'x.db'}", "--to", target])
    assert done.exit_code == 1 and says in done.output
