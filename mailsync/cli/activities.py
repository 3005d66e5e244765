"""Commands of the activities side (registered on `mailsync.cli.main`).

``mailsync activity schedule|done|cancel|list|show``. Exit 0 ok, 1 refused (unknown or
removed type, undeclared user, wrong record model, missing --attach, not open, no such
activity), 2 usage. Dates are the machine's local dates (``TZ``).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import click

from mailsync.activities.rules import (
    STATES,
    Activity,
    RecordRef,
    State,
    due_text,
    is_overdue,
    local_date,
    parse_record,
    type_list,
)
from mailsync.activities.store import ActivityStore, DoneResult, Filters
from mailsync.cli.root import Exit, _load_or_exit, config_option, main, using_store
from mailsync.config.model import Config
from mailsync.config.units import iso
from mailsync.errors import ActivityRefused
from mailsync.printable import csv_text, one_line, printable

LIST_COLUMNS = ("id", "icon", "type", "summary", "user", "deadline", "due", "decoration",
                "state", "record")
_STYLES: dict[str, dict[str, Any]] = {
    "warning": {"fg": "yellow"}, "danger": {"fg": "red"}, "OVERDUE": {"fg": "red", "bold": True}}


def _config(config_path: Path) -> Config:
    loaded = _load_or_exit(config_path)
    assert loaded.config is not None
    return loaded.config


@contextmanager
def _activities(config: Config, *, create: bool = True) -> Iterator[ActivityStore | None]:
    """The activity store (None when reading and there never was a store); refusals, and a
    store that is missing, replaced or damaged, exit 1."""
    try:
        with using_store(config, create=create) as store:
            yield ActivityStore(store, config.daemon.state_dir) if store is not None else None
    except ActivityRefused as exc:
        click.echo(f"error: {exc}", err=True)
        raise Exit(1) from None


def _record(ctx: click.Context, param: click.Parameter, value: str | None) -> RecordRef | None:
    try:
        return parse_record(value) if value is not None else None
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _date(ctx: click.Context, param: click.Parameter, value: str | None) -> date | None:
    try:
        return date.fromisoformat(value) if value is not None else None
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date: use YYYY-MM-DD") from None


# The keys of row(), in its order: the columns of `activity list --format csv`.
ROW_KEYS = ("id", "type", "type_removed", "action", "icon", "decoration", "state", "user",
            "summary", "note", "deadline", "due", "overdue", "record", "fetched_id",
            "previous_id", "created_at", "done_at", "done_on", "feedback", "attachment")


def row(a: Activity, config: Config, today: date, state_dir: Path) -> dict[str, Any]:
    """One activity as an object with stable keys (:data:`ROW_KEYS`: the JSON of list
    and show, the CSV of list)."""
    t = config.activity_type(a.type)
    return {
        "id": a.id, "type": a.type, "type_removed": t is None,
        "action": t.action if t else None, "icon": t.icon if t else None,
        "decoration": t.decoration if t else None, "state": a.state, "user": a.user,
        "summary": a.summary, "note": a.note, "deadline": a.deadline.isoformat(),
        "due": due_text(a.deadline, today), "overdue": is_overdue(a, today),
        "record": str(a.record) if a.record else None, "fetched_id": a.fetched_id,
        "previous_id": a.previous_id, "created_at": iso(a.created_at),
        "done_at": iso(a.done_at), "done_on": a.done_on.isoformat() if a.done_on else None,
        "feedback": a.feedback,
        "attachment": str(state_dir / a.attachment) if a.attachment else None,
    }


def _cells(r: dict[str, Any]) -> dict[str, str]:
    """The table's text of one row: overdue and removed types are spelt out; every cell
    is one printable line (a summary is often a fetched message's Subject)."""
    cells = {c: one_line(r.get(c)) for c in LIST_COLUMNS}
    if r["overdue"]:
        cells["due"] = f"OVERDUE {r['due']}"
    if r["type_removed"]:
        cells["decoration"] = "(type removed)"
    elif r["decoration"] == "none":
        cells["decoration"] = ""
    return cells


def render_table(rows: Sequence[dict[str, Any]], color: bool) -> str:
    """Rows as aligned columns; with ``color``, warning yellow, danger and OVERDUE red."""
    cells = [_cells(r) for r in rows]
    for c in cells:
        c["summary"] = c["summary"] if len(c["summary"]) <= 48 else c["summary"][:47] + "…"
    widths = {k: max([len(k)] + [len(c[k]) for c in cells]) for k in LIST_COLUMNS}
    lines = ["  ".join(k.upper().ljust(widths[k]) for k in LIST_COLUMNS).rstrip()]
    for c in cells:
        parts = []
        for k in LIST_COLUMNS:
            pad = " " * (widths[k] - len(c[k]))
            style = _STYLES.get(c[k].split(" ")[0]) if k in ("due", "decoration") else None
            parts.append((click.style(c[k], **style) if color and style else c[k]) + pad)
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _line(a: Activity, today: date) -> str:
    when = f"done {a.done_on.isoformat()}" if a.done_on else \
        f"{a.state}, due {a.deadline.isoformat()} ({due_text(a.deadline, today)})"
    return one_line(f"  {a.id}  {a.type}  {a.user}  {when}  {a.summary or ''}".rstrip())


def _brief(a: Activity, today: date) -> str:
    return one_line(f"activity {a.id}: {a.type} for {a.user}, due {a.deadline.isoformat()} "
                    f"({due_text(a.deadline, today)})")


@main.group()
def activity() -> None:
    """Schedule, complete and list activities (their types come from activity_types)."""


@activity.command("schedule")
@config_option
@click.option("--type", "type_name", metavar="TYPE",
              help="A declared activity type (optional with --after: its next type).")
@click.option("--user", help="A declared user (default: the type's default_user).")
@click.option("--summary", help="Default: the type's default_summary.")
@click.option("--note", help="Default: the type's default_description.")
@click.option("--record", callback=_record, metavar="MODEL:ID",
              help="The record it is about, e.g. crm.lead:42 (of the type's model).")
@click.option("--deadline", callback=_date, metavar="YYYY-MM-DD",
              help="Default: computed from the type's delay.")
@click.option("--after", type=click.IntRange(1), metavar="ID",
              help="The previous activity: the deadline base, its record and next type.")
def schedule(config_path: Path, type_name: str | None, user: str | None,
             summary: str | None, note: str | None, record: RecordRef | None,
             deadline: date | None, after: int | None) -> None:
    """Schedule an activity; the type fills in what is not given."""
    if type_name is None and after is None:
        raise click.UsageError("give --type TYPE (or --after ID to take the next type)")
    config = _config(config_path)
    now = time.time()
    with _activities(config) as store:
        assert store is not None
        a = store.schedule(config, type_name, now, user=user, summary=summary, note=note,
                           record=record, when=deadline, after=after)
    click.echo(f"scheduled {_brief(a, local_date(now))}")


@activity.command("done")
@click.argument("activity_id", type=int)
@config_option
@click.option("--feedback", help="What was done.")
@click.option("--attach", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A file kept with the activity (needed by upload_document types).")
def done(activity_id: int, config_path: Path, feedback: str | None,
         attach: Path | None) -> None:
    """Mark an open activity done; its type's chaining schedules or suggests the next."""
    config = _config(config_path)
    now = time.time()
    with _activities(config) as store:
        assert store is not None
        result = store.done(config, activity_id, now, feedback=feedback, attach=attach)
        state_dir = store.state_dir
    _print_done(result, local_date(now), state_dir)


def _print_done(result: DoneResult, today: date, state_dir: Path) -> None:
    a = result.activity
    click.echo(one_line(f"activity {a.id} done: {a.type}"
                        + (f" ({a.summary})" if a.summary else "")))
    if a.attachment:
        click.echo(f"  kept {one_line(state_dir / a.attachment)}")
    if result.triggered is not None:
        click.echo(f"triggered {_brief(result.triggered, today)}")
    if result.next.suggested:
        click.echo(one_line(f"recommended next: {type_list(result.next.suggested)}"))
        click.echo(f"  schedule one with: mailsync activity schedule --after {a.id} "
                   "--type TYPE")
    if result.next.remark:
        click.echo(f"note: {result.next.remark}")


@activity.command("cancel")
@click.argument("activity_id", type=int)
@config_option
def cancel(activity_id: int, config_path: Path) -> None:
    """Cancel an open activity (it stays readable, state cancelled)."""
    config = _config(config_path)
    with _activities(config) as store:
        assert store is not None
        a = store.cancel(activity_id, time.time())
    click.echo(one_line(f"activity {a.id} cancelled: {a.type}"
                        + (f" ({a.summary})" if a.summary else "")))


def _color() -> bool:
    return sys.stdout.isatty()


@activity.command("list")
@config_option
@click.option("--user", help="Only this user's activities.")
@click.option("--type", "type_name", metavar="TYPE", help="Only this type.")
@click.option("--overdue", is_flag=True, help="Only open activities past their deadline.")
@click.option("--state", "states", multiple=True, type=click.Choice([*STATES, "all"]),
              help="Only these states (repeatable; default open).")
@click.option("--limit", type=click.IntRange(1), default=1000, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table",
              show_default=True, help="Output format (json and csv: every field, stable keys).")
def list_cmd(config_path: Path, user: str | None, type_name: str | None, overdue: bool,
             states: tuple[str, ...], limit: int, fmt: str) -> None:
    """Activities by deadline: icon, decoration, deadline relative to today."""
    config = _config(config_path)
    today = local_date(time.time())
    chosen: tuple[State, ...] = ("open",)
    if "all" in states:
        chosen = ()
    elif states:
        chosen = tuple(s for s in STATES if s in states)
    declared = config.activity_type(type_name) if type_name is not None else None
    if declared is not None:  # the name as the config spells it (the store keeps that)
        type_name = declared.name
    rows: list[dict[str, Any]] = []
    with _activities(config, create=False) as store:
        if store is not None:
            found = store.find(Filters(user, type_name, chosen,
                                       today if overdue else None, limit))
            rows = [row(a, config, today, store.state_dir) for a in found]
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
    elif fmt == "csv":
        click.echo(csv_text(rows, ROW_KEYS), nl=False)
    elif rows:
        click.echo(render_table(rows, _color()))
    else:
        click.echo("(no activities)")


@activity.command("show")
@click.argument("activity_id", type=int)
@config_option
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="Output format.")
def show(activity_id: int, config_path: Path, fmt: str) -> None:
    """One activity in full, with the chain of previous activities."""
    config = _config(config_path)
    today = local_date(time.time())
    with _activities(config, create=False) as store:
        if store is None:
            raise ActivityRefused(f"no activity {activity_id} (no store yet)")
        a = store.get(activity_id)
        previous, following = store.chain(activity_id), store.following(activity_id)
        state_dir = store.state_dir

    def as_row(x: Activity) -> dict[str, Any]:
        return row(x, config, today, state_dir)

    detail = as_row(a)
    if fmt == "json":
        detail["previous"] = [as_row(p) for p in previous]
        detail["following"] = [as_row(f) for f in following]
        click.echo(json.dumps(detail, indent=2))
        return
    click.echo("\n".join(_show_text(detail, previous, following, today)))


def _show_text(d: dict[str, Any], previous: list[Activity], following: list[Activity],
               today: date) -> Iterator[str]:
    yield one_line(f"activity {d['id']}: {d['type']} ({d['state']})")
    due = f"OVERDUE {d['due']}" if d["overdue"] else d["due"]
    fields = [
        ("summary", d["summary"]), ("user", d["user"]),
        ("deadline", f"{d['deadline']} ({due})"),
        ("type", "removed from the config" if d["type_removed"] else
         f"action {d['action']}, icon {d['icon'] or '-'}, decoration {d['decoration']}"),
        ("record", d["record"]),
        ("message", f"fetched message {d['fetched_id']}" if d["fetched_id"] else None),
        ("note", d["note"]), ("created", d["created_at"]), ("done", d["done_at"]),
        ("feedback", d["feedback"]), ("attachment", d["attachment"]),
    ]
    for name, value in fields:
        if value is not None:
            # A note or feedback may hold several lines (the user's or the config's own).
            text = printable(value, multiline=True) if name in ("note", "feedback") \
                else one_line(value)
            yield f"  {name + ':':<11} {text}"
    if previous:
        yield "previous activities (nearest first):"
        yield from (_line(p, today) for p in previous)
    if following:
        yield "followed by:"
        yield from (_line(f, today) for f in following)
