"""`mailsync activity schedule|done|cancel|list|show`: each command, each refusal, and
what config changes do to existing activities."""

from __future__ import annotations

import json
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from mailsync.activities.rules import local_date
from mailsync.cli import main
from mailsync.cli.activities import render_table

TYPES = """\
activity_types:
  - name: Reply
    action: email
    default_user: alice
    model: crm.lead
    default_summary: Answer the customer
    icon: fa-reply
    decoration: warning
    delay: {count: 1, unit: days, from: previous_deadline}
    chaining: trigger
    default_next: Call
    default_description: Reply within one working day.
  - name: Call
    action: phonecall
    default_user: bob
    default_summary: Call the customer back
    icon: fa-phone
    decoration: danger
    delay: {count: 2, unit: days, from: completion_date}
    chaining: suggest
    recommended_next: [Meeting, Contract]
  - name: Meeting
    action: meeting
    icon: fa-users
    delay: {count: 1, unit: weeks}
  - name: Contract
    action: upload_document
    default_user: alice
    delay: {count: 1, unit: months, from: completion_date}
"""


def write(tmp_path: Path, types: str = TYPES, users: str = "[alice, bob, carol]") -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"version: 1\ndaemon: {{state_dir: ./state, spool_dir: ./spool}}\n"
                    f"users: {users}\n{types}")
    return path


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    return write(tmp_path)


def today() -> date:
    return local_date(time.time())


def run(cfg: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["activity", *args, "-c", str(cfg)])


def ok(cfg: Path, *args: str) -> str:
    result = run(cfg, *args)
    assert result.exit_code == 0, result.output
    return result.stdout


def refused(cfg: Path, *args: str, code: int = 1) -> str:
    result = run(cfg, *args)
    assert result.exit_code == code, result.output
    assert result.stdout == ""
    return result.stderr


def rows(cfg: Path, *args: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = json.loads(ok(cfg, "list", "--format", "json", *args))
    return out


def detail(cfg: Path, aid: int) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(ok(cfg, "show", str(aid), "--format", "json"))
    return out


# -- schedule ------------------------------------------------------------------------------
def test_schedule_fills_in_the_types_defaults(cfg):
    out = ok(cfg, "schedule", "--type", "Reply", "--record", "crm.lead:42")
    due = (today() + timedelta(days=1)).isoformat()
    assert out == f"scheduled activity 1: Reply for alice, due {due} (tomorrow)\n"
    [a] = rows(cfg)
    assert {k: a[k] for k in ("id", "type", "user", "summary", "note", "deadline", "due",
                              "state", "record", "icon", "decoration", "action",
                              "overdue", "type_removed")} == {
        "id": 1, "type": "Reply", "user": "alice", "summary": "Answer the customer",
        "note": "Reply within one working day.", "deadline": due, "due": "tomorrow",
        "state": "open", "record": "crm.lead:42", "icon": "fa-reply",
        "decoration": "warning", "action": "email", "overdue": False, "type_removed": False}


def test_schedule_with_every_option(cfg):
    ok(cfg, "schedule", "--type", "Meeting", "--user", "carol", "--summary", "Kickoff",
       "--note", "Bring the plan", "--record", "res.partner:7", "--deadline", "2031-05-04")
    a = detail(cfg, 1)
    assert (a["user"], a["summary"], a["note"], a["record"], a["deadline"]) == (
        "carol", "Kickoff", "Bring the plan", "res.partner:7", "2031-05-04")


@pytest.mark.parametrize(("args", "message"), [
    (("--type", "Nope"),
     "error: activity type 'Nope' is not declared (declared: Reply, Call, Meeting, Contract)"),
    (("--type", "Reply", "--record", "res.partner:1"),
     "error: record res.partner:1: activity type 'Reply' applies to crm.lead records only "
     "(use crm.lead:ID)"),
    (("--type", "Reply", "--user", "zed"),
     "error: user 'zed' is not declared (declared: alice, bob, carol)"),
    (("--type", "Meeting"),
     "error: activity type 'Meeting' has no default_user: give --user "
     "(declared: alice, bob, carol)"),
    (("--after", "9"), "error: no activity 9 (see: mailsync activity list --state all)"),
])
def test_schedule_refusals_exit_1_naming_the_value_and_what_is_allowed(cfg, args, message):
    assert refused(cfg, "schedule", *args) == message + "\n"
    assert rows(cfg, "--state", "all") == []


@pytest.mark.parametrize(("args", "message"), [
    (("--type", "Reply", "--record", "crm.lead"), "is not a record reference: use model:id"),
    (("--type", "Reply", "--deadline", "31/01/2025"), "is not a date: use YYYY-MM-DD"),
    ((), "give --type TYPE (or --after ID to take the next type)"),
])
def test_schedule_usage_errors_exit_2(cfg, args, message):
    assert message in refused(cfg, "schedule", *args, code=2)


# -- done, chaining, cancel ------------------------------------------------------------------
def test_done_with_trigger_schedules_the_next_at_once_and_says_so(cfg):
    ok(cfg, "schedule", "--type", "Reply", "--record", "crm.lead:42")
    out = ok(cfg, "done", "1", "--feedback", "answered")
    due = today() + timedelta(days=2)  # Call: 2 days from the completion date (today)
    assert out == ("activity 1 done: Reply (Answer the customer)\n"
                   f"triggered activity 2: Call for bob, due {due.isoformat()} (in 2 days)\n")
    call = detail(cfg, 2)
    assert (call["type"], call["user"], call["previous_id"], call["record"]) == (
        "Call", "bob", 1, "crm.lead:42")
    first = detail(cfg, 1)
    assert (first["state"], first["feedback"], first["done_on"]) == (
        "done", "answered", today().isoformat())


def test_done_with_suggest_prints_the_recommended_and_schedule_after_follows(cfg):
    ok(cfg, "schedule", "--type", "Call", "--deadline", "2031-01-31")
    out = ok(cfg, "done", "1")
    assert out == ("activity 1 done: Call (Call the customer back)\n"
                   "recommended next: Meeting, Contract\n"
                   "  schedule one with: mailsync activity schedule --after 1 --type TYPE\n")
    assert refused(cfg, "schedule", "--after", "1") == (
        "error: --type is needed after activity 1 (Call): recommended Meeting, Contract; "
        "declared: Reply, Call, Meeting, Contract\n")
    ok(cfg, "schedule", "--after", "1", "--type", "Meeting", "--user", "carol")
    # Meeting's delay is from the previous deadline: 31 January 2031 + 1 week
    assert detail(cfg, 2)["deadline"] == "2031-02-07"
    ok(cfg, "schedule", "--after", "1", "--type", "Contract")
    # Contract's delay is from the completion date (today): 1 calendar month
    assert detail(cfg, 3)["previous_id"] == 1
    assert [p["id"] for p in detail(cfg, 3)["previous"]] == [1]


def test_upload_document_needs_attach_and_the_file_is_kept(cfg, tmp_path):
    ok(cfg, "schedule", "--type", "Contract")
    assert refused(cfg, "done", "1") == (
        "error: activity 1 (Contract) is an upload_document activity: mark it done with "
        "--attach FILE (the document)\n")
    assert detail(cfg, 1)["state"] == "open"
    doc = tmp_path / "signed.pdf"
    doc.write_bytes(b"%PDF signed")
    out = ok(cfg, "done", "1", "--attach", str(doc))
    kept = tmp_path / "state" / "attachments" / "1" / "signed.pdf"
    assert f"  kept {kept}\n" in out
    assert kept.read_bytes() == b"%PDF signed"
    assert detail(cfg, 1)["attachment"] == str(kept)


def test_on_a_postgresql_store_the_document_is_kept_in_state_dir(tmp_path, pg_dsn,
                                                                  monkeypatch):
    monkeypatch.setenv("MAILSYNC_DSN", pg_dsn)
    cfg = tmp_path / "config.yaml"
    cfg.write_text("version: 1\ndaemon: {state_dir: ./state, spool_dir: ./spool, store: "
                   "{postgresql: {dsn: {env: MAILSYNC_DSN}}}}\n"
                   f"users: [alice, bob, carol]\n{TYPES}")
    ok(cfg, "schedule", "--type", "Contract")
    doc = tmp_path / "signed.pdf"
    doc.write_bytes(b"%PDF signed")
    monkeypatch.chdir(tmp_path)  # a wrong directory would be relative to the cwd
    ok(cfg, "done", "1", "--attach", str(doc))
    kept = tmp_path / "state" / "attachments" / "1" / "signed.pdf"
    assert kept.read_bytes() == b"%PDF signed"
    assert detail(cfg, 1)["attachment"] == str(kept)


def test_attach_of_a_missing_file_is_a_usage_error(cfg, tmp_path):
    ok(cfg, "schedule", "--type", "Contract")
    assert "does not exist" in refused(cfg, "done", "1", "--attach",
                                       str(tmp_path / "none.pdf"), code=2)


def test_done_and_cancel_only_apply_to_open_activities(cfg):
    ok(cfg, "schedule", "--type", "Call")
    ok(cfg, "schedule", "--type", "Call")
    assert ok(cfg, "cancel", "1") == "activity 1 cancelled: Call (Call the customer back)\n"
    assert detail(cfg, 1)["state"] == "cancelled"
    assert refused(cfg, "done", "1") == (
        "error: activity 1 is cancelled: done applies to open activities only\n")
    assert refused(cfg, "cancel", "1") == (
        "error: activity 1 is cancelled: cancel applies to open activities only\n")
    ok(cfg, "done", "2")
    assert refused(cfg, "done", "2") == (
        "error: activity 2 is done: done applies to open activities only\n")
    assert refused(cfg, "cancel", "7") == (
        "error: no activity 7 (see: mailsync activity list --state all)\n")


# -- list and show ---------------------------------------------------------------------------
def test_list_table_shows_icon_decoration_overdue_and_relative_deadline(cfg):
    ok(cfg, "schedule", "--type", "Reply")
    ok(cfg, "schedule", "--type", "Call", "--deadline", "2000-01-01")
    ok(cfg, "schedule", "--type", "Meeting", "--user", "carol", "--deadline",
       today().isoformat())
    lines = ok(cfg, "list").splitlines()
    assert lines[0].split() == ["ID", "ICON", "TYPE", "SUMMARY", "USER", "DEADLINE", "DUE",
                                "DECORATION", "STATE", "RECORD"]
    overdue_days = (today() - date(2000, 1, 1)).days
    assert lines[1].split() == ["2", "fa-phone", "Call", "Call", "the", "customer", "back",
                                "bob", "2000-01-01", "OVERDUE", str(overdue_days), "days",
                                "ago", "danger", "open"]
    assert lines[2].split() == ["3", "fa-users", "Meeting", "carol", today().isoformat(),
                                "today", "open"]
    tomorrow = (today() + timedelta(days=1)).isoformat()
    assert lines[3].split() == ["1", "fa-reply", "Reply", "Answer", "the", "customer", "alice",
                                tomorrow, "tomorrow", "warning", "open"]
    assert "\x1b[" not in "".join(lines)  # not a terminal: no colour codes


def test_table_colours_on_a_terminal():
    base = {"id": 1, "icon": "fa-x", "type": "T", "summary": "s", "user": "u",
            "deadline": "2000-01-01", "due": "3 days ago", "state": "open", "record": None,
            "type_removed": False}
    warning = {**base, "decoration": "warning", "overdue": False}
    danger = {**base, "decoration": "danger", "overdue": True}
    text = render_table([warning, danger], color=True)
    assert "\x1b[33mwarning\x1b[0m" in text
    assert "\x1b[31mdanger\x1b[0m" in text
    assert "\x1b[31m\x1b[1mOVERDUE 3 days ago\x1b[0m" in text
    assert "\x1b[" not in render_table([warning, danger], color=False)


def test_list_filters(cfg):
    ok(cfg, "schedule", "--type", "Reply")
    ok(cfg, "schedule", "--type", "Call", "--deadline", "2000-01-01")
    ok(cfg, "schedule", "--type", "Call", "--user", "carol")
    ok(cfg, "schedule", "--type", "Meeting", "--user", "bob")
    ok(cfg, "done", "4")
    assert [r["id"] for r in rows(cfg)] == [2, 1, 3]
    assert [r["id"] for r in rows(cfg, "--limit", "2")] == [2, 1]
    assert [r["id"] for r in rows(cfg, "--user", "bob")] == [2]
    assert [r["id"] for r in rows(cfg, "--type", "Call")] == [2, 3]
    assert [r["id"] for r in rows(cfg, "--overdue")] == [2]
    assert [r["id"] for r in rows(cfg, "--state", "done")] == [4]
    assert [r["id"] for r in rows(cfg, "--state", "all", "--user", "bob")] == [2, 4]
    assert rows(cfg)[0]["overdue"] is True


def test_list_without_a_store_is_empty(cfg, tmp_path):
    assert ok(cfg, "list") == "(no activities)\n"
    assert rows(cfg) == []
    assert not (tmp_path / "state").exists()
    assert refused(cfg, "show", "1") == "error: no activity 1 (no store yet)\n"


def test_show_prints_the_chain_of_previous_activities(cfg):
    ok(cfg, "schedule", "--type", "Reply", "--record", "crm.lead:42")
    ok(cfg, "done", "1")           # triggers Call (2)
    ok(cfg, "done", "2")           # suggests Meeting, Contract
    ok(cfg, "schedule", "--after", "2", "--type", "Contract")  # 3
    text = ok(cfg, "show", "3")
    assert text.startswith("activity 3: Contract (open)\n")
    assert "  record:     crm.lead:42\n" in text  # carried over: Contract has no model
    chain = text.split("previous activities (nearest first):\n")[1].splitlines()
    assert [line.split()[:2] for line in chain] == [["2", "Call"], ["1", "Reply"]]
    assert [p["id"] for p in detail(cfg, 3)["previous"]] == [2, 1]
    assert [f["id"] for f in detail(cfg, 1)["following"]] == [2]


# -- config changes --------------------------------------------------------------------------
def test_a_removed_type_stays_readable_and_refuses_new_activities(cfg, tmp_path):
    ok(cfg, "schedule", "--type", "Meeting", "--user", "bob", "--summary", "Demo")
    ok(cfg, "schedule", "--type", "Meeting", "--user", "bob")
    without = (TYPES.split("  - name: Meeting")[0] + "  - name: Contract" +
               TYPES.split("  - name: Contract")[1]).replace("[Meeting, Contract]", "[Contract]")
    write(tmp_path, without)
    [a, _] = rows(cfg)
    assert (a["type"], a["summary"], a["type_removed"], a["icon"]) == (
        "Meeting", "Demo", True, None)
    assert "(type removed)" in ok(cfg, "list")
    assert "  type:       removed from the config\n" in ok(cfg, "show", "1")
    assert refused(cfg, "schedule", "--type", "Meeting", "--user", "bob") == (
        "error: activity type 'Meeting' was removed from the config: its activities stay "
        "readable but no new ones are scheduled (declared: Reply, Call, Contract)\n")
    # its open activities can still be closed
    assert ok(cfg, "done", "1") == (
        "activity 1 done: Meeting (Demo)\n"
        "note: activity type 'Meeting' is no longer in the config: nothing is scheduled next\n")
    assert ok(cfg, "cancel", "2").startswith("activity 2 cancelled")


def test_a_renamed_default_user_is_refused_at_load(tmp_path):
    cfg = write(tmp_path, users="[alicia, bob, carol]")
    result = run(cfg, "list")
    assert result.exit_code == 1
    assert ("activity_types[0].default_user: 'alice' is not a declared user; "
            "did you mean 'alicia'?") in result.stderr
    assert result.stdout == ""
