"""Reading a whole topic as it is now (state rebuilds, operator tools)."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord


async def read_all(bootstrap_servers: str, topic: str, timeout: float = 30.0) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of a topic, from the beginning to its end now."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap_servers, group_id=None, auto_offset_reset="earliest")
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
