"""OAuth2 grants, the token cache and the refresh-token file, against a real HTTP token
endpoint on 127.0.0.1 (a small stdlib one, below)."""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwt
from joserfc.jwk import RSAKey

from mailsync.auth import device, grants
from mailsync.auth.settings import OAuth2
from mailsync.auth.store import RefreshTokenFile
from mailsync.auth.tokens import TokenCache
from mailsync.config.secrets import Secret
from mailsync.errors import OAuth2Error, OAuth2Refused, OAuth2Unavailable

ROOT = Path(__file__).resolve().parent.parent
CLIENT_ID, SECRET = "cid-1", "CANARY-client-secret-5eb1"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


class Endpoint:
    """A token endpoint: client credentials, refresh with rotation, JWT bearer, device
    code; ``fail`` makes it answer 500, stall, or an OAuth2 error."""

    def __init__(self) -> None:
        self.lifetime = 3600
        self.delay = 0.0
        self.fail: str | None = None
        self.description = ""
        self.rotate = True
        self.refresh_tokens = {"CANARY-refresh-0"}
        self.requests: list[dict[str, Any]] = []
        self.public_key: Any = None
        self.device_script: list[str] = []
        self.n = 0
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/token"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                form = {k: v[0] for k, v in parse_qs(body).items()}
                status, answer = endpoint.answer(self.path, form,
                                                 self.headers.get("Authorization", ""))
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def answer(self, path: str, form: dict[str, str], auth: str) -> tuple[int, dict[str, Any]]:
        time.sleep(self.delay)
        with self.lock:
            self.requests.append({"path": path, "auth": auth, **form})
            self.n += 1
            n = self.n
            if self.fail == "stall":
                time.sleep(3)
            if self.fail == "500":
                return 500, {}
            if self.fail:
                return 400, {"error": self.fail, "error_description": self.description}
            if path == "/device":
                return 200, {"device_code": "dev-1", "user_code": "WDJB-MJHT",
                             "verification_uri": "https://example.com/device",
                             "expires_in": 600, "interval": 1}
            grant = form.get("grant_type")
            token: dict[str, Any] = {"access_token": f"CANARY-access-{n}",
                                     "token_type": "Bearer", "expires_in": self.lifetime}
            if grant == "client_credentials":
                if auth.startswith("Basic "):
                    cid, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
                else:
                    cid, secret = form.get("client_id", ""), form.get("client_secret", "")
                if (cid, secret) != (CLIENT_ID, SECRET):
                    return 401, {"error": "invalid_client"}
            elif grant == "refresh_token":
                if form.get("refresh_token") not in self.refresh_tokens:
                    return 400, {"error": "invalid_grant"}
                if self.rotate:
                    self.refresh_tokens = {f"CANARY-refresh-{n}"}
                    token["refresh_token"] = f"CANARY-refresh-{n}"
            elif grant == JWT_GRANT:
                claims = jwt.decode(form["assertion"], self.public_key).claims
                self.requests[-1]["claims"] = claims
            elif grant == DEVICE_GRANT:
                step = self.device_script.pop(0) if self.device_script else "ok"
                if step != "ok":
                    return 400, {"error": step}
                token["refresh_token"] = "CANARY-refresh-device"
            else:
                return 400, {"error": "unsupported_grant_type"}
            return 200, token

    def grants(self) -> list[str]:
        return [r.get("grant_type", r["path"]) for r in self.requests]


@pytest.fixture
def endpoint():
    ep = Endpoint()
    yield ep
    ep.server.shutdown()
    ep.server.server_close()


def settings(ep: Endpoint, grant: str = "client_credentials", **kw: Any) -> OAuth2:
    base: dict[str, Any] = {"provider": "generic", "grant": grant, "token_url": ep.url,
                            "scope": "https://outlook.office365.com/.default",
                            "client_id": CLIENT_ID, "client_secret": Secret("plain", SECRET)}
    if grant == "refresh_token":
        base["refresh_token"] = Secret("plain", "CANARY-refresh-0")
    return OAuth2(**{**base, **kw})


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


# --- grants -------------------------------------------------------------------------------

@pytest.mark.parametrize("provider,placed", [("microsoft", "body"), ("generic", "basic")])
def test_client_credentials(endpoint: Endpoint, provider: str, placed: str) -> None:
    before = time.time()
    token = grants.fetch(settings(endpoint, provider=provider), grants.GrantContext("m365"))
    assert token.value == "CANARY-access-1"
    assert before + 3600 <= token.expires_at <= time.time() + 3600
    (req,) = endpoint.requests
    assert req["scope"] == "https://outlook.office365.com/.default"
    assert (req["auth"].startswith("Basic ") if placed == "basic"
            else req["client_secret"] == SECRET and not req["auth"])


def test_refresh_rotation_is_persisted_0600(endpoint: Endpoint, tmp_path: Path) -> None:
    os.umask(0o022)
    ctx = grants.GrantContext("alice", state_dir=tmp_path)
    s = settings(endpoint, "refresh_token")
    assert grants.fetch(s, ctx).value == "CANARY-access-1"
    file = tmp_path / "tokens" / "alice.json"
    assert json.loads(file.read_text())["refresh_token"] == "CANARY-refresh-1"
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert stat.S_IMODE(file.parent.stat().st_mode) == 0o700
    # the config's refresh token is spent: the next refresh must use the stored one
    assert grants.fetch(s, ctx).value == "CANARY-access-2"
    assert [r["refresh_token"] for r in endpoint.requests] == ["CANARY-refresh-0",
                                                              "CANARY-refresh-1"]


_CHILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from mailsync.auth import grants
    from mailsync.auth.settings import OAuth2
    from mailsync.auth.store import RefreshTokenFile
    from mailsync.config.secrets import Secret
    if sys.argv[3] == "kill":
        save = RefreshTokenFile.save
        def save_then_die(self, *args):
            save(self, *args)
            os.kill(os.getpid(), signal.SIGKILL)
        RefreshTokenFile.save = save_then_die
    s = OAuth2(provider="generic", grant="refresh_token", token_url=sys.argv[1], scope="s",
               client_id="cid-1", refresh_token=Secret("plain", "CANARY-refresh-0"))
    token = grants.fetch(s, grants.GrantContext("alice", state_dir=Path(sys.argv[2])))
    print("used", token.expires_at > 0)
""")


def test_sigkill_right_after_the_rotation_leaves_a_valid_refresh_token(
        endpoint: Endpoint, tmp_path: Path) -> None:
    def child(mode: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", _CHILD, endpoint.url, str(tmp_path), mode],
                              capture_output=True, text=True, timeout=60, cwd=ROOT)

    killed = child("kill")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # killed before the access token could be used: it was saved before being returned
    assert killed.stdout == ""
    stored = RefreshTokenFile(tmp_path, "alice").read()
    assert stored == "CANARY-refresh-1" and endpoint.refresh_tokens == {stored}
    survivor = child("normal")
    assert (survivor.returncode, survivor.stdout) == (0, "used True\n"), survivor.stderr
    assert endpoint.requests[-1]["refresh_token"] == "CANARY-refresh-1"


def test_a_rotation_that_cannot_be_saved_is_not_used(
        endpoint: Endpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    ctx = grants.GrantContext("alice", state_dir=tmp_path)
    s = settings(endpoint, "refresh_token")
    monkeypatch.setattr("mailsync.auth.store.write_atomically", disk_full)
    with pytest.raises(OAuth2Unavailable, match="cannot be saved.*No space left") as info:
        grants.fetch(s, ctx)
    assert info.value.reason == "state" and "CANARY" not in str(info.value)
    monkeypatch.undo()
    # the rotated token was kept in memory: the next attempt spends it and saves the next
    assert grants.fetch(s, ctx).value == "CANARY-access-2"
    assert endpoint.requests[-1]["refresh_token"] == "CANARY-refresh-1"
    assert RefreshTokenFile(tmp_path, "alice").read() == "CANARY-refresh-2"


def _service_account_key() -> tuple[str, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    doc = {"type": "service_account", "client_email": "sync@proj.iam.gserviceaccount.com",
           "private_key": pem, "token_uri": "https://oauth2.googleapis.com/token"}
    return json.dumps(doc), RSAKey.import_key(public)


def test_google_service_account_jwt_bearer(endpoint: Endpoint, tmp_path: Path) -> None:
    key_json, endpoint.public_key = _service_account_key()
    (tmp_path / "sa.json").write_text(key_json)
    s = OAuth2(provider="google", grant="service_account", token_url=endpoint.url,
               scope="https://mail.google.com/", subject="alice@example.com",
               service_account_key=Secret("file", str(tmp_path / "sa.json")))
    assert grants.fetch(s, grants.GrantContext("gmail")).value == "CANARY-access-1"
    (req,) = endpoint.requests
    assert req["grant_type"] == JWT_GRANT and "client_id" not in req
    claims = req["claims"]   # the signature verified with the public key
    assert (claims["iss"], claims["sub"], claims["aud"], req["scope"]) == (
        "sync@proj.iam.gserviceaccount.com", "alice@example.com", endpoint.url,
        "https://mail.google.com/")
    assert claims["exp"] - claims["iat"] == 3600


def test_a_bad_service_account_key_is_refused_without_quoting_it(tmp_path: Path) -> None:
    (tmp_path / "sa.json").write_text('{"client_email": "x", "private_key": "CANARY-pem"}')
    s = OAuth2(provider="google", grant="service_account", token_url="http://127.0.0.1:9/t",
               scope="s", subject="a@example.com",
               service_account_key=Secret("file", str(tmp_path / "sa.json")))
    with pytest.raises(OAuth2Refused, match="not a Google JSON key") as info:
        grants.fetch(s, grants.GrantContext("gmail"))
    assert info.value.reason == "key" and "CANARY" not in repr(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_device_code_flow(endpoint: Endpoint, tmp_path: Path) -> None:
    endpoint.device_script = ["authorization_pending", "slow_down", "authorization_pending"]
    s = settings(endpoint, "refresh_token", client_secret=None, refresh_token=None,
                 device_url=endpoint.url.replace("/token", "/device"))
    shown: list[tuple[str, str]] = []
    slept: list[float] = []
    token = device.login(s, grants.GrantContext("alice", state_dir=tmp_path),
                         lambda url, code: shown.append((url, code)), slept.append)
    assert shown == [("https://example.com/device", "WDJB-MJHT")]
    assert slept == [1.0, 1.0, 6.0, 6.0]   # interval 1, +5 after slow_down
    assert token.value.startswith("CANARY-access-")
    device_req = endpoint.requests[0]
    assert (device_req["client_id"], device_req["scope"]) == (CLIENT_ID, s.scope)
    assert all(r["device_code"] == "dev-1" for r in endpoint.requests[1:])
    file = tmp_path / "tokens" / "alice.json"
    assert json.loads(file.read_text())["refresh_token"] == "CANARY-refresh-device"
    assert stat.S_IMODE(file.stat().st_mode) == 0o600


@pytest.mark.parametrize("error,reason,text", [
    ("expired_token", "expired_token", "device code expired.*mailsync auth login alice again"),
    ("access_denied", "access_denied", "sign-in was declined")])
def test_device_code_flow_ends(endpoint: Endpoint, tmp_path: Path, error: str, reason: str,
                               text: str) -> None:
    endpoint.device_script = ["authorization_pending", error]
    s = settings(endpoint, "refresh_token", client_secret=None, refresh_token=None,
                 device_url=endpoint.url.replace("/token", "/device"))
    with pytest.raises(OAuth2Refused, match=text) as info:
        device.login(s, grants.GrantContext("alice", state_dir=tmp_path),
                     lambda url, code: None, lambda s: None)
    assert info.value.reason == reason
    assert not (tmp_path / "tokens" / "alice.json").exists()


# --- classified failures ------------------------------------------------------------------

@pytest.mark.parametrize("grant,fail,cls,reason,message", [
    ("refresh_token", "invalid_grant", OAuth2Refused, "invalid_grant",
     "OAuth2: the refresh token was revoked or expired; run mailsync auth login alice"),
    ("client_credentials", "invalid_client", OAuth2Refused, "invalid_client",
     "OAuth2: the token endpoint refused the client (invalid_client): check client_id and "
     "client_secret"),
    ("client_credentials", "unauthorized_client", OAuth2Refused, "unauthorized_client",
     "OAuth2: the client may not use this grant (unauthorized_client): check the app "
     "registration's permissions"),
    ("client_credentials", "temporarily_unavailable", OAuth2Unavailable, "server_error",
     "OAuth2: the token endpoint {url} is unavailable (temporarily_unavailable)"),
    ("client_credentials", "500", OAuth2Unavailable, "server_error",
     "OAuth2: the token endpoint {url} answered HTTP 500"),
])
def test_failures_are_classified(endpoint: Endpoint, tmp_path: Path, grant: str, fail: str,
                                 cls: type, reason: str, message: str) -> None:
    endpoint.fail = fail
    # a hostile or careless endpoint echoing the secrets it was sent
    endpoint.description = f"echoing {SECRET}" + (
        " and CANARY-refresh-0" if grant == "refresh_token" else "")
    with pytest.raises(cls) as info:
        grants.fetch(settings(endpoint, grant), grants.GrantContext("alice", tmp_path))
    assert str(info.value) == message.format(url=endpoint.url)
    assert info.value.reason == reason
    assert info.value.__cause__ is None and info.value.__suppress_context__
    if fail != "500":
        assert info.value.detail == "echoing ***" + (" and ***" if grant == "refresh_token"
                                                     else "")


def test_a_stalled_endpoint_times_out(endpoint: Endpoint) -> None:
    endpoint.fail = "stall"
    start = time.monotonic()
    with pytest.raises(OAuth2Unavailable, match="did not answer within 0.5 s") as info:
        grants.fetch(settings(endpoint), grants.GrantContext("m365", timeout=0.5))
    assert info.value.reason == "timeout" and time.monotonic() - start < 2.5


@pytest.mark.parametrize("grant,phase", [("client_credentials", "headers"),
                                         ("refresh_token", "headers"),
                                         ("client_credentials", "body"),
                                         ("client_credentials", "proxy")])
def test_an_endpoint_that_drips_its_answer_times_out(tmp_path: Path, grant: str, phase: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A socket timeout bounds one read: an endpoint (or a proxy before it) sending a
    byte every 0.2 s would hold the refreshing thread, and so every later refresh of
    the server's token, for as long as it liked. The timeout is the whole request's,
    whether the headers or the body come slowly."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    start_of = {"headers": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Slow: ",
                "proxy": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Slow: ",
                "body": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 4000\r\n\r\n{\"access_token\": \""}[phase]

    def drip() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                try:
                    conn.sendall(start_of)
                    while not stop.wait(0.2):
                        conn.sendall(b"a")
                except OSError:
                    pass

    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/token"
    if phase == "proxy":  # the dripping one is the proxy (HTTP_PROXY) before the endpoint
        monkeypatch.setenv("HTTP_PROXY", url.removesuffix("/token"))
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        url = "http://login.example.invalid/token"
    ep = OAuth2("generic", grant, url, "s", "c", client_secret=Secret("plain", SECRET),
                refresh_token=Secret("plain", "CANARY-refresh-0")
                if grant == "refresh_token" else None)
    try:
        start = time.monotonic()
        with pytest.raises(OAuth2Unavailable, match="did not answer within 1 s") as info:
            grants.fetch(ep, grants.GrantContext("m365", timeout=1.0, state_dir=tmp_path))
        assert info.value.reason == "timeout" and time.monotonic() - start < 3.0
    finally:
        stop.set()
        listener.close()
        thread.join(5)


def test_an_endpoint_that_floods_its_answer_is_cut_at_one_mib(tmp_path: Path) -> None:
    """requests keeps a whole answer in memory: a token endpoint streaming gigabytes
    within the timeout would exhaust it. An answer is read up to MAX_ANSWER (1 MiB; a
    token response is a few KiB). Here 64 MiB are sent, and the read stops past 1."""
    from mailsync.auth import sessions

    listener = socket.create_server(("127.0.0.1", 0))
    sent = []

    def flood() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            total = 0
            try:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 67108864\r\n\r\n")
                chunk = b"0" * 65536
                while total < 64 * 1024 * 1024:
                    conn.sendall(chunk)
                    total += len(chunk)
            except OSError:
                pass
            sent.append(total)

    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/token"
    ep = OAuth2("generic", "client_credentials", url, "s", "c",
                client_secret=Secret("plain", SECRET))
    try:
        with pytest.raises(OAuth2Unavailable, match="answered more than 1 MiB") as info:
            grants.fetch(ep, grants.GrantContext("m365", timeout=5.0))
        assert info.value.reason == "bad_response"
        thread.join(10)
        assert sent and sent[0] < 64 * 1024 * 1024  # the connection was dropped early
        assert sessions.MAX_ANSWER == 1024 * 1024
    finally:
        listener.close()


def test_each_request_on_a_kept_alive_connection_gets_its_own_timeout() -> None:
    """The device flow polls the token endpoint through one session, every few seconds
    for minutes: each request has the timeout, not the connection."""
    import requests

    from mailsync.auth.sessions import bounded

    peers = []

    class KeepAlive(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            peers.append(self.client_address)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), KeepAlive)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/token"
    try:
        with bounded(requests.Session()) as http:
            for _ in range(3):
                assert http.post(url, data={"a": "b"}, timeout=0.5).json() == {}
                time.sleep(0.7)  # longer than the timeout, between the polls
        assert len(peers) == 3 and len(set(peers)) == 1  # one connection, kept alive
    finally:
        server.shutdown()
        server.server_close()


def test_an_https_endpoint_through_the_deadline_sockets(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The token endpoints are https: over TLS (a trustme CA that requests trusts through
    REQUESTS_CA_BUNDLE) a token comes back through the bounded session, and an endpoint
    that drips is cut at the timeout as over plain HTTP."""
    import ssl

    import trustme

    ca = trustme.CA()
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    token = json.dumps({"access_token": "CANARY-access-tls", "token_type": "Bearer",
                        "expires_in": 3600}).encode()

    def serve(drip: bool) -> tuple[str, threading.Event]:
        listener = socket.create_server(("127.0.0.1", 0))
        stop = threading.Event()

        def run() -> None:
            with listener:
                listener.settimeout(10)
                try:
                    conn = context.wrap_socket(listener.accept()[0], server_side=True)
                except OSError:
                    return
                with conn:
                    try:
                        data = b""
                        while b"grant_type" not in data:  # the form body came in
                            data += conn.recv(65536) or b"grant_type"
                        if drip:
                            conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                            while not stop.wait(0.2):
                                conn.sendall(b"a")
                        else:
                            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json"
                                         b"\r\nContent-Length: %d\r\n\r\n%s"
                                         % (len(token), token))
                    except OSError:
                        pass

        threading.Thread(target=run, daemon=True).start()
        return f"https://127.0.0.1:{listener.getsockname()[1]}/token", stop

    def grant(url: str) -> OAuth2:
        return OAuth2("generic", "client_credentials", url, "s", "c",
                      client_secret=Secret("plain", SECRET))

    url, _ = serve(drip=False)
    got = grants.fetch(grant(url), grants.GrantContext("m365", timeout=2.0))
    assert got.value == "CANARY-access-tls"
    url, stop = serve(drip=True)
    try:
        start = time.monotonic()
        with pytest.raises(OAuth2Unavailable, match="did not answer within 1 s"):
            grants.fetch(grant(url), grants.GrantContext("m365", timeout=1.0))
        assert time.monotonic() - start < 3.0
    finally:
        stop.set()


def test_an_unreachable_endpoint() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ep = OAuth2("generic", "client_credentials", f"http://127.0.0.1:{port}/token", "s", "c")
    with pytest.raises(OAuth2Unavailable, match=r"unreachable \(Connection refused\)") as info:
        grants.fetch(ep, grants.GrantContext("m365"))
    assert info.value.reason == "unreachable"


# --- the cache ----------------------------------------------------------------------------

def _herd(source: Any, n: int = 8, **kw: Any) -> list[Any]:
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def ask(i: int) -> None:
        barrier.wait()
        try:
            results[i] = source.token(**kw)
        except OAuth2Error as exc:
            results[i] = exc

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_eight_threads_one_refresh(endpoint: Endpoint) -> None:
    endpoint.delay = 0.3   # long enough for all eight to be asking meanwhile
    endpoint.lifetime = 600
    clock = Clock()
    seen: list[tuple[str, str, float | None]] = []
    cache = TokenCache(clock=clock, observer=lambda *a: seen.append(a))
    source = cache.source("m365", settings(endpoint))
    first = _herd(source)
    assert {t.value for t in first} == {"CANARY-access-1"} and len(endpoint.requests) == 1
    assert seen == [("m365", "ok", first[0].expires_at)]
    # another server of the same identity shares the token
    assert cache.source("m365-imap", settings(endpoint)).token() is first[0]
    clock.now += 600 - 60   # 60 s left: less than min_valid + ahead, refreshed ahead
    second = _herd(source, min_valid=45)
    assert len(endpoint.requests) == 2
    assert {t.value for t in second} <= {"CANARY-access-1", "CANARY-access-2"}
    new = source.token(min_valid=45)
    assert new.value == "CANARY-access-2" and len(endpoint.requests) == 2
    # the observer hears of the one refresh under each name of the identity
    assert seen[1:] == [("m365", "ok", new.expires_at), ("m365-imap", "ok", new.expires_at)]


def test_expired_token_herd_waits_for_the_one_refresh(endpoint: Endpoint) -> None:
    endpoint.delay = 0.3
    clock = Clock()
    source = TokenCache(clock=clock).source("m365", settings(endpoint))
    source.token()
    clock.now += 3600   # expired: everyone must wait for the new one
    assert {t.value for t in _herd(source)} == {"CANARY-access-2"}
    assert len(endpoint.requests) == 2


def test_temporary_failures_back_off(endpoint: Endpoint) -> None:
    endpoint.fail = "500"
    clock = Clock()
    seen: list[str] = []
    source = TokenCache(clock=clock, observer=lambda n, r, e: seen.append(r)).source(
        "m365", settings(endpoint))
    results = _herd(source)
    assert all(isinstance(r, OAuth2Unavailable) for r in results)
    assert len(endpoint.requests) == 1 and seen == ["server_error"]
    for wait in (0.5, 0.5):     # within the first backoff (1 s): no request
        clock.now += wait
        with pytest.raises(OAuth2Unavailable):
            source.token()
    assert len(endpoint.requests) == 2   # at 1 s: the second attempt, then 2 s of backoff
    clock.now += 1.9
    with pytest.raises(OAuth2Unavailable):
        source.token()
    assert len(endpoint.requests) == 2
    endpoint.fail = None
    clock.now += 0.1
    assert source.token().value.startswith("CANARY-access-")
    assert seen == ["server_error", "server_error", "ok"]


def test_refresh_ahead_failure_keeps_the_current_token(endpoint: Endpoint) -> None:
    clock = Clock()
    source = TokenCache(clock=clock).source("m365", settings(endpoint))
    current = source.token()
    endpoint.fail = "500"
    clock.now += 3600 - 80   # ahead of expiry, still valid for min_valid
    assert source.token(min_valid=60) is current
    assert len(endpoint.requests) == 2


def test_revoked_refresh_token_waits_for_a_login(endpoint: Endpoint, tmp_path: Path) -> None:
    clock = Clock()
    endpoint.fail = "invalid_grant"
    source = TokenCache(clock=clock, state_dir=tmp_path).source(
        "inbox", settings(endpoint, "refresh_token"))
    with pytest.raises(OAuth2Refused, match="run mailsync auth login inbox$"):
        source.token()
    clock.now += 60
    with pytest.raises(OAuth2Refused):
        source.token()
    assert len(endpoint.requests) == 1   # not hammered
    endpoint.fail = None
    endpoint.refresh_tokens = {"CANARY-refresh-new"}
    login = RefreshTokenFile(tmp_path, "inbox")
    with login.locked():
        login.save("CANARY-refresh-new", endpoint.url)   # what `mailsync auth login` does
    assert source.token().value.startswith("CANARY-access-")
    assert endpoint.requests[-1]["refresh_token"] == "CANARY-refresh-new"


def test_invalidate_asks_for_a_new_token(endpoint: Endpoint) -> None:
    source = TokenCache().source("m365", settings(endpoint))
    refused = source.token()
    source.invalidate(refused)
    assert source.token().value == "CANARY-access-2"
    source.invalidate(refused)   # an older token: the current one stays
    assert source.token().value == "CANARY-access-2" and len(endpoint.requests) == 2


def test_secrets_never_leak(endpoint: Endpoint, tmp_path: Path,
                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    cache = TokenCache(state_dir=tmp_path)
    shown: list[str] = []
    for grant in ("client_credentials", "refresh_token"):
        s = settings(endpoint, grant)
        source = cache.source(grant, s)
        token = source.token()
        shown += [repr(token), str(token), repr(source), repr(cache), repr(s), str(s)]
        endpoint.fail, endpoint.description = "invalid_client", f"bad {SECRET}"
        source.invalidate(token)
        with pytest.raises(OAuth2Refused) as info:
            source.token()
        shown += [str(info.value), repr(info.value), str(info.value.detail)]
        endpoint.fail = None
    shown += [r.getMessage() for r in caplog.records]
    assert len(endpoint.requests) == 4 and shown
    leaked = [text for text in shown if "CANARY" in text or SECRET in text]
    assert leaked == []


# --- mailsync auth login ------------------------------------------------------------------

def test_auth_login_cli(endpoint: Endpoint, runner: Any, write_config: Any, example_text: str,
                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mailsync.cli.auth
    from mailsync.cli import main

    path = write_config(example_text)
    result = runner.invoke(main, ["auth", "login", "nobody", "-c", str(path)])
    assert result.exit_code == 1
    assert "'nobody' is no server or account login with auth.oauth2" in result.output
    s = settings(endpoint, "refresh_token", client_secret=None, refresh_token=None,
                 device_url=endpoint.url.replace("/token", "/device"))
    # until the config model makes OAuth2 settings, the lookup is given them
    monkeypatch.setattr(mailsync.cli.auth, "oauth2_logins", lambda config: {"alice": s})
    result = runner.invoke(main, ["auth", "login", "alice", "-c", str(path)])
    assert result.exit_code == 0, result.output
    assert "open https://example.com/device and enter the code WDJB-MJHT" in result.output
    assert "OK: alice is signed in" in result.output and "CANARY" not in result.output
    file = path.parent / "var" / "state" / "tokens" / "alice.json"
    assert json.loads(file.read_text())["refresh_token"] == "CANARY-refresh-device"
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    endpoint.device_script = ["access_denied"]
    result = runner.invoke(main, ["auth", "login", "alice", "-c", str(path)])
    assert (result.exit_code, result.output.splitlines()[-1]) == (
        1, "error: OAuth2: the sign-in was declined (access_denied)")
