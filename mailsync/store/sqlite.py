"""The SQLite store at run time: the connection, its transactions, health, checkpoints.

One database file in ``state_dir`` (WAL mode). Opening, checking and migrating that file
is :mod:`mailsync.store.sqlitefile` (:meth:`Store.open`); its functions about a
state_dir's store are re-exported here.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from mailsync import files
from mailsync.errors import StoreUnavailable
from mailsync.store import sqlitefile
from mailsync.store.health import CommitHealth, classify, free_bytes
from mailsync.store.sqlitefile import BUSY_TIMEOUT_MS
from mailsync.values import valueclass

if TYPE_CHECKING:
    from mailsync.config.tree import StoreBackend

__all__ = ["AppliedConfig", "Store"]

class Opener(Protocol):
    """Opens the store of another backend than SQLite (see :data:`OPENERS`)."""

    def __call__(self, state_dir: Path, backend: StoreBackend, *, create: bool,
                 new_store: bool, readonly: bool, migrate: bool) -> Store: ...


# The other backends' openers, by ``daemon.store`` kind. Filled by the package
# (mailsync/store/__init__.py), which knows every backend: this module, which the
# PostgreSQL store subclasses, does not import it.
OPENERS: dict[str, Opener] = {}

# Below this much free space a quiet daemon truncates its WAL to 0 (see Store.checkpoint).
TRUNCATE_BELOW = 1024 * 1024 * 1024


@valueclass
class AppliedConfig:
    """A configuration the daemon applied: its text, hash, origin and time."""

    applied_at: datetime
    sha256: str
    source: str
    text: str


class Store:
    """The daemon's state in one SQLite file (WAL, synchronous=NORMAL)."""

    # Which SQL the store runs ("sqlite" or "postgresql"): for the few statements that
    # must differ (a claim with FOR UPDATE SKIP LOCKED exists only on PostgreSQL).
    dialect = "sqlite"

    def __init__(self, conn: sqlite3.Connection, path: Path, *, writer: bool = True) -> None:
        self.conn = conn
        self.path = path
        # One connection shared by the worker threads; writes are serialised here
        # (SQLite would serialise them anyway) and each is one short transaction.
        self.lock = threading.RLock()
        self.health = CommitHealth(path.parent)
        self.on_outage: Callable[[bool, str], None] | None = None  # (started?, error)
        self.last_commit = 0.0  # time.monotonic() of this process's last commit that wrote
        self.checkpointed_at = 0.0  # ... and of its last complete checkpoint (checkpoint())
        self._writer = -1
        if writer:  # not for a read-only store (see open): it creates nothing in state_dir
            # 0640: only the store's owner writes it (a reader cannot open it O_RDWR and
            # takes no writer lock: it does not write). A read-only state_dir: only reads.
            with contextlib.suppress(OSError):
                self._writer = os.open(f"{path}.writer",
                                       os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, files.FILE_MODE)

    @property
    def frozen(self) -> bool:
        """Whether this read-only store sees its file as it was when opened (a state_dir
        this user may only read, with no daemon running: sqlitefile.Frozen); a reader
        that waits for new commits must open it again (`history follow`)."""
        return getattr(self.conn, "frozen", False)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT), rolled back on error.

        Writers of every process queue on an flock first: SQLite's own busy handler
        retries by sleeping for milliseconds, which stalls a sender behind a spool batch.
        A commit the disk refuses (full, I/O error) raises :class:`StoreUnavailable` and
        is counted in :attr:`health`; nothing of the transaction is kept.
        """
        with self.lock:
            if self._writer >= 0:
                fcntl.flock(self._writer, fcntl.LOCK_EX)
            try:
                try:
                    self.conn.execute("BEGIN IMMEDIATE")
                    changes = self.conn.total_changes
                    try:
                        yield self.conn
                    except BaseException:
                        self._rollback()
                        raise
                    self.conn.execute("COMMIT")
                except sqlite3.Error as exc:
                    # SQLite may have rolled back by itself (SQLITE_FULL), or a failed
                    # COMMIT left the transaction open: never leave one open behind.
                    self._rollback()
                    kind = classify(exc)
                    if kind is None:
                        raise
                    if self.health.failed(kind, str(exc)) and self.on_outage is not None:
                        self.on_outage(True, str(exc))
                    raise StoreUnavailable(f"{self.path}: cannot commit: {exc}", kind) from None
            finally:
                if self._writer >= 0:
                    fcntl.flock(self._writer, fcntl.LOCK_UN)
        if self.conn.total_changes != changes:
            self.last_commit = time.monotonic()
        if self.health.failing and self.health.committed() and self.on_outage is not None:
            self.on_outage(False, "")

    def note_failure(self, exc: StoreUnavailable) -> None:
        """A commit of another process on this store failed (the pickup child's)."""
        if self.health.failed(exc.kind, str(exc)) and self.on_outage is not None:
            self.on_outage(True, str(exc))

    def _rollback(self) -> None:
        if self.conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")

    def probe(self) -> bool:
        """A real commit of one page (the schema version, rewritten unchanged): whether
        the store can commit now. For a failing store, to see when the disk has room."""
        try:
            with self.transaction() as conn:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                conn.execute(f"PRAGMA user_version = {int(version)}")
        except StoreUnavailable:
            return False
        return not self.health.failing

    def checkpoint(self) -> int:
        """After a burst: copy the whole WAL into the database, and, when its filesystem is
        short of space, truncate it to 0 bytes, so that a quiet daemon holds no WAL space
        there. On a roomy disk the WAL keeps its (bounded) size and is rewritten from its
        start: the next burst's writes need no new blocks. The WAL's size before, in bytes
        (0: nothing to do). Writers of other processes wait on the flock meanwhile."""
        wal = Path(f"{self.path}-wal")
        with self.lock:
            try:
                before = wal.stat().st_size
            except FileNotFoundError:
                return 0
            if before == 0 or self.last_commit <= self.checkpointed_at:
                return 0
            free = free_bytes(self.path.parent)
            mode = "TRUNCATE" if free is None or free < TRUNCATE_BELOW else "RESTART"
            if self._writer >= 0:
                fcntl.flock(self._writer, fcntl.LOCK_EX)
            try:
                # A reader (a long `mailsync history`) must not hold this process's
                # writers for the 30 s busy timeout: the next quiet moment tries again.
                self.conn.execute("PRAGMA busy_timeout = 100")
                busy = self.conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()[0]
                if not busy:
                    self.checkpointed_at = time.monotonic()
            except sqlite3.Error as exc:
                kind = classify(exc)
                if kind is None:
                    raise
                raise StoreUnavailable(f"{self.path}: cannot checkpoint: {exc}", kind) from None
            finally:
                self.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                if self._writer >= 0:
                    fcntl.flock(self._writer, fcntl.LOCK_UN)
            return before

    def writable(self, timeout: float) -> tuple[bool, str]:
        """Whether a write transaction can begin within ``timeout`` s (for /healthz);
        begins one and rolls it back. (False, why) when not."""
        ok, why = self.health.state()
        if not ok:
            return False, why
        deadline = time.monotonic() + timeout
        if not self.lock.acquire(timeout=timeout):
            return False, f"busy for more than {timeout:g}s"
        try:
            if self._writer >= 0:
                while True:
                    try:
                        fcntl.flock(self._writer, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            return False, f"another writer for more than {timeout:g}s"
                        time.sleep(0.01)
            elif not os.access(self.path.parent, os.W_OK):
                return False, f"{self.path.parent} is read-only"
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                self.conn.execute("ROLLBACK")
            except sqlite3.Error as exc:
                return False, str(exc)
            finally:
                if self._writer >= 0:
                    fcntl.flock(self._writer, fcntl.LOCK_UN)
            return True, "ok"
        finally:
            self.lock.release()

    @classmethod
    def open(cls, state_dir: Path, *, create: bool = True, new_store: bool = False,
             check: bool = False, readonly: bool = False, migrate: bool = True,
             backend: StoreBackend | None = None) -> Store:
        """Open (and migrate) the store of ``state_dir``; StoreError if impossible (see
        :func:`mailsync.store.sqlitefile.open_store`). ``backend`` (the configuration's
        ``daemon.store``): another backend's is opened by its opener in :data:`OPENERS`
        (PostgreSQL's, registered by the package: :mod:`mailsync.store.postgres`; ``check``
        is SQLite's quick_check, not done there); None or SQLite's, the file in
        state_dir."""
        if backend is not None and backend.kind != "sqlite":
            return OPENERS[backend.kind](state_dir, backend, create=create,
                                         new_store=new_store, readonly=readonly,
                                         migrate=migrate)
        return sqlitefile.open_store(cls, state_dir, create=create, new_store=new_store,
                                     check=check, readonly=readonly, migrate=migrate)

    def migrate(self) -> None:
        """Apply the migrations this store has not had yet."""
        sqlitefile.migrate(self.conn, self.path)

    def close(self) -> None:
        self.conn.close()
        if self._writer >= 0:
            os.close(self._writer)
            self._writer = -1

    def record_applied_config(self, text: str, sha256: str, source: str,
                              now: datetime | None = None) -> None:
        """Remember ``text`` as the configuration now in force."""
        at = (now or datetime.now(UTC)).isoformat()
        with self.transaction() as conn:  # a full disk: StoreUnavailable, counted, not raw
            conn.execute(
                "INSERT INTO applied_config (applied_at, sha256, source, text)"
                " VALUES (?, ?, ?, ?)", (at, sha256, source, text))

    def last_applied_config(self) -> AppliedConfig | None:
        row = self.conn.execute(
            "SELECT applied_at, sha256, source, text FROM applied_config ORDER BY id DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        return AppliedConfig(datetime.fromisoformat(row[0]), row[1], row[2], row[3])
