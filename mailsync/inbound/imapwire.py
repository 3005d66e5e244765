"""imaplib's reader with bounds: no literal over a cap, no reply over a budget.

imaplib reads a literal (``{N}`` at the end of a response line) with one
``self.read(N)``, whole, into memory: a server announcing ``{10000000000}`` would have it
allocate and fill 10 GB. Here ``read`` refuses a literal over ``literal_limit`` (the
server's ``max_message_size``) before reading a byte of it, and ``readline``/``read``
together refuse more than ``reply_limit`` bytes in answer to one command (an endless
stream of untagged lines, each kept by imaplib until the command completes). A refusal
records what was refused in :attr:`Bounded.oversized`, shuts the socket (the
conversation is in an unknown state) and raises ``imaplib.IMAP4.abort``.

imapclient builds its imaplib object in ``IMAPClient._create_IMAP4`` (the greeting is
read by imaplib's constructor), so :class:`Client` overrides that method to build
these classes instead, with the bounds in place from the greeting on. They are the
deadline-keeping classes of :mod:`mailsync.inbound.wire` with the bounds added: the
bounds count what imaplib reads, the deadlines time how fast it comes.
"""

from __future__ import annotations

import contextlib
import imaplib
import re
import socket
from typing import Any

from mailsync.inbound import wire

_FETCH_LINE = re.compile(rb"^\* (\d+) FETCH ")
_UID = re.compile(rb"\bUID (\d+)")
_SLACK = 1 << 20  # reply bytes allowed beyond the literals of one command


class Bounded:
    """Mixin over an imaplib.IMAP4 class: bounded literals and replies (see module)."""

    literal_limit = 25 << 20
    reply_limit = 64 << 20
    oversized: tuple[int, int | None, int | None] | None = None  # (bytes, seq, uid)
    _used = 0
    _line = b""  # the last response line read ("* 3 FETCH (UID 17 BODY[] {N}")
    sock: socket.socket

    def set_limits(self, literal: int, total: int) -> None:
        """At most ``literal`` bytes per literal, ``total`` + 1 MiB per command's reply."""
        self.literal_limit = literal
        self.reply_limit = total + _SLACK

    def new_reply(self) -> None:
        """Start counting again (a new command, or another wait in IDLE)."""
        self._used = 0

    def read(self, size: int) -> bytes:
        if size > self.literal_limit or self._used + size > self.reply_limit:
            self._refuse(size, f"the server announced a literal of {size} bytes, more than "
                         f"the {self.literal_limit} allowed (max_message_size)")
        data: bytes = super().read(size)  # type: ignore[misc]
        self._used += len(data)
        return data

    def readline(self) -> bytes:
        line: bytes = super().readline()  # type: ignore[misc]
        self._used += len(line)
        if self._used > self.reply_limit:
            self._refuse(self._used, f"the server's reply is longer than {self.reply_limit} "
                         "bytes")
        if line.startswith(b"* "):
            self._line = line[:512]
        return line

    def _new_tag(self) -> bytes:
        self.new_reply()
        tag: bytes = super()._new_tag()  # type: ignore[misc]
        return tag

    def _refuse(self, size: int, reason: str) -> None:
        seq = uid = None
        if (m := _FETCH_LINE.match(self._line)) is not None:
            seq = int(m.group(1))
            if (u := _UID.search(self._line)) is not None:
                uid = int(u.group(1))
        self.oversized = (size, seq, uid)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        raise imaplib.IMAP4.abort(reason)


class _Plain(Bounded, wire._Imap):
    def __init__(self, host: str, port: int, timeout: float | None,
                 limits: tuple[int, int]) -> None:
        self.set_limits(*limits)
        super().__init__(host, port, timeout)


class _TLS(Bounded, wire._ImapTLS):
    def __init__(self, host: str, port: int, context: Any, timeout: float | None,
                 limits: tuple[int, int]) -> None:
        self.set_limits(*limits)
        super().__init__(host, port, context, timeout)  # type: ignore[call-arg]


class Client(wire.Client):
    """An IMAPClient whose commands keep to deadlines (:class:`wire.Client`) and whose
    imaplib object is bounded: ``limits`` is (the largest literal, the largest reply to
    one command beyond 1 MiB)."""

    def __init__(self, *args: Any, limits: tuple[int, int], **kwargs: Any) -> None:
        self._limits = limits
        super().__init__(*args, **kwargs)

    def _create_IMAP4(self) -> wire._ImapDeadlines:  # noqa: N802 - imapclient's name
        timeout = getattr(self._timeout, "connect", None)
        if self.ssl:
            return _TLS(self.host, self.port, self.ssl_context, timeout, self._limits)
        return _Plain(self.host, self.port, timeout, self._limits)

    @property
    def wire(self) -> Bounded:
        """The bounded imaplib object (its ``oversized`` after a refusal)."""
        wire: Bounded = self._imap
        return wire
