"""This node among the daemons sharing a PostgreSQL store: its heartbeat and lease.

Each node (``daemon.node``, default the host name) runs one ``mailsync-node`` thread
that, every quarter of ``daemon.send_lease``:

- renews the lease of the messages it has claimed for sending (and, when its lease
  lapsed, gives them back first: :class:`~mailsync.outbound.lease.SendLease`) and writes
  its row of ``nodes`` (heartbeat, version, config hash, messages in flight, mailboxes
  held: :func:`mailsync.store.nodes.beat`), in one transaction;
- gives back to the queue the claims of nodes whose lease ended (dead, or cut off from
  the database), so that the live nodes send their messages;
- sets ``mailsync_cluster_nodes`` and ``mailsync_cluster_config_drift`` from the nodes'
  rows.

The mailbox leases fill ``held_mailboxes`` (a callable listing the incoming servers this
node polls now); it is empty until then. An SQLite store has one node and no heartbeat
(:func:`start_node` returns None): nothing changes there.
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable

from mailsync import __version__
from mailsync.config.model import Config
from mailsync.daemon.leases import LeaseKeeper
from mailsync.errors import MailsyncError
from mailsync.outbound import claims
from mailsync.outbound.lease import SendLease
from mailsync.outbound.queue import OutboundStore
from mailsync.store import Store, nodes
from mailsync.telemetry.metrics import Metrics

log = logging.getLogger("mailsync.node")


class NodeHeartbeat:
    """The ``mailsync-node`` thread of one node (see the module doc)."""

    def __init__(self, outbound: OutboundStore, lease: SendLease, metrics: Metrics, *,
                 config_sha256: Callable[[], str], in_flight: Callable[[], int],
                 wake: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.time) -> None:
        self.outbound = outbound
        self.lease = lease
        self.metrics = metrics
        self.config_sha256 = config_sha256
        self.in_flight = in_flight
        self.wake = wake  # the sender: messages came back to the queue
        self.clock = clock
        # The incoming servers this node holds the lease of (filled by the mailbox leases).
        self.held_mailboxes: Callable[[], list[str]] = list
        self.started_at = clock()
        self._stop = threading.Event()
        self._failing = False
        self.thread = threading.Thread(target=self._run, name="mailsync-node", daemon=True)

    @property
    def name(self) -> str:
        return self.outbound.node

    def row(self) -> nodes.Node:
        """This node's row as of now."""
        return nodes.Node(self.name, socket.gethostname(), os.getpid(), self.started_at,
                          self.clock(), self.lease.lease, __version__, self.config_sha256(),
                          self.in_flight(), tuple(self.held_mailboxes()))

    def beat(self) -> bool:
        """One heartbeat: renew (after a lapse: give back, then renew), write the row,
        take back expired claims, set the node count and drift gauges. Whether the lease
        holds now; StoreUnavailable (or a database error) when the store cannot be
        reached."""
        store = self.outbound.store
        for _ in range(2):  # a renewal committed too late is followed by one at once
            sent_at = self.lease.started()
            lapsed = self.lease.lapsed(sent_at)
            with store.transaction() as conn:
                back = claims.renew(conn, self.name, self.lease.lease, self.clock(),
                                    give_back=lapsed)
                nodes.write(conn, self.row())
            if back:
                log.warning("node %s: its sending lease had lapsed; %d messages it held "
                            "were given back to the queue", self.name, back)
            if self.lease.renewed(sent_at):
                break
        taken = self.outbound.reclaim_expired(self.clock())
        if taken:
            self.wake()
        for holder, count in sorted(taken.items()):
            log.warning("node %s: the sending lease of node %s ended; %d of its messages "
                        "were given back to the queue", self.name, holder, count)
        listed, now = nodes.listing(store), self.clock()
        self.metrics.cluster_nodes.set(sum(node.live(now) for node in listed))
        self.metrics.cluster_config_drift.set(nodes.drift(listed, now))
        return not self.lease.lapsed()

    def start(self) -> None:
        """The first heartbeat now (the senders claim nothing before it), then the
        thread; a store unreachable now is tried again by the thread."""
        self._guarded_beat()
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float) -> None:
        if self.thread.ident is not None:
            self.thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.lease.renew_every):
            self._guarded_beat()

    def _guarded_beat(self) -> None:
        try:
            self.beat()
        except Exception as exc:  # noqa: BLE001 - the database is away: try again next turn
            if not self._failing:
                log.error("node %s: cannot renew its sending lease (%s); it stops sending "
                          "in %.1fs unless the store answers", self.name, exc,
                          self.lease.remaining())
            self._failing = True
            return
        if self._failing:
            log.warning("node %s: the store answers again; its sending lease is renewed",
                        self.name)
        self._failing = False


def start_node(outbound: OutboundStore, metrics: Metrics, *, lease_seconds: float,
               config_sha256: Callable[[], str], in_flight: Callable[[], int],
               wake: Callable[[], None]) -> NodeHeartbeat | None:
    """This node's heartbeat, started, on a shared (PostgreSQL) store; None on SQLite."""
    if not outbound.shared:
        return None
    lease = SendLease(lease_seconds)
    outbound.send_lease = lease
    heartbeat = NodeHeartbeat(outbound, lease, metrics, config_sha256=config_sha256,
                              in_flight=in_flight, wake=wake)
    heartbeat.start()
    return heartbeat


def cluster(store: Store) -> list[dict[str, object]]:
    """The nodes' rows for ``mailsync status`` (the control socket's reply); [] when the
    store cannot be read now."""
    now = time.time()
    try:
        return [node.as_dict(now) for node in nodes.listing(store)]
    except (sqlite3.Error, MailsyncError) as exc:
        log.warning("cannot read the nodes: %s", exc)
        return []


def start_sharing(config: Config, outbound: OutboundStore, metrics: Metrics, *,
                  config_sha256: Callable[[], str], in_flight: Callable[[], int],
                  wake: Callable[[], None]) -> tuple[NodeHeartbeat | None, LeaseKeeper]:
    """This node's part in a shared store, started: its heartbeat (None on SQLite) and its
    leases (held by ``daemon.node`` and this process; on SQLite every lease is held). The
    heartbeat lists the mailboxes the leases hold."""
    node = start_node(outbound, metrics, lease_seconds=config.daemon.send_lease.total_seconds(),
                      config_sha256=config_sha256, in_flight=in_flight, wake=wake)
    leases = LeaseKeeper(outbound.store, config, metrics,
                         holder=f"{config.daemon.node}:{os.getpid()}")
    leases.start()
    if node is not None:
        node.held_mailboxes = leases.held_mailboxes
    return node, leases
