"""The Inbox page: the messages fetched from each incoming server (a tab per server),
newest first, and the bounces linked to the message they bounced; searched by a part of
From, To or Subject or a Message-ID, within a time window (``since``, ``until``).

A bounce's record says which outbound message it bounced (``fetched.bounce_of``, set by
the poller when a DSN's signed VERP address, envelope id or returned Message-ID names a
message this daemon sent): the row links there. Keyset-paginated (``before=ID``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from mailsync.inbound.records import InboxFilters, list_fetched
from mailsync.outbound.queue import OutboundStore
from mailsync.web.http import Request, Response
from mailsync.web.pages import time_window

if TYPE_CHECKING:  # the application that calls these pages (web/app.py imports this module)
    from mailsync.web.app import App, Visitor

PAGE_SIZE = 50


def fetched(store: OutboundStore, filters: InboxFilters) -> list[dict[str, Any]]:
    """The fetched messages ``filters`` select, newest first, as the page shows them; each
    bounce with the subject and status of the message it bounced (read by
    :func:`~mailsync.inbound.records.list_fetched`)."""
    return [{"id": r["id"], "server": r["server"], "folder": r["folder"] or "",
             "fetched": (r["fetched_at"] or "")[:19].replace("T", " "),
             "from": r["from"], "to": r["to"], "subject": r["subject"],
             "size": r["size"], "bounce_of": r["bounce_of"],
             "bounced_subject": r["bounced_subject"], "bounced_status": r["bounced_status"]}
            for r in list_fetched(store.store, filters, linked=True)]


def page(app: App, request: Request, visitor: Visitor) -> Response:
    """The Inbox page (``server=NAME``, ``bounces=1``, ``since``, ``until``, ``q``: the
    search, ``before=ID``)."""
    servers = [s.name for s in app.config().incoming_servers]
    server = request.query.get("server", "").strip() or None
    shown = {k: request.query.get(k, "").strip() for k in ("since", "until", "q")}
    since, until, error = time_window(shown, time.time())
    if server is not None and server not in servers:
        error = (f"server {server!r} is not an incoming server (allowed: "
                 f"{', '.join(servers) or 'none declared'})")
    bounces = request.query.get("bounces") == "1"
    before_text = request.query.get("before", "")
    before = int(before_text) if before_text.isdigit() and len(before_text) <= 18 else None
    rows: list[dict[str, Any]] = []
    if error is None:
        filters = InboxFilters(server, since, PAGE_SIZE + 1, until=until,
                               search=shown["q"][:200] or None, bounces=bounces,
                               before=before)
        with app.reads() as store:
            rows = fetched(store, filters)
    older = None
    if len(rows) > PAGE_SIZE:
        rows = rows[:PAGE_SIZE]
        older = rows[-1]["id"]
    # What a link keeps: the tab's server and the filters (a tab keeps the filters; the
    # bounces toggle and Clear, the tab).
    tab = {"server": server} if server else {}
    filtered = {k: v for k, v in (*shown.items(), ("bounces", "1" if bounces else "")) if v}
    keep = {**tab, **filtered}
    every = {k: v for k, v in keep.items() if k != "bounces"}
    cleared = {**tab, **({"bounces": "1"} if bounces else {})}
    return app.page(400 if error else 200, "inbox.html", visitor, title="Inbox", rows=rows,
                    servers=servers, server=server, bounces=bounces, error=error,
                    older=older, keep=keep, filtered=filtered, shown=shown, every=every,
                    cleared=cleared,
                    newest=before is not None)
