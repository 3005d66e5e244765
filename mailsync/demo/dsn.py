"""The delivery status notification the demo's sink sends for an undeliverable recipient:
a non-delivery report shaped like Postfix's (RFC 3464), which the daemon's bounce parser
(:mod:`mailsync.inbound.bounces`) reads as it reads a real one."""

from __future__ import annotations

from datetime import datetime
from email.utils import format_datetime, make_msgid

DIAGNOSTIC = "smtp; 550 5.1.1 user unknown"


def lf(data: bytes) -> bytes:
    """Maildir files end lines with LF, not with SMTP's CRLF."""
    return data.replace(b"\r\n", b"\n")


def header_block(message: bytes) -> bytes:
    """The header section of a message (without the blank line that ends it)."""
    message = lf(message)
    head, sep, _ = message.partition(b"\n\n")
    return head if sep else message.rstrip(b"\n")



# -- the delivery status notification --------------------------------------------------

def build_dsn(*, sender: str, failed: list[str], original: bytes, reporting_mta: str,
              queue_id: str, arrival: datetime, diagnostic: str = DIAGNOSTIC) -> bytes:
    """A non-delivery report shaped like Postfix's (RFC 3464): a text part, a
    ``message/delivery-status`` part (one ``Action: failed`` block per recipient) and the
    original headers as ``text/rfc822-headers``; addressed to ``sender``."""
    boundary = f"{queue_id}.{int(arrival.timestamp())}/{reporting_mta}"
    status = diagnostic.split()[2] if len(diagnostic.split()) > 2 else "5.0.0"
    reasons = "\n".join(f"<{r}>: {diagnostic.split(';', 1)[-1].strip()}" for r in failed)
    blocks = "\n".join(
        f"Final-Recipient: rfc822; {r}\nOriginal-Recipient: rfc822;{r}\nAction: failed\n"
        f"Status: {status}\nDiagnostic-Code: {diagnostic}\n"
        for r in failed)
    head = (
        f"Return-Path: <>\n"
        f"Delivered-To: {sender}\n"
        f"Date: {format_datetime(arrival)}\n"
        f"From: MAILER-DAEMON@{reporting_mta} (Mail Delivery System)\n"
        f"Subject: Undelivered Mail Returned to Sender\n"
        f"To: {sender}\n"
        f"Auto-Submitted: auto-replied\n"
        f"MIME-Version: 1.0\n"
        f"Content-Type: multipart/report; report-type=delivery-status;\n"
        f"\tboundary=\"{boundary}\"\n"
        f"Content-Transfer-Encoding: 8bit\n"
        f"Message-Id: {make_msgid(queue_id, domain=reporting_mta)}\n"
        f"\n"
        f"This is a MIME-encapsulated message.\n"
        f"\n"
        f"--{boundary}\n"
        f"Content-Description: Notification\n"
        f"Content-Type: text/plain; charset=us-ascii\n"
        f"\n"
        f"This is the mail system at host {reporting_mta}.\n"
        f"\n"
        f"I'm sorry to have to inform you that your message could not\n"
        f"be delivered to one or more recipients. It's attached below.\n"
        f"\n"
        f"                   The mail system\n"
        f"\n"
        f"{reasons}\n"
        f"\n"
        f"--{boundary}\n"
        f"Content-Description: Delivery report\n"
        f"Content-Type: message/delivery-status\n"
        f"\n"
        f"Reporting-MTA: dns; {reporting_mta}\n"
        f"X-Postfix-Queue-ID: {queue_id}\n"
        f"X-Postfix-Sender: rfc822; {sender}\n"
        f"Arrival-Date: {format_datetime(arrival)}\n"
        f"\n"
        f"{blocks}"
        f"\n"
        f"--{boundary}\n"
        f"Content-Description: Undelivered Message Headers\n"
        f"Content-Type: text/rfc822-headers\n"
        f"Content-Transfer-Encoding: 8bit\n"
        f"\n"
    ).encode()
    return head + header_block(original) + f"\n\n--{boundary}--\n".encode("ascii")

