"""The indexed headers of a fetched message (pure: bytes in, values out).

Only the header block is read (a fetched message can be megabytes), with a small
unfolding parser rather than the email package's feed parser, which costs ten times
as much and is the largest part of a poll's CPU time. Values are decoded as UTF-8
(RFC 6532) with replacement, and encoded words (RFC 2047) are decoded for display.
"""

from __future__ import annotations

import re
from datetime import UTC
from email.header import decode_header, make_header
from email.utils import parsedate_to_datetime

from mailsync.store.sql import indexed
from mailsync.values import valueclass

_END_OF_HEADERS = re.compile(rb"\r?\n\r?\n")
_LINES = re.compile(r"\r?\n")


@valueclass
class Summary:
    """What the store indexes of a message: Message-ID, From, To, Subject, Date, size."""

    message_id: str | None
    from_address: str | None
    to_address: str | None
    subject: str | None
    date: str | None
    sent_at: float | None
    size: int


Headers = dict[str, list[str]]
"""Header fields by lower-case name, each with its values in order (unfolded)."""


def header_block(raw: bytes) -> bytes:
    """The header section of ``raw`` (up to and including the blank line)."""
    end = _END_OF_HEADERS.search(raw)
    return raw if end is None else raw[: end.end()]


def parse_headers(raw: bytes) -> Headers:
    """The header fields of ``raw`` (body not read); lines without a colon are skipped."""
    fields: Headers = {}
    last: list[str] | None = None
    for line in _LINES.split(header_block(raw).decode("utf-8", "replace")):
        if not line:
            continue
        if line[0] in " \t":
            if last is not None:
                last[-1] += line  # unfolding removes only the line break (RFC 5322 2.2.3)
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or " " in name.strip():
            last = None
            continue
        last = fields.setdefault(name.strip().lower(), [])
        last.append(value.lstrip())
    return fields


def first(fields: Headers, name: str) -> str | None:
    """The first value of a header field (``name`` in lower case), or None."""
    values = fields.get(name)
    return values[0] if values else None


def text(value: str | None) -> str | None:
    """A header value as one line of Unicode text, encoded words decoded."""
    if value is None:
        return None
    decoded = value
    if "=?" in value:
        try:
            decoded = str(make_header(decode_header(value)))
        except (ValueError, LookupError, UnicodeError):
            decoded = value
    return " ".join(decoded.split())


def summarize(raw: bytes, fields: Headers | None = None) -> Summary:
    """The indexed headers of ``raw``; missing headers are None."""
    fields = parse_headers(raw) if fields is None else fields
    date = text(first(fields, "date"))
    sent_at: float | None = None
    if date:
        try:
            when = parsedate_to_datetime(date)
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            sent_at = when.timestamp()
        except (ValueError, TypeError, OverflowError, IndexError):
            sent_at = None
    return Summary(
        # Each as its column holds it (store.sql.indexed: a hostile header's length
        # cannot make the store refuse the batch on PostgreSQL).
        message_id=indexed(text(first(fields, "message-id")) or None),
        from_address=indexed(text(first(fields, "from"))),
        to_address=indexed(text(first(fields, "to"))),
        subject=indexed(text(first(fields, "subject"))),
        date=date,
        sent_at=sent_at,
        size=len(raw),
    )


def message_id_of(header_bytes: bytes) -> str | None:
    """The Message-ID in a header block (as fetched with HEADER.FIELDS), normalised and cut
    as the store holds it (:func:`summarize`), so that the two compare equal."""
    return indexed(text(first(parse_headers(header_bytes), "message-id")) or None)
