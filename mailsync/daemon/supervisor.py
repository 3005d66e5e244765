"""The long-running daemon (docs/design.md §5): ``mailsync run -c FILE``.

Threads, not asyncio. The supervisor (the main thread) owns the configuration and the
runtime objects and is the only one that changes them; everything else reads a
reference that is swapped whole. :class:`Daemon` starts the parts, supervises them and
stops them; each part is a module of its own:

- :mod:`~mailsync.daemon.runtime`: the store and what the parts share, and the start the
  daemon makes on it as ``run --once`` does (:mod:`~mailsync.daemon.once`).
- :mod:`~mailsync.daemon.spooling`: the ``mailsync-spool`` thread (the pickup child's
  passes) and ``mailsync-deliver`` with its workers (one deliverer pass that lives as
  long as the daemon, with one connection pool per outgoing server).
- :mod:`~mailsync.daemon.mailboxes`: a ``mailsync-poll-NAME`` thread per incoming server.
- :mod:`~mailsync.daemon.leases`: on a shared store, the leases of the mailboxes this
  node polls and of the singleton work (the retention pruning), ``mailsync-leases``.
- :mod:`~mailsync.daemon.watch`: watchdog's observer on the config file's directory,
  and the spool thread's inotify watch on ``spool/new/``.
- :mod:`~mailsync.daemon.health`: ``/healthz`` and the systemd watchdog's verdict.
- :mod:`~mailsync.daemon.reload`: load → validate → plan → apply, one
  ``part.reconfigure(new)`` after another; the metrics endpoint it may move.
- :mod:`~mailsync.daemon.control`: the control socket (``mailsync reload``/``status``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mailsync.config.load import Loaded
from mailsync.config.model import Config
from mailsync.daemon.admin import AdminConsole, daemon_status
from mailsync.daemon.collectors import register_all
from mailsync.daemon.control import ControlServer, Locator, socket_path
from mailsync.daemon.health import Health, check_store, status_line, stuck_after
from mailsync.daemon.leases import LeaseKeeper
from mailsync.daemon.mailboxes import Mailboxes
from mailsync.daemon.node import NodeHeartbeat, cluster, start_sharing
from mailsync.daemon.reload import (
    Endpoint,
    LogFormat,
    Parts,
    Reloader,
    ReloadOutcome,
    Request,
    Series,
    set_reload_metrics,
)
from mailsync.daemon.runtime import Runtime, lock_state_dir
from mailsync.daemon.sdnotify import Notifier
from mailsync.daemon.spooling import DeliverLoop, Intake, SpoolLoop
from mailsync.daemon.wakeup import Wakeup
from mailsync.daemon.watch import DEBOUNCE, Watch
from mailsync.daemon.webhooks import WebhookThreads
from mailsync.errors import MailsyncError
from mailsync.outbound import spool
from mailsync.outbound.deliver import Deliverer
from mailsync.outbound.pickup import PickupService
from mailsync.outbound.verp import load_key
from mailsync.store import Store, db_path, store_error
from mailsync.store.leases import SINGLETON
from mailsync.telemetry.metrics import Metrics

log = logging.getLogger("mailsync.daemon")

IDLE_CLOSE_EVERY = 5.0
PRUNE_EVERY = 3600.0
STATUS_EVERY = 10.0
STOP_TIMEOUT = 30.0  # for in-flight SMTP transactions at SIGTERM
STORE_PROBE_EVERY = 1.0  # a store that cannot commit is tried this often
CHECKPOINT_QUIET = 2.0  # the WAL is checkpointed once nothing was written for this long


class Daemon:
    """One running mailsync. :meth:`run` (in the main thread) returns the exit code."""

    # Set by start(); shutdown() copes with a start that failed half-way.
    store: Store
    runtime: Runtime
    deliverer: Deliverer
    reloader: Reloader

    def __init__(self, config_path: Path, loaded: Loaded, *,
                 notifier: Notifier | None = None, new_store: bool = False) -> None:
        assert loaded.config is not None
        self.config_path = config_path
        self.new_store = new_store  # --new-store: accept a missing or another store
        self._loaded = loaded  # until the runtime holds the configuration in force
        self.notifier = notifier or Notifier()
        self.metrics = Metrics()
        self._stopping = threading.Event()
        self.health = Health(self._stopping, lambda: self.config)
        self._wakeup = Wakeup()  # the supervisor's sleep, and the signals' flags
        self._requests: queue.Queue[Request] = queue.Queue()
        self._lock_fd = -1
        self._pickup: PickupService | None = None
        self._spool: SpoolLoop | None = None
        self._deliver: DeliverLoop | None = None
        self._mailboxes: Mailboxes | None = None
        self._leases: LeaseKeeper | None = None
        self._watch: Watch | None = None
        self._endpoint: Endpoint | None = None
        self._control: ControlServer | None = None
        self._locator: Locator | None = None
        self._admin: AdminConsole | None = None  # daemon.admin_listen's console
        self.node: NodeHeartbeat | None = None  # a shared (PostgreSQL) store only
        self._webhooks: WebhookThreads | None = None  # one thread per webhook

    @property
    def loaded(self) -> Loaded:
        """The configuration in force, as loaded (its text and hash)."""
        runtime: Runtime | None = getattr(self, "runtime", None)
        return runtime.loaded if runtime is not None else self._loaded

    @property
    def config(self) -> Config:
        config = self.loaded.config
        assert config is not None
        return config

    # -- start ---------------------------------------------------------------------------
    def start(self) -> None:
        """Open the store, take the spool backlog, start every thread; then READY=1."""
        config, loaded = self.config, self._loaded
        state_dir = config.daemon.state_dir
        self.health.stuck_after = stuck_after(os.environ)
        self._lock_fd = lock_state_dir(state_dir)
        # Refused when state_dir/store-id records a store that is missing or replaced, or
        # when the tables read at start are damaged (StoreLost, StoreDamaged).
        self.store = store = Store.open(state_dir, new_store=self.new_store, check=True,
                                        backend=config.daemon.store)
        store.on_outage = self._store_outage
        self.health.watch(store=store)
        runtime = Runtime(self.config_path, loaded, store, load_key(state_dir), self.metrics)
        # As `run --once` does; on a shared store the singleton's holder prunes (_supervise)
        runtime.prepare(prune=store.dialect != "postgresql")
        self.runtime = runtime
        set_reload_metrics(self.metrics, loaded, ok=True, count=False)

        # The spool is taken by a long-lived child process (Postfix's pickup), forked
        # now, before this process has any thread, so that parsing and composing do not
        # take the GIL from the senders.
        spool.ensure_dirs(config.daemon.spool_dir)
        try:
            self._pickup = PickupService(config, runtime.verp_key)
        except OSError as exc:
            log.warning("no pickup process (%s): the spool is taken in this process", exc)

        self.deliverer = Deliverer(config, runtime.outbound, self.metrics,
                                   verp_key=runtime.verp_key, tokens=runtime.tokens)
        self._deliver = DeliverLoop(self.deliverer, self._stopping)
        self.node, self._leases = start_sharing(  # before the first claim
            config, runtime.outbound, self.metrics, config_sha256=lambda: self.loaded.sha256,
            in_flight=lambda: self.deliverer.in_hand()[0], wake=self.deliverer.wake)
        self._spool = SpoolLoop(store, self._stopping, self.deliverer)
        intake = Intake(config, runtime.outbound, self.metrics, verp_key=runtime.verp_key,
                        on_commit=self._spool.committed, pickup=self._pickup)
        self.health.watch(spool_loop=self._spool, deliver_loop=self._deliver)
        self._deliver.thread.start()
        self._webhooks = WebhookThreads(store)
        self._webhooks.start(config)
        self._spool.start(intake)
        self._mailboxes = Mailboxes(runtime.poller, self.health.thread_failed, self._leases)
        self._mailboxes.start(config)
        self._watch = Watch(self.config_path, self._wakeup.poke, self._spool.wake)
        self._watch.start(config, loaded.sha256)
        self._control = ControlServer(socket_path(state_dir), self._handle)
        self._locator = Locator(self.config_path, self._control.path)
        self._admin = AdminConsole(runtime, self.deliverer.wake, lambda: daemon_status(
            self.deliverer.pools, self._mailboxes, getattr(self, "reloader", None),
            self.config_path))
        self._admin.start(config)
        endpoint = self._start_exporter(config.daemon.metrics_listen)  # /healthz: all above runs
        self.reloader = Reloader(
            runtime, Parts(always=[self._deliver, self._spool, self._mailboxes,
                                   Series(self.metrics, config), self._admin, self._webhooks],
                           by_setting={"spool_dir": self._watch, "metrics_listen": endpoint,
                                       "log_format": LogFormat()}),
            watch=self._watch, endpoint=endpoint, notifier=self.notifier,
            summary=self._summary, wake_sender=self.deliverer.wake)
        log.info("mailsync started: %s", self._summary())
        self.notifier.ready(self._summary())

    def _start_exporter(self, listen: str) -> Endpoint:
        """Serve /metrics (with the store's queue and activity gauges) and /healthz."""
        registry = self.metrics.registry
        register_all(registry, outbound=lambda: self.runtime.outbound, store=lambda: self.store,
                     config=lambda: self.config, webhooks=lambda: self._webhooks)
        self._endpoint = Endpoint(registry, self.health.check)
        self._endpoint.start(listen)
        return self._endpoint

    # -- the supervisor --------------------------------------------------------------------
    def run(self) -> int:
        """Start, supervise until SIGTERM/SIGINT, stop; the exit code."""
        self._wakeup.install_signals()
        try:
            self.start()
        except (MailsyncError, OSError, ValueError, sqlite3.Error) as exc:
            if isinstance(exc, sqlite3.Error):  # a damaged page met after the check
                exc = store_error(exc, db_path(self.config.daemon.state_dir))
            log.error("cannot start: %s", exc)
            self.shutdown()
            return 1
        code = 0
        try:
            self._supervise()
        except Exception:  # noqa: BLE001 - exit non-zero: systemd restarts (on-failure)
            log.exception("the supervisor failed; stopping")
            code = 1
        finally:
            self.shutdown()
        return code

    def request_stop(self) -> None:
        """Stop the daemon (from any thread; signals set a flag instead)."""
        self._wakeup.stop_signalled = True
        self._wakeup.poke()

    def reload(self, source: str) -> ReloadOutcome:
        """Load → validate → plan → apply (supervisor thread only)."""
        return self.reloader.reload(source)

    def _supervise(self) -> None:
        assert self._watch is not None
        watch, reloader, wakeup = self._watch, self.reloader, self._wakeup
        watchdog_every = self.notifier.watchdog_interval()
        now = time.monotonic()
        next_ping = now
        next_idle_close = now + IDLE_CLOSE_EVERY
        # On a shared store: at once when this node first holds the singleton lease.
        next_prune = now + (PRUNE_EVERY if self.store.dialect != "postgresql" else 0.0)
        next_status = now + STATUS_EVERY
        next_store_check = now + STORE_PROBE_EVERY
        seen_hups = 0
        while True:
            if wakeup.stop_signalled:
                self._stopping.set()
                break
            now = time.monotonic()
            self.health.beat(now)
            if wakeup.hups != seen_hups:
                seen_hups = wakeup.hups
                self.reload("SIGHUP")
            stalled = self.health.note_stalled()
            if watchdog_every is not None and now >= next_ping:
                if stalled is None:  # stuck with work waiting: systemd restarts it
                    self.notifier.watchdog()
                next_ping = now + watchdog_every
            while True:
                try:
                    request = self._requests.get_nowait()
                except queue.Empty:
                    break
                request.outcome = self.reload(request.source)
                request.done.set()
            if (source := watch.debounced(now)) is not None:
                reloader.file_changed(source)
            # The watcher's safety net (a missed event, a config on a network mount).
            if (source := watch.periodic(now)) is not None:
                reloader.file_changed(source)
            if now >= next_idle_close:
                next_idle_close = now + IDLE_CLOSE_EVERY
                self._guarded("closing idle SMTP sessions", self.deliverer.close_idle)
            if now >= next_store_check:
                next_store_check = now + STORE_PROBE_EVERY
                self._guarded("checking the store", self._check_store)
            if now >= next_prune and (self._leases is None or self._leases.holds(SINGLETON)):
                next_prune = now + PRUNE_EVERY
                self._guarded("pruning the history", self.runtime.prune)
            if now >= next_status:
                next_status = now + STATUS_EVERY
                self.notifier.status(self._summary())
            timeout = min(1.0, max(0.0, next_ping - now) if watchdog_every else 1.0)
            if watch.changed_at is not None:
                timeout = min(timeout, DEBOUNCE)
            wakeup.sleep(timeout)

    @staticmethod
    def _guarded(what: str, task: Callable[[], object]) -> None:
        """A periodic task: its failure (the store busy for 30 s, ...) is logged, and the
        supervisor goes on; the task runs again at its next turn."""
        try:
            task()
        except Exception:  # noqa: BLE001
            log.exception("%s failed; trying again later", what)

    def _check_store(self) -> None:
        check_store(self.store, CHECKPOINT_QUIET)

    def _store_outage(self, started: bool, error: str) -> None:
        """The store stopped or started committing again (any thread, store lock held)."""
        if started:
            log.error("the store cannot commit: %s; spool files wait in new/, outcomes "
                      "of messages being sent wait in memory, until it can", error)
            return
        log.warning("the store commits again: taking the spool and sending")
        self.health.outage_ended()  # waiting for the store was not being stuck
        if self._spool is not None:
            self._spool.wake.set()
        deliverer: Deliverer | None = getattr(self, "deliverer", None)
        if deliverer is not None:
            deliverer.wake()

    def _summary(self) -> str:
        store: Store | None = getattr(self, "store", None)
        return status_line(self.config, self.loaded.sha256, store,
                           self.runtime.outbound if store is not None else None)

    def _handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """A control-socket command (runs in the socket's thread)."""
        command = request.get("command")
        if command == "reload":
            req = Request("mailsync reload")
            self._requests.put(req)
            self._wakeup.poke()
            while not req.done.wait(0.5):
                if self._stopping.is_set():
                    return {"ok": False, "error": "the daemon is stopping"}
            assert req.outcome is not None
            return req.outcome.as_dict()
        if command == "wake":  # `mailsync queue retry/release`: a message is due now
            self.deliverer.wake()
            return {"ok": True}
        if command == "status":
            return {"ok": True, "status": self._summary(), "pid": os.getpid(),
                    "config_sha256": self.loaded.sha256, "last_reload": self.reloader.last,
                    **({"node": self.node.name, "nodes": cluster(self.store)}
                       if self.node is not None else {})}
        return {"ok": False, "error": f"unknown command {command!r} (reload, status, wake)"}

    # -- stop -----------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop taking work, finish the SMTP transactions in flight, close everything."""
        self._stopping.set()
        self.notifier.stopping("stopping: finishing the messages in flight")
        log.info("stopping: finishing the messages in flight")
        if self._watch is not None:
            self._watch.stop()
        if self._locator is not None:
            self._locator.close()
        if self._control is not None:
            self._control.close()
        if self._mailboxes is not None:
            self._mailboxes.retire()
        if self._spool is not None:
            self._spool.wake.set()
        if self._pickup is not None:
            self._pickup.close()  # mid-pass too: what it had not taken waits in new/
        deliverer: Deliverer | None = getattr(self, "deliverer", None)
        if deliverer is not None:
            deliverer.halt()
        if self._deliver is not None and self._deliver.thread.ident is not None:
            sender = self._deliver.thread
            sender.join(STOP_TIMEOUT)
            if sender.is_alive():
                log.error("messages still being sent after %gs; exiting anyway (they are "
                          "queued again at the next start)", STOP_TIMEOUT)
        if self._spool is not None:
            if self._spool.thread.ident is not None:
                self._spool.thread.join(5.0)
            self._spool.wake.close()
        if self._mailboxes is not None:
            self._mailboxes.join(5.0)
        if self._leases is not None:  # after the pollers: other nodes take over at once
            self._leases.stop()
        if self.node is not None:  # after the senders: their claims stay leased until here
            self.node.stop()
            self.node.join(5.0)
        if deliverer is not None:
            deliverer.close()
        if self._webhooks is not None:  # what is not posted yet waits in the outbox
            self._webhooks.stop()
        if self._watch is not None:
            self._watch.join(2.0)
        if self._admin is not None:
            self._admin.close()
        if self._endpoint is not None:
            self._endpoint.close()
        store: Store | None = getattr(self, "store", None)
        if store is not None:
            with contextlib.suppress(Exception):
                store.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
        self._wakeup.close()
        log.info("mailsync stopped")


def run(config_path: Path, loaded: Loaded,
        notifier: Callable[[], Notifier] = Notifier, *, new_store: bool = False) -> int:
    """``mailsync run``: the daemon until SIGTERM; its exit code."""
    return Daemon(config_path, loaded, notifier=notifier(), new_store=new_store).run()
