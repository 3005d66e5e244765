#!/usr/bin/env python3
"""Whole-process time of the one-shot commands, the start cron and applications pay.

Each round runs, as separate processes and in a rotating order (interleaved: a busy
moment of the machine hits every command alike), ``python -c pass``, then:

- ``inbox poll`` with nothing new: an empty local Maildir, and an empty IMAP mailbox on
  a real Dovecot (tests/dovecot.py; skipped, and said so, when Dovecot is not installed);
- ``run --once`` with nothing to do (empty spool, nothing due, the empty Maildir);
- ``send`` of a short text message (read from stdin) into the spool;
- ``history --limit 20`` of a store holding 25 messages;
- ``status`` of a running daemon (on a state_dir of its own);
- ``mbsync`` syncing the same empty IMAP mailbox, where mbsync is installed (said so
  when it is not).

A first round (not counted) warms the page cache, writes the bytecode and lets mailsync
remember the file's schema verdict (state_dir/config-verdicts.json), as any earlier run
on the machine would have. Bytecode: the children run without PYTHONDONTWRITEBYTECODE,
their cache in the scratch directory (PYTHONPYCACHEPREFIX), as an installed package
has its .pyc; ``--no-bytecode`` runs them as the environment says. ``--source DIR`` runs
the mailsync found in DIR (another checkout, e.g. a worktree of an older commit);
``--against DIR`` also runs the one found in DIR, interleaved in the same rounds (each
on state and a daemon of its own), and prints each command's ratio: a before/after
comparison on a busy machine.

Prints one JSON line per command (every sample, the median, in ms) and a summary line.
State and spool go on a loop-mounted journaled ext4 image when this runs as root and
`mount` works; the output names the filesystem used. Target: each command ≤ 80 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from benchfs import workdir  # bench/benchfs.py, beside this script

ROOT = Path(__file__).resolve().parent.parent
TARGET_MS = 80.0

CONFIG = """\
version: 1
daemon:
  state_dir: {root}/{name}/state
  spool_dir: {root}/{name}/spool
  metrics_listen: 127.0.0.1:{metrics_port}
alias_domain: {{domain: example.com, bounce: bounce, catchall: catchall}}
users: [app]
outgoing_servers:
  - name: relay
    host: 127.0.0.1
    port: {closed_port}
    security: none
accounts:
  - name: notifications
    email: notifications@example.com
    server: relay
    granted_to: [app]
incoming_servers:
  - name: local
    type: local
    path: {maildir}
{imap}"""


def closed_port() -> int:
    """A loopback port nobody listens on now (the relay's: run --once has nothing to
    send; the daemon's /metrics)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def imap_mailbox(root: Path) -> Iterator[tuple[str, str | None, str]]:
    """An empty IMAP mailbox on Dovecot: (incoming_servers entry, mbsyncrc text, note)."""
    if shutil.which("dovecot") is None and not Path("/usr/sbin/dovecot").exists():
        yield "", None, "Dovecot is not installed: no IMAP poll measured"
        return
    sys.path.insert(0, str(ROOT))
    from tests.dovecot import Dovecot, incoming_yaml

    with Dovecot(ssl_enabled=False) as dovecot:
        mailbox = dovecot.add_user()
        with mailbox.session():
            pass  # the first login makes the Maildir: every measured poll finds it
        entry = incoming_yaml(mailbox, "imap", root / "imap.password")
        port = dovecot.port("imap")
        (root / "mbsync").mkdir()
        rc = (f"IMAPAccount a\nHost 127.0.0.1\nPort {port}\nUser {mailbox.user}\n"
              f"Pass {mailbox.password}\nSSLType None\nAuthMechs LOGIN\n\n"
              "IMAPStore remote\nAccount a\n\n"
              f"MaildirStore local\nPath {root}/mbsync/\nInbox {root}/mbsync/INBOX\n\n"
              "Channel c\nFar :remote:\nNear :local:\nPatterns INBOX\nCreate Near\n"
              f"SyncState *\n")
        yield entry, rc, "Dovecot on 127.0.0.1 (tests/dovecot.py), no TLS"


def child_env(root: Path, bytecode: bool) -> dict[str, str]:
    env = dict(os.environ)
    if bytecode:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(root / "pycache")
    return env


def timed(cmd: list[str], env: dict[str, str], stdin: bytes = b"",
          ok: tuple[int, ...] = (0,)) -> float:
    """The wall time of one process, in ms; exits when it fails."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, input=stdin, capture_output=True, env=env, check=False)
    elapsed = (time.perf_counter() - start) * 1000
    if proc.returncode not in ok:
        raise SystemExit(f"{' '.join(cmd)}: exit {proc.returncode}: "
                         f"{proc.stderr.decode(errors='replace')[-2000:]}")
    return elapsed


# With --source: the mailsync in that directory, not the one installed (an editable
# install's finder would answer first, whatever PYTHONPATH says).
BOOT = """\
import runpy, sys
sys.meta_path[:] = [f for f in sys.meta_path
                    if not str(getattr(f, "__module__", "")).startswith("__editable__")]
sys.path.insert(0, {source!r})
sys.argv[0] = "mailsync"
runpy.run_module("mailsync", run_name="__main__", alter_sys=True)
"""


def mailsync(source: Path | None, *args: str) -> list[str]:
    if source is not None:
        return [sys.executable, "-c", BOOT.format(source=str(source)), *args]
    return [sys.executable, "-m", "mailsync", *args]


def wait_running(cmd: list[str], env: dict[str, str],
                 daemon: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while subprocess.run(cmd, env=env, capture_output=True, check=False).returncode != 0:
        if daemon.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the daemon did not start: {log.read_text()[-2000:]}")
        time.sleep(0.1)


Commands = dict[str, tuple[list[str], bytes]]


def prepare(root: Path, source: Path | None, imap: str, env: dict[str, str],
            stack: contextlib.ExitStack) -> Commands:
    """The measured mailsync commands of one mailsync (``source``), on state of its own
    under ``root`` (two versions would take each other's remembered verdicts for foreign
    ones) and a daemon of its own for ``status``."""
    port = closed_port()
    cfgs = {}
    for name in ("once", "send", "history", "daemon"):
        (root / name / "state").mkdir(parents=True, mode=0o750)
        cfgs[name] = root / name / "config.yaml"
        # metrics_listen: the daemon's own port (another one may hold the default).
        cfgs[name].write_text(CONFIG.format(root=root, name=name, closed_port=port,
                                            metrics_port=closed_port(),
                                            maildir=root.parent / "maildir",
                                            imap=imap if name == "once" else ""))
    # 25 messages in history (deferred: the relay's port is closed).
    for i in range(25):
        timed(mailsync(source, "send", "-c", str(cfgs["history"]), "--user", "app", "--to",
                       f"user{i}@example.org", "--subject", f"message {i}"), env, b"hi\n")
    timed(mailsync(source, "run", "--once", "-c", str(cfgs["history"])), env)
    log = stack.enter_context(open(root / "daemon.log", "wb"))  # noqa: SIM115 - the stack closes it
    daemon = subprocess.Popen(mailsync(source, "run", "-c", str(cfgs["daemon"])), env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    stack.callback(daemon.wait, 30)
    stack.callback(daemon.terminate)
    status = mailsync(source, "status", "-c", str(cfgs["daemon"]))
    wait_running(status, env, daemon, root / "daemon.log")
    once = str(cfgs["once"])
    commands: Commands = {
        "inbox poll --server local": (mailsync(source, "inbox", "poll", "--server", "local",
                                               "-c", once), b""),
        "run --once": (mailsync(source, "run", "--once", "-c", once), b""),
        "send": (mailsync(source, "send", "-c", str(cfgs["send"]), "--user", "app", "--to",
                          "a@example.org", "--subject", "hello"), b"Hello.\n"),
        "history --limit 20": (mailsync(source, "history", "--limit", "20", "-c",
                                        str(cfgs["history"])), b""),
        "status": (status, b""),
    }
    if imap:
        commands["inbox poll --server imap"] = (
            mailsync(source, "inbox", "poll", "--server", "imap", "-c", once), b"")
    return commands


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="rounds counted (default 7)")
    parser.add_argument("--no-imap", action="store_true", help="skip the Dovecot poll")
    parser.add_argument("--no-bytecode", action="store_true",
                        help="leave PYTHONDONTWRITEBYTECODE as the environment has it")
    parser.add_argument("--source", type=Path, help="run the mailsync package found here")
    parser.add_argument("--against", type=Path,
                        help="also run the mailsync found here, in the same rounds "
                             "(its commands named '... [against]'), with the ratio")
    args = parser.parse_args()
    source = args.source.resolve() if args.source else None
    against = args.against.resolve() if args.against else None
    with workdir() as (root, fs), contextlib.ExitStack() as stack:
        imap, mbsyncrc, imap_note = ("", None, "skipped (--no-imap)") if args.no_imap \
            else stack.enter_context(imap_mailbox(root))
        for sub in ("new", "cur", "tmp"):
            (root / "maildir" / sub).mkdir(parents=True, exist_ok=True)
        env = child_env(root, not args.no_bytecode)
        commands: Commands = {"python -c pass": ([sys.executable, "-c", "pass"], b"")}
        commands.update(prepare(root / "a", source, imap, env, stack))
        if against is not None:
            commands.update({f"{name} [against]": cmd for name, cmd in
                             prepare(root / "b", against, imap, env, stack).items()})
        mbsync = shutil.which("mbsync")
        if mbsync and mbsyncrc:
            (root / "mbsyncrc").write_text(mbsyncrc)
            (root / "mbsyncrc").chmod(0o600)
            commands["mbsync"] = ([mbsync, "-q", "-c", str(root / "mbsyncrc"), "-a"], b"")
        samples: dict[str, list[float]] = {name: [] for name in commands}
        names = list(commands)
        for round_ in range(args.runs + 1):  # round 0 warms up
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                cmd, stdin = commands[name]
                elapsed = timed(cmd, env, stdin)
                if round_:
                    samples[name].append(elapsed)
        medians = {name: round(statistics.median(s), 1) for name, s in samples.items()}
        for name, s in samples.items():
            ratio = {}
            if f"{name} [against]" in medians:
                ratio = {"vs_against": round(medians[name] / medians[f"{name} [against]"], 3)}
            print(json.dumps({"bench": "startup", "command": name, "median_ms": medians[name],
                              "runs_ms": [round(x, 1) for x in s], **ratio,
                              **({"mailbox": imap_note} if "imap" in name else {})}),
                  flush=True)
        if not mbsync:
            print(json.dumps({"bench": "startup", "command": "mbsync", "installed": False,
                              "note": "mbsync is not installed on this machine: no figure"}),
                  flush=True)
        elif not mbsyncrc:
            print(json.dumps({"bench": "startup", "command": "mbsync",
                              "note": f"no IMAP mailbox ({imap_note})"}), flush=True)
        measured = {n: m for n, m in medians.items()
                    if n not in ("python -c pass", "mbsync") and not n.endswith("[against]")}
        print(json.dumps({
            "bench": "startup", "summary": True, "runs": args.runs, "medians_ms": medians,
            "target_ms": TARGET_MS,
            "over_target": sorted(n for n, m in measured.items() if m > TARGET_MS),
            "ok": all(m <= TARGET_MS for m in measured.values()),
            "bytecode": "as the environment says" if args.no_bytecode
            else "cached (PYTHONPYCACHEPREFIX in the scratch directory)",
            "source": str(args.source or "the installed mailsync"),
            **({"against": str(args.against)} if args.against else {}),
            "imap_mailbox": imap_note, "filesystem": fs}), flush=True)


if __name__ == "__main__":
    main()
