"""Reading a whole topic as it is now (state rebuilds, operator tools), and replaying a compacted one."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Iterable
from typing import TypeVar

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.structs import ConsumerRecord, TopicPartition

from connectors import kafka as clients
from connectors.kafka import Kafka

from ._assignor import for_instance

log = structlog.get_logger("casebridge.router.reading")
K = TypeVar("K")
V = TypeVar("V")


def follower(kafka: Kafka, group_id: str, *topics: str) -> AIOKafkaConsumer:
    """A side loop's consumer (the alert dispatcher): its own group, from the beginning, offsets committed by hand."""
    return clients.consumer(
        kafka,
        *topics,
        group_id=group_id,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )


def owned_follower(
    kafka: Kafka, group_id: str, topics: list[str], listener: ConsumerRebalanceListener
) -> AIOKafkaConsumer:
    """A side loop's consumer (the lifecycle's) whose group co-partitions its topics (``_assignor.py``): partition p
    of each of them belongs to one process, which acts on the pending entries of exactly those partitions
    (``listener`` restores them when assigned, forgets them when revoked)."""
    consumer = clients.consumer(
        kafka,
        group_id=group_id,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        partition_assignment_strategy=(for_instance(),),
        session_timeout_ms=6000,
        heartbeat_interval_ms=1500,
    )
    consumer.subscribe(topics, listener=listener)
    return consumer


async def first_assignment(assigned: asyncio.Event, loop: str, timeout: float = 30.0) -> None:
    """Wait until the group first assigned the consumer its partitions (``assigned`` set by its listener once
    their entries are restored): after a loop's start its entries are in memory. Past ``timeout`` (the group
    still rebalancing) it goes on, logged: the entries are restored when the assignment comes."""
    try:
        await asyncio.wait_for(assigned.wait(), timeout)
    except TimeoutError:
        log.warning("no_assignment_yet", loop=loop, seconds=timeout)


def partition_for(key: bytes, partitions: int) -> int:
    """The partition the producer's default partitioner gives ``key`` (murmur2, as Java's)."""
    from ._outbox import murmur2  # the outbox's, which imports this module's users

    return (murmur2(key) & 0x7FFFFFFF) % partitions


async def read_all(kafka: Kafka, topic: str, timeout: float = 30.0) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of a topic, from the beginning to its end now; ``ReadIncomplete`` if that takes longer than
    ``timeout`` seconds (never a part of the topic as if it were the whole)."""
    consumer = clients.consumer(kafka, topic, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    out: list[ConsumerRecord[bytes, bytes]] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not consumer.assignment() and loop.time() < deadline:
            await asyncio.sleep(0.05)
        partitions = list(consumer.assignment())
        end = await consumer.end_offsets(partitions) if partitions else {}
        if not partitions:
            raise ReadIncomplete(f"topic {topic}: no partitions assigned in {timeout:g} s (does it exist?)")
        while behind := [tp for tp in partitions if await consumer.position(tp) < end[tp]]:
            if loop.time() >= deadline:
                raise ReadIncomplete(
                    f"topic {topic}: {len(out)} records read in {timeout:g} s, {len(behind)} partitions not yet at"
                    " their end; check the broker's health or raise the timeout"
                )
            for records in (await consumer.getmany(timeout_ms=500)).values():
                out.extend(records)
    finally:
        await consumer.stop()
    return sorted(out, key=lambda r: (r.timestamp, r.partition, r.offset))


class ReadIncomplete(RuntimeError):
    """A topic (or partitions of it) could not be read to its end: the state would be partial."""


async def read_partitions(
    kafka: Kafka,
    topic: str,
    partitions: Collection[int],
    apply: Callable[[list[ConsumerRecord[bytes, bytes]]], None],
    stall: float = 30.0,
    ends: dict[int, int] | None = None,
) -> int:
    """Stream partitions of a topic from their beginning to their end as they are now, handing each fetched batch
    to ``apply`` (in offset order per partition); nothing is held but the batch. Returns how many records were read.

    Progress is logged every few seconds. Raises ``ReadIncomplete`` if no record arrives for ``stall`` seconds
    while a partition is not at its end: the caller must not go on with part of the state."""
    if not partitions:
        return 0
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer = clients.consumer(kafka, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    count = 0
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        if ends is not None:
            ends.update({tp.partition: o for tp, o in end.items()})
        loop = asyncio.get_running_loop()
        started = last = reported = loop.time()
        while behind := [tp for tp in tps if await consumer.position(tp) < end[tp]]:
            now = loop.time()
            if now - last > stall:
                raise ReadIncomplete(
                    f"topic {topic}: partitions {[tp.partition for tp in behind]} not read to their end (nothing"
                    f" arrived for {stall:g} s after {count} records); check the broker's health"
                )
            if now - reported > 5.0:
                log.info("state_restore_progress", topic=topic, records=count, partitions_left=len(behind))
                reported = now
            for tp, records in (await consumer.getmany(*behind, timeout_ms=500)).items():
                records = [r for r in records if r.offset < end[tp]]
                if records:
                    apply(records)
                    count += len(records)
                    last = loop.time()
        log.info(
            "state_restored", topic=topic, partitions=sorted(partitions), records=count,
            seconds=round(loop.time() - started, 3),
        )  # fmt: skip
    finally:
        await consumer.stop()
    return count


def fold_compacted(
    state: dict[K, V],
    records: Iterable[ConsumerRecord[bytes, bytes]],
    key: Callable[[bytes], K],
    value: Callable[[bytes], V],
) -> dict[K, V]:
    """Apply a compacted topic's records to ``state``: the last value per key wins, a tombstone removes the key.

    Records without a key are skipped. ``state`` is changed in place and returned.
    """
    for r in records:
        if r.key is None:
            continue
        k = key(r.key)
        if r.value is None:
            state.pop(k, None)
        else:
            state[k] = value(r.value)
    return state


async def replay_compacted(
    kafka: Kafka, topic: str, key: Callable[[bytes], K], value: Callable[[bytes], V]
) -> dict[K, V]:
    """A compacted topic as it stands now, as a dict (state rebuilt at start: retry state, history, pending work)."""
    records = sorted(await read_all(kafka, topic), key=lambda r: (r.partition, r.offset))
    return fold_compacted({}, records, key, value)
