"""daemon.auto_reload: false — a saved file waits for `mailsync reload` or SIGHUP, so that
`mailsync plan` on the live file is the review step; true (the default) applies on save."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.daemon_helpers import daemon_config, daemons_fixture, wait_until  # noqa: F401
from tests.outbound_helpers import run, server_yaml
from tests.smtpserver import smtp_server_fixture  # noqa: F401

NOT_APPLIED = "config changed; not applied (auto_reload: false)"


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(".config.yaml.swp")  # as editors do: write, then rename over
    tmp.write_text(text)
    os.replace(tmp, path)


def _reload(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailsync", "reload", "-c", str(config)],
                          capture_output=True, text=True, timeout=60)


def _plan(config: Path) -> tuple[int, str]:
    result = run(["plan", "-c", str(config), "--detailed-exitcode"])
    return result.exit_code, result.stdout


def test_with_auto_reload_off_saving_waits_for_reload_or_sighup(tmp_path, smtp_server, daemons):
    server = smtp_server()
    text = daemon_config(tmp_path, server_yaml("main", server.port)).replace(
        "daemon:\n", "daemon:\n  auto_reload: false\n")
    config = tmp_path / "config.yaml"
    config.write_text(text)
    d = daemons(config)

    # Saved: logged once, not applied; plan on the live file shows what is pending.
    edited = text.replace("granted_to: [bob]", "granted_to: [bob, carol]")
    _write(config, edited)
    wait_until(lambda: NOT_APPLIED in d.log, what="the change logged")
    time.sleep(6)  # past the periodic check (RESCAN 5 s): it does not reload either
    assert d.log.count(NOT_APPLIED) == 1
    assert d.metric("mailsync_config_reloads_total", result="success") == 0
    code, out = _plan(config)
    assert code == 2 and "granted_to: +carol" in out

    # `mailsync reload` applies it.
    applied = _reload(config)
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.startswith("applied:")
    assert d.metric("mailsync_config_reloads_total", result="success") == 1
    assert _plan(config)[0] == 0

    # SIGHUP applies the next one.
    _write(config, edited.replace("granted_to: [bob, carol]", "granted_to: [carol]"))
    wait_until(lambda: d.log.count(NOT_APPLIED) == 2, what="the second change logged")
    assert _plan(config)[0] == 2
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: d.metric("mailsync_config_reloads_total", result="success") == 2,
               what="SIGHUP applied the file")
    assert _plan(config)[0] == 0

    # Turning auto_reload back on is itself applied by a reload; from then on, saving is
    # applying.
    on = edited.replace("  auto_reload: false\n", "")
    _write(config, on)
    wait_until(lambda: d.log.count(NOT_APPLIED) == 3)
    assert _reload(config).returncode == 0
    _write(config, on.replace("granted_to: [bob, carol]", "granted_to: [bob]"))
    wait_until(lambda: d.metric("mailsync_config_reloads_total", result="success") == 4,
               what="the save applied with auto_reload on")
    assert d.log.count(NOT_APPLIED) == 3
    assert _plan(config)[0] == 0
    assert d.stop() == 0


def test_auto_reload_defaults_to_true(tmp_path):
    from mailsync.config import load_text

    text = "version: 1\n"
    loaded = load_text(text, "c.yaml", tmp_path)
    assert loaded.config is not None and loaded.config.daemon.auto_reload is True
    loaded = load_text(text + "daemon: {auto_reload: false}\n", "c.yaml", tmp_path)
    assert loaded.config is not None and loaded.config.daemon.auto_reload is False
