"""Bounces: DSN and VERP parsing (pure, byte literals), the history update, and a DSN
fetched from Dovecot marking the message this daemon sent."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailsync.config.model import AliasDomain, Config, Daemon
from mailsync.inbound.bounces import FailedRecipient, parse_bounce, record_bounce
from mailsync.store import Store
from tests.dovecot import (  # noqa: F401  (fixtures)
    dovecot_fixture,
    incoming_yaml,
    mailbox_fixture,
    message,
    rig_fixture,
)

CONFIG = Config(daemon=Daemon(Path("state"), Path("spool")),
                alias_domain=AliasDomain("example.com", bounce="bounce"))


def postfix_dsn(verp_id: int = 42, message_id: str = "<abc@example.com>",
                action: str = "failed", status: str = "5.1.1") -> bytes:
    """A bounce as Postfix's bounce(8) writes it (text part, report, returned headers)."""
    return (
        "Return-Path: <>\r\n"
        f"Delivered-To: bounce+{verp_id}@example.com\r\n"
        "Date: Tue, 25 Nov 2025 10:00:05 +0000 (UTC)\r\n"
        "From: MAILER-DAEMON@mx.example.net (Mail Delivery System)\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        f"To: bounce+{verp_id}@example.com\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: multipart/report; report-type=delivery-status;\r\n"
        "\tboundary=\"3F2A81C0A5.1764064805/mx.example.net\"\r\n"
        "Message-Id: <20251125100005.4F2A81C0A6@mx.example.net>\r\n"
        "\r\n"
        "This is a MIME-encapsulated message.\r\n"
        "\r\n"
        "--3F2A81C0A5.1764064805/mx.example.net\r\n"
        "Content-Description: Notification\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        "\r\n"
        "This is the mail system at host mx.example.net.\r\n"
        "\r\n"
        "I'm sorry to have to inform you that your message could not\r\n"
        "be delivered to one or more recipients.\r\n"
        "\r\n"
        "<nobody@example.org>: host mx.example.org[192.0.2.1] said: 550 5.1.1\r\n"
        "    <nobody@example.org>: Recipient address rejected: User unknown\r\n"
        "\r\n"
        "--3F2A81C0A5.1764064805/mx.example.net\r\n"
        "Content-Description: Delivery report\r\n"
        "Content-Type: message/delivery-status\r\n"
        "\r\n"
        "Reporting-MTA: dns; mx.example.net\r\n"
        "X-Postfix-Queue-ID: 3F2A81C0A5\r\n"
        f"X-Postfix-Sender: rfc822; bounce+{verp_id}@example.com\r\n"
        "Arrival-Date: Tue, 25 Nov 2025 10:00:00 +0000 (UTC)\r\n"
        "\r\n"
        "Final-Recipient: rfc822; nobody@example.org\r\n"
        "Original-Recipient: rfc822;nobody@example.org\r\n"
        f"Action: {action}\r\n"
        f"Status: {status}\r\n"
        "Remote-MTA: dns; mx.example.org\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 <nobody@example.org>: Recipient address\r\n"
        "    rejected: User unknown\r\n"
        "\r\n"
        "--3F2A81C0A5.1764064805/mx.example.net\r\n"
        "Content-Description: Undelivered Message Headers\r\n"
        "Content-Type: text/rfc822-headers\r\n"
        "\r\n"
        f"Return-Path: <bounce+{verp_id}@example.com>\r\n"
        "From: Sales Team <sales@example.com>\r\n"
        "To: nobody@example.org\r\n"
        "Subject: Your quote\r\n"
        f"Message-ID: {message_id}\r\n"
        "\r\n"
        "--3F2A81C0A5.1764064805/mx.example.net--\r\n"
    ).encode()


EXIM_DSN = (
    b"Return-path: <>\r\n"
    b"From: Mail Delivery System <Mailer-Daemon@mx.example.net>\r\n"
    b"To: sales@example.com\r\n"
    b"Subject: Mail delivery failed: returning message to sender\r\n"
    b"Auto-Submitted: auto-replied\r\n"
    b"X-Failed-Recipients: gone@example.org\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: multipart/report; report-type=delivery-status; "
    b"boundary=1764064805-eximdsn-1804289383\r\n"
    b"\r\n"
    b"--1764064805-eximdsn-1804289383\r\n"
    b"Content-type: text/plain; charset=us-ascii\r\n"
    b"\r\n"
    b"This message was created automatically by mail delivery software.\r\n"
    b"\r\n"
    b"  gone@example.org\r\n"
    b"    host mx.example.org [192.0.2.1]\r\n"
    b"    SMTP error from remote mail server after RCPT TO:<gone@example.org>:\r\n"
    b"    550 5.1.1 User unknown\r\n"
    b"\r\n"
    b"--1764064805-eximdsn-1804289383\r\n"
    b"Content-type: message/delivery-status\r\n"
    b"\r\n"
    b"Reporting-MTA: dns; mx.example.net\r\n"
    b"Original-Envelope-Id: quote+2B7@example.com\r\n"
    b"\r\n"
    b"Action: failed\r\n"
    b"Final-Recipient: rfc822;gone@example.org\r\n"
    b"Status: 5.0.0\r\n"
    b"Remote-MTA: dns; mx.example.org\r\n"
    b"Diagnostic-Code: smtp; 550 5.1.1 User unknown\r\n"
    b"\r\n"
    b"--1764064805-eximdsn-1804289383\r\n"
    b"Content-type: message/rfc822\r\n"
    b"\r\n"
    b"Return-path: <sales@example.com>\r\n"
    b"From: Sales Team <sales@example.com>\r\n"
    b"To: gone@example.org\r\n"
    b"Subject: Follow-up\r\n"
    b"Message-ID: <xyz@example.com>\r\n"
    b"\r\n"
    b"Hello.\r\n"
    b"\r\n"
    b"--1764064805-eximdsn-1804289383--\r\n"
)

VERP_ONLY = (
    b"From: MAILER-DAEMON@old.example.net\r\n"
    b"To: bounce+7@EXAMPLE.com\r\n"
    b"Subject: failure notice\r\n"
    b"\r\n"
    b"Hi. This is the qmail-send program at old.example.net.\r\n"
    b"I'm afraid I wasn't able to deliver your message to the following addresses.\r\n"
    b"<someone@example.org>:\r\nSorry, no mailbox here by that name. (#5.1.1)\r\n"
)

VACATION = (
    b"From: someone@example.org\r\nTo: bounce+7@example.com\r\n"
    b"Subject: Out of office\r\nAuto-Submitted: auto-replied\r\n\r\nBack on Monday.\r\n"
)


def test_postfix_dsn_names_the_recipient_status_diagnostic_and_the_message():
    bounce = parse_bounce(postfix_dsn(), CONFIG)
    assert bounce is not None and bounce.dsn
    assert bounce.verp_id == 42
    assert bounce.message_ids == ("<abc@example.com>",)
    assert bounce.recipients == (FailedRecipient(
        "nobody@example.org", "nobody@example.org", "5.1.1",
        "smtp; 550 5.1.1 <nobody@example.org>: Recipient address rejected: User unknown"),)
    assert bounce.recipients[0].smtp_code == 550
    assert bounce.recipients[0].reply.startswith("5.1.1 smtp; 550 5.1.1 <nobody@")


def test_exim_dsn_without_verp_is_matched_by_envelope_id_and_returned_message_id():
    bounce = parse_bounce(EXIM_DSN, CONFIG)
    assert bounce is not None and bounce.dsn
    assert bounce.verp_id is None
    assert bounce.envelope_id == "quote+7@example.com"  # xtext "+2B" decoded
    assert bounce.message_ids == ("<xyz@example.com>",)
    assert [(r.address, r.status, r.smtp_code) for r in bounce.recipients] == [
        ("gone@example.org", "5.0.0", 550)]


def test_verp_only_bounce_is_a_bounce_of_that_message():
    bounce = parse_bounce(VERP_ONLY, CONFIG)
    assert bounce is not None
    assert (bounce.verp_id, bounce.dsn, bounce.recipients) == (7, False, ())
    assert bounce.subject == "failure notice"


@pytest.mark.parametrize("raw", [
    message(1),                                       # ordinary mail
    VACATION,                                         # an auto-reply to the VERP address
    postfix_dsn(action="delayed", status="4.4.1"),    # a delay notice, not a bounce
    b"To: bounce+x@example.com\r\n\r\nnot a number\r\n",
    b"To: bounce+7@other.example\r\n\r\nanother domain\r\n",
], ids=["ordinary", "vacation", "delayed", "bad-id", "other-domain"])
def test_what_is_not_a_bounce(raw):
    assert parse_bounce(raw, CONFIG) is None


def test_without_alias_domain_only_dsns_count():
    bare = Config(daemon=CONFIG.daemon)
    assert parse_bounce(VERP_ONLY, bare) is None
    bounce = parse_bounce(postfix_dsn(), bare)
    assert bounce is not None and bounce.verp_id is None
    assert bounce.message_ids == ("<abc@example.com>",)


# -- the history ------------------------------------------------------------------------

def sent(conn, recipients, message_id="<abc@example.com>", account="sales"):
    """A sent message row, written with SQL as the outbound side would leave it."""
    mid = conn.execute(
        "INSERT INTO messages (created_at, updated_at, status, account, server, from_address,"
        " message_id, subject) VALUES (1, 1, 'sent', ?, 'relay', 'sales@example.com', ?,"
        " 'Your quote')", (account, message_id)).lastrowid
    conn.executemany("INSERT INTO recipients (message, address, status, code, reply,"
                     " updated_at) VALUES (?, ?, 'sent', 250, '2.0.0 OK', 1)",
                     [(mid, r) for r in recipients])
    return mid


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "state")
    yield s
    s.close()


def _recipients(store, mid):
    return store.conn.execute("SELECT address, status, code, reply FROM recipients"
                              " WHERE message = ? ORDER BY address", (mid,)).fetchall()


def test_a_bounce_for_the_only_recipient_marks_the_message_bounced(store):
    with store.transaction() as conn:
        mid = sent(conn, ["Nobody@example.org"])
    with store.transaction() as conn:
        outcome = record_bounce(conn, parse_bounce(postfix_dsn(mid), CONFIG), 100.0)
    assert outcome is not None and outcome.message == mid and outcome.message_bounced
    assert outcome.account == "sales"
    (address, status, code, reply), = _recipients(store, mid)
    assert (address, status, code) == ("Nobody@example.org", "bounced", 550)
    assert reply == ("5.1.1 smtp; 550 5.1.1 <nobody@example.org>: Recipient address "
                     "rejected: User unknown")
    assert store.conn.execute("SELECT status FROM messages WHERE id = ?",
                              (mid,)).fetchone()[0] == "bounced"
    event = store.conn.execute("SELECT status, detail FROM events WHERE message = ?",
                               (mid,)).fetchone()
    assert event[0] == "bounced" and event[1].startswith("nobody@example.org: 5.1.1 smtp; 550")


def test_a_bounce_for_one_of_two_recipients_marks_only_that_one(store):
    with store.transaction() as conn:
        mid = sent(conn, ["nobody@example.org", "someone@example.org"])
    with store.transaction() as conn:
        outcome = record_bounce(conn, parse_bounce(postfix_dsn(mid), CONFIG), 100.0)
    assert outcome is not None and not outcome.message_bounced
    assert [(a, s) for a, s, _, _ in _recipients(store, mid)] == [
        ("nobody@example.org", "bounced"), ("someone@example.org", "sent")]
    assert store.conn.execute("SELECT status FROM messages WHERE id = ?",
                              (mid,)).fetchone()[0] == "sent"


def test_a_dsn_without_verp_is_matched_by_message_id_and_a_stranger_is_ignored(store):
    with store.transaction() as conn:
        mid = sent(conn, ["gone@example.org"], message_id="<xyz@example.com>")
        found = record_bounce(conn, parse_bounce(EXIM_DSN, CONFIG), 100.0)
        stranger = record_bounce(conn, parse_bounce(postfix_dsn(
            999, message_id="<not-ours@example.com>"), CONFIG), 100.0)
    assert found is not None and found.message == mid and found.message_bounced
    assert stranger is None


def test_a_verp_only_bounce_marks_every_recipient(store):
    with store.transaction() as conn:
        mid = sent(conn, ["a@example.org", "b@example.org"])
        outcome = record_bounce(conn, parse_bounce(VERP_ONLY.replace(b"+7@", f"+{mid}@".encode()),
                                                   CONFIG), 100.0)
    assert outcome is not None and outcome.message_bounced
    assert {(a, s, r) for a, s, _, r in _recipients(store, mid)} == {
        ("a@example.org", "bounced", "bounce received: failure notice"),
        ("b@example.org", "bounced", "bounce received: failure notice")}


# -- end to end --------------------------------------------------------------------------

def test_a_dsn_fetched_from_dovecot_marks_the_sent_message_and_counts_it(rig, mailbox,
                                                                          tmp_path):
    r = rig(incoming_yaml(mailbox, "bounces", tmp_path / "pw"))
    with r.store.transaction() as conn:
        other = sent(conn, ["someone@example.org"], message_id="<other@example.com>")
        mid = sent(conn, ["nobody@example.org"])
    mailbox.append(message(1), postfix_dsn(mid))

    result = r.poller("bounces").poll_once()

    assert result.ok and result.fetched == 2 and result.bounced == 1
    status = dict(r.store.conn.execute("SELECT id, status FROM messages").fetchall())
    assert status == {other: "sent", mid: "bounced"}
    assert [row["bounce_of"] for row in r.rows()] == [None, mid]
    assert r.metric("mailsync_messages_bounced_total", account="sales") == 1
