from __future__ import annotations

from pathlib import Path

from contracts import TransferEvent

from .._feed import EventReporter
from ..kafka import Kafka
from ._connector import EhmConnector, allocation_events


class AllocationReporter(EventReporter):
    """Reports EHM allocations back as ``allocated`` events (NS-5: the tray item got its worker)."""

    feed = "ehm-allocations"

    def __init__(self, ehm: EhmConnector, kafka: Kafka, events_topic: str, cursor: Path) -> None:
        super().__init__(ehm, kafka, events_topic, cursor)
        self.ehm = ehm

    async def read(self, after: int) -> tuple[list[TransferEvent], int]:
        allocations, last = await self.ehm.allocations(after)
        return list(allocation_events(allocations)), last
