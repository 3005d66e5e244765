"""The admin console's logouts: the sessions logged out before their expiry (#17).

A console session is a signed cookie (:mod:`mailsync.web.sessions`); the one thing kept
about it is its id once it is logged out, until the cookie would have expired anyway.
Kept in the store (:data:`MIGRATION`, a row per id: ``admin_logouts``), not in a file of
state_dir, so that the consoles of several nodes sharing one PostgreSQL store (and one
``admin.session_key``) behind one address all refuse a cookie logged out through any of
them; on SQLite it is the daemon's one store, as before. The SQL is the same on both
backends (SQLite's dialect, translated by :mod:`mailsync.store.pgsql`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the store imports this module's migration: no cycle at run time
    from mailsync.store.sqlite import Store

# 15: the admin console's logged-out sessions (sid, until when the cookie was valid).
MIGRATION = """
CREATE TABLE admin_logouts (
    sid TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
);
"""


def record(store: Store, logouts: Iterable[tuple[str, float]], now: float) -> None:
    """Record the sessions ``(sid, expiry)`` logged out, and forget those expired by
    ``now``, in one transaction (a logout is kept before the page says it is done)."""
    with store.transaction() as conn:
        conn.execute("DELETE FROM admin_logouts WHERE expires_at <= ?", (now,))
        for sid, expires in logouts:
            if expires > now:
                conn.execute("INSERT OR IGNORE INTO admin_logouts (sid, expires_at)"
                             " VALUES (?, ?)", (sid, expires))


def logged_out(store: Store, sid: str, now: float) -> bool:
    """Whether session ``sid`` was logged out (and its cookie not yet expired)."""
    with store.lock:
        row = store.conn.execute("SELECT 1 FROM admin_logouts WHERE sid = ? AND"
                                 " expires_at > ?", (sid, now)).fetchone()
    return row is not None
