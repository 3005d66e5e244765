"""`mailsync queue retry|hold|release|delete` on several messages: by ID, or a selection.

After an outage an operator retries what failed or waited (`--status failed --since 2h`,
`--account`, `--server`, `--search @domain`), or releases what was held, in one command:
each message moved and audited as by its own command, the store committed a chunk at a
time.
"""

from __future__ import annotations

import socket

import pytest

from mailsync.outbound import actions
from mailsync.outbound.spool import drop
from tests.outbound_helpers import history, run, run_once, server_yaml, show, write_config


def _dead_port() -> int:
    """A loopback port nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _deferred(tmp_path, sales: int = 3, support: int = 2):
    """``sales`` messages of account sales and ``support`` of support, deferred: the
    relay refused its connections."""
    cfg = write_config(tmp_path, server_yaml("main", _dead_port()))
    for i in range(sales):
        drop(tmp_path / "spool", user="alice", subject=f"sales {i}", text="x",
             to=[f"a{i}@example.org"])
    for i in range(support):
        drop(tmp_path / "spool", user="bob", account="support", subject=f"support {i}",
             text="x", to=[f"b{i}@example.org"])
    run_once(cfg)
    rows = history(cfg)
    assert {r["status"] for r in rows} == {"deferred"} and len(rows) == sales + support
    return cfg, {r["subject"]: r["id"] for r in rows}


def _statuses(cfg) -> dict[str, str]:
    return {r["subject"]: r["status"] for r in history(cfg)}


def test_a_selection_is_retried_once_the_relay_is_back_and_only_it(tmp_path, smtp_server):
    cfg, ids = _deferred(tmp_path)
    dry = run(["queue", "retry", "--account", "sales", "--dry-run", "-c", str(cfg)])
    assert dry.exit_code == 0, dry.output
    assert "retry: 3 messages would be queued for an immediate retry" in dry.stdout
    assert f"message {ids['sales 0']}: deferred (would be queued" in dry.stdout
    assert set(_statuses(cfg).values()) == {"deferred"}  # nothing changed

    done = run(["queue", "retry", "--status", "deferred", "--account", "sales",
                "-c", str(cfg)])
    assert done.exit_code == 0, done.output
    assert done.stdout.splitlines()[-1] == "retry: 3 messages queued for an immediate retry"
    assert _statuses(cfg) == {"sales 0": "queued", "sales 1": "queued", "sales 2": "queued",
                              "support 0": "deferred", "support 1": "deferred"}
    event = show(cfg, ids["sales 1"])["events"][-1]
    assert (event["status"], event["detail"]) == ("queued", "queued for an immediate retry")

    srv = smtp_server()
    write_config(tmp_path, server_yaml("main", srv.port))
    assert "3 sent" in run_once(cfg).output  # the others are not due for 5 minutes
    assert sorted(m.rcpt_tos[0] for m in srv.wait_for(3)) == [
        "a0@example.org", "a1@example.org", "a2@example.org"]
    assert _statuses(cfg)["support 0"] == "deferred"


def test_the_mail_to_one_domain_is_retried_by_search(tmp_path):
    """A domain's servers were down: its deferred mail is retried, nobody else's."""
    cfg, ids = _deferred(tmp_path, sales=2, support=2)  # a*@ and b*@example.org
    drop(tmp_path / "spool", user="alice", subject="to shop", text="x",
         to=["ann@Shop.Example.NET"])
    run_once(cfg)
    ids = {r["subject"]: r["id"] for r in history(cfg)}
    out = run(["queue", "retry", "--search", "@shop.example.net", "-c", str(cfg)])
    assert out.exit_code == 0, out.output
    assert out.stdout.splitlines() == [
        f"message {ids['to shop']}: deferred -> queued (queued for an immediate retry)",
        "retry: 1 message queued for an immediate retry"]
    assert [s for s, st in _statuses(cfg).items() if st == "queued"] == ["to shop"]
    subject = run(["queue", "hold", "--search", "support", "--dry-run", "-c", str(cfg)])
    assert "hold: 2 messages would be held by an operator" in subject.stdout, subject.output
    blank = run(["queue", "retry", "--search", "  ", "-c", str(cfg)])
    assert blank.exit_code == 2 and "or --search" in blank.output  # no selection at all


def test_several_ids_each_acted_on_and_a_wrong_one_makes_the_exit_1(tmp_path):
    cfg, ids = _deferred(tmp_path, sales=2, support=1)
    first, second = ids["sales 0"], ids["sales 1"]
    out = run(["queue", "hold", str(first), str(second), str(first), "999", "-c", str(cfg)])
    assert out.exit_code == 1
    assert out.stdout.count("-> held") == 2  # the repeated id once
    assert "error: no message 999" in out.stderr
    assert "hold: 2 messages held by an operator; 1 refused (above)" in out.stdout
    again = run(["queue", "hold", str(first), str(ids["support 0"]), "-c", str(cfg)])
    assert again.exit_code == 1
    assert f"error: message {first} is held; hold applies to queued, deferred" in again.stderr
    assert _statuses(cfg) == {"sales 0": "held", "sales 1": "held", "support 0": "held"}
    released = run(["queue", "release", "--since", "1h", "-c", str(cfg)])
    assert released.exit_code == 0
    assert "release: 3 messages released by an operator" in released.stdout
    assert set(_statuses(cfg).values()) == {"queued"}


def test_failed_messages_of_a_server_are_retried_a_chunk_at_a_time(tmp_path, monkeypatch):
    cfg, ids = _deferred(tmp_path, sales=5, support=0)
    assert run(["queue", "delete", "--account", "sales", "-c", str(cfg)]).exit_code == 0
    assert set(_statuses(cfg).values()) == {"failed"}
    monkeypatch.setattr(actions, "CHUNK", 2)  # 3 transactions for 5 messages
    out = run(["queue", "retry", "--status", "failed", "--server", "main", "--since", "1h",
               "-c", str(cfg)])
    assert out.exit_code == 0, out.output
    assert "retry: 5 messages queued for an immediate retry" in out.stdout
    assert set(_statuses(cfg).values()) == {"queued"}
    # The recipients the delete failed are queued again with their message.
    assert {r["status"] for r in show(cfg, ids["sales 4"])["recipients"]} == {"queued"}
    nothing = run(["queue", "retry", "--server", "elsewhere", "-c", str(cfg)])
    assert (nothing.exit_code, nothing.stdout) == (0, "retry: no message matches\n")
    older = run(["queue", "hold", "--until", "1h", "-c", str(cfg)])  # all are newer
    assert (older.exit_code, older.stdout) == (0, "hold: no message matches\n")
    window = run(["queue", "hold", "--since", "1h", "--until", "2099-01-01", "-c", str(cfg)])
    assert "hold: 5 messages held by an operator" in window.stdout, window.output


def test_a_dry_run_of_many_ids_reads_them_in_chunks_and_changes_nothing(tmp_path):
    cfg, ids = _deferred(tmp_path, sales=2, support=0)
    given = [*ids.values(), *range(1000, 1600)]  # more than one statement's arguments
    out = run(["queue", "retry", "--dry-run", *map(str, given), "-c", str(cfg)])
    assert out.exit_code == 1
    assert out.stdout.count("(would be queued for an immediate retry)") == 2
    assert out.stderr.count("error: no message") == 600
    assert set(_statuses(cfg).values()) == {"deferred"}


@pytest.mark.parametrize(("args", "says"), [
    ([], "give message IDs, or select the messages to retry with --status"),
    (["1", "--account", "sales"], "give message IDs or a selection, not both"),
    (["--status", "sent"], "'sent' (retry applies to deferred, failed)"),
    (["--since", "yesterday-ish"], "--since"),
    (["--until", "later"], "--until"),
    (["--since", "1h", "--until", "2h"], "'2h' is not after --since '1h'"),
])
def test_a_retry_without_a_clear_target_is_a_usage_error(tmp_path, args, says):
    cfg, _ = _deferred(tmp_path, sales=1, support=0)
    out = run(["queue", "retry", *args, "-c", str(cfg)])
    assert out.exit_code == 2 and says in out.output
    assert set(_statuses(cfg).values()) == {"deferred"}
