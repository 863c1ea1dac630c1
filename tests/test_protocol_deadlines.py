"""Deadline lengths are stated once (deadlines.toml): the protocol check and the monitor time them alike."""

from __future__ import annotations

import time
import tomllib
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord

import router.flow
from contracts import TransferMessage, parse_event
from mappings import (
    MappingError,
    deadlines_by_rule,
    deadlines_for,
    due_at,
    load_deadlines,
    load_protocol,
    load_protocols,
)
from mappings._protocol import PROTOCOL_DIR, StatedDeadlineRule
from monitor import Store, deadlines
from router.flow import TransferFlow
from router.settings import RetrySettings
from tests.council_data import step_down, step_up, transfer


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
        # the monitor, given the start event at the request, falls due exactly when the protocol's limit is
        [status] = deadlines_for([monitor], council, monitor.direction, [(monitor.start, requested)], requested)
        assert status.due_at == rule.limit(requested), rule.id


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


class _Events:
    """A flow's sink that keeps the events it emits, as the tracker reads them off the events topic."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    async def emit(self, event: Any) -> None:
        self.events.append(parse_event(event.model_dump_json()))

    async def emit_encoded(self, transfer_id: str, event_type: str, value: bytes) -> None:
        self.events.append(parse_event(value))

    async def dead_letter(self, record: Any, failure: Any) -> None:
        return None

    async def send(self, topic: str, key: bytes | None, value: bytes | None, headers: Any) -> None:
        return None


async def _handled_at(doc: dict[str, Any], handled: datetime, monkeypatch: pytest.MonkeyPatch) -> Store:
    """The monitor's store after the router handled ``doc`` at ``handled`` (its events' clock)."""
    micros = (handled - datetime.fromtimestamp(0, handled.tzinfo)) // timedelta(microseconds=1)
    clock = SimpleNamespace(time_ns=lambda: micros * 1000, monotonic=time.monotonic)
    monkeypatch.setattr(router.flow, "time", clock)
    flow = TransferFlow(load_protocols(), {}, {}, RetrySettings(), "g")  # no connectors: the request is all we need
    raw = TransferMessage.model_validate(doc).model_dump_json().encode()
    sink = _Events()
    await flow.run(ConsumerRecord("t", 0, 0, 0, 0, b"k", raw, None, 1, len(raw), []), sink)  # type: ignore[arg-type]
    [requested] = [e for e in sink.events if e.event_type == "requested"]
    assert handled == requested.occurred_at
    store = Store(":memory:")
    store.apply(sink.events)
    return store


async def test_ns04_sw22_15_monitor_times_a_backlog_request_from_requested_at_as_the_protocol_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every deadline that starts at ``requested``: the router reads the request five weeks late (a backlog, a
    replay), and the monitor still falls due exactly when the protocol check's limit does, from ``requested_at``
    (not from when the router handled it); a stated due time at that limit passes the check, a minute later is held."""
    from_request = [r for r in load_deadlines() if r.start == "requested"]
    assert {"NS-4", "SW22-15"} <= {r.rule_id for r in from_request}
    checks = {r.id: (council, r) for council, r in _stated_deadline_rules()}
    requested = datetime.fromisoformat("2026-12-21T10:15:00+00:00")  # Mon, before Christmas and New Year
    handled = requested + timedelta(weeks=5)
    for rule in from_request:
        make = step_down if rule.direction == "step-down" else step_up
        doc = make(rule.council, requested_at=requested.isoformat())
        store = await _handled_at(doc, handled, monkeypatch)
        [status] = [s for _, s in deadlines(store, now=handled) if s.rule_id == rule.rule_id]
        assert (requested, due_at(requested, rule.length, rule.unit)) == (status.started_at, status.due_at), rule
        if rule.rule_id not in checks:
            continue  # a deadline only the monitor shows: the protocol would time it with due_at all the same
        council, check = checks[rule.rule_id]
        assert status.due_at == check.limit(requested), rule.rule_id
        protocol = load_protocol(council)
        held = [
            [v.rule_id for v in protocol.check(transfer(stated)) if v.rule_id == rule.rule_id]
            for due in (status.due_at, status.due_at + timedelta(minutes=1))
            for stated in [{**doc, "deadlines": [{"rule_id": rule.rule_id, "due": due.isoformat(), "what": "stated"}]}]
        ]
        assert [[], [rule.rule_id]] == held, rule.rule_id
