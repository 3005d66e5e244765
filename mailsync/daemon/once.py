"""``mailsync run --once``: the daemon's own pass, then exit.

The same start as the daemon's (:meth:`~mailsync.daemon.runtime.Runtime.prepare`:
recovery, pruning, the applied configuration recorded, the metrics primed), then one pass
of each part: the spool taken by a one-pass pickup child (forked before this process
starts any thread) while a sender thread sends each committed batch, then each incoming
server polled once with the same ``on_message`` hook as the daemon's pollers.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from mailsync.daemon.runtime import Runtime
from mailsync.inbound.poller import PollResult, poll_all_once
from mailsync.outbound.deliver import Deliverer, DeliverStats
from mailsync.outbound.ingest import IngestStats
from mailsync.outbound.pickup import Pickup

# A one-shot run waits at most this long for a full disk to record an outcome.
RECORD_PATIENCE = 30.0


@dataclass
class PassResult:
    """What the pass did: the spool taken, the messages sent, each mailbox's poll."""

    ingested: IngestStats
    sent: DeliverStats
    connections: int  # SMTP connections opened
    polls: list[PollResult]


def run_pass(runtime: Runtime) -> PassResult:
    """Start as the daemon does, take the spool while sending, then poll each mailbox."""
    runtime.prepare()
    config = runtime.config
    deliverer = Deliverer(config, runtime.outbound, runtime.metrics, verp_key=runtime.verp_key,
                          record_patience=RECORD_PATIENCE, tokens=runtime.tokens)
    try:
        ingested, sent = _ingest_and_send(runtime, deliverer)
    finally:
        deliverer.close()
    polls: list[PollResult] = []
    if config.incoming_servers:
        polls = list(poll_all_once(config, runtime.store, runtime.metrics,
                                   verp_key=runtime.verp_key, on_message=runtime.hook,
                                   tokens=runtime.tokens).values())
    return PassResult(ingested, sent, deliverer.connections_opened, polls)


def _ingest_and_send(runtime: Runtime, deliverer: Deliverer) -> tuple[IngestStats, DeliverStats]:
    """Ingest the spool (prepared in a child process) while sending each committed batch."""
    pickup = Pickup(runtime.config, runtime.verp_key)  # forked before any thread
    done = threading.Event()
    result: dict[str, DeliverStats] = {}

    def send() -> None:
        result["sent"] = deliverer.run_once(until=done)

    sender = threading.Thread(target=send, name="mailsync-deliver")
    sender.start()
    try:
        ingested = pickup.wait(runtime.metrics, on_commit=deliverer.wake)
    finally:
        done.set()
        deliverer.wake()
        sender.join()
    return ingested, result["sent"]
