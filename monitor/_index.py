"""The dead-letter index: the dead-letter, audit and parking topics read incrementally into the store.

Each round reads only what arrived since the last (the positions are kept in the store, in the same
transaction as what they cover, like the tracker's), so the monitor's refresh no longer re-reads those
topics whole every few seconds. What is kept is what the listings show: a dead letter's id, its
``casebridge.dlq.*`` context headers, its pathway and time (never its value: that is the transfer, with
personal data); the ids of dead letters an audit record says were replayed; the ids a parking record says
failed again. A store that fails is not skipped: the next round reads again from the stored positions.

With ``completions=True`` (``casebridge dlq``'s index, casebridge/dlqindex.py, which has no tracker beside it)
the events topic is read too, keeping only its completion events (``router.deadletters.COMPLETED``: transfer
id, type, time; picked by their ``event_type`` header, so no other event's value is parsed).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.structs import TopicPartition

from connectors import kafka as clients
from connectors.kafka import Kafka
from contracts import wire
from router.deadletters import _DEAD_LETTER_ID, COMPLETED, DeadLetter, _aware, _partitions
from router.settings import ALLOCATION_AUDIT_PREFIX, Topics

from ._store import STORE_ERRORS, IndexEntries, Position, Store

log = structlog.get_logger("casebridge.monitor")


class DeadLetterIndex:
    def __init__(
        self, store: Store, kafka: Kafka, topics: Topics, *, completions: bool = False, fetch_max_wait_ms: int = 500
    ) -> None:
        self.store = store
        self.kafka = kafka
        self.dead_letter, self.audit, self.parking = topics.dead_letter, topics.audit, topics.parking
        #: the events topic, when its completion events are indexed too (else None)
        self.events = topics.events if completions else None
        #: records read from Kafka by this index so far (what a round cost: only what was new)
        self.records_read = 0
        #: whether the last ``catch_up`` reached the ends it set out for (False: it ran out of time)
        self.caught_up = False
        self.consumer: AIOKafkaConsumer | None = None
        #: how long the broker holds a fetch with nothing new: a request for offsets queues behind it on the
        #: connection (a short-lived reader, the CLI's, sets it short: it asks for offsets right after assigning)
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.assigned: set[TopicPartition] = set()
        #: fetch only during a round (``catch_up``), the partitions paused in between, so that a long-lived reader (the
        #: monitor's watch sets it) asks for the ends without waiting behind a fetch the broker holds with nothing new
        self.pause_between = False
        #: the next offset per partition that the store holds
        self.stored: dict[TopicPartition, int] = {}

    async def start(self) -> None:
        # earliest, as the seeks of ``_rewind``: with "latest" the reset that assign starts may win the race
        # against seek_to_beginning, and a first build would index nothing
        self.consumer = clients.consumer(
            self.kafka,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self.fetch_max_wait_ms,
        )
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
        names = self.topics()
        wanted = {TopicPartition(t, p) for t in names for p in cluster.get(t, ())}
        if wanted <= self.assigned:
            return
        stored: dict[TopicPartition, int] = {}
        for topic in names:
            for partition, offset in (await self.store.read(self.store.positions, topic)).items():
                stored[TopicPartition(topic, partition)] = offset
        self.consumer.assign(sorted(wanted))
        if self.pause_between:
            self.consumer.pause(*wanted)
        self.assigned, self.stored = wanted, stored
        await self._rewind()

    def topics(self) -> tuple[str, ...]:
        """The topics this index reads."""
        return (self.dead_letter, self.audit, self.parking, *((self.events,) if self.events else ()))

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
        self.caught_up = False
        if not self.assigned:
            self.caught_up = True
            return 0
        partitions = sorted(self.assigned)
        end = await self.consumer.end_offsets(partitions)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        new = 0
        behind = [tp for tp in partitions if await self.consumer.position(tp) < end[tp]]
        if self.pause_between and behind:
            self.consumer.resume(*behind)
        try:
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
        finally:
            if self.pause_between and behind:
                self.consumer.pause(*behind)
        self.caught_up = not [tp for tp in partitions if await self.consumer.position(tp) < end[tp]]
        return new

    async def bounds(self) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
        """The first and the end offset now of every partition of the topics that exist (taken on if new)."""
        assert self.consumer is not None, "start() first"
        await self._assign()
        partitions = sorted(self.assigned)
        if not partitions:
            return {}, {}
        return await self.consumer.beginning_offsets(partitions), await self.consumer.end_offsets(partitions)

    def _entries(
        self, batch: Mapping[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> tuple[IndexEntries, list[Position]]:
        entries, positions = IndexEntries(), []
        kinds = {k.encode() for k in COMPLETED}
        for tp, records in batch.items():
            self.records_read += len(records)
            for r in records:
                if tp.topic == self.events:
                    done = _completion(r, kinds)
                    if done is not None:
                        entries.completions.append(done)
                elif tp.topic == self.dead_letter:
                    entries.dead_letters.append(_indexed(r))
                elif tp.topic == self.audit:
                    key = r.key.decode(errors="replace") if r.key is not None else ""
                    if not key.startswith(ALLOCATION_AUDIT_PREFIX) and _DEAD_LETTER_ID.fullmatch(key):
                        entries.replayed.append(key)
                else:
                    of = dict(r.headers or ()).get(wire.REPLAY_OF)
                    if of is not None:
                        entries.parked.append(bytes(of).decode(errors="replace"))
            if records:
                positions.append(Position(tp.topic, tp.partition, records[-1].offset + 1))
        return entries, positions


def _completion(r: ConsumerRecord[bytes, bytes], kinds: set[bytes]) -> tuple[str, str, str] | None:
    """A completion event as ``(transfer id, event type, occurred at)``, as ``completions_since`` reads one (keyed by
    its transfer id); any other event, or one that does not say when, None."""
    kind = dict(r.headers or ()).get(wire.EVENT_TYPE)
    if r.key is None or kind is None or bytes(kind) not in kinds or r.value is None:
        return None
    try:
        occurred = datetime.fromisoformat(json.loads(r.value)["occurred_at"])
    except (ValueError, KeyError, TypeError):
        return None
    return r.key.decode(errors="replace"), bytes(kind).decode(), _aware(occurred).isoformat()


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
