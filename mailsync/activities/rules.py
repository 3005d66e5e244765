"""Activity scheduling and chaining (docs/design.md §4): pure decisions over values.

Deadlines, the defaults a type gives a new activity, record references, what happens
when an activity is done (``trigger`` schedules ``default_next``, ``suggest`` offers
``recommended_next``) and the refusals. Nothing here reads the clock or the store: the
caller passes ``today`` (the machine's local date, see :func:`local_date`) and the
activities it has read. SQL lives in :mod:`mailsync.activities.store`.
"""

from __future__ import annotations

import calendar
import re
import shlex
from collections.abc import Iterable
from datetime import date, datetime, timedelta
from typing import Literal

from mailsync.config.model import ActivityType, Config, Delay
from mailsync.errors import ActivityRefused
from mailsync.values import replace, valueclass

State = Literal["open", "done", "cancelled"]
STATES: tuple[State, ...] = ("open", "done", "cancelled")

_MODEL = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*")


@valueclass
class RecordRef:
    """A reference to a record of another application: ``model:id`` (e.g. crm.lead:42)."""

    model: str
    id: int

    def __str__(self) -> str:
        return f"{self.model}:{self.id}"


def parse_record(text: str) -> RecordRef:
    """``model:id`` as a RecordRef; ValueError saying what is allowed otherwise."""
    model, sep, rid = text.partition(":")
    if not sep or not _MODEL.fullmatch(model) or not rid.isdigit() or int(rid) < 1:
        raise ValueError(
            f"{text!r} is not a record reference: use model:id, a dotted lower-case model "
            "and a positive number (e.g. crm.lead:42)")
    return RecordRef(model, int(rid))


@valueclass
class Activity:
    """An activity as stored. ``deadline`` and ``done_on`` are local dates."""

    id: int
    type: str
    user: str
    deadline: date
    state: State = "open"
    summary: str | None = None
    note: str | None = None
    record: RecordRef | None = None
    fetched_id: int | None = None
    previous_id: int | None = None
    created_at: float = 0.0
    done_at: float | None = None
    done_on: date | None = None
    feedback: str | None = None
    attachment: str | None = None


@valueclass
class NewActivity:
    """An activity decided but not yet stored."""

    type: str
    user: str
    deadline: date
    summary: str | None = None
    note: str | None = None
    record: RecordRef | None = None
    fetched_id: int | None = None
    previous_id: int | None = None


@valueclass
class Next:
    """What completing an activity leads to: a triggered activity and/or suggested types."""

    trigger: NewActivity | None = None
    suggested: tuple[str, ...] = ()
    remark: str | None = None


def local_date(now: float) -> date:
    """The date of ``now`` in the machine's local time zone (``TZ``): the users' "today"."""
    return datetime.fromtimestamp(now).date()


def add_delay(base: date, count: int, unit: str) -> date:
    """``base`` + ``count`` days, weeks or calendar months (31 Jan + 1 month = 28/29 Feb)."""
    try:
        if unit == "days":
            return base + timedelta(days=count)
        if unit == "weeks":
            return base + timedelta(weeks=count)
        if unit == "months":
            year, month0 = divmod(base.month - 1 + count, 12)
            year += base.year
            last = calendar.monthrange(year, month0 + 1)[1]
            return date(year, month0 + 1, min(base.day, last))
    except (OverflowError, ValueError):
        raise ActivityRefused(
            f"deadline {base.isoformat()} + {count} {unit} is past the year 9999") from None
    raise ValueError(f"unit {unit!r} is not one of days, weeks, months")


def deadline(delay: Delay, today: date, previous: Activity | None = None) -> date:
    """A new activity's deadline: base + delay (docs/design.md §4).

    The base is the previous activity's deadline (``from: previous_deadline``) or its
    completion date (``completion_date``; today while it is not done); a first activity's
    base is today.
    """
    base = today
    if previous is not None:
        if delay.base == "previous_deadline":
            base = previous.deadline
        elif previous.done_on is not None:
            base = previous.done_on
    return add_delay(base, delay.count, delay.unit)


def is_overdue(activity: Activity, today: date) -> bool:
    """Open with its deadline before today (due today is not overdue)."""
    return activity.state == "open" and activity.deadline < today


def due_text(when: date, today: date) -> str:
    """A deadline relative to today: today, tomorrow, in 3 days, yesterday, 3 days ago."""
    days = (when - today).days
    if days == 0:
        return "today"
    if days == 1:
        return "tomorrow"
    if days == -1:
        return "yesterday"
    return f"in {days} days" if days > 0 else f"{-days} days ago"


def type_list(names: Iterable[str]) -> str:
    """Type names for a message, comma-separated, each as it would be typed in a shell:
    ``Reply, 'To Do', 'Gọi lại khách'`` (display names hold spaces and any script)."""
    return ", ".join(shlex.quote(n) for n in names) or "none"


def _names(config: Config) -> str:
    return type_list(t.name for t in config.activity_types)


def require_type(config: Config, name: str, *, seen_before: bool = False) -> ActivityType:
    """The declared type ``name``; refused when unknown or (``seen_before``) removed."""
    t = config.activity_type(name)
    if t is not None:
        return t
    if seen_before:
        raise ActivityRefused(
            f"activity type {name!r} was removed from the config: its activities stay "
            f"readable but no new ones are scheduled (declared: {_names(config)})")
    raise ActivityRefused(
        f"activity type {name!r} is not declared (declared: {_names(config)})")


def check_record(t: ActivityType, record: RecordRef | None) -> None:
    """Refuse a record of another model than the type's own."""
    if record is not None and t.model is not None and record.model != t.model:
        raise ActivityRefused(
            f"record {record}: activity type {t.name!r} applies to {t.model} records only "
            f"(use {t.model}:ID)")


def _fits(t: ActivityType, record: RecordRef | None) -> RecordRef | None:
    return record if record is None or t.model in (None, record.model) else None


def plan_activity(config: Config, type_name: str, today: date, *, user: str | None = None,
                  summary: str | None = None, note: str | None = None,
                  record: RecordRef | None = None, when: date | None = None,
                  previous: Activity | None = None, fetched_id: int | None = None,
                  seen_before: bool = False) -> NewActivity:
    """A new activity of ``type_name`` with the type's defaults filled in.

    Defaults: user = the type's default_user (after ``previous``: its user), summary =
    default_summary, note = default_description, deadline per the type's delay. After
    ``previous``, its record carries over when the type's model allows it.
    """
    t = require_type(config, type_name, seen_before=seen_before)
    if user is not None and user not in config.users:
        raise ActivityRefused(
            f"user {user!r} is not declared (declared: {', '.join(config.users) or 'none'})")
    if record is not None:
        check_record(t, record)
    elif previous is not None:
        record = _fits(t, previous.record)
    user = user or t.default_user or (previous.user if previous is not None else None)
    if user is None:
        raise ActivityRefused(
            f"activity type {t.name!r} has no default_user: give --user "
            f"(declared: {', '.join(config.users) or 'none'})")
    return NewActivity(
        type=t.name, user=user,
        deadline=when if when is not None else deadline(t.delay, today, previous),
        summary=summary or t.default_summary,
        note=note if note is not None else t.default_description,
        record=record, fetched_id=fetched_id,
        previous_id=previous.id if previous is not None else None)


def require_open(activity: Activity, action: str) -> None:
    """Refuse ``action`` (done, cancel) on an activity that is not open."""
    if activity.state != "open":
        raise ActivityRefused(
            f"activity {activity.id} is {activity.state}: {action} applies to open "
            "activities only")


def check_done(config: Config, activity: Activity, attach: bool) -> None:
    """Refuse completing a closed activity, or an upload_document one without a file."""
    require_open(activity, "done")
    t = config.activity_type(activity.type)
    if t is not None and t.action == "upload_document" and not attach:
        raise ActivityRefused(
            f"activity {activity.id} ({t.name}) is an upload_document activity: mark it "
            "done with --attach FILE (the document)")


def after_done(config: Config, done: Activity) -> Next:
    """What completing ``done`` (state done, ``done_on`` set) leads to.

    ``trigger``: the type's default_next, for that type's default user (else the same
    user), its deadline from this one's deadline or completion date per its delay.
    ``suggest``: the recommended_next types still declared.
    """
    assert done.done_on is not None, "after_done takes a completed activity"
    t = config.activity_type(done.type)
    if t is None:
        return Next(remark=f"activity type {done.type!r} is no longer in the config: "
                           "nothing is scheduled next")
    if t.chaining == "trigger" and t.default_next is not None:
        nxt = config.activity_type(t.default_next)
        if nxt is None:
            return Next(remark=f"default_next {t.default_next!r} of {t.name!r} is not "
                               "declared: nothing is scheduled next")
        return Next(trigger=plan_activity(config, nxt.name, done.done_on, previous=done))
    declared = tuple(n for n in t.recommended_next if config.activity_type(n) is not None)
    return Next(suggested=declared)


def type_after(config: Config, previous: Activity) -> str:
    """The type `schedule --after ID` uses when none is given: default_next, or the only
    recommended one; refused (naming the recommended types) when there is a choice."""
    t = config.activity_type(previous.type)
    if t is not None and t.default_next is not None:
        return t.default_next
    offered = [n for n in (t.recommended_next if t else ()) if config.activity_type(n)]
    if len(offered) == 1:
        return offered[0]
    raise ActivityRefused(
        f"--type is needed after activity {previous.id} ({previous.type}): recommended "
        f"{type_list(offered)}; declared: {_names(config)}")


def completed(activity: Activity, now: float, feedback: str | None,
              attachment: str | None) -> Activity:
    """``activity`` marked done at ``now`` (its done date being the local date)."""
    return replace(activity, state="done", done_at=now, done_on=local_date(now),
                   feedback=feedback, attachment=attachment)
