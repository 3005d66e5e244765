"""Store migration of the outbound side: the queue, the send history and its events.

Applied by store/migrations.py as migrations 2, 5, 7, 9 and 10. Statements are separated by
';' (no ';' inside literals). The content lives apart from the message row so that status
updates rewrite small rows (many to a page), not pages of message bytes; attempts are the
events that name a server.
"""

from __future__ import annotations

MIGRATION = """
CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    status TEXT NOT NULL,
    user TEXT,
    account TEXT,
    server TEXT,
    from_address TEXT,
    message_id TEXT,
    subject TEXT,
    size INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,
    last_error TEXT,
    reason TEXT,
    source TEXT,
    idempotency_key TEXT UNIQUE
);
CREATE INDEX messages_due ON messages (status, next_attempt_at);
CREATE INDEX messages_created ON messages (created_at);
CREATE TABLE contents (
    message INTEGER PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
    raw BLOB NOT NULL
);
CREATE TABLE recipients (
    message INTEGER NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    address TEXT NOT NULL,
    status TEXT NOT NULL,
    code INTEGER,
    reply TEXT,
    updated_at REAL NOT NULL,
    PRIMARY KEY (message, address)
) WITHOUT ROWID;
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    message INTEGER NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    at REAL NOT NULL,
    status TEXT NOT NULL,
    detail TEXT,
    server TEXT,
    code INTEGER,
    reply TEXT,
    duration REAL
);
CREATE INDEX events_message ON events (message);
CREATE TABLE ingested (
    source TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    message INTEGER NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (source, sha256)
) WITHOUT ROWID;
"""

# 5: spool claims replace the permanent ``ingested`` record. A claim says "this file in
# new/ is already message N" and lives only from the commit until the file is gone; it
# names the file by name, content hash, inode and ctime, so that only *that* file (left
# behind by a crash between commit and removal) is recognised, never a file dropped again
# later under the same name with the same content. Old records carry no inode: they match
# by name and hash, and are swept at the next start unless their file is still in new/.
CLAIMS_MIGRATION = """
CREATE TABLE spool_claims (
    source TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    inode INTEGER,
    ctime_ns INTEGER,
    message INTEGER NOT NULL,
    at REAL NOT NULL
) WITHOUT ROWID;
INSERT OR REPLACE INTO spool_claims (source, sha256, message, at)
    SELECT source, sha256, message, at FROM ingested ORDER BY at;
DROP TABLE ingested
"""

# 7: the VERP signature of each message, made when it is queued (by the pickup process,
# beside the senders) instead of once per attempt by a sender thread.
VERP_MIGRATION = """
ALTER TABLE messages ADD COLUMN verp TEXT
"""

# 9: what each recipient got in each attempt, for `history show` (the recipients table
# keeps only the latest outcome): a JSON list of [address, status, code, reply], written
# only for attempts with more than one recipient (one recipient's outcome is the event's
# own code and reply). Failover tries are events of their own (status ``failed_over``).
ATTEMPT_RECIPIENTS_MIGRATION = """
ALTER TABLE events ADD COLUMN recipients TEXT
"""

# 10: the admin console's searches (outbound/history.py: Filters.search) through indexes,
# not a scan of the whole history: a recipient's address in any case, and the subjects
# apart from the rows (a substring match reads this index only). A Message-ID has its
# index already (messages_message_id, migration 3: bounces are matched by it).
SEARCH_MIGRATION = """
CREATE INDEX messages_subject ON messages (subject);
CREATE INDEX recipients_address ON recipients (lower(address))
"""

# 13: deliverability (#18). ``rate_sends``: the time of each send per limiter
# (``server:NAME`` or ``account:NAME``), kept while a window may count it
# (mailsync/outbound/ratelimit.py); ``rate_limiters``: one row per limiter, the row a
# claim locks on PostgreSQL so that nodes sharing the store count one window;
# ``messages.waiting_for``: the limiter a deferred message waits for. ``suppressions``:
# the recipients not sent to again until ``expires_at`` (NULL: until removed), with why
# and the message that bounced (mailsync/outbound/suppression.py).
DELIVERABILITY_MIGRATION = """
CREATE TABLE rate_sends (
    limiter TEXT NOT NULL,
    at REAL NOT NULL,
    message INTEGER NOT NULL,
    PRIMARY KEY (limiter, at, message)
) WITHOUT ROWID;
CREATE TABLE rate_limiters (
    limiter TEXT PRIMARY KEY
);
ALTER TABLE messages ADD COLUMN waiting_for TEXT;
CREATE TABLE suppressions (
    address TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    detail TEXT,
    added_at REAL NOT NULL,
    expires_at REAL,
    message INTEGER
);
"""

# Migration 14: the webhook outbox (mailsync/outbound/webhooks.py). One row per event and
# webhook, written in the transaction of the status change that causes it, deleted once
# the webhook took it; the body is made from the row and its message when it is posted.
WEBHOOKS_MIGRATION = """
CREATE TABLE webhook_outbox (
    id INTEGER PRIMARY KEY,
    webhook TEXT NOT NULL,
    event_id TEXT NOT NULL UNIQUE,
    event TEXT NOT NULL,
    message INTEGER NOT NULL,
    at REAL NOT NULL,
    status TEXT NOT NULL,
    recipients TEXT,
    detail TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (webhook, next_attempt_at)
"""

# Migration 16: the due index in the claims' order, (status, next attempt, id), so that a
# claim reads only the rows it takes (outbound/claims.py: due_ids). SQLite's index held
# the id already (every index ends with the rowid); PostgreSQL's did not, so each claim
# there sorted every due row (59 ms a claim of 200 with 50,000 waiting).
DUE_ORDER_MIGRATION = """
DROP INDEX messages_due;
CREATE INDEX messages_due ON messages (status, next_attempt_at, id)
"""

# A recipient's domain, in lower case: what follows the first '@' (an address with a
# quoted '@' in its local part is not a case mailsync sends to). The same text in the
# index and in the search (outbound/history.py), as SQLite's expression indexes need;
# PostgreSQL runs it as strpos() (store/pgsql.py).
RECIPIENT_DOMAIN = "substr(lower(address), instr(lower(address), '@') + 1)"

# Migration 17: the history's search by domain (``@example.org``) through an index of the
# recipients' domains, not a scan of every recipient.
DOMAIN_MIGRATION = f"""
CREATE INDEX recipients_domain ON recipients ({RECIPIENT_DOMAIN})
"""
