"""The Servers page: each outgoing and incoming server, up or down, its last send or
poll and its last error, and the operators' "Test connection".

Up or down is what the daemon knows (its pools' and pollers' state, handed over as a
:class:`~mailsync.web.status.DaemonStatus`); the last send and the last error of an
outgoing server, and the last message fetched from an incoming one, are read from the
store through their parts' read sides
(:func:`~mailsync.outbound.history.server_lasts`,
:func:`~mailsync.inbound.records.last_fetched`). "Test connection" runs the code of
``mailsync test`` (:mod:`mailsync.inbound.connection`) within :data:`TEST_LIMIT`
seconds, so a silent server cannot hang the page. Only names, addresses and error texts
are shown: never a password, token or secret reference's value.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from mailsync.config.model import Config
from mailsync.inbound.connection import test_within
from mailsync.inbound.records import last_fetched
from mailsync.outbound.history import server_lasts
from mailsync.web.http import Request, Response
from mailsync.web.status import ServerState

if TYPE_CHECKING:  # the application that calls these pages (web/app.py imports this module)
    from mailsync.web.app import App, Visitor

log = logging.getLogger("mailsync.web")

TEST_LIMIT = 15.0   # seconds a "Test connection" may take before the page answers anyway
SIDES = ("outgoing", "incoming")


def _when(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return datetime.fromtimestamp(float(epoch), UTC).strftime("%Y-%m-%d %H:%M:%S")


def _state(state: ServerState | None, daemon: bool) -> tuple[str, str]:
    """(css class, text) of a server's state."""
    if state is None or state.up is None:
        return "unknown", "not used yet" if daemon else "unknown (no daemon)"
    return ("up", "up") if state.up else ("down", "down")


def rows(app: App, config: Config) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The outgoing and incoming servers' rows."""
    status = app.status()
    outgoing, incoming = [], []
    with app.reads() as store:
        for name, s in config.sending_servers().items():
            state = status.outgoing.get(name)
            css, text = _state(state, status.daemon)
            sent, recorded = server_lasts(store, name)
            error = state.error if state is not None and state.error else recorded
            outgoing.append({"name": name, "where": f"{s.host or '(provider)'}:{s.port}",
                             "security": s.security, "css": css, "state": text,
                             "since": _when(state.since) if state else "",
                             "last": _when(sent), "error": error or "",
                             "note": state.note if state and state.note else ""})
        for server in config.incoming_servers:
            state = status.incoming.get(server.name)
            css, text = _state(state, status.daemon)
            fetched = last_fetched(store.store, server.name)
            where = str(server.path) if server.path is not None else \
                f"{server.host or '(provider)'}:{server.port or ''}"
            incoming.append({"name": server.name, "type": server.type, "where": where,
                             "css": css, "state": text,
                             "last": _when(state.last_at) if state else "",
                             "fetched": _when(fetched),
                             "error": state.error if state and state.error else "",
                             "note": state.note if state and state.note else ""})
    return outgoing, incoming


def page(app: App, request: Request, visitor: Visitor, *, status: int = 200,
         tested: dict[str, Any] | None = None) -> Response:
    """The Servers page, with the outcome of a test just made."""
    outgoing, incoming = rows(app, app.config())
    return app.page(status, "servers.html", visitor, title="Servers", outgoing=outgoing,
                    incoming=incoming, tested=tested, daemon=app.status().daemon)


def test(app: App, request: Request, visitor: Visitor) -> Response:
    """An operator's "Test connection" of server ``server`` (``side``: outgoing or
    incoming): ``OK ...`` or ``Connection Error: <reason>``."""
    config = app.config()
    name, side = request.form.get("server", ""), request.form.get("side", "")
    server: Any = None
    if side == "outgoing":
        server = config.sending_servers().get(name)
    elif side == "incoming":
        server = next((s for s in config.incoming_servers if s.name == name), None)
    if server is None:
        known = [*config.sending_servers(), *(s.name for s in config.incoming_servers)]
        return app.page(404, "error.html", visitor, title="Not found",
                        message=f"no {side if side in SIDES else 'outgoing or incoming'} "
                        f"server {name[:100]!r} (declared: {', '.join(known) or 'none'})")
    ok, line = test_within(server, app.tokens, app.test_limit)
    log.info("admin console: %s tested %s server %s: %s", visitor.user.name, side, name,
             line)
    return page(app, request, visitor, tested={"name": name, "side": side, "ok": ok,
                                               "line": line})
