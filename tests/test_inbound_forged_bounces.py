"""Forged bounces, end to end: a message sent through aiosmtpd with `mailsync run --once`,
then mail put into a real Dovecot mailbox and fetched with `mailsync inbox poll`.

Only a real bounce to the signed VERP address the relay saw as MAIL FROM marks the
message bounced: a bounce-looking mail or a DSN to the unsigned ``bounce+<id>@`` (which
anyone can write, ids being sequential) and a plain reply to the signed address do not.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mailsync.outbound.spool import drop
from tests.dovecot import dovecot_fixture, incoming_yaml, mailbox_fixture  # noqa: F401
from tests.outbound_helpers import history, run, run_once, server_yaml, show, write_config


def _sent(tmp_path: Path, smtp_server, mailbox) -> tuple[Path, int, str]:
    """Config, id and real MAIL FROM of one message sent to ann@example.org."""
    srv = smtp_server()
    cfg = write_config(tmp_path, server_yaml("main", srv.port))
    with cfg.open("a") as f:
        f.write("incoming_servers:\n" + incoming_yaml(mailbox, "bounces", tmp_path / "pw"))
    drop(tmp_path / "spool", user="alice", to=["ann@example.org"], subject="Your quote",
         text="Hello Ann")
    run_once(cfg)
    [received] = srv.wait_for(1)
    [row] = history(cfg)
    assert row["status"] == "sent"
    return cfg, int(row["id"]), received.mail_from


def _poll(cfg: Path) -> str:
    result = run(["inbox", "poll", "-c", str(cfg)])
    assert result.exit_code == 0, result.output
    return result.stdout


def _inbox(cfg: Path) -> list[dict]:
    return json.loads(run(["inbox", "-c", str(cfg), "--format", "json"]).output)


def failure_notice(to: str) -> bytes:
    """A qmail-style bounce (no DSN): everything a bounce looks like, but the address."""
    return (f"Return-Path: <>\r\nFrom: MAILER-DAEMON@mx.attacker.example\r\nTo: {to}\r\n"
            "Subject: failure notice\r\nMessage-ID: <forged-1@attacker.example>\r\n\r\n"
            "Hi. This is the qmail-send program at mx.attacker.example.\r\n"
            "<ann@example.org>:\r\nSorry, no mailbox here by that name. (#5.1.1)\r\n").encode()


def dsn(to: str, returned_message_id: str) -> bytes:
    """A Postfix DSN to ``to`` reporting ann@example.org as failed."""
    return (
        f"Return-Path: <>\r\nDelivered-To: {to}\r\n"
        "From: MAILER-DAEMON@mx.example.org (Mail Delivery System)\r\n"
        f"To: {to}\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        "Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
        "Content-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n"
        "\r\n--B\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; mx.example.org\r\nX-Postfix-Sender: rfc822; {to}\r\n\r\n"
        "Final-Recipient: rfc822; ann@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 <ann@example.org>: User unknown\r\n"
        "--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"Return-Path: <{to}>\r\nFrom: Sales <sales@example.com>\r\nTo: ann@example.org\r\n"
        f"Subject: Your quote\r\nMessage-ID: {returned_message_id}\r\n\r\n--B--\r\n").encode()


def test_the_relay_sees_a_signed_verp_sender(tmp_path, smtp_server, mailbox):
    _, mid, mail_from = _sent(tmp_path, smtp_server, mailbox)
    assert re.fullmatch(rf"bounce\+{mid}\.[a-z2-7]{{10}}@example\.com", mail_from), mail_from
    key = tmp_path / "state" / "verp.key"
    assert key.stat().st_size == 32 and key.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("forged", ["failure-notice", "dsn"])
def test_a_bounce_to_the_unsigned_verp_address_is_ordinary_mail(tmp_path, smtp_server,
                                                                 mailbox, forged):
    cfg, mid, _ = _sent(tmp_path, smtp_server, mailbox)
    unsigned = f"bounce+{mid}@example.com"  # what anyone can write: ids are sequential
    message_id = show(cfg, mid)["message_id"]
    mailbox.append(failure_notice(unsigned) if forged == "failure-notice"
                   else dsn(unsigned, message_id))

    assert _poll(cfg) == "bounces: 1 fetched\n"

    assert [r["status"] for r in history(cfg)] == ["sent"]
    assert [r["status"] for r in show(cfg, mid)["recipients"]] == ["sent"]
    [fetched] = _inbox(cfg)
    assert fetched["bounce_of"] is None  # stored, as ordinary mail


def test_a_reply_to_the_signed_verp_address_is_not_a_bounce(tmp_path, smtp_server, mailbox):
    cfg, mid, mail_from = _sent(tmp_path, smtp_server, mailbox)
    reply = (f"From: Ann <ann@example.org>\r\nTo: {mail_from}\r\nSubject: Re: Your quote\r\n"
             "Message-ID: <reply-1@example.org>\r\n\r\nThanks, that looks good.\r\n").encode()
    mailbox.append(reply)

    assert _poll(cfg) == "bounces: 1 fetched\n"

    assert [r["status"] for r in history(cfg)] == ["sent"]
    [fetched] = _inbox(cfg)
    assert fetched["bounce_of"] is None and fetched["subject"] == "Re: Your quote"


def test_a_dsn_to_the_signed_verp_address_marks_the_message_bounced(tmp_path, smtp_server,
                                                                     mailbox):
    cfg, mid, mail_from = _sent(tmp_path, smtp_server, mailbox)
    mailbox.append(dsn(mail_from.upper(), "<unrelated@example.org>"))  # case folded on the way

    assert _poll(cfg) == "bounces: 1 fetched, 1 bounce\n"

    detail = show(cfg, mid)
    assert detail["status"] == "bounced"
    [recipient] = detail["recipients"]
    assert recipient["status"] == "bounced" and recipient["code"] == 550
    assert recipient["reply"] == "5.1.1 smtp; 550 5.1.1 <ann@example.org>: User unknown"
    [fetched] = _inbox(cfg)
    assert fetched["bounce_of"] == mid
