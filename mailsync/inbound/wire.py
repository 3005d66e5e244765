"""IMAP and POP3 client classes whose commands keep to deadlines (mailsync.deadline.Deadline).

A socket timeout starts again at every byte received, so a server answering one byte a
second would hold a poll as long as it likes. Here each command's answer (the greeting
included) must be complete within the server's ``timeout``, plus one second for every
:data:`~mailsync.deadline.MIN_RATE` bytes (64 KiB) it brings: a big FETCH or RETR that keeps
coming at that rate is never cut, a dripped answer is cut after ``timeout``. A command
past its deadline raises :class:`~mailsync.deadline.DeadlineExceeded`, a TimeoutError that
``inbound.wireerrors.translate`` words as ``EXAMINE: no complete reply within 30s``
(kind ``timeout``).

How: imaplib and poplib read through ``self.file`` (``sock.makefile("rb")``, assigned
at connect and after STARTTLS/STLS); :class:`_DeadlineFile` makes that a
:func:`mailsync.deadline.reader`, which gives each socket read the time left. Each command
starts its deadline where the library writes it (``_command``/``_new_tag`` for imaplib,
imapclient's ``_raw_command``; ``_putcmd`` for poplib). IMAP IDLE waits on purpose:
:meth:`Client.idle_check` lifts the deadline while it looks for what the server sent.
(Python 3.14's imaplib reads through its own buffer instead of ``file``: there, only
the writes keep to the deadline.)
"""

from __future__ import annotations

import contextlib
import imaplib
import poplib
import socket
import sys
from typing import Any

import imapclient  # type: ignore[import-untyped]
from imapclient import imap4, tls

from mailsync.deadline import MIN_RATE, Deadline, reader
from mailsync.inbound import early

# POP3 commands a deadline is named after; any other line (an AUTH continuation, which
# holds credentials) goes on under the name of the command it continues.
_POP3_VERBS = frozenset({"USER", "PASS", "APOP", "AUTH", "STAT", "LIST", "RETR", "DELE",
                         "NOOP", "RSET", "QUIT", "TOP", "UIDL", "CAPA", "STLS", "UTF8"})


class _DeadlineFile:
    """``self.file``, as the library assigns it, read through :func:`deadline.reader`."""

    sock: Any
    deadline: Deadline
    _deadline_file: Any = None

    @property
    def file(self) -> Any:
        return self._deadline_file

    @file.setter
    def file(self, value: Any) -> None:
        if value is not None:  # sock.makefile("rb") of the socket now in use
            value.close()
            value = reader(self.sock, self.deadline)
        self._deadline_file = value


def _connecting(owner: Any, timeout: float | None) -> None:
    """The deadline of a new connection: its connect and greeting, within ``timeout``."""
    owner.deadline = Deadline(timeout if timeout is not None else 30.0, rate=MIN_RATE)
    owner.deadline.start("greeting")


# -- POP3 ----------------------------------------------------------------------------


class Pop3(_DeadlineFile, poplib.POP3):
    """poplib.POP3 whose commands keep to deadlines (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().__init__(*args, **kwargs)
        except BaseException:
            # poplib leaves the socket open when the greeting fails.
            if getattr(self, "sock", None) is not None:
                with contextlib.suppress(OSError):
                    self.close()
            raise

    # (typeshed leaves poplib's and imaplib's private methods out: hence the ignores)
    def _create_socket(self, timeout: float) -> socket.socket:
        _connecting(self, timeout)
        sock = early.take(self.host, self.port, timeout)  # connected while importing
        if sock is not None:
            return self._over(sock)
        made: socket.socket = super()._create_socket(timeout)  # type: ignore[misc]
        return made

    def _over(self, sock: socket.socket) -> socket.socket:
        """The protocol's socket over the TCP connection ``sock`` (TLS: wrapped)."""
        return sock

    def _putcmd(self, line: str) -> None:
        verb = line.partition(" ")[0].upper()
        self.deadline.start(verb if verb in _POP3_VERBS else self.deadline.what)
        super()._putcmd(line)  # type: ignore[misc]

    def _putline(self, line: bytes) -> None:
        sys.audit("poplib.putline", self, line)
        self.deadline.sendall(self.sock, line + b"\r\n")


class Pop3SSL(Pop3, poplib.POP3_SSL):
    """poplib.POP3_SSL whose commands keep to deadlines."""

    context: Any  # poplib.POP3_SSL's

    def _over(self, sock: socket.socket) -> socket.socket:
        wrapped: socket.socket = self.context.wrap_socket(sock, server_hostname=self.host)
        return wrapped  # as POP3_SSL._create_socket


# -- IMAP ----------------------------------------------------------------------------


class _ImapDeadlines(_DeadlineFile, imaplib.IMAP4):
    """imaplib.IMAP4 whose commands keep to deadlines (see the module docstring)."""

    _next: str | None = None  # the name of the command about to be written

    def _create_socket(self, timeout: float | None = None) -> socket.socket:
        # imapclient's classes keep their timeout as _timeout (IMAP4_TLS passes None).
        limit = timeout if timeout is not None else getattr(self, "_timeout", None)
        _connecting(self, limit)
        sock = early.take(self.host, self.port, limit)  # connected while importing
        if sock is None:
            sock = super()._create_socket(timeout)  # type: ignore[misc]
        else:
            sys.audit("imaplib.open", self, self.host, self.port)
            sock = self._over(sock)
        return sock

    def _over(self, sock: socket.socket) -> socket.socket:
        """The protocol's socket over the TCP connection ``sock`` (TLS: wrapped)."""
        return sock

    def _command(self, name: str, *args: Any) -> bytes:
        if name == "UID" and args:
            sub = args[0].decode() if isinstance(args[0], bytes) else str(args[0])
            name = f"UID {sub.upper()}"
        self._next = name
        tag: bytes = super()._command(name.partition(" ")[0], *args)  # type: ignore[misc]
        return tag

    def _new_tag(self) -> bytes:
        """Every command takes a new tag first: its deadline starts here."""
        self.deadline.start(self._next or "command")
        self._next = None
        tag: bytes = super()._new_tag()  # type: ignore[misc]
        return tag

    def send(self, data: Any) -> None:
        sys.audit("imaplib.send", self, data)
        self.deadline.sendall(self.sock, bytes(data))


class _Imap(_ImapDeadlines, imap4.IMAP4WithTimeout):  # type: ignore[misc]
    """imapclient's plain-text (and STARTTLS) connection, with deadlines."""


class _ImapTLS(_ImapDeadlines, tls.IMAP4_TLS):  # type: ignore[misc]
    """imapclient's implicit-TLS connection, with deadlines."""

    def _over(self, sock: socket.socket) -> socket.socket:
        wrapped: socket.socket = tls.wrap_socket(sock, self.ssl_context, self.host)  # as IMAP4_TLS
        return wrapped


class Client(imapclient.IMAPClient):  # type: ignore[misc]
    """imapclient.IMAPClient over connections whose commands keep to deadlines."""

    def _create_IMAP4(self) -> _ImapDeadlines:  # noqa: N802 - imapclient's name
        timeout = getattr(self._timeout, "connect", None)
        if self.ssl:
            return _ImapTLS(self.host, self.port, self.ssl_context,  # type: ignore[call-arg]
                            timeout)
        return _Imap(self.host, self.port, timeout)

    def _raw_command(self, command: bytes, args: Any, uid: bool = True) -> Any:
        name = command.decode("ascii", "replace").upper()
        self._imap._next = f"UID {name}" if uid and self.use_uid else name
        return super()._raw_command(command, args, uid)

    def idle_check(self, timeout: float | None = None) -> Any:
        """IDLE waits on purpose: no deadline while looking for what the server sent
        (imapclient reads it without blocking)."""
        self._imap.deadline.stop()
        return super().idle_check(timeout)

    def idle_done(self) -> Any:
        """DONE, and the end of IDLE, within ``timeout``."""
        self._imap.deadline.start("IDLE DONE")
        return super().idle_done()
