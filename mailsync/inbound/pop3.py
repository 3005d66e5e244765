"""POP3 source over poplib: security modes, UIDL state, DELE only after storing.

A POP3 session sees the maildrop as it was at login and deletes only at QUIT, so each
poll is one session: UIDL, RETR the messages whose UIDL is not stored yet (in batches
that the poller commits one by one), DELE each committed batch when messages are not
kept, then QUIT. A crash before QUIT loses the DELEs (the server rolls them back); the
next poll finds those UIDLs stored and deletes them without storing them again.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import poplib
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from mailsync.auth import sasl
from mailsync.auth.tokens import TokenSource, renew_at
from mailsync.config.model import IncomingServer
from mailsync.errors import ConnectError, WireGuard
from mailsync.inbound import oauth2, wire
from mailsync.inbound.source import (
    BATCH,
    BATCH_BYTES,
    Batch,
    Cursor,
    Incoming,
    Known,
    Skipped,
    by_bytes,
    describe,
)
from mailsync.inbound.wireerrors import WIRE_ERRORS, translate
from mailsync.netio import connection_note, tls_context

log = logging.getLogger("mailsync.inbound.pop3")

MAX_LINE = 1 << 20  # poplib refuses lines over 2048 bytes; real mail has longer ones
_BLOCK = 1 << 16  # bytes read at a time for a listing or a message
# A UIDL or LIST listing is at most MAX_LISTED lines of LISTED_LINE bytes (20 MB): a
# message number, a space, a unique-id of up to 70 characters (RFC 1939) and CRLF. A
# longer "listing" is a server that does not stop, and fails the poll.
MAX_LISTED = 250_000
LISTED_LINE = 80
_TIDY = bytes(range(0x21, 0x7F)) + b" \r\n"  # what a UIDL listing is made of (RFC 1939)
# A UIDL longer than this (RFC 1939: 70 characters at most) is stored, and compared, by
# its SHA-256 (``sha256:`` and 64 hex digits): a hostile server's endless unique-id must
# not make the store refuse every batch (PostgreSQL indexes an entry of 2,704 bytes at
# most), nor fill it.
MAX_UIDL = 200


class _LongLines:
    """poplib's line reader with a larger limit (same logic as poplib.POP3._getline),
    and UIDL's listing read in blocks rather than line by line."""

    file: Any
    _putcmd: Callable[[str], None]
    _getresp: Callable[[], bytes]

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

    def uidl_listing(self) -> tuple[dict[str, str], list[tuple[str, str]]]:
        """UIDL without an argument: {UIDL: message number}, and the lines naming a UIDL
        an earlier line named (see :func:`parse_uidl`).

        poplib reads a multi-line answer with one ``readline`` and one unstuffing step
        a line (5,000 of them for 5,000 messages); this reads it in blocks up to the
        line that is a lone ``.`` and splits it at once (see :func:`parse_uidl`).
        """
        self._putcmd("UIDL")
        self._getresp()  # error_proto on -ERR
        return parse_uidl(self._listing("UIDL"))

    def list_sizes(self) -> dict[str, int]:
        """LIST without an argument: {message number: size in bytes}; {} from a server
        answering -ERR (sizes unknown: each RETR is still cut off past the cap)."""
        self._putcmd("LIST")
        try:
            self._getresp()
        except poplib.error_proto as exc:
            if exc.args and isinstance(exc.args[0], bytes):  # the server's -ERR line
                return {}
            raise
        sizes: dict[str, int] = {}
        for line in self._listing("LIST").split(b"\n"):
            number, _, size = line.strip().partition(b" ")
            if number and size.split()[:1] and size.split()[0].isdigit():
                sizes[number.decode("ascii", "replace")] = int(size.split()[0])
        return sizes

    def _listing(self, what: str) -> bytes:
        body = self._read_multiline(MAX_LISTED * LISTED_LINE, f"{what} listing")
        if body.count(b"\n") > MAX_LISTED:
            raise poplib.error_proto(f"{what} listing of more than {MAX_LISTED} messages")
        return body

    def retr_bounded(self, number: int, limit: int) -> bytes | None:
        """RETR ``number``: the message (dot-unstuffed, CRLF line ends), or None when the
        server sends more than ``limit`` bytes of it (the session is then in an unknown
        state: the caller drops it). Read in blocks, never more than ``limit`` + 64 KiB."""
        self._putcmd(f"RETR {number}")
        self._getresp()
        try:
            body = self._read_multiline(limit, "message", stuffed=True)
        except _TooLong:
            return None
        if body.count(b"\n") != body.count(b"\r\n"):  # bare LFs: as poplib, CRLF
            body = b"\r\n".join(x[:-1] if x.endswith(b"\r") else x
                                 for x in body.split(b"\n")[:-1]) + b"\r\n"
        if body.startswith(b".."):
            body = body[1:]
        return body.replace(b"\r\n..", b"\r\n.")

    def _read_multiline(self, limit: int, what: str = "listing", *,
                        stuffed: bool = False) -> bytes:
        """The rest of a multi-line answer up to its final ``.`` line (left out); more
        than ``limit`` bytes (not counting the dots of dot-stuffed lines when
        ``stuffed``) raise :class:`_TooLong` before more is read."""
        data = bytearray()
        read = self.file.read1
        dots = 0
        while True:
            chunk = read(_BLOCK)
            if not chunk:
                raise poplib.error_proto("-ERR EOF")
            if stuffed:
                dots += (data[-2:] + chunk).count(b"\n..")
            data += chunk
            if len(data) - dots > limit + 5:  # 5: the final CRLF.CRLF
                raise _TooLong(f"{what} longer than {limit} bytes")
            if data[-1:] != b"\n":
                continue
            # The answer ends with a line that is a lone "." (a data line starting
            # with "." is stuffed to ".."), and nothing comes after it unasked.
            start = data.rfind(b"\n", 0, len(data) - 1) + 1
            if data[start:].rstrip(b"\r\n") == b".":
                return bytes(data[:start])


class _TooLong(poplib.error_proto):
    """A multi-line answer longer than allowed."""


class _POP3(_LongLines, wire.Pop3):
    pass


class _POP3_SSL(_LongLines, wire.Pop3SSL):
    pass


class Pop3Source:
    """One POP3 maildrop; a new session per poll (POP3 shows mail as of login)."""

    supports_idle = False

    def __init__(self, server: IncomingServer, *, password: Callable[[], str | None],
                 context: ssl.SSLContext | None = None, batch: int = BATCH,
                 batch_bytes: int = BATCH_BYTES, tokens: TokenSource | None = None) -> None:
        self.server = server
        self._tokens = tokens  # auth.oauth2: where access tokens come from
        self._renew_at: float | None = None
        self.login_note = ""  # what the last login negotiated, for `mailsync test`
        self.folder = ""
        self._password = password
        self._context = context
        self._batch = batch
        self._batch_bytes = batch_bytes
        self._pop: _POP3 | _POP3_SSL | None = None
        self._numbers: dict[str, str] = {}  # UIDL -> message number, as listed
        self._where = describe(server)
        # Runs one command; a wire error drops the session and becomes ConnectError.
        self._guard = WireGuard(WIRE_ERRORS, self._translate, close=self.close)

    def open(self) -> None:
        """Connect per ``security`` and log in (POP3 has one folder: nothing to check); a
        session whose OAuth2 token is about to expire is replaced first."""
        if self._pop is not None and self._renew_at is not None \
                and time.time() >= self._renew_at:
            self.close()
        if self._pop is not None:
            return
        server = self.server
        if not server.host:
            raise ConnectError(f"{self._where}: no host name is configured", "dns")
        token = oauth2.access_token(self._tokens, self._where) if server.auth else None
        password = token.value if token is not None else self._password()
        timeout = server.timeout.total_seconds()
        tls = None if server.security == "none" else (
            self._context or tls_context(server.tls_verify, server.tls))
        guard = WireGuard(WIRE_ERRORS, lambda exc, phase: translate(exc, server, phase),
                          secret=password)
        pop: _POP3 | _POP3_SSL
        if server.security == "ssl":
            pop = guard("connect", _POP3_SSL, server.host, server.port or 995,
                        timeout=timeout, context=tls)
        else:
            pop = guard("connect", _POP3, server.host, server.port or 110, timeout=timeout)
        guard.close = functools.partial(_close, pop)
        if server.security == "starttls":
            if "STLS" not in guard("starttls", _capabilities, pop):
                guard.fail(ConnectError(
                    f"{self._where}: the server does not offer STARTTLS (STLS) and "
                    "security is 'starttls'; refusing to continue in plain text",
                    "starttls"))
            guard("starttls", pop.stls, tls)
        if not server.username or password is None:
            guard.fail(ConnectError(f"{self._where}: a username and a password are "
                                    "needed to log in", "auth"))
        username = server.username

        def log_in() -> ConnectError | None:
            if token is not None:
                mechanism, error = oauth2.pop3_login(pop, server, token, _capabilities(pop),
                                                     self._where)
                if error is not None:
                    if self._tokens is not None:
                        self._tokens.invalidate(token)  # the next connection gets a new one
                    return error
                note = sasl.login_note(mechanism, token.expires_at)
            else:
                pop.user(username)
                pop.pass_(password)
                note = "USER/PASS"
            self.login_note = connection_note(server.security, pop.sock) + ", " + note
            return None

        if (error := guard("auth", log_in)) is not None:
            guard.fail(error)
        self._pop = pop
        self._renew_at = renew_at(token) if token is not None else None

    def close(self) -> None:
        """Drop the connection without QUIT: DELEs not yet committed are rolled back."""
        pop, self._pop = self._pop, None
        _close(pop)

    def batches(self, cursor: Cursor, known: Known) -> Iterator[Batch]:
        """Messages whose UIDL is not stored, in batches; first, stored ones to delete."""
        self.open()
        pop = self._pop
        assert pop is not None
        self._numbers, skipped = self._guard("fetch", pop.uidl_listing)
        if skipped:
            number, uidl = skipped[0]
            log.warning("%s: the UIDL listing gives %d message(s) the unique-id of an earlier "
                        "one (message %s has %r, as message %s): the first of each is stored, "
                        "the others are skipped and left on the server", self._where,
                        len(skipped), number, uidl, self._numbers[uidl])
        stored = known.keys(list(self._numbers))
        if stored and not self.server.keep_on_server:
            yield Batch(done=tuple(k for k in self._numbers if k in stored))
        keys = self._numbers.keys() - stored
        if keys:
            keys -= known.skipped()  # never fetched, nor deleted
        new = sorted((self._number(key), key) for key in keys)
        if not new:
            return
        sizes = self._guard("fetch", pop.list_sizes)
        cap = self.server.max_message_size
        declared = [(number, key, sizes.get(str(number), 0)) for number, key in new]
        large = tuple(Skipped(key, "too_large", size) for _, key, size in declared
                      if size > cap)
        if large:
            yield Batch(skipped=large)
        fetch = [((number, key), size) for number, key, size in declared if size <= cap]
        for chunk in by_bytes(fetch, self._batch, self._batch_bytes):
            messages: list[Incoming] = []
            for n, key in chunk:
                raw = self._guard("fetch", pop.retr_bounded, n, cap)
                if raw is None:  # more than the cap, whatever LIST said: drop the session
                    self.close()
                    yield Batch(messages=tuple(messages), done=tuple(m.key for m in messages),
                                skipped=(Skipped(key, "oversized_retr", cap + 1),))
                    return
                messages.append(Incoming(key, raw))
            yield Batch(messages=tuple(messages), done=tuple(key for _, key in chunk))

    def acknowledge(self, batch: Batch) -> None:
        """keep_on_server false: DELE the batch (done by the server at QUIT)."""
        if self.server.keep_on_server or not batch.done or self._pop is None:
            return
        for key in batch.done:
            self._guard("fetch", self._pop.dele, self._number(key))

    def end_poll(self) -> None:
        """QUIT: the server deletes what was DELEd, then the session ends."""
        pop, self._pop = self._pop, None
        if pop is None:
            return
        WireGuard(WIRE_ERRORS, self._translate, functools.partial(_close, pop))(
            "fetch", pop.quit)

    def wait(self, timeout: float, cursor: Cursor, stop: threading.Event | None) -> bool:
        """POP3 has no push: sleep ``timeout`` (or until ``stop``); always False."""
        if stop is not None:
            stop.wait(timeout)
        else:
            time.sleep(timeout)
        return False

    def _number(self, key: str) -> int:
        """The message number listed for ``key`` (ConnectError when it is not one)."""
        number = self._numbers[key]
        if number.isdigit():
            return int(number)
        self.close()
        raise translate(poplib.error_proto(f"malformed UIDL line: {number} {key}"),
                        self.server, "fetch")

    def _translate(self, exc: BaseException, phase: str) -> ConnectError:
        return translate(exc, self.server, phase)


def parse_uidl(body: bytes) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """A UIDL listing's lines (``1 000000017a8b5c1d``) as {UIDL: message number}, and the
    (number, UIDL) lines left out because an earlier line has their UIDL.

    A listing of printable ASCII with one space a line (as RFC 1939 has it) is split at
    once; any other is read line by line with the whitespace around its two parts
    stripped, for servers that pad them. Of duplicate UIDLs the first wins: a UIDL names
    one message, so a server giving it to two has one of them stored (the first listed)
    and the others skipped, not stored twice (which the store refuses) nor deleted.
    """
    text = body.decode("ascii", "replace")
    lines = text.splitlines()
    if not body.translate(None, _TIDY) and body.count(b" ") == body.count(b"\n"):
        numbers = {uidl: number for number, _, uidl in (line.partition(" ") for line in lines)}
        if "" not in numbers and len(numbers) == len(lines) and \
                max(map(len, numbers), default=0) <= MAX_UIDL:
            return numbers, []  # each line had one space, a UIDL after it, and its own
    numbers = {}
    skipped: list[tuple[str, str]] = []
    for line in lines:
        number, _, uidl = line.strip().partition(" ")
        if not number:
            continue
        uidl = uidl.strip()
        if len(uidl) > MAX_UIDL:
            uidl = "sha256:" + hashlib.sha256(uidl.encode("ascii", "replace")).hexdigest()
        if uidl in numbers:
            skipped.append((number, uidl))
        else:
            numbers[uidl] = number
    return numbers, skipped


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
