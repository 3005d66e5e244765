"""A message's MIME structure and its addresses read by the standard library, within a
depth it can follow.

The email package follows nested multiparts by recursion: its parser (a generator per
level), ``Message.walk`` and ``get_body`` alike. A message that nests its parts a
thousand deep (80 KB, which anyone can send to a mailbox mailsync polls) raises
RecursionError in the middle of a poll, and at every poll after it: the mailbox would be
wedged on it. :func:`parse` reads a message, refusing with :class:`TooDeep` one whose
parts nest deeper than :data:`MAX_DEPTH` (real mail nests a handful: a forwarded
message's alternative with its related images is 4), so what walks the message after it
stays far from the recursion limit. Each reader decides what such a message is: not a
delivery report (the poller stores it as a message), a page or a ``show`` without its
parts.

Addresses likewise: ``email.utils.getaddresses`` reads comments, ``(a (b (c)))``, by
recursion, and raised RecursionError on a To header of 5,000 nested ones out of the
spool's parser (the pickup failed on the file at every pass) and out of the bounce
classifier. :func:`addresses` raises TooDeep instead.
"""

from __future__ import annotations

from email.utils import getaddresses
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from email.message import Message

# The parser, the message class and the policies are imported where a message is read:
# the spool's parser imports this module for addresses, and `mailsync send` must not pay
# for email.policy's header registry (~25 ms).

# Multipart levels below the top one: far above real mail's handful, far below Python's
# recursion limit (1,000 frames, which the parser reaches at about 960 levels).
MAX_DEPTH = 50


class TooDeep(ValueError):
    """A message whose MIME parts nest deeper than :data:`MAX_DEPTH`, or an address
    whose comments nest deeper than the address parser can follow."""

    def __init__(self, why: str = f"its MIME parts nest deeper than {MAX_DEPTH} levels"
                 ) -> None:
        super().__init__(why)


def parse(raw: bytes, policy: Any) -> Message:
    """``email.message_from_bytes(raw, policy=policy)``, or TooDeep."""
    from email import message_from_bytes
    from email.message import Message

    try:
        message: Message = message_from_bytes(raw, policy=policy)
    except RecursionError:  # parts nested ~960 deep, or a MIME header's comments
        raise TooDeep("its MIME structure nests too deep to be read") from None
    todo: list[tuple[Message, int]] = [(message, 0)]
    while todo:  # the depth, without recursion
        part, depth = todo.pop()
        if depth > MAX_DEPTH:
            raise TooDeep()
        payload = part.get_payload() if part.is_multipart() else None
        if isinstance(payload, list):
            todo.extend((child, depth + 1) for child in payload if isinstance(child, Message))
    return message


def addresses(values: list[str]) -> list[tuple[str, str]]:
    """``email.utils.getaddresses(values)``, or TooDeep."""
    try:
        return getaddresses(values)
    except RecursionError:
        raise TooDeep("its comments nest too deep to be read") from None


def header_items(message: Message) -> list[tuple[str, str]]:
    """The message's headers as text, each read by the message's policy, or, where that
    parser cannot follow it (a comment nested thousands deep: policy.default parses a
    header by recursion when it is read), as it came, unfolded."""
    out = []
    for name, raw in message.raw_items():
        try:
            value = str(message.policy.header_fetch_parse(name, raw))
        except RecursionError:
            value = " ".join(str(raw).split())
        out.append((name, value))
    return out


def headers_only(raw: bytes) -> list[tuple[str, str]]:
    """The message's top header block alone, each value decoded (RFC 2047) where it can
    be: what a reader of a message :func:`parse` refused still shows. Read without
    policy.default's structured parsing, which a refused message may defeat."""
    from email.header import decode_header, make_header
    from email.parser import BytesHeaderParser
    from email.policy import compat32

    out = []
    for name, value in BytesHeaderParser(policy=compat32).parsebytes(raw).raw_items():
        try:
            text = str(make_header(decode_header(value)))
        except Exception:  # noqa: BLE001 - a broken encoded word: the value as it came
            text = str(value)
        out.append((name, " ".join(text.split())))
    return out
