"""The suppression list: recipients not sent to again after a hard bounce.

A recipient is added when it hard-bounces: a 5xx reply to RCPT (recorded with the
attempt, :func:`rejected_at_rcpt`), or a DSN reporting a 5.x.x status for it (recorded
with the bounce, :mod:`mailsync.inbound.bounces`). "Hard" is :func:`hard`: a permanent
failure about the address, not a 5.5.x (protocol: our command) or 5.7.x (policy: the
sender or the content, e.g. relaying denied) refusal, which would otherwise suppress
every recipient of a misconfigured relay. An entry lasts ``suppression.expiry`` (30 d by
default); one added by hand (``mailsync suppression add``) lasts until removed unless
given ``--for``.

At claim time (:func:`apply`, in the claim's transaction) a message's pending recipients
on the list become ``suppressed`` with no SMTP attempt; a message left with none fails
with reason ``suppressed`` (a final status, counted and pruned as the other failures, and
`mailsync queue retry` sends it again once the entries are removed). The history shows
why: each such recipient's reply names the entry (its reason, since when, until when).

Addresses are kept lower-cased (mailboxes differing only in case are one recipient in
practice, and a DSN rarely preserves the case of the original RCPT).
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from mailsync.outbound.events import event
from mailsync.outbound.types import Delivery
from mailsync.values import valueclass

REASONS = ("bounced", "rejected", "manual")  # a DSN, a 5xx at RCPT, `suppression add`
_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")
_SOFT_CLASSES = ("5", "7")  # 5.5.x protocol, 5.7.x policy/security: not about the address


@valueclass
class Entry:
    """One address on the list, as ``mailsync suppression list`` shows it."""

    address: str
    reason: str
    detail: str | None
    since: float
    until: float | None  # None: until removed
    message: int | None  # the message whose bounce added it

    def describe(self) -> str:
        """Why a recipient is not sent to, for its reply in the history."""
        until = "until removed" if self.until is None else f"until {_iso(self.until)}"
        source = f" by message {self.message}" if self.message is not None else ""
        why = f": {self.detail}" if self.detail else ""
        return (f"suppressed ({self.reason}{source} since {_iso(self.since)}, {until}){why}; "
                f"`mailsync suppression remove {self.address}` sends to it again")


def _iso(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def hard(status: str | None, code: int | None) -> bool:
    """Whether a refusal means the address must not be mailed again: an enhanced status
    5.x.x (else a 5xx code) other than 5.5.x and 5.7.x."""
    match = _ENHANCED.match(status or "")
    if match is not None:
        return match.group(1) == "5" and match.group(2) not in _SOFT_CLASSES
    return code is not None and 500 <= code < 600


def rejected_at_rcpt(delivery: Delivery) -> list[tuple[str, str]]:
    """The recipients a server refused for good at RCPT in ``delivery``: (address, reply)."""
    return [(r.address, f"{r.code} {r.reply}".strip()) for r in delivery.recipients
            if r.command == "RCPT" and r.status == "failed" and hard(r.reply, r.code)]


def add(conn: sqlite3.Connection, address: str, reason: str, detail: str | None,
        now: float, until: float | None, message: int | None = None) -> None:
    """Put ``address`` on the list (again: its entry is renewed) in the caller's
    transaction."""
    conn.execute(
        "INSERT INTO suppressions (address, reason, detail, added_at, expires_at, message)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (address) DO UPDATE SET"
        " reason = excluded.reason, detail = excluded.detail, added_at = excluded.added_at,"
        " expires_at = excluded.expires_at, message = excluded.message",
        (address.strip().lower(), reason, detail, now, until, message))


def remove(conn: sqlite3.Connection, address: str) -> bool:
    """Take ``address`` off the list; whether it was on it."""
    cur = conn.execute("DELETE FROM suppressions WHERE address = ?",
                       (address.strip().lower(),))
    return bool(cur.rowcount)


def _entry(row: Sequence[Any]) -> Entry:
    return Entry(str(row[0]), str(row[1]), row[2], float(row[3]),
                 None if row[4] is None else float(row[4]),
                 None if row[5] is None else int(row[5]))


_COLUMNS = "address, reason, detail, added_at, expires_at, message"


def entries(conn: sqlite3.Connection, now: float, *, expired: bool = False) -> list[Entry]:
    """The entries in force at ``now`` (with ``expired``, the lapsed ones too), by address."""
    clause = "" if expired else " WHERE expires_at IS NULL OR expires_at > ?"
    rows = conn.execute(f"SELECT {_COLUMNS} FROM suppressions{clause} ORDER BY address",
                        () if expired else (now,)).fetchall()
    return [_entry(r) for r in rows]


def size(conn: sqlite3.Connection, now: float) -> int:
    """How many addresses are suppressed at ``now`` (the list-size gauge)."""
    row = conn.execute("SELECT COUNT(*) FROM suppressions"
                       " WHERE expires_at IS NULL OR expires_at > ?", (now,)).fetchone()
    return int(row[0])


@valueclass
class Suppressed:
    """What :func:`apply` did to one claimed message: the recipients it suppressed (with
    their entries' reasons), and whether none is left to send to (the message failed)."""

    message: int
    recipients: tuple[tuple[str, str], ...]  # (address, reason)
    failed: bool


def apply(conn: sqlite3.Connection, ids: Sequence[int], now: float) -> list[Suppressed]:
    """Mark the suppressed pending recipients of the messages ``ids`` (being claimed)
    ``suppressed``, in the claim's transaction; a message left with no recipient to send
    to fails (reason ``suppressed``). One query for the batch when none is suppressed."""
    if not ids:
        return []
    marks = ",".join("?" * len(ids))
    rows = conn.execute(
        f"SELECT r.message, r.address, {', '.join('s.' + c for c in _COLUMNS.split(', '))}"
        " FROM recipients r JOIN suppressions s ON s.address = lower(r.address)"
        f" WHERE r.message IN ({marks}) AND r.status IN ('queued', 'deferred')"
        " AND (s.expires_at IS NULL OR s.expires_at > ?)", (*ids, now)).fetchall()
    if not rows:
        return []
    by_message: dict[int, list[tuple[str, Entry]]] = {}
    for row in rows:
        by_message.setdefault(int(row[0]), []).append((str(row[1]), _entry(row[2:])))
    conn.executemany(
        "UPDATE recipients SET status = 'suppressed', code = NULL, reply = ?, updated_at = ?"
        " WHERE message = ? AND address = ?",
        [(e.describe(), now, mid, address) for mid, found in by_message.items()
         for address, e in found])
    touched = list(by_message)
    marks = ",".join("?" * len(touched))
    left = dict(conn.execute(
        f"SELECT message, COUNT(*) FROM recipients WHERE message IN ({marks})"
        " AND status IN ('queued', 'deferred') GROUP BY message", touched).fetchall())
    out = []
    for mid, found in by_message.items():
        detail = "; ".join(f"{a}: {e.describe()}" for a, e in found)
        failed = not left.get(mid)
        if failed:
            error = f"every recipient is suppressed: {detail}"
            conn.execute("UPDATE messages SET status = 'failed', reason = 'suppressed',"
                         " last_error = ?, next_attempt_at = NULL, updated_at = ?"
                         " WHERE id = ?", (error, now, mid))
            event(conn, mid, now, "failed", error)
        else:
            event(conn, mid, now, "suppressed", detail)
        out.append(Suppressed(mid, tuple((a, e.reason) for a, e in found), failed))
    return out
