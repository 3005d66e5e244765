"""A real OAuth2 authorization server for tests: stdlib HTTP in a thread on 127.0.0.1.

Use the ``oauth2_server`` factory fixture (or :class:`OAuth2Server` as a context manager)::

    from tests.oauth2server import oauth2_server_fixture  # noqa: F401 (fixture "oauth2_server")

    def test_x(oauth2_server):
        authority = oauth2_server(lifetime=20, rotate_refresh_tokens=True)
        authority.add_client("app", "s3cret", user="user1@example.com")
        ...  # POST authority.token_url; the mail servers check tokens at introspection_url

Endpoints (all ``POST``, application/x-www-form-urlencoded, JSON answers, RFC 6749 errors
``{"error": CODE, "error_description": TEXT}`` with HTTP 400, 401 for invalid_client):

``/token``
    ``grant_type`` client_credentials, refresh_token, device_code
    (``urn:ietf:params:oauth:grant-type:device_code``) and JWT bearer
    (``urn:ietf:params:oauth:grant-type:jwt-bearer``, Google service accounts). Clients
    authenticate with client_secret_post (``client_id`` + ``client_secret`` in the form) or
    HTTP Basic; public clients (no secret) send ``client_id`` alone; JWT bearer needs no
    client. A success is ``{"access_token", "token_type": "Bearer", "expires_in", "scope"}``
    plus ``refresh_token`` from the device grant, and from the refresh grant only when
    rotating (without rotation the old refresh token stays valid and none is returned).
``/devicecode``
    RFC 8628 device authorization: ``client_id``, ``scope`` → ``device_code``,
    ``user_code``, ``verification_uri``, ``verification_uri_complete``, ``expires_in``,
    ``interval``. Polling the token endpoint answers ``authorization_pending`` until the
    test calls :meth:`OAuth2Server.approve` (or ``deny`` → ``access_denied``), ``slow_down``
    when polled sooner than ``interval`` after the last poll (the interval then grows by
    ``slow_down_step``), ``expired_token`` after ``expires_in``; a used code is invalid_grant.
``/introspect``
    RFC 7662: ``token`` → ``{"active": true, "username", "sub", "scope", "client_id",
    "token_type", "exp", "iat"}`` or ``{"active": false}`` (unknown, expired or revoked).

Access and refresh tokens are random opaque strings; an access token belongs to a user
(the name a mail server must see in the SASL string) and expires ``lifetime`` seconds
after issue (``expires_in`` is that, rounded up). Every request is recorded
(:class:`Request`: endpoint, grant type, client, time, status, error), so a test can
assert "exactly one refresh per expiry". Failures are injected with :meth:`fail_next`.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from typing import Any

import pytest

from tests.oauth2jwt import OAuth2Error, ServiceAccount, verify_assertion
from tests.oauth2wire import (  # noqa: F401  (post_form and the SASL strings: re-exported)
    client_credentials,
    handler_class,
    oauthbearer_string,
    post_form,
    xoauth2_string,
)

HOST = "127.0.0.1"
CLIENT_CREDENTIALS = "client_credentials"
REFRESH_TOKEN = "refresh_token"
DEVICE_CODE = "urn:ietf:params:oauth:grant-type:device_code"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


@dataclass(frozen=True)
class Request:
    """One request the server answered (recorded when answered: a stalled one comes after
    those answered meanwhile; ``time`` is when it arrived). ``error`` is the OAuth2 error
    code it answered (None on success); ``injected`` names the failure
    :meth:`OAuth2Server.fail_next` put in its place (``stall`` requests are then answered
    normally); ``client_auth`` is client_secret_post, client_secret_basic or none."""

    endpoint: str
    grant_type: str | None
    client_id: str | None
    client_auth: str
    time: float
    status: int
    error: str | None
    params: Mapping[str, str]
    injected: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class _Client:
    secret: str | None
    user: str | None
    scopes: frozenset[str] | None


@dataclass
class _Token:
    user: str
    client_id: str
    scope: str
    issued: float
    expires: float = math.inf
    revoked: bool = False


@dataclass
class _Device:
    client_id: str
    scope: str
    user_code: str
    expires: float
    interval: float
    last_poll: float = 0.0
    state: str = "pending"  # pending, approved, denied, used
    user: str | None = None


@dataclass
class _Failure:
    error: str
    endpoint: str
    seconds: float


@dataclass
class OAuth2Server:
    """The authorization server; a context manager. Settings may change while it runs.

    lifetime: seconds an access token lives. rotate_refresh_tokens: each refresh returns
    a new refresh token and revokes the one used. device_interval / device_expires_in /
    slow_down_step: the RFC 8628 timings (seconds).
    """

    lifetime: float = 3600.0
    rotate_refresh_tokens: bool = False
    device_interval: float = 0.0
    device_expires_in: float = 600.0
    slow_down_step: float = 5.0
    requests: list[Request] = field(default_factory=list)
    host: str = HOST
    port: int = 0

    def __post_init__(self) -> None:
        self._settings = (self.lifetime, self.rotate_refresh_tokens, self.device_interval,
                          self.device_expires_in, self.slow_down_step)
        self._lock = threading.Condition()
        self._stopping = threading.Event()
        self._clients: dict[str, _Client] = {}
        self._access: dict[str, _Token] = {}
        self._refresh: dict[str, _Token] = {}
        self._devices: dict[str, _Device] = {}
        self._accounts: dict[str, ServiceAccount] = {}
        self._failures: list[_Failure] = []
        self._http: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"OAuth2Server({self.url})"

    # -- where ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def token_url(self) -> str:
        return self.url + "/token"

    @property
    def device_url(self) -> str:
        return self.url + "/devicecode"

    @property
    def introspection_url(self) -> str:
        return self.url + "/introspect"

    # -- life -----------------------------------------------------------------------

    def start(self) -> OAuth2Server:
        """Listen on 127.0.0.1 (a free port the first time, the same one after stop())."""
        self._stopping.clear()
        self._http = ThreadingHTTPServer((self.host, self.port), handler_class(self._serve))
        self._http.daemon_threads = True
        self.port = int(self._http.server_address[1])
        self._thread = threading.Thread(target=self._http.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name="oauth2server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and end stalls at once (idempotent); tokens and records stay."""
        self._stopping.set()
        http, self._http = self._http, None
        if http is not None:
            http.shutdown()
            http.server_close()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> OAuth2Server:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def reset(self) -> None:
        """As new, on the same port: the settings it was made with, no clients, tokens,
        device codes, service accounts, pending failures or records."""
        with self._lock:
            (self.lifetime, self.rotate_refresh_tokens, self.device_interval,
             self.device_expires_in, self.slow_down_step) = self._settings
            for table in (self._clients, self._access, self._refresh, self._devices,
                          self._accounts):
                table.clear()
            self._failures.clear()
            self.requests.clear()

    # -- what it knows --------------------------------------------------------------

    def add_client(self, client_id: str, secret: str | None = None, *, user: str | None = None,
                   scopes: Iterable[str] | None = None) -> None:
        """Register a client: confidential with ``secret``, public without. ``user`` is
        the mailbox its client_credentials tokens open (app-only access; without it that
        grant is unauthorized_client); ``scopes`` limits what it may ask (None: any)."""
        with self._lock:
            self._clients[client_id] = _Client(
                secret, user, frozenset(scopes) if scopes is not None else None)

    def refresh_token(self, user: str, client_id: str, scope: str = "") -> str:
        """A refresh token for ``user`` as if they had signed in to ``client_id``."""
        return self._issue(self._refresh, user, client_id, scope, math.inf)

    def access_token(self, user: str, *, scope: str = "", client_id: str = "test",
                     lifetime: float | None = None) -> str:
        """An access token for ``user`` minted directly (no request recorded)."""
        life = self.lifetime if lifetime is None else lifetime
        return self._issue(self._access, user, client_id, scope, time.time() + life)

    def service_account_key(self, client_email: str = "mailsync@test-project.iam"
                            ".gserviceaccount.com", *, scopes: list[str] | None = None
                            ) -> dict[str, str]:
        """A new Google-style service-account JSON key (as a dict) whose ``token_uri`` is
        this server; JWT bearer assertions signed with it are accepted. ``scopes``
        limits what it may ask (None: any)."""
        account = ServiceAccount.generate(client_email, scopes)
        with self._lock:
            self._accounts[account.key_id] = account
        return account.json_key(self.token_url)

    def introspect(self, token: str) -> dict[str, Any]:
        """What /introspect answers for ``token`` (no request recorded)."""
        with self._lock:
            got = self._access.get(token)
            if got is None or got.revoked or got.expires <= time.time():
                return {"active": False}
            return {"active": True, "username": got.user, "sub": got.user, "scope": got.scope,
                    "client_id": got.client_id, "token_type": "Bearer",
                    "exp": int(got.expires), "iat": int(got.issued)}

    def user_of(self, token: str) -> str | None:
        """The user an access or refresh token belongs to (None if unknown)."""
        with self._lock:
            got = self._access.get(token) or self._refresh.get(token)
            return got.user if got else None

    # -- what the test does -----------------------------------------------------------

    def approve(self, user: str, user_code: str | None = None) -> None:
        """The user signs in at the verification page and approves the device code
        (``user_code``; None: the only pending one)."""
        with self._lock:
            device = self._pending(user_code)
            device.state, device.user = "approved", user

    def deny(self, user_code: str | None = None) -> None:
        """The user refuses: the next poll answers access_denied."""
        with self._lock:
            self._pending(user_code).state = "denied"

    def expire_device_code(self, user_code: str | None = None) -> None:
        """Let the device code run out now: the next poll answers expired_token."""
        with self._lock:
            self._pending(user_code).expires = time.time()

    def pending_user_codes(self) -> list[str]:
        with self._lock:
            return [d.user_code for d in self._devices.values() if d.state == "pending"]

    def expire_access_tokens(self, user: str | None = None) -> None:
        """Every access token (of ``user``) expires now, without waiting."""
        now = time.time()
        with self._lock:
            for token in self._access.values():
                if user is None or token.user == user:
                    token.expires = min(token.expires, now)

    def revoke(self, token: str) -> None:
        """Revoke one refresh or access token (refresh: invalid_grant from now on)."""
        with self._lock:
            got = self._refresh.get(token) or self._access.get(token)
            if got is None:
                raise KeyError("no such token")
            got.revoked = True

    def revoke_user(self, user: str) -> None:
        """Revoke every refresh and access token of ``user`` (a password reset, say)."""
        with self._lock:
            for token in (*self._refresh.values(), *self._access.values()):
                if token.user == user:
                    token.revoked = True

    def fail_next(self, error: str, count: int = 1, *, endpoint: str = "/token",
                  seconds: float = 10.0) -> None:
        """The next ``count`` requests at ``endpoint`` fail: ``error`` is an OAuth2 error
        code answered with 400 (invalid_client: 401), ``server_error`` (HTTP 500),
        ``temporarily_unavailable`` (503), or ``stall``: wait ``seconds`` (cut short by
        stop()), then answer normally."""
        with self._lock:
            self._failures.extend(_Failure(error, endpoint, seconds) for _ in range(count))

    def token_requests(self, grant_type: str | None = None, *,
                       ok: bool | None = None) -> list[Request]:
        """The /token requests (of one grant type; only successes or failures)."""
        with self._lock:
            return [r for r in self.requests if r.endpoint == "/token"
                    and (grant_type is None or r.grant_type == grant_type)
                    and (ok is None or r.ok == ok)]

    def wait_for_requests(self, count: int, *, endpoint: str = "/token",
                          timeout: float = 10.0) -> list[Request]:
        """Wait until ``count`` requests reached ``endpoint``; returns them."""
        def arrived() -> list[Request]:
            return [r for r in self.requests if r.endpoint == endpoint]
        with self._lock:
            if not self._lock.wait_for(lambda: len(arrived()) >= count, timeout):
                raise AssertionError(f"{len(arrived())} of {count} requests at {endpoint} "
                                     f"within {timeout}s")
            return arrived()

    # -- answering (server threads) -----------------------------------------------------

    def _issue(self, table: dict[str, _Token], user: str, client_id: str, scope: str,
               expires: float) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            table[token] = _Token(user, client_id, scope, time.time(), expires)
        return token

    def _pending(self, user_code: str | None) -> _Device:
        found = [d for d in self._devices.values() if d.state == "pending"
                 and (user_code is None or d.user_code == user_code)]
        if len(found) != 1:
            raise AssertionError(f"{len(found)} pending device codes match {user_code!r}")
        return found[0]

    def _take_failure(self, endpoint: str) -> _Failure | None:
        with self._lock:
            for i, failure in enumerate(self._failures):
                if failure.endpoint == endpoint:
                    return self._failures.pop(i)
        return None

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)
            self._lock.notify_all()

    def _serve(self, endpoint: str, authorization: str | None, content_type: str,
               body: str) -> tuple[int, dict[str, Any]] | None:
        """Answer one POST and record it (None: stopped during a stall, no answer)."""
        arrived = time.time()
        form = dict(urllib.parse.parse_qsl(body, keep_blank_values=True))
        client = client_credentials(authorization, form)
        failure = self._take_failure(endpoint)
        if failure is not None and failure.error == "stall" and \
                self._stopping.wait(failure.seconds):
            return None
        status, error = 200, None
        try:
            if failure is not None and failure.error != "stall":
                raise OAuth2Error(failure.error, "injected failure", _status_of(failure.error))
            if endpoint not in ("/token", "/devicecode", "/introspect"):
                raise OAuth2Error("invalid_request", f"no endpoint {endpoint}", 404)
            if content_type != "application/x-www-form-urlencoded":
                raise OAuth2Error("invalid_request",
                                  "the body must be application/x-www-form-urlencoded")
            answer = self._answer(endpoint, form, client)
        except OAuth2Error as e:
            status, error = e.status, e.error
            answer = {"error": e.error, "error_description": e.description}
        self._record(Request(endpoint, form.get("grant_type"), client[0], client[2], arrived,
                             status, error, form, failure.error if failure else None))
        return status, answer

    def _answer(self, endpoint: str, form: dict[str, str], client: tuple[str | None, str | None,
                str]) -> dict[str, Any]:
        if endpoint == "/introspect":
            return self.introspect(form.get("token", ""))
        if endpoint == "/devicecode":
            return self._device_authorization(form, client)
        grant = form.get("grant_type", "")
        if grant == JWT_BEARER:
            claims = verify_assertion(form.get("assertion", ""), self._accounts_snapshot(),
                                      self.token_url)
            user = claims.get("sub") or claims["iss"]
            return self._token_answer(user, f"jwt:{claims['iss']}", claims.get("scope", ""))
        client_id = self._authenticate(client)
        scope = form.get("scope", "")
        if grant == CLIENT_CREDENTIALS:
            registered = self._clients[client_id]
            self._check_scope(registered, scope)
            if registered.user is None:
                raise OAuth2Error("unauthorized_client", "this client has no app-only access")
            return self._token_answer(registered.user, client_id, scope)
        if grant == REFRESH_TOKEN:
            return self._refresh_grant(client_id, form.get("refresh_token", ""), scope)
        if grant == DEVICE_CODE:
            return self._device_grant(client_id, form.get("device_code", ""))
        raise OAuth2Error("unsupported_grant_type", f"grant_type {grant!r} is not supported")

    def _accounts_snapshot(self) -> dict[str, ServiceAccount]:
        with self._lock:
            return dict(self._accounts)

    def _authenticate(self, client: tuple[str | None, str | None, str]) -> str:
        client_id, secret, how = client
        with self._lock:
            registered = self._clients.get(client_id or "")
        if client_id is None or registered is None:
            raise OAuth2Error("invalid_client", f"unknown client {client_id!r}", 401)
        if registered.secret is not None and not (
                secret is not None and secrets.compare_digest(secret, registered.secret)):
            raise OAuth2Error("invalid_client", f"client authentication failed ({how})", 401)
        return client_id

    @staticmethod
    def _check_scope(client: _Client, scope: str) -> None:
        asked = set(scope.split())
        if client.scopes is not None and not asked <= client.scopes:
            raise OAuth2Error("invalid_scope", f"scope {scope!r} is not granted to this client")

    def _token_answer(self, user: str, client_id: str, scope: str,
                      refresh: str | None = None) -> dict[str, Any]:
        token = self._issue(self._access, user, client_id, scope, time.time() + self.lifetime)
        answer: dict[str, Any] = {"access_token": token, "token_type": "Bearer",
                                  "expires_in": math.ceil(self.lifetime), "scope": scope}
        if refresh is not None:
            answer["refresh_token"] = refresh
        return answer

    def _refresh_grant(self, client_id: str, refresh: str, scope: str) -> dict[str, Any]:
        with self._lock:
            got = self._refresh.get(refresh)
            if got is None or got.revoked or got.client_id != client_id:
                raise OAuth2Error("invalid_grant", "the refresh token is invalid, expired "
                                  "or revoked")
            if scope and not set(scope.split()) <= set(got.scope.split()):
                raise OAuth2Error("invalid_scope", "a refresh cannot widen the scope")
            if self.rotate_refresh_tokens:
                got.revoked = True
        new = (self.refresh_token(got.user, client_id, got.scope)
               if self.rotate_refresh_tokens else None)
        return self._token_answer(got.user, client_id, scope or got.scope, new)

    def _device_authorization(self, form: dict[str, str],
                              client: tuple[str | None, str | None, str]) -> dict[str, Any]:
        client_id = self._authenticate(client)
        self._check_scope(self._clients[client_id], form.get("scope", ""))
        code = secrets.token_urlsafe(24)
        alphabet = "BCDFGHJKLMNPQRSTVWXZ"
        user_code = "-".join("".join(secrets.choice(alphabet) for _ in range(4))
                             for _ in range(2))
        with self._lock:
            self._devices[code] = _Device(client_id, form.get("scope", ""), user_code,
                                          time.time() + self.device_expires_in,
                                          self.device_interval)
        interval = self.device_interval
        return {"device_code": code, "user_code": user_code,
                "verification_uri": self.url + "/device",
                "verification_uri_complete": f"{self.url}/device?user_code={user_code}",
                "expires_in": math.ceil(self.device_expires_in),
                "interval": int(interval) if interval == int(interval) else interval}

    def _device_grant(self, client_id: str, code: str) -> dict[str, Any]:
        now = time.time()
        with self._lock:
            device = self._devices.get(code)
            if device is None or device.client_id != client_id or device.state == "used":
                raise OAuth2Error("invalid_grant", "unknown or used device code")
            last, device.last_poll = device.last_poll, now
            if now >= device.expires:
                raise OAuth2Error("expired_token", "the device code expired")
            if device.state == "denied":
                raise OAuth2Error("access_denied", "the user refused")
            if now - last < device.interval:
                device.interval += self.slow_down_step
                raise OAuth2Error("slow_down", f"poll every {device.interval:g}s")
            if device.state == "pending" or device.user is None:
                raise OAuth2Error("authorization_pending", "the user has not signed in yet")
            device.state = "used"
            user, scope = device.user, device.scope
        return self._token_answer(user, client_id, scope,
                                  self.refresh_token(user, client_id, scope))


def _status_of(error: str) -> int:
    return {"invalid_client": 401, "server_error": 500, "temporarily_unavailable": 503}.get(
        error, 400)


@pytest.fixture(name="oauth2_server")
def oauth2_server_fixture() -> Iterator[Callable[..., OAuth2Server]]:
    """Factory: ``oauth2_server(lifetime=..., rotate_refresh_tokens=...)`` starts a server;
    all stop at teardown. Import it as ``oauth2_server_fixture`` (see tests/smtpserver.py)."""
    servers: list[OAuth2Server] = []

    def start(**options: Any) -> OAuth2Server:
        server = OAuth2Server(**options)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


oauth2_server = oauth2_server_fixture
