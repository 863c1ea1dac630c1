"""The flow tracker: reads ``<prefix>.events`` into the store, resumable and rebuildable.

No consumer group: the store keeps the topic positions itself, in the same transaction
as the events (so a crash between the two cannot lose or double-count). Rebuilding is
deleting the database: the tracker then reads the topic from its beginning.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from pydantic import ValidationError

from connectors import kafka as clients
from connectors.kafka import Kafka
from contracts import TransferEvent, parse_event
from router.settings import Topics

from ._store import Position, Store

log = structlog.get_logger("casebridge.monitor")


def drop_store(path: Path) -> None:
    """Delete the tracker's database (and SQLite's side files): the next start rebuilds from Kafka."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


class Tracker:
    def __init__(self, store: Store, kafka: Kafka, topics: Topics) -> None:
        self.store = store
        self.kafka = kafka
        self.topic = topics.events
        self.consumer: AIOKafkaConsumer | None = None
        self.assigned: list[TopicPartition] = []
        self.skipped = 0  # records that are not valid events (kept out of the store, counted)

    async def start(self) -> None:
        self.consumer = clients.consumer(
            self.kafka,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        self.consumer.subscribe([self.topic])  # no group: every partition is ours
        await self.consumer.start()
        await self._assign()

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()
            self.consumer = None

    async def _assign(self) -> bool:
        """Once the events topic's partitions are ours, resume each from the store's position."""
        assert self.consumer is not None
        if self.assigned:
            return True
        partitions = sorted(self.consumer.assignment())
        if not partitions:
            return False
        stored = self.store.positions(self.topic)
        for tp in partitions:
            if tp.partition in stored:
                self.consumer.seek(tp, stored[tp.partition])
            else:
                await self.consumer.seek_to_beginning(tp)
        self.assigned = partitions
        log.info("tracker_assigned", topic=self.topic, partitions=len(partitions), resumed=bool(stored))
        return True

    async def poll_once(self, timeout_ms: int = 500) -> int:
        """Read what is there (waiting up to ``timeout_ms``) into the store; returns how many events were new."""
        assert self.consumer is not None, "start() first"
        if not await self._assign():
            await asyncio.sleep(min(timeout_ms, 100) / 1000)
            return 0
        batch = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=2000)
        events: list[TransferEvent] = []
        positions: list[Position] = []
        for tp, records in batch.items():
            for r in records:
                try:
                    events.append(parse_event(r.value or b""))
                except ValidationError:
                    self.skipped += 1
                    log.warning("tracker_event_unreadable", topic=tp.topic, partition=tp.partition, offset=r.offset)
            if records:
                positions.append(Position(tp.topic, tp.partition, records[-1].offset + 1))
        return self.store.apply(events, positions) if positions else 0

    async def lag(self) -> dict[int, int]:
        """How far the store is behind the topic's end, per partition."""
        assert self.consumer is not None
        if not self.assigned:
            return {}
        ends = await self.consumer.end_offsets(self.assigned)
        stored = self.store.positions(self.topic)
        return {tp.partition: max(0, end - stored.get(tp.partition, 0)) for tp, end in ends.items()}

    async def catch_up(self, timeout: float = 60.0) -> None:
        """Poll until the store holds everything the topic held when called (tests, rebuilds)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self.assigned and not any((await self.lag()).values()):
                return
            await self.poll_once(200)
        raise TimeoutError(f"the tracker did not catch up with {self.topic} in {timeout} s")

    async def run(self, stopped: asyncio.Event) -> None:
        while not stopped.is_set():
            try:
                await self.poll_once(500)
            except Exception as exc:  # a broker hiccup must not end the tracker; the store resumes where it was
                log.warning("tracker_poll_failed", error_class=type(exc).__name__)
                await asyncio.sleep(1.0)
