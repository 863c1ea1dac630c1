"""Deadline lengths are stated once (deadlines.toml): the protocol check and the monitor time them alike."""

from __future__ import annotations

import tomllib
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from mappings import MappingError, deadlines_by_rule, deadlines_for, load_protocol, load_protocols
from mappings._protocol import PROTOCOL_DIR, StatedDeadlineRule
from tests.council_data import step_down, transfer


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
