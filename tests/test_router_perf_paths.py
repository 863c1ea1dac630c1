"""The cheaper paths of the perf branch give exactly what the plain ones gave."""

from __future__ import annotations

import asyncio
import json
import random
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaTimeoutError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

import contracts
from bench._workload import Workload
from contracts import CaseSystem, Council, Direction, ServiceLevel
from router import _outbox, app
from router._outbox import CHUNK, MAX_QUEUED, Outbox, OutputFailed, murmur2

_PEEK_CASES: list[bytes | None] = [
    None,
    b"",
    b"not json",
    b"[1, 2]",
    b"17",
    b'"t-1"',
    b"null",
    b"{}",
    b'{"transfer_id": "t-1"}',
    b'  {"transfer_id" : "ns-2026.1:a_b"}  ',
    b'{"transfer_id": "a", "transfer_id": "b"}',
    b'{"x": {"transfer_id": "nested"}}',
    b'{"x": {"transfer_id": "nested"}, "transfer_id": "top"}',
    b'{"transfer_id": 12}',
    b'{"transfer_id": null}',
    b'{"transfer_id": ["t-1"]}',
    b'{"transfer_id": ""}',
    b'{"transfer_id": "' + b"x" * 128 + b'"}',
    b'{"transfer_id": "' + b"x" * 129 + b'"}',
    b'{"transfer_id": "has space"}',
    b'{"transfer_id": "t/1"}',
    b'{"transfer_id": "\\u00e9t\\u00e9"}',
    '{"transfer_id": "été"}'.encode(),
    b'{"transfer_id": "t-1", "n": NaN}',
    b'{"transfer_id": "t-1"',
    b'{"transfer_id": "t-1"} trailing',
    b'\xff\xfe{"transfer_id": "t-1"}',
    b'{"transfer_id": "t-1", "bad": "\xff"}',
]


def peek_transfer_id(raw: bytes | None) -> str | None:
    """The plain reading the router's peek must agree with: the whole document through json.loads."""
    try:
        value = json.loads(raw or b"").get("transfer_id")
    except (ValueError, AttributeError):
        return None
    if (
        isinstance(value, str)
        and 0 < len(value) <= 128
        and value.replace("-", "").replace("_", "").replace(".", "").replace(":", "").isalnum()
    ):
        return value
    return None


@pytest.mark.parametrize("raw", _PEEK_CASES)
def test_perf_peek_transfer_id_gives_the_plain_answer(raw: bytes | None) -> None:
    """The router's top-level-only peek returns what json.loads(...).get('transfer_id') gave, for any input."""
    assert app.peek_transfer_id(raw) == peek_transfer_id(raw)


def test_perf_peek_transfer_id_on_whole_transfers() -> None:
    workload = Workload()
    for seq in range(0, 200, 7):
        raw = json.dumps(workload.document(seq)).encode()
        assert app.peek_transfer_id(raw) == peek_transfer_id(raw) is not None


def _every_event() -> list[Any]:
    now = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
    common: dict[str, Any] = {
        "event_id": "e-1",
        "transfer_id": "t-1",
        "correlation_id": "c-1",
        "council": Council.NORTH_SOMERSET,
        "occurred_at": now,
    }
    return [
        contracts.TransferRequested(
            **common,
            direction=Direction.STEP_DOWN,
            from_level=ServiceLevel.CHILD_IN_NEED,
            to_level=ServiceLevel.EARLY_HELP,
            from_system=CaseSystem.LCS,
            to_system=CaseSystem.EHM,
        ),
        contracts.TransferValidated(**common),
        contracts.TransferDelivered(
            **common, target_system=CaseSystem.EHM, target_reference="ehm-1", assigned_role="lead", rule_ids=["NS-2"]
        ),
        contracts.TransferAcknowledged(**common, target_system=CaseSystem.EHM, target_reference="ehm-1"),
        contracts.SourceClosed(**common, source_system=CaseSystem.LCS, source_reference="lcs-1"),
        contracts.TransferRetryScheduled(**common, tier=0, due_at=now, attempts=2, error_class="TransientError"),
        contracts.AlertRaised(**common, severity="warning", summary="target unavailable"),
    ]


async def test_perf_events_are_queued_as_the_bytes_model_dump_json_gives() -> None:
    """The outbox serialises with the model's serializer: the same bytes as model_dump_json(), valid events."""
    outbox = Outbox("127.0.0.1:1", "events", "dlq", "g")  # never started: emit only queues
    events = _every_event()
    for event in events:
        await outbox.emit(event)
    queued = outbox._queued
    assert {"events"} == {topic for topic, _, _, _ in queued}
    assert [value for _, _, value, _ in queued] == [e.model_dump_json().encode() for e in events]
    assert [contracts.parse_event(value or b"") for _, _, value, _ in queued] == events
    assert [headers for _, _, _, headers in queued] == [[("event_type", e.event_type.encode())] for e in events]
    await outbox.stop()


class _RecordingProducer:
    """Stands in for AIOKafkaProducer's send side: keeps the batches handed to send_batch."""

    def __init__(self, real: AIOKafkaProducer) -> None:
        self.create_batch = real.create_batch  # aiokafka's own batch builder (needs no broker)
        self.batches: list[tuple[Any, str, int]] = []
        self.failing: Exception | None = None

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2}

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> asyncio.Future[object]:
        self.batches.append((batch, topic, partition))
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        if self.failing is not None:
            future.set_exception(self.failing)
        else:
            future.set_result(None)
        return future


async def test_perf_event_batches_are_closed_so_the_producer_sends_them_without_lingering() -> None:
    """Every event batch handed to the producer is closed (aiokafka then sends it at once, not after linger_ms)."""
    outbox = Outbox("127.0.0.1:1", "events", "dlq", "g")
    await outbox.stop()
    producer = _RecordingProducer(outbox._producer)
    outbox._producer = cast(Any, producer)
    for event in _every_event():
        await outbox.emit(event)
    await outbox.flush()
    assert producer.batches
    assert all(batch.closed() for batch, _, _ in producer.batches)
    assert sum(batch.record_count() for batch, _, _ in producer.batches) == len(_every_event())


def _records_of(batch: Any) -> list[tuple[bytes | None, bytes | None]]:
    """The (key, value) records of a closed aiokafka batch, in order."""
    from aiokafka.record.default_records import DefaultRecordBatch

    raw = bytes(batch._build())
    return [(r.key, r.value) for r in DefaultRecordBatch(raw)]


async def test_perf_every_write_goes_in_queue_order_per_partition_in_closed_batches() -> None:
    """Events, history and retry-state writes are batched per topic partition; each partition keeps queue order."""
    outbox = Outbox("127.0.0.1:1", "events", "dlq", "g")
    await outbox.stop()
    producer = _RecordingProducer(outbox._producer)
    outbox._producer = cast(Any, producer)
    writes = [(f"state-{i % 4}", f"k{i % 7}".encode(), f"v{i}".encode()) for i in range(1200)]  # > 2 chunks
    for topic, key, value in writes:
        await outbox.send(topic, key, value, [])
    await outbox.send("state-0", b"k0", None, [])  # a tombstone
    await outbox.flush()
    sent: dict[tuple[str, int], list[tuple[bytes | None, bytes | None]]] = {}
    for batch, topic, partition in producer.batches:
        assert batch.closed()
        sent.setdefault((topic, partition), []).extend(_records_of(batch))
    expected: dict[tuple[str, int], list[tuple[bytes | None, bytes | None]]] = {}
    for topic, key, value in [*writes, ("state-0", b"k0", None)]:
        partition = outbox._partitioner(key, [0, 1, 2], [0, 1, 2])
        expected.setdefault((topic, partition), []).append((key, value))
    assert expected == sent


class _BlockedProducer(_RecordingProducer):
    """A producer with no room until the test says so (the partition's batch before still in flight)."""

    def __init__(self, real: AIOKafkaProducer) -> None:
        super().__init__(real)
        self.room = asyncio.Event()

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> asyncio.Future[object]:
        await self.room.wait()
        return await super().send_batch(batch, topic, partition=partition)


async def test_perf_the_flow_does_not_wait_for_the_producer_and_a_hand_over_keeps_queue_order() -> None:
    """Full chunks go to the producer in the background: queuing does not wait while the producer has no room, nor
    does the hand-over. What is queued after a hand-over is sent after it, each partition in queue order, even
    though a chunk was still on its way when the hand-over came."""
    outbox = Outbox("127.0.0.1:1", "events", "dlq", "g")
    await outbox.stop()
    producer = _BlockedProducer(outbox._producer)
    outbox._producer = cast(Any, producer)
    first = [("s", f"k{i % 5}".encode(), f"a{i}".encode()) for i in range(CHUNK + 120)]  # a chunk, and some
    later = [("s", f"k{i % 5}".encode(), f"b{i}".encode()) for i in range(2 * CHUNK + 30)]
    for topic, key, value in first:
        await asyncio.wait_for(outbox.send(topic, key, value, []), 0.05)
    acked = await asyncio.wait_for(outbox.hand_over(), 0.05)
    for topic, key, value in later:
        await asyncio.wait_for(outbox.send(topic, key, value, []), 0.05)
    assert (not producer.batches, acked.done()) == (True, False), "nothing could go yet"
    producer.room.set()
    await acked
    await outbox.flush()
    sent: dict[int, list[bytes | None]] = {}
    for batch, _, partition in producer.batches:
        sent.setdefault(partition, []).extend(v for _, v in _records_of(batch))
    expected: dict[int, list[bytes | None]] = {}
    for _, key, value in [*first, *later]:
        expected.setdefault(outbox._partitioner(key, [0, 1, 2], [0, 1, 2]), []).append(value)
    assert expected == sent


async def test_perf_the_flow_waits_once_max_queued_writes_wait_for_the_producer() -> None:
    """Backpressure: with the producer that far behind, queuing a write waits until it has room."""
    outbox = Outbox("127.0.0.1:1", "events", "dlq", "g")
    await outbox.stop()
    producer = _BlockedProducer(outbox._producer)
    outbox._producer = cast(Any, producer)
    for i in range(MAX_QUEUED - 1):  # fewer than MAX_QUEUED queued, however many went on their way: no wait
        await asyncio.wait_for(outbox.send("s", b"k", f"v{i}".encode(), []), 0.05)
    written = MAX_QUEUED - 1
    for _ in range(CHUNK + 1):  # the hand-over on its way took a chunk at most: one of these waits
        waiting = asyncio.ensure_future(outbox.send("s", b"k", f"v{written}".encode(), []))
        written += 1
        await asyncio.sleep(0)
        if not waiting.done():
            break
    else:
        pytest.fail(f"{written} writes queued behind a producer with no room, and none waited")
    await asyncio.sleep(0.05)
    assert not waiting.done()
    producer.room.set()
    await asyncio.wait_for(waiting, 1.0)
    await outbox.flush()
    assert written == sum(batch.record_count() for batch, _, _ in producer.batches)


class _HeldProducer(_RecordingProducer):
    """A producer whose writes are acknowledged (or failed) only when the test says."""

    def __init__(self, real: AIOKafkaProducer) -> None:
        super().__init__(real)
        self.answers: list[asyncio.Future[object]] = []

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> asyncio.Future[object]:
        self.batches.append((batch, topic, partition))
        answer: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self.answers.append(answer)
        return answer

    def topics(self) -> list[str]:
        return [topic for _, topic, _ in self.batches]

    def answer(self, error: Exception | None = None) -> None:
        for answer in self.answers:
            if not answer.done():
                answer.set_exception(error) if error is not None else answer.set_result(None)


async def _turns() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_perf_a_lifecycle_record_is_sent_only_once_the_writes_it_follows_are_acknowledged() -> None:
    """A child's lifecycle record (the transfer completed) goes to the producer only once every other write of its
    hand-over and of every hand-over before is acknowledged (on any broker), in hand-over order; it never lands
    without the transfer's events, whichever broker leads their partitions."""
    outbox = Outbox("127.0.0.1:1", "events", "dlq", "g")
    await outbox.stop()
    producer = _HeldProducer(outbox._producer)
    outbox._producer = cast(Any, producer)
    outbox.sent_after_acknowledged = frozenset({"t.lifecycle"})
    await outbox.send("t.lifecycle", b"child-1", b"done-1", [])  # queued first, in the same hand-over
    await outbox.send("events", b"tr-1", b"source-closed-1", [])
    first = await outbox.hand_over()
    await outbox.send("events", b"tr-2", b"source-closed-2", [])
    await outbox.send("t.lifecycle", b"child-1", b"done-2", [])
    second = await outbox.hand_over()
    await _turns()
    assert ["events", "events"] == producer.topics(), "no lifecycle record before its events are acknowledged"
    producer.answer()
    await _turns()
    assert ["events", "events", "t.lifecycle"] == producer.topics(), "the earlier hand-over's first"
    assert not first.done(), "a hand-over ends once its lifecycle records are acknowledged"
    producer.answer()
    await asyncio.wait_for(first, 1.0)
    await _turns()
    assert [[b"done-1"], [b"done-2"]] == [[v for _, v in _records_of(b)] for b, _, _ in producer.batches[2:]]
    assert not second.done()
    producer.answer()
    await asyncio.wait_for(second, 1.0)


async def test_perf_a_lifecycle_record_is_never_sent_when_the_writes_it_follows_failed() -> None:
    """Its hand-over's events not acknowledged: the lifecycle record is dropped (the batch is read again), and a
    later hand-over's is not sent either (not every write before it was acknowledged)."""
    outbox = Outbox("127.0.0.1:1", "events", "dlq", "g")
    await outbox.stop()
    producer = _HeldProducer(outbox._producer)
    outbox._producer = cast(Any, producer)
    outbox.sent_after_acknowledged = frozenset({"t.lifecycle"})
    await outbox.send("events", b"tr-1", b"source-closed-1", [])
    await outbox.send("t.lifecycle", b"child-1", b"done-1", [])
    first = await outbox.hand_over()
    await outbox.send("events", b"tr-2", b"source-closed-2", [])
    await outbox.send("t.lifecycle", b"child-2", b"done-2", [])
    second = await outbox.hand_over()
    await _turns()
    producer.answers[0].set_exception(KafkaTimeoutError())
    producer.answer()  # the second hand-over's events acknowledged
    for acked in (first, second):
        with pytest.raises(OutputFailed):
            await asyncio.wait_for(acked, 1.0)
    assert ["events", "events"] == producer.topics()


async def test_perf_hand_over_acknowledges_every_earlier_write_or_raises_output_failed() -> None:
    """A hand-over's task ends only when every write so far is acknowledged; a failed one fails every later one."""
    outbox = Outbox("127.0.0.1:1", "events", "dlq", "g")
    await outbox.stop()
    producer = _RecordingProducer(outbox._producer)
    outbox._producer = cast(Any, producer)
    await outbox.send("t", b"k", b"ok", [])
    first = await outbox.hand_over()
    await first
    producer.failing = KafkaTimeoutError()
    await outbox.send("t", b"k", b"lost", [])
    failed = await outbox.hand_over()  # handed to the producer in the background: it fails once it is
    with pytest.raises(OutputFailed, match="1 of 1 writes were not acknowledged: KafkaTimeoutError"):
        await failed
    producer.failing = None
    await outbox.send("t", b"k", b"after", [])
    later = await outbox.hand_over()
    with pytest.raises(OutputFailed):
        await later  # its own write was acknowledged, but not every write so far


def test_perf_murmur2_gives_the_producer_default_partitioner_numbers() -> None:
    """The outbox's word-at-a-time murmur2 equals aiokafka's (Java's) for keys of every length 0-80 bytes."""
    rng = random.Random(5)
    keys = [bytes(rng.randrange(256) for _ in range(length)) for length in range(81) for _ in range(40)]
    keys += [b"bench-12345", b"lcs:LCS-B12345", "ns-été".encode()]
    assert [aiokafka_murmur2(k) for k in keys] == [murmur2(k) for k in keys]
    partitioner = DefaultPartitioner()
    for key in keys:
        for n in (1, 3, 7):
            assert partitioner(key, list(range(n)), list(range(n))) == (murmur2(key) & 0x7FFFFFFF) % n


class _SlowProducer(_RecordingProducer):
    """A producer whose send_batch sometimes waits (as aiokafka's does while the partition's last batch drains)."""

    def __init__(self, real: AIOKafkaProducer) -> None:
        super().__init__(real)
        self.rng = random.Random(9)

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> asyncio.Future[object]:
        for _ in range(self.rng.randrange(3)):
            await asyncio.sleep(0)
        return await super().send_batch(batch, topic, partition=partition)


async def test_perf_concurrent_writers_keep_each_partition_in_queue_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many coroutines queueing at once, hand-overs that wait: each partition still gets its writes in queue order."""
    monkeypatch.setattr(_outbox, "CHUNK", 7)  # many small hand-overs, so that they overlap
    outbox = Outbox("127.0.0.1:1", "events", "dlq", "g")
    await outbox.stop()
    producer = _SlowProducer(outbox._producer)
    outbox._producer = cast(Any, producer)
    order: list[tuple[str, bytes, bytes]] = []

    async def writer(w: int) -> None:
        for i in range(150):
            write = ("state", f"k{(w + i) % 5}".encode(), f"w{w}-{i}".encode())
            order.append(write)  # queue order: appended right before the write is queued (no await between)
            await outbox.send(*write, [])
            if i % 7 == 0:
                await asyncio.sleep(0)

    await asyncio.gather(*(writer(w) for w in range(8)))
    await outbox.flush()
    sent: dict[int, list[tuple[bytes | None, bytes | None]]] = {}
    for batch, _, partition in producer.batches:
        sent.setdefault(partition, []).extend(_records_of(batch))
    expected: dict[int, list[tuple[bytes | None, bytes | None]]] = {}
    for _, key, value in order:
        expected.setdefault(outbox._partitioner(key, [0, 1, 2], [0, 1, 2]), []).append((key, value))
    assert expected == sent
