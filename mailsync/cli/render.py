"""Plain-text tables and time formatting for the listing commands.

Cells hold what strangers wrote (Subjects, senders, servers' replies): each is made one
line of printable text (:func:`one_line`) before the column widths are measured, so an
escape sequence is shown, not run, and the columns stay aligned.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import click

from mailsync.config.units import parse_when
from mailsync.printable import one_line

WIDTH = 100  # what a listing fits in unless --wide
CELL_LIMIT = 48


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str], *,
          width: int | None = WIDTH, shrink: Sequence[str] | None = None) -> str:
    """Left-aligned columns with a header, at most ``width`` characters a line.

    Long cells are cut with an ellipsis: each at 48 characters, then the widest of the
    ``shrink`` columns (default: every column) one character at a time until the line
    fits (not below the header's width). ``width=None`` (``--wide``) cuts nothing.
    """
    cells = [[one_line(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    if width is not None:
        widths = fit([min(w, max(CELL_LIMIT, len(c))) for w, c in zip(widths, columns,
                                                                       strict=True)],
                     [len(c) if shrink is None or c in shrink else 10**6 for c in columns],
                     width - 2 * (len(columns) - 1))
        cells = [[_cut(v, w) for v, w in zip(row, widths, strict=True)] for row in cells]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    for row in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def fit(widths: list[int], minimums: list[int], total: int) -> list[int]:
    """Column widths summing to at most ``total``: the widest column that may still
    narrow (above its minimum) loses one character at a time. As close as the minimums
    allow when they do not fit."""
    widths = list(widths)
    while sum(widths) > total:
        candidates = [i for i, (w, m) in enumerate(zip(widths, minimums, strict=True)) if w > m]
        if not candidates:
            break
        widest = max(candidates, key=lambda i: widths[i])
        widths[widest] -= 1
    return widths


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def say_cut(shown: int, total: int, fmt: str) -> None:
    """End a listing the --limit cut with ``showing N of M (--limit)``: a listing is never
    cut silently. Not for JSON (a document of its rows); for CSV on stderr (the file is the
    rows alone)."""
    if fmt != "json" and total > shown:
        click.echo(f"showing {shown:,} of {total:,} (--limit)", err=fmt == "csv")


def time_window(since: str | None, until: str | None) -> tuple[float | None, float | None]:
    """``--since`` and ``--until`` as epoch seconds (None: not given); a value that is no
    time, or a window that ends before it starts, is a usage error."""
    now = time.time()
    times: list[float | None] = []
    for value, hint in ((since, "--since"), (until, "--until")):
        try:
            times.append(parse_when(value, now) if value else None)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint=hint) from None
    start, end = times
    if start is not None and end is not None and end <= start:
        raise click.BadParameter(f"{until!r} is not after --since {since!r}",
                                 param_hint="--until")
    return start, end


def age(seconds: float) -> str:
    return str(timedelta(seconds=int(seconds)))
