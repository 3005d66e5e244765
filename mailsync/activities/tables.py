"""Store migration of activities (applied by store/migrations.py as migration 4).

Dates (``deadline``, ``done_on``) are ISO ``YYYY-MM-DD`` strings in the machine's local
time zone, so they compare and sort as text; times are epoch seconds. ``fetched_id`` is
the id of the fetched message that created the activity: a plain integer, since the
inbound tables are another module's. ``attachment`` is relative to ``state_dir``.
Statements are separated by ';' (no ';' inside literals).
"""

from __future__ import annotations

MIGRATION = """
CREATE TABLE activities (
    id INTEGER PRIMARY KEY,
    type TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'done', 'cancelled')),
    user TEXT NOT NULL,
    summary TEXT,
    note TEXT,
    deadline TEXT NOT NULL,
    record_model TEXT,
    record_id INTEGER,
    fetched_id INTEGER,
    previous_id INTEGER REFERENCES activities (id),
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    done_at REAL,
    done_on TEXT,
    feedback TEXT,
    attachment TEXT,
    CHECK ((record_model IS NULL) = (record_id IS NULL))
);
CREATE INDEX activities_state ON activities (state, type, deadline);
CREATE INDEX activities_user ON activities (user, state);
CREATE INDEX activities_previous ON activities (previous_id);
CREATE UNIQUE INDEX activities_fetched ON activities (fetched_id) WHERE fetched_id IS NOT NULL
"""
