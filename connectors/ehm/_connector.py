from __future__ import annotations

from typing import Any, ClassVar

from contracts import CaseSystem, Person, RecordState, TransferAllocated, TransferMessage, wire
from mappings import Route, load_mapping

from .._base import Receipt, Source, SourceState, Target
from .._http import HttpConnection

_TRAY = load_mapping("ehm-stepdown-tray")
_ROLE_KEY = {"support-leader": "support_leader", "team-manager": "team_manager"}


class EhmConnector(HttpConnection, Target, Source):
    """EHM as the Step-Down tray target, and as the source of step-ups (an early-help episode)."""

    system: ClassVar[CaseSystem] = CaseSystem.EHM

    async def state(self, transfer: TransferMessage) -> SourceState:
        """The early-help episode a step-up comes from (``source_record.record_id`` is its episode id)."""
        episode = await self.episode(transfer.source_record.record_id)
        return SourceState(RecordState(episode["status"]), closed_by_transfer=episode.get("closure_transfer_id"))

    async def close(self, transfer: TransferMessage, receipt: Receipt) -> str:
        """NS-12: a case note saying recording moves to LCS, then the episode closes; both idempotent."""
        episode_id = transfer.source_record.record_id
        reason = transfer.closure.reason if transfer.closure else "Stepped up to social care"
        await self.http.request(
            "POST",
            f"/api/episodes/{episode_id}/case-notes",
            json={
                "text": f"{reason} (contact {receipt.reference}).",
                "author": "casebridge",
                "transfer_id": transfer.transfer_id,
            },
        )
        body = {"closed_by": "casebridge", "reason": reason, "transfer_id": transfer.transfer_id}
        await self.close_once(f"/api/episodes/{episode_id}/close", body, self, transfer)
        return episode_id

    async def _staff(self, locality: str) -> dict[str, Any]:
        staff: dict[str, Any] = (await self.http.request("GET", f"/api/localities/{locality}/staff")).json()
        return staff

    async def leader_away(self, locality: str) -> bool | None:
        if not locality:
            return None
        return bool((await self._staff(locality))["support_leader"]["away"])

    async def deliver(self, transfer: TransferMessage, route: Route) -> Receipt:
        assignee: dict[str, Any] = {"id": "UNASSIGNED", "name": "Step-Down tray", "role": "tray"}
        lead = transfer.professionals.lead_professional
        if route.locality and route.role in _ROLE_KEY:
            person = (await self._staff(route.locality))[_ROLE_KEY[route.role]]
            assignee = {"id": person["id"], "name": person["name"], "role": route.role}
        elif route.role == "lead-professional" and lead is not None:  # SW26-7: the named Lead Practitioner
            assignee = {"id": "LEAD-PRACTITIONER", "name": lead.name, "role": route.role}
        source = {
            "transfer": transfer.model_dump(mode="json"),
            "documents": {d.type.value: d.content for d in transfer.documents if d.content is not None},
            "assignee": assignee,
        }
        body = _TRAY.apply(source)
        answer = (await self.http.request("PUT", f"/api/stepdown-tray/{transfer.transfer_id}", json=body)).json()
        return Receipt(self.system, answer["tray_item_id"], created=bool(answer["created"]))

    async def confirm(self, transfer: TransferMessage) -> Receipt:
        item = (await self.http.request("GET", f"/api/stepdown-tray/{transfer.transfer_id}")).json()
        held = item.get("status") in ("in_tray", "allocated")
        return Receipt(self.system, item["tray_item_id"], created=False, acknowledged=held)

    async def allocated_worker(self, transfer_id: str) -> Person | None:
        """SW22-10: the family support worker EHM allocated the transfer's tray item to (None: not allocated yet)."""
        item = (await self.http.request("GET", f"/api/stepdown-tray/{transfer_id}")).json()
        name = item.get("allocated_to")
        return Person(name=name, role="Family Support Worker") if name else None

    async def episode(self, episode_id: str) -> dict[str, Any]:
        episode: dict[str, Any] = (await self.http.request("GET", f"/api/episodes/{episode_id}")).json()
        return episode

    async def stepup_requests(self, after: int) -> tuple[list[dict[str, Any]], int]:
        """One page of EHM's Step-Up requests after the cursor, and the next cursor."""
        return await self.feed_page("/api/stepup-requests", "requests", after)

    async def allocations(self, after: int) -> tuple[list[dict[str, Any]], int]:
        """One page of EHM's allocation feed after the cursor, and the next cursor."""
        return await self.feed_page("/api/allocations", "allocations", after)


def allocation_events(allocations: list[dict[str, Any]]) -> list[TransferAllocated]:
    """EHM allocations as events (no personal data; ids derived from the feed position)."""
    return [
        TransferAllocated(
            event_id=wire.reported_event_id(wire.EHM_EVENT_NS, "ehm-allocation", a["seq"]),
            transfer_id=a["transfer_id"],
            correlation_id=a["transfer_id"],
            target_system=CaseSystem.EHM,
            target_reference=a["tray_item_id"],
            episode_reference=a["episode_id"],
        )
        for a in allocations
    ]
