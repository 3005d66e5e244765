"""`mailsync send`, `mailsync test`, metrics of a pass, secrets in outbound output."""

from __future__ import annotations

import json
import logging
import socket
import threading

import pytest

from mailsync.outbound.deliver import Deliverer
from mailsync.outbound.groupcommit import GroupCommit
from mailsync.outbound.ingest import Ingester
from mailsync.outbound.spool import drop
from mailsync.outbound.verp import load_key
from mailsync.store import Store
from mailsync.telemetry.metrics import Metrics
from tests.outbound_helpers import (
    history,
    load,
    open_store,
    run,
    run_once,
    server_yaml,
    show,
    write_config,
)

CANARY = "canary-S3cret-pw-0427"


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_send_command_drops_a_message_that_run_sends(tmp_path, smtp_server):
    srv = smtp_server()
    cfg = write_config(tmp_path, server_yaml("main", srv.port))
    body = tmp_path / "body.txt"
    body.write_text("Invoice attached.\n")
    attachment = tmp_path / "invoice.pdf"
    attachment.write_bytes(b"%PDF-1.4 fake")
    result = run(["send", "-c", str(cfg), "--user", "alice", "--to", "ann@example.org",
                  "--bcc", "audit@example.org", "--subject", "Invoice", "--text-file", str(body),
                  "--attach", str(attachment), "--header", "X-Order=42"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "spool" / "new").joinpath(result.output.strip().rsplit("/", 1)[1]).exists()
    run_once(cfg)
    (got,) = srv.wait_for(1)
    assert sorted(got.rcpt_tos) == ["ann@example.org", "audit@example.org"]
    assert b"X-Order: 42" in got.data and b"invoice.pdf" in got.data
    assert b"Bcc:" not in got.data


def test_send_reads_the_body_from_stdin_and_refuses_bad_input(tmp_path):
    cfg = write_config(tmp_path, server_yaml("main", _dead_port()))
    ok = run(["send", "-c", str(cfg), "--user", "alice", "--to", "a@example.org",
              "--subject", "From stdin"], input="piped body\n")
    assert ok.exit_code == 0, ok.output
    bad = run(["send", "-c", str(cfg), "--user", "alice", "--to", "a@example.org",
               "--subject", "x", "--header", "X-Evil=a\r\nBcc: b@example.org"], input="x")
    assert bad.exit_code == 1 and "error:" in bad.output
    usage = run(["send", "-c", str(cfg), "--user", "alice", "--to", "a@example.org",
                 "--subject", "x", "--header", "novalue"], input="x")
    assert usage.exit_code == 2


def test_send_refuses_a_user_or_account_the_daemon_would_reject(tmp_path):
    """Said at once, with the option to use, instead of a file that lands in rejected/."""
    accounts = ("  - {name: sales, email: sales@example.com, server: main, "
                "granted_to: [alice, bob]}\n"
                "  - {name: billing, email: billing@example.com, server: main, "
                "granted_to: [alice]}\n")
    cfg = write_config(tmp_path, server_yaml("main", _dead_port()), accounts=accounts)
    new = tmp_path / "spool" / "new"

    def send(*args: str):
        return run(["send", "-c", str(cfg), "--to", "a@example.org", "--subject", "x", *args],
                   input="x")

    several = send("--user", "alice")
    assert several.exit_code == 1
    assert several.stderr.strip() == (
        "error: no_account: user 'alice' is granted several accounts (granted: sales, "
        "billing): name one with --account")
    ungranted = send("--user", "bob", "--account", "billing")
    assert ungranted.exit_code == 1
    assert ungranted.stderr.strip() == ("error: ungranted_account: user 'bob' may not use "
                                        "account 'billing' (granted: sales)")
    unknown = send("--user", "mallory")
    assert unknown.exit_code == 1 and "error: unknown_user: unknown user 'mallory'" \
        in unknown.stderr
    assert not new.exists() or not list(new.iterdir())  # nothing dropped
    assert send("--user", "alice", "--account", "billing").exit_code == 0
    assert send("--user", "bob").exit_code == 0  # granted one account: that one
    assert len(list(new.iterdir())) == 2


def test_test_command_says_ok_or_connection_error_per_server(tmp_path, smtp_server, monkeypatch):
    good = smtp_server(auth={"relay": CANARY})
    monkeypatch.setenv("RELAY_PW", CANARY)
    monkeypatch.setenv("WRONG_PW", "not-the-password")
    cfg = write_config(
        tmp_path,
        server_yaml("main", good.port, extra="    username: relay\n    password: {env: RELAY_PW}\n")
        + server_yaml("wrongpw", good.port,
                      extra="    username: relay\n    password: {env: WRONG_PW}\n")
        + server_yaml("down", _dead_port()),
        accounts="  - name: sales\n    email: sales@example.com\n    server: main\n"
                 "    granted_to: [alice]\n")
    result = run(["test", "-c", str(cfg)])
    assert result.exit_code == 1
    lines = dict(line.split(": ", 1) for line in result.output.strip().splitlines())
    assert lines["main"] == "OK (plain text, AUTH PLAIN)"  # what was negotiated
    assert lines["wrongpw"].startswith("Connection Error: ")
    assert "authentication" in lines["wrongpw"]
    assert lines["down"].startswith("Connection Error: ") and "refused" in lines["down"]
    assert CANARY not in result.output
    only = run(["test", "main", "-c", str(cfg)])
    assert only.exit_code == 0 and only.output.strip() == "main: OK (plain text, AUTH PLAIN)"
    assert run(["test", "nope", "-c", str(cfg)]).exit_code == 2


def test_gmail_authentication_failure_mentions_the_app_password(tmp_path, smtp_server,
                                                                monkeypatch):
    srv = smtp_server(auth={"someone@gmail.com": "right"})
    monkeypatch.setenv("GMAIL_PW", "wrong-password")
    cfg = write_config(tmp_path, server_yaml(
        "main", srv.port,
        extra="    provider: gmail\n    username: someone@gmail.com\n"
              "    password: {env: GMAIL_PW}\n"))
    result = run(["test", "-c", str(cfg)])
    assert result.exit_code == 1 and "App Password" in result.output


def test_a_failed_login_leaks_the_password_nowhere(tmp_path, smtp_server, monkeypatch, caplog):
    srv = smtp_server(auth={"relay": "the-real-one"})
    monkeypatch.setenv("RELAY_PW", CANARY)
    cfg = write_config(tmp_path, server_yaml(
        "main", srv.port, extra="    username: relay\n    password: {env: RELAY_PW}\n"))
    drop(tmp_path / "spool", user="alice", subject="x", text="x", to=["a@example.org"])
    with caplog.at_level(logging.DEBUG, logger="mailsync"):
        out = run(["run", "--once", "-c", str(cfg)])
    assert out.exit_code == 0 and "1 deferred" in out.output
    (row,) = history(cfg)
    detail = show(cfg, row["id"])
    everything = [out.output, caplog.text, json.dumps(detail),
                  run(["history", "-c", str(cfg)]).output,
                  run(["plan", "-c", str(cfg)]).output,
                  run(["validate", "-c", str(cfg)]).output]
    assert "authentication" in detail["error"]
    assert "authentication" in caplog.text  # the log was captured: the check below is real
    assert [text for text in everything if CANARY in text] == []


def test_a_pass_feeds_the_metrics(tmp_path, smtp_server):
    srv = smtp_server(recipient_replies={"busy@example.org": "450 4.2.1 busy",
                                         "gone@example.org": "550 5.1.1 gone"})
    cfg = write_config(tmp_path, server_yaml("main", srv.port))
    spool = tmp_path / "spool"
    drop(spool, user="alice", subject="ok", text="x", to=["a@example.org"])
    drop(spool, user="alice", subject="later", text="x", to=["busy@example.org"])
    drop(spool, user="alice", subject="never", text="x", to=["gone@example.org"])
    drop(spool, user="mallory", subject="who", text="x", to=["a@example.org"])
    config = load(cfg)
    metrics = Metrics()
    metrics.prime(config)
    store, outbound = open_store(cfg)
    try:
        Ingester(config, outbound, metrics).run_once()
        deliverer = Deliverer(config, outbound, metrics,
                              verp_key=load_key(config.daemon.state_dir))
        deliverer.run_once()
        deliverer.close()
    finally:
        store.close()
    value = metrics.registry.get_sample_value
    assert value("mailsync_messages_sent_total", {"account": "sales", "server": "main"}) == 1
    assert value("mailsync_messages_deferred_total", {"server": "main"}) == 1
    assert value("mailsync_messages_failed_total",
                 {"account": "sales", "reason": "permanent"}) == 1
    assert value("mailsync_messages_rejected_total", {"reason": "unknown_user"}) == 1
    assert value("mailsync_messages_rejected_total", {"reason": "oversize"}) == 0
    assert value("mailsync_send_attempts_total", {"server": "main", "result": "sent"}) == 1
    assert value("mailsync_send_duration_seconds_count", {"server": "main"}) == 3
    # Each of the three transactions' outcomes was waited for once, for a measured time.
    assert value("mailsync_outcome_commit_wait_seconds_count") == 3
    assert 0 < value("mailsync_outcome_commit_wait_seconds_sum") < 30
    assert value("mailsync_cluster_nodes") == 1  # SQLite: this node alone
    assert value("mailsync_server_up", {"server": "main", "direction": "outgoing"}) == 1
    # Primed at 0 before anything happened to them:
    assert value("mailsync_messages_sent_total", {"account": "support", "server": "main"}) == 0


def test_group_commit_commits_every_write_and_isolates_a_bad_one(tmp_path):
    store = Store.open(tmp_path)
    store.conn.execute("CREATE TABLE t (n INTEGER PRIMARY KEY)")
    group = GroupCommit(store)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            value = n if n != 13 else 1  # 13 collides with 1: its write alone must fail
            group.run(lambda conn: conn.execute("INSERT INTO t VALUES (?)", (value,)))
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(1, 41)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = {r[0] for r in store.conn.execute("SELECT n FROM t")}
    store.close()
    assert rows == set(range(1, 41)) - {13}
    assert len(errors) == 1 and "UNIQUE" in str(errors[0])


@pytest.mark.parametrize("status", ["sent", "rejected"])
def test_history_status_filter(tmp_path, smtp_server, status):
    srv = smtp_server()
    cfg = write_config(tmp_path, server_yaml("main", srv.port))
    drop(tmp_path / "spool", user="alice", subject="fine", text="x", to=["a@example.org"])
    (tmp_path / "spool" / "new" / "x.json").write_text("{}")
    run_once(cfg)
    rows = history(cfg, "--status", status)
    assert len(rows) == 1 and rows[0]["status"] == status


def test_content_past_the_retention_is_pruned_and_metadata_kept(tmp_path, smtp_server):
    srv = smtp_server()
    cfg = write_config(tmp_path, server_yaml("main", srv.port))
    cfg.write_text(cfg.read_text().replace("  max_message_size: 1MiB\n",
                                           "  max_message_size: 1MiB\n  history_retention: 1s\n"))
    drop(tmp_path / "spool", user="alice", subject="old news", text="x", to=["a@example.org"])
    run_once(cfg)
    (row,) = history(cfg)
    assert show(cfg, row["id"])["content"]
    store, outbound = open_store(cfg)
    try:
        import time

        assert outbound.prune(time.time() + 5, 1) == 1
    finally:
        store.close()
    detail = show(cfg, row["id"])
    assert detail["content"] is None and detail["subject"] == "old news"
    assert detail["status"] == "sent"
    assert run(["history", "show", str(row["id"]), "--raw", "-c", str(cfg)]).exit_code == 1


def test_group_commit_of_a_lone_failing_write_raises_its_own_error(tmp_path):
    store = Store.open(tmp_path)
    store.conn.execute("CREATE TABLE t (n INTEGER PRIMARY KEY)")
    group = GroupCommit(store)
    group.run(lambda conn: conn.execute("INSERT INTO t VALUES (1)"))
    with pytest.raises(Exception, match="UNIQUE"):
        group.run(lambda conn: conn.execute("INSERT INTO t VALUES (1)"))
    group.run(lambda conn: conn.execute("INSERT INTO t VALUES (2)"))  # still usable
    rows = [r[0] for r in store.conn.execute("SELECT n FROM t ORDER BY n")]
    store.close()
    assert rows == [1, 2]


def test_send_before_the_daemon_ever_ran_creates_the_spool(tmp_path):
    cfg = write_config(tmp_path, server_yaml("main", _dead_port()))
    import shutil

    shutil.rmtree(tmp_path / "spool")
    result = run(["send", "-c", str(cfg), "--user", "alice", "--to", "a@example.org",
                  "--subject", "first"], input="hello")
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "spool" / "new").iterdir())) == 1


def test_test_command_names_own_logins_as_the_metrics_do(tmp_path, smtp_server, monkeypatch):
    relay, own = smtp_server(auth={"relay": "pw1"}), smtp_server(auth={"main": "pw2"})
    monkeypatch.setenv("PW1", "pw1")
    monkeypatch.setenv("PW2", "pw2")
    cfg = write_config(
        tmp_path,
        server_yaml("main", relay.port, extra="    username: relay\n    password: {env: PW1}\n"),
        # An account named like the declared server, with its own login elsewhere.
        accounts="  - name: main\n    email: main@example.com\n    host: 127.0.0.1\n"
                 f"    port: {own.port}\n    security: none\n    username: main\n"
                 "    password: {env: PW2}\n    granted_to: [alice]\n")
    result = run(["test", "-c", str(cfg)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["main: OK (plain text, AUTH PLAIN)",
                                          "account:main: OK (plain text, AUTH PLAIN)"]
    assert relay.logins == ["relay"] and own.logins == ["main"]
    declared = run(["test", "main", "-c", str(cfg)])
    # The declared server wins the plain name.
    assert declared.output.strip() == "main: OK (plain text, AUTH PLAIN)"
    assert relay.logins == ["relay", "relay"] and own.logins == ["main"]
    assert run(["test", "account:main", "-c", str(cfg)]).output.strip() == \
        "account:main: OK (plain text, AUTH PLAIN)"
    assert own.logins == ["main", "main"]
