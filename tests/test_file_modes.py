"""No file mailsync writes is readable by other users, whatever the umask (#11 item 5).

The daemon runs as a subprocess under umask 022; a real unprivileged user (``nobody``,
through runuser, or a forked child that setuid()s to it) tries to read what it wrote.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailsync.outbound import spool
from mailsync.outbound.spool import drop
from mailsync.outbound.types import Rejection
from mailsync.store import Store
from tests.conftest import need
from tests.daemon_helpers import DaemonProcess, daemon_config, wait_until
from tests.outbound_helpers import history, run, server_yaml, write_config


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _as_root() -> None:
    need(os.geteuid() == 0, "needs root: a real unprivileged user reads the files")
    need(shutil.which("runuser") is not None, "runuser is not installed")


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory (and parents) that every user may traverse, unlike pytest's tmp_path."""
    path = Path(tempfile.mkdtemp(prefix="mailsync-modes-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _umask_022() -> None:
    os.umask(0o022)


def _nobody_reads(path: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["runuser", "-u", "nobody", "--", "cat", str(path)],
                          capture_output=True, timeout=30)


def test_run_once_under_umask_022_writes_nothing_others_may_read(tmp_path, smtp_server):
    srv = smtp_server()
    incoming = ("  - name: drop\n    type: local\n    path: ./drop\n    poll_interval: 1m\n"
                "    deliver_to: {maildir: ./copies/support}\n")
    cfg = tmp_path / "config.yaml"
    text = daemon_config(tmp_path, server_yaml("main", srv.port)).replace(
        "accounts:\n", f"incoming_servers:\n{incoming}accounts:\n", 1)
    cfg.write_text(text)
    for sub in ("new", "cur", "tmp"):
        (tmp_path / "drop" / sub).mkdir(parents=True)
    (tmp_path / "drop" / "new" / "1.host").write_bytes(b"Subject: hi\r\n\r\nbody\r\n")
    spool.ensure_dirs(tmp_path / "spool")
    drop(tmp_path / "spool", user="alice", to=["ann@example.org"], subject="ok", text="x")
    bad = tmp_path / "spool" / "new" / "bad.json"
    bad.write_text("{not json")
    bad.chmod(0o644)

    proc = subprocess.run([sys.executable, "-m", "mailsync", "run", "--once", "-c", str(cfg)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          preexec_fn=_umask_022)
    assert proc.returncode == 0, proc.stderr
    assert "1 sent" in proc.stdout and "1 rejected" in proc.stdout

    state = tmp_path / "state"
    assert _mode(state) == 0o750
    assert {"mailsync.db", "mailsync.db.writer", "store-id"} <= {p.name for p in state.iterdir()}
    for path in state.rglob("*"):
        expected = 0o750 if path.is_dir() else 0o640
        assert _mode(path) & ~expected == 0, f"{path}: {_mode(path):04o}"
    rejected = tmp_path / "spool" / "rejected"
    assert _mode(rejected / "bad.json") == 0o640
    assert _mode(rejected / "bad.json.error") == 0o640
    copies = tmp_path / "copies" / "support"
    assert [_mode(copies / sub) for sub in ("", "tmp", "new", "cur")] == [0o750] * 4
    [copy] = list((copies / "new").iterdir())
    assert _mode(copy) & 0o077 == 0  # 0600, as before


def test_a_running_daemon_keeps_its_database_and_wal_from_other_users(open_dir,
                                                                      smtp_server):
    _as_root()
    srv = smtp_server()
    cfg = open_dir / "config.yaml"
    cfg.write_text(daemon_config(open_dir, server_yaml("main", srv.port)))
    spool.ensure_dirs(open_dir / "spool")
    old = os.umask(0o022)
    try:
        daemon = DaemonProcess(cfg)
    finally:
        os.umask(old)
    state = open_dir / "state"
    try:
        daemon.wait_healthy()
        drop(open_dir / "spool", user="alice", to=["ann@example.org"], subject="secret",
             text="the body no one else may read")
        srv.wait_for(1)
        wal, shm = state / "mailsync.db-wal", state / "mailsync.db-shm"
        wait_until(lambda: wal.exists() and shm.exists(), what="the WAL and the SHM")
        assert b"the body no one else may read" in wal.read_bytes()
        assert {p.name: _mode(p) for p in (state / "mailsync.db", wal, shm)} == {
            "mailsync.db": 0o640, "mailsync.db-wal": 0o640, "mailsync.db-shm": 0o640}
        assert _mode(state) == 0o750
        assert _nobody_reads(wal).returncode != 0  # state_dir is closed to others
        state.chmod(0o755)  # and if an operator opens it, the files themselves are
        assert _nobody_reads(cfg).returncode == 0  # (the test itself can read a 0644 file)
        for path in (state / "mailsync.db", wal):
            denied = _nobody_reads(path)
            assert denied.returncode != 0 and b"Permission denied" in denied.stderr
    finally:
        assert daemon.stop() == 0


def test_loose_modes_are_warned_about_and_others_access_removed(tmp_path):
    cfg = write_config(tmp_path, server_yaml("main", 9))
    state = tmp_path / "state"
    Store.open(state).close()
    state.chmod(0o755)
    (state / "mailsync.db").chmod(0o644)

    result = run(["run", "--once", "-c", str(cfg)])
    assert result.exit_code == 0, result.output
    assert f"WARNING mailsync.files: {state} has mode 0755, more open than 0750; now 0750" \
        in result.stderr
    assert f"{state / 'mailsync.db'} has mode 0644, more open than 0640; now 0640" \
        in result.stderr
    assert (_mode(state), _mode(state / "mailsync.db")) == (0o750, 0o640)

    (state / "mailsync.db").chmod(0o660)  # group write: perhaps on purpose, only said
    again = run(["run", "--once", "-c", str(cfg)])
    assert f"{state / 'mailsync.db'} has mode 0660, more open than 0640; its group may " \
           "write it" in again.stderr
    assert _mode(state / "mailsync.db") == 0o660
    quiet = run(["history", "-c", str(cfg)])  # readers change nothing and say nothing
    assert quiet.stderr == "" and history(cfg) == []


def test_a_rejected_file_of_another_user_becomes_the_daemons_own_0640(open_dir):
    """The daemon (here nobody) cannot chmod an app's file: it copies it into its own."""
    _as_root()
    nobody = pwd.getpwnam("nobody")
    spool_dir = open_dir / "spool"
    spool.ensure_dirs(spool_dir)
    for sub in ("new", "rejected"):
        os.chown(spool_dir / sub, nobody.pw_uid, nobody.pw_gid)
    app_file = spool_dir / "new" / "bad.json"
    app_file.write_bytes(b"{not json")
    app_file.chmod(0o644)  # the app's (root's) file, readable by the daemon

    pid = os.fork()
    if pid == 0:  # the daemon's side, as a real unprivileged user
        code = 1
        try:
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            spool.reject(spool_dir, app_file, Rejection("unparseable", "not valid JSON"))
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0

    rejected = spool_dir / "rejected" / "bad.json"
    error = spool_dir / "rejected" / "bad.json.error"
    assert not app_file.exists()
    assert rejected.read_bytes() == b"{not json"
    for path in (rejected, error):
        st = path.stat()
        assert (st.st_uid, _mode(path)) == (nobody.pw_uid, 0o640), path
    assert sorted(p.name for p in (spool_dir / "rejected").iterdir()) == [
        "bad.json", "bad.json.error"]  # no copy left behind
