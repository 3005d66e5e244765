"""The Queue page: what is waiting (queued, deferred, held, sending), oldest first,
filtered as the History page is, and the operators' bulk retry or release of a selection
or of every message the filters match.

Keyset-paginated by id (``after=ID``: the page of the messages newer than ID), read by
:func:`~mailsync.outbound.history.list_waiting` through the ``messages_due`` index
(status, next attempt), so a page reads the waiting messages only, never the sent
history. A bulk action is :func:`~mailsync.outbound.actions.act_many` over the selected
(or matching) messages, the same transition and audit event (``retry by NAME (admin
console)``) as its button on the Message page, a chunk of them per transaction.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from mailsync.outbound.actions import ACTIONS, act_many
from mailsync.outbound.history import Filters, count_by_status, list_waiting, selected_ids
from mailsync.outbound.queue import IN_QUEUE, OutboundStore
from mailsync.values import replace
from mailsync.web.http import Request, Response, redirect
from mailsync.web.pages import PAGE_SIZE, choices, listing_filters

if TYPE_CHECKING:  # the application that calls these pages (web/app.py imports this module)
    from mailsync.web.app import App, Visitor

log = logging.getLogger("mailsync.web")

WAITING = IN_QUEUE  # queued, sending, deferred, held
BULK = ("retry", "release")   # what a selection can get (hold and delete: one at a time)
MAX_SELECTED = 500            # a form's selection at most (a page shows PAGE_SIZE)
# The waiting messages each bulk action applies to (retry: deferred; release: held).
KINDS = {name: "/".join(s for s in ACTIONS[name].allowed if s in WAITING) for name in BULK}


def _short(text: str | None) -> str:
    return (text or "")[:19].replace("T", " ")


def _row(r: dict[str, Any]) -> dict[str, Any]:
    return {"id": r["id"], "status": r["status"], "created": _short(r["created_at"]),
            "account": r["account"], "user": r["user"], "server": r["server"],
            "subject": r["subject"], "attempts": r["attempts"], "error": r["error"],
            "next": _short(r["next_attempt_at"]), "to": r["to"]}


def _matching(filters: Filters, name: str) -> Filters | None:
    """The filters' messages an action applies to (of the statuses shown and the
    action's: retry, the deferred ones; release, the held ones), whatever the page;
    None when the statuses shown are none the action applies to."""
    allowed = tuple(s for s in filters.status if s in ACTIONS[name].allowed)
    return replace(filters, status=allowed, after=None) if allowed else None


def _counts(store: OutboundStore, filters: Filters) -> dict[str, int]:
    """How many messages each bulk action would take of all the filters match: one
    read for both (a search reads the subjects once, not once per action)."""
    chosen = {name: _matching(filters, name) for name in BULK}
    statuses = tuple(s for f in chosen.values() if f is not None for s in f.status)
    by_status = count_by_status(store, replace(filters, status=statuses, after=None)) \
        if statuses else {}
    return {name: sum(by_status.get(s, 0) for s in f.status) if f is not None else 0
            for name, f in chosen.items()}


def page(app: App, request: Request, visitor: Visitor) -> Response:
    """The Queue page: the History's filters (``status`` one of :data:`WAITING`),
    oldest first from ``after=ID``, and for operators how many messages each bulk
    action would take."""
    filters, shown, error = listing_filters(request.query, time.time(), WAITING)
    after_text = request.query.get("after", "")
    if after_text.isdigit() and len(after_text) <= 18:
        filters = replace(filters, after=int(after_text))
    rows: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    if error is None:
        with app.reads() as store:
            rows = [_row(r) for r in list_waiting(store, filters)]
            if visitor.operator:
                counts = _counts(store, filters)
    newer = None
    if len(rows) > PAGE_SIZE:
        rows = rows[:PAGE_SIZE]
        newer = rows[-1]["id"]
    done = request.query.get("done")
    report = None
    if done in BULK:
        report = {"action": done, "count": _int(request.query.get("count")),
                  "skipped": _int(request.query.get("skipped")),
                  "matching": request.query.get("scope") == "matching"}
    keep = {k: v for k, v in shown.items() if v}
    return app.page(400 if error else 200, "queue.html", visitor, title="Queue", rows=rows,
                    shown=shown, statuses=WAITING, error=error, newer=newer, keep=keep,
                    first=filters.after is not None, report=report, bulk=BULK,
                    counts=counts, kinds=KINDS, filtered=bool(keep), **choices(app))


def _int(text: str | None) -> int:
    return int(text) if text and text.isdigit() and len(text) <= 9 else 0


def bulk(app: App, request: Request, visitor: Visitor) -> Response:
    """An operator's retry or release of the selected messages (``action``, ``m`` once
    per message), or with ``scope=matching`` of every message the page's filters (sent
    with the form) match that the action applies to: each one acted on and audited;
    those whose status the action does not apply to (sent meanwhile, say) are counted
    as skipped."""
    name = request.form.get("action", "")
    if name not in BULK:
        return _bad(app, visitor, f"action {name!r} is not a bulk action (allowed: "
                                  f"{', '.join(BULK)})")
    filters, shown, error = listing_filters(request.form, time.time(), WAITING)
    if error is not None:
        return _bad(app, visitor, error)
    matching = request.form.get("scope") == "matching"
    if matching:
        chosen = _matching(filters, name)
        if chosen is None:
            return _bad(app, visitor, f"{name} applies to {', '.join(ACTIONS[name].allowed)}"
                                      f" messages, and the page shows {shown['status']} ones")
        with app.reads() as store:
            ids = selected_ids(store, chosen)
    else:
        ids = []
        for value in request.form_list("m"):
            if not value.isdigit() or len(value) > 18:
                return _bad(app, visitor, f"message id {value[:40]!r} is not a number")
            ids.append(int(value))
        if not ids:
            return _bad(app, visitor, f"{name}: no message selected (tick the messages first)")
        if len(ids) > MAX_SELECTED:
            return _bad(app, visitor, f"{len(ids)} messages selected (at most {MAX_SELECTED})")
        ids = sorted(set(ids))
    moved = [m for _, _, m in act_many(app.writes, name, ids, time.time(),
                                       by=visitor.user.name)]
    done, skipped = moved.count(True), moved.count(False)
    log.info("admin console: %s %s %d messages from the queue (%d skipped)%s",
             visitor.user.name, name, done, skipped,
             " (all matching the page's filters)" if matching else "")
    if done and ACTIONS[name].new == "queued":
        app.wake()
    back = {k: v for k, v in shown.items() if v}
    report = {"done": name, "count": done, "skipped": skipped,
              **({"scope": "matching"} if matching else {})}
    return redirect(f"/queue?{urlencode({**report, **back})}")


def _bad(app: App, visitor: Visitor, message: str) -> Response:
    return app.page(400, "error.html", visitor, title="Bad request", message=message)
