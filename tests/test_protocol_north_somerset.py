"""North Somerset's protocol (seed 004) as data: each rule checked without a broker."""

from __future__ import annotations

from typing import Any

import pytest

from contracts import Council, RecordState, TransferMessage
from mappings import Facts, MappingError, load_protocol
from tests.support import example

NS = load_protocol(Council.NORTH_SOMERSET)


def _t(**changes: Any) -> TransferMessage:
    return TransferMessage.model_validate(example(**changes))


def _violated(t: TransferMessage, facts: Facts | None = None) -> list[str]:
    return [v.rule_id for v in NS.check(t, facts or Facts())]


def test_valid_step_down_meets_every_rule() -> None:
    """The synthetic North Somerset example breaks no rule."""
    assert [] == _violated(_t())


def test_ns01_step_down_without_management_oversight_is_held() -> None:
    """NS-1: no manager's decision and rationale on LCS, no step-down."""
    assert ["NS-1"] == _violated(_t(management_decision=None))


def test_ns06_ns08_step_down_without_notes_and_plan_is_held() -> None:
    """NS-6 and NS-8: meeting notes and plan must travel with the step-down."""
    doc = example()
    doc["documents"] = [d for d in doc["documents"] if d["type"] != "plan"]
    assert ["NS-6", "NS-8"] == _violated(TransferMessage.model_validate(doc))


def test_ns06_step_down_without_support_leader_name_is_held() -> None:
    """NS-6: the Support Leader's name is required."""
    doc = example()
    doc["professionals"].pop("support_leader")
    assert ["NS-6"] == _violated(TransferMessage.model_validate(doc))


def test_ns07_closed_lcs_record_cannot_be_stepped_down() -> None:
    """NS-7: a record closed on LCS (in the message or now, on LCS) holds the transfer and alerts."""
    closed_now = NS.check(_t(), Facts(source_state=RecordState.CLOSED))
    assert ["NS-7"] == [v.rule_id for v in closed_now]
    assert ["NS-7"] == NS.alerting(closed_now)
    doc = example()
    doc["source_record"]["state"] = "closed"
    assert ["NS-7"] == _violated(TransferMessage.model_validate(doc))


def test_g1_step_down_without_consent_or_exemption_is_held() -> None:
    """G1: consent (with information sharing in scope) or a recorded exemption."""
    assert ["G1"] == _violated(_t(consent=None))
    doc = example()
    doc["consent"]["scope"] = ["referral"]
    assert ["G1"] == _violated(TransferMessage.model_validate(doc))


def test_ns11_significant_harm_exemption_does_not_replace_consent_on_a_step_down() -> None:
    """NS-11: consent is not required where significant harm may be met: a step-up to s.47, never a step-down.

    A step-down from child protection to EHM still needs the family's consent (G1), even with a
    Team Manager's recorded exemption.
    """
    doc = example(consent=None)
    doc["pathway"]["from_level"] = "child-protection-s47"
    doc["consent_exemption"] = {
        "reason": "significant-harm-s47",
        "decided_by": {"name": "Dana Dutymanager", "role": "Team Manager"},
        "decided_on": "2026-10-30",
    }
    held = NS.check(TransferMessage.model_validate(doc), Facts())
    assert ["G1"] == [v.rule_id for v in held]
    assert "only for a transfer to child-protection-s47, not early-help" in held[0].message


def test_ns02_routes_to_locality_support_leader_or_team_manager_when_away() -> None:
    """NS-2: the locality's Support Leader; the locality team manager while the leader is away."""
    t = _t()
    present = NS.route(t, Facts(leader_away=False))
    away = NS.route(t, Facts(leader_away=True))
    assert ("support-leader", "North", ["NS-2"]) == (present.role, present.locality, present.rule_ids)
    assert ("team-manager", "North", ["NS-2"]) == (away.role, away.locality, away.rule_ids)


def test_ns02_unknown_locality_is_an_error_naming_the_rule() -> None:
    """NS-2: a locality outside North, East, South cannot be routed."""
    doc = example()
    doc["child"]["locality"] = "West"
    with pytest.raises(MappingError, match="NS-2"):
        NS.route(TransferMessage.model_validate(doc), Facts())


def test_ns14_family_hub_universal_step_down_sends_no_record() -> None:
    """NS-14: a supported step-down to universal in a Family Hub needs no notes and sends no record."""
    doc = example(family_hub_universal=True, documents=[])
    doc["pathway"]["to_level"] = "universal"
    doc["professionals"] = {}
    t = TransferMessage.model_validate(doc)
    assert ([], "NS-14") == (_violated(t), NS.sends_no_record(t))
    assert NS.sends_no_record(_t()) is None


def test_protocol_file_errors_name_the_file_and_the_rule(tmp_path: Any) -> None:
    """A protocol file with a bad rule is refused at load, naming the file and the rule."""
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'id = "x"\ncouncil = "north-somerset"\nseed = "004"\n'
        '[[rule]]\nid = "NS-6"\ncheck = "documents"\ndocuments = ["napkin"]\nmessage = "m"\nfix = "f"\n'
    )
    with pytest.raises(MappingError, match=r"bad\.toml: line 7: rule NS-6 \(#1\): documents"):
        load_protocol(bad)


def test_ns02_unknown_locality_is_named_in_the_error() -> None:
    """NS-2: the error names the locality that is not one of the protocol's, and the field."""
    doc = example()
    doc["child"]["locality"] = "West"
    with pytest.raises(MappingError) as caught:
        NS.route(TransferMessage.model_validate(doc), Facts())
    assert "locality 'West' is not one of North, East, South (field child.locality)" in str(caught.value)


def test_ns02_a_locality_that_is_not_a_code_is_not_echoed() -> None:
    """NS-2: free text typed where the locality code belongs (it may be an address) is not repeated."""
    doc = example()
    doc["child"]["locality"] = "12 Example Road, Weston; lives with gran"
    with pytest.raises(MappingError) as caught:
        NS.route(TransferMessage.model_validate(doc), Facts())
    assert "a locality that is not a code is not one of North, East, South" in str(caught.value)
    assert "Example Road" not in str(caught.value)


def test_ns06_ns08_missing_document_type_is_named_in_the_violation() -> None:
    """NS-6 / NS-8: the violation and the dead-letter detail name the missing document type."""
    doc = example()
    doc["documents"] = [d for d in doc["documents"] if d["type"] != "plan"]
    t = TransferMessage.model_validate(doc)
    held = NS.check(t, Facts())
    assert all(v.message.endswith("(missing document type plan)") for v in held), [v.message for v in held]
    assert {"NS-6": "missing document type plan", "NS-8": "missing document type plan"} == NS.details(t)
    assert {} == NS.details(_t())  # nothing missing: nothing named


def test_ns01_missing_management_decision_is_named() -> None:
    """NS-1: the violation says what is missing (no decision), not just the rule."""
    [held] = NS.check(_t(management_decision=None), Facts())
    assert ("NS-1", "no management decision") == (held.rule_id, NS.details(_t(management_decision=None))["NS-1"])
    assert held.message.endswith("(no management decision)")


async def test_ns02_ns06_router_on_kafka_dead_letters_naming_the_locality_and_the_missing_document_type(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    """On a real broker: the dead letters' reasons name the unknown locality (NS-2) and the missing document type
    (NS-6, NS-8), codes only: no name, no NHS number."""
    import json

    from connectors.memory import MemorySource, MemoryTarget
    from contracts import CaseSystem
    from router import Topics
    from tests.support import ns_transfer, produce, read, running_router

    topics = Topics(topic_prefix)
    west = ns_transfer(1)
    west["child"]["locality"] = "West"
    no_plan = ns_transfer(2)
    no_plan["documents"] = [d for d in no_plan["documents"] if d["type"] != "plan"]
    items = [(f"lcs:LCS-{n}".encode(), json.dumps(d).encode()) for n, d in ((1, west), (2, no_plan))]
    async with running_router(
        kafka_bootstrap, topic_prefix, {CaseSystem.EHM: MemoryTarget()}, {CaseSystem.LCS: MemorySource()}
    ):
        await produce(kafka_bootstrap, topics.transfers, items)
        dead = await read(kafka_bootstrap, topics.dead_letter, lambda r: len(r) >= 2, timeout=60)
    reasons = {
        dict(d.headers)["casebridge.dlq.transfer.id"]: dict(d.headers)["casebridge.dlq.error.message"] for d in dead
    }
    assert b"locality 'West' is not one of North, East, South (field child.locality)" in reasons[b"ns-1"]
    assert reasons[b"ns-2"].startswith(b"protocol rules not met: NS-6 (missing document type plan)")
    assert b"NS-8 (missing document type plan)" in reasons[b"ns-2"]
    for reason in reasons.values():
        assert b"Robin" not in reason and b"999" not in reason
