"""A real PostgreSQL for tests: ``initdb`` in a temp dir, started on a free loopback port.

One server per test session (``postgres`` fixture, registered by tests/conftest.py),
run as an unprivileged user (PostgreSQL refuses to run as root: ``nobody`` when the
tests run as root) from Debian's binaries (``/usr/lib/postgresql/*/bin``, or ``pg_ctl``
on PATH). It listens on 127.0.0.1 and on a unix socket in its own directory, trusts
local connections, and runs with ``fsync = off`` (a test database is thrown away; commits
stay synchronous, ``synchronous_commit = on``, which is what mailsync asks for). Each
test gets a fresh database from ``pg_dsn`` (``CREATE DATABASE``), dropped afterwards.
Without the binaries the fixtures skip, and fail under MAILSYNC_REQUIRE_SERVERS=1.

    def test_x(pg_dsn):
        ...  # daemon.store: {postgresql: {dsn: {env: MAILSYNC_DSN}}} with MAILSYNC_DSN=pg_dsn
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailsync.config.secrets import Secret
from mailsync.config.tree import StoreBackend
from mailsync.store import Store
from tests.conftest import need

HOST = "127.0.0.1"
PASSWORD = "pg-test-secret-7f3a"  # the superuser's: tests check that it never shows
_COUNTER = itertools.count(1)


def binaries() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    if found:
        return Path(found[0]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Postgres:
    """One PostgreSQL cluster in a temp dir, as an unprivileged user when run as root."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="mailsync-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "socket"
        self.port = _free_port()
        self.user = "nobody" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        self.log = self.root / "postgres.log"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = list(args)
        if os.geteuid() == 0:
            command = ["setpriv", f"--reuid={self.user}", f"--regid={self._gid()}",
                       "--clear-groups", "--", *command]
        return subprocess.run(command, check=check, capture_output=True, text=True,
                              timeout=120, cwd=self.root)

    def _gid(self) -> int:
        return pwd.getpwnam(self.user).pw_gid

    def start(self) -> Postgres:
        self.socket_dir.mkdir()
        pwfile = self.root / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        if os.geteuid() == 0:
            uid = pwd.getpwnam(self.user).pw_uid
            for path in (self.root, self.socket_dir, pwfile):
                os.chown(path, uid, self._gid())
        self.root.chmod(0o700)
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                  "--pwfile", str(pwfile), "--auth-local=trust", "--auth-host=scram-sha-256",
                  "-E", "UTF8", "--locale=C.UTF-8" if _has_c_utf8() else "--locale=C")
        options = (f"-c listen_addresses={HOST} -c port={self.port} "
                   f"-c unix_socket_directories={self.socket_dir} -c fsync=off "
                   "-c full_page_writes=off -c max_connections=200 -c shared_buffers=32MB")
        done = self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l",
                         str(self.log), "-o", options, "-w", "-t", "60", "start", check=False)
        if done.returncode != 0:
            raise RuntimeError(f"postgres did not start: {done.stderr}\n{self.log_text()}")
        return self

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def dsn(self, dbname: str = "postgres") -> str:
        """A URI with the password (what a config's MAILSYNC_DSN holds)."""
        return f"postgresql://postgres:{PASSWORD}@{HOST}:{self.port}/{dbname}"

    def admin(self, sql: str) -> None:
        """Run ``sql`` as the superuser on the maintenance database (autocommit)."""
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def create_database(self) -> str:
        name = f"t{os.getpid()}_{next(_COUNTER)}"
        self.admin(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w",
                  "stop", check=False)

    def restart(self) -> None:
        """Start again after :meth:`stop` (same port, same data)."""
        options = (f"-c listen_addresses={HOST} -c port={self.port} "
                   f"-c unix_socket_directories={self.socket_dir} -c fsync=off")
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                  "-o", options, "-w", "-t", "60", "start")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.admin("SELECT 1")
                return
            except Exception:  # noqa: BLE001 - not accepting connections yet
                time.sleep(0.1)

    def cleanup(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def _has_c_utf8() -> bool:
    done = subprocess.run(["locale", "-a"], capture_output=True, text=True, check=False)
    return any(line.lower().replace("-", "") in ("c.utf8",) for line in done.stdout.split())


def need_postgres() -> Path:
    """The binaries' directory; skip (or fail under MAILSYNC_REQUIRE_SERVERS=1) without."""
    bindir = binaries()
    need(bindir is not None and (bindir / "initdb").exists(),
         "PostgreSQL is not installed (Debian: apt-get install postgresql)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        need(False, "psycopg is not installed (pip install -e '.[test]')")
    assert bindir is not None
    return bindir


_SHARED: list[Postgres] = []


@pytest.fixture(scope="session", name="postgres")
def postgres_fixture() -> Iterator[Postgres]:
    """One PostgreSQL for the whole session, stopped at its end."""
    bindir = need_postgres()
    if not _SHARED:
        _SHARED.append(Postgres(bindir).start())
    yield _SHARED[0]
    server = _SHARED.pop()
    server.cleanup()


@pytest.fixture(name="pg_dsn")
def pg_dsn_fixture(postgres: Postgres) -> Iterator[str]:
    """A DSN of a fresh, empty database, dropped after the test."""
    name = postgres.create_database()
    yield postgres.dsn(name)
    postgres.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def either_backend(request: pytest.FixtureRequest) -> StoreBackend | None:
    """Each store backend in turn: None (SQLite in state_dir), then a fresh PostgreSQL
    database (``pg_dsn``)."""
    if request.param == "sqlite":
        return None
    return StoreBackend("postgresql", Secret("plain", request.getfixturevalue("pg_dsn")))


@pytest.fixture
def either_store(either_backend: StoreBackend | None, tmp_path: Path) -> Iterator[Store]:
    """An open Store in ``tmp_path/state`` on each backend in turn, closed after the test."""
    opened = Store.open(tmp_path / "state", backend=either_backend)
    yield opened
    opened.close()
