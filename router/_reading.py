"""Reading a whole topic as it is now (state rebuilds, operator tools), and replaying a compacted one."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import TypeVar

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord

from connectors import kafka as clients
from connectors.kafka import Kafka

K = TypeVar("K")
V = TypeVar("V")


def follower(kafka: Kafka, group_id: str, *topics: str) -> AIOKafkaConsumer:
    """A side loop's consumer (notices, closures): its own group, from the beginning, offsets committed by hand."""
    return clients.consumer(
        kafka,
        *topics,
        group_id=group_id,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )


async def read_all(kafka: Kafka, topic: str, timeout: float = 30.0) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of a topic, from the beginning to its end now."""
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
        while loop.time() < deadline and [tp for tp in partitions if await consumer.position(tp) < end[tp]]:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                out.extend(records)
    finally:
        await consumer.stop()
    return sorted(out, key=lambda r: (r.timestamp, r.partition, r.offset))


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
