from __future__ import annotations

import uuid
from typing import Any, ClassVar

from contracts import CaseSystem, TransferAllocated, TransferMessage
from mappings import Route, load_mapping

from .._base import Receipt, Target
from .._http import HttpConnection

_TRAY = load_mapping("ehm-stepdown-tray")
_ROLE_KEY = {"support-leader": "support_leader", "team-manager": "team_manager"}
_EVENT_NS = uuid.UUID("0b8e8a7e-2f0c-4a43-8d7c-4f1f9a3e5b21")


class EhmConnector(HttpConnection, Target):
    system: ClassVar[CaseSystem] = CaseSystem.EHM

    async def _staff(self, locality: str) -> dict[str, Any]:
        staff: dict[str, Any] = (await self.http.request("GET", f"/api/localities/{locality}/staff")).json()
        return staff

    async def leader_away(self, locality: str) -> bool | None:
        if not locality:
            return None
        return bool((await self._staff(locality))["support_leader"]["away"])

    async def deliver(self, transfer: TransferMessage, route: Route) -> Receipt:
        assignee: dict[str, Any] = {"id": "UNASSIGNED", "name": "Step-Down tray", "role": "tray"}
        if route.locality and route.role in _ROLE_KEY:
            person = (await self._staff(route.locality))[_ROLE_KEY[route.role]]
            assignee = {"id": person["id"], "name": person["name"], "role": route.role}
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

    async def allocations(self, after: int) -> tuple[list[dict[str, Any]], int]:
        """One page of EHM's allocation feed after the cursor, and the next cursor."""
        feed = (await self.http.request("GET", "/api/allocations", params={"after": after, "limit": 500})).json()
        return list(feed["allocations"]), int(feed["last_seq"])


def allocation_events(allocations: list[dict[str, Any]]) -> list[TransferAllocated]:
    """EHM allocations as events (no personal data; ids derived from the feed position)."""
    return [
        TransferAllocated(
            event_id=str(uuid.uuid5(_EVENT_NS, f"ehm-allocation/{a['seq']}")),
            transfer_id=a["transfer_id"],
            correlation_id=a["transfer_id"],
            target_system=CaseSystem.EHM,
            target_reference=a["tray_item_id"],
            episode_reference=a["episode_id"],
        )
        for a in allocations
    ]
