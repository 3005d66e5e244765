"""``mailsync demo``: the whole path on one machine, with no mail server installed.

:func:`run_demo` writes a config from ``config.example.yaml`` that points at the SMTP sink
(:mod:`mailsync.demo.sink`), runs the real daemon (``mailsync run``) as a child process,
spools a few messages and prints what happened: the history, the delivered files, the
bounce and the metrics.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import suppress
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from pathlib import Path
from types import FrameType
from typing import Any

import click
import yaml

from mailsync.config.load import load_file
from mailsync.config.model import Config
from mailsync.demo.child import (
    DaemonProcess,
    DemoFailed,
    child_env,
    command_name,
    free_port,
    http_get,
    show,
    tail,
)
from mailsync.demo.config import EXAMPLES, INBOX_SERVER, demo_config, example_text, render
from mailsync.demo.sink import HOST, Sink
from mailsync.errors import StoreError
from mailsync.inbound.bounces import parse_bounce
from mailsync.outbound.history import Filters, list_messages
from mailsync.outbound.queue import OutboundStore
from mailsync.outbound.spool import drop, ensure_dirs
from mailsync.outbound.verp import existing_key
from mailsync.store import Store, db_path

HEALTHZ_TIMEOUT = 20.0  # seconds for the daemon to answer /healthz
SETTLE_TIMEOUT = 30.0  # seconds for every message to be sent and the bounce recorded
MARKER = ".mailsync-demo"  # marks a directory this command may wipe
# What a previous run left in the demo directory (only these are removed).
_STATE = ("config.yaml", "daemon.log", "state", "spool", "mail")

Out = Callable[[str], Any]


def _statuses(state_dir: Path) -> list[dict[str, Any]]:
    """The history as the daemon's store has it now (read only); [] before it exists."""
    if not db_path(state_dir).exists():
        return []
    try:
        store = Store.open(state_dir, create=False)
    except StoreError:
        return []
    try:
        return list_messages(OutboundStore(store), Filters(limit=1000))
    finally:
        store.close()


_DONE = ("sent", "failed", "rejected", "bounced", "held")


def _wait_settled(daemon: DaemonProcess, sink: Sink, state_dir: Path,
                  timeout: float) -> list[dict[str, Any]]:
    """Wait until every spooled message is settled (sent, failed, ...) and every DSN the
    sink sent back is recorded as a bounce; returns the history rows."""
    start = time.monotonic()
    rows: list[dict[str, Any]] = []
    while time.monotonic() - start < timeout:
        daemon.check_alive()
        rows = _statuses(state_dir)
        if (len(rows) >= len(EXAMPLES) and all(r["status"] in _DONE for r in rows)
                and sum(r["status"] == "bounced" for r in rows) >= len(sink.files("bounce"))):
            return rows
        time.sleep(0.1)
    seen = ", ".join(f"{r['id']}: {r['status']}" for r in rows) or "nothing in the store yet"
    raise DemoFailed(f"not settled within {timeout:.0f} s ({seen}); the end of "
                     f"{show(daemon.log)}:\n{tail(daemon.log)}")


def _headers(path: Path) -> Any:
    with open(path, "rb") as f:
        return BytesHeaderParser(policy=default_policy).parse(f)


def _current(path: Path) -> Path:
    """Where a file the sink put in ``new/`` is now (a reader may have moved it to
    ``cur/``, with ``:2,`` flags)."""
    if path.exists():
        return path
    cur = path.parent.parent / "cur"
    for candidate in sorted(cur.glob(f"{path.name}*")):
        return candidate
    return path


_METRICS = ("mailsync_messages_sent_total", "mailsync_messages_bounced_total",
            "mailsync_mailbox_messages_fetched_total", "mailsync_queue_messages")


def _metric_lines(text: str) -> list[str]:
    keep = []
    for line in text.splitlines():
        name = re.split(r"[{ ]", line, maxsplit=1)[0]
        if name in _METRICS and not line.endswith(" 0.0"):
            keep.append(line)
    return keep


def _install_sigterm() -> Callable[[], None]:
    """Make SIGTERM stop the demo as Ctrl-C does (main thread only); returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)

    def undo() -> None:
        signal.signal(signal.SIGTERM, previous)

    return undo


def _prepare(workdir: Path) -> None:
    """Create ``workdir``, or empty one a previous demo made (only what it made)."""
    if workdir.exists() and not workdir.is_dir():
        raise DemoFailed(f"{workdir}: exists and is not a directory; choose another --dir")
    if workdir.is_dir() and any(workdir.iterdir()) and not (workdir / MARKER).exists():
        raise DemoFailed(f"{workdir}: not empty and not made by `mailsync demo` (no {MARKER});"
                         " choose another --dir")
    workdir.mkdir(parents=True, exist_ok=True)
    for name in _STATE:
        path = workdir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    (workdir / MARKER).write_text("made by `mailsync demo`; removed by the next run\n")


def run_demo(workdir: Path, once: bool, out: Out = click.echo) -> int:
    """Run the demo in ``workdir`` (see the module docstring); returns the exit status.

    ``once``: stop after showing the round trip; otherwise keep the daemon and the sink
    running until Ctrl-C (or SIGTERM).
    """
    undo = _install_sigterm()  # a SIGTERM (CI cancelling) cleans up as Ctrl-C does
    try:
        return _run(workdir, once, out)
    except DemoFailed as exc:
        out(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        out("\ninterrupted: the daemon and the sink are stopped")
        return 130
    finally:
        undo()


def _run(workdir: Path, once: bool, out: Out) -> int:
    start = time.monotonic()
    _prepare(workdir)
    workdir = workdir.resolve()
    example = yaml.safe_load(example_text())
    local_domain = str((example.get("alias_domain") or {}).get("domain") or "example.com")
    sink = Sink(workdir / "mail" / "delivered", workdir / "mail" / "catchall",
                local_domain=local_domain)
    sink.start()
    daemon: DaemonProcess | None = None
    try:
        config_path = workdir / "config.yaml"
        cfg = demo_config(example, sink_port=sink.port, metrics_port=free_port())
        config_path.write_text(render(cfg), "utf-8")
        config = _validated(config_path)
        metrics_url = f"http://{config.daemon.metrics_listen}"
        out(f"mailsync demo in {show(workdir)}")
        out(f"  SMTP sink  {HOST}:{sink.port} (no TLS, no AUTH): mail for other domains "
            f"-> {show(sink.delivered)}, for {local_domain} -> {show(sink.local)}")
        out(f"  config     {show(config_path)} (from config.example.yaml; valid)")
        daemon = DaemonProcess(config_path, workdir / "daemon.log")
        ready = daemon.wait_healthy(f"{metrics_url}/healthz", timeout=HEALTHZ_TIMEOUT)
        out(f"  daemon     pid {daemon.proc.pid}, /healthz ok after {ready:.1f} s, "
            f"log {show(daemon.log)}")
        _spool(config.daemon.spool_dir, out)
        rows = _wait_settled(daemon, sink, config.daemon.state_dir, timeout=SETTLE_TIMEOUT)
        out(f"\nAll settled {time.monotonic() - start:.1f} s after the start.")
        ok = _report(config_path, config, sink, rows, metrics_url, out)
        if not once:
            return _keep_running(daemon, sink, config_path, config.daemon.spool_dir, out)
        code = daemon.stop()
        daemon = None
        if code != 0:
            log = workdir / "daemon.log"
            out(f"error: the daemon exited with status {code} on SIGTERM; the end of "
                f"{show(log)}:\n{tail(log)}")
            return 1
        out(f"\nDone in {time.monotonic() - start:.1f} s; the demo's files stay in "
            f"{show(workdir)}.")
        return 0 if ok else 1
    finally:
        if daemon is not None:
            daemon.stop()
        sink.stop()


def _validated(config_path: Path) -> Config:
    loaded = load_file(config_path)
    if loaded.config is None:
        problems = "\n".join(f"  {p.render()}" for p in loaded.problems)
        raise DemoFailed(f"the demo config derived from config.example.yaml is not valid:\n"
                         f"{problems}")
    return loaded.config


def _spool(spool_dir: Path, out: Out) -> None:
    ensure_dirs(spool_dir)
    out(f"\nSpooling {len(EXAMPLES)} messages into {show(spool_dir / 'new')}:")
    for e in EXAMPLES:
        drop(spool_dir, user=e.user, account=e.account, to=[e.to], subject=e.subject,
             text=e.text)
        via = f"account {e.account}" if e.account else "the only account granted"
        note = "  (undeliverable: the sink will bounce it)" if e.bounces else ""
        out(f"  {e.user} via {via} -> {e.to}: {e.subject}{note}")


def _report(config_path: Path, config: Config, sink: Sink, rows: list[dict[str, Any]],
            metrics_url: str, out: Out) -> bool:
    """Print the history, the delivered files, the bounce and metrics; True if all went
    as the demo expects (every message sent, the undeliverable one bounced)."""
    cmd = command_name()
    out(f"\n$ {cmd} history -c {show(config_path)}")
    history = subprocess.run(
        [sys.executable, "-m", "mailsync", "history", "-c", str(config_path)],
        capture_output=True, text=True, env=child_env(), check=False)
    out((history.stdout + history.stderr).rstrip())

    out(f"\nDelivered by the sink ({show(sink.delivered)}):")
    for d in sink.files("delivered") + sink.files("local"):
        h = _headers(_current(d.path))
        out(f"  {show(_current(d.path))}")
        out(f"      From: {h['From']}  To: {h['To']}  Subject: {h['Subject']}")

    for d in sink.files("bounce"):
        path = _current(d.path)
        out(f"\nBounce: the sink answered 250, then sent a DSN to {d.recipient}")
        out(f"  {show(path)}")
        out(f"  fetched by the `{INBOX_SERVER}` incoming server: "
            f"{_bounce_summary(path, config)}")

    try:
        _, text = http_get(f"{metrics_url}/metrics")
        lines = _metric_lines(text)
    except (OSError, urllib.error.URLError) as exc:
        lines = [f"(could not read the metrics: {exc})"]
    out(f"\nMetrics: {metrics_url}/metrics")
    for line in lines:
        out(f"  {line}")

    bounces = sum(e.bounces for e in EXAMPLES)
    sent = sum(r["status"] == "sent" for r in rows)
    bounced = sum(r["status"] == "bounced" for r in rows)
    expected_sent = len(EXAMPLES) - bounces
    if sent != expected_sent or bounced != bounces:
        out(f"\nerror: expected {expected_sent} sent and {bounces} bounced, got {sent} sent "
            f"and {bounced} bounced: see `{cmd} history show ID -c {show(config_path)}`")
        return False
    bounced_ids = [str(r["id"]) for r in rows if r["status"] == "bounced"]
    c = show(config_path)
    out(f"\nLook closer: {cmd} history show {bounced_ids[0] if bounced_ids else 1} -c {c}\n"
        f"             {cmd} inbox -c {c}\n"
        f"             {cmd} plan -c {c}")
    return True


def _bounce_summary(path: Path, config: Config) -> str:
    try:
        raw = path.read_bytes()
        key = existing_key(config.daemon.state_dir)  # the daemon's: it signed the address
    except (OSError, StoreError) as exc:
        return f"(unreadable: {getattr(exc, 'strerror', None) or exc})"
    bounce = parse_bounce(raw, config, key)
    if bounce is None:
        return "not recognised as a bounce"
    who = "; ".join(f"{r.address}: {r.reply}" for r in bounce.recipients)
    return f"message {bounce.verp_id} (VERP), {who}"


def _keep_running(daemon: DaemonProcess, sink: Sink, config_path: Path, spool_dir: Path,
                  out: Out) -> int:
    c = show(config_path)
    out(f"\nmailsync is running; drop files into {show(spool_dir / 'new')} or use "
        f"`{command_name()} send -c {c} --user alice --account sales --to you@example.org "
        f"--subject Hi`; Ctrl-C to stop")
    seen = len(sink.files())
    try:
        while True:
            time.sleep(0.5)
            daemon.check_alive()
            new = sink.files()[seen:]
            seen += len(new)
            for d in new:
                with suppress(OSError):
                    h = _headers(_current(d.path))
                    out(f"sink: {d.kind}: {h['From']} -> {d.recipient}: {h['Subject']} "
                        f"({show(_current(d.path))})")
    except KeyboardInterrupt:
        out("\nstopping the daemon (SIGTERM)...")
    code = daemon.stop()
    out(f"the daemon exited with status {code}")
    return 0 if code == 0 else 1
