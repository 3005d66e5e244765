"""The console's pages: the History listing, one Message, and the operators' actions.

History is a keyset-paginated listing (``before=ID``: the page of the messages older
than ID, newest first), filtered and searched by :class:`~mailsync.outbound.history.
Filters`, the read side ``mailsync history`` uses. A message's HTML part is served apart
(``/messages/ID/html``) for a sandboxed iframe; its attachments and raw ``.eml`` only as
downloads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from mailsync.config.units import parse_when
from mailsync.outbound import history as h
from mailsync.outbound.actions import ACTIONS, act
from mailsync.outbound.queue import STATUSES
from mailsync.printable import csv_text
from mailsync.values import replace
from mailsync.web import mail
from mailsync.web.http import MAIL_HTML_POLICY, Request, Response, download, redirect, text

if TYPE_CHECKING:  # the application that calls these pages (web/app.py imports this module)
    from mailsync.web.app import App, Visitor

log = logging.getLogger("mailsync.web")

PAGE_SIZE = 50
# The most messages one CSV export holds (the History page's filters select them; ~8 MB
# of CSV, made in the daemon's memory); more is refused, saying so, rather than a file
# silently cut (`mailsync history --format csv --limit N` has no such bound). They are
# read a chunk at a time, each turned into CSV text before the next is read.
EXPORT_LIMIT = 20_000
EXPORT_CHUNK = 1000
ACTION_NAMES = tuple(ACTIONS)
FILTERS = ("status", "account", "user", "server", "since", "until", "q")


def parse_since(value: str, now: float, what: str = "since") -> float:
    """:func:`~mailsync.config.units.parse_when` with the field's name (``what``) first
    in its error."""
    try:
        return parse_when(value, now)
    except ValueError as exc:
        raise ValueError(f"{what} {exc}") from None


def time_window(shown: dict[str, str], now: float
                ) -> tuple[float | None, float | None, str | None]:
    """The ``since`` and ``until`` fields of a listing's form as epoch seconds (None: not
    given), and what is wrong with them (None: nothing): the History and Inbox pages'."""
    since = until = None
    try:
        if shown["since"]:
            since = parse_since(shown["since"], now)
        if shown["until"]:
            until = parse_since(shown["until"], now, "until")
    except ValueError as exc:
        return None, None, str(exc)
    if since is not None and until is not None and until <= since:
        return None, None, f"until {shown['until']!r} is not after since {shown['since']!r}"
    return since, until, None


def listing_filters(values: Mapping[str, str], now: float,
                    statuses: tuple[str, ...] = STATUSES
                    ) -> tuple[h.Filters, dict[str, str], str | None]:
    """A listing's :data:`FILTERS` from its query (or a form: ``values``), the values to
    show in the form, and what is wrong with them (None: nothing); the status one of
    ``statuses``, all of them when none is chosen (the History page: any). The limit is
    a page's and one more (is there a next page?); the keyset is the caller's."""
    shown = {k: values.get(k, "").strip() for k in FILTERS}
    error = None
    status = () if statuses == STATUSES else statuses
    if shown["status"]:
        if shown["status"] in statuses:
            status = (shown["status"],)
        else:
            what = "a status" if statuses == STATUSES else "a waiting status"
            error = f"status {shown['status']!r} is not {what} (allowed: " \
                    f"{', '.join(statuses)})"
    since, until, wrong = time_window(shown, now)
    filters = h.Filters(status=status, account=shown["account"] or None,
                        user=shown["user"] or None, since=since, limit=PAGE_SIZE + 1,
                        server=shown["server"] or None, search=shown["q"][:200] or None,
                        until=until)
    return filters, shown, error or wrong


def _filters(request: Request, now: float) -> tuple[h.Filters, dict[str, str], str | None]:
    """The History page's filters (:func:`listing_filters`) and its keyset, ``before``."""
    filters, shown, error = listing_filters(request.query, now)
    before = request.query.get("before", "")
    if before.isdigit() and len(before) <= 18:
        filters = replace(filters, before=int(before))
    return filters, shown, error


def choices(app: App) -> dict[str, list[str]]:
    """The values of a listing's Account, User and Server menus, from the config."""
    config = app.config()
    return {"accounts": [a.name for a in config.accounts], "users": list(config.users),
            "servers": sorted(config.sending_servers())}


def _chips(row: dict[str, Any]) -> list[tuple[str, str]]:
    """The status chips of a row: its status, then its recipients' problems the status
    hides (``sent`` and ``1 bounced``): (css class, text)."""
    chips = [(row["status"], row["status"])]
    counts = row.get("recipient_statuses") or {}
    for problem in h.PROBLEMS:
        if counts.get(problem) and row["status"] != problem:
            chips.append((problem, f"{counts[problem]} {problem}"))
    return chips


def history(app: App, request: Request, visitor: Visitor) -> Response:
    """The History page: filters, search, a page of messages, the link to older ones."""
    filters, shown, error = _filters(request, time.time())
    rows: list[dict[str, Any]] = []
    if error is None:
        with app.reads() as store:
            rows = h.list_messages(store, filters)
    older = None
    if len(rows) > PAGE_SIZE:
        rows = rows[:PAGE_SIZE]
        older = rows[-1]["id"]
    keep = {k: v for k, v in shown.items() if v}
    return app.page(400 if error else 200, "history.html", visitor, title="History",
                    rows=[{**r, "chips": _chips(r), "created": _short(r["created_at"])}
                          for r in rows],
                    shown=shown, error=error, older=older, keep=keep,
                    newest=filters.before is not None, statuses=STATUSES, **choices(app))


def history_csv(app: App, request: Request, visitor: Visitor) -> Response:
    """The messages the History page's filters and search select (all of them, not a
    page: ``before`` is ignored) as a CSV file to save, the columns of ``mailsync history
    --format csv``; at most :data:`EXPORT_LIMIT`, else a 400 saying to narrow them."""
    filters, _, error = _filters(request, time.time())
    if error is not None:
        return text(400, error)
    filters = replace(filters, limit=EXPORT_CHUNK, before=None)  # all, a chunk at a time
    parts = [csv_text([], h.SUMMARY_KEYS)]  # the header
    with app.reads() as store:
        count = h.count_messages(store, filters)  # before reading any row
        before, exported = None, 0
        while count <= EXPORT_LIMIT:  # newest first, a keyset chunk at a time
            rows = h.list_messages(store, replace(filters, before=before))
            parts.append(csv_text(rows, h.SUMMARY_KEYS, with_header=False))
            exported += len(rows)
            if len(rows) < EXPORT_CHUNK:
                break
            before = rows[-1]["id"]
    if count > EXPORT_LIMIT:
        return text(400, f"{count:,} messages match, more than the {EXPORT_LIMIT:,} of one "
                         "file: narrow the filters (since and until, a status, an account),"
                         " or run `mailsync history --format csv` on the daemon's machine")
    # Who took a copy of the history, and of how much (the message log's audit trail).
    log.info("admin console: %s exported %d messages of the history as CSV",
             visitor.user.name, exported)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    # A byte order mark first: without it a spreadsheet reads UTF-8 as a legacy code page.
    return download(("\ufeff" + "".join(parts)).encode(),
                    f"mailsync-history-{stamp}.csv", "text/csv; charset=utf-8")


def _short(iso: str | None) -> str:
    """``2026-03-01 14:02:33`` of an ISO time (the listing's column)."""
    return (iso or "")[:19].replace("T", " ")


def message(app: App, request: Request, visitor: Visitor, mid: int, what: str) -> Response:
    """A message: the page, or (``what``) its HTML part, raw ``.eml`` or an attachment."""
    with app.reads() as store:
        found = h.show(store, mid)
    if found is None:
        return app.page(404, "error.html", visitor, title="Not found",
                        message=f"No message {mid}.")
    raw: bytes | None = found.get("raw")
    if what == "raw":
        if raw is None:
            return app.page(404, "error.html", visitor, title="Not found",
                            message=f"Message {mid}'s content was pruned or not kept.")
        return download(raw, f"message-{mid}.eml")
    parts = mail.parts(raw) if raw is not None else None
    if what == "html":
        if parts is None or parts.html is None:
            return app.page(404, "error.html", visitor, title="Not found",
                            message=f"Message {mid} has no HTML part.")
        return Response(200, parts.html.encode("utf-8"), "text/html; charset=utf-8",
                        policy=MAIL_HTML_POLICY, framing="SAMEORIGIN")
    if what.startswith("parts/"):
        one = mail.attachment(raw, int(what[6:])) if raw is not None else None
        if one is None:
            return app.page(404, "error.html", visitor, title="Not found",
                            message=f"Message {mid} has no attachment {what[6:]}.")
        return download(one[1], one[0])
    actions = [name for name, a in ACTIONS.items() if found["status"] in a.allowed]
    return app.page(200, "message.html", visitor, title=f"Message {mid}", m=found,
                    chips=_chips(found), parts=parts, actions=actions,
                    done=request.query.get("done") if request.query.get("done")
                    in ACTION_NAMES else None, short=_short)


def action(app: App, visitor: Visitor, mid: int, name: str) -> Response:
    """An operator's retry, hold, release or delete: the same transition as ``mailsync
    queue NAME ID``, recorded in the message's history with the operator's name."""
    try:
        old = act(app.writes, name, mid, time.time(), by=visitor.user.name)
    except KeyError:
        return app.page(404, "error.html", visitor, title="Not found",
                        message=f"No message {mid}.")
    except ValueError as exc:
        allowed = ", ".join(ACTIONS[name].allowed)
        return app.page(409, "error.html", visitor, title="Not possible",
                        message=f"Message {mid} is {exc}; {name} applies to {allowed} "
                        "messages.")
    log.info("admin console: %s %s message %d (%s -> %s)", visitor.user.name, name, mid,
             old, ACTIONS[name].new)
    if ACTIONS[name].new == "queued":
        app.wake()
    return redirect(f"/messages/{mid}?done={name}")
