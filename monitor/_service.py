"""One monitor: the tracker, the watch (lag, dead letters) and the metrics over one store."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from connectors._feed import idempotent_producer
from connectors.kafka import Kafka
from router.settings import Topics

from ._lag import Watch
from ._metrics import registry_for
from ._settings import MonitorSettings
from ._store import Store
from ._tracker import Tracker, drop_store


@dataclass
class Monitor:
    settings: MonitorSettings
    kafka: Kafka
    topics: Topics
    rebuild: bool = False
    store: Store = field(init=False)
    tracker: Tracker = field(init=False)
    watch: Watch = field(init=False)
    registry: CollectorRegistry = field(init=False)
    #: writes the milestones operators record (started and stopped with the monitor)
    producer: AIOKafkaProducer = field(init=False)
    _stopped: asyncio.Event = field(init=False, default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        if self.rebuild:
            drop_store(self.settings.db)
        self.store = Store(self.settings.db)
        self.tracker = Tracker(self.store, self.kafka, self.topics)
        self.watch = Watch(self.kafka, self.topics, self.tracker, self.settings.lag_interval_seconds)
        self.registry = registry_for(self.store, self.watch)

    async def start(self) -> None:
        self._stopped = asyncio.Event()
        await self.tracker.start()
        self.producer = idempotent_producer(self.kafka)  # on the loop that serves the monitor
        await self.producer.start()
        self._tasks = [
            asyncio.create_task(self.tracker.run(self._stopped)),
            asyncio.create_task(self.watch.run(self._stopped)),
        ]

    async def stop(self) -> None:
        self._stopped.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.producer.stop()
        await self.tracker.stop()
        self.store.close()
