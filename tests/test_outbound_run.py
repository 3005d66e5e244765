"""`mailsync run --once` end to end: spool → store → a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import json
import multiprocessing
import socket
import time
from email import message_from_bytes
from pathlib import Path

import pytest

from mailsync.outbound import deliver
from mailsync.outbound.spool import drop, drop_eml
from mailsync.outbound.verp import load_key
from tests.outbound_helpers import (
    history,
    open_store,
    run,
    run_once,
    server_yaml,
    show,
    write_config,
)


def test_spooled_messages_are_sent_and_recorded(tmp_path, smtp_server):
    srv = smtp_server()
    cfg = write_config(tmp_path, server_yaml("main", srv.port))
    spool = tmp_path / "spool"
    drop(spool, user="alice", to=["Ann <ann@example.org>"], cc=["cc@example.org"],
         bcc=["hidden@example.org"], subject="Quote 42", text="Hello Ann")
    drop_eml(spool, b"X-Mailsync-User: bob\r\nX-Mailsync-Account: support\r\n"
                    b"To: zed@example.net\r\nSubject: Ticket\r\n\r\nBody line\r\n")

    out = run_once(cfg)
    assert "2 queued" in out.output and "2 sent" in out.output

    got = srv.wait_for(2)
    by_subject = {message_from_bytes(m.data)["Subject"]: m for m in got}
    quote = by_subject["Quote 42"]
    assert sorted(quote.rcpt_tos) == ["ann@example.org", "cc@example.org", "hidden@example.org"]
    parsed = message_from_bytes(quote.data)
    assert parsed["Bcc"] is None and parsed["X-Mailsync-User"] is None
    assert parsed["From"] == "Sales Team <sales@example.com>"
    assert parsed["Reply-To"] == "catchall@example.com"
    assert parsed["Message-ID"] and parsed["Date"]
    ticket = message_from_bytes(by_subject["Ticket"].data)
    assert ticket["X-Mailsync-Account"] is None and ticket["From"] == "support@example.com"

    rows = history(cfg)
    assert {r["status"] for r in rows} == {"sent"}
    quote_row = next(r for r in rows if r["subject"] == "Quote 42")
    # VERP: the envelope sender names the message, signed with the state_dir's key.
    key = load_key(tmp_path / "state")
    assert quote.mail_from == f"bounce+{quote_row['id']}.{key.sign(quote_row['id'])}@example.com"
    # The signature was made when the message was queued (by the pickup process), and
    # stored with it: the senders only put the address together.
    store, outbound = open_store(cfg)
    try:
        stored = {r["id"]: r["verp"] for r in outbound.query("SELECT id, verp FROM messages")}
    finally:
        store.close()
    assert stored == {r["id"]: key.sign(r["id"]) for r in rows}
    detail = show(cfg, quote_row["id"])
    assert {r["address"]: r["code"] for r in detail["recipients"]} == {
        "ann@example.org": 250, "cc@example.org": 250, "hidden@example.org": 250}
    assert [e["status"] for e in detail["events"]] == ["queued", "sent"]
    assert "Hello Ann" in detail["content"]
    assert not list((spool / "new").iterdir())


def _reject_cases(spool: Path) -> dict[str, str]:
    """One spool file per rejection reason of docs/design.md §2; file name → expected reason."""
    new = spool / "new"
    new.mkdir(parents=True, exist_ok=True)
    cases = {
        "unknown-user.json": ("unknown_user", {"user": "mallory", "to": ["a@example.org"],
                                                "subject": "x", "text": "x"}),
        "ungranted.json": ("ungranted_account", {"user": "alice", "account": "support",
                                                  "to": ["a@example.org"], "subject": "x"}),
        "ambiguous.json": ("no_account", {"user": "bob", "to": ["a@example.org"],
                                          "subject": "x"}),
        "no-rcpt.json": ("no_recipients", {"user": "alice", "to": [], "subject": "x"}),
        "bad-rcpt.json": ("bad_recipient", {"user": "alice", "to": ["not an address"],
                                            "subject": "x"}),
        "inject.json": ("header_injection", {"user": "alice", "to": ["a@example.org"],
                                             "subject": "hi\r\nBcc: victim@example.org"}),
    }
    expected = {}
    for name, (reason, doc) in cases.items():
        (new / name).write_text(json.dumps(doc))
        expected[name] = reason
    (new / "garbage.json").write_text("{not json")
    expected["garbage.json"] = "unparseable"
    (new / "nouser.eml").write_bytes(b"To: a@example.org\r\nSubject: x\r\n\r\nbody\r\n")
    expected["nouser.eml"] = "unparseable"
    (new / "big.eml").write_bytes(b"X-Mailsync-User: alice\r\nTo: a@example.org\r\n\r\n"
                                  + b"x" * (1 << 20))
    expected["big.eml"] = "oversize"
    return expected


def test_every_rejection_reason_is_moved_aside_recorded_and_nothing_sent(tmp_path, smtp_server):
    srv = smtp_server()
    cfg = write_config(tmp_path, server_yaml("main", srv.port))
    expected = _reject_cases(tmp_path / "spool")
    (tmp_path / "spool" / ".hidden.json").write_text("{}")  # ignored until renamed
    (tmp_path / "spool" / "new" / "partial.tmp").write_text("{}")

    out = run_once(cfg)
    assert f"{len(expected)} rejected" in out.output
    rejected = tmp_path / "spool" / "rejected"
    for name, reason in expected.items():
        assert (rejected / name).exists(), name
        assert (rejected / f"{name}.error").read_text().startswith(reason), name
    rows = history(cfg, "--status", "rejected")
    assert sorted(r["reason"] for r in rows) == sorted(expected.values())
    assert (tmp_path / "spool" / "new" / "partial.tmp").exists()
    assert srv.messages == []


def test_per_recipient_replies_defer_fail_and_retry_only_the_deferred(tmp_path, smtp_server):
    srv = smtp_server(recipient_replies={"busy@example.org": "450 4.2.1 Mailbox busy",
                                         "gone@example.org": "550 5.1.1 No such user"})
    cfg = write_config(tmp_path, server_yaml("main", srv.port))
    drop(tmp_path / "spool", user="alice", subject="Mixed", text="x",
         to=["ok@example.org", "busy@example.org", "gone@example.org"])
    out = run_once(cfg)
    assert "1 deferred" in out.output

    (row,) = history(cfg)
    assert row["status"] == "deferred" and row["next_attempt_at"]
    detail = show(cfg, row["id"])
    replies = {r["address"]: (r["status"], r["code"]) for r in detail["recipients"]}
    assert replies == {"ok@example.org": ("sent", 250), "busy@example.org": ("deferred", 450),
                       "gone@example.org": ("failed", 550)}
    assert "Mailbox busy" in detail["error"] and "No such user" in detail["error"]

    # Not due yet: a second pass sends nothing.
    run_once(cfg)
    assert len(srv.messages) == 1
    # The operator forces a retry once the mailbox is free: only the deferred recipient.
    del srv.recipient_replies["busy@example.org"]
    assert run(["queue", "retry", str(row["id"]), "-c", str(cfg)]).exit_code == 0
    run_once(cfg)
    assert srv.wait_for(2)[1].rcpt_tos == ("busy@example.org",)
    assert show(cfg, row["id"])["status"] == "sent"
    assert len(show(cfg, row["id"])["attempts_detail"]) == 2


def test_all_recipients_refused_permanently_fails(tmp_path, smtp_server):
    srv = smtp_server(recipient_replies={"gone@example.org": "550 5.1.1 No such user"})
    cfg = write_config(tmp_path, server_yaml("main", srv.port))
    drop(tmp_path / "spool", user="alice", subject="x", text="x", to=["gone@example.org"])
    assert "1 failed" in run_once(cfg).output
    (row,) = history(cfg)
    assert row["status"] == "failed" and "550" in row["error"]
    assert srv.messages == []


def _dead_port() -> int:
    """A loopback port nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_server_down_fails_over_to_the_next_eligible_server(tmp_path, smtp_server):
    backup = smtp_server()
    cfg = write_config(tmp_path, server_yaml("main", _dead_port(), priority=1)
                       + server_yaml("backup", backup.port, priority=5),
                       accounts="  - name: sales\n    email: sales@example.com\n"
                                "    granted_to: [alice]\n")
    drop(tmp_path / "spool", user="alice", subject="x", text="x", to=["a@example.org"])
    assert "1 sent" in run_once(cfg).output
    assert backup.wait_for(1)[0].rcpt_tos == ("a@example.org",)
    (row,) = history(cfg)
    assert row["server"] == "backup" and row["status"] == "sent"


def test_every_server_down_defers_and_loses_nothing(tmp_path):
    cfg = write_config(tmp_path, server_yaml("main", _dead_port()))
    drop(tmp_path / "spool", user="alice", subject="x", text="x", to=["a@example.org"])
    assert "1 deferred" in run_once(cfg).output
    (row,) = history(cfg)
    assert row["status"] == "deferred" and "refused" in row["error"]
    assert row["next_attempt_at"] is not None
    listed = json.loads(run(["queue", "list", "-c", str(cfg), "--format", "json"]).output)
    assert [r["id"] for r in listed] == [row["id"]]


def test_connection_dropped_mid_data_defers(tmp_path, smtp_server):
    srv = smtp_server(drop_on_data=True)
    cfg = write_config(tmp_path, server_yaml("main", srv.port))
    drop(tmp_path / "spool", user="alice", subject="x", text="x", to=["a@example.org"])
    assert "1 deferred" in run_once(cfg).output
    (row,) = history(cfg)
    assert row["status"] == "deferred"
    assert srv.messages == []


def test_starttls_not_offered_never_sends_in_plain_text(tmp_path, smtp_server):
    srv = smtp_server(tls="starttls", offer_starttls=False)
    cfg = write_config(tmp_path, server_yaml("main", srv.port, security="starttls"))
    drop(tmp_path / "spool", user="alice", subject="secret", text="x", to=["a@example.org"])
    assert "1 deferred" in run_once(cfg).output
    (row,) = history(cfg)
    assert "STARTTLS" in row["error"]
    assert srv.messages == []


def test_starttls_with_auth_and_verified_certificate(tmp_path, smtp_server, monkeypatch):
    srv = smtp_server(tls="starttls", auth={"relay": "canary-S3cret-pw"})
    monkeypatch.setenv("SSL_CERT_FILE", str(srv.ca_file))
    monkeypatch.setenv("RELAY_PW", "canary-S3cret-pw")
    cfg = write_config(tmp_path, server_yaml(
        "main", srv.port, security="starttls",
        extra="    username: relay\n    password: {env: RELAY_PW}\n"))
    drop(tmp_path / "spool", user="alice", subject="x", text="x", to=["a@example.org"])
    assert "1 sent" in run_once(cfg).output
    (got,) = srv.wait_for(1)
    assert got.tls and got.auth_user == "relay"


def test_connections_are_reused_across_a_burst(tmp_path, smtp_server):
    srv = smtp_server()
    cfg = write_config(tmp_path, server_yaml("main", srv.port, max_connections=2))
    for i in range(60):
        drop(tmp_path / "spool", user="alice", subject=f"m{i}", text="x",
             to=[f"r{i}@example.org"])
    out = run_once(cfg)
    assert "60 sent" in out.output
    assert len(srv.wait_for(60)) == 60
    assert srv.connections <= 2, srv.connections


def test_lifetime_expiry_turns_a_deferral_into_a_failure(tmp_path, smtp_server):
    srv = smtp_server(recipient_replies={"busy@example.org": "451 4.3.0 Try later"})
    cfg = write_config(tmp_path, server_yaml("main", srv.port),
                       retry="{first: 1s, max: 1s, lifetime: 1s}")
    drop(tmp_path / "spool", user="alice", subject="x", text="x", to=["busy@example.org"])
    assert "1 deferred" in run_once(cfg).output
    time.sleep(2.2)
    assert "1 failed" in run_once(cfg).output
    (row,) = history(cfg)
    assert row["status"] == "failed" and "lifetime" in row["error"]


def test_crash_between_commit_and_unlink_does_not_queue_twice(tmp_path, smtp_server):
    from mailsync.outbound.ingest import prepare_spool
    from tests.outbound_helpers import load

    srv = smtp_server()
    cfg = write_config(tmp_path, server_yaml("main", srv.port))
    path = drop(tmp_path / "spool", user="alice", subject="once", text="x", to=["a@example.org"])
    store, outbound = open_store(cfg)
    try:
        # The crash: the batch is committed, and the process dies before removing the file.
        for batch in prepare_spool(load(cfg)):
            outbound.ingest([p.item for p in batch.items], batch.now)
    finally:
        store.close()
    assert path.exists()
    out = run_once(cfg)
    assert "0 queued" in out.output and "1 already taken" in out.output
    assert not path.exists()
    assert len(history(cfg)) == 1
    assert len(srv.wait_for(1)) == 1


def test_idempotency_key_is_queued_once(tmp_path, smtp_server):
    srv = smtp_server()
    cfg = write_config(tmp_path, server_yaml("main", srv.port))
    for _ in range(2):
        drop(tmp_path / "spool", user="alice", subject="once", text="x",
             to=["a@example.org"], idempotency_key="order-42")
    out = run_once(cfg)
    assert "1 queued" in out.output and "1 duplicate;" in out.output
    (row,) = history(cfg)
    events = show(cfg, row["id"])["events"]
    assert [e["status"] for e in events] == ["queued", "duplicate", "sent"]
    assert "order-42" in events[1]["detail"]


def test_hold_release_and_delete(tmp_path):
    cfg = write_config(tmp_path, server_yaml("main", _dead_port()))
    drop(tmp_path / "spool", user="alice", subject="a", text="x", to=["a@example.org"])
    drop(tmp_path / "spool", user="alice", subject="b", text="x", to=["b@example.org"])
    run_once(cfg)
    first, second = sorted(r["id"] for r in history(cfg))
    hold = run(["queue", "hold", str(first), "-c", str(cfg)])
    assert hold.exit_code == 0 and "deferred -> held" in hold.output
    assert run(["queue", "release", str(second), "-c", str(cfg)]).exit_code == 1
    assert run(["queue", "release", str(first), "-c", str(cfg)]).exit_code == 0
    assert show(cfg, first)["status"] == "queued"
    assert run(["queue", "delete", str(second), "-c", str(cfg)]).exit_code == 0
    assert show(cfg, second)["status"] == "failed"
    assert run(["queue", "retry", "999", "-c", str(cfg)]).exit_code == 1
    events = [e["status"] for e in show(cfg, first)["events"]]
    assert events[-2:] == ["held", "queued"]


def test_message_of_an_account_that_left_the_config_is_held(tmp_path, smtp_server):
    srv = smtp_server()
    cfg = write_config(tmp_path, server_yaml("main", _dead_port()))
    drop(tmp_path / "spool", user="bob", account="support", subject="x", text="x",
         to=["a@example.org"])
    run_once(cfg)
    (row,) = history(cfg)
    assert row["status"] == "deferred"
    run(["queue", "retry", str(row["id"]), "-c", str(cfg)])
    write_config(tmp_path, server_yaml("main", srv.port),
                 accounts="  - name: sales\n    email: sales@example.com\n    server: main\n"
                          "    granted_to: [alice]\n")
    assert "1 held" in run_once(cfg).output
    assert show(cfg, row["id"])["status"] == "held"
    assert srv.messages == []


def test_history_filters_and_json_keys(tmp_path, smtp_server):
    srv = smtp_server()
    cfg = write_config(tmp_path, server_yaml("main", srv.port))
    drop(tmp_path / "spool", user="alice", subject="s1", text="x", to=["a@example.org"])
    drop(tmp_path / "spool", user="bob", account="support", subject="s2", text="x",
         to=["b@example.org"])
    run_once(cfg)
    rows = history(cfg)
    assert {"id", "status", "account", "user", "server", "message_id", "subject",
            "created_at"} <= set(rows[0])
    assert [r["subject"] for r in history(cfg, "--user", "bob")] == ["s2"]
    assert [r["subject"] for r in history(cfg, "--account", "sales")] == ["s1"]
    assert history(cfg, "--since", "1h") and history(cfg, "--since", "2099-01-01") == []
    assert history(cfg, "--until", "1h") == []  # made just now
    assert history(cfg, "--until", "2099-01-01") == history(cfg, "--since", "1h", "--until",
                                                            "2099-01-01") == history(cfg)
    assert [r["subject"] for r in history(cfg, "--search", "B@Example.org")] == ["s2"]
    assert [r["subject"] for r in history(cfg, "--search", " S1 ")] == ["s1"]
    assert history(cfg, "--search", "nobody@example.org") == []
    assert len(history(cfg, "--search", "@EXAMPLE.org")) == 2  # a domain
    assert len(history(cfg, "--server", "main")) == 2 and history(cfg, "--server", "x") == []
    table = run(["history", "-c", str(cfg)])
    assert table.exit_code == 0 and "STATUS" in table.output and "s2" in table.output
    assert run(["history", "-c", str(cfg), "--status", "nope"]).exit_code == 2
    raw = run(["history", "show", str(rows[0]["id"]), "--raw", "-c", str(cfg)])
    assert raw.exit_code == 0 and "Subject: s2" in raw.output
    text = run(["history", "show", str(rows[0]["id"]), "-c", str(cfg)])
    assert "Recipients:" in text.output and "b@example.org: sent 250" in text.output


def test_a_pass_that_fails_after_the_fork_stops_the_pickup_child(tmp_path, monkeypatch):
    """The child is forked before the sender is built: when building it fails, the child
    is stopped, not left running; what it committed stays and the rest waits in new/."""
    cfg = write_config(tmp_path, server_yaml("main", 9))
    for i in range(3):
        drop(tmp_path / "spool", user="alice", to=[f"r{i}@example.org"], subject=f"s{i}",
             text="x")

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no sender today")

    monkeypatch.setattr(deliver.Deliverer, "__init__", broken)
    with pytest.raises(RuntimeError, match="no sender today"):
        run(["run", "--once", "-c", str(cfg)])
    assert multiprocessing.active_children() == []
    monkeypatch.undo()
    run_once(cfg)  # the files the child had not taken are taken now; none twice
    assert sorted(r["subject"] for r in history(cfg)) == ["s0", "s1", "s2"]
    assert list((tmp_path / "spool" / "new").iterdir()) == []


@pytest.mark.parametrize("on", [True, False])
def test_log_deliveries_logs_a_line_per_message_sent(tmp_path, smtp_server, caplog, on):
    srv = smtp_server()
    cfg = write_config(tmp_path, server_yaml("main", srv.port))
    if on:
        cfg.write_text(cfg.read_text().replace("daemon:\n", "daemon:\n  log_deliveries: true\n"))
    drop(tmp_path / "spool", user="alice", to=["ann@example.org", "bob@example.org"],
         subject="s", text="x")
    with caplog.at_level("INFO", logger="mailsync.deliver"):
        run_once(cfg)
    (row,) = history(cfg)
    lines = [r.getMessage() for r in caplog.records if " sent via " in r.getMessage()]
    if not on:
        assert lines == []
        return
    (line,) = lines
    assert line.startswith(f"message {row['id']} sent via main in ")
    assert "ann@example.org 250" in line and "bob@example.org 250" in line
