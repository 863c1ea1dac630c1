from __future__ import annotations

from dataclasses import asdict
from typing import Any, ClassVar

from contracts import CaseSystem, FrontDoorDecided, RecordState, TransferMessage, wire
from mappings import Route, load_mapping

from .._base import Receipt, Source, SourceState, Target
from .._http import HttpConnection

CLOSURE_REASON = "Stepped down to early help (EHM)"
CLOSED_BY = "casebridge"
_CONTACT = load_mapping("lcs-contact")


class LcsConnector(HttpConnection, Source, Target):
    """LCS as the source of step-downs (state, close) and the Front Door target of step-ups (contacts)."""

    system: ClassVar[CaseSystem] = CaseSystem.LCS

    async def deliver(self, transfer: TransferMessage, route: Route) -> Receipt:
        """A step-up becomes a Front Door contact (a referral when the Duty Manager endorsed it: SW26-1)."""
        decision = transfer.management_decision
        source = {
            "transfer": transfer.model_dump(mode="json"),
            "documents": {d.type.value: d.content for d in transfer.documents if d.content is not None},
            "route": asdict(route),
            "endorsed_by": decision.decided_by.role if decision and route.role == "referral" else None,
        }
        body = _CONTACT.apply(source)
        answer = (await self.http.request("PUT", f"/api/contacts/{transfer.transfer_id}", json=body)).json()
        return Receipt(self.system, answer["contact_id"], created=bool(answer["created"]))

    async def confirm(self, transfer: TransferMessage) -> Receipt:
        contact = (await self.http.request("GET", f"/api/contacts/{transfer.transfer_id}")).json()
        return Receipt(self.system, contact["contact_id"], created=False, acknowledged=contact["status"] == "received")

    async def front_door_decision(self, transfer_id: str) -> str | None:
        """NS-12: the Front Door's decision recorded on the contact (accepted / not-accepted), or None (undecided)."""
        contact = (await self.http.request("GET", f"/api/contacts/{transfer_id}")).json()
        decision = contact.get("decision")
        return str(decision) if decision else None

    async def child(self, child_id: str) -> dict[str, Any]:
        child: dict[str, Any] = (await self.http.request("GET", f"/api/children/{child_id}")).json()
        return child

    async def request(self, request_id: str) -> dict[str, Any]:
        req: dict[str, Any] = (await self.http.request("GET", f"/api/stepdown-requests/{request_id}")).json()
        return req

    async def pending_requests(self, child_id: str) -> list[dict[str, Any]]:
        found = (await self.http.request("GET", f"/api/children/{child_id}/stepdown-requests")).json()
        return [r for r in found["requests"] if r["status"] == "pending"]

    async def changes(self, after: int) -> tuple[list[dict[str, Any]], int]:
        return await self.feed_page("/api/changes", "changes", after)

    async def front_door_decisions(self, after: int) -> tuple[list[dict[str, Any]], int]:
        """One page of the Front Door's decisions on step-up contacts after the cursor (NS-12), and the next cursor."""
        return await self.feed_page("/api/front-door-decisions", "decisions", after)

    async def state(self, transfer: TransferMessage) -> SourceState:
        child = await self.child(transfer.source_record.record_id)
        return SourceState(RecordState(child["record_state"]), closed_by_transfer=child.get("closure_transfer_id"))

    async def close(self, transfer: TransferMessage, receipt: Receipt) -> str:
        """Mark the step-down request completed, then close the record (NS-7: only after delivery)."""
        record_id = transfer.source_record.record_id
        if transfer.source_record.request_id:
            await self.http.request(
                "POST",
                f"/api/stepdown-requests/{transfer.source_record.request_id}/complete",
                json={"transfer_id": transfer.transfer_id, "ehm_reference": receipt.reference},
            )
        body = {
            "reason": transfer.closure.reason if transfer.closure else CLOSURE_REASON,
            "closed_by": CLOSED_BY,
            "transfer_id": transfer.transfer_id,
        }
        await self.close_once(f"/api/children/{record_id}/close", body, self, transfer)
        return record_id


def decision_events(decisions: list[dict[str, Any]]) -> list[FrontDoorDecided]:
    """Front Door decisions as events (no personal data; ids derived from the feed position)."""
    return [
        FrontDoorDecided(
            event_id=wire.reported_event_id(wire.LCS_EVENT_NS, "lcs-front-door-decision", d["seq"]),
            transfer_id=d["transfer_id"],
            correlation_id=d["transfer_id"],
            target_system=CaseSystem.LCS,
            target_reference=d["contact_id"],
            decision=d["decision"],
            occurred_at=d["at"],
        )
        for d in decisions
    ]
