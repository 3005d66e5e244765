"""Store migration of the inbound side (fetch state and fetched messages).

Kept apart from the store so that the inbound code owns its tables; store/migrations.py
applies :data:`MIGRATION` as migration 3 and :data:`SKIPPED_MIGRATION` as migration 8.
Statements are separated by ';' (no ';' inside literals).

- ``fetched``: every message taken from an incoming server, with its raw bytes and the
  indexed headers. ``(server, folder, source_key)`` is unique: the key is what identifies
  the message at its source (IMAP ``uidvalidity/uid``, a POP3 UIDL, a Maildir file's base
  name), so storing the same message twice fails in the database itself. For POP3 and
  local sources the keys of a server *are* its fetch state (the UIDLs or names taken).
- ``fetch_state``: per IMAP server and folder, UIDVALIDITY and the highest UID stored,
  how often the UIDVALIDITY changed, and below which UID messages present at the last
  change are recognised by Message-ID and size. Written in the same transaction as the
  rows it accounts for.
- An index on the outbound ``messages.message_id`` (migration 2 has none), for matching
  a DSN's returned Message-ID with the message this daemon sent.
"""

from __future__ import annotations

MIGRATION = """
CREATE TABLE fetch_state (
    server TEXT NOT NULL,
    folder TEXT NOT NULL DEFAULT '',
    uidvalidity INTEGER,
    last_uid INTEGER NOT NULL DEFAULT 0,
    uidvalidity_changes INTEGER NOT NULL DEFAULT 0,
    recognise_below INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL,
    PRIMARY KEY (server, folder)
) WITHOUT ROWID;
CREATE TABLE fetched (
    id INTEGER PRIMARY KEY,
    server TEXT NOT NULL,
    folder TEXT NOT NULL DEFAULT '',
    source_key TEXT NOT NULL,
    fetched_at REAL NOT NULL,
    message_id TEXT,
    from_address TEXT,
    to_address TEXT,
    subject TEXT,
    date TEXT,
    sent_at REAL,
    size INTEGER NOT NULL,
    raw BLOB,
    bounce_of INTEGER
);
CREATE UNIQUE INDEX fetched_source ON fetched (server, folder, source_key);
CREATE INDEX fetched_message_id ON fetched (server, message_id);
CREATE INDEX fetched_time ON fetched (fetched_at);
CREATE INDEX IF NOT EXISTS messages_message_id ON messages (message_id);
"""

# Migration 8: messages skipped at their source, so that none is tried again at each poll.
# - ``fetch_skipped``: one row per message not fetched, by the key that names it at its
#   source (as ``fetched.source_key``): ``reason`` is ``too_large`` (its RFC822.SIZE,
#   LIST size or file size is over the server's max_message_size), ``oversized_literal``
#   (an IMAP server sent more than max_message_size for it, whatever size it declared)
#   or ``oversized_retr`` (the same over POP3); ``size`` the bytes declared or, for a
#   server that sent more, the bytes it announced or sent before it was cut off.
#   Written in the transaction of the batch it belongs to; a skipped message is neither
#   stored nor deleted at its source.
SKIPPED_MIGRATION = """
CREATE TABLE fetch_skipped (
    server TEXT NOT NULL,
    folder TEXT NOT NULL DEFAULT '',
    source_key TEXT NOT NULL,
    reason TEXT NOT NULL,
    size INTEGER NOT NULL,
    skipped_at REAL NOT NULL,
    PRIMARY KEY (server, folder, source_key)
) WITHOUT ROWID;
"""

# Migration 18: the inbox's search (``mailsync inbox --search``, the Inbox page) through
# an index of each header it matches, so that a search reads the headers alone, not every
# row with its raw bytes (on 100,000 fetched messages of 2 KB: ~20-40 ms instead of
# ~350-470). Their values are cut to what an index takes (store.sql.indexed).
SEARCH_MIGRATION = """
CREATE INDEX fetched_subject ON fetched (subject);
CREATE INDEX fetched_from ON fetched (from_address);
CREATE INDEX fetched_to ON fetched (to_address);
CREATE INDEX fetched_message_id_any ON fetched (message_id);
"""
