"""The admin console's WSGI application: routing, logins, sessions, roles, CSRF.

Every page needs a session (else a redirect to ``/login``); every POST needs a session
(else 403), a CSRF token of that session (else 403) and a request of the console's own
origin, and an operator's action the role ``operator`` (else 403). The user and role are
read from the configuration in force at each request: a user removed or demoted by a
reload loses the access at once. The pages themselves are :mod:`mailsync.web.pages`
(History, Message), :mod:`~mailsync.web.queue`, :mod:`~mailsync.web.inbox`,
:mod:`~mailsync.web.activities`, :mod:`~mailsync.web.servers` and
:mod:`~mailsync.web.settings` (Configuration): :data:`PAGES` and :data:`POSTS` route to
them.
"""

from __future__ import annotations

import logging
import re
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from mailsync.auth.tokens import TokenCache
from mailsync.config.admin import AdminUser
from mailsync.config.model import Config
from mailsync.config.tree import StoreBackend
from mailsync.errors import MailsyncError
from mailsync.outbound.queue import OutboundStore
from mailsync.store import Store
from mailsync.values import valueclass
from mailsync.web import activities, inbox, pages, passwords, queue, servers, settings
from mailsync.web.http import (
    Request,
    Response,
    StartResponse,
    TooLarge,
    cookie,
    redirect,
    text,
)
from mailsync.web.sessions import Session, Sessions
from mailsync.web.status import DaemonStatus, no_status
from mailsync.web.throttle import Throttle

log = logging.getLogger("mailsync.web")

LOGIN_COOKIE = "mailsync_login"   # the login form's nonce, for its CSRF token
STATIC = Path(__file__).parent / "static"
STATIC_FILES = {"/static/admin.css": "text/css; charset=utf-8",
                "/static/favicon.svg": "image/svg+xml",
                "/favicon.ico": "image/svg+xml"}   # asked for by browsers, whatever a page says
Page = Callable[["App", Request, "Visitor"], Response]
PAGES: dict[str, Page] = {"/history": pages.history, "/history.csv": pages.history_csv,
                          "/queue": queue.page,
                          "/inbox": inbox.page, "/activities": activities.page,
                          "/servers": servers.page, "/config": settings.page}
# The operators' forms that are not a message's button (those: _MESSAGE).
POSTS: dict[str, Page] = {"/queue": queue.bulk, "/activities/done": activities.done,
                          activities.UPLOAD_PATH: activities.upload,
                          "/servers/test": servers.test}
# The one form with a file: an operator's document, and the form's fields beside it.
UPLOAD_BODY = activities.UPLOAD_LIMIT + 64 * 1024
_MESSAGE = re.compile(r"^/messages/([0-9]{1,18})(?:/(html|raw|parts/[0-9]{1,4}|retry|hold|"
                      r"release|delete))?$")


@valueclass
class Visitor:
    """Who is asking: the session and the configured user it belongs to."""

    session: Session
    user: AdminUser

    @property
    def operator(self) -> bool:
        return self.user.role == "operator"


class Readers:
    """Read-only connections to the store, one per request at a time: the console's
    reads never wait on (nor hold) the daemon's connection, which its senders use."""

    def __init__(self, state_dir: Path, backend: StoreBackend | None = None) -> None:
        self._state_dir = state_dir
        self._backend = backend   # daemon.store: None is SQLite in state_dir
        self._free: list[OutboundStore] = []
        self._lock = threading.Lock()

    @contextmanager
    def __call__(self) -> Iterator[OutboundStore]:
        with self._lock:
            reader = self._free.pop() if self._free else None
        if reader is None:
            reader = OutboundStore(Store.open(self._state_dir, readonly=True,
                                              backend=self._backend))
        try:
            yield reader
        except sqlite3.Error:
            reader.store.close()
            raise
        with self._lock:
            self._free.append(reader)

    def close(self) -> None:
        with self._lock:
            for reader in self._free:
                reader.store.close()
            self._free.clear()


class App:
    """The console as a WSGI callable. ``config`` is the configuration in force,
    ``reads`` lends a read-only store, ``writes`` is the daemon's (for the operators'
    actions), ``wake`` tells the senders a message is due now, ``status`` is what the
    daemon knows of its servers and reloads, ``tokens`` the OAuth2 token cache the
    connection tests log in with."""

    def __init__(self, config: Callable[[], Config],
                 reads: Callable[[], AbstractContextManager[OutboundStore]],
                 writes: OutboundStore, sessions: Sessions, *,
                 wake: Callable[[], None] = lambda: None,
                 throttle: Throttle | None = None,
                 status: Callable[[], DaemonStatus] = no_status,
                 tokens: TokenCache | None = None) -> None:
        self.config = config
        self.reads = reads
        self.writes = writes
        self.sessions = sessions
        self.wake = wake
        self.throttle = throttle or Throttle()
        self.status = status
        self.tokens = tokens or TokenCache(state_dir=config().daemon.state_dir)
        self.test_limit = servers.TEST_LIMIT
        self.templates = Environment(loader=PackageLoader("mailsync.web", "templates"),
                                     autoescape=select_autoescape(default=True),
                                     undefined=StrictUndefined, trim_blocks=True,
                                     lstrip_blocks=True)

    def __repr__(self) -> str:
        return "App(admin console)"

    @property
    def secure(self) -> bool:
        """Whether the console is reached over TLS (its own or a proxy's), as the
        configuration says: cookies are then Secure."""
        admin = self.config().admin
        return admin is not None and admin.tls

    @property
    def session_cookie(self) -> str:
        # __Host-: the browser keeps it only if Secure, for this host and path / alone.
        return "__Host-mailsync_session" if self.secure else "mailsync_session"

    # -- WSGI --------------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: StartResponse
                 ) -> Iterable[bytes]:
        request = Request(environ)
        try:
            response = self.handle(request)
        except Exception:  # noqa: BLE001 - a page that fails is a 500, the daemon goes on
            log.exception("admin console: %s %s failed", request.method, request.path)
            response = self.page(500, "error.html", None, title="Error",
                                 message="The page failed; the daemon's log says why.")
        admin = self.config().admin
        return response.send(start_response, hsts=admin is not None
                             and admin.tls_cert_file is not None)

    def handle(self, request: Request) -> Response:
        path, method = request.path, request.method
        if path in STATIC_FILES and method == "GET":
            name = "favicon.svg" if path == "/favicon.ico" else path.rsplit("/", 1)[1]
            return Response(200, (STATIC / name).read_bytes(), STATIC_FILES[path],
                            cache="max-age=3600")
        if path == "/login":
            return self.login(request)
        visitor = self.visitor(request)
        if path == activities.UPLOAD_PATH and visitor is not None and visitor.operator:
            request.max_body = UPLOAD_BODY
        if method == "POST":
            refused = self._refuse_post(request, visitor)
            if refused is not None:
                return refused
        elif method != "GET":
            return text(405, f"{method} is not allowed here (GET or POST)")
        if visitor is None:
            return redirect("/login?next=" + _next_path(request))
        if path == "/logout" and method == "POST":
            self.sessions.revoke(visitor.session)
            return redirect("/login", [cookie(self.session_cookie, "", secure=self.secure,
                                              max_age=0)])
        if path == "/" and method == "GET":
            return redirect("/history")
        if method == "GET" and path in PAGES:
            return PAGES[path](self, request, visitor)
        if method == "POST" and path in POSTS:
            if not visitor.operator:
                return self._forbidden(visitor, path.strip("/").replace("/", " "))
            return POSTS[path](self, request, visitor)
        found = _MESSAGE.match(path)
        if found is not None:
            mid, what = int(found.group(1)), found.group(2) or ""
            if method == "POST" and what in pages.ACTION_NAMES:
                if not visitor.operator:
                    return self._forbidden(visitor, what)
                return pages.action(self, visitor, mid, what)
            if method == "GET" and what not in pages.ACTION_NAMES:
                return pages.message(self, request, visitor, mid, what)
        return self.page(404, "error.html", visitor, title="Not found",
                         message=f"Nothing at {path}.")

    def _forbidden(self, visitor: Visitor, what: str) -> Response:
        return self.page(403, "error.html", visitor, title="Forbidden",
                         message=f"{what} needs the operator role; "
                         f"{visitor.user.name} is a {visitor.user.role}.")

    def _refuse_post(self, request: Request, visitor: Visitor | None) -> Response | None:
        if visitor is None:
            return text(403, "not logged in (log in at /login first)")
        if not request.same_origin():
            return text(403, "refused: the form was not sent from the console's own pages")
        try:
            token = request.form.get("csrf")
        except TooLarge as exc:
            request.discard()
            return text(413, f"refused: {exc}")
        except ValueError as exc:
            return text(400, f"refused: {exc}")
        if not self.sessions.csrf_ok(visitor.session.sid, token):
            return text(403, "refused: the form's CSRF token is missing or wrong; reload "
                        "the page and try again")
        return None

    # -- who is asking -------------------------------------------------------------------
    def visitor(self, request: Request) -> Visitor | None:
        """The logged-in user of this request, None when there is none (no cookie, a
        forged or expired one, a user no longer configured or whose password changed)."""
        session = self.sessions.check(request.cookies.get(self.session_cookie))
        if session is None:
            return None
        admin = self.config().admin
        user = admin.user(session.user) if admin is not None else None
        if user is None:
            return None
        hashed = _password_hash(user)
        if hashed is None or self.sessions.fingerprint(hashed) != session.fingerprint:
            return None
        return Visitor(session, user)

    def login(self, request: Request) -> Response:
        """GET: the form (and its nonce cookie); POST: check the password, throttled."""
        nonce = request.cookies.get(LOGIN_COOKIE) or ""
        headers: list[tuple[str, str]] = []
        if len(nonce) < 16:
            nonce = secrets.token_urlsafe(16)
            headers.append(cookie(LOGIN_COOKIE, nonce, secure=self.secure, max_age=3600))
        target = _safe_next(request.query.get("next"))
        if request.method == "GET":
            response = self.page(200, "login.html", None, title="Log in", error=None,
                                 name="", next=target, csrf=self.sessions.csrf("login:" + nonce))
            response.headers.extend(headers)
            return response
        if request.method != "POST":
            return text(405, f"{request.method} is not allowed here (GET or POST)")
        try:
            form = request.form
        except ValueError as exc:
            return text(413, f"refused: {exc}")
        if not request.same_origin() or not self.sessions.csrf_ok(
                "login:" + (request.cookies.get(LOGIN_COOKIE) or ""), form.get("csrf")):
            return text(403, "refused: the login form's CSRF token is missing or wrong; "
                        "reload the login page and try again")
        name = form.get("name", "")[:200]
        target = _safe_next(form.get("next"))

        def again(status: int, error: str) -> Response:
            return self.page(status, "login.html", None, title="Log in", error=error,
                             name=name, next=target, csrf=self.sessions.csrf("login:" + nonce))

        wait = self.throttle.wait(name, request.address)
        if wait > 0:
            log.warning("admin console: login of %r from %s throttled", name, request.address)
            response = again(429, f"Too many failed logins: try again in {int(wait) + 1} s.")
            response.headers.append(("Retry-After", str(int(wait) + 1)))
            return response
        admin = self.config().admin
        user = admin.user(name) if admin is not None else None
        hashed = _password_hash(user) if user is not None else None
        if not passwords.verify(hashed, form.get("password", "")) or user is None \
                or hashed is None:
            self.throttle.failed(name, request.address)
            log.warning("admin console: failed login of %r from %s", name, request.address)
            return again(401, "Wrong name or password.")
        self.throttle.succeeded(name)
        value, session = self.sessions.issue(user.name, hashed)
        log.info("admin console: %s (%s) logged in from %s", user.name, user.role,
                 request.address)
        return redirect(target, [cookie(self.session_cookie, value, secure=self.secure,
                                        max_age=int(self.sessions.lifetime))])

    # -- rendering ---------------------------------------------------------------------
    def page(self, status: int, template: str, visitor: Visitor | None,
             **context: Any) -> Response:
        """A page from ``template``, autoescaped, with the visitor and its CSRF token."""
        html = self.templates.get_template(template).render(
            visitor=visitor, csrf=self.sessions.csrf(visitor.session.sid) if visitor
            else context.pop("csrf", ""), **context)
        return Response(status, html.encode())


def _password_hash(user: AdminUser) -> str | None:
    """The user's password hash, read now (a rotated file applies at once); None, and
    logged without the value, when it cannot be read or is no argon2id hash."""
    try:
        hashed = user.password_hash.resolve()
    except MailsyncError as exc:
        log.error("admin user %s: password_hash %s: %s", user.name,
                  user.password_hash.describe(), exc)
        return None
    problem = passwords.problem(hashed)
    if problem is not None:
        log.error("admin user %s: password_hash %s is %s", user.name,
                  user.password_hash.describe(), problem)
        return None
    return hashed


def _safe_next(value: str | None) -> str:
    """Where to go after logging in: a path of the console only (never ``//host``)."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/history"


def _next_path(request: Request) -> str:
    query = request.environ.get("QUERY_STRING") or ""
    return quote(request.path + (f"?{query}" if query else ""), safe="")
