"""POP3 source over poplib: security modes, UIDL state, DELE only after storing.

A POP3 session sees the maildrop as it was at login and deletes only at QUIT, so each
poll is one session: UIDL, RETR the messages whose UIDL is not stored yet (in batches
that the poller commits one by one), DELE each committed batch when messages are not
kept, then QUIT. A crash before QUIT loses the DELEs (the server rolls them back); the
next poll finds those UIDLs stored and deletes them without storing them again.
"""

from __future__ import annotations

import contextlib
import poplib
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from mailsync.config.model import IncomingServer
from mailsync.errors import ConnectError
from mailsync.inbound.source import (
    BATCH,
    WIRE_ERRORS,
    Batch,
    Cursor,
    Incoming,
    Known,
    describe,
    translate,
)
from mailsync.netio import scrubbed, tls_context

MAX_LINE = 1 << 20  # poplib refuses lines over 2048 bytes; real mail has longer ones
T = TypeVar("T")


class _LongLines:
    """poplib's line reader with a larger limit (same logic as poplib.POP3._getline)."""

    file: Any

    def _getline(self) -> tuple[bytes, int]:
        line: bytes = self.file.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise poplib.error_proto("line too long")
        if not line:
            raise poplib.error_proto("-ERR EOF")
        octets = len(line)
        if line[-2:] == b"\r\n":
            return line[:-2], octets
        if line[:1] == b"\r":
            return line[1:-1], octets
        return line[:-1], octets


class _POP3(_LongLines, poplib.POP3):
    pass


class _POP3_SSL(_LongLines, poplib.POP3_SSL):
    pass


class Pop3Source:
    """One POP3 maildrop; a new session per poll (POP3 shows mail as of login)."""

    supports_idle = False

    def __init__(self, server: IncomingServer, *, password: Callable[[], str | None],
                 context: ssl.SSLContext | None = None, batch: int = BATCH) -> None:
        self.server = server
        self.folder = ""
        self._password = password
        self._context = context
        self._batch = batch
        self._pop: poplib.POP3 | None = None
        self._numbers: dict[str, int] = {}
        self._where = describe(server)

    def open(self) -> None:
        """Connect per ``security`` and log in (POP3 has one folder: nothing to check)."""
        if self._pop is not None:
            return
        server = self.server
        if not server.host:
            raise ConnectError(f"{self._where}: no host name is configured", "dns")
        password = self._password()
        timeout = server.timeout.total_seconds()
        tls = None if server.security == "none" else (
            self._context or tls_context(server.tls_verify))
        pop: poplib.POP3 | None = None
        phase = "connect"
        error: ConnectError | None = None
        try:
            if server.security == "ssl":
                pop = _POP3_SSL(server.host, server.port or 995, timeout=timeout, context=tls)
            else:
                pop = _POP3(server.host, server.port or 110, timeout=timeout)
            if server.security == "starttls":
                phase = "starttls"
                if "STLS" not in _capabilities(pop):
                    error = ConnectError(
                        f"{self._where}: the server does not offer STARTTLS (STLS) and "
                        "security is 'starttls'; refusing to continue in plain text",
                        "starttls")
                else:
                    pop.stls(tls)
            if error is None:
                phase = "auth"
                if not server.username or password is None:
                    error = ConnectError(f"{self._where}: a username and a password are "
                                         "needed to log in", "auth")
                else:
                    pop.user(server.username)
                    pop.pass_(password)
        except WIRE_ERRORS as exc:
            error = translate(exc, server, phase)
        except BaseException:
            _close(pop)
            raise
        if error is not None:
            _close(pop)
            raise scrubbed(error, password)
        self._pop = pop

    def close(self) -> None:
        """Drop the connection without QUIT: DELEs not yet committed are rolled back."""
        pop, self._pop = self._pop, None
        _close(pop)

    def batches(self, cursor: Cursor, known: Known) -> Iterator[Batch]:
        """Messages whose UIDL is not stored, in batches; first, stored ones to delete."""
        self.open()
        pop = self._pop
        assert pop is not None
        listing = self._call(pop.uidl)
        self._numbers = {}
        for line in listing[1]:
            number, _, uidl = line.decode("ascii", "replace").strip().partition(" ")
            self._numbers[uidl.strip()] = int(number)
        stored = known.keys(list(self._numbers))
        if stored and not self.server.keep_on_server:
            yield Batch(done=tuple(k for k in self._numbers if k in stored))
        new = [(n, k) for k, n in self._numbers.items() if k not in stored]
        new.sort()
        for start in range(0, len(new), self._batch):
            chunk = new[start:start + self._batch]
            messages = tuple(Incoming(key, self._retr(pop, number)) for number, key in chunk)
            yield Batch(messages=messages, done=tuple(key for _, key in chunk))

    def acknowledge(self, batch: Batch) -> None:
        """keep_on_server false: DELE the batch (done by the server at QUIT)."""
        if self.server.keep_on_server or not batch.done or self._pop is None:
            return
        for key in batch.done:
            self._call(self._pop.dele, self._numbers[key])

    def end_poll(self) -> None:
        """QUIT: the server deletes what was DELEd, then the session ends."""
        pop, self._pop = self._pop, None
        if pop is None:
            return
        error: ConnectError | None = None
        try:
            pop.quit()
        except WIRE_ERRORS as exc:
            error = translate(exc, self.server, "fetch")
        if error is not None:
            _close(pop)
            raise error

    def wait(self, timeout: float, cursor: Cursor, stop: threading.Event | None) -> bool:
        """POP3 has no push: sleep ``timeout`` (or until ``stop``); always False."""
        if stop is not None:
            stop.wait(timeout)
        else:
            time.sleep(timeout)
        return False

    def _retr(self, pop: poplib.POP3, number: int) -> bytes:
        _, lines, _ = self._call(pop.retr, number)
        return b"\r\n".join(lines) + b"\r\n"

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        error: ConnectError | None = None
        try:
            return fn(*args)
        except WIRE_ERRORS as exc:
            error = translate(exc, self.server, "fetch")
        self.close()
        raise error


def _capabilities(pop: poplib.POP3) -> dict[str, list[str]]:
    """CAPA, or nothing when the server does not know the command."""
    try:
        return pop.capa()
    except poplib.error_proto:
        return {}


def _close(pop: poplib.POP3 | None) -> None:
    if pop is None:
        return
    with contextlib.suppress(OSError):
        pop.close()
