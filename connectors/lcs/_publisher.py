from __future__ import annotations

from collections.abc import Awaitable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from contracts import CaseSystem, Council, TransferMessage, wire
from mappings import load_mapping

from .._feed import FeedPublisher, Mapped, Remap
from ..kafka import Kafka
from ._connector import LcsConnector

_MAPPING = load_mapping("lcs-stepdown")


def transfer_id_for(council: Council, request_id: str) -> str:
    """Stable for the handover: the same LCS request always yields the same transfer id."""
    return f"{council.value}-lcs-{request_id}".lower()


class LcsPublisher(FeedPublisher):
    """Reads LCS's change feed and publishes step-down requests as canonical transfers.

    ``stepdown_requested`` publishes the request; ``record_reopened`` publishes again the
    child's pending requests (a step-down held by NS-7 completes once the record is open).
    """

    feed = "lcs-changes"
    what = "lcs_request"

    def __init__(
        self,
        lcs: LcsConnector,
        kafka: Kafka,
        transfers_topic: str,
        dead_letter_topic: str,
        cursor: Path,
        council: Council = Council.NORTH_SOMERSET,
        remap: Remap | None = None,
    ) -> None:
        super().__init__(lcs, kafka, transfers_topic, dead_letter_topic, cursor, council, remap)
        self.lcs = lcs

    async def collect(self, after: int) -> tuple[list[Awaitable[Any]], int]:
        changes, last = await self.lcs.changes(after)
        pending: list[Awaitable[Any]] = []
        for change in changes:
            if change["kind"] == "stepdown_requested":
                pending.append(await self._publish(change["request_id"], change["seq"]))
            elif change["kind"] == "record_reopened":
                for req in await self.lcs.pending_requests(change["child_id"]):
                    pending.append(await self._publish(req["request_id"], change["seq"]))
        return pending, last

    async def _publish(self, request_id: str, seq: int) -> Awaitable[Any]:
        request = await self.lcs.request(request_id)
        child = await self.lcs.child(request["child_id"])
        return await self.publish({"child": child, "request": request}, seq)

    async def reread(self, source: dict[str, Any]) -> dict[str, Any]:
        request = await self.lcs.request(source["request"]["request_id"])
        return {"child": await self.lcs.child(request["child_id"]), "request": request}

    def mapping(self, source: dict[str, Any], position: int) -> Mapped:
        transfer_id = transfer_id_for(self.council, source["request"]["request_id"])
        envelope = {
            "transfer_id": transfer_id,
            "message_id": f"{transfer_id}-c{position}",
            "council": self.council.value,
            "published_at": datetime.now(UTC).isoformat(),
        }
        key = wire.child_key(CaseSystem.LCS, source["child"]["id"]).encode()
        return Mapped(
            transfer_id,
            key,
            lambda: TransferMessage.model_validate(_MAPPING.apply({**source, "envelope": envelope})),
        )
