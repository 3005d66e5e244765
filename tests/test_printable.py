"""Escaping for terminals and logs: the pure function, the log formatters, the tables."""

from __future__ import annotations

import io
import json
import logging
import re
import time

import pytest

from mailsync.cli.render import table
from mailsync.printable import printable, printable_raw
from mailsync.telemetry import logs

ESC = "\x1b"


@pytest.mark.parametrize(("text", "shown"), [
    ("Invoice \x1b]0;pwned\x07 paid", "Invoice \\x1b]0;pwned\\x07 paid"),  # OSC: window title
    ("\x1b[2J\x1b[31mred", "\\x1b[2J\\x1b[31mred"),  # clear screen, colour
    ("\x1b]8;;http://evil.example/\x1b\\click\x1b]8;;\x1b\\",  # OSC 8 hyperlink
     "\\x1b]8;;http://evil.example/\\x1b\\click\\x1b]8;;\\x1b\\"),
    ("Total: 100\rTotal: 999", "Total: 100\\rTotal: 999"),  # overwriting the line
    ("abc\x08\x08\x08xyz", "abc\\x08\\x08\\x08xyz"),  # backspaces
    ("a\nb\tc\x00\x7f", "a\\nb\\tc\\x00\\x7f"),
    ("\x85\x9b31m", "\\u0085\\u009b31m"),  # C1 controls (CSI as one character)
    ("user\u202egnp.exe", "user\\u202egnp.exe"),  # Trojan Source: right-to-left override
    ("\u202a\u202b\u202c\u202d\u2066\u2067\u2068\u2069\u200e\u200f\u061c",
     "\\u202a\\u202b\\u202c\\u202d\\u2066\\u2067\\u2068\\u2069\\u200e\\u200f\\u061c"),
    ("one\u2028two\u2029three", "one\\u2028two\\u2029three"),  # line/paragraph separators
    ("\udcff", "\\xff"),  # a byte that was not UTF-8 (surrogateescape)
    ("\ud800", "\\ud800"),  # any other lone surrogate
])
def test_non_printable_characters_are_shown_escaped(text, shown):
    assert printable(text) == shown


@pytest.mark.parametrize("text", [
    "Café à Zürich", "日本語のメール", "Привет", "مرحبا", "👨‍👩‍👧 👍🏽 🇫🇷", "e\u0301",
    "plain ASCII: <a@b.example> 100% (ok) ~!@#$^&*", "", "ZWJ\u200d and ZWNJ\u200c",
])
def test_ordinary_text_is_left_alone(text):
    assert printable(text) == text and printable(text, multiline=True) == text


def test_a_backslash_is_doubled_only_where_it_would_read_as_an_escape():
    assert printable(r"C:\Program Files\new") == r"C:\Program Files\\new"
    assert printable(r"spelt \x1b") == r"spelt \\x1b"  # not the same as a real ESC ...
    assert printable("real \x1b") == r"real \x1b"  # ... which shows with one backslash
    assert printable("\\" + ESC) == r"\\\x1b"
    assert printable("a\\\\b") == r"a\\\b"
    assert printable("ends with \\") == "ends with \\"


def test_multiline_keeps_line_feeds_and_tabs_only():
    text = "line one\n\tindented \x1b[1mbold\r\nlast\x0c"
    assert printable(text, multiline=True) == "line one\n\tindented \\x1b[1mbold\\r\nlast\\x0c"
    assert "\n" not in printable(text)


def test_printable_raw_keeps_line_ends_and_shows_bytes_that_are_not_utf8():
    raw = b"Subject: \xff\x1b[2J\r\nX: caf\xc3\xa9\xc2\x85\r\n\r\nbody\rover\n"
    assert printable_raw(raw) == "Subject: \\xff\\x1b[2J\nX: café\\u0085\n\nbody\\rover\n"


def test_a_long_body_is_escaped_quickly():
    body = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit. \x1b[0m\n" * 100_000)
    start = time.perf_counter()
    out = printable(body, multiline=True)
    assert time.perf_counter() - start < 1.0  # ~6 MB; a regex substitution, not a loop
    assert ESC not in out and out.count("\n") == 100_000


def test_table_widths_are_measured_on_the_escaped_text():
    rows = [{"id": 1, "subject": "\x1b[2J\x1b[31mpaid\rPAID"}, {"id": 2, "subject": "ok"}]
    lines = table(rows, ("id", "subject")).splitlines()
    assert lines == ["ID  SUBJECT",
                     "1   \\x1b[2J\\x1b[31mpaid\\rPAID",
                     "2   ok"]
    assert table([{"s": "a\nb\r\nc"}], ("s",)).splitlines()[1] == "a b c"


def _record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    logger = logging.getLogger("mailsync.test")
    record = logger.makeRecord("mailsync.test", logging.WARNING, __file__, 1, message, args,
                               None)
    if exc:
        try:
            raise ValueError("server said: \x1b]0;pwned\x07\n2026-01-01 00:00:00,000 INFO "
                             "mailsync.daemon: forged")
        except ValueError:
            import sys

            record.exc_info = sys.exc_info()
    return record


FORGED = ("550 \x1b[2Jno\r\n2026-01-01 00:00:00,000 INFO mailsync.outbound.deliver: "
          "message 7 sent")
RECORD_START = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ mailsync\b")


def test_the_text_log_escapes_a_record_to_one_line():
    out = logs.TextFormatter().format(_record("message %d failed: %s", 7, FORGED))
    assert "\n" not in out and "\r" not in out and ESC not in out
    assert out.endswith("message 7 failed: 550 \\x1b[2Jno\\r\\n2026-01-01 00:00:00,000 INFO "
                        "mailsync.outbound.deliver: message 7 sent")


def test_a_traceback_keeps_its_lines_escaped_and_indented():
    out = logs.TextFormatter().format(_record("it failed", exc=True))
    lines = out.split("\n")
    assert RECORD_START.match(lines[0]) and lines[0].endswith("it failed")
    assert lines[1] == "  Traceback (most recent call last):"
    assert "  ValueError: server said: \\x1b]0;pwned\\x07" in lines
    assert ESC not in out
    # Only the first line of the record starts at column 0: no forged record.
    assert all(line.startswith("  ") for line in lines[1:])


def test_the_json_log_escapes_through_json_dumps():
    record = _record("message %d failed: %s", 7, FORGED + " \u202e")
    out = logs.JsonFormatter().format(record)
    assert "\n" not in out and "\r" not in out and ESC not in out
    assert "\\u001b[2J" in out and "\\r\\n" in out and "\\u202e" in out
    assert json.loads(out)["message"] == "message 7 failed: " + FORGED + " \u202e"


def test_setup_escapes_records_of_every_mailsync_logger(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    saved = logging.getLogger("mailsync").handlers[:]
    try:
        logs.setup("text")
        logging.getLogger("mailsync.inbound.imap").warning("%s", "a\x1b[2J\r\nb")
        logging.getLogger("mailsync").warning("top \x07")
    finally:
        logging.getLogger("mailsync").handlers[:] = saved
    lines = stream.getvalue().splitlines()
    assert [line.split(": ", 1)[1] for line in lines] == ["a\\x1b[2J\\r\\nb", "top \\x07"]
    assert all(RECORD_START.match(line) for line in lines)


def test_text_with_nothing_to_escape_comes_back_as_it_is_without_the_patterns():
    """The fast path (no backslash, str.isprintable) is only taken where the patterns
    would change nothing: every character they escape is one isprintable refuses."""
    from mailsync import printable as module

    one = re.compile(module._ONE_LINE)
    escaped = [chr(c) for c in range(0x110000) if one.fullmatch(chr(c))]
    assert escaped and all(not ch.isprintable() for ch in escaped)
    for text in ("plain ASCII, 42%", "Résumé — 日本語 ✓", "", "tab\there", "a\\nb",
                 "bidi \u202e", "nl\nx", "\x7f", "surrogate \udc80"):
        for multiline in (False, True):
            pattern = re.compile(module._LINES if multiline else module._ONE_LINE)
            assert printable(text, multiline=multiline) == pattern.sub(module._escape, text)
