"""The small interface every incoming source implements, and what they share.

A source (IMAP, POP3, local Maildir) yields :class:`Batch` es of new messages given
where the store left off (a :class:`Cursor` and a :class:`Known` view of what is stored).
The poller commits each batch together with the advanced cursor, and only then calls
:meth:`Source.acknowledge`, which deletes the messages on the server or moves them out of
``new/`` as the configuration says. A crash anywhere in between is harmless: what was
committed is recognised on the next poll (by cursor, UIDL or file name) and acknowledged
then; what was not is fetched again.

Errors: the IMAP and POP3 adapters translate their library's errors into
:class:`mailsync.errors.ConnectError` with :mod:`mailsync.inbound.wireerrors` (apart
from here, so that a Maildir poll imports neither imaplib, poplib nor TLS).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Protocol, TypeVar

from mailsync.config.model import IncomingServer
from mailsync.values import valueclass

BATCH = 500  # messages fetched per round trip and committed per transaction, at most...
BATCH_BYTES = 32 << 20  # ...and at most this many bytes (one message larger than it alone)
K = TypeVar("K")


@valueclass
class Incoming:
    """One new message: the key that names it at its source, and its raw bytes."""

    key: str
    raw: bytes


@valueclass
class Skipped:
    """A message not fetched: its key at the source, why, and the size that decided it.

    ``reason``: ``too_large`` (declared over ``max_message_size``), ``oversized_literal``
    (an IMAP server sent more than the cap for it) or ``oversized_retr`` (a POP3 RETR
    answer longer than the cap). Recorded in the store, so it is never tried again.
    """

    key: str
    reason: str
    size: int


@valueclass
class Cursor:
    """Where an IMAP folder was left: its UIDVALIDITY and the highest UID stored.

    ``changes`` counts the UIDVALIDITY changes seen on this folder (logged and kept).
    ``recognise_below``: after a change, messages with a smaller UID were there when it
    was seen; they are looked up by Message-ID and size before being fetched (kept in
    the cursor so that a crash half-way through does not end the recognition early).
    POP3 and local sources have no cursor: the keys they stored are their state.
    """

    uidvalidity: int | None = None
    last_uid: int = 0
    changes: int = 0
    recognise_below: int = 0


@valueclass
class Batch:
    """New messages to store in one transaction, and what to acknowledge after it.

    ``done`` lists the keys to acknowledge once the transaction committed: the keys of
    ``messages`` and of messages stored by an earlier poll that are still at the source
    (a crash came between that commit and its acknowledgement, or they were recognised
    after a UIDVALIDITY change). ``cursor`` is the state after this batch (IMAP only).
    ``skipped``: messages not fetched (too large), recorded in the same transaction;
    they are neither stored nor acknowledged.
    """

    messages: tuple[Incoming, ...] = ()
    done: tuple[str, ...] = ()
    cursor: Cursor | None = None
    recognised: int = 0
    skipped: tuple[Skipped, ...] = ()


class Known(Protocol):
    """What the store already holds for one server and folder."""

    def keys(self, keys: Sequence[str]) -> set[str]:
        """Those of ``keys`` already stored."""

    def messages(self, pairs: Sequence[tuple[str, int]]) -> set[tuple[str, int]]:
        """Those (Message-ID, size) pairs already stored."""

    def skipped(self) -> set[str]:
        """The keys of the messages skipped (never to be fetched, stored or deleted)."""


class Source(Protocol):
    """An incoming server behind one small interface (IMAP, POP3 or local Maildir)."""

    server: IncomingServer
    folder: str

    @property
    def supports_idle(self) -> bool:
        """Whether :meth:`wait` can wake up when mail arrives (IMAP IDLE)."""

    def open(self) -> None:
        """Connect, log in and check the folder; ConnectError with the reason if not."""

    def batches(self, cursor: Cursor, known: Known) -> Iterator[Batch]:
        """The new messages, in batches, oldest first (opens the session if needed)."""

    def acknowledge(self, batch: Batch) -> None:
        """After ``batch`` was committed: delete it at the source, or move it to cur/."""

    def end_poll(self) -> None:
        """After the last batch (POP3: QUIT, which makes the deletions happen)."""

    def wait(self, timeout: float, cursor: Cursor, stop: threading.Event | None) -> bool:
        """Wait up to ``timeout`` s for news; True when new mail is there."""

    def close(self) -> None:
        """Log out and drop the connection (idempotent; errors ignored)."""


def by_bytes(sizes: Sequence[tuple[K, int]], count: int = BATCH,
             limit: int = BATCH_BYTES) -> list[list[K]]:
    """``(key, size)`` pairs in order, cut into batches of at most ``count`` messages and
    ``limit`` bytes (a message larger than ``limit`` makes a batch of its own): a mailbox
    of 300 messages of 4 MB is then held 8 at a time, not 300."""
    batches: list[list[K]] = []
    current: list[K] = []
    total = 0
    for key, size in sizes:
        if current and (len(current) >= count or total + size > limit):
            batches.append(current)
            current, total = [], 0
        current.append(key)
        total += size
    if current:
        batches.append(current)
    return batches


def describe(server: IncomingServer) -> str:
    """How messages name a server: ``support (imap.example.com:993)``."""
    if server.type == "local":
        return f"{server.name} ({server.path})"
    host = server.host or "?"
    if ":" in host:
        host = f"[{host}]"
    return f"{server.name} ({host}:{server.port})"
