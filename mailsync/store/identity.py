"""Which store belongs to a state_dir: ``state_dir/store-id`` and the database's own id.

A deleted ``mailsync.db`` must not start an empty store without a word (the history and
every queued message would vanish), nor a database copied in from elsewhere pass for
this one. So the store carries a random id (table ``store_meta``, given by the migration
that creates it) and ``state_dir/store-id`` records the id of the store that state_dir
had. Opening compares the two; ``mailsync run --new-store`` accepts another (or an
empty) store and records its id instead.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from enum import Enum
from pathlib import Path

from mailsync import files
from mailsync.errors import StoreError, StoreLost
from mailsync.values import valueclass

log = logging.getLogger("mailsync.store")

ID_FILE = "store-id"

NEW_STORE_HINT = "start with --new-store to begin an empty store"
LOST = "the history and queued mail of the old one are lost"


@valueclass
class StoreId:
    """A store's identity: its random id and when it was given."""

    id: str
    created_at: str

    def __str__(self) -> str:
        return f"store {self.id} created {self.created_at}"


class Settle(Enum):
    """What opening does about ``store-id`` once the database's id is known."""

    KEEP = "keep"      # it records this store
    RECORD = "record"  # nothing recorded yet (first start, or a store from before ids)
    ACCEPT = "accept"  # another store recorded, and --new-store accepts this one


def id_path(state_dir: Path) -> Path:
    return state_dir / ID_FILE


def read_recorded(state_dir: Path) -> StoreId | None:
    """The store ``state_dir/store-id`` records; None when there is no such file."""
    path = id_path(state_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"{path}: cannot read the store id: {exc.strerror}") from None
    try:
        doc = json.loads(text)
        return StoreId(str(doc["store_id"]), str(doc["created_at"]))
    except (ValueError, KeyError, TypeError):
        raise StoreError(f"{path}: not a store id file (expected JSON with store_id and "
                         "created_at); restore it, or remove it to take the store in "
                         "this state_dir as it is") from None


def write_recorded(state_dir: Path, held: StoreId) -> None:
    """Record ``held`` in ``state_dir/store-id`` (0640, atomically)."""
    doc = {"store_id": held.id, "created_at": held.created_at}
    files.write_atomically(id_path(state_dir), (json.dumps(doc) + "\n").encode())


def held_by(conn: sqlite3.Connection, db: Path) -> StoreId:
    """The id the database holds (migration 5 gives every store one)."""
    rows = dict(conn.execute(
        "SELECT key, value FROM store_meta WHERE key IN ('store_id', 'created_at')"))
    if "store_id" not in rows:
        raise StoreError(f"{db}: the store has no id (no store_id row in store_meta); "
                         "restore the file, or see docs/store.md")
    return StoreId(rows["store_id"], rows.get("created_at", "(unknown)"))


def missing(db: Path, state_dir: Path, recorded: StoreId) -> StoreLost:
    return StoreLost(f"the store {db} is missing, but {id_path(state_dir)} records "
                     f"{recorded}; restore the file, or {NEW_STORE_HINT} ({LOST})")


def replaced(db: Path, state_dir: Path, recorded: StoreId, held: StoreId) -> StoreLost:
    return StoreLost(f"the store {db} was replaced: it is {held}, but "
                     f"{id_path(state_dir)} records {recorded}; restore the right file, "
                     f"or start with --new-store to accept this one ({LOST})")


def settle(recorded: StoreId | None, held: StoreId, *, new_store: bool) -> Settle | None:
    """What to do about store-id (pure); None: refuse, another store is recorded."""
    if recorded is None:
        return Settle.RECORD
    if recorded.id == held.id:
        return Settle.KEEP
    return Settle.ACCEPT if new_store else None


def check(db: Path, state_dir: Path, recorded: StoreId | None, held: StoreId, *,
          write: bool, new_store: bool) -> None:
    """Compare the recorded and the held id; with ``write``, record the held one when
    nothing is recorded yet or --new-store accepts it. StoreLost when they differ."""
    action = settle(recorded, held, new_store=new_store)
    if action is None:
        assert recorded is not None
        raise replaced(db, state_dir, recorded, held)
    if not write or action is Settle.KEEP:
        return
    write_recorded(state_dir, held)
    if action is Settle.ACCEPT:
        log.warning("%s: now records %s (--new-store; %s was abandoned)",
                    id_path(state_dir), held, recorded)
    else:
        log.info("%s: records %s", id_path(state_dir), held)
