"""The suppression list end to end: a DSN fetched from a real Dovecot mailbox, or a 550 at
RCPT from aiosmtpd, suppresses the address; the next message to it is not sent to it (no
SMTP attempt); `mailsync suppression list|add|remove`, expiry, the metric."""

from __future__ import annotations

import csv
import io
import json
import time

import pytest

from mailsync.outbound import suppression
from mailsync.outbound.spool import drop
from mailsync.outbound.verp import load_key
from tests.dovecot import (  # noqa: F401  (fixtures)
    dovecot_fixture,
    incoming_yaml,
    mailbox_fixture,
)
from tests.outbound_helpers import history, load, open_store, run, run_once, server_yaml, show
from tests.outbound_helpers import write_config as outbound_config
from tests.test_inbound_bounces import postfix_dsn


@pytest.mark.parametrize(("status", "code", "hard"), [
    ("5.1.1", 550, True), ("5.2.1", 550, True), (None, 550, True), (None, 554, True),
    ("5.7.1", 550, False),   # policy: relaying denied, a spam block: not the address
    ("5.5.2", 500, False),   # protocol: our command
    ("4.2.1", 450, False), (None, 451, False), (None, None, False),
])
def test_what_counts_as_a_hard_bounce(status, code, hard):
    assert suppression.hard(status, code) is hard


def _lines(cfg, *args):
    result = run(["suppression", *args, "-c", str(cfg)])
    return result


def _listed(cfg, *args):
    result = run(["suppression", "list", "-c", str(cfg), "--format", "json", *args])
    assert result.exit_code == 0, result.output
    return {e["address"]: e for e in json.loads(result.output)}


def test_a_dsn_from_dovecot_suppresses_the_address_and_the_next_message_skips_it(
        tmp_path, smtp_server, mailbox):
    srv = smtp_server()
    cfg = outbound_config(tmp_path, server_yaml("main", srv.port))
    cfg.write_text(cfg.read_text() + "incoming_servers:\n"
                   + incoming_yaml(mailbox, "bounces", tmp_path / "pw"))
    spool = tmp_path / "spool"
    drop(spool, user="alice", to=["nobody@example.org"], subject="first", text="x")
    run_once(cfg)
    (first,) = history(cfg)
    assert first["status"] == "sent" and len(srv.messages) == 1

    key = load_key(load(cfg).daemon.state_dir)
    mailbox.append(postfix_dsn(first["id"], key=key))
    run_once(cfg)  # polls the bounce: nobody@ is bounced and suppressed
    assert show(cfg, first["id"])["status"] == "bounced"
    entry = _listed(cfg)["nobody@example.org"]
    assert entry["reason"] == "bounced" and entry["message"] == first["id"]
    assert "5.1.1" in entry["detail"] and entry["until"] > entry["since"]

    drop(spool, user="alice", to=["nobody@example.org", "ok@example.org"], subject="second",
         text="x")
    drop(spool, user="alice", to=["nobody@example.org"], subject="third", text="x")
    run_once(cfg)

    rcpts_before = srv.commands.count("RCPT")
    assert [m.rcpt_tos for m in srv.messages[1:]] == [("ok@example.org",)]
    rows = {r["subject"]: r for r in history(cfg)}
    second = show(cfg, rows["second"]["id"])
    assert second["status"] == "sent"
    status = {r["address"]: r["status"] for r in second["recipients"]}
    assert status == {"nobody@example.org": "suppressed", "ok@example.org": "sent"}
    why = next(r["reply"] for r in second["recipients"] if r["status"] == "suppressed")
    assert why.startswith(f"suppressed (bounced by message {first['id']} since ")
    third = show(cfg, rows["third"]["id"])
    assert third["status"] == "failed" and third["reason"] == "suppressed"
    assert third["attempts"] == 0 and third["attempts_detail"] == []
    assert "every recipient is suppressed" in third["error"]
    assert [e["status"] for e in third["events"]][-1] == "failed"

    # Removed: `queue retry` sends the third to it after all.
    assert _lines(cfg, "remove", "nobody@example.org").exit_code == 0
    assert _listed(cfg) == {}
    assert run(["queue", "retry", str(third["id"]), "-c", str(cfg)]).exit_code == 0
    run_once(cfg)
    assert srv.wait_for(3)[2].rcpt_tos == ("nobody@example.org",)
    assert srv.commands.count("RCPT") == rcpts_before + 1
    assert show(cfg, third["id"])["status"] == "sent"


def test_a_550_at_rcpt_suppresses_and_the_next_message_makes_no_attempt(tmp_path, smtp_server):
    srv = smtp_server(recipient_replies={"gone@example.org": "550 5.1.1 No such user",
                                         "policy@example.org": "550 5.7.1 Relaying denied"})
    cfg = outbound_config(tmp_path, server_yaml("main", srv.port))
    spool = tmp_path / "spool"
    drop(spool, user="alice", to=["gone@example.org", "policy@example.org"], subject="first",
         text="x")
    run_once(cfg)
    listed = _listed(cfg)
    assert list(listed) == ["gone@example.org"]  # 5.7.1 is about the sender, not the address
    assert listed["gone@example.org"]["reason"] == "rejected"
    assert "550 5.1.1 No such user" in listed["gone@example.org"]["detail"]

    connections = srv.connections
    drop(spool, user="alice", to=["gone@example.org"], subject="again", text="x")
    run_once(cfg)
    again = next(r for r in history(cfg) if r["subject"] == "again")
    assert again["status"] == "failed" and again["reason"] == "suppressed"
    assert srv.connections == connections  # not even a connection for it


def test_add_list_remove_and_expiry(tmp_path, smtp_server):
    srv = smtp_server()
    cfg = outbound_config(tmp_path, server_yaml("main", srv.port))
    assert _lines(cfg, "add", "Someone@Example.org", "--note", "asked to stop").exit_code == 0
    assert _lines(cfg, "add", "brief@example.org", "--for", "1h").exit_code == 0
    bad = _lines(cfg, "add", "not an address")
    assert bad.exit_code == 2
    assert "address: 'not an address' is not an email address" in bad.output
    bad = _lines(cfg, "add", "a" * 250 + "@example.org")
    assert bad.exit_code == 2 and "262 characters long (at most 254, RFC 5321)" in bad.output
    bad = _lines(cfg, "add", "x@example.org", "--for", "soon")
    assert bad.exit_code == 2 and "--for: 'soon' is not a duration" in bad.output
    listed = _listed(cfg)
    assert sorted(listed) == ["brief@example.org", "someone@example.org"]
    assert listed["someone@example.org"]["until"] == "(removed by hand)"
    assert listed["someone@example.org"]["reason"] == "manual"
    assert listed["someone@example.org"]["detail"] == "asked to stop"
    table = _lines(cfg, "list")
    assert table.exit_code == 0
    assert "ADDRESS" in table.output and "brief@example.org" in table.output
    as_csv = list(csv.DictReader(io.StringIO(_lines(cfg, "list", "--format", "csv").stdout)))
    assert {r["address"]: (r["reason"], r["until"], r["detail"]) for r in as_csv} == {
        a: (e["reason"], e["until"], e["detail"] or "") for a, e in listed.items()}

    # An entry that has expired no longer suppresses (nor shows, but with --all).
    store, _ = open_store(cfg)
    try:
        with store.transaction() as conn:
            suppression.add(conn, "old@example.org", "bounced", "5.1.1", time.time() - 100,
                            time.time() - 1)
    finally:
        store.close()
    assert "old@example.org" not in _listed(cfg)
    assert "old@example.org" in _listed(cfg, "--all")
    drop(tmp_path / "spool", user="alice", to=["old@example.org", "someone@example.org"],
         subject="x", text="x")
    run_once(cfg)
    assert srv.wait_for(1)[0].rcpt_tos == ("old@example.org",)

    missing = _lines(cfg, "remove", "nobody@example.org")
    assert missing.exit_code == 1 and "nobody@example.org is not on the suppression list" in \
        missing.output


def test_the_claim_counts_each_suppressed_recipient_and_calls_the_hook(tmp_path):
    from mailsync.outbound.queue import OutboundStore
    from mailsync.outbound.ratelimit import Gate
    from mailsync.store import Store
    from mailsync.telemetry.metrics import Metrics
    from tests.test_ratelimit import limited, queue_messages

    store = Store.open(tmp_path / "state")
    try:
        queue = OutboundStore(store)
        ids = queue_messages(queue, 2)  # to0@example.org, to1@example.org
        with store.transaction() as conn:
            suppression.add(conn, "TO0@example.org", "bounced", "5.1.1", 0.0, None, 7)
        metrics = Metrics()
        metrics.prime(limited())
        gate = Gate(limited(), metrics, store.dialect)
        calls = []
        gate.on_suppressed = lambda mid, rcpts: calls.append((mid, rcpts))

        claimed = queue.claim_due(1.0, 200, gate.admit)
        assert calls == []  # only once the claim has committed
        gate.committed()

        assert [m.id for m in claimed] == [ids[1]]
        assert calls == [(ids[0], ("to0@example.org",))]
        sample = metrics.registry.get_sample_value
        assert sample("mailsync_recipients_suppressed_total",
                      {"account": "sales", "reason": "bounced"}) == 1
        assert sample("mailsync_recipients_suppressed_total",
                      {"account": "sales", "reason": "manual"}) == 0  # primed
        assert sample("mailsync_messages_failed_total",
                      {"account": "sales", "reason": "suppressed"}) == 1
        with store.lock:
            assert suppression.size(store.conn, 1.0) == 1
    finally:
        store.close()
