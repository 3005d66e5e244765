"""Composing the final message: From/Reply-To rules, added headers, untouched body."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime, timedelta, timezone
from email.header import decode_header, make_header
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, formataddr
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from mailsync.config.load import load_text
from mailsync.config.model import Account, Config
from mailsync.outbound.compose import compose
from mailsync.outbound.types import Composed, Submission
from mailsync.values import replace

CONFIG = """
version: 1
users: [alice]
alias_domain:
  domain: example.com
  catchall: catchall
  bounce: bounce
  default_from: notifications
outgoing_servers:
  - {name: relay, host: relay.example.com, from_filter: example.com}
accounts:
  - {name: sales, sender_name: Sales Team, email: sales@example.com, granted_to: [alice]}
  - {name: plain, email: plain@example.com, granted_to: [alice]}
  - {name: gm, sender_name: Zoë Müller, email: zoe@gmail.com, granted_to: [alice]}
  - {name: quoted, sender_name: 'Sales, "EU"', email: eu@example.com, granted_to: [alice]}
"""

NO_ALIAS = """
version: 1
users: [alice]
outgoing_servers:
  - {name: relay, host: relay.example.org}
accounts:
  - {name: sales, sender_name: Sales Team, email: sales@example.org, granted_to: [alice]}
"""

NOW = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)

BODY = b"Hello,\r\n\r\n  indented line: not a header\r\nFrom the body\r\n.\r\nBye\r\n"

MESSAGE = (
    b"From: someone@else.example\r\n"
    b"To: Bob <bob@example.net>,\r\n"
    b"\tCarol <carol@example.net>\r\n"
    b"Bcc: hidden@example.net\r\n"
    b"Subject: Quarterly\r\n"
    b"  numbers\r\n"
    b"X-Mailsync-User: alice\r\n"
    b"X-Mailsync-Account: sales\r\n"
    b"x-mailsync-extra: folded\r\n"
    b" more\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n" + BODY
)


def load(text: str, tmp_path: Path) -> Config:
    loaded = load_text(text, "config.yaml", tmp_path)
    assert loaded.config is not None, loaded.errors
    return loaded.config


def account(config: Config, name: str) -> Account:
    found = config.account(name)
    assert found is not None
    return found


def submit(message: bytes, subject: str = "Quarterly numbers") -> Submission:
    return Submission(user="alice", account=None, recipients=("bob@example.net",),
                      message=message, subject=subject)


def run(tmp_path: Path, message: bytes = MESSAGE, name: str = "sales", *,
        text: str = CONFIG, number: int | None = None) -> Composed:
    config = load(text, tmp_path)
    return compose(submit(message), account(config, name), config, now=NOW,
                   message_number=number)


def parsed(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def header_block(data: bytes) -> bytes:
    end = data.find(b"\r\n\r\n")
    return data[:end + 2] if end >= 0 else data[:data.find(b"\n\n") + 1]


# --- From and Reply-To ------------------------------------------------------------------


def test_from_is_the_account_with_its_sender_name(tmp_path):
    got = run(tmp_path)
    msg = parsed(got.data)
    assert msg.get_all("From") == [formataddr(("Sales Team", "sales@example.com"))]
    assert msg["From"].addresses[0] == Address("Sales Team", addr_spec="sales@example.com")
    assert got.from_address == "sales@example.com" and got.rewritten is False


def test_from_is_the_bare_address_without_a_sender_name(tmp_path):
    assert parsed(run(tmp_path, name="plain").data)["From"] == "plain@example.com"


def test_sender_name_with_specials_is_quoted(tmp_path):
    msg = parsed(run(tmp_path, name="quoted").data)
    assert msg["From"].addresses[0].display_name == 'Sales, "EU"'
    assert msg["From"].addresses[0].addr_spec == "eu@example.com"


def test_catchall_reply_to_when_the_message_sets_none(tmp_path):
    assert parsed(run(tmp_path).data).get_all("Reply-To") == ["catchall@example.com"]


def test_existing_reply_to_is_kept_as_it_was(tmp_path):
    line = b"Reply-To: Desk <desk@example.net>,\r\n  Other <o@example.net>\r\n"
    got = run(tmp_path, line + MESSAGE)
    assert line in got.data
    assert got.data.count(b"Reply-To:") == 1
    assert b"catchall@" not in got.data


def test_blank_reply_to_counts_as_none(tmp_path):
    got = run(tmp_path, b"Reply-To: \r\n" + MESSAGE)
    assert parsed(got.data).get_all("Reply-To") == ["catchall@example.com"]


def test_rewritten_from_puts_the_account_in_reply_to(tmp_path):
    got = run(tmp_path, b"Reply-To: app@example.net\r\n" + MESSAGE, name="gm")
    msg = parsed(got.data)
    assert msg["From"].addresses[0] == Address("Zoë Müller", addr_spec="notifications@example.com")
    assert [str(a.addr_spec) for a in msg["Reply-To"].addresses] == ["zoe@gmail.com"]
    assert msg["Reply-To"].addresses[0].display_name == "Zoë Müller"
    assert b"app@example.net" not in got.data
    assert got.rewritten is True and got.from_address == "notifications@example.com"


def test_without_alias_domain_nothing_is_added_to_reply_to(tmp_path):
    got = run(tmp_path, text=NO_ALIAS)
    assert parsed(got.data)["Reply-To"] is None
    assert got.message_id.endswith("@example.org>")


def test_non_ascii_sender_name_is_encoded(tmp_path):
    got = run(tmp_path, name="gm")
    block = header_block(got.data)
    assert block.isascii()
    assert b"=?utf-8?" in block
    assert parsed(got.data)["From"].addresses[0].display_name == "Zoë Müller"


def test_long_non_ascii_sender_name_stays_on_one_line(tmp_path):
    name = "Ünïcödé Sërvïcé Ðëpärtmënt " * 6
    text = CONFIG.replace("sender_name: Zoë Müller", f"sender_name: '{name}'")
    got = run(tmp_path, name="gm", text=text)
    from_line = next(line for line in got.data.split(b"\r\n") if line.startswith(b"From:"))
    words = from_line.split()
    assert all(len(w) <= 75 for w in words if w.startswith(b"=?"))  # RFC 2047
    assert len([w for w in words if w.startswith(b"=?")]) > 1
    # An RFC 2047 decoder joins adjacent encoded-words without the space between them.
    # (Python's policy.default address parser puts a space there: a CPython quirk.)
    phrase = from_line.decode()[len("From: "):].rpartition(" <")[0]
    assert str(make_header(decode_header(phrase))) == name.strip()


def test_line_breaks_in_sender_name_cannot_inject_headers(tmp_path):
    text = CONFIG.replace("sender_name: Sales Team",
                          'sender_name: "Sales\\r\\nBcc: evil@x.example"')
    # The schema refuses such a name...
    assert load_text(text, "config.yaml", tmp_path).config is None
    # ...and compose defends anyway, should one reach it by another way.
    config = load(CONFIG, tmp_path)
    evil = replace(account(config, "sales"), sender_name="Sales\r\nBcc: evil@x.example")
    got = compose(submit(MESSAGE), evil, config, now=NOW)
    msg = parsed(got.data)
    assert msg["Bcc"] is None
    assert msg.get_all("From") == [formataddr(("Sales  Bcc: evil@x.example",
                                               "sales@example.com"))]


# --- Added and removed headers ------------------------------------------------------------


def test_message_id_and_date_are_added_when_absent(tmp_path):
    got = run(tmp_path, number=42)
    msg = parsed(got.data)
    assert msg["Message-ID"] == got.message_id
    assert got.message_id.startswith("<") and got.message_id.endswith(".42@example.com>")
    assert msg["Date"] == format_datetime(NOW)
    assert msg["Date"].datetime == NOW


def test_message_ids_differ_between_messages(tmp_path):
    assert run(tmp_path).message_id != run(tmp_path).message_id


def test_existing_message_id_and_date_are_kept(tmp_path):
    head = b"Message-ID: <app.1@example.net>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    got = run(tmp_path, head + MESSAGE)
    assert got.message_id == "<app.1@example.net>"
    assert head in got.data
    assert got.data.count(b"Message-ID:") == 1 and got.data.count(b"Date:") == 1


def test_folded_existing_message_id_is_unfolded_in_the_result(tmp_path):
    got = run(tmp_path, b"Message-Id:\r\n <folded@example.net>\r\n" + MESSAGE)
    assert got.message_id == "<folded@example.net>"
    assert got.data.lower().count(b"message-id:") == 1


def test_naive_now_is_taken_as_utc(tmp_path):
    config = load(CONFIG, tmp_path)
    got = compose(submit(MESSAGE), account(config, "sales"), config,
                  now=datetime(2026, 3, 4, 5, 6, 7))
    assert parsed(got.data)["Date"].datetime == NOW


def test_date_keeps_the_offset_of_now(tmp_path):
    config = load(CONFIG, tmp_path)
    paris = NOW.astimezone(timezone(timedelta(hours=1)))
    got = compose(submit(MESSAGE), account(config, "sales"), config, now=paris)
    assert parsed(got.data)["Date"] == format_datetime(paris)
    assert "+0100" in parsed(got.data)["Date"]


def test_bcc_and_mailsync_headers_are_removed(tmp_path):
    got = run(tmp_path)
    block = header_block(got.data).lower()
    assert b"bcc" not in block and b"x-mailsync" not in block
    assert b"hidden@example.net" not in got.data and b" more\r\n" not in block
    assert b"someone@else.example" not in got.data  # the application's own From


FOREIGN = (
    b"Sender: ceo@bank.example\r\n"
    b"Resent-From: ceo@bank.example\r\n"
    b"Resent-Sender: ceo@bank.example\r\n"
    b"resent-to: someone@bank.example\r\n"
    b"Resent-Date: Mon, 2 Mar 2026 10:00:00 +0000\r\n"
    b"Resent-Message-ID: <forged@bank.example>\r\n"
    b"Return-Path: <ceo@bank.example>\r\n"
    b"DKIM-Signature: v=1; a=rsa-sha256; d=bank.example; s=sel;\r\n"
    b"\th=from:to:subject; bh=AAAA;\r\n"
    b"  b=BBBBforgedsignature\r\n"
    b"SENDER : obsolete-space@bank.example\r\n"
)


def test_foreign_originator_headers_are_removed_the_rest_kept(tmp_path):
    head, _, body = MESSAGE.partition(b"\r\n\r\n")
    got = run(tmp_path, head + b"\r\n" + FOREIGN + b"\r\n" + body)
    block = header_block(got.data)
    assert b"bank.example" not in got.data          # no Sender, Resent-*, Return-Path
    assert b"BBBBforgedsignature" not in got.data   # the whole folded DKIM-Signature
    assert b"h=from:to:subject" not in got.data
    for name in (b"sender", b"resent-", b"return-path", b"dkim-signature"):
        assert b"\n" + name not in b"\n" + block.lower(), name
    # Everything else of the header block and the body is kept byte for byte.
    assert got.data.endswith(b"\r\n\r\n" + BODY)
    for kept in (b"To: Bob <bob@example.net>,\r\n\tCarol <carol@example.net>\r\n",
                 b"Subject: Quarterly\r\n  numbers\r\n",
                 b"Content-Type: text/plain; charset=utf-8\r\n"):
        assert kept in block
    assert parsed(got.data)["From"] == "Sales Team <sales@example.com>"


def test_headers_that_merely_start_like_originator_ones_are_kept(tmp_path):
    kept = (b"Senders-Note: kept\r\nX-Sender: kept\r\nResentment: kept\r\n"
            b"X-Return-Path: kept\r\nDKIM-Signature-Info: kept\r\n")
    got = run(tmp_path, b"Subject: s\r\n" + kept + b"\r\nbody\r\n")
    assert kept in got.data


def test_subject_is_passed_through(tmp_path):
    assert run(tmp_path).subject == "Quarterly numbers"


# --- Bytes kept as they were ------------------------------------------------------------


def test_crlf_message_keeps_body_and_other_headers_byte_for_byte(tmp_path):
    got = run(tmp_path)
    assert got.data.endswith(b"\r\n\r\n" + BODY)
    for kept in (b"To: Bob <bob@example.net>,\r\n\tCarol <carol@example.net>\r\n",
                 b"Subject: Quarterly\r\n  numbers\r\n",
                 b"Content-Type: text/plain; charset=utf-8\r\n"):
        assert kept in got.data
    assert b"\n" not in got.data.replace(b"\r\n", b"")  # no bare LF was introduced


def test_lf_message_stays_lf(tmp_path):
    lf = MESSAGE.replace(b"\r\n", b"\n")
    got = run(tmp_path, lf)
    assert b"\r" not in got.data
    assert got.data.endswith(b"\n\n" + BODY.replace(b"\r\n", b"\n"))
    assert b"Subject: Quarterly\n  numbers\n" in got.data
    assert parsed(got.data)["From"].addresses[0].addr_spec == "sales@example.com"


def test_eight_bit_body_is_not_touched(tmp_path):
    body = "Grüße — ünïcödé\r\n".encode() + bytes(range(128, 256)) + b"\r\n"
    got = run(tmp_path, b"Subject: x\r\n\r\n" + body)
    assert got.data.endswith(b"\r\n\r\n" + body)


def test_message_without_body_gets_headers_only(tmp_path):
    got = run(tmp_path, b"Subject: only headers\r\n")
    assert got.data.endswith(b"Subject: only headers\r\n")
    assert parsed(got.data)["From"] is not None


@given(body=st.binary(max_size=400),
       crlf=st.booleans(),
       extra=st.lists(st.sampled_from([b"Bcc: b@x.example", b"X-Mailsync-User: u",
                                       b"Keywords: a,\r\n b", b"Comments: c",
                                       b"Sender: s@x.example", b"Resent-From: r@x.example",
                                       b"Return-Path: <p@x.example>",
                                       b"DKIM-Signature: v=1;\r\n b=x"]), max_size=4))
def test_body_and_kept_headers_survive_any_bytes(tmp_path_factory, body, crlf, extra):
    eol = b"\r\n" if crlf else b"\n"
    head = [line.replace(b"\r\n", eol) + eol for line in [b"Subject: s", *extra]]
    message = b"".join(head) + eol + body
    config = load(CONFIG, tmp_path_factory.mktemp("c"))
    got = compose(submit(message), account(config, "sales"), config, now=NOW)
    assert got.data.endswith(eol + body)
    for line in head:
        dropped = line.lower().startswith((b"bcc", b"x-mailsync", b"sender", b"resent-",
                                           b"return-path", b"dkim-signature"))
        assert (line in got.data) is not dropped

