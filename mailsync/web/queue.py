"""The Queue page: what is waiting (queued, deferred, held, sending), oldest first, and
the operators' bulk retry or release of a selection.

Keyset-paginated by id (``after=ID``: the page of the messages newer than ID), read by
:func:`~mailsync.outbound.history.list_waiting` through the ``messages_due`` index
(status, next attempt), so a page reads the waiting messages only, never the sent
history. A bulk action is one
:func:`~mailsync.outbound.actions.act` per selected message, the same transition and
audit event (``retry by NAME (admin console)``) as its button on the Message page.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from mailsync.outbound.actions import ACTIONS, act_many
from mailsync.outbound.history import list_waiting
from mailsync.outbound.queue import OutboundStore
from mailsync.web.http import Request, Response, redirect

if TYPE_CHECKING:  # the application that calls these pages (web/app.py imports this module)
    from mailsync.web.app import App, Visitor

log = logging.getLogger("mailsync.web")

WAITING = ("queued", "deferred", "held", "sending")
BULK = ("retry", "release")   # what a selection can get (hold and delete: one at a time)
PAGE_SIZE = 50
MAX_SELECTED = 500            # a form's selection at most (a page shows PAGE_SIZE)


def waiting(store: OutboundStore, statuses: tuple[str, ...], after: int | None,
            limit: int) -> list[dict[str, Any]]:
    """Waiting messages with ids above ``after``, oldest first, at most ``limit``, as the
    page shows them (read by :func:`~mailsync.outbound.history.list_waiting`)."""
    return [{"id": r["id"], "status": r["status"], "created": _short(r["created_at"]),
             "account": r["account"], "user": r["user"], "server": r["server"],
             "subject": r["subject"], "attempts": r["attempts"], "error": r["error"],
             "next": _short(r["next_attempt_at"]), "to": r["to"]}
            for r in list_waiting(store, statuses, after, limit)]


def _short(text: str | None) -> str:
    return (text or "")[:19].replace("T", " ")


def page(app: App, request: Request, visitor: Visitor) -> Response:
    """The Queue page (``status=`` one of :data:`WAITING`, ``after=ID``)."""
    status = request.query.get("status", "").strip()
    error = None
    if status and status not in WAITING:
        error = f"status {status!r} is not a waiting status (allowed: {', '.join(WAITING)})"
    after_text = request.query.get("after", "")
    after = int(after_text) if after_text.isdigit() and len(after_text) <= 18 else None
    rows: list[dict[str, Any]] = []
    if error is None:
        with app.reads() as store:
            rows = waiting(store, (status,) if status else WAITING, after, PAGE_SIZE + 1)
    newer = None
    if len(rows) > PAGE_SIZE:
        rows = rows[:PAGE_SIZE]
        newer = rows[-1]["id"]
    done = request.query.get("done")
    report = None
    if done in BULK:
        report = {"action": done, "count": _int(request.query.get("count")),
                  "skipped": _int(request.query.get("skipped"))}
    keep = {"status": status} if status else {}
    return app.page(400 if error else 200, "queue.html", visitor, title="Queue", rows=rows,
                    chosen=status, statuses=WAITING, error=error, newer=newer, keep=keep,
                    first=after is not None, report=report, bulk=BULK)


def _int(text: str | None) -> int:
    return int(text) if text and text.isdigit() and len(text) <= 9 else 0


def bulk(app: App, request: Request, visitor: Visitor) -> Response:
    """An operator's retry or release of the selected messages (``action``, ``m`` once
    per message): each one acted on and audited; those whose status the action does not
    apply to (sent meanwhile, say) are counted as skipped."""
    name = request.form.get("action", "")
    if name not in BULK:
        return app.page(400, "error.html", visitor, title="Bad request",
                        message=f"action {name!r} is not a bulk action (allowed: "
                        f"{', '.join(BULK)})")
    ids: list[int] = []
    for value in request.form_list("m"):
        if not value.isdigit() or len(value) > 18:
            return app.page(400, "error.html", visitor, title="Bad request",
                            message=f"message id {value[:40]!r} is not a number")
        ids.append(int(value))
    if not ids:
        return app.page(400, "error.html", visitor, title="Bad request",
                        message=f"{name}: no message selected (tick the messages first)")
    if len(ids) > MAX_SELECTED:
        return app.page(400, "error.html", visitor, title="Bad request",
                        message=f"{len(ids)} messages selected (at most {MAX_SELECTED})")
    moved = [m for _, _, m in act_many(app.writes, name, sorted(set(ids)), time.time(),
                                       by=visitor.user.name)]
    done, skipped = moved.count(True), moved.count(False)
    log.info("admin console: %s %s %d messages from the queue (%d skipped)",
             visitor.user.name, name, done, skipped)
    if done and ACTIONS[name].new == "queued":
        app.wake()
    back = request.form.get("status", "")
    where = f"&status={back}" if back in WAITING else ""
    return redirect(f"/queue?done={name}&count={done}&skipped={skipped}{where}")
