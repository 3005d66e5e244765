"""Pure activity logic: deadlines (every unit and base, month ends, leap years), chaining
(trigger chains of several steps, suggest lists), defaults, record references, refusals."""

from __future__ import annotations

import calendar
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailsync.activities.rules import (
    Activity,
    ActivityRefused,
    RecordRef,
    add_delay,
    after_done,
    check_done,
    completed,
    deadline,
    due_text,
    is_overdue,
    local_date,
    parse_record,
    plan_activity,
    type_after,
)
from mailsync.config.model import ActivityType, Config, Daemon, Delay

TODAY = date(2025, 1, 31)


def config(*types: ActivityType, users: tuple[str, ...] = ("alice", "bob", "carol")) -> Config:
    return Config(daemon=Daemon(Path("state"), Path("spool")), users=users,
                  activity_types=types)


def done(a: Activity, on: date) -> Activity:
    return Activity(**{**a.__dict__, "state": "done", "done_on": on})


# -- add_delay -------------------------------------------------------------------------
@pytest.mark.parametrize(("base", "count", "unit", "expected"), [
    (date(2025, 1, 31), 0, "days", date(2025, 1, 31)),
    (date(2025, 1, 31), 1, "days", date(2025, 2, 1)),
    (date(2024, 2, 28), 1, "days", date(2024, 2, 29)),   # leap year
    (date(2025, 2, 28), 1, "days", date(2025, 3, 1)),    # common year
    (date(2025, 12, 31), 1, "days", date(2026, 1, 1)),
    (date(2025, 1, 31), 2, "weeks", date(2025, 2, 14)),
    (date(2024, 2, 22), 1, "weeks", date(2024, 2, 29)),
    (date(2025, 1, 31), 1, "months", date(2025, 2, 28)),  # 31 Jan + 1 month, common year
    (date(2024, 1, 31), 1, "months", date(2024, 2, 29)),  # ... and in a leap year
    (date(2024, 2, 29), 12, "months", date(2025, 2, 28)),
    (date(2024, 2, 29), 48, "months", date(2028, 2, 29)),
    (date(1896, 2, 29), 48, "months", date(1900, 2, 28)),  # 1900 is not a leap year
    (date(1996, 2, 29), 48, "months", date(2000, 2, 29)),  # 2000 is
    (date(2025, 3, 31), 1, "months", date(2025, 4, 30)),
    (date(2025, 11, 30), 3, "months", date(2026, 2, 28)),
    (date(2025, 12, 31), 1, "months", date(2026, 1, 31)),  # across the year end
    (date(2025, 1, 15), 25, "months", date(2027, 2, 15)),
    (date(2025, 1, 31), 0, "months", date(2025, 1, 31)),
])
def test_add_delay_is_calendar_correct(base, count, unit, expected):
    assert add_delay(base, count, unit) == expected


dates = st.dates(min_value=date(1800, 1, 1), max_value=date(9000, 12, 31))


@given(dates, st.integers(0, 1000))
def test_days_and_weeks_add_exact_day_counts(base, count):
    assert (add_delay(base, count, "days") - base).days == count
    assert (add_delay(base, count, "weeks") - base).days == 7 * count


@given(dates, st.integers(0, 1000))
def test_months_move_the_month_and_keep_the_day_or_the_month_end(base, count):
    got = add_delay(base, count, "months")
    assert (got.year * 12 + got.month) - (base.year * 12 + base.month) == count
    assert got.day == min(base.day, calendar.monthrange(got.year, got.month)[1])


@given(dates, st.integers(0, 500), st.integers(0, 500), st.sampled_from(["days", "weeks",
                                                                         "months"]))
def test_a_longer_delay_is_never_earlier(base, a, b, unit):
    lo, hi = sorted((a, b))
    assert add_delay(base, lo, unit) <= add_delay(base, hi, unit)


def test_a_deadline_past_year_9999_is_refused():
    with pytest.raises(ActivityRefused, match=r"9999-12-01 \+ 1 months is past the year 9999"):
        add_delay(date(9999, 12, 1), 1, "months")


# -- deadline bases --------------------------------------------------------------------
PREVIOUS = Activity(id=7, type="Reply", user="alice", deadline=date(2025, 3, 10))


@pytest.mark.parametrize(("base", "previous", "expected"), [
    # a first activity's base is today, whatever the rule
    ("previous_deadline", None, date(2025, 2, 28)),
    ("completion_date", None, date(2025, 2, 28)),
    # after an activity: its deadline, or the day it was completed
    ("previous_deadline", PREVIOUS, date(2025, 4, 10)),
    ("previous_deadline", done(PREVIOUS, date(2025, 3, 20)), date(2025, 4, 10)),
    ("completion_date", done(PREVIOUS, date(2025, 3, 31)), date(2025, 4, 30)),
    # not completed yet: completion would be today
    ("completion_date", PREVIOUS, date(2025, 2, 28)),
])
def test_deadline_base(base, previous, expected):
    assert deadline(Delay(1, "months", base), TODAY, previous) == expected


def test_zero_delay_is_due_on_the_base_day():
    assert deadline(Delay(), TODAY) == TODAY
    assert deadline(Delay(), TODAY, PREVIOUS) == PREVIOUS.deadline


# -- chaining --------------------------------------------------------------------------
def test_trigger_chains_several_steps_with_each_next_types_delay():
    cfg = config(
        ActivityType("Reply", default_user="alice", default_summary="Answer",
                     delay=Delay(1, "days"), chaining="trigger", default_next="Call"),
        ActivityType("Call", default_user="bob", default_summary="Call back",
                     default_description="Ask about the quote",
                     delay=Delay(2, "days", "completion_date"), chaining="trigger",
                     default_next="Meeting"),
        ActivityType("Meeting", delay=Delay(1, "weeks", "previous_deadline"),
                     chaining="trigger", default_next="Review"),
        ActivityType("Review", default_user="carol", delay=Delay(1, "months",
                                                                 "completion_date")),
    )
    first = plan_activity(cfg, "Reply", TODAY)
    assert (first.type, first.user, first.deadline) == ("Reply", "alice", date(2025, 2, 1))

    steps = []
    current = Activity(id=1, **first.__dict__)
    for step, completed_on in enumerate([date(2025, 2, 3), date(2025, 2, 4),
                                         date(2025, 3, 31)], start=2):
        nxt = after_done(cfg, done(current, completed_on))
        assert nxt.trigger is not None and nxt.suggested == ()
        current = Activity(id=step, **nxt.trigger.__dict__)
        steps.append((current.type, current.user, current.deadline, current.previous_id))
    assert steps == [
        # Call: 2 days after the completion date of Reply, for Call's default user
        ("Call", "bob", date(2025, 2, 5), 1),
        # Meeting: 1 week after Call's deadline; no default user: Call's user goes on
        ("Meeting", "bob", date(2025, 2, 12), 2),
        # Review: 1 calendar month after completing the Meeting on 31 March
        ("Review", "carol", date(2025, 4, 30), 3),
    ]
    assert after_done(cfg, done(current, date(2025, 5, 1))).trigger is None


def test_triggered_activity_takes_the_next_types_defaults():
    cfg = config(
        ActivityType("Reply", default_user="alice", chaining="trigger", default_next="Call"),
        ActivityType("Call", default_user="bob", default_summary="Call back",
                     default_description="Ask about the quote"))
    prev = done(Activity(id=4, type="Reply", user="alice", deadline=TODAY), TODAY)
    new = after_done(cfg, prev).trigger
    assert new is not None
    assert (new.summary, new.note, new.previous_id) == ("Call back", "Ask about the quote", 4)


def test_suggest_lists_the_recommended_types_still_declared():
    cfg = config(
        ActivityType("Call", default_user="bob", recommended_next=("Meeting", "Gone",
                                                                   "Contract")),
        ActivityType("Meeting"), ActivityType("Contract"))
    nxt = after_done(cfg, done(Activity(1, "Call", "bob", TODAY), TODAY))
    assert nxt.trigger is None
    assert nxt.suggested == ("Meeting", "Contract")


def test_suggest_without_recommendations_offers_nothing():
    nxt = after_done(config(ActivityType("Call")), done(Activity(1, "Call", "bob", TODAY),
                                                        TODAY))
    assert (nxt.trigger, nxt.suggested, nxt.remark) == (None, (), None)


def test_done_activity_of_a_removed_type_schedules_nothing_and_says_why():
    nxt = after_done(config(ActivityType("Call")), done(Activity(1, "Old", "bob", TODAY),
                                                        TODAY))
    assert nxt.trigger is None
    assert nxt.remark == "activity type 'Old' is no longer in the config: nothing is " \
                         "scheduled next"


def test_record_carries_over_only_to_a_type_of_its_model():
    cfg = config(ActivityType("Reply", default_user="alice", model="crm.lead"),
                 ActivityType("Any", default_user="alice"),
                 ActivityType("Invoice", default_user="alice", model="account.move"))
    prev = Activity(1, "Reply", "alice", TODAY, record=RecordRef("crm.lead", 42))
    assert plan_activity(cfg, "Any", TODAY, previous=prev).record == RecordRef("crm.lead", 42)
    assert plan_activity(cfg, "Reply", TODAY, previous=prev).record == RecordRef("crm.lead",
                                                                                  42)
    assert plan_activity(cfg, "Invoice", TODAY, previous=prev).record is None


def test_type_after_uses_default_next_or_the_only_recommendation():
    cfg = config(ActivityType("Reply", default_next="Call"),
                 ActivityType("Call", recommended_next=("Meeting",)),
                 ActivityType("Meeting", recommended_next=("Reply", "Call")))
    assert type_after(cfg, Activity(1, "Reply", "a", TODAY)) == "Call"
    assert type_after(cfg, Activity(2, "Call", "a", TODAY)) == "Meeting"
    with pytest.raises(ActivityRefused) as exc:
        type_after(cfg, Activity(3, "Meeting", "a", TODAY))
    assert str(exc.value) == ("--type is needed after activity 3 (Meeting): recommended "
                              "Reply, Call; declared: Reply, Call, Meeting")


# -- defaults and refusals ---------------------------------------------------------------
REPLY = ActivityType("Reply", default_user="alice", model="crm.lead",
                     default_summary="Answer the customer", delay=Delay(1, "days"),
                     default_description="Reply within one working day.")


def test_new_activity_takes_the_types_defaults():
    new = plan_activity(config(REPLY), "Reply", TODAY)
    assert (new.user, new.summary, new.note, new.deadline, new.record) == (
        "alice", "Answer the customer", "Reply within one working day.", date(2025, 2, 1),
        None)


def test_given_values_override_the_defaults():
    new = plan_activity(config(REPLY), "Reply", TODAY, user="bob", summary="Quote",
                        note="", record=RecordRef("crm.lead", 3), when=date(2025, 6, 1))
    assert (new.user, new.summary, new.note, new.deadline, new.record) == (
        "bob", "Quote", "", date(2025, 6, 1), RecordRef("crm.lead", 3))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"type_name": "Nope"}, "activity type 'Nope' is not declared (declared: Reply, Call)"),
    ({"type_name": "Nope", "seen_before": True},
     "activity type 'Nope' was removed from the config: its activities stay readable but "
     "no new ones are scheduled (declared: Reply, Call)"),
    ({"type_name": "Reply", "user": "zed"},
     "user 'zed' is not declared (declared: alice, bob, carol)"),
    ({"type_name": "Call"},
     "activity type 'Call' has no default_user: give --user (declared: alice, bob, carol)"),
    ({"type_name": "Reply", "record": RecordRef("res.partner", 9)},
     "record res.partner:9: activity type 'Reply' applies to crm.lead records only "
     "(use crm.lead:ID)"),
])
def test_refusals_name_the_thing_the_value_and_what_is_allowed(kwargs, message):
    with pytest.raises(ActivityRefused) as exc:
        plan_activity(config(REPLY, ActivityType("Call")), today=TODAY, **kwargs)
    assert str(exc.value) == message


def test_a_type_without_model_takes_any_record():
    new = plan_activity(config(ActivityType("Call", default_user="bob")), "Call", TODAY,
                        record=RecordRef("res.partner", 9))
    assert new.record == RecordRef("res.partner", 9)


def test_done_is_refused_unless_open_and_upload_documents_need_a_file():
    cfg = config(ActivityType("Contract", action="upload_document"))
    contract = Activity(5, "Contract", "alice", TODAY)
    with pytest.raises(ActivityRefused, match=r"activity 5 \(Contract\) is an upload_document "
                                              r"activity: mark it done with --attach FILE"):
        check_done(cfg, contract, attach=False)
    check_done(cfg, contract, attach=True)
    # a type removed from the config: its rules are unknown, so a file is not required
    check_done(config(), contract, attach=False)
    for state in ("done", "cancelled"):
        closed = Activity(5, "Contract", "alice", TODAY, state=state)
        with pytest.raises(ActivityRefused, match=f"activity 5 is {state}: done applies to "
                                                  "open activities only"):
            check_done(cfg, closed, attach=True)


# -- record references, dates ------------------------------------------------------------
@pytest.mark.parametrize("text", ["crm.lead", "crm.lead:", "crm.lead:x", "crm.lead:0",
                                  "CRM:1", ":4", "crm..lead:1", "crm.lead:-1", "a b:1"])
def test_bad_record_references_are_refused_with_the_form(text):
    with pytest.raises(ValueError, match=r"is not a record reference: use model:id"):
        parse_record(text)


@given(st.from_regex(r"[a-z][a-z0-9_]{0,8}(\.[a-z][a-z0-9_]{0,8}){0,3}", fullmatch=True),
       st.integers(1, 10**12))
def test_record_references_round_trip(model, rid):
    assert parse_record(str(RecordRef(model, rid))) == RecordRef(model, rid)


@pytest.mark.parametrize(("days", "text"), [(0, "today"), (1, "tomorrow"), (3, "in 3 days"),
                                            (-1, "yesterday"), (-12, "12 days ago")])
def test_due_text_is_relative_to_today(days, text):
    assert due_text(TODAY + timedelta(days=days), TODAY) == text


def test_only_open_activities_before_today_are_overdue():
    assert is_overdue(Activity(1, "A", "a", TODAY - timedelta(days=1)), TODAY)
    assert not is_overdue(Activity(1, "A", "a", TODAY), TODAY)
    assert not is_overdue(Activity(1, "A", "a", date(2000, 1, 1), state="done"), TODAY)


@pytest.fixture
def tz(monkeypatch):
    def set_tz(name: str) -> None:
        monkeypatch.setenv("TZ", name)
        time.tzset()

    yield set_tz
    monkeypatch.undo()
    time.tzset()


def test_today_is_the_local_date_of_the_machine(tz):
    now = datetime(2025, 1, 31, 22, 30, tzinfo=UTC).timestamp()
    tz("Pacific/Kiritimati")  # UTC+14: already 1 February
    assert local_date(now) == date(2025, 2, 1)
    assert completed(Activity(1, "A", "a", TODAY), now, "ok", None).done_on == date(2025, 2, 1)
    tz("Pacific/Pago_Pago")  # UTC-11: still 31 January
    assert local_date(now) == date(2025, 1, 31)
