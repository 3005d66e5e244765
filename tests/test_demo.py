"""`mailsync demo`: the SMTP sink (Maildirs, Postfix-like DSNs), the derived config, and
the whole demo as a subprocess. Network only on 127.0.0.1."""

from __future__ import annotations

import os
import re
import smtplib
import subprocess
import sys
from email import message_from_bytes
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from mailsync.config.load import load_text
from mailsync.demo.config import demo_config, example_text
from mailsync.demo.driver import run_demo
from mailsync.demo.sink import Sink, is_undeliverable
from mailsync.inbound.bounces import parse_bounce
from mailsync.outbound.spool import drop
from mailsync.outbound.verp import VerpKey, verp_sender
from tests.outbound_helpers import history, run_once

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def sink(tmp_path):
    with Sink(tmp_path / "delivered", tmp_path / "local", local_domain="example.com") as s:
        yield s


def _send(sink, mail_from, rcpts, subject="Hello", message_id="<q-1042@example.com>"):
    data = (f"From: Sales Team <sales@example.com>\r\nTo: {', '.join(rcpts)}\r\n"
            f"Subject: {subject}\r\nMessage-ID: {message_id}\r\n\r\nBody\r\n.dot line\r\n")
    with smtplib.SMTP(sink.host, sink.port, local_hostname="localhost", timeout=10) as c:
        refused = c.sendmail(mail_from, rcpts, data.encode())
    assert refused == {}


def _files(maildir: Path) -> list[Path]:
    return sorted((maildir / "new").iterdir())


def _demo_config(tmp_path, sink_port=2525, metrics_port=9877):
    cfg = demo_config(yaml.safe_load(example_text()), sink_port=sink_port,
                      metrics_port=metrics_port)
    text = yaml.safe_dump(cfg, sort_keys=False)
    return text, load_text(text, "demo/config.yaml", tmp_path)


def test_sink_stores_each_message_in_a_maildir_by_recipient_domain(sink, tmp_path):
    _send(sink, "bounce+7@example.com", ["ada@example.org", "catchall@example.com"])

    [outside] = _files(tmp_path / "delivered")
    [local] = _files(tmp_path / "local")
    raw = outside.read_bytes()
    assert b"\r\n" not in raw  # Maildir files end lines with LF
    parsed = message_from_bytes(raw)
    assert parsed["Return-Path"] == "<bounce+7@example.com>"
    assert parsed["Delivered-To"] == "ada@example.org"
    assert parsed["Subject"] == "Hello"
    assert raw.endswith(b"\n\nBody\n.dot line\n")  # dot-stuffing undone
    assert message_from_bytes(local.read_bytes())["Delivered-To"] == "catchall@example.com"
    assert not list((tmp_path / "delivered" / "tmp").iterdir())
    assert [(d.kind, d.recipient, d.path) for d in sink.files()] == [
        ("delivered", "ada@example.org", outside), ("local", "catchall@example.com", local)]


def test_sink_names_files_uniquely(sink, tmp_path):
    for i in range(5):
        _send(sink, "bounce+1@example.com", ["ada@example.org"], subject=f"n{i}")
    names = [p.name for p in _files(tmp_path / "delivered")]
    assert len(set(names)) == 5
    assert all(re.fullmatch(r"\d+\.M\d+P\d+Q\d+\..+", n) for n in names)


def test_undeliverable_recipient_gets_a_dsn_mailsync_reads_as_a_bounce(sink, tmp_path):
    _, loaded = _demo_config(tmp_path)
    assert loaded.config is not None

    key = VerpKey(bytes(32))
    verp = verp_sender(loaded.config, key, 42)
    assert verp is not None and verp.startswith("bounce+42.")
    # Accepted with 250 like any other recipient: the bounce comes afterwards.
    _send(sink, verp, ["nobody@example.org", "ann@example.invalid", "ada@example.org"])

    assert [d.recipient for d in sink.files("delivered")] == ["ada@example.org"]
    [dsn] = sink.files("bounce")
    assert dsn.recipient == verp
    assert dsn.path.parent == tmp_path / "local" / "new"  # the alias domain's Maildir
    raw = dsn.path.read_bytes()
    message = message_from_bytes(raw)
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert message["To"] == verp
    parts = [p.get_content_type() for p in message.walk()]
    assert parts == ["multipart/report", "text/plain", "message/delivery-status",
                     "text/plain", "text/plain", "text/plain", "text/rfc822-headers"]
    assert b"Reporting-MTA: dns; " in raw and b"Action: failed" in raw

    bounce = parse_bounce(raw, loaded.config, key)
    assert bounce is not None and bounce.dsn
    assert bounce.verp_id == 42
    assert bounce.message_ids == ("<q-1042@example.com>",)
    assert [(r.address, r.status, r.smtp_code, r.diagnostic) for r in bounce.recipients] == [
        ("nobody@example.org", "5.1.1", 550, "smtp; 550 5.1.1 user unknown"),
        ("ann@example.invalid", "5.1.1", 550, "smtp; 550 5.1.1 user unknown")]


def test_no_bounce_for_a_bounce(sink, tmp_path):
    _send(sink, "", ["nobody@example.org"])
    assert sink.files() == []
    assert _files(tmp_path / "local") == [] and _files(tmp_path / "delivered") == []


def test_a_dsn_to_another_domain_goes_to_the_delivered_maildir(sink, tmp_path):
    _send(sink, "someone@example.net", ["nobody@example.org"])
    [dsn] = sink.files("bounce")
    assert dsn.path.parent == tmp_path / "delivered" / "new"


@pytest.mark.parametrize(("address", "expected"), [
    ("nobody@example.org", True), ("NoBody@example.com", True),
    ("ann@example.invalid", True), ("ann@mail.example.invalid.", True),
    ("ann@example.org", False), ("nobodyelse@example.org", False)])
def test_undeliverable_addresses(address, expected):
    assert is_undeliverable(address) is expected


def test_sink_stops_with_a_client_still_connected(tmp_path):
    s = Sink(tmp_path / "d", tmp_path / "l", local_domain="example.com").start()
    client = smtplib.SMTP(s.host, s.port, local_hostname="localhost", timeout=10)
    client.noop()
    s.stop()
    s.stop()  # idempotent
    with pytest.raises((smtplib.SMTPServerDisconnected, OSError)):
        client.noop()
    client.close()


def test_demo_config_is_valid_without_warnings_or_secrets(tmp_path):
    text, loaded = _demo_config(tmp_path, sink_port=2600, metrics_port=9900)
    assert loaded.problems == ()
    config = loaded.config
    assert config is not None
    assert "password" not in text and "username" not in text
    assert [(s.name, s.host, s.port, s.security) for s in config.outgoing_servers] == [
        ("demo-sink", "127.0.0.1", 2600, "none")]
    [inbox] = config.incoming_servers
    assert (inbox.type, inbox.path, inbox.poll_interval.total_seconds()) == (
        "local", tmp_path / "mail" / "catchall", 1.0)
    assert config.daemon.metrics_listen == "127.0.0.1:9900"
    assert config.daemon.state_dir == tmp_path / "state"
    assert config.daemon.spool_dir == tmp_path / "spool"
    assert {a.name: (a.server, a.own_login) for a in config.accounts} == {
        "sales": ("demo-sink", None), "newsletter": ("demo-sink", None),
        "billing": ("demo-sink", None), "support": ("demo-sink", None),
        "alerts": (None, None)}
    assert config.alias_domain is not None and config.alias_domain.bounce == "bounce"
    assert [t.name for t in config.activity_types] == ["Reply", "Call", "Meeting", "Contract"]


def test_the_packaged_example_is_the_repository_example():
    assert example_text() == (ROOT / "config.example.yaml").read_text()


def test_bounce_round_trip_through_run_once(sink, tmp_path):
    """The sink's DSN, fetched by the demo config's `local` server, marks the message
    bounced (with `mailsync run --once`, independent of the long-running daemon)."""
    text, _ = _demo_config(tmp_path, sink_port=sink.port)
    text = text.replace("./mail/catchall", str(tmp_path / "local"))
    cfg = tmp_path / "config.yaml"
    cfg.write_text(text)
    (tmp_path / "spool").mkdir()
    for sub in ("tmp", "new"):
        (tmp_path / "spool" / sub).mkdir()
    drop(tmp_path / "spool", user="bob", to=["nobody@example.org"], subject="Bounce me")
    drop(tmp_path / "spool", user="alice", account="sales", to=["ada@example.org"],
         subject="Deliver me")

    run_once(cfg)  # sends both: the sink answers 250 and writes a DSN for nobody@
    run_once(cfg)  # polls the catchall Maildir: the DSN comes back

    rows = {r["subject"]: r for r in history(cfg)}
    assert rows["Deliver me"]["status"] == "sent"
    assert rows["Bounce me"]["status"] == "bounced"
    assert "5.1.1" in rows["Bounce me"]["error"]
    [dsn] = sink.files("bounce")
    assert re.fullmatch(rf"bounce\+{rows['Bounce me']['id']}\.[a-z2-7]{{10}}@example\.com",
                        dsn.recipient), dsn.recipient  # the signed VERP address


def test_demo_refuses_a_directory_it_did_not_make(tmp_path):
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "thesis.tex").write_text("keep me")
    (precious / "state").mkdir()
    lines: list[str] = []

    assert run_demo(precious, once=True, out=lines.append) == 1

    assert "not made by `mailsync demo`" in "\n".join(lines)
    assert (precious / "thesis.tex").read_text() == "keep me"
    assert (precious / "state").is_dir()


def test_demo_without_aiosmtpd_says_how_to_install_it(monkeypatch):
    import mailsync.cli
    import mailsync.cli.demo

    for name in ("aiosmtpd", "aiosmtpd.controller", "aiosmtpd.smtp"):
        monkeypatch.setitem(sys.modules, name, None)
    for name in ("mailsync.demo.driver", "mailsync.demo.sink"):
        monkeypatch.delitem(sys.modules, name, raising=False)

    result = CliRunner().invoke(mailsync.cli.main, ["demo", "--once"])

    assert result.exit_code == 1
    assert "needs aiosmtpd" in result.output and "pip install" in result.output
    assert "Traceback" not in result.output


def _demo_argv(*args: str) -> list[str]:
    from mailsync.cli.root import LazyGroup

    if "demo" in LazyGroup.lazy:
        return [sys.executable, "-m", "mailsync", "demo", *args]
    # Until cli/root.py lists the command: register it by importing its module first.
    code = "import mailsync.cli.demo, mailsync.cli; mailsync.cli.main()"
    return [sys.executable, "-c", code, "demo", *args]


def test_demo_once_end_to_end(tmp_path):
    workdir = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "MAILSYNC_CONFIG")}

    result = subprocess.run(_demo_argv("--once", "--dir", str(workdir)), cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=90, check=False)

    output = result.stdout + result.stderr
    log = workdir / "daemon.log"
    assert result.returncode == 0, output + (log.read_text() if log.exists() else "")
    table = [line.split() for line in output.splitlines() if re.match(r"\d+\s+\w+\s+\d{4}-", line)]
    assert sorted(row[1] for row in table) == ["bounced", "sent", "sent", "sent"]
    assert len(list((workdir / "mail" / "delivered" / "new").iterdir())) == 3
    assert len(list((workdir / "mail" / "catchall" / "cur").iterdir())) == 1  # the DSN, fetched
    assert "/metrics" in output and "mailsync_messages_sent_total" in output
    assert "Traceback" not in log.read_text()
    pid = int(re.search(r"daemon\s+pid (\d+)", output).group(1))
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stopped (and reaped) by the demo

    # A second run reuses (empties) the directory it made.
    again = subprocess.run(_demo_argv("--once", "--dir", str(workdir)), cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=90, check=False)
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(list((workdir / "mail" / "delivered" / "new").iterdir())) == 3
