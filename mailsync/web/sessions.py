"""Signed session cookies and CSRF tokens of the admin console.

A session is a cookie holding ``{user, session id, expiry, password fingerprint}``,
signed with HMAC-SHA256; nothing about it is kept on the server but the ids of sessions
logged out before their expiry (:meth:`Sessions.revoke`): in memory, and in the store
(:class:`Logouts`, the table of :mod:`mailsync.store.logouts`), so that a cookie logged
out stays logged out after a restart and on every node sharing the store. (Before, they
were in ``state_dir/admin-revoked-sessions``: :func:`read_revoked` reads that file once,
at the console's start, into the store.)
The fingerprint is an HMAC of the user's password hash, so that a changed password ends
the user's other sessions; the role is never in the cookie, but read from the
configuration in force at each request. A form's CSRF token is an HMAC of the session id
(of a login nonce, on the login form): a page of another site can neither read nor make
one.

The key (:func:`load_key`): ``admin.session_key`` when set, else
``state_dir/admin-session.key``, 32 random bytes made at the first start (0600) and
kept, so that a restart does not sign everyone out; deleting it does (at the next start).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

from mailsync.config.secrets import Secret
from mailsync.errors import ConfigError
from mailsync.values import valueclass

log = logging.getLogger("mailsync.web")

KEY_FILE = "admin-session.key"
REVOKED_FILE = "admin-revoked-sessions"
KEY_MODE = 0o600
MIN_KEY = 32


@valueclass
class Session:
    """A logged-in user's session, as its cookie says."""

    user: str
    sid: str
    expires: float
    fingerprint: str


def load_key(state_dir: Path, configured: Secret | None) -> bytes:
    """The key signing the sessions: ``admin.session_key`` (at least 32 characters), or
    the one in ``state_dir/admin-session.key``, made now if missing. ConfigError names
    the reference (never its value) when it is too short."""
    if configured is not None:
        value = configured.resolve()
        if len(value) < MIN_KEY:
            raise ConfigError(f"admin.session_key {configured.describe()} is {len(value)} "
                              f"characters long; at least {MIN_KEY} are needed (e.g. "
                              "`openssl rand -hex 32`)")
        return value.encode()
    path = state_dir / KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, KEY_MODE)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & ~KEY_MODE:
            os.chmod(path, KEY_MODE)
            log.warning("%s was mode %04o: now 0600", path, mode)
        key = path.read_bytes().strip()
        if len(key) >= MIN_KEY:
            return key
        log.warning("%s holds no key: a new one is made (every session ends)", path)
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    key = secrets.token_hex(32).encode()
    try:
        os.fchmod(fd, KEY_MODE)  # whatever the umask
        os.write(fd, key + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sessions:
    """Makes and checks session cookies and CSRF tokens with one key."""

    def __init__(self, key: bytes, lifetime: float,
                 clock: Callable[[], float] = time.time, *,
                 logouts: Logouts | None = None) -> None:
        self._key = key
        self.lifetime = lifetime
        self._clock = clock
        self._revoked: dict[str, float] = {}  # sid -> expiry: this console's logouts
        self._lock = threading.Lock()
        self._logouts = logouts

    def __repr__(self) -> str:
        return f"Sessions(lifetime={self.lifetime:g}s, key=***)"

    def _mac(self, purpose: str, text: str) -> str:
        return _b64(hmac.new(self._key, f"{purpose}\0{text}".encode(), hashlib.sha256).digest())

    def fingerprint(self, password_hash: str) -> str:
        """A stand-in for a password hash in the cookie: changes when the hash does,
        says nothing of it."""
        return self._mac("password", password_hash)[:22]

    def issue(self, user: str, password_hash: str) -> tuple[str, Session]:
        """A new session of ``user``: the cookie's value and what it holds."""
        session = Session(user, secrets.token_urlsafe(16), self._clock() + self.lifetime,
                          self.fingerprint(password_hash))
        body = _b64(json.dumps({"u": session.user, "s": session.sid,
                                "e": int(session.expires), "p": session.fingerprint},
                               separators=(",", ":")).encode())
        return f"{body}.{self._mac('session', body)}", session

    def check(self, value: str | None) -> Session | None:
        """The session of a cookie's value; None when unsigned, forged, expired or
        logged out."""
        if not value or value.count(".") != 1:
            return None
        body, mac = value.split(".")
        if not hmac.compare_digest(mac, self._mac("session", body)):
            return None
        try:
            d = json.loads(_unb64(body))
            session = Session(str(d["u"]), str(d["s"]), float(d["e"]), str(d["p"]))
        except (ValueError, KeyError, TypeError, binascii.Error):
            return None
        now = self._clock()
        if session.expires <= now:
            return None
        with self._lock:
            if session.sid in self._revoked:
                return None
        if self._logouts is not None and self._logouts.contains(session.sid, now):
            return None  # logged out after a restart, or through another node's console
        return session

    def revoke(self, session: Session) -> None:
        """Log ``session`` out: its cookie is refused from now on, also after a restart
        and by the other nodes' consoles (the id is committed to the store before this
        returns)."""
        now = self._clock()
        with self._lock:
            self._revoked = {s: e for s, e in self._revoked.items() if e > now}
            self._revoked[session.sid] = session.expires
        if self._logouts is not None:
            self._logouts.record([(session.sid, session.expires)], now)

    def csrf(self, sid: str) -> str:
        """The CSRF token of the forms of session ``sid`` (or of a login nonce)."""
        return self._mac("csrf", sid)

    def csrf_ok(self, sid: str, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(str(token), self.csrf(sid))


class Logouts(Protocol):
    """Where the logouts are kept beyond this process: the store (web/console.py)."""

    def record(self, logouts: Iterable[tuple[str, float]], now: float) -> None:
        """Keep the sessions ``(sid, expiry)`` logged out (committed when it returns)."""

    def contains(self, sid: str, now: float) -> bool:
        """Whether session ``sid`` was logged out and would not have expired by now."""


def read_revoked(path: Path, now: float) -> dict[str, float]:
    """The sessions logged out and not yet expired that the file of earlier releases,
    ``state_dir/admin-revoked-sessions`` (an ``id expiry`` line each), records (sid ->
    expiry); none when there is no file. A line that does not parse (a write cut short
    by a crash) is skipped."""
    try:
        text = path.read_text("ascii", "replace")
    except FileNotFoundError:
        return {}
    revoked: dict[str, float] = {}
    for line in text.splitlines():
        sid, _, expiry = line.partition(" ")
        try:
            when = float(expiry)
        except ValueError:
            continue
        if sid and when > now:
            revoked[sid] = when
    return revoked
