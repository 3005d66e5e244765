"""What the one-shot commands import (#19: a cheap start for cron, `send` and scripts).

Each command runs as its own process, as cron or an application runs it, on a file whose
schema verdict is remembered: none imports jsonschema (or the other heavy libraries it
does not use); `status` does not even run the loader (it needs only the YAML). A poll that
finds nothing reads no message (no email package, no activities); `run --once` with
nothing to take or send forks no pickup child and starts no thread, and with something
to take it forks its pickup child before it starts any thread or imports its sender.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

HEAVY = {"jsonschema", "authlib", "requests", "aiosmtpd", "watchdog"}
# Not for the commands that neither send nor poll nor serve metrics.
NETWORK = {"prometheus_client", "imapclient", "smtplib"}

# The command as `python -m mailsync` runs it; at exit, what it imported, the forks it made
# (each with the threads alive and the modules imported at that moment), the threads it
# started and the collector's state.
WRAPPER = """\
import atexit, gc, json, os, runpy, sys, threading
out = sys.argv.pop(1)
collections = gc.get_stats()[0]["collections"]  # the interpreter's start made some
forks, threads = [], []
parent = os.getpid()
def before_fork():
    forks.append({"threads": [t.name for t in threading.enumerate()],
                  "modules": sorted(sys.modules)})
    mp = sys.modules.get("multiprocessing.util")  # a child of multiprocessing ends in
    if mp is not None and not hasattr(mp, "_facts"):  # its _exit_function, not atexit
        mp._facts = mp._exit_function
        def exit_function(*args, **kwargs):
            if os.getpid() != parent:
                open(out + ".child", "w").write(json.dumps(sorted(sys.modules)))
            return mp._facts(*args, **kwargs)
        mp._exit_function = exit_function
os.register_at_fork(before=before_fork)
_start = threading.Thread.start
def start(self, *args, **kwargs):
    threads.append(self.name)
    return _start(self, *args, **kwargs)
threading.Thread.start = start
atexit.register(lambda: open(out, "w").write(json.dumps({
    "modules": sorted(sys.modules), "forks": forks, "threads": threads,
    "frozen": gc.get_freeze_count(), "threshold": gc.get_threshold(),
    "collections": gc.get_stats()[0]["collections"] - collections})))
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


def process(tmp_path: Path, *args: str, stdin: str = "") -> dict[str, Any]:
    """What the command did as a process (see WRAPPER), and its output."""
    out = tmp_path / "modules.json"
    proc = subprocess.run([sys.executable, "-c", WRAPPER, str(out), *args], input=stdin,
                          capture_output=True, text=True, timeout=60, check=False)
    facts: dict[str, Any] = json.loads(out.read_text())
    facts["output"] = proc.stdout + proc.stderr
    return facts


def imported(tmp_path: Path, *args: str, stdin: str = "") -> set[str]:
    names = set(process(tmp_path, *args, stdin=stdin)["modules"])
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
    # A spool file's name and a new VERP key take os.urandom, not secrets (which imports
    # random, base64 and hmac at every start).
    assert "secrets" not in modules
    if name in ("send", "history", "status"):
        assert modules & NETWORK == set()


def test_send_imports_no_logging_when_it_has_nothing_to_log(tmp_path, cfg):
    # Every application's `mailsync send` pays what it imports: logging (with traceback,
    # string and its locks) only where a warning is written (files, spool).
    imported(tmp_path, "inbox", "poll", "-c", str(cfg))  # the verdict remembered
    args, stdin = COMMANDS["send"]
    facts = process(tmp_path, *args, "-c", str(cfg), stdin=stdin)
    assert "/spool/new/" in facts["output"]  # the message was dropped
    assert "logging" not in facts["modules"]


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
                                            "mailsync.errors", "mailsync.files",
                                            "mailsync.values", "mailsync.collector"))}
    assert {"mailsync.store", "mailsync.outbound", "mailsync.inbound"} & modules == set()


# Reading a fetched message, scheduling its activity, counting for /metrics: not for a poll
# that finds nothing.
MESSAGE_READING = {"email", "prometheus_client", "mailsync.activities.store",
                   "mailsync.activities.rules", "mailsync.inbound.bounces",
                   "mailsync.inbound.message", "mailsync.outbound.spoolparse"}
SENDING = {"multiprocessing", "mailsync.outbound.pickup", "mailsync.outbound.ingest",
           "mailsync.outbound.deliver", "mailsync.outbound.smtp"}


@pytest.mark.parametrize("name", ["inbox poll", "run --once"])
def test_a_poll_that_finds_nothing_reads_no_message(tmp_path, cfg, name):
    args, _ = COMMANDS[name]
    imported(tmp_path, "inbox", "poll", "-c", str(cfg))  # the verdict remembered
    facts = process(tmp_path, *args, "-c", str(cfg))
    assert "local: 0 fetched" in facts["output"]
    modules = set(facts["modules"]) | {m.split(".")[0] for m in facts["modules"]}
    assert modules & MESSAGE_READING == set()


def test_run_once_with_nothing_to_do_forks_no_child_and_starts_no_thread(tmp_path, cfg):
    imported(tmp_path, "inbox", "poll", "-c", str(cfg))
    facts = process(tmp_path, "run", "--once", "-c", str(cfg))
    assert "spool: 0 queued" in facts["output"] and "local: 0 fetched" in facts["output"]
    assert facts["forks"] == [] and facts["threads"] == []
    assert set(facts["modules"]) & SENDING == set()


def test_run_once_with_a_spool_file_still_forks_the_pickup_and_sends(tmp_path, cfg):
    sent = process(tmp_path, "send", "--user", "app", "--to", "a@example.org", "--subject",
                   "s", "-c", str(cfg), stdin="hi\n")
    assert "spool/new/" in sent["output"]
    facts = process(tmp_path, "run", "--once", "-c", str(cfg))
    # The relay's port 9 is closed: queued, then deferred, by the child and the sender.
    assert "1 queued" in facts["output"] and "1 deferred" in facts["output"]
    assert len(facts["forks"]) == 1 and "mailsync-deliver" in facts["threads"]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_run_once_forks_the_pickup_before_any_thread_and_before_the_sender(
        tmp_path, cfg, backend, request, monkeypatch):
    """The child's start runs beside the sender's imports, not after them; and none of
    mailsync's threads (a PostgreSQL node's heartbeat, the sender) exists when it is
    forked. On PostgreSQL the store's connection pool (psycopg_pool, opened by the start)
    has its scheduler and workers, idle on their queue: the child opens a store of its
    own and never touches the parent's pool."""
    if backend == "postgresql":
        monkeypatch.setenv("MAILSYNC_DSN", request.getfixturevalue("pg_dsn"))
        cfg.write_text(cfg.read_text().replace(
            "spool_dir: ", "store: {postgresql: {dsn: {env: MAILSYNC_DSN}}}, spool_dir: ", 1))
    from mailsync.outbound.spool import drop_eml, ensure_dirs

    ensure_dirs(tmp_path / "spool")
    drop_eml(tmp_path / "spool", b"X-Mailsync-User: app\r\nTo: a@example.org\r\n"
                                 b"Subject: s\r\n\r\nhi\r\n")
    facts = process(tmp_path, "run", "--once", "-c", str(cfg))
    assert "1 queued" in facts["output"] and "1 deferred" in facts["output"]
    (fork,) = facts["forks"]
    pool = {"mailsync-scheduler"} | {f"mailsync-worker-{i}" for i in range(8)}
    assert set(fork["threads"]) - pool == {"MainThread"}
    assert backend == "postgresql" or fork["threads"] == ["MainThread"]
    assert {"mailsync.outbound.deliver", "mailsync.outbound.smtp", "smtplib",
            "mailsync.outbound.ingest", "mailsync.daemon.node"} & set(fork["modules"]) == set()
    assert {"mailsync.outbound.deliver", "mailsync.daemon.node"} <= set(facts["modules"])
    if backend == "postgresql":
        assert "mailsync-node" in facts["threads"]  # started after the fork
    # The child counts no rejections for the parent's unserved metrics, and builds no
    # message from JSON fields (only those need email.policy's header registry).
    child = set(json.loads((tmp_path / "modules.json.child").read_text()))
    assert "mailsync.outbound.ingest" in child
    assert {"prometheus_client", "email.policy", "email.headerregistry"} & child == set()


def python_lines(code: str) -> list[str]:
    """The lines ``code`` prints, run by a fresh interpreter (nothing imported before)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True).stdout.split("\n")


def test_the_spool_module_imports_its_parser_on_first_use():
    code = ("import sys; from mailsync.outbound import spool; "
            "print('mailsync.outbound.spoolparse' in sys.modules, 'email' in sys.modules); "
            "from mailsync.outbound.spool import parse; "
            "print(parse is spool.parse, parse('a.json', b'{}', max_size=9).reason)")
    out = python_lines(code)
    assert out[:2] == ["False False", "True unparseable"]


def test_only_a_json_submission_imports_the_email_header_registry():
    code = ("import sys; from mailsync.outbound.spool import parse\n"
            "eml = parse('a.eml', b'X-Mailsync-User: app\\r\\nTo: a@example.org\\r\\n"
            "Subject: s\\r\\n\\r\\nhi\\r\\n', max_size=9999)\n"
            "print(eml.user, eml.recipients, 'email.policy' in sys.modules)\n"
            "js = parse('a.json', b'{\"user\": \"app\", \"to\": [\"b@example.org\"], "
            "\"subject\": \"s\", \"text\": \"hi\"}', max_size=9999)\n"
            "print(js.user, js.recipients, 'email.policy' in sys.modules)")
    out = python_lines(code)
    assert out[:2] == ["app ('a@example.org',) False", "app ('b@example.org',) True"]


def test_unserved_metrics_count_nothing_and_import_no_prometheus():
    code = ("import sys; from mailsync.telemetry.metrics import Metrics\n"
            "m = Metrics(served=False)\n"
            "m.messages_sent.labels('a', 's').inc(); m.send_duration.labels('s').observe(1)\n"
            "m.server_up.labels('s', 'outgoing').set(1); print(m.messages_rejected.collect())\n"
            "print('prometheus_client' in sys.modules)\n"
            "try:\n    m.registry\nexcept AttributeError as exc:\n    print(exc)")
    out = python_lines(code)
    assert out[:3] == ["[]", "False", "these metrics are not served: they have no registry"]


def test_the_process_freezes_its_objects_at_exit_and_a_test_runner_keeps_its_collector(
        tmp_path, cfg):
    facts = process(tmp_path, "status", "-c", str(cfg))
    assert "not running" in facts["output"]
    assert facts["frozen"] > 1000  # the interpreter's last collection has nothing to do
    from mailsync.cli import main

    threshold, frozen = gc.get_threshold(), gc.get_freeze_count()
    assert CliRunner().invoke(main, ["status", "-c", str(cfg)]).exit_code == 1
    assert (gc.get_threshold(), gc.get_freeze_count()) == (threshold, frozen)


@pytest.mark.parametrize("name", ["inbox poll", "status"])
def test_the_collector_is_patient_from_the_first_import_of_the_command_line(
        tmp_path, cfg, name):
    args, stdin = COMMANDS[name]
    imported(tmp_path, "inbox", "poll", "-c", str(cfg))  # the verdict remembered
    facts = process(tmp_path, *args, "-c", str(cfg), stdin=stdin)
    assert "Traceback" not in facts["output"]
    # With Python's threshold from the start, importing click and the command line alone
    # runs the collector ~15 times.
    assert facts["collections"] <= 2


def test_the_daemon_collects_garbage_as_python_sets_it():
    from mailsync.collector import STARTUP_GC_THRESHOLD, long_running

    before = gc.get_threshold()
    try:
        gc.set_threshold(STARTUP_GC_THRESHOLD, *before[1:])
        long_running()
        # Python's own thresholds, as a fresh interpreter has them (3.13 raised the first).
        assert str(gc.get_threshold()) == python_lines("import gc; print(gc.get_threshold())")[0]
    finally:
        gc.set_threshold(*before)


# TLS and the IMAP and POP3 libraries are for the servers that speak them: a Maildir poll,
# `send`, `history` and `status` need none (the Maildir writer's syncfs looks ctypes up
# at its first delivery).
WIRE = {"ssl", "_ssl", "imaplib", "poplib", "ctypes", "mailsync.netio",
        "mailsync.inbound.wireerrors"}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_a_command_without_a_network_server_to_poll_imports_no_tls(tmp_path, cfg, name):
    args, stdin = COMMANDS[name]
    imported(tmp_path, "inbox", "poll", "-c", str(cfg))  # the verdict remembered
    facts = process(tmp_path, *args, "-c", str(cfg), stdin=stdin)
    assert "Traceback" not in facts["output"]
    assert set(facts["modules"]) & WIRE == set()


@pytest.mark.parametrize("name", ["inbox poll", "run --once", "send", "history"])
def test_a_command_on_a_remembered_file_does_not_parse_it_again(tmp_path, cfg, name):
    args, stdin = COMMANDS[name]
    imported(tmp_path, "inbox", "poll", "-c", str(cfg))  # verdict and parsed form remembered
    facts = process(tmp_path, *args, "-c", str(cfg), stdin=stdin)
    assert "Traceback" not in facts["output"]
    assert {"yaml", "mailsync.config.yamlload"} & set(facts["modules"]) == set()


def test_an_imap_poll_imports_imapclient_without_importlib_metadata(tmp_path, cfg):
    text = cfg.read_text().replace(
        "incoming_servers: [", "incoming_servers: [{name: im, type: imap, host: 127.0.0.1, "
        "port: 9, security: none, username: u, password: {env: NO_SUCH_VAR}}, ")
    cfg.write_text(text)
    facts = process(tmp_path, "inbox", "poll", "--server", "im", "-c", str(cfg))
    assert "im: " in facts["output"]  # polled (and failed: nothing listens on port 9)
    assert "imapclient" in facts["modules"] and "importlib.metadata" not in facts["modules"]


def test_imapclient_keeps_its_version_without_importlib_metadata():
    code = ("import sys\nfrom mailsync.inbound import imapclientversion\n"
            "imapclientversion.prepare()\nimport imapclient\n"
            "print('importlib.metadata' in sys.modules)\n"
            "from importlib import metadata\n"
            "print(imapclient.__version__ == metadata.version('imapclient'))\n"
            "print(imapclient.version_info == (*map(int, imapclient.__version__.split('.')),"
            " 'final'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()
    assert out == ["False", "True", "True"]
