"""End to end: a message fetched from a real Dovecot by `run --once` schedules an activity;
marking it done triggers the next one (docs/design.md §4)."""

from __future__ import annotations

import json
from datetime import date, timedelta

from tests.dovecot import dovecot_fixture, incoming_yaml, mailbox_fixture, message  # noqa: F401
from tests.outbound_helpers import run

TYPES = """\
activity_types:
  - name: Reply
    action: email
    default_user: alice
    icon: fa-reply
    decoration: warning
    delay: {count: 1, unit: days}
    chaining: trigger
    default_next: Call
  - name: Call
    action: phonecall
    default_user: bob
    delay: {count: 2, unit: days, from: completion_date}
    chaining: suggest
    recommended_next: [Reply]
"""


def test_fetched_message_schedules_an_activity_whose_completion_triggers_the_next(
        tmp_path, mailbox):
    incoming = incoming_yaml(mailbox, "support", tmp_path / "imap.secret",
                             extra="    activity: {type: Reply, user: alice}\n")
    cfg = tmp_path / "config.yaml"
    cfg.write_text("version: 1\ndaemon:\n  state_dir: ./state\n  spool_dir: ./spool\n"
                   "users: [alice, bob]\n" + TYPES + "incoming_servers:\n" + incoming)
    mailbox.append(message(1, subject="Where is my order?"))

    out = run(["run", "--once", "-c", str(cfg)])
    assert out.exit_code == 0, out.output
    assert "inbox: support: 1 fetched" in out.output

    (fetched,) = json.loads(run(["inbox", "-c", str(cfg), "--format", "json"]).output)
    listed = json.loads(run(["activity", "list", "-c", str(cfg), "--format", "json"]).output)
    (reply,) = listed
    assert reply["type"] == "Reply" and reply["user"] == "alice"
    assert reply["summary"] == "Where is my order?"
    assert reply["fetched_id"] == fetched["id"]
    assert reply["deadline"] == (date.today() + timedelta(days=1)).isoformat()

    done = run(["activity", "done", str(reply["id"]), "-c", str(cfg), "--feedback", "answered"])
    assert done.exit_code == 0, done.output
    assert "Call" in done.output
    (call,) = json.loads(run(["activity", "list", "-c", str(cfg), "--format", "json"]).output)
    assert call["type"] == "Call" and call["user"] == "bob" and call["state"] == "open"
    assert call["deadline"] == (date.today() + timedelta(days=2)).isoformat()

    # A second pass fetches nothing new and schedules nothing more.
    again = run(["run", "--once", "-c", str(cfg)])
    assert "inbox: support: 0 fetched" in again.output
    everything = json.loads(run(["activity", "list", "-c", str(cfg), "--state", "all",
                                 "--format", "json"]).output)
    assert sorted(a["type"] for a in everything) == ["Call", "Reply"]


def test_test_command_checks_incoming_servers(tmp_path, mailbox):
    good = incoming_yaml(mailbox, "support", tmp_path / "ok.secret")
    bad = incoming_yaml(mailbox, "wrongpw", tmp_path / "bad.secret")
    (tmp_path / "bad.secret").write_text("not-the-password")
    missing = incoming_yaml(mailbox, "nofolder", tmp_path / "ok2.secret", folder="Nope")
    cfg = tmp_path / "config.yaml"
    cfg.write_text("version: 1\ndaemon:\n  state_dir: ./state\n  spool_dir: ./spool\n"
                   "incoming_servers:\n" + good + bad + missing)
    result = run(["test", "-c", str(cfg)])
    assert result.exit_code == 1
    lines = dict(line.split(": ", 1) for line in result.output.strip().splitlines())
    assert lines["support (incoming)"] == "OK (plain text, LOGIN)"
    assert lines["wrongpw (incoming)"].startswith("Connection Error: ")
    assert lines["nofolder (incoming)"].startswith("Connection Error: ")
    assert mailbox.password not in result.output
    only = run(["test", "support", "-c", str(cfg)])
    assert only.exit_code == 0
    assert only.output.strip() == "support (incoming): OK (plain text, LOGIN)"
