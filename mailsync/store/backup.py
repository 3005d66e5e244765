"""``mailsync store backup FILE``: a consistent copy of an SQLite store, in one file,
taken while the daemon runs.

Copying ``mailsync.db`` with ``cp`` while the daemon writes is not a backup: the file
alone lacks what is still in ``-wal``, and the two copied one after the other need not
match. SQLite's online backup (``sqlite3.Connection.backup``) in one step reads every page
inside one read transaction: a snapshot of one moment, which in WAL mode blocks neither
the daemon's writers nor its readers. The copy is then made a file of its own (no WAL:
``journal_mode=DELETE``), checked page by page (``integrity_check``), fsynced, and linked
to its name, which must not exist: a backup never replaces a file, and a crash leaves the
old name untouched (at worst a ``.NAME.PID.tmp`` beside it). It is 0640 whatever the
umask: it holds every message the store holds.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from mailsync import files
from mailsync.errors import StoreDamaged, StoreError
from mailsync.store.identity import StoreId, held_by
from mailsync.store.sqlitefile import connect_readonly, store_error
from mailsync.values import valueclass


@valueclass
class Backup:
    """What a backup holds: its store, schema version, messages and size in bytes."""

    path: Path
    store: StoreId
    schema_version: int
    messages: int
    size: int


def backup(source: Path, dest: Path) -> Backup:
    """Copy the store ``source`` into the new file ``dest`` (see the module's doc).

    StoreError when ``dest`` exists, ``source`` cannot be read, or the copy is not sound
    (StoreDamaged: the store itself is damaged; nothing is left at ``dest``)."""
    if not source.exists():
        raise StoreError(f"{source}: no such file (no store to back up)")
    if dest.exists() or dest.is_symlink():
        raise StoreError(f"{dest}: the file exists; a backup never replaces one (remove it, "
                         "or name another file)")
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.close(files.create_file(tmp))
        taken = _copy(source, tmp)
        files.fsync(tmp)
        try:
            os.link(tmp, dest)  # never over a file made meanwhile, unlike a rename
        except FileExistsError:
            raise StoreError(f"{dest}: the file exists; a backup never replaces one "
                             "(it was made while the backup ran)") from None
        files.fsync(dest.parent)
    except OSError as exc:
        raise StoreError(f"{dest}: cannot write the backup: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return Backup(dest, *taken, dest.stat().st_size)


def _copy(source: Path, tmp: Path) -> tuple[StoreId, int, int]:
    """The pages of ``source`` into ``tmp``, as one self-contained file, checked; its
    store's id, schema version and number of messages."""
    try:
        src = connect_readonly(source, whole=True)
    except sqlite3.Error as exc:
        raise store_error(exc, source) from None
    try:
        dst = sqlite3.connect(tmp)
        try:
            try:
                src.backup(dst)  # one step: one read transaction, one moment's pages
            except sqlite3.Error as exc:
                raise store_error(exc, source) from None
            try:
                dst.execute("PRAGMA journal_mode = DELETE")  # one file, no -wal beside it
                problems = [row[0] for row in dst.execute("PRAGMA integrity_check")]
                held = held_by(dst, source) if problems == ["ok"] else None
                version = int(dst.execute("PRAGMA user_version").fetchone()[0])
                messages = int(dst.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
            except sqlite3.Error as exc:
                # The pages are copied as they are: a damaged one is found in the copy.
                if not isinstance(store_error(exc, source), StoreDamaged):
                    raise StoreError(f"{tmp}: cannot check the backup: {exc}") from None
                problems, held = [str(exc)], None
            if held is None:
                raise StoreDamaged(
                    f"the store {source} is damaged ({'; '.join(problems[:3])}): no backup "
                    "was written; run `mailsync store check`; see docs/store.md for recovery")
        finally:
            dst.close()
    finally:
        src.close()
    return held, version, messages
