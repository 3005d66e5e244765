"""What the long-running daemon and ``run --once`` share: the store and the parts' common
state, and the start both make on it.

:class:`Runtime` holds the configuration in force (swapped whole by a reload), the
store, the VERP key, the metrics, the OAuth2 token cache (one token per identity for the
whole process: senders and pollers share it) and the one ``on_message`` hook; its
:meth:`Runtime.prepare` is the start of both: messages interrupted while sending queued
again, the history pruned, the applied configuration recorded, the metrics primed.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from pathlib import Path

from mailsync import files
from mailsync.activities.hook import ActivityHook
from mailsync.auth.tokens import TokenCache
from mailsync.config.load import Loaded
from mailsync.config.model import Config, IncomingServer
from mailsync.errors import MailsyncError
from mailsync.inbound.poller import Lease, Poller
from mailsync.outbound.queue import OutboundStore
from mailsync.outbound.verp import VerpKey
from mailsync.store import Store, leases
from mailsync.telemetry.metrics import Metrics

log = logging.getLogger("mailsync.daemon")


class AlreadyRunning(MailsyncError):
    """Another daemon holds this state_dir."""


def lock_state_dir(state_dir: Path) -> int:
    """Make ``state_dir`` (0750) and hold ``mailsync.pid`` in it, locked, with this
    process's id; the locked descriptor (closed when the daemon stops). AlreadyRunning
    when another daemon holds it."""
    files.make_dir(state_dir)  # 0750 whatever the umask
    path = state_dir / "mailsync.pid"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.read(fd, 32).decode(errors="replace").strip()
        os.close(fd)
        raise AlreadyRunning(f"{state_dir}: another mailsync daemon uses this state_dir"
                             + (f" (pid {other})" if other else "")) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


class Runtime:
    """The store and the state the parts share, for one process."""

    def __init__(self, config_path: Path, loaded: Loaded, store: Store, verp_key: VerpKey,
                 metrics: Metrics) -> None:
        assert loaded.config is not None
        self.config_path = config_path
        self.loaded = loaded
        self.config: Config = loaded.config
        self.store = store
        self.outbound = OutboundStore(store)
        self.outbound.node = self.config.daemon.node  # its claims' name on a shared store
        self.outbound.webhooks = self.config.webhooks  # their events, with each status change
        self.verp_key = verp_key  # from state_dir, for the senders and every poller
        self.metrics = metrics
        self.tokens = TokenCache(state_dir=self.config.daemon.state_dir,
                                 observer=metrics.oauth2_observer)
        self.hook = ActivityHook(self.config)  # fetched mail -> its rule's activity

    def prepare(self, *, prune: bool = True) -> None:
        """The start: requeue what was being sent, prune the history (unless ``prune`` is
        False: the daemon on a shared store prunes once it holds the singleton lease),
        record the applied configuration, prime the metrics."""
        config = self.config
        now = time.time()
        requeued = self.outbound.recover(now)
        if requeued:
            log.info("%d messages interrupted while sending were queued again", requeued)
        if prune:
            self.prune_once(now)
        self.record_applied(self.loaded)
        self.metrics.prime(config)

    def reconfigure(self, loaded: Loaded) -> None:
        """``loaded`` is the configuration in force from now on (the reload records it in
        the store once every part has it: :meth:`record_applied`)."""
        assert loaded.config is not None
        self.loaded = loaded
        self.config = loaded.config
        self.outbound.webhooks = loaded.config.webhooks
        self.hook.reconfigure(loaded.config)

    def record_applied(self, loaded: Loaded) -> None:
        last = self.store.last_applied_config()
        if last is None or last.sha256 != loaded.sha256:
            self.store.record_applied_config(loaded.text, loaded.sha256,
                                             str(self.config_path.resolve()))

    def prune_once(self, now: float) -> None:
        """Prune at the start of a run: on a shared (PostgreSQL) store only while this
        process holds the singleton lease, taken for the pruning and given back (a node
        that holds it goes on holding it: this run skips the pruning)."""
        retention = self.config.daemon.history_retention.total_seconds()
        if self.store.dialect != "postgresql":
            self.outbound.prune(now, retention)
            return
        holder = f"{leases.holder_name()}:once"
        term = self.config.daemon.mailbox_lease.total_seconds()
        with self.store.transaction() as conn:
            if not leases.take(conn, self.store.dialect, leases.SINGLETON, holder, term):
                return
        try:
            self.outbound.prune(now, retention)
        finally:
            with self.store.transaction() as conn:
                leases.release(conn, [leases.SINGLETON], holder)

    def prune(self) -> None:
        """Drop the content of the messages older than the history retention."""
        pruned = self.outbound.prune(time.time(),
                                     self.config.daemon.history_retention.total_seconds())
        if pruned:
            log.info("history retention: dropped the content of %d old messages", pruned)

    def poller(self, config: Config, server: IncomingServer, lease: Lease) -> Poller:
        """A poller of ``server`` under ``config``, with the shared key, tokens and hook,
        polling while ``lease`` holds."""
        return Poller(config, server, self.store, self.metrics, verp_key=self.verp_key,
                      on_message=self.hook, tokens=self.tokens, lease=lease)
