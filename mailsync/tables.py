"""Plain-text tables and time formatting for the listing commands.

Cells hold what strangers wrote (Subjects, senders, servers' replies): each is made one
line of printable text (:func:`one_line`) before the column widths are measured, so an
escape sequence is shown, not run, and the columns stay aligned.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from mailsync.config.units import parse_duration
from mailsync.printable import printable


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Left-aligned columns with a header; long cells are cut with an ellipsis."""
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    for row in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _cell(value: Any, limit: int = 48) -> str:
    text = one_line(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def one_line(value: Any) -> str:
    """A value as one line for a terminal: None is empty, a line break (CRLF or LF)
    becomes a space, every other non-printable character is escaped (``\\x1b``, ``\\r``)."""
    text = "" if value is None else str(value)
    return printable(text.replace("\r\n", " ").replace("\n", " "))


def iso(epoch: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC (seconds precision)."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def parse_since(text: str, now: float) -> float:
    """``1h``/``2d`` ago, or an ISO date/datetime (UTC unless it says otherwise)."""
    if re.fullmatch(r"[0-9]+[smhd]", text):
        return now - parse_duration(text).total_seconds()
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: use a duration ago (30m, 2h, 7d) or an ISO date "
            "(2026-11-25 or 2026-11-25T08:00)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def age(seconds: float) -> str:
    return str(timedelta(seconds=int(seconds)))
