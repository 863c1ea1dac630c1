from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .._feed import FileCursor, idempotent_producer, poll_forever
from ._connector import EhmConnector, allocation_events


class AllocationReporter:
    """Reports EHM allocations back as ``allocated`` events (NS-5: the tray item got its worker)."""

    def __init__(self, ehm: EhmConnector, bootstrap_servers: str, events_topic: str, cursor: Path) -> None:
        self.ehm = ehm
        self.events_topic = events_topic
        self.cursor = FileCursor(cursor)
        self.producer = idempotent_producer(bootstrap_servers)

    async def start(self) -> None:
        await self.ehm.start()
        await self.producer.start()

    async def stop(self) -> None:
        await self.producer.stop()
        await self.ehm.stop()

    async def poll_once(self) -> int:
        after = self.cursor.load()
        allocations, last = await self.ehm.allocations(after)
        events = allocation_events(allocations)
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
        await poll_forever(self.poll_once, interval, stop, "ehm-allocations")
