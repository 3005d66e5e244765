"""Composing: the final bytes of a spool message (the VERP envelope sender: verp.py).

Only the header block is rewritten (From, Reply-To, Message-ID, Date; Bcc,
``X-Mailsync-*`` and the originator fields an application may not set -- Sender,
Resent-*, Return-Path, DKIM-Signature -- dropped); every other header line and the body
are kept byte for byte, so that composing stays cheap (the sender handles thousands of
messages a second) and encodings applied by the application survive. Pure: ``now`` is
passed in.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.header import Header
from email.utils import format_datetime, formataddr, make_msgid

from mailsync.config.model import Account, Config
from mailsync.outbound.routing import from_rewrite
from mailsync.outbound.types import Composed, Submission

# A field: its lower-cased name ("" for a line that is not a header) and [start, end) of
# its raw bytes, continuation lines and line end included.
_Field = tuple[str, int, int]


def _split(message: bytes) -> tuple[list[_Field], int, bytes]:
    """The header fields, the offset where the empty line and body start, and the line end.

    The line end is the first line's (CRLF or LF); header lines added use it too.
    """
    first_nl = message.find(b"\n")
    eol = b"\n" if first_nl >= 0 and message[first_nl - 1:first_nl] != b"\r" else b"\r\n"
    fields: list[_Field] = []
    pos, size = 0, len(message)
    while pos < size:
        nl = message.find(b"\n", pos)
        end = size if nl < 0 else nl + 1
        if end - pos <= 2 and message[pos:end] in (b"\n", b"\r\n"):
            break  # the empty line: it and the body are kept as they are
        if message[pos:pos + 1] in (b" ", b"\t") and fields:
            name, start, _ = fields[-1]
            fields[-1] = (name, start, end)  # a folded continuation line
        else:
            colon = message.find(b":", pos, end)
            name = "" if colon <= pos else \
                message[pos:colon].strip().decode("ascii", "replace").lower()
            fields.append((name, pos, end))
        pos = end
    return fields, pos, eol


def _value(message: bytes, field: _Field) -> str:
    """The unfolded, stripped value of a field (for reading only, never written back)."""
    _, start, end = field
    raw = message[start:end]
    value = raw[raw.find(b":") + 1:]
    return value.replace(b"\r", b"").replace(b"\n", b"").strip().decode("utf-8", "replace")


def _one_line(text: str) -> str:
    """``text`` with CR and LF replaced by spaces: inserted header values never fold."""
    return text.replace("\r", " ").replace("\n", " ")


def _mailbox(name: str | None, address: str) -> str:
    """``Name <address>``, the name quoted or RFC 2047-encoded as needed; bare when no name."""
    name = _one_line(name or "").strip()
    if not name or name.isascii():
        return formataddr((name, address))
    # One line of encoded-words (each ≤ 75 characters per RFC 2047), joined by spaces.
    words = Header(name, "utf-8", maxlinelen=75).encode(linesep="\n")
    return f"{words.replace(chr(10), '')} <{address}>"


# Originator fields only mailsync may set: an application's own Sender, Resent-* block,
# Return-Path (the receiving server writes it from MAIL FROM) or DKIM signature (it could
# not survive the rewritten From anyway) would name someone the account is not.
_ORIGINATOR = frozenset(("sender", "return-path", "dkim-signature"))


def _drop(name: str) -> bool:
    """Headers that never leave: blind copies, the spool's own instructions, and the
    originator fields an application may not set (``Sender``, ``Resent-*``,
    ``Return-Path``, ``DKIM-Signature``)."""
    return (name == "bcc" or name in _ORIGINATOR or name.startswith("x-mailsync-")
            or name.startswith("resent-"))


def compose(sub: Submission, account: Account, config: Config, *, now: datetime,
            message_number: int | None = None) -> Composed:
    """The message as it will be sent through ``account``.

    From becomes the account's (or, when no server may send as it, the alias domain's
    ``default_from`` with the account's address in Reply-To); a catchall Reply-To is added
    when the message has none; Message-ID (naming ``message_number`` when given) and
    Date (``now``; naive means UTC) are added when absent.
    """
    message = sub.message
    fields, body_at, eol = _split(message)
    values: dict[str, str] = {}
    for field in fields:
        if field[0] in ("reply-to", "message-id", "date") and not values.get(field[0]):
            values[field[0]] = _value(message, field)

    alias = config.alias_domain
    rewrite = from_rewrite(config, account)
    from_address = rewrite or account.email
    new: list[tuple[str, str]] = [("From", _mailbox(account.sender_name, from_address))]
    replace = {"from"}
    if rewrite is not None:
        new.append(("Reply-To", _mailbox(account.sender_name, account.email)))
        replace.add("reply-to")
    elif not values.get("reply-to") and alias is not None and alias.catchall:
        new.append(("Reply-To", f"{alias.catchall}@{alias.domain}"))
        replace.add("reply-to")  # only blank Reply-To lines are left to replace

    message_id = values.get("message-id", "")
    if not message_id:
        domain = alias.domain if alias is not None else account.email.rpartition("@")[2]
        idstring = None if message_number is None else str(message_number)
        message_id = make_msgid(idstring=idstring, domain=domain)
        new.append(("Message-ID", message_id))
        replace.add("message-id")
    if not values.get("date"):
        when = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
        new.append(("Date", format_datetime(when)))
        replace.add("date")

    parts = [f"{name}: {_one_line(value)}".encode() + eol for name, value in new]
    for field in fields:
        name, start, end = field
        if _drop(name) or name in replace:
            continue
        parts.append(message[start:end])
    parts.append(message[body_at:])
    return Composed(
        data=b"".join(parts),
        from_address=from_address,
        rewritten=rewrite is not None,
        message_id=message_id,
        subject=sub.subject,
    )

