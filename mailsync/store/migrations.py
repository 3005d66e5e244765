"""The store's schema: the migrations, applied in order and counted in ``PRAGMA user_version``.

Each part owns the SQL of its tables (``outbound/tables.py``, ``inbound/tables.py``,
``activities/tables.py``); this list fixes the order in which they were added, which
is the order in which a store of any earlier release is upgraded. A migration is only
ever appended, never edited: a store created by any earlier release opens in a later one.
"""

from __future__ import annotations

from mailsync.activities import tables as activity_tables
from mailsync.inbound import tables as inbound_tables
from mailsync.outbound import tables as outbound_tables
from mailsync.store import leases, logouts

MIGRATIONS: list[str] = [
    # 1: the last applied configuration, for `mailsync plan`.
    """
    CREATE TABLE applied_config (
        id INTEGER PRIMARY KEY,
        applied_at TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        source TEXT NOT NULL,
        text TEXT NOT NULL
    );
    """,
    # 2: the outbound queue and send history (mailsync/outbound/tables.py).
    outbound_tables.MIGRATION,
    # 3: inbound fetch state and fetched messages (mailsync/inbound/tables.py).
    inbound_tables.MIGRATION,
    # 4: activities (mailsync/activities/tables.py).
    activity_tables.MIGRATION,
    # 5: spool claims instead of a permanent record of every file taken.
    outbound_tables.CLAIMS_MIGRATION,
    # 6: the store's own id, recorded in state_dir/store-id too (mailsync/store/identity.py):
    # a deleted or replaced database is then refused instead of starting empty.
    """
    CREATE TABLE store_meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    INSERT INTO store_meta (key, value) VALUES ('store_id', lower(hex(randomblob(16))));
    INSERT INTO store_meta (key, value)
        VALUES ('created_at', strftime('%Y-%m-%dT%H:%M:%SZ', 'now'));
    """,
    # 7: each message's VERP signature, made when it is queued (mailsync/outbound/verp.py).
    outbound_tables.VERP_MIGRATION,
    # 8: inbound messages skipped at their source (too large, or a server sending more than
    # it declared), never tried again (mailsync/inbound/tables.py).
    inbound_tables.SKIPPED_MIGRATION,
    # 9: each recipient's outcome per attempt (mailsync/outbound/tables.py).
    outbound_tables.ATTEMPT_RECIPIENTS_MIGRATION,
    # 10: indexes of the admin console's searches (mailsync/outbound/tables.py).
    outbound_tables.SEARCH_MIGRATION,
    # 11: leases on work one node of a shared store does at a time: polling an incoming
    # server, the retention pruning (mailsync/store/leases.py).
    leases.MIGRATION,
    # 12: the nodes sharing a store (mailsync/store/nodes.py), and which node holds each
    # message being sent, until when (its lease: epoch seconds of the database's clock on
    # PostgreSQL; mailsync/outbound/claims.py).
    """
    ALTER TABLE messages ADD COLUMN claimed_by TEXT;
    ALTER TABLE messages ADD COLUMN lease_until REAL;
    CREATE TABLE nodes (
        name TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        started_at REAL NOT NULL,
        heartbeat_at REAL NOT NULL,
        stale_after REAL NOT NULL,
        version TEXT NOT NULL,
        config_sha256 TEXT NOT NULL,
        in_flight INTEGER NOT NULL DEFAULT 0,
        mailboxes TEXT NOT NULL DEFAULT '[]'
    )
    """,
    # 13: rate limits' send times and the suppression list (mailsync/outbound/tables.py).
    outbound_tables.DELIVERABILITY_MIGRATION,
    # 14: the webhook outbox (mailsync/outbound/tables.py, mailsync/outbound/webhooks.py).
    outbound_tables.WEBHOOKS_MIGRATION,
    # 15: the admin console's logged-out sessions, shared by the nodes of one store
    # (mailsync/store/logouts.py).
    logouts.MIGRATION,
    # 16: the due index in the order claims read it (mailsync/outbound/tables.py).
    outbound_tables.DUE_ORDER_MIGRATION,
    # 17: the recipients' domains, for the history's search by domain
    # (mailsync/outbound/tables.py).
    outbound_tables.DOMAIN_MIGRATION,
    # 18: indexes of the inbox's search (mailsync/inbound/tables.py).
    inbound_tables.SEARCH_MIGRATION,
]
