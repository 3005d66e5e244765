"""A real Dovecot (IMAP and POP3) for tests, started from a generated configuration.

One Dovecot per test session (``dovecot`` fixture), listening on free loopback ports:
IMAP and POP3 in plain text with STARTTLS, and both with implicit TLS, with a trustme
certificate for 127.0.0.1 and localhost. Each test gets its own user and Maildir from
the ``mailbox`` fixture (users are written to a passwd-file before Dovecot starts: it
re-reads the file at most once a second, so a user added later could not log in at once)::

    from tests.dovecot import dovecot_fixture, mailbox_fixture  # noqa: F401

    def test_x(mailbox):
        mailbox.append(b"Subject: hi\\r\\n\\r\\nbody\\r\\n")
        ...  # connect to mailbox.dovecot.port("imap"), log in as mailbox.user

A subprocess trusts the certificate with ``SSL_CERT_FILE=dovecot.ca_file``. Without
Dovecot installed the fixtures skip, and fail under MAILSYNC_REQUIRE_SERVERS=1.

OAuth2: ``Dovecot(oauth2=...)`` adds ``passdb { driver = oauth2 }`` for XOAUTH2 and
OAUTHBEARER; its fixtures (``oauth2_dovecot``, ``oauth2_mailbox``) and what it answers
on the wire are in tests/dovecot_oauth2.py.

As root, mail is owned by ``nobody`` (Dovecot refuses mail access as UID 0) and the
login processes run as Dovecot's own users, so the mail root is a private directory
under /tmp owned by that user rather than pytest's tmp_path (which is 0700 root).
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import pwd
import shutil
import signal
import socket
import sqlite3
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.conftest import need
from tests.oauth2server import OAuth2Server

HOST = "127.0.0.1"
USERS = 400
# The password of the user "canary" (Dovecot.canary()): it must never show up in a log,
# an exception or the output. Quotes, a backslash and a space test the quoting paths.
CANARY = 'Canary-5e1f "quoted" back\\slash pass'
_LISTENERS = {"imap": ("imap", "imap"), "imaps": ("imap", "imaps"),
              "pop3": ("pop3", "pop3"), "pop3s": ("pop3", "pop3s")}
_CONF = """\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap pop3
listen = {host}
ssl = {ssl}
{ssl_files}
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
first_valid_uid = 1
mail_fsync = never
{users}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/home/%u
}}
mail_location = maildir:~/Maildir
protocol imap {{
  mail_max_userip_connections = 100
}}
# No auth penalty (a failed login would slow every later login from 127.0.0.1 by
# seconds): the auth process cannot reach this socket, so it does not apply any.
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
{services}
"""


_OAUTH2_PASSDB = """\
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {root}/dovecot-oauth2.conf.ext
}}
passdb {{
  driver = passwd-file
  mechanisms = plain login
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
"""
_OAUTH2_EXT = """\
introspection_mode = post
introspection_url = {url}
username_attribute = username
active_attribute = active
active_value = true
force_introspection = yes
timeout_msecs = 5000
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Mailbox:
    """One Dovecot user with its Maildir; helpers put mail in it the ways a server would."""

    dovecot: Dovecot
    user: str
    password: str

    @property
    def maildir(self) -> Path:
        return self.dovecot.root / "home" / self.user / "Maildir"

    def imap(self) -> imaplib.IMAP4:
        """A logged-in imaplib session (plain text), for a test to act as another client."""
        client = imaplib.IMAP4(HOST, self.dovecot.port("imap"), timeout=10)
        client.login(self.user, self.password)
        return client

    @contextlib.contextmanager
    def session(self) -> Iterator[imaplib.IMAP4]:
        client = self.imap()
        try:
            yield client
        finally:
            client.logout()

    def append(self, *messages: bytes, folder: str = "INBOX") -> None:
        """Deliver messages the way a client or an MDA would: IMAP APPEND."""
        with self.session() as client:
            for raw in messages:
                _ok(client.append(folder, None, None, raw))

    def drop(self, messages: Sequence[bytes], folder: str = "") -> None:
        """Write messages straight into the Maildir's new/ (fast, for thousands)."""
        base = self.maildir if not folder else self.maildir / f".{folder}"
        for d in (self.maildir, base, *(base / s for s in ("cur", "new", "tmp"))):
            if not d.exists():
                d.mkdir(parents=True)
                self.dovecot.chown(d)
        stamp = int(time.time())
        for i, raw in enumerate(messages):
            path = base / "new" / f"{stamp}.M{i}P{os.getpid()}.test"
            path.write_bytes(raw)
            self.dovecot.chown(path)

    def uids(self, folder: str = "INBOX") -> list[int]:
        """UIDs of the messages now in ``folder``."""
        with self.session() as client:
            _ok(client.select(folder))
            return [int(x) for x in (_ok(client.uid("SEARCH", "ALL"))[0] or b"").split()]

    def uidvalidity(self, folder: str = "INBOX") -> int:
        with self.session() as client:
            data = _ok(client.status(folder, "(UIDVALIDITY)"))
            return int(data[0].split(b"UIDVALIDITY")[1].strip(b" ()"))

    def create(self, folder: str) -> None:
        with self.session() as client:
            _ok(client.create(folder))

    def recreate(self, folder: str) -> None:
        """Delete ``folder`` and create it again (empty): its UIDVALIDITY changes."""
        with self.session() as client:
            _ok(client.delete(folder))
            _ok(client.create(folder))


def _ok(reply: tuple[str, list[Any]]) -> list[Any]:
    typ, data = reply
    assert typ == "OK", data
    return data


def message(i: int, *, subject: str | None = None, to: str = "support@example.com",
            extra: str = "", body: str = "") -> bytes:
    """A small RFC 5322 message with Message-ID <m{i}@test> (CRLF line ends)."""
    body = body or f"Hello number {i}.\r\n" + "Some text to make it longer.\r\n" * 8
    return (f"From: Customer {i} <c{i}@example.org>\r\nTo: {to}\r\n"
            f"Subject: {subject or f'message {i}'}\r\nMessage-ID: <m{i}@test>\r\n"
            f"Date: Tue, 25 Nov 2025 10:00:00 +0000\r\n{extra}\r\n{body}").encode()


def incoming_yaml(mailbox: Mailbox, name: str, password_file: Path, *, kind: str = "imap",
                  security: str = "none", keep: bool = True, folder: str | None = None,
                  extra: str = "") -> str:
    """One incoming_servers entry for ``mailbox`` (the password in a secret file)."""
    password_file.write_text(mailbox.password)
    listener = {("imap", False): "imap", ("imap", True): "imaps",
                ("pop", False): "pop3", ("pop", True): "pop3s"}[(kind, security == "ssl")]
    lines = [f"  - name: {name}", f"    type: {kind}", f"    host: {HOST}",
             f"    port: {mailbox.dovecot.port(listener)}", f"    security: {security}",
             f"    username: {mailbox.user}", f"    password: {{file: {password_file}}}",
             f"    keep_on_server: {'true' if keep else 'false'}", "    timeout: 10s"]
    if folder:
        lines.append(f"    folder: {folder}")
    return "\n".join(lines) + "\n" + extra


def write_config(directory: Path, incoming: str, *, accounts: bool = True) -> Path:
    """A config.yaml in ``directory`` with an alias domain, an account and ``incoming``."""
    text = ("version: 1\ndaemon:\n  state_dir: ./state\n  spool_dir: ./spool\n"
            "alias_domain: {domain: example.com, bounce: bounce, catchall: catchall}\n"
            "users: [alice]\n")
    if accounts:
        text += ("outgoing_servers:\n  - name: relay\n    host: 127.0.0.1\n    port: 2525\n"
                 "    security: none\naccounts:\n  - name: sales\n"
                 "    email: sales@example.com\n    server: relay\n    granted_to: [alice]\n")
    text += f"incoming_servers:\n{incoming}"
    path = directory / "config.yaml"
    path.write_text(text)
    return path


class Dovecot:
    """A Dovecot master process (``dovecot -F -c FILE``) on free loopback ports.

    ssl: offer STARTTLS and implicit TLS (True), or neither (False: a server that does
    not offer STARTTLS, for the "never fall back to plain text" check).
    oauth2: an OAuth2Server (kept as ``authority``) or an RFC 7662 introspection URL:
    also offer XOAUTH2 and OAUTHBEARER, checked there (see the module docstring).
    """

    def __init__(self, *, ssl_enabled: bool = True,
                 oauth2: OAuth2Server | str | None = None) -> None:
        self.ssl_enabled = ssl_enabled
        self.authority = oauth2 if isinstance(oauth2, OAuth2Server) else None
        self.oauth2 = oauth2.introspection_url if isinstance(oauth2, OAuth2Server) else oauth2
        self.root = Path(tempfile.mkdtemp(prefix="dovecot-"))
        self.ca = trustme.CA()
        self.ca_file = self.root / "ca.pem"
        self.ports: dict[str, int] = {}
        self._free_users = [(f"user{i}", f"pw-{i}-{os.urandom(4).hex()}")
                            for i in range(1, USERS + 1)]
        self._canary = ("canary", CANARY)
        self._proc: subprocess.Popen[bytes] | None = None
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            self.uid, self.gid = nobody.pw_uid, nobody.pw_gid
        else:
            self.uid, self.gid = os.getuid(), os.getgid()

    def port(self, name: str) -> int:
        """The port of a listener: imap, imaps, pop3 or pop3s."""
        return self.ports[name]

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context

    def chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            os.chown(path, self.uid, self.gid)

    def add_user(self) -> Mailbox:
        """A user of its own, with an empty Maildir (Dovecot creates it at first login)."""
        if not self._free_users:
            raise RuntimeError(f"all {USERS} test users are taken: raise tests.dovecot.USERS")
        user, password = self._free_users.pop(0)
        return Mailbox(self, user, password)

    def canary(self) -> Mailbox:
        """The user whose password is :data:`CANARY` (for "never shown" checks)."""
        return Mailbox(self, *self._canary)

    def start(self) -> Dovecot:
        """Write the configuration and start Dovecot; retries with new ports if taken."""
        for sub in ("run", "state", "home"):
            (self.root / sub).mkdir(exist_ok=True)
        self.chown(self.root / "home")
        os.chmod(self.root, 0o755)  # the mail processes (nobody) must reach home/
        with (self.root / "passwd").open("w") as f:
            for user, password in [*self._free_users, self._canary]:
                f.write(f"{user}:{{PLAIN}}{password}\n")
                home = self.root / "home" / user
                home.mkdir(parents=True, exist_ok=True)
                self.chown(home)
        if self.oauth2 is not None:
            (self.root / "dovecot-oauth2.conf.ext").write_text(_OAUTH2_EXT.format(url=self.oauth2))
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        cert = self.ca.issue_cert(HOST, "localhost")
        cert.private_key_pem.write_to_path(str(self.root / "key.pem"))
        cert.cert_chain_pems[0].write_to_path(str(self.root / "cert.pem"))
        last = ""
        for _ in range(3):
            self.ports = {name: free_port() for name in _LISTENERS}
            (self.root / "dovecot.conf").write_text(self._config())
            # stderr to a file, not a pipe: Dovecot's children inherit it and outlive
            # the master by a moment, so reading a pipe to its end would wait for them.
            with (self.root / "stderr.log").open("ab") as err:
                self._proc = subprocess.Popen(
                    [dovecot_binary() or "dovecot", "-F", "-c",
                     str(self.root / "dovecot.conf")],
                    stdout=subprocess.DEVNULL, stderr=err)
            if self._wait_ready():
                return self
            last = self._stop_process()
        raise RuntimeError(f"dovecot did not start: {last}\n{self.log()[-2000:]}")

    def stop(self) -> None:
        """Stop Dovecot (SIGTERM to the master it started) and remove its files."""
        self._stop_process()
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logged(self, text: str, timeout: float = 5.0) -> bool:
        """Whether ``text`` appears in the log within ``timeout`` seconds: Dovecot's log
        process writes asynchronously, so a line is waited for rather than raced."""
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def __enter__(self) -> Dovecot:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _config(self) -> str:
        if os.geteuid() == 0:
            users = ("default_login_user = dovenull\ndefault_internal_user = dovecot\n"
                     "default_internal_group = dovecot")
        else:
            me = pwd.getpwuid(os.getuid()).pw_name
            users = (f"default_login_user = {me}\ndefault_internal_user = {me}\n"
                     f"default_internal_group = {me}")
        ssl_files = (f"ssl_cert = <{self.root}/cert.pem\nssl_key = <{self.root}/key.pem"
                     if self.ssl_enabled else "")
        services = []
        for service in ("imap", "pop3"):
            blocks = []
            for name, (svc, listener) in _LISTENERS.items():
                if svc != service:
                    continue
                port = self.ports[name] if (self.ssl_enabled or name in ("imap", "pop3")) else 0
                ssl_line = "    ssl = yes\n" if name.endswith("s") and self.ssl_enabled else ""
                blocks.append(f"  inet_listener {listener} {{\n    port = {port}\n{ssl_line}  }}")
            services.append(f"service {service}-login {{\n" + "\n".join(blocks) + "\n}")
        text = _CONF.format(root=self.root, host=HOST, ssl="yes" if self.ssl_enabled else "no",
                            ssl_files=ssl_files, users=users, uid=self.uid, gid=self.gid,
                            services="\n".join(services))
        if self.oauth2 is None:
            return text
        start = text.index("passdb {")
        end = text.index("}", start) + 2
        return (text[:start] + _OAUTH2_PASSDB.format(root=self.root) + text[end:]).replace(
            "auth_mechanisms = plain login", "auth_mechanisms = plain login xoauth2 oauthbearer")

    def _wait_ready(self, timeout: float = 15.0) -> bool:
        assert self._proc is not None
        wanted = ("imap", "pop3", "imaps", "pop3s") if self.ssl_enabled else ("imap", "pop3")
        deadline = time.monotonic() + timeout
        pending = set(wanted)
        while pending and time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            for name in list(pending):
                with contextlib.suppress(OSError), \
                        socket.create_connection((HOST, self.ports[name]), 0.5):
                    pending.discard(name)
            if pending:
                time.sleep(0.02)
        if pending:
            return False
        # The listeners accept before the login processes answer; wait for a greeting.
        with socket.create_connection((HOST, self.ports["imap"]), 5) as s:
            s.settimeout(5)
            return s.recv(64).startswith(b"* OK")

    def _stop_process(self) -> str:
        proc, self._proc = self._proc, None
        if proc is None:
            return ""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        path = self.root / "stderr.log"
        return path.read_text(errors="replace") if path.exists() else ""


class Rig:
    """A loaded config with its store and metrics, to drive pollers directly in tests."""

    def __init__(self, directory: Path, incoming: str, *, accounts: bool = True) -> None:
        from mailsync.config.load import load_file
        from mailsync.outbound.verp import load_key
        from mailsync.store import Store
        from mailsync.telemetry.metrics import Metrics

        self.path = write_config(directory, incoming, accounts=accounts)
        loaded = load_file(self.path)
        assert loaded.config is not None, loaded.problems
        self.config = loaded.config
        self.store = Store.open(self.config.daemon.state_dir)
        self.verp_key = load_key(self.config.daemon.state_dir)
        self.metrics = Metrics()
        self.metrics.prime(self.config)
        self._pollers: list[Any] = []

    def server(self, name: str) -> Any:
        return next(s for s in self.config.incoming_servers if s.name == name)

    def poller(self, name: str, **kwargs: Any) -> Any:
        from mailsync.inbound.poller import Poller

        server = kwargs.pop("server", None) or self.server(name)
        kwargs.setdefault("verp_key", self.verp_key)
        poller = Poller(self.config, server, self.store, self.metrics, **kwargs)
        self._pollers.append(poller)
        return poller

    def rows(self, server: str | None = None) -> list[sqlite3.Row]:
        """The fetched rows (of one server), oldest first."""
        cur = self.store.conn.execute(
            "SELECT * FROM fetched" + (" WHERE server = ?" if server else "") + " ORDER BY id",
            (server,) if server else ())
        cur.row_factory = sqlite3.Row
        return cur.fetchall()

    def metric(self, name: str, **labels: str) -> float | None:
        value: float | None = self.metrics.registry.get_sample_value(name, labels)
        return value

    def close(self) -> None:
        for poller in self._pollers:
            poller.close()
        self.store.close()


@pytest.fixture(name="rig")
def rig_fixture(tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    """Factory: ``rig(incoming_yaml)`` loads a config around it; closed at teardown."""
    made: list[Rig] = []

    def make(incoming: str, **kwargs: Any) -> Rig:
        made.append(Rig(tmp_path, incoming, **kwargs))
        return made[-1]

    yield make
    for r in made:
        r.close()


def dovecot_binary() -> str | None:
    """Dovecot's master binary (also found in /usr/sbin when that is not on PATH)."""
    found = shutil.which("dovecot")
    if found is None and os.access("/usr/sbin/dovecot", os.X_OK):
        found = "/usr/sbin/dovecot"
    return found


def _need_dovecot() -> None:
    need(dovecot_binary() is not None, "dovecot is not installed")


# Each test module that imports the fixture gets its own session-scoped instance of it;
# they share one Dovecot, stopped when the last of them is torn down (at session end).
_SHARED: list[Dovecot] = []
_USERS = [0]


@pytest.fixture(scope="session", name="dovecot")
def dovecot_fixture() -> Iterator[Dovecot]:
    """One Dovecot for the whole session (STARTTLS and implicit TLS offered)."""
    _need_dovecot()
    if not _SHARED:
        _SHARED.append(Dovecot().start())
    _USERS[0] += 1
    yield _SHARED[0]
    _USERS[0] -= 1
    if _USERS[0] == 0:
        _SHARED.pop().stop()


@pytest.fixture(name="mailbox")
def mailbox_fixture(dovecot: Dovecot) -> Mailbox:
    """A fresh user and Maildir on the session's Dovecot."""
    return dovecot.add_user()


@pytest.fixture(scope="module", name="plain_dovecot")
def plain_dovecot_fixture() -> Iterator[Dovecot]:
    """A Dovecot without TLS (it offers no STARTTLS), for the module that asks for it."""
    _need_dovecot()
    server = Dovecot(ssl_enabled=False).start()
    yield server
    server.stop()


dovecot = dovecot_fixture
mailbox = mailbox_fixture
plain_dovecot = plain_dovecot_fixture
rig = rig_fixture
