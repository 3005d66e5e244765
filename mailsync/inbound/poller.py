"""Polling: one pass over one incoming server (:class:`Poller`), or over all of them.

Each batch a source yields is stored in ONE transaction with the fetch state it
advances to (and with any bounce it records and the ``on_message`` hook's writes); the
source acknowledges the batch (deletes it, moves it to cur/) only after that commit.
With ``deliver_to``, the batch is written to the Maildir before the commit, under names
that make a rewrite after a crash a no-op. So a crash at any point neither loses a
message nor stores it twice.

With a ``lease`` (several nodes: mailsync/inbound/leases.py), a node that lost it
stores nothing (:class:`LeaseLost`): the lease is checked in each batch's transaction.

A long-running daemon keeps one Poller per server in its own thread, calling
``poll_once()`` then ``wait_for_news(poll_interval, stop)`` (which returns as soon as an
IMAP server with IDLE reports new mail) until ``stop`` is set.

A server that cannot be reached is marked down once (one WARNING), then probed after
:func:`retry_delay` (1 s, 2 s, 4 s, ... up to the larger of ``poll_interval`` and 5
minutes) with its failures logged at DEBUG, and said to be back up once (one INFO).
Messages skipped at their source (over ``max_message_size``) are recorded with the batch
they were met in, logged once and counted, and never tried again.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from mailsync.auth.tokens import TokenCache
from mailsync.config.model import Config, IncomingServer
from mailsync.errors import ConnectError, MailsyncError, SecretError, StoreError
from mailsync.inbound import records
from mailsync.inbound.adapters import check_incoming, make_source
from mailsync.inbound.leases import Lease, LeaseLost
from mailsync.inbound.maildir import MaildirWriter
from mailsync.inbound.refused import StoreRefused
from mailsync.inbound.source import Batch, Incoming, Skipped, Source, describe
from mailsync.outbound.verp import VerpKey
from mailsync.store import Store
from mailsync.values import valueclass

if TYPE_CHECKING:
    import ssl

    from mailsync.inbound.bounces import Verdict
    from mailsync.telemetry.metrics import Metrics

# The reading of fetched messages (headers, bounces: the email package) is imported by the
# first batch that holds one: a poll that finds nothing new does not pay for it (#19).

log = logging.getLogger("mailsync.inbound")

OnMessage = Callable[[sqlite3.Connection, IncomingServer, int, str, float], None]
"""Called inside the storing transaction for each new message of a server with an
``activity`` rule: (connection, server, fetched id, subject, now)."""



BACKOFF_FIRST = 1.0  # seconds before the first probe of a mailbox whose poll failed...
BACKOFF_MAX = 300.0  # ...doubling up to the larger of this and its poll_interval
_SKIP_WORDS = {
    "too_large": "is larger than max_message_size ({cap} bytes)",
    "oversized_literal": "was sent larger than max_message_size ({cap} bytes), whatever size "
                         "the server declared (the connection was dropped)",
    "oversized_retr": "was sent larger than max_message_size ({cap} bytes), whatever size "
                      "the server declared (the connection was dropped)",
}


def retry_delay(failures: int, poll_interval: float) -> float:
    """Seconds to wait before polling again after ``failures`` failed polls in a row:
    1 s, 2 s, 4 s, ... doubling up to the larger of ``poll_interval`` and 5 minutes.
    A dead mailbox is then probed a few times a minute at first and every 5 minutes (or
    every poll_interval when longer) after that, not in a loop."""
    cap = max(poll_interval, BACKOFF_MAX)
    return float(min(cap, BACKOFF_FIRST * 2 ** min(max(failures, 1) - 1, 30)))


def unique_messages(server: str, messages: Sequence[Incoming]) -> list[Incoming]:
    """``messages`` with each key once (the first kept): a server naming one UID or UIDL
    twice must not make the batch's transaction fail, and so every poll after it."""
    seen: set[str] = set()
    out: list[Incoming] = []
    for m in messages:
        if m.key in seen:
            log.warning("%s: the server gave message %r twice in one batch: the first copy "
                        "is stored, the other skipped", server, m.key)
            continue
        seen.add(m.key)
        out.append(m)
    return out


@valueclass(frozen=False)
class PollResult:
    """What one poll of one server did: messages stored (``fetched``), skipped as already
    stored after a UIDVALIDITY change (``recognised``), messages skipped (over
    max_message_size), bounces recorded, files written to deliver_to, and on failure the
    error and its kind."""

    server: str
    ok: bool = False
    fetched: int = 0
    recognised: int = 0
    skipped: int = 0
    bounced: int = 0
    delivered: int = 0
    uidvalidity_changed: bool = False
    error: str | None = None
    kind: str | None = None  # ConnectError.kind, or the exception's class name
    duration: float = 0.0

    def describe(self) -> str:
        """One line for people: ``support: 3 fetched, 1 bounce`` or the error."""
        if not self.ok:
            return f"{self.server}: failed: {self.error}"
        parts = [f"{self.fetched} fetched"]
        if self.bounced:
            parts.append(f"{self.bounced} bounce{'s' if self.bounced != 1 else ''}")
        if self.recognised:
            parts.append(f"{self.recognised} already stored")
        if self.skipped:
            parts.append(f"{self.skipped} skipped (over max_message_size)")
        if self.delivered:
            parts.append(f"{self.delivered} written to deliver_to")
        if self.uidvalidity_changed:
            parts.append("UIDVALIDITY changed")
        return f"{self.server}: {', '.join(parts)}"


class Poller:
    """Polls one incoming server; used by one thread at a time. Keeps its session open
    between polls (IMAP), so an incremental poll is one SELECT. ``verp_key`` checks the
    signature of the VERP addresses bounces are sent to (mailsync.outbound.verp)."""

    def __init__(self, config: Config, server: IncomingServer, store: Store, metrics: Metrics,
                 *, verp_key: VerpKey | None, on_message: OnMessage | None = None,
                 clock: Callable[[], float] = time.time,
                 source: Source | None = None,
                 context: ssl.SSLContext | None = None,
                 tokens: TokenCache | None = None, lease: Lease | None = None) -> None:
        self.config = config
        self.lease = lease
        self.server = server
        self.store = store
        self.metrics = metrics
        self.verp_key = verp_key
        self.on_message = on_message if server.activity is not None else None
        self.clock = clock
        if tokens is None and server.auth is not None:
            tokens = TokenCache(state_dir=config.daemon.state_dir,
                                observer=metrics.oauth2_observer)
        self.source = source if source is not None else make_source(server, context=context,
                                                                    tokens=tokens)
        self.known = records.StoreKnown(store, server.name, self.source.folder)
        self.writer = (MaildirWriter(server.deliver_to, server.name)
                       if server.deliver_to is not None else None)
        self.failures = 0  # polls failed in a row (the daemon waits retry_delay after one)
        self._down_since: float | None = None  # monotonic time the server was marked down

    def reconfigure(self, config: Config) -> None:
        """Classify the next messages under ``config`` (its alias domain: bounces). The
        server's own settings stay this poller's: a changed server gets a new poller."""
        self.config = config

    @property
    def supports_idle(self) -> bool:
        """True once connected to an IMAP server that offers IDLE."""
        return self.source.supports_idle

    def poll_once(self) -> PollResult:
        """Fetch and store what is new; never raises for a server or store problem."""
        started = time.monotonic()
        result = PollResult(self.server.name)
        name = self.server.name
        reached: bool | None = True  # whether the server could be used (None: unknown)
        try:
            self._poll(result)
            result.ok = True
        except (ConnectError, SecretError) as exc:
            self._failed(result, exc)
            reached = False
        except LeaseLost as exc:  # not a failure: another node polls the server now
            result.error, result.kind = str(exc), "lease_lost"
            log.warning("%s", exc)
            self.source.close()
            return result
        except (StoreError, sqlite3.Error) as exc:
            self._failed(result, StoreRefused.of(exc))
            reached = None
        except (MailsyncError, OSError) as exc:  # deliver_to, a hook
            self._failed(result, exc)
            reached = None
        result.duration = time.monotonic() - started
        self.metrics.mailbox_polls.labels(name, "success" if result.ok else "failure").inc()
        if result.ok:
            self.metrics.mailbox_last_success.labels(name).set(self.clock())
        if reached is not None:
            self.metrics.server_up.labels(name, "incoming").set(1 if reached else 0)
        if result.ok:
            self.failures = 0
            self._back_up()
        else:
            self.failures += 1
        if result.fetched or result.uidvalidity_changed or result.skipped:
            log.info("%s", result.describe())
        return result

    @property
    def down(self) -> bool:
        """Whether the server is marked down (it could not be reached since it was)."""
        return self._down_since is not None

    def _failed(self, result: PollResult, exc: BaseException) -> None:
        result.error = str(exc)
        result.kind = getattr(exc, "kind", None) or type(exc).__name__
        if isinstance(exc, ConnectError | SecretError):
            self._went_down("poll failed", exc)
        else:  # the store, deliver_to or a hook: not the server's doing
            log.warning("%s: poll failed: %s", self.server.name, exc)
        self.source.close()

    def _went_down(self, what: str, exc: BaseException) -> None:
        """One WARNING when the server becomes unreachable, DEBUG while it stays so."""
        if self._down_since is not None:
            log.debug("%s: %s (still down): %s", self.server.name, what, exc)
            return
        self._down_since = time.monotonic()
        log.warning("%s: %s: %s; the mailbox is marked down and probed again after 1s, "
                    "2s, 4s, ... (at most every %s)", self.server.name, what, exc,
                    _seconds(max(self.server.poll_interval.total_seconds(), BACKOFF_MAX)))

    def _back_up(self) -> None:
        if self._down_since is None:
            return
        took = time.monotonic() - self._down_since
        self._down_since = None
        log.info("%s: the mailbox is back up (it was down for %s)", self.server.name,
                 _seconds(took))

    def wait_for_news(self, timeout: float, stop: threading.Event | None = None) -> bool:
        """Wait up to ``timeout`` s for new mail: True as soon as the server says so (IMAP
        IDLE), False when the time is up. Without IDLE: sleeps (until ``stop``), False.

        A connection failure while waiting is logged, the rest of the time is slept, and
        True is returned, so that the next poll_once reconnects and reports the failure.
        """
        deadline = time.monotonic() + timeout
        cursor = records.load_cursor(self.store, self.server.name, self.source.folder)
        try:
            return self.source.wait(timeout, cursor, stop)
        except (ConnectError, SecretError) as exc:
            self._went_down("waiting for new mail failed", exc)
            self.source.close()
            rest = max(0.0, deadline - time.monotonic())
            if stop is not None:
                stop.wait(rest)
            else:
                time.sleep(rest)
            return True

    def close(self) -> None:
        """Log out and release the session."""
        self.source.close()

    # -- one pass ----------------------------------------------------------------------

    def _poll(self, result: PollResult) -> None:
        folder = self.source.folder
        cursor = records.load_cursor(self.store, self.server.name, folder)
        changes = cursor.changes
        if self.writer is not None:
            self.writer.begin_poll()
        for batch in self.source.batches(cursor, self.known):
            if self.lease is not None and not self.lease.valid():
                raise LeaseLost(f"{self.server.name}: the lease of this mailbox ran out while "
                                "polling: what was fetched is left for the node that takes it")
            if batch.cursor is not None and batch.cursor.changes > changes:
                result.uidvalidity_changed = True
            self._commit(batch, result)
            self.source.acknowledge(batch)
        self.source.end_poll()

    def _commit(self, batch: Batch, result: PollResult) -> None:
        """Store a batch and its cursor in one transaction (after deliver_to's files)."""
        if not batch.messages and batch.cursor is None and not batch.skipped:
            return
        parsed = []
        if batch.messages:
            # Imported by the first message (see the imports above).
            from mailsync.inbound.bounces import classify, record_bounce
            from mailsync.inbound.message import parse_headers, summarize
        for m in unique_messages(self.server.name, batch.messages):
            fields = parse_headers(m.raw)
            parsed.append((m, summarize(m.raw, fields),
                           classify(m.raw, self.config, self.verp_key, fields)))
        if self.writer is not None:
            result.delivered += self.writer.deliver(batch.messages)
        name, folder = self.server.name, self.source.folder
        bounced: list[str | None] = []
        refused: list[tuple[int, Verdict]] = []
        skipped: list[Skipped] = []
        now = self.clock()
        with self.store.transaction() as conn:
            if self.lease is not None and not self.lease.fence(conn):
                raise LeaseLost(f"{self.server.name}: another node holds the lease of this "
                                "mailbox now: the batch is not stored (that node fetches it)")
            skipped = [s for s in batch.skipped
                       if records.insert_skipped(conn, name, folder, s, now)]
            for message, summary, verdict in parsed:
                try:
                    fid = records.insert_fetched(conn, name, folder, message.key, summary,
                                                 message.raw, now)
                except sqlite3.IntegrityError as exc:
                    raise StoreRefused.of(exc, message.key) from None
                bounce = verdict.bounce
                if verdict.refused is not None:
                    refused.append((fid, verdict))
                if bounce is not None:
                    outcome = record_bounce(conn, bounce, now,
                                            self.config.suppression.expiry.total_seconds(),
                                            self.config.webhooks)
                    if outcome is not None:
                        records.mark_bounce_of(conn, fid, outcome.message)
                        if outcome.recipients:
                            bounced.append(outcome.account)
                if self.on_message is not None:
                    self.on_message(conn, self.server, fid, summary.subject or "", now)
            if batch.cursor is not None:
                records.save_cursor(conn, name, folder, batch.cursor, now)
        result.fetched += len(parsed)
        result.recognised += batch.recognised
        result.bounced += len(bounced)
        if parsed:
            self.metrics.mailbox_fetched.labels(name).inc(len(parsed))
        for account in bounced:
            # A bounce names a message this daemon sent, so its account is known.
            self.metrics.messages_bounced.labels(account or "unknown").inc()
        for fid, verdict in refused:
            self._refused(fid, verdict)
        for s in skipped:
            self._skipped(s)
        result.skipped += len(skipped)

    def _skipped(self, skipped: Skipped) -> None:
        """Log and count a message skipped at its source (recorded: never tried again)."""
        self.metrics.mailbox_skipped.labels(self.server.name, skipped.reason).inc()
        words = _SKIP_WORDS.get(skipped.reason, skipped.reason)
        log.warning("%s: message %s (%d bytes) %s: skipped, left on the server and not "
                    "tried again", self.server.name, skipped.key, skipped.size,
                    words.format(cap=self.server.max_message_size))

    def _refused(self, fid: int, verdict: Verdict) -> None:
        """Log and count a message naming a VERP address that is not taken as a bounce."""
        reason = verdict.refused or "not_a_bounce"
        self.metrics.bounces_refused.labels(self.server.name, reason).inc()
        if reason == "not_a_bounce":
            log.info("%s: fetched message %d was sent to the VERP address of message %s but "
                     "is neither a DSN nor a bounce (a reply or an auto-reply?): kept as "
                     "ordinary mail", self.server.name, fid, verdict.claimed)
        else:
            why = "is not signed" if reason == "unsigned" else "has a wrong signature"
            log.warning("%s: fetched message %d names message %s in a VERP address that %s "
                        "(forged, or sent before signing or with a lost verp.key): not taken "
                        "as a bounce, kept as ordinary mail", self.server.name, fid,
                        verdict.claimed, why)


def _seconds(value: float) -> str:
    """A duration for a log line: ``300s``, ``1.5s``."""
    return f"{value:.0f}s" if value >= 10 or value == int(value) else f"{value:.1f}s"


__all__ = ["Lease", "LeaseLost", "OnMessage", "PollResult", "Poller", "StoreRefused",
           "check_incoming", "describe", "make_source", "retry_delay",
           "unique_messages"]
