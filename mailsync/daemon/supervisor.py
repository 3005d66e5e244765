"""The long-running daemon (docs/design.md §5): ``mailsync run -c FILE``.

Threads, not asyncio. The supervisor (the main thread) owns the configuration and the
runtime objects and is the only one that changes them; everything else reads a
reference that is swapped whole:

- ``mailsync-spool``: takes spool files into the store when watchdog (inotify) reports
  one in ``spool/new/``, and rescans every ``RESCAN`` seconds (the safety net and the
  source of truth: a missed event delays a message, it never loses one).
- ``mailsync-deliver`` and its workers (:class:`~mailsync.outbound.deliver.Deliverer`):
  one pass that lives as long as the daemon, woken by each spool commit, with one
  connection pool per outgoing server.
- ``mailsync-poll-NAME``: one per incoming server, polling every ``poll_interval`` or
  waiting in IMAP IDLE.
- the metrics exporter (``/metrics``, ``/healthz``), the control socket
  (``mailsync reload``) and watchdog's observer (the config file's directory).

A reload (file change after a short debounce, unless ``daemon.auto_reload`` is false;
SIGHUP; ``mailsync reload``) runs in the supervisor: load → validate → plan → apply.
Applying touches only what changed: pools of unchanged servers keep their sessions,
pollers of unchanged mailboxes keep theirs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import queue
import select
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from mailsync import files
from mailsync.activities.store import ActivityCollector, schedule_for_fetched
from mailsync.auth.tokens import TokenCache
from mailsync.config.load import Loaded, load_text, read_text
from mailsync.config.model import Config, IncomingServer
from mailsync.config.plan import diff
from mailsync.daemon.collectors import QueueCollector, StoreCollector
from mailsync.daemon.control import ControlServer, Locator, socket_path
from mailsync.daemon.sdnotify import Notifier
from mailsync.errors import ConfigError, MailsyncError, StoreUnavailable
from mailsync.inbound.poller import Poller, retry_delay
from mailsync.outbound import spool
from mailsync.outbound.deliver import Deliverer
from mailsync.outbound.ingest import Ingester
from mailsync.outbound.pickup import PickupService
from mailsync.outbound.queue import OutboundStore
from mailsync.outbound.verp import VerpKey, load_key
from mailsync.store import Store, db_path, store_error
from mailsync.telemetry import logs
from mailsync.telemetry.exporter import parse_listen, start_exporter
from mailsync.telemetry.metrics import Metrics

log = logging.getLogger("mailsync.daemon")

RESCAN = 5.0  # spool rescan and config-file check (seconds)
DEBOUNCE = 0.1  # editors write, rename and chmod in a burst: wait for quiet
SPOOL_PASS = 1000  # files per ingestion pass, so a stop is never far away
IDLE_CLOSE_EVERY = 5.0
PRUNE_EVERY = 3600.0
STATUS_EVERY = 10.0
STOP_TIMEOUT = 30.0  # for in-flight SMTP transactions at SIGTERM
IDLE_SEND_POLL = 1.0  # the queue is looked at this often even without a wake-up
STORE_PROBE_EVERY = 1.0  # a store that cannot commit is tried this often
CHECKPOINT_QUIET = 2.0  # the WAL is checkpointed once nothing was written for this long
# The pickup or the sender finishing nothing for this long while work waits makes the
# daemon unhealthy (/healthz 503, no systemd watchdog ping). For tests only, the
# environment variable STUCK_ENV lowers it (read when the daemon starts).
STUCK_AFTER = 30.0
STUCK_ENV = "MAILSYNC_TEST_STUCK_AFTER"


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


@dataclass
class ReloadOutcome:
    """What a reload did: ``applied``, ``unchanged`` or ``refused``."""

    result: str
    summary: str
    errors: list[str] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)
    held: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.result != "refused"

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "result": self.result, "summary": self.summary,
                "errors": self.errors, "changes": self.changes, "held": self.held}


class _Request:
    """A reload asked for from another thread, answered by the supervisor."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.done = threading.Event()
        self.outcome: ReloadOutcome | None = None


class AlreadyRunning(MailsyncError):
    """Another daemon holds this state_dir."""


class _Mailbox:
    """The thread polling one incoming server."""

    def __init__(self, daemon: Daemon, server: IncomingServer,
                 previous: _Mailbox | None = None) -> None:
        self.server = server
        self.stop = threading.Event()
        self._daemon = daemon
        self._previous = previous
        self.poller = Poller(daemon.config, server, daemon.store, daemon.metrics,
                             verp_key=daemon.verp_key, on_message=daemon.on_message,
                             tokens=daemon.tokens)
        self.thread = threading.Thread(target=self._run, name=f"mailsync-poll-{server.name}",
                                       daemon=True)
        self.thread.start()

    def _run(self) -> None:
        if self._previous is not None:
            # The session of the replaced poller is closed before this one polls.
            self._previous.thread.join()
            self._previous = None
        interval = self.server.poll_interval.total_seconds()
        try:
            while not self.stop.is_set():
                result = self.poller.poll_once()
                if self.stop.is_set():
                    break
                if result.ok:
                    self.poller.wait_for_news(interval, self.stop)
                else:  # probed on a backoff: 1 s, 2 s, 4 s, ... (a dead server, not a loop)
                    self.stop.wait(retry_delay(self.poller.failures, interval))
        except Exception:  # noqa: BLE001 - never silently: logged, and the daemon unhealthy
            log.exception("%s: the poller stopped on an unexpected error", self.server.name)
            self._daemon.failed_threads.add(self.thread.name)
        finally:
            self.poller.close()

    def retire(self) -> None:
        self.stop.set()


class Daemon:
    """One running mailsync. :meth:`run` (in the main thread) returns the exit code."""

    # Set by start(); shutdown() copes with a start that failed half-way.
    store: Store
    outbound: OutboundStore
    verp_key: VerpKey  # from state_dir, for the deliverer and every poller
    deliverer: Deliverer
    ingester: Ingester
    _deliver_thread: threading.Thread
    _spool_thread: threading.Thread

    def __init__(self, config_path: Path, loaded: Loaded, *,
                 notifier: Notifier | None = None, new_store: bool = False) -> None:
        assert loaded.config is not None
        self.config_path = config_path
        self.new_store = new_store  # --new-store: accept a missing or another store
        self.loaded = loaded
        self.config: Config = loaded.config
        self.notifier = notifier or Notifier()
        self.metrics = Metrics()
        self.failed_threads: set[str] = set()
        self._stopping = threading.Event()
        # The supervisor sleeps in select() on this socket pair: other threads write a
        # byte to wake it (_poke), and so does CPython's C-level signal handler
        # (set_wakeup_fd). The Python-level handlers only set these plain attributes:
        # taking a lock in a signal handler can deadlock the main thread that it
        # interrupted while holding that same lock.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._signalled_stop = False
        self._signalled_hups = 0
        self._spool_wake = threading.Event()
        self._requests: queue.Queue[_Request] = queue.Queue()
        self._file_changed_at: float | None = None
        self._heartbeat = time.monotonic()
        self._lock_fd = -1
        self._mailboxes: dict[str, _Mailbox] = {}
        self._exporter: Any = None
        self._control: ControlServer | None = None
        self._locator: Locator | None = None
        self._observer: Any = None
        self._spool_watch: Any = None
        self._file_stat: tuple[int, int, int] | None = None
        self._unapplied_sha256: str | None = None  # a saved file waiting (auto_reload off)
        self._pickup: Any = None
        self.stuck_after = STUCK_AFTER
        # When the running spool pass began (None between passes) and last committed, and
        # when the last store outage ended: what the no-progress check looks at.
        self._spool_busy_since: float | None = None
        self._spool_progress = time.monotonic()
        self._outage_ended = 0.0
        self._stalled_why: str | None = None
        # The last reload's outcome (None: none since the start), for `mailsync status`.
        self._last_reload: dict[str, Any] | None = None

    # -- start ---------------------------------------------------------------------------
    def _lock_state_dir(self, state_dir: Path) -> None:
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
        self._lock_fd = fd

    def start(self) -> None:
        """Open the store, take the spool backlog, start every thread; then READY=1."""
        config = self.config
        self.stuck_after = stuck_after(os.environ)
        self._lock_state_dir(config.daemon.state_dir)
        # Refused when state_dir/store-id records a store that is missing or replaced, or
        # when the tables read at start are damaged (StoreLost, StoreDamaged).
        self.store = Store.open(config.daemon.state_dir, new_store=self.new_store, check=True)
        self.store.on_outage = self._store_outage
        self.verp_key = load_key(config.daemon.state_dir)
        self.outbound = OutboundStore(self.store)
        now = time.time()
        requeued = self.outbound.recover(now)
        if requeued:
            log.info("%d messages interrupted while sending were queued again", requeued)
        self.outbound.prune(now, config.daemon.history_retention.total_seconds())
        self._record_applied(self.loaded)
        self.metrics.prime(config)
        self._set_reload_metrics(self.loaded, ok=True, count=False)

        # The spool is taken by a long-lived child process (Postfix's pickup), forked
        # now, before this process has any thread, so that parsing and composing do not
        # take the GIL from the senders.
        spool.ensure_dirs(config.daemon.spool_dir)
        try:
            self._pickup = PickupService(config, self.verp_key)
        except OSError as exc:
            log.warning("no pickup process (%s): the spool is taken in this process", exc)

        # One OAuth2 token per identity for the whole daemon: senders and pollers share it.
        self.tokens = TokenCache(state_dir=config.daemon.state_dir,
                                 observer=self.metrics.oauth2_observer)
        self.deliverer = Deliverer(config, self.outbound, self.metrics, verp_key=self.verp_key,
                                   tokens=self.tokens)
        self.ingester = Ingester(config, self.outbound, self.metrics,
                                 on_commit=self._spool_committed, verp_key=self.verp_key)
        self._deliver_thread = threading.Thread(target=self._deliver_loop,
                                                name="mailsync-deliver", daemon=True)
        self._deliver_thread.start()
        self._spool_thread = threading.Thread(target=self._spool_loop,
                                              name="mailsync-spool", daemon=True)
        self._spool_thread.start()
        for server in config.incoming_servers:
            self._mailboxes[server.name] = _Mailbox(self, server)
        self._start_watching()
        self._file_stat = self._stat_config()
        if self._file_sha256() != self.loaded.sha256:
            # Edited between loading and watching: no event will come for that edit.
            self._file_changed_at = time.monotonic()
        self._control = ControlServer(socket_path(config.daemon.state_dir), self._handle)
        self._locator = Locator(self.config_path, self._control.path)
        self._start_exporter(config.daemon.metrics_listen)  # /healthz: all of the above runs
        log.info("mailsync started: %s", self._summary())
        self.notifier.ready(self._summary())

    def _start_exporter(self, listen: str) -> None:
        """Serve /metrics (with the store's queue and activity gauges) and /healthz."""
        self.metrics.registry.register(QueueCollector(lambda: self.outbound))
        self.metrics.registry.register(StoreCollector(lambda: self.store.health))
        self.metrics.registry.register(ActivityCollector(lambda: self.store,
                                                         lambda: self.config))
        self._exporter = start_exporter(listen, self.metrics.registry, self.health)

    def _start_watching(self) -> None:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        daemon = self
        # The directory the path names, symlinks not followed: a config that is a symlink
        # swapped by renaming another one beside it (Kubernetes' ConfigMaps) changes there.
        config_dir = self.config_path.absolute().parent
        config_name = self.config_path.name

        class ConfigEvents(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                # Not "opened" or "closed_no_write": reading the file must not reload it.
                if event.event_type not in ("created", "modified", "moved", "deleted",
                                            "closed"):
                    return
                paths = {os.fsdecode(event.src_path), os.fsdecode(getattr(event, "dest_path", "")
                                                                  or "")}
                if (any(Path(p).name == config_name for p in paths if p)
                        or daemon._stat_config() != daemon._file_stat):
                    daemon._file_changed_at = time.monotonic()
                    daemon._poke()

        class SpoolEvents(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type in ("created", "moved", "closed"):
                    daemon._spool_wake.set()

        self._spool_events = SpoolEvents()
        observer = Observer()
        observer.schedule(ConfigEvents(), str(config_dir), recursive=False)
        self._spool_watch = observer.schedule(
            self._spool_events, str(self.config.daemon.spool_dir / "new"), recursive=False)
        observer.daemon = True
        observer.start()
        self._observer = observer

    # -- the supervisor --------------------------------------------------------------------
    def run(self) -> int:
        """Start, supervise until SIGTERM/SIGINT, stop; the exit code."""
        self._install_signals()
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

    def _install_signals(self) -> None:
        def stop(signum: int, frame: FrameType | None) -> None:
            self._signalled_stop = True  # no lock here: see __init__

        def hup(signum: int, frame: FrameType | None) -> None:
            self._signalled_hups += 1

        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, hup)

    def _poke(self) -> None:
        """Wake the supervisor (from any thread)."""
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\0")

    def request_stop(self) -> None:
        """Stop the daemon (from any thread; signals set a flag instead)."""
        self._signalled_stop = True
        self._poke()

    def _sleep(self, timeout: float) -> None:
        """Wait for a poke, a signal or ``timeout``; then drain the wake-up bytes."""
        with contextlib.suppress(InterruptedError):
            select.select([self._wake_r], [], [], timeout)
        while True:
            try:
                if not self._wake_r.recv(4096):
                    break
            except (BlockingIOError, InterruptedError):
                break

    def _supervise(self) -> None:
        watchdog_every = self.notifier.watchdog_interval()
        now = time.monotonic()
        next_ping = now
        next_idle_close = now + IDLE_CLOSE_EVERY
        next_prune = now + PRUNE_EVERY
        next_status = now + STATUS_EVERY
        next_stat = now + RESCAN
        next_store_check = now + STORE_PROBE_EVERY
        seen_hups = 0
        while True:
            if self._signalled_stop:
                self._stopping.set()
                break
            now = time.monotonic()
            self._heartbeat = now
            if self._signalled_hups != seen_hups:
                seen_hups = self._signalled_hups
                self.reload("SIGHUP")
            stalled = self._note_stalled()
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
            changed_at = self._file_changed_at
            if changed_at is not None and now - changed_at >= DEBOUNCE:
                self._file_changed_at = None
                self._file_changed("file change")
            if now >= next_stat:
                # The watcher's safety net (a missed event, a config on a network mount).
                next_stat = now + RESCAN
                stat = self._stat_config()
                if stat != self._file_stat and self._file_changed_at is None:
                    self._file_changed("file change (periodic check)")
            if now >= next_idle_close:
                next_idle_close = now + IDLE_CLOSE_EVERY
                self._guarded("closing idle SMTP sessions", self.deliverer.close_idle)
            if now >= next_store_check:
                next_store_check = now + STORE_PROBE_EVERY
                self._guarded("checking the store", self._check_store)
            if now >= next_prune:
                next_prune = now + PRUNE_EVERY
                self._guarded("pruning the history", self._prune)
            if now >= next_status:
                next_status = now + STATUS_EVERY
                self.notifier.status(self._summary())
            timeout = min(1.0, max(0.0, next_ping - now) if watchdog_every else 1.0)
            if self._file_changed_at is not None:
                timeout = min(timeout, DEBOUNCE)
            self._sleep(timeout)

    @staticmethod
    def _guarded(what: str, task: Callable[[], object]) -> None:
        """A periodic task: its failure (the store busy for 30 s, ...) is logged, and the
        supervisor goes on; the task runs again at its next turn."""
        try:
            task()
        except Exception:  # noqa: BLE001
            log.exception("%s failed; trying again later", what)

    def _check_store(self) -> None:
        """A store that cannot commit is probed with a real commit (the outage ends once
        one passes and the disk has room); a quiet one gets its WAL checkpointed (and
        truncated on a tight disk: Store.checkpoint)."""
        store = self.store
        if store.health.failing:
            store.probe()
        elif time.monotonic() - store.last_commit >= CHECKPOINT_QUIET:
            store.checkpoint()

    def _store_outage(self, started: bool, error: str) -> None:
        """The store stopped or started committing again (any thread, store lock held)."""
        if started:
            log.error("the store cannot commit: %s; spool files wait in new/, outcomes "
                      "of messages being sent wait in memory, until it can", error)
            return
        log.warning("the store commits again: taking the spool and sending")
        self._outage_ended = time.monotonic()  # waiting for the store was not being stuck
        self._spool_wake.set()
        deliverer: Deliverer | None = getattr(self, "deliverer", None)
        if deliverer is not None:
            deliverer.wake()

    def _prune(self) -> None:
        pruned = self.outbound.prune(time.time(),
                                     self.config.daemon.history_retention.total_seconds())
        if pruned:
            log.info("history retention: dropped the content of %d old messages", pruned)

    def _summary(self) -> str:
        servers = (f"{len(self.config.sending_servers())} outgoing, "
                   f"{len(self.config.incoming_servers)} incoming servers")
        config = f"config {self.loaded.sha256[:12]}"
        ok, why = self.store.health.state() if hasattr(self, "store") else (True, "")
        if not ok:
            return f"{servers}; {why}; {config}"
        try:
            counts = self.outbound.counts()
        except (sqlite3.Error, MailsyncError) as exc:
            return f"{servers}; queue unreadable ({exc}); {config}"
        waiting = counts["queued"] + counts["deferred"] + counts["sending"]
        return (f"{servers}; {waiting} waiting, {counts['held']} held, {counts['sent']} sent, "
                f"{counts['failed']} failed; {config}")

    # -- health ---------------------------------------------------------------------------
    def health(self) -> tuple[bool, str]:
        """For /healthz: the supervisor loop alive and the store writable."""
        age = time.monotonic() - self._heartbeat
        if age > 10.0:
            return False, f"the supervisor loop has not run for {age:.0f}s"
        if self.failed_threads:
            return False, "stopped threads: " + ", ".join(sorted(self.failed_threads))
        for name in ("_deliver_thread", "_spool_thread"):
            thread = getattr(self, name, None)
            if thread is not None and not thread.is_alive() and not self._stopping.is_set():
                return False, f"thread {thread.name} stopped"
        if not hasattr(self, "store"):
            return False, "starting"
        ok, why = self.store.writable(timeout=2.0)
        if not ok:
            return False, f"the store is not writable: {why}"
        stalled = self._stalled()
        if stalled is not None:
            return False, stalled
        return True, "ok"

    def _stalled(self) -> str | None:
        """Why the pickup or the sender is stuck: it finished nothing for ``stuck_after``
        seconds while work waits (files in ``new/``, messages claimed for sending); None
        when not. A store that cannot commit is not this (it has its own 503 and must not
        get the daemon restarted), nor is the time it lasted."""
        store: Store | None = getattr(self, "store", None)
        if store is None or store.health.failing:
            return None
        now = time.monotonic()
        since = self._spool_busy_since
        if since is not None:
            quiet = now - max(since, self._spool_progress, self._outage_ended)
            if quiet > self.stuck_after:
                new = self.config.daemon.spool_dir / "new"
                try:
                    waiting = len(spool.scan(self.config.daemon.spool_dir))
                except OSError:
                    waiting = 0
                if waiting:
                    files = "1 file waits" if waiting == 1 else f"{waiting} files wait"
                    return (f"the spool pickup has taken nothing for {quiet:.0f}s while "
                            f"{files} in {new}")
        deliverer: Deliverer | None = getattr(self, "deliverer", None)
        if deliverer is not None:
            waiting, age = deliverer.in_hand()
            quiet = min(age, now - self._outage_ended)
            if waiting and quiet > self.stuck_after:
                messages = "1 message waits" if waiting == 1 else f"{waiting} messages wait"
                return (f"the sender has finished no message for {quiet:.0f}s while "
                        f"{messages} to be sent")
        return None

    def _note_stalled(self) -> str | None:
        """:meth:`_stalled`, logged once when it starts and once when it ends."""
        why = self._stalled()
        if why is not None and self._stalled_why is None:
            log.error("made no progress: %s; /healthz fails and the systemd watchdog is not "
                      "pinged until it does", why)
        elif why is None and self._stalled_why is not None:
            log.warning("progress again: %s no longer", self._stalled_why.split(" has ")[0])
        self._stalled_why = why
        return why

    def _spool_committed(self) -> None:
        """A spool batch was committed (in the pickup or here): progress; wake the sender."""
        self._spool_progress = time.monotonic()
        self.deliverer.wake()

    # -- spool and sending ----------------------------------------------------------------
    def _spool_loop(self) -> None:
        while not self._stopping.is_set():
            # Cleared before the pass, not after the wait: a file renamed into new/ after
            # this point is either seen by this pass or wakes the wait below.
            self._spool_wake.clear()
            if self.store.health.failing:
                # Nothing could be committed: the files stay in new/ (none is read or
                # rejected) until a probe or a sender's commit passes.
                self._spool_wake.wait(STORE_PROBE_EVERY)
                continue
            pickup = self._pickup
            self._spool_busy_since = time.monotonic()
            try:
                if pickup is not None:
                    stats = pickup.run_pass(self.config, self.metrics,
                                            on_commit=self._spool_committed, limit=SPOOL_PASS)
                else:
                    stats = self.ingester.run_once(limit=SPOOL_PASS)  # swapped on reload
                more = stats.files >= SPOOL_PASS
            except StoreUnavailable as exc:
                if pickup is not None:
                    self.store.note_failure(exc)  # the child's commit: this process knows
                # Never a busy loop, even when another writer's commit ended the outage.
                self._spool_wake.wait(STORE_PROBE_EVERY)
                continue
            except MailsyncError as exc:
                if self._stopping.is_set():
                    return
                if pickup is not None and not pickup.alive:
                    log.error("%s; the spool is taken in the daemon process from now on", exc)
                    self._pickup = None
                    continue
                log.error("taking the spool failed, retrying in %gs: %s", RESCAN, exc)
                more = False
            except Exception:  # noqa: BLE001 - the store may be busy or full: retry later
                log.exception("taking the spool failed; retrying in %gs", RESCAN)
                more = False
            finally:
                self._spool_busy_since = None
            if more:
                continue
            self._spool_wake.wait(RESCAN)

    def _deliver_loop(self) -> None:
        while True:
            # Resume, then look: a stop sets _stopping before it halts, so it is either
            # seen here or halts the pass below.
            self.deliverer.resume()
            if self._stopping.is_set():
                break
            try:
                self.deliverer.run_once(self.deliverer.default_workers(), until=self._stopping,
                                        idle=IDLE_SEND_POLL)
            except StoreUnavailable:  # logged by the store's outage handler
                self._stopping.wait(STORE_PROBE_EVERY)
            except Exception:  # noqa: BLE001 - the store may be busy: retry, do not die
                log.exception("the sender failed; restarting it in 1s")
                self._stopping.wait(1.0)

    def on_message(self, conn: Any, server: IncomingServer, fetched_id: int, subject: str,
                   now: float) -> None:
        schedule_for_fetched(conn, self.config, server, fetched_id, subject, now)

    # -- reload ---------------------------------------------------------------------------
    def _handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """A control-socket command (runs in the socket's thread)."""
        command = request.get("command")
        if command == "reload":
            req = _Request("mailsync reload")
            self._requests.put(req)
            self._poke()
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
                    "config_sha256": self.loaded.sha256, "last_reload": self._last_reload}
        return {"ok": False, "error": f"unknown command {command!r} (reload, status, wake)"}

    def _file_sha256(self) -> str | None:
        try:
            return hashlib.sha256(self.config_path.read_bytes()).hexdigest()
        except OSError:
            return None

    def _stat_config(self) -> tuple[int, int, int] | None:
        try:
            st = self.config_path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _file_changed(self, source: str) -> None:
        """The config file was saved: reload it, unless ``daemon.auto_reload`` (of the
        configuration in force) is false; then only say so, once per new content, so that
        `mailsync plan` on the live file is the review before `mailsync reload` applies."""
        if self.config.daemon.auto_reload:
            self.reload(source)
            return
        self._file_stat = self._stat_config()
        sha256 = self._file_sha256()
        if sha256 in (self._unapplied_sha256, self.loaded.sha256):
            return
        self._unapplied_sha256 = sha256
        log.info("config changed; not applied (auto_reload: false): `mailsync plan -c %s` "
                 "shows what applying it would change, `mailsync reload` or SIGHUP applies it",
                 self.config_path)

    def reload(self, source: str) -> ReloadOutcome:
        """Load → validate → plan → apply (supervisor thread only)."""
        self._unapplied_sha256 = None
        self._file_stat = self._stat_config()
        self.notifier.reloading(f"reloading ({source})")
        try:
            outcome = self._reload()
        except Exception as exc:  # noqa: BLE001 - the old config stays; the daemon lives
            log.exception("reload failed")
            outcome = ReloadOutcome("refused", f"internal error while applying: {exc}",
                                    [str(exc)])
        if outcome.result == "refused":
            self._set_reload_metrics(None, ok=False)
            log.error("config reload (%s) refused, the configuration in force stays: %s",
                      source, outcome.summary)
            for line in outcome.errors:
                log.error("  %s", line)
        else:
            self._set_reload_metrics(self.loaded, ok=True)
            log.info("config reload (%s): %s: %s", source, outcome.result, outcome.summary)
            for line in outcome.changes:
                log.info("  %s", line)
            if outcome.result == "applied":
                for problem in self.loaded.warnings:
                    log.warning("%s", problem.render())
        self._last_reload = {"result": outcome.result, "at": time.time(), "source": source,
                             "summary": outcome.summary, "errors": outcome.errors[:3],
                             "error_count": len(outcome.errors)}
        self.notifier.ready(self._summary())
        return outcome

    def _reload(self) -> ReloadOutcome:
        path = self.config_path
        try:
            text = read_text(path)
        except ConfigError as exc:
            return ReloadOutcome("refused", str(exc), [str(exc)])
        loaded = load_text(text, str(path), path.resolve().parent)
        if loaded.errors or loaded.config is None:
            errors = [p.render() for p in loaded.errors]
            return ReloadOutcome("refused", f"{len(errors)} error(s) in {path}", errors)
        if loaded.sha256 == self.loaded.sha256:
            return ReloadOutcome("unchanged", "the file is the configuration in force")
        new, old = loaded.config, self.config
        if new.daemon.state_dir != old.daemon.state_dir:
            why = (f"daemon.state_dir changed ({old.daemon.state_dir} → "
                   f"{new.daemon.state_dir}): the store cannot move while running; restart")
            return ReloadOutcome("refused", why, [why])
        plan = diff(old, new)
        # What can fail comes first, so a refusal leaves everything as it was.
        exporter = None
        if new.daemon.metrics_listen != old.daemon.metrics_listen:
            exporter, why = self._new_exporter(new.daemon.metrics_listen,
                                               old.daemon.metrics_listen)
            if exporter is None:
                return ReloadOutcome("refused", why, [why])
        self._apply(loaded, new, old, exporter)
        held = self.outbound.hold_missing_accounts([a.name for a in new.accounts], time.time())
        for account, count in held.items():
            log.warning("account %s left the configuration: %d waiting messages held "
                        "(`mailsync queue release ID` once it is back)", account, count)
        return ReloadOutcome("applied", plan.summary(),
                             changes=[c for c in plan.render().splitlines()
                                      if c and not c.startswith("Plan:")], held=held)

    def _new_exporter(self, listen: str, old_listen: str) -> tuple[Any, str]:
        """Bind ``listen`` before the old address is let go; (None, why) when impossible.

        A move on the same port (127.0.0.1:9877 to 0.0.0.0:9877) cannot bind beside the
        old socket: the old one is closed first, and bound again if the new one fails.
        """
        try:
            return start_exporter(listen, self.metrics.registry, self.health), ""
        except ValueError as exc:
            return None, f"daemon.metrics_listen {listen}: {exc}"
        except OSError as exc:
            first = exc
        # Both parse: the new one did above (or ValueError came back), the old one is bound.
        same_port = parse_listen(listen)[1] == parse_listen(old_listen)[1]
        if same_port and first.errno == errno.EADDRINUSE:
            self._exporter.close()
            try:
                return start_exporter(listen, self.metrics.registry, self.health), ""
            except OSError as exc:
                first = exc
            self._exporter = start_exporter(old_listen, self.metrics.registry, self.health)
        return None, f"daemon.metrics_listen {listen}: {first.strerror or first}"

    def _apply(self, loaded: Loaded, new: Config, old: Config, exporter: Any) -> None:
        workers = self.deliverer.default_workers()
        retired = self.deliverer.reconfigure(new)
        if retired:
            log.info("outgoing servers replaced or removed (sessions drained): %s",
                     ", ".join(retired))
        if self.deliverer.default_workers() != workers:
            self.deliverer.halt()  # the pass restarts with as many workers as sessions
        self.config = new
        self.loaded = loaded
        self.ingester = Ingester(new, self.outbound, self.metrics,
                                 on_commit=self._spool_committed, verp_key=self.verp_key)
        if new.daemon.spool_dir != old.daemon.spool_dir and self._observer is not None:
            self._observer.unschedule(self._spool_watch)
            self._spool_watch = self._observer.schedule(
                self._spool_events, str(new.daemon.spool_dir / "new"), recursive=False)
        self._spool_wake.set()  # grants may have changed what the spool may hold
        self._reconcile_mailboxes(new)
        if exporter is not None:
            self._exporter.close()
            self._exporter = exporter
        if new.daemon.log_format != old.daemon.log_format:
            logs.setup(new.daemon.log_format)
        self.metrics.prime(new)
        for name in set(old.sending_servers()) - set(new.sending_servers()):
            with contextlib.suppress(KeyError):
                self.metrics.server_up.remove(name, "outgoing")
            with contextlib.suppress(KeyError):
                self.metrics.pool_concurrency.remove(name)
        for name in {s.name for s in old.incoming_servers} - {s.name for s in new.incoming_servers}:
            with contextlib.suppress(KeyError):
                self.metrics.server_up.remove(name, "incoming")
            with contextlib.suppress(KeyError):
                self.metrics.mailbox_poll_interval.remove(name)
        self._record_applied(loaded)
        self.deliverer.wake()

    def _reconcile_mailboxes(self, new: Config) -> None:
        wanted = {s.name: s for s in new.incoming_servers}
        for name, box in list(self._mailboxes.items()):
            server = wanted.get(name)
            if server is None:
                box.retire()
                del self._mailboxes[name]
                log.info("incoming server %s removed: its poller stops", name)
            elif server != box.server:
                box.retire()
                self._mailboxes[name] = _Mailbox(self, server, previous=box)
                log.info("incoming server %s changed: its poller restarts", name)
            else:
                box.poller.config = new  # alias domain (bounces) of the config in force
        for name, server in wanted.items():
            if name not in self._mailboxes:
                self._mailboxes[name] = _Mailbox(self, server)

    def _record_applied(self, loaded: Loaded) -> None:
        last = self.store.last_applied_config()
        if last is None or last.sha256 != loaded.sha256:
            self.store.record_applied_config(loaded.text, loaded.sha256,
                                             str(self.config_path.resolve()))

    def _set_reload_metrics(self, loaded: Loaded | None, *, ok: bool, count: bool = True) -> None:
        m = self.metrics
        if count:
            m.config_reloads.labels("success" if ok else "failure").inc()
        m.config_last_reload_successful.set(1 if ok else 0)
        if ok and loaded is not None:
            m.config_last_reload_success_timestamp.set(time.time())
            m.config_hash.set(int(loaded.sha256[:13], 16))

    # -- stop -----------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop taking work, finish the SMTP transactions in flight, close everything."""
        self._stopping.set()
        self.notifier.stopping("stopping: finishing the messages in flight")
        log.info("stopping: finishing the messages in flight")
        if self._observer is not None:
            self._observer.stop()
        if self._locator is not None:
            self._locator.close()
        if self._control is not None:
            self._control.close()
        for box in self._mailboxes.values():
            box.retire()
        self._spool_wake.set()
        if self._pickup is not None:
            self._pickup.close()  # mid-pass too: what it had not taken waits in new/
        deliverer: Deliverer | None = getattr(self, "deliverer", None)
        if deliverer is not None:
            deliverer.halt()
        sender: threading.Thread | None = getattr(self, "_deliver_thread", None)
        if sender is not None:
            sender.join(STOP_TIMEOUT)
            if sender.is_alive():
                log.error("messages still being sent after %gs; exiting anyway (they are "
                          "queued again at the next start)", STOP_TIMEOUT)
        spooler: threading.Thread | None = getattr(self, "_spool_thread", None)
        if spooler is not None:
            spooler.join(5.0)
        for box in self._mailboxes.values():
            box.thread.join(5.0)
        if deliverer is not None:
            deliverer.close()
        if self._observer is not None:
            self._observer.join(2.0)
        if self._exporter is not None:
            self._exporter.close()
        store: Store | None = getattr(self, "store", None)
        if store is not None:
            with contextlib.suppress(Exception):
                store.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
        with contextlib.suppress(ValueError):  # not the main thread: nothing was installed
            signal.set_wakeup_fd(-1)
        self._wake_r.close()
        self._wake_w.close()
        log.info("mailsync stopped")


def run(config_path: Path, loaded: Loaded,
        notifier: Callable[[], Notifier] = Notifier, *, new_store: bool = False) -> int:
    """``mailsync run``: the daemon until SIGTERM; its exit code."""
    return Daemon(config_path, loaded, notifier=notifier(), new_store=new_store).run()
