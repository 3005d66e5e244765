"""The nodes sharing one store: their table, each node's heartbeat row, the cluster view.

Several daemons (nodes) may share one PostgreSQL store (docs/postgresql.md). Each writes
its row of ``nodes`` every few seconds (:func:`write`, from :mod:`mailsync.daemon.node`):
when it last did, the mailsync version and configuration hash it runs, the messages it
has in flight and the mailboxes it holds. ``mailsync status`` lists them
(:func:`listing`); a node whose heartbeat is older than its ``stale_after`` is shown as
such and counts in no comparison (it is dead, or cut off from the store). The
configurations the live nodes run are compared (:func:`drift`: more than one hash is
drift) and ``mailsync plan`` compares with the one they applied (:func:`cluster_applied`).

Migration 12 (:mod:`mailsync.store.migrations`) made the table, and added the sending
lease to ``messages`` (``claimed_by``, ``lease_until``: :mod:`mailsync.outbound.claims`).
Pure SQL over
a :class:`~mailsync.store.Store`, written in SQLite's dialect (translated on PostgreSQL);
an SQLite store has the table too (one schema), and its one node writes no row.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from typing import Any

from mailsync.store.sqlite import AppliedConfig, Store
from mailsync.values import valueclass


@valueclass
class Node:
    """One node's row: who it is, when it last beat, what it runs and holds."""

    name: str
    host: str
    pid: int
    started_at: float
    heartbeat_at: float
    stale_after: float  # seconds without a heartbeat after which the node counts as gone
    version: str
    config_sha256: str
    in_flight: int
    mailboxes: tuple[str, ...]

    def live(self, now: float) -> bool:
        """Whether its last heartbeat is recent enough (``now``: the same clock's)."""
        return now - self.heartbeat_at <= self.stale_after

    def as_dict(self, now: float) -> dict[str, object]:
        """The row for the control socket's status reply (JSON)."""
        return {"name": self.name, "host": self.host, "pid": self.pid,
                "started_at": self.started_at, "heartbeat_at": self.heartbeat_at,
                "heartbeat_age": round(max(0.0, now - self.heartbeat_at), 1),
                "live": self.live(now), "version": self.version,
                "config_sha256": self.config_sha256, "in_flight": self.in_flight,
                "mailboxes": list(self.mailboxes)}


def write(conn: sqlite3.Connection, node: Node) -> None:
    """Write ``node``'s row (inserted the first time, replaced after), in the caller's
    transaction (the heartbeat's, with the renewal of the node's sending lease)."""
    conn.execute(
        "INSERT OR REPLACE INTO nodes (name, host, pid, started_at, heartbeat_at,"
        " stale_after, version, config_sha256, in_flight, mailboxes)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (node.name, node.host, node.pid, node.started_at, node.heartbeat_at,
         node.stale_after, node.version, node.config_sha256, node.in_flight,
         json.dumps(sorted(node.mailboxes))))


_SELECT = ("SELECT name, host, pid, started_at, heartbeat_at, stale_after, version,"
           " config_sha256, in_flight, mailboxes FROM nodes")


def _node(r: tuple[Any, ...]) -> Node:
    return Node(r[0], r[1], int(r[2]), float(r[3]), float(r[4]), float(r[5]), r[6], r[7],
                int(r[8]), tuple(_mailboxes(r[9])))


def listing(store: Store) -> list[Node]:
    """Every node that ever wrote its row, by name."""
    with store.lock:
        rows = store.conn.execute(_SELECT + " ORDER BY name").fetchall()
    return [_node(r) for r in rows]


def forget(store: Store, name: str, now: float) -> Node | None:
    """Delete the row of the node ``name`` if it is gone (no heartbeat for longer than its
    ``stale_after``, by ``now``): the node it was is decommissioned or renamed. Returns
    the row deleted; None when there is no such node. A live node's row is kept and
    returned as it is (it would be written again by its next heartbeat): the caller
    tells a live node by :meth:`Node.live`. Its claims and mailbox leases are not
    touched: they lapse and are taken over as when it died."""
    with store.transaction() as conn:
        row = conn.execute(_SELECT + " WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        node = _node(row)
        if not node.live(now):
            conn.execute("DELETE FROM nodes WHERE name = ? AND heartbeat_at = ?",
                         (name, node.heartbeat_at))
    return node


def _mailboxes(text: str) -> list[str]:
    try:
        value = json.loads(text)
    except ValueError:
        return []
    return [str(v) for v in value] if isinstance(value, list) else []


def configs(nodes: list[Node], now: float) -> dict[str, list[str]]:
    """The configuration hashes the live nodes run: hash -> the nodes running it."""
    out: dict[str, list[str]] = {}
    for node in nodes:
        if node.live(now):
            out.setdefault(node.config_sha256, []).append(node.name)
    return out


def drift(nodes: list[Node], now: float) -> int:
    """How many configurations the live nodes run beyond one (0: they agree)."""
    return max(0, len(configs(nodes, now)) - 1)


def cluster_applied(store: Store, now: float) -> tuple[AppliedConfig | None, str]:
    """The configuration the cluster applied, and a note for ``plan`` when the live
    nodes do not agree on one ('' when they do, or when no node lives: then it is the
    store's last applied configuration, whichever node recorded it)."""
    running = configs(listing(store), now)
    last = store.last_applied_config()
    if len(running) == 1:
        (sha,) = running
        if last is None or last.sha256 != sha:
            chosen = applied_config(store, sha)
            last = chosen if chosen is not None else last
        return last, ""
    if not running:
        return last, ""
    names = "; ".join(f"{', '.join(sorted(n))} run {sha[:12]}"
                      for sha, n in sorted(running.items()))
    return last, (f"the nodes run different configurations ({names}): comparing with the "
                  "last one applied")


def applied_config(store: Store, sha256: str) -> AppliedConfig | None:
    """The most recent applied configuration with hash ``sha256``, or None."""
    with store.lock:
        row = store.conn.execute(
            "SELECT applied_at, sha256, source, text FROM applied_config WHERE sha256 = ?"
            " ORDER BY id DESC LIMIT 1", (sha256,)).fetchone()
    if row is None:
        return None
    return AppliedConfig(datetime.fromisoformat(row[0]), row[1], row[2], row[3])
