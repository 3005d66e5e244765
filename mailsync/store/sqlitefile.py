"""The SQLite file: opening it (created 0640, WAL bounded, checked, migrated, its identity
checked), read only or not, and what its errors mean (damaged, outdated).

The runtime of an open store (its transactions, health, checkpoints) is
:mod:`mailsync.store.sqlite`'s :class:`Store`, whose :meth:`Store.open` is :func:`open_store`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING

from mailsync import files
from mailsync.errors import StoreDamaged, StoreError, StoreOutdated
from mailsync.store import identity
from mailsync.store.health import free_bytes
from mailsync.store.migrations import MIGRATIONS

if TYPE_CHECKING:   # the runtime of an open store, which imports this module
    from mailsync.store.sqlite import Store

log = logging.getLogger("mailsync.store")

DB_NAME = "mailsync.db"
# The WAL is checkpointed (the only fsyncs in WAL mode) once it holds this many pages and
# cut back to that size after a checkpoint; the daemon truncates it after a burst. A large
# WAL means fewer checkpoints (fewer fsyncs, hot pages written once), but on a small
# filesystem the WAL must not be what fills the disk: it may take 1/64 of the space free
# when the store is opened, between 1 MiB and 16 MiB (256 to 4,000 pages of 4 KiB).
WAL_MIN_PAGES, WAL_MAX_PAGES = 256, 4000
WAL_SHARE_OF_FREE = 64
BUSY_TIMEOUT_MS = 30_000


def wal_pages(free: int | None, page_size: int = 4096) -> int:
    """Pages the WAL may hold before a checkpoint, for ``free`` bytes on its filesystem."""
    if free is None:
        return WAL_MAX_PAGES
    return max(WAL_MIN_PAGES, min(WAL_MAX_PAGES, free // WAL_SHARE_OF_FREE // page_size))


def db_path(state_dir: Path) -> Path:
    return state_dir / DB_NAME


def existed(state_dir: Path) -> bool:
    """Whether ``state_dir`` has, or had, a store: its database or its store-id file.
    Readers show "nothing yet" only when neither exists."""
    return db_path(state_dir).exists() or identity.id_path(state_dir).exists()


def open_store(cls: type[Store], state_dir: Path, *, create: bool = True,
               new_store: bool = False, check: bool = False, readonly: bool = False,
               migrate: bool = True) -> Store:
    """Open (and migrate) the store in ``state_dir``; StoreError if impossible.

    ``migrate=False`` (every command but ``mailsync run``): a store at an older
    schema version is refused with :class:`StoreOutdated` instead of migrated, since
    a daemon of the older mailsync may be running on it; a new store is created at
    the current version all the same.

    ``create``: a first start creates the store (file 0640, state_dir 0750) and
    records its id in ``state_dir/store-id``; without it (readers), no store yet is
    an error. Either way a store that store-id records but that is missing or
    replaced raises StoreLost, unless ``new_store`` accepts an empty or another one.
    ``check`` (the daemon's start): ``PRAGMA quick_check`` first, and loose modes of
    state_dir and the database files are tightened or warned about. A database SQLite
    finds corrupt raises StoreDamaged. ``readonly`` (readers; not with ``create``):
    opened read only, not migrated, so that a user who may only read state_dir
    reads it (see :func:`read_only`).
    """
    if readonly:
        return _open_readonly(cls, state_dir)
    path = db_path(state_dir)
    conn: sqlite3.Connection | None = None
    store: Store | None = None
    try:
        if create:
            files.make_dir(state_dir)
        recorded = identity.read_recorded(state_dir)
        fresh = not path.exists()
        if fresh:
            if recorded is not None and not new_store:
                raise identity.missing(path, state_dir, recorded)
            if not create:
                raise StoreError(f"{path}: no store yet (the daemon has not run)")
            _create_db_file(path)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                               timeout=BUSY_TIMEOUT_MS / 1000)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        # The WAL stays bounded (see wal_pages); a 16 MiB page cache keeps the queue's
        # hot pages in memory.
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = wal_pages(free_bytes(state_dir), page_size)
        conn.execute(f"PRAGMA wal_autocheckpoint={pages}")
        conn.execute(f"PRAGMA journal_size_limit={pages * page_size}")
        conn.execute("PRAGMA cache_size=-16384")
        conn.execute("PRAGMA foreign_keys=ON")
        if check:
            _quick_check(conn, path)
        store = cls(conn, path)
        if not migrate and not fresh:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if 0 < version < len(MIGRATIONS):
                raise outdated(path, version)
        store.migrate()
        identity.check(path, state_dir, recorded, identity.held_by(conn, path),
                       write=create, new_store=new_store)
        if check:
            files.tighten(state_dir, [path, *(path.with_name(path.name + suffix)
                                              for suffix in ("-wal", "-shm", ".writer"))])
        return store
    except BaseException as exc:
        if store is not None:
            store.close()
        elif conn is not None:
            conn.close()
        if isinstance(exc, sqlite3.Error):
            raise store_error(exc, path) from None
        if isinstance(exc, OSError):
            raise StoreError(f"{path}: cannot open the store: {exc}") from None
        raise

def _open_readonly(cls: type[Store], state_dir: Path) -> Store:
    path = db_path(state_dir)
    recorded = identity.read_recorded(state_dir)
    if not path.exists():
        if recorded is not None:
            raise identity.missing(path, state_dir, recorded)
        raise StoreError(f"{path}: no store yet (the daemon has not run)")
    conn = None
    try:
        conn = connect_readonly(path)
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version < len(MIGRATIONS):
            raise outdated(path, version)
        if version > len(MIGRATIONS):
            raise StoreError(f"{path}: store schema version {version} is newer than "
                             f"this mailsync knows ({len(MIGRATIONS)}); upgrade mailsync")
        identity.check(path, state_dir, recorded, identity.held_by(conn, path),
                       write=False, new_store=False)
        return cls(conn, path, writer=False)
    except BaseException as exc:
        if conn is not None:
            conn.close()
        if isinstance(exc, sqlite3.Error):
            raise store_error(exc, path) from None
        raise


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Apply the migrations ``conn``'s store has not had yet, one transaction each."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise StoreError(
            f"{path}: store schema version {version} is newer than this mailsync "
            f"knows ({len(MIGRATIONS)}); upgrade mailsync"
        )
    for number, sql in enumerate(MIGRATIONS[version:], start=version + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(sql):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def outdated(path: Path, version: int) -> StoreOutdated:
    """The refusal of a store older than this mailsync by a command that does not
    migrate (the CLI adds whether a daemon runs on it: :func:`mailsync.cli.outdated_text`)."""
    return StoreOutdated(
        f"{path}: the store is at schema version {version} and this mailsync uses "
        f"{len(MIGRATIONS)}: upgrade the daemon first (or run `mailsync run --once` once); "
        "`mailsync run` upgrades the store, other commands never do", version,
        len(MIGRATIONS))


def read_only(state_dir: Path) -> bool:
    """Whether this process may only read the store in ``state_dir`` (SQLite must then
    open it read only: it cannot create the -wal/-shm files or write the database)."""
    path = db_path(state_dir)
    return path.exists() and not (os.access(path, os.W_OK) and os.access(state_dir, os.W_OK))


class Frozen(sqlite3.Connection):
    """A connection that reads the file as it is (``immutable=1``): it takes no lock and
    sees no commit made after it opened (nor must the file change under it)."""

    frozen = True


def connect_readonly(path: Path, *, whole: bool = False) -> sqlite3.Connection:
    """A read-only connection. ``mode=ro`` sees the daemon's last commits through the WAL
    index; when the -shm cannot be opened (a state_dir that this user may only read and
    that no writer has open), ``immutable=1``: the file read as it is. ``whole`` (a
    backup): StoreError instead when a WAL that this user cannot read is left beside
    the file, which would be read without its last commits."""
    uri = path.absolute().as_uri()
    conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, isolation_level=None,
                           check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()
        return conn
    except sqlite3.OperationalError:
        conn.close()
    wal = path.with_name(path.name + "-wal")
    if whole and wal.exists() and wal.stat().st_size > 0:
        raise StoreError(f"{path}: cannot read its last commits ({wal.name} needs its "
                         "-shm, which this user cannot open): run the backup as the "
                         "daemon's user")
    return sqlite3.connect(f"{uri}?immutable=1", uri=True, isolation_level=None,
                           check_same_thread=False, factory=Frozen)


def integrity(path: Path) -> list[str]:
    """The problems ``PRAGMA integrity_check`` finds in the database file ``path`` (every
    page, read only); [] when it is sound. StoreError when it cannot be read at all for
    another reason than damage (permissions, a lock)."""
    try:
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
        try:
            rows = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        error = store_error(exc, path)
        if isinstance(error, StoreDamaged):
            return [str(exc)]
        raise error from None
    return [] if rows == ["ok"] else rows


def store_error(exc: sqlite3.Error, path: Path) -> StoreError:
    """The StoreError saying what ``exc`` means for the store at ``path``: StoreDamaged
    when SQLite finds the file corrupt or not a database."""
    if getattr(exc, "sqlite_errorcode", 0) & 0xFF in _DAMAGED:
        return StoreDamaged(damaged_text(path, str(exc)))
    return StoreError(f"{path}: cannot use the store: {exc}")


def damaged_text(path: Path, problem: str) -> str:
    return (f"the store {path} is damaged: {problem}; run `mailsync store check`; "
            "see docs/store.md for recovery")


# SQLITE_CORRUPT, SQLITE_NOTADB (primary result codes).
_DAMAGED = (11, 26)


def _create_db_file(path: Path) -> None:
    """Create the empty database file 0640 before SQLite does: SQLite gives its -wal and
    -shm the mode of the database file, and would create that one 0644 under umask 022.

    A -wal left by a deleted database is moved aside first (SQLite would replay it into
    the new file): it may hold that store's last transactions.
    """
    wal = path.with_name(path.name + "-wal")
    if wal.exists():
        aside = wal.with_name(f"{wal.name}.orphan-{time.strftime('%Y%m%dT%H%M%S')}")
        os.rename(wal, aside)
        log.warning("%s: the -wal of a deleted store, moved to %s", path, aside)
    path.with_name(path.name + "-shm").unlink(missing_ok=True)
    with contextlib.suppress(FileExistsError):  # created by another process meanwhile
        os.close(files.create_file(path))


def _quick_check(conn: sqlite3.Connection, path: Path) -> None:
    """StoreDamaged unless ``PRAGMA quick_check`` finds every table read at start sound.

    Message contents (``contents``, most of the file) are left out: they are read one
    message at a time, when it is sent or shown, and a damaged page then fails that read
    as StoreDamaged. Checking them made a start read the whole file (4 s for 50,000
    messages on a cold cache, against 0.36 s without them); `mailsync store check` does.
    """
    tables = [row[0] for row in conn.execute(
        "SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")]
    problems: list[str] = []
    for table in tables:
        if table not in _UNCHECKED_AT_START:
            problems += [row[0] for row in conn.execute(f'PRAGMA quick_check("{table}")')
                         if row[0] != "ok"]
    if problems:
        raise StoreDamaged(damaged_text(path, "; ".join(problems[:5])))


_UNCHECKED_AT_START = frozenset({"contents"})


def _statements(sql: str) -> list[str]:
    """Split a migration into statements (migrations contain no ';' inside literals)."""
    return [s.strip() for s in sql.split(";") if s.strip()]
