"""G1 consent exemptions, per council: only for significant harm (a step-up to s.47), by a listed manager.

The seeds allow proceeding without consent only where significant harm may be met, decided by a
named manager: SW26-2 (a Contact Swindon Duty Manager), SW22-4 (a MASH Manager), NS-11 (North
Somerset's Team Manager / Front Door management), and G1 for Luton (EH managers) and Barnsley (the
social care Team Manager). Each council: an exemption by an unlisted role is held, an exemption for
a step-up to child in need (s.17) is held, a listed manager's s.47 exemption passes. The EHM step-up
mapping carries the reason EHM states, never a constant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from casebridge.scenarios import ehm_exemption
from contracts import Council, Direction, ServiceLevel, TransferMessage
from mappings import Facts, MappingError, load_mapping, load_protocol, load_protocols
from mappings._protocol import PROTOCOL_DIR, ConsentRule, ManagementDecisionRule
from tests.council_data import exemption, step_down, step_up, step_up_s47, transfer
from tests.support import Systems

ALL = load_protocols()
EHM_STEPUP = load_mapping("ehm-stepup")


def _held(council: str, doc: dict[str, Any]) -> list[str]:
    return [v.rule_id for v in ALL[Council(council)].check(transfer(doc), Facts())]


def _unlisted(council: str) -> dict[str, Any]:
    return step_up_s47(council, consent=None, consent_exemption=exemption("Family Support Worker"))


def _s17(council: str, role: str) -> dict[str, Any]:
    return step_up(council, consent=None, consent_exemption=exemption(role))


def _s47(council: str, role: str) -> dict[str, Any]:
    return step_up_s47(council, consent=None, consent_exemption=exemption(role))


# -- Swindon 2026 (seed 000): SW26-2, a Contact Swindon Duty Manager -------------------------------


def test_sw26_02_exemption_by_an_unlisted_role_is_held() -> None:
    """SW26-2: a family support worker cannot decide to proceed without consent, even for s.47."""
    assert ["SW26-2"] == _held("swindon", _unlisted("swindon"))
    assert ["SW26-2"] == _held("swindon", _s47("swindon", "Team Manager"))


def test_sw26_02_exemption_for_a_s17_step_up_is_held() -> None:
    """SW26-2: a Duty Manager's exemption does not stand in for consent on a step-up to child in need."""
    assert ["SW26-2"] == _held("swindon", _s17("swindon", "Duty Manager"))


def test_sw26_02_duty_managers_s47_exemption_passes() -> None:
    """SW26-2: a Duty Manager's recorded s.47 exemption: the step-up proceeds without consent."""
    assert [] == _held("swindon", _s47("swindon", "Contact Swindon Duty Manager"))


# -- Swindon 2022 (seed 001): SW22-4, a MASH Manager ---------------------------------------------


def test_sw22_04_exemption_by_an_unlisted_role_is_held() -> None:
    """SW22-4: only a MASH manager decides to proceed without consent (a line manager cannot)."""
    assert ["SW22-4"] == _held("swindon-2022", _unlisted("swindon-2022"))
    assert ["SW22-4"] == _held("swindon-2022", _s47("swindon-2022", "Line Manager"))


def test_sw22_04_exemption_for_a_s17_step_up_is_held() -> None:
    """SW22-4: a MASH manager's exemption is for significant harm (s.47), not a step-up to s.17."""
    assert ["SW22-4"] == _held("swindon-2022", _s17("swindon-2022", "MASH Manager"))


def test_sw22_04_mash_managers_s47_exemption_passes() -> None:
    """SW22-4: a MASH manager's s.47 exemption: the step-up proceeds without consent."""
    assert [] == _held("swindon-2022", _s47("swindon-2022", "MASH Manager"))


# -- North Somerset (seed 004): G1 / NS-11, the Team Manager or Front Door management --------------


def test_g1_ns11_north_somerset_exemption_by_an_unlisted_role_is_held() -> None:
    """NS-11 / G1: an exemption 'decided' by a family support worker (or a Support Leader) is held."""
    assert ["G1"] == _held("north-somerset", _unlisted("north-somerset"))
    assert ["G1"] == _held("north-somerset", _s47("north-somerset", "Family Wellbeing Support Leader"))


def test_g1_ns11_north_somerset_exemption_for_a_s17_step_up_is_held() -> None:
    """NS-11 / G1: consent is not required only where significant harm may be met: not for s.17."""
    assert ["G1"] == _held("north-somerset", _s17("north-somerset", "Team Manager"))


def test_g1_ns11_north_somerset_managers_s47_exemption_passes() -> None:
    """NS-11 / G1: a Team Manager's or the Front Door manager's s.47 exemption passes."""
    assert [] == _held("north-somerset", _s47("north-somerset", "Team Manager"))
    assert [] == _held("north-somerset", _s47("north-somerset", "Front Door Manager"))


# -- Luton (seed 002): G1, EH Manager / EH Deputy Manager -----------------------------------------


def test_g1_luton_exemption_by_an_unlisted_role_is_held() -> None:
    """G1 (Luton): only an EH manager or deputy records the exemption, not the allocated EH worker."""
    assert ["G1"] == _held("luton", _unlisted("luton"))
    assert ["G1"] == _held("luton", _s47("luton", "EH Worker"))


def test_g1_luton_exemption_for_a_s17_step_up_is_held() -> None:
    """G1 (Luton): an EH manager's exemption for a step-up to child in need is held."""
    assert ["G1"] == _held("luton", _s17("luton", "EH Manager"))


def test_g1_luton_managers_s47_exemption_passes() -> None:
    """G1 (Luton): an EH Manager's or EH Deputy Manager's s.47 exemption passes."""
    assert [] == _held("luton", _s47("luton", "EH Manager"))
    assert [] == _held("luton", _s47("luton", "EH Deputy Manager"))


# -- Barnsley (seed 003): G1, the social care Team Manager ----------------------------------------


def test_g1_barnsley_exemption_by_an_unlisted_role_is_held() -> None:
    """G1 (Barnsley): a family support worker or social worker cannot record the exemption."""
    assert ["G1"] == _held("barnsley", _unlisted("barnsley"))
    assert ["G1"] == _held("barnsley", _s47("barnsley", "Social Worker"))


def test_g1_barnsley_exemption_for_a_s17_step_up_is_held() -> None:
    """G1 (Barnsley): a Team Manager's exemption for a step-up to child in need is held."""
    assert ["G1"] == _held("barnsley", _s17("barnsley", "Team Manager"))


def test_g1_barnsley_team_managers_s47_exemption_passes() -> None:
    """G1 (Barnsley): the social care Team Manager's s.47 exemption passes."""
    assert [] == _held("barnsley", _s47("barnsley", "Social Care Service Team Manager"))


# -- whole role names, per council: "Assistant Team Manager" is not a "Team Manager" ------------------


def _exemption_roles(council: str) -> tuple[str, list[str]]:
    [rule] = [r for r in ALL[Council(council)].spec.rule if isinstance(r, ConsentRule) and r.accepts_exemptions]
    return rule.id, rule.exemption_roles


def _whole_role_names_only(council: str) -> None:
    """Each listed manager's s.47 exemption passes whatever the case and spacing; a longer or negated title that
    contains the name is held (the consent rule's id)."""
    rule_id, roles = _exemption_roles(council)
    for role in roles:
        for same in (role, role.upper(), f"  {role}  ", role.replace(" ", "   ")):
            assert [] == _held(council, _s47(council, same)), same
        for title in (f"Assistant {role}", f"not the {role}", f"{role} (acting)", f"Deputy {role}s"):
            if title.casefold() not in {r.casefold() for r in roles}:
                assert [rule_id] == _held(council, _s47(council, title)), title


def test_sw26_02_exemption_role_is_a_whole_listed_title_not_part_of_one() -> None:
    """SW26-2: "Assistant Duty Manager" or "not the Duty Manager" is not the Duty Manager; "duty  MANAGER" is."""
    assert ("SW26-2", ["Duty Manager", "Contact Swindon Duty Manager"]) == _exemption_roles("swindon")
    _whole_role_names_only("swindon")


def test_sw22_04_exemption_role_is_a_whole_listed_title_not_part_of_one() -> None:
    """SW22-4: "Assistant MASH Manager" is not a MASH Manager."""
    assert ("SW22-4", ["MASH Manager"]) == _exemption_roles("swindon-2022")
    _whole_role_names_only("swindon-2022")


def test_g1_ns11_north_somerset_exemption_role_is_a_whole_listed_title_not_part_of_one() -> None:
    """G1 / NS-11 (North Somerset): "Assistant Team Manager" is not the Team Manager."""
    assert ("G1", ["Team Manager", "Front Door Manager"]) == _exemption_roles("north-somerset")
    _whole_role_names_only("north-somerset")


def test_g1_luton_exemption_role_is_a_whole_listed_title_not_part_of_one() -> None:
    """G1 (Luton): "Assistant EH Manager" is not an EH Manager; the EH Deputy Manager is listed by name."""
    assert "EH Deputy Manager" in _exemption_roles("luton")[1]
    _whole_role_names_only("luton")


def test_g1_barnsley_exemption_role_is_a_whole_listed_title_not_part_of_one() -> None:
    """G1 (Barnsley): "Assistant Team Manager" is not the social care Team Manager."""
    assert ("G1", ["Team Manager", "Social Care Service Team Manager"]) == _exemption_roles("barnsley")
    _whole_role_names_only("barnsley")


def test_g2_sw26_01_decision_and_endorsement_roles_are_whole_titles_in_every_protocol() -> None:
    """Every management-decision rule with roles, and SW26-1's endorsement: a listed title (any case) holds, the
    same title with "Assistant" before it does not."""
    checked = []
    for council, protocol in ALL.items():
        for rule in protocol.spec.rule:
            if not isinstance(rule, ManagementDecisionRule) or not rule.roles:
                continue
            make = step_up if rule.applies_to.direction is Direction.STEP_UP else step_down
            doc = make("swindon")  # the rule reads the decision only: any council's synthetic transfer carries one
            doc["management_decision"]["forum"] = rule.forums[0] if rule.forums else "Panel"
            for role in rule.roles:
                doc["management_decision"]["decided_by"]["role"] = role.lower()
                assert rule.holds(transfer(doc), Facts()), (council, rule.id, role)
                doc["management_decision"]["decided_by"]["role"] = f"Assistant {role}"
                assert not rule.holds(transfer(doc), Facts()), (council, rule.id, role)
            checked.append(rule.id)
    assert {"SW22-2", "BA-5"} <= set(checked)
    doc = step_up("swindon")
    for role, routed in (("Contact Swindon Duty Manager", "referral"), ("Assistant Duty Manager", "contact")):
        doc["management_decision"]["decided_by"]["role"] = role
        assert routed == ALL[Council.SWINDON].route(transfer(doc), Facts()).role, role


# -- every council -----------------------------------------------------------------------------


def test_g1_every_council_lists_the_managers_and_the_s47_level_for_an_exemption() -> None:
    """G1: a consent rule that accepts exemptions names the reason, the s.47 level and the managers."""
    for council, protocol in ALL.items():
        # the illustrative Families First council's s.47 level is its multi-agency child protection team
        s47 = (
            ServiceLevel.MULTI_AGENCY_CHILD_PROTECTION
            if council is Council.FAMILIES_FIRST_EXAMPLE
            else ServiceLevel.CHILD_PROTECTION
        )
        for rule in protocol.spec.rule:
            if isinstance(rule, ConsentRule) and rule.exemption_allowed:
                assert ["significant-harm-s47"] == rule.exemption_reasons
                assert [s47] == rule.exemption_to_levels
                assert rule.exemption_roles


def test_g1_held_exemption_says_why_without_personal_data() -> None:
    """G1: the hold names what did not hold (the level, or the roles allowed), never the decider's name."""
    (level,) = ALL[Council.NORTH_SOMERSET].check(transfer(_s17("north-somerset", "Team Manager")), Facts())
    assert "only for a transfer to child-protection-s47, not child-in-need-s17" in level.message
    (role,) = ALL[Council.SWINDON].check(transfer(_unlisted("swindon")), Facts())
    assert "not decided by a Duty Manager" in role.message
    assert "Dutymanager" not in level.message + role.message


def test_g1_consent_rule_allowing_exemptions_without_roles_is_refused(tmp_path: Path) -> None:
    """G1: a consent rule naming the s.47 reason and level but no managers (anyone could exempt) does not load."""
    text = (PROTOCOL_DIR / "north-somerset.toml").read_text()
    broken = text.replace('exemption_roles = ["Team Manager", "Front Door Manager"]\n', "", 1)
    assert broken != text
    path = tmp_path / "north-somerset.toml"
    path.write_text(broken)
    with pytest.raises(MappingError, match=r"G1.*exemption_roles"):
        load_protocol(path)


def test_g1_consent_rule_naming_no_exemption_accepts_none(tmp_path: Path) -> None:
    """G1: a consent rule that names no reasons, levels or managers accepts no exemption at all."""
    text = (PROTOCOL_DIR / "north-somerset.toml").read_text()
    bare = text.replace(
        'exemption_reasons = ["significant-harm-s47"]\nexemption_to_levels = ["child-protection-s47"]\n'
        'exemption_roles = ["Team Manager", "Front Door Manager"]\n',
        "",
        1,
    )
    assert bare != text
    path = tmp_path / "north-somerset.toml"
    path.write_text(bare)
    (held,) = load_protocol(path).check(transfer(_s47("north-somerset", "Team Manager")), Facts())
    assert "G1" == held.rule_id and "no exemption is accepted here" in held.message


# -- the EHM step-up mapping: the reason EHM states ------------------------------------------------


def _ehm_source(to_level: str, consent_exemption: dict[str, Any] | None) -> dict[str, Any]:
    request: dict[str, Any] = {
        "request_id": "SUR-1",
        "episode_id": "EP-1",
        "created_at": "2026-11-20T10:00:00+00:00",
        "to_level": to_level,
        "urgent": False,
        "step_up_form": "Step-Up request form (synthetic).",
        "case_notes": "Case notes (synthetic).",
        "consent": None,
        "consent_exemption": consent_exemption,
        "management_decision": {
            "decided_by": "Morgan Testmanager",
            "role": "Team Manager",
            "rationale": "Concerns escalating (synthetic).",
            "decided_on": "2026-11-20",
        },
    }
    child = transfer(step_up("north-somerset")).child
    episode = {
        "episode_id": "EP-1",
        "status": "open",
        "family_support_worker": "Kit Supportworker",
        "child": {
            "given_name": child.given_name,
            "family_name": child.family_name,
            "date_of_birth": child.date_of_birth.isoformat(),
            "nhs_number": child.nhs_number,
            "locality": "North",
            "lcs_id": "LCS-1",
        },
    }
    envelope = {
        "transfer_id": "north-somerset-ehm-sur-1",
        "message_id": "north-somerset-ehm-sur-1-m1",
        "council": "north-somerset",
        "from_level": "intensive-early-help",
    }
    return {"episode": episode, "request": request, "envelope": envelope}


def _ehm(to_level: str, consent_exemption: dict[str, Any] | None) -> TransferMessage:
    return TransferMessage.model_validate(EHM_STEPUP.apply(_ehm_source(to_level, consent_exemption)))


def test_g1_ns11_ehm_step_up_mapping_carries_the_reason_ehm_states() -> None:
    """NS-11: the EHM exemption's reason is EHM's own field; none stated -> no exemption -> held with G1."""
    stated = _ehm("child_protection", ehm_exemption("Team Manager"))
    assert stated.consent_exemption is not None and "significant-harm-s47" == stated.consent_exemption.reason
    assert [] == _held("north-somerset", stated.model_dump(mode="json"))
    unstated = _ehm("child_protection", ehm_exemption("Team Manager", reason=None))
    assert unstated.consent_exemption is None
    assert ["G1"] == _held("north-somerset", unstated.model_dump(mode="json"))


def test_g1_ns11_ehm_s17_step_up_without_consent_is_held() -> None:
    """NS-11 / G1: an EHM step-up to child in need with an exemption and no consent is not delivered."""
    assert ["G1"] == _held(
        "north-somerset", _ehm("child_in_need", ehm_exemption("Team Manager")).model_dump(mode="json")
    )
    assert ["G1"] == _held(
        "north-somerset", _ehm("child_protection", ehm_exemption("Family Support Worker")).model_dump(mode="json")
    )


def test_g1_ns11_ehm_sandbox_step_up_request_states_the_reason(systems: Systems) -> None:
    """NS-11: the EHM sandbox's Step-Up request keeps the stated reason; the mapping passes it through."""
    ehm = systems.ehm_client
    episode = ehm.open_episode()
    ehm.request_stepup(
        episode, to_level="child_protection", consent=None, consent_exemption=ehm_exemption("Team Manager")
    )
    ehm.request_stepup(episode, consent=None, consent_exemption=ehm_exemption("Team Manager", reason=None))
    requests = ehm.http.get("/api/stepup-requests", params={"after": 0}).json()["requests"]
    assert ["significant-harm-s47", None] == [r["consent_exemption"]["reason"] for r in requests]
    envelope = _ehm_source("child_protection", None)["envelope"]
    mapped = [
        TransferMessage.model_validate(
            EHM_STEPUP.apply({"episode": ehm.episode(episode), "request": r, "envelope": envelope})
        )
        for r in requests
    ]
    assert ["significant-harm-s47", None] == [m.consent_exemption and m.consent_exemption.reason for m in mapped]
    assert [[], ["G1"]] == [_held("north-somerset", m.model_dump(mode="json")) for m in mapped]
