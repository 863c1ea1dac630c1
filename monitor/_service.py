"""One monitor: the tracker, the watch (lag, dead letters) and the metrics over one store."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from connectors import kafka as clients
from connectors._feed import idempotent_producer
from connectors.kafka import Kafka
from router.settings import Topics

from ._index import DeadLetterIndex
from ._lag import TRACKER_GROUP, Watch
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
    index: DeadLetterIndex = field(init=False)
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
        self.index = DeadLetterIndex(self.store, self.kafka, self.topics)
        self.watch = Watch(self.kafka, self.topics, self.tracker, self.settings.lag_interval_seconds, self.index)
        self.registry = registry_for(self.store, self.watch, self.health)

    def health(self, *, detail: bool = True) -> dict[str, Any]:
        """What /healthz, ``/api/health``, the page's banner and the metrics say about the monitor itself.

        ``detail=False`` (the unauthenticated /healthz) leaves Kafka's address out.

        From memory only (never SQLite, never Kafka), so it answers at once whatever is stuck. ``problems``
        is one line per thing an operator should know: the tracker not storing, the tracker (or a consumer group
        on the deployment's topics) behind by more than ``behind_threshold``, Kafka unreachable (or not checked
        for three intervals).
        """
        tracker, kafka = self.tracker.health(), self.watch.health()
        problems: list[dict[str, str]] = []
        lag = tracker["lag"]
        behind = f"{lag} event(s) behind the events topic" if lag is not None else "how far behind is not known yet"
        if not tracker["storing"]:
            problems.append(
                {
                    "kind": "tracker-not-storing",
                    "message": f"The tracker cannot store events ({tracker['store_error']}) since "
                    f"{tracker['failing_since']}: {behind}. It retries and skips nothing; "
                    "the figures below are as stored.",
                }
            )
        elif lag is not None and lag > self.settings.behind_threshold:
            problems.append(
                {
                    "kind": "tracker-behind",
                    "message": f"The tracker is {behind} (more than {self.settings.behind_threshold}).",
                }
            )
        for row in self.watch.lag:  # the router and the loops: a consumer group behind on a topic
            if row["group"] != TRACKER_GROUP and row["lag"] > self.settings.behind_threshold:
                problems.append(
                    {
                        "kind": "consumer-behind",
                        "message": f"Consumer group {row['group']} is {row['lag']} message(s) behind on {row['topic']} "
                        f"(more than {self.settings.behind_threshold}).",
                    }
                )
        checked = self.watch.kafka_checked_at
        stale = checked is not None and time.time() - checked > 3 * self.watch.interval + 10
        if kafka["reachable"] is False or stale:
            where = f" at {clients.servers(self.kafka)}" if detail else ""
            why = kafka["error"] if kafka["reachable"] is False else "no answer for three rounds"
            since = kafka["failing_since"] or kafka["checked_at"]
            problems.append(
                {
                    "kind": "kafka-unreachable",
                    "message": f"Kafka{where} is unreachable ({why}) since {since}: lag and "
                    f"dead letters are from {kafka['lag_refreshed_at'] or 'never'}.",
                }
            )
        return {
            "status": "degraded" if problems else "ok",
            "problems": problems,
            "tracker": {**tracker, "behind_threshold": self.settings.behind_threshold},
            "kafka": kafka,
        }

    async def start(self) -> None:
        self._stopped = asyncio.Event()
        await self.tracker.start()
        await self.index.start()
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
        await self.index.stop()
        await self.tracker.stop()
        self.store.close()
