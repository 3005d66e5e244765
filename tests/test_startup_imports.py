"""What the one-shot commands import (#19: a cheap start for cron, `send` and scripts).

Each command runs as its own process, as cron or an application runs it, on a file whose
schema verdict is remembered: none imports jsonschema (or the other heavy libraries it
does not use); `status` does not even run the loader (it needs only the YAML).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = {"jsonschema", "authlib", "requests", "aiosmtpd", "watchdog"}
# Not for the commands that neither send nor poll nor serve metrics.
NETWORK = {"prometheus_client", "imapclient", "smtplib"}

WRAPPER = """\
import atexit, json, runpy, sys
out = sys.argv.pop(1)
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
sys.argv[0] = "mailsync"
runpy.run_module("mailsync", run_name="__main__")
"""


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    (tmp_path / "md" / "new").mkdir(parents=True)
    for sub in ("cur", "tmp"):
        (tmp_path / "md" / sub).mkdir()
    (tmp_path / "state").mkdir(mode=0o750)
    path = tmp_path / "config.yaml"
    path.write_text(f"""\
version: 1
daemon: {{state_dir: {tmp_path}/state, spool_dir: {tmp_path}/spool}}
users: [app]
outgoing_servers: [{{name: relay, host: 127.0.0.1, port: 9, security: none}}]
accounts: [{{name: n, email: n@example.com, server: relay, granted_to: [app]}}]
incoming_servers: [{{name: local, type: local, path: {tmp_path}/md}}]
""")
    return path


def imported(tmp_path: Path, *args: str, stdin: str = "") -> set[str]:
    out = tmp_path / "modules.json"
    subprocess.run([sys.executable, "-c", WRAPPER, str(out), *args], input=stdin,
                   capture_output=True, text=True, timeout=60, check=False)
    names = set(json.loads(out.read_text()))
    return names | {m.split(".")[0] for m in names}


COMMANDS = {
    "inbox poll": (["inbox", "poll"], ""),
    "run --once": (["run", "--once"], ""),
    "send": (["send", "--user", "app", "--to", "a@example.org", "--subject", "s"], "hi\n"),
    "history": (["history", "--limit", "20"], ""),
    "status": (["status"], ""),
}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_a_one_shot_command_on_a_remembered_file_imports_no_heavy_library(
        tmp_path, cfg, name):
    args, stdin = COMMANDS[name]
    imported(tmp_path, "inbox", "poll", "-c", str(cfg))  # the verdict remembered
    modules = imported(tmp_path, *args, "-c", str(cfg), stdin=stdin)
    assert "mailsync.cli" in modules  # the command ran
    assert modules & HEAVY == set()
    if name in ("send", "history", "status"):
        assert modules & NETWORK == set()


def test_status_reads_only_the_yaml(tmp_path, cfg):
    modules = imported(tmp_path, "status", "-c", str(cfg))
    assert "mailsync.config.yamlload" in modules
    assert {"mailsync.config.load", "mailsync.config.model", "mailsync.config.checks",
            "mailsync.config.schema"} & modules == set()


def test_validate_still_imports_only_the_config_side(tmp_path, cfg):
    modules = imported(tmp_path, "validate", "-c", str(cfg))
    assert "jsonschema" in modules  # validate always runs the schema
    assert {m for m in modules if m.startswith("mailsync.")} <= {
        m for m in modules if m.startswith(("mailsync.cli", "mailsync.config", "mailsync.auth",
                                            "mailsync.errors", "mailsync.files"))}
    assert {"mailsync.store", "mailsync.outbound", "mailsync.inbound"} & modules == set()
