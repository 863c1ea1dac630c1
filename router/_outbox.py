"""Everything the router writes to Kafka goes through here: events and dead letters.

One idempotent producer (acks=all). Writes are sent without waiting; ``flush()`` waits
for the broker's acknowledgement of all of them, and the consumer commits its offsets
only after that, so a message's outcome is on the broker before its offset moves on.

Events (five or more a transfer, small) are queued and handed to the producer
``EVENT_CHUNK`` at a time (and the rest at ``flush()``) as one record batch per
partition: aiokafka's per-record ``send()`` costs more CPU than building the event
itself. Each batch is closed when handed over, so the producer sends it at once rather
than lingering ``linger_ms`` on it. Their Kafka timestamp is when they were handed over
(the event's own ``occurred_at`` keeps when it happened). Dead letters and the other
writes, which carry whole messages, go through ``send()`` at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.structs import ConsumerRecord

from contracts import TransferEvent

from . import __version__
from ._retry import H_REPLAY_OF, Origin, header, original_headers

DLQ_PREFIX = "casebridge.dlq."
Write = tuple[bytes, bytes, list[tuple[str, bytes]]]  # key, value, headers
EVENT_CHUNK = 500  # queued events handed to the producer together (about 100 transfers' worth)


class OutputFailed(Exception):
    """The broker did not acknowledge an event or a dead letter: processing must stop."""


@dataclass(frozen=True)
class Failure:
    """Why a message is dead-lettered. ``message`` carries no personal data."""

    stage: str
    error_class: str
    message: str
    attempts: int = 1
    rule_ids: Sequence[str] = ()
    first_failure: datetime = field(default_factory=lambda: datetime.now(UTC))
    last_failure: datetime = field(default_factory=lambda: datetime.now(UTC))
    transfer_id: str | None = None
    council: str | None = None


def dead_letter_headers(
    record: ConsumerRecord[bytes, bytes], group_id: str, failure: Failure
) -> list[tuple[str, bytes]]:
    """The original headers byte for byte, then the context (Kafka Connect ``__connect.errors.*`` facts).

    For a message that went through retry tiers, "original" is where it first entered.
    """
    origin = Origin.of(record)
    context = {
        "original.topic": origin.topic,
        "original.partition": str(origin.partition),
        "original.offset": str(origin.offset),
        "original.timestamp": str(record.timestamp),
        "consumer.group": group_id,
        "stage": failure.stage,
        "error.class": failure.error_class,
        "error.message": failure.message,
        "attempts": str(failure.attempts),
        "first.failure": failure.first_failure.isoformat(),
        "last.failure": failure.last_failure.isoformat(),
        "rule.ids": ",".join(failure.rule_ids),
        "transfer.id": failure.transfer_id or "",
        "council": failure.council or "",
        "version": __version__,
    }
    return original_headers(record) + [(DLQ_PREFIX + k, v.encode()) for k, v in context.items()]


class Outbox:
    def __init__(
        self,
        bootstrap_servers: str,
        events_topic: str,
        dead_letter_topic: str,
        group_id: str,
        parking_topic: str | None = None,
    ) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_batch_size=256 * 1024,
        )
        self._events_topic = events_topic
        self._dead_letter_topic = dead_letter_topic
        self._parking_topic = parking_topic or dead_letter_topic
        self._group_id = group_id
        self._pending: list[asyncio.Future[object]] = []
        self._events: list[Write] = []
        self._send_error: Exception | None = None
        self._partitioner = DefaultPartitioner()  # the producer's own default: murmur2 of the key, as Java's

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def emit(self, event: TransferEvent) -> None:
        """Queue an event (keyed by transfer id); sent and acknowledged at the next ``flush()``."""
        key = (event.transfer_id or event.event_id).encode()
        # the model's own serializer straight to bytes: model_dump_json() to the byte, without the str round trip
        value = event.__pydantic_serializer__.to_json(event)
        self._events.append((key, value, [("event_type", event.event_type.encode())]))
        if len(self._events) >= EVENT_CHUNK:  # on their way while the batch is still processed
            events, self._events = self._events, []
            try:
                await self._send_events(events)
            except Exception as exc:  # an output failure is the flush's to report (the router halts), not the flow's
                self._send_error = self._send_error or exc

    async def dead_letter(self, record: ConsumerRecord[bytes, bytes], failure: Failure) -> None:
        """To the dead-letter topic; a replayed message that failed again goes to the parking topic instead."""
        topic = self._parking_topic if header(record, H_REPLAY_OF) is not None else self._dead_letter_topic
        await self.send(topic, record.key, record.value, dead_letter_headers(record, self._group_id, failure))

    async def send(self, topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> None:
        """Any other write (retry tiers, retry state); acknowledged at the next ``flush()``."""
        self._pending.append(await self._producer.send(topic, value=value, key=key, headers=headers))

    async def flush(self) -> None:
        """Send the queued events, then wait until the broker acknowledged every write so far.

        Raises OutputFailed if any write failed (or the events could not be handed over).
        """
        events, self._events = self._events, []
        try:
            await self._send_events(events)
        except Exception as exc:  # the producer refused them (closed, buffer timeout): nothing may be committed
            self._send_error = self._send_error or exc
        if self._send_error is not None:
            error, self._send_error = self._send_error, None
            self._pending.clear()
            raise OutputFailed(f"events could not be sent: {type(error).__name__}") from error
        pending, self._pending = self._pending, []
        results = await asyncio.gather(*pending, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            raise OutputFailed(
                f"{len(failed)} of {len(results)} writes were not acknowledged: {type(failed[0]).__name__}"
            )

    async def _send_events(self, events: list[Write]) -> None:
        """One record batch per partition (partitioned by key as the producer would), in queue order."""
        if not events:
            return
        topic = self._events_topic
        partitions = sorted(await self._producer.partitions_for(topic))
        by_partition: dict[int, list[Write]] = {}
        chosen: dict[bytes, int] = {}  # a transfer's events share its key: hash it once
        for write in events:
            p = chosen.get(write[0])
            if p is None:
                p = chosen[write[0]] = self._partitioner(write[0], partitions, partitions)
            by_partition.setdefault(p, []).append(write)
        for p, writes in by_partition.items():
            batch = self._producer.create_batch()
            for key, value, headers in writes:
                if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                    batch.close()
                    self._pending.append(await self._producer.send_batch(batch, topic, partition=p))
                    batch = self._producer.create_batch()
                    if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                        # larger than a whole batch: the producer sizes a batch for it
                        self._pending.append(await self._producer.send(topic, value, key=key, headers=headers))
            if batch.record_count():
                batch.close()  # complete: the producer sends a closed batch at once instead of lingering on it
                self._pending.append(await self._producer.send_batch(batch, topic, partition=p))
