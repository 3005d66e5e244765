"""The admin console put together: its key, sessions, store readers, application and
listener, from the configuration in force (:func:`serve`); the logouts kept in the
store (:class:`StoreLogouts`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from mailsync.auth.tokens import TokenCache
from mailsync.config.admin import Admin
from mailsync.config.model import Config
from mailsync.outbound.queue import OutboundStore
from mailsync.store import Store
from mailsync.store import logouts as store_logouts
from mailsync.web.app import App, Readers
from mailsync.web.server import Listener, tls_context
from mailsync.web.sessions import REVOKED_FILE, Sessions, load_key, read_revoked
from mailsync.web.status import DaemonStatus, no_status

log = logging.getLogger("mailsync.web")


class Console:
    """A running console: :attr:`app` served by :attr:`listener`; :meth:`close` stops it."""

    def __init__(self, app: App, readers: Readers, listener: Listener) -> None:
        self.app = app
        self.readers = readers
        self.listener = listener

    @property
    def url(self) -> str:
        return self.listener.url

    def close(self) -> None:
        self.listener.close()
        self.readers.close()


class StoreLogouts:
    """The sessions logged out, kept in the store (:mod:`mailsync.store.logouts`): written
    through the daemon's store, read through the console's readers, so that every node
    of a shared store refuses a cookie logged out through any of them."""

    def __init__(self, writes: Store, reads: Readers) -> None:
        self._writes = writes
        self._reads = reads

    def record(self, logouts: Iterable[tuple[str, float]], now: float) -> None:
        """Commit the logouts (and forget the expired ones)."""
        store_logouts.record(self._writes, logouts, now)

    def contains(self, sid: str, now: float) -> bool:
        with self._reads() as reader:
            return store_logouts.logged_out(reader.store, sid, now)

    def adopt(self, path: Path, now: float) -> None:
        """Move the logouts that an earlier release kept in ``path`` into the store (the
        file is removed once they are committed)."""
        if not path.exists():
            return
        old = read_revoked(path, now)
        self.record(old.items(), now)
        path.unlink()
        log.info("admin console: %d logouts of %s moved into the store", len(old), path)


def serve(config: Config, current: Callable[[], Config], writes: OutboundStore,
          wake: Callable[[], None], listen: str | None = None, *,
          status: Callable[[], DaemonStatus] = no_status,
          tokens: TokenCache | None = None) -> Console:
    """Serve the console of ``config`` on ``listen`` (default ``daemon.admin_listen``).
    ``current`` is the configuration in force at each request (users and roles change
    with a reload), ``writes`` the daemon's store, ``wake`` wakes its senders,
    ``status`` says what the daemon knows of its servers and reloads, ``tokens`` is its
    OAuth2 token cache (the connection tests share it).

    Raises OSError when the address cannot be bound or the TLS files used, ConfigError
    for an unusable ``admin.session_key``.
    """
    address = listen or config.daemon.admin_listen
    assert address is not None
    admin = config.admin or Admin()
    key = load_key(config.daemon.state_dir, admin.session_key)
    tls = None
    if admin.tls_cert_file is not None and admin.tls_key_file is not None:
        tls = tls_context(admin.tls_cert_file, admin.tls_key_file)
    readers = Readers(config.daemon.state_dir, config.daemon.store)
    kept = StoreLogouts(writes.store, readers)
    kept.adopt(config.daemon.state_dir / REVOKED_FILE, time.time())
    sessions = Sessions(key, admin.session_lifetime.total_seconds(), logouts=kept)
    app = App(current, readers, writes, sessions, wake=wake, status=status, tokens=tokens)
    try:
        listener = Listener(address, app, tls)
    except BaseException:
        readers.close()
        raise
    return Console(app, readers, listener)
