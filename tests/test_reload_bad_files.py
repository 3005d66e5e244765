"""`mailsync reload` (and `status`) on bad files reach the running daemon and print its
refusal: a deeply nested file, a duplicate `state_dir:` key, a changed state_dir. One
loader, the daemon's answer, never a traceback."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from mailsync.daemon.control import locate
from tests.daemon_helpers import DaemonProcess, daemon_config, wait_until
from tests.outbound_helpers import server_yaml

STATE = "  state_dir: ./state\n"


@pytest.fixture
def daemon(tmp_path):
    config = tmp_path / "config.yaml"
    good = daemon_config(tmp_path, server_yaml("main", 2525))
    config.write_text(good)
    d = DaemonProcess(config)
    try:
        d.wait_healthy()
        yield d, good
    finally:
        d.stop()


def _cli(command: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailsync", command, "-c", str(config)],
                          capture_output=True, text=True, timeout=60, cwd=config.parent)


def _refused(config: Path, text: str) -> list[str]:
    config.write_text(text)
    proc = _cli("reload", config)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "cannot reach the daemon" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("refused: ") and "the configuration in force stays" in lines[0]
    assert len(lines) <= 5, proc.stderr
    return lines


def test_a_deeply_nested_file_is_refused_by_the_daemon(daemon):
    d, good = daemon
    lines = _refused(d.config, good + "x: " + "[" * 5000 + "]" * 5000 + "\n")
    assert "config.yaml:" in lines[1] and "nesting depth" in lines[1]


def test_a_duplicate_state_dir_key_is_refused_by_the_daemon(daemon, tmp_path):
    d, good = daemon
    lines = _refused(d.config, good.replace(STATE, STATE + "  state_dir: ./other\n"))
    assert "duplicate key 'state_dir'" in lines[1]
    assert not (tmp_path / "other").exists()


def test_a_changed_state_dir_is_the_daemons_refusal(daemon, tmp_path):
    d, good = daemon
    lines = _refused(d.config, good.replace(STATE, "  state_dir: ./other\n"))
    assert f"daemon.state_dir changed ({tmp_path}/state → {tmp_path}/other)" in lines[0]
    status = _cli("status", d.config)
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith(f"running (pid {d.proc.pid}): ")
    d.config.write_text(good)  # back: the same daemon applies it
    back = _cli("reload", d.config)
    assert back.returncode == 0, back.stderr
    assert back.stdout.startswith("unchanged:")


def test_the_locator_answers_only_for_its_file(daemon, tmp_path):
    d, _good = daemon
    assert locate(d.config) == tmp_path / "state" / "mailsync.sock"
    assert locate(tmp_path / "another.yaml") is None
    d.stop()
    assert locate(d.config) is None


ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00"


def test_status_shows_the_last_reloads_outcome(daemon):
    d, good = daemon
    status = _cli("status", d.config)
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines()[1] == "last reload: none since the daemon started"

    # A saved broken file (a grant naming an undeclared user) is refused by the file
    # watch: status names the time and the first error with its line and column.
    d.config.write_text(good.replace("granted_to: [bob]", "granted_to: [bob, zed]"))

    def refused() -> str | None:
        out = _cli("status", d.config).stdout
        return out if "last reload: refused" in out else None

    out = wait_until(refused, 20, "status reports the refused reload")
    assert isinstance(out, str)
    lines = out.splitlines()
    assert lines[0].startswith(f"running (pid {d.proc.pid}): ")
    assert re.fullmatch(
        rf"last reload: refused at {ISO}: {re.escape(str(d.config))}:\d+:\d+: error: "
        r"accounts\[1\]\.granted_to\[1\]: 'zed' is not a declared user .*", lines[1]), lines[1]

    # A good file again (a real change): applied, with the plan's summary.
    d.config.write_text(good.replace("granted_to: [bob]", "granted_to: [bob, alice]"))

    def applied() -> str | None:
        out = _cli("status", d.config).stdout
        return out if "last reload: applied" in out else None

    out = wait_until(applied, 20, "status reports the applied reload")
    assert isinstance(out, str)
    assert re.fullmatch(rf"last reload: applied at {ISO}: Plan: 0 to add, 1 to change, "
                        r"0 to remove\.", out.splitlines()[1]), out


def test_status_lists_the_first_errors_and_counts_the_rest():
    from mailsync.cli.daemon import last_reload_lines

    last = {"result": "refused", "at": 0, "summary": "5 error(s) in c.yaml",
            "errors": ["c.yaml:1:1: error: a", "c.yaml:2:1: error: b", "c.yaml:3:1: error: c"],
            "error_count": 5}
    assert last_reload_lines(last) == [
        "last reload: refused at 1970-01-01T00:00:00+00:00: c.yaml:1:1: error: a",
        "  c.yaml:2:1: error: b", "  c.yaml:3:1: error: c",
        "  ... and 2 more (mailsync validate)"]
