"""Deadline lengths are stated once (deadlines.toml): the protocol check and the monitor time them alike."""

from __future__ import annotations

import json
import tomllib
import typing
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from contracts import parse_event
from contracts._events import TransferEvent
from mappings import (
    DeadlineRule,
    MappingError,
    deadlines_by_rule,
    deadlines_for,
    due_at,
    load_deadlines,
    load_protocol,
    load_protocols,
    message_times,
)
from mappings._protocol import PROTOCOL_DIR, StatedDeadlineRule
from monitor import Store, deadlines
from tests.council_data import step_down, step_up, transfer
from tests.monitor_support import router_events


def _stated_deadline_rules() -> list[tuple[str, StatedDeadlineRule]]:
    return [
        (p.council.value, r)
        for p in load_protocols().values()
        for r in p.spec.rule
        if isinstance(r, StatedDeadlineRule)
    ]


def test_sw26_06_ns04_ba12_ba14_sw22_13_sw22_15_protocol_deadlines_are_the_monitors() -> None:
    """Every protocol deadline rule is the monitor's deadline: same council, direction, length, unit, start event."""
    rules = _stated_deadline_rules()
    assert {"SW26-6", "NS-4", "BA-12", "BA-14", "SW22-13", "SW22-15"} == {r.id for _, r in rules}
    requested = datetime.fromisoformat("2026-12-18T10:15:00+00:00")  # a Friday a week before Christmas
    for council, rule in rules:
        monitor = deadlines_by_rule()[rule.id]
        assert (council, monitor.direction) == (monitor.council, str(rule.applies_to.direction)), rule.id
        assert (monitor.length, monitor.unit, monitor.start) == (
            rule.deadline.length,
            rule.deadline.unit,
            rule.deadline.start,
        )
        # the monitor, given the start event at the instant the message states it, falls due at the protocol's limit
        make = step_down if monitor.direction == "step-down" else step_up
        t = transfer(make(council, requested_at=requested.isoformat()))
        [status] = deadlines_for([monitor], council, monitor.direction, [(monitor.start, requested)], requested)
        assert (status.due_at if monitor.start in message_times() else None) == rule.limit(t), rule.id


def test_sw26_06_ns04_ba12_ba14_sw22_13_sw22_15_protocol_files_state_no_length() -> None:
    """A protocol file's deadline rule names the rule only: no days, weeks or unit of its own."""
    for path in sorted(PROTOCOL_DIR.glob("*.toml")):
        for rule in tomllib.loads(path.read_text(encoding="utf-8"))["rule"]:
            if rule["check"] == "deadline":
                assert set() == {"days", "working_days", "length", "unit", "start"} & set(rule), (path.name, rule["id"])


def test_sw22_15_protocol_check_skips_christmas_bank_holidays() -> None:
    """SW22-15: 10 working days from Mon 21 Dec 2026 skip Christmas, the Boxing Day substitute and New Year."""
    sw22 = load_protocol("swindon-2022")
    doc = step_down("swindon-2022", requested_at="2026-12-21T10:15:00Z")

    def held(due: datetime) -> list[str]:
        stated = {**doc, "deadlines": [{"rule_id": "SW22-15", "due": due.isoformat(), "what": "CIN review minutes"}]}
        return [v.rule_id for v in sw22.check(transfer(stated)) if v.rule_id == "SW22-15"]

    limit = datetime.fromisoformat("2027-01-07T10:15:00+00:00")
    assert [] == held(limit)
    assert [] == held(datetime.fromisoformat("2027-01-05T10:15:00+00:00"))  # weekdays only would stop on 4 Jan
    assert ["SW22-15"] == held(limit + timedelta(minutes=1))


def test_ns04_protocol_deadline_stating_its_own_length_is_refused(tmp_path: Path) -> None:
    """NS-4: a protocol file that states a length again is refused, naming the file, line and rule."""
    head = 'id = "x"\ncouncil = "north-somerset"\nseed = "004"\n'
    rule = '[[rule]]\nid = "NS-4"\ncheck = "deadline"\nmessage = "m"\nfix = "f"\n'
    path = tmp_path / "broken.toml"
    path.write_text(head + rule + "days = 14\n")
    with pytest.raises(MappingError, match=r"broken\.toml: line 9: rule NS-4 \(#1\): days: Extra inputs"):
        load_protocol(path)
    path.write_text(head + rule.replace("NS-4", "NS-5"))
    with pytest.raises(MappingError, match=r"broken\.toml: line 4: rule NS-5 \(#1\).*not in deadlines\.toml"):
        load_protocol(path)


async def _handled_at(doc: dict[str, Any], handled: datetime, monkeypatch: pytest.MonkeyPatch) -> Store:
    """The monitor's store after the router handled ``doc`` at ``handled`` (its events' clock)."""
    events = [parse_event(value) for _, value in await router_events(doc, handled, monkeypatch)]
    [requested] = [e for e in events if e.event_type == "requested"]
    assert handled == requested.occurred_at
    store = Store(":memory:")
    store.apply(events)
    return store


def _start_event(rule: DeadlineRule, doc: dict[str, Any], at: datetime) -> Any:
    """The event that starts ``rule``'s deadline for ``doc``'s transfer, occurring at ``at``."""
    key = rule.start
    body: dict[str, Any] = {
        "event_id": f"{doc['transfer_id']}:{key}",
        "transfer_id": doc["transfer_id"],
        "council": doc["council"],
        "occurred_at": at.isoformat(),
    }
    if key.startswith("milestone:"):
        body.update(event_type="milestone", milestone=key.removeprefix("milestone:"))
    elif key == "source-closed":
        body.update(event_type=key, source_system=doc["pathway"]["from_system"], source_reference="SRC-1")
    else:  # acknowledged, allocated: the target's
        body.update(event_type=key, target_system=doc["pathway"]["to_system"], target_reference="TGT-1")
        if key == "allocated":
            body["episode_reference"] = "EP-1"
    return parse_event(json.dumps(body))


def test_every_message_time_is_carried_by_its_event_for_the_monitor() -> None:
    """Each start event the message states a time for carries that time, so the monitor starts the clock there too."""
    assert {"requested": "requested_at"} == message_times()
    models = typing.get_args(typing.get_args(TransferEvent)[0])
    for key, path in message_times().items():
        [event] = [m for m in models if m.model_fields["event_type"].default == key]
        assert path.split(".")[-1] in event.model_fields, key


async def test_sw26_06_ns04_ba12_ba14_sw22_13_sw22_15_ns13_lu04_every_deadline_one_clock_for_a_backlog(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every deadline of deadlines.toml, for a transfer the router reads five weeks after it was requested (a
    backlog, a replay): the monitor starts the clock at the rule's own start event, at the instant the message
    states it (``requested``: ``requested_at``, not when the router handled it) or else when the event happened;
    the protocol check's limit is the monitor's due time where the message states the start (a stated due at it
    passes, a minute later is held), and where it does not (acknowledged, allocated, source-closed, a milestone)
    the check has no limit and holds no stated due: the start is not known when it runs."""
    rules = load_deadlines()
    assert {r.rule_id for r in rules} >= {"SW26-6", "NS-4", "BA-12", "BA-14", "SW22-13", "SW22-15"}
    checks = {r.id: (council, r) for council, r in _stated_deadline_rules()}
    requested = datetime.fromisoformat("2026-12-21T10:15:00+00:00")  # Mon, before Christmas and New Year
    handled = requested + timedelta(weeks=5)
    started_later = handled + timedelta(days=1, hours=3)  # acknowledged, allocated, closed: after the late handling
    for rule in rules:
        make = step_down if rule.direction == "step-down" else step_up
        doc = make(rule.council, requested_at=requested.isoformat())
        store = await _handled_at(doc, handled, monkeypatch)
        stated = rule.start in message_times()
        if not stated:
            store.apply([_start_event(rule, doc, started_later)])
        start = requested if stated else started_later
        [status] = [s for _, s in deadlines(store, now=handled) if s.rule_id == rule.rule_id]
        assert (start, due_at(start, rule.length, rule.unit)) == (status.started_at, status.due_at), rule.rule_id
        if rule.rule_id not in checks:
            assert not stated, rule.rule_id  # a deadline only the monitor shows (NS-13, LU-4) starts after the request
            continue
        council, check = checks[rule.rule_id]
        assert (status.due_at if stated else None) == check.limit(transfer(doc)), rule.rule_id
        protocol = load_protocol(council)
        held = [
            [v.rule_id for v in protocol.check(transfer(dated)) if v.rule_id == rule.rule_id]
            for due in (status.due_at, status.due_at + timedelta(minutes=1), requested + timedelta(weeks=30))
            for dated in [{**doc, "deadlines": [{"rule_id": rule.rule_id, "due": due.isoformat(), "what": "stated"}]}]
        ]
        assert ([[], [rule.rule_id], [rule.rule_id]] if stated else [[], [], []]) == held, rule.rule_id
