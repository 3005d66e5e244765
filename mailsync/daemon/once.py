"""``mailsync run --once``: the daemon's own pass, then exit.

The same start as the daemon's (:meth:`~mailsync.daemon.runtime.Runtime.prepare`:
recovery, pruning, the applied configuration recorded, the metrics primed), then one pass
of each part: the spool taken by a one-pass pickup child (forked before this process
starts any thread) while a sender thread sends each committed batch, then each incoming
server polled once with the same ``on_message`` hook as the daemon's pollers.

A pass with nothing to take or send (no spool file in ``new/``, no message due) forks no
child and starts no thread: it does in this process what the child's pass would have done
(the ``new/`` directories made, the claims of files no longer there forgotten), and the
sending and ingesting code is not even imported. A cron ``run --once`` that only polls
its mailboxes pays for the polls alone (#19).
"""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING

from mailsync.daemon.runtime import Runtime
from mailsync.errors import MailsyncError
from mailsync.inbound.onepass import poll_all_once
from mailsync.inbound.poller import PollResult
from mailsync.outbound import spool
from mailsync.values import valueclass

if TYPE_CHECKING:
    from mailsync.outbound.deliver import DeliverStats
    from mailsync.outbound.pickup import Pickup
    from mailsync.outbound.types import IngestStats

# A one-shot run waits at most this long for a full disk to record an outcome.
RECORD_PATIENCE = 30.0


@valueclass(frozen=False)
class PassResult:
    """What the pass did: the spool taken, the messages sent, each mailbox's poll.

    ``ingested`` and ``sent`` are None when the pass had nothing to take and nothing due
    (then neither part ran: 0 of everything); ``ingested`` is None too when the spool could
    not be taken (``spool_error`` says why: its files wait in ``new/``)."""

    ingested: IngestStats | None
    sent: DeliverStats | None
    connections: int  # SMTP connections opened
    polls: list[PollResult]
    spool_error: str | None = None

    def summary(self) -> str:
        """The line ``run --once`` prints: the spool's counts, then the sender's."""
        queued, rejected, duplicates, taken = (0, 0, 0, 0) if self.ingested is None else (
            self.ingested.queued, self.ingested.rejected, self.ingested.duplicates,
            self.ingested.taken)
        sent, deferred, failed, held = (0, 0, 0, 0) if self.sent is None else (
            self.sent.sent, self.sent.deferred, self.sent.failed, self.sent.held)
        return (f"spool: {queued} queued, {rejected} rejected, "
                f"{duplicates} duplicate{'' if duplicates == 1 else 's'}"
                + (f", {taken} already taken" if taken else "") + "; "
                f"send: {sent} sent, {deferred} deferred, {failed} failed, "
                f"{held} held; {self.connections} SMTP connections")


def run_pass(runtime: Runtime) -> PassResult:
    """Start as the daemon does, take the spool while sending, then poll each mailbox."""
    runtime.prepare()
    config = runtime.config
    result = PassResult(None, None, 0, []) if idle(runtime) else _ingest_and_send(runtime)
    if config.incoming_servers:
        result.polls = list(poll_all_once(config, runtime.store, runtime.metrics,
                                          verp_key=runtime.verp_key, on_message=runtime.hook,
                                          tokens=runtime.tokens).values())
    if config.webhooks:
        # Here, not above: only a configuration with webhooks imports the HTTP client.
        from mailsync.daemon.webhooks import post_once

        post_once(config, runtime.store)  # what a receiver does not take waits
    return result


def idle(runtime: Runtime) -> bool:
    """Whether the pass has nothing to take (no spool file waiting in ``new/``) and nothing
    to send (no message due now); when so, what the pickup child's pass would have done
    besides is done here: ``tmp/``, ``new/`` and ``rejected/`` made, and the claims of
    files no longer in ``new/`` forgotten (a read when there is none)."""
    spool_dir = runtime.config.daemon.spool_dir
    spool.ensure_dirs(spool_dir)
    if spool.waiting(spool_dir):
        return False
    due = runtime.outbound.next_due()
    if due is not None and due <= time.time():
        return False
    runtime.outbound.sweep_claims(lambda: set(os.listdir(spool_dir / "new")))
    return True


def _ingest_and_send(runtime: Runtime) -> PassResult:
    """Ingest the spool (prepared in a child process) while sending each committed batch."""
    # Here, not above: a pass with nothing to take or send does not import them.
    from mailsync.outbound.pickup import Pickup

    # The child is forked first: before this process starts any thread (a fork copies
    # the locks of other threads, not the threads), and before it imports and builds the
    # sender, so that the child's start (its imports, the spool's first batch) runs on the
    # other core meanwhile instead of after it (~50 ms sooner to the first send).
    pickup = Pickup(runtime.config, runtime.verp_key, served=runtime.metrics.served)
    try:
        return _send_while_ingesting(runtime, pickup)
    finally:
        pickup.stop()  # only when the pass failed before the child's answer


def _send_while_ingesting(runtime: Runtime, pickup: Pickup) -> PassResult:
    # After the fork (above): the child starts meanwhile, on the other core.
    from mailsync.daemon.node import start_node
    from mailsync.outbound.deliver import Deliverer
    from mailsync.outbound.pickup import IngestionCrashed

    deliverer = Deliverer(runtime.config, runtime.outbound, runtime.metrics,
                          verp_key=runtime.verp_key, record_patience=RECORD_PATIENCE,
                          tokens=runtime.tokens)
    try:
        # A shared store: this node's lease, renewed while the pass sends (None on SQLite).
        node = start_node(runtime.outbound, runtime.metrics,
                          lease_seconds=runtime.config.daemon.send_lease.total_seconds(),
                          config_sha256=lambda: runtime.loaded.sha256,
                          in_flight=lambda: deliverer.in_hand()[0], wake=deliverer.wake)
        try:
            done = threading.Event()
            result: dict[str, DeliverStats] = {}

            def send() -> None:
                result["sent"] = deliverer.run_once(until=done)

            sender = threading.Thread(target=send, name="mailsync-deliver")
            sender.start()
            spool_error = None
            try:
                ingested = pickup.wait(runtime.metrics, on_commit=deliverer.wake)
            except IngestionCrashed:
                raise  # a bug: its traceback, as any other
            except MailsyncError as exc:
                # The files wait in new/ (nothing was queued unsigned, say); what was due
                # is still sent and the mailboxes still polled, and the command says so.
                ingested, spool_error = None, str(exc)
            finally:
                done.set()
                deliverer.wake()
                sender.join()
        finally:
            if node is not None:
                node.stop()
                node.join(5.0)
    finally:
        deliverer.close()
    return PassResult(ingested, result["sent"], deliverer.connections_opened, [],
                      spool_error)
