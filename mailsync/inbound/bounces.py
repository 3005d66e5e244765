"""Bounces: recognise a DSN or a VERP-addressed bounce, and mark what it names.

:func:`classify` (and :func:`parse_bounce`, its bounce only) is pure: bytes, the config
and the VERP key in, a :class:`Verdict` out. Only a correctly signed VERP address
``bounce+<id>.<signature>@<alias domain>`` (see :mod:`mailsync.outbound.verp`) names a
message; an unsigned one (``bounce+1@domain``: anyone can write that) or a wrong
signature is not ours, and the message is stored as ordinary mail. A fetched message is a
bounce when it is

- a DSN (``multipart/report; report-type=delivery-status``, RFC 3464) with at least one
  recipient whose Action is ``failed`` (``delayed``/``delivered``/``relayed`` reports
  are not bounces). With ``alias_domain.bounce`` set, every bounce of a message sent
  from here goes to its signed VERP address, so the DSN must name one (addressed to it,
  or in ``X-Postfix-Sender`` or the returned Return-Path); without a bounce local part
  it is matched by its Original-Envelope-Id or the returned Message-ID, which is weaker
  (whoever received the message knows its Message-ID); or
- addressed to a signed VERP address (To, Cc, Delivered-To, X-Original-To,
  Envelope-To) and plausibly a bounce (:func:`plausible_bounce`: null or MAILER-DAEMON
  envelope sender, From mailer-daemon@/postmaster@, X-Failed-Recipients, or the subject
  of a failure notice), and not an auto-reply (RFC 3834 ``Auto-Submitted``): vacation
  replies and people answering the envelope sender must not mark a message bounced.

:func:`record_bounce` finds the message this daemon sent (by the VERP id, else the DSN's
Original-Envelope-Id, else the Message-ID of the returned headers) and marks its
recipients ``bounced`` in the caller's transaction (the one storing the fetched message).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence
from email.message import Message
from email.parser import HeaderParser
from email.policy import compat32

from mailsync import mime
from mailsync.config.deliverability import Webhook
from mailsync.config.model import Config
from mailsync.inbound.message import Headers, first, parse_headers, text
from mailsync.outbound import suppression
from mailsync.outbound.verp import VerpAddress, VerpKey, read_verp
from mailsync.outbound.webhooks import enqueue
from mailsync.store.sql import indexed
from mailsync.values import valueclass

_ADDRESSED = ("To", "Cc", "Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To")
_SMTP_CODE = re.compile(r"^\s*smtp\s*;\s*([245][0-9][0-9])\b", re.IGNORECASE)
_XTEXT = re.compile(r"\+([0-9A-Fa-f]{2})")
_REPORT_TYPE = re.compile(r"report-type\s*=\s*\"?([A-Za-z0-9_.-]+)", re.IGNORECASE)
_DAEMONS = ("mailer-daemon", "postmaster", "mail-daemon", "mailerdaemon")
# The subjects of the failure notices real MTAs send without a DSN (qmail, Exchange,
# Gmail, Exim, Sendmail, Postfix, Lotus Notes, ...); at the start, so "Re: ..." is not one.
_FAILURE_SUBJECT = re.compile(
    r"^\s*(?:failure notice|undeliverable\b|undelivered mail\b|undeliverable mail\b"
    r"|delivery status notification \(failure\)|mail delivery failed|returned mail\b"
    r"|delivery (?:has )?failed|delivery failure|delivery notification: delivery has failed"
    r"|non-?delivery|nondeliverable|mail system error|message not delivered"
    r"|could not deliver|mail could not be delivered)", re.IGNORECASE)


@valueclass
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


@valueclass
class Bounce:
    """What a bounce says: which sent message (by any of three keys), which recipients."""

    verp_id: int | None
    envelope_id: str | None
    message_ids: tuple[str, ...]
    recipients: tuple[FailedRecipient, ...]
    dsn: bool
    subject: str | None = None


@valueclass
class Verdict:
    """What a fetched message is: a ``bounce``, or (``refused``) why a message naming one
    of our VERP addresses is not taken as one, and the message id it named (``claimed``).

    ``refused``: ``unsigned`` (``bounce+<id>@``, as before signing or forged),
    ``bad_signature`` (forged, truncated, or signed with a key this state_dir no longer
    has), ``not_a_bounce`` (correctly signed, but neither a DSN nor a plausible bounce:
    a person answering the envelope sender, an auto-reply).
    """

    bounce: Bounce | None = None
    refused: str | None = None
    claimed: int | None = None


NOT_A_BOUNCE = Verdict()


def parse_bounce(raw: bytes, config: Config, key: VerpKey | None,
                 fields: Headers | None = None) -> Bounce | None:
    """The bounce ``raw`` is, or None when it is not one (see the module docstring)."""
    return classify(raw, config, key, fields).bounce


def classify(raw: bytes, config: Config, key: VerpKey | None,
             fields: Headers | None = None) -> Verdict:
    """Whether ``raw`` is a bounce of a message sent from here (see the module docstring).

    ``key``: the VERP key (None: no VERP address is signed right); ``fields``: the
    message's parsed headers, when the caller has them already.
    """
    fields = parse_headers(raw) if fields is None else fields
    addressed = _verp_in([v for name in _ADDRESSED for v in fields.get(name.lower(), ())],
                         config, key)
    content_type = first(fields, "content-type") or ""
    report = _REPORT_TYPE.search(content_type)
    if (content_type.split(";")[0].strip().lower() == "multipart/report"
            and report is not None and report.group(1).lower() == "delivery-status"):
        return _parse_dsn(raw, config, key, addressed, text(first(fields, "subject")))
    if addressed is None:
        return NOT_A_BOUNCE
    if not addressed.signed:
        return Verdict(refused=addressed.problem, claimed=addressed.message_id)
    if _auto_reply(fields) or not plausible_bounce(fields):
        return Verdict(refused="not_a_bounce", claimed=addressed.message_id)
    bounce = Bounce(addressed.message_id, None, (), (), dsn=False,
                    subject=text(first(fields, "subject")))
    return Verdict(bounce)


def plausible_bounce(fields: Headers) -> bool:
    """Whether a message that is not a DSN looks like a bounce as real MTAs send them: a
    null or MAILER-DAEMON envelope sender (``Return-Path: <>``), From mailer-daemon@ or
    postmaster@, an ``X-Failed-Recipients`` field (Exim), or the subject of a failure
    notice (qmail's "failure notice", Exchange's "Undeliverable:", Postfix's "Undelivered
    Mail Returned to Sender", ...). Anyone can write these: the VERP signature is what
    keeps strangers out; this keeps out replies written by people."""
    for value in fields.get("return-path", ()):
        path = (text(value) or "").strip().strip("<>").strip()
        if not path or path.partition("@")[0].lower() in _DAEMONS:
            return True
    try:
        senders = mime.addresses([text(v) or "" for v in fields.get("from", ())])
    except mime.TooDeep:
        senders = []
    if any(address.partition("@")[0].lower() in _DAEMONS for _, address in senders):
        return True
    if "x-failed-recipients" in fields:
        return True
    return bool(_FAILURE_SUBJECT.match(text(first(fields, "subject")) or ""))


def _parse_dsn(raw: bytes, config: Config, key: VerpKey | None,
               verp: VerpAddress | None, subject: str | None) -> Verdict:
    try:
        message = mime.parse(raw, compat32)
    except mime.TooDeep:
        return NOT_A_BOUNCE  # no report can be read from it: stored as a message
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
                verp = _better(verp, _verp_in(_all(per_message, "X-Postfix-Sender"),
                                              config, key))
                failed.extend(r for r in map(_recipient, per_recipient) if r is not None)
        elif ctype in ("text/rfc822-headers", "message/rfc822", "message/global-headers"):
            returned_headers = _returned_headers(part)
            if returned_headers is not None:
                mid = _text(returned_headers.get("Message-ID"))
                if mid:
                    returned.append(mid)
                verp = _better(verp, _verp_in(_all(returned_headers, "Return-Path"),
                                              config, key))
    if not failed:
        return NOT_A_BOUNCE  # a delay or success notice, or an unreadable report
    if verp is not None and verp.signed:
        return Verdict(Bounce(verp.message_id, envelope_id, tuple(returned), tuple(failed),
                              dsn=True, subject=subject))
    alias = config.alias_domain
    if alias is not None and alias.bounce:
        # Every bounce this daemon caused goes to a signed VERP address: this one is a
        # bounce of someone else's mail (or forged).
        if verp is None:
            return NOT_A_BOUNCE
        return Verdict(refused=verp.problem, claimed=verp.message_id)
    return Verdict(Bounce(None, envelope_id, tuple(returned), tuple(failed), dsn=True,
                          subject=subject))


def _better(found: VerpAddress | None, other: VerpAddress | None) -> VerpAddress | None:
    """The first signed address, else the first one found."""
    if found is None or (not found.signed and other is not None and other.signed):
        return other
    return found


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


def _verp_in(values: list[str], config: Config, key: VerpKey | None) -> VerpAddress | None:
    """The first correctly signed VERP address among header values, else the first VERP
    address there is (unsigned or badly signed), else None."""
    alias = config.alias_domain
    if alias is None or not alias.bounce:
        return None
    prefix = f"{alias.bounce}+".lower()
    if not any(prefix in v.lower() for v in values):  # cheap test before parsing addresses
        return None
    found: VerpAddress | None = None
    try:
        pairs = mime.addresses(values)
    except mime.TooDeep:
        return None  # no address can be read from them
    for _, address in pairs:
        found = _better(found, read_verp(config, key, address) if address else None)
        if found is not None and found.signed:
            break
    return found


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

@valueclass
class BounceOutcome:
    """What recording a bounce did: the message, its account, the recipients marked."""

    message: int
    account: str | None
    recipients: tuple[str, ...]
    message_bounced: bool
    detail: str


def find_message(conn: sqlite3.Connection, bounce: Bounce) -> int | None:
    """The id of the sent message a bounce is about, or None when it is not ours.

    A signed VERP id is the only key it is looked up by (a message pruned since is not
    looked for by its Message-ID: that could name another message)."""
    if bounce.verp_id is not None:
        row = conn.execute("SELECT id FROM messages WHERE id = ?", (bounce.verp_id,)).fetchone()
        return int(row[0]) if row else None
    for candidate in ([bounce.envelope_id] if bounce.envelope_id else []) + list(
            bounce.message_ids):
        bare = candidate.strip().strip("<>")
        row = conn.execute("SELECT id FROM messages WHERE message_id IN (?, ?)"
                           " ORDER BY id DESC LIMIT 1",
                           (indexed(f"<{bare}>"), indexed(bare))).fetchone()
        if row:
            return int(row[0])
    return None


def record_bounce(conn: sqlite3.Connection, bounce: Bounce, now: float,
                  suppress_for: float | None = None,
                  webhooks: Sequence[Webhook] = ()) -> BounceOutcome | None:
    """Mark the recipients a bounce names ``bounced`` (with status and diagnostic), the
    message too when none of its recipients is left, and add an event (and the
    ``bounced`` event of ``webhooks``). Runs in the caller's transaction. None when the
    bounce is not about a message sent from here. ``suppress_for``: the recipients a DSN
    reports hard-failed (5.x.x) are put on the suppression list for that many seconds
    (mailsync/outbound/suppression.py)."""
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
                if suppress_for is not None and suppression.hard(r.status, r.smtp_code):
                    suppression.add(conn, address, "bounced", r.reply, now,
                                    now + suppress_for, mid)
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
    account, status = conn.execute("SELECT account, status FROM messages WHERE id = ?",
                                   (mid,)).fetchone()
    if marks and webhooks:
        enqueue(conn, webhooks, "bounced", mid, now, status=status, detail=detail,
                recipients=({"address": a, "status": "bounced", "code": c, "reply": r}
                            for a, c, r in marks))
    return BounceOutcome(mid, account, tuple(a for a, _, _ in marks), bounced, detail)
