"""Text made safe for a terminal or a log line: every non-printable character escaped.

Mail and servers are written by strangers. A Subject holding ``ESC ] 0 ; ... BEL`` sets an
admin's terminal title, ``ESC [ 2 J`` clears the screen, a carriage return overwrites
what was printed before it on the line, a line feed in a server's reply starts a forged
log line, and the Unicode bidi controls reorder what is shown ("Trojan Source"). So
everything that came from the network or the store goes through :func:`printable` before
it reaches a terminal or the text log; JSON output needs nothing more (``json.dumps``
writes ASCII only, so every control and non-ASCII character is a ``\\uXXXX`` escape).

What is escaped, and how (one form per meaning, so the output reads back unambiguously):

- ``\\t``, ``\\n``, ``\\r`` for tab, line feed and carriage return (tab and line feed
  are kept as they are when the caller allows several lines, e.g. a message's body);
- ``\\xNN`` for the other C0 controls and DEL (U+0000-U+001F, U+007F), and, in raw
  bytes only, for a byte that is not UTF-8 (0x80-0xFF);
- ``\\uNNNN`` for the C1 controls (U+0080-U+009F), the bidi controls (U+061C,
  U+200E, U+200F, U+202A-U+202E, U+2066-U+2069), the line and paragraph separators
  (U+2028, U+2029) and lone surrogates;
- a backslash is doubled where it would otherwise read as the start of one of these
  escapes (before another backslash, before ``x``, ``u``, ``n``, ``r``, ``t`` or before
  an escaped character), and left as it is elsewhere: ``C:\\Program Files`` stays
  readable, while a Subject that spells ``\\x1b`` shows as ``\\\\x1b``, not as an escape.

Everything else is left alone: accents, CJK, emoji (with their zero-width joiners and
variation selectors), and all printable ASCII. One regular-expression substitution per
call, so long bodies cost little.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

# Characters never written as they are (tab and line feed are decided per call).
_CONTROLS = ("\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069"
             "\ud800-\udfff")
_LETTERS = "\\\\xunrt"  # what may follow the backslash of an escape, and a backslash itself
_ONE_LINE = f"[\t\n{_CONTROLS}]|\\\\(?=[{_LETTERS}\t\n{_CONTROLS}])"
_LINES = f"[{_CONTROLS}]|\\\\(?=[{_LETTERS}{_CONTROLS}])"
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r", "\\": "\\\\"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    if code < 0x80:
        return f"\\x{code:02x}"
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (decoded with surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}"


def printable(text: str, *, multiline: bool = False) -> str:
    """``text`` with every non-printable character escaped (see the module docstring).

    With ``multiline``, line feeds and tabs stay as they are (a message body shown as
    text); otherwise they are escaped too, so the result is exactly one line.
    """
    if "\\" not in text and text.isprintable():
        # Nothing to escape: every character of _CONTROLS (and tab, line feed) is one
        # str.isprintable() refuses. Most text is like this; its patterns are compiled
        # (~0.6 ms of a command's start) only for text that needs them.
        return text
    return _pattern(_LINES if multiline else _ONE_LINE).sub(_escape, text)


@functools.cache
def _pattern(source: str) -> re.Pattern[str]:
    return re.compile(source)


def printable_raw(raw: bytes) -> str:
    """Raw message bytes as lines of text for a terminal: CRLF (or LF) ends a line, bytes
    that are not UTF-8 show as ``\\xNN``, every other control character is escaped."""
    text = raw.decode("utf-8", "surrogateescape").replace("\r\n", "\n")
    return printable(text, multiline=True)


def one_line(value: Any) -> str:
    """A value as one line for a terminal: None is empty, a line break (CRLF or LF)
    becomes a space, every other non-printable character is escaped (``\\x1b``, ``\\r``)."""
    text = "" if value is None else str(value)
    return printable(text.replace("\r\n", " ").replace("\n", " "))


# What a spreadsheet would run as a formula at the start of a cell (CSV injection): such
# a cell of text gets a leading ' (what servers and senders wrote, a hostile Subject,
# goes into CSV files that people open). Tabs and CRs are escaped before (one_line).
_FORMULA = ("=", "+", "-", "@")


def csv_text(rows: Sequence[dict[str, Any]], header: Sequence[str], *,
             with_header: bool = True) -> str:
    """``rows`` as CSV (RFC 4180: the ``header`` line, even for no rows, then a line a
    row of the ``header``'s keys; CRLF, quoted where needed; ``with_header=False``: the
    rows' lines alone, a file's next part), for a spreadsheet or a script: None is empty, a
    mapping is ``key=value`` pairs (``sent=1; failed=1``), text is one line with its
    control characters escaped as in the tables (it may be printed to a terminal), and
    text that starts like a formula gets a leading '."""
    # Here: only a CSV listing needs them (this module is on every command's path).
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out)
    if with_header:
        writer.writerow(header)
    for row in rows:
        writer.writerow([_cell(row.get(key)) for key in header])
    return out.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        value = "; ".join(f"{k}={v}" for k, v in value.items())
    if not isinstance(value, str):
        return str(value)
    text = one_line(value)
    return "'" + text if text.startswith(_FORMULA) else text
