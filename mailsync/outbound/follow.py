"""``mailsync history follow``: each event of the send history as it is recorded, oldest
first: a mail log's ``tail -f`` (queued, sent, deferred, failed, bounced, held, ...).

Events are read by id, a page at a time, through the primary key: a poll reads only what
is new, however long the history. On SQLite ids are given in the order transactions
commit (one writer at a time). On PostgreSQL they come from a sequence when a row is
written, and a transaction may commit after a later one: an id skipped over is a gap,
asked for again at each poll until it appears or :data:`GAP_PATIENCE` has passed (a
transaction rolled back leaves its ids unused for good), so that an event committed late
is shown late, never missed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from mailsync.config.units import iso
from mailsync.outbound.queue import OutboundStore
from mailsync.store import in_chunks, where
from mailsync.values import valueclass

PAGE = 1000
GAP_PATIENCE = 30.0  # seconds an id skipped over is asked for again
MAX_GAP = 10_000  # a jump of the ids wider than this (ids given explicitly) is no gap

_SELECT = (
    "SELECT e.id, e.message, e.at, e.status, e.detail, e.server, e.code, e.reply,"
    " m.account, m.user, m.subject,"
    " (SELECT group_concat(address, ', ') FROM recipients r WHERE r.message = e.message)"
    " AS rcpt FROM events e JOIN messages m ON m.id = e.message")


@valueclass
class Filter:
    """Which events are shown: of these event statuses (any when empty), of an account,
    a user, an outgoing server."""

    status: tuple[str, ...] = ()
    account: str | None = None
    user: str | None = None
    server: str | None = None


class Follower:
    """The events recorded since it started (or since ``since``, epoch seconds): each
    :meth:`poll` returns those not returned yet, oldest first, as objects."""

    def __init__(self, store: OutboundStore, wanted: Filter, since: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.wanted = wanted
        self.clock = clock
        if since is None:
            start = store.query("SELECT MAX(id) FROM events")[0][0]
        else:  # the events before the first one at or after `since`
            first = store.query("SELECT MIN(id) FROM events WHERE at >= ?", (since,))[0][0]
            start = (store.query("SELECT MAX(id) FROM events")[0][0] if first is None
                     else first - 1)
        self.last = int(start or 0)  # the highest id read
        self.gaps: dict[int, float] = {}  # ids skipped over: when first missed

    def poll(self) -> list[dict[str, Any]]:
        found: list[int] = []
        now = self.clock()
        self.gaps = {i: t for i, t in self.gaps.items() if now - t < GAP_PATIENCE}
        for marks, chunk in in_chunks(list(self.gaps)):
            found += self._ids(f"id IN ({marks})", chunk)
        for i in found:
            self.gaps.pop(i, None)
        while True:
            page = self._ids("id > ? ORDER BY id LIMIT ?", [self.last, PAGE])
            for i in page:
                if 0 < i - self.last - 1 <= MAX_GAP:
                    self.gaps.update(dict.fromkeys(range(self.last + 1, i), now))
                self.last = i
            found += page
            if len(page) < PAGE:
                break
        return self._events(sorted(found)) if found else []

    def _ids(self, condition: str, args: list[Any]) -> list[int]:
        return [int(r[0]) for r in self.store.query(
            f"SELECT id FROM events WHERE {condition}", args)]

    def _events(self, ids: list[int]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        w = self.wanted
        clause, args = where(("e.status IN", w.status), ("m.account =", w.account),
                             ("m.user =", w.user), ("e.server =", w.server))
        for marks, chunk in in_chunks(ids):
            rows = self.store.query(
                f"{_SELECT} {clause} {'AND' if clause else 'WHERE'} e.id IN ({marks})"
                " ORDER BY e.id", [*args, *chunk])
            out += [{"event": r["id"], "message": r["message"], "at": iso(r["at"]),
                     "status": r["status"], "to": r["rcpt"] or "", "account": r["account"],
                     "user": r["user"], "server": r["server"], "subject": r["subject"],
                     "code": r["code"], "reply": r["reply"], "detail": r["detail"]}
                    for r in rows]
        return out
