"""A typo in the config file does not stop the commands that only need state_dir and
spool_dir: they use the configuration the daemon last applied, with one warning naming
the file's first error; `run`, `validate`, `plan` keep refusing the file. And `history`
works on a store the user may only read (a real unprivileged user)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import need
from tests.outbound_helpers import history, run, run_once, server_yaml, write_config
from tests.smtpserver import smtp_server_fixture  # noqa: F401

TYPO = ("users: [alice, bob, carol]", "users: [alice, bob, carol]\nuserz: [dave]")


def _applied_then_broken(tmp_path: Path, port: int) -> tuple[Path, str]:
    """A config applied by `run --once` (one message sent), then broken by a typo."""
    config = write_config(tmp_path, server_yaml("main", port))
    assert run(["send", "-c", str(config), "--user", "alice", "--to", "x@example.org",
                "--subject", "before"], input="hi\n").exit_code == 0
    run_once(config)
    good = config.read_text()
    config.write_text(good.replace(*TYPO))
    line = good.replace(*TYPO).splitlines().index("userz: [dave]") + 1
    return config, f"{config}:{line}:1"


def _one_warning(stderr: str, where: str) -> None:
    warnings = [x for x in stderr.splitlines() if x.startswith("warning:")]
    assert len(warnings) == 1, stderr
    assert warnings[0].startswith(f"warning: {where}: error: ")
    assert "userz" in warnings[0]
    assert "using the configuration last applied (" in warnings[0]


def test_a_typo_keeps_send_history_queue_inbox_and_test_working(tmp_path, smtp_server):
    server = smtp_server()
    config, where = _applied_then_broken(tmp_path, server.port)
    c = str(config)

    sent = run(["send", "-c", c, "--user", "alice", "--to", "y@example.org",
                "--subject", "after the typo"], input="body\n")
    assert sent.exit_code == 0, sent.output
    _one_warning(sent.stderr, where)
    dropped = Path(sent.stdout.strip())
    assert dropped.parent == tmp_path / "spool" / "new" and dropped.exists()

    listed = run(["history", "-c", c, "--format", "json"])
    assert listed.exit_code == 0, listed.output
    _one_warning(listed.stderr, where)
    rows = json.loads(listed.stdout)
    assert [r["status"] for r in rows] == ["sent"]
    mid = rows[0]["id"]

    shown = run(["history", "show", str(mid), "-c", c, "--format", "json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["subject"] == "before"
    _one_warning(shown.stderr, where)

    queued = run(["queue", "list", "-c", c])
    assert queued.exit_code == 0, queued.output
    _one_warning(queued.stderr, where)
    deleted = run(["queue", "delete", str(mid), "-c", c])
    assert deleted.exit_code == 1  # a sent message cannot be deleted: the store answered
    assert f"message {mid} is sent" in deleted.stderr
    _one_warning(deleted.stderr, where)

    inbox = run(["inbox", "-c", c])
    assert inbox.exit_code == 0, inbox.output
    _one_warning(inbox.stderr, where)

    tested = run(["test", "-c", c])
    assert tested.exit_code == 0, tested.output
    assert tested.stdout.strip() == "main: OK (plain text, no AUTH)"
    _one_warning(tested.stderr, where)


def test_run_validate_plan_and_inbox_poll_still_refuse_the_file(tmp_path, smtp_server):
    server = smtp_server()
    config, where = _applied_then_broken(tmp_path, server.port)
    for args in (["run", "--once"], ["validate"], ["plan"], ["inbox", "poll"]):
        result = run([*args, "-c", str(config)])
        assert result.exit_code == 1, (args, result.output)
        assert f"{where}: error: " in result.output, args
        assert "using the configuration last applied" not in result.output, args


def test_with_nothing_applied_a_bad_file_is_refused_as_before(tmp_path):
    config = write_config(tmp_path, server_yaml("main", 2525))
    config.write_text(config.read_text().replace(*TYPO))
    result = run(["history", "-c", str(config)])
    assert result.exit_code == 1
    assert "userz" in result.stderr and "history" not in result.stdout
    # The warning of the part that fits the schema comes too (no user names unix_users).
    assert "config.yaml: refused: 1 error, 1 warning" in result.stderr
    assert "using the configuration last applied" not in result.stderr
    missing = run(["send", "-c", str(tmp_path / "nope.yaml"), "--user", "alice", "--to",
                   "x@example.org", "--subject", "s"], input="b\n")
    assert missing.exit_code == 1
    assert "nope.yaml: no such file" in missing.stderr


def test_a_syntax_error_still_finds_the_last_applied_config(tmp_path, smtp_server):
    server = smtp_server()
    config = write_config(tmp_path, server_yaml("main", server.port))
    run_once(config)
    config.write_text(config.read_text().replace("users: [alice, bob, carol]",
                                                 "users: [alice, bob, carol"))
    result = run(["queue", "list", "-c", str(config)])
    assert result.exit_code == 0, result.output
    assert "YAML syntax error" in result.stderr
    assert "using the configuration last applied" in result.stderr


CAPS = "-dac_override,-dac_read_search"


def _without_override(*args: str) -> subprocess.CompletedProcess[str]:
    """``mailsync ARGS`` as root without CAP_DAC_OVERRIDE: file modes then bind it like
    any user (a 0555 state_dir is read only, even to its owner)."""
    return subprocess.run(["setpriv", "--bounding-set", CAPS, "--inh-caps", CAPS, "--",
                           sys.executable, "-m", "mailsync", *args],
                          capture_output=True, text=True, timeout=60)


def test_history_on_a_store_the_user_may_only_read(tmp_path, smtp_server):
    need(os.geteuid() == 0 and shutil.which("setpriv") is not None,
         "needs root and setpriv (util-linux) to drop CAP_DAC_OVERRIDE")
    server = smtp_server()
    base = tmp_path
    config = write_config(base, server_yaml("main", server.port))
    assert run(["send", "-c", str(config), "--user", "alice", "--to", "x@example.org",
                "--subject", "read me"], input="hi\n").exit_code == 0
    run_once(config)
    assert [r["subject"] for r in history(config)] == ["read me"]
    state = base / "state"
    # Read only to its owner, with no -wal/-shm: SQLite cannot create them.
    assert not list(state.glob("mailsync.db-*"))  # the last connection removed them
    (state / "mailsync.db").chmod(0o444)
    state.chmod(0o555)
    listed = _without_override("history", "-c", str(config), "--format", "json")
    assert listed.returncode == 0, listed.stderr
    assert [r["subject"] for r in json.loads(listed.stdout)] == ["read me"]
    mid = json.loads(listed.stdout)[0]["id"]
    shown = _without_override("history", "show", str(mid), "-c", str(config))
    assert shown.returncode == 0, shown.stderr
    assert "read me" in shown.stdout
    assert sorted(p.name for p in state.iterdir() if p.name.startswith("mailsync.db")) == [
        "mailsync.db", "mailsync.db.writer"]  # the reader created nothing
    # A typo as well: still read, from the applied config in the read-only store.
    config.write_text(config.read_text().replace(*TYPO))
    broken = _without_override("history", "-c", str(config))
    assert broken.returncode == 0, broken.stderr
    assert "read me" in broken.stdout
    assert "using the configuration last applied" in broken.stderr
