from __future__ import annotations

from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from contracts import Council, ServiceLevel, TransferMessage
from mappings import load_mapping

from .._feed import FeedPublisher
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

    def __init__(
        self,
        ehm: EhmConnector,
        kafka: Kafka,
        transfers_topic: str,
        dead_letter_topic: str,
        cursor: Path,
        council: Council = Council.NORTH_SOMERSET,
        from_level: ServiceLevel = ServiceLevel.INTENSIVE_EARLY_HELP,
    ) -> None:
        super().__init__(ehm, kafka, transfers_topic, dead_letter_topic, cursor, council)
        self.ehm = ehm
        self.from_level = from_level

    async def collect(self, after: int) -> tuple[list[Awaitable[Any]], int]:
        requests, last = await self.ehm.stepup_requests(after)
        return [await self._publish(r) for r in requests], last

    async def _publish(self, request: dict[str, Any]) -> Awaitable[Any]:
        episode = await self.ehm.episode(request["episode_id"])
        transfer_id = stepup_transfer_id(self.council, request["request_id"])
        envelope = {
            "transfer_id": transfer_id,
            "message_id": f"{transfer_id}-m1",
            "council": self.council.value,
            "from_level": self.from_level.value,
        }
        key = f"ehm:{episode['episode_id']}".encode()
        source = {"episode": episode, "request": request}
        return await self.publish(
            "ehm_stepup",
            transfer_id,
            key,
            lambda: TransferMessage.model_validate(_MAPPING.apply({**source, "envelope": envelope})),
            source,
        )
