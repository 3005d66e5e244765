"""The ``mailsync-poll-NAME`` threads: one per incoming server, polling every
``poll_interval`` or waiting in IMAP IDLE.

A :class:`Mailbox` thread is handed its poller, its stop event and what to call when it
stops on an unexpected error; :class:`Mailboxes` keeps one per incoming server of the
configuration in force and, on :meth:`Mailboxes.reconfigure`, restarts only the pollers of
servers that changed (those of unchanged ones keep their sessions).

Each Mailbox polls only while this node holds the server's lease (mailsync/daemon/
leases.py; always on SQLite): without it the thread closes its session and waits; an
IMAP IDLE ends within a second of the lease running out by this node's clock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from mailsync.config.model import Config, IncomingServer
from mailsync.daemon.leases import LeaseKeeper, MailboxLease
from mailsync.inbound.poller import Poller, PollResult, retry_delay

log = logging.getLogger("mailsync.daemon")

MakePoller = Callable[[Config, IncomingServer, MailboxLease], Poller]


class _Until(threading.Event):
    """``stop``, which also reads as set once ``valid()`` is False (the lease lost): what
    the wait between polls looks at (IMAP IDLE every second), so it ends then too."""

    def __init__(self, stop: threading.Event, valid: Callable[[], bool]) -> None:
        super().__init__()
        self._stop = stop
        self._valid = valid

    def is_set(self) -> bool:
        return self._stop.is_set() or not self._valid()

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.is_set():
            rest = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if rest <= 0:
                return False
            self._stop.wait(rest)
        return True


class Mailbox:
    """The thread polling one incoming server through ``poller`` until ``stop`` is set;
    ``on_failure(thread name)`` when it stops on an unexpected error (logged here)."""

    def __init__(self, poller: Poller, stop: threading.Event,
                 on_failure: Callable[[str], None], previous: Mailbox | None = None, *,
                 lease: MailboxLease | None = None) -> None:
        self.server = poller.server
        self.poller = poller
        self.lease = lease
        self.stop = stop
        self._on_failure = on_failure
        self._previous = previous
        # The last poll's result and its end (wall clock): the admin console's Servers page.
        self.last: tuple[PollResult, float] | None = None
        self.thread = threading.Thread(target=self._run,
                                       name=f"mailsync-poll-{self.server.name}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        if self._previous is not None:
            # The session of the replaced poller is closed before this one polls.
            self._previous.thread.join()
            self._previous = None
        interval = self.server.poll_interval.total_seconds()
        lease = self.lease if self.lease is not None and self.lease.keeper.shared else None
        until = self.stop if lease is None else _Until(self.stop, lease.valid)
        try:
            while not self.stop.is_set():
                if lease is not None and not lease.valid():  # another node polls it
                    self.poller.close()  # no session kept meanwhile
                    lease.wait_held(self.stop)
                    continue
                result = self.poller.poll_once()
                self.last = (result, time.time())
                if self.stop.is_set():
                    break
                if result.kind == "lease_lost":
                    continue
                if result.ok:
                    self.poller.wait_for_news(interval, until)
                else:  # probed on a backoff: 1 s, 2 s, 4 s, ... (a dead server, not a loop)
                    self.stop.wait(retry_delay(self.poller.failures, interval))
        except Exception:  # noqa: BLE001 - never silently: logged, and the daemon unhealthy
            log.exception("%s: the poller stopped on an unexpected error", self.server.name)
            self._on_failure(self.thread.name)
        finally:
            self.poller.close()

    def retire(self) -> None:
        self.stop.set()


class Mailboxes:
    """A :class:`Mailbox` per incoming server of the configuration in force."""

    def __init__(self, make_poller: MakePoller, on_failure: Callable[[str], None],
                 leases: LeaseKeeper) -> None:
        self._make_poller = make_poller
        self._on_failure = on_failure
        self.leases = leases
        self.boxes: dict[str, Mailbox] = {}

    def _start(self, config: Config, server: IncomingServer,
               previous: Mailbox | None = None) -> Mailbox:
        lease = self.leases.lease(server.name)
        return Mailbox(self._make_poller(config, server, lease), threading.Event(),
                       self._on_failure, previous, lease=lease)

    def start(self, config: Config) -> None:
        """A poller thread for each incoming server of ``config``."""
        for server in config.incoming_servers:
            self.boxes[server.name] = self._start(config, server)

    def reconfigure(self, config: Config) -> None:
        """Stop the pollers of removed servers, restart those of changed ones (after the
        old one closed its session), start those of new ones; the unchanged ones classify
        their next messages under ``config``. The leases of removed servers are given
        back (after their pollers were asked to stop)."""
        wanted = {s.name: s for s in config.incoming_servers}
        for name, box in list(self.boxes.items()):
            server = wanted.get(name)
            if server is None:
                box.retire()
                del self.boxes[name]
                log.info("incoming server %s removed: its poller stops", name)
            elif server != box.server:
                box.retire()
                self.boxes[name] = self._start(config, server, previous=box)
                log.info("incoming server %s changed: its poller restarts", name)
            else:
                box.poller.reconfigure(config)  # alias domain (bounces) of the config in force
        self.leases.reconfigure(config)
        for name, server in wanted.items():
            if name not in self.boxes:
                self.boxes[name] = self._start(config, server)

    def retire(self) -> None:
        """Ask every poller to stop."""
        for box in self.boxes.values():
            box.retire()

    def join(self, timeout: float) -> None:
        for box in self.boxes.values():
            box.thread.join(timeout)
