"""A message's MIME structure read by the standard library, within a depth it can follow.

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
"""

from __future__ import annotations

from email import message_from_bytes
from email.message import Message
from typing import Any

# Multipart levels below the top one: far above real mail's handful, far below Python's
# recursion limit (1,000 frames, which the parser reaches at about 960 levels).
MAX_DEPTH = 50


class TooDeep(ValueError):
    """A message whose MIME parts nest deeper than :data:`MAX_DEPTH`."""

    def __init__(self) -> None:
        super().__init__(f"its MIME parts nest deeper than {MAX_DEPTH} levels")


def parse(raw: bytes, policy: Any) -> Message:
    """``email.message_from_bytes(raw, policy=policy)``, or TooDeep."""
    try:
        message: Message = message_from_bytes(raw, policy=policy)
    except RecursionError:
        raise TooDeep() from None
    todo: list[tuple[Message, int]] = [(message, 0)]
    while todo:  # the depth, without recursion
        part, depth = todo.pop()
        if depth > MAX_DEPTH:
            raise TooDeep()
        payload = part.get_payload() if part.is_multipart() else None
        if isinstance(payload, list):
            todo.extend((child, depth + 1) for child in payload if isinstance(child, Message))
    return message
