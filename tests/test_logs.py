"""The daemon's log stream: a library's warning is formatted as mailsync's own lines, and
watchdog's harmless stop race is not an ERROR line.

Each case runs in a fresh interpreter: pytest's own handlers on the root logger would
take the records before logging's last resort is ever asked.
"""

from __future__ import annotations

import json
import subprocess
import sys

_SCRIPT = """
import logging
from mailsync.telemetry import logs
logs.setup({fmt!r})
{body}
"""


def _stderr(fmt: str, body: str) -> str:
    proc = subprocess.run([sys.executable, "-c", _SCRIPT.format(fmt=fmt, body=body)],
                          capture_output=True, text=True, timeout=60, check=True)
    return proc.stderr


def test_a_librarys_warning_is_a_json_line_in_a_json_log():
    err = _stderr("json", "logging.getLogger('psycopg.pool').warning('discarding %s', 'x')\n"
                          "logging.getLogger('psycopg.pool').info('not shown')")
    [line] = err.splitlines()
    record = json.loads(line)
    assert record["level"] == "warning" and record["logger"] == "psycopg.pool"
    assert record["message"] == "discarding x"


def test_a_librarys_warning_has_the_time_and_level_in_a_text_log():
    err = _stderr("text", "logging.getLogger('urllib3').warning('retrying')")
    [line] = err.splitlines()
    assert line.endswith(" WARNING urllib3: retrying")
    assert line[:4].isdigit()  # the time first, as every line of mailsync's


def test_watchdogs_stop_race_is_not_logged_and_its_other_errors_are(tmp_path):
    body = ("from pathlib import Path\n"
            "from mailsync.daemon.watch import Watch\n"
            "from mailsync.daemon.wakeup import Doorbell\n"
            "from mailsync.config.load import load_file\n"
            "from mailsync.outbound.spool import ensure_dirs\n"
            f"ensure_dirs(Path({str(tmp_path / 'spool')!r}))\n"
            f"cfg = Path({str(tmp_path / 'config.yaml')!r})\n"
            "watch = Watch(cfg, lambda: None, Doorbell())\n"
            "watch.start(load_file(cfg).config, '')\n"
            "log = logging.getLogger('watchdog.observers.inotify')\n"
            "log.error('InotifyEmitter.queue_events() called when the thread is inactive')\n"
            "log.error('something else')\n"
            "watch.stop()\n")
    (tmp_path / "config.yaml").write_text(
        f"version: 1\ndaemon: {{state_dir: {tmp_path}/state, spool_dir: {tmp_path}/spool}}\n"
        "users: [a]\noutgoing_servers:\n  - {name: r, host: 127.0.0.1, port: 25, "
        "security: none}\naccounts:\n  - {name: n, email: n@example.com, server: r, "
        "granted_to: [a]}\n")
    err = _stderr("text", body)
    assert "thread is inactive" not in err
    assert "ERROR watchdog.observers.inotify: something else" in err
