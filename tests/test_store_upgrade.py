"""A store at an older schema version is only upgraded by `mailsync run`: every other
command refuses it (naming the older daemon when one answers on the control socket)
instead of migrating it under that daemon."""

from __future__ import annotations

import pytest

from mailsync.daemon.control import ControlServer, socket_path
from mailsync.errors import StoreOutdated
from mailsync.store import Store
from mailsync.store import sqlitefile as store_module
from mailsync.store.migrations import MIGRATIONS
from tests.outbound_helpers import run, server_yaml, write_config
from tests.sqlitedb import sqlite_file

CURRENT = len(MIGRATIONS)
OLDER = CURRENT - 1


@pytest.fixture
def older(tmp_path, monkeypatch):
    """A config whose store was made by a mailsync one schema version older."""
    cfg = write_config(tmp_path, server_yaml("main", 2525))
    with monkeypatch.context() as m:
        m.setattr(store_module, "MIGRATIONS", MIGRATIONS[:OLDER])
        assert run(["run", "--once", "-c", str(cfg)]).exit_code == 0
    assert _version(tmp_path) == OLDER
    return cfg


def _version(tmp_path) -> int:
    with sqlite_file(tmp_path / "state" / "mailsync.db") as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


COMMANDS = [["history"], ["history", "show", "1"], ["queue", "list"], ["queue", "retry", "1"],
            ["inbox"]]


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_other_commands_refuse_an_older_store_and_leave_it_as_it_is(older, tmp_path, args):
    result = run([*args, "-c", str(older)])
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: {tmp_path}/state/mailsync.db: the store is at schema version {OLDER} and "
        f"this mailsync uses {CURRENT}: upgrade the daemon first (or run `mailsync run "
        "--once` once); `mailsync run` upgrades the store, other commands never do\n")
    assert _version(tmp_path) == OLDER


def test_with_an_older_daemon_running_the_refusal_names_it(older, tmp_path):
    # The control socket of a daemon of the older release (it answers `status`).
    server = ControlServer(socket_path(tmp_path / "state"),
                           lambda request: {"ok": True, "pid": 4242, "status": "..."})
    try:
        result = run(["history", "-c", str(older)])
    finally:
        server.close()
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: {tmp_path}/state/mailsync.db: the store is at schema version {OLDER} and a "
        "daemon of an older mailsync runs on it (pid 4242): upgrade the daemon first "
        "(restart it, e.g. `systemctl restart mailsync`: it upgrades the store); this "
        f"mailsync uses version {CURRENT}\n")
    assert _version(tmp_path) == OLDER


def test_run_upgrades_the_store_then_every_command_reads_it(older, tmp_path):
    assert run(["run", "--once", "-c", str(older)]).exit_code == 0
    assert _version(tmp_path) == CURRENT
    listed = run(["history", "-c", str(older)])
    assert listed.exit_code == 0 and listed.output == "(no messages)\n"


def test_a_read_only_open_refuses_an_older_store_too(older, tmp_path):
    with pytest.raises(StoreOutdated, match="upgrade the daemon first"):
        Store.open(tmp_path / "state", create=False, readonly=True)
    with pytest.raises(StoreOutdated):
        Store.open(tmp_path / "state", create=False, migrate=False)
    Store.open(tmp_path / "state", create=False).close()  # the default: the daemon's
    assert _version(tmp_path) == CURRENT


def test_a_new_store_is_made_at_the_current_version_by_any_command(tmp_path):
    cfg = write_config(tmp_path, server_yaml("main", 2525))
    (tmp_path / "state").mkdir()
    Store.open(tmp_path / "state", migrate=False).close()
    assert _version(tmp_path) == CURRENT
    assert run(["history", "-c", str(cfg)]).exit_code == 0
