"""IMAP source over imapclient: security modes, UID cursor, batched fetch, IDLE.

State is the folder's UIDVALIDITY and the highest UID stored. A poll SELECTs the folder
(EXAMINE when messages are kept, so nothing changes there), and when UIDNEXT says there
is something new, fetches the new UIDs with ``UID FETCH ... BODY.PEEK[]`` in batches of
:data:`~mailsync.inbound.source.BATCH`: one round trip per batch, not per message.

imapclient rather than bare imaplib: Python 3.11's imaplib has no IDLE, and waiting for
an untagged EXISTS under imaplib's buffered reader needs care that imapclient already
takes (and keeps up with imaplib's changes, e.g. Python 3.14's own read buffer).

After a UIDVALIDITY change (the folder was recreated, or the server renumbered it), the
messages present at that moment are first looked at by Message-ID and size only; those
already stored are skipped (logged, counted in ``fetch_state.uidvalidity_changes``), the
rest fetched. Messages without a Message-ID cannot be recognised and are stored again.

Opening a session (connect, STARTTLS, log in) is :mod:`mailsync.inbound.imapsession`'s;
waiting in IDLE is :mod:`mailsync.inbound.imapidle`'s.
"""

from __future__ import annotations

import imaplib
import logging
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import imapclient  # type: ignore[import-untyped]

from mailsync.auth.tokens import TokenSource, renew_at
from mailsync.config.model import IncomingServer
from mailsync.errors import ConnectError, WireGuard
from mailsync.inbound import imapidle, imapsession, oauth2
from mailsync.inbound.imapidle import IDLE_RENEW
from mailsync.inbound.message import message_id_of
from mailsync.inbound.source import (
    BATCH,
    BATCH_BYTES,
    Batch,
    Cursor,
    Incoming,
    Known,
    Skipped,
    by_bytes,
    describe,
)
from mailsync.inbound.wireerrors import WIRE_ERRORS, server_text, translate

log = logging.getLogger("mailsync.inbound.imap")

_COMMAND_FAILED = re.compile(r"^[a-z]+ failed: ")  # imapclient's prefix to the server's text
_HEADER_ITEM = "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"  # what is asked for...
_HEADER = b"BODY[HEADER.FIELDS (MESSAGE-ID)]"  # ...and the key it comes back under


class ImapSource:
    """One IMAP folder of one server; one connection, kept open between polls."""

    def __init__(self, server: IncomingServer, *, password: Callable[[], str | None],
                 context: ssl.SSLContext | None = None, batch: int = BATCH,
                 batch_bytes: int = BATCH_BYTES, idle_renew: float = IDLE_RENEW,
                 tokens: TokenSource | None = None) -> None:
        self.server = server
        self._tokens = tokens  # auth.oauth2: where access tokens come from
        self._renew_at: float | None = None  # reconnect then: the token is about to expire
        self.login_note = ""  # what the last login negotiated, for `mailsync test`
        self.folder = server.folder or "INBOX"
        self._password = password
        self._context = context
        self._batch = batch
        self._batch_bytes = batch_bytes
        self._seqs: dict[int, int] = {}  # sequence number -> UID, of the last size FETCH
        self._one_by_one = False  # a server sent too much for a message it did not name
        self._idle_renew = idle_renew
        self._client: Any = None
        self._uidplus = False
        self._expunge_pending = False
        self._selected: int | None = None  # UIDVALIDITY of the folder while it is selected
        self._where = describe(server)
        # Runs one client call; a wire error closes the session and becomes ConnectError.
        self._call = WireGuard(WIRE_ERRORS, self._translate, close=self.close)

    @property
    def supports_idle(self) -> bool:
        """Whether the server offers IDLE (known after the first login)."""
        return bool(self._client is not None and self._call(
            "connect", self._client.has_capability, "IDLE"))

    # -- session ---------------------------------------------------------------------

    def open(self) -> None:
        """Connect per ``security``, log in, and check that the folder exists; a session
        whose OAuth2 token is about to expire is replaced first."""
        self._retire_expiring()
        if self._client is None:
            self._connect()
        self._select()

    def _retire_expiring(self) -> None:
        """Close a session whose OAuth2 token is about to expire: the next use connects
        (and logs in) again with a fresh token."""
        if self._client is not None and self._renew_at is not None \
                and time.time() >= self._renew_at:
            self.close()

    def _connect(self) -> None:
        server = self.server
        if not server.host:
            raise ConnectError(f"{self._where}: no host name is configured", "dns")
        token = oauth2.access_token(self._tokens, self._where) if server.auth else None
        password = token.value if token is not None else self._password()
        self._client, self._uidplus, self.login_note = imapsession.connect(
            server, self._where, password=password, token=token, tokens=self._tokens,
            context=self._context, batch_bytes=self._batch_bytes)
        self._renew_at = renew_at(token) if token is not None else None

    def _nothing_new(self, cursor: Cursor) -> bool:
        """STATUS of the folder (not selected: STATUS of the selected folder may be stale,
        and a folder recreated while selected can go unnoticed): True when its UIDVALIDITY
        is the cursor's and UIDNEXT says no message came since, nor is one left to delete.
        One round trip, where a SELECT costs Dovecot ~10 ms per 5,000 messages."""
        if cursor.uidvalidity is None:
            return False
        self._unselect()
        status: dict[bytes, Any] = self._call("folder", self._client.folder_status, self.folder,
                                              ["UIDVALIDITY", "UIDNEXT", "MESSAGES"])
        if int(status.get(b"UIDVALIDITY", -1)) != cursor.uidvalidity:
            return False
        if not self.server.keep_on_server and int(status.get(b"MESSAGES", 0)):
            return False
        uidnext = status.get(b"UIDNEXT")
        return uidnext is not None and int(uidnext) <= cursor.last_uid + 1

    def _unselect(self) -> None:
        if self._selected is None:
            return
        if self._client.has_capability("UNSELECT"):
            self._call("fetch", self._client.unselect_folder)
        else:  # CLOSE expunges \Deleted in a read-write folder: only ours, all stored
            self._call("fetch", self._client.close_folder)
        self._selected = None

    def _select(self) -> dict[bytes, Any]:
        info: dict[bytes, Any] = self._call("folder", self._client.select_folder, self.folder,
                                            readonly=self.server.keep_on_server)
        self._selected = int(info[b"UIDVALIDITY"])
        return info

    def close(self) -> None:
        """Log out (best effort) and forget the connection."""
        client, self._client = self._client, None
        self._selected = None
        if client is not None:
            try:
                client.logout()
            except (OSError, EOFError, ValueError, imaplib.IMAP4.error):
                imapsession.shutdown(client)

    # -- polling ---------------------------------------------------------------------

    def batches(self, cursor: Cursor, known: Known) -> Iterator[Batch]:
        """New messages since ``cursor``, in batches; the first may only acknowledge."""
        self._retire_expiring()
        if self._client is None:
            self._connect()
        if self._nothing_new(cursor):
            return
        info = self._select()
        uidvalidity = int(info[b"UIDVALIDITY"])
        uidnext = info.get(b"UIDNEXT")
        if cursor.uidvalidity is not None and cursor.uidvalidity != uidvalidity:
            log.warning("%s: folder %s: UIDVALIDITY changed from %s to %s; messages already "
                        "stored are recognised by Message-ID and size, the rest fetched",
                        self._where, self.folder, cursor.uidvalidity, uidvalidity)
            cursor = Cursor(uidvalidity, 0, cursor.changes + 1,
                            int(uidnext) if uidnext is not None else 2 ** 32)
            yield Batch(cursor=cursor)  # record the change even if nothing follows
        elif cursor.uidvalidity is None:
            cursor = Cursor(uidvalidity, 0, cursor.changes)
            yield Batch(cursor=cursor)
        last = cursor.last_uid
        if not self.server.keep_on_server and last > 0 and int(info.get(b"EXISTS", 0)):
            # Stored by an earlier poll, but the deletion did not happen (a crash).
            never = known.skipped()  # never stored: never deleted either
            left = [u for u in self._search(f"1:{last}")
                    if u <= last and f"{uidvalidity}/{u}" not in never]
            if left:
                yield Batch(done=self._keys(uidvalidity, left))
        if uidnext is not None and int(uidnext) <= last + 1:
            return
        new = [u for u in self._search(f"{last + 1}:*") if u > last]
        skipped: set[str] = known.skipped() if new else set()
        for start in range(0, len(new), self._batch):
            chunk = new[start:start + self._batch]
            skip = self._recognised(chunk, cursor, known)
            # UIDVALIDITY and UID name one message (RFC 3501): one stored under that key
            # already (the folder went back to an earlier UIDVALIDITY, or another poll
            # stored it) is not stored again, which the store would refuse at every poll.
            skip.update(self._stored(uidvalidity, [u for u in chunk if u not in skip], known))
            passed: set[int] = {u for u in chunk if f"{uidvalidity}/{u}" in skipped}
            wanted = [u for u in chunk if u not in skip and u not in passed]
            sizes = self._sizes(wanted)  # a UID missing was expunged meanwhile
            cap = self.server.max_message_size
            large = {u for u in wanted if sizes.get(u, 0) > cap}
            fetch = [(u, sizes[u]) for u in wanted if u in sizes and u not in large]
            groups = by_bytes(fetch, self._batch, self._batch_bytes)
            ends = [g[-1] for g in groups[:-1]] + [chunk[-1]]
            low = 0
            for group, end in zip(groups or [[]], ends, strict=True):
                part = [u for u in chunk if low < u <= end]
                low = end
                bodies, lied = self._bodies(uidvalidity, group, sizes)
                messages = tuple(
                    Incoming(f"{uidvalidity}/{u}", bytes(bodies[u][b"BODY[]"] or b""))
                    for u in group if b"BODY[]" in bodies.get(u, {}))
                over = tuple(Skipped(f"{uidvalidity}/{u}", "too_large", sizes[u])
                             for u in part if u in large)
                if lied is not None:  # the connection was dropped: this batch ends the poll
                    yield Batch(messages=messages, skipped=(*over, lied),
                                done=tuple(m.key for m in messages))
                    return
                cursor = Cursor(uidvalidity, end, cursor.changes, cursor.recognise_below)
                yield Batch(messages=messages, cursor=cursor, skipped=over,
                            done=self._keys(uidvalidity, [u for u in part if u not in large
                                                          and u not in passed]),
                            recognised=len(skip.intersection(part)))

    def _recognised(self, uids: list[int], cursor: Cursor, known: Known) -> set[int]:
        """After a UIDVALIDITY change: the UIDs whose Message-ID and size are stored."""
        candidates = [u for u in uids if u < cursor.recognise_below]
        if not candidates:
            return set()
        heads = self._fetch(candidates, ["RFC822.SIZE", _HEADER_ITEM])
        pairs: dict[int, tuple[str, int]] = {}
        for uid, item in heads.items():
            mid = message_id_of(bytes(item.get(_HEADER) or b""))
            if mid is not None and b"RFC822.SIZE" in item:
                pairs[uid] = (mid, int(item[b"RFC822.SIZE"]))
        stored = known.messages(list(pairs.values()))
        return {uid for uid, pair in pairs.items() if pair in stored}

    def _stored(self, uidvalidity: int, uids: list[int], known: Known) -> set[int]:
        """Those of ``uids`` whose key is stored already (one query for the batch)."""
        if not uids:
            return set()
        stored = known.keys(self._keys(uidvalidity, uids))
        return {u for u in uids if f"{uidvalidity}/{u}" in stored}

    def acknowledge(self, batch: Batch) -> None:
        """keep_on_server false: flag the batch \\Deleted and expunge it (UIDPLUS) now."""
        if self.server.keep_on_server or not batch.done or self._client is None:
            return  # (no session: dropped after a server sent too much; the next poll)
        uids = [int(k.rpartition("/")[2]) for k in batch.done]
        self._call("fetch", self._client.add_flags, uids, [imapclient.DELETED], silent=True)
        if self._uidplus:
            self._call("fetch", self._client.uid_expunge, uids)
        else:
            self._expunge_pending = True

    def end_poll(self) -> None:
        """Without UIDPLUS, one EXPUNGE after the poll (it removes every \\Deleted)."""
        if self._expunge_pending and self._client is not None:
            self._expunge_pending = False
            self._call("fetch", self._client.expunge)

    # -- IDLE ------------------------------------------------------------------------

    def wait(self, timeout: float, cursor: Cursor, stop: threading.Event | None) -> bool:
        """Wait in IDLE until the server reports EXISTS (True) or ``timeout`` passes.

        Mail that came after the last poll is looked for first, so none waits for the
        next notification. IDLE is re-issued every ``idle_renew`` seconds (< 29 min).
        (An EXISTS that reaches the client in the same read as the IDLE continuation is
        seen at the next renewal or timeout at the latest; the caller polls then anyway.)
        """
        self._retire_expiring()
        if self._client is None:
            self._connect()
        if self._renew_at is not None:
            # IDLE ends before the token does; the next poll reconnects with a new one.
            timeout = max(0.0, min(timeout, self._renew_at - time.time()))
        if not self.supports_idle:
            if stop is not None:
                stop.wait(timeout)
            else:
                time.sleep(timeout)
            return False
        # Mail that came since the last poll: STATUS sees it; then SELECT's UIDNEXT sees
        # what came meanwhile; after the SELECT, the server reports changes to IDLE.
        if not self._nothing_new(cursor):
            return True
        uidnext = self._select().get(b"UIDNEXT")
        if uidnext is not None and int(uidnext) > cursor.last_uid + 1:
            return True
        return imapidle.idle(self._client, self._call, self._where, timeout, stop,
                             self._idle_renew)

    # -- helpers ---------------------------------------------------------------------

    def _search(self, uid_range: str) -> list[int]:
        """The UIDs in ``uid_range``, each once and in order: a server that names a UID
        twice would otherwise have it fetched and stored twice, which the store refuses
        (and so every poll after it)."""
        found: list[int] = self._call("fetch", self._client.search, ["UID", uid_range])
        uids = sorted({int(u) for u in found})
        if len(uids) < len(found):
            log.warning("%s: folder %s: the server named %d UID(s) more than once in a "
                        "UID SEARCH answer; each is fetched once", self._where, self.folder,
                        len(found) - len(uids))
        return uids

    def _sizes(self, uids: Sequence[int]) -> dict[int, int]:
        """RFC822.SIZE of each of ``uids`` (one FETCH), checked before a body is asked
        for; the sequence numbers come with it, to name a message the server lies about."""
        self._seqs = {}
        if not uids:
            return {}
        sizes: dict[int, int] = {}
        for uid, item in self._fetch(uids, ["RFC822.SIZE"]).items():
            # A server that leaves the size out: 0, fetched (the literal's bound holds).
            sizes[uid] = int(item.get(b"RFC822.SIZE") or 0)
            if b"SEQ" in item:
                self._seqs[int(item[b"SEQ"])] = uid
        return sizes

    def _bodies(self, uidvalidity: int, uids: Sequence[int], sizes: dict[int, int],
                ) -> tuple[dict[int, dict[bytes, Any]], Skipped | None]:
        """The bodies of ``uids`` (one FETCH), and the message the server sent more than
        max_message_size for, if it did (the connection is then dropped; the caller
        yields what is known and ends the poll). ConnectError when that message cannot
        be named (and the next poll fetches one message per FETCH to find it)."""
        if not uids:
            return {}, None
        client = self._client
        items = ["BODY.PEEK[]"]
        if self._one_by_one and len(uids) > 1:
            bodies: dict[int, dict[bytes, Any]] = {}
            for one in uids:
                more, lied = self._bodies(uidvalidity, [one], sizes)
                bodies.update(more)
                if lied is not None:
                    return bodies, lied
            return bodies, None
        try:
            data: dict[int, dict[bytes, Any]] = self._call("fetch", client.fetch, list(uids),
                                                           items)
            return data, None
        except ConnectError as error:  # (the session is closed)
            failure = error
        over = client.wire.oversized
        if over is None:
            raise failure  # outside the except block: nothing is chained
        size, seq, named = over
        uid: int | None = named
        if uid is None and seq is not None:
            uid = self._seqs.get(seq)
        if uid is None and len(uids) == 1:
            uid = uids[0]
        if uid is None or uid not in uids:
            self._one_by_one = True
            raise ConnectError(f"{self._where}: the server sent {size} bytes for one "
                               f"message, more than max_message_size "
                               f"({self.server.max_message_size}); the next poll fetches "
                               "one message at a time to find which", "protocol")
        self._one_by_one = False
        return {}, Skipped(f"{uidvalidity}/{uid}", "oversized_literal", size)

    def _fetch(self, uids: Sequence[int], items: list[str]) -> dict[int, dict[bytes, Any]]:
        data: dict[int, dict[bytes, Any]] = self._call("fetch", self._client.fetch,
                                                       list(uids), items)
        return data

    @staticmethod
    def _keys(uidvalidity: int, uids: Sequence[int]) -> tuple[str, ...]:
        return tuple(f"{uidvalidity}/{u}" for u in uids)

    def _translate(self, exc: BaseException, phase: str) -> ConnectError:
        """A wire error as ConnectError; a folder that cannot be opened named as such."""
        error = translate(exc, self.server, phase)
        if phase == "folder" and error.kind == "folder":
            error = ConnectError(f"{self._where}: cannot open folder {self.folder!r}: "
                                 f"{_COMMAND_FAILED.sub('', server_text(exc))}", "folder")
        return error


