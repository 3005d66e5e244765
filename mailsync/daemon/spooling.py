"""Spool and sending: the daemon's ``mailsync-spool`` and ``mailsync-deliver`` threads.

- :class:`Intake` takes spool files into the store: through the long-lived pickup child
  (forked before any thread, so that parsing and composing do not take the GIL from the
  senders), or in this process when there is none or it died.
- :class:`SpoolLoop` runs an intake pass when inotify reports a file in ``spool/new/``
  (its :class:`~mailsync.daemon.wakeup.Doorbell`) and every ``RESCAN`` seconds (the
  safety net and the source of truth: a missed event delays a message, it never loses
  one).
- :class:`DeliverLoop` keeps one :class:`~mailsync.outbound.deliver.Deliverer` pass
  running for the daemon's life, woken by each spool commit.

Each loop is handed what it drives and the daemon's stop event, never the daemon.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from mailsync.config.model import Config
from mailsync.daemon.wakeup import Doorbell
from mailsync.errors import MailsyncError, StoreUnavailable
from mailsync.outbound import spool
from mailsync.outbound.deliver import Deliverer
from mailsync.outbound.ingest import Ingester
from mailsync.outbound.pickup import PickupService
from mailsync.outbound.queue import OutboundStore
from mailsync.outbound.types import IngestStats
from mailsync.outbound.verp import VerpKey
from mailsync.store import Store
from mailsync.telemetry.metrics import Metrics

log = logging.getLogger("mailsync.daemon")

RESCAN = 5.0  # spool rescan (seconds)
SPOOL_PASS = 1000  # files per ingestion pass, so a stop is never far away
IDLE_SEND_POLL = 1.0  # the queue is looked at this often even without a wake-up
STORE_PROBE_EVERY = 1.0  # a store that cannot commit is tried this often
# A pass failing the same way (a DKIM key it cannot read) is logged when it starts, when
# its reason changes, and again this often while it lasts, not at every RESCAN.
FAILURE_RELOG = 600.0


class Intake:
    """Takes spool files into the store, one pass at a time, from one thread."""

    def __init__(self, config: Config, outbound: OutboundStore, metrics: Metrics, *,
                 verp_key: VerpKey, on_commit: Callable[[], None],
                 pickup: PickupService | None) -> None:
        self.pickup = pickup
        self._config = config
        self.metrics = metrics
        self._on_commit = on_commit
        self._ingester = Ingester(config, outbound, metrics, on_commit=on_commit,
                                  verp_key=verp_key)

    def reconfigure(self, config: Config) -> None:
        """Take the next passes under ``config`` (any thread; a pass under way ends under
        the configuration it began with). Its spool directories are made now, before
        anything watches them."""
        spool.ensure_dirs(config.daemon.spool_dir)
        self._config = config
        if self.pickup is not None:
            self.pickup.reconfigure(config)

    def run_pass(self, limit: int) -> IngestStats:
        """One pass (at most ``limit`` files); StoreUnavailable, MailsyncError as the
        pickup or the ingester raise them."""
        if self.pickup is not None:
            return self.pickup.run_pass(self.metrics, on_commit=self._on_commit, limit=limit)
        if self._ingester.config is not self._config:
            self._ingester.reconfigure(self._config)
        return self._ingester.run_once(limit=limit)


class SpoolLoop:
    """The ``mailsync-spool`` thread: intake passes until ``stopping``. Made first, so
    that the intake reports its commits to :meth:`committed`; then :meth:`start`."""

    intake: Intake

    def __init__(self, store: Store, stopping: threading.Event, deliverer: Deliverer) -> None:
        self.wake = Doorbell()  # a file arrived, or the store commits again
        self._store = store
        self._stopping = stopping
        self._deliverer = deliverer
        # When the running pass began (None between passes) and last committed: what the
        # no-progress check (daemon.health) looks at.
        self.busy_since: float | None = None
        self.progress = time.monotonic()
        # Why the passes fail (None: the last one did not) and when that was last logged.
        self._failing: str | None = None
        self._failing_logged = 0.0
        self.thread = threading.Thread(target=self._run, name="mailsync-spool", daemon=True)

    def start(self, intake: Intake) -> None:
        """Run ``intake``'s passes in the thread from now on."""
        self.intake = intake
        self.thread.start()

    def reconfigure(self, config: Config) -> None:
        """The next passes under ``config``, the next one now (grants may have changed
        what the spool may hold)."""
        self.intake.reconfigure(config)
        self.wake.set()

    def committed(self) -> None:
        """A spool batch was committed (in the pickup or here): progress; wake the sender."""
        self.progress = time.monotonic()
        self._deliverer.wake()

    def _failed(self, why: str) -> None:
        """A pass failed on an error of mailsync's own: logged unless it is the same as
        the last one, logged less than FAILURE_RELOG ago."""
        self.intake.metrics.spool_intake_failing.set(1)
        now = time.monotonic()
        if why == self._failing and now - self._failing_logged < FAILURE_RELOG:
            log.debug("taking the spool failed again: %s", why)
            return
        again = "still " if why == self._failing else ""
        self._failing, self._failing_logged = why, now
        log.error("taking the spool %sfails: %s; its files wait in new/ and are tried "
                  "again every %gs and when one arrives", again, why, RESCAN)

    def _run(self) -> None:
        intake = self.intake
        while not self._stopping.is_set():
            # Cleared before the pass, not after the wait: a file renamed into new/ after
            # this point is either seen by this pass or wakes the wait below.
            self.wake.clear()
            if self._store.health.failing:
                # Nothing could be committed: the files stay in new/ (none is read or
                # rejected) until a probe or a sender's commit passes.
                self.wake.wait(STORE_PROBE_EVERY)
                continue
            pickup = intake.pickup
            self.busy_since = time.monotonic()
            try:
                stats = intake.run_pass(SPOOL_PASS)
                more = stats.files >= SPOOL_PASS
            except StoreUnavailable as exc:
                if pickup is not None:
                    self._store.note_failure(exc)  # the child's commit: this process knows
                # Never a busy loop, even when another writer's commit ended the outage.
                self.wake.wait(STORE_PROBE_EVERY)
                continue
            except MailsyncError as exc:
                if self._stopping.is_set():
                    return
                if pickup is not None and not pickup.alive:
                    log.error("%s; the spool is taken in the daemon process from now on", exc)
                    intake.pickup = None
                    continue
                self._failed(str(exc))
                more = False
            except Exception:  # noqa: BLE001 - the store may be busy or full: retry later
                log.exception("taking the spool failed; retrying in %gs", RESCAN)
                more = False
            else:
                if self._failing is not None:
                    intake.metrics.spool_intake_failing.set(0)
                    log.warning("the spool is taken again (it failed: %s)", self._failing)
                    self._failing = None
            finally:
                self.busy_since = None
            if more:
                continue
            self.wake.wait(RESCAN)


class DeliverLoop:
    """The ``mailsync-deliver`` thread: one deliverer pass after another until
    ``stopping`` (a reload that changes the number of workers halts one)."""

    def __init__(self, deliverer: Deliverer, stopping: threading.Event) -> None:
        self.deliverer = deliverer
        self._stopping = stopping
        self.thread = threading.Thread(target=self._run, name="mailsync-deliver", daemon=True)

    def reconfigure(self, config: Config) -> None:
        """Send the next messages under ``config``; the pass restarts when the number of
        workers changes (as many as sessions)."""
        deliverer = self.deliverer
        workers = deliverer.default_workers()
        retired = deliverer.reconfigure(config)
        if retired:
            log.info("outgoing servers replaced or removed (sessions drained): %s",
                     ", ".join(retired))
        if deliverer.default_workers() != workers:
            deliverer.halt()

    def _run(self) -> None:
        deliverer = self.deliverer
        while True:
            # Resume, then look: a stop sets `stopping` before it halts, so it is either
            # seen here or halts the pass below.
            deliverer.resume()
            if self._stopping.is_set():
                break
            try:
                deliverer.run_once(deliverer.default_workers(), until=self._stopping,
                                   idle=IDLE_SEND_POLL)
            except StoreUnavailable:  # logged by the store's outage handler
                self._stopping.wait(STORE_PROBE_EVERY)
            except Exception:  # noqa: BLE001 - the store may be busy: retry, do not die
                log.exception("the sender failed; restarting it in 1s")
                self._stopping.wait(1.0)
