"""Change feeds read from a case system, resumed from a durable cursor after a restart."""

from __future__ import annotations

import asyncio
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, cast

import structlog
from aiokafka import AIOKafkaProducer
from pydantic import ValidationError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception
from tenacity.wait import wait_random_exponential

from contracts import Council, TransferEvent, TransferMessage, field_errors
from mappings import MappingError

from . import kafka as clients
from ._base import Connector
from .kafka import Kafka

log = structlog.get_logger("casebridge.connectors")


class FileCursor:
    """The last feed position whose outputs Kafka acknowledged; written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> int:
        try:
            return int(json.loads(self.path.read_text(encoding="utf-8"))["after"])
        except FileNotFoundError:
            return 0

    def save(self, after: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"after": after}), encoding="utf-8")
        os.replace(tmp, self.path)


def idempotent_producer(kafka: Kafka) -> AIOKafkaProducer:
    """The producer every connector publishes with: idempotent, acknowledged by all replicas."""
    return clients.producer(kafka, acks="all", enable_idempotence=True, linger_ms=5)


async def poll_forever(
    poll_once: Callable[[], Awaitable[int]], interval: float, stop: Callable[[], bool], name: str
) -> None:
    """Poll a feed until ``stop()``; a case system that is down is waited for (tenacity backoff), not fatal."""

    def note(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning("feed_unavailable", feed=name, error_class=type(exc).__name__, attempt=state.attempt_number)

    retrying = AsyncRetrying(
        retry=retry_if_exception(lambda e: getattr(e, "retriable", False)),
        wait=wait_random_exponential(multiplier=0.5, max=30),
        before_sleep=note,
        reraise=True,
    )
    while not stop():
        async for attempt in retrying:
            with attempt:
                found = await poll_once()
        if found == 0:
            await asyncio.sleep(interval)


class _FeedLoop(ABC):
    """A feed read from a case system's connector, resumed from a durable cursor, whose outputs an
    idempotent producer writes; ``run`` polls it until told to stop."""

    #: the feed's name in logs (``feed_unavailable``)
    feed: ClassVar[str]

    def __init__(self, connector: Connector, kafka: Kafka, cursor: Path) -> None:
        self.connector = connector
        self.cursor = FileCursor(cursor)
        self.producer = idempotent_producer(kafka)

    async def start(self) -> None:
        await self.connector.start()
        await self.producer.start()

    async def stop(self) -> None:
        await self.producer.stop()
        await self.connector.stop()

    @abstractmethod
    async def poll_once(self) -> int:
        """Handle everything new in the feed; returns how many records were written."""

    async def run(self, interval: float = 0.5, stop: Callable[[], bool] = lambda: False) -> None:
        await poll_forever(self.poll_once, interval, stop, self.feed)


class EventReporter(_FeedLoop):
    """A case system's feed of what happened to transfers it received (allocations, decisions), reported
    as events on the events topic.

    At-least-once: the cursor is saved only after the broker acknowledged the page's events; the event
    ids come from the feed positions, so a page reported twice is deduplicated by id downstream.
    """

    def __init__(self, connector: Connector, kafka: Kafka, events_topic: str, cursor: Path) -> None:
        super().__init__(connector, kafka, cursor)
        self.events_topic = events_topic

    @abstractmethod
    async def read(self, after: int) -> tuple[list[TransferEvent], int]:
        """The events of the feed's page after ``after``, and the next position."""

    async def poll_once(self) -> int:
        """Report everything new in the feed; returns how many events were sent."""
        after = self.cursor.load()
        events, last = await self.read(after)
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
            await fut  # acknowledged by the broker before the cursor moves
        if last != after:
            self.cursor.save(last)
        return len(events)


class FeedPublisher(_FeedLoop):
    """What every change-feed publisher shares: the connector it reads, a durable cursor, an idempotent
    producer, and one way to turn a source record into a canonical transfer or, when the mapping or the
    contract refuses it, a dead letter at the ``map`` stage.

    At-least-once: the cursor moves only after Kafka acknowledged everything published from the feed
    positions it passes; transfer and message ids are stable, so a re-publication is the same transfer.
    """

    def __init__(
        self,
        connector: Connector,
        kafka: Kafka,
        transfers_topic: str,
        dead_letter_topic: str,
        cursor: Path,
        council: Council,
    ) -> None:
        super().__init__(connector, kafka, cursor)
        self.transfers_topic = transfers_topic
        self.dead_letter_topic = dead_letter_topic
        self.council = council
        self.published = 0

    @abstractmethod
    async def collect(self, after: int) -> tuple[list[Awaitable[Any]], int]:
        """Publish what the feed holds after ``after``: the broker's pending acknowledgements and the new position."""

    async def poll_once(self) -> int:
        """Publish everything new in the feed; returns how many records were sent."""
        after = self.cursor.load()
        pending, last = await self.collect(after)
        for fut in pending:
            await fut  # acknowledged by the broker before the cursor moves
        if last != after:
            self.cursor.save(last)
        self.published += len(pending)
        return len(pending)

    async def publish(
        self,
        what: str,
        transfer_id: str,
        key: bytes,
        build: Callable[[], TransferMessage],
        source: dict[str, Any],
    ) -> Awaitable[Any]:
        """Send ``build()``'s transfer, or ``source`` as a dead letter naming the field and rule it broke.

        ``what`` names the log events (``<what>_published`` / ``<what>_unmappable``); ids only, never the record.
        """
        try:
            transfer = build()
        except (MappingError, ValidationError) as exc:
            reason = (
                str(exc)
                if isinstance(exc, MappingError)
                else "; ".join(f"{e.field}: {e.rule}" for e in field_errors(exc))
            )
            error_class = "MappingError" if isinstance(exc, MappingError) else "ContractViolation"
            log.warning(f"{what}_unmappable", transfer_id=transfer_id, error_class=error_class)
            sent = await self.producer.send(
                self.dead_letter_topic,
                value=json.dumps(source).encode(),
                key=key,
                headers=[
                    ("casebridge.dlq.stage", b"map"),
                    ("casebridge.dlq.error.class", error_class.encode()),
                    ("casebridge.dlq.error.message", reason.encode()),
                    ("casebridge.dlq.rule.ids", ",".join(getattr(exc, "rule_ids", ())).encode()),
                    ("casebridge.dlq.transfer.id", transfer_id.encode()),
                    ("casebridge.dlq.council", self.council.value.encode()),
                    ("casebridge.dlq.last.failure", datetime.now(UTC).isoformat().encode()),
                ],
            )
            return cast(Awaitable[Any], sent)
        log.info(f"{what}_published", transfer_id=transfer_id)
        sent = await self.producer.send(self.transfers_topic, value=transfer.model_dump_json().encode(), key=key)
        return cast(Awaitable[Any], sent)
