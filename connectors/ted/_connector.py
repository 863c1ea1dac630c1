from __future__ import annotations

import re
from typing import Any, ClassVar

from contracts import CaseSystem, Direction, RecordState, TransferMessage
from mappings import Route

from .._base import Receipt, Source, SourceState, Target, step_up_body
from .._errors import RuleRefused
from .._http import HttpConnection

CLOSED_BY = "casebridge"
STEP_DOWN_REASON = "Stepped down to early help"
#: BA-3: the reason an open EHA closes with when statutory intervention starts
STEP_UP_REASON = "step up to social care"
#: BA-13: who the case stays open to
DCT_FSW = "Disabled Children's Team family support worker"
_FORBIDDEN = re.compile(r"\bmonitor(ing|ed)?\b|\bonward[- ]referral\b", re.IGNORECASE)


def check_stepdown(transfer: TransferMessage) -> None:
    """BA-5: never a step-down "for monitoring" or only to make an onward referral (pure)."""
    if transfer.pathway.direction is Direction.STEP_DOWN and _FORBIDDEN.search(transfer.purpose or ""):
        raise RuleRefused(
            "ted: a step-down must not be made for monitoring or only to make an onward referral (field purpose, BA-5)",
            rule_ids=("BA-5",),
        )


def keeps_open(transfer: TransferMessage) -> list[str]:
    """The rules that keep the TED case open after this step-down: BA-13 for a child with a direct payment."""
    child = transfer.child
    is_step_down = transfer.pathway.direction is Direction.STEP_DOWN
    return ["BA-13"] if is_step_down and child.disabled and child.direct_payment else []


class TedConnector(HttpConnection, Source, Target):
    system: ClassVar[CaseSystem] = CaseSystem.TED

    # -- source ---------------------------------------------------------------------------
    # A step-down's source record is the social care case (TED-n); a step-up's is the open
    # early-help assessment TED holds (EHA-n).

    async def case(self, case_id: str) -> dict[str, Any]:
        case: dict[str, Any] = (await self.http.request("GET", f"/api/cases/{case_id}")).json()
        return case

    async def state(self, transfer: TransferMessage) -> SourceState:
        record_id = transfer.source_record.record_id
        if transfer.pathway.direction is Direction.STEP_UP:
            eha = (await self.http.request("GET", f"/api/eha/{record_id}")).json()
            return SourceState(RecordState(eha["status"]), closed_by_transfer=eha.get("closure_transfer_id"))
        check_stepdown(transfer)
        case = await self.case(record_id)
        return SourceState(RecordState(case["record_state"]), closed_by_transfer=case.get("closure_transfer_id"))

    async def close(self, transfer: TransferMessage, receipt: Receipt) -> str:
        """Step-down: record it as sent, then close the case (BA-15) or keep it open (BA-13).

        Step-up: close the open EHA with the reason "step up to social care" (BA-3).
        Idempotent: a record already closed by the same transfer counts as closed.
        """
        if not receipt.acknowledged:
            raise RuleRefused(
                "ted: the case closes only after the step-down was sent and acknowledged (BA-15)", rule_ids=("BA-15",)
            )
        if transfer.pathway.direction is Direction.STEP_UP:
            return await self._close_eha(transfer)
        check_stepdown(transfer)
        case_id = transfer.source_record.record_id
        case = await self.case(case_id)
        ted_keeps_open = bool(case["disabled"] and case["direct_payment"])
        if keeps_open(transfer) and not ted_keeps_open:
            # TED holds the direct payment: if the transfer says there is one and TED does not, close nothing.
            raise RuleRefused(
                "ted: the transfer says the child has a direct payment but TED does not; the case is left open "
                "for a person to check (field child.direct_payment, BA-13)",
                rule_ids=("BA-13",),
            )
        await self._record_sent(transfer, receipt)
        if ted_keeps_open:
            body = {"rule": "BA-13", "transfer_id": transfer.transfer_id, "open_to": DCT_FSW}
            await self.http.request("POST", f"/api/cases/{case_id}/keep-open", json=body)
            return case_id
        body = {"reason": STEP_DOWN_REASON, "closed_by": CLOSED_BY, "transfer_id": transfer.transfer_id}
        await self.close_once(f"/api/cases/{case_id}/close", body, self, transfer)
        return case_id

    async def _record_sent(self, transfer: TransferMessage, receipt: Receipt) -> None:
        decision = transfer.management_decision
        lead = transfer.professionals.lead_professional
        if decision is None or lead is None or not lead.organisation:
            missing = "management_decision" if decision is None else "professionals.lead_professional.organisation"
            rule = "BA-5" if decision is None else "BA-6"
            raise RuleRefused(f"ted: the step-down lacks {missing} ({rule})", rule_ids=(rule,))
        body = {
            "purpose": transfer.purpose or STEP_DOWN_REASON,
            "decided_by": {"name": decision.decided_by.name, "role": decision.decided_by.role},
            "lead_professional": {"name": lead.name, "organisation": lead.organisation},
            "sent_via": receipt.system.value,
            "sent_reference": receipt.reference,
        }
        record_id = transfer.source_record.record_id
        await self.http.request("PUT", f"/api/cases/{record_id}/stepdowns/{transfer.transfer_id}", json=body)

    async def _close_eha(self, transfer: TransferMessage) -> str:
        eha_id = transfer.source_record.record_id
        reason = transfer.closure.reason if transfer.closure else STEP_UP_REASON
        body = {"reason": reason, "closed_by": CLOSED_BY, "transfer_id": transfer.transfer_id}
        await self.close_once(f"/api/eha/{eha_id}/close", body, self, transfer)
        return eha_id

    # -- target: referrals from early help (step-ups) --------------------------------------

    async def deliver(self, transfer: TransferMessage, route: Route) -> Receipt:
        body = step_up_body(transfer, "child")
        answer = (await self.http.request("PUT", f"/api/referrals/{transfer.transfer_id}", json=body)).json()
        return Receipt(self.system, answer["referral_id"], created=bool(answer["created"]))

    async def confirm(self, transfer: TransferMessage) -> Receipt:
        referral = (await self.http.request("GET", f"/api/referrals/{transfer.transfer_id}")).json()
        return Receipt(
            self.system, referral["referral_id"], created=False, acknowledged=referral["status"] == "received"
        )
