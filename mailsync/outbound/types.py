"""Values shared by the outbound modules (pure data, no I/O)."""

from __future__ import annotations

from typing import Literal

from mailsync.values import valueclass

RejectReason = Literal[
    "unparseable",        # not a valid .eml / .json, or missing required fields
    "unknown_user",       # X-Mailsync-User / "user" is not a declared user
    "impersonation",      # the file's Unix owner is not among the user's unix_users
    "ungranted_account",  # the named account does not exist or is not granted to the user
    "no_account",         # no account named and the user is granted zero or several
    "no_recipients",      # no To/Cc/Bcc address at all
    "bad_recipient",      # a recipient address is malformed
    "header_injection",   # CR or LF inside a header value (JSON fields, custom headers)
    "oversize",           # larger than daemon.max_message_size
    "unreadable",         # the daemon may not read the file (written 0600 by its owner)
    "not_a_regular_file",  # a FIFO, symlink, directory, socket or device in new/
]


@valueclass
class Rejection:
    """Why a spool file is refused: a metrics-label ``reason`` and a human ``detail``."""

    reason: RejectReason
    detail: str


@valueclass
class Submission:
    """A parsed spool file, before routing: who sends, through which account, to whom.

    ``message`` is the RFC 5322 message as bytes with CRLF or LF line ends as written,
    with the ``X-Mailsync-*`` headers and ``Bcc`` already removed. ``recipients`` are the
    bare envelope addresses from To, Cc and Bcc, in order, without duplicates.
    """

    user: str
    account: str | None
    recipients: tuple[str, ...]
    message: bytes
    subject: str
    idempotency_key: str | None = None


@valueclass
class Composed:
    """A message ready to queue: final bytes and what the history indexes."""

    data: bytes
    from_address: str       # the address in the final From header
    rewritten: bool         # From was rewritten to the alias domain's default_from
    message_id: str         # the Message-ID header value, with angle brackets
    subject: str


RecipientStatus = Literal["sent", "deferred", "failed"]


@valueclass
class RecipientResult:
    """One recipient's outcome in one SMTP transaction (Postfix-style)."""

    address: str
    status: RecipientStatus
    code: int | None
    reply: str
    # The command the reply answered when it is the recipient's own ("RCPT": a refusal
    # of this address, which may put it on the suppression list); None otherwise.
    command: str | None = None


@valueclass
class Delivery:
    """The outcome of one SMTP transaction: every recipient's reply and the server used."""

    server: str
    recipients: tuple[RecipientResult, ...]

    @property
    def sent(self) -> tuple[str, ...]:
        return tuple(r.address for r in self.recipients if r.status == "sent")

    @property
    def deferred(self) -> tuple[str, ...]:
        return tuple(r.address for r in self.recipients if r.status == "deferred")

    @property
    def failed(self) -> tuple[str, ...]:
        return tuple(r.address for r in self.recipients if r.status == "failed")


@valueclass(frozen=False)
class IngestStats:
    """What one pass of the spool did (here, not in ingest.py: the parent of the pickup
    child reads it without importing the ingesting code)."""

    queued: int = 0
    rejected: int = 0
    duplicates: int = 0   # an idempotency key seen before: not queued
    taken: int = 0        # left in new/ by a crash after its commit: finished, not queued

    @property
    def files(self) -> int:
        return self.queued + self.rejected + self.duplicates + self.taken
