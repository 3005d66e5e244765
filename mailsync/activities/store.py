"""Activities in the SQLite store: schedule, done, cancel, list, show, counts and metrics.

The decisions (defaults, deadlines, chaining, refusals) are :mod:`mailsync.activities.rules`';
this module reads what they need, calls them, and writes the outcome in one transaction.
Attachments of completed activities are kept as ``<state_dir>/attachments/<id>/<name>``.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailsync import files
from mailsync.activities.rules import (
    Activity,
    NewActivity,
    Next,
    RecordRef,
    State,
    after_done,
    check_done,
    completed,
    local_date,
    plan_activity,
    require_open,
    type_after,
)
from mailsync.config.model import Config, IncomingServer
from mailsync.errors import ActivityRefused
from mailsync.store import Store, db_path, where
from mailsync.values import valueclass

_COLUMNS = ("id, type, user, deadline, state, summary, note, record_model, record_id, "
            "fetched_id, previous_id, created_at, done_at, done_on, feedback, attachment")
ATTACHMENTS = "attachments"
log = logging.getLogger("mailsync.activities")


def _activity(r: Sequence[Any]) -> Activity:
    return Activity(
        id=r[0], type=r[1], user=r[2], deadline=date.fromisoformat(r[3]), state=r[4],
        summary=r[5], note=r[6], record=RecordRef(r[7], r[8]) if r[7] is not None else None,
        fetched_id=r[9], previous_id=r[10], created_at=r[11], done_at=r[12],
        done_on=date.fromisoformat(r[13]) if r[13] else None, feedback=r[14], attachment=r[15])


def _get(conn: sqlite3.Connection, aid: int) -> Activity:
    row = conn.execute(f"SELECT {_COLUMNS} FROM activities WHERE id = ?", (aid,)).fetchone()
    if row is None:
        raise ActivityRefused(f"no activity {aid} (see: mailsync activity list --state all)")
    return _activity(row)


def _seen(conn: sqlite3.Connection, type_name: str) -> bool:
    return conn.execute("SELECT 1 FROM activities WHERE type = ? LIMIT 1",
                        (type_name,)).fetchone() is not None


def insert(conn: sqlite3.Connection, new: NewActivity, now: float) -> int:
    """Store ``new`` as an open activity on ``conn`` (inside the caller's transaction)."""
    rec = new.record
    cur = conn.execute(
        "INSERT INTO activities (type, user, deadline, summary, note, record_model, record_id,"
        " fetched_id, previous_id, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (new.type, new.user, new.deadline.isoformat(), new.summary, new.note,
         rec.model if rec else None, rec.id if rec else None, new.fetched_id,
         new.previous_id, now, now))
    return int(cur.lastrowid or 0)


def schedule_for_fetched(conn: sqlite3.Connection, config: Config, server: IncomingServer,
                         fetched_id: int, subject: str, now: float) -> int | None:
    """Schedule the activity of ``server``'s activity rule for a newly fetched message.

    Runs inside the inbound poller's storing transaction (no BEGIN/COMMIT here). Summary
    is the type's default_summary or the message subject, note its default_description,
    deadline per its delay from today. Returns the activity id (the same one when called
    again for the same message), or None without a rule, when the rule's type is no
    longer declared, or when it is refused (logged: the message is stored all the same).
    """
    rule = server.activity
    if rule is None:
        return None
    row = conn.execute("SELECT id FROM activities WHERE fetched_id = ?",
                       (fetched_id,)).fetchone()
    if row is not None:
        return int(row[0])
    t = config.activity_type(rule.type)
    if t is None:
        return None
    try:
        new = plan_activity(config, t.name, local_date(now), user=rule.user,
                            summary=t.default_summary or subject or None, fetched_id=fetched_id)
    except ActivityRefused as exc:
        log.warning("incoming server %s, fetched message %d: no activity: %s",
                    server.name, fetched_id, exc)
        return None
    return insert(conn, new, now)


@valueclass
class DoneResult:
    """A completed activity, what its type's chaining decided, and the triggered one."""

    activity: Activity
    next: Next
    triggered: Activity | None = None


@valueclass
class Filters:
    """Listing filters; None or empty means any. ``overdue_on``: open and due before it."""

    user: str | None = None
    type: str | None = None
    states: tuple[State, ...] = ("open",)
    overdue_on: date | None = None
    limit: int = 1000


class ActivityStore:
    """Activity queries over a :class:`Store`."""

    def __init__(self, store: Store, state_dir: Path | None = None) -> None:
        self.store = store
        self._state_dir = state_dir

    @property
    def state_dir(self) -> Path:
        """The directory attachments are kept under: ``state_dir`` when given, else the
        SQLite file's (a PostgreSQL store's path is a label, no directory)."""
        return self._state_dir if self._state_dir is not None else self.store.path.parent

    def get(self, aid: int) -> Activity:
        """One activity; ActivityRefused naming the id when there is none."""
        with self.store.lock:
            return _get(self.store.conn, aid)

    def schedule(self, config: Config, type_name: str | None, now: float, *,
                 user: str | None = None, summary: str | None = None,
                 note: str | None = None, record: RecordRef | None = None,
                 when: date | None = None, after: int | None = None) -> Activity:
        """Schedule one activity (type defaults filled in); after ``after`` when given.

        Without ``type_name``, ``after`` must name an activity whose type decides the
        next one (its default_next, or its only recommended type).
        """
        with self.store.transaction() as conn:
            previous = _get(conn, after) if after is not None else None
            if type_name is None:
                if previous is None:
                    raise ActivityRefused("--type is needed (or --after ID)")
                type_name = type_after(config, previous)
            seen = config.activity_type(type_name) is None and _seen(conn, type_name)
            new = plan_activity(config, type_name, local_date(now), user=user,
                                summary=summary, note=note, record=record, when=when,
                                previous=previous, seen_before=seen)
            return _get(conn, insert(conn, new, now))

    def done(self, config: Config, aid: int, now: float, *, feedback: str | None = None,
             attach: Path | None = None) -> DoneResult:
        """Complete activity ``aid`` (keeping ``attach``) and apply its type's chaining."""
        kept: Path | None = None
        try:
            with self.store.transaction() as conn:
                activity = _get(conn, aid)
                check_done(config, activity, attach is not None)
                rel = None
                if attach is not None:
                    kept = self._keep(aid, attach)
                    rel = kept.relative_to(self.state_dir).as_posix()
                finished = completed(activity, now, feedback, rel)
                conn.execute(
                    "UPDATE activities SET state = 'done', done_at = ?, done_on = ?,"
                    " feedback = ?, attachment = ?, updated_at = ? WHERE id = ?",
                    (now, finished.done_on.isoformat() if finished.done_on else None,
                     feedback, rel, now, aid))
                nxt = after_done(config, finished)
                triggered = None
                if nxt.trigger is not None:
                    triggered = _get(conn, insert(conn, nxt.trigger, now))
        except BaseException:
            if kept is not None:
                kept.unlink(missing_ok=True)
            raise
        return DoneResult(finished, nxt, triggered)

    def _keep(self, aid: int, source: Path) -> Path:
        """Copy ``source`` into the attachments directory (tmp name, then rename)."""
        folder = self.state_dir / ATTACHMENTS / str(aid)
        target = folder / source.name
        tmp = folder / f".{source.name}.tmp"
        try:
            files.make_dir(folder.parent)
            files.make_dir(folder)
            tmp.unlink(missing_ok=True)
            with open(source, "rb") as src, os.fdopen(files.create_file(tmp), "wb") as dst:
                shutil.copyfileobj(src, dst)  # 0640 whatever the umask
            os.replace(tmp, target)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise ActivityRefused(f"--attach {source}: cannot keep the file: {exc}") from None
        return target

    def cancel(self, aid: int, now: float) -> Activity:
        """Cancel open activity ``aid`` (kept, state cancelled)."""
        with self.store.transaction() as conn:
            require_open(_get(conn, aid), "cancel")
            conn.execute("UPDATE activities SET state = 'cancelled', updated_at = ?"
                         " WHERE id = ?", (now, aid))
            return _get(conn, aid)

    def find(self, f: Filters) -> list[Activity]:
        """Activities by deadline, then id."""
        clause, args = where(
            ("state IN", f.states), ("user =", f.user or None), ("type =", f.type or None),
            ("state = 'open' AND deadline <",
             None if f.overdue_on is None else f.overdue_on.isoformat()))
        with self.store.lock:
            rows = self.store.conn.execute(
                f"SELECT {_COLUMNS} FROM activities {clause} ORDER BY deadline, id LIMIT ?",
                (*args, f.limit)).fetchall()
        return [_activity(r) for r in rows]

    def chain(self, aid: int) -> list[Activity]:
        """The previous activities of ``aid``, nearest first."""
        with self.store.lock:
            rows = self.store.conn.execute(
                "WITH RECURSIVE back(id, depth) AS ("
                " SELECT previous_id, 1 FROM activities WHERE id = ?"
                " UNION ALL SELECT a.previous_id, b.depth + 1 FROM activities a"
                " JOIN back b ON a.id = b.id WHERE a.previous_id IS NOT NULL AND b.depth < 10000)"
                f" SELECT {', '.join('a.' + c.strip() for c in _COLUMNS.split(','))}"
                " FROM activities a JOIN back b ON a.id = b.id ORDER BY b.depth", (aid,)
            ).fetchall()
        return [_activity(r) for r in rows]

    def following(self, aid: int) -> list[Activity]:
        """Activities scheduled after ``aid`` (triggered, or with --after)."""
        with self.store.lock:
            rows = self.store.conn.execute(
                f"SELECT {_COLUMNS} FROM activities WHERE previous_id = ? ORDER BY id",
                (aid,)).fetchall()
        return [_activity(r) for r in rows]

    def counts(self, today: date) -> dict[str, tuple[int, int]]:
        """Open and overdue activities by type (types with none left out)."""
        with self.store.lock:
            rows = self.store.conn.execute(
                # CASE, not SUM(deadline < ?): PostgreSQL sums no booleans.
                "SELECT type, COUNT(*), SUM(CASE WHEN deadline < ? THEN 1 ELSE 0 END)"
                " FROM activities"
                " WHERE state = 'open' GROUP BY type", (today.isoformat(),)).fetchall()
        return {r[0]: (int(r[1]), int(r[2] or 0)) for r in rows}

    def counts_by_user(self, today: date) -> list[tuple[str, str, int, int]]:
        """Open and overdue activities by user and type: ``(user, type, open, overdue)``,
        by user then type (the admin console's Activities page)."""
        with self.store.lock:
            rows = self.store.conn.execute(
                # CASE, not SUM(deadline < ?): PostgreSQL sums no booleans.
                "SELECT user, type, COUNT(*), SUM(CASE WHEN deadline < ? THEN 1 ELSE 0 END)"
                " FROM activities WHERE state = 'open' GROUP BY user, type"
                " ORDER BY user, type", (today.isoformat(),)).fetchall()
        return [(str(r[0]), str(r[1]), int(r[2]), int(r[3] or 0)) for r in rows]


if TYPE_CHECKING:
    from prometheus_client.core import Metric


class ActivityCollector:
    """Prometheus collector of ``mailsync_activities_open{type}`` and ``_overdue{type}``.

    Reads the store at scrape time. ``store`` is a callable returning the daemon's open
    Store (not closed here), or the state_dir (opened and closed at each scrape; no store
    yet reads as none). Every configured type is exported, at 0 when it has none; types
    removed from the config still show while they have open activities.
    """

    def __init__(self, store: Callable[[], Store] | Path, config: Config | Callable[[], Config],
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._config = config
        self._clock = clock

    def describe(self) -> Iterable[Metric]:
        """The two families without samples, so registering does not read the store."""
        return self._families({})

    def collect(self) -> Iterable[Metric]:
        """Current counts by type."""
        config = self._config if isinstance(self._config, Config) else self._config()
        counts = self._counts(local_date(self._clock()))
        for t in config.activity_types:
            counts.setdefault(t.name, (0, 0))
        return self._families(counts)

    def _counts(self, today: date) -> dict[str, tuple[int, int]]:
        if not isinstance(self._store, Path):
            return ActivityStore(self._store()).counts(today)
        if not db_path(self._store).exists():
            return {}
        store = Store.open(self._store, create=False)
        try:
            return ActivityStore(store).counts(today)
        finally:
            store.close()

    @staticmethod
    def _families(counts: dict[str, tuple[int, int]]) -> list[Metric]:
        # Imported here: the CLI imports this module, and prometheus_client costs ~50 ms.
        from prometheus_client.core import GaugeMetricFamily

        open_ = GaugeMetricFamily("mailsync_activities_open", "Open activities, by type.",
                                  labels=["type"])
        overdue = GaugeMetricFamily("mailsync_activities_overdue",
                                    "Open activities past their deadline, by type.",
                                    labels=["type"])
        for name, (n_open, n_overdue) in sorted(counts.items()):
            open_.add_metric([name], n_open)
            overdue.add_metric([name], n_overdue)
        return [open_, overdue]
