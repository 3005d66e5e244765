"""Bounces: recognise a DSN or a VERP-addressed bounce, and mark what it names.

:func:`parse_bounce` is pure (bytes and the config in, a :class:`Bounce` or None out).
A fetched message is a bounce when it is

- a DSN (``multipart/report; report-type=delivery-status``, RFC 3464) with at least one
  recipient whose Action is ``failed``: ``delayed``/``delivered``/``relayed`` reports are
  not bounces; or
- addressed to ``bounce+<id>@<alias domain>`` (To, Cc, Delivered-To, X-Original-To,
  Envelope-To) and not an auto-reply (RFC 3834 ``Auto-Submitted``): vacation replies go
  to the envelope sender too, and must not mark a message bounced.

:func:`record_bounce` finds the message this daemon sent (by the VERP id, else the DSN's
Original-Envelope-Id, else the Message-ID of the returned headers) and marks its
recipients ``bounced`` in the caller's transaction (the one storing the fetched message).
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from email import message_from_bytes
from email.message import Message
from email.parser import HeaderParser
from email.policy import compat32
from email.utils import getaddresses

from mailsync.config.model import Config
from mailsync.inbound.message import Headers, first, parse_headers, text
from mailsync.outbound.compose import parse_verp

_ADDRESSED = ("To", "Cc", "Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To")
_SMTP_CODE = re.compile(r"^\s*smtp\s*;\s*([245][0-9][0-9])\b", re.IGNORECASE)
_XTEXT = re.compile(r"\+([0-9A-Fa-f]{2})")
_REPORT_TYPE = re.compile(r"report-type\s*=\s*\"?([A-Za-z0-9_.-]+)", re.IGNORECASE)


@dataclass(frozen=True)
class FailedRecipient:
    """One recipient a DSN reports as failed: address, Status and Diagnostic-Code."""

    address: str
    original: str | None
    status: str | None
    diagnostic: str | None

    @property
    def smtp_code(self) -> int | None:
        """The SMTP reply code in an ``smtp;`` Diagnostic-Code (550), if there is one."""
        match = _SMTP_CODE.match(self.diagnostic or "")
        return int(match.group(1)) if match else None

    @property
    def reply(self) -> str:
        """What the history keeps as the recipient's reply: status, then diagnostic."""
        return " ".join(p for p in (self.status, self.diagnostic) if p) or "bounced"


@dataclass(frozen=True)
class Bounce:
    """What a bounce says: which sent message (by any of three keys), which recipients."""

    verp_id: int | None
    envelope_id: str | None
    message_ids: tuple[str, ...]
    recipients: tuple[FailedRecipient, ...]
    dsn: bool
    subject: str | None = None


def parse_bounce(raw: bytes, config: Config, fields: Headers | None = None) -> Bounce | None:
    """The bounce ``raw`` is, or None when it is not one (see the module docstring).

    ``fields``: the message's parsed headers, when the caller has them already.
    """
    fields = parse_headers(raw) if fields is None else fields
    verp = _verp_in([v for name in _ADDRESSED for v in fields.get(name.lower(), ())], config)
    content_type = first(fields, "content-type") or ""
    report = _REPORT_TYPE.search(content_type)
    if (content_type.split(";")[0].strip().lower() == "multipart/report"
            and report is not None and report.group(1).lower() == "delivery-status"):
        return _parse_dsn(raw, config, verp, text(first(fields, "subject")))
    if verp is None or _auto_reply(fields):
        return None
    return Bounce(verp, None, (), (), dsn=False, subject=text(first(fields, "subject")))


def _parse_dsn(raw: bytes, config: Config, verp: int | None,
               subject: str | None) -> Bounce | None:
    message = message_from_bytes(raw, policy=compat32)
    envelope_id: str | None = None
    failed: list[FailedRecipient] = []
    returned: list[str] = []
    for part in message.walk():
        ctype = part.get_content_type()
        if ctype in ("message/delivery-status", "message/global-delivery-status"):
            blocks = _status_blocks(part)
            if blocks:
                per_message, per_recipient = blocks[0], blocks[1:]
                envelope_id = _xtext(_text(per_message.get("Original-Envelope-Id")))
                verp = verp or _verp_in(_all(per_message, "X-Postfix-Sender"), config)
                failed.extend(r for r in map(_recipient, per_recipient) if r is not None)
        elif ctype in ("text/rfc822-headers", "message/rfc822", "message/global-headers"):
            returned_headers = _returned_headers(part)
            if returned_headers is not None:
                mid = _text(returned_headers.get("Message-ID"))
                if mid:
                    returned.append(mid)
                verp = verp or _verp_in(_all(returned_headers, "Return-Path"), config)
    if not failed:
        return None  # a delay or success notice, or an unreadable report
    return Bounce(verp, envelope_id, tuple(returned), tuple(failed), dsn=True, subject=subject)


def _status_blocks(part: Message) -> list[Message]:
    """The field groups of a delivery-status part (per-message first, then recipients)."""
    payload = part.get_payload()
    if isinstance(payload, list):  # compat32 parses message/delivery-status into blocks
        return [p for p in payload if isinstance(p, Message)]
    body = part.get_payload(decode=True)
    textual = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(payload)
    chunks = re.split(r"\r?\n[ \t]*\r?\n", textual.strip())
    return [HeaderParser(policy=compat32).parsestr(c) for c in chunks if c.strip()]


def _returned_headers(part: Message) -> Message | None:
    payload = part.get_payload()
    if isinstance(payload, list):  # message/rfc822: the returned message, parsed
        first = payload[0] if payload else None
        return first if isinstance(first, Message) else None
    body = part.get_payload(decode=True)
    textual = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(payload)
    return HeaderParser(policy=compat32).parsestr(textual, headersonly=True)


def _recipient(fields: Message) -> FailedRecipient | None:
    action = (_text(fields.get("Action")) or "").lower()
    status = _text(fields.get("Status"))
    failed = action == "failed" or (not action and bool(status) and str(status)[:1] == "5")
    if not failed:
        return None
    final = _address(_text(fields.get("Final-Recipient")))
    original = _address(_text(fields.get("Original-Recipient")))
    address = final or original
    if address is None:
        return None
    return FailedRecipient(address, original, status.split()[0] if status else None,
                           _text(fields.get("Diagnostic-Code")))


def _address(value: str | None) -> str | None:
    """``rfc822; user@example.org`` → ``user@example.org``."""
    if not value:
        return None
    _, _, address = value.rpartition(";")
    address = address.strip().strip("<>").strip()
    return address or None


def _xtext(value: str | None) -> str | None:
    """Decode RFC 3461 xtext (``+2B`` for '+')."""
    if not value:
        return None
    return _XTEXT.sub(lambda m: chr(int(m.group(1), 16)), value.strip())


def _verp_in(values: list[str], config: Config) -> int | None:
    """The message id of the first VERP address among header values."""
    alias = config.alias_domain
    if alias is None or not alias.bounce:
        return None
    prefix = f"{alias.bounce}+".lower()
    if not any(prefix in v.lower() for v in values):  # cheap test before parsing addresses
        return None
    for _, address in getaddresses(values):
        found = parse_verp(config, address) if address else None
        if found is not None:
            return found
    return None


def _all(headers: Message, name: str) -> list[str]:
    return [str(v) for v in (headers.get_all(name) or [])]


def _text(value: object) -> str | None:
    return None if value is None else text(str(value))


def _auto_reply(fields: Headers) -> bool:
    """RFC 3834 auto-replies (vacation and the like), which are not bounces."""
    auto = (text(first(fields, "auto-submitted")) or "no").lower()
    precedence = (text(first(fields, "precedence")) or "").lower()
    return auto != "no" or "x-autoreply" in fields or precedence == "auto_reply"


# -- the history ---------------------------------------------------------------------------

@dataclass(frozen=True)
class BounceOutcome:
    """What recording a bounce did: the message, its account, the recipients marked."""

    message: int
    account: str | None
    recipients: tuple[str, ...]
    message_bounced: bool
    detail: str


def find_message(conn: sqlite3.Connection, bounce: Bounce) -> int | None:
    """The id of the sent message a bounce is about, or None when it is not ours."""
    if bounce.verp_id is not None:
        row = conn.execute("SELECT id FROM messages WHERE id = ?", (bounce.verp_id,)).fetchone()
        if row:
            return int(row[0])
    for candidate in ([bounce.envelope_id] if bounce.envelope_id else []) + list(
            bounce.message_ids):
        bare = candidate.strip().strip("<>")
        row = conn.execute("SELECT id FROM messages WHERE message_id IN (?, ?)"
                           " ORDER BY id DESC LIMIT 1", (f"<{bare}>", bare)).fetchone()
        if row:
            return int(row[0])
    return None


def record_bounce(conn: sqlite3.Connection, bounce: Bounce, now: float) -> BounceOutcome | None:
    """Mark the recipients a bounce names ``bounced`` (with status and diagnostic), the
    message too when none of its recipients is left, and add an event. Runs in the
    caller's transaction. None when the bounce is not about a message sent from here."""
    mid = find_message(conn, bounce)
    if mid is None:
        return None
    rows = conn.execute("SELECT address, status FROM recipients WHERE message = ?",
                        (mid,)).fetchall()
    by_address = {str(a).lower(): str(a) for a, _ in rows}
    marks: list[tuple[str, int | None, str]] = []
    if bounce.recipients:
        for r in bounce.recipients:
            address = by_address.get(r.address.lower()) or by_address.get(
                (r.original or "").lower())
            if address is None and len(by_address) == 1:
                address = next(iter(by_address.values()))  # forwarded or rewritten
            if address is not None:
                marks.append((address, r.smtp_code, r.reply))
        detail = "; ".join(f"{r.address}: {r.reply}" for r in bounce.recipients)
    else:
        reason = f"bounce received: {bounce.subject}" if bounce.subject else "bounce received"
        marks = [(str(a), None, reason) for a, status in rows if status != "failed"]
        detail = reason
    conn.executemany(
        "UPDATE recipients SET status = 'bounced', code = ?, reply = ?, updated_at = ?"
        " WHERE message = ? AND address = ?",
        [(code, reply, now, mid, address) for address, code, reply in marks])
    left = conn.execute("SELECT COUNT(*) FROM recipients WHERE message = ?"
                        " AND status NOT IN ('bounced', 'failed')", (mid,)).fetchone()[0]
    bounced = bool(marks) and left == 0
    if bounced:
        conn.execute("UPDATE messages SET status = 'bounced', updated_at = ?, last_error = ?"
                     " WHERE id = ?", (now, detail, mid))
    conn.execute("INSERT INTO events (message, at, status, detail) VALUES (?, ?, 'bounced', ?)",
                 (mid, now, detail))
    account = conn.execute("SELECT account FROM messages WHERE id = ?", (mid,)).fetchone()[0]
    return BounceOutcome(mid, account, tuple(a for a, _, _ in marks), bounced, detail)
