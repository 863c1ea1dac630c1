from __future__ import annotations

from typing import Any, ClassVar

from contracts import CaseSystem, Council, Direction, RecordState, SourceRecord, TransferMessage
from mappings import Route

from .._base import Receipt, Source, SourceState, Target, step_up_body
from .._errors import RuleRefused
from .._http import HttpConnection
from ._mapping import stepdown_transfer

CLOSED_BY = "casebridge"
STEP_DOWN_REASON = "Stepped down to early help"
#: BA-3: the reason an open EHA closes with when statutory intervention starts
STEP_UP_REASON = "step up to social care"
#: BA-13: who the case stays open to
DCT_FSW = "Disabled Children's Team family support worker"


def _acknowledged(receipt: Receipt) -> None:
    if not receipt.acknowledged:
        raise RuleRefused(
            "ted: the case closes only after the step-down was sent and acknowledged (BA-15)", rule_ids=("BA-15",)
        )


class TedConnector(HttpConnection, Source, Target):
    system: ClassVar[CaseSystem] = CaseSystem.TED

    # -- source ---------------------------------------------------------------------------
    # A step-down's source record is the social care case (TED-n); a step-up's is the open
    # early-help assessment TED holds (EHA-n).

    async def case(self, case_id: str) -> dict[str, Any]:
        case: dict[str, Any] = (await self.http.request("GET", f"/api/cases/{case_id}")).json()
        return case

    async def stepdown_request(self, request_id: str) -> dict[str, Any]:
        found: dict[str, Any] = (await self.http.request("GET", f"/api/stepdown-requests/{request_id}")).json()
        return found

    async def stepdown_transfer(
        self, source_record: SourceRecord, transfer_id: str, council: Council
    ) -> TransferMessage:
        """The step-down request again as a transfer, documents included (BA-9: they go once a worker is allocated)."""
        if source_record.request_id is None:
            raise RuleRefused("ted: source_record.request_id is missing, so the step-down cannot be read again (BA-9)",
                              rule_ids=("BA-9",))  # fmt: skip
        request = await self.stepdown_request(source_record.request_id)
        case = await self.case(request["case_id"])
        return stepdown_transfer(case, request, transfer_id, f"{transfer_id}-documents", council)

    async def changes(self, after: int) -> tuple[list[dict[str, Any]], int]:
        """One page of TED's change feed (step-down requests) after the cursor, and the next cursor."""
        return await self.feed_page("/api/changes", "changes", after)

    async def state(self, transfer: TransferMessage) -> SourceState:
        record_id = transfer.source_record.record_id
        if transfer.pathway.direction is Direction.STEP_UP:
            eha = (await self.http.request("GET", f"/api/eha/{record_id}")).json()
            return SourceState(RecordState(eha["status"]), closed_by_transfer=eha.get("closure_transfer_id"))
        case = await self.case(record_id)
        return SourceState(RecordState(case["record_state"]), closed_by_transfer=case.get("closure_transfer_id"))

    async def close(self, transfer: TransferMessage, receipt: Receipt) -> str:
        """Step-down: record it as sent, then close the case (BA-15).

        Step-up: close the open EHA with the reason "step up to social care" (BA-3).
        Idempotent: a record already closed by the same transfer counts as closed. TED itself
        refuses to close a case it keeps open for a direct payment (BA-13): a ``TargetRefused``.
        """
        _acknowledged(receipt)
        if transfer.pathway.direction is Direction.STEP_UP:
            return await self._close_eha(transfer)
        case_id = transfer.source_record.record_id
        await self._record_sent(transfer, receipt)
        body = {"reason": STEP_DOWN_REASON, "closed_by": CLOSED_BY, "transfer_id": transfer.transfer_id}
        await self.close_once(f"/api/cases/{case_id}/close", body, self, transfer)
        return case_id

    async def keep_open(self, transfer: TransferMessage, receipt: Receipt, rule_ids: list[str]) -> str | None:
        """BA-13, as the protocol decided: record the step-down as sent, then TED's keep-open, so TED shows why.

        TED's keep-open has a place for BA-13 only (open to the DCT family support worker); for
        other rules, and while no lead professional is named (BA-9: only a request for support
        went, the step-down itself is not sent yet), TED records nothing and ``None`` is returned.
        """
        if "BA-13" not in rule_ids or transfer.pathway.direction is not Direction.STEP_DOWN:
            return None
        if transfer.professionals.lead_professional is None:
            return None
        _acknowledged(receipt)
        await self._record_sent(transfer, receipt)
        case_id = transfer.source_record.record_id
        body = {"rule": "BA-13", "transfer_id": transfer.transfer_id, "open_to": DCT_FSW}
        await self.http.request("POST", f"/api/cases/{case_id}/keep-open", json=body)
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
