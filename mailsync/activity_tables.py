"""Store migration of activities (applied by store.py as migration 4).

Statements are separated by ';' (no ';' inside literals).
"""

from __future__ import annotations

MIGRATION = """
CREATE TABLE activities (
    id INTEGER PRIMARY KEY,
    type TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'open',
    created_at REAL NOT NULL
);
"""
