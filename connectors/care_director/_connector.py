from __future__ import annotations

from typing import Any, ClassVar

from contracts import CaseSystem, Person, RecordState, TransferMessage
from mappings import Route

from .._base import Receipt, Source, SourceState, Target, step_up_body
from .._errors import RuleRefused, TargetRefused
from .._http import HttpConnection
from ._outcomes import outcome_of

CLOSED_BY = "casebridge"
#: what each Care Director refusal means, for an operator (no personal data)
_REFUSALS = {
    "SW22-10": "closure refused: the receiving early-help worker is not named",
    "SW22-11": "closure refused: the closure record does not name the lead service",
    "SW22-12": "closure refused: more than one service is involved and no Lead Professional is named",
    "SW22-3": "contact refused: the step-up lacks the Early Help Assessment or the TAF plan",
}


def _professional(p: Person | None) -> dict[str, Any] | None:
    return None if p is None else {"name": p.name, "role": p.role, "organisation": p.organisation}


def closure_record(transfer: TransferMessage, receipt: Receipt) -> dict[str, Any]:
    """The social care closure record for a step-down (pure).

    SW22-11: the lead service comes from the assessment outcome (SW22-7 data) and the Lead
    Professional from the transfer's professionals; SW22-12: every named receiving
    professional's organisation is a service involved; SW22-10: the receiving early-help
    worker is the family support worker, else the Lead Professional.
    """
    outcome = outcome_of(transfer.assessment_outcome)
    if outcome is None or not outcome.step_down:
        raise RuleRefused(
            "care-director: assessment_outcome is missing or not a step-down outcome, so the closure record "
            "cannot name the lead service (SW22-7, SW22-11)",
            rule_ids=("SW22-7", "SW22-11"),
        )
    pros = transfer.professionals
    receiving = [p for p in (pros.lead_professional, pros.family_support_worker) if p is not None]
    services = sorted({p.organisation for p in receiving if p.organisation}) or [outcome.lead_service]
    return {
        "reason": f"Step down to {outcome.lead_service}",
        "closed_by": CLOSED_BY,
        "transfer_id": transfer.transfer_id,
        "onward_reference": receipt.reference,
        "assessment_outcome": outcome.label,
        "lead_service": outcome.lead_service,
        "lead_professional": _professional(pros.lead_professional),
        "early_help_worker": _professional(pros.family_support_worker or pros.lead_professional),
        "services_involved": services,
    }


def _explained(exc: TargetRefused) -> TargetRefused:
    rule = exc.rule_ids[0] if exc.rule_ids else None
    if rule not in _REFUSALS:
        return exc
    return TargetRefused(f"care-director: {_REFUSALS[rule]} ({rule})", status=exc.status, rule_ids=exc.rule_ids)


class CareDirectorConnector(HttpConnection, Source, Target):
    system: ClassVar[CaseSystem] = CaseSystem.CARE_DIRECTOR

    # -- source: step-downs from the assessment team --------------------------------------

    async def state(self, transfer: TransferMessage) -> SourceState:
        person = await self.person(transfer.source_record.record_id)
        closure = person.get("closure") or {}
        return SourceState(RecordState(person["record_state"]), closed_by_transfer=closure.get("transfer_id"))

    async def close(self, transfer: TransferMessage, receipt: Receipt) -> str:
        """Write the closure record (SW22-10/11/12) once the target acknowledged; idempotent."""
        record_id = transfer.source_record.record_id
        body = closure_record(transfer, receipt)
        try:
            await self.close_once(f"/api/persons/{record_id}/close", body, self, transfer)
        except TargetRefused as exc:
            raise _explained(exc) from exc
        return record_id

    async def person(self, person_id: str) -> dict[str, Any]:
        person: dict[str, Any] = (await self.http.request("GET", f"/api/persons/{person_id}")).json()
        return person

    async def assessment(self, assessment_id: str) -> dict[str, Any]:
        found: dict[str, Any] = (await self.http.request("GET", f"/api/assessments/{assessment_id}")).json()
        return found

    async def referral(self, referral_id: str) -> dict[str, Any]:
        found: dict[str, Any] = (await self.http.request("GET", f"/api/stepdown-referrals/{referral_id}")).json()
        return found

    async def changes(self, after: int) -> tuple[list[dict[str, Any]], int]:
        return await self.feed_page("/api/changes", "changes", after)

    # -- target: step-ups the MASH records as a contact (SW22-6) ---------------------------

    async def deliver(self, transfer: TransferMessage, route: Route) -> Receipt:
        """Create the contact for the duty ATM, idempotently on transfer id; urgency travels (SW22-1)."""
        body = step_up_body(transfer, "person")
        try:
            answer = (await self.http.request("PUT", f"/api/contacts/{transfer.transfer_id}", json=body)).json()
        except TargetRefused as exc:
            raise _explained(exc) from exc
        return Receipt(self.system, answer["contact_id"], created=bool(answer["created"]))

    async def confirm(self, transfer: TransferMessage) -> Receipt:
        contact = (await self.http.request("GET", f"/api/contacts/{transfer.transfer_id}")).json()
        return Receipt(self.system, contact["contact_id"], created=False, acknowledged=contact["status"] == "new")
