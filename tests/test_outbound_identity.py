"""Who a message says it is from: foreign originator headers never reach the wire, and a
spool file may only submit as a user its Unix owner is allowed to be (`unix_users`)."""

from __future__ import annotations

from email import message_from_bytes

from mailsync.outbound.spool import drop
from tests.outbound_helpers import history, run_once, server_yaml, write_config

# --- Foreign originator headers ----------------------------------------------------------

HEAD = (b"X-Mailsync-User: alice\r\n"
        b"To: Ann <ann@example.org>\r\n"
        b"Subject: Statement\r\n"
        b"Sender: ceo@bank.example\r\n"
        b"Resent-From: ceo@bank.example\r\n"
        b"Resent-To: victim@bank.example\r\n"
        b"Return-Path: <ceo@bank.example>\r\n"
        b"Keywords: kept,\r\n"
        b"\tfolded\r\n"
        b"DKIM-Signature: v=1; a=rsa-sha256; d=bank.example; s=sel;\r\n"
        b"\th=from:to:subject; bh=AAAA;\r\n"
        b"  b=BBBBforged\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n")
BODY = b"Dear Ann,\r\n\r\nSender: not a header here\r\nBye\r\n"


def test_foreign_originator_headers_never_reach_the_wire(tmp_path, smtp_server):
    srv = smtp_server()
    cfg = write_config(tmp_path, server_yaml("main", srv.port))
    (tmp_path / "spool" / "new" / "statement.eml").write_bytes(HEAD + b"\r\n" + BODY)

    out = run_once(cfg)
    assert "1 sent" in out.output
    (got,) = srv.wait_for(1)
    head, _, body = got.data.partition(b"\r\n\r\n")
    assert body == BODY  # the body byte for byte, its "Sender:" line included
    assert b"bank.example" not in head and b"BBBBforged" not in head
    assert b"h=from:to:subject" not in head
    names = [line.split(b":")[0].lower() for line in head.split(b"\r\n")
             if line[:1] not in (b" ", b"\t")]
    assert not [n for n in names if n in (b"sender", b"return-path", b"dkim-signature")
                or n.startswith(b"resent-")], names
    # The rest of the header block is kept byte for byte.
    for kept in (b"To: Ann <ann@example.org>\r\n", b"Subject: Statement\r\n",
                 b"Keywords: kept,\r\n\tfolded\r\n",
                 b"Content-Type: text/plain; charset=utf-8\r\n"):
        assert kept in head + b"\r\n", kept
    assert message_from_bytes(got.data)["From"] == "Sales Team <sales@example.com>"


def test_originator_headers_of_a_json_file_are_removed_too(tmp_path, smtp_server):
    srv = smtp_server()
    cfg = write_config(tmp_path, server_yaml("main", srv.port))
    drop(tmp_path / "spool", user="alice", to=["ann@example.org"], subject="Hi", text="x",
         headers={"Sender": "ceo@bank.example", "Resent-From": "ceo@bank.example",
                  "Return-Path": "<ceo@bank.example>", "DKIM-Signature": "v=1; d=bank.example",
                  "X-Campaign": "spring"})
    run_once(cfg)
    (got,) = srv.wait_for(1)
    assert b"bank.example" not in got.data
    assert message_from_bytes(got.data)["X-Campaign"] == "spring"
    assert [r["status"] for r in history(cfg)] == ["sent"]
