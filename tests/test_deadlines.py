"""Protocol deadlines: computed from the data file with fixed dates, bank holidays counted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mappings import DeadlineState, Unit, add_working_days, deadlines_for, due_at, evaluate, load_deadlines
from mappings._deadlines import england_and_wales_bank_holidays

RULES = {r.rule_id: r for r in load_deadlines()}


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC) if "+" not in text else datetime.fromisoformat(text)


def test_the_eight_protocol_deadlines_are_data() -> None:
    """Every deadline the issue names is in deadlines.toml with the protocol's length and unit."""
    expected = {
        "SW26-6": (10, Unit.CALENDAR_DAYS),
        "NS-4": (2, Unit.WEEKS),
        "BA-14": (7, Unit.CALENDAR_DAYS),
        "SW22-13": (6, Unit.WEEKS),
        "SW22-15": (10, Unit.WORKING_DAYS),
        "NS-13": (24, Unit.HOURS),
        "BA-12": (3, Unit.WEEKS),
        "LU-4": (10, Unit.CALENDAR_DAYS),
    }
    assert expected == {rid: (r.length, r.unit) for rid, r in RULES.items()}


def test_sw22_15_working_days_skip_christmas_and_boxing_day_substitute() -> None:
    """10 working days from Thu 17 Dec 2026 skip 25 Dec, 28 Dec (Boxing Day observed) and 1 Jan: Tue 5 Jan."""
    start = at("2026-12-17T10:00:00")  # winter: UK local time is UTC
    assert at("2027-01-05T10:00:00") == due_at(start, 10, Unit.WORKING_DAYS)
    # without bank holidays the same count would end on Thu 31 Dec
    assert at("2026-12-31T10:00:00") == add_working_days(start, 10, bank_holidays=set())


def test_sw22_15_working_days_skip_good_friday_and_easter_monday() -> None:
    """From Wed 24 Mar 2027, 3 working days skip Good Friday (26th) and Easter Monday (29th): Wed 31 Mar."""
    start = datetime.fromisoformat("2027-03-24T09:00:00+00:00")  # 09:00 GMT; clocks go forward on the 28th
    due = due_at(start, 3, Unit.WORKING_DAYS)
    assert datetime.fromisoformat("2027-03-31T09:00:00+01:00") == due  # 09:00 local (BST)


def test_working_days_remembered_per_start_day_match_the_walk() -> None:
    """The day arithmetic is remembered per start day and length; every answer equals a fresh walk.

    Three years of start days (two times a day, either side of the UK's midnight in summer) and four lengths,
    against the walk over the same bank-holiday calendar passed in explicitly (never remembered).
    """
    calendar = england_and_wales_bank_holidays()
    first = at("2026-01-01T00:30:00")
    for day in range(3 * 365):
        for hour in (0, 23):  # 00:30 UTC is 01:30 BST; 23:30 UTC in summer is the next day in the UK
            start = first + timedelta(days=day, hours=hour)
            for n in (1, 3, 10, 20):
                assert add_working_days(start, n) == add_working_days(start, n, bank_holidays=calendar), (start, n)


def test_ns13_hours_and_sw26_6_calendar_days_and_ns4_weeks() -> None:
    """Hours are elapsed time; calendar days and weeks count every day, weekends and holidays included."""
    start = at("2026-12-24T16:30:00")
    assert at("2026-12-25T16:30:00") == due_at(start, 24, Unit.HOURS)
    assert at("2027-01-03T16:30:00") == due_at(start, 10, Unit.CALENDAR_DAYS)
    assert at("2027-01-07T16:30:00") == due_at(start, 2, Unit.WEEKS)


@pytest.mark.parametrize(
    ("now", "met_at", "state", "late"),
    [
        ("2026-11-02T09:00:00", None, DeadlineState.DUE, False),
        ("2026-11-14T09:00:00", None, DeadlineState.DUE_SOON, False),  # 3 days left, NS-4 warns at 72 h
        ("2026-11-16T09:00:01", None, DeadlineState.OVERDUE, False),
        ("2026-11-20T09:00:00", "2026-11-10T12:00:00", DeadlineState.MET, False),
        ("2026-11-20T09:00:00", "2026-11-18T12:00:00", DeadlineState.MET, True),
    ],
)
def test_ns04_meeting_due_due_soon_overdue_met(now: str, met_at: str | None, state: DeadlineState, late: bool) -> None:
    """NS-4: the step-down meeting is due within 2 weeks of the request."""
    status = evaluate(RULES["NS-4"], at("2026-11-02T09:00:00"), at(met_at) if met_at else None, at(now))
    assert (at("2026-11-16T09:00:00"), state, late) == (status.due_at, status.state, status.met_late)


def test_lu04_deadline_starts_with_acceptance_and_is_met_by_the_early_help_closure() -> None:
    """LU-4 applies to Luton step-ups; it starts at acknowledged and is met by source-closed."""
    timeline = [("requested", at("2026-11-01T09:00:00")), ("acknowledged", at("2026-11-01T10:00:00"))]
    now = at("2026-11-12T10:00:00")
    [status] = deadlines_for(load_deadlines(), "luton", "step-up", timeline, now)
    assert ("LU-4", DeadlineState.OVERDUE) == (status.rule_id, status.state)
    closed = [*timeline, ("source-closed", at("2026-11-08T10:00:00"))]
    [status] = deadlines_for(load_deadlines(), "luton", "step-up", closed, now)
    assert DeadlineState.MET == status.state
    assert [] == deadlines_for(load_deadlines(), "luton", "step-down", timeline, now)


def test_lu04_a_closure_cancelled_by_a_step_down_shows_cancelled_not_overdue() -> None:
    """LU-4 no longer applies once the closure scheduler cancelled it (the case stepped down again within
    the 10 days): the milestone closure-cancelled shows it cancelled on day 11, not overdue."""
    timeline = [
        ("acknowledged", at("2026-11-01T10:00:00")),
        ("milestone:closure-cancelled", at("2026-11-04T10:00:00")),
    ]
    [status] = deadlines_for(load_deadlines(), "luton", "step-up", timeline, at("2026-11-12T10:00:00"))
    assert ("LU-4", DeadlineState.CANCELLED) == (status.rule_id, status.state)
    early = [("milestone:closure-cancelled", at("2026-10-30T10:00:00")), timeline[0]]  # before the start: no effect
    [status] = deadlines_for(load_deadlines(), "luton", "step-up", early, at("2026-11-12T10:00:00"))
    assert DeadlineState.OVERDUE == status.state


def test_ns13_starts_only_with_its_milestone() -> None:
    """NS-13 has no router event: the milestone threshold-not-met starts it, conversation-recorded-on-ehm meets it."""
    start = at("2026-11-02T09:00:00")
    assert [] == deadlines_for(load_deadlines(), "north-somerset", "step-up", [("requested", start)], start)
    timeline = [("milestone:threshold-not-met", start)]
    [status] = deadlines_for(load_deadlines(), "north-somerset", "step-up", timeline, start + timedelta(hours=21))
    assert (DeadlineState.DUE_SOON, start + timedelta(hours=24)) == (status.state, status.due_at)
