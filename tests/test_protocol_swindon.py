"""Swindon's protocols as data: 2026 (seed 000, Liquidlogic) and 2022 (seed 001, Care Director)."""

from __future__ import annotations

import tomllib
from datetime import timedelta
from typing import Any

import pytest

from connectors.care_director import ASSESSMENT_OUTCOMES, outcome_of
from contracts import CaseSystem, Council
from mappings import Facts, load_protocol
from mappings._protocol import PROTOCOL_DIR, AssessmentOutcomeRule
from tests.council_data import exemption, step_down, step_up, step_up_s47, transfer

SW26 = load_protocol(Council.SWINDON)
SW22 = load_protocol(Council.SWINDON_2022)


def _held(protocol: Any, doc: dict[str, Any]) -> list[str]:
    return [v.rule_id for v in protocol.check(transfer(doc), Facts())]


# -- Swindon 2026 ------------------------------------------------------------------------------


def test_swindon_2026_good_step_down_and_step_up_meet_every_rule() -> None:
    """The synthetic Swindon 2026 step-down and step-up break no rule."""
    assert ([], []) == (_held(SW26, step_down("swindon")), _held(SW26, step_up("swindon")))


def test_sw26_01_step_up_opens_a_contact_and_is_a_referral_only_with_duty_manager_endorsement() -> None:
    """SW26-1: the Duty Manager's decision with a rationale endorses the referral; otherwise a contact."""
    endorsed = SW26.route(transfer(step_up("swindon")), Facts())
    doc = step_up("swindon")
    doc["management_decision"]["decided_by"]["role"] = "Family Support Worker"
    contact = SW26.route(transfer(doc), Facts())
    none = SW26.route(transfer(step_up("swindon", management_decision=None)), Facts())
    assert ("referral", ["SW26-1"]) == (endorsed.role, endorsed.rule_ids)
    assert ("contact", "contact") == (contact.role, none.role)
    assert (CaseSystem.LCS, "Children and Families Contact Swindon") == (endorsed.system, endorsed.team)


def test_sw26_02_step_up_without_consent_needs_a_duty_managers_recorded_decision() -> None:
    """SW26-2: no consent holds the step-up unless a Duty Manager decided to proceed (G1)."""
    assert ["SW26-2"] == _held(SW26, step_up("swindon", consent=None))
    assert ["SW26-2"] == _held(SW26, step_up_s47("swindon", consent=None, consent_exemption=exemption("Social Worker")))
    assert [] == _held(SW26, step_up_s47("swindon", consent=None, consent_exemption=exemption("Duty Manager")))


def test_sw26_03_step_up_keeps_the_early_help_episode_open() -> None:
    """SW26-3: engaged early intervention continues: the step-up does not close the source."""
    assert ["SW26-3"] == SW26.keeps_open(transfer(step_up("swindon")))
    assert [] == SW26.keeps_open(transfer(step_down("swindon")))


def test_sw26_04_step_down_needs_the_transfer_meeting_and_consent() -> None:
    """SW26-4: agreed at the weekly Transfer Meeting, with consent in place (no exemption on a step-down)."""
    doc = step_down("swindon")
    doc["management_decision"]["forum"] = "Supervision"
    assert ["SW26-4"] == _held(SW26, doc)
    assert ["SW26-4"] == _held(SW26, step_down("swindon", consent=None, consent_exemption=exemption("Duty Manager")))


def test_sw26_05_closure_record_reads_step_down_to_sbc_early_help() -> None:
    """SW26-5: the social work closure record's reason."""
    closure = SW26.closure(transfer(step_down("swindon")))
    assert closure is not None
    assert ("Step Down to SBC Early Help", ["SW26-5"]) == (closure.reason, closure.rule_ids)


def test_sw26_06_handover_documents_and_a_handover_date_not_held_before_the_case_transfer() -> None:
    """SW26-6: strengths/risk/outcomes (assessment) and plan travel; a stated handover date is not held at request:
    its 10 days start at the case transfer (``acknowledged``), not known yet, so the monitor times it from there."""
    doc = step_down("swindon")
    doc["documents"] = [d for d in doc["documents"] if d["type"] != "plan"]
    assert ["SW26-6"] == _held(SW26, doc)
    t = transfer(step_down("swindon"))
    late = step_down(
        "swindon",
        deadlines=[{"rule_id": "SW26-6", "due": (t.requested_at + timedelta(days=11)).isoformat(), "what": "handover"}],
    )
    ok = step_down(
        "swindon",
        deadlines=[{"rule_id": "SW26-6", "due": (t.requested_at + timedelta(days=10)).isoformat(), "what": "handover"}],
    )
    assert ([], []) == (_held(SW26, late), _held(SW26, ok))


def test_sw26_07_step_down_is_allocated_to_the_named_lead_practitioner() -> None:
    """SW26-7: the Lead Practitioner is named, and the route allocates to them."""
    doc = step_down("swindon")
    doc["professionals"] = {}
    assert ["SW26-7"] == _held(SW26, doc)
    route = SW26.route(transfer(step_down("swindon")), Facts())
    assert ("lead-professional", ["SW26-7"]) == (route.role, route.rule_ids)


# -- Swindon 2022 ------------------------------------------------------------------------------


def test_swindon_2022_good_step_down_and_step_up_meet_every_rule() -> None:
    """The synthetic Swindon 2022 step-down and step-up break no rule."""
    assert ([], []) == (_held(SW22, step_down("swindon-2022")), _held(SW22, step_up("swindon-2022")))


def test_sw22_01_s47_step_up_is_flagged_urgent() -> None:
    """SW22-1: a step-up to child protection is routed as urgent; a s.17 one is routine."""
    doc = step_up("swindon-2022")
    doc["pathway"]["to_level"] = "child-protection-s47"
    urgent = SW22.route(transfer(doc), Facts())
    routine = SW22.route(transfer(step_up("swindon-2022")), Facts())
    assert (True, ["SW22-1"]) == (urgent.urgent, urgent.rule_ids)
    assert (False, "MASH") == (routine.urgent, routine.team)


def test_sw22_02_family_open_to_a_council_service_needs_the_line_managers_decision() -> None:
    """SW22-2: only where the family is open to a council service, the line manager decides first."""
    assert [] == _held(SW22, step_up("swindon-2022", management_decision=None))
    assert ["SW22-2"] == _held(SW22, step_up("swindon-2022", management_decision=None, open_to_council_service=True))
    assert [] == _held(SW22, step_up("swindon-2022", open_to_council_service=True))


def test_sw22_03_step_up_carries_eha_and_taf_plan() -> None:
    """SW22-3: the RF1 goes with the up-to-date EHA and TAF plan."""
    doc = step_up("swindon-2022")
    doc["documents"] = [d for d in doc["documents"] if d["type"] != "taf-plan"]
    assert ["SW22-3"] == _held(SW22, doc)


def test_sw22_04_proceeding_without_consent_is_decided_with_a_mash_manager() -> None:
    """SW22-4: without consent only with a MASH manager's recorded decision (G1)."""
    assert ["SW22-4"] == _held(SW22, step_up("swindon-2022", consent=None))
    ok = step_up_s47("swindon-2022", consent=None, consent_exemption=exemption("MASH Manager"))
    assert [] == _held(SW22, ok)


def test_sw22_05_step_up_from_fiss_goes_through_the_transfer_discussion() -> None:
    """SW22-5: from intensive early help, the weekly transfer discussion decides."""
    doc = step_up("swindon-2022")
    doc["pathway"]["from_level"] = "intensive-early-help"
    assert ["SW22-5"] == _held(SW22, doc)
    doc["management_decision"]["forum"] = "Transfer Meeting"
    assert [] == _held(SW22, doc)


def test_sw22_06_fiss_continues_during_the_assessment() -> None:
    """SW22-6: the summary goes to the MASH; a FISS step-up keeps the FISS record open."""
    doc = step_up("swindon-2022")
    doc["pathway"]["from_level"] = "intensive-early-help"
    assert ["SW22-6"] == SW22.keeps_open(transfer(doc))
    assert "MASH" == SW22.route(transfer(doc), Facts()).team


@pytest.mark.parametrize(
    ("outcome", "level", "team"),
    [
        (
            "TAF Lead Professional Identified / Refer to Other service",
            "universal",
            "Universal services (TAF lead professional)",
        ),
        ("Refer to EHH Service", "early-help", "Early Help Hub"),
        ("Refer to FISS Service", "intensive-early-help", "FISS"),
    ],
)
def test_sw22_07_assessment_outcome_selects_the_step_down_target(outcome: str, level: str, team: str) -> None:
    """SW22-7: each outcome code selects its service; a mismatched or unknown code is held."""
    doc = step_down("swindon-2022", assessment_outcome=outcome)
    doc["pathway"]["to_level"] = level
    route = SW22.route(transfer(doc), Facts())
    assert ([], CaseSystem.MAILBOX, team, ["SW22-7"]) == (_held(SW22, doc), route.system, route.team, route.rule_ids)
    doc["pathway"]["to_level"] = "universal" if level != "universal" else "early-help"
    assert ["SW22-7"] == _held(SW22, doc)
    unknown = step_down("swindon-2022", assessment_outcome="Refer to somewhere")
    assert ["SW22-7"] == _held(SW22, unknown)
    held = transfer(unknown)
    [violation] = SW22.check(held)
    assert violation.message.endswith("'Refer to somewhere' is not a step-down outcome of care-director-outcomes.toml)")
    assert {"SW22-7": "assessment outcome 'Refer to somewhere' is not a step-down outcome of"
            " care-director-outcomes.toml"} == SW22.details(held)  # fmt: skip


@pytest.mark.parametrize(
    "free_text",
    [
        "Spoke with mum, Jane Doe (DOB 01/02/1990); she agreed to early help",
        "Refer to EHH Service as agreed with Jane Doe and her partner John Roe at the review",
        "Jane Doe: refer to EHH",
    ],
)
def test_sw22_07_free_text_outcome_is_not_repeated_in_the_reason_but_a_code_is(free_text: str) -> None:
    """SW22-7: free text typed where the outcome code belongs (a name, a date of birth) is not repeated in the
    violation or its detail; an unknown code is named."""
    held = transfer(step_down("swindon-2022", assessment_outcome=free_text))
    [violation] = SW22.check(held)
    said = violation.message + violation.fix + SW22.details(held)["SW22-7"]
    assert ("SW22-7", []) == (violation.rule_id, [w for w in ("Jane", "Doe", "1990", "mum") if w in said])
    assert "an assessment outcome that is not a code is not a step-down outcome" in said
    code = transfer(step_down("swindon-2022", assessment_outcome="CIN-CONT-2"))
    assert "assessment outcome 'CIN-CONT-2' is not a step-down outcome" in SW22.details(code)["SW22-7"]


def test_sw22_07_outcome_table_is_stated_once_and_read_by_protocol_and_care_director() -> None:
    """SW22-7: the protocol names the outcome file (no table of its own); the protocol and the Care Director
    connector see the same outcomes; a non-step-down outcome ("Continue as Child in Need") is held as before."""
    [raw] = [r for r in tomllib.loads((PROTOCOL_DIR / "swindon-2022.toml").read_text())["rule"] if r["id"] == "SW22-7"]
    assert "care-director-outcomes.toml" == raw["outcomes"]
    [rule] = [r for r in SW22.spec.rule if isinstance(r, AssessmentOutcomeRule)]
    for label, outcome in ASSESSMENT_OUTCOMES.items():
        doc = step_down("swindon-2022", assessment_outcome=label)
        assert (outcome if outcome.step_down else None) is rule.chosen(transfer(doc))
        assert outcome is outcome_of(outcome.code)
    doc = step_down("swindon-2022", assessment_outcome="Continue as Child in Need")
    assert ["SW22-7"] == _held(SW22, doc)


def test_sw22_08_consent_covers_recommendations_and_sharing_the_assessment() -> None:
    """SW22-8: consent scope includes the recommendations and the statutory assessment."""
    doc = step_down("swindon-2022")
    doc["consent"]["scope"] = ["recommendations"]
    assert ["SW22-8"] == _held(SW22, doc)


def test_sw22_10_assessment_team_closes_only_once_the_early_help_worker_is_named() -> None:
    """SW22-10: no receiving worker named: the Care Director record stays open."""
    doc = step_down("swindon-2022")
    doc["professionals"] = {}
    assert ["SW22-10"] == SW22.keeps_open(transfer(doc))
    assert [] == SW22.keeps_open(transfer(step_down("swindon-2022")))


def test_sw22_11_closure_record_names_the_lead_professional() -> None:
    """SW22-11: the closure record carries the lead professional."""
    closure = SW22.closure(transfer(step_down("swindon-2022")))
    assert closure is not None and closure.lead_professional is not None
    assert ("Casey Hubworker", ["SW22-11"]) == (closure.lead_professional.name, closure.rule_ids)


def test_sw22_12_more_than_one_service_needs_a_lead_professional() -> None:
    """SW22-12: two services and no lead professional is held; one service without is not."""
    doc = step_down("swindon-2022", services=["School", "Health Visiting"])
    doc["professionals"] = {}
    assert ["SW22-12"] == _held(SW22, doc)
    doc["services"] = ["School"]
    assert [] == _held(SW22, doc)


def test_sw22_13_first_taf_review_date_not_held_before_the_closure() -> None:
    """SW22-13: a first TAF review stated 43 days after the request is not held: the 6 weeks start when the closure
    is completed (``source-closed``), after the handover, so the monitor times them from there."""
    t = transfer(step_down("swindon-2022"))
    late = (t.requested_at + timedelta(days=43)).isoformat()
    assert [] == _held(
        SW22, step_down("swindon-2022", deadlines=[{"rule_id": "SW22-13", "due": late, "what": "TAF review"}])
    )


def test_sw22_14_step_down_from_cin_sends_plan_or_minutes_and_assessment() -> None:
    """SW22-14: from a CIN plan, the plan / review minutes and the latest statutory assessment go too."""
    doc = step_down("swindon-2022")
    doc["documents"] = [d for d in doc["documents"] if d["type"] != "cin-plan"]
    assert ["SW22-14"] == _held(SW22, doc)
    doc["documents"].append({"type": "review-minutes", "content": "Final CIN review minutes (synthetic)."})
    assert [] == _held(SW22, doc)


def test_sw22_15_cin_minutes_within_ten_working_days() -> None:
    """SW22-15: 10 working days skip weekends (Mon 2 Nov 2026 + 10 working days = Mon 16 Nov)."""
    ok = step_down("swindon-2022", deadlines=[{"rule_id": "SW22-15", "due": "2026-11-16T10:15:00Z", "what": "minutes"}])
    late = step_down(
        "swindon-2022", deadlines=[{"rule_id": "SW22-15", "due": "2026-11-17T10:15:00Z", "what": "minutes"}]
    )
    assert ([], ["SW22-15"]) == (_held(SW22, ok), _held(SW22, late))
