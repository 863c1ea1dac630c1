"""North Somerset's step-up rules (NS-4, NS-9, NS-10, NS-12) and the rules every protocol shares (G1-G4)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from contracts import CaseSystem, Council, TransferMessage
from mappings import Facts, StepDownMemory, load_protocol, load_protocols
from router.flow import _notice_of
from tests.council_data import exemption, step_down, step_up, step_up_s47, transfer

NS = load_protocol(Council.NORTH_SOMERSET)
ALL = load_protocols()


def _held(t: TransferMessage) -> list[str]:
    return [v.rule_id for v in ALL[t.council].check(t, Facts())]


def test_ns04_step_down_meeting_no_later_than_two_weeks() -> None:
    """NS-4: a stated step-down meeting later than 14 days after the request is held."""
    t = transfer(step_down("north-somerset"))
    late = (t.requested_at + timedelta(days=15)).isoformat()
    doc = step_down("north-somerset", deadlines=[{"rule_id": "NS-4", "due": late, "what": "step-down meeting"}])
    assert ["NS-4"] == _held(transfer(doc))


def test_ns09_step_up_carries_the_step_up_form_and_case_notes() -> None:
    """NS-9: the EHM step-up goes with the Step-Up request form and the case notes, to the Front Door on LCS."""
    assert [] == _held(transfer(step_up("north-somerset")))
    assert ["NS-9"] == _held(transfer(step_up("north-somerset", documents=[])))
    route = NS.route(transfer(step_up("north-somerset")), Facts())
    assert (CaseSystem.LCS, "Front Door") == (route.system, route.team)


def test_ns10_recent_social_worker_is_the_first_contact() -> None:
    """NS-10: a social worker less than 3 months ago is named as the step-up's first contact."""
    t = transfer(step_up("north-somerset"))
    recent = StepDownMemory(
        "ns-sd-1", "north-somerset", t.requested_at - timedelta(days=30), "FSS Team", "Riley Notreal"
    )
    old = StepDownMemory("ns-sd-0", "north-somerset", t.requested_at - timedelta(days=120), "FSS Team", "Sam Former")
    route = NS.route(t, Facts(history=(old, recent)))
    assert ("Riley Notreal", ["NS-10"]) == (route.first_contact, route.rule_ids)
    assert NS.route(t, Facts(history=(old,))).first_contact is None


def test_ns11_step_up_without_consent_where_significant_harm_may_be_met() -> None:
    """NS-11 / G1: a step-up with a manager's significant-harm exemption needs no consent."""
    assert ["G1"] == _held(transfer(step_up("north-somerset", consent=None)))
    s47 = step_up_s47("north-somerset", consent=None, consent_exemption=exemption("Team Manager"))
    assert [] == _held(transfer(s47))


def test_ns12_accepted_step_up_closes_the_ehm_episode_with_a_case_note() -> None:
    """NS-12: on acceptance the EHM episode closes, its closure note saying recording moves to LCS."""
    closure = NS.closure(transfer(step_up("north-somerset")))
    assert closure is not None and ["NS-12"] == closure.rule_ids
    assert "LCS" in closure.reason
    assert [] == NS.keeps_open(transfer(step_up("north-somerset")))


def test_g1_exemption_is_only_for_significant_harm_never_for_a_step_down() -> None:
    """G1: an exemption is for a transfer to s.47; a step-down (from s.17 or from s.47) needs consent."""
    doc = step_down("barnsley", consent=None, consent_exemption=exemption("Team Manager"))
    assert ["G1"] == _held(transfer(doc))
    doc["pathway"]["from_level"] = "child-protection-s47"
    assert ["G1"] == _held(transfer(doc))


def test_g2_every_council_holds_a_transfer_without_a_management_decision() -> None:
    """G2: each council's step-down without the manager's decision is held, naming that council's rule."""
    expected = {
        "swindon": "SW26-4",
        "swindon-2022": "G2",
        "luton": "LU-6",
        "barnsley": "BA-5",
        "north-somerset": "NS-1",
    }
    for council, rule in expected.items():
        held = _held(transfer(step_down(council, management_decision=None)))
        assert (council, [rule] if rule else []) == (council, held)


def test_g4_notices_carry_no_case_documents_and_withheld_documents_are_flagged() -> None:
    """G4: an LU-7 notice carries no documents or unrelated people; BA-9 withholds documents."""
    t = transfer(step_down("luton"))
    notice = _notice_of(t, ["social_worker", "manager"])
    assert ([], t.professionals.social_worker) == (notice.documents, notice.professionals.social_worker)
    assert notice.transfer_id != t.transfer_id
    doc: dict[str, Any] = step_down("barnsley")
    doc["professionals"] = {}
    assert ALL[Council.BARNSLEY].route(transfer(doc), Facts()).withhold_documents


def test_a_level_code_without_translation_is_named_but_a_childs_code_is_not(tmp_path: Any) -> None:
    """A mapping's translation table names the code it cannot translate (a level, a reason code), never the
    value of a child's field (personal data, even as a code) nor free text."""
    from mappings import MappingError, load_mapping

    path = tmp_path / "m.toml"
    path.write_text(
        '[mapping]\nid = "m"\nsource = "lcs"\ntarget = "transfer"\n'
        '[[field]]\nto = "pathway.to_level"\nfrom = "level"\nvalues = { early_help = "early-help" }\n'
        '[[field]]\nto = "child.gender"\nfrom = "gender"\nvalues = { F = "female" }\n'
    )
    mapping = load_mapping(path)
    with pytest.raises(MappingError) as level:
        mapping.apply({"level": "family_help", "gender": "F"})
    assert "field 'pathway.to_level' has no translation for 'family_help' (allowed: early_help)" in str(level.value)
    with pytest.raises(MappingError) as gender:
        mapping.apply({"level": "early_help", "gender": "X"})
    assert "field 'child.gender' has no translation for its value (allowed: F)" in str(gender.value)
    with pytest.raises(MappingError) as text:
        mapping.apply({"level": "lives with gran; see notes", "gender": "F"})
    assert "no translation for its value" in str(text.value) and "gran" not in str(text.value)
