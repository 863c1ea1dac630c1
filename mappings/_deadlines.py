"""Protocol deadlines as data (``mappings/data/deadlines.toml``) and the pure rules that time them.

A deadline starts with one event of a transfer's timeline and is met by a later one, both
named in the data (an ``event_type``, or ``milestone:<name>`` for a step that no router
event marks and an operator or connector records). Its length is in hours, calendar days,
weeks or working days; working days skip weekends and England and Wales bank holidays
(the ``holidays`` package, subdivision England, whose bank holidays Wales shares). Day
arithmetic happens in UK local time (Europe/London), so a deadline set at 09:00 on a
Thursday falls due at 09:00 local time on the due day, whatever the clocks did meanwhile.

Everything here is pure: no I/O, no logging; ``now`` is always passed in.
"""

from __future__ import annotations

import tomllib
from collections.abc import Container, Iterable
from datetime import date, datetime, timedelta
from enum import StrEnum
from functools import cache, lru_cache
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

import holidays
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ._fieldmap import DATA_DIR, MappingError

DEADLINES_FILE = DATA_DIR / "deadlines.toml"
UK = ZoneInfo("Europe/London")

EventKey = Annotated[str, Field(pattern=r"^([a-z-]+|milestone:[a-z0-9-]+)$")]


class Unit(StrEnum):
    HOURS = "hours"
    CALENDAR_DAYS = "calendar-days"
    WEEKS = "weeks"
    WORKING_DAYS = "working-days"


class DeadlineState(StrEnum):
    DUE = "due"
    DUE_SOON = "due-soon"
    OVERDUE = "overdue"
    MET = "met"
    #: the deadline no longer applies (LU-4: the case stepped down again before early help closed it)
    CANCELLED = "cancelled"


class DeadlineRule(BaseModel):
    """One protocol deadline, as the data file states it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rule_id: Annotated[str, Field(pattern=r"^(SW26|SW22|LU|BA|NS)-\d+$")]
    council: str
    direction: Literal["step-up", "step-down"]
    what: str
    start: EventKey
    met_by: EventKey
    #: an event after which the deadline no longer applies (shown "cancelled", never overdue)
    cancelled_by: EventKey | None = None
    length: int = Field(gt=0)
    unit: Unit
    due_soon_hours: float = Field(ge=0)
    seed: str


class DeadlineStatus(BaseModel):
    """Where one transfer stands against one deadline (no personal data: ids and times)."""

    model_config = ConfigDict(frozen=True)

    rule_id: str
    what: str
    started_at: datetime
    due_at: datetime
    state: DeadlineState
    met_at: datetime | None = None
    met_late: bool = False


@cache
def england_and_wales_bank_holidays() -> Container[date]:
    """England and Wales bank holidays (substitute days included), any year asked for."""
    return holidays.country_holidays("GB", subdiv="ENG")


def is_working_day(day: date, bank_holidays: Container[date] | None = None) -> bool:
    closed = england_and_wales_bank_holidays() if bank_holidays is None else bank_holidays
    return day.weekday() < 5 and day not in closed


def add_working_days(start: datetime, n: int, bank_holidays: Container[date] | None = None) -> datetime:
    """``start`` plus ``n`` working days: the same local time on the n-th working day after start's day."""
    local = start.astimezone(UK)
    if bank_holidays is None:
        day = _nth_working_day(local.date(), n)
    else:
        day = _count_working_days(local.date(), n, bank_holidays)
    return datetime.combine(day, local.timetz().replace(tzinfo=None), tzinfo=UK).astimezone(start.tzinfo)


def _count_working_days(day: date, n: int, bank_holidays: Container[date]) -> date:
    counted = 0
    while counted < n:
        day += timedelta(days=1)
        if is_working_day(day, bank_holidays):
            counted += 1
    return day


@lru_cache(maxsize=4096)
def _nth_working_day(day: date, n: int) -> date:
    """The n-th working day after ``day`` (England and Wales): one walk per start day and length.

    Walking the days costs ~25 us for ten working days (the bank-holiday lookups); a protocol check
    and a deadline view ask it for many transfers that started on the same day.
    """
    return _count_working_days(day, n, england_and_wales_bank_holidays())


def due_at(start: datetime, length: int, unit: Unit, bank_holidays: Container[date] | None = None) -> datetime:
    """When a deadline of ``length`` ``unit`` that started at ``start`` falls due."""
    if start.tzinfo is None:
        raise ValueError("start must carry a time zone")
    if unit is Unit.HOURS:
        return start + timedelta(hours=length)
    if unit is Unit.WORKING_DAYS:
        return add_working_days(start, length, bank_holidays)
    days = length * 7 if unit is Unit.WEEKS else length
    local = start.astimezone(UK)
    return datetime.combine(
        local.date() + timedelta(days=days), local.timetz().replace(tzinfo=None), tzinfo=UK
    ).astimezone(start.tzinfo)


def evaluate(
    rule: DeadlineRule,
    started_at: datetime,
    met_at: datetime | None,
    now: datetime,
    bank_holidays: Container[date] | None = None,
    cancelled_at: datetime | None = None,
) -> DeadlineStatus:
    """Due, due soon, overdue, met or cancelled, at ``now``."""
    due = due_at(started_at, rule.length, rule.unit, bank_holidays)
    if met_at is not None:
        state, late = DeadlineState.MET, met_at > due
    elif cancelled_at is not None:
        state, late = DeadlineState.CANCELLED, False
    elif now > due:
        state, late = DeadlineState.OVERDUE, False
    elif due - now <= timedelta(hours=rule.due_soon_hours):
        state, late = DeadlineState.DUE_SOON, False
    else:
        state, late = DeadlineState.DUE, False
    return DeadlineStatus(
        rule_id=rule.rule_id,
        what=rule.what,
        started_at=started_at,
        due_at=due,
        state=state,
        met_at=met_at,
        met_late=late,
    )


def deadlines_for(
    rules: Iterable[DeadlineRule],
    council: str | None,
    direction: str | None,
    timeline: Iterable[tuple[str, datetime]],
    now: datetime,
    bank_holidays: Container[date] | None = None,
) -> list[DeadlineStatus]:
    """A transfer's deadlines from its timeline of ``(event key, at)``, in time order.

    ``at`` is the instant the event starts or meets a deadline: for ``requested``, the transfer's
    ``requested_at`` (as the protocol check times it), for every other event when it occurred
    (the monitor's ``Store.timelines``).

    A deadline shows once its start event happened; the first matching event at or after
    the start meets it, and a ``cancelled_by`` event at or after the start (if not met) cancels it.
    Deadlines that have not started are not shown.
    """
    events = sorted(timeline, key=lambda e: e[1])
    out: list[DeadlineStatus] = []
    for rule in rules:
        if rule.council != council or rule.direction != direction:
            continue
        start = next((at for key, at in events if key == rule.start), None)
        if start is None:
            continue
        met = next((at for key, at in events if key == rule.met_by and at >= start), None)
        cancelled = next((at for key, at in events if key == rule.cancelled_by and at >= start), None)
        out.append(evaluate(rule, start, met, now, bank_holidays, cancelled))
    return out


@cache
def load_deadlines() -> tuple[DeadlineRule, ...]:
    """Every protocol deadline shipped in ``mappings/data/deadlines.toml``."""
    try:
        doc = tomllib.loads(DEADLINES_FILE.read_text(encoding="utf-8"))
        rules = tuple(DeadlineRule.model_validate(d) for d in doc["deadline"])
    except (ValidationError, KeyError, tomllib.TOMLDecodeError) as exc:
        raise MappingError(f"{DEADLINES_FILE.name}: {exc}") from exc
    ids = [r.rule_id for r in rules]
    if len(ids) != len(set(ids)):
        raise MappingError(f"{DEADLINES_FILE.name}: a rule id has more than one [[deadline]] (one length per rule)")
    return rules


_FIELD_PATH = Field(pattern=r"^[a-z_]+(\.[a-z_]+)*$")


class _MessageTimes(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    message_times: dict[EventKey, Annotated[str, _FIELD_PATH]]


@cache
def message_times() -> dict[str, str]:
    """Start event -> the transfer message's field that states its instant (``[message_times]``).

    The protocol check starts a deadline at that field; a deadline whose start event is not here
    (it happens after the request: acknowledged, allocated, source-closed) is not checked by it.
    """
    try:
        doc = tomllib.loads(DEADLINES_FILE.read_text(encoding="utf-8"))
        return dict(_MessageTimes.model_validate({"message_times": doc.get("message_times", {})}).message_times)
    except (ValidationError, tomllib.TOMLDecodeError) as exc:
        raise MappingError(f"{DEADLINES_FILE.name}: [message_times]: {exc}") from exc


@cache
def deadlines_by_rule() -> dict[str, DeadlineRule]:
    """The shipped deadlines by rule id (a rule id has one deadline)."""
    return {r.rule_id: r for r in load_deadlines()}
