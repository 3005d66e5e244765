"""The Activities page: open activities by deadline, filtered by user and type, with
their type's icon and decoration colour and the deadline relative to today; the counts
of open and overdue ones by user and type; an operator marks one done, an
``upload_document`` one with its document (:func:`upload`).

Done is :meth:`~mailsync.activities.store.ActivityStore.done`, the function of
``mailsync activity done``: its type's chaining then schedules the next one (trigger)
or offers the recommended types (suggest), which the page shows.
"""

from __future__ import annotations

import logging
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailsync import files
from mailsync.activities.rules import Activity, is_overdue, local_date, type_list
from mailsync.activities.store import ActivityStore, DoneResult, Filters
from mailsync.config.model import Config
from mailsync.errors import ActivityRefused
from mailsync.web.http import Request, Response

if TYPE_CHECKING:  # the application that calls these pages (web/app.py imports this module)
    from mailsync.web.app import App, Visitor

log = logging.getLogger("mailsync.web")

LIMIT = 500
UPLOAD_PATH = "/activities/upload"
UPLOAD_LIMIT = 20 * 1024 * 1024   # bytes of an uploaded document
NAME_LIMIT = 200                  # characters of its name
# Font Awesome names of the config's `icon` as characters: the console loads no font.
ICONS = {"fa-reply": "\u21a9", "fa-phone": "\u260e", "fa-users": "\u263a",
         "fa-upload": "\u21e7", "fa-envelope": "\u2709", "fa-calendar": "\u2637",
         "fa-check": "\u2713", "fa-clock-o": "\u231a", "fa-file": "\u2630",
         "fa-tasks": "\u2611"}


def relative(deadline: date, today: date) -> str:
    """The deadline from today: ``today``, ``tomorrow``, ``in 3 days``, ``1 day overdue``,
    ``2 days overdue``."""
    days = (deadline - today).days
    if days == 0:
        return "today"
    if days == 1:
        return "tomorrow"
    if days > 1:
        return f"in {days} days"
    return f"{-days} day{'s' if days != -1 else ''} overdue"


def _row(config: Config, a: Activity, today: date) -> dict[str, Any]:
    t = config.activity_type(a.type)
    icon = t.icon if t is not None else None
    return {"id": a.id, "type": a.type, "user": a.user, "summary": a.summary or "",
            "deadline": a.deadline.isoformat(), "due": relative(a.deadline, today),
            "overdue": is_overdue(a, today), "record": str(a.record) if a.record else "",
            "icon": ICONS.get(icon or "", "\u2022"), "icon_name": icon or "",
            "decoration": t.decoration if t is not None else "none",
            "upload": t is not None and t.action == "upload_document"}


def counts(store: ActivityStore, today: date) -> list[dict[str, Any]]:
    """Open and overdue activities by user and type."""
    return [{"user": user, "type": kind, "open": n_open, "overdue": n_overdue}
            for user, kind, n_open, n_overdue in store.counts_by_user(today)]


def page(app: App, request: Request, visitor: Visitor, *, status: int = 200,
         outcome: dict[str, Any] | None = None, problem: str | None = None) -> Response:
    """The Activities page (``user=``, ``type=``, ``overdue=1``), with the outcome of a
    done just marked (or why it was refused)."""
    config = app.config()
    today = local_date(time.time())
    user = request.query.get("user", "").strip() or None
    kind = request.query.get("type", "").strip() or None
    overdue = request.query.get("overdue") == "1"
    with app.reads() as store:
        activities = ActivityStore(store.store)
        found = activities.find(Filters(
            user=user, type=kind, overdue_on=today if overdue else None, limit=LIMIT))
        table = counts(activities, today)
    types = sorted({t.name for t in config.activity_types} | {r["type"] for r in table})
    users = sorted({*config.users, *(r["user"] for r in table)})
    shown = {"user": user or "", "type": kind or "", "overdue": overdue}
    return app.page(status, "activities.html", visitor, title="Activities",
                    rows=[_row(config, a, today) for a in found], counts=table,
                    types=types, users=users, shown=shown, outcome=outcome,
                    problem=problem, today=today.isoformat())


def _outcome(result: DoneResult, today: date) -> dict[str, Any]:
    """What a done led to, as ``mailsync activity done`` prints it."""
    a = result.activity
    triggered = result.triggered
    return {"id": a.id, "type": a.type, "summary": a.summary or "",
            "triggered": None if triggered is None else
            {"id": triggered.id, "type": triggered.type, "user": triggered.user,
             "deadline": triggered.deadline.isoformat(),
             "due": relative(triggered.deadline, today)},
            "suggested": type_list(result.next.suggested) if result.next.suggested else "",
            "remark": result.next.remark or ""}


def done(app: App, request: Request, visitor: Visitor) -> Response:
    """An operator marks activity ``id`` done (with ``feedback``)."""
    text = request.form.get("id", "")
    if not text.isdigit() or len(text) > 18:
        return page(app, request, visitor, status=400,
                    problem=f"activity id {text[:40]!r} is not a number")
    feedback = request.form.get("feedback", "").strip()[:2000] or None
    now = time.time()
    try:
        result = ActivityStore(app.writes.store).done(app.config(), int(text), now,
                                                     feedback=feedback)
    except ActivityRefused as exc:
        return page(app, request, visitor, status=409, problem=str(exc))
    log.info("admin console: %s marked activity %d done (%s)", visitor.user.name,
             result.activity.id, result.activity.type)
    return page(app, request, visitor, outcome=_outcome(result, local_date(now)))


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be an uploaded document's file name (None: it can). It
    becomes ``state_dir/attachments/ID/NAME``: a plain name, no directory in it."""
    if not name:
        return "no file chosen"
    if len(name) > NAME_LIMIT:
        return f"a name of {len(name)} characters (at most {NAME_LIMIT})"
    if "/" in name or "\\" in name:
        return "a path, not a file name (no / or \\ allowed)"
    if name.startswith("."):
        return "a name starting with a dot (not allowed: hidden, or a directory)"
    if not name.isprintable():
        return "a name with control characters"
    return None


def upload(app: App, request: Request, visitor: Visitor) -> Response:
    """An operator marks activity ``id`` done with its document (``document``, a
    ``multipart/form-data`` file of at most :data:`UPLOAD_LIMIT` bytes, and
    ``feedback``): :meth:`~mailsync.activities.store.ActivityStore.done` with
    ``attach``, as ``mailsync activity done --attach`` does (the file kept 0640 as
    ``state_dir/attachments/ID/NAME``)."""
    text = request.form.get("id", "")
    if not text.isdigit() or len(text) > 18:
        return page(app, request, visitor, status=400,
                    problem=f"activity id {text[:40]!r} is not a number")
    document = request.files.get("document")
    shown = repr(document.filename[:60]) if document is not None else "(none)"
    problem = "no file chosen" if document is None else name_problem(document.filename)
    if document is None or problem is not None:
        return page(app, request, visitor, status=400,
                    problem=f"activity {text}: document {shown} refused: {problem} (a "
                    f"plain file name of at most {NAME_LIMIT} characters)")
    if len(document.data) > UPLOAD_LIMIT:
        return page(app, request, visitor, status=413,
                    problem=f"activity {text}: document {shown} is {len(document.data)} "
                    f"bytes (at most {UPLOAD_LIMIT})")
    feedback = request.form.get("feedback", "").strip()[:2000] or None
    config = app.config()
    state_dir = config.daemon.state_dir
    now = time.time()
    # The upload as a file of its own name (what done() keeps), in a private directory
    # of state_dir: the same copy into attachments/ as the CLI's --attach FILE.
    with tempfile.TemporaryDirectory(prefix=".upload-", dir=state_dir) as tmp:
        source = Path(tmp) / document.filename
        files.write_new(source, document.data)
        try:
            result = ActivityStore(app.writes.store, state_dir).done(
                config, int(text), now, feedback=feedback, attach=source)
        except ActivityRefused as exc:
            return page(app, request, visitor, status=409,
                        problem=str(exc).replace(str(source), document.filename))
    log.info("admin console: %s marked activity %d done (%s) with %s (%d bytes)",
             visitor.user.name, result.activity.id, result.activity.type,
             shown, len(document.data))
    return page(app, request, visitor, outcome=_outcome(result, local_date(now)))
