"""Logging set-up: one line per event, as text or JSON (daemon.log_format).

A record's text often holds what a stranger wrote: a server's reply, a Subject, an error
from a library. In the text format every non-printable character of the message is
escaped (:func:`mailsync.printable.printable`, CR and LF included), so one record is one
line and nothing written to the log can move the cursor, recolour the terminal or
start a line that looks like another record. A traceback keeps its own lines, each
escaped and indented by two spaces: only the first line of a record starts at column 0,
even when an exception's message holds a line break. The JSON format needs no more than
``json.dumps`` (ASCII only: a control character becomes ``\\u001b``, a line feed ``\\n``).
The handler sits on the ``mailsync`` logger, so this covers every record of mailsync's
own modules (``mailsync.*``).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from mailsync.printable import printable

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the exception)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


class TextFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER: message`` with the message escaped to one line; an exception's
    traceback follows on its own lines, each escaped and indented."""

    def __init__(self, fmt: str = TEXT_FORMAT) -> None:
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        record.message = printable(record.getMessage())
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        parts = [self.formatMessage(record)]
        # Not record.exc_text: another handler may have cached it unescaped.
        if record.exc_info:
            parts.append(self.formatException(record.exc_info))
        elif record.exc_text:
            parts.append(_lines(record.exc_text))
        if record.stack_info:
            parts.append(_lines(self.formatStack(record.stack_info)))
        return "\n".join(parts)

    def formatException(self, ei: logging._SysExcInfoType) -> str:  # noqa: N802 (logging's name)
        return _lines(super().formatException(ei))


def _lines(text: str) -> str:
    """Each line of ``text`` escaped on its own and indented (the line breaks stay)."""
    return "\n".join("  " + printable(line) for line in text.rstrip("\n").split("\n"))


class _StderrNow(logging.StreamHandler):  # type: ignore[type-arg]
    """A handler writing to whatever ``sys.stderr`` is when a record comes (as logging's
    own ``lastResort``), not to the stream there was when it was made."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.setLevel(level)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass  # StreamHandler.__init__ sets it: always sys.stderr


def setup(fmt: str = "text", level: int = logging.INFO) -> None:
    """Send mailsync's log to stderr in ``fmt`` (text or json); so too the warnings of
    the libraries it uses (watchdog, psycopg, ...) when nothing else handles them."""
    formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger("mailsync")
    root.handlers[:] = [handler]
    root.setLevel(level)
    # A library's WARNING or worse that reaches no handler goes to logging's lastResort,
    # which writes the bare message: a line without time or level, and not JSON in a
    # log_format: json stream. Ours formats it as every other line. (A program with
    # handlers of its own, or pytest's, never reaches lastResort.)
    last_resort = _StderrNow(logging.WARNING)
    last_resort.setFormatter(formatter)
    logging.lastResort = last_resort
    # Records still propagate: the root logger has no handler in the CLI (no double
    # lines), and an embedding program or pytest's caplog sees them too.
