"""The spool: drop helpers, scan order, the pure parser's rejections, reject/remove."""

from __future__ import annotations

import base64
import email
import json
import os
from datetime import UTC, datetime
from email import policy
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailsync import spool as public
from mailsync.outbound.spool import (
    Attachment,
    drop,
    drop_eml,
    ensure_dirs,
    parse,
    reject,
    remove,
    scan,
    waiting,
)
from mailsync.outbound.types import Rejection, Submission

MAX = 1 << 20


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    ensure_dirs(tmp_path / "spool")
    return tmp_path / "spool"


def as_json(**doc) -> bytes:
    return json.dumps({"user": "alice", "to": ["bob@example.com"], "subject": "Hi"} | doc).encode()


def parsed(name: str, data: bytes) -> Submission:
    result = parse(name, data, max_size=MAX)
    assert isinstance(result, Submission), result
    return result


def rejected(name: str, data: bytes, max_size: int = MAX) -> Rejection:
    result = parse(name, data, max_size=max_size)
    assert isinstance(result, Rejection), result
    return result


EML = (b"X-Mailsync-User: alice\r\n"
       b"X-Mailsync-Account: sales\r\n"
       b"From: Sales <sales@example.com>\r\n"
       b"To: Bob <bob@example.com>, carol@example.com\r\n"
       b"Cc: dave@example.org\r\n"
       b"Bcc: secret@example.net,\r\n"
       b"\tsecret2@example.net\r\n"
       b"Subject: =?utf-8?q?Caf=C3=A9?= order\r\n"
       b"X-Mailsync-Idempotency-Key: order-42\r\n"
       b"\r\n"
       b"Body line 1\r\n"
       b"X-Mailsync-User: not a header, part of the body\r\n"
       b"\r\n"
       b"trailing  spaces  \r\n")


# --------------------------------------------------------------------------- writing


def test_ensure_dirs_creates_the_three_directories(tmp_path):
    ensure_dirs(tmp_path / "s")
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["new", "rejected", "tmp"]


def test_drop_writes_json_into_new_and_parses_back(spool):
    path = drop(spool, user="alice", to=["Bob <bob@example.com>"], subject="Hello",
                text="Hi Bob", account="sales", cc=["carol@example.com"],
                bcc=["dave@example.com"], reply_to="support@example.com",
                headers={"X-Ticket": "42"}, idempotency_key="k-1", durable=True)
    assert path.parent == spool / "new"
    assert path.suffix == ".json"
    assert list((spool / "tmp").iterdir()) == []
    doc = json.loads(path.read_bytes())
    assert doc["user"] == "alice" and doc["bcc"] == ["dave@example.com"]
    sub = parsed(path.name, path.read_bytes())
    assert (sub.user, sub.account, sub.subject, sub.idempotency_key) == (
        "alice", "sales", "Hello", "k-1")
    assert sub.recipients == ("bob@example.com", "carol@example.com", "dave@example.com")
    msg = email.message_from_bytes(sub.message, policy=policy.default)
    assert msg["To"] == "Bob <bob@example.com>"
    assert msg["Reply-To"] == "support@example.com"
    assert msg["X-Ticket"] == "42"
    assert msg["Bcc"] is None
    assert msg.get_content().strip() == "Hi Bob"


def test_drop_names_are_unique_and_sort_oldest_first(spool):
    paths = [drop(spool, user="u", to=["a@example.com"], subject=str(i)) for i in range(20)]
    assert len(set(paths)) == 20
    assert scan(spool) == paths


def test_drop_accepts_a_single_address_string(spool):
    path = drop(spool, user="u", to="a@example.com", subject="s")
    assert parsed(path.name, path.read_bytes()).recipients == ("a@example.com",)


def test_drop_with_path_attachment_guesses_its_type(spool, tmp_path):
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(b"%PDF-1.4 fake")
    path = drop(spool, user="u", to=["a@example.com"], subject="s", text="see attached",
                attachments=[pdf])
    msg = email.message_from_bytes(parsed(path.name, path.read_bytes()).message,
                                   policy=policy.default)
    (part,) = msg.iter_attachments()
    assert part.get_filename() == "report.pdf"
    assert part.get_content_type() == "application/pdf"
    assert part.get_content() == b"%PDF-1.4 fake"


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"subject": "Hi\r\nBcc: x@evil.com"}, "header_injection: subject"),
    ({"headers": {"X-A": "1\nBcc: x@evil.com"}}, "header_injection: headers"),
    ({"to": []}, "no_recipients"),
    ({"to": ["not an address"]}, "bad_recipient"),
])
def test_drop_refuses_bad_arguments_before_writing(spool, kwargs, words):
    args = {"user": "u", "to": ["a@example.com"], "subject": "s"} | kwargs
    with pytest.raises(ValueError, match=words):
        drop(spool, **args)
    assert list((spool / "new").iterdir()) == list((spool / "tmp").iterdir()) == []


def test_drop_eml_and_public_import_path(spool):
    assert public.drop is drop and public.Attachment is Attachment
    path = public.drop_eml(spool, EML)
    assert path.parent == spool / "new" and path.suffix == ".eml"
    assert path.read_bytes() == EML
    assert parsed(path.name, path.read_bytes()).user == "alice"


def test_drop_eml_refuses_a_message_without_user(spool):
    with pytest.raises(ValueError, match="X-Mailsync-User"):
        drop_eml(spool, b"To: a@example.com\r\n\r\nbody\r\n")
    assert list((spool / "new").iterdir()) == []


# --------------------------------------------------------------------------- scan


def test_scan_lists_only_finished_candidates_oldest_first(spool):
    new = spool / "new"
    for name in ("b.eml", "a.json", ".hidden.eml", "c.eml.tmp", "notes.txt", "x.tmp"):
        (new / name).write_bytes(b"x")
    (spool / "tmp" / "pending.json").write_bytes(b"x")
    (new / "dir.eml").mkdir()
    (new / "link.eml").symlink_to(new / "b.eml")
    os.utime(new / "b.eml", ns=(1_000_000_000, 1_000_000_000))
    os.utime(new / "a.json", ns=(2_000_000_000, 2_000_000_000))
    # Listed so that they are rejected (not_a_regular_file), by their own mtime.
    os.utime(new / "link.eml", ns=(3_000_000_000, 3_000_000_000), follow_symlinks=False)
    os.utime(new / "dir.eml", ns=(4_000_000_000, 4_000_000_000))
    assert scan(spool) == [new / "b.eml", new / "a.json", new / "link.eml", new / "dir.eml"]


def test_waiting_answers_as_scan_does(spool):
    new = spool / "new"
    for name in (".hidden.eml", "c.eml.tmp", "notes.txt"):
        (new / name).write_bytes(b"x")
    (spool / "tmp" / "pending.json").write_bytes(b"x")
    assert scan(spool) == [] and not waiting(spool)
    (new / "dir.EML").mkdir()  # listed (to be rejected): so it waits
    assert scan(spool) == [new / "dir.EML"] and waiting(spool)


def test_scan_puts_timestamped_names_in_name_order(spool):
    new = spool / "new"
    late, early = "1700000000000000002.1.aa.json", "1700000000000000001.9.zz.eml"
    for name in (late, early):
        (new / name).write_bytes(b"x")
    os.utime(new / early, ns=(5_000_000_000_000_000_000, 5_000_000_000_000_000_000))
    assert scan(spool) == [new / early, new / late]


# --------------------------------------------------------------------------- parse .json


def test_json_text_html_and_attachment_build_nested_multipart():
    att = {"filename": "a.txt", "content_type": "text/csv",
           "content_base64": base64.b64encode(b"x,y\n1,2\n").decode()}
    sub = parsed("m.json", as_json(text="plain", html="<p>rich</p>", attachments=[att]))
    assert b"\r\n" in sub.message and b"\n" not in sub.message.replace(b"\r\n", b"")
    msg = email.message_from_bytes(sub.message, policy=policy.default)
    assert msg.get_content_type() == "multipart/mixed"
    alt, file_part = msg.get_payload()
    assert alt.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in alt.get_payload()] == ["text/plain", "text/html"]
    assert msg.get_body(("plain",)).get_content().strip() == "plain"
    assert msg.get_body(("html",)).get_content().strip() == "<p>rich</p>"
    assert file_part.get_filename() == "a.txt"
    assert file_part.get_content_type() == "text/csv"
    assert file_part.get_payload(decode=True) == b"x,y\n1,2\n"


def test_json_html_only_and_empty_body():
    html = email.message_from_bytes(parsed("m.json", as_json(html="<b>x</b>")).message)
    assert html.get_content_type() == "text/html"
    empty = email.message_from_bytes(parsed("m.json", as_json()).message)
    assert empty.get_content_type() == "text/plain"
    assert empty["Subject"] == "Hi"


def test_json_text_and_html_on_one_long_line_are_sent_within_smtps_line_limit():
    """A report's HTML on one line of 50,000 characters (what a template engine writes):
    encoded so that no line passes 998 characters (RFC 5322), where an .eml file would
    be sent as written and refused by a strict relay."""
    text, html = "é" + "word " * 10_000, "<table>" + "<td>1</td>" * 5_000 + "</table>"
    sub = parsed("m.json", as_json(text=text, html=html, subject="Q" * 2000))
    assert max(len(line) for line in sub.message.split(b"\r\n")) <= 998
    msg = email.message_from_bytes(sub.message, policy=policy.default)

    def body(kind: str) -> str:  # the canonical CRLF form of text, as sent
        return msg.get_body((kind,)).get_content().replace("\r\n", "\n").rstrip("\n")
    assert body("plain") == text and body("html") == html
    assert msg["Subject"] == "Q" * 2000


def test_json_recipients_are_bare_ordered_and_deduplicated():
    sub = parsed("m.json", as_json(to=["Bob <Bob@Example.com>", "a@example.com, c@example.com"],
                                   cc=["bob@example.com"], bcc=["A@EXAMPLE.COM", "d@example.com"]))
    assert sub.recipients == ("Bob@Example.com", "a@example.com", "c@example.com",
                              "d@example.com")
    msg = email.message_from_bytes(sub.message, policy=policy.default)
    assert msg["Bcc"] is None and b"d@example.com" not in sub.message


def test_json_recipients_may_come_from_bcc_only():
    sub = parsed("m.json", as_json(to=[], bcc=["x@example.com"], cc=None))
    assert sub.recipients == ("x@example.com",)
    assert email.message_from_bytes(sub.message)["To"] is None


def test_oversize_is_checked_first():
    r = rejected("m.json", b"{not json at all" * 10, max_size=50)
    assert r.reason == "oversize" and "160 bytes" in r.detail and "50" in r.detail


def test_size_at_the_limit_is_accepted():
    data = as_json()
    assert isinstance(parse("m.json", data, max_size=len(data)), Submission)


@pytest.mark.parametrize(("data", "words"), [
    (b"{\"user\": ", "not valid JSON"),
    (b"\xff\xfe\x00garbage", "not valid JSON"),
    (b"[1, 2]", "must be an object, not list"),
    (b"[" * 100_000, "not valid JSON"),
])
def test_json_unparseable(data, words):
    r = rejected("m.json", data)
    assert r.reason == "unparseable" and words in r.detail


@pytest.mark.parametrize("missing", ["user", "to", "subject"])
def test_json_missing_required_field(missing):
    doc = json.loads(as_json())
    del doc[missing]
    r = rejected("m.json", json.dumps(doc).encode())
    assert r.reason == "unparseable" and repr(missing) in r.detail


@pytest.mark.parametrize(("doc", "words"), [
    ({"to": "bob@example.com"}, "'to' must be a list, not str"),
    ({"user": 7}, "'user' must be a string, not int"),
    ({"user": ""}, "'user' is empty"),
    ({"cc": [1]}, "cc[0] must be a string"),
    ({"headers": ["X-A"]}, "'headers' must be an object"),
    ({"headers": {"X-A": 1}}, "must be a string"),
    ({"attachements": []}, "unknown field 'attachements'"),
    ({"attachments": [{"filename": "a"}]}, "attachments[0] must be an object with exactly"),
    ({"attachments": [{"filename": "a", "content_type": "text/plain",
                       "content_base64": "@@not base64@@"}]}, "not base64"),
    ({"attachments": [{"filename": "a", "content_type": "nonsense",
                       "content_base64": ""}]}, "'nonsense' is not a type/subtype"),
    ({"headers": {"Bcc": "x@example.com"}}, "'Bcc' cannot be set"),
    ({"headers": {"X-Mailsync-User": "root"}}, "cannot be set"),
    ({"headers": {"Bad Name": "v"}}, "not a valid field name"),
    ({"subject": "\ud800"}, "unpaired surrogate"),
])
def test_json_ill_typed_fields_are_unparseable(doc, words):
    r = rejected("m.json", as_json(**doc))
    assert r.reason == "unparseable"
    assert words in r.detail


@pytest.mark.parametrize(("doc", "where"), [
    ({"subject": "Hi\r\nBcc: victim@example.com"}, "subject"),
    ({"subject": "Hi\nthere"}, "subject"),
    ({"headers": {"X-Ticket": "1\r\nBcc: victim@example.com"}}, "headers['X-Ticket']"),
    ({"headers": {"X-A\r\nBcc": "v"}}, "header name"),
    ({"reply_to": "a@example.com\r\nX: y"}, "reply_to"),
    ({"user": "alice\n"}, "user"),
    ({"account": "sales\r"}, "account"),
    ({"to": ["bob@example.com\r\nBcc: x@example.com"]}, "to[0]"),
    ({"attachments": [{"filename": "a\r\n.txt", "content_type": "text/plain",
                       "content_base64": ""}]}, "attachments[0].filename"),
    ({"subject": "nul\x00byte"}, "subject"),
])
def test_json_header_injection(doc, where):
    r = rejected("m.json", as_json(**doc))
    assert r.reason == "header_injection"
    assert r.detail.startswith(where)


def test_json_no_recipients():
    r = rejected("m.json", as_json(to=[], cc=[], bcc=[]))
    assert r.reason == "no_recipients" and "'to', 'cc' or 'bcc'" in r.detail


@pytest.mark.parametrize(("field", "value"), [
    ("to", ["bob"]), ("to", ["bob@localhost"]), ("cc", ["a@b@example.com"]),
    ("bcc", ["jörg@example.com"]), ("to", ["Bob <bob@exa mple.com>"]), ("to", [""]),
    ("to", ["Bob <>"]), ("to", ["x@example..com"]),
])
def test_json_bad_recipient(field, value):
    r = rejected("m.json", as_json(**{field: value}))
    assert r.reason == "bad_recipient" and r.detail.startswith(f"{field}[0]")


@pytest.mark.parametrize("reply_to", ["nobody", ""])
def test_json_bad_reply_to_is_refused(reply_to):
    r = rejected("m.json", as_json(reply_to=reply_to))
    assert r.reason == "bad_recipient" and r.detail.startswith("reply_to")


def test_other_suffix_is_unparseable():
    assert rejected("m.txt", b"hello").reason == "unparseable"


# --------------------------------------------------------------------------- parse .eml


def test_eml_keeps_body_and_other_headers_byte_for_byte():
    sub = parsed("m.eml", EML)
    assert (sub.user, sub.account, sub.idempotency_key) == ("alice", "sales", "order-42")
    assert sub.subject == "Café order"
    assert sub.recipients == ("bob@example.com", "carol@example.com", "dave@example.org",
                              "secret@example.net", "secret2@example.net")
    assert sub.message == (b"From: Sales <sales@example.com>\r\n"
                           b"To: Bob <bob@example.com>, carol@example.com\r\n"
                           b"Cc: dave@example.org\r\n"
                           b"Subject: =?utf-8?q?Caf=C3=A9?= order\r\n"
                           b"\r\n" + EML.split(b"\r\n\r\n", 1)[1])


def test_eml_with_lf_line_ends_and_folded_mailsync_headers():
    data = (b"To: a@example.com\n"
            b"X-Mailsync-User:\n alice\n"
            b"bcc: hidden@example.com,\n  other@example.com\n"
            b"Subject: long\n  subject\n"
            b"\n"
            b"body\n\n\nend")
    sub = parsed("m.eml", data)
    assert sub.user == "alice"
    assert sub.subject == "long  subject"
    assert sub.recipients == ("a@example.com", "hidden@example.com", "other@example.com")
    assert sub.message == b"To: a@example.com\nSubject: long\n  subject\n\nbody\n\n\nend"


def test_eml_headers_only_and_group_syntax():
    data = (b"X-Mailsync-User: bob\r\nTo: undisclosed-recipients:;\r\n"
            b"Bcc: x@example.com\r\n")
    sub = parsed("m.EML", data)
    assert sub.recipients == ("x@example.com",)
    assert sub.message == b"To: undisclosed-recipients:;\r\n"
    assert sub.subject == "" and sub.account is None


def test_eml_without_mailsync_user():
    r = rejected("m.eml", b"To: a@example.com\r\nSubject: x\r\n\r\nbody")
    assert r.reason == "unparseable" and "X-Mailsync-User" in r.detail


def test_eml_with_two_different_users():
    r = rejected("m.eml", b"X-Mailsync-User: a\r\nX-Mailsync-User: b\r\n"
                          b"To: a@example.com\r\n\r\n")
    assert r.reason == "unparseable" and "2 different x-mailsync-user" in r.detail


@pytest.mark.parametrize(("data", "words"), [
    (b"", "no header block"),
    (b"\r\nbody only", "no header block"),
    (b"just some text\r\n\r\nbody", "line 1 is not a header"),
    (b"X-Mailsync-User: a\r\nTo: a@example.com\r\nSubject: \xff\xfe\r\n\r\n", "not UTF-8"),
])
def test_eml_unparseable(data, words):
    r = rejected("m.eml", data)
    assert r.reason == "unparseable" and words in r.detail


@pytest.mark.parametrize("data", [
    b"X-Mailsync-User: a\r\nTo: a@example.com\r\nSubject: x\rBcc: y@example.com\r\n\r\n",
    b"X-Mailsync-User: a\r\nTo: a@example.com\r\nnot a header line\r\n\r\nbody",
    b"X-Mailsync-User: a\r\nTo: a@example.com\r\nSubject: a\x00b\r\n\r\nbody",
])
def test_eml_header_injection(data):
    assert rejected("m.eml", data).reason == "header_injection"


@pytest.mark.parametrize(("data", "words"), [
    # The whole header block is checked at once; a refusal still names the first bad line.
    (b"X-Mailsync-User: a\r\nTo: a@example.com\r\nSubject: x\r\r\n\r\n",
     "header line 3 has a bare CR"),
    (b"X-Mailsync-User: a\nTo: a@example.com\nSubject: x\r", "header line 3 has a bare CR"),
    (b"X-Mailsync-User: a\r\nSubject: caf\xc3\xa9\r\nTo: \xe9@x.org\r\n\r\n",
     "header line 3 is not UTF-8"),
])
def test_eml_refusal_names_the_line(data, words):
    assert words in rejected("m.eml", data).detail


def test_eml_subject_decoded_only_when_encoded():
    head = b"X-Mailsync-User: a\r\nTo: a@example.com\r\n"
    plain = parsed("m.eml", head + b"Subject:  Caf\xc3\xa9 =? order\r\n\r\n")
    assert plain.subject == "Caf\xe9 =? order"
    assert parsed("m.eml", head + b"Subject: =?utf-8?q?Caf=C3=A9?=\r\n\r\n").subject == "Caf\xe9"


def test_eml_no_recipients():
    r = rejected("m.eml", b"X-Mailsync-User: a\r\nSubject: x\r\n\r\nbody")
    assert r.reason == "no_recipients"


def test_eml_bad_recipient():
    r = rejected("m.eml", b"X-Mailsync-User: a\r\nTo: a@example.com\r\nCc: oops\r\n\r\n")
    assert r.reason == "bad_recipient" and "'oops'" in r.detail and r.detail.startswith("Cc")


def test_eml_broken_encoded_subject_falls_back_to_raw():
    sub = parsed("m.eml", b"X-Mailsync-User: a\r\nTo: a@example.com\r\n"
                          b"Subject: =?nosuchcharset?q?x?=\r\n\r\n")
    assert sub.subject == "=?nosuchcharset?q?x?="


# --------------------------------------------------------------------------- reject, remove


def test_reject_moves_the_file_and_writes_the_reason(spool):
    path = spool / "new" / "m.json"
    path.write_bytes(b"{oops")
    rejection = parse(path.name, path.read_bytes(), max_size=MAX)
    assert isinstance(rejection, Rejection)
    when = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    moved = reject(spool, path, rejection, now=when)
    assert moved == spool / "rejected" / "m.json"
    assert not path.exists() and moved.read_bytes() == b"{oops"
    reason_line, time_line = (spool / "rejected" / "m.json.error").read_text().splitlines()
    assert reason_line == f"unparseable: {rejection.detail}"
    assert time_line == "rejected_at: 2024-05-01T12:00:00+00:00"


def test_reject_does_not_overwrite_an_earlier_rejection(spool):
    first, second = spool / "new" / "m.eml", spool / "new" / "m.eml"
    first.write_bytes(b"one")
    reject(spool, first, Rejection("oversize", "too big"))
    second.write_bytes(b"two")
    moved = reject(spool, second, Rejection("unparseable", "multi\nline detail"))
    assert moved.name == "m.1.eml" and moved.read_bytes() == b"two"
    assert (spool / "rejected" / "m.eml").read_bytes() == b"one"
    assert (spool / "rejected" / "m.1.eml.error").read_text().startswith(
        "unparseable: multi line detail\n")


def test_remove_deletes_and_tolerates_missing(spool):
    path = spool / "new" / "m.eml"
    path.write_bytes(b"x")
    remove(path)
    remove(path)
    assert not path.exists()


# --------------------------------------------------------------------------- properties


@settings(max_examples=300)
@given(data=st.binary(max_size=400), suffix=st.sampled_from([".eml", ".json", ".txt"]))
def test_parse_never_raises_on_arbitrary_bytes(data, suffix):
    assert isinstance(parse("f" + suffix, data, max_size=300), Submission | Rejection)


_text = st.text(max_size=40)
_addr = st.one_of(_text, st.emails().map(str), st.from_regex(r"[a-z]{1,8}@[a-z]{1,8}\.com",
                                                            fullmatch=True))


@settings(max_examples=300)
@given(doc=st.fixed_dictionaries(
    {"user": _text, "to": st.lists(_addr, max_size=3), "subject": _text},
    optional={"cc": st.lists(_addr, max_size=2), "text": _text, "html": _text,
              "reply_to": _addr, "account": _text, "idempotency_key": _text,
              "headers": st.dictionaries(_text, _text, max_size=3),
              "attachments": st.lists(st.fixed_dictionaries({
                  "filename": _text,
                  "content_type": st.sampled_from(["text/plain", "image/png", "x/y"]),
                  "content_base64": st.binary(max_size=30).map(
                      lambda b: base64.b64encode(b).decode())}), max_size=2)}))
def test_parse_never_raises_on_structured_json(doc):
    result = parse("f.json", json.dumps(doc).encode(), max_size=MAX)
    assert isinstance(result, Submission | Rejection)
    if isinstance(result, Submission):
        assert result.recipients and b"Bcc:" not in result.message


@settings(max_examples=300)
@given(lines=st.lists(st.binary(max_size=40), max_size=6), body=st.binary(max_size=40),
       newline=st.sampled_from([b"\r\n", b"\n"]))
def test_eml_body_is_always_kept_verbatim(lines, body, newline):
    head = newline.join([b"X-Mailsync-User: u", b"To: a@example.com", *lines])
    result = parse("f.eml", head + newline + newline + body, max_size=MAX)
    assert isinstance(result, Submission | Rejection)
    if isinstance(result, Submission):
        assert result.message.endswith(newline + body)
        assert b"X-Mailsync-" not in result.message.split(newline + newline, 1)[0]
