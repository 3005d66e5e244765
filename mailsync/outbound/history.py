"""Read side of the send history: listings and one message's full record.

What the admin's "History, error reports" screen showed: each message's status, every
attempt, each recipient's reply, the error, and the content.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from mailsync.config.units import iso, short_time
from mailsync.outbound.queue import OutboundStore
from mailsync.outbound.tables import RECIPIENT_DOMAIN
from mailsync.printable import one_line, printable
from mailsync.store import in_chunks, where
from mailsync.store.sql import and_where, contains, id_window
from mailsync.values import valueclass

LIST_COLUMNS = ("id", "status", "created_at", "account", "user", "server", "to", "subject",
                "attempts", "error")
# What fits 100 columns (`--wide`: LIST_COLUMNS, nothing cut); the shrink columns give.
NARROW_COLUMNS = ("id", "status", "created_at", "account", "to", "subject", "error")
SHRINK = ("account", "to", "subject", "error")
# Recipient outcomes that a message's own status can hide: `sent (1 bounced)`.
PROBLEMS = ("bounced", "failed")


@valueclass
class Filters:
    """Listing filters; None means any. ``search`` matches a recipient's address (the
    whole address, any case), a Message-ID (with or without its ``<>``) or a part of the
    subject (any case); ``before`` is the keyset of the next page: ids below it (of an
    oldest-first listing, ``after``: ids above it); ``since`` and ``until`` (epoch
    seconds) keep the messages created at or after the one and before the other."""

    status: tuple[str, ...] = ()
    account: str | None = None
    user: str | None = None
    since: float | None = None
    limit: int = 100
    server: str | None = None
    search: str | None = None
    before: int | None = None
    until: float | None = None
    after: int | None = None


def _where(f: Filters) -> tuple[str, list[Any]]:
    clause, args = where(("m.status IN", f.status), ("m.account =", f.account or None),
                         ("m.user =", f.user or None), ("m.created_at >=", f.since),
                         ("m.server =", f.server or None), ("m.id <", f.before),
                         ("m.created_at <", f.until), ("m.id >", f.after))
    # The same rows, as a range of ids that the messages_created index finds: a page
    # then stops at the window's oldest message instead of reading the history to its
    # start (store.sql.id_window).
    extra, window_args = id_window("messages", "created_at", "m", f.since, f.until)
    args.extend(window_args)
    if f.search:
        extra.append(_search(f.search.strip(), args))
    return and_where(clause, extra), args


def _search(term: str, args: list[Any]) -> str:
    """The condition of a search (its arguments appended to ``args``), each through an
    index (migrations 10 and 17): ``@domain`` is every recipient at that domain, in any
    case; an address (another term with ``@``) is a recipient's, in any case, or a
    Message-ID, with or without its ``<>``; any other text is a part of the subject,
    ASCII letters in any case (``%`` and ``_`` are characters, not wildcards)."""
    if term.startswith("@") and "@" not in term[1:]:
        args.append(term[1:].lower())
        return f"m.id IN (SELECT message FROM recipients WHERE {RECIPIENT_DOMAIN} = ?)"
    if "@" in term:
        args.extend((term, f"<{term.strip('<>')}>", term.lower()))
        return ("(m.message_id IN (?, ?) OR m.id IN (SELECT message FROM recipients"
                " WHERE lower(address) = ?))")
    args.append(contains(term))
    # The subjects alone (their index), not the whole rows, are read for the match; SQLite's
    # LIKE ignores the case of ASCII letters by itself (lower() here would cost 3 times
    # as much: 40 ms instead of 15 on 200,000 messages).
    return "m.id IN (SELECT id FROM messages WHERE subject LIKE ? ESCAPE '\\')"


# What a listing reads of each message (the columns _summary turns into an object): the
# History page and `mailsync history` (list_messages), the Queue page (list_waiting).
_SUMMARY_SELECT = (
    "SELECT m.id, m.status, m.created_at, m.updated_at, m.account, m.user, m.server,"
    " m.message_id, m.subject, m.attempts, m.last_error, m.from_address, m.reason,"
    " m.next_attempt_at, m.source,"
    " (SELECT group_concat(address, ', ') FROM recipients r WHERE r.message = m.id) AS rcpt,"
    " (SELECT group_concat(status) FROM recipients r WHERE r.message = m.id) AS rstatus"
    " FROM messages m")


def list_messages(store: OutboundStore, f: Filters) -> list[dict[str, Any]]:
    """Messages newest first, as objects with stable keys (see LIST_COLUMNS)."""
    clause, args = _where(f)
    rows = store.query(
        f"{_SUMMARY_SELECT} {clause} ORDER BY m.id DESC LIMIT ?", (*args, f.limit))
    return [_summary(r) for r in rows]


def list_waiting(store: OutboundStore, f: Filters) -> list[dict[str, Any]]:
    """Messages the filters match (``status``: the waiting ones, say), oldest first, at
    most ``f.limit`` and with ids above ``f.after``: the admin console's Queue page and its
    keyset (``after``: the last id of the page before). The same objects as
    :func:`list_messages`; read through the ``messages_due`` index (status, next
    attempt), never the sent history."""
    clause, args = _where(f)
    rows = store.query(
        f"{_SUMMARY_SELECT} {clause} ORDER BY m.id LIMIT ?", (*args, f.limit))
    return [_summary(r) for r in rows]


def server_lasts(store: OutboundStore, server: str) -> tuple[float | None, str | None]:
    """When ``server`` last sent a message (epoch seconds) and the last error one of its
    messages recorded (None: none yet): the admin console's Servers page. Newest first
    through the primary key, so the last few rows decide, not the whole history."""
    sent = store.query("SELECT updated_at FROM messages WHERE server = ? AND status = 'sent'"
                       " ORDER BY id DESC LIMIT 1", (server,))
    error = store.query("SELECT last_error FROM messages WHERE server = ? AND last_error IS"
                        " NOT NULL ORDER BY id DESC LIMIT 1", (server,))
    return (float(sent[0][0]) if sent and sent[0][0] is not None else None,
            str(error[0][0]) if error else None)


def selected_ids(store: OutboundStore, f: Filters) -> list[int]:
    """The ids of every message the filters match, oldest first, whatever the limit: the
    messages an operator's ``mailsync queue retry --status failed ...`` acts on."""
    clause, args = _where(f)
    return [int(r[0]) for r in store.query(f"SELECT m.id FROM messages m {clause}"
                                           " ORDER BY m.id", args)]


def statuses(store: OutboundStore, ids: Sequence[int]) -> dict[int, str]:
    """The status of each of ``ids`` that is a message (a dry run's answer)."""
    out: dict[int, str] = {}
    for marks, chunk in in_chunks(ids):
        out.update({int(r[0]): str(r[1]) for r in store.query(
            f"SELECT id, status FROM messages WHERE id IN ({marks})", chunk)})
    return out


def count_messages(store: OutboundStore, f: Filters) -> int:
    """How many messages the filters match, whatever the limit."""
    clause, args = _where(f)
    return int(store.query(f"SELECT COUNT(*) FROM messages m {clause}", args)[0][0])


def count_by_status(store: OutboundStore, f: Filters) -> dict[str, int]:
    """How many messages the filters match, per status (those with none left out): the
    Queue page's counts for its "Retry all" and "Release all", in one read."""
    clause, args = _where(f)
    return {str(r[0]): int(r[1]) for r in store.query(
        f"SELECT m.status, COUNT(*) FROM messages m {clause} GROUP BY m.status", args)}


def status_text(row: dict[str, Any]) -> str:
    """The status as a listing shows it: ``sent (1 bounced)`` when some recipients
    bounced or failed while the message as a whole has another status."""
    counts = row.get("recipient_statuses") or {}
    extra = [f"{counts[s]} {s}" for s in PROBLEMS if counts.get(s) and row["status"] != s]
    return f"{row['status']} ({', '.join(extra)})" if extra else str(row["status"])


def for_table(rows: Sequence[dict[str, Any]], wide: bool) -> list[dict[str, Any]]:
    """Listing rows as the text table shows them: the status with its recipients'
    problems, and (unless ``wide``) times to the minute."""
    out = []
    for r in rows:
        shown = {**r, "status": status_text(r)}
        if not wide:
            for key in ("created_at", "next_attempt_at"):
                shown[key] = short_time(r.get(key))
        out.append(shown)
    return out


# The keys of a listed message (list_messages' objects: JSON and CSV listings).
SUMMARY_KEYS = ("id", "status", "created_at", "updated_at", "account", "user", "server",
                "from", "to", "message_id", "subject", "attempts", "next_attempt_at",
                "error", "reason", "source", "recipient_statuses")


def _summary(r: Any) -> dict[str, Any]:
    return {
        "id": r["id"],
        "status": r["status"],
        "created_at": iso(r["created_at"]),
        "updated_at": iso(r["updated_at"]),
        "account": r["account"],
        "user": r["user"],
        "server": r["server"],
        "from": r["from_address"],
        "to": r["rcpt"],
        "message_id": r["message_id"],
        "subject": r["subject"],
        "attempts": r["attempts"],
        "next_attempt_at": iso(r["next_attempt_at"]) if r["status"] == "deferred" else None,
        "error": r["last_error"],
        "reason": r["reason"],
        "source": r["source"],
        "recipient_statuses": _tally(r["rstatus"]),
    }


def _tally(statuses: str | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for status in (statuses or "").split(","):
        if status:
            out[status] = out.get(status, 0) + 1
    return dict(sorted(out.items()))


def show(store: OutboundStore, mid: int) -> dict[str, Any] | None:
    """One message in full: summary, recipients, attempts, events; ``raw`` as bytes."""
    rows = store.query(
        "SELECT m.*, c.raw, (SELECT group_concat(address, ', ') FROM recipients r"
        " WHERE r.message = m.id) AS rcpt, (SELECT group_concat(status) FROM recipients r"
        " WHERE r.message = m.id) AS rstatus FROM messages m"
        " LEFT JOIN contents c ON c.message = m.id WHERE m.id = ?", (mid,))
    if not rows:
        return None
    r = rows[0]
    out = _summary(r)
    out["size"] = r["size"]
    out["raw"] = r["raw"]
    out["recipients"] = [
        {"address": x["address"], "status": x["status"], "code": x["code"],
         "reply": x["reply"], "updated_at": iso(x["updated_at"])}
        for x in store.query("SELECT * FROM recipients WHERE message = ?", (mid,))
    ]
    out["attempts_detail"] = [
        {"at": iso(x["at"]), "server": x["server"], "result": x["result"], "code": x["code"],
         "reply": x["reply"], "detail": x["detail"],
         "duration_ms": round(x["duration"] * 1000, 1) if x["duration"] is not None else None,
         "recipients": _each(x["recipients"])}
        for x in store.query("SELECT at, server, status AS result, code, reply, detail,"
                             " duration, recipients FROM events"
                             " WHERE message = ? AND server IS NOT NULL ORDER BY id", (mid,))
    ]
    out["events"] = [
        {"at": iso(x["at"]), "status": x["status"], "detail": x["detail"],
         "server": x["server"]}
        for x in store.query("SELECT * FROM events WHERE message = ? ORDER BY id", (mid,))
    ]
    return out


def render_show(d: dict[str, Any]) -> str:
    """The full record as text: header, recipients, attempts, events, content.

    Every value is escaped to one printable line (:func:`~mailsync.printable.one_line`):
    a Subject, an address or a server's reply cannot run an escape sequence or start a
    line of its own.
    """
    v = one_line
    lines = [f"Message {d['id']}: {v(d['status'])}"]
    for key in ("created_at", "updated_at", "user", "account", "server", "from", "message_id",
                "subject", "attempts", "next_attempt_at", "error", "reason", "source", "size"):
        if d.get(key) not in (None, ""):
            lines.append(f"  {key.replace('_', ' ')}: {v(d[key])}")
    if d["recipients"]:
        lines.append("Recipients:")
        for x in d["recipients"]:
            lines.append(f"  {v(x['address'])}: {_outcome(x['status'], x['code'], x['reply'])}")
    if d["attempts_detail"]:
        lines.append("Attempts:")
        for x in d["attempts_detail"]:
            dur = f" ({x['duration_ms']} ms)" if x["duration_ms"] is not None else ""
            if x["result"] == "failed_over":  # this server could not be used: the next one
                what = f"failed over: {v(x['detail'])}"
            elif x.get("recipients"):  # each recipient's reply on the lines below
                what = v(x["result"])
            else:  # no reply: no recipient reached, the detail says why
                what = _outcome(x["result"], x["code"],
                                x["reply"] if x["reply"] is not None else x["detail"])
            lines.append(f"  {x['at']} {v(x['server'])}: {what}{dur}")
            for r in x.get("recipients") or ():
                lines.append(f"    {v(r['address'])}: "
                             f"{_outcome(r['status'], r['code'], r['reply'])}")
    lines.append("Events:")
    for x in d["events"]:
        lines.append(f"  {x['at']} {v(x['status'])}"
                     + (f": {v(x['detail'])}" if x["detail"] else ""))
    lines.append("Content:")
    raw = d.get("raw")
    if raw is None:
        lines.append("  (pruned or not kept)")
    else:
        lines.append(readable(raw))
    return "\n".join(lines)


def _outcome(status: str, code: int | None, reply: str | None) -> str:
    """``sent 250 2.0.0 OK``; an absent code (a DSN's ``X-Postfix;`` diagnostic, a
    connection that failed) or reply prints nothing, never ``None``."""
    return " ".join(one_line(p) for p in (status, code, reply) if p not in (None, ""))


def _each(recorded: str | None) -> list[dict[str, Any]] | None:
    """An attempt's per-recipient outcomes (migration 8), None when not recorded (a
    single recipient: the attempt's own code and reply; attempts of older stores)."""
    if not recorded:
        return None
    return [{"address": a, "status": s, "code": c, "reply": r}
            for a, s, c, r in json.loads(recorded)]


def _body_lines(msg: Any) -> list[str]:
    """The text part of a parsed message and its attachments' names, for :func:`readable`."""
    out: list[str] = []
    body = msg.get_body(preferencelist=("plain", "html")) if msg.is_multipart() else msg
    if body is not None:
        try:
            text = body.get_content()
        except (LookupError, KeyError, AttributeError):
            text = body.get_payload(decode=True)
            text = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
        out.append("")
        out.extend("  " + printable(line, multiline=True) for line in _lines(str(text)))
    attachments = [p.get_filename() for p in msg.walk() if p.get_filename()]
    if attachments:
        out.append("")
        out.append("  Attachments: " + ", ".join(one_line(a) for a in attachments))
    return out


def readable(raw: bytes) -> str:
    """Headers and the text parts of a message, decoded for reading on a terminal.

    Header values are escaped to one line each, the text keeps its lines and tabs with
    every other non-printable character escaped (:mod:`mailsync.printable`).
    """
    from email import policy
    from email.message import EmailMessage

    # With the email package, which only `show` needs of this module.
    from mailsync import mime

    def headers(pairs: list[tuple[str, str]]) -> list[str]:
        return [f"  {one_line(k)}: {one_line(v)}" for k, v in pairs]

    try:
        msg = mime.parse(raw, policy.default)
        assert isinstance(msg, EmailMessage)
        out = headers(mime.header_items(msg))
        out.extend(_body_lines(msg))
    except (mime.TooDeep, RecursionError) as exc:
        # RecursionError: a MIME header (Content-Type...) policy.default cannot follow.
        why = exc if isinstance(exc, mime.TooDeep) else "a header nests too deep to be read"
        return "\n".join([*headers(mime.headers_only(raw)), "",
                          f"  (not shown: {why}; --raw prints the message as stored)"])
    return "\n".join(out)


def _lines(text: str) -> list[str]:
    """The lines of a body: split at LF or CRLF only, so a lone CR, a form feed or a line
    separator is shown escaped rather than taken as a line break."""
    lines = text.replace("\r\n", "\n").split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines
