"""Luton (seed 002) and Barnsley (seed 003) protocols as data, checked without a broker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from contracts import CaseSystem, Council
from mappings import Facts, StepDownMemory, load_protocol
from tests.council_data import step_down, step_up, transfer

LU = load_protocol(Council.LUTON)
BA = load_protocol(Council.BARNSLEY)


def _held(protocol: Any, doc: dict[str, Any]) -> list[str]:
    return [v.rule_id for v in protocol.check(transfer(doc), Facts())]


def _eh_to_universal(**changes: Any) -> dict[str, Any]:
    doc = step_down("luton", documents=[{"type": "closure-summary", "content": "Closure summary (synthetic)."}])
    doc["pathway"].update(from_level="early-help", to_level="universal")
    doc["management_decision"]["decided_by"]["role"] = "EH Deputy Manager"
    doc["management_decision"]["forum"] = "Closure meeting"
    doc.update(changes)
    return doc


# -- Luton -------------------------------------------------------------------------------------


def test_luton_good_step_down_and_step_up_meet_every_rule() -> None:
    """The synthetic Luton step-down (CIN Panel) and step-up (ERM) break no rule."""
    assert ([], []) == (_held(LU, step_down("luton")), _held(LU, step_up("luton")))


def test_lu02_step_down_to_universal_needs_closure_summary_authorised_by_eh_manager() -> None:
    """LU-2: the EH Manager / Deputy authorises the closure summary; the episode closes with that reason."""
    assert [] == _held(LU, _eh_to_universal())
    doc = _eh_to_universal()
    doc["management_decision"]["decided_by"]["role"] = "Family Support Worker"
    assert ["LU-2"] == _held(LU, doc)
    assert ["LU-2"] == _held(LU, _eh_to_universal(documents=[]))
    closure = LU.closure(transfer(_eh_to_universal()))
    assert closure is not None and ["LU-2"] == closure.rule_ids
    assert [] == LU.keeps_open(transfer(_eh_to_universal()))


def test_lu03_step_up_is_ratified_by_an_erm_with_an_escalation_summary() -> None:
    """LU-3: the Escalation Review Meeting ratifies; the escalation summary goes to the MASH."""
    doc = step_up("luton")
    doc["management_decision"]["forum"] = None
    assert ["LU-3"] == _held(LU, doc)
    assert ["LU-3"] == _held(LU, step_up("luton", documents=[]))
    assert (CaseSystem.MAILBOX, "MASH") == (LU.route(transfer(step_up("luton")), Facts()).system, "MASH")


def test_lu04_early_help_stays_open_for_co_working_after_step_up() -> None:
    """LU-4: early help does not close at once after a step-up (it closes after 10 days of co-working)."""
    assert ["LU-4"] == LU.keeps_open(transfer(step_up("luton")))


def test_lu06_step_down_from_family_safeguarding_needs_cin_panel_signed_consent_and_plan() -> None:
    """LU-6: CIN Panel ratification, signed consent, the current CIN plan / care plan."""
    doc = step_down("luton")
    doc["management_decision"]["forum"] = "Supervision"
    assert ["LU-6"] == _held(LU, doc)
    doc = step_down("luton")
    doc["consent"]["signed"] = False
    assert ["LU-6"] == _held(LU, doc)
    assert ["LU-6"] == _held(LU, step_down("luton", documents=[]))


def test_lu07_receipt_notice_goes_to_the_social_worker_and_manager() -> None:
    """LU-7: once early help holds a Family Safeguarding step-down, receipt and allocation notices go to both."""
    [notice] = LU.notices(transfer(step_down("luton")), "acknowledged")
    assert ("LU-7", ["social_worker", "manager"], CaseSystem.MAILBOX) == (notice.rule, notice.to, notice.channel)
    assert [] == LU.notices(transfer(_eh_to_universal()), "acknowledged")
    [on_allocation] = LU.notices(transfer(step_down("luton")), "allocated")
    assert ("LU-7", ["social_worker", "manager"]) == (on_allocation.rule, on_allocation.to)


def test_lu09_step_up_within_three_months_returns_to_the_team_that_stepped_down() -> None:
    """LU-9: the remembered step-down's team receives the step-up; after 3 months the MASH does."""
    t = transfer(step_up("luton"))
    recent = StepDownMemory(
        "luton-sd-1", "luton", t.requested_at - timedelta(days=60), "Family Safeguarding Team 3", "Riley Notreal"
    )
    old = StepDownMemory(
        "luton-sd-0", "luton", t.requested_at - timedelta(days=100), "Family Safeguarding Team 1", None
    )
    back = LU.route(t, Facts(history=(recent,)))
    assert ("Family Safeguarding Team 3", ["LU-9"]) == (back.team, back.rule_ids)
    assert ("MASH", []) == (LU.route(t, Facts(history=(old,))).team, LU.route(t, Facts(history=(old,))).rule_ids)
    other = StepDownMemory("x", "barnsley", datetime(2026, 10, 1, tzinfo=UTC), "Other council team", None)
    assert "MASH" == LU.route(t, Facts(history=(other,))).team


# -- Barnsley ----------------------------------------------------------------------------------


def test_barnsley_good_step_down_and_step_up_meet_every_rule() -> None:
    """The synthetic Barnsley step-down and step-up break no rule."""
    assert ([], []) == (_held(BA, step_down("barnsley")), _held(BA, step_up("barnsley")))


def test_ba03_step_up_closes_the_open_eha_as_step_up_to_social_care() -> None:
    """BA-3: the EHA closure reason on a step-up; the target is social care on TED."""
    closure = BA.closure(transfer(step_up("barnsley")))
    assert closure is not None
    assert ("step up to social care", ["BA-3"]) == (closure.reason, closure.rule_ids)
    assert CaseSystem.TED == BA.route(transfer(step_up("barnsley")), Facts()).system


def test_ba05_step_down_decided_by_team_manager_never_for_monitoring() -> None:
    """BA-5: the Team Manager decides; "monitoring" or only an onward referral is refused."""
    assert ["BA-5"] == _held(BA, step_down("barnsley", purpose="so that school can monitor attendance"))
    assert ["BA-5"] == _held(BA, step_down("barnsley", purpose="to make an onward referral to targeted support"))
    doc = step_down("barnsley")
    doc["management_decision"]["decided_by"]["role"] = "Social Worker"
    assert ["BA-5"] == _held(BA, doc)


def test_ba05_purpose_code_decides_and_free_text_is_only_the_fallback() -> None:
    """BA-5: a coded reason decides alone; without one, words in the free-text purpose (at word starts) decide."""
    assert ["BA-5"] == _held(BA, step_down("barnsley", purpose_code="monitoring"))
    assert ["BA-5"] == _held(BA, step_down("barnsley", purpose_code="onward-referral", purpose="family support"))
    assert [] == _held(BA, step_down("barnsley", purpose_code="support", purpose="school will monitor attendance too"))
    assert ["BA-5"] == _held(BA, step_down("barnsley", purpose="Onward-referral only"))
    assert ["BA-5"] == _held(BA, step_down("barnsley", purpose="MONITORED by the school"))
    assert [] == _held(BA, step_down("barnsley", purpose="premonitory signs are met by the early help plan"))


def test_ba06_lead_professional_named_with_organisation() -> None:
    """BA-6: a lead professional without an organisation is held."""
    doc = step_down("barnsley")
    doc["professionals"]["lead_professional"].pop("organisation")
    assert ["BA-6"] == _held(BA, doc)


def test_ba07_consent_summary_and_plan_go_together() -> None:
    """BA-7: consent, closing assessment summary and step-down plan are sent together."""
    doc = step_down("barnsley")
    doc["documents"] = [d for d in doc["documents"] if d["type"] != "consent-form"]
    assert ["BA-7"] == _held(BA, doc)


def test_ba09_no_lead_professional_requests_targeted_support_first_without_documents() -> None:
    """BA-9: no lead professional: a targeted one-to-one support request, documents withheld, TED kept open."""
    doc = step_down("barnsley")
    doc["professionals"] = {}
    t = transfer(doc)
    route = BA.route(t, Facts())
    assert ([], "targeted-support-request", True, ["BA-9"]) == (
        _held(BA, doc),
        route.role,
        route.withhold_documents,
        route.rule_ids,
    )
    assert ["BA-9"] == BA.keeps_open(t)
    named = BA.route(transfer(step_down("barnsley")), Facts())
    assert (False, "Family Centre Development Team") == (named.withhold_documents, named.team)


def test_ba12_eha_start_date_not_held_before_early_help_has_the_case() -> None:
    """BA-12: a stated EHA start 22 days after the request is not held: the 3 weeks start when early help has the
    case (``acknowledged``), after the request, so the monitor times them from there."""
    late = step_down("barnsley", deadlines=[{"rule_id": "BA-12", "due": "2026-11-24T10:15:00Z", "what": "EHA start"}])
    ok = step_down("barnsley", deadlines=[{"rule_id": "BA-12", "due": "2026-11-23T10:15:00Z", "what": "EHA start"}])
    assert ([], []) == (_held(BA, late), _held(BA, ok))


def test_ba13_disabled_child_with_direct_payment_stays_open() -> None:
    """BA-13: only a disabled child with a direct payment keeps the TED record open."""
    doc = step_down("barnsley")
    doc["child"].update(disabled=True, direct_payment=True)
    assert ["BA-13"] == BA.keeps_open(transfer(doc))
    doc["child"].update(direct_payment=False)
    assert [] == BA.keeps_open(transfer(doc))


def test_ba14_unmet_needs_date_not_held_before_allocation() -> None:
    """BA-14: a stated date 8 days after the request is not held: the 7 days start at allocation, after the request,
    so the monitor times them from there."""
    late = step_down("barnsley", deadlines=[{"rule_id": "BA-14", "due": "2026-11-10T10:15:00Z", "what": "unmet needs"}])
    assert [] == _held(BA, late)


def test_ba15_closure_record_on_ted_says_the_step_down_was_sent() -> None:
    """BA-15: TED's closure says what was sent (the flow closes only after the target acknowledged: e2e)."""
    closure = BA.closure(transfer(step_down("barnsley")))
    assert closure is not None and ["BA-15"] == closure.rule_ids


def test_ba05_refused_purpose_code_or_keyword_is_named_never_the_free_text() -> None:
    """BA-5: the violation names the refused code, or the protocol's keyword the free text matched."""
    from contracts import TransferMessage

    coded = TransferMessage.model_validate(step_down("barnsley", purpose_code="monitoring"))
    assert "purpose code 'monitoring'" == BA.details(coded)["BA-5"]
    worded = TransferMessage.model_validate(step_down("barnsley", purpose="so that school can monitor Robin"))
    detail = BA.details(worded)["BA-5"]
    assert detail.startswith("the purpose names 'monitor") and "Robin" not in detail


def test_ba06_missing_organisation_is_named() -> None:
    """BA-6: the lead professional without an organisation is named by field."""
    from contracts import TransferMessage

    doc = step_down("barnsley")
    doc["professionals"]["lead_professional"].pop("organisation", None)
    t = TransferMessage.model_validate(doc)
    assert ["BA-6"] == _held(BA, doc)
    assert "professionals.lead_professional has no organisation" == BA.details(t)["BA-6"]
