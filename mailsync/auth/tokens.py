"""The access-token cache: one token per OAuth2 identity, shared by every session and
thread of the process, refreshed ahead of its expiry by a single request.

Sessions ask ``TokenCache.source(name, settings).token(min_valid)``. When the cached token
nears its end, the first caller refreshes it and the others wait for that one answer
(single flight: never a herd of requests at the endpoint), or go on with the current
token while it is still valid for what they asked. A failed refresh is kept and answered
again without a request until its backoff has passed: 1 s, 2 s, 4 s ... up to 60 s for an
endpoint that is down or slow (:class:`~mailsync.errors.OAuth2Unavailable`), 5 minutes for
a refusal (:class:`~mailsync.errors.OAuth2Refused`), which is retried at once when
``mailsync auth login`` has written a new refresh token meanwhile.

The ``observer`` hears of every request to the endpoint: ``on_refresh(name, result,
expires_at)`` with ``result`` ``"ok"`` or the error's ``reason``, and the new token's
expiry (epoch seconds, None on failure), once per name that uses the identity: the
daemon counts ``mailsync_oauth2_token_refreshes_total`` and sets the expiry gauge there.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from mailsync.auth.grants import DEFAULT_TIMEOUT, AccessToken, GrantContext, fetch
from mailsync.auth.settings import OAuth2
from mailsync.auth.store import RefreshTokenFile
from mailsync.errors import ConnectError, OAuth2Error, OAuth2Unavailable

log = logging.getLogger("mailsync.auth")

Fetcher = Callable[[OAuth2, GrantContext], AccessToken]


class RefreshObserver(Protocol):
    """Told of each token request: ``result`` is ``"ok"`` or an OAuth2Error's reason."""

    def __call__(self, name: str, result: str, expires_at: float | None) -> None: ...


def backoff(failures: int, first: float = 1.0, most: float = 60.0) -> float:
    """Seconds to wait after the ``failures``-th temporary failure in a row (pure)."""
    return float(min(most, first * 2 ** max(failures - 1, 0)))


def _copy(error: OAuth2Error) -> OAuth2Error:
    """A new exception like ``error``: one instance raised in several threads would mix
    their tracebacks."""
    return type(error)(str(error), error.reason, error.detail)


class _Entry:
    """The shared state of one identity (guarded by ``cond``)."""

    def __init__(self, name: str, login: str, settings: OAuth2, cache: TokenCache) -> None:
        self.settings = settings
        self.names = [name]
        self.cache = cache
        self.cond = threading.Condition()
        self.token: AccessToken | None = None
        self.refreshing = False
        self.round = 0                   # refreshes finished, successful or not
        self.error: OAuth2Error | None = None
        self.failures = 0
        self.retry_at = 0.0
        self.login_stamp: tuple[int, int] | None = None
        self.ctx = GrantContext(login, cache.state_dir, cache.environ, cache.base_dir,
                                cache.timeout, cache.clock)

    def login_file(self) -> RefreshTokenFile | None:
        if self.settings.grant != "refresh_token" or self.cache.state_dir is None:
            return None
        return RefreshTokenFile(self.cache.state_dir, self.ctx.name)

    def login_changed(self) -> bool:
        """A refused refresh token may have been replaced by ``mailsync auth login``."""
        login = self.login_file()
        return login is not None and login.stamp() != self.login_stamp


class TokenSource:
    """The handle a session keeps: the token of its identity, under its own name."""

    def __init__(self, name: str, entry: _Entry) -> None:
        self.name = name
        self._entry = entry

    def __repr__(self) -> str:
        return f"TokenSource({self.name!r})"

    def _fresh(self, token: AccessToken, now: float, min_valid: float) -> bool:
        """No refresh needed yet: a token is renewed ``ahead`` seconds before it would no
        longer serve ``min_valid``, at the latest halfway through its life."""
        left = token.expires_at - now
        return left >= min(min_valid + self._entry.cache.ahead, token.lifetime / 2)

    @staticmethod
    def _usable(token: AccessToken, now: float, min_valid: float) -> bool:
        return token.expires_at - now >= min(min_valid, token.lifetime / 2)

    def token(self, min_valid: float = 60.0) -> AccessToken:
        """A token valid for ``min_valid`` more seconds (or half its lifetime, if the
        endpoint grants shorter ones). Raises OAuth2Unavailable or OAuth2Refused."""
        e = self._entry
        with e.cond:
            while True:
                now = e.cache.clock()
                current = e.token
                if current is not None and self._fresh(current, now, min_valid):
                    return current
                usable = (current if current is not None
                          and self._usable(current, now, min_valid) else None)
                if e.refreshing:
                    if usable is not None:
                        return usable
                    outcome = self._wait(e)
                    if outcome is not None:
                        return outcome
                    continue
                if (e.error is not None and now < e.retry_at
                        and not (e.error.permanent and e.login_changed())):
                    if usable is not None:
                        return usable
                    raise _copy(e.error)
                e.refreshing = True
                break
        return self._refresh(e, usable)

    def _wait(self, e: _Entry) -> AccessToken | None:
        """Wait (holding ``e.cond``) for the refresh under way, and take its outcome (None:
        its token was invalidated at once, look again)."""
        seen = e.round
        deadline = time.monotonic() + 3 * e.cache.timeout + 5
        while e.round == seen:
            left = deadline - time.monotonic()
            if left <= 0:
                raise OAuth2Unavailable(
                    f"OAuth2: no answer from the token endpoint {e.settings.token_url} "
                    f"within {3 * e.cache.timeout + 5:g} s", "timeout")
            e.cond.wait(left)
        if e.error is not None:
            raise _copy(e.error)
        return e.token

    def _refresh(self, e: _Entry, usable: AccessToken | None) -> AccessToken:
        """Ask the endpoint (this thread alone: ``e.refreshing`` is set), outside the lock."""
        try:
            new = e.cache.fetcher(e.settings, e.ctx)
        except OAuth2Error as exc:
            with e.cond:
                e.failures += 1
                e.error = exc
                wait = (e.cache.refused_retry if exc.permanent
                        else backoff(e.failures, most=e.cache.max_backoff))
                e.retry_at = e.cache.clock() + wait
                login = e.login_file()
                e.login_stamp = login.stamp() if login is not None else None
                self._done(e)
                names = list(e.names)
            self._tell(names, exc.reason, None)
            if usable is not None and usable is e.token:
                return usable
            raise
        except BaseException:
            with e.cond:
                self._done(e)
            raise
        with e.cond:
            e.token, e.error, e.failures, e.retry_at = new, None, 0, 0.0
            self._done(e)
            names = list(e.names)
        self._tell(names, "ok", new.expires_at)
        return new

    @staticmethod
    def _done(e: _Entry) -> None:
        e.refreshing = False
        e.round += 1
        e.cond.notify_all()

    def _tell(self, names: list[str], result: str, expires_at: float | None) -> None:
        observer = self._entry.cache.observer
        if observer is None:
            return
        for name in names:
            try:
                observer(name, result, expires_at)
            except Exception:
                log.exception("OAuth2 refresh observer failed for %s", name)

    def invalidate(self, token: AccessToken) -> None:
        """The server refused ``token``: the next :meth:`token` asks for a new one (unless
        another thread has already replaced it)."""
        e = self._entry
        with e.cond:
            if e.token is not None and e.token.value == token.value:
                e.token = None


class TokenCache:
    """The tokens of one process (the daemon makes one and hands it to every session)."""

    def __init__(
        self,
        *,
        state_dir: Path | None = None,
        environ: Mapping[str, str] | None = None,
        base_dir: Path | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        ahead: float = 30.0,
        max_backoff: float = 60.0,
        refused_retry: float = 300.0,
        observer: RefreshObserver | None = None,
        clock: Callable[[], float] = time.time,
        fetcher: Fetcher = fetch,
    ) -> None:
        self.state_dir = state_dir
        self.environ = environ
        self.base_dir = base_dir
        self.timeout = timeout
        self.ahead = ahead
        self.max_backoff = max_backoff
        self.refused_retry = refused_retry
        self.observer = observer
        self.clock = clock
        self.fetcher = fetcher
        self._entries: dict[tuple[str, ...], _Entry] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TokenCache({len(self._entries)} identities)"

    def source(self, name: str, settings: OAuth2, login: str | None = None) -> TokenSource:
        """The token source of ``settings`` for the server (or account) ``name``: the name
        the observer hears. Sources of the same identity share one token. A refresh-token
        grant keeps its refresh token in ``tokens/<login>.json`` (``login`` defaults to
        ``name``; it is the NAME of ``mailsync auth login NAME``), and sources share it only
        with the same login: servers of one signed-in user should be given one login."""
        login = login or name
        key = settings.identity()
        if settings.grant == "refresh_token":
            key += ("login", login)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry(name, login, settings, self)
            elif name not in entry.names:
                entry.names.append(name)
        return TokenSource(name, entry)


# What a mail session (SMTP, IMAP, POP3) asks of the cache: a token valid at least this
# long (or half its life), and to be replaced this long before the token expires (at
# most; a quarter of the life of a short-lived token).
SESSION_MIN_VALID = 60.0
SESSION_RENEW_MARGIN = 60.0


def session_token(source: TokenSource, where: str) -> AccessToken:
    """A token for a new session; ConnectError(kind="oauth2") naming ``where`` when none
    can be had (the token endpoint's fault, not the mail server's)."""
    try:
        return source.token(min_valid=SESSION_MIN_VALID)
    except OAuth2Error as exc:
        raise ConnectError(f"{where}: {exc}", "oauth2") from None


def renew_at(token: AccessToken) -> float:
    """When a session logged in with ``token`` is to be replaced (time.time())."""
    return token.expires_at - min(SESSION_RENEW_MARGIN, token.lifetime / 4)
