"""SQL text shared by the parts' queries: a listing's ``WHERE`` from its filters.

The listings (`mailsync history`, `mailsync inbox`, `mailsync activities`) each filter
on a few optional columns; :func:`where` makes the clause and its arguments from the
filters that are set, so that no query builds it by hand. Placeholders are SQLite's
``?``, as in the parts' queries.
"""

from __future__ import annotations

from typing import Any


def where(*conditions: tuple[str, Any]) -> tuple[str, list[Any]]:
    """``WHERE a AND b ...`` of the conditions that are set, and their arguments in order.

    A condition is ``(sql, value)``: ``("m.account =", "ops")`` is ``m.account = ?``;
    ``("state IN", ("open", "done"))`` is ``state IN (?,?)``. One whose value is None,
    or an empty tuple or list, is left out; the clause is ``""`` when none is left.
    """
    parts: list[str] = []
    args: list[Any] = []
    for sql, value in conditions:
        if value is None:
            continue
        if isinstance(value, tuple | list):
            if not value:
                continue
            parts.append(f"{sql} ({','.join('?' * len(value))})")
            args.extend(value)
        else:
            parts.append(f"{sql} ?")
            args.append(value)
    return (f"WHERE {' AND '.join(parts)}" if parts else ""), args
