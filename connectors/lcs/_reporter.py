from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .._feed import FileCursor, idempotent_producer, poll_forever
from ._connector import LcsConnector, decision_events


class DecisionReporter:
    """Reports the Front Door's decisions on step-up contacts as ``front-door-decision`` events (NS-12).

    Delivery: at least once (the cursor is saved after the broker acknowledged the page's events; the
    event ids are stable, so a page sent twice is deduplicated by id downstream).
    """

    def __init__(self, lcs: LcsConnector, bootstrap_servers: str, events_topic: str, cursor: Path) -> None:
        self.lcs = lcs
        self.events_topic = events_topic
        self.cursor = FileCursor(cursor)
        self.producer = idempotent_producer(bootstrap_servers)

    async def start(self) -> None:
        await self.lcs.start()
        await self.producer.start()

    async def stop(self) -> None:
        await self.producer.stop()
        await self.lcs.stop()

    async def poll_once(self) -> int:
        after = self.cursor.load()
        decisions, last = await self.lcs.front_door_decisions(after)
        events = decision_events(decisions)
        futures = [
            await self.producer.send(
                self.events_topic,
                value=e.model_dump_json().encode(),
                key=(e.transfer_id or e.event_id).encode(),
                headers=[("event_type", e.event_type.encode())],
            )
            for e in events
        ]
        for fut in futures:
            await fut
        if last != after:
            self.cursor.save(last)
        return len(events)

    async def run(self, interval: float = 0.5, stop: Callable[[], bool] = lambda: False) -> None:
        await poll_forever(self.poll_once, interval, stop, "lcs-front-door-decisions")
