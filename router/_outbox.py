"""Everything the router writes to Kafka goes through here: events, dead letters, retry tiers, state.

One idempotent producer (acks=all). Writes are queued, in order, and handed to the
producer ``CHUNK`` at a time or once the oldest has waited ``LINGER`` (and the rest at
``hand_over()``), as one record batch per topic partition: aiokafka's per-record
``send()`` costs more CPU than building an event. Each batch is closed when handed over,
so the producer sends it at once rather than lingering ``linger_ms`` on it. A partition's
writes keep their queue order (one hand-over at a time), so the last value of a compacted
key is the last one written. A full chunk is handed over in the background (one hand-over under way at a
time; what is queued meanwhile goes in the next): the flow does not wait while the producer waits for room,
unless ``MAX_QUEUED`` writes are waiting. Their Kafka timestamp is when they were handed over (an
event's own ``occurred_at`` keeps when it happened).

``hand_over()`` returns a task that ends when the broker has acknowledged every write
handed over so far (this hand-over's and, chained, every earlier one's), or raises
OutputFailed. The router commits a batch's offsets only after that task ended, so a
message's outcome is on the broker before its offset moves on; it can process the next
batch meanwhile.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.structs import ConsumerRecord

from connectors import kafka as clients
from connectors._feed import MAX_DEAD_LETTER_BYTES, record_bytes
from connectors._outage import close_producer, is_transient_kafka_error
from connectors.kafka import Kafka
from contracts import TransferEvent, wire

from . import __version__
from ._fencing import RECHECK_SECONDS
from ._retry import H_REPLAY_OF, Origin, header, original_headers

log = structlog.get_logger("casebridge.router")
Queued = tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]  # topic, key, value, headers
CHUNK = 500  # queued writes handed to the producer together (about 80 transfers' worth)
LINGER = 0.01  # seconds a queued write waits at most for more, while writes keep coming (latency)
#: queued writes at which the flow waits for the background hand-over (the producer that far behind)
MAX_QUEUED = 20 * CHUNK
STALL = RECHECK_SECONDS  # no write queued for this long with some waiting: the process may have been paused


class OutputFailed(Exception):
    """The broker did not acknowledge an event or a dead letter: nothing of the batch may be committed.

    ``transient``: every failure was one a broker's recovery makes go away (``connectors._outage``: the broker
    away, a leader election, an idempotent producer out of step after a restart, a batch that timed out): the
    router recovers in-process (``casebridge.stack``). Otherwise (a record too large, not authorized) it halts.
    """

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class Fenced(Exception):
    """The member's writes were dropped (``Outbox.fence``): its group moved its partitions to another member."""


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
    """The original headers byte for byte, then the context (Kafka Connect ``__connect.errors.*`` facts), then
    the same facts under Spring Kafka's names (``spring_dlt_headers``: ``kafka_dlt-original-topic``, ...).

    For a message that went through retry tiers, "original" is where it first entered. A replayed message's
    ``kafka_dlt-*`` headers from its earlier dead letter are not carried over (each dead letter has its own).
    """
    origin = Origin.of(record)
    context = [  # in the order of wire.DLQ_HEADERS
        origin.topic,
        str(origin.partition),
        str(origin.offset),
        str(record.timestamp),
        group_id,
        failure.stage,
        failure.error_class,
        failure.message,
        str(failure.attempts),
        failure.first_failure.isoformat(),
        failure.last_failure.isoformat(),
        ",".join(failure.rule_ids),
        failure.transfer_id or "",
        failure.council or "",
        __version__,
    ]
    original = [(k, v) for k, v in original_headers(record) if not k.startswith(wire.DLT_PREFIX)]
    spring = wire.spring_dlt_headers(
        origin.topic, origin.partition, origin.offset, failure.error_class, failure.message
    )
    return original + [(k, v.encode()) for k, v in zip(wire.DLQ_HEADERS, context, strict=True)] + spring


class Outbox:
    def __init__(
        self,
        kafka: Kafka,
        events_topic: str,
        dead_letter_topic: str,
        group_id: str,
        parking_topic: str | None = None,
    ) -> None:
        #: topics whose writes say that work is done (the router's lifecycle): held until every other write of their
        #: hand-over, and of every hand-over before, is acknowledged, then sent (``_acknowledged``); never sent if one
        #: of those failed. A record saying a transfer completed then never lands without that transfer's events.
        self.sent_after_acknowledged: frozenset[str] = frozenset()
        self._after: list[Queued] = []  # such writes queued since the last hand-over
        self._producer = clients.producer(
            kafka,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_batch_size=256 * 1024,
        )
        self._events_topic = events_topic
        self._dead_letter_topic = dead_letter_topic
        self._parking_topic = parking_topic or dead_letter_topic
        self._group_id = group_id
        self._queued: list[Queued] = []
        self._first_queued = 0.0  # time.monotonic() when the oldest queued write was queued
        self._sending = asyncio.Lock()
        #: the last background hand-over to the producer (of full chunks, ``_flush_from``; or a hand-over's, ``_cut``)
        self._flushing: asyncio.Future[Any] | None = None
        self._pending: list[asyncio.Future[object]] = []
        self._send_error: Exception | None = None
        self._acked: asyncio.Task[None] | None = None  # the last hand-over's acknowledgement (chained)
        self._partitioner = DefaultPartitioner()  # the producer's own default (keyless writes: at random)
        #: why this member may no longer write (``fence``): its writes are dropped, its hand-overs fail
        self.fenced: str | None = None
        self._last_queued = 0.0
        self._stalled = False  # queued writes wait for the hand-over (see ``_queue``)
        #: asked before each produce request leaves for the broker (``_gate_produce_requests``): why this member may
        #: not write any more (it was dropped from its group), or None; None here: nothing to ask (not a group member)
        self.gate: Callable[[], Awaitable[str | None]] | None = None

    async def _may_send(self) -> str | None:
        """Why the producer may not send what it holds (this member was fenced), or None."""
        if self.fenced is None and self.gate is not None:
            reason = await self.gate()
            if reason is not None:
                self.fence(reason)
        return self.fenced

    async def start(self, topics: Sequence[str] = ()) -> None:
        """Connect; and learn the partitions of ``topics`` now, so the first writes to them do not wait for it."""
        await self._producer.start()
        _gate_produce_requests(self._producer, self._may_send)
        for topic in topics:
            await self._producer.partitions_for(topic)

    async def stop(self, within: float = 3.0) -> None:
        """Flush and close, for ``within`` seconds at most: past that (the broker away) what is still unsent is
        dropped, never sent later; it was not acknowledged, so its batch was not committed and is read again."""
        started = time.monotonic()
        if self._flushing is not None:  # within the same ``within`` as the close
            await asyncio.wait([self._flushing], timeout=within / 2)
        await close_producer(self._producer, max(0.1, within - (time.monotonic() - started)), "router outbox")

    async def emit(self, event: TransferEvent) -> None:
        """Queue an event (keyed as ``contracts.wire.event_key``: by transfer id); sent at the next hand-over."""
        # the model's own serializer straight to bytes: model_dump_json() to the byte, without the str round trip
        value = event.__pydantic_serializer__.to_json(event)
        await self._queue(self._events_topic, wire.event_key(event), value, wire.event_headers(event.event_type))

    async def emit_encoded(self, transfer_id: str, event_type: str, value: bytes) -> None:
        """Queue an event already serialised (the bytes ``model_dump_json`` gives), keyed by its transfer id."""
        await self._queue(self._events_topic, transfer_id.encode(), value, wire.event_headers(event_type))

    async def dead_letter(self, record: ConsumerRecord[bytes, bytes], failure: Failure) -> None:
        """To the dead-letter topic; a replayed message that failed again goes to the parking topic instead.

        A record too big to dead-letter whole (with the context headers it would pass the producer's and the
        broker's 1 MiB limits, and the router would halt on it at every restart) is dead-lettered by reference:
        the headers, its original topic, partition and offset and its size, and no value."""
        topic = self._parking_topic if header(record, H_REPLAY_OF) is not None else self._dead_letter_topic
        headers = dead_letter_headers(record, self._group_id, failure)
        value = record.value
        size = record_bytes(record.key, value, headers)
        if size > MAX_DEAD_LETTER_BYTES:
            headers += [(wire.DLQ_BY_REFERENCE, b"true"), (wire.DLQ_ORIGINAL_SIZE, str(size).encode())]
            value = None
            log.warning("dead_letter_by_reference", transfer_id=failure.transfer_id, size=size)
        await self.send(topic, record.key, value, headers)

    async def send(self, topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> None:
        """Any other write (retry tiers, retry state, history); sent at the next hand-over."""
        await self._queue(topic, key, value, headers)

    def fence(self, reason: str) -> None:
        """This group member lost its partitions without knowing (paused past its session timeout): what it has
        not sent yet is dropped, never sent, and every hand-over from now on fails (transient), so nothing in flight
        is committed; the new owner reads those records again. What the producer already holds and has not sent is
        failed when its turn to be sent comes (``_gate_produce_requests``), never sent."""
        self.fenced = self.fenced or reason
        self._queued = []
        self._after = []

    async def _queue(
        self, topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        if self.fenced is not None:
            return
        if topic in self.sent_after_acknowledged:
            self._after.append((topic, key, value, headers))
            return
        queued = self._queued
        now = time.monotonic()
        if not queued:
            self._first_queued = now
        elif now - self._last_queued > STALL:
            # the process stood still (paused, frozen) with writes queued: it may have been dropped from its group
            # meanwhile, so they wait for the hand-over, which comes after the router confirmed its membership
            self._stalled = True
        self._last_queued = now
        queued.append((topic, key, value, headers))
        # on their way while the batch is still processed: every CHUNK writes, or once the first waited LINGER
        if self._stalled or (len(queued) < CHUNK and now - self._first_queued < LINGER):
            return
        flushing = self._flushing
        if flushing is not None and not flushing.done():
            if len(queued) < MAX_QUEUED:
                return  # the hand-over under way takes them next
            await asyncio.wait([flushing])  # the producer is this far behind: the flow waits for it (not cancelling it)
            if self._flushing is not flushing or self._stalled or self.fenced is not None:
                return  # another write started the next, or they wait for the hand-over
        queued, self._queued = self._queued, []
        if queued:
            self._flushing = asyncio.ensure_future(self._flush_from(self._flushing, queued))

    async def _flush_from(self, before: asyncio.Future[Any] | None, queued: list[Queued]) -> None:
        """Hand ``queued`` to the producer in the background, then what was queued meanwhile (a CHUNK at least),
        until the queue is short: the flow goes on while the producer waits for room (the partition's batch before
        still in flight), and what it queues meanwhile goes in one hand-over, not many."""
        if before is not None:
            await asyncio.wait([before])  # a flush or a cut: neither raises; a cancellation here stops only this one
        try:
            while queued and self.fenced is None:
                await self._send_in_turn(queued)
                # more only while nothing was chained after this flush (a hand-over's writes go before those queued
                # after them)
                later = self._flushing is not asyncio.current_task()
                # (a process paused meanwhile: what was queued before waits for the hand-over, as in ``_queue``)
                stood_still = time.monotonic() - self._last_queued > STALL
                if not later and not stood_still and len(self._queued) >= CHUNK and not self._stalled:
                    queued, self._queued = self._queued, []
                else:
                    queued = []
        except Exception as exc:  # the hand-over reports it (the router halts), not the flow
            self._send_error = self._send_error or exc

    async def hand_over(self) -> asyncio.Task[None]:
        """Send what is queued; the task returned ends once every write so far is acknowledged.

        The task raises OutputFailed if any write failed, or could not be handed to the
        producer, since the start (each hand-over's task waits for the one before). Nothing is waited for here:
        the writes go to the producer in the background, after those already on their way and before any queued
        later (``_cut``).
        """
        queued, self._queued = self._queued, []
        after, self._after = self._after, []
        self._stalled = False
        cut = asyncio.ensure_future(self._cut(self._flushing, queued))
        self._flushing = cut
        self._acked = asyncio.ensure_future(self._acknowledged(self._acked, cut, after))
        return self._acked

    async def _acknowledged(
        self,
        previous: asyncio.Task[None] | None,
        cut: asyncio.Future[tuple[list[asyncio.Future[object]], Exception | None]],
        after: list[Queued],
    ) -> None:
        """Until the cut's writes and every earlier hand-over's are acknowledged (else OutputFailed); then the
        hand-over's ``sent_after_acknowledged`` writes are sent, after the earlier hand-overs' (the previous task
        ended first), and acknowledged."""
        pending, error = await asyncio.shield(cut)  # a cancelled wait for the acknowledgement leaves the writes going
        await _all_acknowledged(previous, pending, error)
        if not after:
            return
        held: list[asyncio.Future[object]] = []
        try:
            if self.fenced is not None:
                raise Fenced(self.fenced)
            async with self._sending:
                await self._send(after, held)
        except Exception as exc:
            error = exc
        await _all_acknowledged(None, held, error)

    async def _cut(
        self, before: asyncio.Future[Any] | None, queued: list[Queued]
    ) -> tuple[list[asyncio.Future[object]], Exception | None]:
        """A hand-over's writes to the producer, after what was on its way before; then every write handed to the
        producer so far (not yet in a hand-over's) and the first error since the last cut. Never raises."""
        if before is not None:
            await asyncio.wait([before])  # a flush or a cut: neither raises
        try:
            if self.fenced is not None:
                raise Fenced(self.fenced)
            await self._send_in_turn(queued)
        except Exception as exc:  # the producer refused them (closed, buffer timeout): nothing may be committed
            self._send_error = self._send_error or exc
        error, self._send_error = self._send_error, None
        pending, self._pending = self._pending, []
        return pending, error

    async def flush(self) -> None:
        """Send what is queued and wait until the broker acknowledged every write so far (or raise OutputFailed)."""
        await (await self.hand_over())

    async def _send_in_turn(self, queued: list[Queued]) -> None:
        """One hand-over at a time, in the order they were cut from the queue (a FIFO lock).

        Handing a batch to the producer can wait (for the partition's batch before it to
        drain); two hand-overs running side by side could then put a later write of a
        partition before an earlier one.
        """
        async with self._sending:
            await self._send(queued, self._pending)

    async def _send(self, queued: list[Queued], pending: list[asyncio.Future[object]]) -> None:
        """One record batch per topic partition (partitioned by key as the producer would), in queue order; the
        producer's futures for them appended to ``pending``."""
        if not queued:
            return
        by_partition: dict[tuple[str, int], list[Queued]] = {}
        chosen: dict[tuple[str, bytes | None], int] = {}  # a transfer's events share its key: hash it once
        partitions_of: dict[str, list[int]] = {}
        for write in queued:
            topic, key = write[0], write[1]
            p = chosen.get((topic, key)) if key is not None else None
            if p is None:
                partitions = partitions_of.get(topic)
                if partitions is None:
                    partitions = partitions_of[topic] = sorted(await self._producer.partitions_for(topic))
                if key is None:
                    p = self._partitioner(None, partitions, partitions)  # the producer's choice: at random
                else:  # as the producer's default partitioner: murmur2 of the key, as Java's
                    p = chosen[(topic, key)] = partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]
            by_partition.setdefault((topic, p), []).append(write)
        for (topic, p), writes in by_partition.items():
            batch = self._producer.create_batch()
            for _, key, value, headers in writes:
                if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                    if batch.record_count():
                        batch.close()
                        pending.append(await self._producer.send_batch(batch, topic, partition=p))
                        batch = self._producer.create_batch()
                    if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                        # larger than a whole batch: the producer sizes a batch for it
                        pending.append(await self._producer.send(topic, value, key=key, headers=headers, partition=p))
            if batch.record_count():
                batch.close()  # complete: the producer sends a closed batch at once instead of lingering on it
                pending.append(await self._producer.send_batch(batch, topic, partition=p))


def _gate_produce_requests(producer: Any, may_send: Callable[[], Awaitable[str | None]]) -> None:
    """Ask ``may_send`` before each produce request leaves: a member paused with record batches already in the
    producer (appended, not yet sent) must not send them when it resumes if its partitions went to another member
    meanwhile; they would land after the new owner's writes (a child's lifecycle entry overwritten by an older one).
    Refused batches fail with ``Fenced``, so their hand-over fails and nothing of them is committed.

    aiokafka (0.12-0.14) drains ready batches per broker and sends each node's through
    ``Sender._send_produce_req(node_id, batches)``; this wraps that one method of this producer's sender (the
    asyncio equivalent of the Java client's check of a transactional producer's epoch, which aiokafka has only
    for transactions). The check is a clock comparison while the membership was confirmed in the last
    ``RECHECK_SECONDS``, a heartbeat otherwise.
    """
    sender: Any = getattr(producer, "_sender", None)
    send = getattr(sender, "_send_produce_req", None)
    if sender is None or send is None:  # pragma: no cover - the pyproject pins the aiokafka versions that have it
        raise RuntimeError("this aiokafka's producer has no Sender._send_produce_req: pin aiokafka to 0.12-0.14")

    async def gated(node_id: int, batches: dict[Any, Any]) -> None:
        refused = await may_send()
        if refused is None:
            await send(node_id, batches)
            return
        for batch in batches.values():
            batch.failure(exception=Fenced(refused))
        sender._in_flight.discard(node_id)  # as the original does once a request is answered
        for tp in batches:
            sender._muted_partitions.discard(tp)

    sender._send_produce_req = gated


_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (the Java client's ``Utils.murmur2``, as aiokafka's): the same numbers, a word at a time.

    aiokafka's pure-Python version reads byte by byte; this one unpacks the 4-byte words at once.
    """
    length = len(data)
    h = 0x9747B28C ^ length
    words = length >> 2
    if words:
        for k in struct.unpack_from(f"<{words}I", data):
            k = (k * _M) & _MASK
            k ^= k >> 24
            h = ((h * _M) & _MASK) ^ ((k * _M) & _MASK)
    extra = length & 3
    if extra:
        tail = length & ~3
        if extra >= 3:
            h ^= data[tail + 2] << 16
        if extra >= 2:
            h ^= data[tail + 1] << 8
        h = ((h ^ data[tail]) * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    return h ^ (h >> 15)


async def _all_acknowledged(
    previous: asyncio.Task[None] | None, pending: list[asyncio.Future[object]], error: Exception | None
) -> None:
    """Until ``pending`` are answered and ``previous`` ended; raises OutputFailed if any failed, or ``error``."""
    results = await asyncio.gather(*pending, return_exceptions=True)
    if previous is not None:
        await previous  # raises OutputFailed if an earlier hand-over failed: this one is not "all so far" then
    if error is not None:
        transient = isinstance(error, Fenced) or is_transient_kafka_error(error)  # a fenced member rejoins afresh
        raise OutputFailed(f"writes could not be sent: {type(error).__name__}", transient=transient) from error
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        raise OutputFailed(
            f"{len(failed)} of {len(results)} writes were not acknowledged: {type(failed[0]).__name__}",
            transient=all(isinstance(f, Fenced) or is_transient_kafka_error(f) for f in failed),
        ) from failed[0]
