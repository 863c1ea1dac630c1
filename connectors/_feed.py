"""Change feeds read from a case system, resumed from a durable cursor after a restart (``connectors._cursors``:
the cursor stores, and the lease that gives a deployment's feeds one owner)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import weakref
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, cast

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import CommitFailedError, IllegalStateError
from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception
from tenacity.wait import wait_random_exponential

from contracts import Council, TransferEvent, TransferMessage, field_errors, wire
from mappings import MappingError

from . import kafka as clients
from ._base import Connector
from ._cursors import Cursor, FileCursor
from ._outage import OUTAGE, close_producer, is_transient_kafka_error, is_unreachable
from ._replay_audit import ReplayAudits, replayed_event
from ._tracing import headers_with_context, publishing
from .kafka import Kafka

log = structlog.get_logger("casebridge.connectors")

#: above this (key, value and headers), a dead letter carries its record by reference only (no value): under Kafka's
#: default 1 MiB limits with room for the batch's own overhead, so writing it can never stop the writer
MAX_DEAD_LETTER_BYTES = 1_000_000


def record_bytes(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> int:
    """A record's size as ``MAX_DEAD_LETTER_BYTES`` counts it: key, value and every header's name and value."""
    return len(key or b"") + len(value or b"") + sum(len(k) + len(v) for k, v in headers)


#: how to build a producer again like each idempotent producer made here (``renew_producer``)
_RENEW: weakref.WeakKeyDictionary[AIOKafkaProducer, Callable[[], AIOKafkaProducer]] = weakref.WeakKeyDictionary()


def idempotent_producer(kafka: Kafka) -> AIOKafkaProducer:
    """The producer every connector publishes with: idempotent, acknowledged by all replicas."""
    producer = clients.producer(kafka, acks="all", enable_idempotence=True, linger_ms=5)
    _RENEW[producer] = lambda: idempotent_producer(kafka)
    return producer


def producer_dead(producer: AIOKafkaProducer) -> bool:
    """aiokafka's sender task ended (it ends only on a fatal error, e.g. ``OutOfOrderSequenceNumber`` after a
    broker restart, or when stopped): no write will go out again, every later send fails the same way."""
    task = getattr(getattr(producer, "_sender", None), "sender_task", None)
    return task is not None and task.done()


async def renew_producer(owner: Any, attr: str = "producer") -> None:
    """Replace ``owner.<attr>`` by a fresh, started producer if its sender died (``producer_dead``); the dead one
    is closed, sending nothing more. A fresh producer's start fails while the broker is away (a transient error:
    the caller waits and asks again)."""
    old = getattr(owner, attr)
    make = _RENEW.get(old)
    if make is None or not producer_dead(old):
        return
    fresh = make()
    await close_producer(old, 1.0)
    await fresh.start()
    setattr(owner, attr, fresh)
    log.info("kafka_producer_renewed", owner=type(owner).__name__)


async def _sleep_unless(stop: Callable[[], bool], seconds: float) -> None:
    """Sleep ``seconds``, but return within 0.2 s once ``stop()`` (SIGTERM must not wait out a backoff)."""
    end = asyncio.get_running_loop().time() + seconds
    while not stop():
        left = end - asyncio.get_running_loop().time()
        if left <= 0:
            return
        await asyncio.sleep(min(left, 0.2))


async def poll_forever(
    poll_once: Callable[[], Awaitable[int]],
    interval: float,
    stop: Callable[[], bool],
    name: str,
    reset: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Poll a feed until ``stop()``. Waited for (tenacity backoff, at most 30 s between tries), never fatal: a
    case system that is down (its error says ``retriable``) and a transient Kafka error
    (``connectors._outage``: the broker away or recovering). A Kafka error is reported to ``OUTAGE`` (one line
    for the whole outage, not one a try) and ``reset()`` runs before the next try (a producer whose sender died
    is renewed). The loop resumes from its durable cursor or committed offsets: nothing moved past an
    unacknowledged write. Any other error ends the loop (the stack then exits 4)."""
    kafka_failed = False

    def transient(exc: BaseException) -> bool:
        return bool(getattr(exc, "retriable", False)) or is_transient_kafka_error(exc)

    def note(state: RetryCallState) -> None:
        nonlocal kafka_failed
        exc = state.outcome.exception() if state.outcome else None
        if exc is not None and is_transient_kafka_error(exc):
            kafka_failed = True
            if is_unreachable(exc):
                OUTAGE.failed(name, exc)  # one line for the whole outage
            else:  # the cluster answers, but is recovering (a leader election): one line a try, backed off
                log.warning("kafka_recovering", feed=name, error_class=type(exc).__name__, attempt=state.attempt_number)
        else:
            log.warning("feed_unavailable", feed=name, error_class=type(exc).__name__, attempt=state.attempt_number)

    async def sleep(seconds: float) -> None:
        await _sleep_unless(stop, seconds)

    retrying = AsyncRetrying(
        retry=retry_if_exception(transient),
        wait=wait_random_exponential(multiplier=0.5, max=30),
        stop=lambda _: stop(),
        sleep=sleep,
        before_sleep=note,
        reraise=True,
    )
    while not stop():
        try:
            async for attempt in retrying:
                with attempt:
                    if kafka_failed and reset is not None:
                        await reset()
                    found = await poll_once()
        except Exception as exc:
            if stop() and transient(exc):
                return  # told to stop while waiting: the cursor did not move past what failed
            raise
        if kafka_failed:
            kafka_failed = False
            OUTAGE.answered(name)
        if found == 0:
            await _sleep_unless(stop, interval)


class _FeedLoop(ABC):
    """A feed read from a case system's connector, resumed from a durable cursor, whose outputs an
    idempotent producer writes; ``run`` polls it until told to stop."""

    #: the feed's name in logs (``feed_unavailable``)
    feed: ClassVar[str]

    #: the feed runs under the deployment's feeds lease (``connectors._cursors.FeedLease``): what follows the
    #: owner (the remap consumer) is started by ``resume`` when this process takes the feeds over, not by ``start``
    leased: bool = False

    def __init__(self, connector: Connector, kafka: Kafka, cursor: Path) -> None:
        self.connector = connector
        #: a file in the state directory; under the lease, the deployment's cursor topic (``KafkaCursors``)
        self.cursor: Cursor = FileCursor(cursor)
        self.producer = idempotent_producer(kafka)

    async def start(self) -> None:
        await self.connector.start()
        await self.producer.start()

    async def stop(self) -> None:
        await close_producer(self.producer, 2.0, f"{self.feed} producer")  # bounded: the broker may be away
        await self.connector.stop()

    async def resume(self) -> None:
        """This process took the feeds over (the lease): start what follows the owner."""

    async def pause(self) -> None:
        """This process gave the feeds up: stop what follows the owner (before the lease moves on)."""

    @abstractmethod
    async def poll_once(self) -> int:
        """Handle everything new in the feed; returns how many records were written."""

    async def run(self, interval: float = 0.5, stop: Callable[[], bool] = lambda: False) -> None:
        await poll_forever(self.poll_once, interval, stop, self.feed, reset=lambda: renew_producer(self))


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
                key=wire.event_key(e),
                headers=wire.event_headers(e.event_type),
            )
            for e in events
        ]
        for fut in futures:
            await fut  # acknowledged by the broker before the cursor moves
        if last != after:
            await self.cursor.commit(last)
        return len(events)


@dataclass(frozen=True)
class Mapped:
    """What a publisher's mapping makes of one source record: the transfer id, the Kafka key, and how to build the
    canonical transfer (raises ``MappingError`` or a contract ``ValidationError`` when it cannot)."""

    transfer_id: str
    key: bytes
    build: Callable[[], TransferMessage]


@dataclass(frozen=True)
class Remap:
    """Where a feed publisher finds the map-stage dead letters an operator replayed (``casebridge replay`` writes
    them to ``topic``), and where it writes what it makes of them: the transfer to the transfers topic, a record
    still unmappable to ``parking``, the ``replayed`` event to ``events``. ``group_id``: its own consumer group."""

    topic: str
    parking: str
    events: str
    group_id: str
    #: the audit topic: a ``replayed`` event only for a replay it records (``_replay_audit.py``); None: trusted
    audit: str | None = None


class FeedPublisher(_FeedLoop):
    """What every change-feed publisher shares: the connector it reads, a durable cursor, an idempotent
    producer, and one way to turn a source record into a canonical transfer (``mapping``) or, when the mapping
    or the contract refuses it, a dead letter at the ``map`` stage naming this publisher (``name``) and the feed
    position.

    With ``remap``, it also follows the remap topic: a map-stage dead letter of its own that an operator replayed
    is mapped again (``remap_once``), on the source record as the system holds it now (``reread``: the data
    may have been fixed there; the stored record if the system no longer has it), and published as the feed
    would have published it (same transfer and message ids), or parked with the new reason.

    At-least-once: the cursor moves only after Kafka acknowledged everything published from the feed
    positions it passes, and the remap offsets are committed only after the broker acknowledged what was
    written for them; transfer and message ids are stable, so a re-publication is the same transfer.
    """

    #: the log events' prefix (``<what>_published`` / ``<what>_unmappable``)
    what: ClassVar[str]

    def __init__(
        self,
        connector: Connector,
        kafka: Kafka,
        transfers_topic: str,
        dead_letter_topic: str,
        cursor: Path,
        council: Council,
        remap: Remap | None = None,
    ) -> None:
        super().__init__(connector, kafka, cursor)
        self.transfers_topic = transfers_topic
        self.dead_letter_topic = dead_letter_topic
        self.council = council
        self.published = 0
        self.remap = remap
        self.remapped = 0
        self.replay_audits = ReplayAudits(kafka, remap.audit) if remap is not None and remap.audit else None
        self._kafka = kafka
        self._remap_consumer: AIOKafkaConsumer | None = None

    @property
    def name(self) -> str:
        """Which publisher this is (``<feed>/<council>``): a map-stage dead letter names it, and only it remaps it."""
        return f"{self.feed}/{self.council.value}"

    async def start(self) -> None:
        await super().start()
        if not self.leased:
            await self.resume()

    async def resume(self) -> None:
        """Follow the remap topic (its own consumer group): only the process that runs the feeds does."""
        if self.remap is not None and self._remap_consumer is None:
            consumer = clients.consumer(self._kafka, self.remap.topic, group_id=self.remap.group_id,
                                        enable_auto_commit=False, auto_offset_reset="earliest")  # fmt: skip
            await consumer.start()
            self._remap_consumer = consumer

    async def pause(self) -> None:
        """Leave the remap group (its partitions go to the process that takes the feeds over)."""
        if self._remap_consumer is not None:
            consumer, self._remap_consumer = self._remap_consumer, None
            await consumer.stop()

    async def stop(self) -> None:
        await self.pause()
        await super().stop()

    @abstractmethod
    async def collect(self, after: int) -> tuple[list[Awaitable[Any]], int]:
        """Publish what the feed holds after ``after``: the broker's pending acknowledgements and the new position."""

    @abstractmethod
    def mapping(self, source: dict[str, Any], position: int) -> Mapped:
        """The source record (as the feed reads it) read at feed ``position`` -> transfer id, key and build: the one
        mapping both the feed and the remap path use."""

    async def reread(self, source: dict[str, Any]) -> dict[str, Any]:
        """The source record as the system holds it now, read by the ids in ``source`` (a stored one)."""
        return source

    async def poll_once(self) -> int:
        """Publish everything new in the feed, then remap what was replayed; returns how many records were sent."""
        after = self.cursor.load()
        pending, last = await self.collect(after)
        for fut in pending:
            await fut  # acknowledged by the broker before the cursor moves
        if last != after:
            await self.cursor.commit(last)
        self.published += len(pending)
        return len(pending) + await self.remap_once()

    async def publish(self, source: dict[str, Any], position: int) -> Awaitable[Any]:
        """Send the mapping's transfer, or ``source`` as a dead letter naming the field and rule it broke, or (a
        transfer too big to send: the producer would refuse it, and the feed stop with its cursor stuck) naming its
        size. The size is checked on the bytes that would be sent, with room for the trace context headers."""
        mapped = self.mapping(source, position)
        try:
            transfer = mapped.build()
            encoded = transfer.model_dump_json().encode()
            size, limit = len(mapped.key or b"") + len(encoded), MAX_DEAD_LETTER_BYTES - 4_096  # the trace headers
            if size > limit:
                raise MappingError(
                    f"transfer_too_large: the transfer is {size} bytes as written, over {limit}: too big to publish; "
                    "send its documents by reference"
                )
        except (MappingError, ValidationError) as exc:
            log.warning(f"{self.what}_unmappable", transfer_id=mapped.transfer_id, error_class=_error_class(exc))
            value: bytes | None = json.dumps(source).encode()
            headers = self._map_failure_headers(mapped, exc, position)
            size = record_bytes(mapped.key, value, headers)
            if size > MAX_DEAD_LETTER_BYTES:  # too big to dead-letter whole: by reference (the case system has it)
                headers += [(wire.DLQ_BY_REFERENCE, b"true"), (wire.DLQ_ORIGINAL_SIZE, str(size).encode())]
                value = None
                log.warning("dead_letter_by_reference", transfer_id=mapped.transfer_id, size=size)
            sent = await self.producer.send(self.dead_letter_topic, value=value, key=mapped.key, headers=headers)
            return cast(Awaitable[Any], sent)
        log.info(f"{self.what}_published", transfer_id=mapped.transfer_id)
        with publishing(mapped.transfer_id, self.name, self.transfers_topic):  # the transfer's trace starts here
            sent = await self.producer.send(self.transfers_topic, value=encoded, key=mapped.key,
                                            headers=headers_with_context(()))  # fmt: skip
        return cast(Awaitable[Any], sent)

    def _map_failure_headers(
        self, mapped: Mapped, exc: MappingError | ValidationError, position: int
    ) -> list[tuple[str, bytes]]:
        """A map-stage failure's headers: casebridge's context, then Spring's (``spring_dlt_headers``: the "original
        topic" is the topic a redrive writes it back to, the remap topic this publisher follows (the record is a
        source record, mapped again there; without a remap topic, the feed's name); partition 0; the offset the
        feed position)."""
        reason = _reason(exc)
        error_class = _error_class(exc)
        return [
            (wire.DLQ_STAGE, b"map"),
            (wire.DLQ_ERROR_CLASS, error_class.encode()),
            (wire.DLQ_ERROR_MESSAGE, reason.encode()),
            (wire.DLQ_RULE_IDS, ",".join(getattr(exc, "rule_ids", ())).encode()),
            (wire.DLQ_TRANSFER_ID, mapped.transfer_id.encode()),
            (wire.DLQ_COUNCIL, self.council.value.encode()),
            (wire.DLQ_LAST_FAILURE, datetime.now(UTC).isoformat().encode()),
            (wire.DLQ_PUBLISHER, self.name.encode()),
            (wire.DLQ_FEED_POSITION, str(position).encode()),
            *wire.spring_dlt_headers(self.remap.topic if self.remap else self.feed, 0, position, error_class, reason),
        ]

    async def remap_once(self) -> int:
        """Map again each replayed map-stage dead letter addressed to this publisher that is on the remap topic;
        commit past them once the broker acknowledged what was written. Returns how many were remapped."""
        consumer = self._remap_consumer
        if consumer is None or self.remap is None:
            return 0
        batch = await consumer.getmany(timeout_ms=50)
        if not batch:
            return 0
        done = 0
        try:
            pending: list[Awaitable[Any]] = []
            for records in batch.values():
                for r in records:
                    if dict(r.headers or ()).get(wire.DLQ_PUBLISHER) == self.name.encode():
                        pending += await self._remap(r)
                        done += 1
            for fut in pending:
                await fut  # acknowledged by the broker before the offsets move
        except BaseException:
            for tp, records in batch.items():  # nothing of this batch committed: read it again on the next try
                with contextlib.suppress(IllegalStateError):  # no longer ours (a rebalance): its new owner reads it
                    consumer.seek(tp, records[0].offset)
            raise
        self.remapped += done
        try:
            await consumer.commit({tp: records[-1].offset + 1 for tp, records in batch.items()})
        except (CommitFailedError, IllegalStateError) as exc:  # a rebalance took them: read again, written again
            log.warning("remap_commit_failed", feed=self.feed, error_class=type(exc).__name__)  # (same ids)
        return done

    async def _remap(self, r: ConsumerRecord[bytes, bytes]) -> list[Awaitable[Any]]:
        assert self.remap is not None
        headers = {k: bytes(v).decode(errors="replace") for k, v in (r.headers or ())}
        of, operator = headers.get(wire.REPLAY_OF, ""), headers.get(wire.REPLAY_OPERATOR, "")
        position = int(headers.get(wire.DLQ_FEED_POSITION, "0") or 0)
        replay = [(wire.REPLAY_OF, of.encode()), (wire.REPLAY_OPERATOR, operator.encode())]
        try:
            stored = json.loads(r.value or b"")
            if not isinstance(stored, dict):
                raise ValueError("not a JSON object")
        except ValueError:
            return [await self._park_unreadable(r, of, replay, "is not the JSON object a feed publisher stores")]
        try:
            source = await self.reread(stored)
        except Exception as exc:
            if getattr(exc, "retriable", False) or is_transient_kafka_error(exc):
                raise  # the system is down: tried again (``poll_forever``), nothing committed
            log.info(f"{self.what}_remap_stored", dead_letter=of, error_class=type(exc).__name__)
            source = stored  # the system no longer has it (or refuses to say): the stored record
        try:
            mapped = self.mapping(source, position)
        except (KeyError, TypeError, ValueError):
            return [await self._park_unreadable(r, of, replay, f"lacks the ids {self.feed} maps a record by")]
        out: list[Awaitable[Any]] = []
        try:
            transfer = mapped.build()
        except (MappingError, ValidationError) as exc:
            log.warning(f"{self.what}_remap_parked", transfer_id=mapped.transfer_id, dead_letter=of,
                        error_class=_error_class(exc))  # fmt: skip
            failed = self._map_failure_headers(mapped, exc, position)
            out.append(await self.producer.send(self.remap.parking, value=json.dumps(source).encode(),
                                                key=mapped.key, headers=failed + replay))  # fmt: skip
        else:
            log.info(f"{self.what}_remapped", transfer_id=mapped.transfer_id, dead_letter=of)
            with publishing(mapped.transfer_id, self.name, self.transfers_topic):
                out.append(await self.producer.send(self.transfers_topic, value=transfer.model_dump_json().encode(),
                                                    key=mapped.key, headers=headers_with_context(replay)))  # fmt: skip
        event = await replayed_event(self.replay_audits, of, operator, mapped.transfer_id)
        out.append(await self.producer.send(self.remap.events, value=event.model_dump_json().encode(),
                                            key=wire.event_key(event),
                                            headers=wire.event_headers(event.event_type)))  # fmt: skip
        return out

    async def _park_unreadable(
        self, r: ConsumerRecord[bytes, bytes], of: str, replay: list[tuple[str, bytes]], what: str
    ) -> Awaitable[Any]:
        """A replayed record this publisher cannot even read as a source record: parked as it is, with why."""
        assert self.remap is not None
        log.warning(f"{self.what}_remap_unreadable", dead_letter=of)
        reason = f"the replayed dead letter {what}"
        kept = [(k, bytes(v)) for k, v in (r.headers or ()) if k.startswith(wire.DLQ_PREFIX) and k not in _REASON]
        headers = [*kept, (wire.DLQ_ERROR_CLASS, b"MappingError"), (wire.DLQ_ERROR_MESSAGE, reason.encode()),
                   (wire.DLQ_LAST_FAILURE, datetime.now(UTC).isoformat().encode()), *replay]  # fmt: skip
        sent = await self.producer.send(self.remap.parking, value=r.value, key=r.key, headers=headers)
        return cast(Awaitable[Any], sent)


#: the headers a parked unreadable record gets anew
_REASON = frozenset(wire.MAP_STAGE_REASON_HEADERS)


def _reason(exc: MappingError | ValidationError) -> str:
    if isinstance(exc, MappingError):
        return str(exc)
    return "; ".join(f"{e.field}: {e.rule}" for e in field_errors(exc))


def _error_class(exc: BaseException) -> str:
    return "MappingError" if isinstance(exc, MappingError) else "ContractViolation"
