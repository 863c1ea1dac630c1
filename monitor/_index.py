"""The dead-letter index: the dead-letter, audit and parking topics read incrementally into the store.

Each round reads only what arrived since the last (the positions are kept in the store, in the same
transaction as what they cover, like the tracker's), so the monitor's refresh no longer re-reads those
topics whole every few seconds. What is kept is what the listings show: a dead letter's id, its
``casebridge.dlq.*`` context headers, its pathway and time (never its value: that is the transfer, with
personal data); the ids of dead letters an audit record says were replayed; the ids a parking record says
failed again. A store that fails is not skipped: the next round reads again from the stored positions.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.structs import TopicPartition

from connectors import kafka as clients
from connectors.kafka import Kafka
from router._retry import H_REPLAY_OF
from router.deadletters import _DEAD_LETTER_ID, DeadLetter, _partitions
from router.settings import ALLOCATION_AUDIT_PREFIX, Topics

from ._store import STORE_ERRORS, IndexEntries, Position, Store

log = structlog.get_logger("casebridge.monitor")


class DeadLetterIndex:
    def __init__(self, store: Store, kafka: Kafka, topics: Topics) -> None:
        self.store = store
        self.kafka = kafka
        self.dead_letter, self.audit, self.parking = topics.dead_letter, topics.audit, topics.parking
        self.consumer: AIOKafkaConsumer | None = None
        self.assigned: set[TopicPartition] = set()
        #: the next offset per partition that the store holds
        self.stored: dict[TopicPartition, int] = {}

    async def start(self) -> None:
        self.consumer = clients.consumer(self.kafka, group_id=None, enable_auto_commit=False)
        await self.consumer.start()

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()
            self.consumer = None

    async def _assign(self) -> None:
        """Take on the partitions of the three topics that exist now (a metadata request for every topic: naming
        an absent one might create it), each from its stored position, else its beginning."""
        assert self.consumer is not None, "start() first"
        cluster = await _partitions(self.kafka)
        names = (self.dead_letter, self.audit, self.parking)
        wanted = {TopicPartition(t, p) for t in names for p in cluster.get(t, ())}
        if wanted <= self.assigned:
            return
        stored: dict[TopicPartition, int] = {}
        for topic in names:
            for partition, offset in (await self.store.read(self.store.positions, topic)).items():
                stored[TopicPartition(topic, partition)] = offset
        self.consumer.assign(sorted(wanted))
        self.assigned, self.stored = wanted, stored
        await self._rewind()

    async def _rewind(self) -> None:
        """Every assigned partition back to what the store holds (the source of truth)."""
        assert self.consumer is not None
        for tp in sorted(self.assigned):
            if tp in self.stored:
                self.consumer.seek(tp, self.stored[tp])
            else:
                await self.consumer.seek_to_beginning(tp)

    async def catch_up(self, timeout: float = 30.0) -> int:
        """Index what the three topics hold beyond the stored positions, up to their ends now (or ``timeout``:
        the next round goes on from there); returns how many entries were new."""
        assert self.consumer is not None, "start() first"
        await self._assign()
        if not self.assigned:
            return 0
        partitions = sorted(self.assigned)
        end = await self.consumer.end_offsets(partitions)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        new = 0
        while loop.time() < deadline and [tp for tp in partitions if await self.consumer.position(tp) < end[tp]]:
            batch = await self.consumer.getmany(timeout_ms=500, max_records=5000)
            entries, positions = self._entries(batch)
            if not positions:
                continue
            try:
                new += await self.store.write_index(entries, positions)
            except STORE_ERRORS:
                await self._rewind()  # read it again next round: never skipped
                raise
            for p in positions:
                self.stored[TopicPartition(p.topic, p.partition)] = p.next_offset
        return new

    def _entries(
        self, batch: Mapping[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> tuple[IndexEntries, list[Position]]:
        entries, positions = IndexEntries(), []
        for tp, records in batch.items():
            for r in records:
                if tp.topic == self.dead_letter:
                    entries.dead_letters.append(_indexed(r))
                elif tp.topic == self.audit:
                    key = r.key.decode(errors="replace") if r.key is not None else ""
                    if not key.startswith(ALLOCATION_AUDIT_PREFIX) and _DEAD_LETTER_ID.fullmatch(key):
                        entries.replayed.append(key)
                else:
                    of = dict(r.headers or ()).get(H_REPLAY_OF)
                    if of is not None:
                        entries.parked.append(bytes(of).decode(errors="replace"))
            if records:
                positions.append(Position(tp.topic, tp.partition, records[-1].offset + 1))
        return entries, positions


def _indexed(r: ConsumerRecord[bytes, bytes]) -> dict[str, Any]:
    d = DeadLetter.of(r)
    return {
        "id": d.id,
        "partition": r.partition,
        "offset": r.offset,
        "timestamp": r.timestamp,
        "transfer_id": d.transfer_id,
        "pathway": d.pathway,
        "context": json.dumps(d.context, sort_keys=True),
    }


def letters_of(rows: list[dict[str, Any]]) -> list[DeadLetter]:
    """The indexed rows as ``DeadLetter``s for the listings (no key, value or original headers: not kept)."""
    return [DeadLetter(r["id"], None, None, [], json.loads(r["context"]), r["pathway"], r["timestamp"]) for r in rows]
