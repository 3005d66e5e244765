"""A stored message's parts as the Message page shows them: headers, the text part, the
HTML part (served apart, sandboxed), the attachments (downloads only).

Parsing is the standard library's (``policy.default``, through :func:`mailsync.mime.parse`);
a part that does not decode is shown with its undecodable bytes replaced, and a message
whose parts nest too deep for it with its headers and why, never an error page.
"""

from __future__ import annotations

from email import policy
from email.message import EmailMessage, Message

from mailsync import mime
from mailsync.values import valueclass


@valueclass
class Attachment:
    """A part to download: its index among the message's parts, its name, type, size."""

    index: int
    filename: str
    content_type: str
    size: int


@valueclass
class Parts:
    """What the page shows of one message."""

    headers: list[tuple[str, str]]
    text: str | None
    html: str | None
    attachments: list[Attachment]
    problem: str | None = None   # why the parts are not shown


def _parse(raw: bytes) -> EmailMessage:
    msg = mime.parse(raw, policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def _headers(msg: Message) -> list[tuple[str, str]]:
    return [(str(k), " ".join(v.split())) for k, v in mime.header_items(msg)]


def _content(part: Message) -> str:
    try:
        value = part.get_content()  # type: ignore[attr-defined]
    except (LookupError, KeyError, AttributeError, ValueError):
        value = part.get_payload(decode=True)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _attachment(part: Message) -> bool:
    return part.get_content_disposition() == "attachment" or (
        part.get_filename() is not None and not part.is_multipart())


def parts(raw: bytes) -> Parts:
    """The headers (each value on one line), the first text/plain and text/html parts
    that are not attachments, and the attachments; of a message whose parts nest too
    deep (:class:`mailsync.mime.TooDeep`), the headers and why."""
    try:
        return _parts(_parse(raw))
    except (mime.TooDeep, RecursionError) as exc:
        # RecursionError: a MIME header (Content-Type...) policy.default cannot follow.
        why = exc if isinstance(exc, mime.TooDeep) else "a header nests too deep to be read"
        return Parts(mime.headers_only(raw), None, None, [],
                     f"The parts are not shown: {why}. Download the raw message to read it.")


def _parts(msg: EmailMessage) -> Parts:
    headers = _headers(msg)
    text = html = None
    attachments: list[Attachment] = []
    for index, part in enumerate(msg.walk()):
        if part.is_multipart():
            continue
        if _attachment(part):
            payload = part.get_payload(decode=True)
            size = len(payload) if isinstance(payload, bytes) else 0
            attachments.append(Attachment(index, part.get_filename() or f"part-{index}",
                                          part.get_content_type(), size))
        elif part.get_content_type() == "text/plain" and text is None:
            text = _content(part)
        elif part.get_content_type() == "text/html" and html is None:
            html = _content(part)
    return Parts(headers, text, html, attachments)


def attachment(raw: bytes, index: int) -> tuple[str, bytes] | None:
    """The name and bytes of the attachment at ``index`` (as :func:`parts` numbers
    them); None when there is no such attachment."""
    try:
        for i, part in enumerate(_parse(raw).walk()):
            if i == index and not part.is_multipart() and _attachment(part):
                payload = part.get_payload(decode=True)
                return part.get_filename() or f"part-{index}", \
                    payload if isinstance(payload, bytes) else b""
    except (mime.TooDeep, RecursionError):  # as parts() says: the raw message only
        return None
    return None
