"""Store migration of the inbound side (fetch state and fetched messages).

Kept apart from store.py so that the inbound code owns its tables; store.py applies it
as migration 3. Statements are separated by ';' (no ';' inside literals).
"""

from __future__ import annotations

MIGRATION = """
CREATE TABLE fetch_state (
    server TEXT NOT NULL,
    folder TEXT NOT NULL DEFAULT '',
    uidvalidity INTEGER,
    last_uid INTEGER,
    updated_at REAL NOT NULL,
    PRIMARY KEY (server, folder)
) WITHOUT ROWID;
"""
