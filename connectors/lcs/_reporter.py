from __future__ import annotations

from pathlib import Path

from contracts import TransferEvent

from .._feed import EventReporter
from ..kafka import Kafka
from ._connector import LcsConnector, decision_events


class DecisionReporter(EventReporter):
    """Reports the Front Door's decisions on step-up contacts as ``front-door-decision`` events (NS-12)."""

    feed = "lcs-front-door-decisions"

    def __init__(self, lcs: LcsConnector, kafka: Kafka, events_topic: str, cursor: Path) -> None:
        super().__init__(lcs, kafka, events_topic, cursor)
        self.lcs = lcs

    async def read(self, after: int) -> tuple[list[TransferEvent], int]:
        decisions, last = await self.lcs.front_door_decisions(after)
        return list(decision_events(decisions)), last
