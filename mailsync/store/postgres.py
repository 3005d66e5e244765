"""The PostgreSQL store: opening it (DSN, pool, schema, identity) and its runtime.

A configuration with ``daemon.store: {postgresql: {dsn: ...}}`` gets a :class:`PgStore`
from :meth:`mailsync.store.Store.open`. It is a :class:`~mailsync.store.sqlite.Store`
to its callers: the same ``conn`` (a :class:`~mailsync.store.pgconn.PgConnection`, whose
SQL is translated from SQLite's), the same ``transaction()`` (BEGIN ... COMMIT, a failed
commit counted in ``health`` and raised as StoreUnavailable; here each thread's on a
connection of its own, so that they run at once), ``lock``,
``health``, ``on_outage``, ``record_applied_config``. What differs is here: connections
come from a psycopg_pool pool; commits are durable (``synchronous_commit = on`` on every
connection, whatever the server's default); a read-only store (the readers' view) runs
every statement in a read-only transaction (``default_transaction_read_only``); there is
no WAL to checkpoint; and the schema is migrated under an advisory lock, so that nodes
starting together apply each migration once.

psycopg and psycopg_pool are imported only here, and this module only when a
configuration names PostgreSQL: an SQLite store and a one-shot command pay nothing.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from mailsync import files
from mailsync.errors import SecretError, StoreError, StoreOutdated, StoreUnavailable
from mailsync.store import identity, pgschema
from mailsync.store.backend import INSTALL_HINT, describe, missing_driver, scrub
from mailsync.store.health import CommitHealth, classify
from mailsync.store.pgconn import (
    CONNECT_WAIT,
    RETURNED_AT,
    PgConnection,
    numeric_loader,
    sqlite_error,
)
from mailsync.store.sqlite import Store

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool

    from mailsync.config.tree import StoreBackend

# Imports inside functions: psycopg and psycopg_pool, an optional extra, load only when a
# PostgreSQL store is opened (TYPE_CHECKING imports give their types to mypy).

log = logging.getLogger("mailsync.store")

CONNECT_TIMEOUT = 10  # seconds, libpq's connect_timeout unless the DSN sets one
# A connection given back to the pool less than this long ago is handed out again
# without the pool's check (one round trip per transaction otherwise): it was working
# then, and a connection that breaks after its check fails its statement in any case.
CHECK_IDLE = 1.0  # seconds


class _Scrub(logging.Filter):
    """Takes the DSNs in use out of psycopg's and the pool's log records."""

    dsns: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.dsns:
            text = record.getMessage()
            for dsn in self.dsns:
                text = scrub(text, dsn)
            record.msg, record.args = text, ()
        return True


_SCRUB = _Scrub()


class PgStore(Store):
    """The daemon's state in a PostgreSQL database (see the module doc)."""

    dialect = "postgresql"

    def __init__(self, pool: ConnectionPool[psycopg.Connection[Any]], dsn: str, label: str,
                 *, writer: bool = True) -> None:
        # Not Store.__init__: no file, no writer lock (PostgreSQL's own locks serialise).
        self.pool = pool
        self.conn = cast(sqlite3.Connection, PgConnection(pool, dsn))
        self.path = Path(label)
        self.lock = threading.RLock()
        self.health = CommitHealth(Path("."), free=lambda _: None)
        self.on_outage = None
        self.last_commit = 0.0
        self.checkpointed_at = 0.0
        self.writer = writer
        self._writer = -1
        self._dsn = dsn
        self._local = threading.local()  # each thread's transaction connection

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN ... COMMIT), rolled back on error, on a
        connection of the pool for this thread alone: the transactions of the process's
        threads (the senders' outcomes, the spool's batches, the heartbeat) run at once,
        each on its own connection, instead of one after the other under ``lock`` as on
        SQLite's one connection; PostgreSQL's row locks serialise what must be, and its
        WAL flush makes concurrent commits share one fsync. A commit that fails is
        counted in ``health`` and raised as StoreUnavailable, as SQLite's. ``conn``
        (reads under ``lock``) is another connection: a transaction's writes are seen
        there once committed."""
        conn = self._thread_conn()
        try:
            try:
                conn.execute("BEGIN")
                changes = conn.total_changes
                try:
                    yield cast(sqlite3.Connection, conn)
                except BaseException:
                    self._rollback_on(conn)
                    raise
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback_on(conn)
                raise self._unavailable(exc) from None
        finally:
            conn.close()  # its connection back to the pool until this thread's next one
        self._committed(conn.total_changes != changes)

    def commit_statement(self, sql: str, params: Sequence[Any] = ()) -> None:
        """One statement (SQLite's dialect, as ``conn.execute`` takes it) as a transaction
        of its own: PostgreSQL's implicit one, atomic and, with ``synchronous_commit``,
        durable once this returns. One round trip where :meth:`transaction` takes three
        (BEGIN, the statement, COMMIT): a sender's outcome is one statement. A failure
        is counted and raised as :meth:`transaction`'s."""
        conn = self._thread_conn()
        try:
            changes = conn.total_changes
            conn.execute(sql, params)
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from None
        finally:
            conn.close()
        self._committed(conn.total_changes != changes)

    def _unavailable(self, exc: sqlite3.Error) -> BaseException:
        """A failed transaction's error: ``exc`` itself (a statement's own, as a unique
        key's), or StoreUnavailable, counted in ``health``, when the store cannot
        commit."""
        kind = classify(exc)
        if kind is None:
            return exc
        if self.health.failed(kind, str(exc)) and self.on_outage is not None:
            self.on_outage(True, str(exc))
        return StoreUnavailable(f"{self.path}: cannot commit: {exc}", kind)

    def _committed(self, changed: bool) -> None:
        if changed:
            self.last_commit = time.monotonic()
        if self.health.failing and self.health.committed() and self.on_outage is not None:
            self.on_outage(False, "")

    def _thread_conn(self) -> PgConnection:
        conn: PgConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = PgConnection(self.pool, self._dsn)
        return conn

    @staticmethod
    def _rollback_on(conn: PgConnection) -> None:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")

    def probe(self) -> bool:
        """A real commit (the schema version, rewritten unchanged): whether the database
        can commit now, for a store that is failing."""
        try:
            with self.transaction() as conn:
                conn.execute("UPDATE mailsync_schema SET version = version")
        except StoreUnavailable:
            return False
        return not self.health.failing

    def checkpoint(self) -> int:
        """Nothing to do: the server manages its WAL."""
        return 0

    def writable(self, timeout: float) -> tuple[bool, str]:
        """Whether the database answers within ``timeout`` s (for /healthz)."""
        ok, why = self.health.state()
        if not ok:
            return False, why
        if not self.lock.acquire(timeout=timeout):
            return False, f"busy for more than {timeout:g}s"
        try:
            self.conn.execute("SELECT 1").fetchone()
            return True, "ok"
        except sqlite3.Error as exc:
            return False, str(exc)
        finally:
            self.lock.release()

    def migrate(self) -> None:
        """Apply the migrations this store has not had yet (under the advisory lock)."""
        conn = connect(self._dsn)
        try:
            migrate_schema(conn, str(self.path))
        finally:
            conn.close()

    def close(self) -> None:
        cast(PgConnection, self.conn).close()
        self.pool.close()
        _SCRUB.dsns.discard(self._dsn)


def open_store(state_dir: Path, backend: StoreBackend, *, create: bool = True,
               new_store: bool = False, readonly: bool = False,
               migrate: bool = True) -> PgStore:
    """Open (and, with ``migrate``, migrate) the PostgreSQL store ``backend`` names, with
    the rules of :func:`mailsync.store.sqlitefile.open_store`: a store at an older schema
    version is refused (StoreOutdated) unless ``migrate``; a newer one always; an empty
    database is a new store (created unless ``readonly`` or not ``create``), refused as
    missing when ``state_dir/store-id`` records one, unless ``new_store``."""
    missing = missing_driver()
    if missing is not None:
        raise StoreError(missing)
    if backend.dsn is None:
        raise StoreError("daemon.store.postgresql.dsn is not set")
    try:
        dsn = backend.dsn.resolve()
    except SecretError as exc:
        raise StoreError(f"daemon.store.postgresql.dsn {backend.dsn.describe()}: {exc}") \
            from None
    label = describe(dsn)
    _watch_logs(dsn)
    if create and not readonly:
        files.make_dir(state_dir)
    recorded = identity.read_recorded(state_dir)
    conn = connect(dsn)
    try:
        version = _version(conn)
        if version is None and (readonly or not create):
            if recorded is not None:
                raise identity.missing(Path(label), state_dir, recorded)
            raise StoreError(f"{label}: no store yet (the daemon has not run)")
        if (version or 0) == 0 and recorded is not None and not new_store:
            raise identity.missing(Path(label), state_dir, recorded)
        if readonly or not migrate:
            _refuse_other_version(label, version or 0, fresh=version in (None, 0) and
                                  not readonly)
        if not readonly and version != pgschema.count():
            migrate_schema(conn, label)
        held = identity.held_by(cast(sqlite3.Connection, conn), Path(label))
        identity.check(Path(label), state_dir, recorded, held,
                       write=create and not readonly, new_store=new_store)
    except BaseException as exc:
        conn.close()
        raise _open_error(exc, label, dsn) from None
    conn.close()
    return PgStore(_pool(dsn, backend.pool_size, label, readonly=readonly), dsn, label,
                   writer=not readonly)


def _open_error(exc: BaseException, label: str, dsn: str) -> BaseException:
    import psycopg

    if isinstance(exc, psycopg.Error):
        return StoreError(f"{label}: cannot use the store: {sqlite_error(exc, dsn)}")
    return exc


def _watch_logs(dsn: str) -> None:
    for name in ("psycopg", "psycopg.pool"):
        logger = logging.getLogger(name)
        if _SCRUB not in logger.filters:
            logger.addFilter(_SCRUB)
    _SCRUB.dsns.add(dsn)


def connect(dsn: str) -> psycopg.Connection[Any]:
    """One connection (autocommit) for opening and migrating; StoreError, scrubbed, when
    the server cannot be reached or the DSN is not one."""
    try:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:  # pragma: no cover - missing_driver said it is there
        raise StoreError(f"the PostgreSQL store needs psycopg: {INSTALL_HINT}") from None
    label = "postgresql"
    try:
        params = conninfo_to_dict(dsn)
        label = describe(dsn)
        extra = {} if "connect_timeout" in params else {"connect_timeout": CONNECT_TIMEOUT}
        return psycopg.connect(dsn, autocommit=True, **extra)  # type: ignore[arg-type]
    except psycopg.Error as exc:
        raise StoreError(f"{label}: cannot connect to the store: "
                         f"{scrub(str(exc).strip(), dsn)}") from None


def _version(conn: psycopg.Connection[Any]) -> int | None:
    """The schema version; None when the database has no mailsync schema at all."""
    row = conn.execute("SELECT to_regclass('mailsync_schema') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return None
    row = conn.execute("SELECT version FROM mailsync_schema").fetchone()
    return int(row[0]) if row else 0


def _refuse_other_version(label: str, version: int, *, fresh: bool) -> None:
    latest = pgschema.count()
    if version > latest:
        raise StoreError(f"{label}: store schema version {version} is newer than this "
                         f"mailsync knows ({latest}); upgrade mailsync")
    if version < latest and not fresh:
        raise StoreOutdated(
            f"{label}: the store is at schema version {version} and this mailsync uses "
            f"{latest}: upgrade the daemons first (or run `mailsync run --once` once); "
            "`mailsync run` upgrades the store, other commands never do", version, latest)


def migrate_schema(conn: psycopg.Connection[Any], label: str) -> None:
    """Bootstrap the version table and apply the missing migrations, one transaction
    each, holding the advisory lock: a second node starting meanwhile waits, then finds
    them applied."""
    conn.execute("SELECT pg_advisory_lock(%s)", (pgschema.MIGRATION_LOCK,))
    try:
        with conn.transaction():
            conn.execute(pgschema.BOOTSTRAP)
        row = conn.execute("SELECT version FROM mailsync_schema").fetchone()
        version = int(row[0]) if row else 0
        latest = pgschema.count()
        if version > latest:
            raise StoreError(f"{label}: store schema version {version} is newer than this "
                             f"mailsync knows ({latest}); upgrade mailsync")
        for number in range(version + 1, latest + 1):
            with conn.transaction():
                for statement in pgschema.migration(number):
                    conn.execute(statement)
                conn.execute("UPDATE mailsync_schema SET version = %s", (number,))
            log.info("%s: store schema migrated to version %d", label, number)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (pgschema.MIGRATION_LOCK,))


def _pool(dsn: str, size: int, label: str, *,
          readonly: bool) -> ConnectionPool[psycopg.Connection[Any]]:
    """The process's pool: at least one connection, at most ``size``; each durable
    (``synchronous_commit = on``), read only for a reader, with numerics as int/float;
    one idle for :data:`CHECK_IDLE` or longer checked (an empty query) when taken."""
    from psycopg.conninfo import conninfo_to_dict
    from psycopg_pool import ConnectionPool, PoolTimeout

    loader = numeric_loader()

    def configure(conn: psycopg.Connection[Any]) -> None:
        conn.adapters.register_loader("numeric", loader)
        conn.execute("SET synchronous_commit = on")
        if readonly:
            conn.execute("SET default_transaction_read_only = on")

    def check(conn: psycopg.Connection[Any]) -> None:
        if time.monotonic() - getattr(conn, RETURNED_AT, float("-inf")) >= CHECK_IDLE:
            ConnectionPool.check_connection(conn)

    extra: dict[str, Any] = {"autocommit": True}
    if "connect_timeout" not in conninfo_to_dict(dsn):
        extra["connect_timeout"] = CONNECT_TIMEOUT
    pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
        dsn, kwargs=extra, min_size=1, max_size=max(1, size), open=False,
        configure=configure, check=check, name="mailsync")
    started = time.monotonic()
    try:
        pool.open(wait=True, timeout=CONNECT_WAIT * 2)
    except PoolTimeout:
        pool.close()
        raise StoreError(f"{label}: no connection to the store within "
                         f"{time.monotonic() - started:.0f}s") from None
    return pool
