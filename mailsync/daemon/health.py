"""The daemon's health (``/healthz`` and the systemd watchdog): the supervisor loop alive,
no worker thread stopped, the store writable, and neither the spool pickup nor the sender
stuck with work waiting.

:class:`Health` is handed what it looks at (the store, the spool and deliver loops, the
configuration in force); the supervisor beats its heart and asks :meth:`Health.note_stalled`
each turn, the exporter's thread asks :meth:`Health.check`.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from mailsync.errors import MailsyncError
from mailsync.outbound import spool

if TYPE_CHECKING:
    from mailsync.config.model import Config
    from mailsync.daemon.spooling import DeliverLoop, SpoolLoop
    from mailsync.outbound.queue import OutboundStore
    from mailsync.store import Store

log = logging.getLogger("mailsync.daemon")

# The pickup or the sender finishing nothing for this long while work waits makes the
# daemon unhealthy (/healthz 503, no systemd watchdog ping). For tests only, the
# environment variable STUCK_ENV lowers it (read when the daemon starts).
STUCK_AFTER = 30.0
STUCK_ENV = "MAILSYNC_TEST_STUCK_AFTER"
HEARTBEAT_LATE = 10.0  # the supervisor loop not run for this long: unhealthy


def stuck_after(environ: dict[str, str] | os._Environ[str]) -> float:
    """The no-progress limit in seconds: STUCK_AFTER, or the tests' STUCK_ENV."""
    raw = environ.get(STUCK_ENV)
    if raw is None:
        return STUCK_AFTER
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise MailsyncError(f"{STUCK_ENV}={raw!r}: expected a number of seconds above 0 "
                            f"(for tests; unset it for the default of {STUCK_AFTER:g}s)")
    return value


class Health:
    """Whether the daemon works; the parts it looks at are attached as they start
    (:meth:`watch`), so a start that failed half-way is "starting", not a crash."""

    def __init__(self, stopping: threading.Event, config: Callable[[], Config]) -> None:
        self.stuck_after = STUCK_AFTER
        self.failed_threads: set[str] = set()
        self._stopping = stopping
        self._config = config
        self._heartbeat = time.monotonic()
        self._store: Store | None = None
        self._spool: SpoolLoop | None = None
        self._deliver: DeliverLoop | None = None
        self._outage_ended = 0.0  # when the last store outage ended (monotonic)
        self._stalled_why: str | None = None

    def watch(self, store: Store | None = None, spool_loop: SpoolLoop | None = None,
              deliver_loop: DeliverLoop | None = None) -> None:
        """Look at these parts from now on (each as soon as it exists)."""
        self._store = store or self._store
        self._spool = spool_loop or self._spool
        self._deliver = deliver_loop or self._deliver

    def beat(self, now: float) -> None:
        """The supervisor loop ran (its heartbeat)."""
        self._heartbeat = now

    def thread_failed(self, name: str) -> None:
        """A worker thread stopped on an unexpected error (logged by it): unhealthy."""
        self.failed_threads.add(name)

    def outage_ended(self) -> None:
        """The store commits again: the time it could not was no one being stuck."""
        self._outage_ended = time.monotonic()

    def check(self) -> tuple[bool, str]:
        """For /healthz: the supervisor loop alive and the store writable."""
        age = time.monotonic() - self._heartbeat
        if age > HEARTBEAT_LATE:
            return False, f"the supervisor loop has not run for {age:.0f}s"
        if self.failed_threads:
            return False, "stopped threads: " + ", ".join(sorted(self.failed_threads))
        for loop in (self._deliver, self._spool):
            if loop is not None and loop.thread.ident is not None \
                    and not loop.thread.is_alive() and not self._stopping.is_set():
                return False, f"thread {loop.thread.name} stopped"
        if self._store is None:
            return False, "starting"
        ok, why = self._store.writable(timeout=2.0)
        if not ok:
            return False, f"the store is not writable: {why}"
        stalled = self.stalled()
        if stalled is not None:
            return False, stalled
        return True, "ok"

    def stalled(self) -> str | None:
        """Why the pickup or the sender is stuck: it finished nothing for ``stuck_after``
        seconds while work waits (files in ``new/``, messages claimed for sending); None
        when not. A store that cannot commit is not this (it has its own 503 and must not
        get the daemon restarted), nor is the time it lasted."""
        store = self._store
        if store is None or store.health.failing:
            return None
        now = time.monotonic()
        since = self._spool.busy_since if self._spool is not None else None
        if self._spool is not None and since is not None:
            quiet = now - max(since, self._spool.progress, self._outage_ended)
            if quiet > self.stuck_after:
                spool_dir = self._config().daemon.spool_dir
                try:
                    waiting = len(spool.scan_names(spool_dir))
                except OSError:
                    waiting = 0
                if waiting:
                    files = "1 file waits" if waiting == 1 else f"{waiting} files wait"
                    return (f"the spool pickup has taken nothing for {quiet:.0f}s while "
                            f"{files} in {spool_dir / 'new'}")
        if self._deliver is not None:
            waiting, age = self._deliver.deliverer.in_hand()
            quiet = min(age, now - self._outage_ended)
            if waiting and quiet > self.stuck_after:
                messages = "1 message waits" if waiting == 1 else f"{waiting} messages wait"
                return (f"the sender has finished no message for {quiet:.0f}s while "
                        f"{messages} to be sent")
        return None

    def note_stalled(self) -> str | None:
        """:meth:`stalled`, logged once when it starts and once when it ends."""
        why = self.stalled()
        if why is not None and self._stalled_why is None:
            log.error("made no progress: %s; /healthz fails and the systemd watchdog is not "
                      "pinged until it does", why)
        elif why is None and self._stalled_why is not None:
            log.warning("progress again: %s no longer", self._stalled_why.split(" has ")[0])
        self._stalled_why = why
        return why


def check_store(store: Store, quiet: float) -> None:
    """A store that cannot commit is probed with a real commit (the outage ends once one
    passes and the disk has room); one quiet for ``quiet`` seconds gets its WAL
    checkpointed (and truncated on a tight disk: Store.checkpoint)."""
    if store.health.failing:
        store.probe()
    elif time.monotonic() - store.last_commit >= quiet:
        store.checkpoint()


def status_line(config: Config, sha256: str, store: Store | None,
                outbound: OutboundStore | None) -> str:
    """The daemon's one-line state: `mailsync status`, sd_notify's STATUS, the start log."""
    servers = (f"{len(config.sending_servers())} outgoing, "
               f"{len(config.incoming_servers)} incoming servers")
    sha = f"config {sha256[:12]}"
    ok, why = store.health.state() if store is not None else (True, "")
    if not ok:
        return f"{servers}; {why}; {sha}"
    if outbound is None:
        return f"{servers}; {sha}"
    try:
        counts = outbound.counts()
    except (sqlite3.Error, MailsyncError) as exc:
        return f"{servers}; queue unreadable ({exc}); {sha}"
    waiting = counts["queued"] + counts["deferred"] + counts["sending"]
    return (f"{servers}; {waiting} waiting, {counts['held']} held, {counts['sent']} sent, "
            f"{counts['failed']} failed; {sha}")
