from __future__ import annotations

from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from contracts import CaseSystem, Council, ServiceLevel, TransferMessage, wire
from mappings import load_mapping

from .._feed import FeedPublisher, Mapped, Remap
from ..kafka import Kafka
from ._connector import EhmConnector

_MAPPING = load_mapping("ehm-stepup")


def stepup_transfer_id(council: Council, request_id: str) -> str:
    """Stable for the handover: the same EHM Step-Up request always yields the same transfer id."""
    return f"{council.value}-ehm-{request_id}".lower()


class StepUpPublisher(FeedPublisher):
    """Reads EHM's Step-Up requests from a durable cursor and publishes them as step-up transfers.

    Delivery guarantee: at-least-once, with stable transfer and message ids (from the request id),
    so a re-publication after a crash is the same transfer downstream.
    """

    feed = "ehm-stepups"
    what = "ehm_stepup"

    def __init__(
        self,
        ehm: EhmConnector,
        kafka: Kafka,
        transfers_topic: str,
        dead_letter_topic: str,
        cursor: Path,
        council: Council = Council.NORTH_SOMERSET,
        from_level: ServiceLevel = ServiceLevel.INTENSIVE_EARLY_HELP,
        remap: Remap | None = None,
    ) -> None:
        super().__init__(ehm, kafka, transfers_topic, dead_letter_topic, cursor, council, remap)
        self.ehm = ehm
        self.from_level = from_level

    async def collect(self, after: int) -> tuple[list[Awaitable[Any]], int]:
        requests, last = await self.ehm.stepup_requests(after)
        return [await self._publish(r) for r in requests], last

    async def _publish(self, request: dict[str, Any]) -> Awaitable[Any]:
        episode = await self.ehm.episode(request["episode_id"])
        return await self.publish({"episode": episode, "request": request}, int(request.get("seq", 0)))

    async def reread(self, source: dict[str, Any]) -> dict[str, Any]:
        """The episode as EHM holds it now (the request itself is only in EHM's feed: the stored one)."""
        return {"episode": await self.ehm.episode(source["request"]["episode_id"]), "request": source["request"]}

    def mapping(self, source: dict[str, Any], position: int) -> Mapped:
        transfer_id = stepup_transfer_id(self.council, source["request"]["request_id"])
        envelope = {
            "transfer_id": transfer_id,
            "message_id": f"{transfer_id}-m1",
            "council": self.council.value,
            "from_level": self.from_level.value,
        }
        return Mapped(
            transfer_id,
            wire.child_key(CaseSystem.EHM, source["episode"]["episode_id"]).encode(),
            lambda: TransferMessage.model_validate(_MAPPING.apply({**source, "envelope": envelope})),
        )
