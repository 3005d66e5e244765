"""Bounces: DSN and signed VERP parsing (pure, byte literals), what is plausibly a bounce,
the history update, and a DSN fetched from Dovecot marking the message this daemon sent
(while forged ones are kept as ordinary mail, logged and counted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailsync.config.model import AliasDomain, Config, Daemon
from mailsync.inbound.bounces import (
    FailedRecipient,
    Verdict,
    classify,
    parse_bounce,
    plausible_bounce,
    record_bounce,
)
from mailsync.inbound.message import parse_headers
from mailsync.outbound.verp import VerpKey, verp_sender
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
NO_BOUNCE = Config(daemon=CONFIG.daemon, alias_domain=AliasDomain("example.com"))
KEY = VerpKey(bytes(range(32)))


def signed(verp_id: int, key: VerpKey = KEY) -> str:
    """The signed VERP address of message ``verp_id``: bounce+<id>.<signature>@example.com."""
    address = verp_sender(CONFIG, key, verp_id)
    assert address is not None
    return address


def postfix_dsn(verp_id: int = 42, message_id: str = "<abc@example.com>",
                action: str = "failed", status: str = "5.1.1", *,
                address: str | None = None, key: VerpKey = KEY) -> bytes:
    """A bounce as Postfix's bounce(8) writes it (text part, report, returned headers),
    to the signed VERP address of ``verp_id`` (or to ``address``)."""
    verp = address or signed(verp_id, key)
    return (
        "Return-Path: <>\r\n"
        f"Delivered-To: {verp}\r\n"
        "Date: Tue, 25 Nov 2025 10:00:05 +0000 (UTC)\r\n"
        "From: MAILER-DAEMON@mx.example.net (Mail Delivery System)\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        f"To: {verp}\r\n"
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
        f"X-Postfix-Sender: rfc822; {verp}\r\n"
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
        f"Return-Path: <{verp}>\r\n"
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

def verp_only(verp_id: int = 7, to: str | None = None) -> bytes:
    """A qmail bounce (no DSN) to the signed VERP address, its domain upper-cased."""
    return (b"From: MAILER-DAEMON@old.example.net\r\n"
            b"To: " + (to or signed(verp_id).replace("example.com", "EXAMPLE.com")).encode()
            + b"\r\nSubject: failure notice\r\n\r\n"
            b"Hi. This is the qmail-send program at old.example.net.\r\n"
            b"I'm afraid I wasn't able to deliver your message to the following addresses.\r\n"
            b"<someone@example.org>:\r\nSorry, no mailbox here by that name. (#5.1.1)\r\n")


VERP_ONLY = verp_only()
VACATION = (
    b"From: someone@example.org\r\nTo: " + signed(7).encode() + b"\r\n"
    b"Subject: Out of office\r\nAuto-Submitted: auto-replied\r\n\r\nBack on Monday.\r\n"
)
REPLY = (
    b"From: Ann <ann@example.org>\r\nTo: " + signed(7).encode() + b"\r\n"
    b"Subject: Re: Your quote\r\n\r\nThanks!\r\n"
)


def test_postfix_dsn_names_the_recipient_status_diagnostic_and_the_message():
    bounce = parse_bounce(postfix_dsn(), CONFIG, KEY)
    assert bounce is not None and bounce.dsn
    assert bounce.verp_id == 42
    assert bounce.message_ids == ("<abc@example.com>",)
    assert bounce.recipients == (FailedRecipient(
        "nobody@example.org", "nobody@example.org", "5.1.1",
        "smtp; 550 5.1.1 <nobody@example.org>: Recipient address rejected: User unknown"),)
    assert bounce.recipients[0].smtp_code == 550
    assert bounce.recipients[0].reply.startswith("5.1.1 smtp; 550 5.1.1 <nobody@")


def test_exim_dsn_without_verp_is_matched_by_envelope_id_and_returned_message_id():
    # Only without a bounce local part (MAIL FROM is then the From address).
    bounce = parse_bounce(EXIM_DSN, NO_BOUNCE, KEY)
    assert bounce is not None and bounce.dsn
    assert bounce.verp_id is None
    assert bounce.envelope_id == "quote+7@example.com"  # xtext "+2B" decoded
    assert bounce.message_ids == ("<xyz@example.com>",)
    assert [(r.address, r.status, r.smtp_code) for r in bounce.recipients] == [
        ("gone@example.org", "5.0.0", 550)]


def test_verp_only_bounce_is_a_bounce_of_that_message():
    bounce = parse_bounce(VERP_ONLY, CONFIG, KEY)
    assert bounce is not None
    assert (bounce.verp_id, bounce.dsn, bounce.recipients) == (7, False, ())
    assert bounce.subject == "failure notice"


@pytest.mark.parametrize("raw", [
    message(1),                                       # ordinary mail
    VACATION,                                         # an auto-reply to the VERP address
    postfix_dsn(action="delayed", status="4.4.1"),    # a delay notice, not a bounce
    b"To: bounce+x@example.com\r\n\r\nnot a number\r\n",
    b"To: bounce+7@other.example\r\n\r\nanother domain\r\n",
    verp_only(to="bounce+7@example.com"),             # unsigned
    verp_only(to="bounce+7.aaaaaaaaaa@example.com"),  # a wrong signature
    verp_only(to=signed(7, VerpKey(b"k" * 32))),       # another state_dir's key
    REPLY,                                            # a person answers the envelope sender
    EXIM_DSN,                                         # a DSN naming no VERP (bounce is set)
    postfix_dsn(address="bounce+42@example.com"),     # a DSN to the unsigned address
], ids=["ordinary", "vacation", "delayed", "bad-id", "other-domain", "unsigned",
        "bad-signature", "other-key", "reply", "dsn-without-verp", "dsn-unsigned"])
def test_what_is_not_a_bounce(raw):
    assert parse_bounce(raw, CONFIG, KEY) is None


@pytest.mark.parametrize("raw, verdict", [
    (verp_only(to="bounce+7@example.com"), Verdict(refused="unsigned", claimed=7)),
    (verp_only(to="BOUNCE+7.AAAAAAAAAA@example.com"), Verdict(refused="bad_signature",
                                                              claimed=7)),
    (verp_only(to=signed(7)[:-len("@example.com") - 1] + "@example.com"),  # truncated
     Verdict(refused="bad_signature", claimed=7)),
    (REPLY, Verdict(refused="not_a_bounce", claimed=7)),
    (VACATION, Verdict(refused="not_a_bounce", claimed=7)),
    (postfix_dsn(address="bounce+42@example.com"), Verdict(refused="unsigned", claimed=42)),
    (EXIM_DSN, Verdict()),  # someone else's bounce: nothing to say
    (message(1), Verdict()),
], ids=["unsigned", "bad-signature", "truncated", "reply", "vacation", "dsn-unsigned",
        "dsn-without-verp", "ordinary"])
def test_why_a_message_naming_a_verp_address_is_not_a_bounce(raw, verdict):
    assert classify(raw, CONFIG, KEY) == verdict


def test_a_signed_address_anywhere_in_the_dsn_wins_over_an_unsigned_one():
    raw = postfix_dsn(42).replace(f"To: {signed(42)}".encode(), b"To: bounce+1@example.com")
    raw = raw.replace(f"Delivered-To: {signed(42)}".encode(), b"Delivered-To: x@example.com")
    bounce = parse_bounce(raw, CONFIG, KEY)
    assert bounce is not None and bounce.verp_id == 42  # from X-Postfix-Sender


def test_without_the_key_no_verp_address_counts():
    assert parse_bounce(VERP_ONLY, CONFIG, None) is None
    assert classify(postfix_dsn(), CONFIG, None) == Verdict(refused="bad_signature",
                                                            claimed=42)


@pytest.mark.parametrize("headers", [
    b"Return-Path: <>\r\n",
    b"Return-Path: <MAILER-DAEMON>\r\n",
    b"Return-Path: <mailer-daemon@mx.example.net>\r\n",
    b"From: Mail Delivery Subsystem <MAILER-DAEMON@googlemail.com>\r\n",
    b"From: postmaster@mx.example.net\r\n",
    b"X-Failed-Recipients: gone@example.org\r\n",
    b"Subject: failure notice\r\n",                                     # qmail
    b"Subject: Undeliverable: Your quote\r\n",                          # Exchange
    b"Subject: Delivery Status Notification (Failure)\r\n",             # Gmail
    b"Subject: Mail delivery failed: returning message to sender\r\n",  # Exim
    b"Subject: Returned mail: see transcript for details\r\n",          # Sendmail
    b"Subject: Undelivered Mail Returned to Sender\r\n",                # Postfix
    b"Subject: DELIVERY FAILURE: User ann not listed\r\n",              # Lotus Notes
    b"Subject: =?utf-8?q?Undeliverable=3A_Your_quote?=\r\n",           # encoded
])
def test_what_looks_like_a_bounce(headers):
    raw = b"To: " + signed(7).encode() + b"\r\n" + headers + b"\r\nbody\r\n"
    assert plausible_bounce(parse_headers(raw))
    bounce = parse_bounce(raw, CONFIG, KEY)
    assert bounce is not None and bounce.verp_id == 7 and not bounce.dsn


@pytest.mark.parametrize("headers", [
    b"From: Ann <ann@example.org>\r\nSubject: Re: Your quote\r\n",
    b"Return-Path: <ann@example.org>\r\nFrom: ann@example.org\r\n",
    b"Subject: Re: Undeliverable: Your quote\r\n",          # a person replying to one
    b"Subject: Fwd: failure notice\r\n",
    b"Subject: Delivery Status Notification (Delay)\r\n",
    b"From: daemon-fan@example.org\r\nSubject: about the postmaster\r\n",
])
def test_what_does_not_look_like_a_bounce(headers):
    raw = b"To: " + signed(7).encode() + b"\r\n" + headers + b"\r\nbody\r\n"
    assert not plausible_bounce(parse_headers(raw))
    assert classify(raw, CONFIG, KEY) == Verdict(refused="not_a_bounce", claimed=7)


def test_without_alias_domain_only_dsns_count():
    bare = Config(daemon=CONFIG.daemon)
    assert parse_bounce(VERP_ONLY, bare, KEY) is None
    bounce = parse_bounce(postfix_dsn(), bare, KEY)
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
        outcome = record_bounce(conn, parse_bounce(postfix_dsn(mid), CONFIG, KEY), 100.0)
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
        outcome = record_bounce(conn, parse_bounce(postfix_dsn(mid), CONFIG, KEY), 100.0)
    assert outcome is not None and not outcome.message_bounced
    assert [(a, s) for a, s, _, _ in _recipients(store, mid)] == [
        ("nobody@example.org", "bounced"), ("someone@example.org", "sent")]
    assert store.conn.execute("SELECT status FROM messages WHERE id = ?",
                              (mid,)).fetchone()[0] == "sent"


def test_a_dsn_without_verp_is_matched_by_message_id_and_a_stranger_is_ignored(store):
    with store.transaction() as conn:
        mid = sent(conn, ["gone@example.org"], message_id="<xyz@example.com>")
        found = record_bounce(conn, parse_bounce(EXIM_DSN, NO_BOUNCE, KEY), 100.0)
        stranger = record_bounce(conn, parse_bounce(postfix_dsn(
            999, message_id="<not-ours@example.com>"), CONFIG, KEY), 100.0)
    assert found is not None and found.message == mid and found.message_bounced
    assert stranger is None


def test_a_signed_verp_id_of_a_message_no_longer_stored_matches_nothing_else(store):
    with store.transaction() as conn:
        sent(conn, ["nobody@example.org"], message_id="<abc@example.com>")
        outcome = record_bounce(conn, parse_bounce(postfix_dsn(999), CONFIG, KEY), 100.0)
    assert outcome is None  # not found by the returned Message-ID instead


def test_a_verp_only_bounce_marks_every_recipient(store):
    with store.transaction() as conn:
        mid = sent(conn, ["a@example.org", "b@example.org"])
        outcome = record_bounce(conn, parse_bounce(verp_only(mid), CONFIG, KEY), 100.0)
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
    mailbox.append(message(1), postfix_dsn(mid, key=r.verp_key))

    result = r.poller("bounces").poll_once()

    assert result.ok and result.fetched == 2 and result.bounced == 1
    status = dict(r.store.conn.execute("SELECT id, status FROM messages").fetchall())
    assert status == {other: "sent", mid: "bounced"}
    assert [row["bounce_of"] for row in r.rows()] == [None, mid]
    assert r.metric("mailsync_messages_bounced_total", account="sales") == 1


def test_forged_bounces_from_dovecot_are_kept_logged_and_counted(rig, mailbox, tmp_path,
                                                                  caplog):
    r = rig(incoming_yaml(mailbox, "bounces", tmp_path / "pw"))
    with r.store.transaction() as conn:
        mid = sent(conn, ["nobody@example.org"])
    real = signed(mid, r.verp_key)
    mailbox.append(verp_only(to=f"bounce+{mid}@example.com"),           # unsigned
                   verp_only(to=f"bounce+{mid}.aaaaaaaaaa@example.com"),  # wrong signature
                   REPLY.replace(signed(7).encode(), real.encode()))     # signed, a reply

    with caplog.at_level("INFO", logger="mailsync.inbound"):
        result = r.poller("bounces").poll_once()

    assert result.ok and result.fetched == 3 and result.bounced == 0
    assert r.store.conn.execute("SELECT status FROM messages").fetchall() == [("sent",)]
    assert [row["bounce_of"] for row in r.rows()] == [None, None, None]
    assert [r.metric("mailsync_bounces_refused_total", server="bounces", reason=why)
            for why in ("unsigned", "bad_signature", "not_a_bounce")] == [1, 1, 1]
    warnings = [x.getMessage() for x in caplog.records if x.levelname == "WARNING"]
    assert warnings == [
        f"bounces: fetched message 1 names message {mid} in a VERP address that is not "
        "signed (forged, or sent before signing or with a lost verp.key): not taken as a "
        "bounce, kept as ordinary mail",
        f"bounces: fetched message 2 names message {mid} in a VERP address that has a wrong "
        "signature (forged, or sent before signing or with a lost verp.key): not taken as a "
        "bounce, kept as ordinary mail"]
    assert any(f"fetched message 3 was sent to the VERP address of message {mid}" in x.getMessage()
               and x.levelname == "INFO" for x in caplog.records)
    assert real.partition("@")[0].split(".")[-1] not in caplog.text  # the right signature
