"""`run --once` with nothing in the spool: the start and the polls as before, no send pass.

With no file in spool/new/ and nothing due, `run --once` forks no pickup child and starts
no sender (tests/test_startup_imports.py); these check that it still does everything else
the pass did: the applied configuration recorded, the mailboxes polled, the spool's
directories made, the stale spool claims forgotten, and a message interrupted while
sending queued again and sent.
"""

from __future__ import annotations

import os
from pathlib import Path

from mailsync.outbound.ingest import prepare_spool
from tests.outbound_helpers import history, load, open_store, run_once, server_yaml, write_config

JSON = b'{"user": "alice", "to": ["a@example.org"], "subject": "Monthly", "text": "x"}'


def _with_maildir(cfg: Path, tmp_path: Path) -> Path:
    maildir = tmp_path / "inbox"
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True)
    cfg.write_text(cfg.read_text() + "incoming_servers:\n  - name: drop\n    type: local\n"
                   f"    path: {maildir}\n")
    return maildir


def _queued_then_gone(cfg: Path, spool: Path) -> None:
    """A spool file queued (as by the pickup) whose file is then removed by a crash that
    came before its claim was released: a message queued, a stale claim."""
    (spool / "new" / "gone.json").write_bytes(JSON)
    store, outbound = open_store(cfg)
    try:
        for batch in prepare_spool(load(cfg)):
            outbound.ingest([p.item for p in batch.items], batch.now)
    finally:
        store.close()
    (spool / "new" / "gone.json").unlink()


def test_an_idle_pass_records_the_applied_config_and_polls(tmp_path):
    cfg = write_config(tmp_path, server_yaml("main", 9))
    maildir = _with_maildir(cfg, tmp_path)
    out = run_once(cfg)
    assert "spool: 0 queued" in out.output and "drop: 0 fetched" in out.output
    (maildir / "new" / "1.eml").write_bytes(b"From: a@example.org\nSubject: Hi\n\nbody\n")
    cfg.write_text(cfg.read_text() + "# edited\n")

    out = run_once(cfg)
    assert "spool: 0 queued" in out.output and "0 SMTP connections" in out.output
    assert "drop: 1 fetched" in out.output
    assert os.listdir(maildir / "new") == [] and len(os.listdir(maildir / "cur")) == 1
    store, _ = open_store(cfg)
    try:
        applied = store.last_applied_config()
        assert applied is not None and applied.text.endswith("# edited\n")
        subjects = [r[0] for r in store.conn.execute("SELECT subject FROM fetched")]
        assert subjects == ["Hi"]
    finally:
        store.close()


def test_an_idle_pass_makes_the_spool_directories_and_forgets_stale_claims(tmp_path):
    cfg = write_config(tmp_path, server_yaml("main", 9))
    spool = tmp_path / "spool"
    _queued_then_gone(cfg, spool)
    store, outbound = open_store(cfg)
    try:  # deferred far away: nothing is due
        with store.transaction() as conn:
            conn.execute("UPDATE messages SET status = 'deferred', next_attempt_at = 4e9")
        assert [r["source"] for r in outbound.query("SELECT source FROM spool_claims")] \
            == ["gone.json"]
    finally:
        store.close()
    (spool / "rejected").rmdir()

    out = run_once(cfg)
    assert "spool: 0 queued" in out.output and "send: 0 sent, 0 deferred" in out.output
    assert {p.name for p in spool.iterdir()} == {"tmp", "new", "rejected"}
    store, outbound = open_store(cfg)
    try:
        assert outbound.query("SELECT source FROM spool_claims") == []
    finally:
        store.close()


def test_a_message_interrupted_while_sending_is_sent_by_a_pass_with_an_empty_spool(
        tmp_path, smtp_server):
    srv = smtp_server()
    cfg = write_config(tmp_path, server_yaml("main", srv.port))
    _queued_then_gone(cfg, tmp_path / "spool")
    store, outbound = open_store(cfg)
    try:
        with store.transaction() as conn:
            conn.execute("UPDATE messages SET status = 'sending'")
    finally:
        store.close()

    out = run_once(cfg)
    assert "spool: 0 queued" in out.output and "send: 1 sent" in out.output
    assert srv.wait_for(1)[0].rcpt_tos == ("a@example.org",)
    assert [r["status"] for r in history(cfg)] == ["sent"]
