"""Rate limits per outgoing server and per account, and the claim's admission gate.

A limiter (``server:NAME`` or ``account:NAME``) allows at most ``messages`` sends in any
window of ``per`` seconds, for each of its limits: an exact sliding window over the
send times recorded in the store (``rate_sends``), so it survives restarts, and, on a
PostgreSQL store, holds across the nodes sharing it (a claim locks the limiter's row in
``rate_limiters``, SELECT ... FOR UPDATE; on SQLite the one writer is enough).

The slot is reserved in the transaction that claims the message, before it is sent, at
the claim's time; once the server has answered, the send's time is moved to the end of
the SMTP transaction (in the transaction recording the outcome), so that the next slot
opens ``per`` after the server had the message: with 1 a minute, one message reaches the
server in any minute, however long a send took. A message over a limit is not claimed:
it is deferred, reason ``rate_limited``, to when the window allows it (the send that
frees its slot + ``per``), its attempts unchanged; it never fails for it. The messages
of one claim that wait for the same limiter are given successive slots, so that they do
not all come due at the same moment.

:func:`earliest` is the pure decision; :class:`Gate` applies it (and the suppression
list, :mod:`mailsync.outbound.suppression`) to each claimed batch.
"""

from __future__ import annotations

import bisect
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any

from mailsync.config.model import Account, Config, OutgoingServer, RateLimit
from mailsync.config.units import format_duration
from mailsync.outbound import routing, suppression
from mailsync.outbound.events import event
from mailsync.outbound.types import Delivery
from mailsync.outbound.webhooks import enqueue
from mailsync.telemetry.metrics import Metrics
from mailsync.values import field, valueclass

log = logging.getLogger("mailsync.ratelimit")

Row = Sequence[Any]  # a claimed row: id, created_at, account, from_address, ... (queue.py)
Write = Callable[[sqlite3.Connection], None]


def describe(limits: Sequence[RateLimit]) -> str:
    """``30 per 1m, 10000 per 1d``."""
    return ", ".join(f"{n} per {format_duration(per)}" for n, per in limits)


def earliest(times: Sequence[float], limits: Sequence[RateLimit],
             now: float) -> tuple[float, RateLimit | None]:
    """When one more send keeps every limit, given the send times ``times`` (ascending):
    ``now`` when it may go at once, else the moment the send that frees a slot leaves
    the window (the ``messages``-th newest + ``per``); and the limit that decides (None:
    none is reached). A send at ``t`` counts in the windows ending in ``[t, t + per)``."""
    at, binding = now, None
    for limit in limits:
        if len(times) >= limit.messages:
            free = times[-limit.messages] + limit.per.total_seconds()
            if free > at:
                at, binding = free, limit
    return at, binding


@valueclass
class Limiter:
    """A server's or an account's limits, under its key in the store."""

    kind: str  # "server" or "account"
    name: str
    limits: tuple[RateLimit, ...]

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.name}"

    @property
    def longest(self) -> float:
        """The longest window, in seconds: older sends count no more."""
        return max(limit.per.total_seconds() for limit in self.limits)

    @property
    def most(self) -> int:
        """The most sends any window may hold: the newest this many are all it needs."""
        return max(limit.messages for limit in self.limits)

    def label(self) -> str:
        return f"{self.kind} {self.name!r} ({describe(self.limits)})"


def server_limiter(server: OutgoingServer) -> Limiter | None:
    # An account's own login is named "account:NAME": its limiter is that account's.
    if not server.rate_limits:
        return None
    kind, _, name = server.name.partition(":") if server.name.startswith("account:") \
        else ("server", "", server.name)
    return Limiter(kind, name, server.rate_limits)


def account_limiter(account: Account) -> Limiter | None:
    return Limiter("account", account.name, account.rate_limits) \
        if account.rate_limits else None


@valueclass(frozen=False)
class Route:
    """A claimed message's reservation: the limited server it may go to (None: only
    servers without limits), and its slots (limiter key, time) to move to the send's end."""

    server: str | None
    slots: list[tuple[str, float]] = field(default_factory=list)


@valueclass(frozen=False)
class _Window:
    """A limiter's send times during one claim (the store's, then this claim's)."""

    limiter: Limiter
    times: list[float]


def _noop(message: int, recipients: tuple[str, ...]) -> None:
    """The default :attr:`Gate.on_suppressed`: nothing."""


class Gate:
    """Admits the messages of a claim: suppressed recipients dropped, rate limits kept.

    :meth:`admit` runs in the claim's transaction (``OutboundStore.claim_due``'s
    ``admit``); :meth:`committed` after it commits (logs, metrics, hooks); the sender
    asks :meth:`servers` which servers a message may use and :meth:`after_send` what to
    write with its outcome. ``on_suppressed(message_id, recipients)`` is called once the
    claim that suppressed them has committed (the webhooks' ``suppressed`` event).
    """

    def __init__(self, config: Config, metrics: Metrics, dialect: str) -> None:
        self.metrics = metrics
        self.dialect = dialect
        self.on_suppressed: Callable[[int, tuple[str, ...]], None] = _noop
        self.routes: dict[int, Route] = {}
        self._logged: dict[str, float] = {}  # limiter key → end of the window it was logged
        self._done: list[suppression.Suppressed] = []
        self._reached: list[tuple[Limiter, float]] = []
        self._of: dict[int, str] = {}  # the account of each message suppressed by a claim
        self.configure(config)

    def configure(self, config: Config) -> None:
        """Admit the next claims under ``config`` (a reload)."""
        self.config = config
        self._accounts = {a.name: a for a in config.accounts}
        self._limited = any(a.rate_limits for a in config.accounts) or any(
            s.rate_limits for s in config.sending_servers().values())

    # -- in the claim's transaction -----------------------------------------------------
    def admit(self, conn: sqlite3.Connection, rows: list[Any], now: float) -> list[Any]:
        """The rows of ``rows`` to send now; the others are written here (suppressed,
        failed for having no recipient left, or deferred by a rate limit)."""
        self._done, self._reached = [], []
        done = suppression.apply(conn, [r[0] for r in rows], now)
        if done:
            self._done = done
            self._of = {r[0]: str(r[2]) for r in rows}
            if self.config.webhooks:  # their `suppressed` events, in this same transaction
                for s in done:
                    enqueue(conn, self.config.webhooks, "suppressed", s.message, now,
                            status="failed" if s.failed else "sending",
                            recipients=[{"address": a, "status": "suppressed", "code": None,
                                         "reply": f"suppressed ({why})"}
                                        for a, why in s.recipients])
            failed = {s.message for s in done if s.failed}
            rows = [r for r in rows if r[0] not in failed]
        if not self._limited or not rows:
            return rows
        return self._limit(conn, rows, now)

    def _limit(self, conn: sqlite3.Connection, rows: list[Any], now: float) -> list[Any]:
        config = self.config
        plans: list[tuple[Any, Limiter | None, list[tuple[OutgoingServer, Limiter | None]]]] = []
        needed: dict[str, Limiter] = {}
        for row in rows:
            self.routes.pop(row[0], None)
            account = self._accounts.get(row[2])
            if account is None:
                plans.append((row, None, []))  # the sender holds it
                continue
            mine = account_limiter(account)
            servers = [(s, server_limiter(s)) for s in
                       routing.servers_for(config, account, row[3], spread=row[0])]
            for lim in [mine, *(lim for _, lim in servers)]:
                if lim is not None:
                    needed[lim.key] = lim
            plans.append((row, mine, servers))
        windows = self._windows(conn, needed, now)
        admitted, waited, slots = [], [], []
        for row, mine, servers in plans:
            if mine is None and all(lim is None for _, lim in servers):
                admitted.append(row)
                continue
            mine_at, mine_limit = (now, None) if mine is None else \
                earliest(windows[mine.key].times, mine.limits, now)
            chosen: Limiter | None = None
            chosen_server: str | None = None
            server_at, server_limit, server_lim = now, None, None
            free = False
            for server, lim in servers:
                if lim is None:
                    free = True
                    break
                at, limit = earliest(windows[lim.key].times, lim.limits, now)
                if at <= now:
                    free, chosen, chosen_server = True, lim, server.name
                    break
                if server_lim is None or at < server_at:
                    server_at, server_limit, server_lim = at, limit, lim
            if not servers:
                free = True
            go_at = max(mine_at, now if free else server_at)
            if go_at <= now:
                route = Route(chosen_server)
                for lim in (mine, chosen):
                    if lim is not None:
                        bisect.insort(windows[lim.key].times, now)
                        route.slots.append((lim.key, now))
                        slots.append((lim.key, now, row[0]))
                self.routes[row[0]] = route
                admitted.append(row)
                continue
            # Over a limit: the one that decides is the one it waits for.
            if mine is not None and mine_at >= go_at:
                lim, limit = mine, mine_limit
            else:
                assert server_lim is not None
                lim, limit = server_lim, server_limit
            bisect.insort(windows[lim.key].times, go_at)  # its slot, for the next ones
            waited.append((row[0], lim, limit, go_at))
        self._write(conn, admitted, waited, slots, windows, now)
        return admitted

    def _windows(self, conn: sqlite3.Connection, needed: dict[str, Limiter],
                 now: float) -> dict[str, _Window]:
        """Each limiter's recent send times, its row locked first on PostgreSQL (in key
        order, so that two claims never wait for each other's locks)."""
        keys = sorted(needed)
        if self.dialect == "postgresql" and keys:
            conn.executemany("INSERT INTO rate_limiters (limiter) VALUES (?)"
                             " ON CONFLICT DO NOTHING", [(k,) for k in keys])
            marks = ",".join("?" * len(keys))
            conn.execute(f"SELECT limiter FROM rate_limiters WHERE limiter IN ({marks})"
                         " ORDER BY limiter FOR UPDATE", keys).fetchall()
        windows = {}
        for key in keys:
            lim = needed[key]
            cutoff = now - lim.longest
            conn.execute("DELETE FROM rate_sends WHERE limiter = ? AND at <= ?", (key, cutoff))
            times = [float(r[0]) for r in conn.execute(
                "SELECT at FROM rate_sends WHERE limiter = ? AND at > ?"
                " ORDER BY at DESC LIMIT ?", (key, cutoff, lim.most)).fetchall()]
            windows[key] = _Window(lim, times[::-1])
        return windows

    def _write(self, conn: sqlite3.Connection, admitted: list[Any],
               waited: list[tuple[int, Limiter, RateLimit | None, float]],
               slots: list[tuple[str, float, int]], windows: dict[str, _Window],
               now: float) -> None:
        if slots:
            conn.executemany("INSERT INTO rate_sends (limiter, at, message) VALUES (?, ?, ?)"
                             " ON CONFLICT DO NOTHING", slots)
        if admitted:
            ids = [r[0] for r in admitted]
            marks = ",".join("?" * len(ids))
            conn.execute("UPDATE messages SET waiting_for = NULL, reason = NULL"
                         f" WHERE id IN ({marks}) AND waiting_for IS NOT NULL", ids)
        for mid, lim, limit, go_at in waited:
            which = describe([limit]) if limit is not None else describe(lim.limits)
            detail = (f"rate_limited: {lim.kind} {lim.name!r} allows {which}; next attempt "
                      f"at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(go_at))}")
            conn.execute("UPDATE messages SET status = 'deferred', reason = 'rate_limited',"
                         " waiting_for = ?, next_attempt_at = ?, last_error = ?,"
                         " updated_at = ? WHERE id = ?", (lim.key, go_at, detail, now, mid))
            event(conn, mid, now, "deferred", detail)
            if now >= self._logged.get(lim.key, 0.0):
                self._logged[lim.key] = go_at
                self._reached.append((lim, go_at))

    # -- after the claim ----------------------------------------------------------------
    def committed(self) -> None:
        """The claim committed: log each limit reached (once per limiter and window),
        count the suppressed recipients, call :attr:`on_suppressed`."""
        reached, self._reached = self._reached, []
        for lim, until in reached:
            log.warning("rate limit reached: %s; messages wait, the next until %s",
                        lim.label(), time.strftime("%H:%M:%S", time.gmtime(until)))
        done, self._done = self._done, []
        for s in done:
            account = self._account_of(s.message)
            for _, reason in s.recipients:
                self.metrics.recipients_suppressed.labels(account, reason).inc()
            if s.failed:
                self.metrics.messages_failed.labels(account, "suppressed").inc()
            log.info("message %d: not sent to %s (suppressed)%s", s.message,
                     ", ".join(a for a, _ in s.recipients),
                     "; no recipient left: failed" if s.failed else "")
            self.on_suppressed(s.message, tuple(a for a, _ in s.recipients))

    def _account_of(self, message: int) -> str:
        return self._of.get(message, "unknown")

    # -- the sender ---------------------------------------------------------------------
    def servers(self, message: int,
                servers: tuple[OutgoingServer, ...]
                ) -> tuple[tuple[OutgoingServer, ...], Route | None]:
        """The servers ``message`` may be sent through, in order, and its reservation: a
        limited server only if its slot was reserved at the claim."""
        route = self.routes.pop(message, None)
        if route is None:
            return servers, None
        allowed = tuple(s for s in servers if s.name == route.server or not s.rate_limits)
        return (allowed or servers), route  # a reload since: its servers as they are

    def after_send(self, message: int, route: Route | None, delivery: Delivery,
                   now: float) -> Write | None:
        """What to write with the outcome of ``message``'s SMTP transaction: its slots moved
        to ``now`` (the end of the transaction), and the recipients refused for good at
        RCPT put on the suppression list. None: nothing (the common case)."""
        rejected = suppression.rejected_at_rcpt(delivery)
        if (route is None or not route.slots) and not rejected:
            return None
        expiry = self.config.suppression.expiry.total_seconds()
        slots = route.slots if route is not None else []

        def write(conn: sqlite3.Connection) -> None:
            if slots:
                conn.executemany("UPDATE rate_sends SET at = ? WHERE limiter = ? AND at = ?"
                                 " AND message = ?",
                                 [(now, key, at, message) for key, at in slots])
            for address, reply in rejected:
                suppression.add(conn, address, "rejected", reply, now, now + expiry, message)
                log.info("%s: suppressed for %s (refused at RCPT: %s)", address,
                         format_duration(self.config.suppression.expiry), reply)
        return write
