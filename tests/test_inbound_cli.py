"""`mailsync inbox`, `inbox show` and `inbox poll` against a real Dovecot."""

from __future__ import annotations

import json

from click.testing import CliRunner

from mailsync.cli import main
from tests.dovecot import (  # noqa: F401  (fixtures)
    dovecot_fixture,
    free_port,
    incoming_yaml,
    mailbox_fixture,
    message,
    write_config,
)


def _run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _setup(mailbox, tmp_path, extra=""):
    mailbox.append(message(1), message(2, subject="=?utf-8?q?Caf=C3=A9?="))
    return write_config(tmp_path, incoming_yaml(mailbox, "support", tmp_path / "pw") + extra)


def test_inbox_lists_nothing_before_the_first_poll(mailbox, tmp_path):
    cfg = _setup(mailbox, tmp_path)
    result = _run("inbox", "-c", str(cfg))
    assert result.exit_code == 0 and result.output == "(no messages)\n"


def test_inbox_poll_then_list_and_show(mailbox, tmp_path):
    cfg = _setup(mailbox, tmp_path)

    polled = _run("inbox", "poll", "-c", str(cfg))
    assert polled.exit_code == 0, polled.output
    assert polled.stdout == "support: 2 fetched\n"
    assert _run("inbox", "poll", "-c", str(cfg)).stdout == "support: 0 fetched\n"

    listing = _run("inbox", "-c", str(cfg))
    lines = listing.output.splitlines()
    assert lines[0].split() == ["ID", "SERVER", "FETCHED_AT", "FROM", "SUBJECT", "SIZE",
                                "BOUNCE_OF"]
    assert "Café" in lines[1] and "message 1" in lines[2]

    rows = json.loads(_run("inbox", "-c", str(cfg), "--format", "json").output)
    assert [(r["id"], r["server"], r["message_id"], r["subject"]) for r in rows] == [
        (2, "support", "<m2@test>", "Café"), (1, "support", "<m1@test>", "message 1")]
    assert set(rows[0]) >= {"id", "server", "fetched_at", "message_id", "from", "to",
                            "subject", "date", "size"}

    shown = _run("inbox", "show", "1", "-c", str(cfg))
    assert shown.exit_code == 0
    assert "Fetched message 1 from support" in shown.output
    assert "  subject: message 1" in shown.output and "Hello number 1." in shown.output

    raw = CliRunner().invoke(main, ["inbox", "show", "1", "-c", str(cfg), "--raw"])
    assert raw.stdout_bytes == message(1)
    detail = json.loads(_run("inbox", "show", "2", "-c", str(cfg), "--format", "json").output)
    assert detail["subject"] == "Café" and "Hello number 2." in detail["content"]


def test_inbox_filters_by_server_and_time(mailbox, tmp_path):
    cfg = _setup(mailbox, tmp_path)
    _run("inbox", "poll", "-c", str(cfg))
    as_json = ("--format", "json")
    assert len(json.loads(_run("inbox", "-c", str(cfg), "--server", "support",
                               *as_json).output)) == 2
    assert len(json.loads(_run("inbox", "-c", str(cfg), "--since", "1h", *as_json).output)) == 2
    assert json.loads(_run("inbox", "-c", str(cfg), "--since", "2999-01-01",
                           *as_json).output) == []
    unknown = _run("inbox", "-c", str(cfg), "--server", "nope")
    assert unknown.exit_code == 2 and "'nope' is not a declared incoming server" in \
        unknown.output
    assert _run("inbox", "-c", str(cfg), "--since", "yesterday").exit_code == 2


def test_inbox_searches_a_window_and_writes_csv(mailbox, tmp_path):
    cfg = _setup(mailbox, tmp_path)  # message 1, then 2 (Café)
    mailbox.append(message(3, subject="Invoice 100% paid", to="billing@example.com"))
    _run("inbox", "poll", "-c", str(cfg))

    def found(*args: str) -> list[str]:
        done = _run("inbox", "-c", str(cfg), "--format", "json", *args)
        assert done.exit_code == 0, done.output
        return [r["subject"] for r in json.loads(done.output)]

    assert found() == ["Invoice 100% paid", "Café", "message 1"]
    assert found("--search", "CAFÉ") == []  # SQLite's LIKE folds ASCII letters only
    assert found("--search", "café") == ["Café"]  # the decoded subject
    assert found("--search", "100%") == ["Invoice 100% paid"]
    assert found("--search", "1_0") == []  # % and _ are characters, not wildcards
    assert found("--search", "BILLING@") == ["Invoice 100% paid"]  # a part of To
    assert found("--search", "c1@example.org") == ["message 1"]  # a part of From
    assert found("--search", "<m2@test>") == found("--search", "m2@test") == ["Café"]
    assert found("--since", "1h", "--until", "1m") == []  # fetched within the last minute
    assert found("--until", "2999-01-01", "--search", "message") == ["message 1"]
    assert found("--bounces") == []
    backwards = _run("inbox", "-c", str(cfg), "--since", "1m", "--until", "1h")
    assert backwards.exit_code == 2 and "is not after --since" in backwards.output

    cut = CliRunner().invoke(main, ["inbox", "-c", str(cfg), "--format", "csv", "--limit", "2"])
    assert cut.exit_code == 0
    lines = cut.stdout_bytes.decode().split("\r\n")
    assert lines[0] == ("id,server,folder,source_key,fetched_at,message_id,from,to,subject,"
                        "date,size,bounce_of")
    assert lines[1].startswith("3,support,") and ",Invoice 100% paid," in lines[1]
    assert lines[2].startswith("2,support,") and ",Café," in lines[2] and lines[3:] == [""]
    assert cut.stderr == "showing 2 of 3 (--limit)\n"  # said aside, not in the file
    table = _run("inbox", "-c", str(cfg), "--limit", "1")
    assert table.output.splitlines()[-1] == "showing 1 of 3 (--limit)"


def test_inbox_show_unknown_id_fails(mailbox, tmp_path):
    cfg = _setup(mailbox, tmp_path)
    _run("inbox", "poll", "-c", str(cfg))
    result = CliRunner().invoke(main, ["inbox", "show", "99", "-c", str(cfg)])
    assert result.exit_code == 1 and "no fetched message 99" in result.stderr


def test_inbox_poll_reports_a_failing_server_and_exits_1(mailbox, tmp_path):
    port = free_port()
    broken = (f"  - name: broken\n    type: pop\n    host: 127.0.0.1\n    port: {port}\n"
              "    security: none\n    username: x\n    password: {file: pw}\n")
    cfg = _setup(mailbox, tmp_path, extra=broken)

    result = CliRunner().invoke(main, ["inbox", "poll", "-c", str(cfg)])

    assert result.exit_code == 1
    assert result.stdout == ("support: 2 fetched\n"
                             f"broken: failed: broken (127.0.0.1:{port}): connection refused\n")
    only = _run("inbox", "poll", "-c", str(cfg), "--server", "support")
    assert only.exit_code == 0 and only.stdout == "support: 0 fetched\n"
