"""A message whose MIME parts, or an address's comments, nest a thousand deep (a few KB:
anyone can send one) cannot wedge a mailbox, the spool, nor break a page.

The email package follows nested multiparts by recursion, and raised RecursionError on
such a message: the poll that fetched it failed, and every poll after it, so nothing
behind it in the mailbox was ever stored; `inbox show`, `history show` and the console's
Message page failed on it too. Now the poller stores it as a message (no report can be
read from it), the shows print its headers and say why its parts are not shown.

The address parser (email.utils.getaddresses) reads comments, ``(a (b (c)))``, by
recursion too: a To header of 5,000 nested comments raised RecursionError out of the
spool's parser (which must never raise: the pickup failed on the file at every pass)
and out of the bounce classifier (for a To naming the bounce address's prefix).
"""

from __future__ import annotations

import json
from email import policy
from email.policy import compat32
from pathlib import Path

import pytest

from mailsync import mime
from mailsync.outbound.spool import drop, drop_eml
from tests.dovecot import dovecot_fixture, incoming_yaml, mailbox_fixture, message  # noqa: F401
from tests.outbound_helpers import run, run_once, server_yaml, write_config
from tests.web_helpers import make_site


def nested(depth: int, *, head: bytes = b"") -> bytes:
    """A message of ``depth`` multipart levels, one inside the other, claiming to be a
    delivery report (``multipart/report; report-type=delivery-status``)."""
    top = (head or b"From: MAILER-DAEMON@mx.example.net\r\nTo: support@example.com\r\n"
           b"Subject: Undelivered Mail Returned to Sender\r\nMessage-ID: <deep@example.net>\r\n")
    out = [top, b'Content-Type: multipart/report; report-type=delivery-status; boundary="b0"'
                b"\r\n\r\n"]
    for i in range(1, depth):
        out.append(b'--b%d\r\nContent-Type: multipart/mixed; boundary="b%d"\r\n\r\n' % (i - 1, i))
    out.append(b"--b%d\r\nContent-Type: message/delivery-status\r\n\r\n"
               b"Final-Recipient: rfc822; ann@example.org\r\nAction: failed\r\n"
               b"Status: 5.1.1\r\n\r\n" % (depth - 1))
    out.extend(b"--b%d--\r\n" % i for i in range(depth - 1, -1, -1))
    return b"".join(out)


# nested(n): n multipart levels, then the delivery-status part and its status block,
# the deepest part n + 1 levels below the top one.
@pytest.mark.parametrize("depth,deep", [
    (5, None), (mime.MAX_DEPTH - 1, None),
    (mime.MAX_DEPTH, f"its MIME parts nest deeper than {mime.MAX_DEPTH} levels"),
    (1200, "its MIME structure nests too deep to be read")])   # the parser's recursion
def test_parse_refuses_what_nests_deeper_than_max_depth(depth, deep):
    raw = nested(depth)
    if deep:
        with pytest.raises(mime.TooDeep, match=deep):
            mime.parse(raw, compat32)
    else:
        assert len(list(mime.parse(raw, policy.default).walk())) == depth + 2


def _polled(tmp_path, mailbox, count: int) -> tuple[Path, dict[str, dict]]:
    """`inbox poll` of ``mailbox`` (alias domain example.com, bounces to bounce+), which
    must fetch ``count`` messages; the config and the inbox's rows by subject."""
    cfg = tmp_path / "config.yaml"
    cfg.write_text("version: 1\ndaemon:\n  state_dir: ./state\n  spool_dir: ./spool\n"
                   "alias_domain: {domain: example.com, bounce: bounce}\n"
                   "incoming_servers:\n" + incoming_yaml(mailbox, "support",
                                                         tmp_path / "imap.secret"))
    polled = run(["inbox", "poll", "-c", str(cfg)])
    assert polled.exit_code == 0, polled.output
    assert f"support: {count} fetched" in polled.output
    return cfg, {r["subject"]: r for r in json.loads(
        run(["inbox", "-c", str(cfg), "--format", "json"]).stdout)}


@pytest.mark.servers
def test_a_deep_message_is_stored_and_the_mailbox_goes_on(tmp_path, mailbox):
    mailbox.append(nested(1200))
    mailbox.append(message(2, subject="After the deep one"))
    cfg, rows = _polled(tmp_path, mailbox, 2)
    assert set(rows) == {"Undelivered Mail Returned to Sender", "After the deep one"}
    deep = rows["Undelivered Mail Returned to Sender"]
    assert not deep.get("bounce_of")  # no report can be read from it
    again = run(["inbox", "poll", "-c", str(cfg)])
    assert again.exit_code == 0 and "support: 0 fetched" in again.output
    shown = run(["inbox", "show", str(deep["id"]), "-c", str(cfg)])
    assert shown.exit_code == 0, shown.output
    assert "Subject: Undelivered Mail Returned to Sender" in shown.stdout
    assert "(not shown: its MIME structure nests too deep to be read; --raw prints the " \
           "message as stored)" in shown.stdout
    raw = run(["inbox", "show", str(deep["id"]), "-c", str(cfg), "--raw"])
    assert raw.exit_code == 0 and raw.stdout_bytes.count(b"Content-Type: multipart/mixed") \
        == 1199


@pytest.mark.servers
def test_a_deep_sent_message_shows_its_headers_on_the_page_and_in_history(tmp_path,
                                                                          smtp_server):
    for site in make_site(tmp_path, smtp_server):
        drop_eml(tmp_path / "spool", nested(
            1200, head=b"X-Mailsync-User: alice\r\nTo: ok@example.org\r\nSubject: Deep\r\n"))
        assert "1 sent" in run_once(site.config_path).output
        mid = int(json.loads(run(["history", "-c", str(site.config_path), "--search", "Deep",
                                  "--format", "json"]).stdout)[0]["id"])
        shown = run(["history", "show", str(mid), "-c", str(site.config_path)])
        assert shown.exit_code == 0, shown.output
        assert "Subject: Deep" in shown.stdout and "(not shown: its MIME structure nests" \
            in shown.stdout
        c = site.client()
        c.login("victor")
        page = c.get(f"/messages/{mid}")
        assert page.status == 200, page.text
        assert "The parts are not shown: its MIME structure nests too deep" in page.text
        assert f'href="/messages/{mid}/raw"' in page.text
        assert c.get(f"/messages/{mid}/parts/3").status == 404
        assert c.get(f"/messages/{mid}/raw").body.count(b"multipart/mixed") == 1199


def test_a_deep_form_body_is_a_bad_request_not_an_error_page():
    from mailsync.web.http import parse_multipart

    body = nested(1200, head=b"X: y\r\n").split(b"\r\n\r\n", 1)[1]
    with pytest.raises(ValueError,
                       match="multipart/form-data body: its MIME structure nests too deep"):
        parse_multipart('multipart/form-data; boundary="b0"', body)



def _deep_comment(address: str) -> str:
    return "(" * 5000 + "x" + ")" * 5000 + " " + address


def test_a_spool_file_with_a_deeply_commented_address_is_rejected_with_its_reason(
        tmp_path, smtp_server):
    srv = smtp_server()
    cfg = write_config(tmp_path, server_yaml("main", srv.port))
    spool = tmp_path / "spool"
    drop(spool, user="alice", to=["ok@example.org"], subject="fine", text="x")
    # Written as any application may (drop_eml itself refuses it, with the reason).
    (spool / "new" / "deep.eml").write_bytes(
        b"X-Mailsync-User: alice\r\nTo: " + _deep_comment("a@example.org").encode()
        + b"\r\nSubject: deep eml\r\n\r\nhi\r\n")
    (spool / "new" / "deep.json").write_text(json.dumps(
        {"user": "alice", "to": [_deep_comment("b@example.org")], "subject": "deep json"}))
    out = run_once(cfg).output
    assert "1 sent" in out and "2 rejected" in out, out
    assert [list(m.rcpt_tos) for m in srv.wait_for(1)] == [["ok@example.org"]]
    errors = sorted(p.read_text() for p in (spool / "rejected").glob("*.error"))
    assert len(errors) == 2
    assert all("bad_recipient" in e and "comments nest too deep" in e for e in errors), errors


@pytest.mark.servers
def test_a_deeply_commented_bounce_address_does_not_wedge_the_mailbox(tmp_path, mailbox):
    mailbox.append(b"From: someone@example.net\r\nTo: "
                   + _deep_comment("bounce+42.abc@example.com").encode()
                   + b"\r\nSubject: a comment in depth\r\nMessage-ID: <c@example.net>"
                   b"\r\n\r\nhi\r\n")
    mailbox.append(b"From: someone@example.net\r\nTo: support@example.com\r\nSubject: "
                   b"=?utf-8?q?caf=C3=A9?=\r\nContent-Type: text/plain; " + b"(" * 5000
                   + b"\r\n\r\nhi\r\n")
    mailbox.append(message(2, subject="After the comments"))
    cfg, rows = _polled(tmp_path, mailbox, 3)
    listed = {subject: row["id"] for subject, row in rows.items()}
    assert set(listed) == {"a comment in depth", "café", "After the comments"}
    to = run(["inbox", "show", str(listed["a comment in depth"]), "-c", str(cfg)])
    assert to.exit_code == 0 and "  hi" in to.stdout, to.output  # its text is shown
    ctype = run(["inbox", "show", str(listed["café"]), "-c", str(cfg)])
    assert ctype.exit_code == 0, ctype.output
    assert "Subject: café" in ctype.stdout
    assert "(not shown: its MIME structure nests too deep to be read" in ctype.stdout
